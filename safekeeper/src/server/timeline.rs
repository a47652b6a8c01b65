//! One timeline on a safekeeper: the acceptor state machine, its control
//! file and its WAL segments, with the I/O the acceptor asks for done in
//! its order (cut, persist, write; replies after).
//!
//! Everything runs on the safekeeper's executor thread; the state sits
//! behind an async mutex so a request's I/O finishes before the next
//! request sees the state. The control file and the compute file are
//! replaced on the file-sync helper thread (`blocking`), awaited with the
//! mutex held, so their fsyncs never block the executor and still come
//! before the reply. An I/O failure stops the timeline (every later
//! request gets an error): the acceptor's memory may be ahead of its disk
//! then, and only a restart from disk is trustworthy.
//!
//! Damage found at open (a log shorter than it was durably: see
//! `wal_store` and `Acceptor::note_damage`) is logged and its range
//! persisted as the control file's flush mark; [`Timeline::repair`] takes
//! the range back from a peer's bytes, checking that they decode as WAL
//! records before it writes them. The flush mark follows the flush LSN at
//! every control-file write and trails it by at most about
//! [`MARK_INTERVAL`] otherwise ([`Timeline::mark_if_due`]).
//!
//! Whenever the flush or commit LSN moves, the term's compute changes or
//! the timeline stops, its [`Changes`] signal wakes whoever waits on it
//! (WAL streams, the term driver).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::lock::Mutex;
use quire_postgres::Lsn;

use crate::acceptor::{Acceptor, DurableState, Request, Response};
use crate::control_file::ControlFile;
use crate::history::{Term, TermHistory};
use crate::membership::{Membership, NodeId, Sender};
use crate::server::blocking;
use crate::server::notify::{Changed, Changes};
use crate::wal_store::WalStore;
use crate::wire::{StorageHealth, TimelineKey};
use quire_postgres::wal::stream::WalStreamDecoder;

/// The longest the flush mark lags the flush LSN while WAL flows.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);

/// The file naming the current term's compute: `<term> <host:port>`.
const COMPUTE_FILE: &str = "compute";

/// A timeline's state and files.
pub struct Timeline {
    /// Which timeline.
    pub key: TimelineKey,
    /// This safekeeper's id among its members.
    me: NodeId,
    dir: PathBuf,
    /// The Postgres cluster.
    pub system_id: u64,
    /// WAL segment size.
    pub segment_size: u32,
    state: Mutex<State>,
    broken: RefCell<Option<String>>,
    /// The compute of the current term: `(term, host:port)`.
    compute: RefCell<Option<(Term, String)>>,
    /// Signalled whenever the flush or commit LSN moves, the compute
    /// changes or the timeline stops.
    changes: Changes,
    /// Repairs since the start (the damaged range is the acceptor's).
    health: Cell<StorageHealth>,
    /// When the flush mark was last persisted.
    marked_at: Cell<Instant>,
}

/// What the mutex guards.
pub struct State {
    /// The consensus state.
    pub acceptor: Acceptor,
    /// The WAL.
    pub wal: WalStore,
    /// The check of repair bytes under way: a decoder fed from the
    /// damaged range's start (a record start) up to the log end.
    repair_check: Option<RepairCheck>,
}

/// The decoder that checks repair bytes, fed from the damaged range's
/// start (a record start).
struct RepairCheck {
    /// Where the next byte fed goes (the log end it checked to).
    fed: Lsn,
    /// The end of the last whole record that decoded (where a failed
    /// check cuts back to).
    whole_end: Lsn,
    decoder: WalStreamDecoder,
}

/// What a fetched repair chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum RepairStep {
    /// No damage is left.
    Done,
    /// Written; more of the range is missing.
    More,
    /// The bytes failed their check (or came for another position) and
    /// were not kept: ask another peer.
    Refused(String),
}

/// A timeline that cannot serve.
#[derive(Debug, thiserror::Error)]
#[error("timeline {key}: {what}")]
pub struct TimelineError {
    /// Which timeline (hex).
    pub key: String,
    /// Why.
    pub what: String,
}

/// Hex of the timeline's ids, `tenant/timeline`.
pub fn key_name(key: &TimelineKey) -> String {
    key.to_string()
}

impl Timeline {
    /// The directory of a timeline under the safekeeper's data directory.
    pub fn dir_of(data: &Path, key: &TimelineKey) -> PathBuf {
        data.join(key_name(key))
    }

