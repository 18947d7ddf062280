//! A container served by this shim: its init process, its execs and its cgroup.

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use containerd_shim::protos::api::CreateTaskRequest;
use containerd_shim::protos::ttrpc;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use trenv_runtime::cgroup::Cgroup;
use trenv_runtime::checkpoint::{CheckpointOptions, CriuConfig};
use trenv_runtime::config::Config;
use trenv_runtime::ready_template::ReadyTemplate;
use trenv_runtime::restore::{RestorePlan, TemplateFile};
use trenv_runtime::rootfs::Mount;
use trenv_runtime::sandbox::{Location, Reply, Request, Stdio};
use trenv_runtime::template::{
    Manifest, TEMPLATE_ANNOTATION, TemplateError, TemplateStore, stage_images,
};

use crate::errors::{internal, invalid, precondition, rt};
use crate::io::{ChildStdio, ConsoleSocket, ProcessIo, StdioPaths};
use crate::options::RuntimeOptions;
use crate::process::{Process, State};
use crate::stamp::ExecStamp;
use crate::zygote;

pub struct Container {
    pub id: String,
    pub at: Location,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    pub cgroup: LazyCgroup,
    mounted_rootfs: bool,
    /// The container has a PID namespace of its own (its processes die with init).
    own_pid_ns: bool,
    /// OOM kills already reported to containerd.
    pub oom_reported: Mutex<u64>,
    /// Who this container is, for metering records.
    pub identity: trenv_meter::record::Identity,
    /// The memory hull to follow live (annotation `io.trenv.meter.hull`).
    pub hull: Option<trenv_meter::hull::Hull>,
    /// The running autotuner of the init process.
    pub autotuner: Mutex<Option<trenv_runtime::metering::Autotuner>>,
    /// Memory sampling interval for this container's invocations (annotation
    /// `io.trenv.meter.interval-us`; 0 = exact peak only), overriding the shim's default.
    pub meter_interval: Option<std::time::Duration>,
    /// Which CRIU checkpoints and restores this container.
    pub criu: CriuConfig,
    /// Created from a checkpoint: what Start restores.
    pending_restore: Mutex<Option<PendingRestore>>,
    /// How the init process starts: "cold", "checkpoint" or "template NAME".
    start_kind: String,
    /// How long Create took in the shim (logged at Start).
    pub create_time: Mutex<Option<std::time::Duration>>,
    /// `io.trenv.template.create`: the template to make once the function is ready.
    pub ready_template: Option<ReadyTemplate>,
}

/// A container created from a checkpoint, waiting for Start to restore it.
struct PendingRestore {
    plan: RestorePlan,
    /// The restored process's end of its stdio pipes (none with a terminal).
    child: ChildStdio,
}

/// CRIU's work directory for a restore, below containerd's work directory of the task;
/// removed after a successful restore.
const RESTORE_WORK: &str = "criu-restore";

/// Exit status reported for a process that never started (as runc's shim does for a task
/// deleted before Start: killed).
pub const NEVER_STARTED: u32 = 128 + libc::SIGKILL as u32;

/// A template's images linked for one restore, below containerd's work directory.
const STAGED_IMAGES: &str = "criu-images";

/// Where trenv's CRIU runs cache what they learnt (a tmpfs).
const CRIU_CACHE_DIR: &str = "/run/trenv";

/// The CRIU to use: runc's `CriuPath` option, else `TRENV_CRIU`, else `criu` on PATH.
fn criu_config(opts: &RuntimeOptions) -> CriuConfig {
    CriuConfig {
        binary: opts
            .criu_path
            .clone()
            .or_else(|| std::env::var("TRENV_CRIU").ok())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        cache_dir: Some(PathBuf::from(CRIU_CACHE_DIR)),
    }
}

/// Annotation setting the memory sampling interval of a container, in microseconds.
pub const METER_INTERVAL_ANNOTATION: &str = "io.trenv.meter.interval-us";

