//! Legacy folders in the shapes the old system plausibly wrote
//! (`tests/fixtures/legacy/<shape>/`): every record is accounted for (an
//! item, merged, skipped or unmapped with a reason), the items land in the
//! store in their states, and importing again creates nothing.

use std::path::PathBuf;

use ideamill_core::ItemState;
use ideamill_intake::legacy::{self, Mapping, Plan, Record};
use ideamill_store::{ImportOutcome, ImportedState};

use crate::util::Project;

const NOW: i64 = 1_705_300_000_000;

const PIPELINE: &str = r#"
[[stages]]
name = "outline"
kind = "command"
command = ["true"]

[[stages]]
name = "implement"
kind = "command"
command = ["true"]
max_attempts = 2

[[stages]]
name = "qa"
kind = "command"
command = ["true"]
gate = { retry_from = "implement", max_rounds = 3 }
"#;

fn fixture(shape: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/legacy")
        .join(shape)
}

/// One line per record: its source and what it maps to.
fn describe(r: &Record) -> String {
    let what = match &r.mapping {
        Mapping::Item { item, .. } => match &item.state {
            ImportedState::Queued { next } => format!("queued at {}: {}", next.stage, item.text),
            ImportedState::Rejected { rejections, next } => {
                let feedback: Vec<String> = rejections
                    .iter()
                    .map(|r| format!("{}#{} {}", r.stage, r.round, r.feedback))
                    .collect();
                format!(
                    "resumes at {} round {} after {feedback:?}: {}",
                    next.stage, next.round, item.text
                )
            }
            ImportedState::Done => format!("done: {}", item.text),
            ImportedState::Failed { error, stage } => {
                format!("failed at {stage} ({error}): {}", item.text)
            }
        },
        Mapping::Merged { into } => format!("merged into {into}"),
        Mapping::Skipped { reason } => format!("skipped: {reason}"),
        Mapping::Unmapped { reason } => format!("unmapped: {reason}"),
    };
    format!("{} -> {what}", r.source)
}

async fn check(shape: &str, expected: &[&str]) -> (Project, Plan) {
    let p = Project::with_config(PIPELINE).await;
    let plan = legacy::plan(&fixture(shape), &p.config, NOW).expect("plan");
    let got: Vec<String> = plan.records.iter().map(describe).collect();
    let want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want, "\n{}", got.join("\n"));
    // Nothing lost: every record of every file is in the plan once.
    let counted: usize = plan.files.iter().map(|f| f.records).sum();
    assert_eq!(counted, plan.records.len());
    (p, plan)
}

