"""Checks a fresh installation of the package (run by `make test-wheel`, outside the checkout):

    python installed_check.py EXPECTED_VERSION

turboquant is imported from the environment's site-packages (not from a checkout) with no
TURBOQUANT_LIB, and loads the libturboquant.so bundled next to it; the distribution's version is
Cargo.toml's and equals the library's tq_version(); the wheel ships LICENSE; and a 4-bit round trip of
unit vectors has the distortion of the Lloyd–Max quantizer (0.00931 at d=128, tests/data).
"""

import os
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

expected = sys.argv[1]
assert "TURBOQUANT_LIB" not in os.environ, "run without TURBOQUANT_LIB"

import numpy as np

import turboquant

package = Path(turboquant.__file__).resolve().parent
site = Path(sysconfig.get_paths()["purelib"]).resolve()
assert package.parent == site, f"turboquant imported from {package}, not from {site}"
lib = turboquant.load_library()
assert Path(lib.path).resolve() == package / "libturboquant.so", f"loaded {lib.path}"
assert lib.version == expected, f"library {lib.version}, Cargo.toml {expected}"
dist = metadata.distribution("libturboquant")
assert dist.version == expected, f"distribution {dist.version}, Cargo.toml {expected}"
licenses = [f for f in dist.files or [] if f.name == "LICENSE"]
assert licenses, "no LICENSE in the installed distribution"
text = licenses[0].locate().read_text()
assert "Apache License" in text and "Version 2.0, January 2004" in text, "LICENSE is not Apache-2.0"

rng = np.random.default_rng(7)
x = rng.standard_normal((4096, 128)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
q = turboquant.Quantizer(dim=128, bits=4)
x_hat = q.dequantize(*q.quantize(x))
mse = float(np.mean(np.sum((x - x_hat) ** 2, axis=1)))
# 0.00931 is d·E[(t-Q(t))^2] of the 4-bit Lloyd–Max codebook at d=128 (tests/data); 4096 vectors
# give a relative standard error well under 5 %.
assert 0.0080 < mse < 0.0110, f"4-bit MSE {mse}"
print(f"installed libturboquant {dist.version} from {package}: library {lib.path}, "
      f"4-bit MSE {mse:.5f}, LICENSE shipped")
