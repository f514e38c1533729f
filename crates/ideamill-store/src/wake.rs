//! Wake-ups. Within a process, a store wakes the engines subscribed through
//! it directly ([`LocalWake`]: no system call, no server round trip). Across
//! processes, stores without LISTEN/NOTIFY (SQLite) use Unix datagram
//! sockets: every engine binds one in a shared folder, and whoever adds work
//! sends one byte to each but its own. No polling while idle,
//! sub-millisecond delivery; a lost datagram only delays work until the
//! engine's slow poll.

use std::collections::HashSet;
use std::io;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;

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

/// Wake-ups among the subscribers of one store in this process: a count of
/// the commits that made work visible, which each subscriber waits to see
/// change (several in a row are seen as one).
#[derive(Debug)]
pub(crate) struct LocalWake {
    commits: watch::Sender<u64>,
}

impl LocalWake {
    pub(crate) fn new() -> LocalWake {
        LocalWake {
            commits: watch::Sender::new(0),
        }
    }

    /// Wake every subscriber (call once the work is committed).
    pub(crate) fn notify(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `remote` (other processes' wake-ups) or this store's own commits,
    /// whichever comes first.
    pub(crate) fn with<S: WorkSignal + 'static>(&self, remote: S) -> Box<dyn WorkSignal> {
        Box::new(EitherSignal {
            remote,
            local: self.commits.subscribe(),
        })
    }
}

struct EitherSignal<S> {
    remote: S,
    local: watch::Receiver<u64>,
}

#[async_trait]
impl<S: WorkSignal> WorkSignal for EitherSignal<S> {
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.remote.wait() => {}
            changed = self.local.changed() => if changed.is_err() {
                // The store is gone: only other processes can wake us now.
                self.remote.wait().await
            },
        }
    }
}

/// The folder of wake sockets.
#[derive(Debug, Clone)]
pub struct WakeDir {
    dir: PathBuf,
    /// The sockets this handle bound: its subscribers are woken in process.
    own: Arc<Mutex<HashSet<PathBuf>>>,
    /// The folder as last listed, and the socket that sends: a wake-up is
    /// then a `stat` of the folder and a send to each engine, where listing
    /// it and opening a socket were five more system calls before the first
    /// engine was woken.
    peers: Arc<Mutex<Peers>>,
}

#[derive(Debug, Default)]
struct Peers {
    sender: Option<StdDatagram>,
    /// The sockets in the folder, and the folder's modification time for
    /// which the listing holds: none when it was too recent to tell, so
    /// that the next wake-up lists the folder again.
    listed: Option<(Option<SystemTime>, Vec<PathBuf>)>,
}

// Unix socket paths are limited to 108 bytes (sun_path) on Linux.
const MAX_SOCKET_PATH: usize = 100;

/// A listing is trusted only once the folder's modification time is this
/// much older than the listing: the time is coarse (a scheduler tick), so a
/// socket bound just after a listing within the same tick leaves it as it
/// was.
const SETTLED: Duration = Duration::from_secs(1);

impl WakeDir {
    /// The wake sockets of `dir`.
    pub fn new(dir: &Path) -> WakeDir {
        WakeDir {
            dir: dir.to_path_buf(),
            own: Arc::default(),
            peers: Arc::default(),
        }
    }

    /// Wake every listening engine of other handles. Best effort: errors are
    /// only logged, since the work is already committed and the engines'
    /// poll will find it.
    pub fn notify(&self) {
        let Ok(modified) = std::fs::metadata(&self.dir).and_then(|m| m.modified()) else {
            return;
        };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Peers { sender, listed } = &mut *peers;
        if sender.is_none() {
            *sender = StdDatagram::unbound()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .ok();
        }
        let Some(sender) = sender else { return };
        if listed.as_ref().is_none_or(|(at, _)| *at != Some(modified)) {
            let Ok(entries) = std::fs::read_dir(&self.dir) else {
                return;
            };
            let sockets = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .collect();
            let settled = SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age >= SETTLED);
            *listed = Some((settled.then_some(modified), sockets));
        }
        let Some((_, sockets)) = listed.as_ref() else {
            return;
        };
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let mut stale = false;
        for path in sockets.iter().filter(|p| !own.contains(*p)) {
            match sender.send_to(b"w", path) {
                Ok(_) => {}
                // Nobody is bound there any more: a process died without
                // cleaning up. Remove the file so senders stop trying.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(path);
                    stale = true;
                }
                // A full buffer means a wake-up is already pending.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("Could not wake {}: {e}", path.display());
                    stale = true;
                }
            }
        }
        if stale {
            *listed = None;
        }
    }

    /// Bind this process's socket.
    pub fn subscribe(&self) -> io::Result<WakeSocket> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{}.sock", handle_id()));
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
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone());
        Ok(WakeSocket {
            sock,
            path,
            own: self.own.clone(),
        })
    }
}

/// A name for one store handle, unique among the processes sharing a store.
pub(crate) fn handle_id() -> String {
    format!("{}-{:08x}", std::process::id(), fastrand_u32())
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// This process's bound wake socket; removed when dropped.
pub struct WakeSocket {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
    own: Arc<Mutex<HashSet<PathBuf>>>,
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
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}
