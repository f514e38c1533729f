//! A `kind = "llm"` stage: a prompt sent to a model of `[providers]`, its
//! answer kept as output and, with `files = true`, written as files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::providers::ProviderConfig;
use super::section::{Got, Section, resolve};

/// Default `max_tokens` of an `llm` stage.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// Default `max_files` of an `llm` stage.
pub const DEFAULT_MAX_FILES: u32 = 50;
/// Default `max_file_bytes` of an `llm` stage.
pub const DEFAULT_MAX_FILE_BYTES: usize = 256 * 1024;

/// A `kind = "llm"` stage: a model call whose answer's files are written to the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmStage {
    /// A key of `Config::providers`.
    pub provider: String,
    /// The prompt template (minijinja), absolute.
    pub prompt: PathBuf,
    /// A system prompt template, if any: inline text.
    pub system: Option<String>,
    /// Sampling temperature; the provider's default when absent.
    pub temperature: Option<f32>,
    /// Always sent. Default 1024.
    pub max_tokens: u32,
    /// Write fenced code blocks that name a file into the item's workspace.
    pub files: bool,
    /// Default 50.
    pub max_files: usize,
    /// Default 256 KiB.
    pub max_file_bytes: usize,
}

impl LlmStage {
    /// The `kind` value of an llm stage.
    pub const KIND: &str = "llm";
}

/// The llm stage's own keys, after those every stage has.
pub(super) fn parse(
    s: &mut Section<'_>,
    root: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
) -> LlmStage {
    let provider = match s.required_string("provider") {
        Got::Ok(name, span) => {
            if !providers.contains_key(name.as_ref()) {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none is defined".to_owned()
                } else {
                    known.join(", ")
                };
                s.invalid(
                    "provider",
                    span,
                    format_args!(
                        "{name:?} is not a provider; add [providers.{name}] (providers: {known})"
                    ),
                );
            }
            name.into_owned()
        }
        Got::Absent | Got::Bad => String::new(),
    };
    let prompt = match s.required_string("prompt") {
        Got::Ok(path, span) if path.is_empty() => {
            s.invalid("prompt", span, "must name a template file");
            PathBuf::new()
        }
        Got::Ok(path, _) => resolve(root, Path::new(path.as_ref())),
        Got::Absent | Got::Bad => PathBuf::new(),
    };
    let system = s.string("system").ok().map(|text| text.into_owned());
    let temperature = match s.number("temperature", 0.0) {
        Got::Ok(t, span) if t > 2.0 => {
            s.invalid(
                "temperature",
                span,
                format_args!("must be from 0 to 2, found {t}"),
            );
            None
        }
        Got::Ok(t, _) => Some(t as f32),
        Got::Absent | Got::Bad => None,
    };
    LlmStage {
        provider,
        prompt,
        system,
        temperature,
        max_tokens: s.count("max_tokens", i64::from(u32::MAX), DEFAULT_MAX_TOKENS),
        files: s.boolean("files").or(false),
        max_files: s.count("max_files", 100_000, DEFAULT_MAX_FILES) as usize,
        max_file_bytes: match s.integer("max_file_bytes", 1, i64::MAX) {
            Got::Ok(n, _) => usize::try_from(n).unwrap_or(usize::MAX),
            Got::Absent | Got::Bad => DEFAULT_MAX_FILE_BYTES,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::testing::{check_errors, config};
    use crate::config::{ApiKeySource, Price, ProviderKind, StageKind};

    #[test]
    fn llm_stages_providers_prices_and_budgets() {
        let text = r#"
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:8089/v1/"
model = "smollm2"
api_key_env = "KEY"
headers = { "X-Title" = "ideamill" }
idle_timeout = "30s"
tokens_per_minute = 1000

[providers.claude]
kind = "anthropic"
model = "claude-x"
api_key_file = "secrets/key"

[prices]
"claude-x" = { input = 3, output = 15.5 }

[budget]
item_usd = 0.5
day_tokens = 100000

[[stages]]
name = "implement"
kind = "llm"
provider = "local"
prompt = "prompts/implement.md"
files = true
temperature = 0.2
max_tokens = 2000
"#;
        let config = config(text);
        let local = &config.providers["local"];
        assert_eq!(local.kind, ProviderKind::OpenAi);
        assert_eq!(local.base_url, "http://127.0.0.1:8089/v1");
        assert_eq!(local.api_key, ApiKeySource::Env("KEY".into()));
        assert_eq!(local.headers["X-Title"], "ideamill");
        assert_eq!(
            (local.idle_timeout, local.tokens_per_minute, local.stream),
            (Duration::from_secs(30), Some(1000), true)
        );
        let claude = &config.providers["claude"];
        assert_eq!(claude.base_url, "https://api.anthropic.com/v1");
        assert_eq!(
            claude.api_key,
            ApiKeySource::File(PathBuf::from("/proj/secrets/key"))
        );
        assert_eq!(
            config.prices["claude-x"],
            Price {
                input_per_million: 3.0,
                output_per_million: 15.5
            }
        );
        assert_eq!(config.budget.item_usd, Some(0.5));
        assert_eq!(config.budget.day_tokens, Some(100_000));
        let StageKind::Llm(llm) = &config.stages[0].kind else {
            panic!("an llm stage")
        };
        assert_eq!(llm.prompt, PathBuf::from("/proj/prompts/implement.md"));
        assert_eq!(
            (llm.files, llm.max_tokens, llm.temperature),
            (true, 2000, Some(0.2))
        );

        check_errors(
            "[providers.p]\nkind = \"gemini\"\nbase_url = \"ftp://x\"\n\n\
             [[stages]]\nname = \"a\"\nkind = \"llm\"\nprovider = \"q\"\nprompt = \"p.md\"\ntemperature = 3\n",
            &[
                "1:1: [providers.p]: missing required key `model`",
                "2:8: [providers.p]: `kind` \"gemini\" is not a provider kind; known kinds: openai, anthropic",
                "3:12: [providers.p]: `base_url` must start with http:// or https://",
                "8:12: [[stages]] #1 (\"a\"): `provider` \"q\" is not a provider; add [providers.q] (providers: p)",
                "10:15: [[stages]] #1 (\"a\"): `temperature` must be from 0 to 2, found 3",
            ],
        );
    }
}
