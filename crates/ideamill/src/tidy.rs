//! Tidy checks over the workspace's own sources: habits no compiler lint
//! keeps (rust-analyzer's `tidy.rs` in shape). Test-only.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `crates/*/src` and `crates/*/tests`, sorted, as
/// a path relative to `crates/` (so that where the checkout lives does not
/// matter) with its text.
fn sources() -> Vec<(PathBuf, String)> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/ holds this crate")
        .to_path_buf();
    let mut out = Vec::new();
    for krate in std::fs::read_dir(&crates).expect("read crates/") {
        let krate = krate.expect("crates/ entry").path();
        for sub in ["src", "tests"] {
            collect(&krate.join(sub), &mut out);
        }
    }
    out.sort();
    assert!(
        out.len() > 50,
        "found only {} source files under {}",
        out.len(),
        crates.display()
    );
    out.into_iter()
        .map(|p| {
            let text = read(&p);
            let rel = p.strip_prefix(&crates).unwrap_or(&p).to_path_buf();
            (rel, text)
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            // Browser tests keep their npm packages here.
            if path.file_name().is_some_and(|n| n == "node_modules") {
                continue;
            }
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_under(path: &Path, folder: &str) -> bool {
    path.components().any(|c| c.as_os_str() == folder)
}

/// Every source file starts with a `//!` line saying what it is for.
#[test]
fn every_file_starts_with_a_module_doc() {
    let missing: Vec<String> = sources()
        .iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` line saying what they are for:\n{}",
        missing.join("\n")
    );
}

/// Library and binary code keeps every lint: no file-level `#![allow]`
/// under `src/` (an exception is an item-level `#[allow]` with its reason).
/// Dead code is allowed file-wide only in test helpers: files under
/// `tests/` with no test of their own, which several test binaries include
/// and each use a part of.
fn allow_problem(path: &Path, text: &str) -> Option<String> {
    let allows: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("#![allow("))
        .collect();
    if allows.is_empty() {
        return None;
    }
    let shown = path.display();
    if is_under(path, "src") {
        return Some(format!("{shown}: {}", allows.join(" ")));
    }
    let is_helper = !text.contains("#[test]") && !text.contains("#[tokio::test");
    if allows.iter().any(|a| a.contains("dead_code")) && !is_helper {
        return Some(format!(
            "{shown}: allows dead code but has tests of its own"
        ));
    }
    None
}

#[test]
fn no_file_wide_allows_outside_test_helpers() {
    let wrong: Vec<String> = sources()
        .iter()
        .filter_map(|(p, text)| allow_problem(p, text))
        .collect();
    assert!(wrong.is_empty(), "file-wide allows:\n{}", wrong.join("\n"));
}

#[test]
fn allow_problem_finds_what_it_looks_for() {
    let check = |path: &str, text: &str, expected: bool| {
        assert_eq!(
            allow_problem(Path::new(path), text).is_some(),
            expected,
            "{path}: {text:?}"
        );
    };
    let dead = "//! x\n#![allow(dead_code)]\n";
    let unwrap = "//! x\n#![allow(clippy::unwrap_used)]\n";
    check("a/src/lib.rs", "//! x\nfn f() {}\n", false);
    check("a/src/lib.rs", dead, true);
    check("a/src/lib.rs", unwrap, true);
    check("a/tests/util.rs", dead, false);
    check(
        "a/tests/main.rs",
        &format!("{dead}#[test]\nfn t() {{}}\n"),
        true,
    );
    check(
        "a/tests/main.rs",
        &format!("{unwrap}#[test]\nfn t() {{}}\n"),
        false,
    );
    // An item-level allow is not file-wide.
    check(
        "a/src/lib.rs",
        "//! x\n#[allow(dead_code)]\nfn f() {}\n",
        false,
    );
}
