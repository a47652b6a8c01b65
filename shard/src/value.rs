//! What the storage keeps under a key at an LSN.

use std::rc::Rc;

/// A stored value: a whole value (a page image, a size, a file), or a WAL
/// record to apply on the value before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The complete value at this LSN.
    Image(Rc<[u8]>),
    /// A record to apply; `will_init` records need no earlier value.
    Record {
        /// The record initialises the value (ignores what came before).
        will_init: bool,
        /// The record's bytes (a whole WAL record for Postgres redo).
        bytes: Rc<[u8]>,
    },
}

impl Value {
    /// Whether reconstruction can stop at this value.
    pub fn is_base(&self) -> bool {
        match self {
            Value::Image(_) => true,
            Value::Record { will_init, .. } => *will_init,
        }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Value::Image(bytes) | Value::Record { bytes, .. } => bytes,
        }
    }
}
