//! What the soak feeds the mill: a steady stream of ideas through the HTTP
//! API and the inbox (written aside, then renamed in), and the hostile
//! kind: malformed and dangerous inbox files, malformed API requests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ideamill_core::Millis;
use ideamill_sys::clock::now_millis;

/// Ideas the mill acknowledged, and how the rest went.
#[derive(Debug, Default)]
pub struct Intake {
    /// Item ids the API answered with.
    pub api_ids: Vec<(i64, Millis)>,
    /// Good files renamed into the inbox, by name.
    pub inbox_files: Vec<String>,
    /// Ideas sent in those files.
    pub inbox_ideas: u64,
    /// API calls that got no `201` (engine down, store full…): their ideas
    /// were not accepted.
    pub api_refused: BTreeMap<String, u64>,
    /// Hostile files dropped, `(name, kind)`.
    pub hostile_files: Vec<(String, &'static str)>,
    /// Answers to malformed requests, by kind and status (`unreachable`
    /// when the server was down).
    pub malformed: BTreeMap<String, u64>,
}

/// Send one batch of ideas: through the API, or as an inbox file.
pub async fn send_batch(
    http: &reqwest::Client,
    api: &str,
    inbox: &Path,
    rng: &mut fastrand::Rng,
    serial: u64,
    intake: &std::sync::Mutex<Intake>,
) {
    let n = rng.usize(1..=3);
    let ideas: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "soak idea {serial}.{i}: a tool that {}",
                WHAT[rng.usize(..WHAT.len())]
            )
        })
        .collect();
    if rng.u32(0..3) < 2 {
        let answer = post_json(http, &format!("{api}/api/items"), &serde_json::json!(ideas))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().as_u16() == 201 => {
                match r.bytes().await.map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(v) => {
                        let ids: Vec<i64> = v["ids"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|i| i.as_i64()).collect())
                            .unwrap_or_default();
                        let now = now_millis();
                        if let Ok(mut intake) = intake.lock() {
                            intake.api_ids.extend(ids.into_iter().map(|id| (id, now)));
                        }
                        return;
                    }
                    Err(_) => "201 unreadable".to_string(),
                }
            }
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "unreachable".into(),
        };
        if let Ok(mut intake) = intake.lock() {
            *intake.api_refused.entry(outcome).or_default() += 1;
        }
    } else {
        let name = format!("ideas-{serial}.txt");
        let aside = inbox.join(format!(".{name}.part"));
        let written = std::fs::write(&aside, ideas.join("\n") + "\n")
            .and_then(|()| std::fs::rename(&aside, inbox.join(&name)));
        if written.is_ok()
            && let Ok(mut intake) = intake.lock()
        {
            intake.inbox_files.push(name);
            intake.inbox_ideas += n as u64;
        }
    }
}

const WHAT: [&str; 6] = [
    "counts words in a file",
    "renames photos by date",
    "checks links in a page",
    "sums a CSV column",
    "converts Markdown tables",
    "finds duplicate files",
];

/// The hostile files, dropped in turn.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// One byte past `[inbox] max_file_bytes`.
    Huge,
    /// Random bytes.
    Binary,
    /// A link to a file outside the inbox.
    Symlink,
    /// A FIFO nobody writes to: a reader would block forever.
    Fifo,
    InvalidUtf8,
    /// JSON nested 100,000 deep.
    DeepJson,
    /// One more idea than a file may hold: refused, never 10,001 items.
    WideJson,
    /// Only blank lines: no idea.
    Blank,
}

impl Hostile {
    const ALL: [Hostile; 8] = [
        Hostile::Huge,
        Hostile::Binary,
        Hostile::Symlink,
        Hostile::Fifo,
        Hostile::InvalidUtf8,
        Hostile::DeepJson,
        Hostile::WideJson,
        Hostile::Blank,
    ];

