//! Clocks that every process on this machine agrees on: the wall clock
//! (milliseconds since the Unix epoch, as the store keeps time), the
//! monotonic clock (CLOCK_MONOTONIC is system-wide on Linux, so a supervisor
//! can compare its own reading with a beat written by its child), and a UTC
//! timestamp for folder names. Times are `i64` milliseconds, the same type as
//! `ideamill_core::Millis`, so that this crate depends on nothing of ours.

use std::os::fd::{AsFd, OwnedFd};

use rustix::time::{ClockId, Timespec, clock_gettime};

/// Milliseconds since the Unix epoch (0 if the clock is set before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in ms: never jumps with NTP, comparable across processes.
///
/// Async-signal-safe once the clock has been read once in the process
/// (rustix finds the vDSO's `clock_gettime` on the first call; after that a
/// call is the vDSO function or the system call, neither of which allocates
/// or locks).
pub fn mono_millis() -> i64 {
    let ts = monotonic();
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// CLOCK_MONOTONIC in µs.
pub fn mono_micros() -> u64 {
    let ts = monotonic();
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

fn monotonic() -> Timespec {
    clock_gettime(ClockId::Monotonic)
}

/// A kernel timer (timerfd on CLOCK_MONOTONIC, non-blocking) that expires
/// at `first` (CLOCK_MONOTONIC ms, as [`mono_millis`]) and every `period`
/// after: readable at each expiry, so whoever waits on it wakes then, once.
pub fn periodic_timer(first: i64, period: std::time::Duration) -> std::io::Result<OwnedFd> {
    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create,
        timerfd_settime,
    };
    let timer = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: period.as_secs() as i64,
            tv_nsec: i64::from(period.subsec_nanos()),
        },
        // Zero would disarm the timer: the first expiry is at least 1 ns.
        it_value: Timespec {
            tv_sec: first.max(0) / 1000,
            tv_nsec: (first.max(0) % 1000) * 1_000_000 + 1,
        },
    };
    timerfd_settime(&timer, TimerfdTimerFlags::ABSTIME, &spec)?;
    Ok(timer)
}

/// How many times `timer` (from [`periodic_timer`]) expired since the last
/// call; 0 if it has not yet.
pub fn timer_expirations(timer: &impl AsFd) -> std::io::Result<u64> {
    let mut count = [0u8; 8];
    match rustix::io::read(timer, &mut count) {
        Ok(8) => Ok(u64::from_ne_bytes(count)),
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `20240114T093012Z` for a wall-clock time in ms.
pub fn utc_stamp(at: i64) -> String {
    let secs = at.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        let check = |ms: i64, expected: &str| assert_eq!(utc_stamp(ms), expected);
        check(0, "19700101T000000Z");
        check(1_705_224_612_000, "20240114T093012Z");
        check(951_782_400_000, "20000229T000000Z");
    }
}
