//! The back link of a new compute's first WAL record.
//!
//! A basebackup's checkpoint record carries `xl_prev = 0` (the pageserver
//! does not know where the record before its LSN began). Postgres starts
//! from it all the same, but the safekeepers' WAL is one stream across
//! computes: whoever decodes it in one pass (the pageserver's WAL
//! receiver, `pg_waldump`, a standby) checks that each record links to the
//! one before and stops at a second compute's first record. So compute
//! control, which knows the timeline's last whole record from the
//! election, finds where that record starts (its WAL fetched from the
//! election's donor and decoded) and writes it into the checkpoint
//! record's `xl_prev`, with the record's CRC, before Postgres starts.
//!
//! It only reads outside bytes through the WAL decoder, and changes
//! nothing but the 8 bytes of `xl_prev` and the 4 of `xl_crc` of the record
//! at the basebackup's checkpoint position (found by decoding it first).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use quire_postgres::Lsn;
use quire_postgres::types::XLOG_BLCKSZ;
use quire_postgres::wal::page::first_record_start;
use quire_postgres::wal::record::record_crc;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_postgres::wal::writer::segment_file_name;
use quire_safekeeper::election::Won;
use quire_safekeeper::server::conn::FramedConn;
use quire_safekeeper::wire::{Message, TimelineKey};

/// A WAL page's header in the first page of a segment, and in the others.
const LONG_PAGE_HEADER: u64 = 40;
const SHORT_PAGE_HEADER: u64 = 24;
/// The bytes of a record header up to `xl_crc`, and `xl_prev`'s place.
const PREV_AT: usize = 8;
const CRC_AT: usize = 20;
const RECORD_HEADER: usize = 24;
/// The most WAL fetched to find the last record (two segments of 1 GiB
/// would be a bug elsewhere).
const FETCH_BYTES_MAX: u64 = 1 << 31;

/// Where the record ending at `won.start` (the timeline's last whole
/// record, rounded up to 8) begins, from the donor's WAL; `None` when the
/// safekeepers hold no record below it (the timeline's first compute).
pub async fn previous_record_start(
    donor: &str,
    token: Option<&str>,
    key: TimelineKey,
    won: &Won,
    segment_size: u32,
) -> Result<Option<Lsn>> {
    let end = won.start;
    let wal_start = won.history.0.first().map_or(end, |e| e.start);
    let segment = u64::from(segment_size);
    let mut number = end.0.saturating_sub(1) / segment;
    loop {
        let segment_start = Lsn(number * segment);
        let from = segment_start.max(wal_start);
        if from >= end {
            return Ok(None);
        }
        if end.0 - from.0 > FETCH_BYTES_MAX {
            bail!("the donor's WAL from {from} to {end} is too long to scan");
        }
        let bytes = fetch(donor, token, key, won, from, end).await?;
        let first = if from == segment_start {
            first_record_start(&bytes, segment_start, segment_size)
                .map_err(|e| anyhow!("the donor's WAL at {segment_start}: {e}"))?
        } else {
            Some(from)
        };
        let Some(first) = first else {
            if from == wal_start || number == 0 {
                return Ok(None);
            }
            number -= 1;
            continue;
        };
        let skip = usize::try_from(first.0 - from.0).unwrap_or(usize::MAX);
        let Some(tail) = bytes.get(skip..) else {
            return Ok(None);
        };
        let mut decoder = WalStreamDecoder::new(first, segment_size);
        decoder.feed(tail);
        let mut last = None;
        while let Some(record) = decoder
            .next_record()
            .map_err(|e| anyhow!("the donor's WAL below {end}: {e}"))?
        {
            last = Some((record.start, record.end.align_up(8).unwrap_or(record.end)));
        }
        return match last {
            Some((start, record_end)) if record_end == end => Ok(Some(start)),
            Some((start, record_end)) => bail!(
                "the donor's last record below {end} starts at {start} and ends at {record_end}, not at the election's start"
            ),
            None if from == wal_start || number == 0 => Ok(None),
            None => {
                number -= 1;
                continue;
            }
        };
    }
}

/// The donor's WAL `[from, to)` of the elected history.
async fn fetch(
    donor: &str,
    token: Option<&str>,
    key: TimelineKey,
    won: &Won,
    from: Lsn,
    to: Lsn,
) -> Result<Vec<u8>> {
    let mut conn = FramedConn::connect_as(donor, token)
        .await
        .map_err(|e| anyhow!("safekeeper {donor}: {e}"))?;
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let request = Message::Fetch {
            key,
            term: won.term,
            history: won.history.clone(),
            from: at,
            to,
        };
        match conn
            .call(&request)
            .await
            .map_err(|e| anyhow!("safekeeper {donor}: {e}"))?
        {
            Message::Wal { begin, bytes } if begin == at && !bytes.is_empty() => {
                at = at
                    .checked_add(bytes.len() as u64)
                    .context("WAL past the end of the LSN space")?;
                out.extend_from_slice(&bytes);
            }
            other => bail!("safekeeper {donor} answered a fetch of {at}..{to} with {other:?}"),
        }
    }
    Ok(out)
}

