//! Pipes for self-pipe signal handling and the engine's beat pipe.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, pipe_with};

/// A new pipe, `(read end, write end)`, both ends non-blocking and
/// close-on-exec (`pipe2(O_NONBLOCK | O_CLOEXEC)`): a writer in a signal
/// handler never blocks, and no child inherits an end unless it is handed
/// one on purpose.
pub fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    #[test]
    fn a_pipe_is_nonblocking_and_close_on_exec() {
        let (read, write) = super::nonblocking_pipe().unwrap();
        for fd in [&read, &write] {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
        let mut read = std::fs::File::from(read);
        let mut buf = [0u8; 4];
        // Empty: a read says so at once instead of waiting.
        let err = read.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        std::fs::File::from(write).write_all(b"beat").unwrap();
        assert_eq!(read.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"beat");
    }
}