    /// Creates a timeline whose WAL begins at `wal_start`, kept by
    /// `members`, on safekeeper `me` (one of them).
    pub async fn create(
        data: &Path,
        me: NodeId,
        key: TimelineKey,
        wal_start: Lsn,
        segment_size: u32,
        system_id: u64,
        members: Membership,
    ) -> Result<Timeline, TimelineError> {
        let dir = Timeline::dir_of(data, &key);
        let error = |what: String| TimelineError {
            key: key_name(&key),
            what,
        };
        let file = ControlFile {
            tenant: key.tenant,
            timeline: key.timeline,
            system_id,
            segment_size,
            state: DurableState::new(wal_start, members),
        };
        let at = dir.clone();
        blocking::run(move || {
            std::fs::create_dir_all(&at).map_err(|e| format!("create {}: {e}", at.display()))?;
            file.store(&at).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| error(e.to_string()))?
        .map_err(error)?;
        Timeline::open(data, me, key).await
    }

    /// Opens a timeline of safekeeper `me` from its control file and WAL.
    pub async fn open(
        data: &Path,
        me: NodeId,
        key: TimelineKey,
    ) -> Result<Timeline, TimelineError> {
        let dir = Timeline::dir_of(data, &key);
        let error = |what: String| TimelineError {
            key: key_name(&key),
            what,
        };
        let loaded = ControlFile::load(&dir)
            .map_err(|e| error(e.to_string()))?
            .ok_or_else(|| error(format!("no control file in {}", dir.display())))?;
        let mut health = StorageHealth::default();
        if let Some((copy, why)) = &loaded.repaired {
            eprintln!(
                "safekeeper: timeline {}: control-file copy {copy} was {why}: rewritten from the other copy",
                key_name(&key)
            );
            health.control_repairs += 1;
        }
        let file = loaded.file;
        if file.tenant != key.tenant || file.timeline != key.timeline {
            return Err(error("the control file belongs to another timeline".into()));
        }
        let mut wal = WalStore::open(&dir, file.state.wal_start, file.segment_size, 1)
            .await
            .map_err(|e| error(e.to_string()))?;
        if !file.state.members.contains(me) {
            return Err(error(format!(
                "safekeeper {me} is not one of the timeline's members ({})",
                file.state.members
            )));
        }
        let mark = file.state.flush_mark;
        let below_mark = wal
            .damaged_below(mark)
            .await
            .map_err(|e| error(e.to_string()))?;
        let mut acceptor = Acceptor::restore(file.state, wal.flush_lsn(), me);
        if let Some(until) = wal.written_after_end().max(below_mark)
            && let Some(durable) = acceptor.note_damage(until)
        {
            store_control_in(&dir, &key, file.system_id, file.segment_size, durable)
                .await
                .map_err(error)?;
        }
        if let Some((from, until)) = acceptor.damage() {
            let evidence = match wal.written_after_end() {
                Some(written) => format!(
                    "the record at {from} does not decode, yet records after it do, up to {written}"
                ),
                None => format!(
                    "the WAL ends there, and the control file says it was durable up to {mark}"
                ),
            };
            eprintln!(
                "safekeeper: timeline {}: WAL damaged from {from} to {until}: {evidence}; no votes and no acknowledgements until the range is repaired from a peer",
                key_name(&key)
            );
            health.damaged_from = from;
            health.damaged_until = until;
        }
        // The compute of the current term, if one was announced.
        let compute = std::fs::read_to_string(dir.join(COMPUTE_FILE))
            .ok()
            .and_then(|text| {
                let (term, address) = text.trim_end().split_once(' ')?;
                Some((term.parse::<Term>().ok()?, address.to_owned()))
            })
            .filter(|(term, _)| *term == acceptor.term() && acceptor.is_elected_member());
        Ok(Timeline {
            key,
            me,
            dir,
            system_id: file.system_id,
            segment_size: file.segment_size,
            state: Mutex::new(State {
                acceptor,
                wal,
                repair_check: None,
            }),
            broken: RefCell::new(None),
            compute: RefCell::new(compute),
            changes: Changes::new(),
            health: Cell::new(health),
            marked_at: Cell::new(Instant::now()),
        })
    }

    fn error(&self, what: impl Into<String>) -> TimelineError {
        TimelineError {
            key: key_name(&self.key),
            what: what.into(),
        }
    }

    fn check(&self) -> Result<(), TimelineError> {
        match &*self.broken.borrow() {
            Some(why) => Err(self.error(format!("stopped after an I/O error: {why}"))),
            None => Ok(()),
        }
    }

    fn stop(&self, why: String) -> TimelineError {
        eprintln!("safekeeper: timeline {} stops: {why}", key_name(&self.key));
        *self.broken.borrow_mut() = Some(why.clone());
        self.changes.notify();
        self.error(why)
    }

    /// Replaces the control file with `durable` (on the file-sync helper
    /// thread, awaited); a failure stops the timeline.
    async fn store_control(&self, durable: DurableState) -> Result<(), TimelineError> {
        store_control_in(
            &self.dir,
            &self.key,
            self.system_id,
            self.segment_size,
            durable,
        )
        .await
        .map_err(|e| self.stop(e))
    }

    /// Signals a change when the flush or commit LSN differs from `before`.
    fn note_progress(&self, state: &State, before: (Lsn, Lsn)) {
        if positions(state) != before {
            self.changes.notify();
        }
    }

    /// Locks the state (for reads such as status and fetches).
    pub async fn lock(&self) -> Result<futures::lock::MutexGuard<'_, State>, TimelineError> {
        self.check()?;
        Ok(self.state.lock().await)
    }

