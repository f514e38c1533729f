//! The OCI image for real: `deploy/container/build.sh` builds it from this
//! debug binary (offline: a Debian rootfs from mmdebstrap, no registry), then
//! two worker containers and one web container share a PostgreSQL store,
//! with the ideas added through the web container's API; one worker is
//! killed (`podman kill`) mid-job and the other finishes its work; the
//! other stops gracefully on SIGTERM (`podman stop`) within its grace.
//! Stages run in the image's bubblewrap sandbox. Prints the figures (build
//! time, image size, items/s, recovery time); asserts only behaviour.
//!
//! Podman runs with a containers.conf of its own (runc, cgroupfs, explicit
//! ulimits) given through `CONTAINERS_CONF`, never the host's. Needs root
//! (CI is): the containers run as uid 10001 and read files it is given.
//!
//! The manifests under deploy/kubernetes are checked against the binary
//! here too: the args they give `ideamill` parse, and their probe paths and
//! ports are the ones it serves.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::postgres::cluster;
use crate::util::*;

/// The image's user (deploy/container/build.sh).
const IMAGE_UID: u32 = 10001;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A unique suffix for names on the host's podman (images, containers,
/// databases): concurrent runs must not meet.
fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}{:08x}", std::process::id(), nanos)
}

/// Podman with a containers.conf of its own; removes what it started.
struct Podman {
    conf: tempfile::TempDir,
    containers: Vec<String>,
    image: Option<String>,
}

impl Podman {
    fn new() -> Podman {
        let conf = tempfile::tempdir().expect("temp dir");
        // Explicit ulimits, none higher than ours: runc may not raise them.
        let (files, procs) = (
            hard_limit(libc::RLIMIT_NOFILE),
            hard_limit(libc::RLIMIT_NPROC),
        );
        let text = format!(
            "[containers]\ndefault_ulimits = [\"nofile={files}:{files}\", \"nproc={procs}:{procs}\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
        );
        std::fs::write(conf.path().join("containers.conf"), text).expect("containers.conf");
        Podman {
            conf,
            containers: Vec::new(),
            image: None,
        }
    }

