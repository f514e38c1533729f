//! A hung job's evidence folder, saved while its processes still exist:
//! `<data_dir>/evidence/<UTC time>-job<id>-attempt<n>/`, next to the
//! engine's own stall bundles (named `-pid<pid>`), written as
//! `<name>.partial` and renamed once complete, private to the mill's user.
//!
//! - `summary.json`: the job, the stage's `stall_after`, how long it was
//!   quiet, its elapsed and CPU time, its processes (pid, parent, state,
//!   command).
//! - `processes.txt`: each process of the job, parents first (the sandbox's
//!   processes with their host pids and, after `NSpid`, their pids inside
//!   the sandbox): command line, state, wait channel, current system call,
//!   kernel stack (`/proc/PID/stack`, where readable: root only), CPU time,
//!   each thread's state and wait channel, and every open file, sockets
//!   with their protocol, addresses and TCP state (read from the process's
//!   own network namespace, `/proc/PID/net/*`).
//! - `output.txt`: the last 64 KiB of stdout and stderr, as they came.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use ideamill_sys::process::{ProcStat, clock_ticks_per_second};
use serde_json::json;

use crate::stall::{Hang, StallSpec};

/// Saves the evidence of the hung job led by `leader`; the folder's path.
/// Blocking.
pub fn save(
    spec: &StallSpec,
    leader: u32,
    processes: &[ProcStat],
    hang: &Hang,
    output: &[u8],
) -> io::Result<PathBuf> {
    let stamp = ideamill_sys::clock::utc_stamp(ideamill_sys::clock::now_millis());
    let mut name = format!("{stamp}-{}", spec.label);
    let mut n = 1;
    while spec.evidence_dir.join(&name).exists()
        || spec.evidence_dir.join(format!("{name}.partial")).exists()
    {
        n += 1;
        name = format!("{stamp}-{}-{n}", spec.label);
    }
    let partial = spec.evidence_dir.join(format!("{name}.partial"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&partial)?;
    let write = |file: &str, content: &[u8]| {
        ideamill_sys::fs::write_synced(&partial.join(file), content, 0o600)
    };
    let ticks = clock_ticks_per_second().max(1) as f64;
    let listed: Vec<serde_json::Value> = processes
        .iter()
        .map(|p| {
            json!({
                "pid": p.pid,
                "ppid": p.ppid,
                "state": p.state.to_string(),
                "command": p.comm,
                "cpu_seconds": p.cpu_ticks() as f64 / ticks,
            })
        })
        .collect();
    let summary = json!({
        "outcome": "hung",
        "job": spec.about,
        "leader_pid": leader,
        "stall_after_ms": millis(hang.after),
        "quiet_for_ms": millis(hang.quiet_for),
        "elapsed_ms": millis(hang.elapsed),
        "cpu_ms": millis(hang.cpu),
        "wrote_output": hang.wrote_output,
        "output_bytes_kept": output.len(),
        "processes": listed,
    });
    write(
        "summary.json",
        &serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )?;
    write("processes.txt", describe_processes(processes).as_bytes())?;
    write("output.txt", output)?;
    let done = spec.evidence_dir.join(&name);
    let _ = ideamill_sys::fs::sync_dir(&partial);
    std::fs::rename(&partial, &done)?;
    let _ = ideamill_sys::fs::sync_dir(&spec.evidence_dir);
    Ok(done)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Everything `/proc` shows of each process, for people.
pub fn describe_processes(processes: &[ProcStat]) -> String {
    let ticks = clock_ticks_per_second().max(1) as f64;
    let mut out = String::new();
    for p in processes {
        let base = PathBuf::from(format!("/proc/{}", p.pid));
        let read = |f: &str| read_trimmed(&base.join(f));
        let cmdline = std::fs::read(base.join("cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let _ = write!(
            out,
            "=== pid {} (parent {}, NSpid {nspid}) `{}` state {} ({}), {} thread(s), CPU {:.2}s\n\
             command line: {cmdline}\nwait channel: {}\nsystem call: {}\nkernel stack:\n{}\n",
            p.pid,
            p.ppid,
            p.comm,
            p.state,
            state_name(p.state),
            p.threads,
            p.cpu_ticks() as f64 / ticks,
            read("wchan"),
            read("syscall"),
            indent(&read("stack")),
        );
        if p.threads > 1 {
            out.push_str("threads:\n");
            out.push_str(&threads(&base));
        }
        out.push_str("open files:\n");
        out.push_str(&open_files(&base));
        out.push('\n');
    }
    if processes.is_empty() {
        out.push_str("(no process of the job was found)\n");
    }
    out
}

fn read_trimmed(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => "(empty)".to_owned(),
        Ok(text) => text.trim_end().to_owned(),
        Err(e) => format!("(unreadable: {e})"),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "uninterruptible wait",
        'Z' => "zombie",
        'T' => "stopped",
        't' => "traced",
        'X' => "dead",
        'I' => "idle",
        _ => "unknown",
    }
}

/// Each thread of the process at `base`: id, name, state, wait channel.
fn threads(base: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(base.join("task")) else {
        return "  (unreadable)\n".to_owned();
    };
    let mut tids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let task = base.join("task").join(tid.to_string());
        let state = ideamill_sys::process::parse_stat(&read_trimmed(&task.join("stat")))
            .map_or('?', |s| s.state);
        let _ = writeln!(
            out,
            "  {tid} `{}` state {state} wait channel {}",
            read_trimmed(&task.join("comm")),
            read_trimmed(&task.join("wchan")),
        );
    }
    out
}

/// Each open file of the process at `base`; sockets with what its network
/// namespace says of them.
fn open_files(base: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(base.join("fd")) else {
        return "  (unreadable)\n".to_owned();
    };
    let mut fds: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut sockets: Option<HashMap<u64, String>> = None;
    let mut out = String::new();
    for fd in fds {
        let target = std::fs::read_link(base.join("fd").join(fd.to_string()))
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let socket = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse::<u64>().ok());
        let detail = socket.map(|inode| {
            let table = sockets.get_or_insert_with(|| socket_table(base));
            table
                .get(&inode)
                .cloned()
                .unwrap_or_else(|| "(not in this namespace's tables)".to_owned())
        });
        match detail {
            Some(detail) => {
                let _ = writeln!(out, "  {fd} -> {target} {detail}");
            }
            None => {
                let _ = writeln!(out, "  {fd} -> {target}");
            }
        }
    }
    out
}

