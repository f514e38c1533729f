//! The sandbox attacked for real: a hostile "generated" test suite, run by a
//! QA gate with the default sandbox settings, tries to reach what it must
//! not; every try must fail, leave no trace on the host, and leave the mill
//! healthy, and a try stopped by a limit must say which.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::util::*;
use serde_json::{Value, json};

/// The hostile program: reads its attack from the item's text (JSON) and
/// prints `BLOCKED: ...` when the sandbox stopped it, `ESCAPED: ...` (and
/// exits 1, a QA rejection) when it got through.
const HOSTILE: &str = r#"
import json, os, signal, socket, subprocess, sys
ctx = json.load(sys.stdin)
a = json.loads(ctx["item"]["text"])
kind = a["attack"]
def escaped(what):
    print("ESCAPED: " + what); sys.exit(1)
def blocked(what):
    print("BLOCKED: " + what); sys.exit(0)
if kind == "env":
    leaked = [k for k in os.environ if k in a["secrets"] or os.environ[k] in a["values"]]
    if leaked: escaped("environment: " + ",".join(leaked))
    blocked("environment has " + ",".join(sorted(os.environ)))
elif kind == "read":
    for path in a["paths"]:
        try:
            if os.path.isdir(path):
                # Mount points' parents exist, empty but for this item's own.
                seen = set(os.listdir(path)) - {str(ctx["item"]["id"])}
                if seen: escaped("listed " + path + ": " + ",".join(seen))
                continue
            with open(path, "rb") as f: f.read(16); escaped("read " + path)
        except OSError as e:
            pass
    blocked("cannot read " + ",".join(a["paths"]))
elif kind == "write":
    done = []
    for path in a["paths"]:
        try:
            with open(path, "w") as f: f.write("pwned")
            done.append(path)
        except OSError:
            pass
    # A write that "worked" went to the sandbox's private copies; the host
    # side of the test checks that none of them exists.
    blocked("writes inside: " + ",".join(done))
elif kind == "connect":
    try:
        socket.create_connection(("127.0.0.1", a["port"]), timeout=3); escaped("connected")
    except OSError as e:
        blocked("connect: " + str(e))
elif kind == "signal":
    for pid in a["pids"]:
        try:
            os.kill(pid, signal.SIGKILL); escaped("signalled %d" % pid)
        except OSError:
            pass
    blocked("cannot signal " + str(a["pids"]))
elif kind == "linger":
    # setsid, and a double fork: both must die with the job.
    subprocess.Popen(["setsid", "python3", "-c", "import time; time.sleep(1000)", a["marker"]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if os.fork() == 0:
        if os.fork() == 0:
            os.execvp("python3", ["python3", "-c", "import time; time.sleep(1000)", a["marker"]])
        os._exit(0)
    os.wait()
    blocked("left processes behind, which must not outlive the job")
elif kind == "syscalls":
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) == 0: escaped("unshare(CLONE_NEWUSER)")
    if libc.ptrace(0, 0, 0, 0) == 0: escaped("ptrace(PTRACE_TRACEME)")
    if subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode == 0:
        escaped("unshare -U true")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        escaped("unshare -n true")
    blocked("no new namespace, no ptrace")
elif kind == "forkbomb":
    while True:
        try:
            os.fork()
        except OSError:
            pass
elif kind == "memory":
    hog = b"x" * (8 << 30)
    escaped("allocated %d bytes" % len(hog))
elif kind == "bigfile":
    chunk = b"x" * (1 << 20)
    with open("big.bin", "wb") as f:
        for _ in range(4096):
            f.write(chunk)
    escaped("wrote 4 GiB")
"#;

fn attack(p: &Project, attack: Value) -> i64 {
    p.add(&attack.to_string())
}

/// Every process whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// The pid of an engine of `p` other than `not`, from its status file, once
/// one runs.
fn running_engine(p: &Project, not: i32) -> i32 {
    let mut engine_pid = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            engine_pid = std::fs::read_dir(p.file(".ideamill/status"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("engine-")?
                        .strip_suffix(".json")?
                        .parse()
                        .ok()
                })
                .find(|&pid| pid != not && alive(pid))
                .unwrap_or(0);
            engine_pid > 0
        }),
        "no engine started\n{}",
        p.logs()
    );
    engine_pid
}

