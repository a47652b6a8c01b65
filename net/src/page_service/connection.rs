//! One connection's request loop, after `HelloOk`: read, decode at most
//! `pipeline_depth` frames ahead, answer them in order (consecutive page
//! reads as one batch), write the round's answers in one write, and let
//! the core's other tasks run before the next round.
//!
//! Page answers are laid out in the output buffer before they are read:
//! each read's header space and pages, which the session fills in place,
//! so a page is copied once, from the cache or redo into the buffer the
//! socket sends. A read that fails has its space replaced by its `Error`.

use std::io;
use std::time::Instant;

use quire_postgres::Lsn;

use crate::page_protocol::{
    ClientFrame, ClientMessage, ErrorResponse, FrameDecoder, FrameError, PAGE_BYTES, Request,
    Response, ServerFrame, ServerMessage, ServiceError, encode_page_reply_prefix, kind,
};

use super::{PageRead, PageSession, RequestError, ServiceLimits, Transport};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// The header and fields before a page-bearing answer's pages.
const GET_PAGE_PREFIX: usize = 24;
const GET_PAGES_PREFIX: usize = 32;

/// How a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The client closed it between frames.
    ClientClosed,
    /// The server closed it after a closing `Error` (a broken frame
    /// boundary, a frame out of turn, shutting down).
    Refused(String),
    /// Reading or writing failed or timed out.
    Io(io::Error),
}

/// Serves requests on `stream` until the client closes it or an error
/// ends it; `decoder` holds what was read with the handshake.
pub async fn serve<T: Transport, S: PageSession>(
    stream: &mut T,
    mut decoder: FrameDecoder<ClientFrame>,
    session: &S,
    limits: &ServiceLimits,
) -> Ended {
    let depth = usize::try_from(limits.pipeline_depth.max(1)).unwrap_or(1);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out: Vec<u8> = Vec::new();
    let mut frames: Vec<Result<ClientFrame, FrameError>> = Vec::with_capacity(depth);
    loop {
        let mut fatal: Option<FrameError> = None;
        while frames.len() < depth {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(Ok(frame)),
                Ok(None) => break,
                Err(error) if error.boundary_known() => frames.push(Err(error)),
                Err(error) => {
                    fatal = Some(error);
                    break;
                }
            }
        }
        if frames.is_empty() && fatal.is_none() {
            let deadline = if decoder.buffered() > 0 {
                Some(Instant::now() + limits.frame_timeout)
            } else {
                limits.idle_timeout.map(|idle| Instant::now() + idle)
            };
            match stream.read_by(&mut buf, deadline).await {
                Ok(0) if decoder.buffered() == 0 => return Ended::ClientClosed,
                Ok(0) => {
                    return Ended::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection inside a frame",
                    ));
                }
                Ok(read) => decoder.feed(&buf[..read]),
                Err(error) => return Ended::Io(error),
            }
            continue;
        }
        out.clear();
        let closing = answer_round(&frames, session, &mut out).await;
        frames.clear();
        let closing = closing.or_else(|| {
            fatal.map(|error| {
                session.frame_refused(ServiceError::BadRequest);
                push_error(
                    &mut out,
                    error.request_id(),
                    ErrorResponse::new(error.kind(), ServiceError::BadRequest, &error.to_string())
                        .closing(),
                );
                error.to_string()
            })
        });
        let written = quire_io::timeout(limits.write_timeout, stream.write_all_bytes(&out)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Ended::Io(error),
            Err(elapsed) => return Ended::Io(elapsed.into()),
        }
        if let Some(reason) = closing {
            return Ended::Refused(reason);
        }
        // A client that keeps its pipeline full would find its next round
        // always readable and its answers always writable, so this task
        // would never wait and the core's other connections would starve
        // (measured: p99.9 of 0.4-0.9 s with four pipelined connections).
        // One yield per round hands the core on in turn.
        quire_io::yield_now().await;
    }
}

