//! One simulated cluster: three acceptors (the real `Acceptor` state
//! machine and control-file codec over a simulated disk), proposers (the
//! real `Election` and `QuorumCommit`) playing computes that write WAL, and
//! a network that drops, delays, reorders and partitions messages. Nodes
//! crash (losing unflushed WAL, or part of it) and restart from what their
//! disk kept; a crash in the middle of a control-file replacement leaves
//! the old file (or only the first of its two copies new). One node's disk
//! is faulty: bit flips, lost and misdirected writes (`storage.rs`). A rogue node outside the member set forges every message
//! kind (`rogue.rs`); every forgery must be refused. Everything is driven by
//! one seeded generator and an event queue, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use quire_postgres::Lsn;
use quire_safekeeper::acceptor::{Acceptor, Actions, DurableState, FlushTicket, Request, Response};
use quire_safekeeper::election::{Election, QuorumCommit, Won};
use quire_safekeeper::history::{Term, TermHistory};
use quire_safekeeper::membership::{Member, Membership, NodeId, Sender};

mod proposers;
mod storage;

use crate::checker::Checker;
use crate::rng::Rng;
use crate::rogue::{self, Forgery, ROGUE, ROGUE_ID};

pub const ACCEPTORS: usize = 3;
const WAL_START: u64 = 0x0100_0028;
/// Ticks of the faulty phase; a calm phase follows.
const FAULTY_UNTIL: u64 = 1500;
const END: u64 = FAULTY_UNTIL + 900;
const CHUNK: u64 = 200;
/// WAL is written as records of this many bytes; a restarted safekeeper
/// keeps its WAL up to the end of the last whole record (it finds its end
/// by decoding), and Postgres counts a commit at a record's end.
const RECORD: usize = 16;

/// The end of the last whole record within the first `limit` bytes.
fn whole_records(limit: usize) -> usize {
    limit - limit % RECORD
}
const FIRST_PROPOSER: usize = 100;

/// The timeline's member set: safekeepers 1 to 3 (node `n` is id `n + 1`).
fn members() -> Membership {
    Membership::new(
        (1..=ACCEPTORS as u32)
            .map(|id| Member {
                id: NodeId(id),
                address: format!("sk{id}:5454"),
            })
            .collect(),
    )
    .expect("a valid member set")
}

/// The safekeeper id of node `node` as the network authenticates it.
fn node_id(node: usize) -> NodeId {
    if node == ROGUE {
        NodeId(ROGUE_ID)
    } else {
        NodeId(node as u32 + 1)
    }
}

/// What happened, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub messages: u64,
    pub dropped: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub torn_control_writes: u64,
    pub truncations: u64,
    pub recovered_bytes: u64,
    pub elections: u64,
    pub proposer_deaths: u64,
    pub fenced_proposers: u64,
    pub commits: u64,
    pub forgeries: u64,
    pub torn_wal_writes: u64,
    pub wal_bit_flips: u64,
    pub lost_writes: u64,
    pub misdirected_writes: u64,
    pub control_flips: u64,
    pub control_repairs: u64,
    pub damage_found: u64,
    pub repaired_bytes: u64,
    pub repair_refusals: u64,
}

enum Payload {
    /// A request, with an append's bytes.
    Request(Request, Vec<u8>),
    /// A response; a granted vote carries the voter's log up to its flush
    /// LSN (for the checker only: the protocol never sends it).
    Response(Response, Vec<u8>),
    /// Peer recovery: send me `[from, to)` of a log with `history`.
    Fetch {
        term: Term,
        history: TermHistory,
        from: Lsn,
        to: Lsn,
    },
}

struct Message {
    from: usize,
    to: usize,
    payload: Payload,
}

enum Event {
    Deliver(Message),
    AcceptorTick(usize),
    FsyncDone { node: usize, incarnation: u64 },
    Restart(usize),
    ProposerTick(usize),
    NewProposer,
    FinalProposer,
    Partition,
    Heal(usize),
    RogueTick,
}

struct Node {
    acceptor: Option<Acceptor>,
    incarnation: u64,
    /// The control file's two copies on disk (`control`, `control.copy`).
    control: [Option<Vec<u8>>; 2],
    /// Flushes completed (the flush mark is persisted every few).
    flushes: u64,
    /// WAL bytes on disk from `WAL_START`; the first `durable` survive a
    /// crash for certain, the rest in part.
    wal: Vec<u8>,
    durable: usize,
    /// An fsync in flight: its ticket and how much of `wal` it covers.
    fsync: Option<(FlushTicket, usize)>,
    /// The proposer this node takes WAL from.
    leader: Option<usize>,
    next_peer: usize,
    commit_seen: Lsn,
}

