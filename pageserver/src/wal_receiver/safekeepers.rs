//! The safekeepers as a WAL source: follows a timeline's committed WAL
//! on them.
//!
//! It asks every safekeeper for its status and streams from the one with
//! the highest commit LSN, starting at the end of the last record it
//! ingested (a record boundary), so a switch resumes exactly where it left
//! off. Safekeepers send only committed WAL. It switches when the stream
//! fails (the safekeeper died) or stalls while another safekeeper has
//! committed more (a stream that is merely idle is kept), and reports the
//! timeline's durable LSN to every safekeeper as it moves, so they can
//! remove WAL the layers now hold.
//!
//! Status queries and reports go over one long-lived connection per
//! safekeeper ([`StatusLinks`]), dialled again after an error (a call on a
//! reused connection the safekeeper had closed is tried once more on a
//! fresh one). Every dial is bounded by [`CONNECT_TIMEOUT`] and every
//! status answer by [`STATUS_TIMEOUT`].

use std::time::Duration;

use anyhow::{Result, bail};
use quire_postgres::Lsn;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_safekeeper::server::conn::{ConnError, FramedConn};
use quire_safekeeper::wire::{Message, TimelineKey};

use super::{FollowEnd, FollowPolicy, Progress, SessionEnd};
use crate::ingest::WalIngest;

/// How long dialling a safekeeper may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a status query or report may wait for its answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The safekeepers of a timeline.
#[derive(Clone, Debug)]
pub struct SafekeeperSource {
    /// The safekeepers' `host:port`.
    pub safekeepers: Vec<String>,
    /// The timeline on them.
    pub key: TimelineKey,
    /// The cluster's WAL segment size.
    pub segment_size: u32,
    /// The token to show the safekeepers (scope `pageserver`), when they
    /// check tokens.
    pub token: Option<String>,
    /// Whether the durable LSN is reported, which lets the safekeepers
    /// remove WAL below it. Off for a shard of a sharded tenant: a
    /// safekeeper keeps one position per timeline (the highest reported),
    /// so one shard's report would remove WAL another shard still needs.
    pub report_durable: bool,
}

/// One kept status connection per safekeeper (`None` until dialled, and
/// after an error).
pub struct StatusLinks {
    links: Vec<Option<FramedConn>>,
    /// The token shown at each dial, when the safekeepers check tokens.
    token: Option<String>,
    /// Connections dialled so far (for tests and stats).
    pub dialled: u64,
}

impl StatusLinks {
    /// No connection yet to any of `count` safekeepers; dials show
    /// `token`.
    pub fn new(count: usize, token: Option<String>) -> StatusLinks {
        StatusLinks {
            links: (0..count).map(|_| None).collect(),
            token,
            dialled: 0,
        }
    }

    async fn dial(&mut self, address: &str) -> Option<FramedConn> {
        let mut conn = FramedConn::connect_timeout(address, CONNECT_TIMEOUT)
            .await
            .ok()?;
        conn.hello(self.token.as_deref()).await.ok()?;
        self.dialled += 1;
        conn.set_read_timeout(Some(STATUS_TIMEOUT));
        Some(conn)
    }

    /// Sends `message` to safekeeper `index` (at `address`) and waits for
    /// the answer, on the kept connection or a new one; `None` if it
    /// cannot be reached or does not answer in time.
    pub async fn call(
        &mut self,
        index: usize,
        address: &str,
        message: &Message,
    ) -> Option<Message> {
        let kept = self.links.get_mut(index)?.take();
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(conn) => conn,
            None => self.dial(address).await?,
        };
        let mut answer = conn.call(message).await;
        if answer.is_err() && reused {
            // The safekeeper may have closed an idle connection.
            conn = self.dial(address).await?;
            answer = conn.call(message).await;
        }
        let answer = answer.ok()?;
        if let Some(link) = self.links.get_mut(index) {
            *link = Some(conn);
        }
        Some(answer)
    }

    /// The commit LSN of safekeeper `index`.
    async fn status(&mut self, index: usize, address: &str, key: TimelineKey) -> Option<Lsn> {
        match self
            .call(index, address, &Message::GetStatus { key })
            .await?
        {
            Message::Status { commit, .. } => Some(commit),
            _ => None,
        }
    }
}

