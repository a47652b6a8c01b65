//! Basebackups: the tar a Postgres 17 compute starts from at an LSN, read
//! from a timeline (spec: `docs/basebackup.md`).
//!
//! A basebackup holds what Postgres reads without its storage manager:
//! the directories a data directory needs, `PG_VERSION` files, empty
//! configuration files (compute control writes the settings), the
//! relmapper files, the `pg_xact` and `pg_multixact` segments, the state
//! files of prepared transactions, the init forks of unlogged relations
//! (each also as its main fork: Postgres resets unlogged relations only
//! after recovery, and this start has none), a WAL segment holding one
//! shutdown checkpoint record, and last `global/pg_control` pointing at it,
//! so that a tar cut short cannot start. Vanilla Postgres 17 starts from it
//! without recovery: `redo` equals the checkpoint's position and the state
//! is shut down.
//!
//! A *full* basebackup also holds every block of every relation fork at
//! the LSN: a complete data directory that vanilla Postgres serves without
//! Quire (an export of any point of a timeline's history).
//!
//! The tar is streamed in chunks to a [`TarSink`]; a relation file is never
//! held whole.

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use quire_postgres::checksum::set_page_checksum;
use quire_postgres::control::{CheckPoint, ControlFileData, DbState};
use quire_postgres::key::{KeyKind, SlruKind};
use quire_postgres::types::{
    BLCKSZ, BlockNo, DEFAULT_TABLESPACE_OID, ForkNumber, GLOBAL_TABLESPACE_OID, Oid, RELSEG_SIZE,
    RelTag,
};
use quire_postgres::wal::writer::{checkpoint_segment, segment_file_name};
use quire_postgres::{Key, Lsn};
use quire_shard::Timeline;
use zerocopy::FromBytes;

use crate::datadir::SLRU_PAGES_PER_SEGMENT;
use crate::ingest::slru_key;

/// Where a basebackup's values come from: the timeline, and its values
/// rebuilt through redo where they are records.
pub trait PageSource {
    /// The timeline read.
    fn timeline(&self) -> &Timeline;

    /// The bytes of `key` at `lsn` (a page rebuilt when it has records),
    /// `None` when it has no value.
    fn value(&self, key: Key, lsn: Lsn) -> impl Future<Output = Result<Option<Vec<u8>>>>;
}

/// Where the tar goes, chunk by chunk.
pub trait TarSink {
    /// Takes the next chunk of the tar.
    fn send(&mut self, chunk: Vec<u8>) -> impl Future<Output = Result<()>>;
}

/// What to put in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BasebackupOptions {
    /// Every relation block too: a data directory vanilla Postgres serves
    /// alone.
    pub full: bool,
    /// The start of the last record before the LSN, for the checkpoint
    /// record's `xl_prev`, so that the WAL the compute writes links back to
    /// the timeline's as Postgres' does (the safekeepers and the pageserver
    /// check every link); `Lsn::INVALID` when no record precedes it in the
    /// WAL a reader will decode (the timeline's first LSN).
    pub prev_record: Lsn,
}

/// What a basebackup held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasebackupSummary {
    /// The LSN read.
    pub lsn: Lsn,
    /// Where the shutdown checkpoint record is, and WAL continues.
    pub checkpoint_lsn: Lsn,
    /// Files and directories in the tar.
    pub entries: u64,
    /// Bytes of the tar.
    pub bytes: u64,
    /// Relation blocks in it.
    pub relation_blocks: u64,
}

/// Relation blocks read at once by a full basebackup.
const READ_BATCH_BLOCKS: u32 = 32;

/// Bytes gathered before a chunk goes to the sink.
const CHUNK_BYTES: usize = 1 << 20;

/// `PG_VERSION`'s text.
const PG_VERSION: &[u8] = b"17\n";

/// Bytes of a WAL page's short header and of a segment's first (long) one.
const SHORT_PAGE_HEADER: u64 = 24;
const LONG_PAGE_HEADER: u64 = 40;
/// Bytes of a WAL page.
const WAL_PAGE: u64 = 8192;

/// The directories of a data directory that hold no file of ours but must
/// exist.
const DIRECTORIES: &[&str] = &[
    "global",
    "base",
    "pg_wal",
    "pg_wal/archive_status",
    "pg_wal/summaries",
    "pg_xact",
    "pg_multixact",
    "pg_multixact/offsets",
    "pg_multixact/members",
    "pg_commit_ts",
    "pg_notify",
    "pg_replslot",
    "pg_twophase",
    "pg_subtrans",
    "pg_serial",
    "pg_snapshots",
    "pg_dynshmem",
    "pg_stat",
    "pg_stat_tmp",
    "pg_tblspc",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
];

