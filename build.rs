//! Build script: gives the C library (the cdylib) its versioned soname, `libturboquant.so.MAJOR`
//! (MAJOR from Cargo.toml), so that programs linked against an installed copy record that name and
//! keep working across upgrades that keep MAJOR. The rlib (Rust tests, Rust users) is not affected.
//!
//! A program linked against `target/<profile>/libturboquant.so` (or the copy in `deps/`, next to the
//! test binaries) records the soname too, so the loader looks for `libturboquant.so.MAJOR` there:
//! the script also places that name, as a symlink to `libturboquant.so`, in both directories
//! (`make install` lays out the real files).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `-soname` is an ELF linker option; other targets keep their platform's default naming.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    let soname = format!("libturboquant.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Some(profile_dir) = profile_dir_of(&out_dir) {
        link_soname(&profile_dir, &soname);
        link_soname(&profile_dir.join("deps"), &soname);
    }
}

/// The directory cargo copies the cdylib into (from `deps/`, where it is linked): OUT_DIR is
/// `<profile dir>/build/<pkg>-<hash>/out`.
fn profile_dir_of(out_dir: &Path) -> Option<PathBuf> {
    let build_dir = out_dir.parent()?.parent()?;
    if build_dir.file_name()? != "build" {
        return None;
    }
    build_dir.parent().map(Path::to_path_buf)
}

/// `<profile dir>/<soname>` → `libturboquant.so` (relative, so the target directory can move). The
/// link dangles until cargo has linked the library, which happens after this script runs.
fn link_soname(profile_dir: &Path, soname: &str) {
    let link = profile_dir.join(soname);
    let target = Path::new("libturboquant.so");
    if std::fs::read_link(&link).is_ok_and(|existing| existing == target) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    if let Err(err) = std::os::unix::fs::symlink(target, &link) {
        println!("cargo:warning=could not create {}: {err}", link.display());
    }
}
