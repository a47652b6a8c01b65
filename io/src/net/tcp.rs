//! TCP: a listener that accepts streams with their peer's address,
//! streams (connect with or without a timeout, reads bounded by a timeout
//! or a deadline), and the detached form a stream takes between cores.

use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};

use super::resolve;

/// A listening TCP socket on this core.
///
/// It is bound with `SO_REUSEPORT`, so each core may bind its own listener
/// on one address and let the kernel spread connections among them.
#[derive(Debug)]
pub struct TcpListener {
    inner: glommio::net::TcpListener,
}

impl TcpListener {
    /// Binds to the first address `address` resolves to (port 0: any free
    /// port; see [`local_addr`](Self::local_addr)).
    pub fn bind(address: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let first = resolve(address)?[0];
        let inner = glommio::net::TcpListener::bind(first).map_err(io::Error::from)?;
        Ok(TcpListener { inner })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }

    /// Waits for the next connection: the stream and its peer's address.
    /// A connection whose peer is gone before its address could be read is
    /// closed and the next one awaited; an error of the listening socket
    /// itself (out of descriptors, say) is returned.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let inner = self.inner.accept().await.map_err(io::Error::from)?;
            if let Ok(peer) = inner.peer_addr() {
                return Ok((TcpStream::wrap(inner), peer));
            }
        }
    }
}

/// A connected TCP stream on this core (`!Send`: see [`detach`](Self::detach)).
#[derive(Debug)]
pub struct TcpStream {
    inner: glommio::net::TcpStream,
    /// How long a read keeps trying the socket itself before it waits for
    /// readiness through the ring (see [`set_busy_poll`](Self::set_busy_poll)).
    busy_poll: Option<Duration>,
}

impl TcpStream {
    /// Connects to `address`, trying each address it resolves to in turn;
    /// the last failure is returned if none answers.
    pub async fn connect(address: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut failure = None;
        for candidate in resolve(address)? {
            match glommio::net::TcpStream::connect(candidate).await {
                Ok(inner) => return Ok(TcpStream::wrap(inner)),
                Err(e) => failure = Some(io::Error::from(e)),
            }
        }
        Err(failure.unwrap_or_else(|| io::Error::other("no address tried")))
    }

