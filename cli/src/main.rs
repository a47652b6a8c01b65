//! `quire`: the one command-line tool of Quire.
//!
//! It runs and drives a local cluster the way an operator would. Each
//! subcommand lives in its own module; this file only parses arguments and
//! dispatches.
#![forbid(unsafe_code)]

mod auth_files;
mod demo;
mod elect;
mod safekeeper;
mod token;
mod verify;
mod waldump;

use std::process::ExitCode;

use anyhow::Result;
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
    }
}
