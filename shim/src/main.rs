//! `containerd-shim-trenv-v1`, the runtime `io.containerd.trenv.v1`.

mod container;
mod errors;
mod events;
mod io;
mod metrics;
mod options;
mod process;
mod service;
mod shim;

use std::sync::OnceLock;

use trenv_runtime::zygote::Zygote;

/// The runtime zygote, forked before the shim starts any thread.
static ZYGOTE: OnceLock<Zygote> = OnceLock::new();

pub(crate) fn zygote() -> &'static Zygote {
    ZYGOTE
        .get()
        .expect("the zygote is forked in main before the shim starts")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let action = containerd_shim::parse(&args[1..])
        .map(|f| {
            if f.version {
                "version".to_string()
            } else {
                f.action
            }
        })
        .unwrap_or_default();
    if action == "version" {
        println!("containerd-shim-trenv-v1 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // `start` only spawns the long-lived shim and exits: it needs no zygote. The server and
    // `delete` (cleanup after a dead shim) do.
    if action != "start" {
        // SAFETY: nothing has started a thread yet.
        match unsafe { Zygote::fork() } {
            Ok(z) => {
                let _ = ZYGOTE.set(z);
            }
            Err(e) => {
                eprintln!("containerd-shim-trenv-v1: {e}");
                std::process::exit(1);
            }
        }
    }
    containerd_shim::run::<shim::TrenvShim>("io.containerd.trenv.v1", None);
}
