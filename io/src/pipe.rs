//! Pipes to helper processes, read and written as asynchronous operations
//! on the core's executor.
//!
//! The redo pool talks to Postgres `--wal-redo` processes over their stdin
//! and stdout. A read or a write first tries the pipe without waiting
//! (`preadv2`/`pwritev2` with `RWF_NOWAIT`, straight from or into the
//! caller's bytes); when the pipe has no data (or no room) it becomes one
//! `io_uring` operation, which the kernel completes once it can, so a
//! process that is slow, hung or stopped holds up only the task awaiting
//! it, never the core. The descriptors are kept in blocking mode for that
//! reason (with `O_NONBLOCK`, `io_uring` answers `EAGAIN` instead of
//! waiting). A caller that writes a long pipeline of requests awaits the
//! writes and the reads of replies together, so neither side can fill its
//! bounded buffer while waiting for the other.
//!
//! An `io_uring` write copies at most [`PIPE_WRITE_MAX`] bytes into a
//! buffer the operation owns; an `io_uring` read waits for one byte, and
//! the rest is then taken without waiting, straight into the caller's
//! buffer. Dropping a read or a write while it waits cancels
//! it, and how many bytes it moved is then unknown: a pipe abandoned that
//! way is only good for closing.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use glommio::io::BufferedFile;

/// The most bytes one write operation takes (and copies).
pub const PIPE_WRITE_MAX: usize = 1024 * 1024;

/// The most bytes one read takes.
pub const PIPE_READ_MAX: usize = 256 * 1024;

/// Pipes have no position; the kernel ignores the offset of an operation
/// on one.
const NO_OFFSET: u64 = 0;

/// The most parts one write without waiting hands the kernel.
const NOWAIT_PARTS_MAX: usize = 64;

/// What a try without waiting gave.
enum Tried {
    /// Bytes moved (0 for a read: the end of the pipe).
    Done(usize),
    /// The pipe has no data or no room (or the kernel cannot try without
    /// waiting): wait with `io_uring`.
    WouldBlock,
}

/// Reads or writes through `call` (a `preadv2`/`pwritev2` with
/// `RWF_NOWAIT`), turning its result into [`Tried`]; `nowait` is cleared
/// for good when the kernel does not know the flag for pipes.
fn tried(result: libc::ssize_t, nowait: &Cell<bool>) -> io::Result<Tried> {
    if let Ok(n) = usize::try_from(result) {
        return Ok(Tried::Done(n));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(Tried::WouldBlock),
        Some(libc::EOPNOTSUPP | libc::EINVAL) => {
            nowait.set(false);
            Ok(Tried::WouldBlock)
        }
        _ => Err(error),
    }
}

/// Clears `O_NONBLOCK`: `io_uring` then waits for the pipe itself.
fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller keeps open for the call;
    // F_GETFL/F_SETFL read and write only the descriptor's flags.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hands `fd` to the executor, which closes it when the file is closed or
/// dropped.
fn executor_file(fd: OwnedFd) -> io::Result<BufferedFile> {
    set_blocking(fd.as_fd())?;
    // SAFETY: `into_raw_fd` gives up ownership of an open descriptor, which
    // the file takes over and closes exactly once.
    Ok(unsafe { BufferedFile::from_raw_fd(fd.into_raw_fd()) })
}

/// The read end of a pipe, on this core's executor.
#[derive(Debug)]
pub struct PipeReader {
    file: BufferedFile,
    /// Whether reads try without waiting first.
    nowait: Cell<bool>,
}

