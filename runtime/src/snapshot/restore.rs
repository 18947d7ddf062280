//! Restoring a container from a CRIU image into a fresh bundle (containerd's restore on
//! create; docs/design/templates.md §2.2–2.5).
//!
//! libcontainer cannot restore, so trenv does what runc does around CRIU and then writes
//! libcontainer's state for the restored init, after which Pause, Resume, Exec, Kill and
//! Delete work on it as on any container. Runs in a zygote worker: the restored tree is
//! CRIU's sibling (`rst_sibling`), a child of the worker, and is re-parented to the shim
//! (a child subreaper) when the worker exits.
//!
//! The steps, each a function here: the descriptors CRIU inherits ([`descriptors`]), CRIU
//! spawned early, the cgroup opened, the root bound for CRIU ([`RootBind`]), CRIU's options
//! ([`restore_options`]), CRIU moved into the cgroup and run ([`run_criu`]), for a template
//! the spec's fields that CRIU restored from the image applied again ([`apply_spec`],
//! honour.rs), leftovers of a failure killed ([`kill_leftovers`]), libcontainer's state
//! written ([`adopt`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use trenv_criu::rpc::{
    Criu_cg_mode, Criu_opts, Criu_req, Criu_req_type, Ext_mount_map, Inherit_fd, Join_namespace,
};
use trenv_criu::{FdPlan, Notify, Purpose};

use super::criu::{CGROUP_MOUNTS, CgroupMounts, CriuConfig, DESCRIPTORS, external_namespaces};
use super::honour::SpecRecord;
use super::{SnapshotError, make_dir, open_dir};
use crate::container::cgroup::{Cgroup, NamedSystemd, join_prepared};
use crate::container::spec::{bind_mounts, namespace_path};
use crate::container::{Location, StdioFds};
use crate::sys::{FileStamp, dir_changed, mountinfo};

/// A restore of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestorePlan {
    /// The CRIU image directory.
    pub images: PathBuf,
    /// CRIU's work directory (its log goes there).
    pub work: PathBuf,
    pub systemd_cgroup: bool,
    /// The image was dumped with a terminal (`shell_job`).
    pub terminal: bool,
    /// A template's pool file the image maps.
    pub template: Option<TemplateFile>,
    /// The image's network namespace was dumped empty: bring up its loopback.
    #[serde(default)]
    pub loopback_up: bool,
    /// Leave the restored tree stopped (CRIU's `leave_stopped`: each process gets SIGSTOP
    /// before it runs an instruction of its own), for Start to continue
    /// ([`continue_tree`]): a template restore happens at Create, so that clients find a
    /// process and its namespaces there, as for a cold start.
    #[serde(default)]
    pub stopped: bool,
    /// The container's cgroup, made and limited by the shim ([`Cgroup::prepare_join`]):
    /// CRIU joins it by these `cgroup.procs` files. `None`: the worker opens the cgroup,
    /// moves CRIU into it and applies the spec's limits itself.
    #[serde(default)]
    pub cgroup_procs: Option<Vec<PathBuf>>,
}

/// Where a restore spent its time, in order (logged by the shim).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    pub ms: Vec<(String, f64)>,
    #[serde(skip)]
    last: Option<std::time::Instant>,
}

impl Phases {
    pub fn start() -> Phases {
        Phases {
            ms: Vec::new(),
            last: Some(std::time::Instant::now()),
        }
    }

    pub fn mark(&mut self, what: &str) {
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            self.ms
                .push((what.to_string(), (now - last).as_secs_f64() * 1e3));
        }
        self.last = Some(now);
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, ms)) in self.ms.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{what} {ms:.1} ms")?;
        }
        Ok(())
    }
}

