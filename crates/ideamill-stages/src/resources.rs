//! Waiting out a lack of resources. A stage that cannot start because the
//! machine is short of something (file descriptors, processes, memory, room
//! on the disk) is the engine's trouble, not the item's: the attempt waits
//! and tries again, without spending the item's attempts, and says so where
//! health is judged (`spawn_failing` in the verdict).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ideamill_core::Millis;
use tokio_util::sync::CancellationToken;

/// The first pause; each next one doubles, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// One attempt's wait for resources, pause after pause.
pub(crate) struct ResourceWait {
    pause: Duration,
}

impl ResourceWait {
    pub(crate) fn new() -> ResourceWait {
        ResourceWait { pause: FIRST_PAUSE }
    }

    /// The pause the next [`wait`](Self::wait) would take.
    pub(crate) fn pause(&self) -> Duration {
        self.pause
    }

    /// Records `trouble` for health, logs it as DEGRADED and sleeps the
    /// pause; false when `cancel` fires first (the attempt is over).
    pub(crate) async fn wait(&mut self, trouble: String, cancel: &CancellationToken) -> bool {
        tracing::warn!(
            "DEGRADED: {trouble}; waiting {:?} and trying again",
            self.pause
        );
        note_resource_trouble(trouble);
        let slept = tokio::select! {
            () = tokio::time::sleep(self.pause) => true,
            () = cancel.cancelled() => false,
        };
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        slept
    }
}

/// EMFILE, ENFILE, EAGAIN, ENOMEM: the machine (or this process) is short
/// of something to start a program with, and waiting may fix it.
pub(crate) fn cannot_spawn_for_now(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}

/// ENOSPC or EDQUOT: no room on the disk (or in the quota) for now.
pub(crate) fn disk_full(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The last time a stage could not start for lack of resources, and why
/// (wall ms; 0 when never): shown in the status file, judged by the verdict.
static TROUBLE_AT: AtomicI64 = AtomicI64::new(0);
static TROUBLE: Mutex<String> = Mutex::new(String::new());

fn note_resource_trouble(message: String) {
    if let Ok(mut last) = TROUBLE.try_lock() {
        *last = message;
    }
    TROUBLE_AT.store(ideamill_sys::clock::now_millis(), Ordering::Relaxed);
}

/// When a stage last could not start for lack of resources, and why;
/// `None` if never. Never waits for a lock.
pub fn resource_trouble() -> Option<(Millis, String)> {
    let at = TROUBLE_AT.load(Ordering::Relaxed);
    (at > 0).then(|| {
        let message = TROUBLE.try_lock().map(|m| m.clone()).unwrap_or_default();
        (at, message)
    })
}
