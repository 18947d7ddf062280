//! Create: the spec read, its annotations parsed and the node's function rules applied
//! (`[[functions]]`), the cgroup driver checked, then one of three paths chosen by the
//! [`StartPlan`]: a cold start's init created now (released at Start); a template restored
//! now and left stopped (continued at Start), so that Create answers with a process in
//! either case; or a containerd checkpoint's restore prepared (rootfs and stdio now,
//! processes at Start, as runc's shim does). Each step is a function here; a failure leaves
//! nothing behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::api::CreateTaskRequest;
use containerd_shim::protos::ttrpc;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use trenv_runtime::ChildFds;
use trenv_runtime::config::Config;
use trenv_runtime::config::ScratchKind;
use trenv_runtime::container::Location;
use trenv_runtime::container::cgroup::Cgroup;
use trenv_runtime::container::create::NewContainer;
use trenv_runtime::container::rootfs::{Mount, Scratch};
use trenv_runtime::container::spec::{has_own_namespace, load_spec, validate};
use trenv_runtime::error::Classified;
use trenv_runtime::function_rules::{AutoTemplate, auto_template_name, rootfs_identity, rule_for};
use trenv_runtime::sandbox::Joinable;
use trenv_runtime::snapshot::{Phases, RestorePlan, TemplateFile};
use trenv_runtime::template::ready::ReadyTemplate;
use trenv_runtime::template::store::Checked;
use trenv_runtime::template::{Manifest, TemplateError, TemplateStore};

use super::stdio::{finish_io, prepare_io};
use super::{Container, LazyCgroup, PendingRestore, StartPlan, criu_config};
use crate::annotations::{self, Annotations};
use crate::errors::{internal, invalid, precondition, rt, stdio};
use crate::io::{ProcessIo, StdioPaths};
use crate::options::RuntimeOptions;
use crate::process::Process;
use crate::stamp::ExecStamp;

/// CRIU's work directory for a restore, below containerd's work directory of the task;
/// removed after a successful restore.
pub(super) const RESTORE_WORK: &str = "criu-restore";

/// What Create learnt from the request, the spec and the options.
struct Request<'a> {
    req: &'a CreateTaskRequest,
    opts: &'a RuntimeOptions,
    spec: Spec,
    at: Location,
    rootfs: Vec<Mount>,
    paths: StdioPaths,
    /// The systemd cgroup driver is asked for.
    systemd: bool,
    /// An instance for the shim's reserve: restored with stdio pipes the shim keeps
    /// (shim/src/reserve.rs).
    for_reserve: bool,
}

/// Where the container runs: its sandbox's namespaces, and its writable layer in memory.
type Placement = (Option<Joinable>, Option<Scratch>);

/// Where a restore's images come from.
struct RestoreSource {
    images: PathBuf,
    template: Option<TemplateFile>,
    loopback_up: bool,
    /// `images` is containerd's extraction of the request's checkpoint.
    extracted: bool,
}

/// What a Create may do with a function's automatic template (`[[functions]]` rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auto {
    /// Restore from it if it exists and checks out (else start cold and make it).
    Restore,
    /// Its restore just failed: remove it, start cold and make it anew.
    Remake,
}

/// Why a Create failed: a restore from an automatic template (the caller starts cold
/// instead), or anything else.
enum Failed {
    AutoRestore(ttrpc::Error),
    Other(ttrpc::Error),
}

impl From<ttrpc::Error> for Failed {
    fn from(e: ttrpc::Error) -> Failed {
        Failed::Other(e)
    }
}

impl Container {
    /// Creates the container (its init process waits for Start) in containerd namespace
    /// `namespace`, the root of its tenant. A restore from a function's automatic template
    /// that fails (a dead CRIU, a template it cannot use) leaves nothing and the container
    /// is created cold, its template made anew: the node's rule asked for a transparent
    /// template, not for a failure.
    pub fn create(
        req: &CreateTaskRequest,
        opts: &RuntimeOptions,
        namespace: &str,
    ) -> Result<Container, ttrpc::Error> {
        match Self::create_as(req, opts, namespace, Auto::Restore, false) {
            Ok(c) => Ok(c),
            Err(Failed::AutoRestore(e)) => {
                log::warn!(
                    "container {}: the restore from its automatic template failed ({e:?}); \
                     starting it cold, its template made anew",
                    req.id
                );
                Self::create_as(req, opts, namespace, Auto::Remake, false).map_err(|f| match f {
                    Failed::AutoRestore(e) | Failed::Other(e) => e,
                })
            }
            Err(Failed::Other(e)) => Err(e),
        }
    }