/// The pool file of a template, handed to CRIU with `inherit_fd`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateFile {
    pub path: PathBuf,
    /// The name in the image without its leading '/'.
    pub key: String,
    /// What the file must still be (checked on the opened descriptor).
    pub stamp: FileStamp,
    pub template: String,
    /// The spec fields the template was made with (its manifest's), for [`apply_spec`].
    #[serde(default)]
    pub made_with: Option<Box<SpecRecord>>,
    /// What the files of the template's image directory must still be (its manifest's
    /// `image_stamps`): checked before and after CRIU reads them ([`ImagesBind`]).
    #[serde(default)]
    pub images: BTreeMap<String, FileStamp>,
}

/// What a restore leaves mounted for CRIU once it succeeded: its root and images binds,
/// unmounted when dropped. The worker drops it after it answered (two unmounts, each an
/// expedited RCU grace period: ~0.3 ms off the restore's path); their paths are the
/// worker's own, so that a container deleted and created again under the same id in
/// between cannot lose its new binds to the old unmounts, and Delete sweeps any left.
pub struct Binds {
    _root: RootBind,
    _images: Option<ImagesBind>,
}

/// Restores the container; returns the pid of its restored init.
pub fn restore(
    at: &Location,
    plan: &RestorePlan,
    stdio: StdioFds,
    console: Option<&Path>,
    criu: &CriuConfig,
) -> Result<(i32, Phases, Binds), SnapshotError> {
    let mut phases = Phases::start();
    let spec = at.derived_spec()?;
    let log_level = criu.restore_log_level;
    let criu = criu.criu()?;
    // A template's images are read where they are, through a read-only bind.
    let images = match &plan.template {
        Some(t) => Some(ImagesBind::mount(at, &plan.images, t)?),
        None => None,
    };
    let bound;
    let plan = match &images {
        Some(b) => {
            bound = RestorePlan {
                images: b.path.clone(),
                ..plan.clone()
            };
            &bound
        }
        None => plan,
    };
    // A spare restorer's CRIU was started ahead (worker/spare.rs); otherwise CRIU starts
    // first: its exec and start-up (~2 ms) run while this worker opens the cgroup and
    // mounts the root on the other CPU; it reads the request only when sent.
    let (fds, inherit) = descriptors(plan, &spec, stdio)?;
    let session = match crate::worker::spare::take(&criu) {
        Some(ahead) => {
            let s = ahead.session(fds)?;
            phases.mark("criu ahead");
            s
        }
        None => {
            let s = criu.start(fds, Purpose::Restore)?;
            phases.mark("criu spawn");
            s
        }
    };
    make_dir(&plan.work)?;
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cgroup_path = Cgroup::path_of(cgroups_path.as_deref(), &at.id);
    let open_cgroup = || {
        Cgroup::open(cgroups_path.as_deref(), &at.id, plan.systemd_cgroup)
            .map_err(crate::container::ContainerError::from)
    };
    // Opened here only when the shim did not prepare it (and to clean up a failure).
    let cgroup = match &plan.cgroup_procs {
        Some(procs) => Joining::Prepared(procs),
        None => Joining::Opened(open_cgroup()?),
    };
    phases.mark("prepare");
    let root = RootBind::mount(at, &spec)?;
    phases.mark("rootfs");
    let result = restore_options(plan, &spec, &cgroup_path, inherit, &root.0, console)
        .and_then(|mut o| {
            o.set_log_level(log_level.get());
            phases.mark("plan");
            let target = Target {
                at,
                plan,
                spec: &spec,
                cgroup: &cgroup,
            };
            run_criu(&target, session, o, console, &mut phases)
        })
        .and_then(|pid| {
            if let (Some(b), Some(t)) = (&images, &plan.template) {
                b.unchanged(t)?;
            }
            if let Some(t) = &plan.template {
                apply_spec(pid, &spec, t)?;
                phases.mark("apply spec");
            }
            if plan.loopback_up {
                loopback_up(pid)?;
            }
            Ok(pid)
        });
    let binds = Binds {
        _root: root,
        _images: images,
    };
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            drop(binds);
            match &cgroup {
                Joining::Opened(c) => kill_leftovers(c),
                Joining::Prepared(_) => {
                    if let Ok(c) = open_cgroup() {
                        kill_leftovers(&c)
                    }
                }
            }
            return Err(e);
        }
    };
    adopt(at, &spec, pid, plan.systemd_cgroup)?;
    phases.mark("adopt");
    Ok((pid, phases, binds))
}

