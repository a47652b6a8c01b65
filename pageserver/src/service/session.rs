//! A page connection's session: the requests of one timeline of one
//! tenant shard, answered on the shard's core (no lock, no cross-core hop).
//!
//! A batch of page reads is resolved read by read (the LSN rule: wait,
//! bounded, for `not_modified_since`, then serve at `min(request, last
//! ingested)`; refuse below the GC cutoff; refuse blocks another shard
//! owns), then every page's reconstruction inputs are gathered; pages with
//! an image and nothing above it are copied straight into the answer, and
//! the others go to the tenant's redo process together, one round trip.
//! When the timeline's cluster has data checksums, each page's checksum is
//! then set in the answer buffer for the block it is served as.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use quire_net::page_protocol::{ReadLsn, ServiceError};
use quire_net::page_service::{PageRead, PageSession, RequestError};
use quire_postgres::checksum::set_page_checksum;
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, Oid, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{ReconstructInputs, TimelineError};

use prometheus::IntCounter;

use super::core::{Core, ServedTimeline, TenantShard};
use super::metrics::RequestCounters;
use crate::ingest::slru_key;

/// The default tablespace and the shared one (`DEFAULTTABLESPACE_OID`,
/// `GLOBALTABLESPACE_OID`).
const DEFAULT_TABLESPACE: Oid = 1663;
const GLOBAL_TABLESPACE: Oid = 1664;
/// Pages in an SLRU segment.
const SLRU_PAGES: u32 = 32;

/// The session of one connection.
pub struct TimelineSession {
    /// The core.
    pub core: Rc<Core>,
    /// The shard.
    pub shard: Rc<TenantShard>,
    /// The timeline.
    pub timeline: Rc<ServedTimeline>,
}

/// The service error a storage failure answers with.
fn storage_error(error: &TimelineError) -> RequestError {
    let code = match error {
        TimelineError::BelowGcCutoff { lsn, cutoff } => ServiceError::LsnBelowGcCutoff {
            requested: *lsn,
            cutoff: *cutoff,
        },
        TimelineError::Layer(quire_layerfmt::LayerError::Corrupt { .. })
        | TimelineError::Metadata(_)
        | TimelineError::BadSize(_) => ServiceError::Corrupt,
        TimelineError::Redo(_) => ServiceError::RedoFailed,
        _ => ServiceError::Internal,
    };
    RequestError::new(code, error.to_string())
}

impl TimelineSession {
    /// The LSN a read is served at, after waiting for its
    /// `not_modified_since` until `deadline` (shared by every read of a
    /// batch, so a batch waits at most `lsn_wait` in all).
    async fn resolve(&self, lsn: ReadLsn, deadline: Instant) -> Result<Lsn, RequestError> {
        let timeline = &self.timeline.timeline;
        let served = if let Some(served) = lsn.served_at(timeline.ingested_lsn()) {
            served
        } else {
            let waited =
                quire_io::timeout_at(deadline, timeline.wait_for_lsn(lsn.not_modified_since()))
                    .await;
            let last = timeline.ingested_lsn();
            match (waited, lsn.served_at(last)) {
                (Ok(_), Some(served)) => served,
                _ => {
                    return Err(RequestError::new(
                        ServiceError::WalNotIngested {
                            waited_for: lsn.not_modified_since(),
                            last_ingested: last,
                        },
                        format!(
                            "timeline {}: WAL up to {} not ingested within {} ms (ingested up to {last})",
                            self.timeline.id,
                            lsn.not_modified_since(),
                            self.core.shared.limits.lsn_wait.as_millis()
                        ),
                    ));
                }
            }
        };
        timeline
            .check_readable(served)
            .map_err(|e| storage_error(&e))?;
        Ok(served)
    }

    /// Refuses a request of non-block keys on a shard other than 0.
    fn check_shard_zero(&self) -> Result<(), RequestError> {
        if self.shard.identity.number() == 0 {
            return Ok(());
        }
        Err(RequestError::new(
            ServiceError::WrongShard {
                owner: 0,
                block: None,
            },
            format!(
                "tenant {} shard {}: sizes, existence and SLRU segments are on shard 0",
                self.shard.tenant,
                self.shard.identity.number()
            ),
        ))
    }

