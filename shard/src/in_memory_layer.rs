//! The in-memory layer: the newest values of a timeline, before they are
//! written to an L0 delta layer.
//!
//! It covers every key from its start LSN on; when frozen it gets an end LSN
//! and becomes immutable (shared as `Rc` by readers while it is flushed).
//! Values are kept in memory, indexed by key then LSN.

use std::collections::BTreeMap;

use quire_postgres::{Key, Lsn};

use crate::value::Value;

/// Values of one LSN range, all keys.
#[derive(Debug)]
pub struct InMemoryLayer {
    start: Lsn,
    end: Option<Lsn>,
    /// Per key, values in ascending LSN order.
    index: BTreeMap<Key, Vec<(Lsn, Value)>>,
    bytes: usize,
    values: usize,
}

/// A put the layer cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The LSN is below the layer's start, or not above the key's last value.
    #[error("value of {key} at {lsn} is not after {previous}")]
    OutOfOrder {
        /// The key.
        key: Key,
        /// The LSN given.
        lsn: Lsn,
        /// The LSN it must exceed.
        previous: Lsn,
    },
    /// The layer is frozen.
    #[error("the layer is frozen")]
    Frozen,
}

impl InMemoryLayer {
    /// An open layer for LSNs from `start` on.
    pub fn new(start: Lsn) -> InMemoryLayer {
        InMemoryLayer {
            start,
            end: None,
            index: BTreeMap::new(),
            bytes: 0,
            values: 0,
        }
    }

    /// First LSN covered.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// End of the LSN range (exclusive), once frozen.
    pub fn end(&self) -> Option<Lsn> {
        self.end
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values == 0
    }

    /// Stores `value` for `key` at `lsn`.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: Value) -> Result<(), PutError> {
        if self.end.is_some() {
            return Err(PutError::Frozen);
        }
        if lsn < self.start {
            return Err(PutError::OutOfOrder {
                key,
                lsn,
                previous: self.start,
            });
        }
        let versions = self.index.entry(key).or_default();
        if let Some(&(previous, _)) = versions.last().filter(|(previous, _)| *previous >= lsn) {
            return Err(PutError::OutOfOrder { key, lsn, previous });
        }
        self.bytes += value.bytes().len() + 48;
        self.values += 1;
        versions.push((lsn, value));
        Ok(())
    }

    /// Freezes the layer at `end` (exclusive), which must cover every value.
    pub fn freeze(&mut self, end: Lsn) {
        assert!(end >= self.start, "a layer cannot end before it starts");
        self.end = Some(end);
    }

    /// Appends to `out`, newest first, the values of `key` below `below`
    /// down to the first base value; returns whether one was found.
    pub fn collect(&self, key: Key, below: Lsn, out: &mut Vec<(Lsn, Value)>) -> bool {
        let Some(versions) = self.index.get(&key) else {
            return false;
        };
        let end = versions.partition_point(|(lsn, _)| *lsn < below);
        for (lsn, value) in versions[..end].iter().rev() {
            out.push((*lsn, value.clone()));
            if value.is_base() {
                return true;
            }
        }
        false
    }

    /// Every value in (key, LSN) order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Lsn, &Value)> {
        self.index.iter().flat_map(|(key, versions)| {
            versions.iter().map(move |(lsn, value)| (*key, *lsn, value))
        })
    }

    /// The smallest and largest keys held (`None` when empty).
    pub fn key_bounds(&self) -> Option<(Key, Key)> {
        Some((*self.index.keys().next()?, *self.index.keys().next_back()?))
    }
}