/// Gives a restored container's state to the cgroup at `cgroups_path`: the derived spec
/// and libcontainer's state of a tree restored ahead under a cgroup of its own (a shared
/// shim's reserve), for the container that took it, so that its execs, stats, updates and
/// Delete find the container's cgroup. The processes are moved by the caller.
pub fn retarget(
    at: &Location,
    cgroups_path: Option<&Path>,
    pid: i32,
    systemd: bool,
) -> Result<(), SnapshotError> {
    let mut spec = at.derived_spec()?;
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(cgroups_path.map(Path::to_path_buf));
    }
    at.save_derived(&spec)?;
    adopt(at, &spec, pid, systemd)
}

/// Continues the tree rooted at `pid` that a restore left stopped ([`RestorePlan::stopped`]):
/// SIGCONT to each process (a stopped process resumes as the signal is sent, even one that
/// ignores it; the init of a PID namespace included).
pub fn continue_tree(pid: i32) -> Result<(), SnapshotError> {
    use nix::sys::signal::{Signal, kill};
    for p in crate::sys::tree::process_tree(pid) {
        match kill(nix::unistd::Pid::from_raw(p), Signal::SIGCONT) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                return Err(SnapshotError::sys(format!(
                    "continuing restored process {p}"
                ))(e));
            }
        }
    }
    Ok(())
}

/// Where a restore binds the container's rootfs for CRIU (below its state directory),
/// followed by the restoring worker's pid ([`Binds`]).
pub(crate) const ROOT_BIND: &str = "criu-root";

/// `<state>/<what>-<this process's pid>`: a bind of this restore's own.
fn bind_path(at: &Location, what: &str) -> PathBuf {
    at.state_root.join(format!("{what}-{}", std::process::id()))
}

/// The container's rootfs bound at `<state>/criu-root-PID`: CRIU wants a mount point as
/// root whose parent is not over-mounted. Unmounted when dropped.
struct RootBind(PathBuf);

