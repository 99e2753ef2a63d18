//! include/turboquant.h is generated from the Rust sources; this fails when the committed copy is
//! stale. `make header` (TQ_BLESS_HEADER=1) rewrites it.

use std::path::PathBuf;

#[test]
fn committed_header_is_fresh() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("utf-8 header");
    let path = root.join("include/turboquant.h");
    if std::env::var_os("TQ_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write include/turboquant.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/turboquant.h is stale: run `make header` and commit the result"
    );
}

#[test]
fn header_version_macros_match_the_crate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/turboquant.h")).expect("header");
    for (name, value) in [
        ("TQ_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("TQ_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("TQ_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        let line = format!("#define {name} {value}");
        assert!(header.contains(&line), "header lacks `{line}` (Cargo.toml version {})", env!("CARGO_PKG_VERSION"));
    }
}
