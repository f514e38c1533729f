//! What the soak watches while it runs: every second, the store's queue
//! (the longest time a runnable job waits while its stage has a free
//! slot); every ten seconds, the RSS and open descriptors of each process
//! and the store's size; every minute, the rows of each table.

use std::collections::BTreeMap;

use ideamill_core::Millis;
use ideamill_store::StatusSnapshot;
use serde::Serialize;

/// A runnable job that waited with a free slot for longer than the
/// threshold: checked against the chaos and the detected stalls at the end.
#[derive(Debug, Clone, Serialize)]
pub struct LongWait {
    /// When it became runnable with a free slot.
    pub since: Millis,
    /// The last time it was still seen waiting.
    pub until: Millis,
}

/// The oldest runnable job, followed from sample to sample.
#[derive(Debug, Default)]
pub struct WaitTracker {
    /// `oldest_runnable_at` as last seen, and when it began to wait with a
    /// free slot.
    current: Option<(Millis, Millis)>,
    /// The longest wait seen, in ms.
    pub longest_ms: i64,
    pub long_waits: Vec<LongWait>,
}

impl WaitTracker {
    /// One sample of the queue. A stage has a free slot while it runs fewer
    /// jobs than `capacity` (its concurrency times the worker processes).
    pub fn observe(
        &mut self,
        s: &StatusSnapshot,
        capacity: &BTreeMap<String, u64>,
        threshold_ms: i64,
    ) {
        let free = s
            .stages
            .iter()
            .filter(|st| st.queued > 0)
            .all(|st| st.running < capacity.get(&st.stage).copied().unwrap_or(0));
        let waiting = s
            .oldest_runnable_at
            .filter(|_| free && s.stages.iter().any(|st| st.queued > 0));
        let Some(oldest) = waiting else {
            self.current = None;
            return;
        };
        let since = match self.current {
            Some((seen, since)) if seen == oldest => since,
            // A new oldest job, or a free slot again: its wait counts from
            // when it became runnable, but not from before this sample saw
            // a free slot.
            _ => oldest.max(s.now - 1000),
        };
        self.current = Some((oldest, since));
        let wait = s.now - since;
        self.longest_ms = self.longest_ms.max(wait);
        if wait > threshold_ms {
            match self.long_waits.last_mut() {
                Some(w) if w.since == since => w.until = s.now,
                _ => self.long_waits.push(LongWait {
                    since,
                    until: s.now,
                }),
            }
        }
    }
}

/// One sample of a process's memory and descriptors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the soak started.
    pub at: f64,
    /// Resident bytes (`VmRSS`): counts the binary's code pages as they
    /// are first touched, too.
    pub rss: u64,
    /// Resident anonymous bytes (`RssAnon`): the heap and stacks, where a
    /// leak shows.
    pub anon: u64,
    /// Open descriptors.
    pub fds: u64,
}

/// How a process grew, per hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slopes {
    pub rss_bytes: f64,
    pub anon_bytes: f64,
    /// The slope of the fewest descriptors seen in each window of
    /// [`FDS_WINDOW_SECS`]: descriptors move with the jobs running at each
    /// sample (their pipes), while a leak raises the floor. `None` with
    /// fewer than 3 windows, too few for a slope.
    pub fds_floor: Option<f64>,
}

/// The window whose fewest descriptors make one point of the floor.
pub const FDS_WINDOW_SECS: f64 = 300.0;

/// One process's memory and descriptors over time.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub label: String,
    pub pid: u32,
    pub points: Vec<Sample>,
}

impl Series {
    /// Least-squares slopes per hour; `None` with fewer than 3 points or
    /// under a minute of them.
    pub fn slopes_per_hour(&self) -> Option<Slopes> {
        let first = self.points.first()?.at;
        let span = self.points.last()?.at - first;
        if self.points.len() < 3 || span < 60.0 {
            return None;
        }
        let xs: Vec<f64> = self.points.iter().map(|p| p.at).collect();
        let per_hour = |ys: Vec<f64>| slope(&xs, &ys) * 3600.0;
        let mut floor: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for p in &self.points {
            let w = floor
                .entry(((p.at - first) / FDS_WINDOW_SECS) as u64)
                .or_insert((p.at, p.fds));
            w.1 = w.1.min(p.fds);
        }
        let (fx, fy): (Vec<f64>, Vec<f64>) = floor.values().map(|&(x, y)| (x, y as f64)).unzip();
        Some(Slopes {
            rss_bytes: per_hour(self.points.iter().map(|p| p.rss as f64).collect()),
            anon_bytes: per_hour(self.points.iter().map(|p| p.anon as f64).collect()),
            fds_floor: (fx.len() >= 3).then(|| slope(&fx, &fy) * 3600.0),
        })
    }