/// Answers `frames` in order into `out`; `Some(reason)` when the
/// connection must close after them (what follows is not answered).
async fn answer_round<S: PageSession>(
    frames: &[Result<ClientFrame, FrameError>],
    session: &S,
    out: &mut Vec<u8>,
) -> Option<String> {
    let mut next = 0;
    while let Some(frame) = frames.get(next) {
        if session.stopping() {
            let (id, kind) = match frame {
                Ok(frame) => (frame.request_id, frame.kind()),
                Err(error) => (error.request_id(), error.kind()),
            };
            push_error(
                out,
                id,
                ErrorResponse::new(kind, ServiceError::ShuttingDown, "the server is stopping"),
            );
            session.frame_refused(ServiceError::ShuttingDown);
            return Some("the server is stopping".into());
        }
        let frame = match frame {
            Err(error) => {
                session.frame_refused(ServiceError::BadRequest);
                push_error(
                    out,
                    error.request_id(),
                    ErrorResponse::new(error.kind(), ServiceError::BadRequest, &error.to_string()),
                );
                next += 1;
                continue;
            }
            Ok(frame) => frame,
        };
        let request = match &frame.message {
            ClientMessage::Hello(_) => {
                session.frame_refused(ServiceError::BadRequest);
                push_error(
                    out,
                    frame.request_id,
                    ErrorResponse::new(
                        kind::HELLO,
                        ServiceError::BadRequest,
                        "a second Hello on a connection",
                    )
                    .closing(),
                );
                return Some("a second Hello".into());
            }
            ClientMessage::Request(request) => request,
        };
        if page_read(request).is_some() {
            let run = frames[next..]
                .iter()
                .take_while(|f| {
                    matches!(f, Ok(ClientFrame { message: ClientMessage::Request(r), .. }) if page_read(r).is_some())
                })
                .count();
            answer_page_reads(&frames[next..next + run], session, out).await;
            next += run;
            continue;
        }
        let answer = answer_other(request, session).await;
        push_answer(out, frame.request_id, request.kind(), answer);
        next += 1;
    }
    None
}

/// The page read a request is, if it is one.
fn page_read(request: &Request) -> Option<PageRead> {
    match *request {
        Request::GetPage { lsn, rel, block } => Some(PageRead {
            lsn,
            rel,
            first_block: block,
            count: 1,
        }),
        Request::GetPages {
            lsn,
            rel,
            first_block,
            count,
        } => Some(PageRead {
            lsn,
            rel,
            first_block,
            count,
        }),
        _ => None,
    }
}

