//! Safekeepers: quorum-durable WAL.
//!
//! Pure parts, driven identically by the server and by the deterministic
//! simulation (`tests/simulation/`): term histories (`history`), the
//! acceptor state machine (`acceptor`: votes, election announcements with
//! divergent-tail truncation, appends acknowledged only once flushed, peer
//! recovery checks, the commit LSN), the proposer's election and quorum
//! commit (`election`), and the control file codec with its atomic
//! replacement (`control_file`). `wal_store` keeps a timeline's WAL in
//! Postgres segment files with direct I/O and group commit (the one module
//! here that does I/O, through `quire-io`). docs/safekeeper-protocol.md states the
//! rules and why they are safe.
#![forbid(unsafe_code)]

pub mod acceptor;
pub mod compute_control;
pub mod control_file;
pub mod election;
pub mod history;
pub mod membership;
pub mod pg_wire;
pub mod server;
pub mod wal_store;
pub mod wire;
