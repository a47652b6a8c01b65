//! The files of a Postgres data directory that hold relations and SLRUs.
//!
//! Relation files are `<relfilenumber>[_fsm|_vm|_init][.<segment>]` under
//! `global/` (shared relations, tablespace 1664), `base/<db>/` (tablespace
//! 1663) and `pg_tblspc/<spc>/PG_17_<catversion>/<db>/`; each segment holds
//! up to 131,072 blocks. Temporary relations (`t<backend>_<number>`) and the
//! forks of unlogged relations other than their init fork are never in the
//! WAL: they are listed apart. SLRU segments are 32 pages, named in hex.
//! `read_tail` sorts the pages past the end the WAL gave a fork into
//! all-zero ones and written ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use quire_postgres::key::SlruKind;
use quire_postgres::types::{
    DEFAULT_TABLESPACE_OID, ForkNumber, GLOBAL_TABLESPACE_OID, Oid, RELSEG_SIZE, RelTag,
};

/// Pages per SLRU segment file.
pub const SLRU_PAGES_PER_SEGMENT: u32 = 32;

/// One relation fork on disk: its segment files in order.
#[derive(Clone, Debug)]
pub struct RelationFiles {
    /// The fork.
    pub rel: RelTag,
    /// `(segment number, path)`, ascending.
    pub segments: Vec<(u32, PathBuf)>,
}

impl RelationFiles {
    /// The path and byte offset of a block.
    pub fn locate(&self, block: u32) -> Option<(&Path, u64)> {
        let segment = block / RELSEG_SIZE;
        self.segments
            .iter()
            .find(|(n, _)| *n == segment)
            .map(|(_, path)| (path.as_path(), u64::from(block % RELSEG_SIZE) * 8192))
    }

    /// The fork's size in blocks, from its files' lengths.
    pub fn blocks(&self) -> Result<u32> {
        let mut total = 0u64;
        for (segment, path) in &self.segments {
            let len = fs::metadata(path)
                .with_context(|| format!("stat {}", path.display()))?
                .len();
            total = total.max(u64::from(*segment) * u64::from(RELSEG_SIZE) + len / 8192);
        }
        u32::try_from(total).context("relation larger than 2^32 blocks")
    }
}

/// What a data directory holds.
#[derive(Debug, Default)]
pub struct DataDirectory {
    /// WAL-logged relation forks.
    pub relations: BTreeMap<RelTag, RelationFiles>,
    /// Forks of unlogged and temporary relations (never WAL-logged).
    pub unlogged: Vec<RelationFiles>,
    /// Relation map files: `(spc, db)` → path.
    pub relmaps: BTreeMap<(Oid, Oid), PathBuf>,
    /// SLRU segments: `(kind, segment)` → path.
    pub slru_segments: BTreeMap<(SlruKind, u32), PathBuf>,
}

/// Lists the relation and SLRU files of `pgdata`.
pub fn scan(pgdata: &Path) -> Result<DataDirectory> {
    let mut dir = DataDirectory::default();
    let mut files: Vec<(RelTag, u32, PathBuf)> = Vec::new();
    let mut temp: Vec<(RelTag, u32, PathBuf)> = Vec::new();
    scan_database(
        &pgdata.join("global"),
        GLOBAL_TABLESPACE_OID,
        0,
        &mut dir,
        &mut files,
        &mut temp,
    )?;
    for (db, path) in numbered_entries(&pgdata.join("base"))? {
        scan_database(
            &path,
            DEFAULT_TABLESPACE_OID,
            db,
            &mut dir,
            &mut files,
            &mut temp,
        )?;
    }
    let tblspc = pgdata.join("pg_tblspc");
    if tblspc.is_dir() {
        for (spc, link) in numbered_entries(&tblspc)? {
            for version in
                fs::read_dir(&link).with_context(|| format!("list {}", link.display()))?
            {
                let version = version?.path();
                for (db, path) in numbered_entries(&version)? {
                    scan_database(&path, spc, db, &mut dir, &mut files, &mut temp)?;
                }
            }
        }
    }
    // A relation with an init fork is unlogged: only the init fork is WAL-logged.
    let unlogged: BTreeSet<_> = files
        .iter()
        .filter(|(rel, _, _)| rel.fork == ForkNumber::Init)
        .map(|(rel, _, _)| rel.locator())
        .collect();
    let mut unlogged_forks: BTreeMap<RelTag, RelationFiles> = BTreeMap::new();
    for (rel, segment, path) in files {
        let target = if rel.fork != ForkNumber::Init && unlogged.contains(&rel.locator()) {
            &mut unlogged_forks
        } else {
            &mut dir.relations
        };
        add_segment(target, rel, segment, path);
    }
    for (rel, segment, path) in temp {
        add_segment(&mut unlogged_forks, rel, segment, path);
    }
    for files in dir
        .relations
        .values_mut()
        .chain(unlogged_forks.values_mut())
    {
        files.segments.sort();
    }
    dir.unlogged = unlogged_forks.into_values().collect();
    for (kind, sub) in [
        (SlruKind::Clog, "pg_xact"),
        (SlruKind::MultiXactOffsets, "pg_multixact/offsets"),
        (SlruKind::MultiXactMembers, "pg_multixact/members"),
    ] {
        let path = pgdata.join(sub);
        for entry in fs::read_dir(&path).with_context(|| format!("list {}", path.display()))? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.len() >= 4
                && let Ok(segment) = u32::from_str_radix(name, 16)
            {
                dir.slru_segments.insert((kind, segment), path);
            }
        }
    }
    Ok(dir)
}

