//! A small syntax highlighter for the files stages generate: comments,
//! strings, numbers, keywords and literals of the common languages, by file
//! extension, in one linear pass. It runs on the server (no script to
//! vendor, nothing to run in the browser) and its output is escaped HTML:
//! `<span class="k">` and friends around escaped text, nothing else.

/// What a language looks like, as far as a highlighter cares.
struct Lang {
    line_comments: &'static [&'static str],
    block_comment: Option<(&'static str, &'static str)>,
    /// Longest first (`"""` before `"`).
    quotes: &'static [&'static str],
    keywords: &'static [&'static str],
    literals: &'static [&'static str],
    case_insensitive: bool,
}

const PYTHON: Lang = Lang {
    line_comments: &["#"],
    block_comment: None,
    quotes: &["\"\"\"", "'''", "\"", "'"],
    keywords: &[
        "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
        "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is",
        "lambda", "match", "case", "nonlocal", "not", "or", "pass", "raise", "return", "try",
        "while", "with", "yield", "self",
    ],
    literals: &["True", "False", "None"],
    case_insensitive: false,
};

const C_LIKE: Lang = Lang {
    line_comments: &["//"],
    block_comment: Some(("/*", "*/")),
    quotes: &["\"", "'", "`"],
    keywords: &[
        // Rust
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "Self",
        "static",
        "struct",
        "super",
        "trait",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        // C, C++, Java, C#, Go, Kotlin, Swift, JavaScript, TypeScript
        "auto",
        "case",
        "catch",
        "char",
        "class",
        "default",
        "delete",
        "do",
        "double",
        "export",
        "extends",
        "final",
        "finally",
        "float",
        "func",
        "function",
        "go",
        "implements",
        "import",
        "include",
        "instanceof",
        "int",
        "interface",
        "long",
        "namespace",
        "new",
        "package",
        "private",
        "protected",
        "public",
        "short",
        "signed",
        "sizeof",
        "switch",
        "this",
        "throw",
        "throws",
        "try",
        "typedef",
        "typeof",
        "union",
        "unsigned",
        "var",
        "void",
        "volatile",
        "yield",
        "val",
        "fun",
        "defer",
        "chan",
        "select",
        "range",
        "map",
        "string",
        "bool",
        "from",
        "of",
        "let",
        "goto",
        "struct",
    ],
    literals: &[
        "true",
        "false",
        "null",
        "nil",
        "None",
        "Some",
        "Ok",
        "Err",
        "undefined",
        "NULL",
        "nullptr",
    ],
    case_insensitive: false,
};

const SHELL: Lang = Lang {
    line_comments: &["#"],
    block_comment: None,
    quotes: &["\"", "'"],
    keywords: &[
        "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
        "in", "function", "return", "exit", "local", "export", "set", "echo", "cd", "source",
    ],
    literals: &["true", "false"],
    case_insensitive: false,
};

const RUBY: Lang = Lang {
    line_comments: &["#"],
    block_comment: None,
    quotes: &["\"", "'"],
    keywords: &[
        "alias", "and", "begin", "break", "case", "class", "def", "defined?", "do", "else",
        "elsif", "end", "ensure", "for", "if", "in", "module", "next", "not", "or", "redo",
        "rescue", "retry", "return", "self", "super", "then", "undef", "unless", "until", "when",
        "while", "yield", "require",
    ],
    literals: &["true", "false", "nil"],
    case_insensitive: false,
};

const CONFIG: Lang = Lang {
    line_comments: &["#", ";"],
    block_comment: None,
    quotes: &["\"\"\"", "'''", "\"", "'"],
    keywords: &[],
    literals: &["true", "false", "null", "yes", "no", "on", "off"],
    case_insensitive: false,
};

const JSON: Lang = Lang {
    line_comments: &[],
    block_comment: None,
    quotes: &["\""],
    keywords: &[],
    literals: &["true", "false", "null"],
    case_insensitive: false,
};

const SQL: Lang = Lang {
    line_comments: &["--"],
    block_comment: Some(("/*", "*/")),
    quotes: &["'", "\""],
    keywords: &[
        "select",
        "from",
        "where",
        "insert",
        "into",
        "values",
        "update",
        "set",
        "delete",
        "create",
        "table",
        "index",
        "drop",
        "alter",
        "add",
        "primary",
        "key",
        "foreign",
        "references",
        "join",
        "left",
        "right",
        "inner",
        "outer",
        "on",
        "and",
        "or",
        "not",
        "group",
        "by",
        "order",
        "having",
        "limit",
        "as",
        "distinct",
        "union",
        "case",
        "when",
        "then",
        "else",
        "end",
        "begin",
        "commit",
        "rollback",
        "integer",
        "text",
        "real",
    ],
    literals: &["null", "true", "false"],
    case_insensitive: true,
};

fn lang_for(path: &str) -> Option<&'static Lang> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    Some(match ext.as_str() {
        "py" | "pyi" | "pyw" => &PYTHON,
        "rs" | "c" | "h" | "cc" | "cpp" | "cxx" | "hpp" | "java" | "js" | "mjs" | "cjs" | "jsx"
        | "ts" | "tsx" | "go" | "cs" | "kt" | "kts" | "swift" | "scala" | "dart" | "php" => &C_LIKE,
        "sh" | "bash" | "zsh" => &SHELL,
        "rb" => &RUBY,
        "toml" | "yaml" | "yml" | "ini" | "cfg" | "conf" | "env" => &CONFIG,
        "json" => &JSON,
        "sql" => &SQL,
        _ if name == "Makefile" || name == "Dockerfile" => &SHELL,
        _ => return None,
    })
}

/// Whether `path`'s language is known (else the file is shown plain).
pub fn knows(path: &str) -> bool {
    lang_for(path).is_some()
}

