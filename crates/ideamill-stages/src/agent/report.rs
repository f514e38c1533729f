//! What an agent CLI printed, read: its final message and the usage it
//! reported, one reader per output format. Pure: unit-tested on the
//! formats' real shapes.

use ideamill_core::config::AgentOutput;
use serde_json::Value;

/// What an agent's stdout says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Its final message, when the format has one and it was found.
    pub message: Option<String>,
    /// The usage it reported; None when it reported none.
    pub usage: Option<Reported>,
    /// The failure it reported itself (e.g. Claude Code's `is_error`).
    pub error: Option<String>,
}

/// Usage as a CLI reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reported {
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// US dollars, when the CLI says.
    pub cost: Option<f64>,
    /// The model it ran, when it says.
    pub model: Option<String>,
}

impl Reported {
    fn add(&mut self, other: &Reported) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost = match (self.cost, other.cost) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        if self.model.is_none() {
            self.model.clone_from(&other.model);
        }
    }
}

/// Read `stdout` as `format` says.
pub fn read(format: AgentOutput, stdout: &str) -> Report {
    match format {
        AgentOutput::Text => Report {
            message: nonempty(stdout.trim()),
            ..Report::default()
        },
        AgentOutput::Claude => claude(stdout),
        AgentOutput::Codex => codex(stdout),
        AgentOutput::Aider => aider(stdout),
        AgentOutput::Gemini => gemini(stdout),
        AgentOutput::Opencode => opencode(stdout),
    }
}

fn nonempty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn int(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The JSON objects of `stdout`: the whole of it if it is one, else each
/// line that is one (a CLI may print a banner or log lines around it).
fn objects(stdout: &str) -> Vec<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(stdout.trim()) {
        return vec![v];
    }
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// `claude -p --output-format json`: one object with `result`, `is_error`,
/// `total_cost_usd`, `usage` and `modelUsage`.
fn claude(stdout: &str) -> Report {
    let Some(v) = objects(stdout).into_iter().rev().find(|v| {
        v.get("type").and_then(Value::as_str) == Some("result") || v.get("result").is_some()
    }) else {
        return Report::default();
    };
    let message = v.get("result").and_then(Value::as_str).map(str::to_owned);
    let usage = v.get("usage").filter(|u| u.is_object()).map(|u| Reported {
        input_tokens: int(u, "input_tokens")
            + int(u, "cache_creation_input_tokens")
            + int(u, "cache_read_input_tokens"),
        output_tokens: int(u, "output_tokens"),
        cost: v.get("total_cost_usd").and_then(Value::as_f64),
        model: v
            .get("modelUsage")
            .and_then(Value::as_object)
            .and_then(|m| m.keys().next().cloned()),
    });
    let usage = usage.or_else(|| {
        v.get("total_cost_usd")
            .and_then(Value::as_f64)
            .map(|cost| Reported {
                cost: Some(cost),
                ..Reported::default()
            })
    });
    let failed = v.get("is_error").and_then(Value::as_bool) == Some(true)
        || v.get("subtype")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("error"));
    Report {
        error: failed.then(|| {
            let subtype = v.get("subtype").and_then(Value::as_str).unwrap_or("error");
            match &message {
                Some(m) if !m.is_empty() => format!("claude reported an error ({subtype}): {m}"),
                _ => format!("claude reported an error ({subtype})"),
            }
        }),
        message,
        usage,
    }
}

/// `codex exec --json`: JSON lines of events. Current versions send
/// `item.completed` (an `agent_message` item's `text`) and `turn.completed`
/// (`usage`); older ones `msg` objects (`agent_message`, `token_count`,
/// `task_complete`).
fn codex(stdout: &str) -> Report {
    let mut report = Report::default();
    let mut turns = Reported::default();
    let mut counted = None::<Reported>;
    let mut any_turn = false;
    for v in objects(stdout) {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "item.completed" => {
                let item = &v["item"];
                let item_type = item
                    .get("type")
                    .or_else(|| item.get("item_type"))
                    .and_then(Value::as_str);
                if matches!(item_type, Some("agent_message" | "assistant_message"))
                    && let Some(text) = item.get("text").and_then(Value::as_str)
                {
                    report.message = Some(text.to_owned());
                }
            }
            "turn.completed" => {
                if let Some(u) = v.get("usage") {
                    any_turn = true;
                    turns.add(&Reported {
                        input_tokens: int(u, "input_tokens"),
                        output_tokens: int(u, "output_tokens"),
                        ..Reported::default()
                    });
                }
            }
            "turn.failed" | "error" => {
                let why = v
                    .pointer("/error/message")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                report.error = Some(format!("codex reported an error: {why}"));
            }
            _ => {}
        }
        let Some(msg) = v.get("msg") else { continue };
        match msg.get("type").and_then(Value::as_str) {
            Some("agent_message") => {
                if let Some(text) = msg.get("message").and_then(Value::as_str) {
                    report.message = Some(text.to_owned());
                }
            }
            Some("task_complete") => {
                if let Some(text) = msg.get("last_agent_message").and_then(Value::as_str) {
                    report.message = Some(text.to_owned());
                }
            }
            // Running totals: the last one counts.
            Some("token_count") => {
                let total = msg.pointer("/info/total_token_usage").unwrap_or(msg);
                counted = Some(Reported {
                    input_tokens: int(total, "input_tokens"),
                    output_tokens: int(total, "output_tokens")
                        + int(total, "reasoning_output_tokens"),
                    ..Reported::default()
                });
            }
            Some("error") => {
                let why = msg
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                report.error = Some(format!("codex reported an error: {why}"));
            }
            _ => {}
        }
    }
    report.usage = if any_turn { Some(turns) } else { counted };
    report
}

