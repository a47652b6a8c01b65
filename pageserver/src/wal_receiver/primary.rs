//! A Postgres 17 primary as a WAL source: a physical replication client
//! with a slot, speaking `quire_safekeeper::pg_wire` over `io`'s sockets.
//!
//! A session: startup with `replication=true`, authentication (trust,
//! cleartext password, MD5; SCRAM-SHA-256 is refused by name),
//! `IDENTIFY_SYSTEM` (a primary of another cluster than the timeline's is
//! refused for good), `READ_REPLICATION_SLOT name` and, unless the slot
//! exists (then it is reused), `CREATE_REPLICATION_SLOT name PHYSICAL
//! RESERVE_WAL`, and
//! `START_REPLICATION SLOT name PHYSICAL <resume> TIMELINE <current>` at
//! the end of the last record ingested. The walsender streams from any
//! byte position, so a record boundary needs no rounding.
//!
//! `RESERVE_WAL` makes a new slot hold WAL from the primary's last redo
//! pointer at once, rather than from our first status update; WAL older
//! than that (a timeline whose last record is older than the slot) is
//! streamed if the primary still has it (`wal_keep_size`), and our first
//! status update then moves the slot back to what we hold. WAL already
//! removed is an error Postgres names (`requested WAL segment ... has
//! already been removed`), taken as fatal.
//!
//! Standby status updates carry the durable LSN as the written, flushed
//! and applied positions (the slot's restart point follows the flushed
//! one), at least every [`FollowPolicy::status_interval`]. When the
//! primary asks for a reply while we hold everything it sent, the open
//! layer is flushed first, so the reply can say all of it is durable: a
//! walsender shutting down waits for exactly that before it ends the
//! stream. A primary silent for [`FollowPolicy::silence_max`] (every
//! status update sent while it is silent asks for an immediate reply) is
//! taken for dead and the session is started again.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use md5::{Digest, Md5};
use quire_io::net::{TcpStream, UnixStream};
use quire_postgres::Lsn;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_safekeeper::pg_wire::{self, AuthRequest, Backend, Replication, WireError};

use super::conninfo::ConnInfo;
use super::{FollowEnd, FollowPolicy, Progress, ReceiverGauges, SessionEnd};
use crate::ingest::WalIngest;

/// The longest replication slot name Postgres accepts.
pub const SLOT_NAME_LEN_MAX: usize = 63;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// How long a write to the primary may wait for room.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A primary to follow.
#[derive(Clone, Debug)]
pub struct PrimarySource {
    /// How to reach it.
    pub conninfo: ConnInfo,
    /// The physical replication slot (created if missing).
    pub slot: String,
    /// The timeline's cluster: a primary of another one is refused.
    pub system_id: u64,
    /// The cluster's WAL segment size.
    pub segment_size: u32,
}

impl PrimarySource {
    /// A source; the slot name must be what Postgres allows (lower-case
    /// letters, digits and `_`, at most [`SLOT_NAME_LEN_MAX`]).
    pub fn new(
        conninfo: ConnInfo,
        slot: &str,
        system_id: u64,
        segment_size: u32,
    ) -> Result<PrimarySource, PrimaryError> {
        let valid = !slot.is_empty()
            && slot.len() <= SLOT_NAME_LEN_MAX
            && slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(PrimaryError::SlotName(slot.to_owned()));
        }
        Ok(PrimarySource {
            conninfo,
            slot: slot.to_owned(),
            system_id,
            segment_size,
        })
    }
}

/// Why a session with the primary failed.
#[derive(Debug, thiserror::Error)]
pub enum PrimaryError {
    /// The socket.
    #[error("the primary at {address}: {source}")]
    Io {
        /// Where.
        address: String,
        /// What.
        source: io::Error,
    },
    /// The primary closed the connection.
    #[error("the primary at {0} closed the connection")]
    Closed(String),
    /// A message that does not parse.
    #[error("the primary at {address}: {source}")]
    Wire {
        /// Where.
        address: String,
        /// What.
        source: WireError,
    },
    /// An error Postgres sent.
    #[error("the primary at {address} says: {message}")]
    Postgres {
        /// Where.
        address: String,
        /// Its SQLSTATE.
        code: String,
        /// Severity, message and code.
        message: String,
    },
    /// An authentication method this client does not speak.
    #[error(
        "the primary at {address} asks for {method} authentication, which this client does not speak (trust, password and md5 are spoken)"
    )]
    UnsupportedAuth {
        /// Where.
        address: String,
        /// The method.
        method: String,
    },
    /// A password is asked for and the connection string has none.
    #[error("the primary at {0} asks for a password and the connection string gives none")]
    PasswordNeeded(String),
    /// The primary is another cluster than the timeline's.
    #[error("the primary at {address} is cluster {found}, the timeline's is {expected}")]
    OtherCluster {
        /// Where.
        address: String,
        /// Its system identifier.
        found: u64,
        /// The timeline's.
        expected: u64,
    },
    /// Something the protocol does not allow at this point.
    #[error("the primary at {address}: {what}")]
    Protocol {
        /// Where.
        address: String,
        /// What.
        what: String,
    },
    /// A slot name Postgres would refuse.
    #[error(
        "replication slot name {0:?}: use 1 to {SLOT_NAME_LEN_MAX} lower-case letters, digits and _"
    )]
    SlotName(String),
    /// Nothing came for too long.
    #[error("the primary at {address} sent nothing for {silent:?}")]
    Silent {
        /// Where.
        address: String,
        /// How long.
        silent: Duration,
    },
}

