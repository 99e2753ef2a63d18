"""Build steps of the libturboquant Python package that pyproject.toml cannot declare.

- The version is the one in the repository's Cargo.toml (the one place it is written by hand).
- build_py puts libturboquant.so into the package: the file named by $TURBOQUANT_LIB when that is set
  (a library built elsewhere, e.g. with `cargo build --release --features cuda`), else the result of
  `cargo build --release` in the repository (with $TURBOQUANT_CARGO_FEATURES as --features, when set;
  $CARGO_TARGET_DIR is honoured).
- The wheel carries a native library, so it is tagged for this platform (py3-none-<platform>); it
  does not depend on the Python ABI (the bindings use ctypes).

Building needs the repository around this directory (pip builds `./bindings/python` in place).
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LIBRARY = "libturboquant.so"


def fail(message: str) -> "NoReturn":
    sys.stderr.write(f"\nlibturboquant: {message}\n\n")
    raise SystemExit(1)


def cargo_version() -> str:
    cargo_toml = ROOT / "Cargo.toml"
    if not cargo_toml.is_file():
        fail(f"{cargo_toml} not found: build this package from the libturboquant repository "
             "(pip install ./bindings/python)")
    in_package = False
    for line in cargo_toml.read_text().splitlines():
        if line.startswith("["):
            in_package = line.strip() == "[package]"
        elif in_package:
            m = re.match(r'version\s*=\s*"([^"]+)"', line)
            if m:
                return m.group(1)
    fail(f"no version in the [package] table of {cargo_toml}")


def built_library() -> Path:
    explicit = os.environ.get("TURBOQUANT_LIB")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            fail(f"TURBOQUANT_LIB={explicit} is not a file")
        return path
    cargo = shutil.which("cargo")
    if cargo is None:
        fail("cargo not found on PATH: install Rust (https://rustup.rs) to build libturboquant.so, "
             "or set TURBOQUANT_LIB to a built libturboquant.so to bundle it")
    command = [cargo, "build", "--release"]
    features = os.environ.get("TURBOQUANT_CARGO_FEATURES")
    if features:
        command += ["--features", features]
    print("libturboquant: " + " ".join(command), flush=True)
    if subprocess.call(command, cwd=ROOT) != 0:
        fail("`" + " ".join(command) + "` failed (its output is above)")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    path = target / "release" / LIBRARY
    if not path.is_file():
        fail(f"cargo succeeded but {path} does not exist")
    return path


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        source = built_library()
        destination = Path(self.build_lib) / "turboquant" / LIBRARY
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        os.chmod(destination, 0o755)
        print(f"libturboquant: bundled {source} as turboquant/{LIBRARY}", flush=True)


commands = {"build_py": BuildPyWithLibrary}

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        return "py3", "none", sysconfig.get_platform().replace("-", "_").replace(".", "_")


commands["bdist_wheel"] = PlatformWheel

setup(version=cargo_version(), cmdclass=commands)
