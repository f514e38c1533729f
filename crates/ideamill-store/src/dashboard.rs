//! What the dashboard reads, shared by both backends: text search terms
//! (what a person types into the items search, turned into the words both
//! backends match as word prefixes: SQLite's FTS5 and PostgreSQL's `simple`
//! text search agree on runs of letters and digits, compared without case),
//! the time buckets of the charts, and the QA lift of each gate.

use ideamill_core::Millis;

use crate::{ActivityBucket, GateOutcome, GateTally};

/// Charts never have more buckets than this.
pub(crate) const MAX_BUCKETS: i64 = 2000;

/// At most this many words count; the rest are ignored.
const MAX_TERMS: usize = 8;
/// Longer words are cut to this many characters (a prefix still matches).
const MAX_TERM_CHARS: usize = 64;

/// The words of `text`, lowercased, in order, without repeats. Empty when it
/// holds no letter or digit: such a search matches nothing.
pub fn search_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let term: String = word.to_lowercase().chars().take(MAX_TERM_CHARS).collect();
        if !terms.contains(&term) {
            terms.push(term);
        }
        if terms.len() == MAX_TERMS {
            break;
        }
    }
    terms
}

/// An FTS5 MATCH expression: every term as a quoted prefix. Terms hold only
/// letters and digits, so quoting them is all the escaping needed.
pub(crate) fn fts5_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{t}\"*"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A PostgreSQL `to_tsquery('simple', …)` expression: every term as a prefix.
pub(crate) fn tsquery(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("{t}:*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// Counts per bucket index, from the backends' `GROUP BY`: (bucket,
/// attempts, failed attempts, items done, items failed).
pub(crate) type BucketCounts = (i64, u64, u64, u64, u64);

/// Every bucket from `since` to `now`, oldest first, with the counts found
/// (rows of several queries may name the same bucket: they add up).
pub(crate) fn fill_buckets(
    since: Millis,
    bucket: Millis,
    now: Millis,
    rows: &[BucketCounts],
) -> Vec<ActivityBucket> {
    let bucket = bucket.max(1);
    let n = ((now - since).max(0) / bucket + 1).min(MAX_BUCKETS);
    let mut out: Vec<ActivityBucket> = (0..n)
        .map(|i| ActivityBucket {
            start: since + i * bucket,
            ..ActivityBucket::default()
        })
        .collect();
    for &(b, attempts, failed, done, items_failed) in rows {
        if let Some(slot) = usize::try_from(b).ok().and_then(|b| out.get_mut(b)) {
            slot.attempts += attempts;
            slot.failed_attempts += failed;
            slot.items_done += done;
            slot.items_failed += items_failed;
        }
    }
    out
}

/// Rounds are told apart up to this one; later ones count together
/// ("4+"), so that the metrics' label set stays bounded.
pub const LIFT_ROUNDS: usize = 4;

/// The label of a round as the QA lift shows it: "1", "2", "3" or "4+".
pub fn round_label(round: u32) -> String {
    let last = LIFT_ROUNDS as u32;
    if round >= last {
        format!("{last}+")
    } else {
        round.max(1).to_string()
    }
}

/// What one gate made of the items one model worked on: the QA lift.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateLift {
    /// The gate stage's name.
    pub stage: String,
    /// `None`: no stage called a model before the gate judged.
    pub model: Option<String>,
    /// Items passed at round 1, 2, 3 and 4 or later.
    pub passed: [u64; LIFT_ROUNDS],
    /// Items the gate rejected in their last round.
    pub failed: u64,
    /// Items whose loop ended early because a round changed nothing.
    pub no_progress: u64,
}

impl GateLift {
    /// Items that passed at round 1.
    pub fn passed_first(&self) -> u64 {
        self.passed[0]
    }

    /// Passed at round 2 or later.
    pub fn passed_later(&self) -> u64 {
        self.passed[1..].iter().sum()
    }

    /// Items whose loop at this gate has ended, passed or not.
    pub fn judged(&self) -> u64 {
        self.passed.iter().sum::<u64>() + self.failed + self.no_progress
    }

    /// The share of judged items that passed at round 1.
    pub fn first_pass_rate(&self) -> Option<f64> {
        let judged = self.judged();
        (judged > 0).then(|| self.passed_first() as f64 / judged as f64)
    }

    /// The share of judged items that passed by their last round.
    pub fn final_pass_rate(&self) -> Option<f64> {
        let judged = self.judged();
        (judged > 0).then(|| (self.passed_first() + self.passed_later()) as f64 / judged as f64)
    }

    /// The pass rate after the last round over the pass rate at round 1
    /// (both of the same judged items, so: all passes over first-round
    /// passes). `None` when nothing passed at round 1.
    pub fn lift(&self) -> Option<f64> {
        let first = self.passed_first();
        (first > 0).then(|| (first + self.passed_later()) as f64 / first as f64)
    }
}

/// The QA lift per gate and model, in the tallies' order (gate, then model).
pub fn gate_lift(tallies: &[GateTally]) -> Vec<GateLift> {
    let mut out: Vec<GateLift> = Vec::new();
    for t in tallies {
        let at = match out
            .iter()
            .position(|l| l.stage == t.stage && l.model == t.model)
        {
            Some(i) => i,
            None => {
                out.push(GateLift {
                    stage: t.stage.clone(),
                    model: t.model.clone(),
                    ..GateLift::default()
                });
                out.len() - 1
            }
        };
        let lift = &mut out[at];
        match t.outcome {
            GateOutcome::Passed => {
                let i = (t.round.max(1) as usize).min(LIFT_ROUNDS) - 1;
                lift.passed[i] += t.items;
            }
            GateOutcome::Failed => lift.failed += t.items,
            GateOutcome::NoProgress => lift.no_progress += t.items,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_window() {
        let b = fill_buckets(
            1000,
            100,
            1250,
            &[
                (0, 2, 1, 0, 0),
                (2, 1, 0, 1, 0),
                (2, 0, 0, 0, 1),
                (9, 5, 5, 5, 5),
            ],
        );
        let starts: Vec<Millis> = b.iter().map(|b| b.start).collect();
        assert_eq!(starts, [1000, 1100, 1200]);
        assert_eq!((b[0].attempts, b[0].failed_attempts), (2, 1));
        assert_eq!(
            (b[2].attempts, b[2].items_done, b[2].items_failed),
            (1, 1, 1)
        );
        assert_eq!(fill_buckets(0, 1, 1_000_000, &[]).len() as i64, MAX_BUCKETS);
    }

    #[test]
    fn lift_per_gate_and_model() {
        let t = |stage: &str, model: Option<&str>, round, outcome, items| GateTally {
            stage: stage.into(),
            model: model.map(Into::into),
            round,
            outcome,
            items,
        };
        use GateOutcome::*;
        let lifts = gate_lift(&[
            t("qa", Some("m1"), 1, Passed, 2),
            t("qa", Some("m1"), 2, Passed, 1),
            t("qa", Some("m1"), 3, Failed, 1),
            t("qa", Some("m1"), 5, Passed, 1),
            t("qa", Some("m1"), 4, Passed, 1),
            t("qa", None, 2, NoProgress, 1),
            t("review", Some("m1"), 2, Passed, 3),
        ]);
        assert_eq!(lifts.len(), 3);
        let m1 = &lifts[0];
        assert_eq!(m1.passed, [2, 1, 0, 2]);
        assert_eq!((m1.passed_later(), m1.failed, m1.judged()), (3, 1, 6));
        assert_eq!(m1.first_pass_rate(), Some(2.0 / 6.0));
        assert_eq!(m1.final_pass_rate(), Some(5.0 / 6.0));
        assert_eq!(m1.lift(), Some(2.5));
        let none = &lifts[1];
        assert_eq!((none.model.as_deref(), none.no_progress), (None, 1));
        assert_eq!((none.lift(), none.final_pass_rate()), (None, Some(0.0)));
        assert_eq!(lifts[2].lift(), None, "nothing passed at round 1");
        assert_eq!(GateLift::default().first_pass_rate(), None);
        let labels: Vec<String> = [0, 1, 2, 3, 4, 9].map(round_label).into();
        assert_eq!(labels, ["1", "1", "2", "3", "4+", "4+"]);
    }

    fn check(text: &str, expected: &[&str]) {
        assert_eq!(search_terms(text), expected, "{text:?}");
    }

    #[test]
    fn terms() {
        check(
            "a CLI that converts CSV to JSON",
            &["a", "cli", "that", "converts", "csv", "to", "json"],
        );
        check("  csv→json, CSV!  ", &["csv", "json"]);
        check("\"quoted\" OR NOT *", &["quoted", "or", "not"]);
        check("Ärger über Straße", &["ärger", "über", "straße"]);
        check("!!! ---", &[]);
        check(
            "a b c d e f g h i j",
            &["a", "b", "c", "d", "e", "f", "g", "h"],
        );
        assert_eq!(search_terms(&"x".repeat(100))[0].len(), 64);
    }

    #[test]
    fn queries() {
        let t = search_terms("CSV json");
        assert_eq!(fts5_query(&t), "\"csv\"* \"json\"*");
        assert_eq!(tsquery(&t), "csv:* & json:*");
    }
}
