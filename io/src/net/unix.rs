//! Unix-domain stream sockets: a listener and streams, for clients on the
//! same host. Unlike TCP streams they cannot be detached to another core
//! yet (the runtime does not lend out their descriptor), and a read
//! deadline is a [`timeout_at`](crate::runtime::timeout_at) around the read.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use futures::{AsyncReadExt, AsyncWriteExt};

/// A listening Unix-domain socket on this core.
#[derive(Debug)]
pub struct UnixListener {
    inner: glommio::net::UnixListener,
}

impl UnixListener {
    /// Binds to `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let inner = glommio::net::UnixListener::bind(path).map_err(io::Error::from)?;
        Ok(UnixListener { inner })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        let inner = self.inner.accept().await.map_err(io::Error::from)?;
        Ok(UnixStream { inner })
    }
}

/// A connected Unix-domain stream on this core.
#[derive(Debug)]
pub struct UnixStream {
    inner: glommio::net::UnixStream,
}

impl UnixStream {
    /// Connects to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let inner = glommio::net::UnixStream::connect(path)
            .await
            .map_err(io::Error::from)?;
        Ok(UnixStream { inner })
    }

    /// Reads what is there (at least one byte, waiting for it); `Ok(0)` at
    /// end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).await
    }

    /// Fills `buf`; a peer closing first is [`io::ErrorKind::UnexpectedEof`].
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf).await
    }

    /// [`read`](Self::read) that fails with [`io::ErrorKind::TimedOut`]
    /// (consuming nothing) if no byte has come by `deadline`.
    pub async fn read_with_deadline(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
    ) -> io::Result<usize> {
        // The read waits for readiness and then reads at once, so dropping
        // it while it waits loses no byte.
        crate::runtime::timeout_at(deadline, self.inner.read(buf)).await?
    }

    /// Writes some of `buf` (waiting for room); the bytes written.
    pub async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf).await
    }

    /// Shuts down reading, writing or both.
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how).await.map_err(io::Error::from)
    }

    /// The peer's address (usually unnamed for a client).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr().map_err(io::Error::from)
    }
}
