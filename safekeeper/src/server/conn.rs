//! Connections over TCP (`quire-io` streams): framed safekeeper-protocol
//! messages, and a Postgres replication session.
//!
//! A framed connection's read buffer starts at [`READ_BUF_BYTES`] and
//! grows only with the bytes of the frame being read, doubling, never past
//! the size its header announces (at most `5 + wire::MAX_FRAME` bytes,
//! checked before it grows); a server-side connection's buffer shrinks
//! back once the frame is taken: an idle connection holds a few KiB, and a
//! header announcing 4 MiB costs nothing until the bytes come. A
//! connection the server accepted ([`FramedConn::accepted`]) also has
//! [`Deadlines`]: its first frame must arrive whole within the handshake
//! timeout, a later frame within the frame timeout of its first byte, the
//! wait between frames is bounded by the idle timeout, and every frame
//! sent must be taken whole within the write timeout. A deadline missed
//! or a frame that does not decode ends the connection with an `Error`
//! frame saying why (sent best effort). Clients connect with a timeout ([`CONNECT_TIMEOUT`] unless
//! they name one), each read waits at most [`CLIENT_READ_TIMEOUT`] unless
//! they set their own, and each frame they send must go out within
//! [`CLIENT_WRITE_TIMEOUT`]: a peer that hangs never hangs its client.

use std::time::{Duration, Instant};

use quire_io::net::TcpStream;

use crate::pg_wire::{self, Backend};
use crate::wire::{MAX_FRAME, Message};

/// What a framed connection's read buffer holds between frames (and what
/// one read asks for at least).
pub const READ_BUF_BYTES: usize = 8 << 10;
/// How long [`FramedConn::connect`] waits for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client's read waits for a byte unless it sets its own
/// read timeout.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a frame a client sends may take to go out whole.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Postgres replication connection may take to be established
/// and how long its setup queries may wait for an answer.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write to the compute may wait for room.
pub const PG_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The frame header: kind `u8`, length `u32`.
const HEADER_BYTES: usize = 5;
/// How long the `Error` frame that ends a connection may take to go out.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(200);

/// Time limits of a connection the server accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept to the end of the first frame.
    pub handshake: Duration,
    /// From a later frame's first byte to its last.
    pub frame: Duration,
    /// Waiting for a request between frames.
    pub idle: Duration,
    /// Sending one frame, whole (a peer that reads slowly or not at all).
    pub write: Duration,
}

/// A connection speaking the safekeeper protocol.
pub struct FramedConn {
    stream: TcpStream,
    // Invariant: `filled <= buf.len()`; `buf[..filled]` are received bytes
    // not yet taken as frames; `buf.len()` is at most
    // `max(READ_BUF_BYTES, HEADER_BYTES + MAX_FRAME)`.
    buf: Vec<u8>,
    filled: usize,
    deadlines: Option<Deadlines>,
    accepted_at: Instant,
    frames: u64,
    // When the first byte of the frame now being read arrived.
    frame_began: Option<Instant>,
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
    /// An accepted connection missed one of its deadlines.
    #[error("{what} did not arrive within {limit:?}")]
    Deadline {
        /// What was awaited.
        what: &'static str,
        /// The limit.
        limit: Duration,
    },
}

impl FramedConn {
    /// Wraps a connected stream (a client's: no deadlines).
    pub fn new(stream: TcpStream) -> FramedConn {
        let _ = stream.set_nodelay(true);
        FramedConn {
            stream,
            buf: vec![0; READ_BUF_BYTES],
            filled: 0,
            deadlines: None,
            accepted_at: Instant::now(),
            frames: 0,
            frame_began: None,
        }
    }

    /// Wraps a stream the server accepted just now, bounded by `deadlines`.
    pub fn accepted(stream: TcpStream, deadlines: Deadlines) -> FramedConn {
        let mut conn = FramedConn::new(stream);
        conn.deadlines = Some(deadlines);
        conn
    }

    /// Connects to `address` within [`CONNECT_TIMEOUT`].
    pub async fn connect(address: &str) -> Result<FramedConn, ConnError> {
        FramedConn::connect_timeout(address, CONNECT_TIMEOUT).await
    }

