//! Writes extracted files into an item's workspace: atomically, and never
//! outside it.
//!
//! Every name is checked before anything is written: no absolute path, no
//! `..`, no NUL or control character, no backslash; then every existing
//! ancestor is checked with `symlink_metadata`, and a symlink is followed
//! only if it resolves inside the workspace. Files are written to a temp
//! file in the target directory, fsynced, renamed over the target (which
//! replaces a symlink or hard link there rather than writing through it),
//! and the directory is fsynced.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags, openat};

use crate::blocks::FileBlock;

/// Bounds on what one answer may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// A larger file is refused.
    pub max_file_bytes: u64,
    /// Files beyond this many written are refused.
    pub max_files: usize,
}

impl Default for FileLimits {
    /// 1 MiB per file, 200 files.
    fn default() -> FileLimits {
        FileLimits {
            max_file_bytes: 1 << 20,
            max_files: 200,
        }
    }
}

/// What was written and what was refused, with why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// Paths relative to the workspace, in the order written.
    pub written: Vec<String>,
    /// `(path as named, reason)`: the model's mistakes, for its feedback.
    pub refused: Vec<(String, String)>,
}

/// A failure of the file system (not of the model): the write should be
/// retried, not reported to the model. Files written before it stay.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// Writes `files` inside `workspace` (created if missing), refusing every
/// name that is invalid or would leave it, files over `max_file_bytes`, and
/// files past the first `max_files` written.
pub fn write_files(
    workspace: &Path,
    files: &[FileBlock],
    limits: &FileLimits,
) -> Result<WriteReport, WriteError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| WriteError { path, source }
    };
    fs::create_dir_all(workspace).map_err(io_err(workspace))?;
    let root = fs::canonicalize(workspace).map_err(io_err(workspace))?;
    let mut report = WriteReport::default();
    for file in files {
        let mut refuse = |reason: String| report.refused.push((file.path.clone(), reason));
        let parts = match check_name(&file.path) {
            Ok(parts) => parts,
            Err(reason) => {
                refuse(reason);
                continue;
            }
        };
        let size = file.content.len() as u64;
        if size > limits.max_file_bytes {
            refuse(format!(
                "too large: {size} bytes (the limit is {})",
                limits.max_file_bytes
            ));
            continue;
        }
        if report.written.len() >= limits.max_files {
            refuse(format!(
                "too many files: only the first {} are written",
                limits.max_files
            ));
            continue;
        }
        let (dirs, name) = parts.split_at(parts.len() - 1);
        let dir = match directory_inside(&root, dirs)? {
            Ok(dir) => dir,
            Err(reason) => {
                refuse(reason);
                continue;
            }
        };
        let target = dir.join(&name[0]);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                refuse("a directory already has this name".to_string());
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&target)(e)),
        }
        // Written through a handle opened component by component with
        // O_NOFOLLOW from the workspace's own: a symlink a running process
        // swaps in after the checks above cannot redirect the write.
        let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
        let handle = match open_dir_beneath(&root, rel) {
            Ok(handle) => handle,
            Err(e) if matches!(e.raw_os_error(), Some(code) if code == ELOOP || code == ENOTDIR) => {
                refuse("the folder changed while writing (a link was swapped in)".to_string());
                continue;
            }
            Err(e) => return Err(io_err(&dir)(e)),
        };
        ideamill_sys::fs::write_atomic_at(&handle, &name[0], file.content.as_bytes(), 0o644)
            .map_err(io_err(&target))?;
        report.written.push(parts.join("/"));
    }
    Ok(report)
}

/// The path's components if it is a valid relative file name, else why not.
/// Bidirectional controls, zero-width and other invisible format characters:
/// they make `evil.py` look like another name on the dashboard.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

