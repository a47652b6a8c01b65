//! The acceptor's unit tests.

use super::*;
use crate::history::TermEntry;
use crate::membership::Member;

/// Safekeepers 1, 2 and 3.
fn three() -> Membership {
    Membership::numbered(&["127.0.0.1:5451", "127.0.0.1:5452", "127.0.0.1:5453"]).expect("valid")
}

fn elected_acceptor() -> Acceptor {
    let mut acceptor = Acceptor::restore(DurableState::new(Lsn(100), three()), Lsn(100), NodeId(1));
    acceptor.handle(Sender::Proposer, &Request::Vote { term: 1 });
    let history = TermHistory(vec![TermEntry {
        term: 1,
        start: Lsn(100),
    }]);
    acceptor.handle(Sender::Proposer, &Request::Elected { term: 1, history });
    acceptor.handle(
        Sender::Proposer,
        &Request::Append {
            term: 1,
            begin: Lsn(100),
            len: 900,
        },
    );
    let ticket = acceptor.begin_flush();
    acceptor.flushed(ticket);
    acceptor
}

#[test]
fn votes_persist_before_they_answer_and_never_repeat_a_term() {
    let mut acceptor = Acceptor::restore(DurableState::new(Lsn(100), three()), Lsn(100), NodeId(1));
    let actions = acceptor.handle(Sender::Proposer, &Request::Vote { term: 4 });
    assert_eq!(actions.persist.map(|s| s.term), Some(4));
    assert!(matches!(
        actions.reply,
        Some(Response::Vote { granted: true, .. })
    ));
    let again = acceptor.handle(Sender::Proposer, &Request::Vote { term: 4 });
    assert!(again.persist.is_none());
    assert!(matches!(
        again.reply,
        Some(Response::Vote {
            granted: false,
            term: 4,
            ..
        })
    ));
}

#[test]
fn unflushed_appends_are_not_acknowledged() {
    let mut acceptor = elected_acceptor();
    let actions = acceptor.handle(
        Sender::Proposer,
        &Request::Append {
            term: 1,
            begin: Lsn(1000),
            len: 50,
        },
    );
    assert_eq!(
        actions.write,
        Some(Write {
            at: Lsn(1000),
            skip: 0,
            len: 50
        })
    );
    assert!(matches!(
        actions.reply,
        Some(Response::Flushed {
            flush: Lsn(1000),
            ..
        })
    ));
    let ticket = acceptor.begin_flush();
    assert!(matches!(
        acceptor.flushed(ticket),
        Some(Response::Flushed {
            flush: Lsn(1050),
            ..
        })
    ));
}

#[test]
fn a_new_history_cuts_the_divergent_tail_first() {
    let mut acceptor = elected_acceptor();
    acceptor.handle(Sender::Proposer, &Request::Vote { term: 3 });
    let history = TermHistory(vec![
        TermEntry {
            term: 1,
            start: Lsn(100),
        },
        TermEntry {
            term: 3,
            start: Lsn(600),
        },
    ]);
    let actions = acceptor.handle(Sender::Proposer, &Request::Elected { term: 3, history });
    assert_eq!(actions.truncate, Some(Lsn(600)));
    assert_eq!(actions.persist.map(|s| s.history.last_term()), Some(3));
    assert_eq!(acceptor.flush_lsn(), Lsn(600));
    // WAL of the old term is refused now.
    let old = acceptor.handle(
        Sender::Proposer,
        &Request::Append {
            term: 1,
            begin: Lsn(600),
            len: 10,
        },
    );
    assert!(matches!(old.reply, Some(Response::Refused { term: 3, .. })));
}

#[test]
fn wal_is_removable_only_below_every_members_flush() {
    let mut acceptor = elected_acceptor();
    for (peer, flush) in [(2, 700), (3, 400)] {
        acceptor.handle(
            Sender::Peer(NodeId(peer)),
            &Request::PeerFlush {
                peer,
                term: 1,
                flush: Lsn(flush),
            },
        );
    }
    assert_eq!(acceptor.commit_lsn(), Lsn(700));
    let state = acceptor.set_removable_before(Lsn(950)).expect("moves");
    assert_eq!(
        state.removable_before,
        Lsn(400),
        "the slowest member still needs it"
    );
    assert!(
        acceptor.set_removable_before(Lsn(300)).is_none(),
        "never back"
    );
    let fresh = &mut Acceptor::restore(DurableState::new(Lsn(100), three()), Lsn(500), NodeId(1));
    assert!(
        fresh.set_removable_before(Lsn(400)).is_none(),
        "peers unknown: nothing goes"
    );
}

