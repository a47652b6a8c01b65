//! Non-blocking pipes to helper processes, waited on with `poll(2)`.
//!
//! The redo pool talks to Postgres `--wal-redo` processes over their stdin
//! and stdout. Writing a long pipeline of requests while the process writes
//! replies would deadlock with blocking pipes (each side waiting for the
//! other to read), so both ends are non-blocking and the caller waits for
//! whichever becomes ready, with a deadline.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller keeps open for the call;
    // F_GETFL/F_SETFL read and write only the descriptor's flags.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Which of the descriptors given to [`wait_ready`] can make progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// The read end has data, or its writer closed it (a read returns 0).
    pub readable: bool,
    /// The write end has room, or its reader closed it (a write fails).
    pub writable: bool,
}

/// Waits until `read` is readable or `write` (if given) writable, at most
/// `timeout`; both flags false means the time ran out.
pub fn wait_ready(
    read: BorrowedFd<'_>,
    write: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: write.map_or(-1, |fd| fd.as_raw_fd()),
            events: libc::POLLOUT,
            revents: 0,
        },
    ];
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the whole call; a
        // negative fd is ignored by poll(2).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let done = libc::POLLHUP | libc::POLLERR;
    Ok(Ready {
        readable: fds[0].revents & (libc::POLLIN | done) != 0,
        writable: fds[1].revents & (libc::POLLOUT | done) != 0,
    })
}

/// Asks for a pipe buffer of `bytes` (`F_SETPIPE_SZ`, rounded up by the
/// kernel to a power of two pages) and returns what the pipe got. A large
/// buffer lets a whole batch of pages cross in one wake-up instead of one
/// per 64 KiB; `/proc/sys/fs/pipe-max-size` caps what an unprivileged
/// process may ask for, and the pipe keeps its old size on refusal.
pub fn set_pipe_capacity(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let wanted = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a pipe descriptor the caller keeps open for the call;
    // F_SETPIPE_SZ changes only the pipe's buffer size.
    let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, wanted) };
    usize::try_from(got).map_err(|_| io::Error::last_os_error())
}