    /// [`connect`](Self::connect) bounded by `timeout` in all: a connection
    /// not established in time fails with [`io::ErrorKind::TimedOut`].
    pub async fn connect_timeout(
        address: impl ToSocketAddrs,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let deadline = Instant::now() + timeout;
        let mut failure = None;
        for candidate in resolve(address)? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out("connect"));
            }
            match glommio::net::TcpStream::connect_timeout(candidate, left).await {
                Ok(inner) => return Ok(TcpStream::wrap(inner)),
                Err(e) => failure = Some(io::Error::from(e)),
            }
        }
        Err(failure.unwrap_or_else(|| timed_out("connect")))
    }

    fn wrap(inner: glommio::net::TcpStream) -> TcpStream {
        TcpStream {
            inner,
            busy_poll: None,
        }
    }

    /// Lets each read keep trying the socket with non-blocking `recv`
    /// calls for up to `spin` (yielding to the core's other tasks between
    /// tries) before it waits for readiness through the ring; `None` (the
    /// default) waits at once. A readiness wait's completion reaches a
    /// spinning executor only when the kernel next runs its task work, which
    /// measured ≈ 30 µs per round trip on this machine; a request that
    /// arrives while the read spins is taken at once.
    pub fn set_busy_poll(&mut self, spin: Option<Duration>) {
        self.busy_poll = spin;
    }

    /// Reads what is there (at least one byte, waiting for it), up to
    /// `buf.len()`; `Ok(0)` when the peer has closed its side.
    ///
    /// Under [`set_busy_poll`](Self::set_busy_poll) the spin is charged
    /// for idle spinning only: a yield that comes back after
    /// [`BUSY_YIELD`] or more means the core ran other tasks meanwhile, and
    /// it is charged [`BUSY_POLL_CHARGE`], the one `recv` that looking at
    /// the socket again after them costs. Charging the whole wall time
    /// instead sent a read on a busy core to a ring wait almost at once,
    /// and with four pipelined connections at depth 64 that measured a
    /// p99.9 of 20-80 ms against 5-6.5 ms this way, at the same throughput
    /// (`quire bench getpage`; why a ring wait was that slow behind ready
    /// tasks is not pinned down: a simple busy task does not reproduce it).
    /// A read on a busy core makes at most `spin / BUSY_POLL_CHARGE` extra
    /// `recv`s, within [`READ_SPIN_TOTAL_MAX`], before it waits through
    /// the ring, so idle connections on a busy core cost a bounded amount.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(spin) = self.busy_poll {
            let started = Instant::now();
            let mut last = started;
            let mut charged = Duration::ZERO;
            loop {
                if let Some(result) = self.try_read(buf) {
                    return result;
                }
                if charged >= spin || last.duration_since(started) >= READ_SPIN_TOTAL_MAX {
                    break;
                }
                crate::runtime::yield_now().await;
                let now = Instant::now();
                let gap = now.duration_since(last);
                charged += if gap < BUSY_YIELD {
                    gap
                } else {
                    BUSY_POLL_CHARGE
                };
                last = now;
            }
        }
        self.inner.read(buf).await
    }

    /// One non-blocking `recv`: `None` when nothing is there.
    fn try_read(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if buf.is_empty() {
            return Some(Ok(0));
        }
        // SAFETY: the descriptor is this stream's open socket, and `buf`
        // is a valid writable region of `buf.len()` bytes for the call.
        let received = unsafe {
            libc::recv(
                self.inner.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if let Ok(received) = usize::try_from(received) {
            return Some(Ok(received));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
            _ => Some(Err(error)),
        }
    }

    /// Fills `buf`; a peer closing first is [`io::ErrorKind::UnexpectedEof`].
    /// Under a read timeout each wait is bounded, and a timeout mid-way
    /// leaves the bytes already read consumed: use it where a timeout ends
    /// the connection.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
            let read = self.read(rest).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                ));
            }
            filled += read;
        }
        Ok(())
    }

    /// [`read`](Self::read) that fails with [`io::ErrorKind::TimedOut`]
    /// (consuming nothing) if no byte has come by `deadline`. The stream's
    /// own read timeout applies again afterwards.
    pub async fn read_with_deadline(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
    ) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("read"));
        }
        let timeout = self.inner.read_timeout();
        self.inner
            .set_read_timeout(Some(left))
            .map_err(io::Error::from)?;
        let restore = RestoreReadTimeout {
            stream: &mut self.inner,
            timeout,
        };
        restore.stream.read(buf).await
    }

    /// [`read_with_deadline`](Self::read_with_deadline) `timeout` from now.
    pub async fn read_with_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<usize> {
        self.read_with_deadline(buf, Instant::now() + timeout).await
    }

    /// Writes some of `buf` (waiting for room); the bytes written.
    pub async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).await
    }

    /// Writes all of `buf`. Under [`set_busy_poll`](Self::set_busy_poll), a
    /// full socket is retried with non-blocking sends (yielding between
    /// tries) for up to [`WRITE_SPIN_MAX`] without progress (and
    /// [`WRITE_SPIN_TOTAL_MAX`] in all) before the write waits through
    /// the ring: glommio reaps ring completions only when no task is ready
    /// (or every 100 ms), so under a load that always has a ready task a
    /// ring wait for room took up to 100 ms (p99.9 of four pipelined
    /// connections: 0.1-0.5 s).
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut rest = buf;
        if self.busy_poll.is_some_and(|spin| !spin.is_zero()) {
            // Progress renews the stall allowance, within a total bound: a
            // peer opening its window a little at a time must not keep the
            // core's ring unreaped for as long as the write may take.
            let started = Instant::now();
            let mut stalled_until = started + WRITE_SPIN_MAX;
            let spin_until = started + WRITE_SPIN_TOTAL_MAX;
            while !rest.is_empty() {
                match self.try_send(rest) {
                    Some(Ok(sent)) => {
                        rest = rest.get(sent..).unwrap_or_default();
                        stalled_until = Instant::now() + WRITE_SPIN_MAX;
                    }
                    Some(Err(error)) => return Err(error),
                    None if Instant::now() < stalled_until.min(spin_until) => {
                        crate::runtime::yield_now().await;
                    }
                    None => break,
                }
            }
        }
        self.inner.write_all(rest).await
    }

    /// One non-blocking `send`: `None` when the socket has no room.
    fn try_send(&self, buf: &[u8]) -> Option<io::Result<usize>> {
        // SAFETY: the descriptor is this stream's open socket, and `buf`
        // is a valid readable region of `buf.len()` bytes for the call.
        let sent = unsafe {
            libc::send(
                self.inner.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if let Ok(sent) = usize::try_from(sent) {
            return Some(Ok(sent));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
            _ => Some(Err(error)),
        }
    }

    /// Shuts down reading, writing or both (the peer reads end of stream
    /// once writing is shut down).
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how).await.map_err(io::Error::from)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr().map_err(io::Error::from)
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }

    /// Sets `TCP_NODELAY` (small writes go out at once).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay).map_err(io::Error::from)
    }

    /// Bounds every later read's wait (`None`: unbounded). A read that
    /// waits longer fails with [`io::ErrorKind::TimedOut`], consuming
    /// nothing; a zero duration is refused.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner
            .set_read_timeout(timeout)
            .map_err(io::Error::from)
    }

    /// The read timeout set, if any.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.inner.read_timeout()
    }

    /// Bounds every later write's wait for room (`None`: unbounded).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner
            .set_write_timeout(timeout)
            .map_err(io::Error::from)
    }

    /// Takes the connection off this core, to be sent to another one and
    /// [`attach`](DetachedTcpStream::attach)ed there. This stream buffers
    /// nothing, so no received byte is lost; timeouts are not carried over.
    pub fn detach(self) -> io::Result<DetachedTcpStream> {
        // SAFETY: the descriptor belongs to `self.inner`, which stays alive
        // (and keeps it open) until the end of this function, after the
        // duplicate has been made.
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.inner.as_raw_fd()) };
        let owned = borrowed.try_clone_to_owned()?;
        // Closing this core's descriptor leaves the socket open through the
        // duplicate.
        drop(self.inner);
        Ok(DetachedTcpStream {
            stream: std::net::TcpStream::from(owned),
        })
    }
}