/// The safekeeper with the highest commit LSN, skipping `avoid` unless it
/// is the only one answering.
async fn most_advanced(
    links: &mut StatusLinks,
    source: &SafekeeperSource,
    avoid: Option<usize>,
) -> Option<(usize, Lsn)> {
    let mut best: Option<(usize, Lsn)> = None;
    let mut fallback = None;
    for (index, address) in source.safekeepers.iter().enumerate() {
        let Some(commit) = links.status(index, address, source.key).await else {
            continue;
        };
        if Some(index) == avoid {
            fallback = Some((index, commit));
            continue;
        }
        if best.is_none_or(|(_, c)| commit > c) {
            best = Some((index, commit));
        }
    }
    best.or(fallback)
}

async fn report_persisted(links: &mut StatusLinks, source: &SafekeeperSource, lsn: Lsn) {
    let report = Message::ReportPersisted {
        key: source.key,
        lsn,
    };
    for (index, address) in source.safekeepers.iter().enumerate() {
        let _ = links.call(index, address, &report).await;
    }
}

/// Following the safekeepers: the kept status links and the safekeeper
/// to avoid at the next choice (the one whose stream was just lost).
pub(crate) struct Follower<'a> {
    source: &'a SafekeeperSource,
    pub(crate) links: StatusLinks,
    avoid: Option<usize>,
}

impl<'a> Follower<'a> {
    pub(crate) fn new(source: &'a SafekeeperSource) -> Follower<'a> {
        Follower {
            source,
            links: StatusLinks::new(source.safekeepers.len(), source.token.clone()),
            avoid: None,
        }
    }

    /// One stream from the most advanced safekeeper, until `end`, a
    /// failure, or a stall while another one is further ahead.
    pub(crate) async fn session(
        &mut self,
        ingest: &mut WalIngest,
        progress: &mut Progress,
        end: FollowEnd,
        policy: &FollowPolicy,
    ) -> Result<SessionEnd> {
        let source = self.source;
        let Some((index, _)) = most_advanced(&mut self.links, source, self.avoid).await else {
            return Ok(SessionEnd::Lost("no safekeeper answers".into()));
        };
        // A session ends only when lost: the next choice avoids this one.
        self.avoid = Some(index);
        let Some(address) = source.safekeepers.get(index) else {
            return Ok(SessionEnd::Lost("no such safekeeper".into()));
        };
        let dialled = async {
            let mut conn = FramedConn::connect_timeout(address, policy.connect_timeout).await?;
            conn.hello(source.token.as_deref()).await?;
            Ok::<_, ConnError>(conn)
        };
        let mut conn = match dialled.await {
            Ok(conn) => conn,
            Err(e) => return Ok(SessionEnd::Lost(format!("{address}: {e}"))),
        };
        progress.stats.connections += 1;
        progress.gauges.connections.set(progress.stats.connections);
        conn.set_read_timeout(Some(policy.switch_after));
        let stream = Message::StreamWal {
            key: source.key,
            from: progress.resume,
        };
        if let Err(e) = conn.send(&stream).await {
            return Ok(SessionEnd::Lost(format!("{address}: {e}")));
        }
        let mut decoder = WalStreamDecoder::new(progress.resume, source.segment_size);
        let mut fed = progress.resume;
        loop {
            let message = match conn.receive().await {
                Ok(message) => message,
                Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                    // Silent: idle, or stuck behind the others? Stay unless
                    // another safekeeper has committed more than we have.
                    progress.maybe_flush(ingest, policy, false).await?;
                    self.report(ingest, progress, fed).await;
                    match most_advanced(&mut self.links, source, Some(index)).await {
                        Some((other, commit)) if other != index && commit > fed => {
                            return Ok(SessionEnd::Lost(format!("{address} stalled")));
                        }
                        _ => continue,
                    }
                }
                Err(e) => return Ok(SessionEnd::Lost(format!("{address}: {e}"))),
            };
            match message {
                Message::Wal { begin, bytes } if begin == fed => {
                    progress.stats.bytes += bytes.len() as u64;
                    progress.gauges.received(bytes.len());
                    progress.flowed = true;
                    fed = Lsn(fed.0 + bytes.len() as u64);
                    progress.gauges.saw_end(fed);
                    decoder.feed(&bytes);
                    if progress
                        .ingest_decoded(ingest, &mut decoder, end, address)
                        .await?
                    {
                        return Ok(SessionEnd::Reached);
                    }
                }
                Message::Wal { begin, .. } => {
                    bail!("{address} sent WAL at {begin}, expected {fed}");
                }
                Message::Commit { lsn, .. } => progress.gauges.saw_end(lsn),
                Message::Error { message } => {
                    return Ok(SessionEnd::Lost(format!("{address}: {message}")));
                }
                other => bail!("{address} answered a WAL stream with {other:?}"),
            }
            progress.maybe_flush(ingest, policy, false).await?;
            self.report(ingest, progress, fed).await;
        }
    }

