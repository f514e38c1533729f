//! A full disk under a running mill: the data folder (store, status files)
//! and the workspaces on a real tmpfs of a few MiB, filled to the last byte
//! by a ballast file. Mounting needs root; CI runs as root and `.ci/run`
//! sets CI, which makes a failed mount fail the test instead of skipping it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::*;
use serde_json::Value;

/// A tmpfs mounted on a temp folder, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            other => {
                let why = format!("cannot mount a tmpfs (needs root): {other:?}");
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill the disk to the last byte; the ballast file's path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        // The last partial pages too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

const WRITE: &str = r#"
import json, sys
ctx = json.load(sys.stdin)
open("result.txt", "w").write(ctx["item"]["text"] * 1000)
print("wrote " + ctx["item"]["text"])
"#;

/// The pid of the one live engine, from its status file.
fn engine_pid(data: &Path) -> Option<i32> {
    std::fs::read_dir(data.join("status"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some(v["pid"].as_i64()? as i32)
        })
        .find(|pid| alive(*pid))
}

fn events(p: &Project, kind: &str) -> Vec<String> {
    p.json(&["events", "--kind", kind])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_full_disk_pauses_the_mill_loudly_and_it_resumes_when_space_returns() {
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let data = disk.path().join("data");
    // The project (config, run logs) stays on the normal disk.
    let config = format!(
        "{ENGINE}data_dir = \"{}\"\nworkspace = \"{}\"\n\n[health]\nstall_after = \"2s\"\n\n{}{}",
        data.display(),
        disk.path().join("workspace").display(),
        py_stage("write", WRITE, ""),
        py_stage("check", "import sys; sys.stdin.read(); print('ok')", ""),
    );
    let p = Project::new(&config);
    let ids: Vec<i64> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|t| p.add(t))
        .collect();

    // 1. The disk fills before the engine starts: it cannot open the store,
    // or (when the `add`s above left its WAL and shared-memory files, which
    // need no new space) it opens it but cannot register. Either way it
    // waits, DEGRADED, and its supervisor does not take the silence of its
    // status file for a hang (the beats also go down a pipe).
    let ballast = disk.fill();
    let mut run = p.spawn_run(&[]);
    let refusals = |logs: &str| {
        logs.matches("DEGRADED: cannot open the store").count()
            + logs
                .matches("DEGRADED: cannot register this engine with the store")
                .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || refusals(&p.logs()) >= 4),
        "{}",
        p.logs()
    );
    // Four tries take 0.5 + 1 + 2 s: longer than stall_after and its margin.
    let logs = p.logs();
    assert!(
        logs.contains("KiB free") || logs.contains("database or disk is full"),
        "{logs}"
    );
    assert!(run.try_wait().unwrap().is_none(), "run ended\n{}", p.logs());
    std::fs::remove_file(&ballast).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || ids
            .iter()
            .all(|id| p.show(*id)["item"]["state"] == "done")),
        "{}",
        p.logs()
    );
    let engine = engine_pid(&data).expect("a live engine");

    // 2. The disk fills under the running, idle engine: adding an idea fails
    // with a clear message and changes nothing; the engine stays up.
    let ballast = disk.fill();
    let out = p.run(&["add", "delta"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("disk is full") || stderr.contains("disk I/O error"),
        "{stderr}"
    );
    // The beat goes on for longer than stall_after plus the supervisor's
    // margin: the status file is rewritten in place, which needs no free
    // block, so it stays fresh on a full disk, and nobody restarts.
    let status_file = data.join(format!("status/engine-{engine}.json"));
    let beat_at = || -> Option<i64> {
        let v: Value = serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok()?;
        v["beat_at"].as_i64()
    };
    let filled_at = beat_at().expect("a status file");
    assert!(
        wait_until(Duration::from_secs(30), || beat_at()
            .is_some_and(|b| b > filled_at + 4_000)),
        "{}",
        p.logs()
    );
    assert!(alive(engine), "the engine was killed\n{}", p.logs());
    std::fs::remove_file(&ballast).unwrap();
    let late = p.add("delta");
    assert!(
        wait_until(Duration::from_secs(60), || p.show(late)["item"]["state"]
            == "done"),
        "{}",
        p.logs()
    );
    assert_eq!(engine_pid(&data), Some(engine), "the same engine did it");

    // Nothing lost, nothing twice, and the recovery is on record.
    for id in ids.iter().chain([&late]) {
        let item = p.show(*id);
        let outputs = item["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 2, "one output per stage: {item:#}");
    }
    let outages = events(&p, "store_outage");
    assert!(
        outages.iter().any(
            |m| m.contains("could not open the store") || m.contains("could not use the store")
        ),
        "{outages:?}"
    );
    assert!(events(&p, "engine_restarted").is_empty(), "{}", p.logs());
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("run stops");
    assert!(status.success(), "{status}\n{}", p.logs());
}

/// Found by bench soak: a full workspace disk spent an item's attempts in
/// seconds (each failed to make the item's folder, and left an empty mark
/// that made the next attempt take the folder for another item's and move
/// it aside). Now the attempt waits for space, DEGRADED, and the item is
/// done with its first attempt, in its own folder.
#[test]
fn a_full_workspace_disk_makes_a_job_wait_without_spending_its_attempts() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let workspace = disk.path().join("workspace");
    std::fs::create_dir(&workspace).unwrap();
    // The store stays on the normal disk: only the workspace is full.
    let config = format!(
        "{ENGINE}workspace = \"{}\"\n\n[health]\nstall_after = \"2s\"\n\n{}",
        workspace.display(),
        py_stage("write", WRITE, "max_attempts = 2"),
    );
    let p = Project::new(&config);
    let ballast = disk.fill();
    let id = p.add("alpha");
    let mut run = p.spawn_run(&[]);
    let waits = |logs: &str| {
        logs.matches("DEGRADED: cannot prepare the item's workspace")
            .count()
    };
    // Four waits (0.1 + 0.2 + 0.4 s and on): the attempt would have been
    // spent twice over.
    assert!(
        wait_until(Duration::from_secs(30), || waits(&p.logs()) >= 4),
        "{}",
        p.logs()
    );
    assert!(p.logs().contains("No space left on device"), "{}", p.logs());
    assert_eq!(p.show(id)["item"]["state"], "active");
    std::fs::remove_file(&ballast).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || p.show(id)["item"]["state"]
            == "done"),
        "{}",
        p.logs()
    );
    let item = p.show(id);
    assert_eq!(
        item["attempts"].as_array().unwrap().len(),
        1,
        "one attempt: {item:#}"
    );
    let aside: Vec<String> = std::fs::read_dir(&workspace)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".stale-"))
        .collect();
    assert!(aside.is_empty(), "its folder was moved aside: {aside:?}");
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("run stops");
    assert!(status.success(), "{status}\n{}", p.logs());
}
