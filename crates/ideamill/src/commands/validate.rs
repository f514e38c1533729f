//! `ideamill validate`: check the config (every error, located) and, unless
//! told not to, the environment it needs.

use std::path::Path;
use std::process::ExitCode;

use ideamill_core::Config;
use ideamill_core::config::SandboxMode;
use ideamill_stages::sandbox::{self, Sandbox, stages_with};

use crate::cli::ValidateArgs;
use crate::{exit, output, project};

pub fn run(config: Option<&Path>, args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let config = match project::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            if let Some(errors) = e.downcast_ref::<ideamill_core::ConfigErrors>() {
                if args.json {
                    let list: Vec<_> = errors
                        .0
                        .iter()
                        .map(|e| serde_json::json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}))
                        .collect();
                    output::json(&serde_json::json!({ "valid": false, "errors": list }))?;
                } else {
                    for error in &errors.0 {
                        eprintln!("{error}");
                    }
                    eprintln!(
                        "{} error{} in {}",
                        errors.0.len(),
                        if errors.0.len() == 1 { "" } else { "s" },
                        errors.0[0].file.display()
                    );
                }
                return Ok(ExitCode::from(exit::CONFIG));
            }
            return Err(e);
        }
    };
    let (problems, sandbox) = if args.no_environment {
        (Vec::new(), None)
    } else {
        let sandbox = Sandbox::probe(&config.sandbox);
        let mut problems = environment_problems(&config);
        if let Some(problem) = sandbox::refusal(&config, &sandbox) {
            problems.push(problem);
        }
        (problems, Some(sandbox))
    };
    if args.json {
        output::json(&serde_json::json!({
            "valid": problems.is_empty(),
            "errors": [],
            "environment": problems,
            "sandbox": sandbox.as_ref().map(Sandbox::report),
        }))?;
    } else {
        let names: Vec<&str> = config.stages.iter().map(|s| s.name.as_str()).collect();
        println!(
            "{}: valid; stages: {}",
            config.path.display(),
            names.join(" → ")
        );
        if let Some(sandbox) = &sandbox {
            println!("  sandbox: {}", sandbox.report().lines());
            for name in stages_with(&config, SandboxMode::Off) {
                println!(
                    "  warning: stage `{name}` runs UNCONFINED (sandbox = \"off\"): what it runs has your user's access"
                );
            }
        }
        for p in &problems {
            println!("  environment: {p}");
        }
    }
    Ok(ExitCode::from(if problems.is_empty() {
        exit::OK
    } else {
        exit::CONFIG
    }))
}

/// What would stop the config from running here: missing programs,
/// folders that cannot be written.
fn environment_problems(config: &Config) -> Vec<String> {
    // Each kind says what would stop its stages here.
    let mut problems = ideamill_stages::kind::environment(config);
    match ideamill_stages::llm_stage::providers(config) {
        Err(e) => problems.push(e),
        Ok(providers) if !providers.is_empty() => {
            // Whether each endpoint answers, within a few seconds.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                for (name, provider) in &providers {
                    let probe = runtime.block_on(async {
                        tokio::time::timeout(std::time::Duration::from_secs(5), provider.probe())
                            .await
                    });
                    match probe {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            problems.push(format!("provider `{name}` does not answer: {e}"))
                        }
                        Err(_) => {
                            problems.push(format!("provider `{name}` does not answer within 5s"))
                        }
                    }
                }
            }
        }
        Ok(_) => {}
    }
    for (what, dir) in [
        ("data_dir", &config.engine.data_dir),
        ("workspace", &config.engine.workspace),
        ("inbox", &config.engine.inbox),
    ] {
        let existing = dir.ancestors().find(|d| d.exists());
        match existing {
            Some(d)
                if std::fs::metadata(d)
                    .map(|m| m.permissions().readonly())
                    .unwrap_or(true) =>
            {
                problems.push(format!(
                    "{what} {}: {} is not writable",
                    dir.display(),
                    d.display()
                ))
            }
            None => problems.push(format!(
                "{what} {}: no existing parent folder",
                dir.display()
            )),
            _ => {}
        }
    }
    problems
}
