//! `trenv`: the command line of trenv. Today: reading metering records.

mod meter;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trenv",
    version,
    about = "trenv: serverless functions on containerd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Metering records: one per invocation (docs/metering.md).
    Meter(meter::MeterArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Meter(args) => meter::run(args),
    }
}