/// A yield at least this long ran other tasks: a busy core, not idle
/// spinning (see [`TcpStream::read`]).
pub const BUSY_YIELD: Duration = Duration::from_micros(5);

/// What a busy-polling read's spin is charged for a look at its socket
/// after other tasks ran (see [`TcpStream::read`]).
pub const BUSY_POLL_CHARGE: Duration = Duration::from_micros(1);

/// How long a busy-polling read keeps looking at its socket in all, busy
/// core or not, before it waits through the ring.
pub const READ_SPIN_TOTAL_MAX: Duration = Duration::from_millis(20);

/// How long a busy-polling write keeps retrying a full socket without
/// progress before it waits through the ring.
pub const WRITE_SPIN_MAX: Duration = Duration::from_millis(2);

/// How long a busy-polling write spins in all before it waits through the
/// ring for whatever is left.
pub const WRITE_SPIN_TOTAL_MAX: Duration = Duration::from_millis(20);

/// Puts a stream's read timeout back when a deadline read ends (or is
/// dropped mid-way).
struct RestoreReadTimeout<'a> {
    stream: &'a mut glommio::net::TcpStream,
    timeout: Option<Duration>,
}

impl Drop for RestoreReadTimeout<'_> {
    fn drop(&mut self) {
        // Only a zero duration is refused, and this one was accepted before.
        let _ = self.stream.set_read_timeout(self.timeout);
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// A TCP connection between cores: `Send`, owned by no executor, doing no
/// I/O until [`attach`](Self::attach)ed. A blocking `std` stream (accepted
/// on a plain thread) converts into one too.
#[derive(Debug)]
pub struct DetachedTcpStream {
    stream: std::net::TcpStream,
}

impl DetachedTcpStream {
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Makes it a [`TcpStream`] of the current core (must run on an
    /// executor).
    pub fn attach(self) -> TcpStream {
        let fd = self.stream.into_raw_fd();
        // SAFETY: `fd` is an open connected TCP socket whose ownership
        // `into_raw_fd` has just given up; the new stream takes it over
        // and is its only owner.
        let inner = unsafe { glommio::net::TcpStream::from_raw_fd(fd) };
        TcpStream::wrap(inner)
    }
}

impl From<std::net::TcpStream> for DetachedTcpStream {
    fn from(stream: std::net::TcpStream) -> DetachedTcpStream {
        DetachedTcpStream { stream }
    }
}
