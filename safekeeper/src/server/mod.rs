//! The safekeeper server: timelines on disk, the protocol listener, and per
//! timeline the replication stream from the term's compute, peer recovery
//! and flush gossip. One executor (`quire-io`) runs it all.

pub mod auth;
pub mod conn;
pub mod peers;
pub mod replication;
pub mod timeline;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use quire_io::net::TcpListener;
use quire_postgres::Lsn;

use crate::acceptor::{Request, Response};
use crate::history::Term;
use crate::membership::{Member, Membership, MembershipError, NodeId, Sender};
use crate::server::auth::{Auth, Identity, Permit};
use crate::server::conn::{ConnError, FramedConn};
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
}

/// A running safekeeper.
pub struct Server {
    config: Config,
    peer_token: Rc<Option<String>>,
    timelines: RefCell<HashMap<TimelineKey, Rc<Timeline>>>,
    /// Requests refused for who sent them (bad tokens, wrong scopes).
    refused: Cell<u64>,
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
        });
        for timeline in server.timelines.borrow().values() {
            server.start_gossip(timeline);
            server.start_term(timeline);
        }
        Ok(server)
    }

    /// Peer recovery and streaming from the compute of the timeline's
    /// current term.
    fn start_term(&self, timeline: &Rc<Timeline>) {
        let Some((term, compute)) = timeline.compute() else {
            return;
        };
        quire_io::spawn_local(peers::recover(
            Rc::clone(timeline),
            term,
            Rc::clone(&self.peer_token),
        ))
        .detach();
        quire_io::spawn_local(follow_compute(
            Rc::clone(timeline),
            term,
            compute,
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

    /// Accepts connections forever.
    pub async fn serve(self: Rc<Server>) -> Result<(), std::io::Error> {
        let listener = TcpListener::bind(&self.config.listen)?;
        loop {
            let (stream, _peer) = listener.accept().await?;
            let server = Rc::clone(&self);
            quire_io::spawn_local(async move {
                let _ = server.connection(FramedConn::new(stream)).await;
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
                    }),
                    Err(e) => error(e.to_string()),
                }
            }
            other => error(format!("not a request: {other:?}")),
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
        if let Ok(existing) = self.timeline(&key) {
            return if existing.system_id == system_id {
                Message::Ok
            } else {
                Message::Error {
                    message: format!("timeline {} exists for another cluster", key_name(&key)),
                }
            };
        }
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
                self.start_gossip(&timeline);
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
        // One frame carries at most 1 MiB; the requester asks again.
        let to = to.min(Lsn(from.0.saturating_add(1 << 20)));
        if !state.acceptor.can_serve(history, from, to) {
            return Message::Refused {
                term: state.acceptor.term(),
                why: format!("cannot serve {from}..{to} of that history (term {term})"),
            };
        }
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
            if let Err(e) = timeline.set_compute(term, compute) {
                return Some(Message::Error {
                    message: e.to_string(),
                });
            }
            self.start_term(&timeline);
        }
        reply.map(Message::from)
    }

    /// Sends committed WAL from `from` as it commits, and `Commit` frames.
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
            let chunk = {
                let mut state = match timeline.lock().await {
                    Ok(state) => state,
                    Err(e) => {
                        let message = e.to_string();
                        return conn.send(&Message::Error { message }).await;
                    }
                };
                let commit = state.acceptor.commit_lsn().min(state.acceptor.flush_lsn());
                if commit > sent {
                    let to = commit.min(Lsn(sent.0 + (1 << 20)));
                    match state.wal.read(sent, to).await {
                        Ok(bytes) => Some((commit, bytes)),
                        Err(e) => {
                            let message = e.to_string();
                            return conn.send(&Message::Error { message }).await;
                        }
                    }
                } else {
                    None
                }
            };
            match chunk {
                Some((commit, bytes)) => {
                    let begin = sent;
                    sent = Lsn(sent.0 + bytes.len() as u64);
                    conn.send(&Message::Wal { begin, bytes }).await?;
                    if commit > commit_sent {
                        commit_sent = commit;
                        conn.send(&Message::Commit { lsn: commit }).await?;
                    }
                }
                None => quire_io::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}

/// Streams from the term's compute, reconnecting after failures, until
/// the term is over.
async fn follow_compute(
    timeline: Rc<Timeline>,
    term: Term,
    compute: String,
    user: String,
    name: String,
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
            Rc::clone(&timeline),
            term,
            compute.clone(),
            user.clone(),
            name.clone(),
        )
        .await
        {
            Err(replication::StreamError::TermOver(_)) => return,
            Err(e) => {
                // The first failure, then one line a minute while it lasts.
                if failures.is_multiple_of(300) {
                    eprintln!(
                        "safekeeper {name}: streaming from {compute} in term {term}: {e} (retrying every 200 ms)"
                    );
                }
                failures += 1;
                quire_io::sleep(Duration::from_millis(200)).await;
            }
            Ok(()) => failures = 0,
        }
    }
}

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
