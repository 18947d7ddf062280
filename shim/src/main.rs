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
mod signals;
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

/// Set by `start` for a new server whose first container is restored from a template:
/// the CRIU binary of the runtime options, or empty for trenv's configured one.
pub(crate) const SPARE_RESTORER_ENV: &str = "TRENV_SPARE_RESTORER";

/// A new server's first container will be restored: its runtime keeps a spare restorer
/// (trenv_runtime's worker/spare.rs) from now on, ready by the time the Create comes.
fn keep_spare_restorer(runtime: &Runtime) {
    let Some(binary) = std::env::var_os(SPARE_RESTORER_ENV) else {
        return;
    };
    let configured = trenv_runtime::config::Config::load()
        .map(|c| c.criu)
        .unwrap_or_default();
    if !configured.start_ahead {
        return;
    }
    let binary = Some(std::path::PathBuf::from(binary))
        .filter(|p| !p.as_os_str().is_empty())
        .or(configured.binary);
    let criu = trenv_runtime::snapshot::CriuConfig {
        binary,
        cache_dir: Some(std::path::PathBuf::from(trenv_runtime::paths::RUN_DIR)),
        ..Default::default()
    };
    let always = std::env::var_os(shared::ENV).is_some();
    if let Err(e) = runtime.keep_spare_restorer(&criu, always) {
        log::debug!("no spare restorer: {e}");
    }
}

/// A new server on a node whose containers run in pooled sandboxes opens its way into the
/// node's pin store (its gate thread, trenv_runtime's sandbox/store.rs) now, while
/// containerd connects and sends the first Create, instead of in that Create's sandbox
/// take (0.2–1.5 ms measured there). Only into a store that exists: the first sandbox of
/// the node makes it, as before.
fn open_pin_gate() {
    let open = || {
        let enabled = trenv_runtime::config::Config::load()
            .map(|c| c.sandboxes.enabled)
            .unwrap_or(false);
        if enabled
            && trenv_runtime::sandbox::store::existing().is_some()
            && let Err(e) = trenv_runtime::sandbox::store::root()
        {
            log::debug!("the pin store's gate is opened at the first sandbox: {e}");
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("pin-gate-open".into())
        .spawn(open)
    {
        log::debug!("the pin store's gate is opened at the first sandbox: {e}");
    }
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
                if action.is_empty() {
                    keep_spare_restorer(&r);
                    open_pin_gate();
                }
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