/// The file offsets, within its segment, of the `len` bytes of a record
/// starting at `start` (page headers stepped over).
fn record_offsets(start: Lsn, len: usize, segment_size: u32) -> Vec<usize> {
    let page = u64::from(XLOG_BLCKSZ);
    let segment = u64::from(segment_size);
    let mut offsets = Vec::with_capacity(len);
    let mut at = start.0;
    while offsets.len() < len {
        if at.is_multiple_of(page) {
            at += if at.is_multiple_of(segment) {
                LONG_PAGE_HEADER
            } else {
                SHORT_PAGE_HEADER
            };
        }
        offsets.push(usize::try_from(at % segment).unwrap_or(usize::MAX));
        at += 1;
    }
    offsets
}

/// Sets `xl_prev` of the checkpoint record at `checkpoint` in `data`'s
/// WAL segment to `prev`, and its CRC; checks the result decodes with
/// that link.
pub fn link_checkpoint(data: &Path, checkpoint: Lsn, prev: Lsn, segment_size: u32) -> Result<()> {
    if prev >= checkpoint {
        bail!("the previous record {prev} is not before the checkpoint at {checkpoint}");
    }
    let path = data
        .join("pg_wal")
        .join(segment_file_name(1, checkpoint, segment_size));
    let mut segment = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    if segment.len() != segment_size as usize {
        bail!("{}: {} bytes, not a segment", path.display(), segment.len());
    }
    let segment_start = Lsn(checkpoint.0 - u64::from(checkpoint.segment_offset(segment_size)));
    let record = decode_at(&segment, segment_start, checkpoint, segment_size, None)
        .with_context(|| format!("the checkpoint record in {}", path.display()))?;
    let offsets = record_offsets(checkpoint, record.len(), segment_size);
    let mut patched = record;
    let Some(link) = patched.get_mut(PREV_AT..CRC_AT - 4) else {
        bail!("the record at {checkpoint} is shorter than a record header");
    };
    link.copy_from_slice(&prev.0.to_le_bytes());
    let crc = record_crc(&patched);
    let Some(stored) = patched.get_mut(CRC_AT..RECORD_HEADER) else {
        bail!("the record at {checkpoint} is shorter than a record header");
    };
    stored.copy_from_slice(&crc.to_le_bytes());
    for (&offset, &byte) in offsets.iter().zip(&patched) {
        let Some(slot) = segment.get_mut(offset) else {
            bail!("the checkpoint record at {checkpoint} runs past its segment");
        };
        *slot = byte;
    }
    let again = decode_at(
        &segment,
        segment_start,
        checkpoint,
        segment_size,
        Some(prev),
    )?;
    if again != patched {
        bail!("the relinked checkpoint record at {checkpoint} does not read back");
    }
    let tmp = path.with_extension("relink");
    fs::write(&tmp, &segment).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("rename {}", tmp.display()))
}

/// The bytes of the record at `at` in `segment`, decoded (and, with
/// `prev`, its back link checked).
fn decode_at(
    segment: &[u8],
    segment_start: Lsn,
    at: Lsn,
    segment_size: u32,
    prev: Option<Lsn>,
) -> Result<Vec<u8>> {
    let skip = usize::try_from(at.0 - segment_start.0).unwrap_or(usize::MAX);
    let bytes = segment
        .get(skip..)
        .with_context(|| format!("no WAL at {at} in its segment"))?;
    let mut decoder = WalStreamDecoder::new(at, segment_size);
    if let Some(prev) = prev {
        decoder = decoder.with_previous_record(prev);
    }
    decoder.feed(bytes);
    let record = decoder
        .next_record()
        .map_err(|e| anyhow!("decode the record at {at}: {e}"))?
        .with_context(|| format!("no whole record at {at}"))?;
    if record.start != at {
        bail!("the record read at {at} starts at {}", record.start);
    }
    Ok(record.bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(start: u64, len: usize, expected_first: usize, expected_last: usize) {
        let offsets = record_offsets(Lsn(start), len, 16 << 20);
        assert_eq!(offsets.len(), len);
        assert_eq!(offsets.first().copied(), Some(expected_first));
        assert_eq!(offsets.last().copied(), Some(expected_last));
    }

    #[test]
    fn record_bytes_step_over_page_headers() {
        // Within one page.
        check(0x0100_0028, 114, 0x28, 0x28 + 113);
        // Across a page boundary: a short header at 0x2000.
        check(0x0100_1FF0, 32, 0x1FF0, 0x2000 + 24 + 15);
        // From a page start (the position is past the header already in
        // practice; a raw page start steps over it).
        check(0x0100_2000, 8, 0x2018, 0x2018 + 7);
    }
}
