//! The shim v2 Task service: every method containerd may call. Exits are watched and
//! reported in [`exits`]; the per-invocation work (metering, autotuning, OOM events,
//! templates made when ready) is the [`crate::hooks`] list, called at each step.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use containerd_shim::api::*;
use containerd_shim::protos::events::task::*;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use oci_spec::runtime::LinuxResources;

use crate::container::Container;
use crate::errors::{invalid, not_found, precondition, rt, status};
use crate::events::Events;
use crate::exit_clock::ExitClock;
use crate::hooks::autotune::AutotuneHook;
use crate::hooks::meter::MeterHook;
use crate::hooks::oom::OomHook;
use crate::hooks::ready_template::ReadyTemplateHook;
use crate::hooks::{Hooks, Invocation};
use crate::idle_trim::IdleTrim;
use crate::io::StdioPaths;
use crate::options;
use crate::process::{Process, State, now};
use crate::shared::{Linger, ShimLog, SocketFile};
use trenv_runtime::config::Config;
use trenv_runtime::metering::MeterConfig;

mod exits;

/// A Create in progress, counted while it lives (a shared shim does not linger meanwhile).
struct Creating(Arc<Inner>);

impl Creating {
    fn new(inner: &Arc<Inner>) -> Creating {
        inner.creating.fetch_add(1, Ordering::SeqCst);
        Creating(inner.clone())
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        self.0.creating.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the server knows of itself when its service is made: its socket, and whether it is
/// a shared shim (its linger).
pub struct Server {
    pub socket_path: std::path::PathBuf,
    pub socket: Arc<OnceLock<SocketFile>>,
    pub linger: Option<Linger>,
}

type TtrpcResult<T> = ttrpc::Result<T>;

/// Exits of pids not (yet) known to the service, with when they were seen.
type Unclaimed = HashMap<i32, (i32, Instant)>;

pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Serialises exit handling with the registration of new pids.
    unclaimed: Mutex<Unclaimed>,
    events: Events,
    exit: Arc<ExitSignal>,
    /// Work attached to every process's start and exit.
    hooks: Hooks,
    /// When processes exited, stamped as it happens (see exit_clock.rs).
    exit_clock: Option<Arc<ExitClock>>,
    /// Unmaps the shim's code once it is idle after requests.
    idle_trim: Arc<IdleTrim>,
    /// Exit handlers still running (they write metering records): Shutdown waits for them.
    exits_in_flight: (Mutex<usize>, std::sync::Condvar),
    /// The containerd namespace this shim serves (containerd's `-namespace`): the first
    /// part of every container's tenant, which no annotation can change.
    namespace: String,
    /// Creates in progress (not yet among `containers`).
    creating: std::sync::atomic::AtomicUsize,
    /// A shared shim's lingering after its last container (shared.rs); `None`: the shim
    /// exits when containerd shuts it down without containers.
    linger: Option<Arc<Linger>>,
    /// The socket this shim serves, known from its first request on.
    socket: Arc<OnceLock<SocketFile>>,
    /// The socket's path (containerd's `-socket`).
    socket_path: std::path::PathBuf,
    /// A shared shim's log, following the containers it serves (shared.rs).
    log: Option<ShimLog>,
}

impl Inner {
    /// Containers, or creates in progress.
    fn has_containers(&self) -> bool {
        self.creating.load(Ordering::SeqCst) > 0 || !self.containers().is_empty()
    }

    /// A shared shim's log, if it went to the FIFO of `deleted`'s bundle, goes to one of
    /// the containers left (else it stays: containerd reads it no more).
    fn log_follows_a_container(&self, deleted: &std::path::Path) {
        let Some(log) = &self.log else {
            return;
        };
        if log.following().as_deref() != Some(deleted) {
            return;
        }
        let next = self
            .containers()
            .values()
            .map(|c| c.bundle().to_path_buf())
            .next();
        if let Some(bundle) = next {
            log.follow(&bundle);
        }
    }

    /// Lets the shim exit once exit handlers have finished their metering records and
    /// events.
    fn exit_now(&self) {
        if let Some(reserve) = crate::reserve::get() {
            reserve.close();
        }
        self.wait_exits(Duration::from_secs(5));
        self.events.flush(Duration::from_secs(2));
        self.exit.signal();
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id}")))
    }

