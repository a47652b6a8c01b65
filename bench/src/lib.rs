//! Micro-benchmarks (criterion) of Quire's crates.
//!
//! This crate will hold the criterion benchmarks for pure code and the
//! engine (WAL decoding, layer reads, reconstruction, redo round trips), each
//! printing a physical-limit peer measured in the same run: an `O_DIRECT` 8 KiB
//! pread, a memcpy, a loopback round trip.
#![forbid(unsafe_code)]
