//! Finds the fenced code blocks of a model's answer that name a file.
//!
//! A block names its file in its info string (```` ```python app/main.py ````,
//! ```` ```app/main.py ````, ```` ```python:app/main.py ````,
//! ```` ```python path=app/main.py ````, ```` ```python file: app/main.py ````)
//! or on the line before it, possibly after one blank line (`app/main.py`,
//! `**app/main.py**`, `` `app/main.py` ``, `# File: app/main.py`,
//! `### app/main.py`, `- app/main.py:`), or in a comment that is the
//! block's whole first line (`# app/main.py`, `// src/lib.rs`). Fences
//! follow CommonMark: three or more backticks or tildes, closed by a line of
//! the same character at least as long, so a ```` ```` ```` block may
//! contain ```` ``` ```` lines.
//! Names are taken as written: [`crate::write_files`] refuses the hostile ones.
//!
//! Small models format loosely, so three repairs are made, each noted in
//! `problems`: a block whose first line is only a file name (`main.py`)
//! takes that name, the line dropped; a Python block that names no file
//! becomes `test_main.py` if
//! it imports a test framework and `main.py` otherwise (the first such
//! block, and only when no block names that file); and a named block left
//! open when the next named block opens is closed there.

use std::collections::HashMap;

/// A file the answer asks to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBlock {
    /// As named, with `./` and repeated `/` removed; not yet validated.
    pub path: String,
    /// The lines between the fences, less the fence's indentation.
    pub content: String,
    /// The info string's language, if it gave one.
    pub lang: Option<String>,
}

/// The named blocks of an answer and what was wrong with the others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extraction {
    /// The named blocks in the order their names first appear; a name
    /// given twice keeps its last block.
    pub files: Vec<FileBlock>,
    /// Lowercase notes: unnamed or unterminated blocks, duplicate names.
    pub problems: Vec<String>,
}

/// Extracts the named fenced code blocks of `text`. Never fails: what it
/// cannot use is listed in `problems`.
pub fn extract_files(text: &str) -> Extraction {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Extraction::default();
    // Line number (1-based) of the block that gave each path its content.
    let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
    // Labels are only looked for after the end of the previous block.
    let mut free_from = 0;
    // Python blocks that name no file: (line, content, lang), named at the end.
    let mut unnamed = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(fence) = Fence::open(strip_eol(lines[i])) else {
            i += 1;
            continue;
        };
        let info = parse_info(fence.info);
        let path = info
            .path
            .clone()
            .or_else(|| label_before(&lines, i, free_from));
        let mut content = String::new();
        let mut close = None;
        // Where a block left open ends because the next named one opens.
        let mut cut = None;
        for (j, line) in lines.iter().enumerate().skip(i + 1) {
            if fence.closes(strip_eol(line)) {
                close = Some(j);
                break;
            }
            if path.is_some()
                && let Some(next) = Fence::open(strip_eol(line))
                && next.ch == fence.ch
                && parse_info(next.info).path.is_some()
            {
                cut = Some(j);
                break;
            }
            content.push_str(dedent(line, fence.indent));
        }
        let path = path.or_else(|| comment_label(content.lines().next().unwrap_or("")));
        let line_no = i + 1;
        // A bare file name as the block's first line is a name, not code
        // (seen with small models: ```` ```python ```` then `main.py`).
        let (path, content) = match path {
            Some(p) => (Some(p), content),
            None => match bare_name_line(&content) {
                Some((name, rest)) => {
                    out.problems.push(format!(
                        "line {line_no}: the code block gave its file name {name} as its first line: taken as the name, the line dropped"
                    ));
                    (Some(name), rest)
                }
                None => (None, content),
            },
        };
        if let (Some(next), Some(p)) = (cut, &path) {
            out.problems.push(format!(
                "line {line_no}: the code block for {p} was not closed before the next named block opened (line {}): closed there",
                next + 1
            ));
        }
        let close = close.or(cut.map(|next| next - 1));
        let Some(close) = close else {
            out.problems.push(match &path {
                Some(p) => {
                    format!("line {line_no}: the code block for {p} is not closed: not written")
                }
                None => format!("line {line_no}: a code block is not closed"),
            });
            break;
        };
        match path {
            Some(p) => {
                let path = normalize(&p);
                let block = FileBlock {
                    path: path.clone(),
                    content,
                    lang: info.lang,
                };
                if let Some((first_line, index)) = seen.get(&path).copied() {
                    out.problems.push(format!(
                        "{path}: named by the blocks at lines {first_line} and {line_no}: the last one is kept"
                    ));
                    out.files[index] = block;
                    seen.insert(path, (line_no, index));
                } else {
                    seen.insert(path, (line_no, out.files.len()));
                    out.files.push(block);
                }
            }
            None if is_python(info.lang.as_deref()) => unnamed.push((line_no, content, info.lang)),
            None => out.problems.push(format!(
                "line {line_no}: a code block names no file: not written"
            )),
        }
        free_from = close + 1;
        i = close + 1;
    }
    name_python_blocks(&mut out, &mut seen, unnamed);
    out
}

