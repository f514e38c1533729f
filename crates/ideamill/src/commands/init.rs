//! `ideamill init [DIR]`: scaffold a project that runs as it is.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cli::InitArgs;

const CONFIG: &str = include_str!("../scaffold/ideamill.toml");
/// The placeholder stages: programs that run without a model, so that a new
/// project works end to end before any provider is set up.
const STAGES: &[(&str, &str)] = &[
    ("outline.py", include_str!("../scaffold/outline.py")),
    ("implement.py", include_str!("../scaffold/implement.py")),
    ("qa.py", include_str!("../scaffold/qa.py")),
];
const PROMPTS_README: &str = "Prompt templates for `llm` stages live here.\n";
const GITIGNORE: &str = "# ideamill's data: the store, status files, evidence\n.ideamill/\n";

pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("ideamill.toml");
    if config.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            config.display()
        );
    }
    write_file(&config, CONFIG, false)?;
    for sub in ["stages", "prompts", "inbox", "workspace"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}/{sub}", dir.display()))?;
    }
    for (name, text) in STAGES {
        write_file(&dir.join("stages").join(name), text, true)?;
    }
    write_file(
        &dir.join("prompts").join("README.md"),
        PROMPTS_README,
        false,
    )?;
    let gitignore = dir.join(".gitignore");
    if !gitignore.exists() {
        write_file(&gitignore, GITIGNORE, false)?;
    }
    println!("Created an ideamill project in {}.", dir.display());
    println!("Next:");
    if args.dir.is_some() {
        println!("  cd {}", dir.display());
    }
    println!("  ideamill add \"a CLI that converts CSV to JSON\"");
    println!("  ideamill run --until-idle");
    println!("  ideamill list");
    Ok(ExitCode::SUCCESS)
}

/// Write through a temp file and a rename, so a crash leaves no half file.
fn write_file(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    if executable {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
