//! containerd's view of the shim binary: `start` (spawn or reuse a shim), `delete` (clean up
//! after a dead shim) and the long-lived server.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts, spawn};
use oci_spec::runtime::Spec;
use trenv_runtime::container::Location;

use crate::annotations::SANDBOX_ID;
use crate::events::Events;
use crate::options::RuntimeOptions;
use crate::task::Service;

pub struct TrenvShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    /// The ttrpc socket this shim serves (server mode).
    socket: String,
    /// containerd's gRPC socket (`-address`).
    containerd: String,
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Whether a bundle still holds trenv state or a mounted rootfs.
pub fn leftovers_in(bundle: &Path) -> bool {
    bundle.join(".trenv").exists() || is_mount_point(&bundle.join("rootfs"))
}

/// `start`: spawns the shim server for this container's group, or finds the group's running
/// one (the new server then exits, as the group's socket is taken), and answers its address.
///
/// containerd writes the task's runtime options on `start`'s stdin (a protobuf `Any`): with
/// runc's `ShimCgroup`, `start` moves itself into that cgroup before it spawns the server,
/// so that the server (and the zygote it forks) start there. Moving the server afterwards
/// would race with its threads, and on cgroup v1 the kernel refuses to move a process with
/// a real-time thread (the exit clock's) into a cgroup without a real-time budget. As runc's
/// shim does, the server's OOM score is then set just above containerd's, so that the kernel
/// picks a shim before the daemon.
pub fn start(opts: StartOpts, options: &RuntimeOptions) -> containerd_shim::Result<String> {
    let cwd = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
    let group = grouping(&cwd, &opts.id);
    if let Some(cgroup) = &options.shim_cgroup {
        trenv_runtime::container::cgroup::join_existing(Path::new(cgroup), std::process::id())
            .map_err(|e| {
                containerd_shim::Error::Other(format!(
                    "moving the shim into ShimCgroup {cgroup}: {e}; create the cgroup first \
                     or fix ShimCgroup in the runtime options"
                ))
            })?;
    }
    // Alias mode is decided here, from the name containerd ran us under: the server's own
    // argv[0] is the resolved binary.
    let vars = if crate::alias::active() {
        vec![(crate::alias::ENV, "1")]
    } else {
        Vec::new()
    };
    let (pid, address) = spawn(opts, &group, vars)?;
    // A server that found its group's socket taken has exited (or is exiting).
    if let Err(e) = containerd_shim::cgroup::adjust_oom_score(pid)
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        log::warn!("setting the shim's OOM score: {e}");
    }
    write_address(&address)?;
    Ok(address)
}

/// containerd's `start` command, run without containerd-shim's bootstrap. That bootstrap
/// makes every command a child subreaper with signal handlers whose wake-up socket is
/// closed when it returns; a server that exits at once (its pod's shim already serves
/// the socket) leaves its zygote to die as a child of `start`, and a SIGCHLD in that window
/// sent `start` into an endless SIGPIPE loop (the handler's write to the closed socket
/// raised SIGPIPE, whose handler wrote again), hanging containerd's task create.
pub fn start_command(flags: Flags) -> ! {
    let opts = StartOpts {
        id: flags.id,
        publish_binary: flags.publish_binary,
        address: flags.address,
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace,
        debug: flags.debug,
    };
    if opts.namespace.is_empty() {
        eprintln!("io.containerd.trenv.v1: the shim namespace cannot be empty");
        std::process::exit(1);
    }
    let mut stdin = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let options = crate::options::start_options(&stdin);
    match start(opts, &options) {
        Ok(address) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let ok = out.write_all(address.as_bytes()).and_then(|()| out.flush());
            std::process::exit(if ok.is_ok() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("io.containerd.trenv.v1: {e:?}");
            std::process::exit(1)
        }
    }
}

/// The id whose shim serves this container: its pod's sandbox id, or its own id.
fn grouping(bundle: &Path, id: &str) -> String {
    Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|s| s.annotations().clone())
        .and_then(|a| a.get(SANDBOX_ID).cloned())
        .unwrap_or_else(|| id.to_string())
}

impl Shim for TrenvShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        TrenvShim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            containerd: args.address.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        start(opts, &RuntimeOptions::default())
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd runs this in the bundle once the shim is gone: remove what is left
        // (processes, cgroup, state, rootfs mount) if the shim could not.
        if let Some(runtime) = crate::runtime_if_forked() {
            let bundle = std::env::current_dir()
                .map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
            let at = Location::new(&self.id, &bundle);
            if let Err(e) = runtime.delete(&at, is_mount_point(&bundle.join("rootfs"))) {
                log::warn!(
                    "cleaning up container {} in {}: {e}",
                    self.id,
                    self.namespace
                );
            }
            runtime.terminate(std::time::Duration::from_secs(1));
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(crate::process::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // containerd removes the bundle (and the `address` file the library would read to
        // find the socket) before the shim exits: remove the socket here, or it is left
        // behind and a later shim for the same id waits a second probing it.
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
        // The shim's reaper thread is still running: let it reap the zygote now.
        crate::runtime().terminate(std::time::Duration::from_secs(1));
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events = Events::new(publisher, address, self.namespace.clone());
        crate::container::sandbox::sweep_periodically();
        Service::new(
            events,
            self.exit.clone(),
            self.namespace.clone(),
            self.containerd.clone(),
        )
    }
}
