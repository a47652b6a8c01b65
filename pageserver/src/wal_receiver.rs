//! The pageserver's WAL receiver: follows a timeline's committed WAL on the
//! safekeepers and ingests it.
//!
//! It asks every safekeeper for its status and streams from the one with
//! the highest commit LSN, starting at the end of the last record it
//! ingested (a record boundary), so a switch resumes exactly where it left
//! off. Safekeepers send only committed WAL. It switches when the stream
//! fails (the safekeeper died) or stalls while another safekeeper has
//! committed more, and reports the timeline's disk-consistent LSN to every
//! safekeeper as it moves, so they can remove WAL the layers now hold.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use quire_postgres::Lsn;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_safekeeper::server::conn::FramedConn;
use quire_safekeeper::wire::{Message, TimelineKey};

use crate::ingest::WalIngest;

/// How long a stream may stay silent before the receiver looks for a
/// safekeeper that is further ahead.
const STALL: Duration = Duration::from_millis(500);

/// Where the WAL comes from.
#[derive(Clone, Debug)]
pub struct WalSource {
    /// The safekeepers' `host:port`.
    pub safekeepers: Vec<String>,
    /// The timeline on them.
    pub key: TimelineKey,
    /// The cluster's WAL segment size.
    pub segment_size: u32,
    /// The token to show the safekeepers (scope `pageserver`), when they
    /// check tokens.
    pub token: Option<String>,
}

/// What following did.
#[derive(Clone, Debug, Default)]
pub struct ReceiveStats {
    /// Safekeepers connected to (a switch counts once more).
    pub connections: u64,
    /// WAL bytes received.
    pub bytes: u64,
    /// Times the disk-consistent LSN was reported to the safekeepers.
    pub persisted_reports: u64,
}

async fn status(address: &str, token: Option<&str>, key: TimelineKey) -> Option<Lsn> {
    let mut conn = FramedConn::connect_as(address, token).await.ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2)));
    match conn.call(&Message::GetStatus { key }).await.ok()? {
        Message::Status { commit, .. } => Some(commit),
        _ => None,
    }
}

/// The safekeeper with the highest commit LSN, skipping `avoid` unless it
/// is the only one answering.
async fn most_advanced(source: &WalSource, avoid: Option<usize>) -> Option<(usize, Lsn)> {
    let mut best: Option<(usize, Lsn)> = None;
    let mut fallback = None;
    for (index, address) in source.safekeepers.iter().enumerate() {
        let Some(commit) = status(address, source.token.as_deref(), source.key).await else {
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

async fn report_persisted(source: &WalSource, lsn: Lsn) {
    for address in &source.safekeepers {
        if let Ok(mut conn) = FramedConn::connect_as(address, source.token.as_deref()).await {
            conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn
                .call(&Message::ReportPersisted {
                    key: source.key,
                    lsn,
                })
                .await;
        }
    }
}

/// Ingests committed WAL from `start` (a record start) through the record
/// that starts at `until`; returns the end of that record (rounded up to
/// 8) and what it took.
pub async fn follow(
    ingest: &mut WalIngest,
    source: &WalSource,
    start: Lsn,
    until: Lsn,
    deadline: Duration,
) -> Result<(Lsn, ReceiveStats)> {
    let began = Instant::now();
    let mut stats = ReceiveStats::default();
    let mut resume = start;
    let mut avoid = None;
    let mut reported = ingest.timeline().disk_consistent_lsn();
    loop {
        if began.elapsed() > deadline {
            bail!("WAL up to {until} did not arrive in {deadline:?} (ingested to {resume})");
        }
        let Some((index, _)) = most_advanced(source, avoid).await else {
            quire_io::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let address = &source.safekeepers[index];
        let Ok(mut conn) = FramedConn::connect_as(address, source.token.as_deref()).await else {
            avoid = Some(index);
            continue;
        };
        stats.connections += 1;
        conn.set_read_timeout(Some(STALL));
        if conn
            .send(&Message::StreamWal {
                key: source.key,
                from: resume,
            })
            .await
            .is_err()
        {
            avoid = Some(index);
            continue;
        }
        let mut decoder = WalStreamDecoder::new(resume, source.segment_size);
        let mut fed = resume;
        loop {
            // A stall or a dead safekeeper: look again.
            let Ok(message) = conn.receive().await else {
                break;
            };
            match message {
                Message::Wal { begin, bytes } if begin == fed => {
                    stats.bytes += bytes.len() as u64;
                    fed = Lsn(fed.0 + bytes.len() as u64);
                    decoder.feed(&bytes);
                    loop {
                        let record = match decoder.next_record() {
                            Ok(Some(record)) => record,
                            Ok(None) => break,
                            Err(e) => bail!("WAL from {address} does not decode: {e}"),
                        };
                        let end = ingest
                            .ingest_record(record.start, record.end, record.bytes)
                            .await?;
                        resume = end;
                        if record.start == until {
                            return Ok((end, stats));
                        }
                    }
                }
                Message::Wal { begin, .. } => {
                    bail!("{address} sent WAL at {begin}, expected {fed}");
                }
                Message::Commit { .. } => {}
                Message::Error { message } => {
                    eprintln!("wal receiver: {address}: {message}");
                    break;
                }
                other => bail!("{address} answered a WAL stream with {other:?}"),
            }
            let persisted = ingest.timeline().disk_consistent_lsn();
            if persisted > reported {
                reported = persisted;
                report_persisted(source, persisted).await;
                stats.persisted_reports += 1;
            }
        }
        avoid = Some(index);
    }
}
