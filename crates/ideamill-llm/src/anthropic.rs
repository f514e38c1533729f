//! Anthropic's Messages API wire format: request body, JSON answer and
//! streamed events.

use serde_json::{Value, json};

use crate::answer::{Answer, count, malformed};
use crate::classify;
use crate::config::ChatRequest;
use crate::error::LlmError;
use crate::sse::SseEvent;

/// The API version this module speaks.
pub(crate) const API_VERSION: &str = "2023-06-01";

pub(crate) fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens,
        "messages": [{"role": "user", "content": req.prompt}],
        "stream": stream,
    });
    if let Some(system) = &req.system {
        body["system"] = json!(system);
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// A non-streamed answer.
pub(crate) fn parse_body(body: &[u8], answer: &mut Answer) -> Result<(), LlmError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| malformed("json in the response", e))?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(classify::from_stream_error(&v));
    }
    let content = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("response", "it has no content"))?;
    for block in content {
        if block.get("type").and_then(Value::as_str) == Some("text") {
            answer.push_text(block.get("text").and_then(Value::as_str).unwrap_or(""));
        }
    }
    answer.set_finish_reason(v.get("stop_reason").and_then(Value::as_str));
    answer.set_model(v.get("model").and_then(Value::as_str));
    if let Some(usage) = v.get("usage") {
        answer.prompt_tokens = count(usage, "input_tokens");
        answer.completion_tokens = count(usage, "output_tokens");
    }
    answer.done = true;
    Ok(())
}

/// One streamed event: `message_start`, `content_block_delta`,
/// `message_delta`, `message_stop`, `ping`, `error`, ...
pub(crate) fn on_event(event: &SseEvent, answer: &mut Answer) -> Result<(), LlmError> {
    let data = event.data.trim();
    if data.is_empty() {
        return Ok(());
    }
    let v: Value = serde_json::from_str(data).map_err(|e| malformed("stream event", e))?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .or(event.event.as_deref())
        .unwrap_or("");
    match kind {
        "message_start" => {
            let message = v.get("message").unwrap_or(&Value::Null);
            answer.set_model(message.get("model").and_then(Value::as_str));
            if let Some(usage) = message.get("usage") {
                answer.prompt_tokens = count(usage, "input_tokens").or(answer.prompt_tokens);
                answer.completion_tokens =
                    count(usage, "output_tokens").or(answer.completion_tokens);
            }
        }
        "content_block_delta" => {
            let delta = v.get("delta").unwrap_or(&Value::Null);
            if delta.get("type").and_then(Value::as_str) == Some("text_delta") {
                answer.push_text(delta.get("text").and_then(Value::as_str).unwrap_or(""));
            }
        }
        "message_delta" => {
            let delta = v.get("delta").unwrap_or(&Value::Null);
            answer.set_finish_reason(delta.get("stop_reason").and_then(Value::as_str));
            // Usage here is cumulative: it replaces message_start's.
            if let Some(usage) = v.get("usage") {
                answer.prompt_tokens = count(usage, "input_tokens").or(answer.prompt_tokens);
                answer.completion_tokens =
                    count(usage, "output_tokens").or(answer.completion_tokens);
            }
        }
        "message_stop" => answer.done = true,
        "error" => return Err(classify::from_stream_error(&v)),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let req = ChatRequest {
            system: Some("sys".into()),
            prompt: "hi".into(),
            temperature: None,
            max_tokens: 10,
        };
        let body = request_body("claude", &req, true);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["stream"], true);
        assert!(body.get("temperature").is_none());
    }
}
