//! Idea files: `.txt` (one idea per non-empty line), `.md` (the whole file
//! is one idea; its first heading is its title), `.json` (an object, or an
//! array of objects or strings) and `.jsonl` (one per line). Every problem
//! names the line and column where it is, and limits are checked as the
//! ideas are read, so a hostile file costs no more than its limits.

use std::path::Path;

use ideamill_store::NewItem;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The formats an idea file can have, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One idea per non-empty line.
    Text,
    /// The whole file is one idea; its first heading is its title.
    Markdown,
    /// An object, or an array of objects or strings.
    Json,
    /// One JSON object or string per non-empty line.
    JsonLines,
}

impl Format {
    /// What the inbox accepts, for messages.
    pub const EXTENSIONS: &'static str = ".txt, .md, .json or .jsonl";

    /// The format an extension names (case-insensitive), if any.
    pub fn from_extension(ext: &str) -> Option<Format> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "txt" | "text" => Format::Text,
            "md" | "markdown" => Format::Markdown,
            "json" => Format::Json,
            "jsonl" | "ndjson" => Format::JsonLines,
            _ => return None,
        })
    }

    /// The format `path`'s extension names, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        Format::from_extension(path.extension()?.to_str()?)
    }
}

/// What one file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A larger file is refused before it is read as text.
    pub max_file_bytes: u64,
    /// A file with more ideas is refused whole.
    pub max_ideas: usize,
    /// A file with a longer idea (its text, in bytes) is refused whole.
    pub max_idea_bytes: usize,
}

impl Limits {
    /// The inbox's limits, from `[inbox]`.
    pub fn from_config(inbox: &ideamill_core::config::InboxConfig) -> Limits {
        Limits {
            max_file_bytes: inbox.max_file_bytes,
            max_ideas: usize::try_from(inbox.max_ideas).unwrap_or(usize::MAX),
            max_idea_bytes: usize::try_from(inbox.max_idea_bytes).unwrap_or(usize::MAX),
        }
    }

    /// `ideamill add`: a person chose the file, so only an idea's length is
    /// bounded (ideas are prompts, not documents).
    pub fn for_add() -> Limits {
        Limits {
            max_file_bytes: u64::MAX,
            max_ideas: usize::MAX,
            max_idea_bytes: 256 * 1024,
        }
    }
}

/// A problem in an idea file, located. Lines and columns count from 1;
/// columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// From 1.
    pub line: usize,
    /// From 1, in characters.
    pub column: usize,
    /// What is wrong there, a lowercase fragment.
    pub message: String,
}

impl ParseError {
    fn at(text: &str, offset: usize, message: impl Into<String>) -> ParseError {
        let (line, column) = line_column(text, offset);
        ParseError {
            line,
            column,
            message: message.into(),
        }
    }

    fn start(message: impl Into<String>) -> ParseError {
        ParseError {
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

/// The ideas in a file's bytes. Never panics on any input.
pub fn parse_ideas(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<Vec<NewItem>, ParseError> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(ParseError::start(format!(
            "the file is {} bytes; the limit is {} bytes",
            bytes.len(),
            limits.max_file_bytes
        )));
    }
    let text = decode(bytes)?;
    let mut ideas = Ideas {
        text,
        limits,
        items: Vec::new(),
    };
    match format {
        Format::Text => {
            for (offset, line) in lines(text) {
                let idea = line.trim();
                if !idea.is_empty() {
                    ideas.push(offset, idea.to_string(), Map::new())?;
                }
            }
        }
        Format::Markdown => {
            let idea = text.trim();
            if !idea.is_empty() {
                let mut meta = Map::new();
                if let Some(title) = markdown_title(text) {
                    meta.insert("title".into(), Value::String(title));
                }
                ideas.push(text.len() - text.trim_start().len(), idea.to_string(), meta)?;
            }
        }
        Format::Json => parse_json(&mut ideas)?,
        Format::JsonLines => {
            for (offset, line) in lines(text) {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line).map_err(|e| {
                    // serde's column is within this line.
                    let (line_no, _) = line_column(text, offset);
                    ParseError {
                        line: line_no,
                        column: e.column().max(1),
                        message: json_message(&e),
                    }
                })?;
                ideas.push_json(offset, value, None)?;
            }
        }
    }
    if ideas.items.is_empty() {
        return Err(ParseError::start("no ideas in the file"));
    }
    Ok(ideas.items)
}

/// The ideas read so far, with the limits they must keep.
struct Ideas<'a> {
    text: &'a str,
    limits: &'a Limits,
    items: Vec<NewItem>,
}

