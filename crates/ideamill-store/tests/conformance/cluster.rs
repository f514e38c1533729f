//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` on a free
//! loopback port, everything under a temp folder, stopped when dropped.
//! Used by the store's conformance suite (when `DATABASE_URL` is not set)
//! and by the binary's end-to-end tests, which restart it. Needs only std,
//! libc and tempfile, so that any test binary can include it by path.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster. Its `postgres` database is empty; its `postgres`
/// role is a superuser reached without a password, on 127.0.0.1 only.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root: then it runs as this uid and gid.
    user: Option<(u32, u32)>,
    /// Server options beyond the defaults (TLS).
    extra: String,
}

impl Cluster {
    /// Create and start a cluster. The error says what is missing.
    pub fn start() -> Result<Cluster, String> {
        let cluster = Cluster::create()?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    /// A cluster that also speaks TLS, with a certificate for 127.0.0.1 and
    /// localhost signed by a CA of its own (made with `openssl`): the
    /// cluster and the CA certificate's path, for `sslrootcert`.
    pub fn start_tls() -> Result<(Cluster, PathBuf), String> {
        let mut cluster = Cluster::create()?;
        let dir = cluster.dir().join("tls");
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ca = make_certificates(&dir)?;
        if let Some((uid, gid)) = cluster.user {
            for file in ["server.pem", "server.key"] {
                chown(&dir.join(file), uid, gid)?;
            }
        }
        cluster.extra = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        );
        cluster.pg_ctl("start")?;
        Ok((cluster, ca))
    }

    fn create() -> Result<Cluster, String> {
        let bin = find_binaries().ok_or(
            "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: \
             install Debian's `postgresql` package, or set DATABASE_URL",
        )?;
        let user = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("ideamill-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp folder: {e}"))?;
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid)?;
        }
        let port = free_port()?;
        let cluster = Cluster {
            dir,
            bin,
            port,
            user,
            extra: String::new(),
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        Ok(cluster)
    }

    /// The folder holding the cluster's data, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of one of its databases.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stop and start again (a server restart: every connection is cut).
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl("restart")
    }

    /// Start a stopped cluster again, on the same port.
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl("start")
    }

    pub fn stop(&self) -> Result<(), String> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        // No fsync: a test cluster need not survive a power cut, and
        // `restart` is a clean shutdown anyway.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off \
             -c synchronous_commit=off -c max_connections=300{}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                action.as_ref(),
            ],
        )
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let out: Output = cmd
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

/// A CA (`ca.pem`) and a server certificate and key it signed
/// (`server.pem`, `server.key`, for 127.0.0.1 and localhost) in `dir`;
/// the CA's path.
pub fn make_certificates(dir: &Path) -> Result<PathBuf, String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=ideamill test CA",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| format!("cannot write server.ext: {e}"))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ])?;
    // PostgreSQL refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| format!("cannot restrict server.key: {e}"))?;
    Ok(dir.join("ca.pem"))
}

/// The folder holding `initdb` and `pg_ctl`: on PATH, else Debian's
/// versioned folder (the newest).
pub fn find_binaries() -> Option<PathBuf> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// As root, the `postgres` user's uid and gid; otherwise none.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated name; the result is read before any other
    // call that could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(
            "running as root, and PostgreSQL refuses root: there is no `postgres` user to run it as"
                .into(),
        );
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("cannot hand {} to the postgres user: {e}", path.display()))
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}
