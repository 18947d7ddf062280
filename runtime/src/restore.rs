//! Restoring a container from a CRIU image into a fresh bundle (containerd's restore on
//! create; docs/design/templates.md §2.2–2.5).
//!
//! libcontainer cannot restore, so trenv does what runc does around CRIU and then writes
//! libcontainer's state for the restored init, after which Pause, Resume, Exec, Kill and
//! Delete work on it as on any container. Runs in a zygote worker: the restored tree is
//! CRIU's sibling (`rst_sibling`), a child of the worker, and is re-parented to the shim
//! (a child subreaper) when the worker exits.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use trenv_criu::rpc::{
    Criu_cg_mode, Criu_opts, Criu_req, Criu_req_type, Ext_mount_map, Inherit_fd, Join_namespace,
};
use trenv_criu::{FdPlan, Notify};

use crate::cgroup::Cgroup;
use crate::checkpoint::{
    CGROUP_MOUNTS, CgroupMounts, CriuConfig, DESCRIPTORS, bind_mounts, external_namespaces,
    make_dir, namespace_path, open_dir, rootfs_of,
};
use crate::error::{RuntimeError, chain};
use crate::mountinfo;
use crate::sandbox::Location;
use crate::template::{Stamp, TemplateError};

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
    pub stamp: Stamp,
    pub template: String,
}

/// Restores the container; returns the pid of its restored init.
pub fn restore(
    at: &Location,
    plan: &RestorePlan,
    stdio: [Option<OwnedFd>; 3],
    console: Option<&Path>,
    criu: &CriuConfig,
) -> Result<(i32, Phases), RuntimeError> {
    let mut phases = Phases::start();
    let spec = at.derived_spec()?;
    let criu = criu.criu()?;
    // CRIU starts first: its exec and start-up (~2 ms) run while this worker opens the
    // cgroup and mounts the root on the other CPU; it reads the request only when sent.
    let (fds, inherit) = descriptors(plan, &spec, stdio)?;
    let session = criu.start(fds)?;
    phases.mark("criu spawn");
    make_dir(&plan.work)?;
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cgroup = Cgroup::open(cgroups_path.as_deref(), &at.id, plan.systemd_cgroup)?;
    phases.mark("prepare");
    // CRIU wants a mount point as root whose parent is not over-mounted.
    let root = at.state_root.join("criu-root");
    fs::create_dir_all(&root).map_err(RuntimeError::io(format!("creating {}", root.display())))?;
    let rootfs = rootfs_of(&spec, at);
    create_mountpoints(&spec, &rootfs)?;
    mount(
        Some(&rootfs),
        &root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(RuntimeError::sys(format!(
        "bind-mounting {} for CRIU",
        rootfs.display()
    )))?;
    phases.mark("rootfs");
    let result = run(
        at,
        plan,
        &spec,
        session,
        inherit,
        &cgroup,
        &root,
        console,
        &mut phases,
    )
    .and_then(|pid| {
        if plan.loopback_up {
            loopback_up(pid)?;
        }
        Ok(pid)
    });
    let _ = umount2(&root, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&root);
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            // Whatever CRIU left in the cgroup goes with it (half-restored tasks of a CRIU
            // that died wait forever otherwise).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while let Ok(pids) = cgroup.pids() {
                if pids.is_empty() || std::time::Instant::now() > deadline {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = cgroup.remove();
            return Err(e);
        }
    };
    adopt(at, &spec, pid, plan.systemd_cgroup)?;
    phases.mark("adopt");
    Ok((pid, phases))
}

