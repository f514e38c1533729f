//! Whether a gate's round made progress: the round's hash is the item's
//! workspace as the gate found it (names and contents of its regular files)
//! and the gate's feedback. A rejection whose hash is the previous round's
//! changed nothing, and the engine ends the loop early (`no_progress`)
//! instead of spending the remaining rounds on the same answer.

use std::io::Read;
use std::path::Path;

use ideamill_store::FeedbackRow;
use ideamill_sys::fs::open_regular;
use sha2::{Digest, Sha256};

use crate::executor::OWNER_FILE;

/// Beyond these, a workspace is not hashed (and the rule does not apply):
/// the hash must stay cheap next to a gate's run. Files:
pub const MAX_FILES: usize = 10_000;
/// Bytes (see [`MAX_FILES`]).
pub const MAX_BYTES: u64 = 256 << 20;

/// Folders that tools write as a side effect of running the code (a gate's
/// test run compiles `__pycache__`, whose files hold source timestamps):
/// they would make every round look new.
const SKIPPED: &[&str] = &[
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".git",
];

/// The hash of the regular files under `dir` (relative names and contents,
/// in name order), or `None` when there are more than [`MAX_FILES`] or
/// [`MAX_BYTES`], or `dir` cannot be read. Symlinks, FIFOs, sockets and
/// devices are left out and never opened; a folder reached through a link is
/// never walked. Blocking.
pub fn workspace_hash(dir: &Path) -> Option<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()? {
            let e = e.ok()?;
            let path = e.path();
            // `file_type` does not follow links.
            match e.file_type().ok()? {
                t if t.is_dir() && !SKIPPED.iter().any(|s| e.file_name() == *s) => {
                    stack.push(path);
                }
                t if t.is_file() => {
                    let rel = path.strip_prefix(dir).ok()?.to_path_buf();
                    if rel != Path::new(OWNER_FILE) {
                        files.push(rel);
                    }
                    if files.len() > MAX_FILES {
                        return None;
                    }
                }
                _ => {}
            }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    let mut budget = MAX_BYTES;
    let mut buf = vec![0u8; 64 << 10];
    for rel in &files {
        use std::os::unix::ffi::OsStrExt;
        // A file swapped for a FIFO or a link since the walk is refused by
        // `open_regular`: the workspace is changing, so no hash.
        let file = open_regular(&dir.join(rel)).ok()?;
        let name = rel.as_os_str().as_bytes();
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name);
        let mut limited = file.take(budget + 1);
        let mut len = 0u64;
        loop {
            let n = limited.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            len += n as u64;
            if len > budget {
                return None;
            }
            hash.update(&buf[..n]);
        }
        budget -= len;
        // The length after the content: names and contents cannot be
        // shifted into each other.
        hash.update(len.to_le_bytes());
    }
    Some(hex(&hash.finalize()))
}

/// The round's hash: the workspace's and the feedback's.
pub fn round_hash(workspace: &str, feedback: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(workspace.as_bytes());
    hash.update([0]);
    hash.update(feedback.as_bytes());
    hex(&hash.finalize())
}

/// Whether gate `gate`'s rejection in `round`, whose hash is `hash`,
/// repeats its rejection of the round before (the same files and the same
/// feedback). `earlier` is the item's feedback so far, oldest first.
pub fn repeats_previous_round(earlier: &[FeedbackRow], gate: &str, round: u32, hash: &str) -> bool {
    round > 1
        && earlier
            .iter()
            .rev()
            .find(|f| f.stage == gate && f.round == round - 1)
            .is_some_and(|f| f.round_hash.as_deref() == Some(hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    fn hash_of(files: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), files);
        workspace_hash(dir.path()).unwrap()
    }

    #[test]
    fn the_hash_follows_names_and_contents_only() {
        let base = hash_of(&[("main.py", "print(1)\n"), ("t/test_main.py", "x")]);
        assert_eq!(
            base,
            hash_of(&[("t/test_main.py", "x"), ("main.py", "print(1)\n")])
        );
        assert_ne!(
            base,
            hash_of(&[("main.py", "print(2)\n"), ("t/test_main.py", "x")])
        );
        assert_ne!(
            base,
            hash_of(&[("main2.py", "print(1)\n"), ("t/test_main.py", "x")])
        );
        assert_ne!(base, hash_of(&[("main.py", "print(1)\n")]));
        // A name and a content cannot trade bytes.
        assert_ne!(hash_of(&[("ab", "c")]), hash_of(&[("a", "bc")]));
        // What the mill and the tools write on the side does not count.
        assert_eq!(
            base,
            hash_of(&[
                ("main.py", "print(1)\n"),
                ("t/test_main.py", "x"),
                (OWNER_FILE, "7 123"),
                ("__pycache__/main.cpython-313.pyc", "\u{1}"),
                ("t/.pytest_cache/v/cache/lastfailed", "{}"),
            ])
        );
    }

    #[test]
    fn links_and_fifos_are_never_followed_or_opened() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("main.py", "a")]);
        let plain = workspace_hash(dir.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), &[("secret", "s")]);
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("s")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Would block forever if the FIFO were opened for reading.
        assert_eq!(workspace_hash(dir.path()).unwrap(), plain);
    }

    #[test]
    fn a_missing_folder_has_no_hash() {
        assert_eq!(workspace_hash(Path::new("/nonexistent/ideamill")), None);
    }

    fn feedback(stage: &str, round: u32, hash: Option<&str>) -> FeedbackRow {
        FeedbackRow {
            stage: stage.into(),
            round,
            feedback: "f".into(),
            created_at: 0,
            round_hash: hash.map(str::to_owned),
        }
    }

    #[test]
    fn a_round_repeats_only_the_same_gates_previous_round() {
        let h = round_hash("w", "No tests found");
        assert_ne!(h, round_hash("w", "No tests found."));
        assert_ne!(h, round_hash("w2", "No tests found"));
        let cases: &[(&[FeedbackRow], u32, bool)] = &[
            (&[], 1, false),
            (&[feedback("qa", 1, Some(&h))], 2, true),
            (&[feedback("qa", 1, Some("other"))], 2, false),
            // Rounds before the hash was kept never match.
            (&[feedback("qa", 1, None)], 2, false),
            // Another gate's round, or a round before the previous one.
            (&[feedback("lint", 1, Some(&h))], 2, false),
            (
                &[feedback("qa", 1, Some(&h)), feedback("qa", 2, Some("x"))],
                3,
                false,
            ),
            (
                &[feedback("qa", 1, Some("x")), feedback("qa", 2, Some(&h))],
                3,
                true,
            ),
        ];
        for (earlier, round, expected) in cases {
            assert_eq!(
                repeats_previous_round(earlier, "qa", *round, &h),
                *expected,
                "{earlier:?} round {round}"
            );
        }
    }
}
