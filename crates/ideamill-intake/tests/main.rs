//! Integration tests of intake: real files in a real inbox folder, a real
//! SQLite store, the real watcher (inotify) and rescan; and legacy folders
//! of several shapes imported for real. Every inbox test ends with an audit
//! that nothing was lost.

// A failed test is a panic: unwrap and expect are how these tests say so,
// helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod legacy;
mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use ideamill_core::machine::first_job;
use ideamill_intake::inbox::write_atomic;
use ideamill_store::{EventFilter, IntakeSource, NewItem, event_kind};
use sha2::{Digest, Sha256};
use util::*;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_is_taken_in_one_transaction_per_file() {
    let p = Project::new("settle = \"200ms\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    p.drop_file(
        "lines.txt",
        "a CSV to JSON converter\n\n  a URL shortener  \n",
    );
    p.drop_file(
        "one.md",
        "# A markdown idea\n\nWith a body.\n\n- and a list\n",
    );
    p.drop_file(
        "many.json",
        r#"[{"idea": "json idea one", "tag": "x"}, "json idea two"]"#,
    );
    p.drop_file(
        "single.json",
        r#"{"title": "a title only idea", "metadata": {"from": "test"}}"#,
    );
    p.drop_file("lines.jsonl", "{\"text\": \"jsonl one\"}\n\"jsonl two\"\n");
    wait_filed(&p, 5, LIMIT).await;
    inbox.stop().await;

    let mut texts = p.texts().await;
    texts.sort();
    assert_eq!(
        texts,
        [
            "# A markdown idea\n\nWith a body.\n\n- and a list",
            "a CSV to JSON converter",
            "a URL shortener",
            "a title only idea",
            "json idea one",
            "json idea two",
            "jsonl one",
            "jsonl two",
        ]
    );
    let files = p.files();
    assert_eq!(
        files.processed,
        [
            "lines.jsonl",
            "lines.txt",
            "many.json",
            "one.md",
            "single.json"
        ]
    );
    assert_eq!(files.sidecars.len(), 5);
    // The sidecar lists the file's items; metadata comes along.
    let sidecar = p.sidecar_of("many.json");
    assert_eq!(sidecar["file"], "many.json");
    assert!(sidecar["content"].as_str().unwrap().starts_with("sha256:"));
    let ids = sidecar["items"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    let first = p.store.item(ids[0].as_i64().unwrap()).await.unwrap();
    assert_eq!(first.item.text, "json idea one");
    assert_eq!(first.item.metadata, serde_json::json!({"tag": "x"}));
    assert_eq!(first.item.stage.as_deref(), Some("draft"));
    let md = p
        .store
        .item(p.sidecar_of("one.md")["items"][0].as_i64().unwrap());
    assert_eq!(
        md.await.unwrap().item.metadata,
        serde_json::json!({"title": "A markdown idea"})
    );
    let taken = p
        .store
        .events(&EventFilter {
            kind: Some(event_kind::INBOX_TAKEN.into()),
            limit: 100,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(taken.len(), 5, "one event per file: {taken:#?}");
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_rejected_with_their_line_and_column_and_good_ones_still_taken() {
    let p = Project::new(
        "settle = \"200ms\"\nmax_file_bytes = 4096\nmax_ideas = 3\nmax_idea_bytes = 100",
    )
    .await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    p.drop_file("garbage.json", "this is not JSON at all\n");
    p.drop_file(
        "truncated.json",
        "[\n  {\"text\": \"first\"},\n  {\"text\": \"sec",
    );
    p.drop_file(
        "wrong.json",
        "[\n  {\"text\": \"ok\"},\n  {\"name\": 1}\n]\n",
    );
    p.drop_file(
        "binary.txt",
        b"\x7fELF\x02\x01\x01\x00\x00\x00garbage\xff\xfe",
    );
    p.drop_file("not-utf8.txt", b"fine line\n\xc3\x28 broken\n");
    p.drop_file("oversized.txt", "an idea\n".repeat(600));
    p.drop_file("too-many.txt", "one\ntwo\nthree\nfour\n");
    p.drop_file(
        "too-long.jsonl",
        format!("\"short\"\n\"{}\"\n", "x".repeat(101)),
    );
    p.drop_file("empty.txt", "\n\n");
    p.drop_file("notes.csv", "a,b,c\n");
    p.drop_file("good.txt", "the one good idea\n");
    wait_filed(&p, 11, LIMIT).await;
    inbox.stop().await;

    assert_eq!(p.texts().await, ["the one good idea"]);
    let files = p.files();
    assert_eq!(files.processed, ["good.txt"]);
    assert_eq!(files.rejected.len(), 10);
    assert_eq!(files.errors.len(), 10, "each with its reason");
    let check = |name: &str, needle: &str| {
        let reason = p.error_of(name);
        assert!(
            reason.starts_with(&format!("{name}: {needle}")),
            "{name}: {reason:?} should start with {needle:?}"
        );
        assert!(reason.contains("none of its ideas were added"), "{reason}");
    };
    check(
        "garbage.json",
        "line 1, column 2: invalid JSON: expected ident",
    );
    check(
        "truncated.json",
        "line 3, column 15: invalid JSON: EOF while parsing a string",
    );
    check(
        "wrong.json",
        "line 3, column 3: entry 2: an idea object needs a text field",
    );
    check(
        "binary.txt",
        "line 1, column 8: this looks like a binary file, not text",
    );
    check(
        "not-utf8.txt",
        "line 2, column 1: this is not UTF-8 text (a binary file?)",
    );
    check(
        "oversized.txt",
        "line 1, column 1: the file is 4800 bytes; the limit is 4096 bytes",
    );
    check(
        "too-many.txt",
        "line 4, column 1: more than 3 ideas in the file; the limit is 3",
    );
    check(
        "too-long.jsonl",
        "line 2, column 1: this idea is 101 bytes long; the limit is 100 bytes",
    );
    check("empty.txt", "line 1, column 1: no ideas in the file");
    check("notes.csv", "not an idea file: the inbox takes .txt, .md");
    // The rejected files are untouched.
    assert_eq!(
        std::fs::read(p.layout().rejected.join("oversized.txt"))
            .unwrap()
            .len(),
        4800
    );
    let rejected = p
        .store
        .events(&EventFilter {
            kind: Some(event_kind::INBOX_REJECTED.into()),
            limit: 100,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rejected.len(), 10);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_in_chunks_is_taken_whole_once_it_settles() {
    let p = Project::new("settle = \"1500ms\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    // A writer that pauses between chunks, each pause shorter than the
    // settle time; the last chunk ends mid-way through nothing.
    let path = p.inbox().join("slow.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    let lines: Vec<String> = (1..=12)
        .map(|i| format!("{{\"text\": \"slow idea {i}\"}}\n"))
        .collect();
    for line in &lines {
        // Each line in two writes, so a premature read would see half a line.
        let (a, b) = line.split_at(line.len() / 2);
        f.write_all(a.as_bytes()).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.write_all(b.as_bytes()).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            p.files().processed.is_empty(),
            "taken while still being written"
        );
    }
    drop(f);
    wait_filed(&p, 1, LIMIT).await;
    inbox.stop().await;
    let texts = p.texts().await;
    assert_eq!(texts.len(), 12, "{texts:?}");
    assert_eq!(texts[11], "slow idea 12");
    assert_eq!(p.files().processed, ["slow.jsonl"]);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_in_is_taken_at_once_and_temporary_names_are_left_alone() {
    // A settle time and a rescan far longer than the wait: only the rename
    // event can explain a quick take.
    let p = Project::new("settle = \"30s\"\nrescan = \"1h\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    p.write_in_place("atomic.json.tmp", r#"["renamed idea"]"#);
    p.write_in_place("upload.txt.part", "partial idea\n");
    p.write_in_place(".hidden.txt", "hidden idea\n");
    let start = Instant::now();
    std::fs::rename(
        p.inbox().join("atomic.json.tmp"),
        p.inbox().join("atomic.json"),
    )
    .unwrap();
    let taken = wait_until(Duration::from_secs(10), || async {
        p.files().processed == ["atomic.json"]
    })
    .await;
    assert!(taken, "{:#?}", p.files());
    let took = start.elapsed();
    // Moved in from another folder: the same.
    p.drop_file("moved.txt", "moved idea\n");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.files().processed.len() == 2
        })
        .await
    );
    inbox.stop().await;
    eprintln!("renamed-in file taken in {took:?}");
    assert!(took < Duration::from_secs(10));
    let mut texts = p.texts().await;
    texts.sort();
    assert_eq!(texts, ["moved idea", "renamed idea"]);
    // The temporary and hidden files were never touched.
    let mut left: Vec<String> = std::fs::read_dir(p.inbox())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".ideamill-intake.lock")
        .collect();
    left.sort();
    assert_eq!(left, [".hidden.txt", "upload.txt.part"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_files_dropped_at_once_are_all_taken() {
    let p = Project::new("settle = \"300ms\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    let staging = p.staging();
    for i in 0..1000 {
        std::fs::write(
            staging.join(format!("f{i:04}.txt")),
            format!("idea {i} a\nidea {i} b\n"),
        )
        .unwrap();
    }
    let start = Instant::now();
    for i in 0..1000 {
        let name = format!("f{i:04}.txt");
        std::fs::rename(staging.join(&name), p.inbox().join(&name)).unwrap();
    }
    wait_filed(&p, 1000, Duration::from_secs(120)).await;
    let took = start.elapsed();
    inbox.stop().await;
    eprintln!(
        "1,000 files (2,000 ideas) taken in {took:?} ({:.0} files/s)",
        1000.0 / took.as_secs_f64()
    );
    let texts = p.texts().await;
    assert_eq!(texts.len(), 2000);
    let unique: std::collections::HashSet<&String> = texts.iter().collect();
    assert_eq!(unique.len(), 2000, "no idea twice");
    assert_eq!(p.files().processed.len(), 1000);
    assert_eq!(p.files().sidecars.len(), 1000);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_arrive_while_the_watcher_is_stopped_are_taken_by_the_next_scan() {
    let p = Project::new("settle = \"200ms\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    p.drop_file("before.txt", "before the stop\n");
    wait_filed(&p, 1, LIMIT).await;
    inbox.stop().await;

    // Nobody watches: files arrive, by rename and written in place.
    for i in 0..20 {
        p.drop_file(&format!("while-{i}.txt"), format!("while stopped {i}\n"));
    }
    p.write_in_place("in-place.txt", "written in place while stopped\n");
    assert_eq!(p.files().inbox.len(), 21);

    let mut inbox = p.start();
    inbox.first_pass().await;
    wait_filed(&p, 22, LIMIT).await;
    inbox.stop().await;
    assert_eq!(p.texts().await.len(), 22);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_the_rescan_alone_takes_every_file() {
    // As on a network filesystem, where no events arrive.
    let p = Project::new("events = false\nsettle = \"100ms\"\nrescan = \"300ms\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    for i in 0..10 {
        p.drop_file(&format!("r{i}.txt"), format!("rescanned idea {i}\n"));
    }
    p.write_in_place("in-place.json", r#"["written in place"]"#);
    wait_filed(&p, 11, LIMIT).await;
    inbox.stop().await;
    assert_eq!(p.texts().await.len(), 11);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_twice_creates_its_items_once() {
    let p = Project::new("settle = \"200ms\"").await;
    let mut inbox = p.start();
    inbox.first_pass().await;
    let content = "dup idea one\ndup idea two\n";
    p.drop_file("first.txt", content);
    wait_filed(&p, 1, LIMIT).await;
    p.drop_file("second.txt", content);
    wait_filed(&p, 2, LIMIT).await;
    // The same name and content again: filed beside the first, not over it.
    p.drop_file("first.txt", content);
    wait_filed(&p, 3, LIMIT).await;
    inbox.stop().await;

    assert_eq!(p.texts().await, ["dup idea one", "dup idea two"]);
    let files = p.files();
    assert_eq!(files.processed, ["first.txt", "first~2.txt", "second.txt"]);
    let original = p.sidecar_of("first.txt");
    let dup = p.sidecar_of("second.txt");
    assert_eq!(dup["duplicate_of"]["file"], "first.txt");
    assert_eq!(dup["items"], original["items"]);
    assert_eq!(dup["content"], original["content"]);
    assert_eq!(p.sidecar_of("first~2.txt")["items"], original["items"]);
    let dups = p
        .store
        .events(&EventFilter {
            kind: Some(event_kind::INBOX_DUPLICATE.into()),
            limit: 10,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dups.len(), 2);
    assert!(dups[0].message.contains("first.txt"), "{}", dups[0].message);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_committed_but_not_moved_before_a_crash_is_filed_without_new_items() {
    let p = Project::new("settle = \"200ms\"").await;
    // What a crash between the commit and the move leaves behind: the items
    // and the content's record in the store, the file still in the inbox.
    let content = "crash idea\n";
    p.drop_file("crash.txt", content);
    let key = format!("sha256:{:x}", Sha256::digest(content.as_bytes()));
    p.store
        .add_items_once(
            &IntakeSource {
                key,
                name: "crash.txt".into(),
            },
            &[NewItem {
                text: "crash idea".into(),
                metadata: serde_json::json!({}),
            }],
            &first_job(&p.config),
            1,
        )
        .await
        .unwrap();
    let mut inbox = p.start();
    inbox.first_pass().await;
    wait_filed(&p, 1, LIMIT).await;
    inbox.stop().await;
    assert_eq!(p.texts().await, ["crash idea"]);
    assert_eq!(p.files().processed, ["crash.txt"]);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_takes_an_inbox_and_another_takes_over_when_it_stops() {
    let p = Project::new("settle = \"100ms\"").await;
    let mut first = p.start();
    first.first_pass().await;
    // A second taker (another engine on the same project) waits its turn.
    let mut second = p.start();
    second.first_pass().await;
    for i in 0..10 {
        p.drop_file(&format!("a{i}.txt"), format!("shared inbox idea {i}\n"));
    }
    wait_filed(&p, 10, LIMIT).await;
    first.stop().await;
    for i in 0..5 {
        p.drop_file(&format!("b{i}.txt"), format!("after the handover {i}\n"));
    }
    wait_filed(&p, 15, LIMIT).await;
    second.stop().await;
    assert_eq!(p.texts().await.len(), 15);
    p.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_fifos_and_folders_are_not_taken_as_ideas() {
    let p = Project::new("settle = \"100ms\"").await;
    let target = p.staging().join("target.txt");
    std::fs::write(&target, "linked idea\n").unwrap();
    std::os::unix::fs::symlink(&target, p.inbox().join("link.txt")).unwrap();
    let fifo = p.inbox().join("pipe.txt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::fs::create_dir(p.inbox().join("a-folder.txt")).unwrap();
    write_atomic(p.inbox(), "real.txt", b"real idea\n").unwrap();
    let mut inbox = p.start();
    inbox.first_pass().await;
    wait_filed(&p, 3, LIMIT).await;
    inbox.stop().await;
    assert_eq!(p.texts().await, ["real idea"]);
    let files = p.files();
    assert_eq!(files.rejected, ["link.txt", "pipe.txt"]);
    assert!(p.error_of("link.txt").contains("symbolic link"));
    assert!(p.error_of("pipe.txt").contains("not a regular file"));
    assert!(target.exists(), "a link's target is never touched");
    assert!(p.inbox().join("a-folder.txt").is_dir());
    p.audit().await;
}