fn is_python(lang: Option<&str>) -> bool {
    matches!(
        lang.map(str::to_ascii_lowercase).as_deref(),
        Some("python" | "py" | "python3")
    )
}

/// Unnamed Python blocks: the first that imports a test framework becomes
/// `test_main.py`, the first other one `main.py`, each only when no block
/// named that file; the rest stay unwritten.
fn name_python_blocks(
    out: &mut Extraction,
    seen: &mut HashMap<String, (usize, usize)>,
    unnamed: Vec<(usize, String, Option<String>)>,
) {
    for (line_no, content, lang) in unnamed {
        let tests = content.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("import unittest")
                || l.starts_with("from unittest")
                || l.starts_with("import pytest")
                || l.starts_with("from pytest")
        });
        let name = if tests { "test_main.py" } else { "main.py" };
        if seen.contains_key(name) {
            out.problems.push(format!(
                "line {line_no}: a code block names no file: not written"
            ));
            continue;
        }
        out.problems.push(format!(
            "line {line_no}: a Python code block names no file: written as {name}"
        ));
        seen.insert(name.to_owned(), (line_no, out.files.len()));
        out.files.push(FileBlock {
            path: name.to_owned(),
            content,
            lang,
        });
    }
}

struct Fence<'a> {
    ch: char,
    len: usize,
    indent: usize,
    info: &'a str,
}

impl<'a> Fence<'a> {
    fn open(line: &'a str) -> Option<Fence<'a>> {
        let rest = line.trim_start_matches([' ', '\t']);
        let indent = line.len() - rest.len();
        let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = rest.len() - rest.trim_start_matches(ch).len();
        if len < 3 {
            return None;
        }
        let info = rest[len..].trim();
        // CommonMark: a backtick fence's info string has no backtick (this
        // keeps ```inline``` code on one line from opening a block).
        if ch == '`' && info.contains('`') {
            return None;
        }
        Some(Fence {
            ch,
            len,
            indent,
            info,
        })
    }

    fn closes(&self, line: &str) -> bool {
        let rest = line.trim_start_matches([' ', '\t']);
        let after = rest.trim_start_matches(self.ch);
        rest.len() - after.len() >= self.len && after.trim().is_empty()
    }
}

#[derive(Debug, Default)]
struct Info {
    lang: Option<String>,
    path: Option<String>,
}

fn parse_info(info: &str) -> Info {
    let mut out = Info::default();
    let mut tokens = info.split_whitespace().peekable();
    if let Some(first) = tokens.next_if(|t| !t.contains('=')) {
        match first.split_once(':') {
            // ```python:app/main.py
            Some((lang, path)) if is_lang(lang) && !path.is_empty() => {
                out.lang = Some(lang.to_string());
                out.path = Some(unquote(path).to_string());
            }
            _ if looks_like_path(first, false) => out.path = Some(first.to_string()),
            _ => out.lang = Some(first.to_string()),
        }
    }
    while let Some(token) = tokens.next() {
        if out.path.is_some() {
            break;
        }
        let lower = token.to_ascii_lowercase();
        if let Some((key, value)) = token.split_once('=') {
            if is_name_key(&key.to_ascii_lowercase()) {
                out.path = Some(unquote(value).to_string());
            }
        } else if lower.strip_suffix(':').is_some_and(is_name_key) {
            out.path = tokens.next().map(|t| unquote(t).to_string());
        } else if let Some((key, value)) = token.split_once(':') {
            if is_name_key(&key.to_ascii_lowercase()) && !value.is_empty() {
                out.path = Some(unquote(value).to_string());
            }
        } else if looks_like_path(token, true) {
            out.path = Some(token.to_string());
        }
    }
    out
}

fn is_name_key(key: &str) -> bool {
    matches!(key, "path" | "file" | "filename" | "name" | "title")
}

fn is_lang(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '_' | '#'))
}