impl Ideas<'_> {
    fn push(
        &mut self,
        offset: usize,
        text: String,
        metadata: Map<String, Value>,
    ) -> Result<(), ParseError> {
        if self.items.len() >= self.limits.max_ideas {
            return Err(ParseError::at(
                self.text,
                offset,
                format!(
                    "more than {} ideas in the file; the limit is {}",
                    self.limits.max_ideas, self.limits.max_ideas
                ),
            ));
        }
        if text.len() > self.limits.max_idea_bytes {
            return Err(ParseError::at(
                self.text,
                offset,
                format!(
                    "this idea is {} bytes long; the limit is {} bytes",
                    text.len(),
                    self.limits.max_idea_bytes
                ),
            ));
        }
        self.items.push(NewItem {
            text,
            metadata: Value::Object(metadata),
        });
        Ok(())
    }

    /// An idea from a JSON value; `entry` numbers it within an array.
    fn push_json(
        &mut self,
        offset: usize,
        value: Value,
        entry: Option<usize>,
    ) -> Result<(), ParseError> {
        let located = |message: String| {
            let message = match entry {
                Some(n) => format!("entry {n}: {message}"),
                None => message,
            };
            ParseError::at(self.text, offset, message)
        };
        let (text, metadata) = idea_from_json(value).map_err(located)?;
        if text.trim().is_empty() {
            return Err(located("the idea is empty".into()));
        }
        self.push(offset, text, metadata)
    }
}

fn parse_json(ideas: &mut Ideas<'_>) -> Result<(), ParseError> {
    let text = ideas.text;
    let syntax = |e: serde_json::Error| ParseError {
        line: e.line().max(1),
        column: e.column().max(1),
        message: json_message(&e),
    };
    let body = text.trim_start();
    if body.starts_with('[') {
        // Raw entries keep their place in the text, for located errors.
        let entries: Vec<&RawValue> = serde_json::from_str(text).map_err(syntax)?;
        for (i, raw) in entries.into_iter().enumerate() {
            let offset = offset_in(text, raw.get());
            let value: Value = serde_json::from_str(raw.get()).map_err(syntax)?;
            ideas.push_json(offset, value, Some(i + 1))?;
        }
    } else {
        let value: Value = serde_json::from_str(text).map_err(syntax)?;
        ideas.push_json(text.len() - body.len(), value, None)?;
    }
    Ok(())
}

/// The idea's text comes from the first of these fields present; every
/// other field is kept as metadata.
pub const TEXT_FIELDS: &[&str] = &["text", "idea", "prompt", "description", "title"];

/// An idea from a JSON string or object: its text and its metadata (every
/// other field, with a `metadata` object merged in).
pub fn idea_from_json(value: Value) -> Result<(String, Map<String, Value>), String> {
    match value {
        Value::String(text) => Ok((text, Map::new())),
        Value::Object(mut map) => {
            let Some(field) = TEXT_FIELDS
                .iter()
                .find(|f| map.get(**f).is_some_and(Value::is_string))
            else {
                return Err(format!(
                    "an idea object needs a text field (one of: {})",
                    TEXT_FIELDS.join(", ")
                ));
            };
            let text = match map.remove(*field) {
                Some(Value::String(text)) => text,
                _ => String::new(),
            };
            if let Some(Value::Object(meta)) = map.remove("metadata") {
                map.extend(meta);
            }
            Ok((text, map))
        }
        other => Err(format!(
            "an idea must be a string or an object, found {}",
            kind(&other)
        )),
    }
}

/// The JSON type of `v` with its article ("a number"), for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Text from bytes: UTF-8 (a byte-order mark is dropped), no NUL bytes.
pub fn decode(bytes: &[u8]) -> Result<&str, ParseError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let nul = bytes.iter().position(|b| *b == 0);
    let text = std::str::from_utf8(bytes);
    let bad_utf8 = text.as_ref().err().map(|e| e.valid_up_to());
    // Whichever comes first names the place.
    let (at, message) = match (nul, bad_utf8) {
        (Some(n), u) if u.is_none_or(|u| n <= u) => (
            n,
            "this looks like a binary file, not text (it holds a NUL byte)",
        ),
        (_, Some(u)) => (u, "this is not UTF-8 text (a binary file?)"),
        _ => return Ok(text.unwrap_or_default()),
    };
    let valid = std::str::from_utf8(&bytes[..at]).unwrap_or("");
    Err(ParseError::at(valid, valid.len(), message))
}

/// serde's message without its own " at line L column C" suffix.
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let bare = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => &full,
    };
    format!("invalid JSON: {bare}")
}

/// Each line with its byte offset.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    text.split_inclusive('\n').map(move |raw| {
        let start = offset;
        offset += raw.len();
        (start, raw.trim_end_matches(['\n', '\r']))
    })
}