enum Phase {
    Electing {
        election: Election,
        logs: Vec<(NodeId, Vec<u8>)>,
        deadline: u64,
    },
    Running {
        won: Won,
        log: Vec<u8>,
        quorum: QuorumCommit,
        announced: [bool; ACCEPTORS],
        committed: usize,
    },
}

struct Proposer {
    alive: bool,
    phase: Phase,
}

pub struct World {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    nodes: Vec<Node>,
    proposers: Vec<Proposer>,
    isolated: Vec<usize>,
    highest_term: Term,
    checker: Checker,
    calm: bool,
    /// The node whose disk is faulty.
    faulty_node: usize,
    pub counts: Counts,
    pub trace: bool,
}

fn offset(lsn: Lsn) -> usize {
    usize::try_from(lsn.0.saturating_sub(WAL_START)).unwrap_or(usize::MAX)
}

fn lsn_of(offset: usize) -> Lsn {
    Lsn(WAL_START + offset as u64)
}

/// A forged request must have been refused, and done nothing.
fn forgery_refused(
    node: usize,
    request: &Request,
    actions: &Actions,
    acceptor: &Acceptor,
    refused_before: u64,
) -> Result<(), String> {
    let refused = acceptor.refused_senders() == refused_before + 1
        && actions.truncate.is_none()
        && actions.persist.is_none()
        && actions.write.is_none();
    if refused {
        Ok(())
    } else {
        Err(format!(
            "acceptor {node} took a forged {request:?}: {actions:?}"
        ))
    }
}

impl World {
    pub fn new(seed: u64) -> World {
        let nodes = (0..ACCEPTORS)
            .map(|node| Node {
                acceptor: Some(Acceptor::restore(
                    DurableState::new(Lsn(WAL_START), members()),
                    Lsn(WAL_START),
                    node_id(node),
                )),
                incarnation: 0,
                control: [None, None],
                flushes: 0,
                wal: Vec::new(),
                durable: 0,
                fsync: None,
                leader: None,
                next_peer: 0,
                commit_seen: Lsn(WAL_START),
            })
            .collect();
        let mut rng = Rng::new(seed);
        let faulty_node = rng.range(0, ACCEPTORS as u64 - 1) as usize;
        let mut world = World {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes,
            proposers: Vec::new(),
            isolated: Vec::new(),
            highest_term: 0,
            checker: Checker::default(),
            calm: false,
            faulty_node,
            counts: Counts::default(),
            trace: false,
        };
        for node in 0..ACCEPTORS {
            world.schedule(1, Event::AcceptorTick(node));
        }
        world.schedule(1, Event::NewProposer);
        world.schedule(5, Event::RogueTick);
        let first_partition = world.rng.range(100, 400);
        world.schedule(first_partition, Event::Partition);
        world
    }

    fn faulty(&self) -> bool {
        self.now < FAULTY_UNTIL
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.events.push(Some(event));
        self.queue
            .push(Reverse((self.now + after, self.seq, self.events.len() - 1)));
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.counts.messages += 1;
        let cut_off = self.isolated.contains(&from) || self.isolated.contains(&to);
        if cut_off || (self.faulty() && self.rng.chance(40)) {
            self.counts.dropped += 1;
            return;
        }
        let delay = self.rng.range(1, 12);
        self.schedule(delay, Event::Deliver(Message { from, to, payload }));
    }

    /// Runs the seed to the end; the first broken invariant is the error.
    pub fn run(&mut self) -> Result<(), String> {
        while let Some(Reverse((time, _, index))) = self.queue.pop() {
            if time > END {
                break;
            }
            self.now = time;
            let Some(event) = self.events[index].take() else {
                continue;
            };
            if !self.calm && self.now >= FAULTY_UNTIL {
                self.calm = true;
                self.calm_down();
            }
            self.step(event)?;
        }
        self.final_checks()
    }

