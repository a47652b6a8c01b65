//! Safekeepers: quorum-durable WAL.
//!
//! This crate will own the Paxos-style acceptor state machine (pure: term,
//! vote, term history, flush and commit LSN), the durable control file, WAL
//! segment storage with group commit, divergent-tail truncation, peer
//! recovery, and the streaming-replication client that takes WAL from the
//! compute and reports only fsynced flush positions.
#![forbid(unsafe_code)]
