//! `quire`: the one command-line tool of Quire.
//!
//! It runs and drives a local cluster the way an operator would. Each
//! subcommand lives in its own module; this file only parses arguments and
//! dispatches.
#![forbid(unsafe_code)]

mod demo;

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
    }
}
