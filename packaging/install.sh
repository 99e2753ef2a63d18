#!/usr/bin/env bash
# Installs libturboquant for C and C++ users, or uninstalls it: `install.sh install|uninstall`.
# Called by `make install` / `make uninstall` (mk/install.mk), which pass in the environment:
#   PREFIX LIBDIR INCLUDEDIR DATADIR   absolute install paths; LIBDIR and INCLUDEDIR lie under PREFIX
#   DESTDIR                            staging root put before every path written (may be empty)
#   VERSION_MAJOR VERSION_MINOR VERSION_PATCH   the version, from Cargo.toml
#   LIBRARY HEADER TEMPLATES           the built libturboquant.so, include/turboquant.h, packaging/
#   LICENSE                            the Apache-2.0 text, installed as $DATADIR/doc/turboquant/LICENSE
# Every file and link written, and every directory created, is appended to
# $DATADIR/turboquant/install-manifest.txt as it happens; uninstall removes exactly those, then the
# manifest and the directories install created (when empty). Installing again over an existing
# install (an upgrade) adds to the manifest, so uninstall also removes the older version's files.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }

for var in PREFIX LIBDIR INCLUDEDIR DATADIR; do
    value=${!var:-}
    [[ $value == /* ]] || die "$var must be an absolute path (got '$value')"
    printf -v "$var" '%s' "$(realpath -ms -- "$value")"
done
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}

manifest=$DATADIR/turboquant/install-manifest.txt

# $1 relative to PREFIX, or a failure naming $2 when $1 is not under PREFIX.
under_prefix() {
    local path=$1 name=$2 prefix_slash=${PREFIX%/}/
    [[ $path == "$prefix_slash"* ]] || die "$name ($path) must lie under PREFIX ($PREFIX)"
    printf '%s' "${path#"$prefix_slash"}"
}

record() { printf '%s %s\n' "$1" "$2" >>"$DESTDIR$manifest"; }

# Creates directory $1 (an install path) and the missing directories above it; prints those created.
make_dir() {
    local dir=$1 path="" part
    local -a parts
    IFS=/ read -ra parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        path+=/$part
        if [[ ! -d $DESTDIR$path ]]; then
            mkdir -- "$DESTDIR$path"
            printf '%s\n' "$path"
        fi
    done
}

# Creates install directory $1 (and missing parents), recording each directory created.
install_dir() {
    local created dir
    created=$(make_dir "$1")
    while read -r dir; do
        [[ -z $dir ]] || record d "$dir"
    done <<<"$created"
}

install_file() { # mode source destination
    install -m "$1" -- "$2" "$DESTDIR$3"
    record f "$3"
    echo "installed $DESTDIR$3"
}

install_link() { # target destination
    ln -sfn -- "$1" "$DESTDIR$2"
    record f "$2"
    echo "installed $DESTDIR$2 -> $1"
}

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

# Writes template $1 to install path $2 with the @NAME@ placeholders filled in.
install_template() {
    local rendered
    rendered=$(mktemp)
    sed -e "s|@PREFIX@|$(sed_escape "$PREFIX")|g" \
        -e "s|@LIBDIR_REL@|$(sed_escape "$libdir_rel")|g" \
        -e "s|@INCLUDEDIR_REL@|$(sed_escape "$includedir_rel")|g" \
        -e "s|@CMAKEDIR_TO_PREFIX@|$cmakedir_to_prefix|g" \
        -e "s|@VERSION@|$version|g" \
        -e "s|@MAJOR@|$VERSION_MAJOR|g" \
        -e "s|@POINTER_BYTES@|$pointer_bytes|g" \
        -- "$1" >"$rendered"
    if grep -n '@[A-Z_]*@' "$rendered" >&2; then
        rm -f -- "$rendered"
        die "$1 has placeholders install.sh does not fill (above)"
    fi
    install_file 0644 "$rendered" "$2"
    rm -f -- "$rendered"
}

do_install() {
    for var in VERSION_MAJOR VERSION_MINOR VERSION_PATCH; do
        [[ ${!var:-} =~ ^[0-9]+$ ]] || die "$var must be a number (got '${!var:-}'): cannot read the version from Cargo.toml"
    done
    version=$VERSION_MAJOR.$VERSION_MINOR.$VERSION_PATCH
    local soname=libturboquant.so.$VERSION_MAJOR

    [[ -f $LIBRARY ]] || die "LIBRARY $LIBRARY does not exist: run \`make build\` first"
    [[ -f $HEADER ]] || die "HEADER $HEADER does not exist"
    [[ -f ${LICENSE:-} ]] || die "LICENSE ${LICENSE:-(not set)} does not exist"
    # The header's version macros come from cbindgen.toml; refuse to install a header that disagrees.
    local macro value header_version=""
    for macro in MAJOR MINOR PATCH; do
        value=$(sed -n "s/^#define TQ_VERSION_${macro} \([0-9]*\)\$/\1/p" -- "$HEADER")
        header_version+=${header_version:+.}${value:-?}
    done
    [[ $header_version == "$version" ]] || die "$HEADER declares version $header_version but Cargo.toml says $version: update after_includes in cbindgen.toml, run \`make header\`"
    if command -v readelf >/dev/null; then
        local built_soname
        built_soname=$(readelf -d -- "$LIBRARY" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
        [[ $built_soname == "$soname" ]] || die "$LIBRARY has soname '${built_soname:-none}', expected $soname: rebuild it (make build)"
    fi

    libdir_rel=$(under_prefix "$LIBDIR" LIBDIR)
    includedir_rel=$(under_prefix "$INCLUDEDIR" INCLUDEDIR)
    local cmakedir=$LIBDIR/cmake/turboquant cmakedir_rel part
    local -a parts
    cmakedir_rel=$(under_prefix "$cmakedir" "the CMake package directory")
    IFS=/ read -ra parts <<<"$cmakedir_rel"
    cmakedir_to_prefix=""
    for part in "${parts[@]}"; do cmakedir_to_prefix+=${cmakedir_to_prefix:+/}..; done
    # ELF class byte (offset 4): 1 = 32-bit, 2 = 64-bit.
    case $(od -An -tu1 -j4 -N1 -- "$LIBRARY" | tr -d ' ') in
        1) pointer_bytes=4 ;;
        2) pointer_bytes=8 ;;
        *) die "LIBRARY $LIBRARY is not an ELF shared library" ;;
    esac

    # The manifest's directory first, so that everything after it is recorded as it happens.
    local created_for_manifest
    created_for_manifest=$(make_dir "$(dirname -- "$manifest")")
    touch -- "$DESTDIR$manifest"
    while read -r part; do
        [[ -z $part ]] || record d "$part"
    done <<<"$created_for_manifest"

    install_dir "$LIBDIR"
    install_file 0755 "$LIBRARY" "$LIBDIR/libturboquant.so.$version"
    install_link "libturboquant.so.$version" "$LIBDIR/$soname"
    install_link "$soname" "$LIBDIR/libturboquant.so"
    install_dir "$INCLUDEDIR"
    install_file 0644 "$HEADER" "$INCLUDEDIR/turboquant.h"
    install_dir "$LIBDIR/pkgconfig"
    install_template "$TEMPLATES/turboquant.pc.in" "$LIBDIR/pkgconfig/turboquant.pc"
    install_dir "$cmakedir"
    install_template "$TEMPLATES/turboquantConfig.cmake.in" "$cmakedir/turboquantConfig.cmake"
    install_template "$TEMPLATES/turboquantConfigVersion.cmake.in" "$cmakedir/turboquantConfigVersion.cmake"
    install_dir "$DATADIR/doc/turboquant"
    install_file 0644 "$LICENSE" "$DATADIR/doc/turboquant/LICENSE"

    local deduplicated
    deduplicated=$(sort -u -- "$DESTDIR$manifest")
    printf '%s\n' "$deduplicated" >"$DESTDIR$manifest"
    echo "installed libturboquant $version under $DESTDIR$PREFIX (manifest: $DESTDIR$manifest)"
}

do_uninstall() {
    [[ -f $DESTDIR$manifest ]] || die "no install manifest at $DESTDIR$manifest: nothing of libturboquant is installed there (pass the PREFIX, DATADIR and DESTDIR used by \`make install\`)"
    local kind path line=0
    local -a files=() dirs=()
    while read -r kind path; do
        line=$((line + 1))
        [[ $path == /* && $path != *..* ]] || die "$DESTDIR$manifest line $line: '$path' is not an absolute install path; not removing anything"
        case $kind in
            f) files+=("$path") ;;
            d) dirs+=("$path") ;;
            *) die "$DESTDIR$manifest line $line: unknown entry kind '$kind'; not removing anything" ;;
        esac
    done <"$DESTDIR$manifest"

    for path in "${files[@]}"; do
        if [[ -e $DESTDIR$path || -L $DESTDIR$path ]]; then
            rm -f -- "$DESTDIR$path"
            echo "removed $DESTDIR$path"
        fi
    done
    rm -f -- "$DESTDIR$manifest"
    echo "removed $DESTDIR$manifest"
    # Deepest first: in reverse lexical order a directory comes before its parent.
    while read -r path; do
        [[ -n $path && -d $DESTDIR$path ]] || continue
        if rmdir -- "$DESTDIR$path" 2>/dev/null; then
            echo "removed $DESTDIR$path/"
        else
            echo "kept $DESTDIR$path/ (not empty)"
        fi
    done < <(printf '%s\n' "${dirs[@]}" | sort -r)
}

case ${1:-} in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: install.sh install|uninstall (normally through make install / make uninstall)" ;;
esac
