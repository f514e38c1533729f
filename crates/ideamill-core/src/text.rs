//! Small text helpers shared by the CLI and the dashboard.

/// The first line of `s`, at most `max` characters, with `…` where text was
/// cut or more lines follow.
pub fn first_line(s: &str, max: usize) -> String {
    let line = s.trim().lines().next().unwrap_or("");
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else if s.trim().lines().nth(1).is_some() {
        format!("{line} …")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn cuts_long_lines_and_marks_more_lines() {
        assert_eq!(first_line("  short  ", 10), "short");
        assert_eq!(first_line("abcdefghij", 5), "abcd…");
        assert_eq!(first_line("one\ntwo", 10), "one …");
        assert_eq!(first_line("", 10), "");
    }
}
