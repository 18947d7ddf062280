//! The shim v2 Task service: every method containerd may call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use containerd_shim::api::*;
use containerd_shim::monitor::{Subject, Topic, monitor_subscribe};
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
use crate::idle_trim::IdleTrim;
use crate::io::StdioPaths;
use crate::options;
use crate::process::{Process, State, now, timestamp};
use trenv_runtime::metering::{Meter, MeterConfig};

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
    namespace: String,
    meter: Option<MeterConfig>,
    /// When processes exited, stamped as it happens (see exit_clock.rs).
    exit_clock: Option<Arc<ExitClock>>,
    /// Unmaps the shim's code once it is idle after requests.
    idle_trim: Arc<IdleTrim>,
    /// Exit handlers still running (they write metering records): Shutdown waits for them.
    exits_in_flight: (Mutex<usize>, std::sync::Condvar),
}

impl Inner {
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

    /// Finds the process with this pid.
    fn find(&self, pid: i32) -> Option<(Arc<Container>, Arc<Process>)> {
        for c in self.containers().values() {
            if c.init.pid() == pid && c.init.state() != State::Stopped {
                return Some((c.clone(), c.init.clone()));
            }
            for p in c.execs().values() {
                if p.pid() == pid && p.state() != State::Stopped {
                    return Some((c.clone(), p.clone()));
                }
            }
        }
        None
    }

    /// Publishes TaskOOM if the kernel killed something since the last report.
    fn check_oom(&self, c: &Container) {
        let Some(kills) = c.cgroup.get().and_then(|cg| cg.oom_kills()) else {
            return;
        };
        let mut reported = c.oom_reported.lock().unwrap_or_else(|e| e.into_inner());
        if kills > *reported {
            *reported = kills;
            self.events.publish(
                TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: c.id.clone(),
                    ..Default::default()
                }),
            );
        }
    }

    /// Reports an exit: TaskOOM (if any) first, then TaskExit, then wakes Wait callers.
    fn exited(self: &Arc<Self>, c: Arc<Container>, p: Arc<Process>, code: i32) {
        let this = self.clone();
        // When it exited, which may be a little before now.
        let ended = self
            .exit_clock
            .as_ref()
            .and_then(|clock| clock.take(p.pid()))
            .unwrap_or_else(Instant::now);
        let ended_wall = std::time::SystemTime::now() - ended.elapsed();
        let at = timestamp(ended_wall);
        let (meter, exec_stamp) = {
            let mut g = p.lock();
            (g.meter.take(), g.exec_stamp.take())
        };
        *self
            .exits_in_flight
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += 1;
        let spawned = thread::Builder::new().name("exit".into()).spawn(move || {
            let is_init = p.exec_id.is_empty();
            if is_init {
                // First end what holds the container's stdio open, then drain it.
                c.reap_leftovers();
                if let Some(t) = c.autotuner.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let report = t.stop();
                    log::info!(
                        "container {}: memory limit followed the hull with {} changes ({} refused)",
                        c.id,
                        report.changes.len(),
                        report.refused
                    );
                }
            }
            if let Some(io) = p.lock().io.as_ref().map(|io| io.waiter()) {
                io.wait(Duration::from_millis(500));
            }
            this.check_oom(&c);
            this.events.publish(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: c.id.clone(),
                    id: if is_init {
                        c.id.clone()
                    } else {
                        p.exec_id.clone()
                    },
                    pid: p.pid() as u32,
                    exit_status: code as u32,
                    exited_at: MessageField::some(at.clone()),
                    ..Default::default()
                }),
            );
            // Read the counters while the cgroup exists; write after Wait is answered.
            let execed = exec_stamp.and_then(|s| s.read());
            let measured = meter.map(|m| m.finish(p.pid(), code as u32, execed, ended, ended_wall));
            // Let the mount namespace go before anyone is told (Delete may follow at once).
            drop(p.lock().mount_ns.take());
            p.set_exited(code as u32, at);
            if let Some(m) = measured
                && let Err(e) = m.write()
            {
                log::error!("metering record of {} lost: {e}", c.id);
            }
            this.exit_done();
        });
        if let Err(e) = spawned {
            log::error!("cannot spawn the exit handler: {e}");
            self.exit_done();
        }
    }

    fn exit_done(&self) {
        let (count, cv) = &self.exits_in_flight;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        cv.notify_all();
    }

    /// Waits (at most `timeout`) until no exit is being handled.
    fn wait_exits(&self, timeout: Duration) {
        let (count, cv) = &self.exits_in_flight;
        let guard = count.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout_while(guard, timeout, |n| *n > 0);
    }

    fn watch_exits(self: Arc<Self>) {
        let sub = match monitor_subscribe(Topic::Pid) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch process exits: {e}");
                return;
            }
        };
        thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for ev in sub.rx.iter() {
                    let Subject::Pid(pid) = ev.subject else {
                        continue;
                    };
                    let mut unclaimed = self.unclaimed();
                    match self.find(pid) {
                        Some((c, p)) => {
                            drop(unclaimed);
                            self.exited(c, p, ev.exit_code);
                        }
                        None => {
                            // A worker's child we do not know yet (an exec whose start is
                            // still returning) or one we never will: keep it for a while.
                            unclaimed.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(60));
                            unclaimed.insert(pid, (ev.exit_code, Instant::now()));
                        }
                    }
                }
            })
            .expect("spawning the exit watcher");
    }

    /// Starts metering an invocation of `c` (a no-op when metering is off).
    fn start_meter(&self, c: &Container, exec_id: &str) -> Option<Meter> {
        let mut config = self.meter.clone()?;
        if let Some(interval) = c.meter_interval {
            config.interval = interval;
        }
        let cg = c.cgroup.get()?;
        let mut identity = c.identity.clone();
        identity.namespace = self.namespace.clone();
        identity.exec_id = exec_id.to_string();
        match Meter::start(identity, cg, &config) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!("no metering for {}: {e}", c.id);
                None
            }
        }
    }

    /// Called with a freshly learnt pid: reports its exit if that already happened.
    fn claim(self: &Arc<Self>, c: &Arc<Container>, p: &Arc<Process>, pid: i32) {
        if let Some(clock) = &self.exit_clock {
            clock.watch(pid);
        }
        if p.exec_id.is_empty() && pid > 0 {
            p.lock().mount_ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).ok();
        }
        let code = self.unclaimed().remove(&pid);
        if let Some((code, _)) = code {
            self.exited(c.clone(), p.clone(), code);
        }
    }

    fn watch_oom(self: &Arc<Self>, c: &Arc<Container>) {
        let Some(watcher) = c.cgroup.get().and_then(|cg| match cg.watch_oom() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("no OOM events for container {}: {e}", c.id);
                None
            }
        }) else {
            return;
        };
        let this = self.clone();
        let c = c.clone();
        let _ = thread::Builder::new().name("oom".into()).spawn(move || {
            let dir = c.cgroup.get().and_then(|cg| cg.memory_dir());
            while watcher.wait() {
                if dir.as_ref().is_some_and(|d| !d.exists()) {
                    break;
                }
                this.check_oom(&c);
            }
        });
    }
}