    fn step(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver(message) => self.deliver(message),
            Event::AcceptorTick(node) => {
                self.acceptor_tick(node);
                Ok(())
            }
            Event::FsyncDone { node, incarnation } => self.fsync_done(node, incarnation),
            Event::Restart(node) => self.restart(node),
            Event::ProposerTick(id) => {
                self.proposer_tick(id);
                Ok(())
            }
            Event::NewProposer => {
                if self.faulty() {
                    self.start_proposer(false);
                }
                Ok(())
            }
            Event::FinalProposer => {
                self.start_proposer(true);
                Ok(())
            }
            Event::Partition => {
                if self.faulty() {
                    let victim = if self.rng.chance(700) {
                        self.rng.range(0, ACCEPTORS as u64 - 1) as usize
                    } else {
                        FIRST_PROPOSER + self.proposers.len().saturating_sub(1)
                    };
                    self.isolated.push(victim);
                    self.counts.partitions += 1;
                    let heal = self.rng.range(20, 250);
                    self.schedule(heal, Event::Heal(victim));
                    let next = self.rng.range(100, 400);
                    self.schedule(next, Event::Partition);
                }
                Ok(())
            }
            Event::Heal(victim) => {
                self.isolated.retain(|&v| v != victim);
                Ok(())
            }
            Event::RogueTick => {
                self.rogue_tick();
                Ok(())
            }
        }
    }

    /// The rogue forges one message at a random acceptor or at the newest
    /// proposer, all through the faulty phase.
    fn rogue_tick(&mut self) {
        if !self.faulty() {
            return;
        }
        let next = self.rng.range(1, 6);
        self.schedule(next, Event::RogueTick);
        let node = self.rng.range(0, ACCEPTORS as u64 - 1) as usize;
        let Some(acceptor) = &self.nodes[node].acceptor else {
            return;
        };
        let target = rogue::Target {
            term: acceptor.term(),
            history: &acceptor.durable().history.clone(),
            flush: acceptor.flush_lsn(),
        };
        let ids: Vec<u32> = members().members().iter().map(|m| m.id.0).collect();
        let forgery = rogue::forge(&mut self.rng, &target, &ids);
        self.counts.forgeries += 1;
        match forgery {
            Forgery::ToAcceptor(request, bytes) => {
                self.send(ROGUE, node, Payload::Request(request, bytes));
            }
            Forgery::Fetch {
                term,
                history,
                from,
                to,
            } => self.send(
                ROGUE,
                node,
                Payload::Fetch {
                    term,
                    history,
                    from,
                    to,
                },
            ),
            Forgery::ToProposer(response, log) => {
                if !self.proposers.is_empty() {
                    let newest = FIRST_PROPOSER + self.proposers.len() - 1;
                    self.send(ROGUE, newest, Payload::Response(response, log));
                }
            }
        }
    }

    /// The calm phase: heal the network, restart every node, retire every
    /// proposer and elect a last one, which must then commit.
    fn calm_down(&mut self) {
        self.isolated.clear();
        for node in 0..ACCEPTORS {
            if self.nodes[node].acceptor.is_none() {
                self.schedule(1, Event::Restart(node));
            }
        }
        for proposer in &mut self.proposers {
            proposer.alive = false;
        }
        self.schedule(20, Event::FinalProposer);
    }

    fn final_checks(&mut self) -> Result<(), String> {
        let last = self.proposers.last().ok_or("no proposer ever started")?;
        let Phase::Running { won, committed, .. } = &last.phase else {
            return Err("the last proposer was never elected in the calm phase".into());
        };
        if *committed <= offset(won.start) {
            return Err(format!(
                "the last proposer (term {}) committed nothing after its start {}",
                won.term, won.start
            ));
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let acceptor = node
                .acceptor
                .as_ref()
                .ok_or_else(|| format!("acceptor {index} is down at the end"))?;
            let flushed = offset(acceptor.flush_lsn()).min(self.checker.committed_len());
            self.checker
                .agrees(&format!("acceptor {index}'s WAL"), &node.wal, flushed)?;
        }
        self.counts.commits = self.checker.commits;
        Ok(())
    }

    // ---- acceptors ----

    fn acceptor_tick(&mut self, node: usize) {
        let next = self.rng.range(1, 4);
        self.schedule(next, Event::AcceptorTick(node));
        let Some(acceptor) = &self.nodes[node].acceptor else {
            return;
        };
        if self.faulty() && self.rng.chance(4) {
            self.crash(node);
            return;
        }
        let acceptor = acceptor.clone();
        // Group commit: one fsync covers everything written so far.
        if self.nodes[node].fsync.is_none() && acceptor.write_lsn() > acceptor.flush_lsn() {
            let ticket = acceptor.begin_flush();
            self.nodes[node].fsync = Some((ticket, offset(ticket.lsn())));
            let incarnation = self.nodes[node].incarnation;
            let after = self.rng.range(1, 6);
            self.schedule(after, Event::FsyncDone { node, incarnation });
        }
        if acceptor.damage().is_some() {
            self.repair_fetch(node, &acceptor);
        } else if let Some((from, to)) = acceptor.recovery_needed() {
            let peer = (node + 1 + self.nodes[node].next_peer % (ACCEPTORS - 1)) % ACCEPTORS;
            self.nodes[node].next_peer += 1;
            let to = to.min(Lsn(from.0 + CHUNK));
            let fetch = Payload::Fetch {
                term: acceptor.term(),
                history: acceptor.durable().history.clone(),
                from,
                to,
            };
            self.send(node, peer, fetch);
        }
        if acceptor.is_elected_member() {
            for peer in (0..ACCEPTORS).filter(|&p| p != node) {
                let gossip = Request::PeerFlush {
                    peer: node_id(node).0,
                    term: acceptor.term(),
                    flush: acceptor.flush_lsn(),
                };
                self.send(node, peer, Payload::Request(gossip, Vec::new()));
            }
        }
    }

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.acceptor = None;
        n.incarnation += 1;
        n.fsync = None;
        n.leader = None;
        // Unflushed bytes may partly have reached the disk; the restart
        // keeps whole records only (it finds its WAL end by decoding).
        let reached = n.durable + self.rng.range(0, (n.wal.len() - n.durable) as u64) as usize;
        let kept = whole_records(reached);
        if reached != kept {
            self.counts.torn_wal_writes += 1;
        }
        n.wal.truncate(kept);
        n.durable = kept;
        self.counts.crashes += 1;
        self.storage_fault(node);
        let after = self.rng.range(10, 200);
        self.schedule(after, Event::Restart(node));
    }

    fn restart(&mut self, node: usize) -> Result<(), String> {
        let n = &mut self.nodes[node];
        if n.acceptor.is_some() {
            return Ok(());
        }
        let acceptor = self.restore_acceptor(node)?;
        let n = &mut self.nodes[node];
        n.commit_seen = acceptor.commit_lsn();
        n.acceptor = Some(acceptor);
        if self.trace {
            eprintln!(
                "{:>5} acceptor {node} restarts at {}",
                self.now,
                lsn_of(n.wal.len())
            );
        }
        Ok(())
    }

    fn fsync_done(&mut self, node: usize, incarnation: u64) -> Result<(), String> {
        let n = &mut self.nodes[node];
        if n.incarnation != incarnation {
            return Ok(());
        }
        let Some((ticket, covers)) = n.fsync.take() else {
            return Ok(());
        };
        n.durable = n.durable.max(covers.min(n.wal.len()));
        let Some(acceptor) = n.acceptor.as_mut() else {
            return Ok(());
        };
        let reply = acceptor.flushed(ticket);
        let leader = n.leader;
        self.maybe_mark(node);
        self.note_commit(node)?;
        if let (Some(reply), Some(leader)) = (reply, leader) {
            self.send(node, leader, Payload::Response(reply, Vec::new()));
        }
        Ok(())
    }

    fn note_commit(&mut self, node: usize) -> Result<(), String> {
        let n = &mut self.nodes[node];
        let Some(acceptor) = &n.acceptor else {
            return Ok(());
        };
        let commit = acceptor.commit_lsn();
        if commit > n.commit_seen {
            n.commit_seen = commit;
            self.checker.commit(
                &format!("acceptor {node}"),
                &self.nodes[node].wal,
                whole_records(offset(commit)),
            )?;
        }
        Ok(())
    }

    fn deliver(&mut self, message: Message) -> Result<(), String> {
        if message.to >= FIRST_PROPOSER {
            if let Payload::Response(response, log) = message.payload {
                return self.proposer_hears(message.to, message.from, &response, log);
            }
            return Ok(());
        }
        let node = message.to;
        if self.nodes[node].acceptor.is_none() {
            return Ok(());
        }
        match message.payload {
            Payload::Request(request, bytes) => {
                self.acceptor_hears(node, message.from, &request, &bytes)
            }
            Payload::Fetch {
                term,
                history,
                from,
                to,
            } => {
                let Some(acceptor) = &self.nodes[node].acceptor else {
                    return Ok(());
                };
                // Only members are served (the host checks who asks).
                if !acceptor.members().contains(node_id(message.from)) {
                    return Ok(());
                }
                if acceptor.can_serve(&history, from, to) {
                    let bytes = self.nodes[node].wal[offset(from)..offset(to)].to_vec();
                    let len = bytes.len() as u64;
                    let append = Request::Append {
                        term,
                        begin: from,
                        len,
                    };
                    self.send(node, message.from, Payload::Request(append, bytes));
                }
                Ok(())
            }
            Payload::Response(..) => Ok(()),
        }
    }

    fn acceptor_hears(
        &mut self,
        node: usize,
        from: usize,
        request: &Request,
        bytes: &[u8],
    ) -> Result<(), String> {
        let Some(acceptor) = self.nodes[node].acceptor.as_mut() else {
            return Ok(());
        };
        let commit_before = acceptor.commit_lsn();
        let write_before = acceptor.write_lsn();
        // Who the request is from, as an authenticated connection would
        // establish it: WAL from an acceptor is what this node fetched in
        // recovery.
        let sender = if from >= FIRST_PROPOSER {
            Sender::Proposer
        } else if from == ROGUE || matches!(request, Request::PeerFlush { .. }) {
            Sender::Peer(node_id(from))
        } else {
            Sender::Local
        };
        if sender == Sender::Local
            && acceptor.damage().is_some()
            && let Request::Append { begin, .. } = request
        {
            // Repair bytes (the answer to a damaged node's fetch).
            return self.take_repair(node, *begin, bytes);
        }
        let refused_before = acceptor.refused_senders();
        let actions = acceptor.handle(sender, request);
        if from == ROGUE {
            return forgery_refused(node, request, &actions, acceptor, refused_before);
        }
        let member = acceptor.is_elected_member();
        if let Some(state) = actions.persist_before_cut.clone() {
            self.store_control(node, state, false);
        }
        if let Some(cut) = actions.truncate {
            // The commit LSN may end inside a record (a majority holds
            // those bytes); what was committed is the whole records below.
            // (A damaged log's cut at its own end removes only what the
            // damage already took.)
            if cut < write_before && offset(cut) < whole_records(offset(commit_before)) {
                return Err(format!(
                    "acceptor {node} cut its WAL at {cut}, below the whole records of its commit LSN {commit_before}"
                ));
            }
            let at = offset(cut);
            let n = &mut self.nodes[node];
            n.wal.truncate(at);
            n.durable = n.durable.min(at);
            if let Some((_, covers)) = &mut n.fsync {
                *covers = (*covers).min(at);
            }
            self.counts.truncations += 1;
        }
        if let Some(state) = actions.persist {
            if self.faulty() && self.rng.chance(20) {
                // Crash in the middle of the replacement: a temporary file
                // is torn; both copies are old, or only `control` is new.
                self.counts.torn_control_writes += 1;
                if self.rng.chance(500) {
                    self.store_control(node, state, true);
                }
                self.crash(node);
                return Ok(());
            }
            self.store_control(node, state, false);
        }
        if let Some(write) = actions.write {
            let n = &mut self.nodes[node];
            if offset(write.at) != n.wal.len() {
                return Err(format!(
                    "acceptor {node} writes at {} but its WAL ends at {}",
                    write.at,
                    lsn_of(n.wal.len())
                ));
            }
            let skip = usize::try_from(write.skip).unwrap_or(usize::MAX);
            let len = usize::try_from(write.len).unwrap_or(usize::MAX);
            n.wal.extend_from_slice(&bytes[skip..skip + len]);
            if from < FIRST_PROPOSER {
                self.counts.recovered_bytes += write.len;
            }
        }
        let from_proposer = from >= FIRST_PROPOSER;
        if from_proposer
            && member
            && matches!(request, Request::Elected { .. } | Request::Append { .. })
        {
            self.nodes[node].leader = Some(from);
        }
        if self.trace
            && let Request::Elected { term, .. } = request
        {
            eprintln!(
                "{:>5} acceptor {node} takes term {term} (cut {:?})",
                self.now, actions.truncate
            );
        }
        self.note_commit(node)?;
        if let Some(reply) = actions.reply
            && from_proposer
        {
            let log = match &reply {
                Response::Vote {
                    granted: true,
                    flush,
                    ..
                } => self.nodes[node].wal[..offset(*flush)].to_vec(),
                _ => Vec::new(),
            };
            self.send(node, from, Payload::Response(reply, log));
        }
        Ok(())
    }
}
