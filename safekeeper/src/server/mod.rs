//! The safekeeper server: timelines on disk, the protocol listener, and per
//! timeline the replication stream from the term's compute, peer recovery
//! and flush gossip. One executor (`quire-io`) runs it all.
//!
//! Everything a client can make it hold is bounded (`limits`): connections
//! at once (more get an `Error` frame and are closed), each connection's
//! time and read buffer (`conn`), the timelines it keeps; tasks are one
//! per connection and, per timeline, one gossip task and one term driver
//! (`driver`). WAL streams wait on the timeline's change signal (`notify`)
//! rather than polling, and fsyncs run off the executor (`blocking`).

pub mod auth;
pub mod blocking;
pub mod conn;
pub mod driver;
pub mod limits;
pub mod notify;
pub mod peers;
pub mod replication;
pub mod timeline;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::pin;
use std::rc::Rc;

use futures::future::{Either, select};
use quire_io::net::TcpListener;
use quire_postgres::Lsn;

use crate::acceptor::{Request, Response};
use crate::history::Term;
use crate::membership::{Member, Membership, MembershipError, NodeId, Sender};
use crate::server::auth::{Auth, Identity, Permit};
use crate::server::conn::{ConnError, FramedConn};
use crate::server::limits::{Limits, Slots};
use crate::server::peers::Peer;
use crate::server::timeline::{Timeline, TimelineError, key_name};
use crate::wire::{Message, TimelineKey};

/// How a safekeeper runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Its id (1, 2, 3); its standby name is `sk<id>`.
    pub id: u32,
    /// Where it listens (`host:port`).
    pub listen: String,
    /// Where its timelines live.
    pub data: PathBuf,
    /// The other safekeepers.
    pub peers: Vec<Peer>,
    /// The Postgres user for replication connections.
    pub pg_user: String,
    /// Whether and how connections authenticate.
    pub auth: Auth,
    /// The token this safekeeper shows its peers (scope `safekeeper_peer`,
    /// naming its id), when they check tokens.
    pub peer_token: Option<String>,
    /// What it bounds.
    pub limits: Limits,
}

/// A running safekeeper.
pub struct Server {
    config: Config,
    peer_token: Rc<Option<String>>,
    timelines: RefCell<HashMap<TimelineKey, Rc<Timeline>>>,
    /// Requests refused for who sent them (bad tokens, wrong scopes).
    refused: Cell<u64>,
    /// Timelines whose creation is under way (their files being written).
    creating: RefCell<HashSet<TimelineKey>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The id a tenant or timeline directory's name spells (32 hex digits);
/// any other name is not ours: skipped with a warning, never a panic.
fn parse_key(name: &std::ffi::OsStr) -> Option<[u8; 16]> {
    let id = name.to_str().and_then(crate::wire::parse_id);
    if id.is_none() {
        eprintln!(
            "safekeeper: skipping {} in the data directory: not a 32-hex-digit id",
            name.display()
        );
    }
    id
}

impl Server {
    /// Opens every timeline under the data directory.
    pub async fn open(config: Config) -> Result<Rc<Server>, TimelineError> {
        let error = |what: String| TimelineError {
            key: "-".into(),
            what,
        };
        std::fs::create_dir_all(&config.data).map_err(|e| error(e.to_string()))?;
        let mut timelines = HashMap::new();
        for tenant in std::fs::read_dir(&config.data).map_err(|e| error(e.to_string()))? {
            let tenant = tenant.map_err(|e| error(e.to_string()))?;
            let Some(tenant_id) = parse_key(&tenant.file_name()) else {
                continue;
            };
            for timeline in std::fs::read_dir(tenant.path()).map_err(|e| error(e.to_string()))? {
                let timeline = timeline.map_err(|e| error(e.to_string()))?;
                let Some(timeline_id) = parse_key(&timeline.file_name()) else {
                    continue;
                };
                let key = TimelineKey {
                    tenant: tenant_id,
                    timeline: timeline_id,
                };
                let opened = Timeline::open(&config.data, NodeId(config.id), key).await?;
                timelines.insert(key, Rc::new(opened));
            }
        }
        let peer_token = Rc::new(config.peer_token.clone());
        let server = Rc::new(Server {
            config,
            peer_token,
            timelines: RefCell::new(timelines),
            refused: Cell::new(0),
            creating: RefCell::new(HashSet::new()),
        });
        for timeline in server.timelines.borrow().values() {
            server.start_tasks(timeline);
        }
        Ok(server)
    }