impl RootBind {
    fn mount(at: &Location, spec: &Spec) -> Result<RootBind, SnapshotError> {
        let root = bind_path(at, ROOT_BIND);
        fs::create_dir_all(&root)
            .map_err(SnapshotError::io(format!("creating {}", root.display())))?;
        let rootfs = at.rootfs_of(spec);
        create_mountpoints(spec, &rootfs)?;
        mount(
            Some(&rootfs),
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(SnapshotError::sys(format!(
            "bind-mounting {} for CRIU",
            rootfs.display()
        )))?;
        let bind = RootBind(root);
        // A read-only root (Kubernetes' readOnlyRootFilesystem, `ctr run --read-only`) is
        // read-only before CRIU restores anything into it, as a cold start's is before its
        // process runs: the restored function never sees it writable.
        if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
            mount(
                None::<&str>,
                &bind.0,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(SnapshotError::sys("making the restored root read-only"))?;
        }
        Ok(bind)
    }
}

impl Drop for RootBind {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

/// A template's image directory bound read-only at `<state>/criu-images-PID`, for CRIU to read
/// in place: nothing is copied, and what CRIU writes during a restore (its statistics)
/// cannot land in the template. The files are checked against the template's manifest
/// when bound and again after CRIU has read them (an edit in between changes a ctime,
/// which no system call sets back): a restore only runs what was published. Unmounted
/// when dropped (and by Delete, for a worker killed mid-restore).
struct ImagesBind {
    path: PathBuf,
}

/// Where a template's images are bound during a restore (below the container's state),
/// followed by the restoring worker's pid.
pub(crate) const IMAGES_BIND: &str = "criu-images";

impl ImagesBind {
    fn mount(at: &Location, images: &Path, t: &TemplateFile) -> Result<ImagesBind, SnapshotError> {
        let path = bind_path(at, IMAGES_BIND);
        fs::create_dir_all(&path)
            .map_err(SnapshotError::io(format!("creating {}", path.display())))?;
        mount(
            Some(images),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(SnapshotError::sys(format!(
            "bind-mounting template {}'s images",
            t.template
        )))?;
        let bind = ImagesBind { path };
        mount(
            None::<&str>,
            &bind.path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(SnapshotError::sys("making the template's images read-only"))?;
        bind.unchanged(t)?;
        Ok(bind)
    }

    /// The files are still those of the template's manifest.
    fn unchanged(&self, t: &TemplateFile) -> Result<(), SnapshotError> {
        match dir_changed(&self.path, &t.images) {
            None => Ok(()),
            Some(what) => Err(SnapshotError::TemplateChanged {
                name: t.template.clone(),
                what: format!("its images changed: {what}"),
            }),
        }
    }
}

impl Drop for ImagesBind {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.path);
    }
}

/// A template restore only (containerd's own checkpoints restore as runc does): what a
/// cold start of `spec` applies to its init and CRIU restored from the template's image
/// instead — host name, sysctls, rlimits, oom_score_adj, I/O priority, CPU affinity —
/// applied to the restored tree (honour.rs). Before the restore answers: a failure here
/// kills what was restored.
fn apply_spec(pid: i32, spec: &Spec, t: &TemplateFile) -> Result<(), SnapshotError> {
    super::honour::apply(
        pid,
        spec,
        t.made_with.as_deref().unwrap_or(&SpecRecord::default()),
    )
}

/// Whatever a failed restore left in the cgroup goes with it (half-restored tasks of a
/// CRIU that died wait forever otherwise), then the cgroup.
fn kill_leftovers(cgroup: &Cgroup) {
    cgroup.kill_all(Duration::from_secs(2));
    let _ = cgroup.remove();
}

/// Brings up `lo` in the network namespace of `pid` (this worker is single-threaded and
/// exits afterwards, so it may move itself into that namespace).
fn loopback_up(pid: i32) -> Result<(), SnapshotError> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(SnapshotError::io("opening the restored network namespace"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(SnapshotError::sys(
        "entering the restored network namespace",
    ))?;
    crate::sys::nsops::set_up("lo", true).map_err(SnapshotError::io("bringing up lo"))?;
    Ok(())
}

/// CRIU's options for this restore: inherited descriptors, the root, the namespaces the
/// container joins, the external mounts re-bound, the console (the log's level is the
/// configuration's: `CriuConfig::restore_log_level`).
fn restore_options(
    plan: &RestorePlan,
    spec: &Spec,
    cgroup_path: &Path,
    inherit: Vec<Inherit_fd>,
    root: &Path,
    console: Option<&Path>,
) -> Result<Criu_opts, SnapshotError> {
    let mut o = Criu_opts::new();
    o.inherit_fd = inherit;
    o.set_log_file("restore.log".into());
    o.set_root(root.display().to_string());
    o.set_rst_sibling(true);
    o.set_evasive_devices(true);
    o.set_shell_job(plan.terminal);
    o.set_orphan_pts_master(true);
    o.set_leave_stopped(plan.stopped);
    // trenv put CRIU into the container's cgroup; the tasks stay where CRIU is.
    o.set_manage_cgroups(true);
    o.set_manage_cgroups_mode(Criu_cg_mode::IGNORE);
    o.join_ns = joined_namespaces(spec)?;
    for (dest, source) in bind_mounts(spec)
        .into_iter()
        .chain(cgroup_binds(&plan.images, cgroup_path)?)
    {
        let mut m = Ext_mount_map::new();
        m.set_key(dest);
        m.set_val(source);
        o.ext_mnt.push(m);
    }
    if console.is_some() {
        o.set_notify_scripts(true);
    }
    Ok(o)
}

/// The IPC, UTS and mount namespaces the spec joins by path, and a sandbox's network
/// namespace, for CRIU to restore into (other network and PID ones are external
/// namespaces, handed over as descriptors).
fn joined_namespaces(spec: &Spec) -> Result<Vec<Join_namespace>, SnapshotError> {
    let sandboxed = crate::container::spec::sandboxed(spec);
    let mut out = Vec::new();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let Some(path) = ns.path() else { continue };
        let name = match ns.typ() {
            LinuxNamespaceType::Ipc => "ipc",
            LinuxNamespaceType::Uts => "uts",
            LinuxNamespaceType::Mount => "mnt",
            LinuxNamespaceType::Network if sandboxed => "net",
            LinuxNamespaceType::Network | LinuxNamespaceType::Pid => continue,
            other => {
                return Err(SnapshotError::JoinedNamespace {
                    kind: format!("{other:?}"),
                    path: path.clone(),
                });
            }
        };
        let mut j = Join_namespace::new();
        j.set_ns(name.into());
        j.set_ns_file(path.display().to_string());
        out.push(j);
    }
    Ok(out)
}

/// What a restore restores into.
struct Target<'a> {
    at: &'a Location,
    plan: &'a RestorePlan,
    spec: &'a Spec,
    cgroup: &'a Joining<'a>,
}

/// How CRIU joins the container's cgroup.
enum Joining<'a> {
    /// Made and limited by the shim: by its `cgroup.procs` files.
    Prepared(&'a [PathBuf]),
    /// Opened by the worker, which also applies the spec's limits.
    Opened(Cgroup),
}

/// Moves CRIU into the container's cgroup (restored tasks inherit it) — the one the shim
/// made and limited, or opened here with the spec's limits applied — and has CRIU
/// restore; returns the restored init's pid.
fn run_criu(
    t: &Target<'_>,
    session: trenv_criu::Session,
    mut o: Criu_opts,
    console: Option<&Path>,
    phases: &mut Phases,
) -> Result<i32, SnapshotError> {
    let (at, plan, spec, cgroup) = (t.at, t.plan, t.spec, t.cgroup);
    // CRIU opens these through /proc/<our pid>/fd: they stay open here until it is done.
    let (images_fd, work_fd) = (open_dir(&plan.images)?, open_dir(&plan.work)?);
    o.set_images_dir_fd(images_fd.as_raw_fd());
    o.set_work_dir_fd(work_fd.as_raw_fd());
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::RESTORE);
    req.opts = Some(o).into();
    let container_err = crate::container::ContainerError::from;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    match cgroup {
        Joining::Prepared(procs) => join_prepared(procs, session.pid()).map_err(container_err)?,
        Joining::Opened(cgroup) => {
            cgroup.add_task(session.pid()).map_err(container_err)?;
            if let Some(r) = resources {
                cgroup.update(r).map_err(container_err)?;
            }
        }
    }
    // And into the container's `name=systemd` cgroup on a v1 host, as a cold start's init
    // (container/exec.rs): the restored tasks inherit CRIU's cgroups.
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    if let Some(named) = NamedSystemd::of(cgroups_path.as_deref(), &at.id)
        && let Err(e) = named.join(session.pid())
    {
        log::warn!("joining {}: {e}", named.path().display());
    }
    phases.mark("cgroup");
    let log = plan.work.join("restore.log");
    let mut notify = Console {
        socket: console.map(Path::to_path_buf),
    };
    let resp = session
        .call(req, "restore", Some(log.clone()), &mut notify)
        .map_err(SnapshotError::criu_failed(
            "restoring",
            &at.id,
            &log,
            at.bundle.join("criu-restore.log"),
        ))?;
    drop((images_fd, work_fd));
    phases.mark("criu restore");
    match resp.restore.as_ref().map_or(0, |r| r.pid()) {
        pid if pid > 0 => Ok(pid),
        _ => Err(SnapshotError::NoRestoredPid),
    }
}