#[test]
fn wal_below_the_removal_horizon_is_still_served() {
    let mut acceptor = elected_acceptor();
    for peer in [2, 3] {
        acceptor.handle(
            Sender::Peer(NodeId(peer)),
            &Request::PeerFlush {
                peer,
                term: 1,
                flush: Lsn(1000),
            },
        );
    }
    let history = acceptor.durable.history.clone();
    assert!(acceptor.set_removable_before(Lsn(800)).is_some());
    // The store still holds the segment from 100: the bytes are served.
    assert!(acceptor.can_serve_kept(&history, Lsn(100), Lsn(1000), Lsn(100)));
    assert!(
        !acceptor.can_serve_kept(&history, Lsn(100), Lsn(1001), Lsn(100)),
        "past the flush"
    );
    // Below what the store holds and below the horizon: refused.
    assert!(!acceptor.can_serve_kept(&history, Lsn(50), Lsn(1000), Lsn(100)));
    assert!(!acceptor.can_serve(&history, Lsn(100), Lsn(1000)));
}

#[test]
fn requests_are_taken_only_from_senders_allowed_to_send_them() {
    let mut acceptor = elected_acceptor();
    let term = acceptor.term();
    let flush = acceptor.flush_lsn();
    let forged = [
        (Sender::Peer(NodeId(2)), Request::Vote { term: term + 1 }),
        (Sender::Local, Request::Vote { term: term + 1 }),
        (
            Sender::Peer(NodeId(2)),
            Request::Elected {
                term,
                history: acceptor.durable().history.clone(),
            },
        ),
        (
            Sender::Peer(NodeId(3)),
            Request::Append {
                term,
                begin: flush,
                len: 10,
            },
        ),
    ];
    for (from, request) in &forged {
        let actions = acceptor.handle(*from, request);
        assert!(
            matches!(actions.reply, Some(Response::Refused { .. })),
            "{from:?} {request:?}"
        );
        assert!(actions.persist.is_none() && actions.write.is_none() && actions.truncate.is_none());
    }
    assert_eq!(acceptor.term(), term);
    // Flush reports: from a non-member, from ourselves, from a member
    // speaking for another, from a proposer: none moves the commit LSN.
    let high = Lsn(flush.0 + 10_000);
    for (from, peer) in [
        (Sender::Peer(NodeId(4)), 4),
        (Sender::Peer(NodeId(1)), 1),
        (Sender::Peer(NodeId(2)), 3),
        (Sender::Proposer, 2),
        (Sender::Local, 2),
    ] {
        let before = acceptor.commit_lsn();
        let actions = acceptor.handle(
            from,
            &Request::PeerFlush {
                peer,
                term,
                flush: high,
            },
        );
        assert_eq!(actions, Actions::default());
        assert_eq!(acceptor.commit_lsn(), before, "{from:?} claiming {peer}");
    }
    assert_eq!(acceptor.refused_senders(), forged.len() as u64 + 5);
    // A member speaking for itself counts.
    acceptor.handle(
        Sender::Peer(NodeId(2)),
        &Request::PeerFlush {
            peer: 2,
            term,
            flush: high,
        },
    );
    assert_eq!(acceptor.commit_lsn(), flush);
}

#[test]
fn a_member_set_change_must_keep_this_acceptor() {
    let mut acceptor = elected_acceptor();
    let others = Membership::new(vec![Member {
        id: NodeId(2),
        address: "127.0.0.1:5452".into(),
    }])
    .expect("valid");
    assert!(acceptor.change_members(others).is_err());
    let alone = Membership::new(vec![Member {
        id: NodeId(1),
        address: "127.0.0.1:5451".into(),
    }])
    .expect("valid");
    let state = acceptor.change_members(alone.clone()).expect("keeps us");
    assert_eq!(state.members, alone);
    assert_eq!(acceptor.members().quorum(), 1);
}

/// A log that came back shorter than it was durably: no vote and no
/// acknowledgement until repair writes the range back; the mark owed is
/// persisted first and never lowered by the repair.
#[test]
fn a_damaged_log_neither_votes_nor_acknowledges_until_repaired() {
    let mut before = elected_acceptor();
    let durable = before.durable().clone();
    // After a restart the log reads only up to 600 of its 1000 bytes.
    let mut acceptor = Acceptor::restore(durable, Lsn(600), NodeId(1));
    let persist = acceptor.note_damage(Lsn(1000)).expect("the mark is raised");
    assert_eq!(persist.flush_mark, Lsn(1000));
    assert_eq!(acceptor.damage(), Some((Lsn(600), Lsn(1000))));
    let vote = acceptor.handle(Sender::Proposer, &Request::Vote { term: 9 });
    assert!(matches!(vote.reply, Some(Response::Refused { .. })));
    assert!(vote.persist.is_none());
    assert_eq!(acceptor.term(), 1);
    // The compute's own appends are not acknowledged meanwhile.
    let append = acceptor.handle(
        Sender::Proposer,
        &Request::Append {
            term: 1,
            begin: Lsn(1000),
            len: 10,
        },
    );
    assert!(append.write.is_none() && append.reply.is_none());
    // Repair, in two chunks; the first ends inside the range.
    let first = acceptor.repair_write(Lsn(600), 300).expect("a write");
    assert_eq!((first.at, first.skip, first.len), (Lsn(600), 0, 300));
    let ticket = acceptor.begin_flush();
    assert!(acceptor.flushed(ticket).is_none(), "still damaged");
    assert_eq!(acceptor.damage(), Some((Lsn(900), Lsn(1000))));
    // Bytes past the range are not taken by a repair.
    let second = acceptor.repair_write(Lsn(850), 400).expect("a write");
    assert_eq!((second.at, second.skip, second.len), (Lsn(900), 50, 100));
    let ticket = acceptor.begin_flush();
    assert!(matches!(
        acceptor.flushed(ticket),
        Some(Response::Flushed {
            flush: Lsn(1000),
            ..
        })
    ));
    assert_eq!(acceptor.damage(), None);
    assert!(matches!(
        acceptor
            .handle(Sender::Proposer, &Request::Vote { term: 9 })
            .reply,
        Some(Response::Vote {
            granted: true,
            flush: Lsn(1000),
            ..
        })
    ));
    // The undamaged acceptor marks its flush when asked, once.
    assert_eq!(before.mark_flush().map(|d| d.flush_mark), Some(Lsn(1000)));
    assert!(before.mark_flush().is_none());
}

