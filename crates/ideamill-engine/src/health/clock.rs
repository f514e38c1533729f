//! Clocks that every process on this machine agrees on: the monotonic clock
//! (CLOCK_MONOTONIC is system-wide on Linux, so a supervisor can compare its
//! own reading with a beat written by its child), the wall clock, and a UTC
//! timestamp for folder names.

use ideamill_core::Millis;

/// CLOCK_MONOTONIC in ms: never jumps with NTP, comparable across processes.
pub fn mono_millis() -> Millis {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as Millis * 1000 + ts.tv_nsec as Millis / 1_000_000
}

/// CLOCK_MONOTONIC in µs.
pub fn mono_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

pub fn wall_millis() -> Millis {
    crate::now_millis()
}

/// Resident memory of this process, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident memory of process `pid` ("self" for this one).
pub fn rss_of(pid: &str) -> u64 {
    let page = 4096;
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// `20240114T093012Z` for a wall-clock time in ms.
pub fn utc_stamp(at: Millis) -> String {
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
        let check = |ms: Millis, expected: &str| assert_eq!(utc_stamp(ms), expected);
        check(0, "19700101T000000Z");
        check(1_705_224_612_000, "20240114T093012Z");
        check(951_782_400_000, "20000229T000000Z");
    }
}
