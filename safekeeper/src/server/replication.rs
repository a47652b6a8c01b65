//! The safekeeper as a streaming-replication standby of its term's compute.
//!
//! It connects in replication mode with `application_name` = the name the
//! compute's `synchronous_standby_names` lists, checks the system
//! identifier, makes sure its physical slot exists (so the compute keeps
//! WAL it has not received), and starts streaming at its own WAL end. Each
//! batch of `XLogData` goes through the acceptor as an append in the term;
//! then one group-commit flush, then a status update reporting the flushed
//! position only. It answers keepalives and sends a status update at least
//! every [`STATUS_INTERVAL`]. It stops when its term is no longer the
//! timeline's (a newer compute was elected) or the compute goes away.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::acceptor::{Request, Response};
use crate::history::Term;
use crate::membership::Sender;
use crate::pg_wire::{self, Backend, Replication};
use crate::server::conn::{ConnError, PgConn};
use crate::server::timeline::Timeline;

/// Longest wait for WAL before a status update goes out anyway.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait between checks that peer recovery has finished.
const RECOVERY_CHECK: Duration = Duration::from_millis(100);

/// Why streaming stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The compute is another cluster, or said something unexpected.
    #[error("{0}")]
    Protocol(String),
    /// The timeline moved to another term or compute.
    #[error("term {0} is over")]
    TermOver(Term),
    /// The timeline failed.
    #[error(transparent)]
    Timeline(#[from] crate::server::timeline::TimelineError),
}

/// Microseconds since 2000-01-01, Postgres' clock.
fn pg_now() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - 946_684_800_000_000
}

fn term_is_current(timeline: &Timeline, term: Term, compute: &str) -> bool {
    timeline
        .compute()
        .is_some_and(|(t, c)| t == term && c == compute)
}

/// Connects, checks the cluster, makes the slot, waits for peer recovery
/// and starts replication at our WAL end.
async fn start_streaming(
    timeline: &Timeline,
    term: Term,
    compute: &str,
    user: &str,
    name: &str,
) -> Result<PgConn, StreamError> {
    let mut conn = PgConn::connect(compute, user, name).await?;
    let rows = conn
        .query("IDENTIFY_SYSTEM")
        .await?
        .map_err(|(_, e)| StreamError::Protocol(e))?;
    let row = rows
        .first()
        .ok_or_else(|| StreamError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let system_id: u64 = row
        .first()
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StreamError::Protocol("IDENTIFY_SYSTEM without a system id".into()))?;
    if system_id != timeline.system_id {
        return Err(StreamError::Protocol(format!(
            "the compute at {compute} is cluster {system_id}, the timeline's is {}",
            timeline.system_id
        )));
    }
    let pg_timeline = row
        .get(1)
        .and_then(|v| v.as_deref())
        .unwrap_or("1")
        .to_owned();
    let slot = format!("quire_{name}");
    if let Err((code, message)) = conn
        .query(&format!(
            "CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"
        ))
        .await?
    {
        // 42710: the slot exists already.
        if code != "42710" {
            return Err(StreamError::Protocol(message));
        }
    }
    // Start where our WAL ends, once peer recovery has filled the gap
    // below the term's start and repair any damaged range.
    let start = loop {
        if !term_is_current(timeline, term, compute) {
            return Err(StreamError::TermOver(term));
        }
        let state = timeline.lock().await?;
        let seen = timeline.progress();
        if state.acceptor.term() == term
            && state.acceptor.is_elected_member()
            && state.acceptor.recovery_needed().is_none()
            && state.acceptor.damage().is_none()
        {
            break state.acceptor.write_lsn();
        }
        drop(state);
        // Recovery's flushes and a new announcement signal the timeline;
        // the timeout only bounds a wait whose cause sent no signal.
        let _ = quire_io::timeout(RECOVERY_CHECK, timeline.changed(seen)).await;
    };
    conn.send(&pg_wire::query(&format!(
        "START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {pg_timeline}"
    )))
    .await?;
    loop {
        match conn.receive().await? {
            Backend::CopyBoth => break,
            Backend::Error(fields) => {
                return Err(StreamError::Protocol(Backend::error_message(&fields)));
            }
            _ => {}
        }
    }
    Ok(conn)
}

/// Streams from `compute` in `term` until the term ends or an error.
pub async fn stream(
    timeline: Rc<Timeline>,
    term: Term,
    compute: String,
    user: String,
    name: String,
) -> Result<(), StreamError> {
    let mut conn = start_streaming(&timeline, term, &compute, &user, &name).await?;
    let mut flushed = timeline.status().await?.1;
    // Postgres counts a standby as synchronous only after its first reply.
    conn.send(&pg_wire::status_update(flushed, pg_now()))
        .await?;
    conn.set_read_timeout(Some(STATUS_INTERVAL));
    loop {
        // Take every message already here (or wait for the first).
        loop {
            let message = match conn.receive().await {
                Ok(message) => message,
                Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => return Err(e.into()),
            };
            match message {
                Backend::CopyData(body) => {
                    match pg_wire::parse_replication(&body)
                        .map_err(|e| StreamError::Protocol(e.to_string()))?
                    {
                        Replication::XLogData { start, data, .. } => {
                            let append = Request::Append {
                                term,
                                begin: start,
                                len: data.len() as u64,
                            };
                            if let Some(Response::Refused { .. }) =
                                timeline.handle(Sender::Proposer, &append, data).await?
                            {
                                return Err(StreamError::TermOver(term));
                            }
                        }
                        // Every batch ends with a status update, which
                        // answers a keepalive too.
                        Replication::Keepalive { .. } => {}
                    }
                }
                Backend::CopyDone => {
                    return Err(StreamError::Protocol("the compute ended the stream".into()));
                }
                Backend::Error(fields) => {
                    return Err(StreamError::Protocol(Backend::error_message(&fields)));
                }
                _ => {}
            }
            if !conn.has_buffered_message() {
                break;
            }
        }
        if !term_is_current(&timeline, term, &compute) {
            return Err(StreamError::TermOver(term));
        }
        if let Some(Response::Flushed { flush, term: t, .. }) = timeline.flush().await?
            && t == term
        {
            flushed = flush;
        }
        // Report only what is durable, after every batch and at least
        // every STATUS_INTERVAL.
        conn.send(&pg_wire::status_update(flushed, pg_now()))
            .await?;
    }
}
