//! The OpenAI chat-completions wire format: request body, JSON answer and
//! streamed chunks.

use serde_json::{Value, json};

use crate::answer::{Answer, count, malformed};
use crate::classify;
use crate::config::ChatRequest;
use crate::error::LlmError;
use crate::sse::SseEvent;

pub(crate) fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": req.prompt}));
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": stream,
    });
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if stream {
        // Servers that ignore this (llama.cpp) send no usage: we count then.
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// A non-streamed answer.
pub(crate) fn parse_body(body: &[u8], answer: &mut Answer) -> Result<(), LlmError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| malformed("json in the response", e))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(classify::from_stream_error(&v));
    }
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| malformed("response", "it has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    answer.push_text(&content_text(message.get("content")));
    answer.set_finish_reason(choice.get("finish_reason").and_then(Value::as_str));
    answer.set_model(v.get("model").and_then(Value::as_str));
    read_usage(&v, answer);
    answer.done = true;
    Ok(())
}

/// One streamed chunk.
pub(crate) fn on_event(event: &SseEvent, answer: &mut Answer) -> Result<(), LlmError> {
    if let Some(error) = &event.error {
        return Err(match serde_json::from_str::<Value>(error) {
            Ok(v) => classify::from_stream_error(&v),
            Err(_) => LlmError::retryable(None, format!("the server sent an error: {error}")),
        });
    }
    let data = event.data.trim();
    if data.is_empty() {
        return Ok(());
    }
    if data == "[DONE]" {
        answer.done = true;
        return Ok(());
    }
    let v: Value = serde_json::from_str(data).map_err(|e| malformed("stream event", e))?;
    if !v.is_object() {
        return Err(malformed("stream event", "it is not a json object"));
    }
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(classify::from_stream_error(&v));
    }
    answer.set_model(v.get("model").and_then(Value::as_str));
    if let Some(choice) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        if let Some(delta) = choice.get("delta") {
            answer.push_text(&content_text(delta.get("content")));
        }
        answer.set_finish_reason(choice.get("finish_reason").and_then(Value::as_str));
    }
    read_usage(&v, answer);
    Ok(())
}

fn read_usage(v: &Value, answer: &mut Answer) {
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        answer.prompt_tokens = count(usage, "prompt_tokens").or(answer.prompt_tokens);
        answer.completion_tokens = count(usage, "completion_tokens").or(answer.completion_tokens);
    }
}

/// `content` as a string, or the text parts of a content array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn body_always_has_max_tokens() {
        let req = ChatRequest {
            system: Some("be brief".into()),
            prompt: "hi".into(),
            temperature: Some(0.2),
            max_tokens: 64,
        };
        let body = request_body("m", &req, true);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "hi");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(
            body["temperature"].as_f64().map(|t| (t * 10.0).round()),
            Some(2.0)
        );
        let req = ChatRequest {
            system: None,
            temperature: None,
            ..req
        };
        let body = request_body("m", &req, false);
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        assert!(body.get("temperature").is_none());
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn content_parts_and_odd_shapes_never_fail() {
        let mut a = Answer::new(Instant::now());
        let body = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},"finish_reason":null}]}"#;
        parse_body(body, &mut a).unwrap();
        assert_eq!(a.text, "ab");
        let mut a = Answer::new(Instant::now());
        assert!(parse_body(br#"{"choices":[]}"#, &mut a).is_err());
        let mut a = Answer::new(Instant::now());
        let ev = SseEvent {
            data:
                r#"{"choices":[{"delta":{"content":null,"reasoning_content":"hm"}}],"usage":null}"#
                    .into(),
            ..SseEvent::default()
        };
        on_event(&ev, &mut a).unwrap();
        assert_eq!(a.text, "");
    }
}
