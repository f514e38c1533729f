//! `ideamill init [DIR]`: scaffold a project that runs as it is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cli::InitArgs;

/// The model pipeline: outline (llm) -> tests (llm: acceptance tests from
/// the idea) -> reference (llm: an independent main.py from the idea alone)
/// -> implement (llm, files) -> qa (a command gate that writes the acceptance
/// tests into the workspace, runs them with the generated ones, and sets
/// aside any test the reference fails the same way).
const CONFIG: &str = include_str!("../scaffold/ideamill.toml");
/// The default: placeholder programs instead of a model, so that a pipeline
/// runs end to end anywhere.
const CONFIG_NO_MODEL: &str = include_str!("../scaffold/ideamill-no-model.toml");
const QA: (&str, &str) = ("qa.py", include_str!("../scaffold/qa.py"));
const PLACEHOLDER_STAGES: &[(&str, &str)] = &[
    ("outline.py", include_str!("../scaffold/outline.py")),
    ("implement.py", include_str!("../scaffold/implement.py")),
];
const PROMPTS: &[(&str, &str)] = &[
    ("outline.md", include_str!("../scaffold/outline.md")),
    ("tests.md", include_str!("../scaffold/tests.md")),
    ("reference.md", include_str!("../scaffold/reference.md")),
    ("implement.md", include_str!("../scaffold/implement.md")),
];
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
    let endpoint = args.model_endpoint();
    let agent = args.agent.as_deref();
    let text = match endpoint {
        None => CONFIG_NO_MODEL.to_owned(),
        Some((url, model)) => {
            let api_key_line = match &args.api_key_env {
                Some(var) => format!("api_key_env = \"{}\"\n", toml_escape(var)),
                None => String::new(),
            };
            CONFIG
                .replace("{base_url}", &toml_escape(url))
                .replace("{model}", &toml_escape(model))
                .replace("{api_key_line}", &api_key_line)
        }
    };
    let text = agent.map_or(text, |preset| super::init_agent::config(preset, args));
    for sub in ["stages", "prompts", "inbox", "workspace"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}/{sub}", dir.display()))?;
    }
    let stages: Vec<(&str, &str)> = if endpoint.is_none() && agent.is_none() {
        PLACEHOLDER_STAGES.iter().copied().chain([QA]).collect()
    } else {
        vec![QA]
    };
    for (name, text) in stages {
        write_file(&dir.join("stages").join(name), text, true)?;
    }
    for (name, text) in PROMPTS {
        write_file(&dir.join("prompts").join(name), text, false)?;
    }
    if agent.is_some() {
        for (name, text) in super::init_agent::PROMPTS {
            write_file(&dir.join("prompts").join(name), text, false)?;
        }
    }
    // The config last: a project whose config exists is complete.
    write_file(&config, &text, false)?;
    let gitignore = dir.join(".gitignore");
    if !gitignore.exists() {
        write_file(&gitignore, GITIGNORE, false)?;
    }
    // The dashboard's access token, needed when it listens on anything but
    // loopback; in the data folder, which .gitignore keeps out of git.
    let token = dir.join(".ideamill").join("token");
    ideamill_web::auth::create_token_file(&token)
        .with_context(|| format!("cannot write the access token {}", token.display()))?;
    println!("Created an ideamill project in {}.", dir.display());
    if let Some(preset) = agent {
        println!(
            "Its `outline` and `implement` stages run the `{preset}` CLI, confined (`ideamill validate` checks it is installed)."
        );
    } else if endpoint.is_none() {
        println!(
            "Its stages are placeholder programs (stages/*.py): it runs anywhere, with no model."
        );
        println!(
            "For stages that call a model: `ideamill init --force --provider URL --model M [--api-key-env VAR]`,"
        );
        println!("or --local-model for the SmolLM2 server of scripts/llm-server.sh.");
    } else if args.local_model {
        println!(
            "Its model is the local SmolLM2 server: start it with `bash scripts/llm-server.sh start`"
        );
        println!("(from the ideamill repository).");
    }
    println!("Next:");
    if args.dir.is_some() {
        println!("  cd {}", dir.display());
    }
    println!("  ideamill add \"a CLI that converts CSV to JSON\"");
    println!("  ideamill run --until-idle");
    println!("  ideamill list");
    Ok(ExitCode::SUCCESS)
}

/// The inside of a TOML basic string.
pub(super) fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Write crash-safely (temp, fsync, rename, fsync of the folder), so a
/// crash leaves no half file and a finished `init` stays finished.
fn write_file(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    let mode = if executable { 0o755 } else { 0o666 };
    ideamill_sys::fs::write_atomic(path, text.as_bytes(), mode)
        .with_context(|| format!("cannot write {}", path.display()))
}