    /// The slopes of the points after the first `warm_up` seconds: a
    /// process's first minutes fill its caches, pools and touched pages,
    /// which is no leak.
    pub fn slopes_after(&self, warm_up: f64) -> Option<Slopes> {
        let start = self.points.first()?.at + warm_up;
        Series {
            label: String::new(),
            pid: self.pid,
            points: self
                .points
                .iter()
                .copied()
                .filter(|p| p.at >= start)
                .collect(),
        }
        .slopes_per_hour()
    }

    fn seconds(&self) -> f64 {
        match (self.points.first(), self.points.last()) {
            (Some(a), Some(b)) => b.at - a.at,
            _ => 0.0,
        }
    }
}

/// How long a process's start is not counted in its slope ([`Role`]).
pub const WARM_UP_SECS: f64 = 600.0;

/// Every process of one role (`engine`, `supervisor`, `postgres`) over the
/// run, those the faults ended too: the most any of them used, and how the
/// longest-lived grew after its warm-up. Faults end most processes within
/// minutes, so a leak shows in the peaks (across restarts) and in the
/// longest-lived's slope (within one process).
#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub role: String,
    pub processes: usize,
    pub peak_rss: u64,
    pub peak_fds: u64,
    pub longest_pid: u32,
    pub longest_seconds: f64,
    /// Growth per hour after [`WARM_UP_SECS`]; `None` when no process
    /// lived long enough.
    pub slopes_after_warm_up: Option<Slopes>,
    /// Growth per hour over the second half of the longest-lived's life:
    /// a cache that fills levels off by then, a leak keeps its slope.
    pub slopes_last_half: Option<Slopes>,
}

/// [`Role`]s of `series`, by the first word of their labels.
pub fn roles(series: &[Series]) -> Vec<Role> {
    let mut names: Vec<&str> = series
        .iter()
        .filter_map(|s| s.label.split_whitespace().next())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let of: Vec<&Series> = series
                .iter()
                .filter(|s| s.label.split_whitespace().next() == Some(name))
                .collect();
            let longest = of
                .iter()
                .max_by(|a, b| a.seconds().total_cmp(&b.seconds()))?;
            let points = || of.iter().flat_map(|s| s.points.iter());
            Some(Role {
                role: name.to_owned(),
                processes: of.len(),
                peak_rss: points().map(|p| p.rss).max().unwrap_or(0),
                peak_fds: points().map(|p| p.fds).max().unwrap_or(0),
                longest_pid: longest.pid,
                longest_seconds: longest.seconds(),
                slopes_after_warm_up: longest.slopes_after(WARM_UP_SECS),
                slopes_last_half: longest.slopes_after(longest.seconds() / 2.0),
            })
        })
        .collect()
}

