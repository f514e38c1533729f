//! Output for people (aligned tables, relative times) and for scripts (JSON).

use std::io::Write;
use std::time::Duration;

use ideamill_core::duration::format_duration;
use ideamill_core::{FailureClass, Millis};

/// Print `value` as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A table with a header row, columns padded to their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line =
            |cells: &mut dyn Iterator<Item = &str>, out: &mut dyn Write| -> std::io::Result<()> {
                let mut s = String::new();
                for (i, cell) in cells.enumerate() {
                    if i + 1 == n {
                        s.push_str(cell);
                    } else {
                        s.push_str(cell);
                        s.extend(std::iter::repeat_n(
                            ' ',
                            widths[i] - cell.chars().count() + 2,
                        ));
                    }
                }
                writeln!(out, "{}", s.trim_end())
            };
        line(&mut self.header.iter().copied(), out)?;
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str), out)?;
        }
        Ok(())
    }
}

/// "3s ago", "in 2m", for a timestamp relative to `now`.
pub fn ago(at: Millis, now: Millis) -> String {
    let d = now - at;
    if d >= 0 {
        format!(
            "{} ago",
            format_duration(round(Duration::from_millis(d as u64)))
        )
    } else {
        format!(
            "in {}",
            format_duration(round(Duration::from_millis((-d) as u64)))
        )
    }
}

/// An item's state as people read it, with a failed item's class:
/// `failed (infra)`, `failed (quality)`.
pub fn state_with_class(display_state: &str, class: Option<FailureClass>) -> String {
    match class {
        Some(class) => format!("{display_state} ({class})"),
        None => display_state.to_string(),
    }
}

/// What a failure class means for the person reading `show`.
pub fn failure_meaning(class: FailureClass) -> &'static str {
    match class {
        FailureClass::Infra => {
            "infra: the provider or the host failed, not the work (`ideamill retry --failed infra` runs such items again)"
        }
        FailureClass::Quality => "quality: the work itself failed or was rejected",
    }
}

/// An elapsed time between two timestamps.
pub fn elapsed(from: Millis, to: Millis) -> String {
    format_duration(Duration::from_millis((to - from).max(0) as u64))
}

fn round(d: Duration) -> Duration {
    if d < Duration::from_secs(1) {
        Duration::from_millis(d.as_millis() as u64)
    } else {
        Duration::from_secs(d.as_secs())
    }
}

/// An absolute UTC timestamp, RFC 3339 to the second.
pub fn timestamp(at: Millis) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub use ideamill_core::text::first_line;
