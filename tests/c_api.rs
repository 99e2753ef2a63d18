//! The C API as C programs see it: every `tests/c/*.c` is compiled with
//! `-std=c11 -Wall -Wextra -Werror -pedantic` against the committed `include/turboquant.h`, linked
//! against the `libturboquant.so` built for this test run, and run. A program passes when it exits
//! with status 0, writes nothing to stderr, prints a summary line last (e.g. `tests/c/check.h`'s
//! "ok: N checks passed") and no line starting with "FAIL". New files in `tests/c/` are picked up
//! automatically.
//!
//! With `TQ_VALGRIND=1` every program also runs under
//! `valgrind --error-exitcode=1 --leak-check=full` (valgrind must then be installed; definite and
//! indirect leaks count as errors, see `execute`).
//! The header must also compile as C++17 (`-pedantic -Werror`), and the C example in README.md must
//! be `tests/c/readme_example.c` verbatim.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The library built with this test binary: cargo puts the cdylib next to the test executable
/// (`target/<profile>/deps`), and `cargo build` copies it one level up.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test executable directory").to_path_buf();
    let name = format!("{}turboquant{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    for dir in [deps.clone(), deps.parent().map(Path::to_path_buf).unwrap_or_default()] {
        if dir.join(&name).is_file() {
            return dir;
        }
    }
    panic!("{name} not found next to {} or in its parent directory", exe.display());
}

/// The system C (or C++) compiler as the `cc` crate finds it (honours CC / CXX).
fn compiler(cpp: bool) -> cc::Tool {
    let target = match (std::env::consts::ARCH, std::env::consts::OS) {
        (arch, "linux") => format!("{arch}-unknown-linux-gnu"),
        (arch, "macos") => format!("{arch}-apple-darwin"),
        (arch, os) => format!("{arch}-unknown-{os}"),
    };
    cc::Build::new()
        .cpp(cpp)
        .target(&target)
        .host(&target)
        .opt_level(1)
        .debug(true)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .get_compiler()
}

