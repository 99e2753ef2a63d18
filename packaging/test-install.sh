#!/usr/bin/env bash
# The packaging test (`make test-install`, part of `make test`): installs the built library into
# temporary prefixes through `make install` (plainly, with DESTDIR, and over other files), builds
# examples/cmake-consumer against each with CMake and with pkg-config, runs the programs, checks the
# soname, the symlinks and the header's version against Cargo.toml, uninstalls, and checks that
# exactly what was installed is gone. Ends with `test-install: N passed, M failed`; exits 1 on any
# failure.
#
# Needs cmake and pkg-config: when missing they come from Debian (apt-get, as root) or else from PyPI
# into build/tools-venv. TQ_TOOLS_FROM=pip forces the PyPI route.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
MAKE=${MAKE:-make}
work=$root/build/test-install
rm -rf -- "$work"
mkdir -p -- "$work"
log=$work/check.log

passed=0
failed=0

# check DESCRIPTION COMMAND...: runs COMMAND, counts it, shows its output when it fails.
check() {
    local what=$1
    shift
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $what"
    else
        failed=$((failed + 1))
        echo "FAIL $what"
        tail -n 40 -- "$log" | sed 's/^/     | /'
    fi
}

# Like check, but COMMAND must fail and its output must contain PATTERN (an extended regex).
check_fails() {
    local what=$1 pattern=$2
    shift 2
    if "$@" >"$log" 2>&1; then
        failed=$((failed + 1))
        echo "FAIL $what (succeeded, should have failed)"
    elif grep -Eq -- "$pattern" "$log"; then
        passed=$((passed + 1))
        echo "ok   $what"
    else
        failed=$((failed + 1))
        echo "FAIL $what (failed without /$pattern/)"
        tail -n 40 -- "$log" | sed 's/^/     | /'
    fi
}

equals() { # actual expected
    [[ $1 == "$2" ]] && return 0
    printf 'expected: %s\nactual:   %s\n' "$2" "$1"
    return 1
}

# --- tools -------------------------------------------------------------------------------------

tools_venv=$root/build/tools-venv
# from_pypi PACKAGE COMMAND: installs PACKAGE into build/tools-venv, prints the path of COMMAND there.
from_pypi() {
    if [[ ! -x $tools_venv/bin/$2 ]]; then
        echo "installing $1 from PyPI into build/tools-venv" >&2
        { [[ -x $tools_venv/bin/pip ]] || python3 -m venv -- "$tools_venv"; } &&
            "$tools_venv/bin/pip" install --quiet --disable-pip-version-check "$1" >&2 || return 1
    fi
    echo "$tools_venv/bin/$2"
}
# from_debian PACKAGE: installs a Debian package when running as root with apt-get.
from_debian() {
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null || return 1
    echo "installing $1 from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$1" >"$work/apt.log" 2>&1 ||
        { apt-get update -q && apt-get install -y -q "$1"; } >>"$work/apt.log" 2>&1 ||
        { tail -n 5 -- "$work/apt.log" >&2; return 1; }
}
# find_tool DEBIAN_PACKAGE PYPI_PACKAGE COMMAND...: the path of the first COMMAND found, installing
# the package from Debian, else from PyPI, when none is (TQ_TOOLS_FROM=pip: always PyPI's).
find_tool() {
    local debian_package=$1 pypi_package=$2 command
    shift 2
    if [[ ${TQ_TOOLS_FROM:-} != pip ]]; then
        for command in "$@"; do command -v "$command" && return; done
        if from_debian "$debian_package"; then
            for command in "$@"; do command -v "$command" && return; done
        fi
    fi
    # The PyPI wheels provide `cmake` and `pkgconf`: the last command named.
    from_pypi "$pypi_package" "${!#}"
}

CMAKE=$(find_tool cmake cmake cmake) || { echo "test-install: cannot get cmake"; exit 1; }
PKG_CONFIG=$(find_tool pkgconf pkgconf pkg-config pkgconf) || { echo "test-install: cannot get pkg-config"; exit 1; }
echo "tools: $CMAKE ($("$CMAKE" --version | head -n 1)), $PKG_CONFIG $("$PKG_CONFIG" --version 2>/dev/null)"

# --- what to expect ----------------------------------------------------------------------------

