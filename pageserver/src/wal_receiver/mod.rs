//! The pageserver's WAL receiver: follows a timeline's WAL from its source
//! and ingests it, until an end or for as long as its task lives.
//!
//! Two sources ([`WalSource`]): the safekeepers' committed WAL
//! ([`safekeepers`], the architecture), or a Postgres 17 primary directly,
//! as a physical replication client with a slot ([`primary`], which puts
//! Quire in front of an unmodified Postgres). Both run through one loop,
//! [`receive`]: a session with the source streams records into
//! [`WalIngest`] from the end of the last record ingested; a session lost
//! (a dead server, a stall, a refused dial) is started again after a
//! backoff that doubles up to [`FollowPolicy::backoff_max`] and resets once
//! WAL flows; what cannot get better by retrying (WAL that does not decode,
//! a primary of another cluster, an authentication method we cannot
//! speak) ends the loop with an error.
//!
//! The in-memory layer stays bounded: after each batch the open layer is
//! frozen and flushed when it holds more than [`FollowPolicy::flush_bytes`]
//! or has waited [`FollowPolicy::flush_interval`], and the new durable
//! position goes upstream (a `ReportPersisted` to the safekeepers, the
//! positions of the primary's standby status update), so the source keeps
//! WAL until our layers hold it. [`FollowEnd`] says when to stop: never
//! (the service; cancel by dropping the task), after the record at an LSN
//! (`quire verify` from safekeepers), or when the primary shuts down
//! (`quire verify --primary`: the walsender sends everything through the
//! shutdown checkpoint, then ends the stream).

pub mod conninfo;
pub mod primary;
pub mod safekeepers;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quire_postgres::Lsn;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_shard::Timeline;

pub use conninfo::{CONNINFO_LEN_MAX, ConnInfo, ConnInfoError};
pub use primary::PrimarySource;
pub use safekeepers::{CONNECT_TIMEOUT, STATUS_TIMEOUT, SafekeeperSource, StatusLinks};

use crate::ingest::WalIngest;

/// Where a timeline's WAL comes from.
#[derive(Clone, Debug)]
pub enum WalSource {
    /// The safekeepers' committed WAL.
    Safekeepers(SafekeeperSource),
    /// A Postgres 17 primary, through a physical replication slot.
    Primary(PrimarySource),
}

impl WalSource {
    /// The source in a few words, for messages.
    pub fn describe(&self) -> String {
        match self {
            WalSource::Safekeepers(s) => format!("the safekeepers {}", s.safekeepers.join(",")),
            WalSource::Primary(p) => {
                format!("the primary at {} (slot {})", p.conninfo.address(), p.slot)
            }
        }
    }
}

/// When following stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowEnd {
    /// Never: the receiver runs until its task is dropped or a fatal error.
    Forever,
    /// After ingesting the record that starts at this LSN.
    Through(Lsn),
    /// When the primary ends the stream because it shuts down (only a
    /// primary source says so; safekeepers never do).
    SourceShutdown,
}

/// The receiver's knobs.
#[derive(Clone, Debug)]
pub struct FollowPolicy {
    /// Freeze and flush the open layer once it holds this many bytes.
    pub flush_bytes: usize,
    /// ... or once it has held anything this long.
    pub flush_interval: Duration,
    /// A primary gets a standby status update at least this often.
    pub status_interval: Duration,
    /// A primary that has sent nothing this long (it answers a status
    /// update asking for a reply at once) is taken for dead.
    pub silence_max: Duration,
    /// A safekeeper stream silent this long makes the receiver look for a
    /// safekeeper that is further ahead.
    pub switch_after: Duration,
    /// How long a dial (and a primary's startup and handshake) may take.
    pub connect_timeout: Duration,
    /// The first pause after a lost session.
    pub backoff_min: Duration,
    /// The longest pause between attempts.
    pub backoff_max: Duration,
    /// When the primary asks for a reply while we hold all it sent, the
    /// open layer is flushed first (so the reply can say we hold it all,
    /// which a shutting-down walsender waits for), at most this often.
    pub reply_flush_interval_min: Duration,
    /// Give up (an error) after this long in all; `None`: never.
    pub deadline: Option<Duration>,
    /// Back-pressure: after a flush, hold ingest while the timeline has
    /// more L0 layers than this (compaction, running beside it, catches
    /// up); `None`: never hold.
    pub l0_max: Option<usize>,
    /// Back-pressure from object storage: after a flush, hold ingest while
    /// the disk-consistent LSN is more than this many bytes of WAL past the
    /// remote-consistent LSN (uploads, running beside it, catch up); only
    /// with object storage. `None`: never hold.
    pub upload_lag_max: Option<u64>,
}