    /// Runs a request from `from` through the acceptor, doing its I/O;
    /// `bytes` are an append's.
    pub async fn handle(
        &self,
        from: Sender,
        request: &Request,
        bytes: &[u8],
    ) -> Result<Option<Response>, TimelineError> {
        let mut state = self.lock().await?;
        let before = positions(&state);
        let actions = state.acceptor.handle(from, request);
        if let Some(durable) = actions.persist_before_cut {
            self.store_control(durable).await?;
        }
        if let Some(cut) = actions.truncate {
            state
                .wal
                .truncate(cut)
                .await
                .map_err(|e| self.stop(format!("cut at {cut}: {e}")))?;
        }
        if let Some(durable) = actions.persist {
            self.store_control(durable).await?;
        }
        if let Some(write) = actions.write {
            let skip = usize::try_from(write.skip).unwrap_or(usize::MAX);
            let len = usize::try_from(write.len).unwrap_or(usize::MAX);
            let part = bytes
                .get(skip..skip.saturating_add(len))
                .ok_or_else(|| self.error("an append shorter than it says"))?;
            state
                .wal
                .append(write.at, part)
                .map_err(|e| self.stop(e.to_string()))?;
        }
        self.note_progress(&state, before);
        Ok(actions.reply)
    }

    /// Group commit: makes everything appended so far durable and returns
    /// the acknowledgement (none when nothing was pending or a cut came in
    /// between).
    pub async fn flush(&self) -> Result<Option<Response>, TimelineError> {
        let mut state = self.lock().await?;
        if state.acceptor.write_lsn() <= state.acceptor.flush_lsn() {
            return Ok(None);
        }
        let before = positions(&state);
        let ticket = state.acceptor.begin_flush();
        let flushed = state
            .wal
            .flush()
            .await
            .map_err(|e| self.stop(format!("flush: {e}")))?;
        if flushed != ticket.lsn() {
            return Err(self.stop(format!(
                "the WAL flushed to {flushed}, the acceptor wrote to {}",
                ticket.lsn()
            )));
        }
        let reply = state.acceptor.flushed(ticket);
        self.note_progress(&state, before);
        Ok(reply)
    }

    /// Persists the flush mark at the flush LSN when it moved and the last
    /// mark is [`MARK_INTERVAL`] old (called every gossip round, so the
    /// mark trails the flush LSN by about that much, after a burst too).
    /// Under the state lock, so it never lands after a later cut's state.
    pub async fn mark_if_due(&self) -> Result<(), TimelineError> {
        if self.marked_at.get().elapsed() < MARK_INTERVAL {
            return Ok(());
        }
        let mut state = self.lock().await?;
        if let Some(durable) = state.acceptor.mark_flush() {
            self.store_control(durable).await?;
        }
        self.marked_at.set(Instant::now());
        Ok(())
    }