/// The folders of `pid`'s control groups named `ideamill-…`, one per
/// hierarchy (cgroup v1 memory and pids, or the v2 group).
fn job_groups_of(pid: i32) -> Vec<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            path.rsplit('/')
                .next()?
                .starts_with("ideamill-")
                .then_some(())?;
            let point = mountinfo.lines().find_map(|m| {
                let (left, right) = m.split_once(" - ")?;
                let mut right = right.split(' ');
                let (fstype, _, options) = (right.next()?, right.next()?, right.next()?);
                let matches = if controllers.is_empty() {
                    fstype == "cgroup2"
                } else {
                    fstype == "cgroup"
                        && controllers
                            .split(',')
                            .all(|c| options.split(',').any(|o| o == c))
                };
                matches.then(|| left.split(' ').nth(4).map(str::to_owned))?
            })?;
            Some(Path::new(&point).join(path.trim_start_matches('/')))
        })
        .collect()
}

/// A process of `p`'s job whose command line holds `marker`, once one runs.
fn first_process_with(p: &Project, marker: &str) -> i32 {
    let mut found = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            found = processes_with(marker).into_iter().next().unwrap_or(0);
            found > 0
        }),
        "no process holds {marker}: the job never started\n{}",
        p.logs()
    );
    found
}

fn item_state(p: &Project, id: i64) -> String {
    p.show(id)["item"]["state"].as_str().unwrap().to_owned()
}

