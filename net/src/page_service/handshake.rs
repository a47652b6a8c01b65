//! The handshake: reading the `Hello` whole within its timeout, and the
//! checks any core can make before it knows where the shard lives (the
//! version range, the token). The owning core checks the tenant, timeline
//! and shard and answers `HelloOk` or the error (`answer_hello`).

use std::io;
use std::time::{Duration, Instant};

use crate::id::TenantId;
use crate::page_protocol::{
    ClientFrame, ClientMessage, ErrorResponse, FrameDecoder, Hello, HelloOk,
    RESPONSE_FRAME_BYTES_MAX, ServerFrame, ServerMessage, ServiceError, VERSION_MAX, VERSION_MIN,
    kind,
};
use crate::token::{Scope, TokenVerifier};

use super::{ServiceLimits, Transport};

/// A `Hello` read whole, with the decoder holding whatever the client sent
/// after it.
pub struct Handshake {
    /// The `Hello`'s request id (what its answer echoes).
    pub request_id: u64,
    /// The handshake.
    pub hello: Hello,
    /// The connection's decoder, past the `Hello`.
    pub decoder: FrameDecoder<ClientFrame>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("request_id", &self.request_id)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

/// Why a handshake ended without a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The stream failed, ended or timed out before the `Hello` was whole:
    /// nothing to answer.
    #[error("reading the handshake: {0}")]
    Io(#[from] io::Error),
    /// The first frame is not a valid `Hello`: answer it, then close.
    #[error("refused: {}", .error.message)]
    Refused {
        /// The frame's request id.
        request_id: u64,
        /// The answer.
        error: ErrorResponse,
    },
}

/// Reads the first frame, which must be a `Hello`, whole within
/// `timeout`.
pub async fn read_hello<T: Transport>(
    stream: &mut T,
    timeout: Duration,
) -> Result<Handshake, HandshakeError> {
    let deadline = Instant::now() + timeout;
    let mut decoder = FrameDecoder::<ClientFrame>::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match decoder.next_frame() {
            Ok(Some(ClientFrame {
                request_id,
                message: ClientMessage::Hello(hello),
            })) => {
                return Ok(Handshake {
                    request_id,
                    hello,
                    decoder,
                });
            }
            Ok(Some(frame)) => {
                return Err(HandshakeError::Refused {
                    request_id: frame.request_id,
                    error: ErrorResponse::new(
                        frame.kind(),
                        ServiceError::BadRequest,
                        "the first frame must be a Hello",
                    )
                    .closing(),
                });
            }
            Ok(None) => {}
            Err(error) => {
                return Err(HandshakeError::Refused {
                    request_id: error.request_id(),
                    error: ErrorResponse::new(
                        error.kind(),
                        ServiceError::BadRequest,
                        &error.to_string(),
                    )
                    .closing(),
                });
            }
        }
        let want = decoder.wanted().clamp(1, buf.len());
        let read = stream.read_by(&mut buf[..want], Some(deadline)).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection inside its handshake",
            )
            .into());
        }
        decoder.feed(&buf[..read]);
    }
}

/// The version both sides speak (the highest), or the `UnsupportedVersion`
/// answer.
pub fn check_version(hello: &Hello) -> Result<u16, ErrorResponse> {
    let low = hello.version_min.max(VERSION_MIN);
    let high = hello.version_max.min(VERSION_MAX);
    if low > high {
        return Err(ErrorResponse::new(
            kind::HELLO,
            ServiceError::UnsupportedVersion {
                min: VERSION_MIN,
                max: VERSION_MAX,
            },
            &format!(
                "the client speaks versions {} to {}, the server {VERSION_MIN} to {VERSION_MAX}",
                hello.version_min, hello.version_max
            ),
        ));
    }
    Ok(high)
}

/// Checks the token against `verifier` (none: every token is accepted) at
/// `now` (seconds since the Unix epoch): it must verify, have scope
/// `compute` or `admin`, and name the handshake's tenant or none.
pub fn check_token(
    hello: &Hello,
    verifier: Option<&TokenVerifier>,
    now: u64,
) -> Result<(), ErrorResponse> {
    let Some(verifier) = verifier else {
        return Ok(());
    };
    let refuse = |error, message: &str| Err(ErrorResponse::new(kind::HELLO, error, message));
    if hello.token.is_empty() {
        return refuse(
            ServiceError::Unauthenticated,
            "this server takes only signed tokens, and the handshake carries none",
        );
    }
    let claims = match verifier.verify(&hello.token, now) {
        Ok(claims) => claims,
        Err(error) => return refuse(ServiceError::Unauthenticated, &format!("token: {error}")),
    };
    if !matches!(claims.scope, Scope::Compute | Scope::Admin) {
        return refuse(
            ServiceError::Forbidden,
            &format!("a token of scope {:?} cannot read pages", claims.scope),
        );
    }
    if let Some(tenant) = &claims.tenant {
        let allowed = tenant.parse::<TenantId>().ok();
        if allowed != Some(hello.tenant) {
            return refuse(
                ServiceError::Forbidden,
                &format!("the token is for tenant {tenant}, not {}", hello.tenant),
            );
        }
    }
    Ok(())
}

/// What a server says in its `HelloOk` under `limits` at `version`.
pub fn hello_ok(version: u16, limits: &ServiceLimits) -> HelloOk {
    HelloOk {
        version,
        frame_bytes_max: RESPONSE_FRAME_BYTES_MAX,
        pipeline_depth: limits.pipeline_depth,
        blocks_per_request_max: crate::page_protocol::BLOCKS_PER_REQUEST_MAX,
        lsn_wait_ms: u32::try_from(limits.lsn_wait.as_millis()).unwrap_or(u32::MAX),
    }
}

/// Writes the answer to a `Hello` (bounded by `timeout`).
pub async fn answer_hello<T: Transport>(
    stream: &mut T,
    request_id: u64,
    answer: Result<HelloOk, ErrorResponse>,
    timeout: Duration,
) -> io::Result<()> {
    let message = match answer {
        Ok(ok) => ServerMessage::HelloOk(ok),
        Err(error) => ServerMessage::Error(error.closing()),
    };
    let bytes = ServerFrame {
        request_id,
        message,
    }
    .to_bytes()
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    quire_io::timeout(timeout, stream.write_all_bytes(&bytes))
        .await
        .map_err(io::Error::from)?
}