    /// Connects to `address` within `timeout`; reads then wait at most
    /// [`CLIENT_READ_TIMEOUT`] (see [`set_read_timeout`](Self::set_read_timeout)).
    pub async fn connect_timeout(
        address: &str,
        timeout: Duration,
    ) -> Result<FramedConn, ConnError> {
        let stream = TcpStream::connect_timeout(address, timeout).await?;
        let conn = FramedConn::new(stream);
        conn.set_read_timeout(Some(CLIENT_READ_TIMEOUT));
        Ok(conn)
    }

    /// Connects to `address` and, with a token, authenticates with it
    /// (`Hello`; the safekeeper answers `Ok` or closes).
    pub async fn connect_as(address: &str, token: Option<&str>) -> Result<FramedConn, ConnError> {
        let mut conn = FramedConn::connect(address).await?;
        conn.hello(token).await?;
        Ok(conn)
    }

    /// With a token, authenticates this new connection (`Hello`); without,
    /// does nothing.
    pub async fn hello(&mut self, token: Option<&str>) -> Result<(), ConnError> {
        let Some(token) = token else {
            return Ok(());
        };
        match self
            .call(&Message::Hello {
                token: token.to_owned(),
            })
            .await?
        {
            Message::Ok => Ok(()),
            Message::Error { message } => Err(ConnError::Refused(message)),
            other => Err(ConnError::Refused(format!(
                "unexpected answer to Hello: {}",
                kind(&other)
            ))),
        }
    }

    /// Sends one message; the whole frame must go out within the write
    /// deadline of an accepted connection, or [`CLIENT_WRITE_TIMEOUT`] (a
    /// socket's own write timeout restarts whenever a few bytes drain, so
    /// a peer reading a byte now and then would never hit it). A frame cut
    /// short by the deadline leaves the connection unusable: the caller
    /// closes it.
    pub async fn send(&mut self, message: &Message) -> Result<(), ConnError> {
        let frame = message.encode();
        let limit = self.deadlines.map_or(CLIENT_WRITE_TIMEOUT, |d| d.write);
        quire_io::timeout(limit, self.stream.write_all(&frame))
            .await
            .map_err(|_| ConnError::Deadline {
                what: "the peer taking a frame",
                limit,
            })??;
        Ok(())
    }

    /// Receives one message (waits for it, within the deadlines of an
    /// accepted connection).
    pub async fn receive(&mut self) -> Result<Message, ConnError> {
        self.receive_bounded(true).await
    }

    /// Receives one message with no idle limit (the handshake and frame
    /// limits still apply): how a connection that only sends, such as a
    /// WAL stream, notices its peer leave or misbehave.
    pub async fn receive_unbounded(&mut self) -> Result<Message, ConnError> {
        self.receive_bounded(false).await
    }

    async fn receive_bounded(&mut self, idle_limit: bool) -> Result<Message, ConnError> {
        match self.next_frame(idle_limit).await {
            Ok(message) => Ok(message),
            Err(e) => {
                if self.deadlines.is_some() && !matches!(e, ConnError::Closed | ConnError::Io(_)) {
                    self.goodbye(&e.to_string()).await;
                }
                Err(e)
            }
        }
    }