/// Annotation naming a hull file (`trenv meter hull`) whose upscaling hull the container's
/// memory limit follows, timed from the start of its init process.
pub const HULL_ANNOTATION: &str = "io.trenv.meter.hull";

/// Runs a request in a fresh zygote worker, passing the child's stdio descriptors;
/// `make` builds the request once their positions are known.
fn call_with_stdio(
    make: impl FnOnce(Stdio) -> Request,
    child: &ChildStdio,
    exec_stamp: Option<&OwnedFd>,
) -> Result<Reply, ttrpc::Error> {
    let mut fds: Vec<&dyn std::os::fd::AsFd> = Vec::new();
    let mut stdio = Stdio::default();
    for (i, fd) in child.iter().enumerate() {
        if let Some(fd) = fd {
            let slot = Some(fds.len());
            match i {
                0 => stdio.stdin = slot,
                1 => stdio.stdout = slot,
                _ => stdio.stderr = slot,
            }
            fds.push(fd);
        }
    }
    if let Some(fd) = exec_stamp {
        stdio.exec_stamp = Some(fds.len());
        fds.push(fd);
    }
    zygote().call(&make(stdio), &fds).map_err(rt)
}

/// Sets up stdio for a process: a console socket for a terminal, pipes otherwise.
fn prepare_io(
    paths: &StdioPaths,
) -> Result<(Option<ProcessIo>, Option<ConsoleSocket>, ChildStdio), ttrpc::Error> {
    if paths.terminal {
        let console = ConsoleSocket::new().map_err(rt)?;
        Ok((None, Some(console), [None, None, None]))
    } else {
        let (io, child) = ProcessIo::pipes(paths.clone()).map_err(rt)?;
        Ok((Some(io), None, child))
    }
}

fn finish_io(
    paths: &StdioPaths,
    io: Option<ProcessIo>,
    console: Option<ConsoleSocket>,
) -> Result<Option<ProcessIo>, ttrpc::Error> {
    match console {
        Some(c) => {
            let master = c.receive().map_err(rt)?;
            Ok(Some(
                ProcessIo::terminal(paths.clone(), master).map_err(rt)?,
            ))
        }
        None => Ok(io),
    }
}

