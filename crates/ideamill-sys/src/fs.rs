//! Files that must survive a crash, files that must not surprise a reader,
//! and free space.
//!
//! A file that must survive a crash is written whole or not at all: a temp
//! file in the same folder (created new, never through a link) → write →
//! fsync → rename over the target → fsync of the folder, so that after a
//! crash a reader finds the old content or the new, never a part, and once
//! the call returns the new content stays.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{
    AtFlags, CWD, FileType, FlockOperation, Mode, OFlags, flock, fsync, openat, renameat, unlinkat,
};

/// Write `content` to `path` crash-safely (see the module's doc), replacing
/// what is there. A new file gets `mode` (less the umask); the folder must
/// exist. The path's folder is followed as given, links included; the temp
/// file and the rename never follow a link.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    write_atomic_at(&dir, name, content, mode)
}

/// [`write_atomic`] relative to an open folder `dir`: the temp file is
/// created new in `dir` (`O_EXCL | O_NOFOLLOW`) and renamed to `name`, which
/// must be a single path component, so nothing is written anywhere but in
/// `dir` even if its entries are links.
pub fn write_atomic_at(dir: &impl AsFd, name: &str, content: &[u8], mode: u32) -> io::Result<()> {
    replace_at(dir, name, content, mode)?;
    Ok(fsync(dir)?)
}

/// [`write_atomic`] but for one file of a batch: everything except the
/// final fsync of the folder, which the caller does once for the batch with
/// [`sync_dir`]. Until then a crash may lose the new name (a reader finds
/// the old content or none), never leave a part.
pub fn write_atomic_batched(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    replace_at(&dir, name, content, mode)
}

/// temp file → write → fsync → rename over `name`, in `dir`.
fn replace_at(dir: &impl AsFd, name: &str, content: &[u8], mode: u32) -> io::Result<()> {
    let temp = write_temp(dir, content, mode, true)?;
    if let Err(e) = renameat(dir, temp.as_str(), dir, name) {
        let _ = unlinkat(dir, temp.as_str(), AtFlags::empty());
        return Err(e.into());
    }
    Ok(())
}

/// Replace `path` with `content` so that a reader finds the old content or
/// the new, never a part, without waiting for the device (no fsync): after a
/// crash either may be gone. For a file that describes a live process (a
/// status file), which a crash makes stale anyway: written every beat, it
/// costs no disk flush and puts no thread to sleep on the device.
pub fn replace_unsynced(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    let temp = write_temp(&dir, content, mode, false)?;
    if let Err(e) = renameat(&dir, temp.as_str(), &dir, name) {
        let _ = unlinkat(&dir, temp.as_str(), AtFlags::empty());
        return Err(e.into());
    }
    Ok(())
}

/// Rewrite `path` in place with `content`, holding an exclusive `flock`
/// while writing, for a file rewritten every few seconds that its readers
/// read with [`read_locked`]. Replacing it by rename (as
/// [`replace_unsynced`]) put the writer to sleep in `renameat` on ext4 (it
/// starts the new file's write-back and frees the old file's blocks), once
/// every rewrite: an idle engine's largest source of wake-ups. A shorter
/// content is padded with spaces to the old length instead of truncating
/// (JSON and most text readers ignore trailing whitespace), so that no
/// rewrite frees a block. When a reader holds the lock, or the name is not
/// a plain file (a FIFO, a link), it falls back to [`replace_unsynced`]:
/// the writer never waits and never writes through a link.
pub fn overwrite_locked(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    let file = match openat(
        &dir,
        name,
        // NONBLOCK: opening a FIFO for writing would wait for a reader.
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        // Not there yet (or a link): created whole, so that no reader
        // finds it empty.
        Err(_) => return replace_unsynced(path, content, mode),
    };
    let old_len = match rustix::fs::fstat(&file) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            st.st_size as usize
        }
        _ => return replace_unsynced(path, content, mode),
    };
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return replace_unsynced(path, content, mode);
    }
    let padded;
    let bytes = if content.len() < old_len {
        let mut p = Vec::with_capacity(old_len);
        p.extend_from_slice(content);
        p.resize(old_len - 1, b' ');
        p.push(b'\n');
        padded = p;
        &padded[..]
    } else {
        content
    };
    let mut at = 0;
    while at < bytes.len() {
        let n = rustix::io::pwrite(&file, &bytes[at..], at as u64)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n;
    }
    // The lock goes with the descriptor.
    Ok(())
}

/// Read a file that [`overwrite_locked`] rewrites: under a shared `flock`
/// when one can be had within a few milliseconds (a writer holds it for
/// microseconds, but a stopped writer could hold it for good, so a reader
/// never waits longer), at most `limit` bytes, and never from anything but
/// a plain file (no FIFO to block on, no link followed).
pub fn read_locked(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} bytes", path.display()),
        ));
    }
    for _ in 0..20 {
        if flock(&file, FlockOperation::NonBlockingLockShared).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Like [`write_atomic`], but only if `path` does not exist yet: returns
/// false, and writes nothing, if it does. Two processes racing to create the
/// same file cannot both succeed, and a reader never sees a part of it.
pub fn create_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<bool> {
    let (dir, name) = open_parent(path)?;
    let temp = write_temp(&dir, content, mode, true)?;
    // A hard link fails if the name is taken (rename would replace it), and
    // every Linux file system that matters has hard links.
    let linked = rustix::fs::linkat(&dir, temp.as_str(), &dir, name, AtFlags::empty());
    let _ = unlinkat(&dir, temp.as_str(), AtFlags::empty());
    match linked {
        Ok(()) => {
            fsync(&dir)?;
            Ok(true)
        }
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Write a new temp file in `dir`, synced if `sync`; returns its name.
fn write_temp(dir: &impl AsFd, content: &[u8], mode: u32, sync: bool) -> io::Result<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // A hidden name that is short whatever the target's length, and unique
    // within the process; the inbox watcher and status-file readers ignore
    // it, and `O_EXCL` refuses to reuse a leftover of a crash.
    let temp = format!(
        ".ideamill-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let result = (|| -> io::Result<()> {
        let fd = openat(
            dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        let mut file = File::from(fd);
        file.write_all(content)?;
        if sync { file.sync_all() } else { Ok(()) }
    })();
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = unlinkat(dir, temp.as_str(), AtFlags::empty());
            Err(e)
        }
    }
}