impl PipeReader {
    /// Takes over `fd` (the read end of a pipe, for example a child's
    /// stdout). Must be called on the executor that will read it.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<PipeReader> {
        Ok(PipeReader {
            file: executor_file(fd.into())?,
            nowait: Cell::new(true),
        })
    }

    /// Reads what is there into `buf` (at most [`PIPE_READ_MAX`] bytes),
    /// waiting for at least one byte; `Ok(0)` once the writer has closed
    /// its end (or for an empty `buf`).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let wanted = buf.len().min(PIPE_READ_MAX);
        if wanted == 0 {
            return Ok(0);
        }
        if let Some(done) = self.read_nowait(&mut buf[..wanted])? {
            return Ok(done);
        }
        // With tries that work, the wait is for one byte: the kernel then
        // hands over what else is there straight into `buf`, and the
        // operation's own buffer stays one byte.
        let asked = if self.nowait.get() { 1 } else { wanted };
        let got = self
            .file
            .read_at(NO_OFFSET, asked)
            .await
            .map_err(io::Error::from)?;
        let n = got.len().min(asked);
        buf[..n].copy_from_slice(&got[..n]);
        if n == 0 || n == wanted {
            return Ok(n);
        }
        Ok(n + self.read_nowait(&mut buf[n..wanted])?.unwrap_or(0))
    }

    /// Reads what is there without waiting: `None` if nothing is (or the
    /// kernel cannot try).
    fn read_nowait(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if !self.nowait.get() {
            return Ok(None);
        }
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `iov` describes the writable bytes of `buf`, borrowed
        // mutably for the call; the descriptor stays open (the file owns
        // it); offset -1 is the pipe's (absent) position.
        let result = unsafe {
            libc::preadv2(
                self.file.as_raw_fd(),
                &raw const iov,
                1,
                -1,
                libc::RWF_NOWAIT,
            )
        };
        Ok(match tried(result, &self.nowait)? {
            Tried::Done(n) => Some(n),
            Tried::WouldBlock => None,
        })
    }

    /// Closes the descriptor (waiting for the close).
    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}

/// The write end of a pipe, on this core's executor.
#[derive(Debug)]
pub struct PipeWriter {
    file: BufferedFile,
    /// Whether writes try without waiting first.
    nowait: Cell<bool>,
}

impl PipeWriter {
    /// Takes over `fd` (the write end of a pipe, for example a child's
    /// stdin). Must be called on the executor that will write it.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<PipeWriter> {
        Ok(PipeWriter {
            file: executor_file(fd.into())?,
            nowait: Cell::new(true),
        })
    }

    /// Writes the front of `parts` (taken in order, as one byte string) in
    /// one operation of at most [`PIPE_WRITE_MAX`] bytes, waiting for room;
    /// the bytes written. A reader that closed its end is an error
    /// (`EPIPE`).
    pub async fn write_vectored(&self, parts: &[&[u8]]) -> io::Result<usize> {
        if self.nowait.get() {
            let iov: Vec<libc::iovec> = parts
                .iter()
                .take(NOWAIT_PARTS_MAX)
                .map(|part| libc::iovec {
                    iov_base: part.as_ptr().cast_mut().cast(),
                    iov_len: part.len(),
                })
                .collect();
            let count = libc::c_int::try_from(iov.len()).unwrap_or(0);
            // SAFETY: every iovec describes bytes of a part borrowed for the
            // call, which the kernel only reads; the descriptor stays open
            // (the file owns it); offset -1 is the pipe's (absent) position.
            let result = unsafe {
                libc::pwritev2(
                    self.file.as_raw_fd(),
                    iov.as_ptr(),
                    count,
                    -1,
                    libc::RWF_NOWAIT,
                )
            };
            match tried(result, &self.nowait)? {
                Tried::Done(n) if n > 0 || iov.iter().all(|v| v.iov_len == 0) => return Ok(n),
                Tried::Done(_) | Tried::WouldBlock => {}
            }
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut chunk = Vec::with_capacity(total.min(PIPE_WRITE_MAX));
        for part in parts {
            let room = chunk.capacity() - chunk.len();
            if room == 0 {
                break;
            }
            chunk.extend_from_slice(&part[..part.len().min(room)]);
        }
        if chunk.is_empty() {
            return Ok(0);
        }
        self.file
            .write_at(chunk, NO_OFFSET)
            .await
            .map_err(io::Error::from)
    }

    /// Writes all of `parts`, in order, in as many operations as the pipe's
    /// room asks for.
    pub async fn write_all_vectored(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut parts = parts;
        // Bytes of `parts[0]` already written.
        let mut skip = 0;
        loop {
            while let Some((first, rest)) = parts.split_first()
                && skip >= first.len()
            {
                skip -= first.len();
                parts = rest;
            }
            let Some((first, rest)) = parts.split_first() else {
                return Ok(());
            };
            let mut front = Vec::with_capacity(rest.len() + 1);
            front.push(&first[skip..]);
            front.extend_from_slice(rest);
            match self.write_vectored(&front).await {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the pipe took no bytes",
                    ));
                }
                Ok(n) => skip += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.write_all_vectored(&[buf]).await
    }

    /// Closes the descriptor (waiting for the close): the reader sees the
    /// end of its input.
    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}

