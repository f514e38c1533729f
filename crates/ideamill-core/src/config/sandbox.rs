//! `[sandbox]`: the program that confines command stages and the default
//! limits of every confined stage (each stage may override them with its
//! own `limits = { ... }`).

use std::time::Duration;

use super::section::{Got, Section};

/// Default `sandbox.program`.
pub const DEFAULT_PROGRAM: &str = "bwrap";

/// `[sandbox]`: the program and default limits of sandboxed command stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The sandbox program (bubblewrap). Default `bwrap`, looked up in `PATH`.
    pub program: String,
    /// Resource limits applied to sandboxed commands unless a stage sets its own.
    pub limits: Limits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            program: DEFAULT_PROGRAM.to_owned(),
            limits: Limits::default(),
        }
    }
}

/// What one job of a command stage may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of all its processes together (a cgroup where the host has
    /// one for us, else each process's address space). Default 2 GiB.
    pub memory: u64,
    /// Processes and threads at once. Default 256.
    pub processes: u32,
    /// CPU time of each process. Default 10m.
    pub cpu_time: Duration,
    /// Largest file it may write. Default 512 MiB.
    pub file_size: u64,
    /// The item's workspace after the stage, all files together. Default 1 GiB.
    pub workspace_size: u64,
    /// Its private `/tmp` (memory-backed). Default 256 MiB.
    pub tmp_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 2 << 30,
            processes: 256,
            cpu_time: Duration::from_secs(10 * 60),
            file_size: 512 << 20,
            workspace_size: 1 << 30,
            tmp_size: 256 << 20,
        }
    }
}

/// Whether a command stage runs confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// The default: confined by `[sandbox] program`.
    On,
    /// Unconfined, by the config's explicit choice (`sandbox = "off"`):
    /// logged at every start and shown as a warning.
    Off,
}

pub(super) fn parse(s: &mut Section<'_>) -> SandboxConfig {
    let program = match s.string("program") {
        Got::Ok(program, span) if program.is_empty() => {
            s.invalid("program", span, "must not be empty");
            String::new()
        }
        Got::Ok(program, span) if program.contains('\0') => {
            s.invalid("program", span, "contains a NUL byte");
            String::new()
        }
        Got::Ok(program, _) => program.into_owned(),
        Got::Absent | Got::Bad => DEFAULT_PROGRAM.to_owned(),
    };
    SandboxConfig {
        program,
        limits: limits(s, &Limits::default()),
    }
}

/// Limits read from `s`, each defaulting to `defaults`'.
pub(super) fn limits(s: &mut Section<'_>, defaults: &Limits) -> Limits {
    Limits {
        memory: s.size("memory", 16 << 20).or(defaults.memory),
        processes: s.count("processes", 1 << 22, defaults.processes),
        cpu_time: match s.nonzero_duration("cpu_time") {
            Got::Ok(d, span) if d < Duration::from_secs(1) => {
                s.invalid("cpu_time", span, "must be at least 1s");
                defaults.cpu_time
            }
            other => other.or(defaults.cpu_time),
        },
        file_size: s.size("file_size", 1 << 10).or(defaults.file_size),
        workspace_size: s
            .size("workspace_size", 1 << 10)
            .or(defaults.workspace_size),
        tmp_size: s.size("tmp_size", 1 << 10).or(defaults.tmp_size),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{STAGE, check_errors, command, config};

    #[test]
    fn sandbox_and_limits() {
        let c = config(&format!(
            "[sandbox]\nprogram = \"/opt/bwrap\"\nmemory = \"1GiB\"\nprocesses = 64\n\
             {STAGE}network = true\npass_env = [\"X\"]\nread_only = [\"tests\"]\n\
             limits = {{ memory = \"512MiB\", cpu_time = \"30s\" }}\n\
             [[stages]]\nname = \"free\"\nkind = \"command\"\ncommand = [\"true\"]\nsandbox = \"off\"\n"
        ));
        assert_eq!(c.sandbox.program, "/opt/bwrap");
        let build = command(&c.stages[0]);
        assert_eq!(build.sandbox, SandboxMode::On);
        assert!(build.network);
        assert_eq!(build.pass_env, ["X"]);
        assert_eq!(build.read_only, [c.root.join("tests")]);
        // The stage's own limits win; the rest come from [sandbox], then defaults.
        assert_eq!(build.limits.memory, 512 << 20);
        assert_eq!(build.limits.cpu_time, Duration::from_secs(30));
        assert_eq!(build.limits.processes, 64);
        assert_eq!(
            build.limits.workspace_size,
            Limits::default().workspace_size
        );
        let free = command(&c.stages[1]);
        assert_eq!(free.sandbox, SandboxMode::Off);
        assert!(!free.network);
        assert_eq!(free.limits.memory, 1 << 30);

        check_errors(
            &format!(
                "{STAGE}sandbox = \"maybe\"\npass_env = [\"A=B\"]\nlimits = {{ memory = \"2 gigs\", disk = 1 }}\n"
            ),
            &[
                r#"5:11: [[stages]] #1 ("build"): `sandbox` "maybe" must be "on" (the default) or "off""#,
                r#"6:13: [[stages]] #1 ("build"): `pass_env` "A=B" is not a valid environment variable name"#,
                r#"7:21: [[stages]] #1 ("build"): `limits.memory` unknown size unit "gigs" in "2 gigs"; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"#,
                r#"7:31: unknown key `limits.disk` in [[stages]] #1 ("build"); expected one of: limits.memory, limits.processes, limits.cpu_time, limits.file_size, limits.workspace_size, limits.tmp_size"#,
            ],
        );
    }
}