    /// Refuses a read any of whose blocks another shard owns.
    fn check_blocks(&self, read: &PageRead) -> Result<(), RequestError> {
        let identity = self.shard.identity;
        if identity.count() == 1 {
            return Ok(());
        }
        for offset in 0..read.count {
            let block = BlockNo(read.first_block.0.saturating_add(offset));
            let owner = identity.owner_of_block(read.rel, block);
            if owner != identity.number() {
                return Err(RequestError::new(
                    ServiceError::WrongShard {
                        owner,
                        block: Some(block),
                    },
                    format!(
                        "block {} of {} belongs to shard {owner}, not {}",
                        block.0,
                        describe(read.rel),
                        identity.number()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads one read's pages into `out`.
    async fn read_one(
        &self,
        read: &PageRead,
        lsn: Lsn,
        out: &mut [u8],
        downloads: &Cell<u32>,
    ) -> Result<(), RequestError> {
        let timeline = &self.timeline.timeline;
        // The blocks' lookups run together, so their cold reads go to the
        // ring in one submission instead of one after another (a single
        // block, the common GetPage, skips the joining's allocations).
        let inputs: Vec<ReconstructInputs> = if read.count == 1 {
            let key = Key::rel_block(read.rel, read.first_block);
            vec![
                timeline
                    .get_noting(key, lsn, downloads)
                    .await
                    .map_err(|e| storage_error(&e))?,
            ]
        } else {
            let lookups = (0..read.count).map(|offset| {
                let key = Key::rel_block(read.rel, BlockNo(read.first_block.0 + offset));
                timeline.get_noting(key, lsn, downloads)
            });
            futures::future::join_all(lookups)
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(|e| storage_error(&e))?
        };
        let mut redo: Vec<(usize, Key)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let page = out
                .get_mut(i * BLCKSZ..(i + 1) * BLCKSZ)
                .ok_or_else(|| RequestError::new(ServiceError::Internal, "answer space"))?;
            let block = read.first_block.0 + u32::try_from(i).unwrap_or(u32::MAX);
            if !input.records.is_empty() {
                redo.push((i, Key::rel_block(read.rel, BlockNo(block))));
                continue;
            }
            match &input.image {
                Some((_, image)) if image.len() == BLCKSZ => page.copy_from_slice(image),
                Some((at, image)) => {
                    return Err(RequestError::new(
                        ServiceError::Corrupt,
                        format!(
                            "block {block} of {}: the image at {at} is {} bytes, not a page",
                            describe(read.rel),
                            image.len()
                        ),
                    ));
                }
                None => self.missing_block(read.rel, block, lsn).await?,
            }
        }
        if !redo.is_empty() {
            self.redo_into(read.rel, lsn, (&redo, &inputs), out).await?;
        }
        // Redo and ingest leave a page's checksum as it was; Postgres checks
        // it on every read.
        if self.timeline.data_checksums {
            set_checksums(out, read.first_block);
        }
        Ok(())
    }

    /// Rebuilds the pages `redo` names (their index in `out`, their key)
    /// from `inputs` through the tenant's redo lane, into `out`.
    async fn redo_into(
        &self,
        rel: RelTag,
        lsn: Lsn,
        (redo, inputs): (&[(usize, Key)], &[ReconstructInputs]),
        out: &mut [u8],
    ) -> Result<(), RequestError> {
        let items: Vec<(Key, Lsn, &ReconstructInputs)> = redo
            .iter()
            .map(|&(i, key)| (key, lsn, &inputs[i]))
            .collect();
        let pages = self
            .core
            .redo
            .materialize_many(self.shard.redo_key(), &items)
            .await;
        for ((i, _), page) in redo.iter().zip(pages) {
            let page = page.map_err(|e| {
                RequestError::new(
                    ServiceError::RedoFailed,
                    format!("{}: {}", describe(rel), e.what),
                )
            })?;
            let slot = out
                .get_mut(i * BLCKSZ..(i + 1) * BLCKSZ)
                .ok_or_else(|| RequestError::new(ServiceError::Internal, "answer space"))?;
            if page.len() != BLCKSZ {
                return Err(RequestError::new(
                    ServiceError::RedoFailed,
                    format!("redo returned {} bytes, not a page", page.len()),
                ));
            }
            slot.copy_from_slice(&page);
        }
        Ok(())
    }

    /// A block with no value: a page of zeros inside the relation (what
    /// an extension without WAL leaves), an error past its end.
    async fn missing_block(&self, rel: RelTag, block: u32, lsn: Lsn) -> Result<(), RequestError> {
        let size = self
            .timeline
            .timeline
            .rel_size(rel, lsn)
            .await
            .map_err(|e| storage_error(&e))?;
        match size {
            Some(blocks) if block < blocks => Ok(()),
            Some(blocks) => Err(RequestError::new(
                ServiceError::NotFound,
                format!(
                    "block {block} of {} at {lsn}: the fork has {blocks} blocks",
                    describe(rel)
                ),
            )),
            None => Err(RequestError::new(
                ServiceError::NotFound,
                format!("{} does not exist at {lsn}", describe(rel)),
            )),
        }
    }
}

/// Sets the checksum of each page of `out` for the block it is served as
/// (`first_block` on), in place; a new page (all zero) has none.
fn set_checksums(out: &mut [u8], first_block: BlockNo) {
    for (page, block) in out.chunks_exact_mut(BLCKSZ).zip(first_block.0..) {
        if let Ok(page) = <&mut [u8; BLCKSZ]>::try_from(page) {
            set_page_checksum(page, block);
        }
    }
}

/// A fork named for people.
fn describe(rel: RelTag) -> String {
    format!(
        "relation {}/{}/{} fork {}",
        rel.spc_oid,
        rel.db_oid,
        rel.rel_number,
        rel.fork.name()
    )
}

impl PageSession for TimelineSession {
    async fn read_pages(
        &self,
        reads: &[PageRead],
        pages: &mut [&mut [u8]],
    ) -> Vec<Result<Lsn, RequestError>> {
        let started = Instant::now();
        let deadline = started + self.core.shared.limits.lsn_wait;
        // Layers the batch waited to download (its reads are answered
        // together, so a wait is every read's).
        let downloads = Cell::new(0u32);
        let downloads = &downloads;
        // The batch's reads run together: their cold block reads share a
        // ring submission and their redo merges into one round trip.
        let each = reads
            .iter()
            .zip(pages.iter_mut())
            .map(|(read, out)| async move {
                let result = async {
                    self.check_blocks(read)?;
                    let lsn = self.resolve(read.lsn, deadline).await?;
                    self.read_one(read, lsn, out, downloads).await?;
                    Ok(lsn)
                }
                .await;
                self.count(
                    |c| {
                        if read.count == 1 {
                            &c.get_page
                        } else {
                            &c.get_pages
                        }
                    },
                    &result,
                );
                result
            });
        let results = if reads.len() == 1 {
            let mut each = each;
            match each.next() {
                Some(only) => vec![only.await],
                None => Vec::new(),
            }
        } else {
            futures::future::join_all(each).await
        };
        let seconds = started.elapsed().as_secs_f64();
        for _ in reads {
            self.core.metrics.getpage_seconds.observe(seconds);
        }
        if downloads.get() > 0 {
            for _ in reads {
                self.core.metrics.getpage_download_seconds.observe(seconds);
            }
        }
        results
    }

    async fn nblocks(&self, lsn: ReadLsn, rel: RelTag) -> Result<(Lsn, u32), RequestError> {
        self.shard_zero_read(
            lsn,
            |c| &c.nblocks,
            async |lsn| {
                let size = self.timeline.timeline.rel_size(rel, lsn).await;
                size.map_err(|e| storage_error(&e))?.ok_or_else(|| {
                    RequestError::new(
                        ServiceError::NotFound,
                        format!("{} does not exist at {lsn}", describe(rel)),
                    )
                })
            },
        )
        .await
    }

    async fn exists(&self, lsn: ReadLsn, rel: RelTag) -> Result<(Lsn, bool), RequestError> {
        self.shard_zero_read(
            lsn,
            |c| &c.exists,
            async |lsn| {
                let exists = self.timeline.timeline.rel_exists(rel, lsn).await;
                exists.map_err(|e| storage_error(&e))
            },
        )
        .await
    }

    async fn db_size(&self, lsn: ReadLsn, db_oid: Oid) -> Result<(Lsn, u64), RequestError> {
        let spc = if db_oid == 0 {
            GLOBAL_TABLESPACE
        } else {
            DEFAULT_TABLESPACE
        };
        self.shard_zero_read(
            lsn,
            |c| &c.db_size,
            async |lsn| {
                let size = self.timeline.timeline.database_size(spc, db_oid, lsn).await;
                size.map_err(|e| storage_error(&e))
            },
        )
        .await
    }

    async fn slru_segment(
        &self,
        lsn: ReadLsn,
        slru: SlruKind,
        segment: u32,
        pages: &mut Vec<u8>,
    ) -> Result<(Lsn, u32), RequestError> {
        self.shard_zero_read(
            lsn,
            |c| &c.slru_segment,
            async |lsn| self.slru_pages(slru, segment, lsn, pages).await,
        )
        .await
    }

    fn frame_refused(&self, error: ServiceError) {
        let metrics = &self.core.metrics;
        metrics
            .errors
            .with_label_values(&[metrics.core(), error_name(error)])
            .inc();
    }
}

impl TimelineSession {
    /// A read of shard 0's non-block keys: refused on other shards, served
    /// by the LSN rule, counted under `kind`.
    async fn shard_zero_read<T>(
        &self,
        lsn: ReadLsn,
        kind: impl Fn(&RequestCounters) -> &IntCounter,
        read: impl AsyncFnOnce(Lsn) -> Result<T, RequestError>,
    ) -> Result<(Lsn, T), RequestError> {
        let result = async {
            self.check_shard_zero()?;
            let deadline = Instant::now() + self.core.shared.limits.lsn_wait;
            let lsn = self.resolve(lsn, deadline).await?;
            Ok((lsn, read(lsn).await?))
        }
        .await;
        self.count(kind, &result);
        result
    }

    /// Appends the segment's pages (those that exist, from its first) and
    /// returns how many.
    async fn slru_pages(
        &self,
        slru: SlruKind,
        segment: u32,
        lsn: Lsn,
        pages: &mut Vec<u8>,
    ) -> Result<u32, RequestError> {
        let timeline = &self.timeline.timeline;
        let first = segment.checked_mul(SLRU_PAGES).ok_or_else(|| {
            RequestError::new(
                ServiceError::NotFound,
                format!("SLRU segment {segment} is past the end"),
            )
        })?;
        let mut count = 0;
        for page in first..first.saturating_add(SLRU_PAGES) {
            let key = slru_key(slru, page);
            let inputs = timeline
                .get(key, lsn)
                .await
                .map_err(|e| storage_error(&e))?;
            if inputs.is_empty() {
                break;
            }
            let bytes = if inputs.records.is_empty() {
                inputs
                    .image
                    .map(|(_, image)| image.to_vec())
                    .unwrap_or_default()
            } else {
                let items = [(key, lsn, &inputs)];
                let mut rebuilt = self
                    .core
                    .redo
                    .materialize_many(self.shard.redo_key(), &items)
                    .await;
                rebuilt
                    .pop()
                    .unwrap_or_else(|| {
                        Err(quire_shard::RedoError {
                            key,
                            lsn,
                            what: "no result".into(),
                        })
                    })
                    .map_err(|e| {
                        RequestError::new(
                            ServiceError::RedoFailed,
                            format!("{} page {page}: {}", slru.directory(), e.what),
                        )
                    })?
            };
            if bytes.len() != BLCKSZ {
                return Err(RequestError::new(
                    ServiceError::Corrupt,
                    format!(
                        "{} page {page}: {} bytes, not a page",
                        slru.directory(),
                        bytes.len()
                    ),
                ));
            }
            pages.extend_from_slice(&bytes);
            count += 1;
        }
        if count == 0 {
            return Err(RequestError::new(
                ServiceError::NotFound,
                format!(
                    "{} segment {segment:04X} does not exist at {lsn}",
                    slru.directory()
                ),
            ));
        }
        Ok(count)
    }

    fn count<T>(
        &self,
        kind: impl Fn(&RequestCounters) -> &IntCounter,
        result: &Result<T, RequestError>,
    ) {
        let metrics = &self.core.metrics;
        kind(&metrics.requests).inc();
        if let Err(error) = result {
            metrics
                .errors
                .with_label_values(&[metrics.core(), error_name(error.error)])
                .inc();
        }
    }
}

/// The spec's name of an error code.
pub fn error_name(error: ServiceError) -> &'static str {
    match error {
        ServiceError::BadRequest => "BadRequest",
        ServiceError::UnsupportedVersion { .. } => "UnsupportedVersion",
        ServiceError::Unauthenticated => "Unauthenticated",
        ServiceError::Forbidden => "Forbidden",
        ServiceError::UnknownTenant => "UnknownTenant",
        ServiceError::UnknownTimeline => "UnknownTimeline",
        ServiceError::ShardNotHere => "ShardNotHere",
        ServiceError::WrongShard { .. } => "WrongShard",
        ServiceError::NotFound => "NotFound",
        ServiceError::LsnBelowGcCutoff { .. } => "LsnBelowGcCutoff",
        ServiceError::WalNotIngested { .. } => "WalNotIngested",
        ServiceError::Corrupt => "Corrupt",
        ServiceError::RedoFailed => "RedoFailed",
        ServiceError::Overloaded { .. } => "Overloaded",
        ServiceError::ShuttingDown => "ShuttingDown",
        ServiceError::Internal => "Internal",
    }
}
