//! The acceptor: one safekeeper's consensus state, as a pure state machine.
//!
//! It takes requests and returns what the host must do, in order: truncate
//! the WAL (durably), persist the control state (durably), write bytes
//! (buffered; an fsync later makes them durable), then send the reply. It
//! does no I/O, reads no clock and draws no random numbers, so the
//! simulation drives the very code the server runs.
//!
//! The rules (docs/safekeeper-protocol.md argues why they are safe):
//! - **Vote** for term T only if T is above every term seen; persist the
//!   term before answering; answer with the log's flush LSN and history.
//! - **Elected** (the winner of term T ≥ ours announces its history, which
//!   ends with `(T, start)`): cut the WAL where it stops agreeing with that
//!   history, persist the history, and from then on take WAL for T only.
//!   A log that ends below `start` is filled by **peer recovery**: bytes
//!   fetched from a peer whose log agrees with the history on that range.
//! - **Append** bytes only in the current term, after its history is ours,
//!   contiguous with what was written; acknowledge only flushed (fsynced)
//!   positions, tagged with the current term, so a proposer of an older
//!   term never counts an acceptor that has moved on.
//! - **Commit LSN**: the highest LSN a majority (this acceptor and its
//!   peers' reported flush positions in the same term) has flushed.
//! - **Damage** (a log found shorter after a restart than it was durably,
//!   [`Acceptor::note_damage`]): until the range is written back, no vote
//!   and no acknowledgement; the host fetches it from a peer whose log
//!   agrees ([`Acceptor::repair_write`]). A newer election's history
//!   shrinks the range to what lies below its term's start (all that can
//!   be committed), which recovery then fills.
//! - **Senders**: votes and announcements come only from a proposer, WAL
//!   from a proposer or from this acceptor's own recovery, flush reports
//!   only from a member of the timeline's set (`membership`) speaking for
//!   itself; anything else is refused and counted.

use quire_postgres::Lsn;

use crate::history::{Term, TermHistory};
use crate::membership::{Membership, NodeId, Sender};

/// The state that must survive a crash (the control file's contents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableState {
    /// The highest term this acceptor has voted in or accepted.
    pub term: Term,
    /// The history of the log it holds; its last term is the term whose
    /// WAL it takes (when equal to `term`).
    pub history: TermHistory,
    /// Where the timeline's WAL begins.
    pub wal_start: Lsn,
    /// The highest commit LSN known (advisory; recomputed from peers).
    pub commit_lsn: Lsn,
    /// WAL below this the pageserver has persisted: removable.
    pub removable_before: Lsn,
    /// The WAL below this was durable when the state was persisted (and
    /// is never cut without lowering it first): a log found to end below
    /// it after a restart, other than inside one last partial record, is
    /// damaged, not torn.
    pub flush_mark: Lsn,
    /// The timeline's safekeepers: majorities are counted over them.
    pub members: Membership,
}

impl DurableState {
    /// A new acceptor of a timeline whose WAL begins at `wal_start`, kept
    /// by `members`.
    pub fn new(wal_start: Lsn, members: Membership) -> DurableState {
        DurableState {
            term: 0,
            history: TermHistory::default(),
            wal_start,
            commit_lsn: wal_start,
            removable_before: wal_start,
            flush_mark: wal_start,
            members,
        }
    }
}

/// A request to an acceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A proposer asks for a vote in `term`.
    Vote {
        /// The proposed term.
        term: Term,
    },
    /// The winner of `term` announces the history it writes with (its
    /// last entry is `(term, start)`).
    Elected {
        /// The elected term.
        term: Term,
        /// The chosen log's history, then `(term, start)`.
        history: TermHistory,
    },
    /// WAL bytes at `begin` (`len` of them, passed beside the request), in
    /// `term`: from the compute of that term, or from a peer (recovery).
    Append {
        /// The sender's term.
        term: Term,
        /// The LSN of the first byte.
        begin: Lsn,
        /// How many bytes.
        len: u64,
    },
    /// A peer's flush LSN in its term (for the commit LSN).
    PeerFlush {
        /// Which peer (any stable id).
        peer: u32,
        /// Its term.
        term: Term,
        /// Its flush LSN.
        flush: Lsn,
    },
}

