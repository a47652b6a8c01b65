//! Serving a basebackup on the timeline's core: the LSN checks, the values
//! rebuilt through the core's redo pool, and the tar handed to the admin
//! thread in chunks over a bounded channel (`GET …/basebackup`,
//! `docs/admin-api.md`).
//!
//! The core never blocks on the channel: a full channel (a slow reader)
//! makes the writer sleep and retry, up to [`STALL_LIMIT`] without
//! progress, after which the basebackup ends with an error and the
//! connection is cut (the tar has no `pg_control` then, so it cannot start).

use std::rc::Rc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use quire_net::id::{TenantId, TimelineId};
use quire_postgres::{Key, Lsn};
use quire_redo::RedoPool;
use quire_redo::TenantKey;
use quire_shard::{Timeline, TimelineError};
use serde_json::json;

use super::admin::{AdminError, Reply, shard_of, timeline_of};
use super::core::Core;
use crate::basebackup::{BasebackupOptions, PageSource, TarSink, write_basebackup};

/// Chunks (about 1 MiB each) waiting for the admin thread.
pub const CHUNKS_IN_FLIGHT: usize = 8;

/// How long the writer waits for a reader that takes nothing.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// How long a basebackup waits for the timeline to ingest its LSN.
pub const LSN_WAIT: Duration = Duration::from_secs(30);

/// A chunk of the tar, or why it ended early.
pub type Chunk = std::result::Result<Vec<u8>, String>;

/// What a basebackup is asked for.
pub struct BasebackupRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The timeline.
    pub timeline: TimelineId,
    /// The LSN; `None`: the last ingested record.
    pub lsn: Option<Lsn>,
    /// What to put in.
    pub options: BasebackupOptions,
    /// Where the chunks go.
    pub chunks: SyncSender<Chunk>,
}

/// A timeline's values through the core's redo pool.
struct CorePages<'a> {
    timeline: &'a Timeline,
    redo: &'a RedoPool,
    tenant: TenantKey,
}

impl PageSource for CorePages<'_> {
    fn timeline(&self) -> &Timeline {
        self.timeline
    }

    async fn value(&self, key: Key, lsn: Lsn) -> Result<Option<Vec<u8>>> {
        let inputs = self.timeline.get(key, lsn).await?;
        if inputs.is_empty() {
            return Ok(None);
        }
        if inputs.records.is_empty() {
            return Ok(inputs.image.map(|(_, image)| image.to_vec()));
        }
        let items = [(key, lsn, &inputs)];
        let mut rebuilt = self.redo.materialize_many(self.tenant, &items).await;
        match rebuilt.pop() {
            Some(Ok(page)) => Ok(Some(page)),
            Some(Err(error)) => Err(anyhow!("redo of {key} at {lsn}: {}", error.what)),
            None => Err(anyhow!("redo of {key} at {lsn} gave no page")),
        }
    }
}

/// The chunk channel, written without blocking the core.
struct ChannelSink {
    chunks: SyncSender<Chunk>,
}

impl TarSink for ChannelSink {
    async fn send(&mut self, chunk: Vec<u8>) -> Result<()> {
        let mut chunk = chunk;
        let started = Instant::now();
        loop {
            match self.chunks.try_send(Ok(chunk)) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(anyhow!("the client went away"));
                }
                Err(TrySendError::Full(Ok(back))) => {
                    if started.elapsed() > STALL_LIMIT {
                        return Err(anyhow!(
                            "the client took nothing for {} s",
                            STALL_LIMIT.as_secs()
                        ));
                    }
                    chunk = back;
                    quire_io::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Full(Err(_))) => return Err(anyhow!("chunk lost")),
            }
        }
    }
}

/// Checks the request, answers `reply` (the LSN, or why not), then streams
/// the tar into the request's channel. Runs on shard 0's core.
pub async fn serve(core: Rc<Core>, request: BasebackupRequest, reply: Reply) {
    let started = Instant::now();
    let prepared = prepare(&core, &request).await;
    let (served, lsn) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            let _ = reply.try_send(Err(error));
            return;
        }
    };
    let _ = reply.try_send(Ok(json!({"lsn": lsn.to_string()})));
    let Ok(shard) = shard_of(&core, request.tenant, 0) else {
        return;
    };
    let pages = CorePages {
        timeline: &served.timeline,
        redo: &core.redo,
        tenant: shard.redo_key(),
    };
    let mut sink = ChannelSink {
        chunks: request.chunks.clone(),
    };
    match write_basebackup(&pages, lsn, request.options, &mut sink).await {
        Ok(summary) => {
            core.metrics
                .basebackup_seconds
                .observe(started.elapsed().as_secs_f64());
            core.metrics.basebackup_bytes.inc_by(summary.bytes);
            eprintln!(
                "pageserver: basebackup of {}/{} at {lsn}{}: {} entries, {} bytes, {} relation blocks, checkpoint at {}, {:.1} ms",
                request.tenant,
                request.timeline,
                if request.options.full { " (full)" } else { "" },
                summary.entries,
                summary.bytes,
                summary.relation_blocks,
                summary.checkpoint_lsn,
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        Err(error) => {
            eprintln!(
                "pageserver: basebackup of {}/{} at {lsn} failed: {error:#}",
                request.tenant, request.timeline
            );
            let _ = request.chunks.try_send(Err(format!("{error:#}")));
        }
    }
}

/// The timeline and the LSN to read, once it is ingested and GC keeps it.
async fn prepare(
    core: &Core,
    request: &BasebackupRequest,
) -> Result<(Rc<super::core::ServedTimeline>, Lsn), AdminError> {
    let shard = shard_of(core, request.tenant, 0)?;
    if request.options.full && shard.identity.count() > 1 {
        return Err(AdminError::new(
            400,
            "a full basebackup of a sharded tenant is not supported: its blocks are on several shards",
        ));
    }
    let served = timeline_of(&shard, request.timeline)?;
    let timeline = &served.timeline;
    let lsn = request.lsn.unwrap_or_else(|| timeline.last_record_lsn());
    if timeline.last_record_lsn() < lsn {
        let waited = quire_io::timeout(LSN_WAIT, timeline.wait_for_lsn(lsn)).await;
        if waited.is_err() {
            return Err(AdminError::new(
                504,
                format!(
                    "the timeline has ingested up to {}, not {lsn}, after {} s",
                    timeline.last_record_lsn(),
                    LSN_WAIT.as_secs()
                ),
            ));
        }
    }
    match timeline.check_readable(lsn) {
        Ok(()) => Ok((served.clone(), lsn)),
        Err(TimelineError::BelowGcCutoff { lsn, cutoff }) => Err(AdminError::new(
            410,
            format!("{lsn} is below the GC cutoff {cutoff}"),
        )),
        Err(error) => Err(AdminError::new(500, error.to_string())),
    }
}

/// The tar as the admin thread reads it: chunks from the core; an error
/// chunk, a core gone quiet for [`STALL_LIMIT`] or a channel closed early
/// end it with an error (the HTTP response is then cut short).
pub struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    /// Reads what the core sends on `chunks`.
    pub fn new(chunks: std::sync::mpsc::Receiver<Chunk>) -> ChunkReader {
        ChunkReader {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.chunks.recv_timeout(STALL_LIMIT) {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Ok(Err(error)) => return Err(std::io::Error::other(error)),
                // The core dropped its sender: the tar is complete.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::other("the basebackup stalled"));
                }
            }
        }
        let rest = self.current.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}