fn last_attempt(item: &Value) -> Value {
    item["attempts"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap()
}

fn output(item: &Value) -> String {
    item["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["output"].as_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_hostile_test_suite_reaches_nothing_and_limits_say_what_ended_it() {
    let marker = format!("ideamill-hostile-{}", std::process::id());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = format!(
        "{ENGINE}[[stages]]\nname = \"implement\"\nkind = \"command\"\ncommand = [\"true\"]\n\
         {}",
        py_stage(
            "qa",
            HOSTILE,
            "gate = { retry_from = \"implement\", max_rounds = 1 }\nmax_attempts = 1\ntimeout = \"2m\"",
        )
    );
    let p = Project::new(&config);
    // A token and a store exist before any stage runs.
    attack(&p, json!({"attack": "none"}));
    std::fs::write(p.file("secret-key.txt"), "sk-file-secret").unwrap();
    let token = p.file(".ideamill/token");
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "token-secret").unwrap();

    let mut run = Reaped(
        p.cmd(&["run"])
            .env("OPENAI_API_KEY", "sk-env-secret")
            .env("DATABASE_URL", "postgres://u:pw-secret@127.0.0.1/db")
            .stdout(std::fs::File::create(p.file("run-main.log")).unwrap())
            .stderr(std::fs::File::create(p.file("run-main.err.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let engine_pid = running_engine(&p, 0);
    let supervisor_pid = run.id() as i32;
    let root = p.path().display().to_string();
    let other = p.file("workspace/1").display().to_string();
    let env = attack(
        &p,
        json!({"attack": "env",
               "secrets": ["OPENAI_API_KEY", "DATABASE_URL", "IDEAMILL_SUPERVISOR_PID", "IDEAMILL_BEAT_FD", "NOTIFY_SOCKET", "IDEAMILL_ROOT"],
               "values": ["sk-env-secret", "postgres://u:pw-secret@127.0.0.1/db"]}),
    );
    let read = attack(
        &p,
        json!({"attack": "read", "paths": [
            format!("{root}/.ideamill/token"), format!("{root}/.ideamill/ideamill.db"),
            format!("{root}/secret-key.txt"), format!("{root}/ideamill.toml"), other.clone(),
            format!("{root}/workspace"), "/root", "/etc/shadow", format!("/proc/{engine_pid}/environ")]}),
    );
    let write = attack(
        &p,
        json!({"attack": "write", "paths": [
            format!("{root}/escaped-{marker}"), format!("{other}/escaped-{marker}"),
            format!("/tmp/escaped-{marker}"), format!("/root/escaped-{marker}"),
            format!("/usr/escaped-{marker}"), format!("/etc/escaped-{marker}")]}),
    );
    let connect = attack(&p, json!({"attack": "connect", "port": port}));
    let signal = attack(
        &p,
        json!({"attack": "signal", "pids": [engine_pid, supervisor_pid]}),
    );
    let linger = attack(&p, json!({"attack": "linger", "marker": marker}));
    let syscalls = attack(&p, json!({"attack": "syscalls"}));
    let forkbomb = attack(&p, json!({"attack": "forkbomb"}));
    let memory = attack(&p, json!({"attack": "memory"}));
    let bigfile = attack(&p, json!({"attack": "bigfile"}));

    let all = [
        env, read, write, connect, signal, linger, syscalls, forkbomb, memory, bigfile,
    ];
    let finished = wait_until(Duration::from_secs(240), || {
        all.iter()
            .all(|&id| matches!(item_state(&p, id).as_str(), "done" | "failed"))
    });
    assert!(
        finished,
        "not every attack ended\n{}",
        all.iter()
            .map(|&id| format!("{:#}", p.show(id)))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Blocked, each of them: the gate passed with what the program saw.
    for id in [env, read, write, connect, signal, linger, syscalls] {
        let item = p.show(id);
        assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
        let out = output(&item);
        assert!(
            out.contains("BLOCKED") && !out.contains("ESCAPED"),
            "{out}\n{item:#}"
        );
    }
    // The environment held only the allowlist.
    let env_out = output(&p.show(env));
    assert!(
        !env_out.contains("OPENAI") && env_out.contains("IDEAMILL_ITEM_ID"),
        "{env_out}"
    );

    // Limits: an error of the attempt that names the limit.
    for (id, reason) in [
        (forkbomb, "process limit 256 reached"),
        (memory, "memory limit 2 GiB reached"),
        (bigfile, "file size limit 512 MiB reached"),
    ] {
        let item = p.show(id);
        assert_eq!(item["item"]["state"], "failed", "{item:#}");
        let attempt = last_attempt(&item);
        assert_eq!(attempt["outcome"], "error", "{item:#}");
        let error = attempt["error"].as_str().unwrap_or("");
        assert!(error.contains(reason), "wanted {reason:?}, got {error:?}");
    }

    // No trace on the host: files, processes, connections.
    for path in [
        p.file(&format!("escaped-{marker}")),
        p.file(&format!("workspace/1/escaped-{marker}")),
        Path::new(&format!("/tmp/escaped-{marker}")).to_path_buf(),
        Path::new(&format!("/root/escaped-{marker}")).to_path_buf(),
    ] {
        assert!(!path.exists(), "{} was written", path.display());
    }
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&marker)
            .is_empty()),
        "processes outlived their job: {:?}",
        processes_with(&marker)
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((mut stream, _)) => {
            let mut got = String::new();
            let _ = stream.read_to_string(&mut got);
            panic!("a sandboxed stage connected to the host's loopback");
        }
        Err(e) => panic!("accept: {e}"),
    }

    // The mill is unharmed: both processes alive and the verdict healthy.
    assert!(alive(engine_pid) && alive(supervisor_pid), "{}", p.logs());
    let status = p.status();
    assert_eq!(status["health"]["verdict"], "HEALTHY", "{status:#}");
    signal_and_wait(&mut run);
}

fn signal_and_wait(run: &mut Reaped) {
    crate::util::signal(run, libc::SIGTERM);
    let status = wait_exit(run, Duration::from_secs(30)).expect("run stops");
    assert!(status.success(), "run exited with {status}");
}

#[test]
fn network_and_pass_env_give_exactly_what_they_name() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        r#"
import os, socket
socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"hello")
print("X=" + os.environ.get("X", "-") + " Y=" + os.environ.get("Y", "-"))
print("token:", os.path.exists(os.environ["IDEAMILL_WORKSPACE"] + "/../../.ideamill/token"))
"#
    );
    let p = Project::new(&format!(
        "{ENGINE}{}",
        py_stage("agent", &program, "network = true\npass_env = [\"X\"]")
    ));
    std::fs::create_dir_all(p.file(".ideamill")).unwrap();
    std::fs::write(p.file(".ideamill/token"), "secret").unwrap();
    let id = p.add("needs the network");
    let mut child = p
        .cmd(&["run", "--until-idle"])
        .env("X", "passed")
        .env("Y", "kept back")
        .stdout(std::fs::File::create(p.file("run-net.log")).unwrap())
        .stderr(std::fs::File::create(p.file("run-net.err.log")).unwrap())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello");
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("run ends");
    assert!(status.success(), "{}", p.logs());
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(output(&item).trim(), "X=passed Y=-\ntoken: False");
}

