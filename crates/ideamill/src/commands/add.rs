//! `ideamill add`: put ideas in the queue, all of them in one transaction.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ideamill_core::machine::first_job;
use ideamill_engine::now_millis;
use ideamill_store::NewItem;
use serde_json::{Map, Value};

use crate::cli::AddArgs;
use crate::{output, project};

/// Ideas longer than this are refused: they are prompts, not documents.
const MAX_IDEA_BYTES: usize = 256 * 1024;

pub async fn run(config: Option<&Path>, args: AddArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let mut items = match (&args.text, &args.file) {
        (_, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            parse_ideas(&text, ext).with_context(|| format!("in {}", file.display()))?
        }
        (Some(dash), None) if dash == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            parse_ideas(&text, "txt").context("in stdin")?
        }
        (Some(text), None) => vec![NewItem {
            text: text.trim().to_string(),
            metadata: Value::Object(Map::new()),
        }],
        (None, None) => {
            bail!("nothing to add: give the idea as text, --file FILE, or - to read stdin")
        }
    };
    let meta = parse_meta(&args.meta)?;
    for (i, item) in items.iter_mut().enumerate() {
        if item.text.trim().is_empty() {
            bail!("idea {} is empty", i + 1);
        }
        if item.text.len() > MAX_IDEA_BYTES {
            bail!(
                "idea {} is {} bytes long; the limit is {MAX_IDEA_BYTES}",
                i + 1,
                item.text.len()
            );
        }
        if let Value::Object(m) = &mut item.metadata {
            m.extend(meta.clone());
        }
    }
    if items.is_empty() {
        bail!("no ideas found in the input");
    }
    let store = project::open_store(&config).await?;
    let ids = store
        .add_items(&items, &first_job(&config), now_millis())
        .await?;
    store.close().await;
    if args.json {
        output::json(&serde_json::json!({ "ids": ids }))?;
    } else if ids.len() == 1 {
        println!("Added item {}.", ids[0]);
    } else {
        println!("Added {} items: {}.", ids.len(), summarize_ids(&ids));
    }
    Ok(ExitCode::SUCCESS)
}

fn summarize_ids(ids: &[i64]) -> String {
    match (ids.first(), ids.last()) {
        (Some(a), Some(b)) if b - a + 1 == ids.len() as i64 => format!("{a}–{b}"),
        _ => ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn parse_meta(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Value::String(v.to_string()))),
            _ => bail!("--meta `{p}` is not KEY=VALUE"),
        })
        .collect()
}

/// Ideas from text: `txt` is one per non-empty line; `json` is an object or
/// an array of objects or strings; `jsonl` is one JSON value per line.
pub fn parse_ideas(text: &str, ext: &str) -> anyhow::Result<Vec<NewItem>> {
    match ext {
        "json" => {
            let value: Value = serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!(
                    "invalid JSON at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                )
            })?;
            match value {
                Value::Array(values) => values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| idea_from_json(v).with_context(|| format!("entry {}", i + 1)))
                    .collect(),
                other => Ok(vec![idea_from_json(other)?]),
            }
        }
        "jsonl" | "ndjson" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    anyhow::anyhow!("invalid JSON at line {}, column {}: {e}", i + 1, e.column())
                })?;
                idea_from_json(v).with_context(|| format!("line {}", i + 1))
            })
            .collect(),
        _ => {
            if text.contains('\0') {
                bail!("this looks like a binary file, not text");
            }
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| NewItem {
                    text: l.to_string(),
                    metadata: Value::Object(Map::new()),
                })
                .collect())
        }
    }
}

/// The idea's text comes from the first of these fields present; every
/// other field is kept as metadata.
const TEXT_FIELDS: &[&str] = &["text", "idea", "prompt", "description", "title"];

fn idea_from_json(value: Value) -> anyhow::Result<NewItem> {
    match value {
        Value::String(text) => Ok(NewItem {
            text,
            metadata: Value::Object(Map::new()),
        }),
        Value::Object(mut map) => {
            let field = TEXT_FIELDS
                .iter()
                .find(|f| map.get(**f).is_some_and(Value::is_string))
                .with_context(|| {
                    format!(
                        "an idea object needs a text field (one of: {})",
                        TEXT_FIELDS.join(", ")
                    )
                })?;
            let Some(Value::String(text)) = map.remove(*field) else {
                unreachable!("checked above")
            };
            if let Some(Value::Object(meta)) = map.remove("metadata") {
                map.extend(meta);
            }
            Ok(NewItem {
                text,
                metadata: Value::Object(map),
            })
        }
        other => bail!(
            "an idea must be a string or an object, found {}",
            kind(&other)
        ),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, ext: &str, expected: &[(&str, &str)]) {
        let items = parse_ideas(text, ext).unwrap();
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

    fn check_err(text: &str, ext: &str, needle: &str) {
        let err = format!("{:#}", parse_ideas(text, ext).unwrap_err());
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
    }

    #[test]
    fn formats() {
        check("one\n\n  two  \n", "txt", &[("one", "{}"), ("two", "{}")]);
        check(
            r#"{"text": "a", "tag": 1}"#,
            "json",
            &[("a", r#"{"tag":1}"#)],
        );
        check(
            r#"["a", {"idea": "b", "metadata": {"k": "v"}}]"#,
            "json",
            &[("a", "{}"), ("b", r#"{"k":"v"}"#)],
        );
        check(
            "{\"prompt\": \"x\"}\n\n\"y\"\n",
            "jsonl",
            &[("x", "{}"), ("y", "{}")],
        );
    }

    #[test]
    fn errors() {
        check_err("[1, 2", "json", "line 1, column 5");
        check_err(r#"[{"nope": 1}]"#, "json", "entry 1");
        check_err("\"ok\"\n{bad", "jsonl", "line 2");
        check_err("a\0b", "txt", "binary");
    }
}
