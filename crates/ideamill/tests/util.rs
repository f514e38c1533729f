//! Helpers for running the real `ideamill` binary on a temporary project:
//! fixtures, waiting on conditions with deadlines, and JSON reads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `ideamill` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ideamill");

/// A project in a temp folder with the given `ideamill.toml`.
pub struct Project {
    dir: Dir,
}

/// A temp folder the project owns, or a folder someone else owns.
enum Dir {
    Temp(tempfile::TempDir),
    At(PathBuf),
}

impl Project {
    /// A project in a new temp folder, with `config` as its `ideamill.toml`.
    pub fn new(config: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ideamill.toml"), config).expect("write config");
        Project {
            dir: Dir::Temp(dir),
        }
    }

    /// A project that already exists at `root` (e.g. made by `init`).
    pub fn at(root: PathBuf) -> Project {
        Project { dir: Dir::At(root) }
    }

    /// The project's folder.
    pub fn path(&self) -> &Path {
        match &self.dir {
            Dir::Temp(t) => t.path(),
            Dir::At(p) => p,
        }
    }

    /// A path inside the project's folder.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// An `ideamill` command in the project, with a clean environment for its logs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("IDEAMILL_CONFIG")
            .env("IDEAMILL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `ideamill` with `args` and wait for it.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ideamill")
    }

    /// Run and insist on exit 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ideamill {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run with `--json` and insist on exit 0; the JSON printed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ideamill {args:?} printed bad JSON ({e}):\n{out}"))
    }

    /// `status --json`, which exits 1 when the mill is not healthy.
    pub fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Add one idea; its item id.
    pub fn add(&self, text: &str) -> i64 {
        self.json(&["add", text])["ids"][0].as_i64().expect("an id")
    }

    /// `show --json` of item `id`.
    pub fn show(&self, id: i64) -> Value {
        self.json(&["show", &id.to_string()])
    }

    /// `ideamill run` in the background, its output kept in files; killed
    /// when dropped, so that a failing test leaves no mill running.
    pub fn spawn_run(&self, extra: &[&str]) -> Reaped {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let log =
            std::fs::File::create(self.file(&format!("run-{}.log", unique()))).expect("log file");
        Reaped(
            self.cmd(&args)
                .stdout(log.try_clone().expect("clone"))
                .stderr(log)
                .spawn()
                .expect("spawn ideamill run"),
        )
    }

    /// Every `run-*.log` written so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.path()).expect("read dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("run-") {
                all.push_str(&format!(
                    "== {name}\n{}\n",
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                ));
            }
        }
        all
    }

    /// `run --until-idle`, which must exit 0 within `limit`.
    pub fn run_until_idle(&self, limit: Duration) {
        let mut child = self.spawn_run(&["--until-idle"]);
        let status = wait_exit(&mut child, limit).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "run --until-idle did not finish within {limit:?}\n{}",
                self.logs()
            )
        });
        assert!(
            status.success(),
            "run --until-idle exited with {status}\n{}",
            self.logs()
        );
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Poll `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Wait for `child` to exit within `limit`; its status, or `None` if it still runs.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status
}

/// Send `sig` to `child`.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a pid we spawned.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wait for a stage to write its pid into `file` (relative to the project);
/// the pid, or a panic with the engine's logs after `limit`.
pub fn wait_for_pid(p: &Project, file: &str, limit: Duration) -> i32 {
    let path = p.file(file);
    let mut pid = 0;
    let found = wait_until(limit, || {
        pid = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        pid > 0
    });
    assert!(
        found,
        "no pid in {file} within {limit:?}: the job never started\n{}",
        p.logs()
    );
    pid
}

/// Whether a process exists (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A command stage in TOML, from a Python program (avoids shell quoting).
pub fn py_stage(name: &str, program: &str, extra: &str) -> String {
    let program = program
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!(
        "[[stages]]\nname = \"{name}\"\nkind = \"command\"\ncommand = [\"python3\", \"-c\", \"{program}\"]\n{extra}\n"
    )
}

/// The engine settings used by the tests: short leases, fast beats.
pub const ENGINE: &str = "[engine]\nlease = \"3s\"\nheartbeat = \"500ms\"\npoll_interval = \"500ms\"\nshutdown_grace = \"5s\"\n";

/// A child killed (SIGKILL) and reaped when dropped, so that a failing test
/// leaves nothing running behind it (an engine under a supervisor dies
/// with it).
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ideamill init ARGS` run in `dir` (any `IDEAMILL_CONFIG` ignored), which
/// must succeed.
pub fn init_in(dir: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("init")
        .args(args)
        .current_dir(dir)
        .env_remove("IDEAMILL_CONFIG")
        .output()
        .expect("run ideamill init");
    assert!(
        out.status.success(),
        "init {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The listen address of the running engine, from its status file.
pub fn listen_address(p: &Project) -> Option<String> {
    std::fs::read_dir(p.file(".ideamill/status"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok())
        .find_map(|v| Some(v["listen"].as_str()?.to_string()))
}

/// The running engine's listen address, once its status file has it
/// (within 20 s, or the test fails with the project's logs).
pub fn wait_listen_address(p: &Project) -> String {
    let mut addr = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            addr = listen_address(p);
            addr.is_some()
        }),
        "no listen address\n{}",
        p.logs()
    );
    addr.unwrap()
}

/// POST `body` as JSON over plain HTTP/1.1; the status code.
pub fn http_post_json(addr: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server may answer before it has read everything (a refusal).
    let _ = s.write_all(body);
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// GET over plain HTTP/1.1; the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}