/// The least-squares slope of `ys` over `xs`.
pub fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// A sample of `pid` now (`at` seconds into the soak); `None` when it is
/// gone.
pub fn sample_process(pid: u32, at: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<u64> {
        let v = status.lines().find_map(|l| l.strip_prefix(field))?;
        Some(v.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
    };
    Some(Sample {
        at,
        rss: kib("VmRSS:")?,
        anon: kib("RssAnon:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
    })
}

/// Bytes under `path` (files only, not following links).
pub fn tree_bytes(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ideamill_store::StageCounts;

    fn snapshot(now: Millis, oldest: Option<Millis>, queued: u64, running: u64) -> StatusSnapshot {
        StatusSnapshot {
            now,
            items: Default::default(),
            stages: vec![StageCounts {
                stage: "s".into(),
                queued,
                scheduled: 0,
                running,
            }],
            running: Vec::new(),
            processes: Vec::new(),
            expired_leases: 0,
            oldest_runnable_at: oldest,
            paused: 0,
            today: Default::default(),
        }
    }

    #[test]
    fn a_wait_counts_only_while_a_slot_is_free() {
        let capacity = BTreeMap::from([("s".to_string(), 2)]);
        let mut t = WaitTracker::default();
        // Saturated: waiting, but not with a free slot.
        t.observe(&snapshot(10_000, Some(0), 5, 2), &capacity, 3000);
        assert_eq!(t.longest_ms, 0);
        // A slot frees up: the wait counts from the sample before, not
        // from when the job became runnable.
        t.observe(&snapshot(11_000, Some(0), 5, 1), &capacity, 3000);
        assert_eq!(t.longest_ms, 1000);
        t.observe(&snapshot(15_000, Some(0), 5, 1), &capacity, 3000);
        assert_eq!(t.longest_ms, 5000);
        assert_eq!(t.long_waits.len(), 1);
        assert_eq!(
            (t.long_waits[0].since, t.long_waits[0].until),
            (10_000, 15_000)
        );
        // Picked up: a newer oldest job starts its own wait.
        t.observe(&snapshot(16_000, Some(15_900), 1, 1), &capacity, 3000);
        assert_eq!(t.long_waits.len(), 1);
        assert_eq!(t.longest_ms, 5000);
    }

    fn at(minute: u64, rss: u64, fds: u64) -> Sample {
        Sample {
            at: minute as f64 * 60.0,
            rss,
            anon: rss / 2,
            fds,
        }
    }

    #[test]
    fn roles_take_the_peaks_of_all_and_the_slope_of_the_longest_lived_after_warm_up() {
        let series = |label: &str, pid, points: Vec<Sample>| Series {
            label: label.into(),
            pid,
            points,
        };
        // Grows for its first 10 minutes, then flat for 20.
        let long: Vec<Sample> = (0..=30).map(|m| at(m, 10 + m.min(10), 9)).collect();
        let roles = roles(&[
            series("engine main", 1, long),
            series("engine main", 2, vec![at(0, 50, 30), at(1, 60, 31)]),
            series("supervisor main", 3, vec![at(0, 5, 9)]),
        ]);
        assert_eq!(roles.len(), 2);
        let engine = &roles[0];
        assert_eq!(
            (
                engine.role.as_str(),
                engine.processes,
                engine.peak_rss,
                engine.peak_fds
            ),
            ("engine", 2, 60, 31)
        );
        assert_eq!(engine.longest_pid, 1);
        let flat = Slopes {
            rss_bytes: 0.0,
            anon_bytes: 0.0,
            fds_floor: Some(0.0),
        };
        assert_eq!(engine.slopes_after_warm_up, Some(flat));
        assert_eq!(engine.slopes_last_half, Some(flat));
        assert_eq!(roles[1].slopes_after_warm_up, None);
    }

    #[test]
    fn the_descriptors_slope_follows_their_floor_not_each_sample() {
        // Every window has a busy sample (pipes to running jobs) at a
        // different moment; the floor stays 30.
        let busy: Vec<Sample> = (0..60)
            .map(|m| at(m, 100, if m % 7 == 3 { 30 + m } else { 30 }))
            .collect();
        let g = Series {
            label: "engine".into(),
            pid: 1,
            points: busy.clone(),
        }
        .slopes_per_hour()
        .unwrap();
        assert_eq!(g.fds_floor, Some(0.0));
        // One more descriptor kept every window is a leak.
        let leaking: Vec<Sample> = busy
            .iter()
            .map(|s| Sample {
                fds: s.fds + (s.at / FDS_WINDOW_SECS) as u64,
                ..*s
            })
            .collect();
        let g = Series {
            label: "engine".into(),
            pid: 1,
            points: leaking,
        }
        .slopes_per_hour()
        .unwrap();
        let floor = g.fds_floor.unwrap();
        assert!((floor - 12.0).abs() < 0.5, "{floor}");
        // Two windows are too few for a slope.
        let short = Series {
            label: "engine".into(),
            pid: 1,
            points: busy[..10].to_vec(),
        };
        assert_eq!(short.slopes_per_hour().unwrap().fds_floor, None);
    }

    #[test]
    fn slope_of_a_line() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert!((slope(&xs, &[1.0, 3.0, 5.0, 7.0]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[1.0, 1.0], &[2.0, 3.0]), 0.0);
    }
}