/// `s` with `&`, `<`, `>`, `"` and `'` escaped for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    push_escaped(&mut out, s);
    out
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn span(out: &mut String, class: &str, text: &str) {
    out.push_str("<span class=\"");
    out.push_str(class);
    out.push_str("\">");
    push_escaped(out, text);
    out.push_str("</span>");
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` as escaped HTML with token spans, for the language `path`'s
/// extension names (escaped only, when unknown). Classes: `c` comment,
/// `s` string, `n` number, `k` keyword, `l` literal.
pub fn highlight(path: &str, text: &str) -> String {
    let Some(lang) = lang_for(path) else {
        return escape(text);
    };
    let mut out = String::with_capacity(text.len() * 5 / 4);
    let mut i = 0;
    let bytes = text.as_bytes();
    let mut prev_word = false;
    while i < text.len() {
        let rest = &text[i..];
        if let Some((open, close)) = lang.block_comment
            && rest.starts_with(open)
        {
            let end = rest[open.len()..]
                .find(close)
                .map_or(rest.len(), |e| open.len() + e + close.len());
            span(&mut out, "c", &rest[..end]);
            i += end;
            prev_word = false;
            continue;
        }
        if let Some(_marker) = lang.line_comments.iter().find(|m| rest.starts_with(**m)) {
            // `#` inside a word (`a#b`) or after `$` (`$#`) is not a comment.
            let after_dollar = i > 0 && bytes[i - 1] == b'$';
            if !prev_word && !after_dollar {
                let end = rest.find('\n').unwrap_or(rest.len());
                span(&mut out, "c", &rest[..end]);
                i += end;
                continue;
            }
        }
        if let Some(q) = lang.quotes.iter().find(|q| rest.starts_with(**q)) {
            let end = string_end(rest, q);
            span(&mut out, "s", &rest[..end]);
            i += end;
            prev_word = false;
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_ascii_digit() && !prev_word {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            span(&mut out, "n", &rest[..end]);
            i += end;
            prev_word = true;
            continue;
        }
        if is_word(c) {
            let end = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
            let word = &rest[..end];
            let matches = |list: &[&str]| {
                if lang.case_insensitive {
                    list.iter().any(|k| k.eq_ignore_ascii_case(word))
                } else {
                    list.contains(&word)
                }
            };
            if matches(lang.keywords) {
                span(&mut out, "k", word);
            } else if matches(lang.literals) {
                span(&mut out, "l", word);
            } else {
                push_escaped(&mut out, word);
            }
            i += end;
            prev_word = true;
            continue;
        }
        push_escaped(&mut out, &rest[..c.len_utf8()]);
        i += c.len_utf8();
        prev_word = false;
    }
    out
}

/// Where a string starting with `quote` ends: after its closing quote, at
/// the end of the line for an unclosed one-line string, or at the end.
fn string_end(rest: &str, quote: &str) -> usize {
    let multiline = quote.len() == 3 || quote == "`";
    let mut i = quote.len();
    while i < rest.len() {
        let tail = &rest[i..];
        if let Some(escaped) = tail.strip_prefix('\\') {
            i += 1 + escaped.chars().next().map_or(0, char::len_utf8);
            continue;
        }
        if tail.starts_with(quote) {
            return i + quote.len();
        }
        let c = tail.chars().next().unwrap_or(' ');
        if c == '\n' && !multiline {
            return i;
        }
        i += c.len_utf8();
    }
    rest.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, text: &str, expected: &str) {
        assert_eq!(highlight(path, text), expected, "{path}: {text:?}");
    }

    #[test]
    fn python() {
        check(
            "app/main.py",
            "def f(x=1):  # why\n    return \"a#b\" if x else None\n",
            "<span class=\"k\">def</span> f(x=<span class=\"n\">1</span>):  <span class=\"c\"># why</span>\n    \
             <span class=\"k\">return</span> <span class=\"s\">&quot;a#b&quot;</span> <span class=\"k\">if</span> x \
             <span class=\"k\">else</span> <span class=\"l\">None</span>\n",
        );
        check(
            "t.py",
            "'''doc\n<b>'''\nx2 = 'it\\'s'",
            "<span class=\"s\">&#39;&#39;&#39;doc\n&lt;b&gt;&#39;&#39;&#39;</span>\nx2 = <span class=\"s\">&#39;it\\&#39;s&#39;</span>",
        );
    }

    #[test]
    fn c_like_and_others() {
        check(
            "src/lib.rs",
            "/* a */ let s = \"x\"; // b",
            "<span class=\"c\">/* a */</span> <span class=\"k\">let</span> s = <span class=\"s\">&quot;x&quot;</span>; <span class=\"c\">// b</span>",
        );
        check(
            "a.sql",
            "SELECT 1 -- c",
            "<span class=\"k\">SELECT</span> <span class=\"n\">1</span> <span class=\"c\">-- c</span>",
        );
        check(
            "x.json",
            "{\"a\": true}",
            "{<span class=\"s\">&quot;a&quot;</span>: <span class=\"l\">true</span>}",
        );
        check(
            "run.sh",
            "echo $# done",
            "<span class=\"k\">echo</span> $# <span class=\"k\">done</span>",
        );
        check("notes.txt", "<script>", "&lt;script&gt;");
        assert!(!knows("README.md") && knows("Makefile"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "\"",
            "'''",
            "/*",
            "\\",
            "é\"\\é",
            "1.2.3e",
            "\"unterminated\nnext",
            "#",
        ] {
            for path in ["a.py", "a.rs", "a.sql", "a.json", "a.sh"] {
                let html = highlight(path, text);
                assert!(
                    !html.contains('<') || html.contains("<span"),
                    "{path} {text:?}: {html}"
                );
            }
        }
    }
}