fn check_name(path: &str) -> Result<Vec<String>, String> {
    if path.trim().is_empty() {
        return Err("empty file name".to_string());
    }
    if path.contains('\0') {
        return Err("the name contains a nul byte".to_string());
    }
    if path.chars().any(char::is_control) {
        return Err("the name contains a control character".to_string());
    }
    if let Some(c) = path.chars().find(|&c| is_invisible_format(c)) {
        return Err(format!(
            "the name contains U+{:04X}, an invisible or direction-changing character that disguises names",
            u32::from(c)
        ));
    }
    if path.contains('\\') {
        return Err("the name contains a backslash (use /)".to_string());
    }
    let first = path.split('/').next().unwrap_or("");
    let drive = first.len() == 2 && first.ends_with(':');
    if path.starts_with('/') || Path::new(path).has_root() || drive {
        return Err("absolute path: names must be relative to the workspace".to_string());
    }
    if first == "~" {
        return Err(
            "a home-relative path (~): names must be relative to the workspace".to_string(),
        );
    }
    if path.ends_with('/') {
        return Err("the name is a directory, not a file".to_string());
    }
    if path.len() > 4096 {
        return Err("the name is longer than 4096 bytes".to_string());
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the name contains a parent-directory component (..)".to_string()),
            _ if part.len() > 255 => {
                return Err("a component of the name is longer than 255 bytes".to_string());
            }
            _ => parts.push(part.to_string()),
        }
    }
    if parts.is_empty() {
        return Err("empty file name".to_string());
    }
    Ok(parts)
}

/// The directory `root/dirs...`, created where missing, or why it may not
/// be used: an ancestor is a file, or a symlink that points outside `root`
/// or nowhere. `root` is canonical, and so is every directory returned.
fn directory_inside(root: &Path, dirs: &[String]) -> Result<Result<PathBuf, String>, WriteError> {
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| WriteError { path, source }
    };
    let mut dir = root.to_path_buf();
    for (i, part) in dirs.iter().enumerate() {
        let next = dir.join(part);
        let shown = dirs[..=i].join("/");
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let Ok(resolved) = fs::canonicalize(&next) else {
                    return Ok(Err(format!("{shown} is a symlink that points nowhere")));
                };
                if !resolved.starts_with(root) {
                    return Ok(Err(format!(
                        "{shown} is a symlink that leaves the workspace"
                    )));
                }
                if !resolved.is_dir() {
                    return Ok(Err(format!("{shown} is not a directory")));
                }
                dir = resolved;
            }
            Ok(meta) if meta.is_dir() => dir = next,
            Ok(_) => return Ok(Err(format!("{shown} is a file, not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::create_dir(&next) {
                    Ok(()) => {}
                    // Created meanwhile by someone else: check it again.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return directory_inside(root, dirs);
                    }
                    Err(e) => return Err(err(&next)(e)),
                }
                // The new entry must survive a crash like the files in it.
                ideamill_sys::fs::sync_dir(&dir).map_err(err(&dir))?;
                dir = next;
            }
            Err(e) => return Err(err(&next)(e)),
        }
    }
    // Belt and braces: whatever happened above, the directory must resolve
    // inside the workspace before a byte is written into it.
    let resolved = fs::canonicalize(&dir).map_err(err(&dir))?;
    if !resolved.starts_with(root) {
        return Ok(Err(
            "the directory resolves outside the workspace".to_string()
        ));
    }
    Ok(Ok(resolved))
}

const ELOOP: i32 = rustix::io::Errno::LOOP.raw_os_error();
const ENOTDIR: i32 = rustix::io::Errno::NOTDIR.raw_os_error();

