//! The `llm` stage kind: render the prompt template, reserve the call's
//! worst case against the budget, call the provider, write the generated
//! files, and record tokens and cost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ideamill_core::config::{
    ApiKeySource, BudgetConfig, LlmStage, ProviderConfig, ProviderKind, StageConfig,
};
use ideamill_core::duration::format_duration;
use ideamill_core::machine::StageResult;
use ideamill_core::{AttemptOutcome, Config, FailureClass, Millis, Usage};
use ideamill_llm::{ChatRequest, ErrorClass, FileLimits, LlmError, Price, Provider};
use ideamill_store::{ClaimedJob, ItemContext, Store};
use ideamill_sys::clock::now_millis;
use tokio_util::sync::CancellationToken;

use crate::executor::{Execution, Executor, ModelCall, context_json, workspace_files};

/// Build one [`Provider`] per `[providers.NAME]`, resolving API keys. Errors
/// name the provider and what is missing, never a key.
pub fn providers(config: &Config) -> Result<BTreeMap<String, Arc<Provider>>, String> {
    config
        .providers
        .values()
        .map(|p| Ok((p.name.clone(), Arc::new(provider(p)?))))
        .collect()
}

fn provider(p: &ProviderConfig) -> Result<Provider, String> {
    let api_key = match &p.api_key {
        ApiKeySource::None => None,
        ApiKeySource::Env(var) => match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Some(ideamill_llm::Secret::new(key.trim())),
            _ => {
                return Err(format!(
                    "provider `{}`: the environment variable {var} (api_key_env) is not set",
                    p.name
                ));
            }
        },
        ApiKeySource::File(path) => match std::fs::read_to_string(path) {
            Ok(key) if !key.trim().is_empty() => Some(ideamill_llm::Secret::new(key.trim())),
            Ok(_) => {
                return Err(format!(
                    "provider `{}`: the key file {} is empty",
                    p.name,
                    path.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "provider `{}`: cannot read the key file {}: {e}",
                    p.name,
                    path.display()
                ));
            }
        },
    };
    let mut cfg = ideamill_llm::ProviderConfig::new(
        p.name.clone(),
        match p.kind {
            ProviderKind::OpenAi => ideamill_llm::ProviderKind::OpenAi,
            ProviderKind::Anthropic => ideamill_llm::ProviderKind::Anthropic,
        },
        p.base_url.clone(),
        p.model.clone(),
    );
    cfg.api_key = api_key;
    cfg.headers = p
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    cfg.stream = p.stream;
    cfg.connect_timeout = p.connect_timeout;
    cfg.idle_timeout = p.idle_timeout;
    // Each stage enforces its own `timeout` around the call.
    cfg.total_timeout = std::time::Duration::from_secs(24 * 3600);
    cfg.max_concurrency = p.max_concurrency;
    cfg.requests_per_minute = p.requests_per_minute;
    cfg.tokens_per_minute = p.tokens_per_minute;
    Provider::new(cfg).map_err(|e| format!("provider `{}`: {e}", p.name))
}

/// Runs an `llm` stage: renders the prompt, calls the model and writes the files of its answer.
pub struct LlmExecutor {
    stage: StageConfig,
    llm: LlmStage,
    provider: Arc<Provider>,
    /// The template's source, read and checked when the engine starts.
    template: String,
    template_name: String,
    workspace: PathBuf,
    price: Option<Price>,
    budget: BudgetConfig,
    store: Arc<dyn Store>,
    /// `gen_ai.system` of the API the provider speaks.
    system_name: &'static str,
    /// The model the config asks the provider for.
    model: String,
}

impl LlmExecutor {
    /// The executor of `stage`, with its provider from `providers` and its
    /// template read and checked.
    pub fn new(
        config: &Config,
        stage: &StageConfig,
        llm: &LlmStage,
        providers: &BTreeMap<String, Arc<Provider>>,
        store: Arc<dyn Store>,
    ) -> Result<LlmExecutor, String> {
        let provider = providers
            .get(&llm.provider)
            .ok_or_else(|| format!("stage `{}`: no provider `{}`", stage.name, llm.provider))?
            .clone();
        let template = std::fs::read_to_string(&llm.prompt).map_err(|e| {
            format!(
                "stage `{}`: cannot read the prompt template {}: {e}",
                stage.name,
                llm.prompt.display()
            )
        })?;
        let template_name = llm
            .prompt
            .strip_prefix(&config.root)
            .unwrap_or(&llm.prompt)
            .display()
            .to_string();
        crate::prompt::check(&template_name, &template)?;
        if let Some(system) = &llm.system {
            crate::prompt::check(&format!("stage `{}` system", stage.name), system)?;
        }
        let provider_config = &config.providers[&llm.provider];
        let model = &provider_config.model;
        let system_name = match provider_config.kind {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        };
        let price = config.prices.get(model).map(|p| Price {
            input_per_million: p.input_per_million,
            output_per_million: p.output_per_million,
        });
        Ok(LlmExecutor {
            stage: stage.clone(),
            llm: llm.clone(),
            provider,
            template,
            template_name,
            workspace: config.engine.workspace.clone(),
            price,
            budget: config.budget,
            store,
            system_name,
            model: model.clone(),
        })
    }