    /// A timeline's own tasks, started once when it is opened or created:
    /// flush gossip, and the term driver (peer recovery and streaming
    /// from each announced term's compute).
    fn start_tasks(&self, timeline: &Rc<Timeline>) {
        self.start_gossip(timeline);
        quire_io::spawn_local(driver::drive_terms(
            Rc::clone(timeline),
            Rc::clone(&self.peer_token),
            self.config.pg_user.clone(),
            format!("sk{}", self.config.id),
        ))
        .detach();
    }

    fn start_gossip(&self, timeline: &Rc<Timeline>) {
        quire_io::spawn_local(peers::gossip(
            Rc::clone(timeline),
            Rc::clone(&self.peer_token),
        ))
        .detach();
    }

    fn timeline(&self, key: &TimelineKey) -> Result<Rc<Timeline>, String> {
        self.timelines
            .borrow()
            .get(key)
            .cloned()
            .ok_or_else(|| format!("no timeline {}", key_name(key)))
    }

    /// Accepts connections forever (an error only if it cannot listen):
    /// at most `max_connections` at once, each bounded by the deadlines;
    /// one past the limit is told so and closed.
    pub async fn serve(self: Rc<Server>) -> Result<(), std::io::Error> {
        let listener = TcpListener::bind(&self.config.listen)?;
        let limits = self.config.limits;
        let slots = Slots::new(limits.max_connections);
        let mut failures = 0u64;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of descriptors or a transient failure: the
                    // listener stays; say so now and then.
                    if failures.is_multiple_of(100) {
                        eprintln!(
                            "safekeeper sk{}: accept: {e} (retrying every {:?})",
                            self.config.id,
                            limits::ACCEPT_RETRY
                        );
                    }
                    failures += 1;
                    quire_io::sleep(limits::ACCEPT_RETRY).await;
                    continue;
                }
            };
            let Some(slot) = slots.take() else {
                limits::refuse(stream, limits.max_connections).await;
                continue;
            };
            let server = Rc::clone(&self);
            quire_io::spawn_local(async move {
                let _slot = slot;
                let conn = FramedConn::accepted(stream, limits.deadlines);
                let _ = server.connection(conn).await;
            })
            .detach();
        }
    }

    async fn connection(self: Rc<Server>, mut conn: FramedConn) -> Result<(), ConnError> {
        let mut identity = self.config.auth.initial();
        loop {
            let request = conn.receive().await?;
            if let Message::Hello { token } = &request {
                match self.config.auth.hello(token, unix_now()) {
                    Ok(proved) => {
                        identity = proved;
                        conn.send(&Message::Ok).await?;
                        continue;
                    }
                    Err(why) => {
                        self.refuse(&why);
                        conn.send(&Message::Error { message: why }).await?;
                        return Ok(());
                    }
                }
            }
            let permit = match auth::permit(&identity, &request) {
                Ok(permit) => permit,
                Err(why) => {
                    self.refuse(&why);
                    conn.send(&Message::Error { message: why }).await?;
                    if identity == Identity::Unauthenticated {
                        return Ok(());
                    }
                    continue;
                }
            };
            if let Message::StreamWal { key, from } = request {
                return self.stream_wal(conn, key, from).await;
            }
            if let Some(answer) = self.answer(request, permit, &identity).await {
                conn.send(&answer).await?;
            }
        }
    }

    /// Counts a refused request; logs the first and then every power of
    /// two, so a flood cannot fill the log.
    fn refuse(&self, why: &str) {
        let count = self.refused.get() + 1;
        self.refused.set(count);
        if count.is_power_of_two() {
            eprintln!("safekeeper: refused a request ({count} so far): {why}");
        }
    }

    async fn answer(
        self: &Rc<Server>,
        request: Message,
        permit: Permit,
        identity: &Identity,
    ) -> Option<Message> {
        let error = |message: String| Some(Message::Error { message });
        let sender = match permit {
            Permit::As(sender) => sender,
            Permit::Plain => Sender::Proposer,
        };
        match request {
            Message::CreateTimeline {
                key,
                wal_start,
                segment_size,
                system_id,
                members,
            } => Some(
                self.create_timeline(key, wal_start, segment_size, system_id, members)
                    .await,
            ),
            Message::Vote { key, term } => {
                let timeline = match self.timeline(&key) {
                    Ok(t) => t,
                    Err(e) => return error(e),
                };
                match timeline.handle(sender, &Request::Vote { term }, &[]).await {
                    Ok(Some(reply)) => Some(reply.into()),
                    Ok(None) => error("no answer to a vote".into()),
                    Err(e) => error(e.to_string()),
                }
            }
            Message::Elected {
                key,
                term,
                history,
                compute,
            } => self.elected(key, term, history, compute).await,
            Message::Fetch {
                key,
                term,
                history,
                from,
                to,
            } => {
                // A token naming a safekeeper must name a member.
                if let Some(peer) = auth::peer_of(identity)
                    && let Ok(timeline) = self.timeline(&key)
                    && !timeline.is_member(peer).await
                {
                    self.refuse("a fetch from a safekeeper that is not a member");
                    return error(format!(
                        "safekeeper {peer} is not a member of this timeline"
                    ));
                }
                Some(self.fetch(key, term, &history, from, to).await)
            }
            Message::PeerFlush {
                key,
                peer,
                term,
                flush,
            } => {
                if let Ok(timeline) = self.timeline(&key) {
                    // The sender is the token's node, or without
                    // authentication who the report says it is; the
                    // acceptor refuses ids outside the member set and a
                    // report for another id than the sender's.
                    let _ = timeline
                        .handle(sender, &Request::PeerFlush { peer, term, flush }, &[])
                        .await;
                }
                None
            }
            Message::ReportPersisted { key, lsn } => match self.timeline(&key) {
                Ok(timeline) => match timeline.remove_persisted(lsn).await {
                    Ok(()) => Some(Message::Ok),
                    Err(e) => error(e.to_string()),
                },
                Err(e) => error(e),
            },
            Message::GetStatus { key } => {
                let timeline = match self.timeline(&key) {
                    Ok(t) => t,
                    Err(e) => return error(e),
                };
                match timeline.status().await {
                    Ok((term, flush, commit, history)) => Some(Message::Status {
                        term,
                        flush,
                        commit,
                        history,
                        health: timeline.health().await,
                    }),
                    Err(e) => error(e.to_string()),
                }
            }
            other => error(format!("not a request: {}", conn::kind(&other))),
        }
    }

    async fn create_timeline(
        self: &Rc<Server>,
        key: TimelineKey,
        wal_start: Lsn,
        segment_size: u32,
        system_id: u64,
        members: Vec<Member>,
    ) -> Message {
        let error = |message: String| Message::Error { message };
        if let Ok(existing) = self.timeline(&key) {
            return if existing.system_id == system_id {
                Message::Ok
            } else {
                error(format!(
                    "timeline {} exists for another cluster",
                    key_name(&key)
                ))
            };
        }
        let max = self.config.limits.max_timelines;
        if self.timelines.borrow().len() + self.creating.borrow().len() >= max {
            return error(format!("too many timelines ({max})"));
        }
        if !self.creating.borrow_mut().insert(key) {
            return error(format!(
                "timeline {} is being created; ask again",
                key_name(&key)
            ));
        }
        let created = self
            .create_new_timeline(key, wal_start, segment_size, system_id, members)
            .await;
        self.creating.borrow_mut().remove(&key);
        created
    }

    async fn create_new_timeline(
        self: &Rc<Server>,
        key: TimelineKey,
        wal_start: Lsn,
        segment_size: u32,
        system_id: u64,
        members: Vec<Member>,
    ) -> Message {
        // The set the creator names, or this safekeeper and its peers.
        let members = if members.is_empty() {
            self.config_members()
        } else {
            Membership::new(members)
                .and_then(|set| set.require(NodeId(self.config.id)).map(|()| set))
        };
        let members = match members {
            Ok(members) => members,
            Err(e) => {
                return Message::Error {
                    message: format!("member set: {e}"),
                };
            }
        };
        eprintln!(
            "safekeeper {}: creating timeline {} kept by {members}",
            self.config.id,
            key_name(&key)
        );
        match Timeline::create(
            &self.config.data,
            NodeId(self.config.id),
            key,
            wal_start,
            segment_size,
            system_id,
            members,
        )
        .await
        {
            Ok(timeline) => {
                let timeline = Rc::new(timeline);
                self.start_tasks(&timeline);
                self.timelines.borrow_mut().insert(key, timeline);
                Message::Ok
            }
            Err(e) => Message::Error {
                message: e.to_string(),
            },
        }
    }

    /// The member set a new timeline gets: this safekeeper and its
    /// configured peers.
    fn config_members(&self) -> Result<Membership, MembershipError> {
        let mut members = vec![Member {
            id: NodeId(self.config.id),
            address: self.config.listen.clone(),
        }];
        members.extend(self.config.peers.iter().map(|peer| Member {
            id: NodeId(peer.id),
            address: peer.address.clone(),
        }));
        Membership::new(members)
    }

    /// Peer recovery's source side: the bytes if our log agrees.
    async fn fetch(
        &self,
        key: TimelineKey,
        term: Term,
        history: &crate::history::TermHistory,
        from: Lsn,
        to: Lsn,
    ) -> Message {
        let error = |message: String| Message::Error { message };
        let timeline = match self.timeline(&key) {
            Ok(t) => t,
            Err(e) => return error(e),
        };
        let mut state = match timeline.lock().await {
            Ok(state) => state,
            Err(e) => return error(e.to_string()),
        };
        // One frame carries at most 1 MiB; the requester asks again. What
        // this log holds of the range is served, even when it is not all.
        let to = to.min(Lsn(from.0.saturating_add(1 << 20)));
        let Some(to) = state
            .acceptor
            .servable_end(history, from, to, state.wal.first_kept())
        else {
            return Message::Refused {
                term: state.acceptor.term(),
                why: format!("cannot serve {from}..{to} of that history (term {term})"),
            };
        };
        match state.wal.read(from, to).await {
            Ok(bytes) => Message::Wal { begin: from, bytes },
            Err(e) => error(e.to_string()),
        }
    }

    async fn elected(
        self: &Rc<Server>,
        key: TimelineKey,
        term: Term,
        history: crate::history::TermHistory,
        compute: String,
    ) -> Option<Message> {
        let timeline = match self.timeline(&key) {
            Ok(t) => t,
            Err(message) => return Some(Message::Error { message }),
        };
        let reply = match timeline
            .handle(Sender::Proposer, &Request::Elected { term, history }, &[])
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                return Some(Message::Error {
                    message: e.to_string(),
                });
            }
        };
        if let Some(Response::Flushed { term: t, .. }) = &reply
            && *t == term
            && timeline
                .compute()
                .is_none_or(|(old, c)| old != term || c != compute)
        {
            // The timeline's term driver wakes on the change.
            if let Err(e) = timeline.set_compute(term, compute).await {
                return Some(Message::Error {
                    message: e.to_string(),
                });
            }
        }
        reply.map(Message::from)
    }

    /// Sends committed WAL from `from` as it commits, and `Commit` frames;
    /// between them it waits for the timeline's flush or commit LSN to move
    /// (no polling), and ends when the client closes, sends anything, or
    /// stops reading (the write timeout).
    async fn stream_wal(
        self: Rc<Server>,
        mut conn: FramedConn,
        key: TimelineKey,
        from: Lsn,
    ) -> Result<(), ConnError> {
        let timeline = match self.timeline(&key) {
            Ok(t) => t,
            Err(message) => return conn.send(&Message::Error { message }).await,
        };
        let mut sent = from;
        let mut commit_sent = Lsn(0);
        loop {
            let (chunk, seen) = {
                let mut state = match timeline.lock().await {
                    Ok(state) => state,
                    Err(e) => {
                        let message = e.to_string();
                        return conn.send(&Message::Error { message }).await;
                    }
                };
                // Read under the lock: a change after this wakes the wait.
                let seen = timeline.progress();
                let commit = state.acceptor.commit_lsn().min(state.acceptor.flush_lsn());
                if commit > sent {
                    let to = commit.min(Lsn(sent.0.saturating_add(STREAM_CHUNK)));
                    match state.wal.read(sent, to).await {
                        Ok(bytes) => (Some((commit, bytes)), seen),
                        Err(e) => {
                            let message = e.to_string();
                            return conn.send(&Message::Error { message }).await;
                        }
                    }
                } else {
                    (None, seen)
                }
            };
            let Some((commit, bytes)) = chunk else {
                let input = {
                    let changed = pin!(timeline.changed(seen));
                    let input = pin!(conn.receive_unbounded());
                    match select(changed, input).await {
                        Either::Left(((), _)) => None,
                        Either::Right((input, _)) => Some(input),
                    }
                };
                match input {
                    None => continue,
                    Some(Ok(request)) => {
                        let message =
                            format!("a WAL stream takes no requests ({})", conn::kind(&request));
                        return conn.send(&Message::Error { message }).await;
                    }
                    Some(Err(e)) => return Err(e),
                }
            };
            let begin = sent;
            sent = Lsn(sent.0 + bytes.len() as u64);
            conn.send(&Message::Wal { begin, bytes }).await?;
            if commit > commit_sent {
                commit_sent = commit;
                conn.send(&Message::Commit { lsn: commit }).await?;
            }
        }
    }
}

/// WAL bytes per `Wal` frame of a stream.
const STREAM_CHUNK: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::parse_key;
    use std::ffi::OsStr;

    #[test]
    fn directory_names_parse_or_are_skipped() {
        assert_eq!(parse_key(OsStr::new(&"0a".repeat(16))), Some([0x0A; 16]));
        // 32 bytes whose 2-byte steps split a character.
        let split = format!("a{}a", "é".repeat(15));
        assert_eq!(split.len(), 32);
        assert_eq!(parse_key(OsStr::new(&split)), None);
        for name in ["+1".repeat(16), "0".repeat(31), "lost+found".into()] {
            assert_eq!(parse_key(OsStr::new(&name)), None, "{name}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            assert_eq!(parse_key(OsStr::from_bytes(&[0xFF; 32])), None);
        }
    }
}