/// The configuration files, empty but for a comment: compute control
/// writes the settings (`postgresql.auto.conf` stays empty, as ALTER
/// SYSTEM leaves it).
const CONFIG_FILES: &[(&str, &[u8])] = &[
    (
        "postgresql.conf",
        b"# Written by Quire's basebackup: the compute's settings are given on its command line\n# or appended here by compute control.\n",
    ),
    ("postgresql.auto.conf", b""),
    ("pg_ident.conf", b""),
    (
        "pg_hba.conf",
        b"# Written by Quire's basebackup: local connections only (the safekeepers\n# stream WAL over replication connections).\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\nhost replication all ::1/128 trust\n",
    ),
];

/// Where the checkpoint record of a basebackup at `lsn` goes: the first
/// position at or after it where a record may start (8-aligned, past a page
/// header).
pub fn checkpoint_position(lsn: Lsn, segment_size: u32) -> Option<Lsn> {
    let aligned = lsn.align_up(8)?;
    let in_page = aligned.0 % WAL_PAGE;
    if in_page != 0 {
        return Some(aligned);
    }
    let header = if aligned.segment_offset(segment_size) == 0 {
        LONG_PAGE_HEADER
    } else {
        SHORT_PAGE_HEADER
    };
    aligned.0.checked_add(header).map(Lsn)
}

/// Writes the basebackup of `pages`' timeline at `lsn` to `sink`. The
/// caller has checked that the timeline has ingested `lsn` and that GC
/// keeps it.
pub async fn write_basebackup<P: PageSource, S: TarSink>(
    pages: &P,
    lsn: Lsn,
    options: BasebackupOptions,
    sink: &mut S,
) -> Result<BasebackupSummary> {
    let now = unix_seconds();
    let StartFiles {
        control,
        checkpoint,
        start,
        wal,
    } = start_files(pages, lsn, options.prev_record, now).await?;
    let segment_size = control.xlog_seg_size.get();
    let mut tar = TarWriter::new(sink, now);
    for directory in DIRECTORIES {
        tar.directory(directory).await?;
    }
    for (name, text) in CONFIG_FILES {
        tar.file(name, text).await?;
    }
    tar.file("PG_VERSION", PG_VERSION).await?;

    let catalog_version = control.catalog_version_no.get();
    let timeline = pages.timeline();
    let others = timeline
        .keys_at(lsn, Key::rel_directory(0, 0)..Key::MAX)
        .await?;
    // Databases: every relmapper file still holding a map.
    for key in &others {
        let Ok(KeyKind::RelMap { spc_oid, db_oid }) = key.describe() else {
            continue;
        };
        let Some(map) = pages.value(*key, lsn).await?.filter(|m| !m.is_empty()) else {
            continue;
        };
        let directory = database_directory(spc_oid, db_oid, catalog_version);
        if spc_oid != GLOBAL_TABLESPACE_OID {
            if spc_oid != DEFAULT_TABLESPACE_OID {
                // A tablespace's directory in place of its link, as
                // `allow_in_place_tablespaces` makes them.
                tar.directory(&format!("pg_tblspc/{spc_oid}")).await?;
                tar.directory(&format!("pg_tblspc/{spc_oid}/PG_17_{catalog_version}"))
                    .await?;
            }
            tar.directory(&directory).await?;
            tar.file(&format!("{directory}/PG_VERSION"), PG_VERSION)
                .await?;
        }
        tar.file(&format!("{directory}/pg_filenode.map"), &map)
            .await?;
    }
    for key in &others {
        match key.describe() {
            Ok(KeyKind::SlruSegmentSize(slru, segment)) => {
                write_slru_segment(pages, &mut tar, slru, segment, lsn).await?;
            }
            Ok(KeyKind::TwoPhaseFile { xid, .. }) => {
                if let Some(state) = pages.value(*key, lsn).await?.filter(|s| !s.is_empty()) {
                    let epoch = epoch_of(xid, checkpoint.next_xid.get());
                    tar.file(&format!("pg_twophase/{epoch:08X}{xid:08X}"), &state)
                        .await?;
                }
            }
            _ => {}
        }
    }
    let checksums = control.data_checksum_version.get() != 0;
    let relation_blocks =
        write_relations(pages, &mut tar, lsn, (options, checksums), catalog_version).await?;
    let wal_name = segment_file_name(checkpoint.this_timeline.get(), start, segment_size);
    tar.file(&format!("pg_wal/{wal_name}"), &wal).await?;
    tar.file("global/pg_control", &control.encode()).await?;
    let (entries, bytes) = tar.finish().await?;
    Ok(BasebackupSummary {
        lsn,
        checkpoint_lsn: start,
        entries,
        bytes,
        relation_blocks,
    })
}

