//! The proposer's side of an election and of quorum commit, pure.
//!
//! At compute start the compute control asks every safekeeper to vote in a
//! new term; with a majority of votes it picks the most advanced log among
//! the voters — the highest `(last log term, flush LSN)` — as the donor,
//! and announces the history the new term writes with: the donor's history
//! up to its flush LSN, then `(term, flush)`. The new compute starts at that
//! flush LSN. While it runs, WAL counts as committed up to the highest LSN
//! a majority has acknowledged as flushed in this term, which is Postgres'
//! own `ANY 2 (sk1, sk2, sk3)` rule. Majorities are counted over the
//! timeline's member set; an answer from anyone else is ignored and counted.

use quire_postgres::Lsn;

use crate::acceptor::Response;
use crate::history::{Term, TermHistory};
use crate::membership::{Membership, NodeId};

/// A vote received.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vote {
    node: NodeId,
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
    pub donor: NodeId,
    /// Where the last whole record before `start` begins (the `xl_prev` of
    /// the new compute's first record), when the election read it from the
    /// donor; `Lsn::INVALID` when no record lies in the WAL before `start`.
    pub prev_record: Lsn,
}

impl Won {
    /// The same election with the new term starting at `start` instead of
    /// the donor's flush LSN (at most that): a standby may hold a partial
    /// record at its flush LSN, and a compute starts where the donor's
    /// last whole record ends. The partial record was never committed
    /// (Postgres commits at records' ends), and acceptors cut it.
    #[must_use]
    pub fn starting_at(&self, start: Lsn, prev_record: Lsn) -> Won {
        let start = start.min(self.start);
        let donor = TermHistory(self.history.0[..self.history.0.len().saturating_sub(1)].to_vec());
        Won {
            term: self.term,
            history: donor.elect(start, self.term),
            start,
            donor: self.donor,
            prev_record,
        }
    }
}

/// Collects votes for one term.
#[derive(Clone, Debug)]
pub struct Election {
    term: Term,
    members: Membership,
    votes: Vec<Vote>,
    highest_term_seen: Term,
    ignored: u64,
}

impl Election {
    /// An election for `term` among `members`.
    pub fn new(term: Term, members: Membership) -> Election {
        Election {
            term,
            members,
            votes: Vec::new(),
            highest_term_seen: term,
            ignored: 0,
        }
    }

    /// Answers ignored because their sender is not a member.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The term asked for.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The highest term any answer named (a lost election retries above it).
    pub fn highest_term_seen(&self) -> Term {
        self.highest_term_seen
    }

    /// Takes an answer from `node`; ignores anything but a vote, and
    /// anything from a non-member (whose term does not count either).
    pub fn on_response(&mut self, node: NodeId, response: &Response) {
        if !self.members.contains(node) {
            self.ignored += 1;
            return;
        }
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
        if self.votes.len() < self.members.quorum() {
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
            prev_record: Lsn::INVALID,
        })
    }
}

/// The commit LSN as the compute sees it: flush acknowledgements in its
/// term from a majority.
#[derive(Clone, Debug)]
pub struct QuorumCommit {
    term: Term,
    members: Membership,
    flushed: Vec<(NodeId, Lsn)>,
}

impl QuorumCommit {
    /// Tracks acknowledgements for `term` among `members`.
    pub fn new(term: Term, members: Membership) -> QuorumCommit {
        QuorumCommit {
            term,
            members,
            flushed: Vec::new(),
        }
    }

