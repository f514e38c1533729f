//! `--compare KEY=VALUE`: one config setting changed in the TOML text itself,
//! at the spans `toml-span` reports, so that comments, order and every other
//! setting stay as the user wrote them.
//!
//! Keys: `gate.KEY` (every stage that has a gate), `stages.NAME.KEY[.SUB]`
//! (one stage, by name), and any other dotted path from the top
//! (`providers.main.model`, `engine.heartbeat`). A key that exists has its
//! value replaced; a missing one is inserted into the nearest table that
//! exists (as a dotted key when tables are missing on the way).

use toml_span::value::{Table, Value, ValueInner};

/// One `KEY=VALUE`, with VALUE checked to be a TOML value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// As given, for names and messages.
    pub text: String,
    pub path: Vec<String>,
    /// TOML text: `1`, `"x"`, `true`.
    pub value: String,
}

impl Override {
    pub fn parse(text: &str) -> Result<Override, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!("`{text}` is not KEY=VALUE"));
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(|p| !is_bare_key(p)) {
            return Err(format!(
                "`{text}`: the key `{}` is not a dotted path of names (like gate.max_rounds)",
                key.trim()
            ));
        }
        let value = value.trim().to_owned();
        if let Err(e) = toml_span::parse(&format!("v = {value}\n")) {
            return Err(format!(
                "`{text}`: `{value}` is not a TOML value ({e}); strings need quotes: KEY=\"text\""
            ));
        }
        Ok(Override {
            text: text.to_owned(),
            path,
            value,
        })
    }
}

fn is_bare_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A replacement of `text[start..end]`.
struct Edit {
    start: usize,
    end: usize,
    with: String,
}

/// `text` with `o` applied. Errors are lowercase fragments naming the key.
pub fn apply(text: &str, o: &Override) -> Result<String, String> {
    let doc = toml_span::parse(text).map_err(|e| format!("invalid toml: {e}"))?;
    let root = doc.as_table().ok_or("the config is not a table")?;
    let mut edits = Vec::new();
    match o.path.as_slice() {
        [gate, rest @ ..] if gate == "gate" && !rest.is_empty() => {
            let gates: Vec<&Value> = stages(root).filter_map(|s| get(s, "gate")).collect();
            if gates.is_empty() {
                return Err(format!("{}: no stage has a gate", o.text));
            }
            for gate in gates {
                edits.push(set(text, gate, false, rest, &o.value, &o.text)?);
            }
        }
        [stages_key, name, rest @ ..] if stages_key == "stages" && !rest.is_empty() => {
            let stage = stages(root)
                .find(|s| get(s, "name").and_then(Value::as_str) == Some(name.as_str()))
                .ok_or_else(|| {
                    let names: Vec<&str> = stages(root)
                        .filter_map(|s| get(s, "name").and_then(Value::as_str))
                        .collect();
                    format!(
                        "{}: no stage is named `{name}`; stages: {}",
                        o.text,
                        names.join(", ")
                    )
                })?;
            edits.push(set(text, stage, false, rest, &o.value, &o.text)?);
        }
        [stages_key, ..] if stages_key == "stages" => {
            return Err(format!(
                "{}: name a stage and a key (stages.NAME.KEY=VALUE)",
                o.text
            ));
        }
        path => edits.push(set(text, &doc, true, path, &o.value, &o.text)?),
    }
    // From the end, so that earlier offsets stay right.
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut out = text.to_owned();
    for e in edits {
        out.replace_range(e.start..e.end, &e.with);
    }
    Ok(out)
}

fn stages<'a, 'de>(root: &'a Table<'de>) -> impl Iterator<Item = &'a Value<'de>> {
    root.iter()
        .find(|(k, _)| k.name == "stages")
        .and_then(|(_, v)| v.as_array())
        .into_iter()
        .flatten()
}

fn get<'a, 'de>(table: &'a Value<'de>, key: &str) -> Option<&'a Value<'de>> {
    table
        .as_table()?
        .iter()
        .find(|(k, _)| k.name == key)
        .map(|(_, v)| v)
}

