//! `containerd-shim-trenv-v1`, the runtime `io.containerd.trenv.v1`.

mod container;
mod errors;
mod events;
mod exit_clock;
mod idle_trim;
mod io;
mod metrics;
mod options;
mod process;
mod ready_template;
mod service;
mod shim;
mod stamp;

use std::path::Path;
use std::sync::OnceLock;

use trenv_runtime::zygote::Zygote;

/// The runtime zygote, forked before the shim starts any thread.
static ZYGOTE: OnceLock<Zygote> = OnceLock::new();

pub(crate) fn zygote() -> &'static Zygote {
    ZYGOTE
        .get()
        .expect("the zygote is forked in main before the shim starts")
}

/// The zygote, if this process forked one.
pub(crate) fn zygote_if_forked() -> Option<&'static Zygote> {
    ZYGOTE.get()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flags = containerd_shim::parse(&args[1..]).ok();
    let action = flags
        .as_ref()
        .map(|f| {
            if f.version {
                "version".to_string()
            } else {
                f.action.clone()
            }
        })
        .unwrap_or_default();
    // One malloc arena: the shim's threads mostly sleep; per-thread arenas only add
    // resident memory.
    // SAFETY: mallopt is called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if action == "version" {
        println!("containerd-shim-trenv-v1 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if let (Some(flags), "start") = (flags, action.as_str()) {
        shim::start_command(flags);
    }
    // `start` only spawns the long-lived shim and exits: it needs no zygote. The server
    // does; `delete` (containerd's cleanup after the shim is gone) only when the bundle
    // still holds something to remove.
    if action != "start" && (action != "delete" || shim::leftovers_in(Path::new("."))) {
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
