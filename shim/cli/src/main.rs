//! `trenv`: the command line of trenv: metering records, traces, memory templates, the
//! pool of sandboxes.
//!
//! Its own crate (`trenv-cli`) so that the shim binary does not carry clap, plotters and
//! indicatif, and so that what it computes stays reusable: records, prices and hulls come
//! from the kernel-free `trenv-meter`; this crate is presentation (arguments, tables,
//! charts, progress). The runtime is linked for `template` and `node`, which act on the host.

mod container;
mod meter;
mod node;
mod plot;
mod pool;
mod template;
mod trace;

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
    /// Run an image once (or --runs N times, at --limits) through containerd on trenv and
    /// report its time, memory and cost.
    Trace(trace::TraceArgs),
    /// Memory templates: functions checkpointed once and restored by mapping their memory.
    Template(template::TemplateArgs),
    /// Host settings of a trenv node (`trenv node tune`, `trenv node check`).
    Node(node::NodeArgs),
    /// The node's idle pool of sandboxes (`trenv pool list | inspect | drain`).
    Pool(pool::PoolArgs),
    /// What containerd records of a container (`trenv container image ID`).
    Container(container::ContainerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Meter(args) => meter::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Template(args) => template::run(args),
        Command::Node(args) => node::run(args),
        Command::Pool(args) => pool::run(args),
        Command::Container(args) => container::run(args),
    }
}