/// Brings up `lo` in the network namespace of `pid` (this worker is single-threaded and
/// exits afterwards, so it may move itself into that namespace).
fn loopback_up(pid: i32) -> Result<(), RuntimeError> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(RuntimeError::io("opening the restored network namespace"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(RuntimeError::sys("entering the restored network namespace"))?;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(RuntimeError::sys("opening a socket for lo"))?;
    // SAFETY: ifreq is plain old data; the ioctls read and write only this struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        use std::os::fd::AsRawFd;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(RuntimeError::sys("reading the flags of lo")(
                nix::errno::Errno::last(),
            ));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
            return Err(RuntimeError::sys("bringing up lo")(
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run(
    at: &Location,
    plan: &RestorePlan,
    spec: &Spec,
    session: trenv_criu::Session,
    inherit: Vec<Inherit_fd>,
    cgroup: &Cgroup,
    root: &Path,
    console: Option<&Path>,
    phases: &mut Phases,
) -> Result<i32, RuntimeError> {
    let mut o = Criu_opts::new();
    o.inherit_fd = inherit;
    // CRIU opens these through /proc/<our pid>/fd: they stay open here until it is done.
    let (images_fd, work_fd) = (open_dir(&plan.images)?, open_dir(&plan.work)?);
    o.set_images_dir_fd(images_fd.as_raw_fd());
    o.set_work_dir_fd(work_fd.as_raw_fd());
    o.set_log_file("restore.log".into());
    o.set_log_level(4);
    o.set_root(root.display().to_string());
    o.set_rst_sibling(true);
    o.set_evasive_devices(true);
    o.set_shell_job(plan.terminal);
    o.set_orphan_pts_master(true);
    // trenv put CRIU into the container's cgroup; the tasks stay where CRIU is.
    o.set_manage_cgroups(true);
    o.set_manage_cgroups_mode(Criu_cg_mode::IGNORE);

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
            LinuxNamespaceType::Network | LinuxNamespaceType::Pid => continue,
            other => {
                return Err(RuntimeError::Worker(format!(
                    "cannot restore into the existing {other:?} namespace {}",
                    path.display()
                )));
            }
        };
        let mut j = Join_namespace::new();
        j.set_ns(name.into());
        j.set_ns_file(path.display().to_string());
        o.join_ns.push(j);
    }
    for (dest, source) in bind_mounts(spec)
        .into_iter()
        .chain(cgroup_binds(&plan.images, cgroup)?)
    {
        let mut m = Ext_mount_map::new();
        m.set_key(dest);
        m.set_val(source);
        o.ext_mnt.push(m);
    }
    let mut notify = Console {
        socket: console.map(Path::to_path_buf),
    };
    if console.is_some() {
        o.set_notify_scripts(true);
    }
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::RESTORE);
    req.opts = Some(o).into();
    phases.mark("plan");
    // Restored tasks inherit CRIU's cgroup: move it into the container's first.
    cgroup.add_task(session.pid())?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    if let Some(r) = &resources {
        cgroup.update(r)?;
    }
    phases.mark("cgroup");
    let log = plan.work.join("restore.log");
    let resp = session
        .call(req, "restore", Some(log.clone()), &mut notify)
        .map_err(|e| {
            let kept = at.bundle.join("criu-restore.log");
            match fs::copy(&log, &kept) {
                Ok(_) => RuntimeError::Worker(format!(
                    "restoring container {}: {}; CRIU's log is kept at {}",
                    at.id,
                    e.to_string()
                        .split("; CRIU's log:")
                        .next()
                        .unwrap_or_default(),
                    kept.display()
                )),
                Err(_) => RuntimeError::Worker(format!("restoring container {}: {e}", at.id)),
            }
        })?;
    drop((images_fd, work_fd));
    phases.mark("criu restore");
    let pid = resp.restore.as_ref().map_or(0, |r| r.pid());
    if pid <= 0 {
        return Err(RuntimeError::Worker(
            "CRIU reported a restore without a pid".into(),
        ));
    }
    Ok(pid)
}