fn unquote(s: &str) -> &str {
    s.trim_matches(|c| c == '"' || c == '\'' || c == '`')
}

/// The file named by a label on the line before the fence at `fence`, or
/// the one before that if the line between is blank.
fn label_before(lines: &[&str], fence: usize, free_from: usize) -> Option<String> {
    let mut i = fence;
    for _ in 0..2 {
        if i == 0 || i - 1 < free_from {
            return None;
        }
        i -= 1;
        let line = strip_eol(lines[i]).trim();
        if !line.is_empty() {
            return label_path(line);
        }
    }
    None
}

/// `app/main.py`, `**app/main.py**`, `` `app/main.py`: ``, `# File: app/main.py`,
/// `### 2. app/main.py`, `- **File:** app/main.py`: the path, if the line is
/// nothing but a decorated path.
fn label_path(line: &str) -> Option<String> {
    let mut s = line.trim();
    loop {
        let before = s;
        s = s.trim_start_matches('#').trim_start();
        s = strip_list_marker(s);
        s = s.trim_end_matches(':').trim();
        for wrap in ["**", "__", "`", "*", "_"] {
            if s.len() > 2 * wrap.len() && s.starts_with(wrap) && s.ends_with(wrap) {
                s = s[wrap.len()..s.len() - wrap.len()].trim();
            }
        }
        // `**File:** app/main.py` and `File: app/main.py`: strip the label.
        let unbolded = s.trim_start_matches(['*', '_']);
        let lower = unbolded.to_ascii_lowercase();
        for label in ["file name", "filename", "file path", "file", "path"] {
            if let Some(rest) = lower.strip_prefix(label) {
                let rest_start = s.len() - rest.len();
                let rest = s[rest_start..].trim_start_matches(['*', '_']);
                if let Some(after) = rest.strip_prefix(':') {
                    s = after.trim_start_matches(['*', '_']).trim();
                    break;
                }
            }
        }
        if s == before {
            break;
        }
    }
    looks_like_path(s, true).then(|| s.to_string())
}

/// A path named by a comment that is the whole first line of a block:
/// `# app/main.py`, `// src/lib.rs`, `-- schema.sql`, `/* style.css */`,
/// `<!-- index.html -->`. The line stays in the file: it is a comment there.
fn comment_label(line: &str) -> Option<String> {
    let line = line.trim();
    if line.starts_with("#!") {
        return None; // a shebang, not a name
    }
    let (open, close) = [
        ("<!--", "-->"),
        ("/*", "*/"),
        ("//", ""),
        ("--", ""),
        ("#", ""),
        (";", ""),
    ]
    .into_iter()
    .find(|(open, _)| line.starts_with(open))?;
    let inner = line[open.len()..].trim_start_matches(open.chars().next()?);
    let inner = inner.strip_suffix(close).unwrap_or(inner);
    label_path(inner)
}

/// A block's first line that is only a file name with a source or text
/// extension (`test_main.py`, `src/app.js`), and the content after it.
fn bare_name_line(content: &str) -> Option<(String, String)> {
    const EXTENSIONS: &[&str] = &[
        "py", "js", "mjs", "ts", "tsx", "jsx", "rs", "go", "java", "kt", "c", "h", "cc", "cpp",
        "hpp", "cs", "rb", "php", "sh", "bash", "toml", "json", "yaml", "yml", "md", "txt", "html",
        "css", "sql", "cfg", "ini",
    ];
    let (first, rest) = content.split_once('\n').unwrap_or((content, ""));
    let name = first.trim();
    let ext = name.rsplit_once('.')?.1;
    (EXTENSIONS.contains(&ext) && looks_like_path(name, false))
        .then(|| (name.to_string(), rest.to_string()))
}