/// `2.1k`, `310`, `1.2M`: aider's token counts.
fn aider_count(text: &str) -> Option<u64> {
    let text = text.trim().trim_end_matches(',');
    let (number, scale) = match text.chars().last()? {
        'k' | 'K' => (&text[..text.len() - 1], 1e3),
        'm' | 'M' => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then(|| (value * scale).round() as u64)
}

/// aider: text, with a line per model call like `Tokens: 2.1k sent, 310
/// received. Cost: $0.0089 message, $0.0089 session.` The message is the
/// rest of the text.
fn aider(stdout: &str) -> Report {
    let mut usage = None::<Reported>;
    let mut kept = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.trim().strip_prefix("Tokens: ") else {
            kept.push(line);
            continue;
        };
        let mut call = Reported::default();
        let (tokens, cost) = rest.split_once("Cost:").unwrap_or((rest, ""));
        // "X sent, Y received." (a count may have a dot: "2.1k").
        for piece in tokens.split(',') {
            let piece = piece.trim().trim_end_matches('.');
            let mut words = piece.split_whitespace();
            let (Some(count), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Some(count) = aider_count(count) else {
                continue;
            };
            if what.starts_with("sent") {
                call.input_tokens += count;
            } else if what.starts_with("received") {
                call.output_tokens += count;
            }
        }
        call.cost = cost
            .split(',')
            .find(|p| p.contains("message"))
            .and_then(|p| p.trim().strip_prefix('$'))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|p| p.parse::<f64>().ok());
        usage.get_or_insert_with(Reported::default).add(&call);
    }
    Report {
        message: nonempty(kept.join("\n").trim()),
        usage,
        error: None,
    }
}

/// `gemini --output-format json`: one object with `response` and
/// `stats.models.<model>.tokens` (`prompt`, `candidates`, `thoughts`), or
/// `error`.
fn gemini(stdout: &str) -> Report {
    let Some(v) = objects(stdout)
        .into_iter()
        .rev()
        .find(|v| v.get("response").is_some() || v.get("error").is_some())
    else {
        return Report::default();
    };
    let usage = v
        .pointer("/stats/models")
        .and_then(Value::as_object)
        .map(|models| {
            let mut total = Reported::default();
            for (name, m) in models {
                let t = &m["tokens"];
                total.add(&Reported {
                    input_tokens: int(t, "prompt"),
                    output_tokens: int(t, "candidates") + int(t, "thoughts"),
                    cost: None,
                    model: Some(name.clone()),
                });
            }
            total
        });
    Report {
        message: v.get("response").and_then(Value::as_str).map(str::to_owned),
        usage,
        error: v.get("error").filter(|e| !e.is_null()).map(|e| {
            let why = e
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_owned);
            format!("gemini reported an error: {why}")
        }),
    }
}

