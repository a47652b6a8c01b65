//! Which keys a timeline holds at an LSN, and the relation lookups built on
//! its values: a fork's size, whether it exists, a database's size.
//!
//! Size values are the engine's own encoding (`docs/format/layers.md`,
//! "Values"): the size key of a fork holds a 4-byte little-endian block
//! count as an image, and a drop marker once the fork is dropped (the
//! size it had and a flag byte; an empty image before drops kept it). A
//! relation block's cut marker is an empty image ([`block_cut_value`]).
//! Enumerating keys reads only index leaves, never values.

use std::collections::BTreeSet;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use quire_postgres::key::kind;
use quire_postgres::types::{Oid, RelTag};
use quire_postgres::{Key, Lsn};

use crate::timeline::{Timeline, TimelineError};
use crate::value::Value;

/// Bytes of one relation block, for database sizes.
const BLOCK_BYTES: u64 = 8192;

/// A size value that is not the engine's encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the value of {key} at {lsn} is not a relation size: {what}")]
pub struct BadSizeValue {
    /// The size key.
    pub key: Key,
    /// The LSN read.
    pub lsn: Lsn,
    /// What is wrong.
    pub what: &'static str,
}

/// The value stored under a fork's size key for `blocks` blocks.
pub fn size_value(blocks: u32) -> Value {
    Value::Image(blocks.to_le_bytes().to_vec().into())
}

/// An empty image: what a key whose file or fork is gone holds (a
/// relmapper or two-phase file removed; a fork's size key as written
/// before drops kept the size, read as dropped with its size unknown).
pub fn dropped_value() -> Value {
    Value::Image(Vec::new().into())
}

/// The flag byte that ends [`fork_dropped_value`].
const DROPPED_FLAG: u8 = 1;

/// The value stored under a fork's size key when the fork is dropped with
/// `blocks` blocks: 5 bytes, that size (u32, little-endian), then 0x01. The
/// size tells a later fork of the same relation file number (after OID
/// wraparound) which blocks to cut before it is used
/// ([`block_cut_value`]).
pub fn fork_dropped_value(blocks: u32) -> Value {
    let mut bytes = blocks.to_le_bytes().to_vec();
    bytes.push(DROPPED_FLAG);
    Value::Image(bytes.into())
}

/// What a fork's size key holds at an LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkSize {
    /// No value: the fork was never created.
    Absent,
    /// The fork exists with this many blocks.
    Blocks(u32),
    /// The fork was dropped; with the size it had then, when known.
    Dropped(Option<u32>),
}

/// The value stored under a relation block's key when the block is cut
/// (its fork truncated below it, or dropped): an empty image. It is a base
/// with no content: [`Timeline::get`] returns no image for it (and the
/// records above it, which start from a page of zeros), so the block reads
/// as one that never had a value until WAL writes it again.
pub fn block_cut_value() -> Value {
    Value::Image(Vec::new().into())
}

/// The key range of every relation of database `db_oid` in `spc_oid`.
pub fn database_range(spc_oid: Oid, db_oid: Oid) -> Range<Key> {
    let start = Key {
        kind: kind::RELATION,
        field1: spc_oid,
        field2: db_oid,
        field3: 0,
        field4: 0,
        field5: 0,
    };
    let last = Key {
        field3: u32::MAX,
        field4: u8::MAX,
        field5: u32::MAX,
        ..start
    };
    start..last.next().unwrap_or(Key::MAX)
}