    /// Takes an answer from `node`; only members' flushes in our term count.
    pub fn on_response(&mut self, node: NodeId, response: &Response) {
        if !self.members.contains(node) {
            return;
        }
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
    pub fn flushed(&self, node: NodeId) -> Option<Lsn> {
        self.flushed
            .iter()
            .find(|(n, _)| *n == node)
            .map(|&(_, f)| f)
    }

    /// The highest LSN a majority flushed.
    pub fn commit_lsn(&self) -> Option<Lsn> {
        let mut flushes: Vec<Lsn> = self.flushed.iter().map(|&(_, f)| f).collect();
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        flushes.get(self.members.quorum() - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::TermEntry;

    /// Safekeepers 1, 2 and 3.
    fn three() -> Membership {
        Membership::numbered(&["127.0.0.1:5451", "127.0.0.1:5452", "127.0.0.1:5453"])
            .expect("valid")
    }

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
        let mut election = Election::new(5, three());
        election.on_response(NodeId(1), &vote(5, 900, &[(1, 100)]));
        assert_eq!(election.outcome(), None);
        // Safekeeper 2 has less WAL but of a later term: it wins.
        election.on_response(NodeId(2), &vote(5, 700, &[(1, 100), (3, 600)]));
        let won = election.outcome().expect("a majority");
        assert_eq!((won.donor, won.start), (NodeId(2), Lsn(700)));
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
        let mut election = Election::new(5, three());
        election.on_response(NodeId(1), &vote(5, 900, &[(1, 100), (3, 880)]));
        election.on_response(NodeId(2), &vote(5, 600, &[(1, 100)]));
        let won = election
            .outcome()
            .expect("a majority")
            .starting_at(Lsn(872), Lsn::INVALID);
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
        let mut election = Election::new(9, three());
        // Safekeeper 1 adopted term 3 starting at 800 but holds only up to 700.
        election.on_response(NodeId(1), &vote(9, 700, &[(1, 100), (3, 800)]));
        election.on_response(NodeId(2), &vote(9, 750, &[(1, 100)]));
        let won = election.outcome().expect("a majority");
        assert_eq!((won.donor, won.start), (NodeId(2), Lsn(750)));
    }

    #[test]
    fn refusals_and_other_terms_do_not_count_as_votes() {
        let mut election = Election::new(4, three());
        election.on_response(NodeId(1), &vote(4, 100, &[]));
        election.on_response(
            NodeId(2),
            &Response::Vote {
                term: 6,
                granted: false,
                flush: Lsn(100),
                history: TermHistory::default(),
            },
        );
        election.on_response(NodeId(1), &vote(4, 100, &[]));
        assert_eq!(election.outcome(), None);
        assert_eq!(election.highest_term_seen(), 6);
    }

    #[test]
    fn commit_is_the_majority_flush_in_our_term() {
        let mut quorum = QuorumCommit::new(3, three());
        let flushed = |term, flush| Response::Flushed {
            term,
            flush: Lsn(flush),
            commit: Lsn(0),
        };
        quorum.on_response(NodeId(1), &flushed(3, 500));
        assert_eq!(quorum.commit_lsn(), None);
        quorum.on_response(NodeId(2), &flushed(2, 900));
        assert_eq!(quorum.commit_lsn(), None);
        quorum.on_response(NodeId(2), &flushed(3, 400));
        assert_eq!(quorum.commit_lsn(), Some(Lsn(400)));
        quorum.on_response(NodeId(3), &flushed(3, 700));
        assert_eq!(quorum.commit_lsn(), Some(Lsn(500)));
    }

    #[test]
    fn answers_from_outside_the_member_set_do_not_count() {
        let mut election = Election::new(4, three());
        for rogue in [0, 4, 99] {
            election.on_response(NodeId(rogue), &vote(4, 10_000, &[(3, 100)]));
            election.on_response(
                NodeId(rogue),
                &Response::Refused {
                    term: 1000,
                    why: "forged",
                },
            );
        }
        assert_eq!(election.outcome(), None);
        assert_eq!(
            election.highest_term_seen(),
            4,
            "a non-member's term is ignored"
        );
        assert_eq!(election.ignored(), 6);
        election.on_response(NodeId(1), &vote(4, 500, &[(1, 100)]));
        election.on_response(NodeId(3), &vote(4, 400, &[(1, 100)]));
        let won = election.outcome().expect("a majority of members");
        assert_eq!((won.donor, won.start), (NodeId(1), Lsn(500)));

        let mut quorum = QuorumCommit::new(4, three());
        let flushed = Response::Flushed {
            term: 4,
            flush: Lsn(9_000),
            commit: Lsn(0),
        };
        quorum.on_response(NodeId(7), &flushed);
        quorum.on_response(NodeId(2), &flushed);
        assert_eq!(
            quorum.commit_lsn(),
            None,
            "one member and a rogue are no majority"
        );
    }
}
