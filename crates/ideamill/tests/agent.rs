//! `agent` stages end to end: the real binary runs fake agent CLIs
//! (`support/fake_agent.py`, installed under each preset's program name on
//! `PATH`) in the sandbox, and the tests check what each attempt recorded:
//! the final message, the files, the usage the CLI reported (or "unknown"),
//! budgets, timeouts, and `init --agent` projects.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const FAKE: &str = include_str!("support/fake_agent.py");
const PRESETS: &[&str] = &["claude", "codex", "aider", "gemini", "opencode"];

/// A folder of fake agent CLIs, one per name, readable by the sandbox's
/// user (the engine drops to `nobody` when it runs as root).
pub(crate) struct FakeBin {
    dir: tempfile::TempDir,
}

impl FakeBin {
    pub(crate) fn new(names: &[&str]) -> FakeBin {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in names {
            let path = dir.path().join(name);
            std::fs::write(&path, FAKE).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeBin { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `PATH` with the fakes first.
    pub(crate) fn env_path(&self) -> String {
        let rest = std::env::var("PATH").unwrap_or_default();
        format!("{}:{rest}", self.path().display())
    }
}

/// `ideamill ARGS` in `p` with the fakes on `PATH`, to its end.
fn run_with(p: &Project, bin: &FakeBin, args: &[&str]) -> std::process::Output {
    p.cmd(args).env("PATH", bin.env_path()).output().unwrap()
}

pub(crate) fn run_until_idle(p: &Project, bin: &FakeBin) {
    let log = std::fs::File::create(p.file("run-agent.log")).unwrap();
    let mut child = p
        .cmd(&["run", "--until-idle"])
        .env("PATH", bin.env_path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(120)).expect("run --until-idle ends");
    assert!(status.success(), "run failed: {status}\n{}", p.logs());
}

pub(crate) fn agent_stage(name: &str, preset: &str, extra: &str) -> String {
    format!(
        "[[stages]]\nname = \"{name}\"\nkind = \"agent\"\npreset = \"{preset}\"\n\
         prompt = \"prompt.md\"\ntimeout = \"60s\"\nmax_attempts = 1\n{extra}\n"
    )
}

pub(crate) fn project(stages: &str, extra: &str) -> Project {
    let p = Project::new(&format!("{ENGINE}\n{extra}\n{stages}"));
    std::fs::write(
        p.file("prompt.md"),
        "Build: {{ idea }} (stage {{ stage }}, round {{ round }})\n",
    )
    .unwrap();
    p
}

fn attempt<'a>(item: &'a Value, stage: &str) -> &'a Value {
    item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stage"] == stage)
        .unwrap_or_else(|| panic!("no attempt of {stage}: {item:#}"))
}

/// The output `stage` passed on (kept once, with the item's outputs).
fn output<'a>(item: &'a Value, stage: &str) -> &'a Value {
    item["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["stage"] == stage)
        .map_or(&Value::Null, |o| &o["output"])
}

fn workspace(p: &Project, id: i64) -> PathBuf {
    p.file(&format!("workspace/{id}"))
}

