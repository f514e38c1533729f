//! What the dashboard reads, shared by both backends: text search terms
//! (what a person types into the items search, turned into the words both
//! backends match as word prefixes: SQLite's FTS5 and PostgreSQL's `simple`
//! text search agree on runs of letters and digits, compared without case),
//! and the time buckets of the charts.

use ideamill_core::Millis;

use crate::ActivityBucket;

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