    fn unclaimed(&self) -> MutexGuard<'_, Unclaimed> {
        self.unclaimed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Service {
    /// The task service of the shim of containerd namespace `namespace`, whose containerd
    /// serves its API on `containerd` (a socket path or `unix://` address).
    pub fn new(
        events: Events,
        exit: Arc<ExitSignal>,
        namespace: String,
        containerd: String,
        server: Server,
    ) -> Service {
        crate::io::set_namespace(&namespace);
        if crate::alias::active() {
            log::info!(
                "alias mode: trenv serves io.containerd.runc.v2 as {}; runc options it cannot \
                 honour are ignored",
                crate::alias::RUNC_SHIM
            );
        }
        let inner = Arc::new(Inner {
            containers: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(HashMap::new()),
            hooks: Hooks::new(vec![
                Box::new(MeterHook {
                    config: MeterConfig::from_config(&Config::load().unwrap_or_else(|e| {
                        log::warn!("{e}; metering with the defaults and the environment");
                        Config::defaults_with_env()
                    })),
                    namespace: namespace.clone(),
                    containerd,
                }),
                Box::new(AutotuneHook),
                Box::new(OomHook {
                    events: events.clone(),
                }),
                Box::new(ReadyTemplateHook),
            ]),
            events,
            exit,
            exit_clock: ExitClock::start(),
            idle_trim: IdleTrim::start(),
            exits_in_flight: (Mutex::new(0), std::sync::Condvar::new()),
            namespace,
            creating: std::sync::atomic::AtomicUsize::new(0),
            log: server.linger.as_ref().map(|_| ShimLog::find()),
            linger: server.linger.map(Arc::new),
            socket: server.socket,
            socket_path: server.socket_path,
        });
        inner.clone().watch_exits();
        Service { inner }
    }
}

impl Service {
    /// Starts a process between the hooks' `before_start` and `start_failed`.
    fn start_process(
        &self,
        c: &Arc<Container>,
        p: &Arc<Process>,
        start: impl FnOnce() -> TtrpcResult<i32>,
    ) -> TtrpcResult<i32> {
        let inv = Invocation {
            container: c,
            process: p,
        };
        self.inner.hooks.before_start(&inv)?;
        start().inspect_err(|_| self.inner.hooks.start_failed(&inv))
    }
}

fn state_response(c: &Container, p: &Process) -> StateResponse {
    let g = p.lock();
    let mut r = StateResponse {
        id: if p.exec_id.is_empty() {
            c.id.clone()
        } else {
            p.exec_id.clone()
        },
        bundle: c.bundle().display().to_string(),
        pid: g.pid as u32,
        stdin: p.stdio.stdin.clone(),
        stdout: p.stdio.stdout.clone(),
        stderr: p.stdio.stderr.clone(),
        terminal: p.stdio.terminal,
        exec_id: p.exec_id.clone(),
        ..Default::default()
    };
    r.status = g.state.status().into();
    if let Some(exit) = &g.exit {
        r.exit_status = exit.status;
        r.exited_at = exit.at_field();
    }
    r
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        log::debug!(
            "create {}: rootfs {:?}",
            req.id,
            req.rootfs
                .iter()
                .map(|m| (m.type_.as_str(), m.source.as_str(), m.options.join(",")))
                .collect::<Vec<_>>()
        );
        self.inner.idle_trim.poke();
        // The request came through this shim's socket: it is this shim's now.
        self.inner
            .socket
            .get_or_init(|| SocketFile::of(&self.inner.socket_path));
        let _creating = Creating::new(&self.inner);
        // The reserve's fills wait until this Create (and the others of a burst) ended.
        let _busy = crate::reserve::get().map(|r| r.busy());
        if self.inner.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let alias = crate::alias::active();
        let opts = options::parse_as(req.options.as_ref(), alias).map_err(invalid)?;
        for name in &opts.ignored {
            log::info!(
                "{}: runc option {name} ignored (alias mode, trenv installed as {}): {}",
                req.id,
                crate::alias::RUNC_SHIM,
                crate::alias::why_ignored(name)
            );
        }
        let began = Instant::now();
        // A shared shim's log goes to the new container's from its Create on (what the
        // Create logs reaches containerd), back to the one it followed if Create fails.
        let followed = self.inner.log.as_ref().map(|log| {
            let previous = log.following();
            log.follow(std::path::Path::new(&req.bundle));
            (log, previous)
        });
        let c = match Container::create(&req, &opts, &self.inner.namespace) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                if let Some((log, Some(previous))) = followed {
                    log.follow(&previous);
                }
                return Err(e);
            }
        };
        *c.create_time.lock().unwrap_or_else(|e| e.into_inner()) = Some(began.elapsed());
        let pid = c.init.pid();
        self.inner.containers().insert(req.id.clone(), c.clone());
        self.inner.events.publish(
            TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        self.inner.hooks.created(&c);
        self.inner.claim(&c, &c.init, pid);
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        self.inner.idle_trim.poke();
        let _busy = crate::reserve::get().map(|r| r.busy());
        let c = self.inner.container(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            let began = Instant::now();
            let pid = self.start_process(&c, &c.init, || c.start_init())?;
            self.inner.events.publish(
                TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: c.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            self.inner.started(&c, &c.init, pid);
            // The next start of this function finds an instance restored ahead.
            if let (Some(source), Some(reserve)) = (&c.reserve_source, crate::reserve::get()) {
                reserve.refill(source.clone());
            }
            // Benchmarks read this line (integration/src/bin/bench-templates.rs).
            let created = c
                .create_time
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            log::info!(
                "started {} (pid {pid}, {}{}): create {:.1} ms, start {:.1} ms",
                c.id,
                c.plan,
                if c.from_reserve {
                    ", from the reserve"
                } else {
                    ""
                },
                created.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                began.elapsed().as_secs_f64() * 1e3
            );
            pid
        } else {
            let p = c.process(&req.exec_id)?;
            let pid = self
                .start_process(&c, &p, || c.start_exec(&p))
                .inspect_err(|_| {
                    // It will never run: answer its waiters (runc's shim reports 255 too).
                    p.set_exited(255, now());
                })?;
            self.inner.events.publish(
                TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            self.inner.started(&c, &p, pid);
            pid
        };
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let c = self.inner.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        Ok(state_response(&c, &p))
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let c = self.inner.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.wait();
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: exit.at_field(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.kill(&req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        self.inner.idle_trim.poke();
        let c = self.inner.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            let (state, pid, exit) = {
                let g = p.lock();
                (g.state, g.pid, g.exit.clone())
            };
            if state == State::Running {
                return Err(precondition(format!(
                    "exec {} is still running",
                    req.exec_id
                )));
            }
            if let Some(io) = p.lock().io.as_mut() {
                io.close();
            }
            c.execs().remove(&req.exec_id);
            let exit = exit.unwrap_or_default();
            return Ok(DeleteResponse {
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: exit.at_field(),
                ..Default::default()
            });
        }
        let state = c.init.state();
        if matches!(state, State::Running | State::Paused) {
            return Err(precondition(format!(
                "container {} is still running; kill it first",
                req.id
            )));
        }
        c.destroy()?;
        self.inner.containers().remove(&req.id);
        self.inner.log_follows_a_container(c.bundle());
        let g = c.init.lock();
        let exit = g.exit.clone().unwrap_or_else(|| crate::process::Exit {
            status: 0,
            at: now(),
        });
        let pid = g.pid as u32;
        drop(g);
        self.inner.events.publish(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: exit.at_field(),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: exit.at_field(),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.inner.idle_trim.poke();
        let c = self.inner.container(&req.id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .ok_or_else(|| invalid("exec request without a process spec"))?;
        // The request's `terminal` decides, as in runc's shim: containerd's client library
        // sends the process spec with its terminal flag unset and asks for one here.
        let mut process = serde_json::from_slice::<oci_spec::runtime::Process>(spec)
            .map_err(|e| invalid(format!("invalid exec process spec: {e}")))?;
        process.set_terminal(Some(req.terminal));
        let spec = serde_json::to_vec(&process)
            .map_err(|e| invalid(format!("invalid exec process spec: {e}")))?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            owner: c.init.stdio.owner,
            id: req.exec_id.clone(),
        };
        c.add_exec(&req.exec_id, paths, spec)?;
        self.inner.events.publish(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if let Some(io) = p.lock().io.as_ref() {
            io.resize(req.width, req.height)
                .map_err(crate::errors::stdio)?;
        }
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin
            && let Some(io) = p.lock().io.as_ref()
        {
            io.close_stdin();
        }
        Ok(Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let c = self.inner.container(&req.id)?;
        let pids = match c.cgroup.get() {
            Some(cg) => cg.pids().map_err(rt)?,
            None => vec![c.init.pid()],
        };
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.pause()?;
        self.inner.events.publish(
            TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.resume()?;
        self.inner.events.publish(
            TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let opts = options::checkpoint(req.options.as_ref()).map_err(invalid)?;
        // The image path the client asked for wins: containerd 2.x passes it as `path` too,
        // but containerd 1.7 reads it only from runc-named runtimes' options and gives any
        // other runtime a directory of its own.
        let images = if opts.image_path.is_empty() {
            req.path.clone()
        } else {
            opts.image_path.clone()
        };
        if images.is_empty() {
            return Err(invalid(
                "checkpoint without a destination: give an image path",
            ));
        }
        log::info!("checkpoint {} into {images} (exit: {})", req.id, opts.exit);
        let work = (!opts.work_path.is_empty()).then(|| std::path::PathBuf::from(&opts.work_path));
        c.checkpoint(images.into(), work, options::criu_checkpoint_options(&opts))?;
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| invalid("update without resources"))?;
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| invalid(format!("invalid resources in update: {e}")))?;
        let cg = c
            .cgroup
            .get()
            .ok_or_else(|| precondition("the container has no cgroup"))?;
        cg.update(&resources).map_err(rt)?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let c = self.inner.container(&req.id)?;
        let cg = c
            .cgroup
            .get()
            .ok_or_else(|| precondition("the container has no cgroup"))?;
        let stats = crate::metrics::collect(cg).map_err(rt)?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .inner
            .containers()
            .get(&req.id)
            .map_or(0, |c| c.init.pid());
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.inner.has_containers() {
            return Ok(Empty::new());
        }
        match &self.inner.linger {
            // A shared shim waits for its tenant's next container (shared.rs).
            Some(linger) => {
                let (inner, done) = (self.inner.clone(), self.inner.clone());
                linger.start(move || inner.has_containers(), move || done.exit_now());
            }
            None => self.inner.exit_now(),
        }
        Ok(Empty::new())
    }
}
