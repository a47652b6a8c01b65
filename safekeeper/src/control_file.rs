//! The safekeeper control file: an acceptor's durable state, checksummed,
//! replaced atomically, kept as two copies.
//!
//! Layout (little-endian; docs/safekeeper-protocol.md):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `QSKC` |
//! | 4 | 4 | format version (3; 2 is read, without the flush mark) |
//! | 8 | 16 | tenant id |
//! | 24 | 16 | timeline id |
//! | 40 | 8 | term |
//! | 48 | 8 | WAL start LSN |
//! | 56 | 8 | commit LSN |
//! | 64 | 8 | removable-before LSN |
//! | 72 | 8 | the Postgres cluster's system identifier |
//! | 80 | 4 | WAL segment size (a power of two, 1 MiB..1 GiB) |
//! | 84 | 4 | history entries N |
//! | 88 | 8 | flush mark: WAL below it was durable (version 3) |
//! | 96 | 16·N | `(term: u64, start: u64)` per entry |
//! | 96+16·N | 4 | members M (1 to 7) |
//! | then, M times | 4 + 2 + L | member id `u32`, address length L `u16`, address (UTF-8 `host:port`) |
//! | last | 4 | CRC-32C of every byte before it |
//!
//! Every store replaces `control`, then `control.copy`, each by writing a
//! temporary file, fsyncing it, renaming it over the copy and fsyncing the
//! directory: a crash leaves each copy whole, old or new, and when the two
//! differ `control` is the newer. Both hold the newest state once a store
//! returns, so bit rot in one loses nothing: [`ControlFile::load`] takes
//! `control` when it is sound, else `control.copy`, and rewrites the other
//! from it, saying so ([`Loaded::repaired`]). Both damaged is an error
//! naming what was wrong with each, never a reset: losing a vote or a term
//! would break the protocol's safety. So is a file whose checksum passes
//! but whose values cannot be (a WAL segment size Postgres refuses, an
//! unordered history); such a file is never written either.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

use quire_postgres::Lsn;
use quire_postgres::types::is_valid_wal_segment_size;

use crate::acceptor::DurableState;
use crate::history::{TermEntry, TermHistory};
use crate::membership::{ADDRESS_BYTES_MAX, MEMBERS_MAX, Member, Membership, NodeId};

const MAGIC: &[u8; 4] = b"QSKC";
const VERSION: u32 = 3;
/// The version before the flush mark, still read.
const VERSION_2: u32 = 2;
const HEADER: usize = 96;
const HEADER_2: usize = 88;
/// Entries a control file may hold (a term per compute start).
const MAX_ENTRIES: usize = 1 << 20;

/// The file name in a timeline's directory.
pub const CONTROL_FILE: &str = "control";
/// The second copy's file name.
pub const CONTROL_COPY: &str = "control.copy";
const CONTROL_TMP: &str = "control.tmp";
const CONTROL_COPY_TMP: &str = "control.copy.tmp";

/// A control file read by [`ControlFile::load`].
#[derive(Debug)]
pub struct Loaded {
    /// What it says.
    pub file: ControlFile,
    /// A copy that was damaged, missing or stale and was rewritten from the
    /// other: `(file name, what was wrong)`.
    pub repaired: Option<(&'static str, String)>,
}

/// What a control file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    /// The tenant.
    pub tenant: [u8; 16],
    /// The timeline.
    pub timeline: [u8; 16],
    /// The Postgres cluster whose WAL this is.
    pub system_id: u64,
    /// Its WAL segment size.
    pub segment_size: u32,
    /// The acceptor's state.
    pub state: DurableState,
}

