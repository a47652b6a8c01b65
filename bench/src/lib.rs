//! Micro-benchmarks (criterion) of Quire's crates, and what they share.
//!
//! Each benchmark in `benches/` prints a peer measured in the same run (a
//! physical limit or the Postgres tool doing the same job), because ratios
//! survive a noisy machine and absolute numbers do not. This library holds
//! the shared set-up: real WAL written by Postgres 17 for the decoders.
#![forbid(unsafe_code)]

pub mod real_wal;
