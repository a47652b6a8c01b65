//! What the shard's integration tests share: the test record kind and the
//! value a chain of them makes.
#![allow(dead_code, reason = "each test binary uses part of it")]

use quire_postgres::{Key, Lsn};
use quire_shard::{ReconstructInputs, Redo, RedoError, Value};

/// The tests' record kind: a record appends its LSN and bytes to the value
/// (a will-init record first clears it), keeping the last 8 KiB. Order,
/// loss and duplication of records all change the result.
pub struct AppendRedo;

impl Redo for AppendRedo {
    async fn apply(
        &self,
        key: Key,
        lsn: Lsn,
        inputs: &ReconstructInputs,
    ) -> Result<Vec<u8>, RedoError> {
        let mut value: Vec<u8> = inputs
            .image
            .as_ref()
            .map(|(_, image)| image.to_vec())
            .unwrap_or_default();
        for (at, record) in &inputs.records {
            let Value::Record { will_init, bytes } = record else {
                return Err(RedoError {
                    key,
                    lsn,
                    what: format!("an image among the records at {at}"),
                });
            };
            if *will_init {
                value.clear();
            }
            value.extend_from_slice(&at.0.to_le_bytes());
            value.extend_from_slice(bytes);
            if value.len() > 8192 {
                value.drain(..value.len() - 8192);
            }
        }
        Ok(value)
    }
}
