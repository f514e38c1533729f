//! Taking one file from the inbox. The order makes a crash at any point
//! safe: the items and the file's content hash are committed in one
//! transaction first; only then does the file move. A crash before the move
//! leaves the file in the inbox, and taking it again finds its hash and adds
//! nothing. Nothing is ever deleted: a file ends in `processed/` (with a
//! sidecar listing its items) or in `rejected/` (with an `.error.txt` that
//! names the line and column of the problem).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ideamill_core::machine::NextJob;
use ideamill_core::{ItemId, Millis};
use ideamill_store::{
    AddOutcome, IntakeRecord, IntakeSource, NewEvent, NewItem, Store, event_kind,
};
use sha2::{Digest, Sha256};

use crate::parse::{Format, Limits, parse_ideas};
use ideamill_sys::clock::now_millis;

use crate::IntakeError;

/// The inbox folder and the two it files things into.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Where new files are dropped.
    pub inbox: PathBuf,
    /// Taken files and their sidecars.
    pub processed: PathBuf,
    /// Refused files and their `.error.txt`.
    pub rejected: PathBuf,
}

/// The sidecar next to a processed file: which items it became.
pub const SIDECAR_SUFFIX: &str = ".items.json";
/// Next to a rejected file: why.
pub const ERROR_SUFFIX: &str = ".error.txt";

impl Layout {
    /// `inbox` with `processed/` and `rejected/` inside it.
    pub fn new(inbox: &Path) -> Layout {
        Layout {
            inbox: inbox.to_path_buf(),
            processed: inbox.join("processed"),
            rejected: inbox.join("rejected"),
        }
    }

    /// Make the moves of the files taken so far survive a power cut. Called
    /// once per batch rather than per file: a move lost before it is the
    /// file back in the inbox, whose content the store knows, so taking it
    /// again files it without adding anything.
    pub fn sync(&self) -> Result<(), IntakeError> {
        for dir in [&self.processed, &self.rejected, &self.inbox] {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Creates the three folders where missing.
    pub fn create(&self) -> Result<(), IntakeError> {
        for dir in [&self.inbox, &self.processed, &self.rejected] {
            std::fs::create_dir_all(dir)
                .map_err(IntakeError::io(format!("cannot create {}", dir.display())))?;
        }
        Ok(())
    }
}

/// Names the inbox never takes: hidden files and files still being written
/// under a temporary name (`x.json.tmp`, `x.json.part`), which are renamed
/// into place when complete.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// What became of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    /// Its ideas are items; it sits at `file` in `processed/`.
    Taken {
        /// Where the file now is.
        file: PathBuf,
        /// The items it became, in the file's order.
        ids: Vec<ItemId>,
    },
    /// The same content was taken before; it sits at `file` in
    /// `processed/`, and its sidecar names the earlier file and items.
    Duplicate {
        /// Where the file now is.
        file: PathBuf,
        /// The earlier intake of the same content.
        of: IntakeRecord,
    },
    /// It could not be taken; it sits at `file` in `rejected/`, with `reason`
    /// in its `.error.txt`.
    Rejected {
        /// Where the file now is.
        file: PathBuf,
        /// Why, as written in its `.error.txt`.
        reason: String,
    },
    /// It changed while it was read: it is still being written.
    Changing,
    /// It is gone (someone moved it away), or it is a folder.
    Skipped,
}

/// Size and modification time: what "still being written" is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub len: u64,
    /// `None` where the filesystem keeps no modification time.
    pub modified: Option<SystemTime>,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// What reading a file found.
enum Prepared {
    Skipped,
    Changing,
    Bad(String),
    Ideas { items: Vec<NewItem>, hash: String },
}

/// Read, hash and parse a file (blocking IO).
fn prepare(path: &Path, limits: &Limits) -> Result<Prepared, IntakeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prepared::Skipped),
        Err(e) => {
            return Err(IntakeError::io(format!("cannot stat {}", path.display()))(
                e,
            ));
        }
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return Ok(Prepared::Skipped);
    }
    if kind.is_symlink() {
        return Ok(Prepared::Bad(
            "a symbolic link: put the file itself into the inbox".into(),
        ));
    }
    if !kind.is_file() {
        // A FIFO would block a reader forever; a socket or device is no idea file.
        return Ok(Prepared::Bad("not a regular file".into()));
    }
    let Some(format) = Format::from_path(path) else {
        return Ok(Prepared::Bad(format!(
            "not an idea file: the inbox takes {} files",
            Format::EXTENSIONS
        )));
    };
    if meta.len() > limits.max_file_bytes {
        return Ok(Prepared::Bad(format!(
            "line 1, column 1: the file is {} bytes; the limit is {} bytes ([inbox] max_file_bytes)",
            meta.len(),
            limits.max_file_bytes
        )));
    }
    let before = Stamp::of(&meta);
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prepared::Skipped),
        Err(e) => {
            return Err(IntakeError::io(format!("cannot open {}", path.display()))(
                e,
            ));
        }
    };
    // Never more than the limit plus one byte, even if the file grows meanwhile.
    let mut bytes = Vec::with_capacity(before.len as usize);
    (&mut file)
        .take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(IntakeError::io(format!("cannot read {}", path.display())))?;
    let after = file
        .metadata()
        .map_err(IntakeError::io(format!("cannot stat {}", path.display())))?;
    if Stamp::of(&after) != before || bytes.len() as u64 != before.len {
        return Ok(Prepared::Changing);
    }
    let hash = format!("sha256:{:x}", Sha256::digest(&bytes));
    Ok(match parse_ideas(&bytes, format, limits) {
        Ok(items) => Prepared::Ideas { items, hash },
        Err(e) => Prepared::Bad(e.to_string()),
    })
}

