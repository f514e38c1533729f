//! Human-readable durations ("500ms", "15s", "1h30m") as written in the
//! config file and shown by the CLI.

use std::time::Duration;

use crate::model::Millis;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Units from largest to smallest; a compound duration must use them in this
/// order, so "30m1h" and "1m1m" (almost certainly typos) are rejected.
const UNITS: &[(&str, u128)] = &[
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
];

const UNIT_HINT: &str = "(use ms, s, m, h or d)";

/// Parses "500ms", "15s", "5m", "2h", "1d", compounds such as "1h30m" and
/// decimals such as "1.5s" (so that [`format_duration`]'s output reads back).
/// A bare number is an error: "15" could mean seconds or milliseconds, and
/// guessing wrong by a factor of 1000 is worse than asking.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let fail = |why: String| format!("invalid duration \"{s}\": {why}");
    if s.is_empty() {
        return Err(fail(format!("it is empty; write e.g. \"15s\" {UNIT_HINT}")));
    }
    if s.starts_with('-') {
        return Err(fail("negative durations are not allowed".to_owned()));
    }
    if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(fail(format!("missing unit (did you mean \"{s}s\"?)")));
    }

    let mut total: u128 = 0;
    let mut previous_unit: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        // Any letter, not just ASCII, so that "5µs" is named as an unknown unit.
        let unit_len = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        rest = after;

        if number.is_empty() {
            return Err(fail(match (unit.is_empty(), after.chars().next()) {
                (false, _) => format!("expected a number before \"{unit}\""),
                (true, Some(c)) => format!("unexpected character \"{c}\""),
                (true, None) => "unexpected end".to_owned(),
            }));
        }
        if unit.is_empty() {
            return Err(fail(format!("missing unit after \"{number}\" {UNIT_HINT}")));
        }
        let Some(rank) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(fail(format!("unknown unit \"{unit}\" {UNIT_HINT}")));
        };
        if previous_unit.is_some_and(|previous| rank <= previous) {
            return Err(fail(
                "units must go from largest to smallest, each at most once, like \"1h30m\""
                    .to_owned(),
            ));
        }
        previous_unit = Some(rank);
        let nanos = number_to_nanos(number, UNITS[rank].1).map_err(&fail)?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| fail("too large".to_owned()))?;
    }

    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| fail("too large".to_owned()))?;
    // The remainder is below 10^9 and so always fits.
    let subsec = (total % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, subsec))
}

/// `number` ("90", "1.5") times `unit` nanoseconds. The fraction is truncated
/// to whole nanoseconds.
fn number_to_nanos(number: &str, unit: u128) -> Result<u128, String> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return Err(format!("\"{number}\" is not a number"));
    }
    let too_large = || "too large".to_owned();
    // Digits that overflow u128 are far beyond any Duration anyway.
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut nanos = whole.checked_mul(unit).ok_or_else(too_large)?;
    if let Some(fraction) = fraction {
        if fraction.len() > 9 {
            return Err(format!("\"{number}\" has more than 9 decimal places"));
        }
        let scale = 10u128.pow(fraction.len() as u32);
        let fraction: u128 = fraction.parse().map_err(|_| too_large())?;
        // fraction < 10^9 and unit <= 8.64 * 10^13, so this cannot overflow.
        nanos = nanos
            .checked_add(fraction * unit / scale)
            .ok_or_else(too_large)?;
    }
    Ok(nanos)
}

