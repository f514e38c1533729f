//! `[providers.<name>]`: the model endpoints of `llm` stages; `[prices]`,
//! what their models cost; `[budget]`, how much they may cost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_span::value::ValueInner;

use super::section::{Got, Section, is_http_url, is_valid_name, resolve};
use super::stages::MAX_CONCURRENCY;

/// Default `base_url` of an `anthropic` provider.
pub const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com/v1";
/// Default `connect_timeout` of a provider.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `idle_timeout` of a provider.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_concurrency` of a provider.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 4;

const PROVIDER_KINDS: &[&str] = &["openai", "anthropic"];

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat-completions endpoint.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

/// Where an API key comes from. The key itself is never in the config, the
/// store or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// No key: the endpoint needs none (e.g. a local model).
    None,
    /// The name of an environment variable holding the key (`api_key_env`).
    Env(String),
    /// A file holding the key (`api_key_file`), absolute.
    File(PathBuf),
}

/// One `[providers.<name>]` model endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// The key of this provider in `[providers]`.
    pub name: String,
    /// Which API the endpoint speaks.
    pub kind: ProviderKind,
    /// The API's base URL, without the endpoint's path.
    pub base_url: String,
    /// The model name sent with each request.
    pub model: String,
    /// Where the API key comes from.
    pub api_key: ApiKeySource,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Stream responses (SSE). Default true.
    pub stream: bool,
    /// Default 10s.
    pub connect_timeout: Duration,
    /// No bytes for this long aborts the request. Default 60s.
    pub idle_timeout: Duration,
    /// Requests in flight at once, shared by all workers of a process. Default 4.
    pub max_concurrency: u32,
    /// Requests started per minute, shared by all workers of a process; no limit when absent.
    pub requests_per_minute: Option<u32>,
    /// Tokens used per minute, shared by all workers of a process; no limit when absent.
    pub tokens_per_minute: Option<u32>,
}

/// A model's price, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per million prompt (input) tokens.
    pub input_per_million: f64,
    /// Per million completion (output) tokens.
    pub output_per_million: f64,
}

/// Spending caps. Reaching one pauses the affected items instead of failing them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetConfig {
    /// The most one item may cost, in US dollars.
    pub item_usd: Option<f64>,
    /// The most all items may cost in one UTC day, in US dollars.
    pub day_usd: Option<f64>,
    /// The most tokens (prompt and completion) one item may use.
    pub item_tokens: Option<u64>,
    /// The most tokens all items may use in one UTC day.
    pub day_tokens: Option<u64>,
}

impl BudgetConfig {
    /// Whether any cap is set.
    pub fn is_set(&self) -> bool {
        self.item_usd.is_some()
            || self.day_usd.is_some()
            || self.item_tokens.is_some()
            || self.day_tokens.is_some()
    }
}

/// `[providers]`: each key names a provider, each value is its table.
pub(super) fn parse(s: &mut Section<'_>, root: &Path) -> BTreeMap<String, ProviderConfig> {
    let mut providers = BTreeMap::new();
    for (key, mut value) in s.entries() {
        let name = key.name.as_ref();
        let label = format!("[providers.{name}]");
        let table = match value.take() {
            ValueInner::Table(table) => table,
            other => {
                s.wrong_type(name, &format!("a table ({label})"), &other, value.span);
                continue;
            }
        };
        if !is_valid_name(name) {
            s.report(
                key.span,
                format!(
                    "{label}: provider names are 1 to 63 lowercase letters, digits, `_` or `-`"
                ),
            );
        }
        let mut p = Section::new(table, value.span, label);
        let provider = provider(name, &mut p, root);
        s.absorb(p);
        providers.insert(name.to_owned(), provider);
    }
    providers
}

