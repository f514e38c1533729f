//! A fake OpenAI-compatible server on loopback, scripted per request, for
//! driving `llm` stages into every fault the real world has.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A streamed answer in `chunks`, each sent `gap` after the last, ending
    /// with `[DONE]`.
    Stream { chunks: Vec<String>, gap: Duration },
    /// A non-streamed JSON answer with usage.
    Json { text: String },
    /// An HTTP error with a JSON body and extra headers.
    Error {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// A 200 whose body is not JSON.
    Garbage,
    /// Streams `chunks` and then stays silent, connection open, for `hang`.
    StreamThenHang { chunks: Vec<String>, hang: Duration },
    /// Streams `chunks` and closes the connection without `[DONE]`.
    StreamThenClose { chunks: Vec<String> },
}

pub struct FakeProvider {
    pub url: String,
    /// The requests' bodies, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

/// How the server picks a request's reply.
#[derive(Clone)]
enum Script {
    /// By the connection's number: these in order, the last one repeating.
    InOrder(Arc<Vec<Reply>>),
    /// By what the request's messages say (as JSON text): a whole answer.
    Answer(fn(&str) -> String),
}

impl FakeProvider {
    /// Serve `replies` in order; past the end, the last one repeats.
    pub fn start(replies: Vec<Reply>) -> FakeProvider {
        Self::serve_with(Script::InOrder(Arc::new(replies)))
    }

    /// Answer every request, whole (not streamed), with what `answer` makes
    /// of its messages (the JSON text of the request's `messages`).
    pub fn answering(answer: fn(&str) -> String) -> FakeProvider {
        Self::serve_with(Script::Answer(answer))
    }

    fn serve_with(script: Script) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let (script, seen) = (script.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, i, &script, &seen);
                });
            }
        });
        FakeProvider { url, requests }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn serve(
    conn: TcpStream,
    index: usize,
    script: &Script,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if body.is_empty() {
        // A probe (GET /models): answer it without counting it.
        return respond(conn, 200, "application/json", &[], "{\"data\":[]}");
    }
    let reply = match script {
        Script::InOrder(replies) => match replies.get(index).or(replies.last()) {
            Some(reply) => reply.clone(),
            None => return Ok(()),
        },
        Script::Answer(answer) => {
            let request: serde_json::Value =
                serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            Reply::Json {
                text: answer(&request["messages"].to_string()),
            }
        }
    };
    seen.lock().unwrap().push(body);
    let mut conn = conn;
    match &reply {
        Reply::Json { text } => {
            let body = serde_json::json!({
                "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            });
            respond(conn, 200, "application/json", &[], &body.to_string())
        }
        Reply::Error {
            status,
            body,
            headers,
        } => respond(conn, *status, "application/json", headers, body),
        Reply::Garbage => respond(conn, 200, "application/json", &[], "{this is not json"),
        Reply::Stream { chunks, gap } => {
            stream_head(&mut conn)?;
            for c in chunks {
                std::thread::sleep(*gap);
                write_chunk(&mut conn, &delta(c))?;
            }
            write_chunk(&mut conn, &finish())?;
            write_chunk(&mut conn, "data: [DONE]\n\n")?;
            conn.write_all(b"0\r\n\r\n")
        }
        Reply::StreamThenHang { chunks, hang } => {
            stream_head(&mut conn)?;
            for c in chunks {
                write_chunk(&mut conn, &delta(c))?;
            }
            std::thread::sleep(*hang);
            Ok(())
        }
        Reply::StreamThenClose { chunks } => {
            stream_head(&mut conn)?;
            for c in chunks {
                write_chunk(&mut conn, &delta(c))?;
            }
            conn.write_all(b"0\r\n\r\n")
        }
    }
}

fn respond(
    mut conn: TcpStream,
    status: u16,
    kind: &str,
    headers: &[(String, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}

fn stream_head(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
}

fn write_chunk(conn: &mut TcpStream, data: &str) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    conn.flush()
}

fn delta(text: &str) -> String {
    let event = serde_json::json!({"model": "fake", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {event}\n\n")
}

fn finish() -> String {
    let event = serde_json::json!({"model": "fake", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    format!("data: {event}\n\n")
}
