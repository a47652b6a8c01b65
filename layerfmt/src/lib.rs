//! Layer file formats, pure: bytes in, bytes out.
//!
//! This crate will own the byte layout of image and delta layers (specified
//! in `docs/format/layers.md` before it is coded): the summary block, the
//! B-tree index over 8 KiB blocks read zero-copy, value encoding with
//! optional compression, and a crc32c on every block. Readers return typed
//! corruption errors naming the file, block and field. It does no I/O and
//! takes no clock; `io` moves its bytes.