/// Take one file from the inbox: all its ideas become items in one
/// transaction (or none do), then the file moves out of the inbox. A store
/// or filesystem error leaves the file where it is, to be tried again; a
/// store that refuses the ideas themselves ([`ideamill_store::StoreError::is_refusal`])
/// rejects the file.
/// Call [`Layout::sync`] after a batch of these.
pub async fn take_file(
    store: &dyn Store,
    first: &NextJob,
    layout: &Layout,
    path: &Path,
    limits: &Limits,
) -> Result<TakeOutcome, IntakeError> {
    let name = file_name(path);
    let (p, l) = (path.to_path_buf(), *limits);
    let prepared = tokio::task::spawn_blocking(move || prepare(&p, &l)).await??;
    let outcome = match prepared {
        Prepared::Skipped => return Ok(TakeOutcome::Skipped),
        Prepared::Changing => return Ok(TakeOutcome::Changing),
        Prepared::Bad(reason) => {
            let (p, l, r) = (path.to_path_buf(), layout.clone(), reason.clone());
            let file = tokio::task::spawn_blocking(move || reject(&l, &p, &r)).await??;
            TakeOutcome::Rejected { file, reason }
        }
        Prepared::Ideas { items, hash } => {
            let source = IntakeSource {
                key: hash.clone(),
                name: name.clone(),
            };
            let now = now_millis();
            match store.add_items_once(&source, &items, first, now).await {
                Ok(added) => {
                    let (p, l) = (path.to_path_buf(), layout.clone());
                    let sidecar = sidecar(&name, &hash, now, &added);
                    let file = tokio::task::spawn_blocking(move || {
                        file_away(&p, &l.processed, SIDECAR_SUFFIX, &sidecar)
                    })
                    .await??;
                    match added {
                        AddOutcome::Added(ids) => TakeOutcome::Taken { file, ids },
                        AddOutcome::Duplicate(of) => TakeOutcome::Duplicate { file, of },
                    }
                }
                // The store refuses these ideas (it would on every try):
                // the file is rejected, never left to be tried forever.
                Err(e) if e.is_refusal() => {
                    let reason = format!("the store refused its ideas: {e}");
                    let (p, l, r) = (path.to_path_buf(), layout.clone(), reason.clone());
                    let file = tokio::task::spawn_blocking(move || reject(&l, &p, &r)).await??;
                    TakeOutcome::Rejected { file, reason }
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    record(store, &name, &outcome).await;
    Ok(outcome)
}

/// One event per file, for `ideamill events` and the dashboard.
async fn record(store: &dyn Store, name: &str, outcome: &TakeOutcome) {
    let (kind, item_id, message) = match outcome {
        TakeOutcome::Taken { ids, .. } => (
            event_kind::INBOX_TAKEN,
            ids.first().copied(),
            format!(
                "Took {name} from the inbox: {} item{} ({})",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                id_ranges(ids)
            ),
        ),
        TakeOutcome::Duplicate { of, .. } => (
            event_kind::INBOX_DUPLICATE,
            of.item_ids.first().copied(),
            format!(
                "{name} holds the same content as {}, taken before as items {}: nothing added",
                of.name,
                id_ranges(&of.item_ids)
            ),
        ),
        TakeOutcome::Rejected { reason, .. } => (
            event_kind::INBOX_REJECTED,
            None,
            format!("Rejected {name} from the inbox: {reason}"),
        ),
        TakeOutcome::Changing | TakeOutcome::Skipped => return,
    };
    match kind {
        event_kind::INBOX_REJECTED => tracing::warn!("{message}"),
        _ => tracing::info!("{message}"),
    }
    let event = NewEvent {
        at: now_millis(),
        kind,
        item_id,
        job_id: None,
        process: None,
        message,
    };
    if let Err(e) = store.record_event(&event).await {
        tracing::warn!("Cannot record an inbox event: {e}");
    }
}

fn sidecar(name: &str, hash: &str, now: Millis, added: &AddOutcome) -> String {
    let value = match added {
        AddOutcome::Added(ids) => serde_json::json!({
            "file": name,
            "content": hash,
            "taken_at": rfc3339(now),
            "items": ids,
        }),
        AddOutcome::Duplicate(of) => serde_json::json!({
            "file": name,
            "content": hash,
            "taken_at": rfc3339(now),
            "duplicate_of": { "file": of.name, "taken_at": rfc3339(of.taken_at) },
            "items": of.item_ids,
        }),
    };
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

fn reject(layout: &Layout, path: &Path, reason: &str) -> Result<PathBuf, IntakeError> {
    let text = format!(
        "{}: {reason}\n\nideamill could not take this file from the inbox ({}); none of its ideas \
         were added.\nFix it and put it into the inbox again.\n",
        file_name(path),
        rfc3339(now_millis())
    );
    file_away(path, &layout.rejected, ERROR_SUFFIX, &text)
}

/// Move `path` into `dir` under its own name (or `name~N.ext` when that is
/// taken), with a companion file `<new name><suffix>` holding `companion`.
/// The companion is written first, atomically, so a file is never filed
/// without it; nothing existing is ever replaced. The folders are synced
/// by the caller, once per batch ([`Layout::sync`]).
fn file_away(
    path: &Path,
    dir: &Path,
    suffix: &str,
    companion: &str,
) -> Result<PathBuf, IntakeError> {
    std::fs::create_dir_all(dir)
        .map_err(IntakeError::io(format!("cannot create {}", dir.display())))?;
    let name = file_name(path);
    let dest = free_name(dir, &name, suffix);
    let dest_name = file_name(&dest);
    write_atomic(dir, &format!("{dest_name}{suffix}"), companion.as_bytes())?;
    std::fs::rename(path, &dest).map_err(IntakeError::io(format!(
        "cannot move {} to {}",
        path.display(),
        dest.display()
    )))?;
    Ok(dest)
}

/// `name`, or `stem~2.ext`, `stem~3.ext`, … : the first for which neither
/// the file nor its companion exists. Only the inbox's one taker (it holds
/// the inbox lock) writes here, so the check cannot race.
fn free_name(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let free = |candidate: &str| {
        let taken = |p: PathBuf| std::fs::symlink_metadata(p).is_ok();
        !taken(dir.join(candidate)) && !taken(dir.join(format!("{candidate}{suffix}")))
    };
    if free(name) {
        return dir.join(name);
    }
    let mut n = 2u64;
    loop {
        let candidate = format!("{stem}~{n}{ext}");
        if free(&candidate) {
            return dir.join(candidate);
        }
        n += 1;
    }
}

/// Write a file whole or not at all: temp file, fsync, rename. The folder
/// is synced by the caller, once per batch ([`Layout::sync`]).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IntakeError> {
    let dest = dir.join(name);
    // 0o666 less the umask, as `File::create` would.
    ideamill_sys::fs::write_atomic_batched(&dest, bytes, 0o666)
        .map_err(IntakeError::io(format!("cannot write {}", dest.display())))
}

fn sync_dir(dir: &Path) -> Result<(), IntakeError> {
    ideamill_sys::fs::sync_dir(dir)
        .map_err(IntakeError::io(format!("cannot sync {}", dir.display())))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn rfc3339(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `3–7, 9`: ids as ranges, for messages.
pub fn id_ranges(ids: &[ItemId]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}–{}", ids[i], ids[j])
        } else {
            ids[i].to_string()
        });
        i = j + 1;
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_names() {
        for name in [".hidden.json", "ideas.json.tmp", "ideas.txt.part", ".lock"] {
            assert!(ignored(name), "{name}");
        }
        for name in ["ideas.json", "tmp.txt", "part.md"] {
            assert!(!ignored(name), "{name}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(id_ranges(&[1, 2, 3, 5, 7, 8]), "1–3, 5, 7–8");
        assert_eq!(id_ranges(&[4]), "4");
        assert_eq!(id_ranges(&[]), "none");
    }

    #[test]
    fn free_names_never_replace_anything() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(free_name(d, "a.txt", ".items.json"), d.join("a.txt"));
        std::fs::write(d.join("a.txt"), "x").unwrap();
        assert_eq!(free_name(d, "a.txt", ".items.json"), d.join("a~2.txt"));
        // A companion's name taken by someone else's file counts too.
        std::fs::write(d.join("a~2.txt.items.json"), "x").unwrap();
        assert_eq!(free_name(d, "a.txt", ".items.json"), d.join("a~3.txt"));
        assert_eq!(free_name(d, "noext", ".error.txt"), d.join("noext"));
    }
}
