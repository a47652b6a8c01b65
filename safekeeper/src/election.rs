//! The proposer's side of an election and of quorum commit, pure.
//!
//! At compute start the compute control asks every safekeeper to vote in a
//! new term; with a majority of votes it picks the most advanced log among
//! the voters — the highest `(last log term, flush LSN)` — as the donor,
//! and announces the history the new term writes with: the donor's history
//! up to its flush LSN, then `(term, flush)`. The new compute starts at that
//! flush LSN. While it runs, WAL counts as committed up to the highest LSN
//! a majority has acknowledged as flushed in this term, which is Postgres'
//! own `ANY 2 (sk1, sk2, sk3)` rule.

use quire_postgres::Lsn;

use crate::acceptor::Response;
use crate::history::{Term, TermHistory};

/// A vote received.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vote {
    node: u32,
    flush: Lsn,
    history: TermHistory,
}

/// The outcome of a won election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Won {
    /// The term.
    pub term: Term,
    /// The history the new term writes with (last entry `(term, start)`).
    pub history: TermHistory,
    /// Where the new compute's WAL begins: the donor's flush LSN.
    pub start: Lsn,
    /// The voter whose log was chosen.
    pub donor: u32,
}

impl Won {
    /// The same election with the new term starting at `start` instead of
    /// the donor's flush LSN (at most that): a standby may hold a partial
    /// record at its flush LSN, and a compute starts where the donor's
    /// last whole record ends. The partial record was never committed
    /// (Postgres commits at records' ends), and acceptors cut it.
    #[must_use]
    pub fn starting_at(&self, start: Lsn) -> Won {
        let start = start.min(self.start);
        let donor = TermHistory(self.history.0[..self.history.0.len().saturating_sub(1)].to_vec());
        Won {
            term: self.term,
            history: donor.elect(start, self.term),
            start,
            donor: self.donor,
        }
    }
}

/// Collects votes for one term.
#[derive(Clone, Debug)]
pub struct Election {
    term: Term,
    members: usize,
    votes: Vec<Vote>,
    highest_term_seen: Term,
}

impl Election {
    /// An election for `term` among `members` acceptors.
    pub fn new(term: Term, members: usize) -> Election {
        Election {
            term,
            members: members.max(1),
            votes: Vec::new(),
            highest_term_seen: term,
        }
    }

    /// The term asked for.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The highest term any answer named (a lost election retries above it).
    pub fn highest_term_seen(&self) -> Term {
        self.highest_term_seen
    }

    /// Takes an answer from `node`; ignores anything but a vote.
    pub fn on_response(&mut self, node: u32, response: &Response) {
        match response {
            Response::Vote {
                term,
                granted,
                flush,
                history,
            } => {
                self.highest_term_seen = self.highest_term_seen.max(*term);
                if *granted && *term == self.term && !self.votes.iter().any(|v| v.node == node) {
                    self.votes.push(Vote {
                        node,
                        flush: *flush,
                        history: history.clone(),
                    });
                }
            }
            Response::Refused { term, .. } | Response::Flushed { term, .. } => {
                self.highest_term_seen = self.highest_term_seen.max(*term);
            }
        }
    }

    /// The outcome once a majority voted.
    pub fn outcome(&self) -> Option<Won> {
        if self.votes.len() < self.members / 2 + 1 {
            return None;
        }
        let donor = self.votes.iter().max_by(|a, b| {
            let key = |v: &Vote| (v.history.last_log_term(v.flush), v.flush);
            key(a).cmp(&key(b)).then(b.node.cmp(&a.node))
        })?;
        Some(Won {
            term: self.term,
            history: donor.history.elect(donor.flush, self.term),
            start: donor.flush,
            donor: donor.node,
        })
    }
}

/// The commit LSN as the compute sees it: flush acknowledgements in its
/// term from a majority.
#[derive(Clone, Debug)]
pub struct QuorumCommit {
    term: Term,
    members: usize,
    flushed: Vec<(u32, Lsn)>,
}

impl QuorumCommit {
    /// Tracks acknowledgements for `term` among `members` acceptors.
    pub fn new(term: Term, members: usize) -> QuorumCommit {
        QuorumCommit {
            term,
            members: members.max(1),
            flushed: Vec::new(),
        }
    }