fn strip_list_marker(s: &str) -> &str {
    for marker in ["- ", "* ", "+ "] {
        if let Some(rest) = s.strip_prefix(marker) {
            return rest.trim_start();
        }
    }
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 {
        let rest = &s[digits..];
        if let Some(rest) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return rest.trim_start();
        }
    }
    s
}

/// Whether `s` reads as a file path: one token, with a directory or an
/// extension that has a letter (`app/x`, `main.py`, `.env`, not `e.g.`,
/// `v1.2` or `python3`). `bare_names` also accepts `Makefile` and the like.
fn looks_like_path(s: &str, bare_names: bool) -> bool {
    const BARE: &[&str] = &[
        "Makefile",
        "makefile",
        "GNUmakefile",
        "Dockerfile",
        "Containerfile",
        "Procfile",
        "Gemfile",
        "Rakefile",
        "Justfile",
        "justfile",
        "Vagrantfile",
        "LICENSE",
        "README",
    ];
    if s.is_empty()
        || s.contains("://")
        || s.chars().any(|c| {
            c.is_whitespace()
                || matches!(
                    c,
                    '<' | '>'
                        | '|'
                        | '*'
                        | '?'
                        | '"'
                        | '('
                        | ')'
                        | '{'
                        | '}'
                        | '['
                        | ']'
                        | ','
                        | ';'
                        | '`'
                )
        })
        || !s.chars().any(|c| c.is_alphanumeric())
    {
        return false;
    }
    if s.contains('/') {
        return true;
    }
    if bare_names && BARE.contains(&s) {
        return true;
    }
    match s.rsplit_once('.') {
        Some((_, ext)) => ext.chars().any(|c| c.is_alphabetic()),
        None => false,
    }
}

/// Drops `./` components and repeated `/`, keeping a leading `/`, `..` and
/// a trailing `/` for the writer to refuse.
fn normalize(path: &str) -> String {
    let path = path.trim();
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut out = String::new();
    if path.starts_with('/') {
        out.push('/');
    }
    out.push_str(&parts.join("/"));
    if path.ends_with('/') && !parts.is_empty() {
        out.push('/');
    }
    out
}