# The version, read independently of the Makefile's parser.
version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')
[[ $version =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || { echo "test-install: cannot use Cargo.toml version '$version'"; exit 1; }
major=${BASH_REMATCH[1]}
minor=${BASH_REMATCH[2]}
patch=${BASH_REMATCH[3]}
soname=libturboquant.so.$major
echo "Cargo.toml version $version, expected soname $soname"

expected_files="./include/turboquant.h
./lib/cmake/turboquant/turboquantConfig.cmake
./lib/cmake/turboquant/turboquantConfigVersion.cmake
./lib/libturboquant.so
./lib/libturboquant.so.$major
./lib/libturboquant.so.$version
./lib/pkgconfig/turboquant.pc
./share/doc/turboquant/LICENSE
./share/turboquant/install-manifest.txt"

files_under() { (cd -- "$1" && find . -mindepth 1 \( -type f -o -type l \) | LC_ALL=C sort); }
is_empty() {
    local left
    left=$(cd -- "$1" && find . -mindepth 1)
    [[ -z $left ]] && return 0
    echo "left in $1:"
    echo "$left"
    return 1
}
# `make install` / `make uninstall` with only the layout given here: nothing inherited from a
# calling make's command line (MAKEFLAGS) or the environment.
isolated_make() {
    env -u MAKEFLAGS -u MFLAGS -u MAKEOVERRIDES -u MAKELEVEL -u DESTDIR -u PREFIX -u LIBDIR -u INCLUDEDIR \
        -u DATADIR "$MAKE" --no-print-directory -C "$root" "$@"
}
make_install() { isolated_make NO_BUILD=1 install "$@"; }
make_uninstall() { isolated_make uninstall "$@"; }

soname_of() { readelf -d -- "$1" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'; }
header_version() {
    local macro value out=""
    for macro in MAJOR MINOR PATCH; do
        value=$(sed -n "s/^#define TQ_VERSION_$macro \([0-9]*\)\$/\1/p" -- "$1")
        out+=${out:+.}$value
    done
    echo "$out"
}

# cmake_consumer BUILD_DIR PREFIX [REQUIRED_VERSION]: configure and build examples/cmake-consumer.
cmake_consumer() {
    local build_dir=$1 prefix=$2 required=${3:-}
    "$CMAKE" -S "$root/examples/cmake-consumer" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$prefix" -DTURBOQUANT_VERSION="$required" &&
        "$CMAKE" --build "$build_dir"
}
cmake_found_dir() { sed -n 's/^turboquant_DIR:[A-Z]*=//p' -- "$1/CMakeCache.txt"; }

# needed_and_resolved PROGRAM LIBDIR: the program asks for the soname, and the loader finds it in LIBDIR.
needed_and_resolved() {
    readelf -d -- "$1" | grep -F "(NEEDED)" | grep -F "[$soname]" || { readelf -d -- "$1"; return 1; }
    ldd -- "$1" | grep -F "$soname => $2/$soname" || { ldd -- "$1"; return 1; }
}

# --- 1. a plain prefix ----------------------------------------------------------------------------

echo "== make install PREFIX=<temporary prefix>"
prefix=$work/prefix
mkdir -p -- "$prefix"
check "make install PREFIX=$prefix" make_install PREFIX="$prefix"
check "exactly the expected files are installed" equals "$(files_under "$prefix")" "$expected_files"
check "lib/libturboquant.so -> $soname -> libturboquant.so.$version" \
    equals "$(readlink -- "$prefix/lib/libturboquant.so") $(readlink -- "$prefix/lib/$soname")" \
    "$soname libturboquant.so.$version"
check "readelf -d shows SONAME $soname" equals "$(soname_of "$prefix/lib/libturboquant.so.$version")" "$soname"
check "installed header's TQ_VERSION_* macros say $version (Cargo.toml)" \
    equals "$(header_version "$prefix/include/turboquant.h")" "$version"
check "pkg-config finds turboquant $version in the prefix" equals \
    "$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig "$PKG_CONFIG" --modversion --variable=prefix turboquant | tr '\n' ' ')" \
    "$version $prefix "
check "make install again over the same prefix (upgrade path)" make_install PREFIX="$prefix"
check "the reinstall leaves the same files" equals "$(files_under "$prefix")" "$expected_files"

echo "== CMake consumer: find_package(turboquant $version CONFIG REQUIRED)"
cmake_build=$work/cmake-build
check "cmake configures and builds examples/cmake-consumer" cmake_consumer "$cmake_build" "$prefix" "$version"
check "find_package used the prefix's package" equals "$(cmake_found_dir "$cmake_build")" "$prefix/lib/cmake/turboquant"
check "the CMake-built program runs (error within bounds, header = tq_version())" "$cmake_build/turboquant-consumer"
cat -- "$log"
check "the CMake-built program needs $soname and loads it from the prefix" \
    needed_and_resolved "$cmake_build/turboquant-consumer" "$prefix/lib"
# turboquantConfigVersion.cmake: Cargo's semver rules (0.x: same minor), and explicit ranges.
configure_only() { rm -rf -- "$work/cmake-version"; "$CMAKE" -S "$root/examples/cmake-consumer" -B "$work/cmake-version" -DCMAKE_PREFIX_PATH="$prefix" -DTURBOQUANT_VERSION="$1"; }
if [[ $major -eq 0 ]]; then next_incompatible=0.$((minor + 1)); else next_incompatible=$((major + 1)).0; fi
for wanted in "$major.$minor" "$major.$minor...<$((major + 1)).0" "0.0.1...$version"; do
    check "find_package accepts version $wanted" configure_only "$wanted"
done
for wanted in "$next_incompatible" "$major.$minor.$((patch + 1))" "0.0.1...<$version"; do
    check_fails "find_package refuses version $wanted" "compatible with requested version" configure_only "$wanted"
done

echo "== pkg-config consumer: examples/cmake-consumer/Makefile"
pkgconfig_build=$work/pkgconfig-build
check "the pkg-config build of the same program" \
    env PKG_CONFIG_PATH="$prefix/lib/pkgconfig" "$MAKE" --no-print-directory -C "$root/examples/cmake-consumer" \
    BUILD_DIR="$pkgconfig_build" PKG_CONFIG="$PKG_CONFIG"
check "the pkg-config-built program runs (no LD_LIBRARY_PATH)" env -u LD_LIBRARY_PATH "$pkgconfig_build/turboquant-consumer"
cat -- "$log"
check "the pkg-config-built program needs $soname and loads it from the prefix" \
    needed_and_resolved "$pkgconfig_build/turboquant-consumer" "$prefix/lib"

echo "== make uninstall PREFIX=<temporary prefix>"
check "make uninstall" make_uninstall PREFIX="$prefix"
check "the prefix is empty after uninstall" is_empty "$prefix"
check_fails "make uninstall with nothing installed says so" "no install manifest" make_uninstall PREFIX="$prefix"

check_fails "make install with a relative PREFIX names the argument" "PREFIX must be an absolute path" \
    make_install PREFIX=relative/prefix
check_fails "make install with LIBDIR outside PREFIX names the argument" "LIBDIR .* must lie under PREFIX" \
    make_install PREFIX="$prefix" LIBDIR="$work/elsewhere"
check "the refused installs wrote nothing" is_empty "$prefix"

# --- 2. DESTDIR staging ------------------------------------------------------------------------

echo "== make install DESTDIR=<stage> PREFIX=/opt/..."
stage=$work/stage
staged_prefix=/opt/turboquant-install-test-$$
mkdir -p -- "$stage"
check "make install DESTDIR=$stage PREFIX=$staged_prefix" make_install DESTDIR="$stage" PREFIX="$staged_prefix"
check "everything is staged under DESTDIR/PREFIX, nothing written to PREFIX itself" equals \
    "$(files_under "$stage$staged_prefix") $(find "$stage" -mindepth 1 -not -path "$stage$staged_prefix*" -not -path "$stage/opt") $([[ -e $staged_prefix ]] && echo "$staged_prefix exists")" \
    "$expected_files  "
check "the staged turboquant.pc names the final prefix" \
    grep -Fx "prefix=$staged_prefix" "$stage$staged_prefix/lib/pkgconfig/turboquant.pc"
check "pkg-config with PKG_CONFIG_SYSROOT_DIR points into the stage" equals \
    "$(PKG_CONFIG_PATH=$stage$staged_prefix/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$stage "$PKG_CONFIG" --cflags --libs turboquant | xargs)" \
    "-I$stage$staged_prefix/include -L$stage$staged_prefix/lib -lturboquant"
staged_build=$work/cmake-build-staged
check "the CMake package is relocatable: the consumer builds against the staged tree" \
    cmake_consumer "$staged_build" "$stage$staged_prefix"
check "the program built against the staged tree runs" "$staged_build/turboquant-consumer" 200
check "make uninstall DESTDIR=$stage PREFIX=$staged_prefix" make_uninstall DESTDIR="$stage" PREFIX="$staged_prefix"
check "the stage is empty after uninstall" is_empty "$stage"

# --- 3. a prefix that already holds other files ------------------------------------------------

echo "== install and uninstall beside other files"
shared_prefix=$work/shared-prefix
mkdir -p -- "$shared_prefix/lib/pkgconfig" "$shared_prefix/include"
echo "not ours" >"$shared_prefix/lib/pkgconfig/other.pc"
echo "not ours" >"$shared_prefix/include/other.h"
check "make install into a prefix with other files" make_install PREFIX="$shared_prefix"
check "make uninstall" make_uninstall PREFIX="$shared_prefix"
check "only the other files (and their directories) are left" equals \
    "$(cd -- "$shared_prefix" && find . -mindepth 1 | LC_ALL=C sort | xargs)" \
    "./include ./include/other.h ./lib ./lib/pkgconfig ./lib/pkgconfig/other.pc"

echo "test-install: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
