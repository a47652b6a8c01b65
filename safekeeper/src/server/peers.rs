//! Talking to the other safekeepers: peer recovery (fetching the WAL an
//! acceptor lacks below its term's start from a peer whose log agrees),
//! repair (fetching a damaged range the same way, checked before it is
//! written: `Timeline::repair`) and flush gossip (each acceptor tells its peers its flush LSN, from which
//! every acceptor derives the commit LSN). The peers are the timeline's
//! other members, at the addresses its member set records; connections to
//! them show this safekeeper's token when it has one.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use quire_postgres::Lsn;

use crate::acceptor::Request;
use crate::history::Term;
use crate::membership::{Member, NodeId, Sender};
use crate::server::conn::FramedConn;
use crate::server::timeline::{RepairStep, Timeline, TimelineError};
use crate::wire::Message;

/// Bytes asked for per fetch.
const FETCH_CHUNK: u64 = 1 << 20;
/// How often flush positions go to peers.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(20);

/// A peer safekeeper, as configured (a new timeline's member set is this
/// safekeeper and its configured peers).
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its id.
    pub id: u32,
    /// Its `host:port`.
    pub address: String,
}

/// Fills the acceptor's WAL up to its term's start from peers; returns
/// when nothing is missing or the term moved on.
pub async fn recover(timeline: Rc<Timeline>, term: Term, token: Rc<Option<String>>) {
    let mut next = 0usize;
    loop {
        let peers = timeline.peers().await;
        let need = match timeline.lock().await {
            Ok(state) if state.acceptor.term() == term => state
                .acceptor
                .recovery_needed()
                .map(|range| (range, state.acceptor.durable().history.clone())),
            _ => return,
        };
        let Some(((from, to), history)) = need else {
            return;
        };
        if peers.is_empty() {
            return;
        }
        let peer = &peers[next % peers.len()];
        next += 1;
        let to = to.min(Lsn(from.0 + FETCH_CHUNK));
        let fetch = Message::Fetch {
            key: timeline.key,
            term,
            history,
            from,
            to,
        };
        let answer = match FramedConn::connect_as(&peer.address, token.as_deref()).await {
            Ok(mut conn) => conn.call(&fetch).await.ok(),
            Err(_) => None,
        };
        match answer {
            Some(Message::Wal { begin, bytes }) if begin == from && !bytes.is_empty() => {
                let append = Request::Append {
                    term,
                    begin,
                    len: bytes.len() as u64,
                };
                let applied: Result<_, TimelineError> = async {
                    timeline.handle(Sender::Local, &append, &bytes).await?;
                    timeline.flush().await
                }
                .await;
                if applied.is_err() {
                    return;
                }
            }
            _ => quire_io::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Repairs the timeline's damaged range (if any) from its peers, in turn,
/// until none is left or the timeline stops; logs, now and then, while no
/// peer can serve it.
pub async fn repair(timeline: Rc<Timeline>, token: Rc<Option<String>>) {
    let mut next = 0usize;
    let mut failures = 0u64;
    loop {
        let need = match timeline.lock().await {
            Ok(state) => state.acceptor.damage().map(|range| {
                (
                    range,
                    state.acceptor.term(),
                    state.acceptor.durable().history.clone(),
                )
            }),
            Err(_) => return,
        };
        let Some(((from, until), term, history)) = need else {
            return;
        };
        let peers = timeline.peers().await;
        let Some(peer) = peers.get(next % peers.len().max(1)) else {
            return;
        };
        next += 1;
        let fetch = Message::Fetch {
            key: timeline.key,
            term,
            history,
            from,
            to: until.min(Lsn(from.0.saturating_add(FETCH_CHUNK))),
        };
        let answer = match FramedConn::connect_as(&peer.address, token.as_deref()).await {
            Ok(mut conn) => conn.call(&fetch).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let why = match answer {
            Ok(Message::Wal { begin, bytes }) if begin == from && !bytes.is_empty() => {
                match timeline.repair(begin, &bytes, &peer.address).await {
                    Ok(RepairStep::Done | RepairStep::More) => {
                        failures = 0;
                        continue;
                    }
                    Ok(RepairStep::Refused(why)) => why,
                    Err(_) => return,
                }
            }
            Ok(Message::Refused { why, .. }) => why,
            Ok(other) => format!("answered {other:?}"),
            Err(e) => e,
        };
        if failures.is_multiple_of(100) {
            eprintln!(
                "safekeeper: timeline {}: repairing {from}..{until}: peer {} cannot serve it ({why}); trying the peers in turn",
                timeline.key, peer.id
            );
        }
        failures += 1;
        quire_io::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends this acceptor's flush LSN to every peer, forever, over kept
/// connections (reopened when they fail); persists the flush mark when due.
pub async fn gossip(timeline: Rc<Timeline>, token: Rc<Option<String>>) {
    let me = timeline.me();
    let mut conns: HashMap<NodeId, FramedConn> = HashMap::new();
    let mut last_sent: Option<(Term, Lsn)> = None;
    let mut rounds = 0u64;
    loop {
        quire_io::sleep(GOSSIP_INTERVAL).await;
        rounds += 1;
        if timeline.mark_if_due().await.is_err() {
            return;
        }
        let Ok((term, flush, _, history)) = timeline.status().await else {
            return;
        };
        if history.last_term() != term || term == 0 {
            continue;
        }
        // Unchanged positions go out only now and then (a peer restarted).
        if last_sent == Some((term, flush)) && !rounds.is_multiple_of(25) {
            continue;
        }
        last_sent = Some((term, flush));
        let message = Message::PeerFlush {
            key: timeline.key,
            peer: me.0,
            term,
            flush,
        };
        let peers: Vec<Member> = timeline.peers().await;
        conns.retain(|id, _| peers.iter().any(|p| p.id == *id));
        for peer in &peers {
            if !conns.contains_key(&peer.id)
                && let Ok(conn) = FramedConn::connect_as(&peer.address, token.as_deref()).await
            {
                conns.insert(peer.id, conn);
            }
            if let Some(conn) = conns.get_mut(&peer.id)
                && conn.send(&message).await.is_err()
            {
                conns.remove(&peer.id);
            }
        }
    }
}