/// Every socket of the network namespace of the process at `base`, by inode.
fn socket_table(base: &Path) -> HashMap<u64, String> {
    let mut table = HashMap::new();
    for (file, proto) in [
        ("tcp", "TCP"),
        ("tcp6", "TCP6"),
        ("udp", "UDP"),
        ("udp6", "UDP6"),
    ] {
        let Ok(text) = std::fs::read_to_string(base.join("net").join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some((inode, what)) = inet_line(line, proto) {
                table.insert(inode, what);
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(base.join("net/unix")) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let Some(inode) = f.get(6).and_then(|i| i.parse::<u64>().ok()) {
                let path = f.get(7).copied().unwrap_or("(unnamed)");
                table.insert(inode, format!("UNIX {path}"));
            }
        }
    }
    table
}

/// One line of `/proc/net/tcp` (or udp, tcp6, udp6): its inode, and
/// "TCP 127.0.0.1:5000 -> 127.0.0.1:41234 CLOSE_WAIT".
fn inet_line(line: &str, proto: &str) -> Option<(u64, String)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local = address(f.get(1)?)?;
    let remote = address(f.get(2)?)?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    let state = if proto.starts_with("TCP") {
        tcp_state(state).to_owned()
    } else {
        String::new()
    };
    Some((
        inode,
        format!("{proto} {local} -> {remote} {state}")
            .trim_end()
            .to_owned(),
    ))
}

/// "0100007F:1F90" → "127.0.0.1:8080"; IPv6 as four little-endian words.
fn address(text: &str) -> Option<String> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    match ip.len() {
        8 => {
            let raw = u32::from_str_radix(ip, 16).ok()?;
            let ip = std::net::Ipv4Addr::from(raw.swap_bytes());
            Some(format!("{ip}:{port}"))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

fn tcp_state(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lines_are_read() {
        fn check(line: &str, proto: &str, expected: Option<(u64, &str)>) {
            assert_eq!(
                inet_line(line, proto),
                expected.map(|(i, s)| (i, s.to_owned())),
                "{line}"
            );
        }
        check(
            "   1: 0100007F:A0D2 0100007F:1F90 08 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1",
            "TCP",
            Some((4242, "TCP 127.0.0.1:41170 -> 127.0.0.1:8080 CLOSE_WAIT")),
        );
        check(
            "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0",
            "TCP6",
            Some((77, "TCP6 [::1]:8080 -> [::]:0 LISTEN")),
        );
        check(
            "  5: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   0 0 99 2 0000000000000000 0",
            "UDP",
            Some((99, "UDP 0.0.0.0:5353 -> 0.0.0.0:0")),
        );
        check("garbage", "TCP", None);
    }

    #[test]
    fn this_process_is_described_with_its_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = ideamill_sys::process::read_stat(ideamill_sys::process::own_pid()).unwrap();
        let text = describe_processes(&[me]);
        for part in [
            "state ",
            "wait channel: ",
            "kernel stack:",
            "threads:",
            "open files:",
        ] {
            assert!(text.contains(part), "{part} missing:\n{text}");
        }
        assert!(
            text.contains(&format!("127.0.0.1:{port} -> 0.0.0.0:0 LISTEN")),
            "{text}"
        );
    }
}