    /// Reserve this call's worst case against the caps; why it may not be
    /// made, if it may not. The finish of the job releases the reservation
    /// and records what the call actually used.
    async fn reserve(
        &self,
        job: &ClaimedJob,
        request: &ChatRequest,
        now: Millis,
    ) -> Result<Option<String>, String> {
        if !self.budget.is_set() {
            return Ok(None);
        }
        let prompt_tokens = request
            .estimated_tokens()
            .saturating_sub(u64::from(request.max_tokens));
        let (tokens, cost) =
            crate::budget::worst_case(prompt_tokens, request.max_tokens, self.price.as_ref());
        crate::budget::reserve(
            self.store.as_ref(),
            &self.budget,
            job,
            (tokens, cost),
            self.stage.timeout,
            now,
        )
        .await
    }

    fn usage(
        &self,
        prompt_tokens: u64,
        completion_tokens: u64,
        model: &str,
        counted: bool,
    ) -> Usage {
        Usage {
            provider: self.llm.provider.clone(),
            model: model.to_owned(),
            prompt_tokens,
            completion_tokens,
            cost: self.price.map_or(0.0, |p| {
                ideamill_llm::cost(prompt_tokens, completion_tokens, &p)
            }),
            counted,
            unknown: false,
        }
    }
}

#[async_trait]
impl Executor for LlmExecutor {
    fn provider(&self) -> Option<&str> {
        Some(&self.llm.provider)
    }

    async fn run(
        &self,
        job: &ClaimedJob,
        context: &ItemContext,
        cancel: &CancellationToken,
    ) -> Execution {
        let dir = match crate::executor::prepare(&self.workspace, &context.item, cancel).await {
            Ok(dir) => dir,
            Err(failed) => return failed,
        };
        let vars = prompt_vars(job, context, &dir);
        let prompt = match crate::prompt::render(&self.template_name, &self.template, &vars) {
            Ok(p) => p,
            Err(e) => return permanent(format!("cannot render the prompt: {e}")),
        };
        let system = match &self.llm.system {
            Some(s) => match crate::prompt::render("system", s, &vars) {
                Ok(s) => Some(s),
                Err(e) => return permanent(format!("cannot render the system prompt: {e}")),
            },
            None => None,
        };
        let request = ChatRequest {
            system,
            prompt,
            temperature: self.llm.temperature,
            max_tokens: self.llm.max_tokens,
        };
        match self.reserve(job, &request, now_millis()).await {
            Ok(Some(reason)) => return paused(reason),
            Ok(None) => {}
            Err(e) => return Execution::infra(e),
        }
        // The engine holds the call to the stage's timeout: at the deadline
        // `cancel` fires and the call ends as cancelled.
        let started_at = now_millis();
        let answer = self.provider.chat(&request, cancel).await;
        let mut call = ModelCall {
            system: self.system_name,
            agent: None,
            provider: self.llm.provider.clone(),
            request_model: self.model.clone(),
            response_model: None,
            started_at,
            ended_at: now_millis(),
            input_tokens: None,
            output_tokens: None,
            first_token_after: None,
            limiter_wait: None,
            finish_reason: None,
            error: None,
            prompt: match &request.system {
                Some(system) => format!("{system}\n\n{}", request.prompt),
                None => request.prompt.clone(),
            },
            completion: None,
        };
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                call.error = Some((e.to_string(), error_class_name(e.class())));
                let mut failed = failure(e, &self.provider, self.stage.timeout);
                failed.model_call = Some(call);
                return failed;
            }
        };
        call.response_model = Some(response.model.clone());
        call.input_tokens = Some(response.prompt_tokens);
        call.output_tokens = Some(response.completion_tokens);
        call.first_token_after = response.first_token_after;
        call.limiter_wait = Some(response.limiter_wait);
        call.finish_reason = response.finish_reason.clone();
        call.completion = Some(response.text.clone());
        let usage = self.usage(
            response.prompt_tokens,
            response.completion_tokens,
            &response.model,
            response.usage_counted,
        );
        let mut notes = Vec::new();
        if matches!(
            response.finish_reason.as_deref(),
            Some("length" | "max_tokens")
        ) {
            notes.push(format!(
                "the answer stopped at max_tokens ({})",
                self.llm.max_tokens
            ));
        }
        if self.llm.files {
            let extraction = ideamill_llm::extract_files(&response.text);
            notes.extend(extraction.problems.iter().cloned());
            let limits = FileLimits {
                max_file_bytes: self.llm.max_file_bytes as u64,
                max_files: self.llm.max_files,
            };
            let files = extraction.files;
            let dir2 = dir.clone();
            let written = tokio::task::spawn_blocking(move || {
                ideamill_llm::write_files(&dir2, &files, &limits)
            })
            .await;
            match written {
                Ok(Ok(report)) => {
                    if report.written.is_empty() {
                        notes.push(
                            "no file was written: the answer named no file in its code blocks"
                                .into(),
                        );
                    } else {
                        notes.push(format!("wrote {}", report.written.join(", ")));
                    }
                    for (path, why) in &report.refused {
                        notes.push(format!("refused {path}: {why}"));
                    }
                }
                Ok(Err(e)) => {
                    let mut failed = Execution::infra(format!("cannot write generated files: {e}"));
                    failed.output = Some(response.text);
                    failed.usage = Some(usage);
                    failed.model_call = Some(call);
                    return failed;
                }
                Err(e) => {
                    let mut failed = Execution::infra(format!("file writer crashed: {e}"));
                    failed.model_call = Some(call);
                    return failed;
                }
            }
        }
        Execution {
            result: StageResult::Passed {
                output: response.text.clone(),
            },
            exit_code: None,
            output: Some(response.text),
            stderr: None,
            error: (!notes.is_empty()).then(|| notes.join("; ")),
            usage: Some(usage),
            model_call: Some(call),
        }
    }
}

