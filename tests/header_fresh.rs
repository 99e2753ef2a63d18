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

/// The names include/turboquant.h declares at file scope (macros, typedef names, struct/enum tags,
/// enum constants, functions); struct fields and parameters are scoped and not listed.
fn declared_names(header: &str) -> Vec<String> {
    // Drop comments, then preprocessor conditionals (their `defined(...)` is not a declaration).
    let mut text = String::new();
    let mut rest = header;
    while let Some(i) = rest.find("/*") {
        text.push_str(&rest[..i]);
        rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
    }
    text.push_str(rest);
    let lines: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
    let mut names = Vec::new();
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(str::to_string).collect()
    };
    for l in &lines {
        if let Some(d) = l.trim().strip_prefix("#define") {
            names.extend(words(d).into_iter().take(1));
        }
    }
    // The C++ `extern "C" { ... }` wrapper is not a scope of declarations: drop it.
    let code: String = lines
        .iter()
        .filter(|l| !l.trim_start().starts_with('#') && l.trim() != "extern \"C\" {")
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    // File-scope statements: split at ';' outside braces, so a struct or enum body stays whole.
    let mut stmts = vec![String::new()];
    let mut depth = 0;
    for c in code.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => continue, // the wrapper's closing brace
            '}' => depth -= 1,
            ';' if depth == 0 => {
                stmts.push(String::new());
                continue;
            }
            _ => {}
        }
        stmts.last_mut().unwrap().push(c);
    }
    for stmt in &stmts {
        let (head, body, tail) = match (stmt.find('{'), stmt.rfind('}')) {
            (Some(a), Some(b)) => (&stmt[..a], &stmt[a + 1..b], &stmt[b + 1..]),
            _ => (stmt.as_str(), "", ""),
        };
        let w = words(head);
        // Tags: the word after `struct`/`enum`.
        for pair in w.windows(2) {
            if pair[0] == "struct" || pair[0] == "enum" {
                names.push(pair[1].clone());
            }
        }
        if w.first().is_some_and(|f| f == "typedef") {
            // Typedef name: the last word of the statement (after the body, if any).
            names.extend(words(if body.is_empty() { head } else { tail }).into_iter().last());
        } else if body.is_empty() {
            // Function: the word before the first '('.
            if let Some(i) = head.find('(') {
                names.extend(words(&head[..i]).into_iter().last());
            }
        }
        // Enum constants: the first word of each comma-separated entry of an enum body.
        if w.iter().any(|x| x == "enum") {
            for entry in body.split(',') {
                names.extend(words(entry).into_iter().take(1));
            }
        }
    }
    names.retain(|n| !["TURBOQUANT_H", "uint32_t", "C"].contains(&n.as_str()));
    names.sort();
    names.dedup();
    names
}

fn foreign_names(header: &str) -> Vec<String> {
    declared_names(header).into_iter().filter(|n| !(n.starts_with("tq_") || n.starts_with("TQ_"))).collect()
}

#[test]
fn every_header_identifier_is_prefixed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/turboquant.h")).expect("header");
    let names = declared_names(&header);
    // The scan sees what the header declares: the context handle, a status constant, a function.
    for expected in ["tq_context", "TQ_STATUS_OK", "tq_attend_batch", "TQ_ABI_VERSION", "tq_context_params"] {
        assert!(names.iter().any(|n| n == expected), "scan missed {expected}: {names:?}");
    }
    assert_eq!(foreign_names(&header), Vec::<String>::new(), "identifiers without the tq_/TQ_ prefix");
}

#[test]
fn prefix_check_catches_an_unprefixed_identifier() {
    let bad = "#define FORMAT_VERSION 1\ntypedef struct foo foo;\nenum tq_x { TQ_A = 0, OTHER = 1 };\nint helper(int a);\n";
    assert_eq!(foreign_names(bad), ["FORMAT_VERSION", "OTHER", "foo", "helper"]);
}