impl PrimaryError {
    /// Whether trying again cannot help (the loop stops with the error).
    pub fn is_fatal(&self) -> bool {
        match self {
            PrimaryError::UnsupportedAuth { .. }
            | PrimaryError::PasswordNeeded(_)
            | PrimaryError::OtherCluster { .. }
            | PrimaryError::SlotName(_) => true,
            // A wrong password, no pg_hba.conf entry, WAL already removed,
            // a slot that is logical.
            PrimaryError::Postgres { code, .. } => {
                matches!(code.as_str(), "28P01" | "28000" | "58P01" | "42602")
            }
            _ => false,
        }
    }
}

/// Microseconds since 2000-01-01, Postgres' clock.
fn pg_now() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros())
        .unwrap_or(i64::MAX)
        .saturating_sub(946_684_800_000_000)
}

/// The answer to an MD5 challenge: `md5` + hex(md5(hex(md5(password +
/// user)) + salt)).
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = Md5::new()
        .chain_update(password.as_bytes())
        .chain_update(user.as_bytes())
        .finalize();
    let outer = Md5::new()
        .chain_update(hex(&inner).as_bytes())
        .chain_update(salt)
        .finalize();
    format!("md5{}", hex(&outer))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

enum PgStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A replication session with the primary.
struct PgClient {
    stream: PgStream,
    address: String,
    /// Received bytes; whole messages are taken off the front.
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    consumed: usize,
    chunk: Vec<u8>,
}

impl PgClient {
    /// Connects, starts a physical replication session and authenticates,
    /// all by `deadline`.
    async fn connect(info: &ConnInfo, deadline: Instant) -> Result<PgClient, PrimaryError> {
        let address = info.address();
        let io_error = |source| PrimaryError::Io {
            address: address.clone(),
            source,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let stream = if info.is_unix_socket() {
            let connected = quire_io::timeout(left, UnixStream::connect(&address))
                .await
                .map_err(|e| io_error(e.into()))?;
            PgStream::Unix(connected.map_err(io_error)?)
        } else {
            let stream = TcpStream::connect_timeout(address.as_str(), left)
                .await
                .map_err(io_error)?;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            PgStream::Tcp(stream)
        };
        let mut client = PgClient {
            stream,
            address,
            buf: Vec::new(),
            consumed: 0,
            chunk: vec![0; READ_CHUNK],
        };
        let mut parameters = vec![
            ("user", info.user.as_str()),
            ("replication", "true"),
            ("application_name", info.application_name.as_str()),
        ];
        if let Some(dbname) = &info.dbname {
            parameters.push(("database", dbname.as_str()));
        }
        client.send(&pg_wire::startup_with(&parameters)).await?;
        loop {
            match client.receive_by(deadline).await? {
                Backend::ReadyForQuery => return Ok(client),
                Backend::Error(fields) => return Err(client.postgres_error(&fields)),
                Backend::Authentication(request) => client.authenticate(info, request).await?,
                _ => {}
            }
        }
    }

    async fn authenticate(
        &mut self,
        info: &ConnInfo,
        request: AuthRequest,
    ) -> Result<(), PrimaryError> {
        let answer = match &request {
            AuthRequest::Cleartext | AuthRequest::Md5 { .. } => {
                let Some(password) = &info.password else {
                    return Err(PrimaryError::PasswordNeeded(self.address.clone()));
                };
                match request {
                    AuthRequest::Md5 { salt } => md5_password(&info.user, password, salt),
                    _ => password.clone(),
                }
            }
            AuthRequest::Sasl(mechanisms) => {
                return Err(PrimaryError::UnsupportedAuth {
                    address: self.address.clone(),
                    method: format!("SASL ({})", mechanisms.join(", ")),
                });
            }
            AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
                return Err(self.protocol("SASL data without a SASL exchange"));
            }
        };
        self.send(&pg_wire::password(&answer)).await
    }