/// The edit that sets `path` (relative to `table`) to `value`.
fn set(
    text: &str,
    table: &Value<'_>,
    is_root: bool,
    path: &[String],
    value: &str,
    given: &str,
) -> Result<Edit, String> {
    let Some((first, rest)) = path.split_first() else {
        return Err(format!("{given}: no key"));
    };
    match get(table, first) {
        Some(v) if rest.is_empty() => {
            if matches!(v.as_ref(), ValueInner::Table(_)) {
                return Err(format!(
                    "{given}: `{first}` is a table; name one of its keys"
                ));
            }
            let (start, end) = value_span(text, v);
            Ok(Edit {
                start,
                end,
                with: value.to_owned(),
            })
        }
        Some(v) if v.as_table().is_some() => set(text, v, false, rest, value, given),
        Some(_) => Err(format!("{given}: `{first}` is not a table")),
        None => insert(text, table, is_root, &path.join("."), value, given),
    }
}

/// Where `v` is written: a string's span leaves out its quotes (and the
/// newline that may follow opening triple quotes), so they are added back.
fn value_span(text: &str, v: &Value<'_>) -> (usize, usize) {
    let (start, end) = (v.span.start, v.span.end);
    let Some(content) = v.as_str() else {
        return (start, end);
    };
    let rest = text.get(start..).unwrap_or("");
    // toml-span gives an empty one-line string the opening quote only.
    if content.is_empty()
        && (rest.starts_with("\"\"") || rest.starts_with("''"))
        && !rest[1..].starts_with(&rest[..2])
    {
        return (start, start + 2);
    }
    let before = text.get(..start).unwrap_or("");
    let trimmed = before
        .strip_suffix("\r\n")
        .or_else(|| before.strip_suffix('\n'))
        .filter(|b| b.ends_with("\"\"\"") || b.ends_with("\'\'\'"))
        .unwrap_or(before);
    let Some(quote) = trimmed
        .chars()
        .next_back()
        .filter(|c| *c == '"' || *c == '\'')
    else {
        return (start, end);
    };
    let n = if trimmed
        .chars()
        .rev()
        .take(3)
        .filter(|c| *c == quote)
        .count()
        == 3
    {
        3
    } else {
        1
    };
    (trimmed.len() - n, (end + n).min(text.len()))
}

