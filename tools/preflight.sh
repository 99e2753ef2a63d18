#!/usr/bin/env bash
# What `make example` and `make test` need from the system, checked up front: everything else (cmake,
# ninja, scikit-build-core, Python packages, the model, llama.cpp) is fetched into build/ by the targets.
# Prints one message naming each missing piece and how to get it, and exits 1; silent when all is there.
#   tools/preflight.sh [example|test]     (test also needs Go; as root it is installed from Debian)
set -uo pipefail
what=${1:-example}
missing=()   # "what it is|how to get it"
debian=()

need_cmd() { # command description debian-package [other way]
    command -v "$1" >/dev/null 2>&1 && return
    missing+=("$2 (\`$1\`)|${4:-apt-get install $3}")
    debian+=("$3")
}

need_cmd cargo "Rust toolchain" cargo "https://rustup.rs (curl ... | sh), or apt-get install cargo (Debian trixie or newer)"
# Cargo.toml's rust-version: an older cargo fails late, in the middle of the build.
if command -v rustc >/dev/null 2>&1; then
    rv=$(rustc --version 2>/dev/null | awk '{print $2}')
    if [[ -n $rv ]] && ! printf '1.89.0\n%s\n' "${rv%%-*}" | sort -V -C; then
        missing+=("Rust 1.89 or newer (\`rustc\` is $rv)|rustup update, or https://rustup.rs (older Debian releases ship an older cargo)")
    fi
fi
need_cmd cc "C compiler" gcc
need_cmd c++ "C++ compiler (llama.cpp)" g++
need_cmd make "make" make
need_cmd git "git (applies patches/llama.cpp)" git
if ! command -v python3 >/dev/null 2>&1; then
    missing+=("Python 3.9 or newer (\`python3\`)|apt-get install python3 python3-venv")
    debian+=(python3 python3-venv)
elif ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    missing+=("Python 3.9 or newer (\`python3\` is $(python3 -V 2>&1))|apt-get install python3 python3-venv")
    debian+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=("Python venv with pip (\`python3 -m venv\`)|apt-get install python3-venv")
    debian+=(python3-venv)
fi
# The test dependencies (numpy 2.4, torch 2.15, transformers 5.24: bindings/python/requirements-test.txt)
# need Python 3.11.
if [[ $what == test ]] && command -v python3 >/dev/null 2>&1 && ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    missing+=("Python 3.11 or newer for make test (\`python3\` is $(python3 -V 2>&1); the test packages need it)|apt-get install python3 (Debian bookworm or newer)")
fi
if [[ $what == test ]] && ! command -v go >/dev/null 2>&1 && [[ $EUID -ne 0 ]]; then
    missing+=("Go 1.19 or newer (\`go\`, for bindings/go; installed automatically only as root)|apt-get install golang-go")
    debian+=(golang-go)
fi

((${#missing[@]} == 0)) && exit 0
{
    echo "================================================================================"
    echo "make $what needs these from the system first (all else it fetches into build/):"
    for m in "${missing[@]}"; do printf '  - %-58s %s\n' "${m%%|*}" "${m#*|}"; done
    if ((${#debian[@]})); then
        echo "On Debian/Ubuntu, as root:  apt-get install -y $(printf '%s\n' "${debian[@]}" | sort -u | tr '\n' ' ')"
    fi
    echo "================================================================================"
} >&2
exit 1