impl Container {
    /// Creates the container (its init process waits for Start).
    pub fn create(
        req: &CreateTaskRequest,
        opts: &RuntimeOptions,
    ) -> Result<Container, ttrpc::Error> {
        let mut phases = trenv_runtime::restore::Phases::start();
        let bundle = PathBuf::from(&req.bundle);
        let spec_path = bundle.join("config.json");
        let spec = Spec::load(&spec_path).map_err(|e| {
            invalid(format!(
                "invalid OCI spec {}: {}; fix the container's configuration",
                spec_path.display(),
                trenv_runtime::error::chain(&e)
            ))
        })?;
        let annotation = |k: &str| {
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(k).cloned())
                .unwrap_or_default()
        };
        let identity = trenv_meter::record::Identity {
            container_id: req.id.clone(),
            sandbox_id: annotation("io.kubernetes.cri.sandbox-id"),
            image: annotation("io.kubernetes.cri.image-name"),
            function: annotation("io.trenv.function"),
            ..Default::default()
        };
        let hull = match annotation(HULL_ANNOTATION) {
            p if p.is_empty() => None,
            p => Some(
                trenv_meter::hull::Hull::load(Path::new(&p))
                    .map_err(|e| invalid(format!("annotation {HULL_ANNOTATION}: {e}")))?,
            ),
        };
        let meter_interval = match annotation(METER_INTERVAL_ANNOTATION) {
            v if v.is_empty() => None,
            v => Some(std::time::Duration::from_micros(v.parse::<u64>().map_err(
                |_| {
                    invalid(format!(
                        "annotation {METER_INTERVAL_ANNOTATION}={v:?}: expected a whole number of \
                     microseconds (e.g. 10000 for 10 ms, 0 to sample nothing)"
                    ))
                },
            )?)),
        };
        let ready_template =
            ReadyTemplate::from_annotations(annotation).map_err(|e| invalid(e.to_string()))?;
        let linux = spec.linux().as_ref();
        let own_pid_ns = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
            });
        let cgroups_path = linux.and_then(|l| l.cgroups_path().clone());
        // containerd's CRI passes runc-typed options (SystemdCgroup) only to runc itself;
        // with the kubelet's systemd driver it writes cgroupsPath as "slice:prefix:name",
        // which asks for the systemd driver just as clearly.
        let systemd = opts.systemd_cgroup || cgroups_path.as_deref().is_some_and(is_systemd_path);
        // Opening the cgroup first catches a systemd driver this host cannot honour before
        // anything is created.
        phases.mark("spec");
        Cgroup::check(systemd).map_err(rt)?;
        let cgroup = LazyCgroup::open(cgroups_path.clone(), &req.id, systemd);
        phases.mark("cgroup");
        let at = Location::new(&req.id, &bundle);
        let rootfs: Vec<Mount> = req
            .rootfs
            .iter()
            .map(|m| Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let template_name = annotation(TEMPLATE_ANNOTATION);
        let mut template_file = None;
        let mut loopback_up = false;
        let mut criu = criu_config(opts);
        let restore_from = if !template_name.is_empty() {
            if !req.checkpoint.is_empty() || opts.criu_image_path.is_some() {
                return Err(invalid(format!(
                    "container {} asks for both a checkpoint and template {template_name}; \
                     choose one",
                    req.id
                )));
            }
            let config = Config::load().map_err(|e| precondition(e.to_string()))?;
            phases.mark("config");
            if criu.binary.is_none() {
                criu.binary = config.criu.binary.clone();
            }
            let checked = TemplateStore::new(&config.templates.dir)
                .check(&template_name, &spec)
                .map_err(|e| match e {
                    TemplateError::NotFound { .. } => crate::errors::not_found(e.to_string()),
                    TemplateError::BadName(_) => {
                        invalid(format!("annotation {TEMPLATE_ANNOTATION}: {e}"))
                    }
                    _ => precondition(e.to_string()),
                })?;
            phases.mark("template check");
            let staged = bundle.join("work").join(STAGED_IMAGES);
            stage_images(&checked.images, &staged).map_err(|e| internal(e.to_string()))?;
            phases.mark("staging");
            let m = checked.manifest;
            loopback_up = m.empty_netns;
            template_file = Some(TemplateFile {
                key: Manifest::image_name(&m.name)
                    .trim_start_matches('/')
                    .to_string(),
                path: m.pool.path,
                stamp: m.pool.stamp,
                template: m.name,
            });
            Some(staged)
        } else if !req.checkpoint.is_empty() {
            Some(PathBuf::from(&req.checkpoint))
        } else {
            opts.criu_image_path.as_ref().map(PathBuf::from)
        };
        if !req.parent_checkpoint.is_empty() {
            return Err(invalid(
                "restoring from a parent (incremental) checkpoint is not supported by trenv; \
                 restore from a full checkpoint",
            ));
        }
        let mut container = Container {
            id: req.id.clone(),
            at: at.clone(),
            init: Arc::new(Process::new("", paths.clone(), Vec::new())),
            execs: Mutex::new(HashMap::new()),
            cgroup,
            mounted_rootfs: !rootfs.is_empty(),
            own_pid_ns,
            oom_reported: Mutex::new(0),
            identity,
            hull,
            autotuner: Mutex::new(None),
            meter_interval,
            criu,
            pending_restore: Mutex::new(None),
            start_kind: match (&template_file, &restore_from) {
                (Some(t), _) => format!("template {}", t.template),
                (None, Some(_)) => "checkpoint".into(),
                (None, None) => "cold".into(),
            },
            create_time: Mutex::new(None),
            ready_template,
        };
        if let Some(images) = restore_from {
            // Like runc's shim: stdio pipes now, the processes at Start (pid 0 until then).
            zygote()
                .call(
                    &Request::PrepareRestore {
                        at: at.clone(),
                        rootfs: rootfs.clone(),
                    },
                    &[],
                )
                .map_err(rt)?;
            phases.mark("rootfs");
            let (io, child) = if paths.terminal {
                (None, [None, None, None])
            } else {
                match ProcessIo::pipes(paths.clone()) {
                    Ok((io, child)) => (Some(io), child),
                    Err(e) => {
                        let _ = container.destroy();
                        return Err(rt(e));
                    }
                }
            };
            container.init.lock().io = io;
            // `<bundle>/work` is containerd's per-task work directory (a symlink).
            let work = opts
                .criu_work_path
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| bundle.join("work").join(RESTORE_WORK));
            container.pending_restore = Mutex::new(Some(PendingRestore {
                plan: RestorePlan {
                    images,
                    work,
                    systemd_cgroup: systemd,
                    terminal: paths.terminal,
                    template: template_file,
                    loopback_up,
                },
                child,
            }));
            phases.mark("stdio");
            log::debug!("created {} for a restore: {phases}", req.id);
            return Ok(container);
        }
        let (io, console, child) = prepare_io(&paths)?;
        let console_socket = console.as_ref().map(|c| c.path().to_path_buf());
        let (stamp, stamp_end) = ExecStamp::pipe()
            .map_err(|e| internal(format!("creating the exec stamp pipe: {e}")))?;
        let reply = call_with_stdio(
            |stdio| Request::Create {
                at: at.clone(),
                rootfs: rootfs.clone(),
                systemd_cgroup: systemd,
                console_socket,
                stdio,
            },
            &child,
            Some(&stamp_end),
        );
        drop((child, stamp_end));
        container.init.lock().exec_stamp = Some(stamp);
        let pid = match reply? {
            Reply::Pid(pid) => pid,
            _ => return Err(internal("the runtime worker returned no pid")),
        };
        match finish_io(&paths, io, console) {
            Ok(io) => {
                let mut g = container.init.lock();
                g.pid = pid;
                g.io = io;
            }
            Err(e) => {
                let _ = container.destroy();
                return Err(e);
            }
        }
        Ok(container)
    }

    pub fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The init process or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, ttrpc::Error> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs().get(exec_id).cloned().ok_or_else(|| {
            crate::errors::not_found(format!("exec {exec_id} of container {}", self.id))
        })
    }

    pub fn start_init(&self) -> Result<i32, ttrpc::Error> {
        let state = self.init.state();
        if state != State::Created {
            return Err(precondition(format!(
                "container {} cannot be started: it is {state:?}",
                self.id
            )));
        }
        let pending = self
            .pending_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(pending) = pending {
            return self.restore_init(pending);
        }
        zygote()
            .call(
                &Request::Start {
                    at: self.at.clone(),
                },
                &[],
            )
            .map_err(rt)?;
        let mut g = self.init.lock();
        if g.state == State::Created {
            g.state = State::Running;
        }
        Ok(g.pid)
    }

    /// Start of a container created from a checkpoint: CRIU restores its processes.
    fn restore_init(&self, pending: PendingRestore) -> Result<i32, ttrpc::Error> {
        let paths = self.init.stdio.clone();
        let (console, child) = if paths.terminal {
            (Some(ConsoleSocket::new().map_err(rt)?), [None, None, None])
        } else {
            (None, pending.child)
        };
        let console_socket = console.as_ref().map(|c| c.path().to_path_buf());
        let watchdog = SlowRestore::watch(&self.id, pending.plan.work.join("restore.log"));
        let reply = call_with_stdio(
            |stdio| Request::Restore {
                at: self.at.clone(),
                plan: pending.plan.clone(),
                console_socket,
                stdio,
                criu: self.criu.clone(),
            },
            &child,
            None,
        );
        drop((child, watchdog));
        let pid = match reply? {
            Reply::Restored { pid, phases } => {
                log::info!("restored {} (pid {pid}): {phases}", self.id);
                pid
            }
            _ => return Err(internal("the runtime worker returned no pid")),
        };
        // CRIU's work directory and the staged images are of no more use; removing them
        // (a few dozen files) need not delay Start's answer.
        let leftovers: Vec<PathBuf> = [
            (&pending.plan.work, RESTORE_WORK),
            (&pending.plan.images, STAGED_IMAGES),
        ]
        .into_iter()
        .filter(|(dir, name)| dir.ends_with(name))
        .map(|(dir, _)| dir.clone())
        .collect();
        if !leftovers.is_empty() {
            let remove = move || {
                for dir in &leftovers {
                    let _ = fs::remove_dir_all(dir);
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("restore-cleanup".into())
                .spawn(remove.clone())
            {
                log::debug!("no clean-up thread ({e}): removing restore leftovers now");
                remove();
            }
        }
        let io = match console {
            Some(c) => Some(finish_io(&paths, None, Some(c))?),
            None => None,
        };
        let mut g = self.init.lock();
        g.pid = pid;
        if g.state == State::Created {
            g.state = State::Running;
        }
        if let Some(io) = io {
            g.io = io;
        }
        Ok(pid)
    }

    /// Dumps the container with CRIU into `images` (containerd's Checkpoint).
    pub fn checkpoint(
        &self,
        images: PathBuf,
        work: Option<PathBuf>,
        options: CheckpointOptions,
    ) -> Result<(), ttrpc::Error> {
        let state = self.init.state();
        if !matches!(state, State::Running | State::Paused) {
            return Err(precondition(format!(
                "container {} is {state:?}: only a running or paused container can be \
                 checkpointed",
                self.id
            )));
        }
        let own_work = work.is_none();
        let work = work.unwrap_or_else(|| self.at.bundle.join("work").join("criu-work"));
        let result = zygote()
            .call(
                &Request::Checkpoint {
                    at: self.at.clone(),
                    images,
                    work: work.clone(),
                    options,
                    criu: self.criu.clone(),
                },
                &[],
            )
            .map_err(|e| precondition(e.to_string()));
        if own_work {
            let _ = fs::remove_dir_all(&work);
        }
        result.map(|_| ())
    }

    pub fn add_exec(
        &self,
        exec_id: &str,
        paths: StdioPaths,
        spec: Vec<u8>,
    ) -> Result<(), ttrpc::Error> {
        let mut execs = self.execs();
        if execs.contains_key(exec_id) {
            return Err(crate::errors::status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {exec_id} already exists in container {}", self.id),
            ));
        }
        if self.init.state() == State::Stopped {
            return Err(precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        execs.insert(
            exec_id.to_string(),
            Arc::new(Process::new(exec_id, paths, spec)),
        );
        Ok(())
    }

    /// Starts an exec; `register` is called with its pid while exits are held back, so
    /// that an exit racing with the start is not lost.
    pub fn start_exec(&self, p: &Process, register: impl FnOnce(i32)) -> Result<i32, ttrpc::Error> {
        if p.state() != State::Created {
            return Err(precondition(format!(
                "exec {} was already started",
                p.exec_id
            )));
        }
        let spec = std::mem::take(&mut p.lock().spec);
        let dir = self.at.state_root.join("execs");
        fs::create_dir_all(&dir)
            .map_err(|e| internal(format!("creating {}: {e}", dir.display())))?;
        let file = dir.join(format!(
            "{}.json",
            trenv_runtime::file_name_safe(&p.exec_id)
        ));
        fs::write(&file, &spec)
            .map_err(|e| internal(format!("writing {}: {e}", file.display())))?;
        let (io, console, child) = prepare_io(&p.stdio)?;
        let console_socket = console.as_ref().map(|c| c.path().to_path_buf());
        let (stamp, stamp_end) = ExecStamp::pipe()
            .map_err(|e| internal(format!("creating the exec stamp pipe: {e}")))?;
        p.lock().exec_stamp = Some(stamp);
        let reply = call_with_stdio(
            |stdio| Request::Exec {
                at: self.at.clone(),
                process: file.clone(),
                console_socket,
                stdio,
            },
            &child,
            Some(&stamp_end),
        );
        drop((child, stamp_end));
        let _ = fs::remove_file(&file);
        let pid = match reply? {
            Reply::Pid(pid) => pid,
            _ => return Err(internal("the runtime worker returned no pid")),
        };
        let io = finish_io(&p.stdio, io, console);
        {
            let mut g = p.lock();
            g.pid = pid;
            g.state = State::Running;
            if let Ok(io) = io {
                g.io = io;
            }
        }
        register(pid);
        Ok(pid)
    }

    pub fn pause(&self) -> Result<(), ttrpc::Error> {
        if self.init.state() != State::Running {
            return Err(precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        zygote()
            .call(
                &Request::Pause {
                    at: self.at.clone(),
                },
                &[],
            )
            .map_err(rt)?;
        self.init.lock().state = State::Paused;
        Ok(())
    }

    pub fn resume(&self) -> Result<(), ttrpc::Error> {
        if self.init.state() != State::Paused {
            return Err(precondition(format!("container {} is not paused", self.id)));
        }
        zygote()
            .call(
                &Request::Resume {
                    at: self.at.clone(),
                },
                &[],
            )
            .map_err(rt)?;
        self.init.lock().state = State::Running;
        Ok(())
    }

    /// Signals one process, or with `all` every process of the container.
    pub fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), ttrpc::Error> {
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| invalid(format!("invalid signal {signal}")))?;
        let p = self.process(exec_id)?;
        if all && exec_id.is_empty() {
            if let Some(cg) = self.cgroup.get()
                && let Ok(pids) = cg.pids()
            {
                for pid in pids {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
            // A paused container only dies once thawed.
            if self.init.state() == State::Paused && sig == nix::sys::signal::Signal::SIGKILL {
                let _ = self.resume();
            }
            return Ok(());
        }
        let (pid, state) = {
            let g = p.lock();
            (g.pid, g.state)
        };
        if state == State::Stopped || pid == 0 {
            return Err(crate::errors::not_found(format!(
                "process {} of container {} (already finished)",
                if exec_id.is_empty() { "init" } else { exec_id },
                self.id
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| internal(format!("sending {sig} to pid {pid}: {e}")))?;
        // A frozen process only dies once thawed (runc resumes a paused container on
        // SIGKILL too).
        if exec_id.is_empty()
            && sig == nix::sys::signal::Signal::SIGKILL
            && self.init.state() == State::Paused
        {
            let _ = self.resume();
        }
        Ok(())
    }

    /// After init exited: without a PID namespace of its own nothing else ends the
    /// container's other processes; kill them like runc's shim does.
    pub fn reap_leftovers(&self) {
        if self.own_pid_ns {
            return;
        }
        if let Some(cg) = self.cgroup.get()
            && let Ok(pids) = cg.pids()
        {
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// The container was created from a checkpoint or template and Start restores it.
    pub fn restores_at_start(&self) -> bool {
        self.pending_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Removes the container: processes, cgroup, state, rootfs mount.
    pub fn destroy(&self) -> Result<(), ttrpc::Error> {
        // Processes that never ran (a failed start, a task deleted before Start) will never
        // exit: release whoever waits for them, or containerd's Wait calls hang forever
        // and with them the shim's shutdown.
        for p in std::iter::once(&self.init).chain(self.execs().values()) {
            if p.state() == State::Created {
                p.set_exited(NEVER_STARTED, crate::process::now());
            }
        }
        for p in std::iter::once(&self.init).chain(self.execs().values()) {
            if let Some(io) = p.lock().io.as_mut() {
                io.close();
            }
        }
        zygote()
            .call(
                &Request::Delete {
                    at: self.at.clone(),
                    unmount_rootfs: self.mounted_rootfs,
                },
                &[],
            )
            .map_err(rt)?;
        Ok(())
    }

    /// How the init process starts: "cold", "checkpoint" or "template NAME".
    pub fn start_kind(&self) -> &str {
        &self.start_kind
    }

    pub fn bundle(&self) -> &Path {
        &self.at.bundle
    }
}

/// The container's cgroup, opened in the background from Create on: libcgroups reads the
/// mount table once per v1 controller (1–1.6 ms here, more on hosts with many mounts) and
/// nothing in Create needs it. Its first user (Start's meter) waits for it.
pub struct LazyCgroup {
    cell: OnceLock<Option<Cgroup>>,
    opening: Mutex<Option<std::thread::JoinHandle<Option<Cgroup>>>>,
}

impl LazyCgroup {
    fn open(path: Option<PathBuf>, id: &str, systemd: bool) -> LazyCgroup {
        let id = id.to_string();
        let open = move || match Cgroup::open(path.as_deref(), &id, systemd) {
            Ok(cg) => Some(cg),
            Err(e) => {
                log::warn!("container {id}: no cgroup for stats, metering and OOM events: {e}");
                None
            }
        };
        let lazy = LazyCgroup {
            cell: OnceLock::new(),
            opening: Mutex::new(None),
        };
        match std::thread::Builder::new()
            .name("cgroup-open".into())
            .spawn(open.clone())
        {
            Ok(handle) => *lazy.opening.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle),
            Err(_) => {
                let _ = lazy.cell.set(open());
            }
        }
        lazy
    }

    /// The cgroup, once opened; `None` if it could not be.
    pub fn get(&self) -> Option<&Cgroup> {
        self.cell
            .get_or_init(|| {
                let handle = self
                    .opening
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                handle.and_then(|h| h.join().ok()).flatten()
            })
            .as_ref()
    }
}

/// Says in the log when a restore takes far longer than restores do (a few hundred ms at
/// most), with the end of CRIU's log, so a stuck CRIU can be told from a slow one.
struct SlowRestore {
    /// Dropped when the restore answered: the watcher ends.
    _done: Option<std::sync::mpsc::Sender<()>>,
}

impl SlowRestore {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(5);

    fn watch(id: &str, log: PathBuf) -> SlowRestore {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let id = id.to_string();
        let spawned = std::thread::Builder::new()
            .name("slow-restore".into())
            .spawn(move || {
                let mut waited = std::time::Duration::ZERO;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Self::AFTER)
                {
                    waited += Self::AFTER;
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    log::warn!(
                        "restoring {id} has taken {} s so far; the end of CRIU's log {}:\n{}",
                        waited.as_secs(),
                        log.display(),
                        lines[lines.len().saturating_sub(8)..].join("\n")
                    );
                }
            });
        SlowRestore {
            _done: spawned.is_ok().then_some(done),
        }
    }
}

/// A systemd-style cgroups path: "slice:prefix:name" (relative, three fields).
fn is_systemd_path(p: &Path) -> bool {
    let s = p.to_string_lossy();
    !s.starts_with('/') && s.split(':').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroups_paths_are_recognised() {
        assert!(is_systemd_path(Path::new(
            "kubepods-besteffort-pod1.slice:cri-containerd:abc"
        )));
        assert!(!is_systemd_path(Path::new("/k8s.io/abc")));
        assert!(!is_systemd_path(Path::new("/default/abc")));
    }
}
