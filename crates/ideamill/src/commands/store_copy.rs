//! `ideamill store copy --from URL --to URL [--force]`: move a whole store
//! to another database (typically SQLite to PostgreSQL, when one machine is
//! no longer enough), ids kept, while no engine runs on the source.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ideamill_store::{OpenOptions, redact_url, transfer};
use ideamill_sys::clock::now_millis;
use ideamill_sys::hostname;
use ideamill_sys::process::pid_alive;

use crate::cli::StoreCopyArgs;
use crate::output::{self, Table};

/// A process on another machine that has not beaten for this long is gone.
const SILENT_MS: i64 = 120_000;

pub async fn run(args: StoreCopyArgs) -> anyhow::Result<ExitCode> {
    let (from, to) = (redact_url(&args.from), redact_url(&args.to));
    anyhow::ensure!(
        args.from != args.to,
        "--from and --to name the same store ({from})"
    );
    // Opening checks (and, for an older build's store, migrates) both ends:
    // a store from a newer ideamill is refused before anything is copied.
    let source = ideamill_store::open(
        &args.from,
        &OpenOptions {
            wake_dir: None,
            must_exist: true,
        },
    )
    .await
    .with_context(|| format!("cannot open the source store {from}"))?;
    let processes = source.processes().await;
    source.close().await;
    let host = hostname();
    let now = now_millis();
    let live: Vec<String> = processes
        .with_context(|| format!("cannot list the engines of {from}"))?
        .into_iter()
        .filter(|p| {
            if p.host == host {
                pid_alive(p.pid)
            } else {
                now - p.last_beat_at < SILENT_MS
            }
        })
        .map(|p| {
            format!(
                "{} on {} (pid {}, last beat {})",
                p.id,
                p.host,
                p.pid,
                output::ago(p.last_beat_at, now)
            )
        })
        .collect();
    anyhow::ensure!(
        live.is_empty(),
        "engines are running on the source: {}; stop them first, so that no work is in flight while copying",
        live.join("; ")
    );
    let target = ideamill_store::open(
        &args.to,
        &OpenOptions {
            wake_dir: None,
            must_exist: false,
        },
    )
    .await
    .with_context(|| format!("cannot open the target store {to}"))?;
    target.close().await;

    let report = transfer::copy(&args.from, &args.to, args.force)
        .await
        .with_context(|| format!("cannot copy {from} to {to}"))?;
    if args.json {
        output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "Copied {from} to {to}; row counts verified:")?;
    let mut table = Table::new(&["TABLE", "ROWS"]);
    for t in &report.tables {
        table.row(vec![t.table.clone(), t.rows.to_string()]);
    }
    table.print(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