/// An acceptor's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The answer to a vote request.
    Vote {
        /// The acceptor's term after the request.
        term: Term,
        /// Whether the vote went to the requested term.
        granted: bool,
        /// Its log's flush LSN.
        flush: Lsn,
        /// Its log's history.
        history: TermHistory,
    },
    /// Flushed WAL, in `term` (after an election announcement, an append,
    /// or an fsync).
    Flushed {
        /// The acceptor's term (its history's last term).
        term: Term,
        /// Its flush LSN.
        flush: Lsn,
        /// The commit LSN it knows.
        commit: Lsn,
    },
    /// The request's term is not the acceptor's current one.
    Refused {
        /// The acceptor's term.
        term: Term,
        /// Why, for logs.
        why: &'static str,
    },
}

/// What the host does for one request, in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// Persist this state before the cut (its flush mark lowered to the
    /// cut, so a crash in between is not taken for damage).
    pub persist_before_cut: Option<DurableState>,
    /// Cut the WAL at this LSN, durably, before anything else.
    pub truncate: Option<Lsn>,
    /// Persist this state, durably, before replying.
    pub persist: Option<DurableState>,
    /// Write this many of the request's bytes, skipping `skip`, at `at`.
    pub write: Option<Write>,
    /// Send this back.
    pub reply: Option<Response>,
}

/// Bytes of an append to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// Where the first written byte goes.
    pub at: Lsn,
    /// Bytes of the request to skip (already written).
    pub skip: u64,
    /// Bytes to write.
    pub len: u64,
}

/// What an fsync covers: taken when it starts, given back when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushTicket {
    lsn: Lsn,
    epoch: u64,
}

impl FlushTicket {
    /// The written LSN the fsync makes durable.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }
}

/// One safekeeper's consensus state.
#[derive(Clone, Debug)]
pub struct Acceptor {
    durable: DurableState,
    /// Written WAL end (may not be durable yet).
    write: Lsn,
    /// Durable WAL end.
    flush: Lsn,
    /// Bumped by every truncation: an fsync that started before one covers
    /// nothing after it.
    epoch: u64,
    /// This acceptor's id in the member set.
    me: NodeId,
    /// Members' flush LSNs in our term: `(peer, flush)`, members only.
    peers: Vec<(NodeId, Lsn)>,
    /// Requests refused because of who sent them (not persisted).
    refused_senders: u64,
    /// The log was durable up to here but ends at `write` (damage found at
    /// a restart): see [`Acceptor::note_damage`].
    damaged_until: Option<Lsn>,
}

impl Acceptor {
    /// The acceptor `me` after a (re)start: its persisted state and the
    /// end of the WAL found on disk (everything there is durable by then).
    /// The host checks that `me` is one of `durable.members`.
    /// Whether the log is damaged (shorter than the state's flush mark in
    /// a way a torn tail cannot explain) is the host's to judge and tell
    /// ([`note_damage`](Self::note_damage)).
    pub fn restore(durable: DurableState, wal_end: Lsn, me: NodeId) -> Acceptor {
        let wal_end = wal_end.max(durable.wal_start);
        Acceptor {
            durable,
            write: wal_end,
            flush: wal_end,
            epoch: 0,
            me,
            peers: Vec::new(),
            refused_senders: 0,
            damaged_until: None,
        }
    }

    /// The host found WAL written up to `until` beyond the end of the log
    /// it could read (valid pages after a record that does not decode):
    /// the log is damaged, not torn. Until `[write, until)` is repaired
    /// (or a newer election's announcement replaces it) the acceptor
    /// neither votes nor acknowledges: a vote with the shorter log could
    /// elect a log without WAL this acceptor acknowledged. Returns the
    /// state to persist first (its flush mark raised to `until`, so a
    /// restart before the repair knows it too).
    pub fn note_damage(&mut self, until: Lsn) -> Option<DurableState> {
        if until <= self.write {
            return None;
        }
        let until = self.damaged_until.map_or(until, |known| known.max(until));
        self.damaged_until = Some(until);
        if self.durable.flush_mark >= until {
            return None;
        }
        self.durable.flush_mark = until;
        Some(self.durable.clone())
    }

    /// The damaged range `[log end, durable end)`, while there is one.
    pub fn damage(&self) -> Option<(Lsn, Lsn)> {
        self.damaged_until.map(|until| (self.write, until))
    }

    /// Repair bytes `[begin, begin + len)` fetched from a peer whose log
    /// agrees with this acceptor's history over them (the host checked
    /// that they decode): what to write, contiguous with the log and
    /// within the damaged range. `None` when there is nothing to repair.
    pub fn repair_write(&mut self, begin: Lsn, len: u64) -> Option<Write> {
        let until = self.damaged_until?;
        let end = begin.checked_add(len)?.min(until);
        if begin > self.write || end <= self.write {
            return None;
        }
        let write = Write {
            at: self.write,
            skip: self.write.0 - begin.0,
            len: end.0 - self.write.0,
        };
        self.write = end;
        Some(write)
    }