    /// An instance for the shim's reserve (shim/src/reserve.rs): a template restore like
    /// any other, with stdio pipes the shim keeps until a container takes it; refused
    /// unless it runs in a sandbox with its writable layer in memory.
    pub(crate) fn create_reserved(
        req: &CreateTaskRequest,
        opts: &RuntimeOptions,
        namespace: &str,
    ) -> Result<Container, ttrpc::Error> {
        Self::create_as(req, opts, namespace, Auto::Restore, true).map_err(|f| match f {
            Failed::AutoRestore(e) | Failed::Other(e) => e,
        })
    }

    fn create_as(
        req: &CreateTaskRequest,
        opts: &RuntimeOptions,
        namespace: &str,
        auto_mode: Auto,
        for_reserve: bool,
    ) -> Result<Container, Failed> {
        let mut phases = Phases::start();
        let mut r = Request::read(req, opts)?;
        r.for_reserve = for_reserve;
        // trenv's configuration: a template needs it readable; anything else runs with
        // the defaults and the environment if it is not.
        let loaded = Config::load();
        let config = loaded
            .as_ref()
            .map_or_else(|_| Config::defaults_with_env(), Config::clone);
        let mut annotations = Annotations::parse(
            r.spec.annotations().as_ref(),
            namespace,
            &config.meter.hull_dir,
        )
        .map_err(|e| invalid(e.to_string()))?;
        annotations
            .check_reserve(config.shim.reserve_max)
            .map_err(|e| invalid(e.to_string()))?;
        match (loaded, &annotations.template) {
            (Err(e), Some(_)) => return Err(precondition(e.to_string()).into()),
            (Err(e), None) => log::warn!("{e}; container {} runs with the defaults", req.id),
            (Ok(_), _) => {}
        }
        let auto = r.apply_function_rule(&mut annotations, &config, namespace, auto_mode);
        let auto_restore = auto.is_some();
        phases.mark("spec");
        // Checking the driver first catches a systemd driver this host cannot honour
        // before anything is created.
        Cgroup::check(r.systemd).map_err(rt)?;
        let cgroups_path = r
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone());
        let criu = criu_config(opts, &config);
        let source = match auto {
            Some(checked) => Some(RestoreSource::template(checked)),
            None => r.restore_source(&annotations, &config, &mut phases)?,
        };
        // The shim's reserve may have this restore done already.
        let reserve_key = r.reserve_key(&annotations, &config, source.as_ref());
        if let Some(key) = &reserve_key
            && !for_reserve
            && let Some(inst) = crate::reserve::get().and_then(|rv| rv.take(&key.0))
        {
            log::info!(
                "container {}: takes the reserve's instance {}, restored {:.1} s ago",
                req.id,
                inst.container.id,
                inst.made.elapsed().as_secs_f64()
            );
            match Container::from_reserved(inst, &r.taken(), annotations.clone(), criu.clone()) {
                Ok(mut c) => {
                    c.reserve_source = r.reserve_source(key, namespace, &annotations, &config);
                    phases.mark("taken from the reserve");
                    log::debug!("created {} from the reserve: {phases}", req.id);
                    return Ok(c);
                }
                Err(e) => log::warn!(
                    "container {}: the reserve's instance could not be taken ({e:?}); \
                     restoring it",
                    req.id
                ),
            }
        }
        // A restore is coming: a spare restorer starts CRIU meanwhile, if none is kept.
        if config.criu.start_ahead
            && source.as_ref().is_some_and(|s| s.template.is_some())
            && let Err(e) = crate::runtime()
                .keep_spare_restorer(&criu, std::env::var_os(crate::shared::ENV).is_some())
        {
            log::debug!("container {}: no spare restorer: {e}", req.id);
        }
        // A template is restored in this Create: its cgroup is made and limited meanwhile.
        let prepare = source
            .as_ref()
            .is_some_and(|s| s.template.is_some())
            .then(|| r.spec.linux().as_ref().and_then(|l| l.resources().clone()));
        let cgroup = LazyCgroup::open(cgroups_path, &req.id, r.systemd, prepare);
        phases.mark("cgroup");
        let mut container = Container {
            id: req.id.clone(),
            at: r.at.clone(),
            bundle: r.at.bundle.clone(),
            init: Arc::new(Process::new("", r.paths.clone(), Vec::new())),
            execs: Mutex::new(HashMap::new()),
            cgroup,
            mounted_rootfs: !r.rootfs.is_empty(),
            own_pid_ns: has_own_namespace(&r.spec, LinuxNamespaceType::Pid),
            memory_limit: r
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit())
                .and_then(|l| u64::try_from(l).ok().filter(|l| *l > 0)),
            oom_reported: Mutex::new(0),
            annotations,
            autotuner: Mutex::new(None),
            criu,
            plan: match &source {
                Some(RestoreSource {
                    template: Some(t), ..
                }) => StartPlan::Template(t.template.clone()),
                Some(_) => StartPlan::Checkpoint,
                None => StartPlan::Cold,
            },
            pending_restore: Mutex::new(None),
            create_time: Mutex::new(None),
            sandbox: Mutex::new(None),
            image_of: Arc::default(),
            reserved_io: Mutex::new(None),
            reserve_source: None,
            from_reserve: false,
        };
        let held = super::sandbox::take(
            &req.id,
            &r.spec,
            &container.annotations,
            &config,
            &container.plan,
        )
        .inspect_err(|_| container.cgroup.undo_prepared())?;
        let sandbox = held.as_ref().map(|h| h.joinable.clone());
        // A sandboxed container's writable layer in memory, unless asked otherwise, and
        // only when its memory limit bounds it: a container without one keeps containerd's
        // snapshot (an unbounded tmpfs could take the node's memory).
        let scratch_kind = container
            .annotations
            .scratch
            .unwrap_or(config.sandboxes.scratch);
        let scratch = container
            .memory_limit
            .filter(|_| held.is_some() && scratch_kind == ScratchKind::Memory)
            .map(|limit| Scratch { size: Some(limit) });
        let reservable = held.is_some() && scratch.is_some() && !r.paths.terminal;
        if for_reserve && !reservable {
            container.cgroup.undo_prepared();
            if let Some(h) = held {
                h.release(&req.id);
            }
            return Err(precondition(
                "a reserve's instance must run in a sandbox with its writable layer in memory",
            )
            .into());
        }
        if reservable && let Some(key) = &reserve_key {
            container.reserve_source =
                r.reserve_source(key, namespace, &container.annotations, &config);
        }
        *container.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = held;
        phases.mark("sandbox");
        let created = match source {
            Some(source) => r
                .prepare_restore(&mut container, source, (sandbox, scratch), &mut phases)
                .inspect(|_| log::debug!("created {} for a restore: {phases}", req.id))
                .and_then(|_| match container.plan {
                    StartPlan::Template(_) => container.restore_at_create(),
                    _ => Ok(()),
                }),
            None => r.create_init(&container, (sandbox, scratch)),
        };
        match created {
            Ok(()) => Ok(container),
            Err(e) => {
                // The runtime undid its part (or destroy did, which released it already).
                container.release_sandbox();
                container.cgroup.undo_prepared();
                Err(if auto_restore {
                    Failed::AutoRestore(e)
                } else {
                    Failed::Other(e)
                })
            }
        }
    }
}