/// Answers a run of page reads as one batch, laid out in place.
async fn answer_page_reads<S: PageSession>(
    run: &[Result<ClientFrame, FrameError>],
    session: &S,
    out: &mut Vec<u8>,
) {
    let mut reads = Vec::with_capacity(run.len());
    let mut ids = Vec::with_capacity(run.len());
    for frame in run {
        if let Ok(ClientFrame {
            request_id,
            message: ClientMessage::Request(request),
        }) = frame
            && let Some(read) = page_read(request)
        {
            reads.push(read);
            ids.push((*request_id, request.kind()));
        }
    }
    let base = out.len();
    // Each read's space: its prefix, then its pages.
    let mut spans = Vec::with_capacity(reads.len());
    let mut end = base;
    for read in &reads {
        let prefix = if read.count == 1 && ids[spans.len()].1 == kind::GET_PAGE {
            GET_PAGE_PREFIX
        } else {
            GET_PAGES_PREFIX
        };
        let pages = read.count as usize * PAGE_BYTES as usize;
        spans.push((end, prefix, pages));
        end += prefix + pages;
    }
    out.resize(end, 0);
    let results = {
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(spans.len());
        let mut rest = &mut out[base..];
        for &(_, prefix, pages) in &spans {
            let (span, tail) = rest.split_at_mut(prefix + pages);
            slices.push(&mut span[prefix..]);
            rest = tail;
        }
        session.read_pages(&reads, &mut slices).await
    };
    let mut header = Vec::with_capacity(GET_PAGES_PREFIX);
    let mut failed = false;
    for (i, &(start, prefix, _)) in spans.iter().enumerate() {
        let (id, request_kind) = ids[i];
        if let Some(Ok(lsn)) = results.get(i) {
            header.clear();
            let reply_kind = request_kind | kind::RESPONSE;
            if encode_page_reply_prefix(&mut header, id, reply_kind, *lsn, reads[i].count).is_ok()
                && header.len() == prefix
            {
                out[start..start + prefix].copy_from_slice(&header);
                continue;
            }
        }
        failed = true;
    }
    if !failed {
        return;
    }
    // Rare: rebuild the round's tail with each failed read's Error.
    let laid_out = out.split_off(base);
    for (i, &(start, prefix, pages)) in spans.iter().enumerate() {
        let (id, request_kind) = ids[i];
        match results.get(i) {
            Some(Ok(lsn)) if served(*lsn) => {
                let from = start - base;
                out.extend_from_slice(&laid_out[from..from + prefix + pages]);
            }
            Some(Err(error)) => push_error(
                out,
                id,
                ErrorResponse::new(request_kind, error.error, &error.message),
            ),
            _ => push_error(
                out,
                id,
                ErrorResponse::new(
                    request_kind,
                    ServiceError::Internal,
                    "the read produced no valid answer",
                ),
            ),
        }
    }
}

/// Whether `lsn` is one an answer can carry.
fn served(lsn: Lsn) -> bool {
    lsn.0 != 0 && lsn.0 != u64::MAX
}

/// The answer to a request that carries no relation pages.
async fn answer_other<S: PageSession>(
    request: &Request,
    session: &S,
) -> Result<Response, RequestError> {
    match *request {
        Request::Nblocks { lsn, rel } => {
            let (lsn, nblocks) = session.nblocks(lsn, rel).await?;
            Ok(Response::Nblocks { lsn, nblocks })
        }
        Request::Exists { lsn, rel } => {
            let (lsn, exists) = session.exists(lsn, rel).await?;
            Ok(Response::Exists { lsn, exists })
        }
        Request::DbSize { lsn, db_oid } => {
            let (lsn, size_bytes) = session.db_size(lsn, db_oid).await?;
            Ok(Response::DbSize { lsn, size_bytes })
        }
        Request::SlruSegment { lsn, slru, segment } => {
            let mut pages = Vec::new();
            let (lsn, _) = session.slru_segment(lsn, slru, segment, &mut pages).await?;
            Ok(Response::SlruSegment { lsn, pages })
        }
        Request::GetPage { .. } | Request::GetPages { .. } => Err(RequestError::new(
            ServiceError::Internal,
            "a page read outside a batch",
        )),
    }
}

fn push_answer(
    out: &mut Vec<u8>,
    request_id: u64,
    request_kind: u8,
    answer: Result<Response, RequestError>,
) {
    let message = match answer {
        Ok(response) => ServerMessage::Response(response),
        Err(error) => ServerMessage::Error(ErrorResponse::new(
            request_kind,
            error.error,
            &error.message,
        )),
    };
    let frame = ServerFrame {
        request_id,
        message,
    };
    let start = out.len();
    if let Err(error) = frame.encode(out) {
        out.truncate(start);
        push_error(
            out,
            request_id,
            ErrorResponse::new(
                request_kind,
                ServiceError::Internal,
                &format!("the answer does not encode: {error}"),
            ),
        );
    }
}

fn push_error(out: &mut Vec<u8>, request_id: u64, error: ErrorResponse) {
    let start = out.len();
    let frame = ServerFrame {
        request_id,
        message: ServerMessage::Error(error),
    };
    if frame.encode(out).is_err() {
        // An Error of a known code with a cut message always encodes; keep
        // the stream whole if it ever does not.
        out.truncate(start);
    }
}
