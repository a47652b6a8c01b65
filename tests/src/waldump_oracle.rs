//! `pg_waldump` as the oracle for WAL decoding.
//!
//! Converts `pg_waldump --bkp-details` output into the line format of
//! `quire waldump` (`lsn=… rmgr=… len=… blocks=… blk=…[ fpi]…`), so the two
//! can be compared line by line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The WAL segment files of a data directory, in LSN order.
pub fn wal_segments(datadir: &Path) -> Result<Vec<PathBuf>> {
    quire_cluster::wal_segment_files(&datadir.join("pg_wal"))
}

/// Converts `pg_waldump -b` output to `quire waldump` lines (without the
/// final error line).
pub fn pg_waldump_lines(output: &str) -> Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<(String, String, String)> = None;
    let flush = |current: &mut Option<(String, String, String)>,
                 blocks: &mut Vec<String>,
                 lines: &mut Vec<String>| {
        if let Some((lsn, rmgr, len)) = current.take() {
            let mut line = format!("lsn={lsn} rmgr={rmgr} len={len} blocks={}", blocks.len());
            for block in blocks.drain(..) {
                line.push(' ');
                line.push_str(&block);
            }
            lines.push(line);
        }
    };
    for text in output.lines() {
        if let Some(rest) = text.strip_prefix("rmgr: ") {
            flush(&mut current, &mut blocks, &mut lines);
            current = Some(parse_summary(rest).with_context(|| format!("parse {text:?}"))?);
        } else if let Some(rest) = text.strip_prefix("\tblkref #") {
            if current.is_none() {
                bail!("block reference before any record: {text:?}");
            }
            blocks.push(parse_block(rest).with_context(|| format!("parse {text:?}"))?);
        }
    }
    flush(&mut current, &mut blocks, &mut lines);
    Ok(lines)
}

/// Each record's description (the text after `desc: `: the record type
/// name, a space, and the rmgr's description), by LSN in `X/Y` form.
pub fn pg_waldump_descs(output: &str) -> Result<std::collections::HashMap<String, String>> {
    let mut descs = std::collections::HashMap::new();
    for text in output.lines() {
        if let Some(rest) = text.strip_prefix("rmgr: ") {
            let (lsn, _, _) = parse_summary(rest).with_context(|| format!("parse {text:?}"))?;
            descs.insert(lsn, after(rest, "desc: ")?.to_owned());
        }
    }
    Ok(descs)
}

/// `(lsn, rmgr, total length)` from the text after `rmgr: `.
fn parse_summary(rest: &str) -> Result<(String, String, String)> {
    let rmgr = rest.split_whitespace().next().context("no rmgr name")?;
    let lengths = after(rest, "len (rec/tot):")?;
    let total = lengths
        .split('/')
        .nth(1)
        .and_then(|t| t.split(',').next())
        .context("no total length")?
        .trim();
    let lsn_text = after(rest, "lsn: ")?
        .split(',')
        .next()
        .context("no lsn")?
        .trim();
    let lsn: quire_postgres::Lsn = lsn_text.parse()?;
    Ok((lsn.to_string(), rmgr.to_owned(), total.to_owned()))
}

/// `blk=spc/db/rel.fork:block[ fpi]` from the text after `\tblkref #`.
fn parse_block(rest: &str) -> Result<String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    // "N: rel S/D/R fork F blk B [(FPW...]"
    let (Some(&"rel"), Some(rel), Some(&"fork"), Some(fork), Some(&"blk"), Some(block)) = (
        words.get(1),
        words.get(2),
        words.get(3),
        words.get(4),
        words.get(5),
        words.get(6),
    ) else {
        bail!("unexpected block reference layout");
    };
    let fork_number = match *fork {
        "main" => 0,
        "fsm" => 1,
        "vm" => 2,
        "init" => 3,
        other => bail!("unknown fork {other}"),
    };
    let fpi = if rest.contains("(FPW") { " fpi" } else { "" };
    Ok(format!(
        "blk={rel}.{fork_number}:{}{fpi}",
        block.trim_end_matches(';')
    ))
}

fn after<'a>(text: &'a str, marker: &str) -> Result<&'a str> {
    text.find(marker)
        .map(|at| &text[at + marker.len()..])
        .with_context(|| format!("no {marker:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_records_with_and_without_blocks() {
        let output = "rmgr: Heap        len (rec/tot):     59/  8251, tx:        744, lsn: 0/01548A30, prev 0/015489F8, desc: INSERT off: 5, flags: 0x00\n\
             \tblkref #0: rel 1663/5/16384 fork main blk 0 (FPW); hole: offset: 44, length: 7872\n\
             \tblkref #1: rel 1663/5/16384 fork vm blk 0\n\
             rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, lsn: 0/01548A70, prev 0/01548A30, desc: SWITCH \n\
             pg_waldump: error: error in WAL record at 0/1548A70: invalid record length\n";
        assert_eq!(
            pg_waldump_lines(output).unwrap(),
            [
                "lsn=0/1548A30 rmgr=Heap len=8251 blocks=2 blk=1663/5/16384.0:0 fpi blk=1663/5/16384.2:0",
                "lsn=0/1548A70 rmgr=XLOG len=24 blocks=0",
            ]
        );
        assert!(pg_waldump_lines("\tblkref #0: rel 1/2/3 fork main blk 0\n").is_err());
    }
}
