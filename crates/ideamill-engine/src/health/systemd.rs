//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): datagrams such
//! as `READY=1`, `WATCHDOG=1` and `STATUS=...` sent to `$NOTIFY_SOCKET`.
//! A dozen lines instead of a crate. `WATCHDOG=1` is sent by the pulse, from
//! inside the event loop, so systemd's watchdog fires when the loop stalls
//! even if the process's other threads are fine.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Sends systemd notify-protocol datagrams to `$NOTIFY_SOCKET`.
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    /// `WatchdogSec=` as systemd passed it, when it is for this process.
    pub watchdog: Option<Duration>,
}

enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// A notifier when `$NOTIFY_SOCKET` is set, else `None`.
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = addr.to_string_lossy().into_owned();
        let target = match addr.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None => Target::Path(PathBuf::from(addr)),
        };
        let socket = UnixDatagram::unbound().ok()?;
        let _ = socket.set_nonblocking(true);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|_| for_us)
            .map(Duration::from_micros);
        Some(Notifier {
            socket,
            target,
            watchdog,
        })
    }

    /// Send one message (several `KEY=value` lines). Best effort: systemd
    /// going away must not disturb the engine.
    pub fn send(&self, message: &str) {
        let result = match &self.target {
            Target::Path(p) => self.socket.send_to(message.as_bytes(), p).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|addr| {
                    self.socket
                        .send_to_addr(message.as_bytes(), &addr)
                        .map(|_| ())
                })
            }
        };
        if let Err(e) = result {
            tracing::debug!("Could not notify systemd: {e}");
        }
    }
}