#[test]
fn a_missing_sandbox_is_a_clear_refusal_never_an_unconfined_run() {
    let stage = "[[stages]]\nname = \"qa\"\nkind = \"command\"\n\
                 command = [\"sh\", \"-c\", \"echo ran > \\\"$IDEAMILL_WORKSPACE/ran\\\"\"]\n";
    let p = Project::new(&format!(
        "{ENGINE}[sandbox]\nprogram = \"/nonexistent/bwrap\"\n{stage}"
    ));
    let id = p.add("must not run unconfined");

    let validate = p.run(&["validate"]);
    let said = String::from_utf8_lossy(&validate.stdout);
    assert_eq!(validate.status.code(), Some(78), "{said}");
    assert!(
        said.contains("DOES NOT WORK") && said.contains("must run confined"),
        "{said}"
    );
    let doctor = p.run(&["doctor", "--no-providers"]);
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(3), "{said}");
    assert!(said.contains("sandbox_unavailable"), "{said}");

    let out = p.run(&["run", "--until-idle"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("must run confined")
            && err.contains("apt-get install bubblewrap")
            && err.contains("sandbox = \"off\""),
        "{err}"
    );
    assert!(!p.file(&format!("workspace/{id}/ran")).exists());
    assert_eq!(item_state(&p, id), "active");

    // Opting out is explicit, logged at every start, and a warning.
    let unconfined = p.file("ideamill.toml");
    let text = std::fs::read_to_string(&unconfined).unwrap() + "sandbox = \"off\"\n";
    std::fs::write(&unconfined, text).unwrap();
    let out = p.run(&["run", "--until-idle"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.file(&format!("workspace/{id}/ran")).exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNCONFINED"));
    let doctor = p.run(&["doctor", "--no-providers"]);
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(said.contains("[warning stage_unconfined]"), "{said}");
}

/// Found by `bench soak`: an engine SIGKILLed while a job ran left that
/// job's control groups behind (their `Drop` never ran), and once a
/// confined program that missed its parent's death, asleep in one of them
/// for good. The next engine removes them and kills what is in them.
#[test]
fn a_killed_engines_job_groups_and_what_is_left_in_them_go_with_the_next_engine() {
    let marker = format!("ideamill-left-{}", std::process::id());
    let config = format!(
        "{ENGINE}[[stages]]\nname = \"work\"\nkind = \"command\"\n\
         command = [\"python3\", \"-c\", \"import time; time.sleep(600)\", \"{marker}\"]\n\
         timeout = \"10m\"\n"
    );
    let p = Project::new(&config);
    let mut run = p.spawn_run(&[]);
    let first = running_engine(&p, 0);
    p.add("a job that sleeps");
    let job = first_process_with(&p, &marker);
    let groups = job_groups_of(job);
    if groups.is_empty() {
        let why = "the job runs in no control group of its own here (not root, or no cgroups)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let name = groups[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(&format!("ideamill-{first}-")), "{name}");

    // What the race leaves: a process in the job's groups that is no
    // child of the engine and does not die with it.
    let mut stray = Reaped(
        std::process::Command::new("python3")
            .args(["-c", "import time; time.sleep(600)", &marker])
            .spawn()
            .unwrap(),
    );
    for group in &groups {
        std::fs::write(group.join("cgroup.procs"), stray.id().to_string()).unwrap();
    }
    // SAFETY: kill(2) on the engine's pid, read from its status file.
    unsafe {
        libc::kill(first, libc::SIGKILL);
    }

    // The supervisor starts another engine, which removes both.
    let second = running_engine(&p, first);
    assert!(
        wait_until(Duration::from_secs(30), || groups
            .iter()
            .all(|g| !g.exists())),
        "the killed engine's groups are still there: {groups:?}\n{}",
        p.logs()
    );
    let ended = wait_exit(&mut stray, Duration::from_secs(10)).expect("the stray process ends");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&ended),
        Some(libc::SIGKILL)
    );
    let events = p.json(&["events", "--kind", "sandbox_leftovers_removed"]);
    let said = events.to_string();
    assert!(
        said.contains(&name) && said.contains("killed"),
        "{events:#}"
    );

    // The job runs again under the new engine; stopping the mill removes
    // its groups too.
    let mut again = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            again = processes_with(&marker)
                .into_iter()
                .find(|&pid| {
                    job_groups_of(pid)
                        .iter()
                        .any(|g| g.to_string_lossy().contains(&format!("ideamill-{second}-")))
                })
                .unwrap_or(0);
            again > 0
        }),
        "the job did not run again\n{}",
        p.logs()
    );
    let groups = job_groups_of(again);
    signal_and_wait(&mut run);
    assert!(
        wait_until(Duration::from_secs(10), || groups
            .iter()
            .all(|g| !g.exists())),
        "a stopped engine's groups are still there: {groups:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&marker)
            .is_empty()),
        "{:?}",
        processes_with(&marker)
    );
}

