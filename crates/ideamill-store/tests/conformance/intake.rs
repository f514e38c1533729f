//! Intake that must take each source once: inbox files by content hash
//! (`add_items_once`) and imported records in the states they had elsewhere
//! (`import_items`).

use ideamill_core::{ItemState, JobState};
use ideamill_store::{
    AddOutcome, ImportOutcome, ImportedItem, ImportedState, IntakeRecord, IntakeSource, Rejection,
    Store,
};

use crate::support::*;

fn source(key: &str, name: &str) -> IntakeSource {
    IntakeSource {
        key: key.to_string(),
        name: name.to_string(),
    }
}

pub async fn add_items_once_takes_a_source_once(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let first = source("sha256:aaaa", "ideas.txt");
    let ids = match s
        .add_items_once(&first, &new_items(&["one", "two"]), &draft, T0)
        .await
        .unwrap()
    {
        AddOutcome::Added(ids) => ids,
        other => panic!("a new source adds its items: {other:?}"),
    };
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "ids grow in input order: {ids:?}");
    for (id, text) in ids.iter().zip(["one", "two"]) {
        let d = s.item(*id).await.unwrap();
        assert_eq!(d.item.text, text);
        assert_eq!(d.item.state, ItemState::Active);
        assert_eq!(d.item.stage.as_deref(), Some("draft"));
        assert_eq!(d.jobs.len(), 1, "one first job per item");
        assert_eq!(d.jobs[0].state, JobState::Queued);
    }

    // The same key again, under another name and with other items: nothing
    // is added, and the first taking is reported.
    let again = s
        .add_items_once(
            &source("sha256:aaaa", "copy of ideas.txt"),
            &new_items(&["three"]),
            &draft,
            T0 + 10,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        AddOutcome::Duplicate(IntakeRecord {
            key: "sha256:aaaa".into(),
            name: "ideas.txt".into(),
            item_ids: ids.clone(),
            taken_at: T0,
        })
    );
    let all = s.status(T0 + 20).await.unwrap();
    assert_eq!(all.items.active, 2, "a duplicate adds nothing");

    // Another key adds; the work is claimable like any other.
    let other = s
        .add_items_once(
            &source("sha256:bbbb", "more.txt"),
            &new_items(&["three"]),
            &draft,
            T0 + 30,
        )
        .await
        .unwrap();
    let AddOutcome::Added(more) = other else {
        panic!("another key adds: {other:?}");
    };
    assert_eq!(more.len(), 1);
    let held = s
        .claim("draft", 10, "w1", T0 + 40, T0 + LEASE)
        .await
        .unwrap();
    let mut claimed: Vec<_> = held.iter().map(|j| j.item_id).collect();
    claimed.sort_unstable();
    assert_eq!(claimed, [ids[0], ids[1], more[0]]);
}

fn imported(key: &str, text: &str, state: ImportedState) -> ImportedItem {
    ImportedItem {
        source: source(key, &format!("ideas_log.json {key}")),
        text: text.to_string(),
        metadata: serde_json::json!({"legacy": {"id": key}}),
        created_at: T0 - 5_000,
        state,
    }
}