#[test]
fn every_preset_runs_its_cli_and_records_message_files_and_usage() {
    let bin = FakeBin::new(PRESETS);
    // codex and gemini report tokens but no cost: [prices] prices them.
    let stages: String = PRESETS
        .iter()
        .map(|preset| {
            let model = if matches!(*preset, "codex" | "gemini") {
                "model = \"fake-model\""
            } else {
                ""
            };
            agent_stage(preset, preset, model)
        })
        .collect();
    let p = project(
        &stages,
        "[prices]\n\"fake-model\" = { input = 1.0, output = 2.0 }\n",
    );
    let ok = run_with(&p, &bin, &["validate"]);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let id = p.add("the answer");
    run_until_idle(&p, &bin);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");

    // (preset, prompt tokens, completion tokens, cost, stdin)
    let expected = [
        ("claude", 150, 40, 0.05, "pipe"),
        (
            "codex",
            1000,
            500,
            (1000.0 * 1.0 + 500.0 * 2.0) / 1e6,
            "pipe",
        ),
        ("aider", 1500, 250, 0.02, "devnull"),
        (
            "gemini",
            300,
            60,
            (300.0 * 1.0 + 60.0 * 2.0) / 1e6,
            "devnull",
        ),
        ("opencode", 200, 70, 0.03, "devnull"),
    ];
    let dir = workspace(&p, id);
    for (preset, prompt_tokens, completion_tokens, cost, stdin) in expected {
        let a = attempt(&item, preset);
        assert_eq!(a["outcome"], "succeeded", "{a:#}");
        // aider prints text: its banner stays, its usage lines go.
        let message = output(&item, preset).as_str().unwrap();
        assert!(
            message == format!("{preset} finished: wrote main.py")
                || (preset == "aider" && message.ends_with("\naider finished: wrote main.py")),
            "the final message is the output, not the CLI's raw JSON: {message:?}"
        );
        let usage = &a["usage"];
        assert_eq!(usage["provider"], preset, "{a:#}");
        assert_eq!(usage["prompt_tokens"], prompt_tokens, "{preset}: {a:#}");
        assert_eq!(usage["completion_tokens"], completion_tokens, "{preset}");
        let got = usage["cost"].as_f64().unwrap();
        assert!(
            (got - cost).abs() < 1e-9,
            "{preset}: cost {got}, not {cost}"
        );
        let note = a["error"].as_str().unwrap_or_default();
        assert!(
            note.contains("files: ") && note.contains("main.py") && note.contains("test_main.py"),
            "the files it left are listed: {note}"
        );
        assert!(
            !note.contains(".ideamill-prompt"),
            "the prompt file is gone: {note}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("seen-{preset}.txt")))
                .unwrap()
                .trim_end(),
            format!("Build: the answer (stage {preset}, round 1)"),
            "{preset} got its prompt where its CLI takes it"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("stdin-{preset}.txt"))).unwrap(),
            stdin,
            "{preset}: stdin is /dev/null unless the prompt goes there"
        );
    }
    assert!(!dir.join(".ideamill-prompt.md").exists());
    // The item's total includes every agent's spend.
    let total = item["usage"]["cost"].as_f64().unwrap();
    let sum: f64 = expected.iter().map(|e| e.3).sum();
    assert!((total - sum).abs() < 1e-9, "{total} != {sum}");
    let shown = p.ok(&["show", &id.to_string()]);
    assert!(shown.contains("150/40"), "{shown}");
}

#[test]
fn an_agent_that_reports_no_usage_shows_unknown_never_zero() {
    let bin = FakeBin::new(&["quiet-agent"]);
    let p = project(
        &agent_stage(
            "implement",
            "custom",
            "command = [\"quiet-agent\"]\nprompt_via = \"stdin\"",
        ),
        "",
    );
    let id = p.add("say little");
    run_until_idle(&p, &bin);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    let a = attempt(&item, "implement");
    assert_eq!(
        output(&item, "implement"),
        "quiet-agent finished: wrote main.py"
    );
    let usage = &a["usage"];
    assert_eq!(usage["provider"], "custom", "{a:#}");
    for figure in ["prompt_tokens", "completion_tokens", "cost"] {
        assert!(usage[figure].is_null(), "{figure} is unknown, not 0: {a:#}");
    }
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("usage unknown: `quiet-agent` reported none"),
        "{a:#}"
    );
    let shown = p.ok(&["show", &id.to_string()]);
    let row = shown
        .lines()
        .find(|l| l.contains("implement") && l.contains("succeeded"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(row.contains("unknown"), "{row}");
}

#[test]
fn an_agent_whose_reported_cost_passes_the_cap_pauses_its_item() {
    let bin = FakeBin::new(&["claude"]);
    // The fake reports $0.05 per run; the item may spend $0.01.
    let p = project(
        &format!(
            "{}{}",
            agent_stage("implement", "claude", ""),
            agent_stage("polish", "claude", "")
        ),
        "[budget]\nitem_usd = 0.01\n",
    );
    let id = p.add("expensive");
    run_until_idle(&p, &bin);
    let item = p.show(id);
    assert_eq!(item["display_state"], "paused", "{item:#}");
    assert!(
        item["item"]["last_error"]
            .as_str()
            .unwrap()
            .contains("budget.item_usd"),
        "{item:#}"
    );
    assert_eq!(item["jobs"][1]["stage"], "polish");
    assert_eq!(item["jobs"][1]["state"], "paused");
    assert_eq!(
        item["attempts"].as_array().unwrap().len(),
        2,
        "one run, then the pause: {item:#}"
    );
    assert!(
        !workspace(&p, id).join("seen-claude.txt").exists()
            || std::fs::read_to_string(workspace(&p, id).join("seen-claude.txt"))
                .unwrap()
                .contains("stage implement"),
        "`polish` never ran its agent"
    );
    let cost = item["usage"]["cost"].as_f64().unwrap();
    assert!((cost - 0.05).abs() < 1e-9, "{cost}");
    // Today's spend (the dashboard's card, `status`) counts the agent.
    let status = p.status();
    assert_eq!(status["status"]["paused"], 1, "{status:#}");
    let today = status["status"]["today"]["cost"].as_f64().unwrap();
    assert!((today - 0.05).abs() < 1e-9, "{status:#}");
    assert_eq!(status["status"]["today"]["prompt_tokens"], 150);
}

#[test]
fn an_agent_past_its_timeout_is_stopped_by_the_engine_and_recorded_as_timeout() {
    let bin = FakeBin::new(&[]);
    let p = project(
        &agent_stage(
            "implement",
            "custom",
            "command = [\"sleep\", \"600\"]\nkill_grace = \"1s\"",
        )
        .replace("timeout = \"60s\"", "timeout = \"2s\""),
        "",
    );
    let id = p.add("never ends");
    let started = std::time::Instant::now();
    run_until_idle(&p, &bin);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "failed", "{item:#}");
    let a = attempt(&item, "implement");
    assert_eq!(a["outcome"], "timeout", "{a:#}");
    assert!(
        a["error"].as_str().unwrap().contains("timed out after 2s"),
        "{a:#}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped at its timeout, not at the end of `sleep 600`"
    );
}