    fn conf(&self) -> PathBuf {
        self.conf.path().join("containers.conf")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(args)
            .env("CONTAINERS_CONF", self.conf())
            .current_dir(self.conf.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap_or_else(|e| {
            panic!("cannot run podman (install podman, buildah, runc, mmdebstrap): {e}")
        })
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman run -d` of the image as `name`, with `args` before the image
    /// and `command` after it.
    fn start(&mut self, name: &str, args: &[&str], command: &[&str]) {
        let image = self.image.clone().expect("an image");
        // Never a pull: no registry is reachable, and the image is local.
        let mut all = vec!["run", "-d", "--pull=never", "--name", name];
        all.extend_from_slice(args);
        all.push(&image);
        all.extend_from_slice(command);
        self.containers.push(name.to_string());
        self.ok(&all);
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for c in &self.containers {
            let out = self.run(&["logs", c]);
            all.push_str(&format!(
                "--- podman logs {c}:\n{}{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        all
    }

    fn state(&self, name: &str) -> (String, i64) {
        let out = self.ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            name,
        ]);
        let (status, code) = out.split_once(' ').expect("status and exit code");
        (status.to_string(), code.parse().expect("an exit code"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.run(&["rm", "-f", "-t", "0", c]);
        }
        if let Some(image) = &self.image {
            let _ = self.run(&["rmi", "-f", image]);
        }
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    assert_eq!(rc, 0, "getrlimit");
    // Podman's runc may not set more than a few thousand processes here
    // (EPERM on RLIMIT_NPROC above it), and no more than our hard limit.
    limit.rlim_max.min(4096)
}

/// A fresh database: on `DATABASE_URL`'s server (dropped at the end), or a
/// throwaway cluster.
struct Database {
    url: String,
    admin: Option<String>,
    name: String,
    _cluster: Option<cluster::Cluster>,
}

impl Database {
    fn fresh() -> Database {
        let name = format!("ideamill_containers_{}", suffix());
        match std::env::var("DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => {
                psql(&admin, &format!("CREATE DATABASE {name}"));
                let (server, _) = admin.rsplit_once('/').expect("DATABASE_URL has a database");
                Database {
                    url: format!("{server}/{name}"),
                    admin: Some(admin),
                    name,
                    _cluster: None,
                }
            }
            _ => {
                let c = cluster::Cluster::start()
                    .unwrap_or_else(|e| panic!("cannot start a PostgreSQL cluster: {e}"));
                Database {
                    url: c.url("postgres"),
                    admin: None,
                    name,
                    _cluster: Some(c),
                }
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(admin) = &self.admin {
            let _ = Command::new("psql")
                .args([
                    admin.as_str(),
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
                ])
                .output();
        }
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql (install postgresql-client): {e}"));
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP/1.0 request on loopback: (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    if s.read_to_string(&mut answer).is_err() {
        return (0, String::new());
    }
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// The queue-depth query of the KEDA ScaledObject, run on `url`.
fn keda_query(url: &str) -> String {
    let path = repo().join("deploy/kubernetes/scaling/keda-scaledobject.yaml");
    let text = std::fs::read_to_string(&path).expect("the ScaledObject");
    let query = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("query: "))
        .and_then(|q| q.strip_prefix('"')?.strip_suffix('"'))
        .expect("a quoted query in the ScaledObject");
    let out = Command::new("psql")
        .args([url, "-tAc", query])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "the KEDA query fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A stage that takes a moment and says what it ran on.
const SLOW: &str = r#"
import json, sys, time
ctx = json.load(sys.stdin)
time.sleep(1.0)
print("%s of %s" % (ctx["stage"], ctx["item"]["text"]))
"#;

fn stages() -> String {
    format!(
        "{}{}",
        py_stage("one", SLOW, "concurrency = 2"),
        py_stage("two", SLOW, "concurrency = 2")
    )
}

/// The containers' config: state under the /data volume, the token from a
/// mounted secret, required even on loopback.
fn container_config(url: &str) -> String {
    format!(
        "[store]\nurl = \"{url}\"\n{ENGINE}data_dir = \"/data/state\"\nworkspace = \"/data/workspace\"\n\
         inbox = \"/data/inbox\"\n[web]\ntoken_file = \"/run/ideamill/token\"\nrequire_token = true\n{}",
        stages()
    )
}

fn build_image(podman: &mut Podman) -> (String, f64) {
    let image = format!("localhost/ideamill-test:{}", suffix());
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("deploy/container/build.sh"))
        .arg(BIN)
        .env("IMAGE", &image)
        .env("CONTAINERS_CONF", podman.conf())
        .output()
        .expect("run build.sh");
    let took = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some(image.as_str()),
        "build.sh names its image last"
    );
    podman.image = Some(image.clone());
    (image, took)
}

fn owner_host(job: &Value) -> String {
    job["owner"].as_str().unwrap_or("").to_string()
}

#[test]
fn workers_and_web_in_containers_share_postgres_and_survive_a_kill() {
    // Like the browser test: CI (`.ci/run` installs them) fails without the
    // tools; elsewhere the test says what is missing and passes.
    let missing: Vec<&str> = ["podman", "buildah", "mmdebstrap", "runc"]
        .into_iter()
        .filter(|tool| Command::new(tool).arg("--version").output().is_err())
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the container test cannot run in CI: {missing:?} missing"
        );
        eprintln!(
            "SKIPPED: {missing:?} not installed (bash .ci/run installs them; in CI this fails)"
        );
        return;
    }
    let mut podman = Podman::new();
    let (image, build_secs) = build_image(&mut podman);

    // What the image says about itself.
    let inspect: Value = serde_json::from_str(&podman.ok(&["image", "inspect", &image]))
        .expect("image inspect JSON");
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "10001:10001", "{config:#}");
    assert!(config["Volumes"].get("/data").is_some(), "{config:#}");
    assert!(
        config["Env"].as_array().is_some_and(|e| e
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("PATH=")))),
        "stages find their programs in PATH: {config:#}"
    );
    let labels = &inspect[0]["Labels"];
    for key in ["source", "version", "licenses", "revision"] {
        let v = labels[format!("org.opencontainers.image.{key}")].as_str();
        assert!(v.is_some_and(|v| !v.is_empty()), "label {key}: {labels:#}");
    }
    assert_eq!(
        inspect[0]["Healthcheck"]["Test"][1], "/usr/local/bin/ideamill-healthcheck",
        "{:#}",
        inspect[0]
    );
    let size: u64 = inspect[0]["Size"].as_u64().expect("a size");

    let db = Database::fresh();
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("ideamill.toml");
    std::fs::write(&conf, container_config(&db.url)).expect("config");
    let token = "container-test-token-0123456789abcdef";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("token");
    std::os::unix::fs::chown(&token_file, Some(IMAGE_UID), Some(IMAGE_UID))
        .expect("chown the token to the image's user (run as root)");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod token");
    // The host's view of the same store, for the assertions.
    let host = Project::new(&format!(
        "[store]\nurl = \"{}\"\n{ENGINE}{}",
        db.url,
        stages()
    ));

    // Podman's seccomp profile plus sethostname, which bubblewrap calls
    // for the stage's own UTS namespace (deploy/container/seccomp.py).
    let seccomp = dir.path().join("seccomp-bwrap.json");
    let out = Command::new("python3")
        .arg(repo().join("deploy/container/seccomp.py"))
        .output()
        .expect("run seccomp.py");
    assert!(
        out.status.success(),
        "seccomp.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&seccomp, &out.stdout).expect("write the seccomp profile");
    let seccomp_opt = format!("--security-opt=seccomp={}", seccomp.display());

    let unique = suffix();
    let conf_mount = format!("{}:/etc/ideamill/ideamill.toml:ro", conf.display());
    let token_mount = format!("{}:/run/ideamill/token:ro", token_file.display());
    // Like the Kubernetes pods: read-only root, no capabilities, the token
    // and config mounted; /proc unmasked and sethostname allowed so that
    // bubblewrap can confine the stages (the README says why).
    let common = |port: u16, hostname: &str| -> Vec<String> {
        [
            "--network=host",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--security-opt=unmask=/proc/*",
            &seccomp_opt,
            "--health-interval=disable",
            "--hostname",
            hostname,
            "-e",
            "IDEAMILL_CONFIG=/etc/ideamill/ideamill.toml",
            "-e",
            &format!("IDEAMILL_PROBE_PORT={port}"),
            "-v",
            &conf_mount,
            "-v",
            &token_mount,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // The web container: the API and dashboard, no jobs.
    let web_port = free_port();
    let web_name = format!("ideamill-web-{unique}");
    let web_args = common(web_port, &web_name);
    let listen = format!("127.0.0.1:{web_port}");
    podman.start(
        &web_name,
        &web_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            "run",
            "--no-supervisor",
            "--role",
            "web",
            "--listen",
            &listen,
        ],
    );
    assert!(
        wait_until(Duration::from_secs(60), || http(
            web_port, "GET", "/readyz", None, ""
        )
        .0 == 200),
        "the web container never became ready\n{}",
        podman.logs()
    );
    assert_eq!(http(web_port, "GET", "/healthz", None, "").0, 200);
    assert_eq!(
        http(web_port, "GET", "/api/status", None, "").0,
        401,
        "the API needs the token"
    );
    // The image's HEALTHCHECK, run by podman inside the container.
    podman.ok(&["healthcheck", "run", &web_name]);

    // Ideas through the API.
    let count = 12;
    let ideas: Vec<String> = (0..count).map(|i| format!("idea {i}")).collect();
    let (status, body) = http(
        web_port,
        "POST",
        "/api/items",
        Some(token),
        &ideas.join("\n"),
    );
    assert_eq!(status, 201, "{body}\n{}", podman.logs());
    let added: Value = serde_json::from_str(&body).expect("added JSON");
    let ids: Vec<i64> = added["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().expect("an id"))
        .collect();
    assert_eq!(ids.len(), count);
    // The KEDA scaler's query (deploy/kubernetes/scaling) counts them: one
    // first-stage job per idea, runnable now.
    assert_eq!(keda_query(&db.url), count.to_string());

    // Two workers, each serving its own probes.
    let started = Instant::now();
    let mut workers = Vec::new();
    for tag in ["a", "b"] {
        let port = free_port();
        let name = format!("ideamill-worker-{tag}-{unique}");
        let args = common(port, &name);
        let listen = format!("127.0.0.1:{port}");
        podman.start(
            &name,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[
                "run",
                "--no-supervisor",
                "--role",
                "worker",
                "--listen",
                &listen,
            ],
        );
        workers.push((name, port));
    }
    for (name, port) in &workers {
        assert!(
            wait_until(Duration::from_secs(60), || http(
                *port, "GET", "/readyz", None, ""
            )
            .0 == 200),
            "worker {name} never became ready\n{}",
            podman.logs()
        );
        assert_eq!(http(*port, "GET", "/healthz", None, "").0, 200);
    }

    // Kill worker a while it holds a job.
    let (victim, _) = workers[0].clone();
    let mut held: HashSet<i64> = HashSet::new();
    assert!(
        wait_until(Duration::from_secs(90), || {
            let running = host.status()["status"]["running"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            held = running
                .iter()
                .filter(|j| owner_host(j).starts_with(&format!("{victim}-")))
                .filter_map(|j| j["item_id"].as_i64())
                .collect();
            !held.is_empty()
        }),
        "worker a never held a job\n{}",
        podman.logs()
    );
    podman.ok(&["kill", &victim]);
    let killed = Instant::now();
    let done = |id: i64| host.show(id)["item"]["state"] == "done";
    assert!(
        wait_until(Duration::from_secs(120), || held.iter().all(|id| done(*id))),
        "the killed worker's items never finished\n{}",
        podman.logs()
    );
    let recovered = killed.elapsed().as_secs_f64();
    assert!(
        wait_until(Duration::from_secs(180), || ids.iter().all(|id| done(*id))),
        "not every item finished\n{}",
        podman.logs()
    );
    let run_secs = started.elapsed().as_secs_f64();

    // Each stage committed once per item, with the item's own output; the
    // killed worker's attempts are recorded as lost, and worker b did work.
    let mut lost = 0;
    let mut by_host: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let item = host.show(*id);
        let text = item["item"]["text"].as_str().expect("text").to_string();
        let outputs: Vec<String> = item["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .map(|o| o["output"].as_str().expect("output").trim().to_string())
            .collect();
        assert_eq!(
            outputs,
            vec![format!("one of {text}"), format!("two of {text}")],
            "{item:#}"
        );
        for a in item["attempts"].as_array().expect("attempts") {
            if a["outcome"] == "lost" {
                lost += 1;
            }
            let process = a["process"].as_str().unwrap_or("").to_string();
            let who = if process.starts_with(&format!("{victim}-")) {
                "a"
            } else {
                "b"
            };
            *by_host.entry(who.to_string()).or_default() += 1;
        }
    }
    assert!(lost >= 1, "the killed worker's attempt is recorded as lost");
    assert!(by_host.get("b").is_some_and(|n| *n > 0), "{by_host:?}");

    // SIGTERM: worker b finishes what it holds and exits 0 within its
    // grace (podman would SIGKILL it after 30 s: exit code 137).
    let (survivor, _) = workers[1].clone();
    let more: Vec<String> = (0..4).map(|i| format!("late idea {i}")).collect();
    let (status, body) = http(
        web_port,
        "POST",
        "/api/items",
        Some(token),
        &more.join("\n"),
    );
    assert_eq!(status, 201, "{body}");
    assert!(
        wait_until(Duration::from_secs(60), || {
            host.status()["status"]["running"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|j| owner_host(j).starts_with(&format!("{survivor}-")))
                })
        }),
        "worker b never took the late ideas\n{}",
        podman.logs()
    );
    let stopping = Instant::now();
    podman.ok(&["stop", "--time", "30", &survivor]);
    let stop_secs = stopping.elapsed().as_secs_f64();
    let (state, code) = podman.state(&survivor);
    assert_eq!(
        (state.as_str(), code),
        ("exited", 0),
        "worker b did not stop gracefully\n{}",
        podman.logs()
    );
    let out = podman.run(&["logs", &survivor]);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("Engine stopped"), "{logs}");
    // It finished or gave back what it held: no job is left leased to it,
    // and none of its attempts was lost.
    let running = host.status()["status"]["running"].clone();
    assert!(
        !running.as_array().is_some_and(|r| r
            .iter()
            .any(|j| owner_host(j).starts_with(&format!("{survivor}-")))),
        "worker b still holds jobs after stopping: {running:#}"
    );
    let all = host.json(&["list", "--limit", "1000"]);
    for item in all.as_array().expect("items") {
        let id = item["id"].as_i64().expect("id");
        for a in host.show(id)["attempts"].as_array().expect("attempts") {
            let process = a["process"].as_str().unwrap_or("");
            assert!(
                !(a["outcome"] == "lost" && process.starts_with(&format!("{survivor}-"))),
                "worker b lost an attempt on SIGTERM: {a:#}"
            );
        }
    }

    println!(
        "containers: image {image}: {:.1} MB, built in {build_secs:.1} s; {count} items through 2 \
         workers in {run_secs:.1} s ({:.2} items/s, one worker killed); the killed worker's \
         {} item(s) done {recovered:.1} s after the kill; SIGTERM stop took {stop_secs:.1} s",
        size as f64 / 1e6,
        count as f64 / run_secs,
        held.len()
    );
}

/// `[engine] shutdown_grace` of a config, in seconds, by the real parser.
fn shutdown_grace(config: &str) -> f64 {
    ideamill_core::config::parse(config, Path::new("/etc/ideamill/ideamill.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not parse: {e:?}"))
        .engine
        .shutdown_grace
        .as_secs_f64()
}

#[test]
fn kubernetes_manifests_validate_and_match_the_binary() {
    // Renders every overlay and validates it offline, strictly.
    let out = Command::new("bash")
        .arg(repo().join("deploy/kubernetes/check.sh"))
        .arg("--json")
        .output()
        .expect("run deploy/kubernetes/check.sh");
    assert!(
        out.status.success(),
        "the manifests do not render or validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let targets: Value = serde_json::from_slice(&out.stdout).expect("check.sh --json");
    let targets = targets.as_array().expect("targets");
    assert_eq!(targets.len(), 4, "base and three overlays");

    let mut tried: HashSet<(String, String)> = HashSet::new();
    for target in targets {
        let name = target["target"].as_str().expect("target");
        let configs = target["configs"].as_object().expect("configs");
        let config = configs
            .get("ideamill-config")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name} has no ideamill-config"));
        let containers = target["containers"].as_array().expect("containers");
        assert!(!containers.is_empty(), "{name} runs nothing");
        for c in containers {
            let what = format!("{name} {}", c["workload"]);
            let args: Vec<String> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("an arg").to_string())
                .collect();
            assert_eq!(args.first().map(String::as_str), Some("run"), "{what}");
            assert!(
                args.iter().any(|a| a == "--no-supervisor"),
                "{what}: Kubernetes supervises"
            );

            // The probes name the port the process listens on.
            let listen = args
                .iter()
                .position(|a| a == "--listen")
                .and_then(|i| args.get(i + 1))
                .unwrap_or_else(|| panic!("{what} does not listen: no probes"));
            let port: u64 = listen
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{what}: --listen {listen}"));
            let ports = c["ports"].as_array().expect("ports");
            let named = |n: &Value| -> u64 {
                match n {
                    Value::Number(n) => n.as_u64().expect("a port"),
                    Value::String(s) => ports
                        .iter()
                        .find(|p| p["name"] == s.as_str())
                        .and_then(|p| p["containerPort"].as_u64())
                        .unwrap_or_else(|| panic!("{what}: no port named {s}")),
                    _ => panic!("{what}: port {n}"),
                }
            };
            let probes = c["probes"].as_object().expect("probes");
            assert_eq!(
                probes["livenessProbe"]["path"], "/healthz",
                "{what}: liveness"
            );
            assert_eq!(
                probes["readinessProbe"]["path"], "/readyz",
                "{what}: readiness"
            );
            for (kind, probe) in probes {
                assert_eq!(named(&probe["port"]), port, "{what}: {kind} port");
            }

            // Locked down: non-root, read-only root, no capabilities, a
            // seccomp profile (Unconfined only where bubblewrap needs it).
            let (sec, pod) = (&c["security"], &c["pod_security"]);
            assert_eq!(pod["runAsNonRoot"], true, "{what}");
            assert_eq!(sec["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(sec["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(
                sec["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}"
            );
            assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{what}");
            if let Some(t) = sec["seccompProfile"]["type"].as_str() {
                assert!(
                    t == "RuntimeDefault" || name.contains("bubblewrap"),
                    "{what}: seccomp {t}"
                );
            }

            // The kubelet waits longer than the engine's own grace.
            let grace = c["grace"].as_f64().expect("grace");
            assert!(
                grace > shutdown_grace(config),
                "{what}: terminationGracePeriodSeconds {grace} <= shutdown_grace"
            );

            // The binary runs with exactly these args and serves the probes
            // there (on loopback, with a local store and a temp /data).
            if tried.insert((args.join(" "), config.to_string())) {
                run_as_manifest(&what, &args, config);
            }
        }
    }
}

/// Run `ideamill` with a manifest's args and config, made local: /data and
/// the token under a temp folder, the listener on a free loopback port, the
/// store a SQLite file; its /healthz and /readyz answer 200 and SIGTERM
/// stops it with exit 0.
fn run_as_manifest(what: &str, args: &[String], config: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().display().to_string();
    let token = dir.path().join("token");
    std::fs::write(&token, "manifest-test-token").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let local: String = config
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("url = ") {
                format!("url = \"sqlite://{root}/data/state/ideamill.db\"")
            } else {
                l.replace("/etc/ideamill/secrets/token", &token.display().to_string())
                    .replace("\"/data/", &format!("\"{root}/data/"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("ideamill.toml"), &local).expect("config");
    let p = Project::at(dir.path().to_path_buf());
    let valid = p.run(&["validate"]);
    assert!(
        valid.status.success(),
        "{what}: the ConfigMap's config does not validate:\n{}{}",
        String::from_utf8_lossy(&valid.stdout),
        String::from_utf8_lossy(&valid.stderr)
    );
    let port = free_port();
    let mut run_args: Vec<String> = args[1..].to_vec();
    let at = run_args
        .iter()
        .position(|a| a == "--listen")
        .expect("--listen")
        + 1;
    run_args[at] = format!("127.0.0.1:{port}");
    let mut child = p.spawn_run(&run_args.iter().map(String::as_str).collect::<Vec<_>>());
    for path in ["/healthz", "/readyz"] {
        assert!(
            wait_until(Duration::from_secs(30), || http(
                port, "GET", path, None, ""
            )
            .0 == 200),
            "{what}: {path} never answered 200 with {args:?}\n{}",
            p.logs()
        );
    }
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("stops on SIGTERM");
    assert!(status.success(), "{what}: {status}\n{}", p.logs());
}