/// An engine killed outright cannot end its jobs: what an unconfined job
/// started outside its session (or a sandbox process that missed its
/// parent's death) would run on under init. The supervisor adopts it (a
/// child subreaper) and kills it before the next engine starts.
#[test]
fn what_a_killed_engine_left_running_dies_before_the_next_engine_starts() {
    let pid = std::process::id();
    // The marker is joined at run time, so that only the escaped process's
    // command line holds it, not the job's own.
    let marker = format!("ideamill-escaped-{pid}");
    let program = format!(
        "import subprocess, time\n\
         marker = 'ideamill-esc' + 'aped-{pid}'\n\
         subprocess.Popen(['python3', '-c', 'import time; time.sleep(600)', marker],\n\
         \x20   start_new_session=True, stdin=subprocess.DEVNULL,\n\
         \x20   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
         time.sleep(600)\n"
    );
    let p = Project::new(&format!(
        "{ENGINE}{}",
        py_stage("work", &program, "sandbox = \"off\"\ntimeout = \"10m\"")
    ));
    let mut run = p.spawn_run(&[]);
    let first = running_engine(&p, 0);
    p.add("a job that leaves a process behind");
    let escaped = first_process_with(&p, &marker);
    // SAFETY: kill(2) on the engine's pid, read from its status file.
    unsafe {
        libc::kill(first, libc::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(10), || !alive(escaped)),
        "the killed engine's job left {escaped} running\n{}",
        p.logs()
    );
    running_engine(&p, first);
    let events = p.json(&["events", "--kind", "engine_restarted"]);
    assert!(
        events.to_string().contains("process(es) it left running"),
        "{events:#}"
    );
    signal_and_wait(&mut run);
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&marker)
            .is_empty()),
        "{:?}",
        processes_with(&marker)
    );
}
