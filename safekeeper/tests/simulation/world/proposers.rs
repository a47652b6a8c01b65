//! The proposers' side of the simulated cluster: compute controls that run
//! elections with the real `Election`, write WAL, and count commits with
//! the real `QuorumCommit`; a newer term fences them.

use quire_postgres::Lsn;
use quire_safekeeper::acceptor::{Request, Response};
use quire_safekeeper::election::{Election, QuorumCommit};

use super::{
    ACCEPTORS, CHUNK, Event, FIRST_PROPOSER, Payload, Phase, Proposer, RECORD, World, lsn_of,
    members, node_id, offset, whole_records,
};

impl World {
    pub(super) fn start_proposer(&mut self, last: bool) {
        // A compute control picks a term above those it knows of; two
        // starting at once may pick the same one (at most one can win it).
        if last || self.rng.chance(700) || self.highest_term == 0 {
            self.highest_term += 1;
        }
        let election = Election::new(self.highest_term, members());
        self.proposers.push(Proposer {
            alive: true,
            phase: Phase::Electing {
                election,
                logs: Vec::new(),
                deadline: 0,
            },
        });
        let id = FIRST_PROPOSER + self.proposers.len() - 1;
        self.schedule(1, Event::ProposerTick(id));
    }

    pub(super) fn proposer_tick(&mut self, id: usize) {
        let index = id - FIRST_PROPOSER;
        if !self.proposers[index].alive {
            return;
        }
        let next = self.rng.range(1, 3);
        self.schedule(next, Event::ProposerTick(id));
        if self.faulty() && self.rng.chance(3) {
            // The compute dies, or seems to; another starts (sometimes
            // while this one lives on: it must be fenced, not trusted).
            if self.rng.chance(600) {
                self.proposers[index].alive = false;
                self.counts.proposer_deaths += 1;
            }
            let after = self.rng.range(5, 60);
            self.schedule(after, Event::NewProposer);
        }
        let now = self.now;
        let mut sends: Vec<(usize, Payload)> = Vec::new();
        match &mut self.proposers[index].phase {
            Phase::Electing {
                election,
                logs,
                deadline,
            } => {
                if now < *deadline {
                    return;
                }
                if *deadline > 0 {
                    // No majority in time: a new term above all seen.
                    let term = election.highest_term_seen() + 1;
                    self.highest_term = self.highest_term.max(term);
                    *election = Election::new(term, members());
                    logs.clear();
                }
                *deadline = now + 60;
                let term = election.term();
                for node in 0..ACCEPTORS {
                    sends.push((node, Payload::Request(Request::Vote { term }, Vec::new())));
                }
            }
            Phase::Running {
                won,
                log,
                quorum,
                announced,
                ..
            } => {
                if self.rng.chance(300) {
                    let records = self.rng.range(1, 3) as usize;
                    for _ in 0..records {
                        let body: [u8; RECORD - 4] = std::array::from_fn(|_| self.rng.byte());
                        log.extend_from_slice(&super::storage::record(log.len(), &body));
                    }
                }
                let log_end = lsn_of(log.len());
                for (node, announced) in announced.iter().enumerate() {
                    if !announced {
                        let elected = Request::Elected {
                            term: won.term,
                            history: won.history.clone(),
                        };
                        sends.push((node, Payload::Request(elected, Vec::new())));
                        continue;
                    }
                    let begin = quorum
                        .flushed(node_id(node))
                        .unwrap_or(won.start)
                        .max(won.start);
                    if begin < log_end {
                        let end = log_end.min(Lsn(begin.0 + CHUNK));
                        let bytes = log[offset(begin)..offset(end)].to_vec();
                        let append = Request::Append {
                            term: won.term,
                            begin,
                            len: bytes.len() as u64,
                        };
                        sends.push((node, Payload::Request(append, bytes)));
                    }
                }
            }
        }
        for (node, payload) in sends {
            self.send(id, node, payload);
        }
    }

    pub(super) fn proposer_hears(
        &mut self,
        id: usize,
        node: usize,
        response: &Response,
        voter_log: Vec<u8>,
    ) -> Result<(), String> {
        let index = id - FIRST_PROPOSER;
        if !self.proposers[index].alive {
            return Ok(());
        }
        let proposer = &mut self.proposers[index];
        match &mut proposer.phase {
            Phase::Electing { election, logs, .. } => {
                election.on_response(node_id(node), response);
                if let Response::Vote {
                    granted: true,
                    term,
                    ..
                } = response
                    && *term == election.term()
                {
                    logs.push((node_id(node), voter_log));
                }
                let Some(won) = election.outcome() else {
                    return Ok(());
                };
                // The new compute starts where the donor's last whole
                // record ends.
                let won = won.starting_at(lsn_of(whole_records(offset(won.start))), Lsn::INVALID);
                let mut donor_log = logs
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == won.donor)
                    .map(|(_, log)| log.clone())
                    .ok_or("the donor's vote carried no log")?;
                donor_log.truncate(whole_records(donor_log.len()));
                if donor_log.len() != offset(won.start) {
                    return Err(format!(
                        "donor {} voted with flush {} but holds {} bytes",
                        won.donor,
                        won.start,
                        donor_log.len()
                    ));
                }
                self.checker
                    .elected(&format!("proposer {id} (term {})", won.term), &donor_log)?;
                self.counts.elections += 1;
                if self.trace {
                    eprintln!(
                        "{:>5} proposer {id} elected in term {} at {} (donor {})",
                        self.now, won.term, won.start, won.donor
                    );
                }
                proposer.phase = Phase::Running {
                    quorum: QuorumCommit::new(won.term, members()),
                    won,
                    log: donor_log,
                    announced: [false; ACCEPTORS],
                    committed: 0,
                };
            }
            Phase::Running {
                won,
                log,
                quorum,
                announced,
                committed,
            } => {
                // The compute control talks only to the members it dialed.
                if node >= ACCEPTORS {
                    quorum.on_response(node_id(node), response);
                    return Ok(());
                }
                let newer = match response {
                    Response::Vote { term, .. }
                    | Response::Flushed { term, .. }
                    | Response::Refused { term, .. } => *term > won.term,
                };
                if newer {
                    // Fenced: a newer term was elected.
                    proposer.alive = false;
                    self.counts.fenced_proposers += 1;
                    return Ok(());
                }
                if let Response::Flushed { term, flush, .. } = response
                    && *term == won.term
                {
                    if offset(*flush) > log.len() {
                        return Err(format!(
                            "acceptor {node} acknowledged {flush}, past the proposer's log end {}",
                            lsn_of(log.len())
                        ));
                    }
                    announced[node] = true;
                    quorum.on_response(node_id(node), response);
                    // Postgres' commits end at records' ends.
                    if let Some(commit) = quorum.commit_lsn()
                        && whole_records(offset(commit)) > *committed
                    {
                        *committed = whole_records(offset(commit));
                        self.checker
                            .commit(&format!("proposer {id}"), log, *committed)?;
                    }
                }
            }
        }
        Ok(())
    }
}
