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
    /// The socket this server serves, once a request came through it.
    served: Arc<std::sync::OnceLock<crate::shared::SocketFile>>,
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
    let (group, shared, restores) = grouping(&cwd, &opts, options)?;
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
    let mut vars = Vec::new();
    if crate::alias::active() {
        vars.push((crate::alias::ENV, "1"));
    }
    let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
    let socket = crate::shared::socket_path(&address);
    let linger;
    if let Some(secs) = shared {
        // Before looking for the group's shim: one that lingers stays for this start.
        if let Err(e) = crate::shared::take_lease(&socket) {
            log::warn!("shared shim {group}: no lease taken ({e})");
        }
        linger = secs.to_string();
        vars.push((crate::shared::ENV, linger.as_str()));
    }
    // The group's shim already serves: its address, and no process spawned (a new server
    // would only find the socket taken and exit).
    if group != opts.id && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        write_address(&address)?;
        return Ok(address);
    }
    // A new server for a container restored from a template keeps a spare restorer from
    // its start (main.rs), while containerd connects and sends the Create.
    let criu = options.criu_path.clone().unwrap_or_default();
    if restores {
        vars.push((crate::SPARE_RESTORER_ENV, criu.as_str()));
    }
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

/// The group whose shim serves this container: its pod's sandbox id, its tenant's shared
/// shim (shared.rs; then also the linger in seconds), or its own id; and whether the
/// container asks for a template restore.
fn grouping(
    bundle: &Path,
    opts: &StartOpts,
    options: &RuntimeOptions,
) -> containerd_shim::Result<(String, Option<u64>, bool)> {
    let annotations = Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|s| s.annotations().clone())
        .unwrap_or_default();
    let restores = annotations.contains_key(trenv_runtime::template::TEMPLATE_ANNOTATION);
    if let Some(pod) = annotations.get(SANDBOX_ID) {
        return Ok((pod.clone(), None, restores));
    }
    let config = trenv_runtime::config::Config::load()
        .map(|c| c.shim)
        .unwrap_or_default();
    let shared = crate::shared::group_of(
        &annotations,
        &opts.namespace,
        options.shim_cgroup.is_some(),
        &config,
    )
    .map_err(containerd_shim::Error::InvalidArgument)?;
    Ok(match shared {
        Some(group) => (group, Some(config.linger_secs), restores),
        None => (opts.id.clone(), None, restores),
    })
}

impl Shim for TrenvShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        // The framework registered its signals just before.
        crate::signals::quiet_sigpipe();
        TrenvShim {
            exit: Arc::new(ExitSignal::default()),
            served: Arc::default(),
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
        // (processes, cgroup, state, rootfs mount, a killed server's socket) if the shim
        // could not.
        if let Ok(address) = std::fs::read_to_string("address") {
            crate::shared::remove_if_dead(&crate::shared::socket_path(address.trim()));
        }
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
            // A shared shim that died leaves its reserve's instances (and the directories
            // of the containers that took them): removed now, as the container is.
            crate::reserve::sweep_dead();
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
        // behind and a later shim for the same id waits a second probing it. Only this
        // server's: a shared shim's name may be a newer shim's by now (shared.rs).
        match self.served.get() {
            Some(socket) => socket.remove_if_ours(),
            None => {
                let path = crate::shared::socket_path(&self.socket);
                if !path.as_os_str().is_empty() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        // The shim's reaper thread is still running: let it reap the zygote now.
        crate::runtime().terminate(std::time::Duration::from_secs(1));
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events = Events::new(publisher, address, self.namespace.clone());
        crate::container::sandbox::sweep_periodically();
        let server = crate::task::Server {
            socket_path: crate::shared::socket_path(&self.socket),
            socket: self.served.clone(),
            linger: crate::shared::Linger::from_env(&self.socket),
        };
        Service::new(
            events,
            self.exit.clone(),
            self.namespace.clone(),
            self.containerd.clone(),
            server,
        )
    }
}