fn add_segment(
    forks: &mut BTreeMap<RelTag, RelationFiles>,
    rel: RelTag,
    segment: u32,
    path: PathBuf,
) {
    forks
        .entry(rel)
        .or_insert_with(|| RelationFiles {
            rel,
            segments: Vec::new(),
        })
        .segments
        .push((segment, path));
}

fn numbered_entries(dir: &Path) -> Result<Vec<(Oid, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if let Some(oid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<Oid>().ok())
        {
            out.push((oid, path));
        }
    }
    out.sort();
    Ok(out)
}

fn scan_database(
    path: &Path,
    spc: Oid,
    db: Oid,
    dir: &mut DataDirectory,
    files: &mut Vec<(RelTag, u32, PathBuf)>,
    temp: &mut Vec<(RelTag, u32, PathBuf)>,
) -> Result<()> {
    for entry in fs::read_dir(path).with_context(|| format!("list {}", path.display()))? {
        let file = entry?.path();
        let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == "pg_filenode.map" {
            dir.relmaps.insert((spc, db), file);
            continue;
        }
        let (is_temp, name) = match name.strip_prefix('t') {
            Some(rest) => match rest.split_once('_') {
                Some((backend, rest)) if backend.bytes().all(|b| b.is_ascii_digit()) => {
                    (true, rest)
                }
                _ => continue,
            },
            None => (false, name),
        };
        let Some((number, fork, segment)) = parse_relation_file_name(name) else {
            continue;
        };
        let rel = RelTag {
            spc_oid: spc,
            db_oid: db,
            rel_number: number,
            fork,
        };
        if is_temp {
            temp.push((rel, segment, file));
        } else {
            files.push((rel, segment, file));
        }
    }
    Ok(())
}

/// `<number>[_fsm|_vm|_init][.<segment>]`.
pub fn parse_relation_file_name(name: &str) -> Option<(u32, ForkNumber, u32)> {
    let (base, segment) = match name.split_once('.') {
        Some((base, segment)) => (base, segment.parse().ok()?),
        None => (name, 0),
    };
    let (number, fork) = match base.split_once('_') {
        Some((number, "fsm")) => (number, ForkNumber::Fsm),
        Some((number, "vm")) => (number, ForkNumber::VisibilityMap),
        Some((number, "init")) => (number, ForkNumber::Init),
        Some(_) => return None,
        None => (base, ForkNumber::Main),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((number.parse().ok()?, fork, segment))
}

/// Reads block `block` of a fork into `page`; false if the files end first.
pub fn read_block(files: &RelationFiles, block: u32, page: &mut [u8; 8192]) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let Some((path, offset)) = files.locate(block) else {
        return Ok(false);
    };
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    match file.read_exact_at(page, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("read {} at {offset}", path.display())),
    }
}

/// Postgres' pages past the end the WAL gave a fork (all of a fork no WAL
/// names): Postgres extends relations with zeroed pages it does not log
/// (several heap pages at once, of which the WAL names those it fills; the
/// visibility-map fork `visibilitymap_pin` creates while VACUUM can mark no
/// page all-visible), and its own recovery would not have them either; a
/// page with any byte set is one the WAL should have reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailPages {
    /// All-zero pages: not a difference.
    pub zero: u64,
    /// Blocks of the others.
    pub written: Vec<u32>,
}

impl TailPages {
    /// Counts block `block`, whose contents are `page`.
    pub fn add(&mut self, block: u32, page: &[u8; 8192]) {
        if page.iter().all(|&b| b == 0) {
            self.zero += 1;
        } else {
            self.written.push(block);
        }
    }
}

/// Classifies the fork's pages in `blocks` (a block its files do not hold
/// reads as zeros).
pub fn read_tail(files: &RelationFiles, blocks: std::ops::Range<u32>) -> Result<TailPages> {
    let mut tail = TailPages::default();
    let mut page = Box::new([0u8; 8192]);
    for block in blocks {
        page.fill(0);
        read_block(files, block, &mut page)?;
        tail.add(block, &page);
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_pages_are_zero_or_written() {
        let mut tail = TailPages::default();
        let mut page = [0u8; 8192];
        tail.add(0, &page);
        page[8191] = 1;
        tail.add(1, &page);
        page[8191] = 0;
        page[0] = 0x80;
        tail.add(2, &page);
        tail.add(3, &[0u8; 8192]);
        assert_eq!(
            tail,
            TailPages {
                zero: 2,
                written: vec![1, 2],
            }
        );
    }

    #[test]
    fn relation_file_names() {
        assert_eq!(
            parse_relation_file_name("1259"),
            Some((1259, ForkNumber::Main, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_vm"),
            Some((16384, ForkNumber::VisibilityMap, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_fsm.2"),
            Some((16384, ForkNumber::Fsm, 2))
        );
        assert_eq!(
            parse_relation_file_name("16384.1"),
            Some((16384, ForkNumber::Main, 1))
        );
        assert_eq!(parse_relation_file_name("pg_filenode.map"), None);
        assert_eq!(parse_relation_file_name("PG_VERSION"), None);
        assert_eq!(parse_relation_file_name("16384_xx"), None);
    }
}
