//! The inputs GetPage@LSN returns, and the redo interface that turns them
//! into a value.
//!
//! The engine never interprets records: it returns the newest base (image
//! or will-init record) at or below the requested LSN and the records above
//! it, oldest first. Applying them is a [`Redo`]'s job: Postgres' redo for
//! pages (the `redo` crate), or a test's own deterministic record kind.

use std::rc::Rc;

use quire_postgres::{Key, Lsn};

use crate::value::Value;

/// What is needed to rebuild a key's value at an LSN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconstructInputs {
    /// The newest image at or below the LSN, if the chain ends in one.
    pub image: Option<(Lsn, Rc<[u8]>)>,
    /// Records above the image (or from a will-init record on), oldest first.
    pub records: Vec<(Lsn, Value)>,
}

impl ReconstructInputs {
    /// Whether there is nothing to rebuild from (the key has no value).
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.records.is_empty()
    }
}

/// Why redo failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("redo of {key} at {lsn}: {what}")]
pub struct RedoError {
    /// The key.
    pub key: Key,
    /// The LSN asked for.
    pub lsn: Lsn,
    /// What went wrong.
    pub what: String,
}

/// Applies records to a base value.
///
/// Asynchronous because the real implementation waits on a wal-redo
/// process; the engine calls it from its core's executor and never needs
/// the future to be `Send`.
#[allow(
    async_fn_in_trait,
    reason = "thread-per-core: futures stay on their core"
)]
pub trait Redo {
    /// The value of `key` after applying `inputs.records` on `inputs.image`
    /// (or on nothing, when the first record initialises the value).
    async fn apply(
        &self,
        key: Key,
        lsn: Lsn,
        inputs: &ReconstructInputs,
    ) -> Result<Vec<u8>, RedoError>;
}

/// The value of `key` at `lsn` from its inputs: the image itself when there
/// is nothing to apply, otherwise what `redo` makes of them. `None` when the
/// key has no value.
pub async fn materialize<R: Redo>(
    redo: &R,
    key: Key,
    lsn: Lsn,
    inputs: &ReconstructInputs,
) -> Result<Option<Rc<[u8]>>, RedoError> {
    match (&inputs.image, inputs.records.is_empty()) {
        (None, true) => Ok(None),
        (Some((_, image)), true) => Ok(Some(image.clone())),
        _ => Ok(Some(Rc::from(redo.apply(key, lsn, inputs).await?))),
    }
}