/// The descriptors CRIU inherits (the new stdio, the template's pool file, external
/// namespaces) and the `inherit_fd` entries that name them.
fn descriptors(
    plan: &RestorePlan,
    spec: &Spec,
    stdio: StdioFds,
) -> Result<(FdPlan, Vec<Inherit_fd>), SnapshotError> {
    let mut fds = FdPlan::default();
    let mut inherit = Vec::new();
    // The new stdio replaces the pipes the image recorded.
    let recorded: Vec<String> = match fs::read(plan.images.join(DESCRIPTORS)) {
        Ok(raw) => {
            serde_json::from_slice(&raw).map_err(|e| SnapshotError::CorruptImage(DESCRIPTORS, e))?
        }
        Err(_) => Vec::new(),
    };
    for (n, (what, fd)) in recorded.iter().zip(stdio).enumerate() {
        // No stdio (containerd's null IO, as faasd or `ctr run --null-io` ask): /dev/null,
        // as for a cold start. Left alone, CRIU would restore the recorded pipe without its
        // reader and the function's next write would fail (EPIPE).
        let fd = match fd {
            Some(fd) => Some(fd),
            None if what.starts_with("pipe:") => {
                Some(crate::sys::dev_null().map_err(SnapshotError::io("opening /dev/null"))?)
            }
            None => None,
        };
        if let Some(fd) = fd {
            if what.starts_with("pipe:") {
                let mut i = Inherit_fd::new();
                i.set_key(what.clone());
                i.set_fd(n as i32);
                inherit.push(i);
            }
            fds.stdio(n, fd);
        }
    }
    if let Some(t) = &plan.template {
        let f = fs::File::open(&t.path).map_err(SnapshotError::io(format!(
            "opening template {}'s pool file {}",
            t.template,
            t.path.display()
        )))?;
        let meta = f
            .metadata()
            .map_err(SnapshotError::io(format!("reading {}", t.path.display())))?;
        if FileStamp::of(&meta) != t.stamp {
            return Err(SnapshotError::TemplateChanged {
                name: t.template.clone(),
                what: format!("pool file {} changed", t.path.display()),
            });
        }
        let mut i = Inherit_fd::new();
        i.set_key(t.key.clone());
        i.set_fd(fds.add(f.into()));
        inherit.push(i);
    }
    for (kind, key) in external_namespaces(spec) {
        let path = namespace_path(spec, kind).ok_or(SnapshotError::NoNamespacePath(kind))?;
        let f = fs::File::open(&path).map_err(SnapshotError::io(format!(
            "opening the namespace {}",
            path.display()
        )))?;
        let mut i = Inherit_fd::new();
        i.set_key(key.into());
        i.set_fd(fds.add(f.into()));
        inherit.push(i);
    }
    Ok((fds, inherit))
}

