//! A server-sent events parser: bytes in, complete events out.

/// Longest line accepted: a server that never sends a newline must not
/// make us buffer without end.
const MAX_LINE_BYTES: usize = 4 << 20;

/// One dispatched event: its `event:` name (if any) and its `data:` lines
/// joined with `\n`. An `error:` field (llama.cpp) is kept apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    pending: SseEvent,
    has_fields: bool,
}

impl SseParser {
    /// Feeds bytes, appending every event they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.on_line(&line, out);
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_LINE_BYTES {
            return Err(format!(
                "a stream line is longer than {} MiB",
                MAX_LINE_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// At the end of the body: dispatches an event left without its blank
    /// line (servers that end with `data: [DONE]\n`).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.on_line(&line, out);
        }
        self.on_line(b"", out);
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_fields {
                out.push(std::mem::take(&mut self.pending));
                self.has_fields = false;
            }
            return;
        }
        if line[0] == b':' {
            return; // A comment: keep-alives like `: OPENROUTER PROCESSING`.
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_fields && !self.pending.data.is_empty() {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
            }
            "event" => self.pending.event = Some(value.to_string()),
            "error" => self.pending.error = Some(value.to_string()),
            _ => return, // `id`, `retry` and unknown fields do not matter here.
        }
        self.has_fields = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            data: d.into(),
            ..SseEvent::default()
        }
    }

    #[test]
    fn events_split_anywhere() {
        let whole = b"data: {\"a\":1}\n\n: comment\n\nevent: ping\ndata: x\r\n\r\ndata: [DONE]\n\n";
        let expected = vec![
            data("{\"a\":1}"),
            SseEvent {
                event: Some("ping".into()),
                data: "x".into(),
                error: None,
            },
            data("[DONE]"),
        ];
        assert_eq!(parse(&[whole]), expected);
        for split in 0..whole.len() {
            assert_eq!(
                parse(&[&whole[..split], &whole[split..]]),
                expected,
                "{split}"
            );
        }
    }

    #[test]
    fn multi_line_data_and_missing_final_blank_line() {
        assert_eq!(
            parse(&[b"data: a\ndata: b\n\ndata:c"]),
            vec![data("a\nb"), data("c")]
        );
        assert_eq!(parse(&[b"id: 1\nretry: 5\n\n"]), vec![]);
    }

    #[test]
    fn multibyte_characters_split_across_chunks() {
        let whole = "data: héllo\n\n".as_bytes();
        assert_eq!(parse(&[&whole[..8], &whole[8..]]), vec![data("héllo")]);
    }

    #[test]
    fn error_field() {
        let events = parse(&[b"error: {\"message\":\"boom\"}\n\n"]);
        assert_eq!(events[0].error.as_deref(), Some("{\"message\":\"boom\"}"));
    }

    #[test]
    fn endless_line_is_an_error() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 1 << 20];
        let mut out = Vec::new();
        let mut result = Ok(());
        for _ in 0..5 {
            result = p.feed(&chunk, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }
}
