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
//! Whenever the flush or commit LSN moves, the term's compute changes or
//! the timeline stops, its [`Changes`] signal wakes whoever waits on it
//! (WAL streams, the term driver).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use futures::lock::Mutex;
use quire_postgres::Lsn;

use crate::acceptor::{Acceptor, DurableState, Request, Response};
use crate::control_file::ControlFile;
use crate::history::{Term, TermHistory};
use crate::membership::{Membership, NodeId, Sender};
use crate::server::blocking;
use crate::server::notify::{Changed, Changes};
use crate::wal_store::WalStore;
use crate::wire::TimelineKey;

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
}

/// What the mutex guards.
pub struct State {
    /// The consensus state.
    pub acceptor: Acceptor,
    /// The WAL.
    pub wal: WalStore,
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
        let file = ControlFile::load(&dir)
            .map_err(|e| error(e.to_string()))?
            .ok_or_else(|| error(format!("no control file in {}", dir.display())))?;
        if file.tenant != key.tenant || file.timeline != key.timeline {
            return Err(error("the control file belongs to another timeline".into()));
        }
        let wal = WalStore::open(&dir, file.state.wal_start, file.segment_size, 1)
            .await
            .map_err(|e| error(e.to_string()))?;
        if !file.state.members.contains(me) {
            return Err(error(format!(
                "safekeeper {me} is not one of the timeline's members ({})",
                file.state.members
            )));
        }
        let acceptor = Acceptor::restore(file.state, wal.flush_lsn(), me);
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
            state: Mutex::new(State { acceptor, wal }),
            broken: RefCell::new(None),
            compute: RefCell::new(compute),
            changes: Changes::new(),
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
        let file = ControlFile {
            tenant: self.key.tenant,
            timeline: self.key.timeline,
            system_id: self.system_id,
            segment_size: self.segment_size,
            state: durable,
        };
        let dir = self.dir.clone();
        match blocking::run(move || file.store(&dir)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.stop(format!("control file: {e}"))),
            Err(e) => Err(self.stop(format!("control file: {e}"))),
        }
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

/// `(flush, commit)`: what a change signal is about.
fn positions(state: &State) -> (Lsn, Lsn) {
    (state.acceptor.flush_lsn(), state.acceptor.commit_lsn())
}