/// Clears a flag however its scope ends (a task may be dropped mid-wait).
struct ClearOnDrop<'a>(&'a Cell<bool>);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Waits while `timeline` has more than `max` L0 layers (polled every
/// 100 ms; the wait is the back-pressure, so it has no limit).
async fn hold_while_in_debt(timeline: &Timeline, max: usize, held_now: &Cell<bool>) {
    let debt = || {
        timeline
            .layer_map()
            .layers()
            .iter()
            .filter(|l| quire_shard::compact::is_l0(l.name()))
            .count()
    };
    let _clear = ClearOnDrop(held_now);
    let mut held = false;
    while debt() > max {
        if !held {
            eprintln!(
                "wal receiver: {} L0 layers (at most {max}): ingest held until compaction catches up",
                debt()
            );
            held = true;
        }
        held_now.set(true);
        quire_io::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits while `timeline`'s disk-consistent LSN is more than `max` bytes
/// past what object storage holds (polled every 100 ms; no limit: while
/// the store is down, WAL waits upstream instead of layers piling up).
async fn hold_while_uploads_lag(timeline: &Timeline, max: u64, gauges: &ReceiverGauges) {
    let lag = || {
        gauges.remote_consistent.get().map_or(0, |remote| {
            timeline.disk_consistent_lsn().0.saturating_sub(remote.0)
        })
    };
    let _clear = ClearOnDrop(&gauges.held_by_uploads);
    let mut held = false;
    while lag() > max {
        if !held {
            eprintln!(
                "wal receiver: {} bytes of WAL are on disk but not in object storage (at most {max}): ingest held until uploads catch up",
                lag()
            );
            held = true;
        }
        gauges.held_by_uploads.set(true);
        quire_io::sleep(Duration::from_millis(100)).await;
    }
}

impl Default for FollowPolicy {
    fn default() -> Self {
        FollowPolicy {
            flush_bytes: 64 << 20,
            flush_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            silence_max: Duration::from_secs(10),
            switch_after: Duration::from_millis(500),
            connect_timeout: CONNECT_TIMEOUT,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            reply_flush_interval_min: Duration::from_secs(1),
            deadline: None,
            l0_max: None,
            upload_lag_max: None,
        }
    }
}

/// What following did.
#[derive(Clone, Debug, Default)]
pub struct ReceiveStats {
    /// Sessions started with a source (a switch or a reconnect counts once more).
    pub connections: u64,
    /// WAL bytes received.
    pub bytes: u64,
    /// Times the durable LSN was reported upstream.
    pub persisted_reports: u64,
    /// Safekeeper status connections dialled (one per safekeeper unless one failed).
    pub status_dials: u64,
    /// Open layers frozen and flushed by the policy.
    pub flushes: u64,
    /// Sessions lost and started again.
    pub retries: u64,
    /// Replication slots created (a slot found existing is reused).
    pub slots_created: u64,
    /// Replication slots found existing and reused.
    pub slots_reused: u64,
}

/// What a running receiver shows while it runs (its core's own cells,
/// read by the status and metrics of the service).
#[derive(Debug, Default)]
pub struct ReceiverGauges {
    /// WAL bytes received, over every session.
    pub bytes: Cell<u64>,
    /// The source's end of WAL as it last said: a primary's flushed WAL
    /// end (each `XLogData` and keepalive), the safekeepers' commit LSN, or
    /// the end of what arrived when that is further.
    pub source_end: Cell<Lsn>,
    /// Sessions started with the source.
    pub connections: Cell<u64>,
    /// Whether ingest is held now by the L0 debt (back-pressure).
    pub held: Cell<bool>,
    /// When the timeline has object storage: the LSN its layers there
    /// hold through (the remote-consistent LSN), past which nothing is
    /// reported upstream as durable, so no WAL object storage lacks is
    /// removed. `None`: no object storage, the local disk is what counts.
    pub remote_consistent: Cell<Option<Lsn>>,
    /// Whether ingest is held now by uploads lagging (back-pressure).
    pub held_by_uploads: Cell<bool>,
}

impl ReceiverGauges {
    /// Notes that the source's WAL reaches at least `lsn`.
    pub(crate) fn saw_end(&self, lsn: Lsn) {
        if lsn > self.source_end.get() {
            self.source_end.set(lsn);
        }
    }

    /// Notes `bytes` more received.
    pub(crate) fn received(&self, bytes: usize) {
        self.bytes
            .set(self.bytes.get().saturating_add(bytes as u64));
    }
}

/// Where following ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Followed {
    /// The end of the last record ingested, rounded up to 8 (where the
    /// next one starts).
    pub end: Lsn,
    /// The start of the last record ingested, if any was.
    pub last_record: Option<Lsn>,
}

/// How a session with a source ended, when it did not fail for good.
pub(crate) enum SessionEnd {
    /// [`FollowEnd`] was reached.
    Reached,
    /// The session was lost; try again (after a backoff unless WAL flowed).
    Lost(String),
}

/// The receiver's state across sessions.
pub(crate) struct Progress {
    /// The end of the last record ingested: the next session starts here.
    pub(crate) resume: Lsn,
    pub(crate) last_record: Option<Lsn>,
    pub(crate) stats: ReceiveStats,
    /// Whether the current session has received WAL (resets the backoff).
    pub(crate) flowed: bool,
    /// Everything ingested through this LSN is on disk (set by our own
    /// flushes, which leave nothing in memory).
    flushed_through: Lsn,
    /// When the open layer was last flushed (or following began).
    last_flush: Instant,
    /// The durable LSN last reported upstream.
    pub(crate) reported: Lsn,
    /// What the service sees of this receiver.
    pub(crate) gauges: Rc<ReceiverGauges>,
}

impl Progress {
    fn new(start: Lsn, timeline: &Timeline, gauges: Rc<ReceiverGauges>) -> Progress {
        Progress {
            gauges,
            resume: start,
            last_record: None,
            stats: ReceiveStats::default(),
            flowed: false,
            flushed_through: Lsn(0),
            last_flush: Instant::now(),
            reported: timeline.disk_consistent_lsn(),
        }
    }

    /// Ingests every whole record the decoder holds; `true` when the
    /// record `end` names was among them. `from` names the source in errors.
    pub(crate) async fn ingest_decoded(
        &mut self,
        ingest: &mut WalIngest,
        decoder: &mut WalStreamDecoder,
        end: FollowEnd,
        from: &str,
    ) -> Result<bool> {
        loop {
            let record = match decoder.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(false),
                Err(e) => bail!("WAL from {from} does not decode: {e}"),
            };
            let start = record.start;
            self.resume = ingest
                .ingest_record(record.start, record.end, record.bytes)
                .await?;
            self.last_record = Some(start);
            if end == FollowEnd::Through(start) {
                return Ok(true);
            }
        }
    }

    /// Freezes and flushes the open layer when the policy says so (or
    /// `now` asks for it and it holds anything); whether it flushed.
    pub(crate) async fn maybe_flush(
        &mut self,
        ingest: &mut WalIngest,
        policy: &FollowPolicy,
        now: bool,
    ) -> Result<bool> {
        let bytes = ingest.timeline().open_layer_bytes();
        let due = bytes >= policy.flush_bytes
            || (bytes > 0 && self.last_flush.elapsed() >= policy.flush_interval)
            || (now && bytes > 0);
        if due {
            ingest.flush().await.context("flush the open layer")?;
            self.stats.flushes += 1;
            if let Some(max) = policy.l0_max {
                hold_while_in_debt(ingest.timeline(), max, &self.gauges.held).await;
            }
            if let Some(max) = policy.upload_lag_max {
                hold_while_uploads_lag(ingest.timeline(), max, &self.gauges).await;
            }
        }
        if due || bytes == 0 {
            self.last_flush = Instant::now();
        }
        if due {
            self.flushed_through = ingest.timeline().last_record_lsn();
        }
        Ok(due)
    }

    /// What may be reported upstream as held by our layers: WAL below it
    /// need never be sent again (with object storage: held by the layers
    /// uploaded there). Never past `received` (what the source
    /// sent: a position it has not written would confuse it).
    pub(crate) fn durable(&self, timeline: &Timeline, received: Lsn) -> Lsn {
        let local = timeline
            .disk_consistent_lsn()
            .max(self.flushed_through)
            .min(received);
        match self.gauges.remote_consistent.get() {
            Some(remote) => local.min(remote),
            None => local,
        }
    }
}

/// Follows `source` from `start` (a record boundary: the end of the last
/// record the timeline holds) into `ingest` until `end`, within `policy`.
pub async fn receive(
    ingest: &mut WalIngest,
    source: &WalSource,
    start: Lsn,
    end: FollowEnd,
    policy: &FollowPolicy,
) -> Result<(Followed, ReceiveStats)> {
    let gauges = Rc::new(ReceiverGauges::default());
    receive_shown(ingest, source, (start, end), policy, gauges).await
}

/// [`receive`], showing its progress in `gauges` as it goes.
pub async fn receive_shown(
    ingest: &mut WalIngest,
    source: &WalSource,
    (start, end): (Lsn, FollowEnd),
    policy: &FollowPolicy,
    gauges: Rc<ReceiverGauges>,
) -> Result<(Followed, ReceiveStats)> {
    if end == FollowEnd::SourceShutdown && matches!(source, WalSource::Safekeepers(_)) {
        bail!("the safekeepers never end their stream: follow them forever or to an LSN");
    }
    let began = Instant::now();
    let mut progress = Progress::new(start, ingest.timeline(), gauges);
    let mut sources = match source {
        WalSource::Safekeepers(s) => Session::Safekeepers(safekeepers::Follower::new(s)),
        WalSource::Primary(p) => Session::Primary(p),
    };
    let mut backoff = policy.backoff_min;
    loop {
        if let Some(deadline) = policy.deadline
            && began.elapsed() > deadline
        {
            bail!(
                "following {} did not reach its end in {deadline:?} (ingested to {})",
                source.describe(),
                progress.resume
            );
        }
        progress.flowed = false;
        let ended = match &mut sources {
            Session::Safekeepers(follower) => {
                follower.session(ingest, &mut progress, end, policy).await?
            }
            Session::Primary(p) => primary::session(ingest, p, &mut progress, end, policy).await?,
        };
        match ended {
            SessionEnd::Reached => {
                if let Session::Safekeepers(follower) = &sources {
                    progress.stats.status_dials = follower.links.dialled;
                }
                let followed = Followed {
                    end: progress.resume,
                    last_record: progress.last_record,
                };
                return Ok((followed, progress.stats));
            }
            SessionEnd::Lost(why) => {
                progress.stats.retries += 1;
                if progress.flowed {
                    backoff = policy.backoff_min;
                } else {
                    eprintln!(
                        "wal receiver: {}: {why}; again in {backoff:?}",
                        source.describe()
                    );
                    quire_io::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(policy.backoff_max);
                }
            }
        }
    }
}

enum Session<'a> {
    Safekeepers(safekeepers::Follower<'a>),
    Primary(&'a PrimarySource),
}

/// Ingests committed WAL from the safekeepers from `start` (a record
/// start) through the record that starts at `until`; returns the end of
/// that record (rounded up to 8) and what it took.
pub async fn follow(
    ingest: &mut WalIngest,
    source: &WalSource,
    start: Lsn,
    until: Lsn,
    deadline: Duration,
) -> Result<(Lsn, ReceiveStats)> {
    let policy = FollowPolicy {
        deadline: Some(deadline),
        ..FollowPolicy::default()
    };
    let (followed, stats) =
        receive(ingest, source, start, FollowEnd::Through(until), &policy).await?;
    Ok((followed.end, stats))
}

/// Follows `source` for as long as the returned task lives (drop it to
/// stop), from the end of the last record the timeline holds; it returns
/// only on a fatal error.
pub fn spawn_forever(
    mut ingest: WalIngest,
    source: WalSource,
    (start, policy): (Lsn, FollowPolicy),
    gauges: Rc<ReceiverGauges>,
) -> quire_io::Task<Result<ReceiveStats>> {
    quire_io::spawn_local(async move {
        let forever = (start, FollowEnd::Forever);
        let (_, stats) = receive_shown(&mut ingest, &source, forever, &policy, gauges).await?;
        Ok(stats)
    })
}
