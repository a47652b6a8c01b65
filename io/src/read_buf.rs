//! [`ReadBuf`]: the bytes a direct read returned, in the executor's I/O
//! memory, handed out without a copy.
//!
//! It wraps the runtime's own read result so that callers see a byte slice
//! and nothing of the runtime; cloning it shares the buffer (no copy), and
//! the memory returns to the executor when the last clone is dropped. It is
//! `!Send`: the memory belongs to the core that read it.

use std::fmt;
use std::ops::Deref;

/// Bytes read by [`BlockFile`](crate::BlockFile) or
/// [`EphemeralFile`](crate::EphemeralFile); derefs to `[u8]`.
#[derive(Clone)]
pub struct ReadBuf(glommio::io::ReadResult);

impl ReadBuf {
    pub(crate) fn new(inner: glommio::io::ReadResult) -> ReadBuf {
        ReadBuf(inner)
    }

    /// `len` bytes from `offset` of this buffer, sharing it (no copy);
    /// `None` when the range does not lie inside it.
    pub fn slice(&self, offset: usize, len: usize) -> Option<ReadBuf> {
        glommio::io::ReadResult::slice(&self.0, offset, len).map(ReadBuf)
    }
}

impl Deref for ReadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadBuf({} bytes)", self.len())
    }
}