/// A control file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    /// Not a control file, a version we do not know, or damaged bytes.
    #[error("control file is corrupt: {0}")]
    Corrupt(&'static str),
    /// The file system failed.
    #[error("control file: {0}")]
    Io(#[from] io::Error),
    /// Neither copy can be used: what was found in each.
    #[error("control file: neither copy is usable ({0})")]
    Unreadable(String),
}

/// `N` bytes at `at`, or an error naming the short file.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], ControlFileError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| b.try_into().ok())
        .ok_or(ControlFileError::Corrupt("shorter than its fields"))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, ControlFileError> {
    array_at(bytes, at).map(u64::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, ControlFileError> {
    array_at(bytes, at).map(u32::from_le_bytes)
}

impl ControlFile {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let entries = &self.state.history.0;
        let mut out = Vec::with_capacity(HEADER + 16 * entries.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.tenant);
        out.extend_from_slice(&self.timeline);
        for value in [
            self.state.term,
            self.state.wal_start.0,
            self.state.commit_lsn.0,
            self.state.removable_before.0,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.system_id.to_le_bytes());
        out.extend_from_slice(&self.segment_size.to_le_bytes());
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.state.flush_mark.0.to_le_bytes());
        for entry in entries {
            out.extend_from_slice(&entry.term.to_le_bytes());
            out.extend_from_slice(&entry.start.0.to_le_bytes());
        }
        let members = self.state.members.members();
        // Invariant (Membership): at most MEMBERS_MAX members, addresses
        // within ADDRESS_BYTES_MAX bytes, so both counts fit.
        out.extend_from_slice(
            &u32::try_from(members.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for member in members {
            out.extend_from_slice(&member.id.0.to_le_bytes());
            let address = member.address.as_bytes();
            out.extend_from_slice(
                &u16::try_from(address.len())
                    .unwrap_or(u16::MAX)
                    .to_le_bytes(),
            );
            out.extend_from_slice(address);
        }
        let crc = quire_checksum::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a file's bytes; any damage is an error.
    pub fn decode(bytes: &[u8]) -> Result<ControlFile, ControlFileError> {
        if bytes.len() < HEADER_2 + 4 {
            return Err(ControlFileError::Corrupt("shorter than its header"));
        }
        if array_at::<4>(bytes, 0)? != *MAGIC {
            return Err(ControlFileError::Corrupt("wrong magic"));
        }
        let header = match u32_at(bytes, 4)? {
            VERSION => HEADER,
            VERSION_2 => HEADER_2,
            _ => return Err(ControlFileError::Corrupt("unknown format version")),
        };
        let count = u32_at(bytes, 84)? as usize;
        // Bounded before any product: at most MAX_ENTRIES entries.
        let members_at = header + 16 * count.min(MAX_ENTRIES);
        if count > MAX_ENTRIES || bytes.len() < members_at + 4 + 4 {
            return Err(ControlFileError::Corrupt(
                "length does not match its history",
            ));
        }
        let body = bytes.len() - 4;
        if bytes.get(..body).map(quire_checksum::crc32c) != Some(u32_at(bytes, body)?) {
            return Err(ControlFileError::Corrupt("checksum mismatch"));
        }
        let members = decode_members(
            bytes
                .get(members_at..body)
                .ok_or(ControlFileError::Corrupt("no member set"))?,
        )?;
        let history = TermHistory(
            (0..count)
                .map(|i| {
                    Ok(TermEntry {
                        term: u64_at(bytes, header + 16 * i)?,
                        start: Lsn(u64_at(bytes, header + 16 * i + 8)?),
                    })
                })
                .collect::<Result<_, ControlFileError>>()?,
        );
        let wal_start = Lsn(u64_at(bytes, 48)?);
        // Version 2 recorded no mark: it claims nothing beyond the start.
        let flush_mark = if header == HEADER {
            Lsn(u64_at(bytes, HEADER_2)?)
        } else {
            wal_start
        };
        let file = ControlFile {
            tenant: array_at(bytes, 8)?,
            timeline: array_at(bytes, 24)?,
            system_id: u64_at(bytes, 72)?,
            segment_size: u32_at(bytes, 80)?,
            state: DurableState {
                term: u64_at(bytes, 40)?,
                history,
                wal_start,
                commit_lsn: Lsn(u64_at(bytes, 56)?),
                removable_before: Lsn(u64_at(bytes, 64)?),
                flush_mark,
                members,
            },
        };
        file.check()?;
        Ok(file)
    }

    /// The rules on values a checksum cannot catch (a file written with
    /// them, or by a build that did not check).
    fn check(&self) -> Result<(), ControlFileError> {
        if !is_valid_wal_segment_size(self.segment_size) {
            return Err(ControlFileError::Corrupt(
                "WAL segment size is not a power of two from 1 MiB to 1 GiB",
            ));
        }
        if self.state.history.validate().is_err() {
            return Err(ControlFileError::Corrupt("term history out of order"));
        }
        Ok(())
    }

    /// Replaces both copies in `dir` atomically and durably, `control`
    /// first. A file that [`ControlFile::decode`] would refuse is not
    /// written.
    pub fn store(&self, dir: &Path) -> Result<(), ControlFileError> {
        self.check()?;
        let bytes = self.encode();
        replace(dir, CONTROL_TMP, CONTROL_FILE, &bytes)?;
        replace(dir, CONTROL_COPY_TMP, CONTROL_COPY, &bytes)?;
        Ok(())
    }

    /// Reads the control file in `dir`; `None` when there is none yet.
    /// Leftover temporary files (a crash mid-replacement) are removed. A
    /// damaged, missing or stale copy is rewritten from the sound one (see
    /// the module doc); both unsound is an error naming both.
    pub fn load(dir: &Path) -> Result<Option<Loaded>, ControlFileError> {
        for tmp in [CONTROL_TMP, CONTROL_COPY_TMP] {
            match fs::remove_file(dir.join(tmp)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let first = read_copy(dir, CONTROL_FILE)?;
        let second = read_copy(dir, CONTROL_COPY)?;
        let loaded = choose_copy(first, second)?;
        if let Some(Loaded {
            file,
            repaired: Some((stale, _)),
        }) = &loaded
        {
            let tmp = if *stale == CONTROL_FILE {
                CONTROL_TMP
            } else {
                CONTROL_COPY_TMP
            };
            replace(dir, tmp, stale, &file.encode())?;
        }
        Ok(loaded)
    }

    /// [`load`](Self::load)'s choice between the bytes of `control` and of
    /// `control.copy` (`None`: absent), without the files: which state to
    /// take and which copy to rewrite from it.
    pub fn choose(
        first: Option<&[u8]>,
        second: Option<&[u8]>,
    ) -> Result<Option<Loaded>, ControlFileError> {
        let copy = |bytes: Option<&[u8]>| match bytes {
            None => Copy::Absent,
            Some(bytes) => match ControlFile::decode(bytes) {
                Ok(file) => Copy::Sound(file),
                Err(e) => Copy::Damaged(e),
            },
        };
        choose_copy(copy(first), copy(second))
    }
}

/// A sound `control` wins, else a sound `control.copy`; the other is to be
/// rewritten when it differs; neither sound is an error naming both.
fn choose_copy(first: Copy, second: Copy) -> Result<Option<Loaded>, ControlFileError> {
    let (file, stale, why) = match (first, second) {
        (Copy::Absent, Copy::Absent) => return Ok(None),
        // The same state (a version-2 file beside its version-3 copy, say).
        (Copy::Sound(file), Copy::Sound(other)) if other == file => {
            return Ok(Some(Loaded {
                file,
                repaired: None,
            }));
        }
        (Copy::Sound(file), Copy::Sound(_)) => (
            file,
            CONTROL_COPY,
            "older than control (a crash between the two writes)".to_owned(),
        ),
        (Copy::Sound(file), second) => (file, CONTROL_COPY, second.describe()),
        (first, Copy::Sound(file)) => (file, CONTROL_FILE, first.describe()),
        (first, second) => {
            return Err(ControlFileError::Unreadable(format!(
                "{CONTROL_FILE}: {}; {CONTROL_COPY}: {}",
                first.describe(),
                second.describe()
            )));
        }
    };
    Ok(Some(Loaded {
        file,
        repaired: Some((stale, why)),
    }))
}

/// One copy as found on disk.
enum Copy {
    Absent,
    Damaged(ControlFileError),
    /// Decoded.
    Sound(ControlFile),
}

impl Copy {
    fn describe(&self) -> String {
        match self {
            Copy::Absent => "missing".to_owned(),
            Copy::Damaged(e) => e.to_string(),
            Copy::Sound(..) => "sound".to_owned(),
        }
    }
}

fn read_copy(dir: &Path, name: &str) -> Result<Copy, ControlFileError> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(match ControlFile::decode(&bytes) {
            Ok(file) => Copy::Sound(file),
            Err(e) => Copy::Damaged(e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Copy::Absent),
        // An unreadable sector is damage to this copy, not the end.
        Err(e) if e.raw_os_error() == Some(EIO) => Ok(Copy::Damaged(e.into())),
        Err(e) => Err(e.into()),
    }
}

/// Linux's `EIO`, what a read of an unreadable sector returns.
const EIO: i32 = 5;

/// Writes `bytes` to `dir/tmp`, fsyncs it, renames it over `dir/name` and
/// fsyncs the directory.
fn replace(dir: &Path, tmp: &str, name: &str, bytes: &[u8]) -> Result<(), ControlFileError> {
    let tmp = dir.join(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The member set at the end of the file (`bytes` ends before the CRC):
/// exactly its members, nothing after them.
fn decode_members(bytes: &[u8]) -> Result<Membership, ControlFileError> {
    let corrupt = ControlFileError::Corrupt;
    let (count, mut rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(corrupt("no member count"))?;
    let count = u32::from_le_bytes(*count) as usize;
    if count == 0 || count > MEMBERS_MAX {
        return Err(corrupt("member count out of range"));
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, after_id) = rest
            .split_first_chunk::<4>()
            .ok_or(corrupt("member cut short"))?;
        let (len, after_len) = after_id
            .split_first_chunk::<2>()
            .ok_or(corrupt("member cut short"))?;
        let len = usize::from(u16::from_le_bytes(*len));
        if len > ADDRESS_BYTES_MAX || after_len.len() < len {
            return Err(corrupt("member address length out of range"));
        }
        let (address, after) = after_len.split_at(len);
        let address =
            std::str::from_utf8(address).map_err(|_| corrupt("member address is not UTF-8"))?;
        let id = NodeId(u32::from_le_bytes(*id));
        // Written in ascending id order (as `Membership` keeps them): any
        // other order is damage, and would not re-encode to these bytes.
        if members.last().is_some_and(|last: &Member| last.id >= id) {
            return Err(corrupt("member ids out of order"));
        }
        members.push(Member {
            id,
            address: address.to_owned(),
        });
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes after the member set"));
    }
    Membership::new(members).map_err(|_| corrupt("invalid member set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlFile {
        ControlFile {
            tenant: [7; 16],
            timeline: [9; 16],
            system_id: 7_300_000_000_000_000_001,
            segment_size: 16 << 20,
            state: DurableState {
                term: 12,
                history: TermHistory(vec![
                    TermEntry {
                        term: 1,
                        start: Lsn(0x100_0028),
                    },
                    TermEntry {
                        term: 12,
                        start: Lsn(0x200_0000),
                    },
                ]),
                wal_start: Lsn(0x100_0028),
                commit_lsn: Lsn(0x1FF_F000),
                removable_before: Lsn(0x180_0000),
                flush_mark: Lsn(0x200_1000),
                members: Membership::new(
                    (1..=3)
                        .map(|id| Member {
                            id: NodeId(id),
                            address: format!("10.0.0.{id}:5454"),
                        })
                        .collect(),
                )
                .expect("valid"),
            },
        }
    }

    /// Found by fuzzing: members out of id order decoded, then re-encoded
    /// sorted (not the bytes read).
    #[test]
    fn members_out_of_order_are_refused() {
        let bytes = sample().encode();
        // The first member's id: three members of 4 + 2 + 13 bytes end the body.
        let members_at = bytes.len() - 4 - 3 * (4 + 2 + 13);
        let mut damaged = bytes.clone();
        damaged[members_at..members_at + 4].copy_from_slice(&161u32.to_le_bytes());
        let body = damaged.len() - 4;
        let crc = quire_checksum::crc32c(&damaged[..body]);
        damaged[body..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            ControlFile::decode(&damaged),
            Err(ControlFileError::Corrupt("member ids out of order"))
        ));
    }

    #[test]
    fn round_trips_and_every_damaged_byte_is_refused() {
        let file = sample();
        let bytes = file.encode();
        assert_eq!(ControlFile::decode(&bytes).expect("decodes"), file);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                ControlFile::decode(&damaged).is_err(),
                "flip at {at} accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                ControlFile::decode(&bytes[..len]).is_err(),
                "torn at {len} accepted"
            );
        }
    }

    #[test]
    fn store_replaces_and_load_ignores_a_torn_replacement() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ControlFile::load(dir.path()).expect("empty dir").is_none());
        let mut file = sample();
        file.store(dir.path()).expect("store");
        file.state.term = 13;
        file.store(dir.path()).expect("store again");
        // A crash mid-replacement leaves a torn temporary file behind.
        let torn = file.encode();
        fs::write(dir.path().join(CONTROL_TMP), &torn[..torn.len() / 2]).expect("write");
        let loaded = ControlFile::load(dir.path())
            .expect("load")
            .expect("a file");
        assert_eq!(loaded.file.state.term, 13);
        assert!(loaded.repaired.is_none());
        assert!(!dir.path().join(CONTROL_TMP).exists());
        assert_eq!(
            fs::read(dir.path().join(CONTROL_FILE)).expect("read"),
            fs::read(dir.path().join(CONTROL_COPY)).expect("read")
        );
    }

    /// One damaged (or missing, or stale) copy is rewritten from the other;
    /// both damaged is an error naming both, never a fresh start.
    #[test]
    fn a_damaged_copy_is_repaired_from_the_other_and_two_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = sample();
        file.store(dir.path()).expect("store");
        let sound = fs::read(dir.path().join(CONTROL_FILE)).expect("read");
        let flip = |name: &str| {
            let mut bytes = fs::read(dir.path().join(name)).expect("read");
            bytes[44] ^= 1; // the term
            fs::write(dir.path().join(name), &bytes).expect("write");
        };
        for name in [CONTROL_FILE, CONTROL_COPY] {
            flip(name);
            let loaded = ControlFile::load(dir.path())
                .expect("load")
                .expect("a file");
            assert_eq!(loaded.file, file);
            let (repaired, why) = loaded.repaired.expect("a repair");
            assert_eq!(repaired, name);
            assert!(why.contains("checksum mismatch"), "{why}");
            assert_eq!(fs::read(dir.path().join(name)).expect("read"), sound);
        }
        fs::remove_file(dir.path().join(CONTROL_FILE)).expect("remove");
        let loaded = ControlFile::load(dir.path())
            .expect("load")
            .expect("a file");
        assert_eq!(loaded.repaired.map(|r| r.1), Some("missing".to_owned()));
        // A crash between the two writes: `control` is the newer.
        let older = file.encode();
        file.state.term = 14;
        file.store(dir.path()).expect("store");
        fs::write(dir.path().join(CONTROL_COPY), &older).expect("write");
        let loaded = ControlFile::load(dir.path())
            .expect("load")
            .expect("a file");
        assert_eq!(loaded.file.state.term, 14);
        assert_eq!(loaded.repaired.map(|r| r.0), Some(CONTROL_COPY));
        flip(CONTROL_FILE);
        flip(CONTROL_COPY);
        let error = ControlFile::load(dir.path()).expect_err("both damaged");
        let text = error.to_string();
        assert!(
            text.contains("control: control file is corrupt: checksum mismatch")
                && text.contains("control.copy: control file is corrupt: checksum mismatch"),
            "{text}"
        );
    }

    /// A version-2 file (no flush mark) is read, its mark at the WAL start.
    #[test]
    fn version_2_files_are_read() {
        let file = sample();
        let mut bytes = file.encode();
        bytes[4..8].copy_from_slice(&VERSION_2.to_le_bytes());
        bytes.drain(HEADER_2..HEADER);
        let body = bytes.len() - 4;
        let crc = quire_checksum::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        let decoded = ControlFile::decode(&bytes).expect("decodes");
        assert_eq!(decoded.state.flush_mark, file.state.wal_start);
        assert_eq!(decoded.state.history, file.state.history);
        assert_eq!(decoded.state.members, file.state.members);
    }

    /// A checksummed file with a segment size of 0 (written by a build
    /// that did not check) is a typed error, and no such file is written.
    #[test]
    fn invalid_segment_sizes_are_refused_on_load_and_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        for size in [0, 1, 3 << 20, 2 << 30] {
            let mut file = sample();
            file.segment_size = size;
            assert!(matches!(
                ControlFile::decode(&file.encode()),
                Err(ControlFileError::Corrupt(_))
            ));
            assert!(matches!(
                file.store(dir.path()),
                Err(ControlFileError::Corrupt(_))
            ));
            assert!(!dir.path().join(CONTROL_FILE).exists());
            fs::write(dir.path().join(CONTROL_FILE), file.encode()).expect("write");
            assert!(matches!(
                ControlFile::load(dir.path()),
                Err(ControlFileError::Unreadable(_))
            ));
            fs::remove_file(dir.path().join(CONTROL_FILE)).expect("remove");
        }
    }
}