/// Where `part`, a slice of `text`, starts in it.
fn offset_in(text: &str, part: &str) -> usize {
    (part.as_ptr() as usize)
        .saturating_sub(text.as_ptr() as usize)
        .min(text.len())
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The text of the first ATX heading (`# Title`) outside code fences.
fn markdown_title(text: &str) -> Option<String> {
    let mut fenced = false;
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("```") || line.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) {
            let rest = &line[hashes..];
            if rest.is_empty() || rest.starts_with([' ', '\t']) {
                let title = rest.trim().trim_end_matches('#').trim();
                if !title.is_empty() {
                    return Some(title.to_string());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNLIMITED: Limits = Limits {
        max_file_bytes: u64::MAX,
        max_ideas: usize::MAX,
        max_idea_bytes: usize::MAX,
    };

    fn check(text: &str, format: Format, expected: &[(&str, &str)]) {
        let items = parse_ideas(text.as_bytes(), format, &UNLIMITED).unwrap();
        let got: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.text.clone(), i.metadata.to_string()))
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    fn check_err_with(bytes: &[u8], format: Format, limits: &Limits, expected: &str) {
        let err = parse_ideas(bytes, format, limits).unwrap_err().to_string();
        assert_eq!(err, expected);
    }

    fn check_err(text: &str, format: Format, expected: &str) {
        check_err_with(text.as_bytes(), format, &UNLIMITED, expected);
    }

    #[test]
    fn formats() {
        check(
            "one\n\n  two  \r\n",
            Format::Text,
            &[("one", "{}"), ("two", "{}")],
        );
        check(
            r#"{"text": "a", "tag": 1}"#,
            Format::Json,
            &[("a", r#"{"tag":1}"#)],
        );
        check(
            r#"["a", {"idea": "b", "metadata": {"k": "v"}}]"#,
            Format::Json,
            &[("a", "{}"), ("b", r#"{"k":"v"}"#)],
        );
        check(
            "{\"prompt\": \"x\"}\n\n\"y\"\n",
            Format::JsonLines,
            &[("x", "{}"), ("y", "{}")],
        );
        check("\u{feff}bom first\n", Format::Text, &[("bom first", "{}")]);
        check(
            "\n# A CSV tool\n\nConvert CSV to JSON.\n\n```sh\n# not a title\n```\n",
            Format::Markdown,
            &[(
                "# A CSV tool\n\nConvert CSV to JSON.\n\n```sh\n# not a title\n```",
                r#"{"title":"A CSV tool"}"#,
            )],
        );
        check(
            "```\n# in a fence\n```\nno heading\n",
            Format::Markdown,
            &[("```\n# in a fence\n```\nno heading", "{}")],
        );
    }

    #[test]
    fn extensions() {
        let f = |p: &str| Format::from_path(Path::new(p));
        assert_eq!(f("a.TXT"), Some(Format::Text));
        assert_eq!(f("a.md"), Some(Format::Markdown));
        assert_eq!(f("a.json"), Some(Format::Json));
        assert_eq!(f("a.ndjson"), Some(Format::JsonLines));
        assert_eq!(f("a.csv"), None);
        assert_eq!(f("README"), None);
    }

    #[test]
    fn errors_name_line_and_column() {
        check_err(
            "[1, 2",
            Format::Json,
            "line 1, column 5: invalid JSON: EOF while parsing a list",
        );
        check_err(
            "[\n  {\"text\": \"ok\"},\n  {\"nope\": 1}\n]",
            Format::Json,
            "line 3, column 3: entry 2: an idea object needs a text field \
             (one of: text, idea, prompt, description, title)",
        );
        check_err(
            "[\"a\",\n 7]",
            Format::Json,
            "line 2, column 2: entry 2: an idea must be a string or an object, found a number",
        );
        check_err(
            "{\"text\": \"a\",}",
            Format::Json,
            "line 1, column 14: invalid JSON: trailing comma",
        );
        check_err(
            "  {\"text\": \"  \"}",
            Format::Json,
            "line 1, column 3: the idea is empty",
        );
        check_err(
            "\"ok\"\n{bad",
            Format::JsonLines,
            "line 2, column 2: invalid JSON: key must be a string",
        );
        check_err(
            "a\0b",
            Format::Text,
            "line 1, column 2: this looks like a binary file, not text (it holds a NUL byte)",
        );
        check_err_with(
            b"ok\n\xff\xfe",
            Format::Text,
            &UNLIMITED,
            "line 2, column 1: this is not UTF-8 text (a binary file?)",
        );
        check_err("", Format::Text, "line 1, column 1: no ideas in the file");
        check_err(
            " \n\n",
            Format::Markdown,
            "line 1, column 1: no ideas in the file",
        );
        check_err("[]", Format::Json, "line 1, column 1: no ideas in the file");
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_file_bytes: 20,
            max_ideas: 2,
            max_idea_bytes: 5,
        };
        check_err_with(
            &[b'a'; 21],
            Format::Text,
            &limits,
            "line 1, column 1: the file is 21 bytes; the limit is 20 bytes",
        );
        check_err_with(
            b"a\nb\nc\n",
            Format::Text,
            &limits,
            "line 3, column 1: more than 2 ideas in the file; the limit is 2",
        );
        check_err_with(
            b"a\nbbbbbb\n",
            Format::Text,
            &limits,
            "line 2, column 1: this idea is 6 bytes long; the limit is 5 bytes",
        );
        check_err_with(
            b"[\"a\", \"bbbbbb\"]",
            Format::Json,
            &limits,
            "line 1, column 7: this idea is 6 bytes long; the limit is 5 bytes",
        );
    }
}