    /// Repaired bytes from `at` on failed their check: the host cuts the
    /// log back there (the damage, and the flush mark, stay). Returns the
    /// cut, or `None` when `at` is not inside what was written.
    pub fn abandon_repair_from(&mut self, at: Lsn) -> Option<Lsn> {
        self.damaged_until?;
        if at >= self.write || at < self.durable.wal_start {
            return None;
        }
        self.write = at;
        self.flush = self.flush.min(at);
        self.epoch += 1;
        Some(at)
    }

    /// The state with the flush mark raised to the durable end, when that
    /// moved (the host persists it now and then, cheaply: a restart that
    /// finds less is then known damaged).
    pub fn mark_flush(&mut self) -> Option<DurableState> {
        if self.damaged_until.is_some() || self.flush <= self.durable.flush_mark {
            return None;
        }
        self.durable.flush_mark = self.flush;
        Some(self.durable.clone())
    }

    /// The durable state to persist now: the mark follows the flush LSN
    /// (never below what a damaged log is owed).
    fn snapshot(&mut self) -> DurableState {
        if self.damaged_until.is_none() {
            self.durable.flush_mark = self.durable.flush_mark.max(self.flush);
        }
        self.durable.clone()
    }

    /// This acceptor's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The timeline's member set.
    pub fn members(&self) -> &Membership {
        &self.durable.members
    }

    /// Requests refused since the start because of who sent them.
    pub fn refused_senders(&self) -> u64 {
        self.refused_senders
    }

