//! Sockets on the current core's executor: TCP ([`TcpListener`],
//! [`TcpStream`]) and Unix-domain ([`UnixListener`], [`UnixStream`])
//! listeners and streams, and [`DetachedTcpStream`], the `Send` form of a
//! connection on its way to another core (through [`handoff`](crate::handoff)).
//!
//! Reads and writes never block the core: a socket that is not ready parks
//! the task, not the thread. A stream can bound each read (a read timeout,
//! or [`TcpStream::read_with_deadline`]); a read that runs out of time
//! fails with [`std::io::ErrorKind::TimedOut`] and consumes nothing.
//! Addresses are resolved here, so an address that names no host is an
//! error value, never a panic. Nothing here parses what it carries.

mod tcp;
mod unix;

pub use tcp::{DetachedTcpStream, TcpListener, TcpStream};
pub use unix::{UnixListener, UnixStream};

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Every address `address` resolves to, at least one.
fn resolve(address: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    if addresses.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to no socket address",
        ));
    }
    Ok(addresses)
}
