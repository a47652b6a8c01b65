//! Connections over TCP (`quire-io` streams): framed safekeeper-protocol
//! messages, and a Postgres replication session.

use std::time::Duration;

use quire_io::net::TcpStream;

use crate::pg_wire::{self, Backend};
use crate::wire::Message;

/// A connection speaking the safekeeper protocol.
pub struct FramedConn {
    stream: TcpStream,
    buf: Vec<u8>,
    read_chunk: Vec<u8>,
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A frame that does not decode.
    #[error("{0}")]
    Frame(#[from] crate::wire::FrameError),
    /// The server refused the connection's authentication.
    #[error("refused: {0}")]
    Refused(String),
    /// A Postgres message that does not decode, or an error from Postgres.
    #[error("Postgres: {0}")]
    Postgres(String),
}

impl FramedConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> FramedConn {
        let _ = stream.set_nodelay(true);
        FramedConn {
            stream,
            buf: Vec::new(),
            read_chunk: vec![0; 256 * 1024],
        }
    }

    /// Connects to `address`.
    pub async fn connect(address: &str) -> Result<FramedConn, ConnError> {
        let stream = TcpStream::connect(address).await?;
        Ok(FramedConn::new(stream))
    }

    /// Connects to `address` and, with a token, authenticates with it
    /// (`Hello`; the safekeeper answers `Ok` or closes).
    pub async fn connect_as(address: &str, token: Option<&str>) -> Result<FramedConn, ConnError> {
        let mut conn = FramedConn::connect(address).await?;
        if let Some(token) = token {
            match conn
                .call(&Message::Hello {
                    token: token.to_owned(),
                })
                .await?
            {
                Message::Ok => {}
                Message::Error { message } => return Err(ConnError::Refused(message)),
                other => {
                    return Err(ConnError::Refused(format!(
                        "unexpected answer to Hello: {other:?}"
                    )));
                }
            }
        }
        Ok(conn)
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), ConnError> {
        self.stream.write_all(&message.encode()).await?;
        Ok(())
    }

    /// Receives one message (waits for it).
    pub async fn receive(&mut self) -> Result<Message, ConnError> {
        loop {
            if let Some((message, used)) = Message::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(message);
            }
            let n = self.stream.read(&mut self.read_chunk).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            self.buf.extend_from_slice(&self.read_chunk[..n]);
        }
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&mut self, message: &Message) -> Result<Message, ConnError> {
        self.send(message).await?;
        self.receive().await
    }

    /// Sets how long a read may wait (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = self.stream.set_read_timeout(timeout);
    }
}

/// A Postgres session (replication mode).
pub struct PgConn {
    stream: TcpStream,
    buf: Vec<u8>,
    read_chunk: Vec<u8>,
}

impl PgConn {
    /// Connects to the compute at `address` as `user`, naming itself
    /// `application_name` (what `synchronous_standby_names` lists).
    pub async fn connect(
        address: &str,
        user: &str,
        application_name: &str,
    ) -> Result<PgConn, ConnError> {
        let stream = TcpStream::connect(address).await?;
        let _ = stream.set_nodelay(true);
        let mut conn = PgConn {
            stream,
            buf: Vec::new(),
            read_chunk: vec![0; 256 * 1024],
        };
        conn.send(&pg_wire::startup(user, application_name)).await?;
        loop {
            match conn.receive().await? {
                Backend::ReadyForQuery => return Ok(conn),
                Backend::Error(fields) => {
                    return Err(ConnError::Postgres(Backend::error_message(&fields)));
                }
                _ => {}
            }
        }
    }

    /// Sends raw protocol bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Receives one backend message; a read timeout surfaces as an I/O
    /// error of kind `TimedOut`.
    pub async fn receive(&mut self) -> Result<Backend, ConnError> {
        loop {
            match pg_wire::parse_backend(&self.buf) {
                Ok(Some((message, used))) => {
                    self.buf.drain(..used);
                    return Ok(message);
                }
                Ok(None) => {}
                Err(e) => return Err(ConnError::Postgres(e.to_string())),
            }
            let n = self.stream.read(&mut self.read_chunk).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            self.buf.extend_from_slice(&self.read_chunk[..n]);
        }
    }

    /// Whether a whole message is already buffered (no read needed).
    pub fn has_buffered_message(&self) -> bool {
        matches!(pg_wire::parse_backend(&self.buf), Ok(Some(_)))
    }

    /// Runs a simple query: its rows (text), or the error Postgres gave
    /// (its SQLSTATE first, then the message).
    pub async fn query(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<String>>>, (String, String)>, ConnError> {
        self.send(&pg_wire::query(sql)).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.receive().await? {
                Backend::DataRow(values) => rows.push(values),
                Backend::Error(fields) => {
                    let code = fields
                        .iter()
                        .find(|(c, _)| *c == b'C')
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default();
                    failure = Some((code, Backend::error_message(&fields)));
                }
                Backend::ReadyForQuery => {
                    return Ok(match failure {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    });
                }
                _ => {}
            }
        }
    }

    /// Sets how long a read may wait (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = self.stream.set_read_timeout(timeout);
    }
}