fn provider(name: &str, s: &mut Section<'_>, root: &Path) -> ProviderConfig {
    let kind = match s.required_string("kind") {
        Got::Ok(kind, span) => match kind.as_ref() {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            other => {
                s.invalid(
                    "kind",
                    span,
                    format_args!(
                        "{other:?} is not a provider kind; known kinds: {}",
                        PROVIDER_KINDS.join(", ")
                    ),
                );
                ProviderKind::OpenAi
            }
        },
        Got::Absent | Got::Bad => ProviderKind::OpenAi,
    };
    let base_url = match s.string("base_url") {
        Got::Ok(url, span) => {
            if !is_http_url(&url) {
                s.invalid("base_url", span, "must start with http:// or https://");
            }
            url.trim_end_matches('/').to_owned()
        }
        Got::Absent => match kind {
            ProviderKind::OpenAi => {
                s.missing("base_url");
                String::new()
            }
            ProviderKind::Anthropic => DEFAULT_ANTHROPIC_URL.to_owned(),
        },
        Got::Bad => String::new(),
    };
    let model = s.required_string("model").ok().unwrap_or_default();
    let api_key = match (s.string("api_key_env"), s.string("api_key_file")) {
        (Got::Ok(_, _), Got::Ok(_, span)) => {
            s.invalid(
                "api_key_file",
                span,
                "cannot be combined with `api_key_env`: choose one",
            );
            ApiKeySource::None
        }
        (Got::Ok(var, _), _) => ApiKeySource::Env(var.into_owned()),
        (_, Got::Ok(file, _)) => ApiKeySource::File(resolve(root, Path::new(file.as_ref()))),
        _ => ApiKeySource::None,
    };
    let headers = s.string_map("headers");
    let stream = s.boolean("stream").or(true);
    let connect_timeout = s
        .nonzero_duration("connect_timeout")
        .or(DEFAULT_CONNECT_TIMEOUT);
    let idle_timeout = s.nonzero_duration("idle_timeout").or(DEFAULT_IDLE_TIMEOUT);
    let max_concurrency = s.count("max_concurrency", MAX_CONCURRENCY, DEFAULT_MAX_CONCURRENCY);
    let mut per_minute = |key| {
        let n = s.integer(key, 1, i64::from(u32::MAX)).ok();
        n.and_then(|n| u32::try_from(n).ok())
    };
    ProviderConfig {
        name: name.to_owned(),
        kind,
        base_url,
        model: model.into_owned(),
        api_key,
        headers,
        stream,
        connect_timeout,
        idle_timeout,
        max_concurrency,
        requests_per_minute: per_minute("requests_per_minute"),
        tokens_per_minute: per_minute("tokens_per_minute"),
    }
}

/// `[prices]`: `"model-name" = { input = 0.15, output = 0.6 }`, US dollars
/// per million tokens.
pub(super) fn prices(s: &mut Section<'_>) -> BTreeMap<String, Price> {
    let mut prices = BTreeMap::new();
    for (key, mut value) in s.entries() {
        let model = key.name.as_ref();
        let table = match value.take() {
            ValueInner::Table(table) => table,
            other => {
                s.wrong_type(
                    model,
                    "a table like { input = 0.15, output = 0.6 }",
                    &other,
                    value.span,
                );
                continue;
            }
        };
        let mut p = Section::new(table, value.span, format!("[prices] {model:?}"));
        let price = Price {
            input_per_million: p.required_number("input", 0.0).or(0.0),
            output_per_million: p.required_number("output", 0.0).or(0.0),
        };
        s.absorb(p);
        prices.insert(model.to_owned(), price);
    }
    prices
}

/// `[budget]`: every cap optional.
pub(super) fn budget(s: &mut Section<'_>) -> BudgetConfig {
    let item_usd = s.number("item_usd", 0.0).ok();
    let day_usd = s.number("day_usd", 0.0).ok();
    let mut tokens = |key| {
        let n = s.integer(key, 1, i64::MAX).ok();
        n.and_then(|n| u64::try_from(n).ok())
    };
    BudgetConfig {
        item_usd,
        day_usd,
        item_tokens: tokens("item_tokens"),
        day_tokens: tokens("day_tokens"),
    }
}