fn strip_eol(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

/// Removes up to `indent` leading spaces or tabs (the fence's own indent).
fn dedent(line: &str, indent: usize) -> &str {
    let strip = line
        .bytes()
        .take(indent)
        .take_while(|b| *b == b' ' || *b == b'\t')
        .count();
    &line[strip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders an extraction as text: one `== path [lang]` header per file,
    /// its content, then `!! problem` lines.
    fn render(e: &Extraction) -> String {
        let mut out = String::new();
        for f in &e.files {
            out.push_str(&format!(
                "== {} [{}]\n",
                f.path,
                f.lang.as_deref().unwrap_or("")
            ));
            out.push_str(&f.content);
        }
        for p in &e.problems {
            out.push_str(&format!("!! {p}\n"));
        }
        out
    }

    #[track_caller]
    fn check(input: &str, expected: &str) {
        let got = render(&extract_files(input));
        assert_eq!(
            got, expected,
            "\n--- got ---\n{got}--- expected ---\n{expected}"
        );
    }

    #[test]
    fn info_string_paths() {
        check(
            "```python app/main.py\nprint(1)\n```\n",
            "== app/main.py [python]\nprint(1)\n",
        );
        check("```app/main.py\nx\n```\n", "== app/main.py []\nx\n");
        check("```python:app/x.py\nx\n```\n", "== app/x.py [python]\nx\n");
        check(
            "```python path=app/x.py\nx\n```\n",
            "== app/x.py [python]\nx\n",
        );
        check(
            "```python title=\"app/x.py\"\nx\n```\n",
            "== app/x.py [python]\nx\n",
        );
        check(
            "```python file: app/x.py\nx\n```\n",
            "== app/x.py [python]\nx\n",
        );
        check(
            "```make Makefile\nall:\n\techo\n```\n",
            "== Makefile [make]\nall:\n\techo\n",
        );
        check(
            "~~~toml Cargo.toml\n[package]\n~~~\n",
            "== Cargo.toml [toml]\n[package]\n",
        );
        check(
            "```python ./app//main.py\nx\n```\n",
            "== app/main.py [python]\nx\n",
        );
        // An info-string path beats a label.
        check(
            "other.py\n```python app/main.py\nx\n```\n",
            "== app/main.py [python]\nx\n",
        );
    }

    #[test]
    fn preceding_line_paths() {
        let body = "```python\nx = 1\n```\n";
        for label in [
            "app/main.py",
            "**app/main.py**",
            "`app/main.py`",
            "`app/main.py`:",
            "**`app/main.py`**",
            "# File: app/main.py",
            "File: app/main.py",
            "**File:** app/main.py",
            "### app/main.py",
            "### 2. `app/main.py`",
            "- app/main.py:",
            "Filename: app/main.py",
        ] {
            check(
                &format!("Intro.\n\n{label}\n{body}"),
                "== app/main.py [python]\nx = 1\n",
            );
            check(
                &format!("{label}\n\n{body}"),
                "== app/main.py [python]\nx = 1\n",
            );
        }
        check(
            "Dockerfile:\n```\nFROM x\n```\n",
            "== Dockerfile []\nFROM x\n",
        );
    }

    #[test]
    fn first_line_comment_paths() {
        for (block, first) in [
            ("```python\n# app/main.py\nx = 1\n```\n", "# app/main.py"),
            (
                "```python\n# File: app/main.py\nx = 1\n```\n",
                "# File: app/main.py",
            ),
            ("```rust\n// app/main.py\nx = 1\n```\n", "// app/main.py"),
            ("```sql\n-- app/main.py\nx = 1\n```\n", "-- app/main.py"),
            (
                "```css\n/* app/main.py */\nx = 1\n```\n",
                "/* app/main.py */",
            ),
            (
                "```html\n<!-- app/main.py -->\nx = 1\n```\n",
                "<!-- app/main.py -->",
            ),
            ("```lisp\n;; app/main.py\nx = 1\n```\n", ";; app/main.py"),
        ] {
            let lang = &block[3..block.find('\n').unwrap()];
            check(block, &format!("== app/main.py [{lang}]\n{first}\nx = 1\n"));
        }
        // A label before the block wins over the comment.
        check(
            "b.py\n```python\n# a.py\nx\n```\n",
            "== b.py [python]\n# a.py\nx\n",
        );
        let unnamed = "!! line 1: a code block names no file: not written\n";
        for first in [
            "#!/usr/bin/env python3",
            "#!/bin/sh",
            "# check whether the input is a palindrome",
            "// returns e.g. 3",
            "x = 1  # main.py",
        ] {
            // No language: a Python block would be named main.py by default.
            check(&format!("```\n{first}\nx\n```\n"), unnamed);
        }
    }

    #[test]
    fn lines_that_are_not_labels() {
        let unnamed = "!! line 2: a code block names no file: not written\n";
        for line in [
            "Here is the code:",
            "Run it with `python app.py`:",
            "e.g.",
            "Example",
            "**Note**",
            "See https://example.com/x.py",
            "python3",
            "v1.2",
        ] {
            check(&format!("{line}\n```\nx\n```\n"), unnamed);
        }
        // Two blank lines is too far.
        check(
            "app/main.py\n\n\n```\nx\n```\n",
            "!! line 4: a code block names no file: not written\n",
        );
        // A label must come after the previous block.
        check(
            "```python a.py\nx\n```\n```\ny\n```\n",
            "== a.py [python]\nx\n!! line 4: a code block names no file: not written\n",
        );
    }

    #[test]
    fn hostile_paths_are_extracted_for_the_writer_to_refuse() {
        check("```sh ../x.sh\nrm\n```\n", "== ../x.sh [sh]\nrm\n");
        check("```sh /tmp/x.sh\nrm\n```\n", "== /tmp/x.sh [sh]\nrm\n");
        check("`a/../../x.py`\n```\nrm\n```\n", "== a/../../x.py []\nrm\n");
    }

    #[test]
    fn duplicate_names_keep_the_last_block() {
        check(
            "```python a.py\nold\n```\n```python b.py\nb\n```\n```python ./a.py\nnew\n```\n",
            "== a.py [python]\nnew\n== b.py [python]\nb\n!! a.py: named by the blocks at lines 1 and 7: the last one is kept\n",
        );
    }

    #[test]
    fn unterminated_fences_are_not_written() {
        check(
            "```python a.py\nok\n```\n```python b.py\nhalf\n",
            "== a.py [python]\nok\n!! line 4: the code block for b.py is not closed: not written\n",
        );
        check("```\nhalf\n", "!! line 1: a code block is not closed\n");
        // A shorter fence does not close a longer one.
        check(
            "````md README.md\n```\n",
            "!! line 1: the code block for README.md is not closed: not written\n",
        );
        // Nor does a fence of the other character.
        check(
            "```python a.py\n~~~\n",
            "!! line 1: the code block for a.py is not closed: not written\n",
        );
    }

    #[test]
    fn small_models_loose_formatting_is_repaired() {
        // Unnamed Python blocks: the tests and the code, each noted.
        check(
            "```python\ndef f():\n    return 1\n```\n```python\nimport unittest\nfrom main import f\n```\n",
            "== main.py [python]\ndef f():\n    return 1\n== test_main.py [python]\nimport unittest\nfrom main import f\n\
             !! line 1: a Python code block names no file: written as main.py\n\
             !! line 5: a Python code block names no file: written as test_main.py\n",
        );
        // A named main.py wins over an unnamed block; another language is not guessed.
        check(
            "```python\nx = 1\n```\n```python main.py\ny = 2\n```\n```js\nz\n```\n",
            "== main.py [python]\ny = 2\n!! line 7: a code block names no file: not written\n!! line 1: a code block names no file: not written\n",
        );
        // A named block left open when the next named block opens: two files.
        check(
            "```python main.py\ndef f(): pass\n```python test_main.py\nimport unittest\n```\n",
            "== main.py [python]\ndef f(): pass\n== test_main.py [python]\nimport unittest\n\
             !! line 1: the code block for main.py was not closed before the next named block opened (line 3): closed there\n",
        );
        // A file name as the block's first line (seen with the 1.5B coder):
        // the name, not code; a lone expression like `x.y` is left alone.
        check(
            "```python\ntest_acceptance.py\nimport unittest\n```\n```python\nos.path\nx = 1\n```\n",
            "== test_acceptance.py [python]\nimport unittest\n== main.py [python]\nos.path\nx = 1\n\
             !! line 1: the code block gave its file name test_acceptance.py as its first line: taken as the name, the line dropped\n\
             !! line 5: a Python code block names no file: written as main.py\n",
        );
    }

    #[test]
    fn nested_fences_by_length() {
        check(
            "````markdown README.md\n# Demo\n```python\nprint(1)\n```\n````\n",
            "== README.md [markdown]\n# Demo\n```python\nprint(1)\n```\n",
        );
        check(
            "~~~md doc.md\n```\ncode\n```\n~~~\n",
            "== doc.md [md]\n```\ncode\n```\n",
        );
        // A longer closing fence closes; one with text after it does not.
        check(
            "```a.txt\n``` not a close\nx\n`````\n",
            "== a.txt []\n``` not a close\nx\n",
        );
    }

    #[test]
    fn inline_backticks_and_indentation() {
        check("Use ```a.py``` here.\n", "");
        check("```a.py``` here\n", "");
        check(
            "1. Create it:\n\n   ```python a.py\n   def f():\n       pass\n   ```\n",
            "== a.py [python]\ndef f():\n    pass\n",
        );
        check("```python a.py\r\nx\r\n```\r\n", "== a.py [python]\nx\r\n");
    }

    #[test]
    fn empty_and_odd_input_never_fails() {
        check("", "");
        check("```", "!! line 1: a code block is not closed\n");
        check("```a.py\n```\n", "== a.py []\n");
        check("``` \u{0}.py\nx\n```\n", "== \u{0}.py []\nx\n");
        let _ = extract_files("```\u{feff}`~~~\n~~~~``~\n\n`\n");
    }
}
