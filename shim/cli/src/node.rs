//! `trenv node …`: host kernel settings a trenv node should have (runtime/src/node/tune.rs).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use trenv_runtime::node::{self, Favordynmods, Tuned};

#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Show whether this host is tuned; exits with status 1 if it is not.
    Check,
    /// Tune this host: mount the cgroup2 hierarchy with `favordynmods`, so that moving a
    /// process into a cgroup (each container start, each restore) no longer waits for an
    /// RCU grace period (5–16 ms). Global to the host and, on Linux 6.18, kept until reboot.
    Tune {
        /// Where a private cgroup2 mount is made on hosts that mount none (cgroup v1 only).
        #[arg(long, default_value = trenv_runtime::paths::RUN_DIR)]
        scratch: PathBuf,
    },
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::Check => match node::favordynmods() {
            Favordynmods::Enabled(point) => {
                println!("favordynmods: on (cgroup2 at {})", point.display());
                Ok(())
            }
            Favordynmods::Disabled(point) => {
                println!(
                    "favordynmods: off (cgroup2 at {}); run `trenv node tune`",
                    point.display()
                );
                std::process::exit(1)
            }
            Favordynmods::Unknown => {
                println!(
                    "favordynmods: unknown (no cgroup2 hierarchy is mounted to show it); \
                     `trenv node tune` sets it"
                );
                std::process::exit(1)
            }
        },
        NodeCommand::Tune { scratch } => {
            match node::enable_favordynmods(&scratch)? {
                Tuned::AlreadyEnabled(p) => {
                    println!("favordynmods: already on (cgroup2 at {})", p.display())
                }
                Tuned::Remounted(p) => println!(
                    "favordynmods: on (cgroup2 at {} remounted, its other options kept)",
                    p.display()
                ),
                Tuned::SetThroughTemporaryMount => println!(
                    "favordynmods: on (set through a private cgroup2 mount: this host mounts \
                     no cgroup2 hierarchy)"
                ),
            }
            Ok(())
        }
    }
}
