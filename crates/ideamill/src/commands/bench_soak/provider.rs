//! The soak's model provider: an OpenAI-compatible server on loopback that
//! answers most calls and, as a seeded generator picks, is slow, rate
//! limits (429 with `Retry-After`), fails (5xx), cuts its stream or goes
//! silent mid-stream, so the `llm` stage meets the faults a real one has.
//! One request per connection (`Connection: close`); a thread each, so a
//! silent answer holds nothing but its own thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Chunks 400 ms apart: slow, but within the provider's idle timeout.
    Slow,
    RateLimited,
    ServerError,
    /// The stream ends without its end marker.
    Cut,
    /// A few chunks, then nothing, the connection open, past the idle timeout.
    Silent,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::None,
        Fault::Slow,
        Fault::RateLimited,
        Fault::ServerError,
        Fault::Cut,
        Fault::Silent,
    ];

    /// Per 100 calls: 70 fine, 8 slow, 7 rate limited, 6 server errors,
    /// 5 cut, 4 silent.
    fn pick(rng: &mut fastrand::Rng) -> Fault {
        match rng.u32(0..100) {
            0..70 => Fault::None,
            70..78 => Fault::Slow,
            78..85 => Fault::RateLimited,
            85..91 => Fault::ServerError,
            91..96 => Fault::Cut,
            _ => Fault::Silent,
        }
    }

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }

    fn name(self) -> &'static str {
        match self {
            Fault::None => "answered",
            Fault::Slow => "slow",
            Fault::RateLimited => "rate_limited",
            Fault::ServerError => "server_error",
            Fault::Cut => "cut",
            Fault::Silent => "silent",
        }
    }
}

/// The running server: its URL and how many calls got each answer.
pub struct FlakyProvider {
    pub url: String,
    tally: Arc<[AtomicU64; 6]>,
}

impl FlakyProvider {
    /// Start serving; `silence` is how long a silent answer stays open.
    pub fn start(seed: u64, silence: Duration) -> anyhow::Result<FlakyProvider> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        let tally: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let counts = tally.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (rng, counts) = (rng.clone(), counts.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &rng, &counts, silence);
                });
            }
        });
        Ok(FlakyProvider { url, tally })
    }

    /// Calls by answer, e.g. `("rate_limited", 12)`.
    pub fn tally(&self) -> Vec<(&'static str, u64)> {
        Fault::ALL
            .iter()
            .map(|f| (f.name(), self.tally[f.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

fn serve(
    conn: TcpStream,
    rng: &Mutex<fastrand::Rng>,
    tally: &[AtomicU64; 6],
    silence: Duration,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut conn = conn;
    if body.is_empty() {
        // The model-list probe of `validate`: always fine.
        return respond(&mut conn, 200, &[], "{\"data\":[]}");
    }
    let fault = match rng.lock() {
        Ok(mut rng) => Fault::pick(&mut rng),
        Err(_) => Fault::None,
    };
    tally[fault.index()].fetch_add(1, Ordering::Relaxed);
    let streamed = String::from_utf8_lossy(&body).contains("\"stream\":true");
    let words = [
        "A plan:",
        " read the input,",
        " do the work,",
        " print the result.",
    ];
    match fault {
        Fault::RateLimited => respond(
            &mut conn,
            429,
            &[("Retry-After", "1")],
            "{\"error\":{\"message\":\"rate limited\",\"type\":\"rate_limit\"}}",
        ),
        Fault::ServerError => respond(
            &mut conn,
            if rng.lock().map(|mut r| r.bool()).unwrap_or(true) {
                500
            } else {
                503
            },
            &[],
            "{\"error\":{\"message\":\"overloaded\"}}",
        ),
        Fault::None | Fault::Slow if !streamed => {
            let answer = serde_json::json!({
                "model": "soak",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}
            });
            if fault == Fault::Slow {
                std::thread::sleep(Duration::from_millis(1500));
            }
            respond(&mut conn, 200, &[], &answer.to_string())
        }
        Fault::None | Fault::Slow => {
            let gap = Duration::from_millis(if fault == Fault::Slow { 400 } else { 5 });
            stream_head(&mut conn)?;
            for w in words {
                std::thread::sleep(gap);
                chunk(&mut conn, &delta(w, None))?;
            }
            chunk(&mut conn, &delta("", Some("stop")))?;
            chunk(&mut conn, "data: [DONE]\n\n")?;
            conn.write_all(b"0\r\n\r\n")
        }
        Fault::Cut | Fault::Silent => {
            stream_head(&mut conn)?;
            for w in &words[..2] {
                chunk(&mut conn, &delta(w, None))?;
            }
            if fault == Fault::Silent {
                std::thread::sleep(silence);
            }
            conn.write_all(b"0\r\n\r\n")
        }
    }
}

fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
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

fn chunk(conn: &mut TcpStream, data: &str) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    conn.flush()
}

fn delta(text: &str, finish: Option<&str>) -> String {
    let delta = if finish.is_some() {
        serde_json::json!({})
    } else {
        serde_json::json!({"content": text})
    };
    let event = serde_json::json!({"model": "soak", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {event}\n\n")
}
