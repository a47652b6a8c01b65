//! A page-protocol client on the current core: connect, handshake, and
//! requests pipelined or one at a time, each answer checked against the
//! request at the head of the queue (docs/protocol/page-service.md).
//! `quire verify --pageserver` and `quire bench getpage` use it; the
//! compute's C client speaks the same bytes.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use quire_io::net::TcpStream;

use crate::id::{ShardIdentity, TenantId, TimelineId};
use crate::page_protocol::{
    ClientFrame, ClientMessage, ErrorResponse, FrameDecoder, FrameError, Hello, HelloOk, Request,
    Response, ServerFrame, ServerMessage, VERSION_MAX, VERSION_MIN,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed, ended or timed out.
    #[error("page service connection: {0}")]
    Io(#[from] io::Error),
    /// The server sent a frame that does not decode.
    #[error("page service sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The server's answer does not match the request at the head of the
    /// queue.
    #[error("page service answered request {answered} of kind 0x{kind:02X} out of turn")]
    OutOfTurn {
        /// The id answered.
        answered: u64,
        /// The answer's kind.
        kind: u8,
    },
    /// The server refused the request (or the handshake).
    #[error("page service: {}: {}", .0.error, .0.message)]
    Refused(ErrorResponse),
    /// An answer came with nothing asked.
    #[error("page service sent an answer to nothing")]
    Unsolicited,
    /// The request does not encode.
    #[error("request does not encode: {0}")]
    Encode(String),
}

/// What a connection is for.
#[derive(Clone, Debug)]
pub struct Target {
    /// The tenant.
    pub tenant: TenantId,
    /// The timeline.
    pub timeline: TimelineId,
    /// The shard (unsharded by default).
    pub shard: ShardIdentity,
    /// A signed token, or empty.
    pub token: String,
}

/// One connection to the page service.
pub struct PageClient {
    stream: TcpStream,
    decoder: FrameDecoder<ServerFrame>,
    pending: VecDeque<ClientFrame>,
    next_id: u64,
    out: Vec<u8>,
    buf: Vec<u8>,
    hello_ok: HelloOk,
}

impl std::fmt::Debug for PageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageClient({} pending)", self.pending.len())
    }
}

impl PageClient {
    /// Connects to `address` (within `timeout`), sends the `Hello` and
    /// waits for `HelloOk`; a refusal is [`ClientError::Refused`].
    pub async fn connect(
        address: SocketAddr,
        target: &Target,
        timeout: Duration,
    ) -> Result<PageClient, ClientError> {
        let stream = TcpStream::connect_timeout(address, timeout).await?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut client = PageClient {
            stream,
            decoder: FrameDecoder::new(),
            pending: VecDeque::new(),
            next_id: 1,
            out: Vec::new(),
            buf: vec![0u8; 256 * 1024],
            hello_ok: HelloOk {
                version: 0,
                frame_bytes_max: 0,
                pipeline_depth: 0,
                blocks_per_request_max: 0,
                lsn_wait_ms: 0,
            },
        };
        let hello = ClientFrame {
            request_id: 0,
            message: ClientMessage::Hello(Hello {
                version_min: VERSION_MIN,
                version_max: VERSION_MAX,
                tenant: target.tenant,
                timeline: target.timeline,
                shard: target.shard,
                token: target.token.clone(),
            }),
        };
        client.queue(hello)?;
        client.flush().await?;
        match client.recv_frame().await?.message {
            ServerMessage::HelloOk(ok) => client.hello_ok = ok,
            ServerMessage::Error(error) => return Err(ClientError::Refused(error)),
            ServerMessage::Response(response) => {
                return Err(ClientError::OutOfTurn {
                    answered: 0,
                    kind: response.kind(),
                });
            }
        }
        Ok(client)
    }

    /// Lets reads try the socket for up to `spin` before waiting (see
    /// `quire_io::net::TcpStream::set_busy_poll`).
    pub fn set_busy_poll(&mut self, spin: Option<Duration>) {
        self.stream.set_busy_poll(spin);
    }

    /// The server's limits, from its `HelloOk`.
    pub fn limits(&self) -> HelloOk {
        self.hello_ok
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Queues `request` (sent at the next [`flush`](Self::flush)); returns
    /// its id.
    pub fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.queue(ClientFrame {
            request_id,
            message: ClientMessage::Request(request),
        })?;
        Ok(request_id)
    }

    fn queue(&mut self, frame: ClientFrame) -> Result<(), ClientError> {
        frame
            .encode(&mut self.out)
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        self.pending.push_back(frame);
        Ok(())
    }

    /// Writes every queued request.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The answer to the oldest request in flight: the response, or its
    /// `Error` as [`ClientError::Refused`].
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        self.flush().await?;
        let frame = self.recv_frame().await?;
        match frame.message {
            ServerMessage::Response(response) => Ok(response),
            ServerMessage::Error(error) => Err(ClientError::Refused(error)),
            ServerMessage::HelloOk(_) => Err(ClientError::OutOfTurn {
                answered: frame.request_id,
                kind: crate::page_protocol::kind::HELLO_OK,
            }),
        }
    }

    /// Sends `request` and waits for its answer.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.send(request)?;
        self.recv().await
    }

    async fn recv_frame(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                let Some(request) = self.pending.pop_front() else {
                    return Err(ClientError::Unsolicited);
                };
                if !frame.answers(&request) {
                    return Err(ClientError::OutOfTurn {
                        answered: frame.request_id,
                        kind: frame.kind(),
                    });
                }
                return Ok(frame);
            }
            let want = self.decoder.wanted().clamp(1, self.buf.len());
            let read = self.stream.read(&mut self.buf[..want]).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the page service closed the connection",
                )
                .into());
            }
            self.decoder.feed(&self.buf[..read]);
        }
    }
}
