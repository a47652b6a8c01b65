//! A timeline's WAL on a safekeeper: Postgres segment files, written with
//! direct I/O, made durable by group commit.
//!
//! Bytes are kept as Postgres wrote them, in segment files named as in
//! `pg_wal` (so `pg_waldump` reads them and two safekeepers' copies compare
//! byte for byte). Appends collect in memory; [`WalStore::flush`] writes
//! every block they touch (the last one zero-filled past the end, and
//! rewritten by the next flush, as Postgres does with its WAL pages) with
//! `O_DSYNC` direct writes: every append made before it started is durable when it
//! returns, however many there were (group commit). Segments are created at
//! full size and their names made durable when created. While the WAL
//! fills one segment, a background task writes the next one's zeros
//! ([`SegmentFile::prepare`]): a write into blocks already written costs
//! the disk no metadata change, a third less time per `O_DSYNC` write here.
//!
//! After a restart the WAL ends at the end of the last whole record found
//! by decoding the last written segment from its first record start (a partial
//! record at the end was never committed: Postgres commits at records'
//! ends). A record that does not decode is a torn tail only if nothing was
//! written after it: when a later page of the segments still carries a
//! header and a whole record that decodes, the bytes are damaged, and
//! [`WalStore::written_after_end`] says how far WAL was written (the end of
//! the last such record), for the acceptor to repair the range from a peer
//! before it votes again; [`WalStore::damaged_below`] judges the log
//! against the position the control file says was durable. A cut
//! ([`WalStore::truncate`]) removes later segments and punches the rest of
//! its segment, then zeroes the rest of its block, so nothing after it can
//! be decoded again, nor taken for damage after a crash in between.
//!
//! The segment size comes from a control file or a request: one Postgres
//! would refuse is an error at [`WalStore::open`], and positions are
//! computed so that none overflows, whatever the LSNs and file names found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quire_io::segment_file::is_unfinished_preparation;
use quire_io::{
    BLOCK_SIZE, FileError, SegmentFile, Task, remove_file, spawn_local, sync_directory_of,
};
use quire_postgres::Lsn;
use quire_postgres::types::is_valid_wal_segment_size;
use quire_postgres::wal::page::{decode_page_header, first_record_start};
use quire_postgres::wal::stream::WalStreamDecoder;

