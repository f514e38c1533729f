//! `ideamill doctor`: every health check, the verdict (HEALTHY, DEGRADED,
//! STALLED, DOWN) with every reason, and an exit code for scripts: 0, 1, 2, 3.
//! The rules are `ideamill_health::verdict`, shared with `status`;
//! `docs/runbook.md` says what each reason means and what to do.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ideamill_core::{Config, Millis};
use ideamill_health::verdict::{self, Facts, Level, ProviderCheck, Reason, Verdict};
use ideamill_store::StoreError;
use ideamill_sys::clock::now_millis;
use ideamill_sys::fs::free_bytes;
use ideamill_web::api::wire::Health;
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::{output, project};
use ideamill_stages::sandbox::Sandbox;

// The facts `status` shares with `doctor` (and the dashboard and the alert
// monitor): in ideamill-health, so that all of them judge the same things.
pub use ideamill_health::facts::{engine_files, gather};

/// How long the store's consistency check may take.
const QUICK_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether each configured model provider answers: a cheap request (its
/// model list) with a short timeout, all providers at once.
async fn check_providers(config: &Config) -> Vec<ProviderCheck> {
    let providers = match ideamill_stages::llm_stage::providers(config) {
        Ok(p) => p,
        // A missing key: every call would fail, so say so for each provider.
        Err(e) => {
            return config
                .providers
                .keys()
                .map(|name| ProviderCheck {
                    name: name.clone(),
                    ok: false,
                    message: e.clone(),
                })
                .collect();
        }
    };
    let mut probes = tokio::task::JoinSet::new();
    for (name, provider) in providers {
        probes.spawn(async move {
            let answer =
                tokio::time::timeout(std::time::Duration::from_secs(5), provider.probe()).await;
            let (ok, message) = match answer {
                Ok(Ok(())) => (true, "answers".to_string()),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, "no answer within 5s".to_string()),
            };
            ProviderCheck { name, ok, message }
        });
    }
    let mut checks: Vec<ProviderCheck> = probes.join_all().await;
    checks.sort_by(|a, b| a.name.cmp(&b.name));
    checks
}

/// With `[telemetry]` on: whether the collector answers an empty export
/// request, and what each engine's exporter sent and dropped. Traces are
/// never worth a verdict (the mill works without them): the check fails,
/// the verdict stays.
async fn check_telemetry(config: &Config, engines: &[verdict::EngineFile]) -> Option<Check> {
    let endpoint = config.telemetry.otlp_endpoint.as_ref()?;
    let shown = ideamill_core::config::redact_url_secret(endpoint);
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        ideamill_telemetry::exporter::probe(&config.telemetry),
    )
    .await
    .unwrap_or_else(|_| Err("no answer within 5s".into()));
    let mut detail = match &probe {
        Ok(()) => format!("{shown}/v1/traces: the collector answers"),
        Err(e) => format!("{shown}/v1/traces: the collector is unreachable ({e})"),
    };
    let mut dropped = 0;
    for e in engines.iter().filter(|e| e.alive) {
        if let Some(t) = &e.file.telemetry {
            dropped += t.dropped;
            detail.push_str(&format!(
                "; engine pid {}: {} span(s) sent, {} dropped, {} failed request(s){}",
                e.file.pid,
                t.exported,
                t.dropped,
                t.failures,
                t.last_error
                    .as_ref()
                    .map_or(String::new(), |m| format!(" (last: {m})"))
            ));
        }
    }
    Some(Check {
        name: "telemetry",
        ok: probe.is_ok() && dropped == 0,
        detail,
    })
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    health: Health,
    exit_code: u8,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