/// Asks for a pipe buffer of `bytes` (`F_SETPIPE_SZ`, rounded up by the
/// kernel to a power of two pages) and returns what the pipe got. A large
/// buffer lets a whole batch of pages cross in one operation instead of one
/// per 64 KiB; `/proc/sys/fs/pipe-max-size` caps what an unprivileged
/// process may ask for, and the pipe keeps its old size on refusal.
pub fn set_pipe_capacity(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let wanted = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a pipe descriptor the caller keeps open for the call;
    // F_SETPIPE_SZ changes only the pipe's buffer size.
    let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, wanted) };
    usize::try_from(got).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::executors::{LocalConfig, run_local};

    /// Bytes through `cat` and back, more than both pipes hold, with the
    /// writes and reads awaited together.
    #[test]
    fn a_long_stream_crosses_cat_without_deadlock() {
        let echoed = run_local(&LocalConfig::default(), || async {
            let mut cat = Command::new("cat")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let writer =
                PipeWriter::new(cat.stdin.take().ok_or("stdin")?).map_err(|e| e.to_string())?;
            let reader =
                PipeReader::new(cat.stdout.take().ok_or("stdout")?).map_err(|e| e.to_string())?;
            let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let parts: Vec<&[u8]> = sent.chunks(70_001).collect();
            let write = async {
                writer.write_all_vectored(&parts).await?;
                writer.close().await
            };
            let read = async {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 100_000];
                loop {
                    let n = reader.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, io::Error>(got);
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            };
            let (written, got) = crate::runtime::timeout(
                Duration::from_secs(20),
                futures::future::join(write, read),
            )
            .await
            .map_err(|e| e.to_string())?;
            written.map_err(|e| e.to_string())?;
            let got = got.map_err(|e| e.to_string())?;
            let _ = cat.wait();
            Ok::<_, String>(got == sent)
        });
        assert_eq!(echoed.expect("the executor ran"), Ok(true));
    }

    /// A read that waits for a silent process leaves the core to the other
    /// tasks: a timer task keeps ticking meanwhile.
    #[test]
    fn a_waiting_read_does_not_hold_up_the_core() {
        let outcome = run_local(&LocalConfig::default(), || async {
            let mut silent = Command::new("sleep")
                .arg("30")
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let reader = PipeReader::new(silent.stdout.take().ok_or("stdout")?)
                .map_err(|e| e.to_string())?;
            let ticks = std::rc::Rc::new(Cell::new(0u32));
            let ticker = crate::runtime::spawn_local({
                let ticks = std::rc::Rc::clone(&ticks);
                async move {
                    loop {
                        crate::runtime::sleep(Duration::from_millis(5)).await;
                        ticks.set(ticks.get() + 1);
                    }
                }
            });
            let mut buf = [0u8; 16];
            let read =
                crate::runtime::timeout(Duration::from_millis(300), reader.read(&mut buf)).await;
            drop(ticker);
            let _ = silent.kill();
            let _ = silent.wait();
            Ok::<_, String>((read.is_err(), ticks.get()))
        })
        .expect("the executor ran");
        let (timed_out, ticks) = outcome.expect("ran");
        assert!(timed_out, "the read of a silent pipe returned");
        assert!(ticks >= 20, "the timer ticked {ticks} times in 300 ms");
    }
}
