//! A timeline's term work: one task per timeline (never per connection or
//! per announcement) that first repairs a damaged log from peers, then, for each term whose compute was announced,
//! fills the acceptor's gap from its peers and streams from the compute,
//! until the term is over; then it waits, without polling, for the next
//! announcement.
//!
//! Because one task runs the terms one after another, a client announcing
//! term after term cannot multiply the recovery and streaming tasks; an
//! old term's work ends within its connection timeouts once the term has
//! moved on.

use std::rc::Rc;
use std::time::Duration;

use crate::history::Term;
use crate::server::peers;
use crate::server::replication;
use crate::server::timeline::Timeline;

/// The pause between attempts to stream from a compute that failed.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Runs the timeline's terms forever (see the module doc).
/// `peer_token` is what recovery shows the peers (the timeline's other
/// members) when they check tokens.
pub async fn drive_terms(
    timeline: Rc<Timeline>,
    peer_token: Rc<Option<String>>,
    user: String,
    name: String,
) {
    // A damaged log is repaired before any term's work: streaming waits
    // for it anyway, and an announcement that replaces the log ends it.
    peers::repair(Rc::clone(&timeline), Rc::clone(&peer_token)).await;
    let mut done: Option<(Term, String)> = None;
    loop {
        let seen = timeline.progress();
        match timeline.compute() {
            Some(current) if done.as_ref() != Some(&current) => {
                let (term, compute) = current.clone();
                futures::future::join(
                    peers::recover(Rc::clone(&timeline), term, Rc::clone(&peer_token)),
                    follow_compute(&timeline, term, &compute, &user, &name),
                )
                .await;
                done = Some(current);
            }
            _ => timeline.changed(seen).await,
        }
    }
}

/// Streams from the term's compute, reconnecting after failures, until
/// the term is over.
async fn follow_compute(
    timeline: &Rc<Timeline>,
    term: Term,
    compute: &str,
    user: &str,
    name: &str,
) {
    let mut failures = 0u64;
    loop {
        let still = timeline
            .compute()
            .is_some_and(|(t, c)| t == term && c == compute);
        if !still {
            return;
        }
        match replication::stream(
            Rc::clone(timeline),
            term,
            compute.to_owned(),
            user.to_owned(),
            name.to_owned(),
        )
        .await
        {
            Err(replication::StreamError::TermOver(_)) => return,
            Err(e) => {
                // The first failure, then one line a minute while it lasts.
                if failures.is_multiple_of(300) {
                    eprintln!(
                        "safekeeper {name}: streaming from {compute} in term {term}: {e} (retrying every {RETRY_INTERVAL:?})"
                    );
                }
                failures += 1;
                quire_io::sleep(RETRY_INTERVAL).await;
            }
            Ok(()) => failures = 0,
        }
    }
}