pub async fn run(config: Option<&Path>, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let config = match project::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            let reason = Reason {
                level: Level::Down,
                code: "config_invalid",
                message: format!("the config cannot be used: {e:#}"),
            };
            let checks = vec![Check {
                name: "config",
                ok: false,
                detail: format!("{e:#}"),
            }];
            return print(Verdict::from_reasons(vec![reason]), checks, args.json);
        }
    };
    let mut checks = vec![Check {
        name: "config",
        ok: true,
        detail: format!(
            "{}: {} stage(s), {} provider(s)",
            config.path.display(),
            config.stages.len(),
            config.providers.len()
        ),
    }];
    let now = now_millis();
    let url = ideamill_store::redact_url(&config.store.url);
    let mut facts = Facts {
        now,
        ..Facts::default()
    };
    match project::open_existing_store(&config).await {
        Ok(store) => {
            facts = gather(&config, &*store, now).await;
            match store.status(now).await {
                Ok(s) => facts.snapshot = Some(s),
                Err(e) => facts.store_error = Some(e.to_string()),
            }
            let problems =
                match tokio::time::timeout(QUICK_CHECK_TIMEOUT, store.quick_check()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => vec![format!("the check itself failed: {e}")],
                    Err(_) => vec![format!(
                        "the check did not finish within {} s",
                        QUICK_CHECK_TIMEOUT.as_secs()
                    )],
                };
            checks.push(Check {
                name: "store",
                ok: problems.is_empty() && facts.store_error.is_none(),
                detail: if problems.is_empty() {
                    format!("{url}: reachable, consistency check ok")
                } else {
                    format!("{url}: {}", problems.join("; "))
                },
            });
            facts.store_problems = Some(problems);
            store.close().await;
        }
        Err(e)
            if e.chain().any(|c| {
                matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Missing(_)))
            }) =>
        {
            // A project nobody has run yet: nothing is wrong, nothing to check.
            facts.engines = engine_files(&config);
            facts.free_disk = free_bytes(&config.engine.data_dir);
            checks.push(Check {
                name: "store",
                ok: true,
                detail: format!(
                    "{url}: not created yet (`ideamill add` or `ideamill run` creates it)"
                ),
            });
        }
        Err(e) => {
            facts.store_error = Some(format!("{e:#}"));
            facts.engines = engine_files(&config);
            facts.free_disk = free_bytes(&config.engine.data_dir);
            checks.push(Check {
                name: "store",
                ok: false,
                detail: format!("{e:#}"),
            });
        }
    }
    if !args.no_providers {
        facts.providers = check_providers(&config).await;
    }

    if let Some(check) = check_telemetry(&config, &facts.engines).await {
        checks.push(check);
    }
    let engines = &facts.engines;
    checks.push(Check {
        name: "engines",
        ok: engines
            .iter()
            .all(|e| e.alive && e.beat_age_ms <= e.file.stall_after_ms as Millis),
        detail: if engines.is_empty() {
            "no engine process on this machine".into()
        } else {
            engines
                .iter()
                .map(|e| {
                    format!(
                        "pid {}{}: beat {} ago, loop lag {:.1} ms (max {:.1}), {} job(s) running{}",
                        e.file.pid,
                        if e.alive { "" } else { " (gone)" },
                        verdict::short(e.beat_age_ms),
                        e.file.loop_lag_ms,
                        e.file.loop_lag_max_ms,
                        e.file.in_flight.len(),
                        e.file
                            .supervisor_pid
                            .map_or(", unsupervised".to_string(), |p| format!(
                                ", supervisor pid {p}"
                            ))
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    });
    if let Some(s) = &facts.snapshot {
        let live = s
            .processes
            .iter()
            .map(|p| {
                format!(
                    "{} (beat {} ago)",
                    p.id,
                    verdict::short(now - p.last_beat_at)
                )
            })
            .collect::<Vec<_>>();
        checks.push(Check {
            name: "processes",
            ok: true,
            detail: if live.is_empty() {
                "no engine registered in the store".into()
            } else {
                live.join(", ")
            },
        });
        let queued: u64 = s.stages.iter().map(|c| c.queued).sum();
        checks.push(Check {
            name: "jobs",
            ok: s.expired_leases == 0,
            detail: format!(
                "{queued} runnable, {} running, {} holding expired leases{}",
                s.running.len(),
                s.expired_leases,
                s.oldest_runnable_at.map_or(String::new(), |t| format!(
                    "; the oldest runnable has waited {}",
                    verdict::short(now - t)
                ))
            ),
        });
    }
    checks.push(Check {
        name: "failures",
        ok: facts.attempts.iter().all(|a| a.worked > 0 || a.failed < 3),
        detail: if facts.attempts.is_empty() {
            format!(
                "no attempts in the last {}",
                verdict::short(ideamill_core::duration::millis(
                    config.health.failure_window
                ))
            )
        } else {
            facts
                .attempts
                .iter()
                .map(|a| format!("{}: {} of {} failed", a.stage, a.failed, a.attempts))
                .collect::<Vec<_>>()
                .join(", ")
        },
    });
    checks.push(Check {
        name: "disk",
        ok: facts
            .free_disk
            .is_none_or(|f| f >= config.health.min_free_disk_mb * 1024 * 1024),
        detail: facts.free_disk.map_or("free space unknown".into(), |f| {
            format!(
                "{} MiB free (minimum {} MiB)",
                f / (1024 * 1024),
                config.health.min_free_disk_mb
            )
        }),
    });
    checks.push(Check {
        name: "providers",
        ok: facts.providers.iter().all(|p| p.ok),
        detail: if args.no_providers {
            "not checked (--no-providers)".into()
        } else if config.providers.is_empty() {
            "none configured".into()
        } else if facts.providers.is_empty() {
            "not checked by this build".into()
        } else {
            facts
                .providers
                .iter()
                .map(|p| format!("{}: {}", p.name, p.message))
                .collect::<Vec<_>>()
                .join(", ")
        },
    });
    // Leases on a shared store are judged by its clock; a machine whose
    // clock is off misdates what it records and misjudges other machines.
    if let Ok(store) = project::open_existing_store(&config).await {
        let before = now_millis();
        if let Ok(Some(clock)) = store.clock_millis().await {
            let skew = clock - (before + now_millis()) / 2;
            checks.push(Check {
                name: "clock",
                ok: skew.abs() <= 1_000,
                detail: if skew.abs() <= 1_000 {
                    format!("this machine's clock agrees with the store's ({skew} ms)")
                } else {
                    format!(
                        "this machine's clock differs from the store's by {} ms (it runs {})",
                        skew.abs(),
                        if skew > 0 { "behind" } else { "ahead" }
                    )
                },
            });
        }
        store.close().await;
    }
    let sandbox = {
        let sandbox_config = config.sandbox.clone();
        tokio::task::spawn_blocking(move || Sandbox::probe(&sandbox_config)).await?
    };
    let problem = ideamill_stages::sandbox::refusal(&config, &sandbox);
    checks.push(Check {
        name: "sandbox",
        ok: problem.is_none(),
        detail: sandbox.report().lines().replace('\n', ";"),
    });
    let mut verdict = verdict::judge(&config, &facts);
    if let Some(problem) = problem {
        let mut reasons = verdict.reasons;
        reasons.push(Reason {
            level: Level::Down,
            code: "sandbox_unavailable",
            message: problem,
        });
        verdict = Verdict::from_reasons(reasons);
    }
    print(verdict, checks, args.json)
}

fn print(verdict: Verdict, checks: Vec<Check>, json: bool) -> anyhow::Result<ExitCode> {
    let code = verdict.verdict.exit_code();
    if json {
        output::json(&Report {
            health: verdict.into(),
            exit_code: code,
            checks,
        })?;
        return Ok(ExitCode::from(code));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", verdict.verdict)?;
    for r in &verdict.reasons {
        // A reason at the HEALTHY level is a warning that changes no verdict.
        let level = match r.level {
            Level::Healthy => "warning".to_string(),
            other => other.to_string(),
        };
        writeln!(out, "  - [{level} {}] {}", r.code, r.message)?;
    }
    writeln!(out)?;
    for c in &checks {
        writeln!(
            out,
            "{:<10} {:<4} {}",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.detail
        )?;
    }
    if !verdict.reasons.is_empty() {
        writeln!(
            out,
            "\nWhat each reason means and what to do: docs/runbook.md (by its code)."
        )?;
    }
    Ok(ExitCode::from(code))
}