#[test]
fn an_agent_that_stalls_after_its_first_line_is_hung_with_evidence_long_before_its_timeout() {
    let bin = FakeBin::new(&[]);
    let p = project(
        &agent_stage(
            "implement",
            "custom",
            "command = [\"sh\", \"-c\", \"echo thinking; exec sleep 600\"]\n\
             stall_after = \"2s\"\nkill_grace = \"1s\"",
        ),
        "",
    );
    let id = p.add("stalls");
    let started = std::time::Instant::now();
    run_until_idle(&p, &bin);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "failed", "{item:#}");
    let a = attempt(&item, "implement");
    assert_eq!(a["outcome"], "hung", "{a:#}");
    assert!(a["error"].as_str().unwrap().starts_with("hung: "), "{a:#}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "told hung by progress, not at the 60s timeout"
    );
    let evidence: Vec<_> = std::fs::read_dir(p.file(".ideamill/evidence"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-job"))
        .collect();
    assert_eq!(
        evidence.len(),
        1,
        "one evidence folder for the hung attempt"
    );
    let output = std::fs::read_to_string(evidence[0].path().join("output.txt")).unwrap();
    assert!(output.contains("thinking"), "{output}");
}

#[test]
fn init_agent_projects_validate_and_run_against_the_fakes() {
    let bin = FakeBin::new(PRESETS);
    for preset in PRESETS {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("mill");
        init_in(root.path(), &["mill", "--agent", preset]);
        let p = Project::at(dir.clone());
        let validated = run_with(&p, &bin, &["validate"]);
        assert!(
            validated.status.success(),
            "{preset}: {}{}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        );
        let id = p.add("a function answer() that returns 42");
        run_until_idle(&p, &bin);
        let item = p.show(id);
        assert_eq!(item["item"]["state"], "done", "{preset}: {item:#}");
        let stages: Vec<&str> = item["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, ["outline", "implement", "qa"], "{preset}");
        let message = output(&item, "implement").as_str().unwrap();
        assert!(
            message.ends_with(&format!("{preset} finished: wrote main.py")),
            "{message:?}"
        );
        let seen =
            std::fs::read_to_string(workspace(&p, id).join(format!("seen-{preset}.txt"))).unwrap();
        assert!(
            seen.contains("Plan:\n") && seen.contains("finished: wrote main.py"),
            "implement's prompt carries the outline's message: {seen}"
        );
        drop(root);
    }
}