pub async fn import_items_in_their_states_once(s: &dyn Store) {
    let outline = next("outline", 1, 3);
    let implement_round_3 = next("implement", 3, 2);
    let batch = vec![
        imported(
            "legacy:q",
            "queued idea",
            ImportedState::Queued { next: outline },
        ),
        imported(
            "legacy:r",
            "rejected idea",
            ImportedState::Rejected {
                rejections: vec![
                    Rejection {
                        stage: "qa".into(),
                        round: 1,
                        feedback: "test_a fails".into(),
                    },
                    Rejection {
                        stage: "qa".into(),
                        round: 2,
                        feedback: "test_b fails".into(),
                    },
                ],
                next: implement_round_3,
            },
        ),
        imported("legacy:d", "done idea", ImportedState::Done),
        imported(
            "legacy:f",
            "failed idea",
            ImportedState::Failed {
                error: "model refused".into(),
                stage: "outline".into(),
            },
        ),
        // The same key twice in one batch: the second is skipped.
        imported("legacy:d", "done idea, listed twice", ImportedState::Done),
    ];
    let outcomes = s.import_items(&batch, T0).await.unwrap();
    assert_eq!(outcomes.len(), batch.len(), "one outcome per record");
    let ids: Vec<i64> = outcomes[..4]
        .iter()
        .map(|o| match o {
            ImportOutcome::Imported(id) => *id,
            other => panic!("a new key is imported: {other:?}"),
        })
        .collect();
    let [queued, rejected, done, failed] = ids[..] else {
        panic!("four ids: {ids:?}");
    };
    assert_eq!(
        outcomes[4],
        ImportOutcome::Skipped(IntakeRecord {
            key: "legacy:d".into(),
            name: "ideas_log.json legacy:d".into(),
            item_ids: vec![done],
            taken_at: T0,
        })
    );

    // Queued: new work at its first stage, its text, metadata and creation
    // time kept.
    let d = s.item(queued).await.unwrap();
    assert_eq!(d.item.text, "queued idea");
    assert_eq!(
        d.item.metadata,
        serde_json::json!({"legacy": {"id": "legacy:q"}})
    );
    assert_eq!(d.item.state, ItemState::Active);
    assert_eq!(d.item.created_at, T0 - 5_000);
    assert_eq!(d.item.stage.as_deref(), Some("outline"));
    assert_eq!(d.display_state, "queued");
    assert_eq!(d.jobs.len(), 1);
    assert_eq!(d.jobs[0].state, JobState::Queued);

    // Rejected: its feedback is what a stage's context sees, and it resumes
    // where the gate sends work back to, in the next round.
    let ctx = s.context(rejected).await.unwrap();
    let feedback: Vec<(&str, u32, &str)> = ctx
        .feedback
        .iter()
        .map(|f| (f.stage.as_str(), f.round, f.feedback.as_str()))
        .collect();
    assert_eq!(
        feedback,
        [("qa", 1, "test_a fails"), ("qa", 2, "test_b fails")]
    );
    assert_eq!(ctx.item.state, ItemState::Active);
    assert_eq!(ctx.item.stage.as_deref(), Some("implement"));
    assert_eq!(ctx.item.round, 3);
    let d = s.item(rejected).await.unwrap();
    assert_eq!(d.display_state, "queued");
    let current = d.jobs.last().expect("a current job");
    assert_eq!(
        (current.stage.as_str(), current.round, current.state),
        ("implement", 3, JobState::Queued)
    );
    assert_eq!(current.max_attempts, 2);
    assert!(
        d.jobs[..d.jobs.len() - 1]
            .iter()
            .all(|j| j.stage == "qa" && j.state == JobState::Rejected),
        "the rejections are finished gate jobs: {:?}",
        d.jobs
    );

    // Done and failed: finished, nothing to run.
    let d = s.item(done).await.unwrap();
    assert_eq!(d.item.state, ItemState::Done);
    assert_eq!(d.item.finished_at, Some(T0));
    assert!(
        d.jobs.is_empty(),
        "a done import runs nothing: {:?}",
        d.jobs
    );
    let d = s.item(failed).await.unwrap();
    assert_eq!(d.item.state, ItemState::Failed);
    assert_eq!(d.item.last_error.as_deref(), Some("model refused"));
    assert_eq!(d.item.stage.as_deref(), Some("outline"));
    assert_eq!(d.item.finished_at, Some(T0));
    assert!(d.jobs.is_empty());

    // Only the queued and the rejected items have work, each once.
    let outline_jobs = s
        .claim("outline", 10, "w1", T0 + 1, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(
        outline_jobs.iter().map(|j| j.item_id).collect::<Vec<_>>(),
        [queued]
    );
    let implement_jobs = s
        .claim("implement", 10, "w1", T0 + 1, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(
        implement_jobs.iter().map(|j| j.item_id).collect::<Vec<_>>(),
        [rejected]
    );
    assert_eq!(implement_jobs[0].round, 3);
    assert!(
        s.claim("qa", 10, "w1", T0 + 1, T0 + LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    // A failed import runs again by hand from its stage.
    s.retry_item(failed, &next("outline", 1, 3), T0 + 2)
        .await
        .unwrap();
    assert_eq!(s.item(failed).await.unwrap().display_state, "queued");

    // Importing the same records again creates nothing.
    let before = s.status(T0 + 3).await.unwrap().items;
    let again = s.import_items(&batch, T0 + 3).await.unwrap();
    assert!(
        again.iter().all(|o| matches!(o, ImportOutcome::Skipped(_))),
        "{again:?}"
    );
    let skipped: Vec<Vec<i64>> = again
        .iter()
        .map(|o| match o {
            ImportOutcome::Skipped(r) => r.item_ids.clone(),
            ImportOutcome::Imported(_) => unreachable!(),
        })
        .collect();
    assert_eq!(
        skipped,
        [
            vec![queued],
            vec![rejected],
            vec![done],
            vec![failed],
            vec![done]
        ]
    );
    assert_eq!(s.status(T0 + 3).await.unwrap().items, before);

    // Keys are one namespace with inbox sources.
    let inbox = s
        .add_items_once(
            &source("legacy:q", "q.txt"),
            &new_items(&["x"]),
            &next("outline", 1, 3),
            T0 + 4,
        )
        .await
        .unwrap();
    assert!(matches!(inbox, AddOutcome::Duplicate(r) if r.item_ids == [queued]));
}

/// Items whose text or metadata holds a NUL byte (an inbox `.json` file
/// may spell one `\u0000`) are added, each NUL replaced by U+FFFD, through
/// every way items arrive.
pub async fn nul_bytes_in_new_items_are_replaced(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let item = |text: &str| ideamill_store::NewItem {
        text: text.to_string(),
        metadata: serde_json::json!({ "note\0key": "a\0b", "list": ["c\0"] }),
    };
    let expected_meta =
        serde_json::json!({ "note\u{FFFD}key": "a\u{FFFD}b", "list": ["c\u{FFFD}"] });

    let ids = s
        .add_items(&[item("one\0idea")], &draft, T0)
        .await
        .expect("add_items with a NUL byte");
    let d = s.item(ids[0]).await.unwrap();
    assert_eq!(d.item.text, "one\u{FFFD}idea");
    assert_eq!(d.item.metadata, expected_meta);

    let added = s
        .add_items_once(
            &source("sha256:nul", "nul.json"),
            &[item("two \0 ideas")],
            &draft,
            T0 + 1,
        )
        .await
        .expect("add_items_once with a NUL byte");
    let AddOutcome::Added(ids) = added else {
        panic!("a new source adds its items: {added:?}");
    };
    let d = s.item(ids[0]).await.unwrap();
    assert_eq!(d.item.text, "two \u{FFFD} ideas");
    assert_eq!(d.item.metadata, expected_meta);
    // Spaces around the NUL: on a server whose LC_CTYPE is C, PostgreSQL's
    // text search counts every non-ASCII character as a letter, so U+FFFD
    // would glue "two" and "ideas" into one word.
    let found = s.search_items(&Default::default(), "ideas").await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");

    let imported = s
        .import_items(
            &[ImportedItem {
                source: source("legacy:nul", "legacy/nul"),
                text: "three\0".into(),
                metadata: serde_json::json!({}),
                created_at: T0,
                state: ImportedState::Failed {
                    error: "it\0broke".into(),
                    stage: "draft".into(),
                },
            }],
            T0 + 2,
        )
        .await
        .expect("import_items with a NUL byte");
    let ImportOutcome::Imported(id) = imported[0] else {
        panic!("{imported:?}");
    };
    let d = s.item(id).await.unwrap();
    assert_eq!(d.item.text, "three\u{FFFD}");
    assert_eq!(d.item.last_error.as_deref(), Some("it\u{FFFD}broke"));
}
