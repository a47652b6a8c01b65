//! A rogue node: not a member of the timeline, it knows every current term
//! (as `GetStatus` would tell it) and forges every message kind with them —
//! votes, election announcements with made-up histories, WAL appends,
//! flush reports in its own name and in members' names, fetches, and
//! answers to proposers (granted votes from a huge log, flush
//! acknowledgements, refusals of a far newer term). The network gives its
//! messages its own identity, as an authenticated connection would; each
//! must be refused, and safety must hold as before.

use quire_postgres::Lsn;
use quire_safekeeper::acceptor::{Request, Response};
use quire_safekeeper::history::{Term, TermEntry, TermHistory};

use crate::rng::Rng;

/// The rogue's node index (acceptors are 0.., proposers from 100).
pub const ROGUE: usize = 50;
/// The safekeeper id it holds (no member has it).
pub const ROGUE_ID: u32 = 50;

/// What the rogue sends next.
pub enum Forgery {
    /// A request to an acceptor, with an append's bytes.
    ToAcceptor(Request, Vec<u8>),
    /// A peer-recovery fetch.
    Fetch {
        term: Term,
        history: TermHistory,
        from: Lsn,
        to: Lsn,
    },
    /// An answer to a proposer, with a granted vote's "log".
    ToProposer(Response, Vec<u8>),
}

/// What the rogue knows of its target: the acceptor's term, history and
/// flush LSN.
pub struct Target<'a> {
    pub term: Term,
    pub history: &'a TermHistory,
    pub flush: Lsn,
}

fn garbage(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.byte()).collect()
}

/// A made-up history for `term`: the target's own cut short, or one entry
/// starting anywhere.
fn forged_history(rng: &mut Rng, target: &Target<'_>, term: Term) -> TermHistory {
    let mut entries: Vec<TermEntry> = target
        .history
        .0
        .iter()
        .copied()
        .filter(|e| e.term < term)
        .collect();
    if rng.chance(500) {
        entries.truncate(1);
    }
    let last_start = entries.last().map_or(0, |e| e.start.0);
    let start = Lsn(last_start + rng.range(0, 600));
    entries.push(TermEntry { term, start });
    TermHistory(entries)
}

/// The next forgery against `target`, among every kind.
pub fn forge(rng: &mut Rng, target: &Target<'_>, member_ids: &[u32]) -> Forgery {
    let term = target.term;
    let far = Lsn(target.flush.0 + rng.range(1, 5000));
    match rng.range(0, 8) {
        0 => Forgery::ToAcceptor(
            Request::Vote {
                term: term + rng.range(0, 2),
            },
            Vec::new(),
        ),
        1 => Forgery::ToAcceptor(
            Request::Elected {
                term: term + rng.range(0, 1),
                history: forged_history(rng, target, term.max(1)),
            },
            Vec::new(),
        ),
        2 => {
            let len = rng.range(1, 300) as usize;
            let begin = Lsn(target.flush.0.saturating_sub(rng.range(0, 200)));
            Forgery::ToAcceptor(
                Request::Append {
                    term,
                    begin,
                    len: len as u64,
                },
                garbage(rng, len),
            )
        }
        3 => Forgery::ToAcceptor(
            Request::PeerFlush {
                peer: ROGUE_ID,
                term,
                flush: far,
            },
            Vec::new(),
        ),
        4 => {
            // In a member's name.
            let peer = member_ids[rng.range(0, member_ids.len() as u64 - 1) as usize];
            Forgery::ToAcceptor(
                Request::PeerFlush {
                    peer,
                    term,
                    flush: far,
                },
                Vec::new(),
            )
        }
        5 => Forgery::Fetch {
            term,
            history: target.history.clone(),
            from: Lsn(target.flush.0.saturating_sub(rng.range(0, 400))),
            to: target.flush,
        },
        6 => {
            let history = forged_history(rng, target, term.max(1));
            let len = rng.range(0, 64) as usize;
            let log = garbage(rng, len);
            Forgery::ToProposer(
                Response::Vote {
                    term,
                    granted: true,
                    flush: far,
                    history,
                },
                log,
            )
        }
        7 => Forgery::ToProposer(
            Response::Flushed {
                term,
                flush: far,
                commit: far,
            },
            Vec::new(),
        ),
        _ => Forgery::ToProposer(
            Response::Refused {
                term: term + 1000,
                why: "forged",
            },
            Vec::new(),
        ),
    }
}