/// The control file and WAL segment of a start at `lsn`.
struct StartFiles {
    control: ControlFileData,
    checkpoint: CheckPoint,
    /// Where the checkpoint record is.
    start: Lsn,
    wal: Vec<u8>,
}

/// `pg_control` and the checkpoint segment for a start at `lsn`, from the
/// timeline's control file and running checkpoint there.
async fn start_files<P: PageSource>(
    pages: &P,
    lsn: Lsn,
    prev_record: Lsn,
    now: i64,
) -> Result<StartFiles> {
    let control_bytes = pages
        .value(Key::control_file(), lsn)
        .await?
        .with_context(|| format!("the timeline holds no pg_control at {lsn}"))?;
    let mut control = ControlFileData::decode(&control_bytes)
        .with_context(|| format!("the timeline's pg_control at {lsn}"))?;
    let mut checkpoint = match pages.value(Key::checkpoint(), lsn).await? {
        Some(bytes) => CheckPoint::read_from_bytes(&bytes).map_err(|_| {
            anyhow::anyhow!("the checkpoint value at {lsn} is {} bytes", bytes.len())
        })?,
        None => control.checkpoint_copy,
    };
    let segment_size = control.xlog_seg_size.get();
    let start = checkpoint_position(lsn, segment_size)
        .with_context(|| format!("no WAL position after {lsn}"))?;
    checkpoint.redo.set(start.0);
    checkpoint.oldest_active_xid.set(0);
    checkpoint.time.set(now);
    let wal = checkpoint_segment(
        &checkpoint,
        start,
        prev_record,
        segment_size,
        control.system_identifier.get(),
    )
    .context("write the checkpoint segment")?;
    control.checkpoint.set(start.0);
    control.checkpoint_copy = checkpoint;
    control.state.set(DbState::Shutdowned as u32);
    control.time.set(now);
    control.min_recovery_point.set(0);
    control.min_recovery_point_tli.set(0);
    control.backup_start_point.set(0);
    control.backup_end_point.set(0);
    control.backup_end_required = 0;

    Ok(StartFiles {
        control,
        checkpoint,
        start,
        wal,
    })
}

/// The epoch of `xid`, a transaction before `next_full_xid` (epoch in the
/// high 32 bits): the next XID's epoch, or the one before when `xid` is
/// numerically above the next XID (it was assigned before the wrap), as
/// Postgres names `pg_twophase` files.
fn epoch_of(xid: u32, next_full_xid: u64) -> u32 {
    let next_epoch = u32::try_from(next_full_xid >> 32).unwrap_or(u32::MAX);
    let next_xid = u32::try_from(next_full_xid & 0xFFFF_FFFF).unwrap_or(0);
    if xid > next_xid {
        next_epoch.saturating_sub(1)
    } else {
        next_epoch
    }
}

/// The directory of a database's relation files.
fn database_directory(spc_oid: Oid, db_oid: Oid, catalog_version: u32) -> String {
    if spc_oid == GLOBAL_TABLESPACE_OID {
        "global".into()
    } else if spc_oid == DEFAULT_TABLESPACE_OID {
        format!("base/{db_oid}")
    } else {
        format!("pg_tblspc/{spc_oid}/PG_17_{catalog_version}/{db_oid}")
    }
}

/// One SLRU segment's file, from its size key.
async fn write_slru_segment<P: PageSource, S: TarSink>(
    pages: &P,
    tar: &mut TarWriter<'_, S>,
    slru: SlruKind,
    segment: u32,
    lsn: Lsn,
) -> Result<()> {
    let Some(size) = pages
        .value(Key::slru_segment_size(slru, segment), lsn)
        .await?
    else {
        return Ok(());
    };
    let count = match <[u8; 4]>::try_from(size.as_slice()) {
        Ok(raw) => u32::from_le_bytes(raw),
        // A dropped (truncated away) segment.
        Err(_) if size.is_empty() => return Ok(()),
        Err(_) => bail!(
            "{} segment {segment:04X}: a size value of {} bytes",
            slru.directory(),
            size.len()
        ),
    };
    if count > SLRU_PAGES_PER_SEGMENT {
        bail!(
            "{} segment {segment:04X} claims {count} pages",
            slru.directory()
        );
    }
    let first = segment
        .checked_mul(SLRU_PAGES_PER_SEGMENT)
        .with_context(|| {
            format!(
                "{} segment {segment:04X} is past page 2^32",
                slru.directory()
            )
        })?;
    let mut file = Vec::with_capacity(count as usize * BLCKSZ);
    for page in first..first + count {
        let bytes = pages.value(slru_key(slru, page), lsn).await?;
        match bytes {
            Some(bytes) if bytes.len() == BLCKSZ => file.extend_from_slice(&bytes),
            Some(bytes) => bail!(
                "{} page {page}: {} bytes, not a page",
                slru.directory(),
                bytes.len()
            ),
            None => file.resize(file.len() + BLCKSZ, 0),
        }
    }
    tar.file(&format!("{}/{segment:04X}", slru.directory()), &file)
        .await
}