    fn protocol(&self, what: &str) -> PrimaryError {
        PrimaryError::Protocol {
            address: self.address.clone(),
            what: what.to_owned(),
        }
    }

    fn postgres_error(&self, fields: &[(u8, String)]) -> PrimaryError {
        PrimaryError::Postgres {
            address: self.address.clone(),
            code: sqlstate(fields),
            message: Backend::error_message(fields),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), PrimaryError> {
        let written = match &mut self.stream {
            PgStream::Tcp(stream) => stream.write_all(bytes).await,
            PgStream::Unix(stream) => quire_io::timeout(WRITE_TIMEOUT, stream.write_all(bytes))
                .await
                .unwrap_or_else(|e| Err(e.into())),
        };
        written.map_err(|source| PrimaryError::Io {
            address: self.address.clone(),
            source,
        })
    }

    /// The next message, or `None` if none has come by `deadline`.
    async fn receive(&mut self, deadline: Instant) -> Result<Option<Backend>, PrimaryError> {
        loop {
            let rest = self.buf.get(self.consumed..).unwrap_or_default();
            match pg_wire::parse_backend(rest) {
                Ok(Some((message, used))) => {
                    self.consumed += used;
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(PrimaryError::Wire {
                        address: self.address.clone(),
                        source,
                    });
                }
            }
            self.buf.drain(..self.consumed);
            self.consumed = 0;
            let read = match &mut self.stream {
                PgStream::Tcp(stream) => stream.read_with_deadline(&mut self.chunk, deadline).await,
                PgStream::Unix(stream) => {
                    stream.read_with_deadline(&mut self.chunk, deadline).await
                }
            };
            let n = match read {
                Ok(0) => return Err(PrimaryError::Closed(self.address.clone())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                Err(source) => {
                    return Err(PrimaryError::Io {
                        address: self.address.clone(),
                        source,
                    });
                }
            };
            self.buf
                .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        }
    }

    /// The next message, which must come by `deadline`.
    async fn receive_by(&mut self, deadline: Instant) -> Result<Backend, PrimaryError> {
        self.receive(deadline)
            .await?
            .ok_or_else(|| PrimaryError::Io {
                address: self.address.clone(),
                source: io::Error::new(io::ErrorKind::TimedOut, "no answer in time"),
            })
    }

    /// Runs a simple query: its rows (text), or the error Postgres gave.
    async fn query(
        &mut self,
        sql: &str,
        deadline: Instant,
    ) -> Result<Result<Vec<Vec<Option<String>>>, PrimaryError>, PrimaryError> {
        self.send(&pg_wire::query(sql)).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.receive_by(deadline).await? {
                Backend::DataRow(values) => rows.push(values),
                Backend::Error(fields) => failure = Some(self.postgres_error(&fields)),
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
}

fn sqlstate(fields: &[(u8, String)]) -> String {
    fields
        .iter()
        .find(|(c, _)| *c == b'C')
        .map(|(_, t)| t.clone())
        .unwrap_or_default()
}

/// Connects, checks the cluster, makes or reuses the slot and starts
/// streaming at `progress.resume`.
async fn start_streaming(
    source: &PrimarySource,
    progress: &mut Progress,
    policy: &FollowPolicy,
) -> Result<PgClient, PrimaryError> {
    let deadline = Instant::now() + policy.connect_timeout;
    let mut client = PgClient::connect(&source.conninfo, deadline).await?;
    let rows = client.query("IDENTIFY_SYSTEM", deadline).await??;
    let row = rows
        .first()
        .ok_or_else(|| client.protocol("IDENTIFY_SYSTEM returned no row"))?;
    let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let found: u64 = field(0)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| client.protocol("IDENTIFY_SYSTEM without a system identifier"))?;
    if found != source.system_id {
        return Err(PrimaryError::OtherCluster {
            address: client.address.clone(),
            found,
            expected: source.system_id,
        });
    }
    let tli: u32 = field(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| client.protocol("IDENTIFY_SYSTEM without a timeline"))?;
    let slot = &source.slot;
    // Looked up first, so reconnecting to an existing slot leaves no
    // ERROR in the primary's log; a slot made meanwhile by someone else
    // (42710) is reused all the same.
    let found = client
        .query(&format!("READ_REPLICATION_SLOT {slot}"), deadline)
        .await??;
    let exists = found
        .first()
        .and_then(|row| row.first())
        .is_some_and(Option::is_some);
    if exists {
        progress.stats.slots_reused += 1;
    } else {
        match client
            .query(
                &format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"),
                deadline,
            )
            .await?
        {
            Ok(_) => progress.stats.slots_created += 1,
            Err(PrimaryError::Postgres { code, .. }) if code == "42710" => {
                progress.stats.slots_reused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    client
        .send(&pg_wire::query(&format!(
            "START_REPLICATION SLOT {slot} PHYSICAL {} TIMELINE {tli}",
            progress.resume
        )))
        .await?;
    loop {
        match client.receive_by(deadline).await? {
            Backend::CopyBoth => return Ok(client),
            Backend::Error(fields) => return Err(client.postgres_error(&fields)),
            _ => {}
        }
    }
}

/// One session with the primary: `Reached`, `Lost` (try again), or an
/// error that trying again cannot mend.
pub(crate) async fn session(
    ingest: &mut WalIngest,
    source: &PrimarySource,
    progress: &mut Progress,
    end: FollowEnd,
    policy: &FollowPolicy,
) -> Result<SessionEnd> {
    let lost = |e: PrimaryError| -> Result<SessionEnd> {
        if e.is_fatal() {
            Err(e.into())
        } else {
            Ok(SessionEnd::Lost(e.to_string()))
        }
    };
    let client = match start_streaming(source, progress, policy).await {
        Ok(client) => client,
        Err(e) => return lost(e),
    };
    progress.stats.connections += 1;
    progress.gauges.connections.set(progress.stats.connections);
    match stream(ingest, source, client, progress, end, policy).await? {
        Ok(()) => Ok(SessionEnd::Reached),
        Err(e) => lost(e),
    }
}

/// Streams until `end` (`Ok(Ok(()))`), the session is lost (`Ok(Err)`)
/// or ingest fails (`Err`).
async fn stream(
    ingest: &mut WalIngest,
    source: &PrimarySource,
    mut client: PgClient,
    progress: &mut Progress,
    end: FollowEnd,
    policy: &FollowPolicy,
) -> Result<Result<(), PrimaryError>> {
    let address = client.address.clone();
    let mut decoder = WalStreamDecoder::new(progress.resume, source.segment_size)
        .with_system_id(source.system_id);
    let mut fed = progress.resume;
    let mut last_heard = Instant::now();
    let mut next_status = Instant::now();
    let mut last_reply_flush: Option<Instant> = None;
    // A reply the primary asked for, held back until a flush may run.
    let mut reply_due = false;
    loop {
        let mut send_now = false;
        match client.receive(next_status).await {
            // A timeout (time for a status update) or a message we ignore.
            Ok(None | Some(Backend::Other(_))) => {}
            Ok(Some(Backend::CopyData(body))) => {
                last_heard = Instant::now();
                match parse_noting_end(&body, &progress.gauges) {
                    Ok(Replication::XLogData { start, data, .. }) => {
                        if start != fed {
                            return Ok(Err(
                                client.protocol(&format!("sent WAL at {start}, expected {fed}"))
                            ));
                        }
                        fed = Lsn(fed.0.saturating_add(data.len() as u64));
                        let wal = Wal {
                            decoder: &mut decoder,
                            data,
                            from: &address,
                        };
                        match take_wal(ingest, progress, wal, end, policy).await? {
                            None => return Ok(Ok(())),
                            Some(flushed) => send_now = flushed,
                        }
                    }
                    Ok(Replication::Keepalive {
                        wal_end,
                        reply_requested,
                    }) => {
                        // Holding everything it has, we make it durable
                        // before answering (at most so often), so the
                        // answer is complete; otherwise answer at once.
                        if reply_requested && wal_end <= fed {
                            reply_due = true;
                        } else if reply_requested {
                            send_now = true;
                        }
                    }
                    Err(source) => {
                        return Ok(Err(PrimaryError::Wire {
                            address: address.clone(),
                            source,
                        }));
                    }
                }
            }
            Ok(Some(Backend::CommandComplete(_))) => {
                if end == FollowEnd::SourceShutdown {
                    return Ok(Ok(()));
                }
                return Ok(Err(client.protocol("ended the stream (shut down)")));
            }
            Ok(Some(Backend::CopyDone)) => {
                return Ok(Err(client.protocol("ended the stream on its timeline")));
            }
            Ok(Some(Backend::Error(fields))) => return Ok(Err(client.postgres_error(&fields))),
            Ok(Some(_)) => {
                return Ok(Err(
                    client.protocol("sent a message that has no place in a stream")
                ));
            }
            Err(e) => return Ok(Err(e)),
        }
        let now = Instant::now();
        if reply_due {
            let allowed =
                last_reply_flush.is_none_or(|at| now >= at + policy.reply_flush_interval_min);
            if allowed {
                if progress.maybe_flush(ingest, policy, true).await? {
                    last_reply_flush = Some(now);
                }
                reply_due = false;
                send_now = true;
            } else if let Some(at) = last_reply_flush {
                next_status = next_status.min(at + policy.reply_flush_interval_min);
            }
        }
        let silent = now.saturating_duration_since(last_heard);
        if silent > policy.silence_max {
            return Ok(Err(PrimaryError::Silent {
                address: address.clone(),
                silent,
            }));
        }
        if send_now || now >= next_status {
            let ping = silent > policy.silence_max / 2;
            if let Err(e) = report(&mut client, ingest, progress, policy, fed, ping).await? {
                return Ok(Err(e));
            }
            next_status = Instant::now() + policy.status_interval;
        }
    }
}

/// Parses a replication message, noting the primary's end of WAL that
/// data and keepalives carry.
fn parse_noting_end<'a>(
    body: &'a [u8],
    gauges: &ReceiverGauges,
) -> Result<Replication<'a>, WireError> {
    let message = pg_wire::parse_replication(body);
    if let Ok(Replication::XLogData { wal_end, .. } | Replication::Keepalive { wal_end, .. }) =
        &message
    {
        gauges.saw_end(*wal_end);
    }
    message
}

/// A chunk of WAL from the primary and the decoder it goes into.
struct Wal<'a, 'b> {
    decoder: &'a mut WalStreamDecoder,
    data: &'b [u8],
    from: &'a str,
}

/// Ingests a chunk of WAL and applies the flush policy: `None` when the
/// end was reached, else whether it flushed.
async fn take_wal(
    ingest: &mut WalIngest,
    progress: &mut Progress,
    wal: Wal<'_, '_>,
    end: FollowEnd,
    policy: &FollowPolicy,
) -> Result<Option<bool>> {
    progress.stats.bytes += wal.data.len() as u64;
    progress.gauges.received(wal.data.len());
    progress.flowed = true;
    wal.decoder.feed(wal.data);
    if progress
        .ingest_decoded(ingest, wal.decoder, end, wal.from)
        .await?
    {
        return Ok(None);
    }
    Ok(Some(progress.maybe_flush(ingest, policy, false).await?))
}

/// Applies the flush policy, then sends a standby status update with the
/// durable LSN (asking for an answer at once when `ping`).
async fn report(
    client: &mut PgClient,
    ingest: &mut WalIngest,
    progress: &mut Progress,
    policy: &FollowPolicy,
    received: Lsn,
    ping: bool,
) -> Result<Result<(), PrimaryError>> {
    progress.maybe_flush(ingest, policy, false).await?;
    let durable = progress.durable(ingest.timeline(), received);
    if let Err(e) = client
        .send(&pg_wire::standby_status(durable, pg_now(), ping))
        .await
    {
        return Ok(Err(e));
    }
    if durable > progress.reported {
        progress.reported = durable;
        progress.stats.persisted_reports += 1;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_answers_match_postgres() {
        // Computed with Python's hashlib: "md5" + md5(md5("secretpostgres")
        // in hex + the salt bytes 1 2 3 4) in hex.
        assert_eq!(
            md5_password("postgres", "secret", [1, 2, 3, 4]),
            "md5bb41a296aab6baccb36ff243a562abff"
        );
    }

    #[test]
    fn slot_names_are_what_postgres_accepts() {
        let info = ConnInfo::parse("").unwrap();
        for good in ["quire", "slot_1", &"a".repeat(SLOT_NAME_LEN_MAX)] {
            assert!(
                PrimarySource::new(info.clone(), good, 1, 16 << 20).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "Quire",
            "a-b",
            "a b; DROP",
            &"a".repeat(SLOT_NAME_LEN_MAX + 1),
        ] {
            assert!(
                matches!(
                    PrimarySource::new(info.clone(), bad, 1, 16 << 20),
                    Err(PrimaryError::SlotName(_))
                ),
                "{bad}"
            );
        }
    }
}
