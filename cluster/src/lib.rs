//! Local cluster processes for the `quire` CLI and the full-stack tests.
//!
//! This crate owns starting, stopping and talking to the processes of a
//! cluster on one machine: the patched Postgres 17 build ([`PgInstall`]), the
//! unprivileged user that runs it when we are root ([`RunAs`]), throwaway
//! Postgres clusters on free loopback ports with bounded start and stop
//! times ([`PgCluster`]), commands run with a deadline ([`run_bounded`]),
//! the counters of the hook-proving storage manager ([`read_smgr_counts`]),
//! and a real S3-compatible server for object-storage tests ([`S3Server`]:
//! moto on a loopback port).
//! It is tooling: it never sits on a data path, and it uses `anyhow` errors
//! with verb contexts.
#![forbid(unsafe_code)]

mod bounded;
mod install;
mod pg_cluster;
mod pgbench;
mod run_as;
mod s3_server;
mod smgr_count;
mod wal_files;

pub use bounded::{run_bounded, run_checked};
pub use install::PgInstall;
pub use pg_cluster::{PgCluster, PgClusterOptions, SUPERUSER, free_port};
pub use pgbench::PgbenchSummary;
pub use run_as::RunAs;
pub use s3_server::S3Server;
pub use smgr_count::read_smgr_counts;
pub use wal_files::wal_segment_files;
