//! The version a C user can see in two places must agree: tq_version() from the library and the
//! header's TQ_VERSION_* macros (written from cbindgen.toml). tests/header_fresh.rs ties the macros to
//! Cargo.toml, which `make install` also names the installed files after.

use std::ffi::CStr;
use std::path::PathBuf;

/// "MAJOR.MINOR.PATCH" from the `#define TQ_VERSION_*` lines of the committed header.
fn header_version() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/turboquant.h");
    let header = std::fs::read_to_string(&path).expect("read include/turboquant.h");
    let component = |name: &str| {
        let prefix = format!("#define TQ_VERSION_{name} ");
        let value = header
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("include/turboquant.h lacks `{prefix}…`"));
        value.trim().parse::<u64>().unwrap_or_else(|_| panic!("TQ_VERSION_{name} is not a number: {value}"))
    };
    format!("{}.{}.{}", component("MAJOR"), component("MINOR"), component("PATCH"))
}

#[test]
fn tq_version_matches_the_header_macros() {
    // SAFETY: tq_version returns a pointer to a static NUL-terminated string.
    let library = unsafe { CStr::from_ptr(turboquant::ffi::tq_version()) };
    let library = library.to_str().expect("tq_version() is UTF-8");
    assert_eq!(
        library,
        header_version(),
        "tq_version() and the header's TQ_VERSION_* macros disagree: update after_includes in cbindgen.toml, run `make header`"
    );
}