impl Timeline {
    /// The keys with a value at or below `lsn` within `range`, this
    /// timeline's and its ancestors' (below the branch point).
    pub fn keys_at<'a>(
        &'a self,
        lsn: Lsn,
        range: Range<Key>,
    ) -> Pin<Box<dyn Future<Output = Result<BTreeSet<Key>, TimelineError>> + 'a>> {
        self.keys_where(lsn, range, &|_| true)
    }

    /// The fork size keys ([`Key::is_rel_size`]) with a value at or below
    /// `lsn` within `range`: the forks that exist or existed, without
    /// collecting their blocks' keys.
    pub fn size_keys_at<'a>(
        &'a self,
        lsn: Lsn,
        range: Range<Key>,
    ) -> Pin<Box<dyn Future<Output = Result<BTreeSet<Key>, TimelineError>> + 'a>> {
        self.keys_where(lsn, range, &Key::is_rel_size)
    }

    /// [`Timeline::keys_at`] keeping only the keys `keep` accepts.
    fn keys_where<'a>(
        &'a self,
        lsn: Lsn,
        range: Range<Key>,
        keep: &'a dyn Fn(&Key) -> bool,
    ) -> Pin<Box<dyn Future<Output = Result<BTreeSet<Key>, TimelineError>> + 'a>> {
        Box::pin(async move {
            let mut keys = BTreeSet::new();
            let (open, frozen, layers) = {
                let state = self.state.borrow();
                (
                    state.open.clone(),
                    state.frozen.clone(),
                    state.layers.clone(),
                )
            };
            for layer in std::iter::once(&open).chain(&frozen) {
                keys.extend(layer.keys_at(lsn, &range, keep));
            }
            for layer in layers.layers() {
                let name = layer.name();
                if name.lsn_start > lsn
                    || name.key_end <= range.start
                    || name.key_start >= range.end
                {
                    continue;
                }
                layer.keys_at(lsn, &range, keep, &mut keys).await?;
            }
            if let Some((parent, at)) = &self.ancestor {
                keys.extend(parent.keys_where(lsn.min(*at), range, keep).await?);
            }
            Ok(keys)
        })
    }

    /// The size in blocks of `rel` at `lsn`; `None` if it does not exist
    /// (never created, or dropped).
    pub async fn rel_size(&self, rel: RelTag, lsn: Lsn) -> Result<Option<u32>, TimelineError> {
        Ok(match self.fork_size(rel, lsn).await? {
            ForkSize::Blocks(blocks) => Some(blocks),
            ForkSize::Absent | ForkSize::Dropped(_) => None,
        })
    }

    /// What the size key of `rel` says at `lsn`.
    pub async fn fork_size(&self, rel: RelTag, lsn: Lsn) -> Result<ForkSize, TimelineError> {
        let key = Key::rel_size(rel);
        let inputs = self.get(key, lsn).await?;
        let bad = |what| TimelineError::BadSize(BadSizeValue { key, lsn, what });
        if !inputs.records.is_empty() {
            return Err(bad("a record where an image belongs"));
        }
        let Some((_, bytes)) = inputs.image else {
            return Ok(ForkSize::Absent);
        };
        match *bytes {
            [] => Ok(ForkSize::Dropped(None)),
            [a, b, c, d] => Ok(ForkSize::Blocks(u32::from_le_bytes([a, b, c, d]))),
            [a, b, c, d, DROPPED_FLAG] => {
                Ok(ForkSize::Dropped(Some(u32::from_le_bytes([a, b, c, d]))))
            }
            _ => Err(bad("neither 4 bytes (a size) nor a drop marker")),
        }
    }

    /// Whether `rel` exists at `lsn`.
    pub async fn rel_exists(&self, rel: RelTag, lsn: Lsn) -> Result<bool, TimelineError> {
        Ok(self.rel_size(rel, lsn).await?.is_some())
    }

    /// The bytes of every fork of every relation of a database at `lsn`.
    pub async fn database_size(
        &self,
        spc_oid: Oid,
        db_oid: Oid,
        lsn: Lsn,
    ) -> Result<u64, TimelineError> {
        self.check_readable(lsn)?;
        let keys = self
            .size_keys_at(lsn, database_range(spc_oid, db_oid))
            .await?;
        let mut total = 0u64;
        for key in keys {
            let Ok(quire_postgres::key::KeyKind::RelSize(rel)) = key.describe() else {
                continue;
            };
            total += u64::from(self.rel_size(rel, lsn).await?.unwrap_or(0)) * BLOCK_BYTES;
        }
        Ok(total)
    }
}
