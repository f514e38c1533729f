//! `ideamill init --agent PRESET`: the pipeline for a coding-agent CLI:
//! outline (an agent stage, or an llm stage with --provider/--local-model)
//! -> implement (an agent stage) -> qa (the sandboxed command gate).

use crate::cli::InitArgs;

const CONFIG: &str = include_str!("../scaffold/ideamill-agent.toml");
const OUTLINE_AGENT: &str = include_str!("../scaffold/agent-outline-agent.toml");
const OUTLINE_LLM: &str = include_str!("../scaffold/agent-outline-llm.toml");

/// The prompts an agent project starts with, under `prompts/`.
pub(super) const PROMPTS: &[(&str, &str)] = &[
    (
        "agent-outline.md",
        include_str!("../scaffold/agent-outline.md"),
    ),
    (
        "agent-implement.md",
        include_str!("../scaffold/agent-implement.md"),
    ),
];

/// The `ideamill.toml` of an agent project for `preset`.
pub(super) fn config(preset: &str, args: &InitArgs) -> String {
    let keys = ideamill_core::config::preset_names()
        .into_iter()
        .zip(all_keys())
        .find(|(name, _)| *name == preset)
        .map_or_else(String::new, |(_, keys)| keys.join(", "));
    let outline = match args.model_endpoint() {
        None => OUTLINE_AGENT.to_owned(),
        Some((url, model)) => {
            let api_key_line = match &args.api_key_env {
                Some(var) => format!("api_key_env = \"{}\"\n", super::init::toml_escape(var)),
                None => String::new(),
            };
            OUTLINE_LLM
                .replace("{base_url}", &super::init::toml_escape(url))
                .replace("{model}", &super::init::toml_escape(model))
                .replace("{api_key_line}", &api_key_line)
        }
    };
    CONFIG
        .replace("{outline_stage}", &outline)
        .replace("{keys}", if keys.is_empty() { "none" } else { &keys })
        .replace("{preset}", preset)
}

/// Each preset's key variables, in `preset_names` order.
fn all_keys() -> Vec<&'static [&'static str]> {
    use ideamill_core::config::AgentPreset::*;
    [Claude, Codex, Aider, Gemini, Opencode, Custom]
        .into_iter()
        .map(|p| p.keys())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> InitArgs {
        let cli =
            crate::cli::Cli::try_parse_from(["ideamill", "init", "x"].iter().chain(extra).copied())
                .unwrap();
        match cli.command {
            crate::cli::Command::Init(args) => args,
            _ => panic!("not init"),
        }
    }

    #[test]
    fn every_agent_scaffold_is_a_valid_config() {
        for preset in ["claude", "codex", "aider", "gemini", "opencode"] {
            for extra in [&[][..], &["--local-model"][..]] {
                let mut argv = vec!["--agent", preset];
                argv.extend_from_slice(extra);
                let text = config(preset, &args(&argv));
                let config =
                    ideamill_core::config::parse(&text, std::path::Path::new("/p/ideamill.toml"))
                        .unwrap_or_else(|e| panic!("{preset} {extra:?}: {e}\n{text}"));
                let kinds: Vec<&str> = config.stages.iter().map(|s| s.kind.name()).collect();
                let outline = if extra.is_empty() { "agent" } else { "llm" };
                assert_eq!(kinds, [outline, "agent", "command"], "{preset}");
                for placeholder in ["{preset}", "{keys}", "{outline_stage}", "{base_url}"] {
                    assert!(
                        !text.contains(placeholder),
                        "{placeholder} left in:\n{text}"
                    );
                }
            }
        }
    }
}