/// Creates, in a fresh rootfs, the mount points of the spec's bind mounts that the image
/// lacks (the container of the dump had them created by libcontainer): CRIU mounts onto
/// them and does not create them. Not below a tmpfs of the spec, whose content CRIU
/// restores, and never through a symbolic link.
fn create_mountpoints(spec: &Spec, rootfs: &Path) -> Result<(), SnapshotError> {
    let tmpfs: Vec<PathBuf> = spec
        .mounts()
        .as_ref()
        .into_iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination().clone())
        .collect();
    for (dest, source) in bind_mounts(spec) {
        let dest = PathBuf::from(dest);
        if tmpfs.iter().any(|t| dest != *t && dest.starts_with(t)) {
            continue;
        }
        let rel = dest.strip_prefix("/").unwrap_or(&dest);
        let target = rootfs.join(rel);
        if fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        // Refuse to create through a symbolic link that could lead outside the rootfs.
        let mut walk = rootfs.to_path_buf();
        let mut via_link = false;
        for c in rel.parent().into_iter().flat_map(Path::components) {
            walk.push(c);
            if fs::symlink_metadata(&walk).is_ok_and(|m| m.file_type().is_symlink()) {
                via_link = true;
                break;
            }
        }
        if via_link {
            continue;
        }
        let is_file = fs::metadata(&source).is_ok_and(|m| !m.is_dir());
        let made = if is_file {
            target
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|_| fs::File::create(&target).map(drop))
        } else {
            fs::create_dir_all(&target)
        };
        made.map_err(SnapshotError::io(format!(
            "creating the mount point {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// (mount point in the container, host directory) of the cgroup mounts recorded at dump
/// time, re-targeted from the old container's cgroup to the new one's.
fn cgroup_binds(images: &Path, cgroup: &Path) -> Result<Vec<(String, String)>, SnapshotError> {
    let raw = match fs::read(images.join(CGROUP_MOUNTS)) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io(format!("reading {CGROUP_MOUNTS}"))(e)),
    };
    let recorded: CgroupMounts =
        serde_json::from_slice(&raw).map_err(|e| SnapshotError::CorruptImage(CGROUP_MOUNTS, e))?;
    let host = mountinfo::read(None);
    let new_path = cgroup.display().to_string();
    let mut out = Vec::new();
    for m in recorded.mounts {
        let Some(host_mount) = host
            .iter()
            .find(|h| h.fstype == m.fstype && h.super_options == m.options)
        else {
            return Err(SnapshotError::MissingHierarchy {
                fstype: m.fstype,
                options: m.options,
                mountpoint: m.mountpoint,
            });
        };
        let root = if m.root == recorded.cgroup_path {
            new_path.clone()
        } else {
            m.root.clone()
        };
        // The host mount may itself show a sub-tree of the hierarchy.
        let rel = Path::new(&root)
            .strip_prefix(&host_mount.root)
            .unwrap_or(Path::new(&root))
            .to_path_buf();
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        out.push((
            m.mountpoint,
            host_mount.mount_point.join(rel).display().to_string(),
        ));
    }
    Ok(out)
}

/// Writes libcontainer's state for a restored init so that later operations find it.
fn adopt(at: &Location, spec: &Spec, pid: i32, systemd: bool) -> Result<(), SnapshotError> {
    let dir = at.container_dir();
    make_dir(&dir)?;
    let lc = |context: &'static str| {
        move |e: libcontainer::error::LibcontainerError| SnapshotError::Adopt {
            context,
            source: Box::new(e),
        }
    };
    let mut c = Container::new(
        &at.id,
        ContainerStatus::Running,
        Some(pid),
        &at.derived_bundle(),
        &dir,
    )
    .map_err(lc("recording the restored container"))?;
    c.set_systemd(systemd);
    c.save()
        .map_err(lc("saving the restored container's state"))?;
    YoukiConfig::from_spec(spec, &at.id)
        .and_then(|cfg| cfg.save(&dir))
        .map_err(|e| SnapshotError::Adopt {
            context: "saving the restored container's config",
            source: Box::new(e),
        })?;
    Ok(())
}

/// Hands the restored terminal to the console socket (`orphan-pts-master`).
struct Console {
    socket: Option<PathBuf>,
}

impl Notify for Console {
    fn notify(
        &mut self,
        script: &str,
        _pid: i32,
        fd: Option<OwnedFd>,
    ) -> Result<(), trenv_criu::Refusal> {
        if script != "orphan-pts-master" {
            return Ok(());
        }
        let (Some(socket), Some(master)) = (&self.socket, fd) else {
            return Err("no console socket for the restored terminal".into());
        };
        send_fd(socket, master)
            .map_err(|e| format!("sending the terminal to {}: {e}", socket.display()).into())
    }
}

/// Sends `fd` over a new connection to the Unix socket at `path` (as libcontainer does
/// with a console socket).
fn send_fd(path: &Path, fd: OwnedFd) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    let raw = [fd.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}
