//! `quire waldump FILE...`: every decoded WAL record, one line each.
//!
//! The line format is fixed so that a script can compare any WAL with
//! `pg_waldump`:
//!
//! ```text
//! lsn=<X/Y> rmgr=<name> len=<xl_tot_len> blocks=<n>[ blk=<spc>/<db>/<rel>.<fork>:<block>[ fpi]]...
//! ```
//!
//! Files are WAL segments in order; decoding starts at the first file's
//! first page. Every full-page image is restored (decompressed), so an image
//! that does not restore is reported like any other corruption. When the WAL stops making sense (a torn or corrupt tail, or
//! the zeros past the end of written WAL) the output ends with
//! `error: <lsn> <what>` and the exit status is 1, as with `pg_waldump`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use quire_postgres::types::{BLCKSZ, RelTag};
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::rmgr::rmgr_name;
use quire_postgres::wal::stream::{Record, WalStreamDecoder};

/// Options of `quire waldump`.
#[derive(Args)]
pub struct WaldumpArgs {
    /// WAL segment files, in LSN order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Whether the dump reached the end of its input cleanly.
pub enum Outcome {
    /// Every byte decoded.
    Complete,
    /// Decoding stopped at an error line.
    Stopped,
}

pub fn run(args: &WaldumpArgs) -> Result<Outcome> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let outcome = dump(&args.files, &mut out)?;
    out.flush().context("write to standard output")?;
    Ok(outcome)
}

/// Decodes `files` and writes one line per record to `out`.
pub fn dump(files: &[PathBuf], out: &mut impl Write) -> Result<Outcome> {
    let Some(first) = files.first() else {
        bail!("no WAL files given");
    };
    let head = read(first)?;
    let header = read_segment_header(&head)
        .with_context(|| format!("{} is not a WAL segment", first.display()))?;
    let mut decoder = WalStreamDecoder::new(header.start, header.segment_size);
    let mut line = String::with_capacity(256);
    for (index, path) in files.iter().enumerate() {
        if index == 0 {
            decoder.feed(&head);
        } else {
            decoder.feed_owned(read(path)?);
        }
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    if let Err(what) = format_record(&record, &mut line) {
                        writeln!(out, "error: {} {what}", record.start).context("write")?;
                        return Ok(Outcome::Stopped);
                    }
                    out.write_all(line.as_bytes()).context("write")?;
                }
                Ok(None) => break,
                Err(error) => {
                    writeln!(out, "error: {error}").context("write")?;
                    return Ok(Outcome::Stopped);
                }
            }
        }
    }
    if !decoder.is_between_records() {
        writeln!(
            out,
            "error: {} input ends inside a record",
            decoder.position()
        )
        .context("write")?;
        return Ok(Outcome::Stopped);
    }
    Ok(Outcome::Complete)
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// Formats one record's line into `line` (replacing its contents).
pub fn format_record(record: &Record<'_>, line: &mut String) -> Result<(), String> {
    let decoded = decode_record(record.bytes).map_err(|e| e.to_string())?;
    line.clear();
    let _ = write!(
        line,
        "lsn={} rmgr={} len={} blocks={}",
        record.start,
        rmgr_name(decoded.header.rmid),
        decoded.header.total_length,
        decoded.block_count()
    );
    let mut page = [0u8; BLCKSZ];
    for block in decoded.blocks() {
        let tag = RelTag::new(block.rel, block.fork);
        let _ = write!(line, " blk={tag}:{}", block.block);
        if let Some(image) = &block.image {
            // An image that does not restore makes the record corrupt.
            image
                .restore(&mut page)
                .map_err(|e| format!("block {}: {e}", block.id))?;
            line.push_str(" fpi");
        }
    }
    line.push('\n');
    Ok(())
}