/// Import the plan twice: the first time every item is new and in its
/// state, the second time nothing is.
async fn import_twice(p: &Project, plan: &Plan) {
    let items = plan.items();
    let first = p.store.import_items(&items, NOW).await.unwrap();
    assert!(
        first
            .iter()
            .all(|o| matches!(o, ImportOutcome::Imported(_))),
        "{first:?}"
    );
    let stored = p.items().await;
    assert_eq!(stored.len(), items.len());
    for (outcome, item) in first.iter().zip(&items) {
        let ImportOutcome::Imported(id) = outcome else {
            unreachable!()
        };
        let d = p.store.item(*id).await.unwrap();
        assert_eq!(d.item.text, item.text);
        assert_eq!(d.item.metadata, item.metadata);
        let want = match &item.state {
            ImportedState::Queued { .. } | ImportedState::Rejected { .. } => ItemState::Active,
            ImportedState::Done => ItemState::Done,
            ImportedState::Failed { .. } => ItemState::Failed,
        };
        assert_eq!(d.item.state, want, "{}", item.text);
        if let ImportedState::Rejected { rejections, .. } = &item.state {
            let ctx = p.store.context(*id).await.unwrap();
            let feedback: Vec<&str> = ctx.feedback.iter().map(|f| f.feedback.as_str()).collect();
            let want: Vec<&str> = rejections.iter().map(|r| r.feedback.as_str()).collect();
            assert_eq!(feedback, want, "a prompt sees the QA feedback");
        }
    }
    let again = p.store.import_items(&items, NOW + 1).await.unwrap();
    assert!(
        again.iter().all(|o| matches!(o, ImportOutcome::Skipped(_))),
        "{again:?}"
    );
    assert_eq!(
        p.items().await.len(),
        items.len(),
        "nothing new the second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_folder_of_arrays_with_qa_issues_and_implementations() {
    let (p, plan) = check(
        "flat",
        &[
            "ideas_log.json #1 -> done: A CSV to JSON converter",
            "ideas_log.json #2 -> resumes at implement round 2 after [\"qa#1 missing tests for the redirect\"]: A URL shortener",
            "ideas_log.json #3 -> failed at outline (worker2 timed out after 3 retries): Convert markdown files to HTML pages",
            "ideas_log.json #4 -> resumes at implement round 3 after [\"qa#1 test_add fails: KeyError 'title'\", \"qa#2 test_list fails\"]: A todo CLI",
            "ideas_log.json #5 -> queued at outline: A weather widget",
            "ideas_log.json #6 -> queued at outline: A plain string idea",
            "ideas_log.json #7 -> unmapped: no idea text: none of the fields text, idea, prompt, task, instructions, description, title, summary holds text (it has: id, notes, status)",
            "ideas_log.json #8 -> queued at outline: An RSS reader",
            "ideas_log.json #9 -> queued at outline: A JSON pretty printer",
            "QAissue.json #1 -> merged into ideas_log.json #2",
            "QAissue.json #2 -> merged into ideas_log.json #4",
            "QAissue.json #3 -> resumes at implement round 2 after [\"qa#1 uses raw sockets without a permission check\"]: A port scanner",
            "QAissue.json #4 -> skipped: status `resolved`: nothing to resume",
            "QAissue.json #5 -> unmapped: no idea text, and no idea with id 99 in ideas_log.json to attach its feedback to",
            "implementations/batch.json tasks[1] -> queued at outline: Write a README for the URL shortener",
            "implementations/batch.json tasks[2] -> failed at outline (no runner available): Add CI to the todo CLI",
            "implementations/csv_tool.json -> done: Implement the CSV converter",
        ],
    )
    .await;
    // A broken file is reported with its place; files that are not JSON
    // are not looked at.
    let files: Vec<(String, usize, Option<String>)> = plan
        .files
        .iter()
        .map(|f| (f.file.clone(), f.records, f.problem.clone()))
        .collect();
    assert_eq!(
        files,
        [
            ("ideas_log.json".into(), 9, None),
            ("QAissue.json".into(), 5, None),
            ("implementations/batch.json".into(), 2, None),
            (
                "implementations/broken.json".into(),
                0,
                Some("line 1, column 28: invalid JSON: EOF while parsing a string".into())
            ),
            ("implementations/csv_tool.json".into(), 1, None),
        ]
    );
    assert!(plan.incomplete());
    // What was guessed is said, record by record.
    let rss = &plan.records[7];
    assert_eq!(
        rss.notes,
        [
            "status `wonky` is not one ideamill knows: imported as queued",
            "created_at \"last tuesday\" is not a time ideamill reads: the import time is used",
        ]
    );
    // Unknown fields are kept as metadata, with where the record came from.
    let items = plan.items();
    let csv = &items[0];
    assert_eq!(
        csv.metadata,
        serde_json::json!({
            "priority": "high",
            "legacy": {"file": "ideas_log.json", "id": "1", "status": "done", "created_at": "2024-01-10T09:00:00"}
        })
    );
    assert_eq!(csv.created_at, 1_704_877_200_000);
    assert_eq!(csv.source.key, "legacy:ideas_log.json:id:1");
    let shortener = &items[1];
    assert_eq!(
        shortener.metadata["legacy_qa"],
        serde_json::json!({"retries": 1, "file": "QAissue.json"})
    );
    let implementation = items.last().unwrap();
    assert_eq!(
        implementation.metadata["files"]["csv2json.py"],
        "import csv, json, sys\nprint(json.dumps(list(csv.DictReader(sys.stdin))))\n"
    );
    let printer = items
        .iter()
        .find(|i| i.text == "A JSON pretty printer")
        .unwrap();
    assert_eq!(printer.metadata["source"], "slack");
    let todo = items.iter().find(|i| i.text == "A todo CLI").unwrap();
    let ImportedState::Rejected { next, .. } = &todo.state else {
        panic!("{todo:?}")
    };
    assert_eq!(next.max_attempts, 2, "the retry_from stage's own policy");
    import_twice(&p, &plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_arrays_named_by_status_with_qa_issues_by_id() {
    let (p, plan) = check(
        "by_status",
        &[
            "ideas_log.json completed[1] -> done: A password generator",
            "ideas_log.json failed[1] -> failed at outline (pdf library missing): A PDF merger",
            "ideas_log.json needs_retry[1] -> resumes at implement round 2 after [\"qa#1 solve() returns None for hard puzzles\\nno test for invalid grids\"]: A sudoku solver",
            "ideas_log.json queue[1] -> queued at outline: A markdown linter",
            "ideas_log.json queue[2] -> resumes at implement round 2 after [\"qa#1 tail -f mode is missing\"]: A log tailer",
            "QAissue.json \"c1\" -> skipped: its idea (ideas_log.json completed[1]) is done: nothing to resume",
            "QAissue.json \"q2\" -> merged into ideas_log.json queue[2]",
        ],
    )
    .await;
    assert_eq!(
        plan.files[0].notes,
        ["fields of ideas_log.json that are not records were left aside: last_updated, version"]
    );
    assert!(!plan.incomplete());
    import_twice(&p, &plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_ideas_by_id_with_feedback_rounds() {
    let (p, plan) = check(
        "by_id",
        &[
            "ideas_log.json ideas \"a1\" -> resumes at implement round 3 after [\"qa#1 streaks reset at midnight UTC\", \"qa#2 still wrong in UTC+2\"]: A habit tracker",
            "ideas_log.json ideas \"a2\" -> queued at outline: A plain idea kept by id",
            "ideas_log.json ideas \"a3\" -> failed at outline (cancelled in the old system (status `cancelled`)): A budget app",
            "QAissue.json issues[1] -> merged into ideas_log.json ideas \"a1\"",
        ],
    )
    .await;
    assert_eq!(
        plan.files[0].notes,
        ["fields of ideas_log.json that are not records were left aside: meta"]
    );
    let tracker = &plan.items()[0];
    assert_eq!(tracker.created_at, 1_704_270_600_000);
    assert_eq!(tracker.metadata["tags"], serde_json::json!(["health"]));
    import_twice(&p, &plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_lines_log_keeps_its_good_lines() {
    let (p, plan) = check(
        "lines",
        &[
            "ideas_log.jsonl line 1 -> queued at outline: A line-based idea",
            "ideas_log.jsonl line 2 -> unmapped: line 2, column 35: invalid JSON: EOF while parsing a string",
            "ideas_log.jsonl line 4 -> done: Another line-based idea",
        ],
    )
    .await;
    import_twice(&p, &plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_without_legacy_files_is_an_error() {
    let p = Project::with_config(PIPELINE).await;
    let err = legacy::plan(&fixture("empty"), &p.config, NOW).unwrap_err();
    assert!(
        err.to_string().contains("no legacy files in")
            && err.to_string().contains("ideas_log.json"),
        "{err}"
    );
    let err = legacy::plan(&fixture("missing"), &p.config, NOW).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
}
