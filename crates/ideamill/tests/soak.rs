//! The short profile of `ideamill bench soak`: five minutes of load and
//! every fault on SQLite and on a PostgreSQL cluster of the soak's own,
//! then the drained mill's invariants, read from the summary the soak
//! prints with `--json` (nothing lost, nothing committed twice, no wait of
//! runnable work left unexplained). The two run in parallel.

use std::process::Command;

use serde_json::Value;

use crate::postgres::cluster;
use crate::util::BIN;

/// Run the short soak on `store` and check its verdict.
fn soak(store: &str, seed: &str) {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args([
            "bench",
            "soak",
            "--duration",
            "5m",
            "--drain",
            "90s",
            "--chaos-every",
            "15s",
            "--report-every",
            "1m",
            "--json",
            "--seed",
            seed,
            "--store",
            store,
            "--out",
        ])
        .arg(out.path())
        .env_remove("IDEAMILL_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary ({})\n{stdout}\n{stderr}", output.status));
    let context = format!(
        "{}\n{stderr}",
        serde_json::to_string_pretty(&summary).unwrap()
    );
    assert!(output.status.success(), "exit {}: {context}", output.status);
    assert_eq!(summary["ok"], true, "{context}");
    assert_eq!(summary["violations"], serde_json::json!([]), "{context}");
    assert_eq!(summary["lost"], 0, "{context}");
    assert_eq!(summary["duplicated_outputs"], 0, "{context}");
    assert_eq!(summary["in_flight"], 0, "{context}");
    let ideas = summary["ideas_in"].as_u64().unwrap();
    let finished = summary["done"].as_u64().unwrap()
        + summary["failed"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>();
    assert!(ideas > 20, "too few ideas went in: {context}");
    assert!(
        finished >= ideas,
        "{finished} finished of {ideas}: {context}"
    );
    // Nothing of a killed engine's jobs is left on the host.
    assert_eq!(
        summary["sandbox_leftovers"],
        serde_json::json!([]),
        "{context}"
    );
    assert!(summary["engines_seen"].as_u64().unwrap() >= 1, "{context}");
    let long_waits = summary["long_waits"].as_array().unwrap();
    assert!(
        long_waits.iter().all(|w| w[1] != "UNEXPLAINED"),
        "{context}"
    );
    // The faults happened: the soak is no soak without them.
    let faults: u64 = summary["chaos"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(faults > 3, "only {faults} faults: {context}");
}

#[test]
fn soak_short_profile_on_sqlite() {
    soak("sqlite", "7");
}

#[test]
fn soak_short_profile_on_postgres() {
    if cluster::find_binaries().is_none() && std::env::var_os("CI").is_none() {
        eprintln!(
            "skipped: the PostgreSQL server binaries (initdb, pg_ctl) are not installed \
             (in CI this fails instead)"
        );
        return;
    }
    soak("postgres", "11");
}