    /// Takes an answer from `node`; only flushes in our term count.
    pub fn on_response(&mut self, node: u32, response: &Response) {
        if let Response::Flushed { term, flush, .. } = response
            && *term == self.term
        {
            match self.flushed.iter_mut().find(|(n, _)| *n == node) {
                Some(entry) => entry.1 = entry.1.max(*flush),
                None => self.flushed.push((node, *flush)),
            }
        }
    }

    /// What `node` has acknowledged as flushed in our term.
    pub fn flushed(&self, node: u32) -> Option<Lsn> {
        self.flushed
            .iter()
            .find(|(n, _)| *n == node)
            .map(|&(_, f)| f)
    }

    /// The highest LSN a majority flushed.
    pub fn commit_lsn(&self) -> Option<Lsn> {
        let mut flushes: Vec<Lsn> = self.flushed.iter().map(|&(_, f)| f).collect();
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        flushes.get(self.members / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::TermEntry;

    fn vote(term: Term, flush: u64, history: &[(Term, u64)]) -> Response {
        Response::Vote {
            term,
            granted: true,
            flush: Lsn(flush),
            history: TermHistory(
                history
                    .iter()
                    .map(|&(term, start)| TermEntry {
                        term,
                        start: Lsn(start),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn the_donor_is_the_highest_last_term_then_the_longest_log() {
        let mut election = Election::new(5, 3);
        election.on_response(0, &vote(5, 900, &[(1, 100)]));
        assert_eq!(election.outcome(), None);
        // Node 1 has less WAL but of a later term: it wins.
        election.on_response(1, &vote(5, 700, &[(1, 100), (3, 600)]));
        let won = election.outcome().expect("a majority");
        assert_eq!((won.donor, won.start), (1, Lsn(700)));
        assert_eq!(
            won.history.0.last(),
            Some(&TermEntry {
                term: 5,
                start: Lsn(700)
            })
        );
    }

    #[test]
    fn a_start_below_the_donor_flush_cuts_its_history_there() {
        let mut election = Election::new(5, 3);
        election.on_response(0, &vote(5, 900, &[(1, 100), (3, 880)]));
        election.on_response(1, &vote(5, 600, &[(1, 100)]));
        let won = election
            .outcome()
            .expect("a majority")
            .starting_at(Lsn(872));
        assert_eq!(won.start, Lsn(872));
        assert_eq!(
            won.history.0,
            vec![
                TermEntry {
                    term: 1,
                    start: Lsn(100)
                },
                TermEntry {
                    term: 5,
                    start: Lsn(872)
                }
            ]
        );
    }

    #[test]
    fn a_history_entry_not_reached_does_not_count() {
        let mut election = Election::new(9, 3);
        // Node 0 adopted term 3 starting at 800 but holds only up to 700.
        election.on_response(0, &vote(9, 700, &[(1, 100), (3, 800)]));
        election.on_response(1, &vote(9, 750, &[(1, 100)]));
        let won = election.outcome().expect("a majority");
        assert_eq!((won.donor, won.start), (1, Lsn(750)));
    }

    #[test]
    fn refusals_and_other_terms_do_not_count_as_votes() {
        let mut election = Election::new(4, 3);
        election.on_response(0, &vote(4, 100, &[]));
        election.on_response(
            1,
            &Response::Vote {
                term: 6,
                granted: false,
                flush: Lsn(100),
                history: TermHistory::default(),
            },
        );
        election.on_response(0, &vote(4, 100, &[]));
        assert_eq!(election.outcome(), None);
        assert_eq!(election.highest_term_seen(), 6);
    }

    #[test]
    fn commit_is_the_majority_flush_in_our_term() {
        let mut quorum = QuorumCommit::new(3, 3);
        let flushed = |term, flush| Response::Flushed {
            term,
            flush: Lsn(flush),
            commit: Lsn(0),
        };
        quorum.on_response(0, &flushed(3, 500));
        assert_eq!(quorum.commit_lsn(), None);
        quorum.on_response(1, &flushed(2, 900));
        assert_eq!(quorum.commit_lsn(), None);
        quorum.on_response(1, &flushed(3, 400));
        assert_eq!(quorum.commit_lsn(), Some(Lsn(400)));
        quorum.on_response(2, &flushed(3, 700));
        assert_eq!(quorum.commit_lsn(), Some(Lsn(500)));
    }
}
