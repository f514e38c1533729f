//! What every section's parser shares: [`Section`], one table being read with
//! how messages name it, its typed getters, and [`Problems`], every problem
//! of the file located by line and column.
//!
//! A section is built on `toml-span`'s [`TableHelper`]: reading a key takes it
//! out of the table, so the keys left at the end are the unknown ones, and
//! the helper lists the keys that were read, in the order they were read
//! (each section reads its keys in the order the documentation shows them,
//! which is the order an unknown key's message lists them). The helper also
//! collects the section's errors and reports a missing required key at the
//! table. The typed getters are ours: the helper's `Deserialize` errors do
//! not name the key, and every message here says which key and which table.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_span::de_helpers::TableHelper;
use toml_span::value::{Table, Value, ValueInner};
use toml_span::{DeserError, Deserialize, Error, ErrorKind, Span, Spanned};

use crate::config::{ConfigError, ConfigErrors};
use crate::duration::{format_duration, parse_duration};
use crate::size::{format_size, parse_size};

/// Problems found so far, by byte offset; put in file order at the end.
#[derive(Default)]
pub(super) struct Problems(Vec<(usize, String)>);

impl Problems {
    pub(super) fn add(&mut self, span: Span, message: String) {
        self.0.push((span.start, message));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every problem `section` found, its unknown keys included.
    pub(super) fn absorb(&mut self, section: Section<'_>) {
        for (span, message) in section.finish() {
            self.add(span, message);
        }
    }

    pub(super) fn into_errors(mut self, text: &str, file: &Path) -> ConfigErrors {
        // Stable, so two problems at one place keep the order they were found in.
        self.0.sort_by_key(|(offset, _)| *offset);
        let errors = self
            .0
            .into_iter()
            .map(|(offset, message)| {
                let (line, column) = line_column(text, opening_quote(text, offset));
                ConfigError {
                    file: file.to_owned(),
                    line,
                    column,
                    message,
                }
            })
            .collect();
        ConfigErrors(errors)
    }
}

/// `toml-span` starts a string's span (value or quoted key) after its opening
/// quote; people expect an error to point at the quote itself, as compilers
/// do. Nothing but a string's content starts right after a quote, so moving
/// back over up to three of them (for `"""` and `'''`) is safe.
fn opening_quote(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    let Some(&quote) = offset.checked_sub(1).and_then(|i| bytes.get(i)) else {
        return offset;
    };
    if quote != b'"' && quote != b'\'' {
        return offset;
    }
    let mut start = offset - 1;
    while start > 0 && offset - start < 3 && bytes[start - 1] == quote {
        start -= 1;
    }
    start
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// What a lookup found. `Bad` means present but invalid, and already reported:
/// the caller must not report it again, nor run cross-checks on a default
/// that the user did not ask for. A required key's `Absent` is reported too.
pub(super) enum Got<T> {
    Absent,
    Bad,
    Ok(T, Span),
}

impl<T> Got<T> {
    pub(super) fn or(self, default: T) -> T {
        match self {
            Got::Ok(value, _) => value,
            Got::Absent | Got::Bad => default,
        }
    }

    /// The value if the user wrote a valid one.
    pub(super) fn ok(self) -> Option<T> {
        match self {
            Got::Ok(value, _) => Some(value),
            Got::Absent | Got::Bad => None,
        }
    }

    /// The value to cross-check, with its span when the user wrote it; None
    /// when it was invalid.
    pub(super) fn checkable(self, default: T) -> Option<(T, Option<Span>)> {
        match self {
            Got::Ok(value, span) => Some((value, Some(span))),
            Got::Absent => Some((default, None)),
            Got::Bad => None,
        }
    }
}

/// A value moved out of its table as it is, for [`TableHelper::required_s`],
/// which reports a missing key; the getters below judge its type.
struct Raw<'de>(Value<'de>);

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize(value: &mut Value<'de>) -> Result<Self, DeserError> {
        Ok(Raw(Value::with_span(value.take(), value.span)))
    }
}