/// `opencode run --format json`: JSON lines of events; `text` events carry
/// the message's parts, `step_finish` events the step's tokens and cost.
fn opencode(stdout: &str) -> Report {
    let mut report = Report::default();
    for v in objects(stdout) {
        let part = &v["part"];
        match v.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    report.message = Some(text.to_owned());
                }
            }
            Some("step_finish") => {
                let t = &part["tokens"];
                let cache = &t["cache"];
                report
                    .usage
                    .get_or_insert_with(Reported::default)
                    .add(&Reported {
                        input_tokens: int(t, "input") + int(cache, "read") + int(cache, "write"),
                        output_tokens: int(t, "output") + int(t, "reasoning"),
                        cost: part.get("cost").and_then(Value::as_f64),
                        model: None,
                    });
            }
            Some("error") => {
                let why = v
                    .pointer("/error/data/message")
                    .or_else(|| v.pointer("/error/message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                report.error = Some(format!("opencode reported an error: {why}"));
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(format: AgentOutput, stdout: &str, expected: Report) {
        assert_eq!(read(format, stdout), expected, "stdout:\n{stdout}");
    }

    fn usage(input: u64, output: u64, cost: Option<f64>, model: Option<&str>) -> Option<Reported> {
        Some(Reported {
            input_tokens: input,
            output_tokens: output,
            cost,
            model: model.map(str::to_owned),
        })
    }

    #[test]
    fn claude_json() {
        check(
            AgentOutput::Claude,
            r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2100,"num_turns":3,"result":"Done: wrote main.py","session_id":"s","total_cost_usd":0.0421,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":345},"modelUsage":{"claude-sonnet-4-5":{"inputTokens":12}}}"#,
            Report {
                message: Some("Done: wrote main.py".into()),
                usage: usage(1112, 345, Some(0.0421), Some("claude-sonnet-4-5")),
                error: None,
            },
        );
        check(
            AgentOutput::Claude,
            "{\"type\":\"result\",\"subtype\":\"error_max_turns\",\"is_error\":true,\"total_cost_usd\":0.5}\n",
            Report {
                message: None,
                usage: usage(0, 0, Some(0.5), None),
                error: Some("claude reported an error (error_max_turns)".into()),
            },
        );
        check(AgentOutput::Claude, "not json", Report::default());
    }

    #[test]
    fn codex_jsonl_both_generations() {
        check(
            AgentOutput::Codex,
            concat!(
                "{\"type\":\"thread.started\",\"thread_id\":\"t\"}\n",
                "{\"type\":\"turn.started\"}\n",
                "{\"type\":\"item.completed\",\"item\":{\"id\":\"i0\",\"type\":\"reasoning\",\"text\":\"thinking\"}}\n",
                "{\"type\":\"item.completed\",\"item\":{\"id\":\"i1\",\"type\":\"agent_message\",\"text\":\"All tests pass.\"}}\n",
                "{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":2000,\"cached_input_tokens\":1500,\"output_tokens\":120}}\n",
            ),
            Report {
                message: Some("All tests pass.".into()),
                usage: usage(2000, 120, None, None),
                error: None,
            },
        );
        check(
            AgentOutput::Codex,
            concat!(
                "{\"id\":\"0\",\"msg\":{\"type\":\"token_count\",\"input_tokens\":10,\"output_tokens\":5}}\n",
                "{\"id\":\"0\",\"msg\":{\"type\":\"agent_message\",\"message\":\"first\"}}\n",
                "{\"id\":\"0\",\"msg\":{\"type\":\"token_count\",\"info\":{\"total_token_usage\":{\"input_tokens\":30,\"output_tokens\":9,\"reasoning_output_tokens\":1}}}}\n",
                "{\"id\":\"0\",\"msg\":{\"type\":\"task_complete\",\"last_agent_message\":\"final\"}}\n",
            ),
            Report {
                message: Some("final".into()),
                usage: usage(30, 10, None, None),
                error: None,
            },
        );
    }

    #[test]
    fn aider_text() {
        check(
            AgentOutput::Aider,
            "Aider v0.86\nApplied edit to main.py\nTokens: 2.1k sent, 310 received. Cost: $0.25 message, $0.25 session.\n\
             Done.\nTokens: 1k sent, 1.5k received. Cost: $0.50 message, $0.75 session.\n",
            Report {
                message: Some("Aider v0.86\nApplied edit to main.py\nDone.".into()),
                usage: usage(3100, 1810, Some(0.75), None),
                error: None,
            },
        );
        check(
            AgentOutput::Aider,
            "no usage here\n",
            Report {
                message: Some("no usage here".into()),
                usage: None,
                error: None,
            },
        );
    }

    #[test]
    fn gemini_json() {
        check(
            AgentOutput::Gemini,
            r#"{"response":"Implemented.","stats":{"models":{"gemini-2.5-pro":{"api":{"totalRequests":2},"tokens":{"prompt":900,"candidates":80,"total":1000,"cached":0,"thoughts":20,"tool":0}}}}}"#,
            Report {
                message: Some("Implemented.".into()),
                usage: usage(900, 100, None, Some("gemini-2.5-pro")),
                error: None,
            },
        );
    }

    #[test]
    fn opencode_jsonl() {
        check(
            AgentOutput::Opencode,
            concat!(
                "{\"type\":\"step_start\",\"part\":{}}\n",
                "{\"type\":\"text\",\"part\":{\"text\":\"Working\"}}\n",
                "{\"type\":\"step_finish\",\"part\":{\"cost\":0.25,\"tokens\":{\"input\":100,\"output\":20,\"reasoning\":5,\"cache\":{\"read\":50,\"write\":0}}}}\n",
                "{\"type\":\"text\",\"part\":{\"text\":\"Done\"}}\n",
                "{\"type\":\"step_finish\",\"part\":{\"cost\":0.5,\"tokens\":{\"input\":10,\"output\":2,\"reasoning\":0,\"cache\":{\"read\":0,\"write\":0}}}}\n",
            ),
            Report {
                message: Some("Done".into()),
                usage: usage(160, 27, Some(0.75), None),
                error: None,
            },
        );
    }

    #[test]
    fn text_reports_no_usage() {
        check(
            AgentOutput::Text,
            "  hello\n",
            Report {
                message: Some("hello".into()),
                usage: None,
                error: None,
            },
        );
    }
}
