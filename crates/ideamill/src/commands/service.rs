//! `ideamill service print|install`: a systemd unit that runs this project's
//! engine under systemd's supervision instead of ideamill's own:
//! `Type=notify` (the engine says READY=1 once registered), `WatchdogSec=`
//! (the engine's event loop sends WATCHDOG=1 every beat), `Restart=on-failure`.
//! It never runs systemctl; it says what to run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ideamill_core::Config;

use crate::cli::{ServiceArgs, ServiceUnitArgs, ServiceWhat};
use crate::{exit, project};

pub fn run(config: Option<&Path>, args: &ServiceArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    match &args.what {
        ServiceWhat::Print(unit) => {
            print!("{}", unit_text(&config, unit)?);
            Ok(ExitCode::SUCCESS)
        }
        ServiceWhat::Install(install) => {
            let name = unit_name(&config, &install.unit);
            let dir = match &install.dir {
                Some(d) => d.clone(),
                None => default_dir(install.unit.user)?,
            };
            let path = dir.join(format!("{name}.service"));
            if path.exists() && !install.force {
                eprintln!(
                    "error: {} exists; pass --force to replace it",
                    path.display()
                );
                return Ok(ExitCode::from(exit::ERROR));
            }
            let text = unit_text(&config, &install.unit)?;
            write_atomically(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            let ctl = if install.unit.user {
                "systemctl --user"
            } else {
                "systemctl"
            };
            println!("Wrote {}", path.display());
            println!("Now run:  {ctl} daemon-reload && {ctl} enable --now {name}");
            println!("Then:     {ctl} status {name}   and   ideamill doctor");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn unit_name(config: &Config, unit: &ServiceUnitArgs) -> String {
    if let Some(n) = &unit.name {
        return n.trim_end_matches(".service").to_string();
    }
    let folder = config
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = folder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "ideamill".into()
    } else {
        format!("ideamill-{clean}")
    }
}

fn default_dir(user: bool) -> anyhow::Result<PathBuf> {
    if user {
        let base = match std::env::var_os("XDG_CONFIG_HOME") {
            Some(x) => PathBuf::from(x),
            None => {
                PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config")
            }
        };
        Ok(base.join("systemd/user"))
    } else {
        Ok(PathBuf::from("/etc/systemd/system"))
    }
}

/// A path as systemd reads it in ExecStart= and friends: quoted when needed.
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

fn unit_text(config: &Config, unit: &ServiceUnitArgs) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let health = &config.health;
    // systemd wants a beat at least every WatchdogSec; the engine beats at
    // least twice per stall_after.
    let watchdog = health.stall_after.as_secs().max(1);
    let stop = config.engine.shutdown_grace.as_secs() + 15;
    let user = if unit.user {
        String::new()
    } else {
        // A system unit runs as whoever owns the project, not as root.
        match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
            Ok(u) if !u.is_empty() && u != "root" => format!("User={u}\n"),
            _ => String::new(),
        }
    };
    Ok(format!(
        "# ideamill engine for {root}
# Written by `ideamill service install`; `ideamill service print` shows it.
[Unit]
Description=ideamill engine ({root})
Documentation=file://{root}/ideamill.toml
After=network-online.target
Wants=network-online.target
# The same restart intensity as ideamill's own supervisor.
StartLimitIntervalSec={window}
StartLimitBurst={burst}

[Service]
Type=notify
NotifyAccess=main
{user}WorkingDirectory={root_q}
ExecStart={exe} --config {config} run --no-supervisor
Environment=IDEAMILL_LOG=info
# The event loop sends WATCHDOG=1 every beat; silence for this long and
# systemd aborts the engine (SIGABRT, a core) and restarts it.
WatchdogSec={watchdog}s
Restart=on-failure
RestartSec=2s
# SIGTERM to the engine only: it lets running jobs finish within
# shutdown_grace, then stops their process groups itself.
KillMode=mixed
TimeoutStopSec={stop}s

[Install]
WantedBy={wanted}
",
        root = config.root.display(),
        root_q = quote(&config.root),
        exe = quote(&exe),
        config = quote(&config.path),
        window = health.restart_window.as_secs().max(1),
        burst = health.max_restarts,
        wanted = if unit.user {
            "default.target"
        } else {
            "multi-user.target"
        },
    ))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    // 0o666 less the umask, as `File::create` would.
    ideamill_sys::fs::write_atomic(path, bytes, 0o666)
}