/// A table being read, with how messages name it. Its problems are returned
/// by [`Section::finish`] (through [`Problems::absorb`] or
/// [`Section::absorb`]), never lost: a section that is dropped unfinished
/// reports nothing, so every parser hands its section back to its caller.
pub(super) struct Section<'de> {
    helper: TableHelper<'de>,
    /// Where a missing key is reported.
    pub(super) span: Span,
    /// `[engine]`, `[[stages]] #2 ("qa")`; empty for the top level.
    pub(super) label: String,
    /// Put before key names in messages: "gate." for a stage's gate.
    prefix: &'static str,
}

impl<'de> Section<'de> {
    pub(super) fn new(table: Table<'de>, span: Span, label: String) -> Self {
        Section {
            helper: TableHelper::from((table, span)),
            span,
            label,
            prefix: "",
        }
    }

    /// The whole document.
    pub(super) fn top(mut document: Value<'de>) -> Self {
        let span = document.span;
        let table = match document.take() {
            ValueInner::Table(table) => table,
            // toml-span's documents are tables; an empty one is as good.
            _ => Table::new(),
        };
        Section::new(table, span, String::new())
    }

    /// An absent optional table: everything in it takes its default.
    pub(super) fn empty(label: &str) -> Self {
        Section::new(Table::new(), Span::default(), label.to_owned())
    }

    /// The same table, its keys named `<prefix><key>` in messages.
    pub(super) fn with_prefix(mut self, prefix: &'static str) -> Self {
        self.prefix = prefix;
        self
    }

    pub(super) fn say(&self, text: impl Display) -> String {
        if self.label.is_empty() {
            text.to_string()
        } else {
            format!("{}: {text}", self.label)
        }
    }

    fn key(&self, key: &str) -> String {
        format!("`{}{key}`", self.prefix)
    }

    /// A problem worded by the caller.
    pub(super) fn report(&mut self, span: Span, message: String) {
        self.helper.errors.push(Error {
            kind: ErrorKind::Custom(message.into()),
            span,
            line_info: None,
        });
    }

    pub(super) fn wrong_type(
        &mut self,
        key: &str,
        wanted: &str,
        found: &ValueInner<'_>,
        span: Span,
    ) {
        let message = self.say(format!(
            "{} must be {wanted}, found {}",
            self.key(key),
            found.type_str()
        ));
        self.report(span, message);
    }

    pub(super) fn invalid(&mut self, key: &str, span: Span, why: impl Display) {
        let message = self.say(format!("{} {why}", self.key(key)));
        self.report(span, message);
    }

    /// A key that must be present, reported at the table.
    pub(super) fn missing(&mut self, key: &'static str) {
        self.helper.errors.push(Error {
            kind: ErrorKind::MissingField(key),
            span: self.span,
            line_info: None,
        });
    }

    /// How many problems this section has found so far.
    pub(super) fn problems_found(&self) -> usize {
        self.helper.errors.len()
    }

    /// Drops the problems found since [`Self::problems_found`] said `count`.
    pub(super) fn drop_problems_since(&mut self, count: usize) {
        self.helper.errors.truncate(count);
    }

    /// Every problem of `child`, a table inside this one.
    pub(super) fn absorb(&mut self, child: Section<'de>) {
        for (span, message) in child.finish() {
            self.report(span, message);
        }
    }