    /// Reports the durable LSN to every safekeeper when it moved.
    async fn report(&mut self, ingest: &WalIngest, progress: &mut Progress, received: Lsn) {
        let persisted = progress.durable(ingest.timeline(), received);
        if self.source.report_durable && persisted > progress.reported {
            progress.reported = persisted;
            report_persisted(&mut self.links, self.source, persisted).await;
            progress.stats.persisted_reports += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use quire_io::net::TcpListener;
    use quire_postgres::Lsn;
    use quire_safekeeper::server::conn::FramedConn;
    use quire_safekeeper::wire::{Message, TimelineKey};

    use super::StatusLinks;

    const KEY: TimelineKey = TimelineKey {
        tenant: [1; 16],
        timeline: [2; 16],
    };

    /// A safekeeper stand-in answering status queries; it closes each
    /// connection after `per_connection` answers.
    async fn fake_safekeeper(listener: TcpListener, accepted: Rc<Cell<u32>>, per_connection: u32) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.set(accepted.get() + 1);
            let mut conn = FramedConn::new(stream);
            for _ in 0..per_connection {
                let Ok(Message::GetStatus { .. }) = conn.receive().await else {
                    break;
                };
                let status = Message::Status {
                    term: 1,
                    flush: Lsn(64),
                    commit: Lsn(64),
                    history: quire_safekeeper::history::TermHistory(Vec::new()),
                    health: quire_safekeeper::wire::StorageHealth::default(),
                };
                if conn.send(&status).await.is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn status_queries_reuse_one_connection_and_redial_after_a_close() {
        let (accepted, dialled, answers) =
            quire_io::run_local(&quire_io::LocalConfig::default(), || async {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("address").to_string();
                let accepted = Rc::new(Cell::new(0));
                let server =
                    quire_io::spawn_local(fake_safekeeper(listener, Rc::clone(&accepted), 5));
                let mut links = StatusLinks::new(1, None);
                let mut answers = 0;
                for _ in 0..12 {
                    if links.status(0, &address, KEY).await == Some(Lsn(64)) {
                        answers += 1;
                    }
                }
                drop(server);
                (accepted.get(), links.dialled, answers)
            })
            .expect("executor");
        assert_eq!(answers, 12, "every query answered");
        // 12 queries, 5 per connection: 3 connections, not 12.
        assert_eq!(accepted, 3);
        assert_eq!(dialled, 3);
    }
}
