//! Helpers for the intake tests: a project in a temp folder with a real
//! SQLite store, files dropped the ways people drop them, waiting on
//! conditions with deadlines, and the "nothing lost" audit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ideamill_core::Config;
use ideamill_intake::{InboxHandle, Layout, spawn_inbox};
use ideamill_store::{ItemFilter, ItemSummary, OpenOptions, Store};

pub struct Project {
    pub dir: tempfile::TempDir,
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
}

/// The pipeline the tests use: one stage, never run here.
pub const STAGES: &str = "[[stages]]\nname = \"draft\"\nkind = \"command\"\ncommand = [\"true\"]\n";

impl Project {
    /// A project whose `ideamill.toml` holds `inbox_table` (the body of an
    /// `[inbox]` table) and `STAGES`.
    pub async fn new(inbox_table: &str) -> Project {
        Project::with_config(&format!("[inbox]\n{inbox_table}\n{STAGES}")).await
    }

    pub async fn with_config(toml: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ideamill.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = ideamill_core::config::parse(toml, &path).expect("a valid config");
        let store = ideamill_store::open(&config.store.url, &OpenOptions::default())
            .await
            .expect("open the store");
        std::fs::create_dir_all(&config.engine.inbox).expect("create the inbox");
        Project {
            dir,
            config: Arc::new(config),
            store: Arc::from(store),
        }
    }

    pub fn inbox(&self) -> &Path {
        &self.config.engine.inbox
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.inbox())
    }

    pub fn start(&self) -> InboxHandle {
        spawn_inbox(&self.config, &self.store)
    }

    /// A folder beside the inbox to write files in before renaming them in.
    pub fn staging(&self) -> PathBuf {
        let dir = self.dir.path().join("staging");
        std::fs::create_dir_all(&dir).expect("staging dir");
        dir
    }

    /// Write a file elsewhere, then rename it into the inbox (how a careful
    /// program drops a file).
    pub fn drop_file(&self, name: &str, bytes: impl AsRef<[u8]>) {
        let tmp = self.staging().join(name);
        std::fs::write(&tmp, bytes).expect("write a file");
        std::fs::rename(&tmp, self.inbox().join(name)).expect("rename it into the inbox");
    }

    /// Write a file straight into the inbox (how `cp` or an editor does).
    pub fn write_in_place(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.inbox().join(name), bytes).expect("write into the inbox");
    }

    /// Every item, oldest first.
    pub async fn items(&self) -> Vec<ItemSummary> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .list_items(&ItemFilter {
                    before_id: before,
                    limit: 500,
                    ..ItemFilter::default()
                })
                .await
                .expect("list items");
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            all.extend(page);
        }
        all.reverse();
        all
    }

    pub async fn texts(&self) -> Vec<String> {
        self.items().await.into_iter().map(|i| i.text).collect()
    }

    /// What sits where: idea files in the inbox, processed and rejected.
    pub fn files(&self) -> Files {
        let layout = self.layout();
        Files {
            inbox: names(&layout.inbox, |n| !n.starts_with('.')),
            processed: names(&layout.processed, |n| !n.ends_with(".items.json")),
            sidecars: names(&layout.processed, |n| n.ends_with(".items.json")),
            rejected: names(&layout.rejected, |n| !n.ends_with(".error.txt")),
            errors: names(&layout.rejected, |n| n.ends_with(".error.txt")),
        }
    }

    /// Why a rejected file was rejected.
    pub fn error_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.layout().rejected.join(format!("{name}.error.txt")))
            .unwrap_or_else(|e| panic!("no error file for {name}: {e}"))
    }

    pub fn sidecar_of(&self, name: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.layout().processed.join(format!("{name}.items.json")))
                .unwrap_or_else(|e| panic!("no sidecar for {name}: {e}"));
        serde_json::from_str(&text).expect("sidecar JSON")
    }

    /// Nothing lost: no idea file is left in the inbox, every processed
    /// file has a sidecar whose items exist and hold the file's ideas, and
    /// every rejected file has a reason naming a line and column (or why
    /// it is no idea file at all).
    pub async fn audit(&self) {
        let files = self.files();
        assert!(
            files.inbox.is_empty(),
            "files left in the inbox: {:?}",
            files.inbox
        );
        let texts: std::collections::HashMap<i64, String> = self
            .items()
            .await
            .into_iter()
            .map(|i| (i.id, i.text))
            .collect();
        for name in &files.processed {
            let sidecar = self.sidecar_of(name);
            let ids: Vec<i64> = sidecar["items"]
                .as_array()
                .expect("items in the sidecar")
                .iter()
                .map(|v| v.as_i64().expect("an id"))
                .collect();
            assert!(!ids.is_empty(), "{name}: a sidecar without items");
            let content = std::fs::read_to_string(self.layout().processed.join(name))
                .expect("read a processed file");
            for id in ids {
                let text = texts
                    .get(&id)
                    .unwrap_or_else(|| panic!("{name}: item {id} does not exist"));
                assert!(
                    content.contains(text.as_str()),
                    "{name}: item {id} ({text:?}) is not from this file"
                );
            }
        }
        for name in &files.rejected {
            let reason = self.error_of(name);
            assert!(
                reason.contains("line ")
                    || reason.contains("not an idea file")
                    || reason.contains("not a regular file")
                    || reason.contains("symbolic link"),
                "{name}: the reason names no place: {reason}"
            );
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Files {
    pub inbox: Vec<String>,
    pub processed: Vec<String>,
    pub sidecars: Vec<String>,
    pub rejected: Vec<String>,
    pub errors: Vec<String>,
}

fn names(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Check `cond` until it holds or `limit` passes; returns whether it held.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the inbox holds no idea file and `processed` + `rejected`
/// hold `n` files, or fail with what is where.
pub async fn wait_filed(p: &Project, n: usize, limit: Duration) {
    let ok = wait_until(limit, || async {
        let f = p.files();
        f.inbox.is_empty() && f.processed.len() + f.rejected.len() == n
    })
    .await;
    assert!(ok, "after {limit:?}: {:#?}", p.files());
}