/// Why the WAL store failed.
#[derive(Debug, thiserror::Error)]
pub enum WalStoreError {
    /// A file operation.
    #[error(transparent)]
    File(#[from] FileError),
    /// Listing the directory.
    #[error("list {path}: {source}")]
    List {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A request outside the WAL held.
    #[error("{0}")]
    Range(String),
    /// A segment size Postgres does not accept (a power of two from 1 MiB
    /// to 1 GiB).
    #[error("invalid WAL segment size {0}")]
    InvalidSegmentSize(u32),
    /// A segment's first page does not parse.
    #[error("segment {path} is damaged: {what}")]
    Damaged {
        /// The segment file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

const BLOCK: u64 = BLOCK_SIZE as u64;

/// A timeline's WAL segments.
pub struct WalStore {
    dir: PathBuf,
    // Invariant: a valid Postgres segment size (`is_valid_wal_segment_size`).
    segment_size: u64,
    timeline: u32,
    wal_start: Lsn,
    write_lsn: Lsn,
    flush_lsn: Lsn,
    /// Bytes from `pending_from` (block-aligned) to `write_lsn`: the last
    /// partial block already on disk, then what was appended since.
    pending: Vec<u8>,
    pending_from: Lsn,
    segments: BTreeMap<u64, SegmentFile>,
    /// WAL below this was removed (whole segments).
    first_kept: Lsn,
    /// The segment being written ahead of need, and its task.
    preparing: Option<(u64, Task<Result<(), FileError>>)>,
    /// Segments up to this one exist or are being prepared.
    prepared_through: u64,
    /// Found at open: WAL was written up to here past the end of the
    /// records that decode (damage, not a torn tail).
    written_after: Option<Lsn>,
}

impl WalStore {
    /// Opens (or starts) the WAL in `dir`, whose first byte is `wal_start`,
    /// with segments of `segment_size` bytes of Postgres timeline
    /// `timeline`; finds the end of the WAL held.
    pub async fn open(
        dir: &Path,
        wal_start: Lsn,
        segment_size: u32,
        timeline: u32,
    ) -> Result<WalStore, WalStoreError> {
        if !is_valid_wal_segment_size(segment_size) {
            return Err(WalStoreError::InvalidSegmentSize(segment_size));
        }
        let mut store = WalStore {
            dir: dir.to_owned(),
            segment_size: u64::from(segment_size),
            timeline,
            wal_start,
            write_lsn: wal_start,
            flush_lsn: wal_start,
            pending: Vec::new(),
            pending_from: Lsn(wal_start.0 - wal_start.0 % BLOCK),
            segments: BTreeMap::new(),
            first_kept: wal_start,
            preparing: None,
            prepared_through: 0,
            written_after: None,
        };
        store.remove_unfinished_preparations().await?;
        let numbers = store.segment_numbers_on_disk()?;
        if let Some(&first) = numbers.first() {
            store.first_kept = store.first_kept.max(store.segment_start(first));
        }
        store.prepared_through = numbers.last().copied().unwrap_or(0);
        let end = store.find_end(&numbers).await?;
        store.write_lsn = end;
        store.flush_lsn = end;
        store.pending_from = Lsn(end.0 - end.0 % BLOCK);
        store.pending = store.read_disk(store.pending_from, end).await?;
        Ok(store)
    }

    /// Where WAL written past the end of the readable log ends, when open
    /// found some: the log is damaged from [`flush_lsn`](Self::flush_lsn)
    /// to there (see the module doc).
    pub fn written_after_end(&self) -> Option<Lsn> {
        self.written_after
    }

    /// Durable WAL end.
    pub fn flush_lsn(&self) -> Lsn {
        self.flush_lsn
    }

    /// Appended WAL end (durable after the next flush).
    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }

    /// Segments per 4 GiB of WAL (`XLogSegmentsPerXLogId`; at least 4).
    fn segments_per_log(&self) -> u64 {
        0x1_0000_0000 / self.segment_size.max(1)
    }

    /// The LSN of segment `number`'s first byte (numbers come from file
    /// names and LSNs, so it is a valid LSN; saturated all the same).
    /// The first LSN whose bytes the store still holds.
    pub fn first_kept(&self) -> Lsn {
        self.first_kept
    }

    fn segment_start(&self, number: u64) -> Lsn {
        Lsn(number.saturating_mul(self.segment_size))
    }

    /// The LSN just past segment `number` (the last segment of the LSN
    /// space ends at `u64::MAX`, the LSN no byte is written at).
    fn segment_end(&self, number: u64) -> u64 {
        number.saturating_add(1).saturating_mul(self.segment_size)
    }

    /// The segment holding `lsn`, and the offset in it.
    fn locate(&self, lsn: u64) -> (u64, u64) {
        let size = self.segment_size.max(1);
        (lsn / size, lsn % size)
    }

    fn segment_name(&self, number: u64) -> String {
        let per_log = self.segments_per_log();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            number / per_log,
            number % per_log
        )
    }

    fn segment_numbers_on_disk(&self) -> Result<Vec<u64>, WalStoreError> {
        let list_error = |source| WalStoreError::List {
            path: self.dir.display().to_string(),
            source,
        };
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(list_error)? {
            let name = entry.map_err(list_error)?.file_name();
            if let Some(number) = name.to_str().and_then(|name| self.parse_segment_name(name)) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The number of the segment a file name names, if it is one of this
    /// timeline's segments: 24 hex digits (timeline, log, segment within the
    /// log, below the segments per log, as Postgres names them). Other
    /// files are not WAL and are left alone.
    fn parse_segment_name(&self, name: &str) -> Option<u64> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let field = |at: usize| {
            name.get(at..at + 8)
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .map(u64::from)
        };
        let per_log = self.segments_per_log();
        let (timeline, log, segment) = (field(0)?, field(8)?, field(16)?);
        if timeline != u64::from(self.timeline) || segment >= per_log {
            return None;
        }
        // log < 2^32 and segment < per_log: the segment starts below 2^64.
        Some(log * per_log + segment)
    }

    /// Removes the temporary files of preparations a crash interrupted.
    async fn remove_unfinished_preparations(&self) -> Result<(), WalStoreError> {
        let list_error = |source| WalStoreError::List {
            path: self.dir.display().to_string(),
            source,
        };
        for entry in std::fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(is_unfinished_preparation)
            {
                remove_file(&entry.path()).await?;
            }
        }
        Ok(())
    }

    /// Starts writing the zeros of the segment after the one holding `end`,
    /// unless it exists or is under way (one preparation at a time).
    fn prepare_next(&mut self, end: Lsn) {
        let (current, _) = self.locate(end.0);
        let next = current.saturating_add(1);
        if next <= self.prepared_through
            || self.preparing.is_some()
            || next.checked_mul(self.segment_size).is_none()
            || self.segments.contains_key(&next)
        {
            return;
        }
        self.prepared_through = next;
        let path = self.dir.join(self.segment_name(next));
        if path.exists() {
            return;
        }
        let size = self.segment_size;
        let task = spawn_local(async move { SegmentFile::prepare(&path, size).await });
        self.preparing = Some((next, task));
    }

    /// Waits for the preparation under way (of segment `only`, or of any
    /// when `None`). A failed one is only reported: the segment is then
    /// created when first written, as without preparation.
    async fn settle_preparation(&mut self, only: Option<u64>) {
        let Some((number, _)) = &self.preparing else {
            return;
        };
        if only.is_some_and(|wanted| wanted != *number) {
            return;
        }
        if let Some((number, task)) = self.preparing.take()
            && let Err(e) = task.await
        {
            eprintln!(
                "safekeeper: writing segment {} ahead failed (it is created when needed): {e}",
                self.segment_name(number)
            );
        }
    }

    async fn segment(&mut self, number: u64) -> Result<&SegmentFile, WalStoreError> {
        if !self.segments.contains_key(&number) {
            self.settle_preparation(Some(number)).await;
            let path = self.dir.join(self.segment_name(number));
            let file = SegmentFile::open_or_create(&path, self.segment_size).await?;
            self.segments.insert(number, file);
        }
        Ok(&self.segments[&number])
    }

    /// The end of the last whole record on disk. Decoding starts in the
    /// segment before the last one (or earlier, when that holds no record
    /// start), so a record that crosses into the last segment is checked
    /// whole: a page header's `xlp_rem_len` only says where the next record
    /// would begin, not that the bytes before it arrived.
    async fn find_end(&mut self, numbers: &[u64]) -> Result<Lsn, WalStoreError> {
        let (first_segment, _) = self.locate(self.wal_start.0);
        let mut numbers: Vec<u64> = numbers
            .iter()
            .copied()
            .filter(|&n| n >= first_segment)
            .collect();
        // Segments written ahead and never reached hold only zeros: the
        // last segment of the WAL is the last one whose first page was
        // written (a page always begins with its header; in the first
        // segment, the page holding the WAL's start).
        while let Some(&last) = numbers.last() {
            let first_block = if last == first_segment {
                u32::try_from((self.wal_start.0 % self.segment_size.max(1)) / BLOCK).unwrap_or(0)
            } else {
                0
            };
            let first_page = self
                .segment(last)
                .await?
                .read_blocks(first_block, 1)
                .await?;
            if first_page.iter().any(|&b| b != 0) {
                break;
            }
            numbers.pop();
        }
        let Some(last) = numbers.len().checked_sub(1) else {
            return Ok(self.wal_start);
        };
        for index in (0..last.max(1)).rev() {
            let Some(&number) = numbers.get(index) else {
                continue;
            };
            let start = if number == first_segment {
                Some(self.wal_start)
            } else {
                let bytes = self.read_segment(number).await?;
                let size = u32::try_from(self.segment_size).unwrap_or(u32::MAX);
                first_record_start(&bytes, self.segment_start(number), size).map_err(|e| {
                    WalStoreError::Damaged {
                        path: self.segment_name(number),
                        what: e.to_string(),
                    }
                })?
            };
            if let Some(start) = start {
                let from = numbers.get(index..).unwrap_or_default();
                return self.decode_end(start, from).await;
            }
        }
        Ok(self.wal_start)
    }

    async fn decode_end(&mut self, start: Lsn, numbers: &[u64]) -> Result<Lsn, WalStoreError> {
        let size = u32::try_from(self.segment_size).unwrap_or(u32::MAX);
        let mut decoder = WalStreamDecoder::new(start, size);
        let mut end = start;
        let (first, first_offset) = self.locate(start.0);
        for (expected, &number) in (first..).zip(numbers) {
            if number != expected {
                // A segment is missing: what lies after it is evidence.
                let later: Vec<u64> = numbers.iter().copied().filter(|&n| n > expected).collect();
                self.written_after = self.written_after(end, &later).await?;
                return Ok(end);
            }
            let bytes = self.read_segment(number).await?;
            let offset = if number == first {
                usize::try_from(first_offset).unwrap_or(usize::MAX)
            } else {
                0
            };
            decoder.feed(bytes.get(offset..).unwrap_or_default());
            loop {
                match decoder.next_record() {
                    Ok(Some(record)) => match record.end.align_up(8) {
                        Some(aligned) => end = aligned,
                        None => return Ok(end),
                    },
                    Ok(None) => break,
                    Err(_) => {
                        let (at, _) = self.locate(end.0);
                        let later: Vec<u64> =
                            numbers.iter().copied().filter(|&n| n >= at).collect();
                        self.written_after = self.written_after(end, &later).await?;
                        return Ok(end);
                    }
                }
            }
        }
        // After an XLOG_SWITCH the rest of its segment is padding the
        // compute sent too: the log ends at the segment's end.
        let position = decoder.position();
        if decoder.is_between_records()
            && position > end
            && position.0.is_multiple_of(self.segment_size)
        {
            end = position;
        }
        Ok(end)
    }

    /// After the last record that decodes, ending at `end`: how far WAL was
    /// written beyond it in the segments `numbers` (ascending, from the one
    /// holding `end`), judged by later pages with a valid header on which a
    /// record starts and decodes whole (within its segment). `None` when no
    /// such record exists (a torn tail). Each byte is decoded at most once.
    async fn written_after(
        &mut self,
        end: Lsn,
        numbers: &[u64],
    ) -> Result<Option<Lsn>, WalStoreError> {
        let size = u32::try_from(self.segment_size).unwrap_or(u32::MAX);
        let page = u64::from(quire_postgres::types::XLOG_BLCKSZ);
        let page_len = usize::try_from(page).unwrap_or(usize::MAX);
        let mut found: Option<Lsn> = None;
        // From the page after the one the bad record starts in.
        let mut at = (end.0 / page).saturating_add(1).saturating_mul(page);
        for &number in numbers {
            let segment_start = self.segment_start(number).0;
            let segment_end = self.segment_end(number);
            if segment_end <= at {
                continue;
            }
            at = at.max(segment_start);
            let bytes = self.read_segment(number).await?;
            while at < segment_end {
                let offset = usize::try_from(at - segment_start).unwrap_or(usize::MAX);
                let Some(page_bytes) = bytes.get(offset..offset.saturating_add(page_len)) else {
                    break;
                };
                let start = match decode_page_header(page_bytes, Lsn(at), size) {
                    Ok(header) if header.timeline == self.timeline => {
                        first_record_start(page_bytes, Lsn(at), size).ok().flatten()
                    }
                    _ => None,
                };
                let Some(start) = start else {
                    at += page;
                    continue;
                };
                // Decode from there, 64 KiB at a time, as far as it goes.
                let mut decoder = WalStreamDecoder::new(start, size);
                let mut fed = usize::try_from(start.0 - segment_start).unwrap_or(usize::MAX);
                let mut last = start;
                'decode: while let Some(chunk) = bytes.get(fed..(fed + (64 << 10)).min(bytes.len()))
                {
                    if chunk.is_empty() {
                        break;
                    }
                    decoder.feed(chunk);
                    fed += chunk.len();
                    loop {
                        match decoder.next_record() {
                            Ok(Some(record)) => last = record.end.align_up(8).unwrap_or(record.end),
                            Ok(None) => break,
                            Err(_) => break 'decode,
                        }
                    }
                }
                if last > start {
                    found = Some(found.map_or(last, |f| f.max(last)));
                }
                // Go on from the page after the one decoding stopped in.
                at = (last.0 / page + 1) * page;
            }
        }
        Ok(found.filter(|&f| f > end))
    }

    /// Judges the log against `mark`, a position the WAL was durable up to
    /// (the control file's flush mark): `Some(mark)` when the log ends
    /// below it other than inside one last partial record — the bytes up
    /// to the mark do not continue the record at the log's end, or a
    /// segment holding them is gone. A torn tail keeps the start of its
    /// last record; damage does not.
    pub async fn damaged_below(&mut self, mark: Lsn) -> Result<Option<Lsn>, WalStoreError> {
        let end = self.flush_lsn;
        if mark <= end {
            return Ok(None);
        }
        let on_disk = self.segment_numbers_on_disk()?;
        let (first, _) = self.locate(end.0);
        let (last, _) = self.locate(mark.0.saturating_sub(1));
        if (first..=last).any(|n| on_disk.binary_search(&n).is_err()) {
            return Ok(Some(mark));
        }
        let size = u32::try_from(self.segment_size).unwrap_or(u32::MAX);
        let mut decoder = WalStreamDecoder::new(end, size);
        let mut at = end;
        while at < mark {
            let to = mark.min(Lsn(at.0.saturating_add(1 << 20)));
            decoder.feed(&self.read_disk(at, to).await?);
            at = to;
            match decoder.next_record() {
                // The bytes so far are the start of one record.
                Ok(None) => {}
                // A record that ends below the mark and decodes now, or one
                // that does not: either way not what open found.
                Ok(Some(_)) | Err(_) => return Ok(Some(mark)),
            }
        }
        Ok(None)
    }

    async fn read_segment(&mut self, number: u64) -> Result<Vec<u8>, WalStoreError> {
        let blocks = u32::try_from(self.segment_size / BLOCK).unwrap_or(u32::MAX);
        Ok(self.segment(number).await?.read_blocks(0, blocks).await?)
    }

    /// Reads `[from, to)` from disk (whole blocks, then cut).
    async fn read_disk(&mut self, from: Lsn, to: Lsn) -> Result<Vec<u8>, WalStoreError> {
        let mut out = Vec::with_capacity(usize::try_from(to.0 - from.0).unwrap_or(0));
        let mut at = from.0;
        while at < to.0 {
            let (number, in_segment) = self.locate(at);
            let until = to.0.min(self.segment_end(number));
            let first_block = in_segment / BLOCK;
            let last_block = (until - self.segment_start(number).0).div_ceil(BLOCK);
            let blocks = self
                .segment(number)
                .await?
                .read_blocks(
                    u32::try_from(first_block).unwrap_or(u32::MAX),
                    u32::try_from(last_block - first_block).unwrap_or(u32::MAX),
                )
                .await?;
            let skip = usize::try_from(in_segment % BLOCK).unwrap_or(0);
            let take = usize::try_from(until - at).unwrap_or(0);
            let Some(read) = blocks.get(skip..skip.saturating_add(take)) else {
                return Err(WalStoreError::Damaged {
                    path: self.segment_name(number),
                    what: format!("shorter than the WAL read from it ({} bytes)", blocks.len()),
                });
            };
            out.extend_from_slice(read);
            at = until;
        }
        Ok(out)
    }

    /// Appends `bytes` at `at`, which must be the write LSN.
    pub fn append(&mut self, at: Lsn, bytes: &[u8]) -> Result<(), WalStoreError> {
        if at != self.write_lsn {
            return Err(WalStoreError::Range(format!(
                "append at {at}, but the WAL ends at {}",
                self.write_lsn
            )));
        }
        let Some(end) = self.write_lsn.checked_add(bytes.len() as u64) else {
            return Err(WalStoreError::Range(format!(
                "append of {} bytes at {at} past the end of the LSN space",
                bytes.len()
            )));
        };
        self.pending.extend_from_slice(bytes);
        self.write_lsn = end;
        Ok(())
    }

    /// Writes what was appended (`O_DSYNC`: durable when written); returns
    /// the durable end.
    pub async fn flush(&mut self) -> Result<Lsn, WalStoreError> {
        if self.write_lsn == self.flush_lsn {
            return Ok(self.flush_lsn);
        }
        let end = self.write_lsn;
        let mut image = std::mem::take(&mut self.pending);
        let kept = image.len();
        image.resize(kept.next_multiple_of(BLOCK_SIZE), 0);
        let mut at = self.pending_from.0;
        let mut offset = 0usize;
        while offset < image.len() {
            let (number, in_segment) = self.locate(at);
            let room = usize::try_from(self.segment_end(number) - at).unwrap_or(usize::MAX);
            let len = room.min(image.len() - offset);
            if len == 0 {
                // Only at the very end of the LSN space, which no append reaches.
                break;
            }
            let block = u32::try_from(in_segment / BLOCK).unwrap_or(u32::MAX);
            self.segment(number)
                .await?
                .write_blocks(block, &image[offset..offset + len])
                .await?;
            offset += len;
            at = at.saturating_add(len as u64);
        }
        // Segment writes are O_DSYNC: each was durable when it completed.
        // Keep the last partial block for the next flush to rewrite.
        let new_from = end.0 - end.0 % BLOCK;
        let drop = usize::try_from(new_from - self.pending_from.0).unwrap_or(0);
        image.truncate(kept);
        image.drain(..drop.min(image.len()));
        self.pending = image;
        self.pending_from = Lsn(new_from);
        self.flush_lsn = end;
        self.prepare_next(end);
        Ok(end)
    }

    /// Cuts the WAL at `at` (at most the write LSN), durably: nothing after
    /// it remains readable or decodable.
    pub async fn truncate(&mut self, at: Lsn) -> Result<(), WalStoreError> {
        if at > self.write_lsn || at < self.wal_start {
            return Err(WalStoreError::Range(format!(
                "cut at {at} outside the WAL {}..{}",
                self.wal_start, self.write_lsn
            )));
        }
        let block_start = Lsn(at.0 - at.0 % BLOCK);
        let mut head = if block_start >= self.pending_from {
            let keep = usize::try_from(block_start.0 - self.pending_from.0).unwrap_or(0);
            self.pending[keep.min(self.pending.len())..].to_vec()
        } else {
            let durable_end = self.flush_lsn.min(Lsn(block_start.0 + BLOCK));
            self.read_disk(block_start, durable_end).await?
        };
        head.truncate(usize::try_from(at.0 - block_start.0).unwrap_or(0));
        let mut block = head.clone();
        block.resize(BLOCK_SIZE, 0);
        let (number, in_segment) = self.locate(at.0);
        // Below segment_size / BLOCK, at most 2^17.
        let block_number = u32::try_from(in_segment / BLOCK).unwrap_or(u32::MAX - 1);
        // A segment written ahead past the cut goes with the later ones.
        // Later WAL goes first, the cut block last: a crash in between
        // leaves a log ending inside that block (a prefix of the old one),
        // never valid pages after a record that stops decoding.
        self.settle_preparation(None).await;
        let later: Vec<u64> = self
            .segment_numbers_on_disk()?
            .into_iter()
            .filter(|&n| n > number)
            .collect();
        for n in later.into_iter().rev() {
            if let Some(file) = self.segments.remove(&n) {
                file.close().await?;
            }
            remove_file(&self.dir.join(self.segment_name(n))).await?;
        }
        let segment = self.segment(number).await?;
        segment.punch_from(block_number.saturating_add(1)).await?;
        segment.sync().await?;
        sync_directory_of(&self.dir.join(self.segment_name(number))).await?;
        let segment = self.segment(number).await?;
        segment.write_blocks(block_number, &block).await?;
        segment.sync().await?;
        self.prepared_through = number;
        self.pending = head;
        self.pending_from = block_start;
        self.write_lsn = at;
        self.flush_lsn = at;
        Ok(())
    }

    /// The WAL `[from, to)`, durable or not yet.
    pub async fn read(&mut self, from: Lsn, to: Lsn) -> Result<Vec<u8>, WalStoreError> {
        if from > to || from < self.first_kept || to > self.write_lsn {
            return Err(WalStoreError::Range(format!(
                "read {from}..{to} outside the WAL {}..{}",
                self.first_kept, self.write_lsn
            )));
        }
        let mut out = if from < self.pending_from {
            self.read_disk(from, to.min(self.pending_from)).await?
        } else {
            Vec::new()
        };
        if to > self.pending_from {
            let skip = usize::try_from(from.0.saturating_sub(self.pending_from.0)).unwrap_or(0);
            let take = usize::try_from(to.0 - self.pending_from.0).unwrap_or(0);
            // `pending` holds `pending_from..write_lsn`, and `to` is at most
            // the write LSN.
            let Some(pending) = self.pending.get(skip..take) else {
                return Err(WalStoreError::Range(format!(
                    "read {from}..{to} outside the WAL held in memory from {}",
                    self.pending_from
                )));
            };
            out.extend_from_slice(pending);
        }
        Ok(out)
    }

    /// Removes whole segments that end at or below `before` (never the
    /// one holding the write position).
    pub async fn remove_segments_before(&mut self, before: Lsn) -> Result<u64, WalStoreError> {
        let mut removed = 0;
        let before = before.min(self.write_lsn);
        for number in self.segment_numbers_on_disk()? {
            if self.segment_end(number) > before.0 {
                break;
            }
            if let Some(file) = self.segments.remove(&number) {
                file.close().await?;
            }
            remove_file(&self.dir.join(self.segment_name(number))).await?;
            removed += 1;
            self.first_kept = self.first_kept.max(Lsn(self.segment_end(number)));
        }
        Ok(removed)
    }

    /// Closes every open segment.
    pub async fn close(mut self) -> Result<(), WalStoreError> {
        self.settle_preparation(None).await;
        for (_, file) in std::mem::take(&mut self.segments) {
            file.close().await?;
        }
        Ok(())
    }
}