impl<'a> Request<'a> {
    /// The spec (a spec that does not parse is the user's to fix), rootfs mounts, stdio.
    fn read(
        req: &'a CreateTaskRequest,
        opts: &'a RuntimeOptions,
    ) -> Result<Request<'a>, ttrpc::Error> {
        if !req.parent_checkpoint.is_empty() {
            return Err(invalid(
                "restoring from a parent (incremental) checkpoint is not supported by trenv; \
                 restore from a full checkpoint",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = load_spec(&bundle.join("config.json")).map_err(rt)?;
        // What runc refuses is refused here, before anything is made.
        validate(&spec)
            .map_err(trenv_runtime::container::ContainerError::from)
            .map_err(rt)?;
        // Only SystemdCgroup asks for the systemd driver. A cgroupsPath that looks like
        // systemd's "slice:prefix:name" is a plain cgroupfs path without it, as for runc:
        // containerd 1.7's CRI writes that form whenever the kubelet's cgroup parent ends in
        // ".slice", with either driver.
        let systemd = opts.systemd_cgroup;
        Ok(Request {
            req,
            opts,
            at: Location::new(&req.id, &bundle),
            spec,
            rootfs: req
                .rootfs
                .iter()
                .map(|m| Mount {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            paths: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                owner: opts.io_owner,
                id: req.id.clone(),
            },
            systemd,
            for_reserve: false,
        })
    }

    /// The key of the shim's reserve this Create may take an instance of, or leave one of
    /// for the next (shim/src/reserve.rs): a shared shim's template restore without a
    /// terminal, with the reserve on.
    fn reserve_key(
        &self,
        annotations: &Annotations,
        config: &Config,
        source: Option<&RestoreSource>,
    ) -> Option<(String, PathBuf)> {
        let template = source?.template.as_ref()?;
        if annotations.reserve_or(config.shim.reserve) == 0
            || config.shim.reserve_functions == 0
            || self.paths.terminal
            || self.systemd
        {
            return None;
        }
        crate::reserve::get()?;
        let stamp = serde_json::to_string(&template.stamp).ok()?;
        let key = crate::reserve::key(
            &annotations.tenant.to_string(),
            &format!("{}@{stamp}", template.path.display()),
            &self.spec,
            &self.rootfs,
            self.opts,
        )?;
        Some((key, template.path.clone()))
    }

    /// What the reserve needs to restore more like this container.
    fn reserve_source(
        &self,
        (key, pool_file): &(String, PathBuf),
        namespace: &str,
        annotations: &Annotations,
        config: &Config,
    ) -> Option<crate::reserve::Source> {
        let want = annotations.reserve_or(config.shim.reserve);
        let keep_alive = std::time::Duration::from_secs(config.sandboxes.keep_alive_secs);
        (want > 0).then(|| crate::reserve::Source {
            key: key.clone(),
            pool_file: pool_file.clone(),
            spec: self.spec.clone(),
            rootfs: self.rootfs.clone(),
            opts: self.opts.clone(),
            namespace: namespace.to_string(),
            want,
            keep_alive,
            functions: config.shim.reserve_functions,
        })
    }

    /// What a container that takes a reserve's instance brings of its own.
    fn taken(&self) -> super::reserved::Taking<'_> {
        super::reserved::Taking {
            id: &self.req.id,
            bundle: self.at.bundle.clone(),
            spec: &self.spec,
            paths: self.paths.clone(),
            systemd: self.systemd,
        }
    }

    /// What Start restores from, if anything: a template (annotation), containerd's
    /// checkpoint, or runc's `CriuImagePath` option.
    fn restore_source(
        &self,
        annotations: &Annotations,
        config: &Config,
        phases: &mut Phases,
    ) -> Result<Option<RestoreSource>, ttrpc::Error> {
        let Some(name) = &annotations.template else {
            let images = if !self.req.checkpoint.is_empty() {
                Some(PathBuf::from(&self.req.checkpoint))
            } else {
                self.opts.criu_image_path.as_ref().map(PathBuf::from)
            };
            return Ok(images.map(|images| RestoreSource {
                images,
                template: None,
                loopback_up: false,
                extracted: !self.req.checkpoint.is_empty(),
            }));
        };
        if !self.req.checkpoint.is_empty() || self.opts.criu_image_path.is_some() {
            return Err(invalid(format!(
                "container {} asks for both a checkpoint and template {name}; choose one",
                self.req.id
            )));
        }
        // Only the container's own tenant's templates: another tenant's of the same name
        // is NOT_FOUND, as if it did not exist.
        let checked = TemplateStore::of_node(config)
            .check(
                &annotations.tenant,
                name,
                &self.spec,
                &config.templates.env_may_differ,
            )
            .map_err(|e| match e {
                TemplateError::BadName(_) => {
                    invalid(format!("annotation {}: {e}", annotations::TEMPLATE))
                }
                e => rt(e),
            })?;
        phases.mark("template check");
        Ok(Some(RestoreSource::template(checked)))
    }

    /// What the node's function rules (`[[functions]]`, runtime/src/function_rules.rs) say
    /// of this container, put into its `annotations` where the container set nothing
    /// itself: the function's name, and with `template = "auto"` the function's template —
    /// restored from when it exists and can be (returned, checked), made once the function
    /// is ready when it does not exist. A template that exists but cannot be restored
    /// (corrupt, or the spec differs in what the name does not cover) is logged and the
    /// container starts cold: the rule asked for a transparent template, not for a failure.
    fn apply_function_rule(
        &self,
        annotations: &mut Annotations,
        config: &Config,
        namespace: &str,
        mode: Auto,
    ) -> Option<Checked> {
        let id = &self.req.id;
        let rule = rule_for(&config.functions, namespace, id)?;
        if annotations.function.is_empty() {
            annotations.function = rule.function_of(id);
        }
        let asked_otherwise = annotations.template.is_some()
            || annotations.make_template.is_some()
            || !self.req.checkpoint.is_empty()
            || self.opts.criu_image_path.is_some();
        if rule.template == AutoTemplate::Off || asked_otherwise {
            return None;
        }
        let function = &annotations.function;
        let Some(rootfs) = rootfs_identity(&self.rootfs) else {
            log::info!(
                "container {id}: no automatic template of function {function}: its rootfs has \
                 no overlay layers that identify its image"
            );
            return None;
        };
        let env_may_differ = &config.templates.env_may_differ;
        let name = auto_template_name(function, &self.spec, &rootfs, env_may_differ, rule);
        let store = TemplateStore::of_node(config);
        let tenant = &annotations.tenant;
        // Why an existing template is replaced, if it is.
        let replaced = match mode {
            Auto::Remake => Some("its restore failed".to_string()),
            Auto::Restore => match store.check(tenant, &name, &self.spec, env_may_differ) {
                Ok(checked) => {
                    log::info!("container {id}: function {function} restores from template {name}");
                    annotations.template = Some(name);
                    return Some(checked);
                }
                Err(TemplateError::NotFound { .. }) => None,
                // There but unusable (corrupt, changed, made by an older trenv): the rule's
                // own template, replaced.
                Err(e) if e.kind() == trenv_runtime::ErrorKind::FailedPrecondition => {
                    Some(e.to_string())
                }
                Err(e) => {
                    log::warn!("container {id}: function {function} starts cold: {e}");
                    return None;
                }
            },
        };
        if let Some(why) = replaced {
            log::warn!(
                "container {id}: template {name} of function {function} is removed and made \
                 anew: {why}"
            );
            match store.remove(tenant, &name, &config.pool.dir) {
                // Another instance's Create removed it first.
                Ok(()) | Err(TemplateError::NotFound { .. }) => {}
                Err(e) => {
                    log::warn!("container {id}: function {function} starts cold: {e}");
                    return None;
                }
            }
        }
        log::info!(
            "container {id}: function {function} starts cold; template {name} is made once {} \
             exists in it",
            rule.ready_file().display()
        );
        let policy = rule.policy();
        annotations.make_template = Some(ReadyTemplate {
            name,
            tenant: tenant.clone(),
            ready_file: rule.ready_file(),
            min_vma: policy.min_vma,
            include_heap: policy.include_heap,
            file_pages: policy.file_pages,
            warmup: rule.warmup(),
        });
        None
    }

    /// A restored container's Create: rootfs and stdio pipes now; the processes are
    /// restored by the caller for a template, at Start for a containerd checkpoint (pid 0
    /// until then, as with runc's shim).
    fn prepare_restore(
        &self,
        c: &mut Container,
        source: RestoreSource,
        (sandbox, scratch): Placement,
        phases: &mut Phases,
    ) -> Result<(), ttrpc::Error> {
        let in_worker = crate::runtime()
            .prepare_restore(&self.at, &self.rootfs, sandbox.as_ref(), scratch)
            .map_err(rt)?;
        phases.mark("rootfs");
        log::debug!("{}: rootfs and spec in a worker: {in_worker}", self.at.id);
        let (io, child) = if self.paths.terminal {
            (None, [None, None, None])
        } else if self.for_reserve {
            match ProcessIo::reserved(self.opts.io_owner) {
                Ok((pipes, child)) => {
                    *c.reserved_io.lock().unwrap_or_else(|e| e.into_inner()) = Some(pipes);
                    (None, child)
                }
                Err(e) => {
                    let _ = c.destroy();
                    return Err(stdio(e));
                }
            }
        } else {
            match ProcessIo::pipes(self.paths.clone()) {
                Ok((io, child)) => (Some(io), child),
                Err(e) => {
                    let _ = c.destroy();
                    return Err(stdio(e));
                }
            }
        };
        c.init.lock().io = io;
        // `<bundle>/work` is containerd's per-task work directory (a symlink).
        let work = self
            .opts
            .criu_work_path
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.at.bundle.join("work").join(RESTORE_WORK));
        c.pending_restore = Mutex::new(Some(PendingRestore {
            plan: RestorePlan {
                images: source.images,
                work,
                systemd_cgroup: self.systemd,
                terminal: self.paths.terminal,
                template: source.template,
                loopback_up: source.loopback_up,
                stopped: false,
                cgroup_procs: None,
            },
            child,
            extracted: source.extracted,
        }));
        phases.mark("stdio");
        Ok(())
    }

    /// A cold start's Create: the init process, created and waiting for Start.
    fn create_init(
        &self,
        c: &Container,
        (sandbox, scratch): Placement,
    ) -> Result<(), ttrpc::Error> {
        let (io, console, child) = prepare_io(&self.paths)?;
        let (stamp, stamp_end) = ExecStamp::pipe()
            .map_err(|e| internal(format!("creating the exec stamp pipe: {e}")))?;
        let new = NewContainer {
            at: self.at.clone(),
            rootfs: self.rootfs.clone(),
            systemd_cgroup: self.systemd,
            console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
            sandbox,
            scratch,
        };
        let fds = ChildFds {
            exec_stamp: Some(&stamp_end),
            ..ChildFds::stdio(&child)
        };
        let created = crate::runtime().create(new, fds);
        drop((child, stamp_end));
        c.init.lock().exec_stamp = Some(stamp);
        let pid = created.map_err(rt)?;
        match finish_io(&self.paths, io, console) {
            Ok(io) => {
                let mut g = c.init.lock();
                g.pid = pid;
                g.io = io;
                Ok(())
            }
            Err(e) => {
                let _ = c.destroy();
                Err(e)
            }
        }
    }
}

impl RestoreSource {
    /// A restore from a checked template. The restore reads the images in place, through a
    /// read-only bind, and checks them again before and after CRIU reads them
    /// (runtime/src/snapshot/restore.rs).
    fn template(checked: Checked) -> RestoreSource {
        let m = checked.manifest;
        log::info!(
            "template {}: memory restored by {}",
            m.name,
            checked.backend.describe()
        );
        RestoreSource {
            images: checked.images,
            loopback_up: m.empty_netns,
            extracted: false,
            template: Some(TemplateFile {
                key: Manifest::image_name(&m.name)
                    .trim_start_matches('/')
                    .to_string(),
                path: m.pool.path,
                stamp: m.pool.stamp,
                template: m.name,
                made_with: m.made_with.map(Box::new),
                images: m.image_stamps,
            }),
        }
    }
}