/// The shortest readable form: "0s", "250ms", "1.5s", "15s", "1m30s", "2h",
/// "1h5m", "1d2h". Sub-second parts are shown only under 10 s, where they
/// still matter to a reader; the output reads back with [`parse_duration`]
/// except for the "<1ms" of a nonzero duration shorter than a millisecond.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d < Duration::from_millis(1) {
        return "<1ms".to_owned();
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    if secs < 10 {
        // Truncated, not rounded: rounding 1.96s up would print "2.0s".
        let tenths = d.subsec_millis() / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let mut out = String::new();
    for (value, unit) in parts {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

/// `d` in whole milliseconds, the unit of every timestamp ([`Millis`]): the
/// one conversion from a config's durations to the numbers that are added
/// to and compared with timestamps. Durations stay [`Duration`] until then.
/// One too long for it (some 292 million years) saturates instead of
/// wrapping around to a negative number.
pub fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parse(input: &str, expected: Result<Duration, &str>) {
        let actual = parse_duration(input);
        assert_eq!(actual, expected.map_err(str::to_owned), "input: {input:?}");
    }

    fn check_format(input: Duration, expected: &str) {
        assert_eq!(format_duration(input), expected, "input: {input:?}");
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn parse_accepts() {
        check_parse("500ms", Ok(MS(500)));
        check_parse("15s", Ok(S(15)));
        check_parse("5m", Ok(S(300)));
        check_parse("2h", Ok(S(7_200)));
        check_parse("1d", Ok(S(86_400)));
        check_parse("30d", Ok(S(30 * 86_400)));
        check_parse("0s", Ok(S(0)));
        check_parse("1h30m", Ok(S(5_400)));
        check_parse("1m30s", Ok(S(90)));
        check_parse("1d2h3m4s5ms", Ok(Duration::new(93_784, 5_000_000)));
        check_parse("  15s\n", Ok(S(15)));
        check_parse("1h 30m", Ok(S(5_400)));
        check_parse("1.5s", Ok(MS(1_500)));
        check_parse("0.5ms", Ok(Duration::from_micros(500)));
        check_parse("1.25h", Ok(S(4_500)));
        check_parse("007s", Ok(S(7)));
    }

    #[test]
    fn parse_rejects() {
        check_parse(
            "",
            Err(r#"invalid duration "": it is empty; write e.g. "15s" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "   ",
            Err(r#"invalid duration "": it is empty; write e.g. "15s" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "5x",
            Err(r#"invalid duration "5x": unknown unit "x" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "5sec",
            Err(r#"invalid duration "5sec": unknown unit "sec" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "5µs",
            Err(r#"invalid duration "5µs": unknown unit "µs" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "15",
            Err(r#"invalid duration "15": missing unit (did you mean "15s"?)"#),
        );
        check_parse(
            "-5s",
            Err(r#"invalid duration "-5s": negative durations are not allowed"#),
        );
        check_parse(
            "1h30",
            Err(r#"invalid duration "1h30": missing unit after "30" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "5 s",
            Err(r#"invalid duration "5 s": missing unit after "5" (use ms, s, m, h or d)"#),
        );
        check_parse(
            "s",
            Err(r#"invalid duration "s": expected a number before "s""#),
        );
        check_parse(
            "+5s",
            Err(r#"invalid duration "+5s": unexpected character "+""#),
        );
        check_parse(
            "1..5s",
            Err(r#"invalid duration "1..5s": "1..5" is not a number"#),
        );
        check_parse(
            ".5s",
            Err(r#"invalid duration ".5s": ".5" is not a number"#),
        );
        check_parse(
            "5.s",
            Err(r#"invalid duration "5.s": "5." is not a number"#),
        );
        check_parse(
            "0.1234567891s",
            Err(
                r#"invalid duration "0.1234567891s": "0.1234567891" has more than 9 decimal places"#,
            ),
        );
        check_parse(
            "30m1h",
            Err(
                r#"invalid duration "30m1h": units must go from largest to smallest, each at most once, like "1h30m""#,
            ),
        );
        check_parse(
            "1m1m",
            Err(
                r#"invalid duration "1m1m": units must go from largest to smallest, each at most once, like "1h30m""#,
            ),
        );
        check_parse(
            "213503982334602d",
            Err(r#"invalid duration "213503982334602d": too large"#),
        );
        check_parse(
            "99999999999999999999999999999999999999999s",
            Err(r#"invalid duration "99999999999999999999999999999999999999999s": too large"#),
        );
    }

    #[test]
    fn format() {
        check_format(S(0), "0s");
        check_format(Duration::from_nanos(1), "<1ms");
        check_format(MS(1), "1ms");
        check_format(MS(250), "250ms");
        check_format(MS(999), "999ms");
        check_format(S(1), "1s");
        check_format(MS(1_500), "1.5s");
        check_format(MS(1_960), "1.9s");
        check_format(MS(2_040), "2s");
        check_format(MS(9_999), "9.9s");
        check_format(S(15), "15s");
        check_format(MS(15_700), "15s");
        check_format(S(60), "1m");
        check_format(S(90), "1m30s");
        check_format(MS(90_500), "1m30s");
        check_format(S(7_200), "2h");
        check_format(S(3_900), "1h5m");
        check_format(S(3_605), "1h5s");
        check_format(S(93_784), "1d2h3m4s");
        check_format(S(30 * 86_400), "30d");
    }

    #[test]
    fn format_reads_back() {
        for d in [MS(250), MS(1_500), S(15), S(90), S(3_900), S(93_784)] {
            check_parse(&format_duration(d), Ok(d));
        }
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(1999)), 1);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), Millis::MAX);
    }
}