/// The relation files: init forks (each also as its main fork), and with
/// `full` every fork's blocks. Returns the blocks written.
async fn write_relations<P: PageSource, S: TarSink>(
    pages: &P,
    tar: &mut TarWriter<'_, S>,
    lsn: Lsn,
    (options, checksums): (BasebackupOptions, bool),
    catalog_version: u32,
) -> Result<u64> {
    let relations = pages
        .timeline()
        .size_keys_at(lsn, Key::MIN..Key::rel_directory(0, 0))
        .await?;
    let mut written = 0u64;
    for key in &relations {
        let Ok(KeyKind::RelSize(rel)) = key.describe() else {
            continue;
        };
        let wanted = options.full || rel.fork == ForkNumber::Init;
        if !wanted {
            continue;
        }
        let Some(blocks) = pages.timeline().rel_size(rel, lsn).await? else {
            continue;
        };
        let directory = database_directory(rel.spc_oid, rel.db_oid, catalog_version);
        let fork = ForkFile {
            directory: &directory,
            rel,
            blocks,
            checksums,
        };
        written += write_fork(pages, tar, &fork, rel.fork, lsn).await?;
        if rel.fork == ForkNumber::Init {
            // The unlogged relation's main fork starts as its init fork.
            written += write_fork(pages, tar, &fork, ForkNumber::Main, lsn).await?;
        }
    }
    Ok(written)
}

/// A fork's files to write.
struct ForkFile<'a> {
    /// The database's directory.
    directory: &'a str,
    /// The fork read.
    rel: RelTag,
    /// Its size.
    blocks: u32,
    /// Whether the cluster has data checksums (each page's is set).
    checksums: bool,
}

/// The segment files of fork `as_fork` holding `fork`'s blocks.
async fn write_fork<P: PageSource, S: TarSink>(
    pages: &P,
    tar: &mut TarWriter<'_, S>,
    fork: &ForkFile<'_>,
    as_fork: ForkNumber,
    lsn: Lsn,
) -> Result<u64> {
    let ForkFile {
        directory,
        rel,
        blocks,
        checksums,
    } = *fork;
    let suffix = match as_fork {
        ForkNumber::Main => String::new(),
        other => format!("_{}", other.name()),
    };
    let base = format!("{directory}/{}{suffix}", rel.rel_number);
    let segments = blocks.div_ceil(RELSEG_SIZE).max(1);
    for segment in 0..segments {
        let first = segment * RELSEG_SIZE;
        let count = blocks.saturating_sub(first).min(RELSEG_SIZE);
        let name = if segment == 0 {
            base.clone()
        } else {
            format!("{base}.{segment}")
        };
        tar.begin_file(&name, u64::from(count) * BLCKSZ as u64)
            .await?;
        // Blocks are read a batch at a time, so that their cold reads
        // share a submission.
        let mut batch_start = first;
        while batch_start < first + count {
            let batch_end = (first + count).min(batch_start + READ_BATCH_BLOCKS);
            let mut keys = Vec::with_capacity((batch_end - batch_start) as usize);
            for block in batch_start..batch_end {
                keys.push(
                    Key::try_rel_block(rel, BlockNo(block))
                        .with_context(|| format!("block {block} of {rel:?}"))?,
                );
            }
            let values =
                futures::future::join_all(keys.iter().map(|key| pages.value(*key, lsn))).await;
            for (block, value) in (batch_start..).zip(values) {
                match value? {
                    Some(page) if page.len() == BLCKSZ => {
                        let mut page: [u8; BLCKSZ] = page
                            .try_into()
                            .map_err(|_| anyhow::anyhow!("block {block}: not a page"))?;
                        // Redo leaves a page's checksum as it was; Postgres
                        // checks it on every read.
                        if checksums {
                            set_page_checksum(&mut page, block);
                        }
                        tar.append(&page).await?;
                    }
                    Some(page) => {
                        bail!("block {block} of {rel:?}: {} bytes, not a page", page.len())
                    }
                    // Inside the fork with no value: a page Postgres
                    // extended with zeros and never wrote.
                    None => tar.append(&[0u8; BLCKSZ]).await?,
                }
            }
            batch_start = batch_end;
        }
        tar.end_file().await?;
    }
    Ok(u64::from(blocks))
}