/// An edit that adds `key = value` to `table`, which lacks it.
fn insert(
    text: &str,
    table: &Value<'_>,
    is_root: bool,
    key: &str,
    value: &str,
    given: &str,
) -> Result<Edit, String> {
    if is_root {
        // Top-level keys must come before the first header.
        return Ok(Edit {
            start: 0,
            end: 0,
            with: format!("{key} = {value}\n"),
        });
    }
    let at = table.span.start;
    let written = text.get(at..).unwrap_or("");
    if written.starts_with('{') {
        let empty = table.as_table().is_none_or(|t| t.is_empty());
        let with = if empty {
            format!(" {key} = {value} ")
        } else {
            format!(" {key} = {value},")
        };
        return Ok(Edit {
            start: at + 1,
            end: at + 1,
            with,
        });
    }
    if written.starts_with('[') {
        // Right under the header line.
        return Ok(match written.find('\n') {
            Some(nl) => Edit {
                start: at + nl + 1,
                end: at + nl + 1,
                with: format!("{key} = {value}\n"),
            },
            None => Edit {
                start: text.len(),
                end: text.len(),
                with: format!("\n{key} = {value}\n"),
            },
        });
    }
    Err(format!(
        "{given}: the table is written with dotted keys; change it in the config file"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: &str, given: &str, expected: &str) {
        let o = Override::parse(given).unwrap();
        let got = apply(config, &o).unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(got, expected, "{given} on\n{config}");
    }

    const STAGES: &str = "\
[[stages]]
name = \"implement\"
kind = \"llm\"

[[stages]]
name = \"qa\"
kind = \"command\"
gate = { retry_from = \"implement\", max_rounds = 3 }  # three tries

[[stages]]
name = \"review\"
kind = \"command\"
gate = { retry_from = \"implement\" }

[[stages]]
name = \"final\"
kind = \"command\"

[stages.gate]
retry_from = \"qa\"
max_rounds = 2
";

    #[test]
    fn gate_rounds_are_set_in_every_gate() {
        check(
            STAGES,
            "gate.max_rounds=1",
            &STAGES
                .replace("max_rounds = 3 }", "max_rounds = 1 }")
                .replace(
                    "{ retry_from = \"implement\" }",
                    "{ max_rounds = 1, retry_from = \"implement\" }",
                )
                .replace("max_rounds = 2", "max_rounds = 1"),
        );
    }

    #[test]
    fn a_key_missing_from_a_subtable_goes_under_its_header() {
        check(
            "[[stages]]\nname = \"a\"\n\n[stages.gate]\nretry_from = \"x\"\n",
            "gate.max_rounds=4",
            "[[stages]]\nname = \"a\"\n\n[stages.gate]\nmax_rounds = 4\nretry_from = \"x\"\n",
        );
    }

    #[test]
    fn one_stage_by_name() {
        check(
            STAGES,
            "stages.implement.max_tokens=300",
            &STAGES.replace(
                "[[stages]]\nname = \"implement\"\n",
                "[[stages]]\nmax_tokens = 300\nname = \"implement\"\n",
            ),
        );
        check(
            STAGES,
            "stages.qa.kind='llm'",
            &STAGES.replace(
                "name = \"qa\"\nkind = \"command\"",
                "name = \"qa\"\nkind = 'llm'",
            ),
        );
        check(
            STAGES,
            "stages.nope.timeout=\"1m\"",
            "error: stages.nope.timeout=\"1m\": no stage is named `nope`; stages: implement, \
             qa, review, final",
        );
    }

    #[test]
    fn sections_and_subsections() {
        let config =
            "# mine\n[engine]\nheartbeat = \"2s\" # beat\n\n[providers.main]\nmodel = \"a\"\n";
        check(
            config,
            "engine.heartbeat=\"1s\"",
            &config.replace("\"2s\"", "\"1s\""),
        );
        check(
            config,
            "providers.main.model=\"b\"",
            &config.replace("\"a\"", "\"b\""),
        );
        check(
            config,
            "engine.lease=\"9s\"",
            &config.replace("[engine]\n", "[engine]\nlease = \"9s\"\n"),
        );
        check(
            config,
            "store.url=\"sqlite://x.db\"",
            &format!("store.url = \"sqlite://x.db\"\n{config}"),
        );
        check("[p]\nm = '''x'''\n", "p.m=\"y\"", "[p]\nm = \"y\"\n");
        check("[p]\nm = \"\"\n", "p.m=1", "[p]\nm = 1\n");
        check(
            "[p]\nm = \"\"\"\nx\ny\"\"\" # c\n",
            "p.m=1",
            "[p]\nm = 1 # c\n",
        );
        check("[p]\nm = \"a\\\"\"\n", "p.m=1", "[p]\nm = 1\n");
        check(
            config,
            "engine=1",
            "error: engine=1: `engine` is a table; name one of its keys",
        );
        check(
            config,
            "engine.heartbeat.x=1",
            "error: engine.heartbeat.x=1: `heartbeat` is not a table",
        );
    }

    #[test]
    fn no_gate_anywhere_is_an_error() {
        check(
            "[[stages]]\nname = \"a\"\n",
            "gate.max_rounds=1",
            "error: gate.max_rounds=1: no stage has a gate",
        );
    }

    #[test]
    fn values_and_keys_are_checked() {
        assert_eq!(
            Override::parse("gate.max_rounds").unwrap_err(),
            "`gate.max_rounds` is not KEY=VALUE"
        );
        assert!(
            Override::parse("providers.main.model=gpt")
                .unwrap_err()
                .contains("strings need quotes")
        );
        assert!(
            Override::parse("a..b=1")
                .unwrap_err()
                .contains("not a dotted path")
        );
        let o = Override::parse(" gate.max_rounds = 1 ").unwrap();
        assert_eq!(
            (o.path.join("."), o.value.as_str()),
            ("gate.max_rounds".into(), "1")
        );
    }
}