/// A repair whose bytes fail their check is cut back, the damage kept.
#[test]
fn a_failed_repair_is_cut_back_and_the_damage_stays() {
    let durable = elected_acceptor().durable().clone();
    let mut acceptor = Acceptor::restore(durable, Lsn(600), NodeId(1));
    acceptor.note_damage(Lsn(1000));
    acceptor.repair_write(Lsn(600), 200);
    assert_eq!(acceptor.abandon_repair_from(Lsn(700)), Some(Lsn(700)));
    assert_eq!(acceptor.damage(), Some((Lsn(700), Lsn(1000))));
    assert_eq!(acceptor.abandon_repair_from(Lsn(900)), None);
    assert_eq!(acceptor.durable().flush_mark, Lsn(1000));
}

/// A newer election's history shrinks a damaged range to what lies below
/// its term's start (all the winner's log can hold of what was committed):
/// still owed, it stays damaged until recovery fills it; above the start
/// it ends, the disk cut at the common point with the mark lowered first.
#[test]
fn a_newer_election_shrinks_a_damaged_range_to_its_start() {
    let history_from = |start: u64| {
        TermHistory(vec![
            TermEntry {
                term: 1,
                start: Lsn(100),
            },
            TermEntry {
                term: 2,
                start: Lsn(start),
            },
        ])
    };
    let durable = elected_acceptor().durable().clone();
    let mut acceptor = Acceptor::restore(durable.clone(), Lsn(600), NodeId(1));
    acceptor.note_damage(Lsn(1000));
    let actions = acceptor.handle(
        Sender::Proposer,
        &Request::Elected {
            term: 2,
            history: history_from(900),
        },
    );
    assert_eq!(actions.truncate, Some(Lsn(600)));
    assert_eq!(
        actions.persist_before_cut.map(|d| (d.term, d.flush_mark)),
        Some((1, Lsn(900)))
    );
    assert_eq!(actions.persist.map(|d| d.flush_mark), Some(Lsn(900)));
    assert_eq!(acceptor.damage(), Some((Lsn(600), Lsn(900))));
    assert_eq!(acceptor.recovery_needed(), Some((Lsn(600), Lsn(900))));
    let vote = acceptor.handle(Sender::Proposer, &Request::Vote { term: 3 });
    assert!(matches!(vote.reply, Some(Response::Refused { .. })));
    // Recovery's bytes end it.
    acceptor.handle(
        Sender::Local,
        &Request::Append {
            term: 2,
            begin: Lsn(600),
            len: 300,
        },
    );
    let ticket = acceptor.begin_flush();
    acceptor.flushed(ticket);
    assert_eq!(acceptor.damage(), None);

    // A term starting at the log's end owes nothing.
    let mut acceptor = Acceptor::restore(durable, Lsn(600), NodeId(1));
    acceptor.note_damage(Lsn(1000));
    let actions = acceptor.handle(
        Sender::Proposer,
        &Request::Elected {
            term: 2,
            history: history_from(600),
        },
    );
    assert_eq!(actions.truncate, Some(Lsn(600)));
    assert_eq!(
        actions.persist_before_cut.map(|d| d.flush_mark),
        Some(Lsn(600))
    );
    assert_eq!(acceptor.damage(), None);
}

/// An announcement that cuts a healthy log lowers the mark before the cut.
#[test]
fn a_cut_lowers_the_flush_mark_before_it() {
    let mut acceptor = elected_acceptor();
    let persisted = acceptor.mark_flush().expect("marked");
    assert_eq!(persisted.flush_mark, Lsn(1000));
    acceptor.handle(Sender::Proposer, &Request::Vote { term: 3 });
    let history = TermHistory(vec![
        TermEntry {
            term: 1,
            start: Lsn(100),
        },
        TermEntry {
            term: 3,
            start: Lsn(800),
        },
    ]);
    let actions = acceptor.handle(Sender::Proposer, &Request::Elected { term: 3, history });
    assert_eq!(actions.truncate, Some(Lsn(800)));
    assert_eq!(
        actions.persist_before_cut.map(|d| d.flush_mark),
        Some(Lsn(800))
    );
}
