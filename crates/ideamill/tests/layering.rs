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
