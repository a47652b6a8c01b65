//! The stream kinds a page connection runs on, as one trait: a read bounded
//! by an optional deadline, and a whole write.

use std::future::Future;
use std::io;
use std::time::Instant;

use quire_io::net::{TcpStream, UnixStream};

/// A connected stream of bytes.
pub trait Transport {
    /// Reads some bytes (0: end of stream); with a deadline, fails with
    /// [`io::ErrorKind::TimedOut`], consuming nothing, if none has come by
    /// then.
    fn read_by(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> impl Future<Output = io::Result<usize>>;

    /// Writes all of `buf`.
    fn write_all_bytes(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>>;
}

impl Transport for TcpStream {
    async fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        match deadline {
            Some(deadline) => self.read_with_deadline(buf, deadline).await,
            None => self.read(buf).await,
        }
    }

    async fn write_all_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf).await
    }
}

impl Transport for UnixStream {
    async fn read_by(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        match deadline {
            Some(deadline) => self.read_with_deadline(buf, deadline).await,
            None => self.read(buf).await,
        }
    }

    async fn write_all_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf).await
    }
}
