//! Cross-process wake-ups for stores without LISTEN/NOTIFY (SQLite): every
//! engine binds a Unix datagram socket in a shared folder, and whoever adds
//! work sends one byte to each. No polling while idle, sub-millisecond
//! delivery; a lost datagram only delays work until the engine's slow poll.

use std::io;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

/// Fires when some process has added work that this one may run.
#[async_trait]
pub trait WorkSignal: Send {
    /// Wait until woken. Several wake-ups in a row may be merged into one.
    async fn wait(&mut self);
}

/// A signal that never fires: the engine then relies on its poll.
pub struct NeverSignal;

#[async_trait]
impl WorkSignal for NeverSignal {
    async fn wait(&mut self) {
        std::future::pending::<()>().await
    }
}

/// The folder of wake sockets.
#[derive(Debug, Clone)]
pub struct WakeDir {
    dir: PathBuf,
}

// Unix socket paths are limited to 108 bytes (sun_path) on Linux.
const MAX_SOCKET_PATH: usize = 100;

impl WakeDir {
    /// The wake sockets of `dir`.
    pub fn new(dir: &Path) -> WakeDir {
        WakeDir {
            dir: dir.to_path_buf(),
        }
    }

    /// Wake every listening engine. Best effort: errors are only logged, since
    /// the work is already committed and the engines' poll will find it.
    pub fn notify(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let Ok(sender) = StdDatagram::unbound() else {
            return;
        };
        let _ = sender.set_nonblocking(true);
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            match sender.send_to(b"w", &path) {
                Ok(_) => {}
                // Nobody is bound there any more: a process died without
                // cleaning up. Remove the file so senders stop trying.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                // A full buffer means a wake-up is already pending.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::debug!("Could not wake {}: {e}", path.display()),
            }
        }
    }

    /// Bind this process's socket.
    pub fn subscribe(&self) -> io::Result<WakeSocket> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!(
            "{}-{:08x}.sock",
            std::process::id(),
            fastrand_u32()
        ));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "wake socket path {} is too long for a Unix socket",
                    path.display()
                ),
            ));
        }
        let sock = tokio::net::UnixDatagram::bind(&path)?;
        Ok(WakeSocket { sock, path })
    }
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// This process's bound wake socket; removed when dropped.
pub struct WakeSocket {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
}

#[async_trait]
impl WorkSignal for WakeSocket {
    async fn wait(&mut self) {
        let mut buf = [0u8; 16];
        if self.sock.recv(&mut buf).await.is_err() {
            // Should not happen on a bound datagram socket; avoid a busy loop.
            std::future::pending::<()>().await
        }
        // Merge a burst of wake-ups into one.
        while self.sock.try_recv(&mut buf).is_ok() {}
    }
}

impl Drop for WakeSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