    fn name(self) -> &'static str {
        match self {
            Hostile::Huge => "huge",
            Hostile::Binary => "binary",
            Hostile::Symlink => "symlink",
            Hostile::Fifo => "fifo",
            Hostile::InvalidUtf8 => "invalid-utf8",
            Hostile::DeepJson => "json-bomb-deep",
            Hostile::WideJson => "json-bomb-wide",
            Hostile::Blank => "blank",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Hostile::DeepJson | Hostile::WideJson => "json",
            Hostile::Blank => "md",
            Hostile::Huge
            | Hostile::Binary
            | Hostile::Symlink
            | Hostile::Fifo
            | Hostile::InvalidUtf8 => "txt",
        }
    }

    fn make(self, path: &Path, serial: u64, max_file_bytes: u64) -> std::io::Result<()> {
        match self {
            Hostile::Huge => {
                std::fs::write(path, "an idea\n".repeat(max_file_bytes as usize / 8 + 1))
            }
            Hostile::Binary => {
                let mut rng = fastrand::Rng::with_seed(serial);
                std::fs::write(path, (0..8192).map(|_| rng.u8(..)).collect::<Vec<u8>>())
            }
            Hostile::Symlink => std::os::unix::fs::symlink("/etc/passwd", path),
            Hostile::Fifo => {
                let made = std::process::Command::new("mkfifo").arg(path).status()?;
                if made.success() {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("mkfifo: {made}")))
                }
            }
            Hostile::InvalidUtf8 => std::fs::write(path, b"caf\xe9 ideas \xff\xfe\n"),
            Hostile::DeepJson => std::fs::write(path, "[".repeat(100_000) + &"]".repeat(100_000)),
            Hostile::WideJson => {
                let ideas: Vec<String> = (0..10_001).map(|i| format!("w{serial}-{i}")).collect();
                std::fs::write(path, serde_json::json!(ideas).to_string())
            }
            Hostile::Blank => std::fs::write(path, "   \n\n"),
        }
    }
}

/// Drop the `serial`-th hostile file into the inbox, written in place (the
/// worst way). Its name and kind.
pub fn drop_hostile(inbox: &Path, serial: u64, max_file_bytes: u64) -> (String, &'static str) {
    let kind = Hostile::ALL[serial as usize % Hostile::ALL.len()];
    let name = format!("{}-{serial}.{}", kind.name(), kind.extension());
    if let Err(e) = kind.make(&inbox.join(&name), serial, max_file_bytes) {
        eprintln!("Could not drop the hostile file {name}: {e}");
    }
    (name, kind.name())
}

/// Send each malformed request once; tally the answers.
pub async fn malformed_requests(
    http: &reqwest::Client,
    api: &str,
    tally: &mut BTreeMap<String, u64>,
) {
    let items = format!("{api}/api/items");
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let huge = format!("[\"{}\"]", "x".repeat(3 << 20));
    let requests: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "bad-json",
            http.post(&items)
                .header("content-type", "application/json")
                .body("{not json"),
        ),
        (
            "wrong-shape",
            post_json(http, &items, &serde_json::json!({"ideas": 5})),
        ),
        (
            "binary-text",
            http.post(&items)
                .header("content-type", "text/plain")
                .header("x-requested-with", "ideamill")
                .body(vec![0xffu8, 0xfe, 0, 1, 2, b'\n', 0xc3]),
        ),
        (
            "deep-json",
            http.post(&items)
                .header("content-type", "application/json")
                .body(deep),
        ),
        (
            "huge-body",
            http.post(&items)
                .header("content-type", "application/json")
                .body(huge),
        ),
        (
            "unknown-type",
            http.post(&items)
                .header("content-type", "application/xml")
                .header("x-requested-with", "ideamill")
                .body("<idea/>"),
        ),
        ("bad-id", http.get(format!("{items}/not-a-number"))),
        (
            "huge-id",
            http.get(format!("{items}/99999999999999999999999")),
        ),
        (
            "bad-query",
            http.get(format!("{items}?limit=-1&state=bogus&before=x")),
        ),
        (
            "retry-nothing",
            post_json(http, &format!("{items}/0/retry"), &serde_json::Value::Null),
        ),
        ("wrong-method", http.delete(&items)),
        (
            "foreign-host",
            http.get(&items).header("host", "evil.example"),
        ),
        (
            "cross-site",
            post_json(http, &items, &serde_json::json!(["x"]))
                .header("origin", "http://evil.example"),
        ),
    ];
    for (kind, request) in requests {
        let outcome = match request.timeout(Duration::from_secs(10)).send().await {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "unreachable".into(),
        };
        *tally.entry(format!("{kind} {outcome}")).or_default() += 1;
    }
}

fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
}