impl Service {
    pub fn new(events: Events, exit: Arc<ExitSignal>, namespace: String) -> Service {
        let inner = Arc::new(Inner {
            containers: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(HashMap::new()),
            events,
            exit,
            namespace,
            meter: MeterConfig::from_env(),
            exit_clock: ExitClock::start(),
            idle_trim: IdleTrim::start(),
            exits_in_flight: (Mutex::new(0), std::sync::Condvar::new()),
        });
        inner.clone().watch_exits();
        Service { inner }
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
        self.inner.idle_trim.poke();
        if self.inner.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let opts = options::parse(req.options.as_ref()).map_err(invalid)?;
        let began = Instant::now();
        let c = Arc::new(Container::create(&req, &opts)?);
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
        // A restored container's cgroup exists only once Start restored it.
        if !c.restores_at_start() {
            self.inner.watch_oom(&c);
        }
        self.inner.claim(&c, &c.init, pid);
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        self.inner.idle_trim.poke();
        let c = self.inner.container(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            let began = Instant::now();
            let restored = c.restores_at_start();
            // The meter is in place before the process runs: it may exit at once.
            c.init.lock().meter = self.inner.start_meter(&c, "");
            // So is the autotuner, which sets the hull's first limit.
            if let (Some(hull), Some(cg)) = (&c.hull, c.cgroup.get()) {
                let tuner =
                    trenv_runtime::metering::Autotuner::start(cg, hull.clone(), Instant::now())
                        .map_err(|e| precondition(format!("memory autotuning: {e}")))?;
                *c.autotuner.lock().unwrap_or_else(|e| e.into_inner()) = Some(tuner);
            }
            let pid = c.start_init().inspect_err(|_| {
                c.init.lock().meter = None;
                if let Some(t) = c.autotuner.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    t.stop();
                }
            })?;
            self.inner.events.publish(
                TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: c.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            // A restored init learns its pid only now, and has a cgroup only now.
            if restored {
                self.inner.watch_oom(&c);
            }
            self.inner.claim(&c, &c.init, pid);
            crate::ready_template::watch(&c, pid);
            // Benchmarks read this line (integration/src/bin/bench-templates.rs).
            let created = c
                .create_time
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            log::info!(
                "started {} (pid {pid}, {}): create {:.1} ms, start {:.1} ms",
                c.id,
                c.start_kind(),
                created.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                began.elapsed().as_secs_f64() * 1e3
            );
            pid
        } else {
            let p = c.process(&req.exec_id)?;
            p.lock().meter = self.inner.start_meter(&c, &req.exec_id);
            let pid = c.start_exec(&p, |_| {}).inspect_err(|_| {
                p.lock().meter = None;
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
            self.inner.claim(&c, &p, pid);
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
            .map(|a| a.value.clone())
            .ok_or_else(|| invalid("exec request without a process spec"))?;
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec)
            .map_err(|e| invalid(format!("invalid exec process spec: {e}")))?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
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
            io.resize(req.width, req.height).map_err(rt)?;
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
        let images = if req.path.is_empty() {
            opts.image_path.clone()
        } else {
            req.path.clone()
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
        if !self.inner.containers().is_empty() {
            return Ok(Empty::new());
        }
        // Exit handlers finish their metering records and events before the shim goes.
        self.inner.wait_exits(Duration::from_secs(5));
        self.inner.events.flush(Duration::from_secs(2));
        self.inner.exit.signal();
        Ok(Empty::new())
    }
}
