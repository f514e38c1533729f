//! The beat pipe: the supervisor's view of the engine's beats that needs no
//! disk. The supervisor passes the write end of a pipe as fd
//! [`ENV_BEAT_FD`]; every beat writes a [`Beat`] there as 8 bytes (one
//! atomic write, under PIPE_BUF). The supervisor drains the pipe whenever it
//! wakes and keeps the newest, so a full disk that stops the status file
//! from being rewritten does not pass for a hung engine.

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};

use ideamill_core::Millis;

/// Set by the supervisor on the engine it starts: the beat pipe's fd.
pub const ENV_BEAT_FD: &str = "IDEAMILL_BEAT_FD";
/// The fd number the supervisor gives the pipe's write end in the engine.
pub const BEAT_FD: RawFd = 3;
/// Bytes per beat record.
pub const RECORD: usize = 8;

/// The write end, if this engine was given one. Marked close-on-exec and
/// non-blocking here, so that stage programs never inherit it and a full
/// pipe never blocks the loop.
pub fn from_env() -> Option<std::fs::File> {
    let fd: RawFd = std::env::var(ENV_BEAT_FD).ok()?.parse().ok()?;
    // SAFETY: fcntl on an fd number; a bad one only fails.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return None;
        }
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        // The supervisor's pipe is ours alone from here on.
        Some(std::fs::File::from_raw_fd(fd))
    }
}

/// One beat: when (CLOCK_MONOTONIC ms), and whether the engine had started
/// (registered with the store) by then. An engine that exits before it
/// started failed to start, and its supervisor does not try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// CLOCK_MONOTONIC, in milliseconds.
    pub mono: Millis,
    /// Whether the engine had registered with the store.
    pub started: bool,
}

impl Beat {
    fn encode(self) -> [u8; RECORD] {
        ((self.mono << 1) | Millis::from(self.started)).to_le_bytes()
    }

    fn decode(record: [u8; RECORD]) -> Beat {
        let v = Millis::from_le_bytes(record);
        Beat {
            mono: v >> 1,
            started: v & 1 == 1,
        }
    }
}

/// Tell the supervisor about a beat. Errors (a full pipe, a supervisor
/// gone) are ignored: the beat pipe is a second channel.
pub fn send(pipe: &mut std::fs::File, beat: Beat) {
    let _ = pipe.write(&beat.encode());
}

/// The newest beat in what was read from the pipe: whole records only.
pub fn newest(bytes: &[u8]) -> Option<Beat> {
    let last = bytes.len() / RECORD;
    let record = bytes.get((last.checked_sub(1)?) * RECORD..last * RECORD)?;
    Some(Beat::decode(record.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_takes_the_last_whole_record() {
        let beat = |mono, started| Beat { mono, started };
        let mut bytes = Vec::new();
        assert_eq!(newest(&bytes), None);
        for b in [beat(5, false), beat(17, true), beat(1_000_000_007, true)] {
            bytes.extend_from_slice(&b.encode());
        }
        assert_eq!(newest(&bytes), Some(beat(1_000_000_007, true)));
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            newest(&bytes),
            Some(beat(1_000_000_007, true)),
            "a torn tail is ignored"
        );
        assert_eq!(newest(&beat(42, false).encode()), Some(beat(42, false)));
    }
}