    /// Takes `bytes` at `begin`, fetched from `peer` (whose log agrees with
    /// ours over them), into the damaged range: only what decodes as WAL
    /// records, continuing from the range's start, is written and flushed.
    pub async fn repair(
        &self,
        begin: Lsn,
        bytes: &[u8],
        peer: &str,
    ) -> Result<RepairStep, TimelineError> {
        let mut guard = self.lock().await?;
        let state = &mut *guard;
        let before = positions(state);
        let Some((from, until)) = state.acceptor.damage() else {
            return Ok(RepairStep::Done);
        };
        if begin != from {
            return Ok(RepairStep::Refused(format!(
                "bytes at {begin}, the damaged range starts at {from}"
            )));
        }
        if state
            .repair_check
            .as_ref()
            .is_some_and(|check| check.fed != from)
        {
            state.repair_check = None;
        }
        // The range's start is a record's (the end of the last whole one).
        let segment_size = self.segment_size;
        let check = state.repair_check.get_or_insert_with(|| RepairCheck {
            fed: from,
            whole_end: from,
            decoder: WalStreamDecoder::new(from, segment_size),
        });
        check.decoder.feed(bytes);
        let failure = loop {
            match check.decoder.next_record() {
                Ok(Some(record)) => {
                    check.whole_end = record.end.align_up(8).unwrap_or(record.end);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        // On a failure, back to the last whole record: bytes of the bad
        // one taken with an earlier chunk go too.
        let keep_to = match &failure {
            None => begin.checked_add(bytes.len() as u64).unwrap_or(begin),
            Some(_) => check.whole_end.max(state.acceptor.durable().wal_start),
        };
        check.fed = keep_to;
        if failure.is_some() {
            state.repair_check = None;
        }
        let written = self.apply_repair(state, begin, keep_to, bytes).await?;
        let mut health = self.health.get();
        health.wal_repaired_bytes += written;
        let step = match (failure, state.acceptor.damage()) {
            (Some(e), _) => {
                health.wal_repair_refusals += 1;
                RepairStep::Refused(format!("the bytes from {peer} do not decode at {e}"))
            }
            (None, None) => {
                health.wal_repairs += 1;
                eprintln!(
                    "safekeeper: timeline {}: WAL from {} to {until} repaired from {peer} (its records decode); votes and acknowledgements resume",
                    key_name(&self.key),
                    Lsn(health.damaged_from.0)
                );
                state.repair_check = None;
                RepairStep::Done
            }
            (None, Some(_)) => RepairStep::More,
        };
        (health.damaged_from, health.damaged_until) =
            state.acceptor.damage().unwrap_or((Lsn(0), Lsn(0)));
        self.health.set(health);
        self.note_progress(state, before);
        Ok(step)
    }

    /// Writes and flushes the checked repair bytes `[begin, keep_to)`, or,
    /// when the check failed in a record begun before `begin`, cuts the log
    /// back to `keep_to`; returns the bytes written.
    async fn apply_repair(
        &self,
        state: &mut State,
        begin: Lsn,
        keep_to: Lsn,
        bytes: &[u8],
    ) -> Result<u64, TimelineError> {
        if keep_to > begin
            && let Some(write) = state.acceptor.repair_write(begin, keep_to.0 - begin.0)
        {
            let skip = usize::try_from(write.skip).unwrap_or(usize::MAX);
            let len = usize::try_from(write.len).unwrap_or(usize::MAX);
            let part = bytes
                .get(skip..skip.saturating_add(len))
                .ok_or_else(|| self.error("a repair write outside the fetched bytes"))?;
            state
                .wal
                .append(write.at, part)
                .map_err(|e| self.stop(e.to_string()))?;
            let ticket = state.acceptor.begin_flush();
            state
                .wal
                .flush()
                .await
                .map_err(|e| self.stop(format!("flush a repair: {e}")))?;
            state.acceptor.flushed(ticket);
            return Ok(write.len);
        }
        if keep_to < begin
            && let Some(cut) = state.acceptor.abandon_repair_from(keep_to)
        {
            // The bad record began in bytes taken earlier: they go too.
            state
                .wal
                .truncate(cut)
                .await
                .map_err(|e| self.stop(format!("cut a failed repair at {cut}: {e}")))?;
        }
        Ok(0)
    }

    /// Damage and repairs since the start.
    pub async fn health(&self) -> StorageHealth {
        let mut health = self.health.get();
        let damage = match self.lock().await {
            Ok(state) => state.acceptor.damage(),
            Err(_) => None,
        };
        (health.damaged_from, health.damaged_until) = damage.unwrap_or((Lsn(0), Lsn(0)));
        health
    }

    /// The pageserver persisted WAL below `lsn`: move the removal horizon
    /// (bounded by the acceptor) and remove whole segments below it.
    pub async fn remove_persisted(&self, lsn: Lsn) -> Result<(), TimelineError> {
        let mut state = self.lock().await?;
        let Some(durable) = state.acceptor.set_removable_before(lsn) else {
            return Ok(());
        };
        let horizon = durable.removable_before;
        self.store_control(durable).await?;
        state
            .wal
            .remove_segments_before(horizon)
            .await
            .map_err(|e| self.stop(format!("remove WAL below {horizon}: {e}")))?;
        Ok(())
    }

    /// The version of the change signal now; see [`changed`](Self::changed).
    pub fn progress(&self) -> u64 {
        self.changes.version()
    }

    /// Completes once something moved after version `seen` of
    /// [`progress`](Self::progress): the flush or commit LSN, the term's
    /// compute, or the timeline stopped.
    pub fn changed(&self, seen: u64) -> Changed<'_> {
        self.changes.changed(seen)
    }

    /// Records the compute of `term` (durably, on the file-sync helper
    /// thread: a restarted safekeeper streams from it again without a new
    /// announcement). The state stays locked meanwhile, so announcements
    /// of two terms cannot record their computes out of order; a term that
    /// is no longer the acceptor's records nothing.
    pub async fn set_compute(&self, term: Term, compute: String) -> Result<(), TimelineError> {
        let state = self.lock().await?;
        if state.acceptor.term() != term {
            return Ok(());
        }
        let dir = self.dir.clone();
        let line = format!("{term} {compute}\n");
        let written = blocking::run(move || {
            let tmp = dir.join(format!("{COMPUTE_FILE}.tmp"));
            std::fs::File::create(&tmp)
                .and_then(|mut file| {
                    std::io::Write::write_all(&mut file, line.as_bytes())?;
                    file.sync_all()
                })
                .and_then(|()| std::fs::rename(&tmp, dir.join(COMPUTE_FILE)))
                .and_then(|()| std::fs::File::open(&dir)?.sync_all())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|written| written);
        written.map_err(|e| self.error(format!("record the compute: {e}")))?;
        *self.compute.borrow_mut() = Some((term, compute));
        drop(state);
        self.changes.notify();
        Ok(())
    }

    /// The compute of the current term, if announced.
    pub fn compute(&self) -> Option<(Term, String)> {
        self.compute.borrow().clone()
    }

    /// This safekeeper's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The timeline's other members (none when the timeline has stopped).
    pub async fn peers(&self) -> Vec<crate::membership::Member> {
        match self.lock().await {
            Ok(state) => state
                .acceptor
                .members()
                .peers_of(self.me)
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether safekeeper `id` is one of the timeline's members (false when
    /// the timeline has stopped).
    pub async fn is_member(&self, id: NodeId) -> bool {
        match self.lock().await {
            Ok(state) => state.acceptor.members().contains(id),
            Err(_) => false,
        }
    }

    /// `(term, flush, commit, history)` for status answers.
    pub async fn status(&self) -> Result<(Term, Lsn, Lsn, TermHistory), TimelineError> {
        let state = self.lock().await?;
        let a = &state.acceptor;
        Ok((
            a.term(),
            a.flush_lsn(),
            a.commit_lsn(),
            a.durable().history.clone(),
        ))
    }
}

/// Replaces the control file in `dir` with `durable` (on the file-sync
/// helper thread, awaited).
async fn store_control_in(
    dir: &Path,
    key: &TimelineKey,
    system_id: u64,
    segment_size: u32,
    durable: DurableState,
) -> Result<(), String> {
    let file = ControlFile {
        tenant: key.tenant,
        timeline: key.timeline,
        system_id,
        segment_size,
        state: durable,
    };
    let dir = dir.to_owned();
    match blocking::run(move || file.store(&dir)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("control file: {e}")),
        Err(e) => Err(format!("control file: {e}")),
    }
}

/// `(flush, commit)`: what a change signal is about.
fn positions(state: &State) -> (Lsn, Lsn) {
    (state.acceptor.flush_lsn(), state.acceptor.commit_lsn())
}