    /// Ends the section: every key not read is unknown. Returns every
    /// problem found in it.
    pub(super) fn finish(self) -> Vec<(Span, String)> {
        let Section {
            helper,
            label,
            prefix,
            ..
        } = self;
        let say = |text: String| {
            if label.is_empty() {
                text
            } else {
                format!("{label}: {text}")
            }
        };
        let Err(DeserError { errors }) = helper.finalize(None) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for error in errors {
            match error.kind {
                ErrorKind::Custom(message) => out.push((error.span, message.into_owned())),
                ErrorKind::MissingField(key) => out.push((
                    error.span,
                    say(format!("missing required key `{prefix}{key}`")),
                )),
                ErrorKind::UnexpectedKeys { keys, expected } => {
                    let place = if label.is_empty() {
                        "at the top level".to_owned()
                    } else {
                        format!("in {label}")
                    };
                    // Kinds that share keys (`command` and `agent`) ask for
                    // them each: name each once, where first asked.
                    let mut seen = std::collections::HashSet::new();
                    let expected = expected
                        .iter()
                        .filter(|k| seen.insert(*k))
                        .map(|k| format!("{prefix}{k}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    for (key, span) in keys {
                        out.push((
                            span,
                            format!(
                                "unknown key `{prefix}{key}` {place}; expected one of: {expected}"
                            ),
                        ));
                    }
                }
                // The getters above produce no other kind; should a later
                // toml-span add one, it is still said, in its own words.
                _ => out.push((error.span, say(error.to_string()))),
            }
        }
        out
    }

    /// `key`'s value, if present. Reading a key is what makes it known.
    pub(super) fn take(&mut self, key: &'static str) -> Option<Value<'de>> {
        self.helper.take(key).map(|(_, value)| value)
    }

    /// `key`'s value; its absence is reported.
    fn required(&mut self, key: &'static str) -> Option<Value<'de>> {
        self.helper
            .required_s::<Raw<'de>>(key)
            .ok()
            .map(|Spanned { value: Raw(v), .. }| v)
    }

    /// Every key and value of a table whose keys are names (`[providers]`,
    /// `[prices]`): none of them is unknown.
    pub(super) fn entries(&mut self) -> Table<'de> {
        std::mem::take(&mut self.helper.table)
    }

    /// `key` as a section of its own, if present and a table.
    pub(super) fn section(&mut self, key: &'static str, label: &str) -> Option<Section<'de>> {
        let mut value = self.take(key)?;
        match value.take() {
            ValueInner::Table(table) => Some(Section::new(table, value.span, label.to_owned())),
            other => {
                self.wrong_type(key, &format!("a table ({label})"), &other, value.span);
                None
            }
        }
    }

    /// `key` as an array; `wanted` says what it must be otherwise.
    pub(super) fn array(&mut self, key: &'static str, wanted: &str) -> Got<Vec<Value<'de>>> {
        let Some(mut value) = self.take(key) else {
            return Got::Absent;
        };
        match value.take() {
            ValueInner::Array(items) => Got::Ok(items, value.span),
            other => {
                self.wrong_type(key, wanted, &other, value.span);
                Got::Bad
            }
        }
    }

    fn text(&mut self, key: &str, value: Option<Value<'de>>) -> Got<Cow<'de, str>> {
        let Some(mut value) = value else {
            return Got::Absent;
        };
        match value.take() {
            ValueInner::String(s) => Got::Ok(s, value.span),
            other => {
                self.wrong_type(key, "a string", &other, value.span);
                Got::Bad
            }
        }
    }

    pub(super) fn string(&mut self, key: &'static str) -> Got<Cow<'de, str>> {
        let value = self.take(key);
        self.text(key, value)
    }

    /// A string that must be present: `Absent` is already reported.
    pub(super) fn required_string(&mut self, key: &'static str) -> Got<Cow<'de, str>> {
        let value = self.required(key);
        self.text(key, value)
    }

    pub(super) fn duration(&mut self, key: &'static str) -> Got<Duration> {
        let Some(mut value) = self.take(key) else {
            return Got::Absent;
        };
        let text = match value.take() {
            ValueInner::String(text) => text,
            other => {
                self.wrong_type(key, "a duration string like \"15s\"", &other, value.span);
                return Got::Bad;
            }
        };
        match parse_duration(&text) {
            Ok(duration) => Got::Ok(duration, value.span),
            Err(why) => {
                let message = self.say(format!("{}: {why}", self.key(key)));
                self.report(value.span, message);
                Got::Bad
            }
        }
    }

    /// A duration greater than zero, or "off" (`Ok(None, _)`).
    pub(super) fn nonzero_duration_or_off(&mut self, key: &'static str) -> Got<Option<Duration>> {
        let Some(mut value) = self.take(key) else {
            return Got::Absent;
        };
        let span = value.span;
        let text = match value.take() {
            ValueInner::String(text) => text,
            other => {
                self.wrong_type(
                    key,
                    "a duration string like \"5m\", or \"off\"",
                    &other,
                    span,
                );
                return Got::Bad;
            }
        };
        if text == "off" {
            return Got::Ok(None, span);
        }
        match parse_duration(&text) {
            Ok(duration) if duration.is_zero() => {
                self.invalid(key, span, "must be greater than 0s (or \"off\")");
                Got::Bad
            }
            Ok(duration) => Got::Ok(Some(duration), span),
            Err(why) => {
                let message = self.say(format!("{}: {why}", self.key(key)));
                self.report(span, message);
                Got::Bad
            }
        }
    }

    /// A duration for which zero makes no sense (a timeout, a poll interval).
    pub(super) fn nonzero_duration(&mut self, key: &'static str) -> Got<Duration> {
        match self.duration(key) {
            Got::Ok(duration, span) if duration.is_zero() => {
                self.invalid(key, span, "must be greater than 0s");
                Got::Bad
            }
            other => other,
        }
    }

    pub(super) fn integer(&mut self, key: &'static str, min: i64, max: i64) -> Got<i64> {
        let Some(mut value) = self.take(key) else {
            return Got::Absent;
        };
        let n = match value.take() {
            ValueInner::Integer(n) => n,
            other => {
                self.wrong_type(key, "an integer", &other, value.span);
                return Got::Bad;
            }
        };
        if n < min || n > max {
            // A limit set only by the type (u32::MAX) is noise to a reader
            // who wrote 0; it is worth saying only to one who went past it.
            let range = if max < i64::from(u32::MAX) {
                format!("from {min} to {max}")
            } else if n < min {
                format!(">= {min}")
            } else {
                format!("<= {max}")
            };
            self.invalid(
                key,
                value.span,
                format_args!("must be an integer {range}, found {n}"),
            );
            return Got::Bad;
        }
        Got::Ok(n, value.span)
    }

    /// A positive integer up to `u32::MAX` (and `max`), or `default`.
    pub(super) fn count(&mut self, key: &'static str, max: i64, default: u32) -> u32 {
        // The range check keeps n within 1..=u32::MAX, so the fallback never applies.
        let n = self.integer(key, 1, max.min(i64::from(u32::MAX)));
        n.or(i64::from(default)).try_into().unwrap_or(default)
    }

    /// A positive number of bytes, items or tokens, or `default`.
    pub(super) fn amount(&mut self, key: &'static str, default: u64) -> u64 {
        // The range check keeps n positive, so the fallback never applies.
        let n = self.integer(key, 1, i64::MAX).ok();
        n.and_then(|n| u64::try_from(n).ok()).unwrap_or(default)
    }

    /// A number (integer or float) of at least `min`.
    pub(super) fn number(&mut self, key: &'static str, min: f64) -> Got<f64> {
        let value = self.take(key);
        self.number_value(key, min, value)
    }

    /// A number that must be present: `Absent` is already reported.
    pub(super) fn required_number(&mut self, key: &'static str, min: f64) -> Got<f64> {
        let value = self.required(key);
        self.number_value(key, min, value)
    }

    fn number_value(&mut self, key: &str, min: f64, value: Option<Value<'de>>) -> Got<f64> {
        let Some(mut value) = value else {
            return Got::Absent;
        };
        let n = match value.take() {
            ValueInner::Float(f) => f,
            ValueInner::Integer(i) => i as f64,
            other => {
                self.wrong_type(key, "a number", &other, value.span);
                return Got::Bad;
            }
        };
        if !n.is_finite() || n < min {
            self.invalid(
                key,
                value.span,
                format_args!("must be a number >= {min}, found {n}"),
            );
            return Got::Bad;
        }
        Got::Ok(n, value.span)
    }

    pub(super) fn boolean(&mut self, key: &'static str) -> Got<bool> {
        let Some(mut value) = self.take(key) else {
            return Got::Absent;
        };
        match value.take() {
            ValueInner::Boolean(b) => Got::Ok(b, value.span),
            other => {
                self.wrong_type(key, "true or false", &other, value.span);
                Got::Bad
            }
        }
    }

    /// A table of string values, such as `headers`.
    pub(super) fn string_map(&mut self, key: &'static str) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let Some(mut value) = self.take(key) else {
            return map;
        };
        let table = match value.take() {
            ValueInner::Table(table) => table,
            other => {
                self.wrong_type(key, "a table like { NAME = \"value\" }", &other, value.span);
                return map;
            }
        };
        for (k, mut v) in table {
            let key = format!("{key}.{}", k.name);
            match v.take() {
                ValueInner::String(text) if !text.contains(['\0', '\n', '\r']) => {
                    map.insert(k.name.into_owned(), text.into_owned());
                }
                ValueInner::String(_) => {
                    self.invalid(&key, v.span, "contains a control character");
                }
                other => self.wrong_type(&key, "a string", &other, v.span),
            }
        }
        map
    }

    /// A byte size (`"2GiB"` or an integer of bytes) of at least `min`.
    pub(super) fn size(&mut self, key: &'static str, min: u64) -> Got<u64> {
        let Some(mut value) = self.take(key) else {
            return Got::Absent;
        };
        let parsed = match value.take() {
            ValueInner::String(text) => parse_size(&text),
            ValueInner::Integer(n) => u64::try_from(n).map_err(|_| format!("{n} is negative")),
            other => {
                self.wrong_type(key, "a size like \"2GiB\"", &other, value.span);
                return Got::Bad;
            }
        };
        match parsed {
            Ok(n) if n >= min => Got::Ok(n, value.span),
            Ok(n) => {
                self.invalid(
                    key,
                    value.span,
                    format_args!(
                        "must be at least {}, found {}",
                        format_size(min),
                        format_size(n)
                    ),
                );
                Got::Bad
            }
            Err(why) => {
                self.invalid(key, value.span, why);
                Got::Bad
            }
        }
    }

    /// An array of strings, each with where it was written.
    pub(super) fn string_list(&mut self, key: &'static str) -> Vec<(Cow<'de, str>, Span)> {
        let items = match self.array(key, "an array of strings") {
            Got::Ok(items, _) => items,
            Got::Absent | Got::Bad => return Vec::new(),
        };
        let mut out = Vec::new();
        for (i, mut item) in items.into_iter().enumerate() {
            match item.take() {
                ValueInner::String(text) => out.push((text, item.span)),
                other => self.wrong_type(&format!("{key}[{i}]"), "a string", &other, item.span),
            }
        }
        out
    }

    /// A path resolved against `root`, or `default` (already absolute).
    pub(super) fn path(&mut self, key: &'static str, root: &Path, default: PathBuf) -> PathBuf {
        match self.string(key) {
            Got::Ok(path, span) if path.is_empty() => {
                self.invalid(key, span, "must not be empty");
                default
            }
            Got::Ok(path, _) => resolve(root, Path::new(path.as_ref())),
            Got::Absent | Got::Bad => default,
        }
    }
}

/// A duration for a message, saying when it is a default the user did not write.
pub(super) fn shown(duration: Duration, written_at: Option<Span>) -> String {
    match written_at {
        Some(_) => format_duration(duration),
        None => format!("default {}", format_duration(duration)),
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe in file names, URLs and log lines alike.
/// Stage, provider and alert target names all follow it.
pub(super) fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-';
    match bytes.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 62
                && rest.iter().all(allowed)
        }
        None => false,
    }
}

/// Whether `url` is one an HTTP client can reach.
pub(super) fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// `path` against `root`, with `.` and `..` removed lexically: the folders
/// need not exist yet, and following symlinks is the OS's business later.
pub(super) fn resolve(root: &Path, path: &Path) -> PathBuf {
    normalize(&root.join(path))
}

pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::ParentDir | Component::CurDir) | None => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_columns() {
        let check = |text: &str, offset: usize, expected: (usize, usize)| {
            assert_eq!(line_column(text, offset), expected, "{text:?} @ {offset}");
        };
        check("", 0, (1, 1));
        check("abc", 2, (1, 3));
        check("a\nb", 2, (2, 1));
        check("a\r\nb", 3, (2, 1));
        check("éé", 2, (1, 2));
        check("éé", 3, (1, 2));
        check("ab", 99, (1, 3));
    }
}