/// The open folder holding `path`, and the file's name in it.
fn open_parent(path: &Path) -> io::Result<(OwnedFd, &str)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = openat(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((dir, name))
}

/// Create or truncate `path` (mode `mode`), write `content` and fsync it; no
/// temp file. For files inside a folder that is itself renamed into place
/// once complete (evidence bundles), where a rename per file would be waste.
pub fn write_synced(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// fsync a folder, so that the entries created, renamed or removed in it
/// survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Open `path` for reading only if it is a regular file, without following
/// a final link and without blocking: a FIFO planted where a file was
/// expected would otherwise hang the reader for ever, and a device could
/// become its controlling terminal. Read it bounded (`take`): a regular
/// file can still be huge.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let fd = openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Free bytes for unprivileged users on the file system holding `path`, or
/// of its nearest existing ancestor when the folder does not exist yet.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn overwrite_locked_readers_see_one_whole_content_or_the_other() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("status.json");
        // Two pages long and one short, so that a torn read would mix them.
        let long = format!("{{\"x\": \"{}\"}}\n", "a".repeat(7000)).into_bytes();
        let short = format!("{{\"x\": \"{}\"}}\n", "b".repeat(100)).into_bytes();
        overwrite_locked(&path, &long, 0o600).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..3000 {
                    let c = if i % 2 == 0 { &short } else { &long };
                    overwrite_locked(&path, c, 0o600).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            });
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) || reads < 100 {
                let got = read_locked(&path, 1 << 20).unwrap();
                let got = got.trim_ascii_end();
                assert!(
                    got == long.trim_ascii_end() || got == short.trim_ascii_end(),
                    "a torn read of {} bytes after {reads} reads",
                    got.len()
                );
                reads += 1;
            }
        });
        // Rewritten in place: padded to the longest content, never shrunk.
        assert!(leftovers(d.path()).is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), long.len() as u64);
    }

    #[test]
    fn overwrite_locked_replaces_a_link_or_a_fifo_instead_of_writing_into_it() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        overwrite_locked(&link, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(read_locked(&link, 100).unwrap(), b"new");

        let fifo = d.path().join("fifo.json");
        make_fifo(&fifo);
        // Neither waits for the FIFO's other end.
        assert!(read_locked(&fifo, 100).is_err());
        overwrite_locked(&fifo, b"new", 0o600).unwrap();
        assert_eq!(read_locked(&fifo, 100).unwrap(), b"new");
        // A reader reads no more than it allows.
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; 1000]).unwrap();
        assert!(read_locked(&big, 999).is_err());
        assert!(read_locked(&d.path().join("missing"), 100).is_err());
    }

    fn make_fifo(path: &Path) {
        rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn write_atomic_replaces_whole_with_the_mode_given() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_atomic(&path, b"two, longer", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn write_atomic_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        // No such folder.
        assert!(write_atomic(&d.path().join("no/such.json"), b"x", 0o600).is_err());
        // A folder where the file would go: the rename fails, no temp stays.
        std::fs::create_dir(d.path().join("taken")).unwrap();
        std::fs::write(d.path().join("taken/inside"), b"").unwrap();
        assert!(write_atomic(&d.path().join("taken"), b"x", 0o600).is_err());
        assert!(leftovers(d.path()).is_empty());
        assert!(write_atomic(Path::new("/"), b"x", 0o600).is_err());
    }

    #[test]
    fn write_atomic_replaces_a_link_instead_of_writing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("f")).unwrap();
        write_atomic(&d.path().join("f"), b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(
            !std::fs::symlink_metadata(d.path().join("f"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn create_atomic_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("token");
        assert!(create_atomic(&path, b"first\n", 0o600).unwrap());
        assert!(!create_atomic(&path, b"second\n", 0o600).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn open_regular_refuses_fifos_links_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("file");
        std::fs::write(&file, b"ok").unwrap();
        assert!(open_regular(&file).is_ok());
        let fifo = d.path().join("fifo");
        make_fifo(&fifo);
        // Would block for ever without O_NONBLOCK; refused as not a file.
        assert!(open_regular(&fifo).is_err());
        std::os::unix::fs::symlink(&file, d.path().join("link")).unwrap();
        assert!(open_regular(&d.path().join("link")).is_err());
        assert!(open_regular(d.path()).is_err());
    }

    #[test]
    fn free_bytes_of_a_missing_folder_is_its_ancestors() {
        let d = tempfile::tempdir().unwrap();
        let here = free_bytes(d.path()).unwrap();
        let missing = free_bytes(&d.path().join("not/yet")).unwrap();
        assert!(here > 0 && missing > 0);
    }
}
