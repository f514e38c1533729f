//! `[inbox]`: how `ideamill run` takes idea files dropped into the inbox
//! folder (`engine.inbox`).

use std::time::Duration;

use super::section::Section;

pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_IDEAS: u32 = 10_000;
pub const DEFAULT_MAX_IDEA_BYTES: u64 = 256 * 1024;

/// `[inbox]`: how the inbox folder is watched and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// Watch and take the inbox at all. Default true.
    pub enabled: bool,
    /// Learn of new files from filesystem events (inotify) at once. Without
    /// them (network filesystems, where events of other machines never
    /// arrive) only the rescan finds files. Default true.
    pub events: bool,
    /// A file written in place is taken once its size and modification time
    /// have not changed for this long; a file renamed in is taken at once.
    /// Default 1s.
    pub settle: Duration,
    /// The full rescan of the folder, the safety net for missed events.
    /// Default 30s.
    pub rescan: Duration,
    /// Larger files are rejected unread. Default 16 MiB.
    pub max_file_bytes: u64,
    /// Files with more ideas are rejected. Default 10,000.
    pub max_ideas: u32,
    /// Files with a longer idea are rejected. Default 256 KiB.
    pub max_idea_bytes: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: true,
            events: true,
            settle: DEFAULT_SETTLE,
            rescan: DEFAULT_RESCAN,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_ideas: DEFAULT_MAX_IDEAS,
            max_idea_bytes: DEFAULT_MAX_IDEA_BYTES,
        }
    }
}

pub(super) fn parse(s: &mut Section<'_>) -> InboxConfig {
    let d = InboxConfig::default();
    InboxConfig {
        enabled: s.boolean("enabled").or(d.enabled),
        events: s.boolean("events").or(d.events),
        settle: s.duration("settle").or(d.settle),
        rescan: s.nonzero_duration("rescan").or(d.rescan),
        max_file_bytes: s.amount("max_file_bytes", d.max_file_bytes),
        max_ideas: s.count("max_ideas", i64::from(u32::MAX), d.max_ideas),
        max_idea_bytes: s.amount("max_idea_bytes", d.max_idea_bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{STAGE, check_errors, config};

    #[test]
    fn inbox_table() {
        let c = config(&format!(
            "[inbox]\nevents = false\nsettle = \"200ms\"\nrescan = \"5s\"\nmax_ideas = 3\n{STAGE}"
        ));
        assert_eq!(
            c.inbox,
            InboxConfig {
                events: false,
                settle: Duration::from_millis(200),
                rescan: Duration::from_secs(5),
                max_ideas: 3,
                ..InboxConfig::default()
            }
        );
        assert_eq!(config(STAGE).inbox, InboxConfig::default());
        check_errors(
            &format!(
                "[inbox]\nrescan = \"0s\"\nmax_file_bytes = 0\nenabled = \"yes\"\nwatch = 1\n{STAGE}"
            ),
            &[
                "2:10: [inbox]: `rescan` must be greater than 0s",
                "3:18: [inbox]: `max_file_bytes` must be an integer >= 1, found 0",
                "4:11: [inbox]: `enabled` must be true or false, found string",
                "5:1: unknown key `watch` in [inbox]; expected one of: enabled, events, settle, \
                 rescan, max_file_bytes, max_ideas, max_idea_bytes",
            ],
        );
    }
}