/// `root/rel`, opened one component at a time without following a link.
fn open_dir_beneath(root: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = openat(CWD, root, flags, Mode::empty())?;
    for part in rel.components() {
        dir = openat(&dir, part.as_os_str(), flags, Mode::empty())?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    fn block(path: &str, content: &str) -> FileBlock {
        FileBlock {
            path: path.to_string(),
            content: content.to_string(),
            lang: None,
        }
    }

    /// Every file and directory under `dir` (symlinks not followed), with
    /// the content of files.
    fn tree(dir: &Path) -> BTreeMap<String, String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let rel = path.strip_prefix(base).unwrap().display().to_string();
                let kind = entry.file_type().unwrap();
                if kind.is_symlink() {
                    out.insert(
                        rel,
                        format!("-> {}", fs::read_link(&path).unwrap().display()),
                    );
                } else if kind.is_dir() {
                    out.insert(rel.clone() + "/", String::new());
                    walk(base, &path, out);
                } else {
                    out.insert(rel, fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    #[track_caller]
    fn check_name_err(name: &str, reason: &str) {
        assert_eq!(check_name(name), Err(reason.to_string()), "{name:?}");
    }

    #[test]
    fn names() {
        assert_eq!(
            check_name("a/./b//c.py"),
            Ok(vec!["a".into(), "b".into(), "c.py".into()])
        );
        check_name_err("", "empty file name");
        check_name_err("  ", "empty file name");
        check_name_err(".", "empty file name");
        check_name_err("a\0b", "the name contains a nul byte");
        check_name_err("a\nb", "the name contains a control character");
        check_name_err(
            "main\u{202E}yp.exe",
            "the name contains U+202E, an invisible or direction-changing character that disguises names",
        );
        check_name_err(
            "ma\u{200B}in.py",
            "the name contains U+200B, an invisible or direction-changing character that disguises names",
        );
        check_name_err("a\\..\\b", "the name contains a backslash (use /)");
        check_name_err(
            "/etc/passwd",
            "absolute path: names must be relative to the workspace",
        );
        check_name_err(
            "C:/x",
            "absolute path: names must be relative to the workspace",
        );
        check_name_err(
            "~/x",
            "a home-relative path (~): names must be relative to the workspace",
        );
        check_name_err(
            "../x",
            "the name contains a parent-directory component (..)",
        );
        check_name_err(
            "a/../../x",
            "the name contains a parent-directory component (..)",
        );
        check_name_err(
            "a/..",
            "the name contains a parent-directory component (..)",
        );
        check_name_err("src/", "the name is a directory, not a file");
        check_name_err(
            &"x".repeat(300),
            "a component of the name is longer than 255 bytes",
        );
    }

    #[test]
    fn writes_files_and_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let files = [
            block("app/main.py", "print(1)\n"),
            block("README.md", "# hi\n"),
        ];
        let report = write_files(&ws, &files, &FileLimits::default()).unwrap();
        assert_eq!(report.written, ["app/main.py", "README.md"]);
        assert!(report.refused.is_empty());
        let expected: BTreeMap<String, String> = [
            ("README.md", "# hi\n"),
            ("app/", ""),
            ("app/main.py", "print(1)\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(tree(&ws), expected, "no temp file is left behind");
        // Rewriting replaces.
        write_files(
            &ws,
            &[block("app/main.py", "print(2)\n")],
            &FileLimits::default(),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(ws.join("app/main.py")).unwrap(),
            "print(2)\n"
        );
    }

    #[test]
    fn limits() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = FileLimits {
            max_file_bytes: 10,
            max_files: 2,
        };
        let files = [
            block("big.txt", &"x".repeat(11)),
            block("a.txt", "a"),
            block("../bad", "x"),
            block("b.txt", &"b".repeat(10)),
            block("c.txt", "c"),
        ];
        let report = write_files(tmp.path(), &files, &limits).unwrap();
        assert_eq!(report.written, ["a.txt", "b.txt"]);
        assert_eq!(
            report.refused,
            [
                (
                    "big.txt".to_string(),
                    "too large: 11 bytes (the limit is 10)".to_string()
                ),
                (
                    "../bad".to_string(),
                    "the name contains a parent-directory component (..)".to_string()
                ),
                (
                    "c.txt".to_string(),
                    "too many files: only the first 2 are written".to_string()
                ),
            ]
        );
    }

    /// The race the checks cannot see: a folder checked as real is swapped
    /// for a link to outside before the write. The handle walk refuses it,
    /// and a link in the file's own place is replaced, not written through.
    #[test]
    fn a_link_swapped_in_after_the_checks_cannot_redirect_a_write() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("ws");
        let outside = base.path().join("outside");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let root = fs::canonicalize(&root).unwrap();
        // Checked as a folder; now a link.
        fs::remove_dir(root.join("sub")).unwrap();
        symlink(&outside, root.join("sub")).unwrap();
        let refused = open_dir_beneath(&root, Path::new("sub")).unwrap_err();
        assert!(
            matches!(refused.raw_os_error(), Some(code) if code == ELOOP || code == ENOTDIR),
            "{refused}"
        );
        // The file's own name is a link to outside: replaced, not followed.
        fs::write(outside.join("target"), "keep").unwrap();
        symlink(outside.join("target"), root.join("main.py")).unwrap();
        let handle = open_dir_beneath(&root, Path::new("")).unwrap();
        ideamill_sys::fs::write_atomic_at(&handle, "main.py", b"new", 0o644).unwrap();
        assert_eq!(fs::read_to_string(outside.join("target")).unwrap(), "keep");
        assert!(
            !fs::symlink_metadata(root.join("main.py"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(root.join("main.py")).unwrap(), "new");
        assert!(
            fs::read_dir(&outside).unwrap().count() == 1,
            "nothing new outside"
        );
    }

    #[test]
    fn symlinks_inside_are_followed_and_replaced_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let outside = tmp.path().join("outside.txt");
        fs::create_dir_all(ws.join("real")).unwrap();
        fs::write(&outside, "keep").unwrap();
        symlink(ws.join("real"), ws.join("alias")).unwrap();
        symlink(&outside, ws.join("link.txt")).unwrap();
        let files = [block("alias/x.py", "x"), block("link.txt", "new")];
        let report = write_files(&ws, &files, &FileLimits::default()).unwrap();
        assert_eq!(report.written, ["alias/x.py", "link.txt"]);
        assert_eq!(fs::read_to_string(ws.join("real/x.py")).unwrap(), "x");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        assert!(
            !fs::symlink_metadata(ws.join("link.txt"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    /// The invariant: whatever the names, nothing is written outside the
    /// workspace, and every hostile name is refused with a reason.
    #[test]
    fn nothing_is_ever_written_outside_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path();
        let ws = parent.join("ws");
        let outside = parent.join("outside");
        fs::create_dir_all(&ws).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(ws.join("file_parent")).unwrap();
        fs::write(ws.join("plain"), "p").unwrap();
        symlink(&outside, ws.join("escape")).unwrap();
        symlink(parent.join("missing"), ws.join("dangling")).unwrap();
        symlink("../..", ws.join("file_parent/up")).unwrap();
        let absolute = parent.join("abs.txt").display().to_string();
        let hostile = [
            "../x",
            absolute.as_str(),
            "/tmp/ideamill-llm-escape-test",
            "a/../../x",
            "escape/x",
            "escape/deeper/x",
            "dangling/x",
            "file_parent/up/x",
            "file_parent/up/ws/x",
            "plain/x",
            "..",
            "a\\..\\..\\x",
            "\0",
            "x\0/y",
            "~/x",
        ];
        let before_parent = tree(parent);
        let files: Vec<FileBlock> = hostile.iter().map(|p| block(p, "pwned")).collect();
        let report = write_files(&ws, &files, &FileLimits::default()).unwrap();
        let refused: Vec<&str> = report.refused.iter().map(|(p, _)| p.as_str()).collect();
        // Even `file_parent/up/ws/x`, which would come back inside: its
        // ancestor `file_parent/up` resolves outside.
        assert_eq!(refused, hostile, "{:#?}", report.refused);
        assert!(report.written.is_empty());
        assert_eq!(tree(parent), before_parent);
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
        assert!(!Path::new("/tmp/ideamill-llm-escape-test").exists());
        for (_, reason) in &report.refused {
            assert!(!reason.is_empty());
        }
    }
}