/// Seconds since the Unix epoch (a `pg_time_t`).
fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A tar stream written in chunks: ustar headers, data padded to 512
/// bytes, two zero blocks at the end.
struct TarWriter<'a, S> {
    sink: &'a mut S,
    buffer: Vec<u8>,
    entries: u64,
    bytes: u64,
    mtime: u64,
    /// Bytes still due to the file begun, for its padding.
    open_file: Option<(String, u64, u64)>,
}

impl<'a, S: TarSink> TarWriter<'a, S> {
    fn new(sink: &'a mut S, mtime: i64) -> TarWriter<'a, S> {
        TarWriter {
            sink,
            buffer: Vec::with_capacity(CHUNK_BYTES + BLCKSZ),
            entries: 0,
            bytes: 0,
            mtime: u64::try_from(mtime).unwrap_or(0),
            open_file: None,
        }
    }

    fn header(&self, path: &str, size: u64, directory: bool) -> Result<tar::Header> {
        let mut header = tar::Header::new_ustar();
        header
            .set_path(path)
            .with_context(|| format!("tar entry {path}"))?;
        header.set_size(size);
        header.set_mode(if directory { 0o700 } else { 0o600 });
        header.set_mtime(self.mtime);
        header.set_entry_type(if directory {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_cksum();
        Ok(header)
    }

    async fn directory(&mut self, path: &str) -> Result<()> {
        let header = self.header(path, 0, true)?;
        self.entries += 1;
        self.push(header.as_bytes()).await
    }

    async fn file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.begin_file(path, data.len() as u64).await?;
        self.append(data).await?;
        self.end_file().await
    }

    async fn begin_file(&mut self, path: &str, size: u64) -> Result<()> {
        let header = self.header(path, size, false)?;
        self.entries += 1;
        self.open_file = Some((path.to_owned(), size, 0));
        self.push(header.as_bytes()).await
    }

    async fn append(&mut self, data: &[u8]) -> Result<()> {
        if let Some((_, _, written)) = &mut self.open_file {
            *written += data.len() as u64;
        }
        self.push(data).await
    }

    async fn end_file(&mut self) -> Result<()> {
        let Some((path, size, written)) = self.open_file.take() else {
            return Ok(());
        };
        if size != written {
            bail!("tar entry {path}: {written} bytes written of {size}");
        }
        let padding = (512 - (size % 512) as usize) % 512;
        self.push(&[0u8; 512][..padding]).await
    }

    async fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(bytes);
        self.bytes += bytes.len() as u64;
        if self.buffer.len() >= CHUNK_BYTES {
            let chunk =
                std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES + BLCKSZ));
            self.sink.send(chunk).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(u64, u64)> {
        self.push(&[0u8; 1024]).await?;
        if !self.buffer.is_empty() {
            let chunk = std::mem::take(&mut self.buffer);
            self.sink.send(chunk).await?;
        }
        Ok((self.entries, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_goes_past_page_headers_and_on_8_byte_boundaries() {
        let segment = 16 << 20;
        assert_eq!(
            checkpoint_position(Lsn(0x0100_0F89), segment),
            Some(Lsn(0x0100_0F90))
        );
        assert_eq!(
            checkpoint_position(Lsn(0x0100_0F90), segment),
            Some(Lsn(0x0100_0F90))
        );
        // A page start inside a segment: past the short header.
        assert_eq!(
            checkpoint_position(Lsn(0x0100_1FFA), segment),
            Some(Lsn(0x0100_2018))
        );
        // A segment start: past the long header.
        assert_eq!(
            checkpoint_position(Lsn(0x01FF_FFF9), segment),
            Some(Lsn(0x0200_0028))
        );
    }

    #[test]
    fn a_prepared_xid_takes_the_epoch_it_was_assigned_in() {
        let next = (3u64 << 32) + 100;
        assert_eq!(epoch_of(99, next), 3);
        assert_eq!(epoch_of(100, next), 3);
        assert_eq!(epoch_of(4_000_000_000, next), 2);
        assert_eq!(epoch_of(5, 200), 0);
    }
}
