//! `containerd-shim-trenv-v1`, the runtime `io.containerd.trenv.v1`.

mod alias;
mod annotations;
mod children;
mod container;
mod errors;
mod events;
mod exit_clock;
mod hooks;
mod idle_trim;
mod image_of;
mod info;
mod io;
mod metrics;
mod options;
mod process;
mod reserve;
mod shared;
mod shim;
mod stamp;
mod task;

use std::path::Path;
use std::sync::OnceLock;

use trenv_runtime::Runtime;

/// The runtime (its zygote forked before the shim starts any thread): the shim's only
/// door into the kernel work of containers.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub(crate) fn runtime() -> &'static Runtime {
    RUNTIME
        .get()
        .expect("the runtime is forked in main before the shim starts")
}

/// The runtime, if this process forked one.
pub(crate) fn runtime_if_forked() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// `-info` (containerd 2.x's introspection): the runtime info on stdout, see info.rs.
fn print_info() -> ! {
    use std::io::{Read, Write};
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("{RUNTIME_ID}: {e}");
        std::process::exit(1)
    };
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        fail(&format_args!("reading the runtime options on stdin: {e}"));
    }
    let bytes = info::runtime_info(RUNTIME_ID, &stdin).unwrap_or_else(|e| fail(&e));
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&bytes).and_then(|()| out.flush()) {
        fail(&format_args!("writing the runtime info: {e}"));
    }
    std::process::exit(0)
}

const RUNTIME_ID: &str = "io.containerd.trenv.v1";

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
    if flags.as_ref().is_some_and(|f| f.info) {
        print_info();
    }
    if let (Some(flags), "start") = (flags, action.as_str()) {
        shim::start_command(flags);
    }
    // `start` only spawns the long-lived shim and exits: it needs no runtime. The server
    // does; `delete` (containerd's cleanup after the shim is gone) only when the bundle
    // still holds something to remove.
    if action != "start" && (action != "delete" || shim::leftovers_in(Path::new("."))) {
        // SAFETY: nothing has started a thread yet.
        match unsafe { Runtime::fork() } {
            Ok(r) => {
                let _ = RUNTIME.set(r);
            }
            Err(e) => {
                eprintln!("containerd-shim-trenv-v1: {e}");
                std::process::exit(1);
            }
        }
    }
    if action.is_empty() {
        // The serving shim reaps all its children: programs it runs learn their status
        // from that reaper.
        trenv_runtime::sys::run::set_runner(children::run);
    }
    containerd_shim::run::<shim::TrenvShim>(RUNTIME_ID, None);
}