    async fn next_frame(&mut self, idle_limit: bool) -> Result<Message, ConnError> {
        loop {
            let held = self.buf.get(..self.filled).unwrap_or_default();
            if let Some((message, used)) = Message::decode(held)? {
                self.take(used);
                self.frames += 1;
                return Ok(message);
            }
            self.make_room();
            let deadline = self.read_deadline(idle_limit);
            let room = self.buf.get_mut(self.filled..).unwrap_or_default();
            let read = match deadline {
                Some((at, what, limit)) => match self.stream.read_with_deadline(room, at).await {
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return Err(ConnError::Deadline { what, limit });
                    }
                    other => other?,
                },
                None => self.stream.read(room).await?,
            };
            if read == 0 {
                return Err(ConnError::Closed);
            }
            if self.filled == 0 {
                self.frame_began = Some(Instant::now());
            }
            self.filled = (self.filled + read).min(self.buf.len());
        }
    }

    /// Drops the first `used` buffered bytes (a whole frame); an accepted
    /// connection's buffer shrinks back to [`READ_BUF_BYTES`] when what is
    /// left fits (a client keeps its size: it reads from a server it chose,
    /// a WAL stream's 1 MiB frames one after another).
    fn take(&mut self, used: usize) {
        let used = used.min(self.filled);
        self.buf.copy_within(used..self.filled, 0);
        self.filled -= used;
        self.frame_began = (self.filled > 0).then(Instant::now);
        if self.deadlines.is_some()
            && self.buf.len() > READ_BUF_BYTES
            && self.filled <= READ_BUF_BYTES
        {
            self.buf.truncate(READ_BUF_BYTES);
            self.buf.shrink_to_fit();
        }
    }

    /// Makes room for the next read: a full buffer doubles, up to the
    /// frame its header announces (bounded: a header over `MAX_FRAME`
    /// failed to decode before this, and a frame not yet whole is longer
    /// than what is buffered).
    fn make_room(&mut self) {
        if self.filled < self.buf.len() {
            return;
        }
        let frame = match self.buf.get(1..HEADER_BYTES) {
            Some(&[a, b, c, d]) if self.filled >= HEADER_BYTES => {
                let body = usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(MAX_FRAME);
                HEADER_BYTES + body.min(MAX_FRAME)
            }
            _ => READ_BUF_BYTES,
        };
        let wanted = frame.min(self.filled.saturating_mul(2).max(READ_BUF_BYTES));
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        }
    }

    /// When the next read must have brought something, what it is, and
    /// the limit (accepted connections only).
    fn read_deadline(&self, idle_limit: bool) -> Option<(Instant, &'static str, Duration)> {
        let d = self.deadlines?;
        if self.frames == 0 {
            return Some((self.accepted_at + d.handshake, "a first frame", d.handshake));
        }
        match self.frame_began {
            Some(began) => Some((began + d.frame, "the rest of a frame", d.frame)),
            None if idle_limit => Some((Instant::now() + d.idle, "a request", d.idle)),
            None => None,
        }
    }

    /// Tells the peer why the connection ends (best effort, briefly).
    async fn goodbye(&mut self, why: &str) {
        let frame = Message::Error {
            message: why.to_owned(),
        }
        .encode();
        let _ = quire_io::timeout(GOODBYE_TIMEOUT, self.stream.write_all(&frame)).await;
    }

    /// Bytes the read buffer holds now (received or room), for tests.
    pub fn buffer_bytes(&self) -> usize {
        self.buf.len()
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

/// The kind of `message`, for errors that name what came: never its
/// fields (a `Wal` frame's bytes would make an answer larger than a frame).
pub fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "hello",
        Message::CreateTimeline { .. } => "create timeline",
        Message::Vote { .. } => "vote",
        Message::Elected { .. } => "elected",
        Message::Fetch { .. } => "fetch",
        Message::PeerFlush { .. } => "peer flush",
        Message::GetStatus { .. } => "get status",
        Message::StreamWal { .. } => "stream WAL",
        Message::ReportPersisted { .. } => "report persisted",
        Message::VoteReply { .. } => "vote reply",
        Message::Flushed { .. } => "flushed",
        Message::Refused { .. } => "refused",
        Message::Wal { .. } => "WAL",
        Message::Commit { .. } => "commit",
        Message::Persisted { .. } => "persisted",
        Message::Status { .. } => "status",
        Message::Ok => "ok",
        Message::Error { .. } => "error",
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
    /// `application_name` (what `synchronous_standby_names` lists), within
    /// [`PG_CONNECT_TIMEOUT`]; reads wait at most that long too until the
    /// caller sets its own read timeout, and writes [`PG_WRITE_TIMEOUT`].
    pub async fn connect(
        address: &str,
        user: &str,
        application_name: &str,
    ) -> Result<PgConn, ConnError> {
        let stream = TcpStream::connect_timeout(address, PG_CONNECT_TIMEOUT).await?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(PG_CONNECT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(PG_WRITE_TIMEOUT));
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
                Backend::Authentication(request) => {
                    return Err(ConnError::Postgres(format!(
                        "the compute asks for {} authentication; only trust is supported",
                        request.name()
                    )));
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