fn run(mut cmd: Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn c_sources() -> Vec<PathBuf> {
    // The C tests, and the C examples (which check their own results and exit non-zero on failure).
    let mut files: Vec<PathBuf> = ["tests/c", "examples"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root().join(dir)).expect("source folder"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    files.sort();
    files
}

/// Compile `source` into `out_dir`, returning the executable's path, or the compiler's complaint.
fn compile(source: &Path, lib_dir: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    let stem = source.file_stem().unwrap().to_string_lossy().into_owned();
    let exe = out_dir.join(&stem);
    let mut cmd = compiler(false).to_command();
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lturboquant", "-lm"]);
    let out = run(cmd, &stem);
    if !out.status.success() {
        return Err(format!("{stem}.c does not compile:\n{}{}", text(&out.stdout), text(&out.stderr)));
    }
    Ok(exe)
}

/// Run `exe` (optionally under valgrind) and check the harness convention.
/// Run a compiled C program; `example`: one of examples/ (it checks its own results through its exit
/// status and prints what it shows a reader), else a test of tests/c, whose last line must count checks.
fn execute(exe: &Path, valgrind: bool, example: bool) -> Result<String, String> {
    let stem = exe.file_name().unwrap().to_string_lossy().into_owned();
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        // "Possibly lost" blocks are the library's process-lifetime caches (codebooks in a hash map,
        // which points into the middle of its allocation) and std's thread handles: reachable, not
        // leaked. Definite and indirect leaks, and every memory error, fail the run.
        c.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
            "--quiet",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    // The rpath points at the library built for this run, but `cargo test` puts other directories
    // (with possibly stale copies of the library) on the loader path, which a RUNPATH does not
    // override: make this run's directory the only one.
    let lib_dir = library_dir();
    cmd.env("LD_LIBRARY_PATH", &lib_dir).env("DYLD_LIBRARY_PATH", &lib_dir).env("RUST_BACKTRACE", "0");
    let label = if valgrind { format!("{stem} under valgrind") } else { stem.clone() };
    let out = run(cmd, &label);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let last = stdout.lines().last().unwrap_or("");
    let reported_failure = stdout.lines().any(|l| l.starts_with("FAIL"));
    if !out.status.success() || !stderr.is_empty() || last.is_empty() || (!example && !summary_counts_checks(last)) || reported_failure {
        return Err(format!("{label}: exit {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}", out.status.code()));
    }
    Ok(format!("{label}: {last}"))
}

/// Whether a C test's last line is a summary of checks that ran: check.h's "ok: N checks passed
/// (name)" or kv_api.c's "N passed, 0 failed" with N > 0, or another "ok: ..." result line
/// (readme_example.c prints the error it measured). A program that ran no check does not pass.
fn summary_counts_checks(last: &str) -> bool {
    let count = |s: &str| s.parse::<u64>().is_ok_and(|n| n > 0);
    if let Some(rest) = last.strip_prefix("ok: ") {
        return match rest.split_once(" checks passed") {
            Some((n, _)) => count(n),
            None => !rest.is_empty(),
        };
    }
    match last.split_once(" passed, ") {
        Some((n, f)) => count(n) && f == "0 failed",
        None => false,
    }
}

#[test]
fn c_summaries_must_count_checks() {
    assert!(summary_counts_checks("ok: 12 checks passed (fuzz)"));
    assert!(summary_counts_checks("40 passed, 0 failed"));
    assert!(summary_counts_checks("ok: normalised MSE 0.0093 (Lloyd-Max expectation 0.0093)"));
    for bad in ["ok: 0 checks passed (fuzz)", "0 passed, 0 failed", "3 passed, 1 failed", "", "done", "ok: "] {
        assert!(!summary_counts_checks(bad), "{bad:?} accepted");
    }
}

#[test]
fn c_tests_pass_against_the_header_and_library() {
    let lib_dir = library_dir();
    let out_dir = lib_dir.join("c-tests");
    std::fs::create_dir_all(&out_dir).expect("create the C test output directory");
    let valgrind = std::env::var("TQ_VALGRIND").is_ok_and(|v| v == "1");
    if valgrind {
        let found = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(found, "TQ_VALGRIND=1 but valgrind is not installed (apt-get install -y valgrind)");
    }
    let sources = c_sources();
    assert!(sources.iter().any(|s| s.ends_with("quantizer.c")), "tests/c/quantizer.c is missing");
    let mut failures = Vec::new();
    for source in &sources {
        match compile(source, &lib_dir, &out_dir) {
            Err(e) => failures.push(e),
            Ok(exe) => {
                for under_valgrind in [false, true] {
                    if under_valgrind && !valgrind {
                        continue;
                    }
                    match execute(&exe, under_valgrind, source.starts_with(root().join("examples"))) {
                        Ok(line) => eprintln!("{line}"),
                        Err(e) => failures.push(e),
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} C test failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn header_compiles_as_cpp17() {
    let dir = library_dir().join("c-tests");
    std::fs::create_dir_all(&dir).expect("create the C test output directory");
    let source = dir.join("header_as_cpp.cpp");
    std::fs::write(
        &source,
        "#include \"turboquant.h\"\n\
         static_assert(sizeof(tq_quantizer_params) > sizeof(size_t), \"params layout\");\n\
         int main() { tq_quantizer_params p = tq_quantizer_default_params(); return p.dim == 128 ? 0 : 1; }\n",
    )
    .expect("write the C++ translation unit");
    let mut cmd = compiler(true).to_command();
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&source)
        .arg("-o")
        .arg(dir.join("header_as_cpp.o"));
    let out = run(cmd, "header as C++");
    assert!(out.status.success(), "include/turboquant.h does not compile as C++17:\n{}", text(&out.stderr));
}

#[test]
fn readme_c_example_is_the_tested_program() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme.find("```c\n").expect("README.md has a ```c block") + "```c\n".len();
    let end = start + readme[start..].find("```").expect("the ```c block is closed");
    let tested = std::fs::read_to_string(root().join("tests/c/readme_example.c")).expect("tests/c/readme_example.c");
    assert!(
        readme[start..end] == tested,
        "the C example in README.md differs from tests/c/readme_example.c (which the C tests compile and run): \
         keep them identical"
    );
}