    /// The persisted state.
    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.durable.term
    }

    /// Durable WAL end.
    pub fn flush_lsn(&self) -> Lsn {
        self.flush
    }

    /// Written WAL end.
    pub fn write_lsn(&self) -> Lsn {
        self.write
    }

    /// The commit LSN known.
    pub fn commit_lsn(&self) -> Lsn {
        self.durable.commit_lsn
    }

    /// Whether this acceptor takes WAL in its current term: it has adopted
    /// that term's history.
    pub fn is_elected_member(&self) -> bool {
        self.durable.term > 0 && self.durable.history.last_term() == self.durable.term
    }

    /// The range this acceptor must fetch from a peer before the compute's
    /// WAL can follow: from its log end to the start of the current term.
    pub fn recovery_needed(&self) -> Option<(Lsn, Lsn)> {
        if !self.is_elected_member() {
            return None;
        }
        let start = self.durable.history.0.last()?.start;
        (self.write < start).then_some((self.write, start))
    }

    /// Whether this acceptor can give a peer the bytes `[from, to)` of a
    /// log with history `history`: it holds them durably and its own log
    /// agrees with that history over them.
    pub fn can_serve(&self, history: &TermHistory, from: Lsn, to: Lsn) -> bool {
        self.can_serve_kept(history, from, to, self.durable.removable_before)
    }

    /// [`can_serve`](Self::can_serve) for a host whose WAL store still
    /// holds everything from `kept_from` (WAL is removed in whole segments,
    /// so the bytes from the start of the segment holding the removal
    /// horizon are still there, and an election reads from that start).
    pub fn can_serve_kept(
        &self,
        history: &TermHistory,
        from: Lsn,
        to: Lsn,
        kept_from: Lsn,
    ) -> bool {
        from <= to
            && to <= self.flush
            && from >= self.durable.removable_before.min(kept_from)
            && self
                .durable
                .history
                .common_point(self.flush, history, self.durable.wal_start)
                >= to
    }

    /// How much of `[from, to)` of a log with `history` this acceptor can
    /// give (see [`can_serve_kept`](Self::can_serve_kept)): the end of the
    /// longest part from `from` it holds durably and agrees over, if any.
    pub fn servable_end(
        &self,
        history: &TermHistory,
        from: Lsn,
        to: Lsn,
        kept_from: Lsn,
    ) -> Option<Lsn> {
        if from > to || from < self.durable.removable_before.min(kept_from) {
            return None;
        }
        let agreed = self
            .durable
            .history
            .common_point(self.flush, history, self.durable.wal_start);
        let end = to.min(self.flush).min(agreed);
        (end > from).then_some(end)
    }

    /// Handles one request from `from`.
    pub fn handle(&mut self, from: Sender, request: &Request) -> Actions {
        if let Err(why) = self.authorize(from, request) {
            self.refused_senders += 1;
            return match request {
                // A flush report has no answer: a refused one is only counted.
                Request::PeerFlush { .. } => Actions::default(),
                _ => self.refused(why),
            };
        }
        match request {
            Request::Vote { term } => self.vote(*term),
            Request::Elected { term, history } => self.elected(*term, history),
            Request::Append { term, begin, len } => self.append(*term, *begin, *len),
            Request::PeerFlush { peer, term, flush } => {
                self.peer_flush(NodeId(*peer), *term, *flush);
                Actions::default()
            }
        }
    }

    /// An fsync starts: what it will make durable.
    pub fn begin_flush(&self) -> FlushTicket {
        FlushTicket {
            lsn: self.write,
            epoch: self.epoch,
        }
    }

    /// An fsync that started with `ticket` finished: acknowledge what it
    /// made durable (nothing if a truncation came in between).
    pub fn flushed(&mut self, ticket: FlushTicket) -> Option<Response> {
        if ticket.epoch != self.epoch || ticket.lsn <= self.flush {
            return None;
        }
        self.flush = ticket.lsn.min(self.write);
        if self.damaged_until.is_some_and(|until| self.flush >= until) {
            self.damaged_until = None;
        }
        self.recompute_commit();
        self.flushed_response()
    }

    /// Records that WAL below `lsn` is persisted by the pageserver; returns
    /// the state to persist when the horizon moved (the host persists it
    /// lazily, then removes whole segments below it).
    ///
    /// The horizon also stays below every member's flush LSN (as its peers
    /// last reported it in this term): a lagging peer may still need that
    /// WAL for recovery. Until every peer has reported, nothing moves.
    pub fn set_removable_before(&mut self, lsn: Lsn) -> Option<DurableState> {
        if self.peers.len() + 1 < self.durable.members.len() {
            return None;
        }
        let slowest_peer = self
            .peers
            .iter()
            .map(|&(_, f)| f)
            .min()
            .unwrap_or(self.flush);
        let bounded = lsn
            .min(self.durable.commit_lsn)
            .min(self.flush)
            .min(slowest_peer);
        if bounded <= self.durable.removable_before {
            return None;
        }
        self.durable.removable_before = bounded;
        Some(self.snapshot())
    }

    /// Whether `from` may send `request` (the senders rule above).
    fn authorize(&self, from: Sender, request: &Request) -> Result<(), &'static str> {
        match (request, from) {
            (Request::Vote { .. } | Request::Elected { .. }, Sender::Proposer)
            | (Request::Append { .. }, Sender::Proposer | Sender::Local) => Ok(()),
            (Request::Vote { .. } | Request::Elected { .. }, _) => {
                Err("only a compute control may run an election")
            }
            (Request::Append { .. }, Sender::Peer(_)) => Err("a peer may not write WAL here"),
            (Request::PeerFlush { peer, .. }, Sender::Peer(id)) => {
                if id.0 != *peer {
                    Err("a flush report for another safekeeper")
                } else if id == self.me || !self.durable.members.contains(id) {
                    Err("a flush report from a safekeeper that is not a peer of this timeline")
                } else {
                    Ok(())
                }
            }
            (Request::PeerFlush { .. }, _) => Err("a flush report not from a peer"),
        }
    }

    /// Replaces the member set (an explicit operation the host logs): the
    /// new set must hold this acceptor; flush reports start afresh. Returns
    /// the state to persist before anything else is handled.
    pub fn change_members(
        &mut self,
        members: Membership,
    ) -> Result<DurableState, crate::membership::MembershipError> {
        members.require(self.me)?;
        self.durable.members = members;
        self.peers.clear();
        Ok(self.snapshot())
    }

    fn refused(&self, why: &'static str) -> Actions {
        Actions {
            reply: Some(Response::Refused {
                term: self.durable.term,
                why,
            }),
            ..Actions::default()
        }
    }

    fn flushed_response(&self) -> Option<Response> {
        (self.is_elected_member() && self.damaged_until.is_none()).then_some(Response::Flushed {
            term: self.durable.term,
            flush: self.flush,
            commit: self.durable.commit_lsn,
        })
    }

    fn vote(&mut self, term: Term) -> Actions {
        if self.damaged_until.is_some() {
            return self
                .refused("the log is damaged and being repaired from peers: no vote until then");
        }
        if term <= self.durable.term {
            return Actions {
                reply: Some(Response::Vote {
                    term: self.durable.term,
                    granted: false,
                    flush: self.flush,
                    history: self.durable.history.clone(),
                }),
                ..Actions::default()
            };
        }
        self.durable.term = term;
        self.peers.clear();
        Actions {
            persist: Some(self.snapshot()),
            reply: Some(Response::Vote {
                term,
                granted: true,
                flush: self.flush,
                history: self.durable.history.clone(),
            }),
            ..Actions::default()
        }
    }

    fn elected(&mut self, term: Term, history: &TermHistory) -> Actions {
        if term < self.durable.term {
            return self.refused("election announcement of an older term");
        }
        if history.last_term() != term || history.validate().is_err() {
            return self.refused("election announcement with a malformed history");
        }
        if term == self.durable.term && self.durable.history == *history {
            // A repeated announcement: nothing changes.
            return Actions {
                reply: self.flushed_response(),
                ..Actions::default()
            };
        }
        if term == self.durable.term && self.is_elected_member() {
            return self.refused("a second history for one term");
        }
        let cut = self
            .durable
            .history
            .common_point(self.write, history, self.durable.wal_start);
        // A damaged log takes the winner's history. The winner's log holds
        // every committed byte below its term's start, so of the damaged
        // range only what lies below that start is still owed: this
        // acceptor may have acknowledged it, so it stays damaged (no vote)
        // until recovery fills it. What the disk holds past the log end
        // goes, so no restart takes it for damage again; the mark stays at
        // what is owed.
        let damaged = self.damaged_until.take();
        let start = history.0.last().map_or(cut, |entry| entry.start);
        let owed = damaged
            .map(|until| until.min(start))
            .filter(|&until| until > cut);
        let truncate = (cut < self.write || damaged.is_some()).then_some(cut);
        let mut persist_before_cut = None;
        if truncate.is_some() {
            self.write = cut;
            self.flush = self.flush.min(cut);
            self.epoch += 1;
            let mark = owed.unwrap_or(cut);
            if self.durable.flush_mark > mark {
                self.durable.flush_mark = mark;
                persist_before_cut = Some(self.durable.clone());
            }
        }
        self.damaged_until = owed;
        if term > self.durable.term {
            self.peers.clear();
        }
        self.durable.term = term;
        self.durable.history = history.clone();
        self.durable.commit_lsn = self.durable.commit_lsn.min(self.flush);
        self.recompute_commit();
        Actions {
            persist_before_cut,
            truncate,
            persist: Some(self.snapshot()),
            reply: self.flushed_response(),
            ..Actions::default()
        }
    }

    fn append(&mut self, term: Term, begin: Lsn, len: u64) -> Actions {
        if term != self.durable.term || !self.is_elected_member() {
            return self.refused("WAL of a term this acceptor is not in");
        }
        if begin > self.write {
            // A gap: the sender resends from our write position.
            return Actions {
                reply: self.flushed_response(),
                ..Actions::default()
            };
        }
        let Some(end) = begin.checked_add(len) else {
            return self.refused("WAL range past the end of the LSN space");
        };
        let write = (end > self.write).then(|| Write {
            at: self.write,
            skip: self.write.0 - begin.0,
            len: end.0 - self.write.0,
        });
        if write.is_some() {
            self.write = end;
        }
        Actions {
            write,
            reply: self.flushed_response(),
            ..Actions::default()
        }
    }

    /// A member's flush report (`authorize` checked the sender).
    fn peer_flush(&mut self, peer: NodeId, term: Term, flush: Lsn) {
        if term != self.durable.term || !self.is_elected_member() {
            return;
        }
        if let Some(entry) = self.peers.iter_mut().find(|(p, _)| *p == peer) {
            entry.1 = entry.1.max(flush);
        } else {
            // Bounded by the member set: only members get here.
            self.peers.push((peer, flush));
        }
        self.recompute_commit();
    }

    /// Commit LSN: the highest flush a majority reached in this term (our
    /// own flush counts once). It may end inside a record; what is
    /// committed is the whole records below it (Postgres commits at
    /// records' ends), and only a partial record above those can be cut by
    /// a later election.
    fn recompute_commit(&mut self) {
        if !self.is_elected_member() {
            return;
        }
        let mut flushes: Vec<Lsn> = self.peers.iter().map(|&(_, f)| f).collect();
        flushes.push(self.flush);
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        let majority = self.durable.members.quorum();
        if let Some(&quorum) = flushes.get(majority - 1) {
            // Only WAL of this term's log counts, and only what we hold.
            let bounded = quorum.min(self.flush);
            if bounded > self.durable.commit_lsn {
                self.durable.commit_lsn = bounded;
            }
        }
    }
}

#[cfg(test)]
mod tests;
