//! `ideamill add`: put ideas in the queue, all of them in one transaction.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ideamill_core::machine::first_job;
use ideamill_intake::{Format, Limits, parse_ideas};
use ideamill_store::NewItem;
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::Added;
use serde_json::{Map, Value};

use crate::cli::AddArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: AddArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let mut items = match (&args.text, &args.file) {
        (_, Some(file)) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            // Any other extension is read as text, one idea per line.
            let format = Format::from_path(file).unwrap_or(Format::Text);
            parse_ideas(&bytes, format, &Limits::for_add())
                .with_context(|| format!("in {}", file.display()))?
        }
        (Some(dash), None) if dash == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            parse_ideas(&bytes, Format::Text, &Limits::for_add()).context("in stdin")?
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
    let limit = Limits::for_add().max_idea_bytes;
    for (i, item) in items.iter_mut().enumerate() {
        if item.text.trim().is_empty() {
            bail!("idea {} is empty", i + 1);
        }
        if item.text.len() > limit {
            bail!(
                "idea {} is {} bytes long; the limit is {limit}",
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
        output::json(&Added { ids })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_pairs() {
        let m = parse_meta(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(Value::Object(m), serde_json::json!({"a": "1", "b": "x=y"}));
        let err = parse_meta(&["novalue".into()]).unwrap_err().to_string();
        assert_eq!(err, "--meta `novalue` is not KEY=VALUE");
    }
}
