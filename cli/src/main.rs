//! `quire`: the one command-line tool of Quire.
//!
//! It runs and drives a local cluster the way an operator would. Each
//! subcommand lives in its own module; this file only parses arguments and
//! dispatches.
#![forbid(unsafe_code)]

mod admin;
mod auth_files;
mod basebackup;
mod bench;
mod bench_pgbench;
mod compute;
mod daemon;
mod demo;
mod elect;
mod local;
mod pageserver;
mod safekeeper;
mod token;
mod verify;
mod verify_remote;
mod waldump;

use std::process::ExitCode;

use anyhow::Result;

/// Every server this binary runs allocates through mimalloc: its per-thread
/// free lists serve the page path's small, short-lived allocations without
/// the coalescing glibc's allocator does, and it gave one pageserver core
/// 171,000-186,000 cached GetPage/s with 4 x 64 pipelined against
/// 144,000-151,000 with glibc's, side by side (QD1 p50 11 us against 12).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quire", version, about = "Drive a local Quire cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the most complete end-to-end path that exists, with real figures.
    Demo(demo::DemoArgs),
    /// Print every record of WAL segment files, one line each, for comparison with `pg_waldump`.
    Waldump(waldump::WaldumpArgs),
    /// Rebuild every page of a cluster from its WAL and compare it with Postgres' files.
    Verify(verify::VerifyArgs),
    /// Run a safekeeper: quorum-durable WAL streamed from the elected compute.
    Safekeeper(safekeeper::SafekeeperArgs),
    /// Elect a compute on the safekeepers (at compute start) and print where its WAL begins.
    Elect(elect::ElectArgs),
    /// Make key pairs and signed access tokens for the servers' authentication.
    Token(token::TokenArgs),
    /// Run the pageserver: tenant shards on every core, the page service, the admin API.
    Pageserver(pageserver::PageserverArgs),
    /// Create, list and delete tenants on a running pageserver.
    Tenant(admin::TenantArgs),
    /// Create timelines (imported or branched) and show their status on a running pageserver.
    Timeline(admin::TimelineArgs),
    /// Measure a running pageserver: `quire bench getpage`.
    Bench(bench::BenchArgs),
    /// Start or stop a compute: Postgres 17 on a timeline, its WAL to the
    /// safekeepers, its pages from the pageserver.
    Compute(compute::ComputeArgs),
    /// Bring up a local cluster on loopback (three safekeepers, a
    /// pageserver, a timeline from initdb, a compute), or start a stopped one again.
    Start(local::start::StartArgs),
    /// Each process of a local cluster up or down, with its LSNs.
    Status(local::status::StatusArgs),
    /// Stop every process of a local cluster.
    Stop(local::stop::StopArgs),
    /// Branch a local cluster's timeline and start a compute on the branch.
    Branch(local::branch::BranchArgs),
}

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Waldump(args) => match waldump::run(&args)? {
            waldump::Outcome::Complete => Ok(ExitCode::SUCCESS),
            waldump::Outcome::Stopped => Ok(ExitCode::FAILURE),
        },
        Command::Verify(args) => verify::run(&args),
        Command::Safekeeper(args) => safekeeper::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Elect(args) => elect::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Token(args) => token::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Pageserver(args) => pageserver::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Tenant(args) => admin::run_tenant(&args).map(|()| ExitCode::SUCCESS),
        Command::Timeline(args) => admin::run_timeline(&args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Compute(args) => compute::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Start(args) => local::start::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Status(args) => local::status::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Stop(args) => local::stop::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Branch(args) => local::branch::run(&args).map(|()| ExitCode::SUCCESS),
    }
}