/// The descriptors CRIU inherits (the new stdio, the template's pool file, external
/// namespaces) and the `inherit_fd` entries that name them.
fn descriptors(
    plan: &RestorePlan,
    spec: &Spec,
    stdio: [Option<OwnedFd>; 3],
) -> Result<(FdPlan, Vec<Inherit_fd>), RuntimeError> {
    let mut fds = FdPlan::default();
    let mut inherit = Vec::new();
    // The new stdio replaces the pipes the image recorded.
    let recorded: Vec<String> = match fs::read(plan.images.join(DESCRIPTORS)) {
        Ok(raw) => serde_json::from_slice(&raw).map_err(|e| {
            RuntimeError::Worker(format!("{} in the checkpoint is corrupt: {e}", DESCRIPTORS))
        })?,
        Err(_) => Vec::new(),
    };
    for (n, (what, fd)) in recorded.iter().zip(stdio).enumerate() {
        // No stdio (containerd's null IO, as faasd or `ctr run --null-io` ask): /dev/null,
        // as for a cold start. Left alone, CRIU would restore the recorded pipe without its
        // reader and the function's next write would fail (EPIPE).
        let fd = match fd {
            Some(fd) => Some(fd),
            None if what.starts_with("pipe:") => Some(
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(RuntimeError::io("opening /dev/null"))?,
            ),
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
        let f = fs::File::open(&t.path).map_err(RuntimeError::io(format!(
            "opening template {}'s pool file {}",
            t.template,
            t.path.display()
        )))?;
        let meta = f
            .metadata()
            .map_err(RuntimeError::io(format!("reading {}", t.path.display())))?;
        if Stamp::of(&meta) != t.stamp {
            return Err(TemplateError::Corrupt {
                name: t.template.clone(),
                what: format!("pool file {} changed", t.path.display()),
            }
            .into());
        }
        let mut i = Inherit_fd::new();
        i.set_key(t.key.clone());
        i.set_fd(fds.add(f.into()));
        inherit.push(i);
    }
    for (kind, key) in external_namespaces(spec) {
        let path = namespace_path(spec, kind)
            .ok_or_else(|| RuntimeError::Worker(format!("no {kind} namespace path")))?;
        let f = fs::File::open(&path).map_err(RuntimeError::io(format!(
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
fn create_mountpoints(spec: &Spec, rootfs: &Path) -> Result<(), RuntimeError> {
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
        made.map_err(RuntimeError::io(format!(
            "creating the mount point {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// (mount point in the container, host directory) of the cgroup mounts recorded at dump
/// time, re-targeted from the old container's cgroup to the new one's.
fn cgroup_binds(images: &Path, cgroup: &Cgroup) -> Result<Vec<(String, String)>, RuntimeError> {
    let raw = match fs::read(images.join(CGROUP_MOUNTS)) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::io(format!("reading {CGROUP_MOUNTS}"))(e)),
    };
    let recorded: CgroupMounts = serde_json::from_slice(&raw).map_err(|e| {
        RuntimeError::Worker(format!("{CGROUP_MOUNTS} in the checkpoint is corrupt: {e}"))
    })?;
    let host = mountinfo::read(None);
    let new_path = cgroup.path().display().to_string();
    let mut out = Vec::new();
    for m in recorded.mounts {
        let Some(host_mount) = host
            .iter()
            .find(|h| h.fstype == m.fstype && h.super_options == m.options)
        else {
            return Err(RuntimeError::Worker(format!(
                "the checkpoint binds the cgroup hierarchy {} ({}) at {}, which this host \
                 does not mount",
                m.fstype, m.options, m.mountpoint
            )));
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
fn adopt(at: &Location, spec: &Spec, pid: i32, systemd: bool) -> Result<(), RuntimeError> {
    let dir = at.container_dir();
    make_dir(&dir)?;
    let lc = |what: &str| {
        let what = what.to_string();
        move |e: &(dyn std::error::Error + 'static)| {
            RuntimeError::Worker(format!("{what}: {}", chain(e)))
        }
    };
    let mut c = Container::new(
        &at.id,
        ContainerStatus::Running,
        Some(pid),
        &at.derived_bundle(),
        &dir,
    )
    .map_err(|e| lc("recording the restored container")(&e))?;
    c.set_systemd(systemd);
    c.save()
        .map_err(|e| lc("saving the restored container's state")(&e))?;
    YoukiConfig::from_spec(spec, &at.id)
        .and_then(|cfg| cfg.save(&dir))
        .map_err(|e| lc("saving the restored container's config")(&e))?;
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
    use std::os::fd::AsRawFd;
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