/// The variables of a prompt template ([`crate::prompt::VARIABLES`]) for
/// an attempt of `job` in the item's folder `dir`: what `llm` and `agent`
/// stages render their prompts with.
pub(crate) fn prompt_vars(
    job: &ClaimedJob,
    context: &ItemContext,
    dir: &std::path::Path,
) -> serde_json::Value {
    let mut vars = context_json(job, context, dir);
    vars["idea"] = serde_json::json!(context.item.text);
    vars["metadata"] = context.item.metadata.clone();
    vars["files"] = serde_json::json!(workspace_files(dir, 500));
    vars
}

/// The `llm` kind: a model call of `[providers]`.
impl crate::kind::Kind for LlmStage {
    fn executor(
        &self,
        stage: &StageConfig,
        build: &crate::kind::Build<'_>,
    ) -> Result<Arc<dyn crate::executor::Executor>, String> {
        Ok(Arc::new(LlmExecutor::new(
            build.config,
            stage,
            self,
            build.providers,
            build.store.clone(),
        )?))
    }

    fn environment(&self, stage: &StageConfig, config: &Config) -> Vec<String> {
        crate::kind::read_template(stage, &self.prompt, &config.root)
            .err()
            .into_iter()
            .collect()
    }
}

pub(crate) fn paused(reason: String) -> Execution {
    Execution::noted(
        StageResult::Paused {
            reason: reason.clone(),
        },
        reason,
    )
}

/// A prompt that cannot be rendered is the config's fault (its template),
/// not the model's: the model never saw the work.
pub(crate) fn permanent(message: String) -> Execution {
    Execution::noted(
        StageResult::Permanent {
            class: FailureClass::Infra,
            message: message.clone(),
        },
        message,
    )
}

/// An error class as a trace attribute names it.
fn error_class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::RateLimited => "rate_limited",
        ErrorClass::Retryable => "retryable",
        ErrorClass::Permanent => "permanent",
        ErrorClass::Cancelled => "cancelled",
    }
}

/// Map a failed call to the state machine's terms; a rate limit also slows
/// every worker of this provider down. Every [`LlmError`] is the provider's
/// (or the connection's), never the model's work: its class is `Infra`. A
/// poor answer arrives as an answer and is judged by a gate instead.
fn failure(e: LlmError, provider: &Provider, stage_timeout: std::time::Duration) -> Execution {
    let message = match &e {
        LlmError::Timeout { which: "stage", .. } => {
            format!(
                "stage timeout: no complete answer within {}",
                format_duration(stage_timeout)
            )
        }
        other => other.to_string(),
    };
    let result = match e.class() {
        ErrorClass::RateLimited => {
            if let Some(after) = e.retry_after() {
                provider.limiter().pause(after);
            }
            StageResult::RateLimited {
                message: message.clone(),
                retry_after: e.retry_after(),
            }
        }
        ErrorClass::Retryable => StageResult::Failed {
            outcome: if matches!(e, LlmError::Timeout { .. }) {
                AttemptOutcome::Timeout
            } else {
                AttemptOutcome::Error
            },
            class: FailureClass::Infra,
            message: message.clone(),
        },
        ErrorClass::Permanent => StageResult::Permanent {
            class: FailureClass::Infra,
            message: message.clone(),
        },
        ErrorClass::Cancelled => StageResult::Cancelled,
    };
    Execution::noted(result, message)
}
