//! The crates' layering (ARCHITECTURE.md, "Crates, from the bottom up"):
//! which of our crates each library may depend on. Read from the manifests,
//! so a new dependency that breaks the layers fails here, not in review.

use std::collections::BTreeSet;
use std::path::Path;

/// Each library crate and the crates of ours it may depend on.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ideamill-sys", &[]),
    ("ideamill-core", &[]),
    ("ideamill-store", &["core", "sys"]),
    ("ideamill-llm", &["core", "sys"]),
    ("ideamill-telemetry", &["core"]),
    ("ideamill-health", &["core", "store", "telemetry", "sys"]),
    ("ideamill-intake", &["core", "store", "sys"]),
    ("ideamill-stages", &["core", "store", "llm", "sys"]),
    (
        "ideamill-engine",
        &[
            "core",
            "store",
            "llm",
            "stages",
            "health",
            "telemetry",
            "sys",
        ],
    ),
    (
        "ideamill-web",
        &["core", "store", "health", "stages", "intake", "sys"],
    ),
    ("ideamill-alerts", &["core", "store", "health", "sys"]),
];

/// The `ideamill-*` names under `[dependencies]` of a manifest (not
/// dev-dependencies: tests may use anything).
fn our_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some(rest) = line.strip_prefix("ideamill-") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_library_depends_only_on_the_layers_below_it() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ideamill-") {
            found.insert(name);
        }
    }
    let listed: BTreeSet<String> = ALLOWED.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(
        found, listed,
        "every library crate has its row here and in ARCHITECTURE.md"
    );
    for (krate, allowed) in ALLOWED {
        let manifest = std::fs::read_to_string(crates.join(krate).join("Cargo.toml")).unwrap();
        let deps = our_dependencies(&manifest);
        let extra: Vec<&String> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{krate} depends on ideamill-{extra:?}, outside its layer (allowed: {allowed:?})"
        );
    }
}

#[test]
fn the_manifest_reader_sees_dependencies_only() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nideamill-core.workspace = true\n\
                    ideamill-store = { path = \"../s\" }\nserde = \"1\"\n\n\
                    [dev-dependencies]\nideamill-engine.workspace = true\n";
    let deps: Vec<String> = our_dependencies(manifest).into_iter().collect();
    assert_eq!(deps, ["core", "store"]);
}

/// Every `.rs` file under `dir`, read.
fn sources_under(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() != "node_modules" {
                sources_under(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The functions and modules the docs name as paths (`a::b::name`,
/// `tests/x.rs::name`, in backticks), by their last segment: the tests that
/// keep ARCHITECTURE.md's invariants are cited so. Clippy's lints are not
/// ours; a single word is a type or module mentioned in passing.
fn named_functions(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|token| token.rsplit_once("::"))
        .filter(|(path, name)| {
            !path.starts_with("clippy")
                && name.contains('_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(_, name)| name.to_string())
        .collect()
}

/// A test that keeps an invariant, renamed or removed, leaves the docs
/// citing nothing: every function or module they name exists.
#[test]
fn every_function_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut sources = String::new();
    sources_under(&root.join("crates"), &mut sources);
    let mut docs = vec![root.join("ARCHITECTURE.md"), root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            docs.push(entry.path());
        }
    }
    let mut checked = 0;
    for doc in &docs {
        for name in named_functions(&std::fs::read_to_string(doc).unwrap()) {
            let defined = [
                format!("fn {name}("),
                format!("fn {name}<"),
                format!("mod {name};"),
                format!("mod {name} {{"),
            ]
            .iter()
            .any(|d| sources.contains(d.as_str()));
            assert!(
                defined,
                "{} names `{name}`, which no crate defines",
                doc.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} names found: the reader is broken"
    );
}

#[test]
fn the_docs_reader_takes_paths_in_backticks_only() {
    let doc = "kept by `conformance::leases::leases_are_judged` and `tests/x.rs::a_test`, \
               not `clippy::unwrap_used`, `Store::Claim`, `conformance::claims` or bare_words";
    assert_eq!(
        named_functions(doc),
        ["leases_are_judged", "a_test"],
        "{doc}"
    );
}
