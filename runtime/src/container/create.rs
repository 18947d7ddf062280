//! Create: the spec checked (before anything is made), the rootfs mounted, the spec derived
//! for libcontainer, a missing working directory made in the root as runc makes it, the
//! init process created and waiting for Start. Also the Create of a container whose
//! processes CRIU restores (rootfs and spec only): a template's in the shim's Create, a
//! checkpoint's at Start. Nothing is left behind on failure.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cgroup::NamedSystemd;
use super::idmap;
use super::rootfs::{self, Mount, Scratch};
use super::spec::{derive, derive_for_restore, ensure_cwd, validate};
use super::stdio::builder;
use super::{ContainerError, Location, StdioFds};
use crate::sandbox::Joinable;
use crate::snapshot::Phases;

/// A container to create, as the shim describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewContainer {
    pub at: Location,
    /// Rootfs mounts handed over by containerd; empty when the bundle's rootfs is ready.
    pub rootfs: Vec<Mount>,
    pub systemd_cgroup: bool,
    /// Where the init's pty master is sent (a terminal was asked for).
    pub console_socket: Option<PathBuf>,
    /// The sandbox whose namespaces the container joins (their paths through the shim's
    /// gate into the node's pin store).
    #[serde(default)]
    pub sandbox: Option<Joinable>,
    /// The rootfs's writable layer in memory.
    #[serde(default)]
    pub scratch: Option<Scratch>,
}

/// Creates the container's init process; returns its pid. `exec_stamp` is the pipe into
/// which the process writes the time just before it execs its program.
pub fn create(
    c: &NewContainer,
    stdio: StdioFds,
    exec_stamp: Option<OwnedFd>,
) -> Result<i32, ContainerError> {
    let at = &c.at;
    let spec = at.spec()?;
    validate(&spec)?;
    idmap::check_spec(&spec)?;
    let named_systemd = NamedSystemd::of(
        spec.linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref()),
        &at.id,
    );
    let mounted = mount_rootfs(at, &c.rootfs, c.scratch)?;
    let result = (|| {
        let (derived, mut executor) = derive(spec, &at.bundle, c.sandbox.as_ref())?;
        let derived = plain_cgroups_path(derived, c.systemd_cgroup);
        ensure_cwd(&derived)?;
        // Idmapped bind mounts (libcontainer binds idmapped copies made here), needed only
        // until the init has made its mounts.
        // What libcontainer creates the init from differs for a user-namespaced
        // container (copies of its bind mounts, namespaces already joined: see
        // idmap::stage_spec_mounts and join_before_user_namespace); the derived spec
        // recorded for exec, checkpoint and delete is the whole one.
        let userns = super::spec::user_namespaced(&derived);
        let (launch, mut staged) =
            idmap::stage_spec_mounts(derived.clone(), &at.idmap_dir(), userns)?;
        let launch = join_before_user_namespace(launch)?;
        executor.exec_stamp = exec_stamp.map(Arc::new);
        let dir = at.save_derived(&launch)?;
        let built = builder(at, executor, c.console_socket.clone(), stdio)?
            .validate_id()
            .map_err(ContainerError::lc("checking the container id"))?
            .as_init(&dir)
            .with_systemd(c.systemd_cgroup)
            .with_detach(true)
            .build();
        let any_staged = !staged.is_empty();
        staged.release();
        let container = built.map_err(ContainerError::lc("creating the container"))?;
        let pid = container.pid().ok_or(ContainerError::NoInitPid)?.as_raw();
        if (userns || any_staged)
            && let Err(e) = at.save_derived(&idmap::without_mount_idmaps(derived))
        {
            // An exec would join what the launch spec lists only: no init without it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
        // The init waits for Start: whatever it forks later is in there too.
        if let Some(named) = &named_systemd
            && let Err(e) = named.join(pid)
        {
            log::warn!("joining {}: {e}", named.path().display());
        }
        Ok(pid)
    })();
    if result.is_err() {
        undo(at, mounted);
    }
    result
}

/// Create of a container whose processes CRIU restores: mounts the rootfs and records the
/// derived spec (what exec and delete read later); the processes come from CRIU.
pub fn prepare_restore(
    at: &Location,
    mounts: &[Mount],
    sandbox: Option<&Joinable>,
    scratch: Option<Scratch>,
) -> Result<Phases, ContainerError> {
    let mut phases = Phases::start();
    let spec = at.spec()?;
    validate(&spec)?;
    phases.mark("spec");
    let mounted = mount_rootfs(at, mounts, scratch)?;
    phases.mark("mount");
    // The seccomp filters and capabilities of a restored process come from the image.
    let derived = derive_for_restore(spec, &at.bundle, sandbox);
    phases.mark("derive");
    let result = at.save_derived(&derived);
    if result.is_err() {
        undo(at, mounted);
    }
    phases.mark("save");
    result.map(|_| phases)
}

/// The namespaces a user-namespaced container joins by path, joined by this (single-use)
/// worker before libcontainer runs, and left out of the spec libcontainer gets: its
/// children are born in them. libcontainer 0.7 enters the user namespace first and joins
/// the others from inside it, which the kernel refuses (EPERM) for a namespace the
/// container's user namespace does not own — a pod's network namespace made by CRI, which
/// every `hostUsers: false` pod has; runc joins them first, as done here.
fn join_before_user_namespace(
    mut spec: oci_spec::runtime::Spec,
) -> Result<oci_spec::runtime::Spec, ContainerError> {
    use nix::sched::{CloneFlags, setns};
    use oci_spec::runtime::LinuxNamespaceType as T;
    if !super::spec::user_namespaced(&spec) {
        return Ok(spec);
    }
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(spec);
    };
    let mut kept = Vec::new();
    let mut joined = Vec::new();
    for n in linux.namespaces().clone().unwrap_or_default() {
        let flag = match n.typ() {
            T::Network => CloneFlags::CLONE_NEWNET,
            T::Ipc => CloneFlags::CLONE_NEWIPC,
            T::Uts => CloneFlags::CLONE_NEWUTS,
            T::Pid => CloneFlags::CLONE_NEWPID,
            T::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            _ => {
                kept.push(n);
                continue;
            }
        };
        let Some(path) = n.path().clone() else {
            kept.push(n);
            continue;
        };
        let fd = fs::File::open(&path).map_err(ContainerError::io(format!(
            "opening namespace {}",
            path.display()
        )))?;
        setns(fd, flag).map_err(|e| {
            ContainerError::io(format!("joining namespace {}", path.display()))(e.into())
        })?;
        joined.push(n.typ());
    }
    // The spec's sysctls of the joined namespaces are written from here (/proc/sys/net and
    // the IPC ones show the writer's namespaces): libcontainer would refuse them in what
    // it now takes for the host's namespaces.
    let mut sysctls = linux.sysctl().clone().unwrap_or_default();
    for (key, value) in sysctls.clone() {
        let Some(kind) = sysctl_namespace(&key) else {
            continue;
        };
        if !joined.contains(&kind) {
            continue;
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, &value).map_err(ContainerError::io(format!(
            "setting sysctl {key}={value} in the container's namespace"
        )))?;
        sysctls.remove(&key);
    }
    linux.set_sysctl(Some(sysctls));
    linux.set_namespaces(Some(kept));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The namespace a sysctl belongs to (runc's list of namespaced sysctls), if any.
fn sysctl_namespace(key: &str) -> Option<oci_spec::runtime::LinuxNamespaceType> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if key.starts_with("net.") {
        Some(T::Network)
    } else if key.starts_with("fs.mqueue.") || IPC.contains(&key) {
        Some(T::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(T::Uts)
    } else {
        None
    }
}

/// Without the systemd driver a cgroups path of systemd's form ("slice:prefix:name") is a
/// plain cgroupfs path, as runc reads it: the derived spec names it from the hierarchy's root
/// ("/slice:prefix:name", where libcgroups puts it either way), so that whoever reads the
/// derived spec later (delete, checkpoint) does not take it for a systemd unit.
fn plain_cgroups_path(mut spec: oci_spec::runtime::Spec, systemd: bool) -> oci_spec::runtime::Spec {
    if systemd {
        return spec;
    }
    if let Some(mut linux) = spec.linux().clone()
        && let Some(path) = linux.cgroups_path().clone()
        && super::cgroup::is_systemd_path(&path)
    {
        linux.set_cgroups_path(Some(std::path::Path::new("/").join(path)));
        spec.set_linux(Some(linux));
    }
    spec
}

/// Mounts containerd's rootfs mounts, if any (the writable layer in a scratch tmpfs if
/// asked and possible); says whether it did.
fn mount_rootfs(
    at: &Location,
    mounts: &[Mount],
    scratch: Option<Scratch>,
) -> Result<bool, ContainerError> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let dir = rootfs::scratch_dir(&at.state_root);
    let moved = match scratch {
        Some(s) => rootfs::with_scratch(mounts, &dir, s)?,
        None => None,
    };
    let mounted = rootfs::mount_all(moved.as_deref().unwrap_or(mounts), &at.rootfs());
    if mounted.is_err() && moved.is_some() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
    mounted?;
    Ok(true)
}

/// Removes what a failed create made.
fn undo(at: &Location, mounted: bool) {
    if let Err(e) = idmap::sweep(&at.idmap_dir()) {
        // Removing the state below a mount would reach into what it shows.
        log::warn!("container {}: {e}; its state directory is left", at.id);
        return;
    }
    if mounted {
        let _ = rootfs::unmount(&at.rootfs());
        let _ = nix::mount::umount2(
            &rootfs::scratch_dir(&at.state_root),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
    let _ = fs::remove_dir_all(&at.state_root);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_path(path: &str) -> oci_spec::runtime::Spec {
        let mut spec = oci_spec::runtime::Spec::default();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some(path.into()));
        spec.set_linux(Some(linux));
        spec
    }

    fn path_of(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
        spec.linux().as_ref().and_then(|l| l.cgroups_path().clone())
    }

    #[test]
    fn sysctls_belong_to_the_namespaces_runc_says() {
        use oci_spec::runtime::LinuxNamespaceType as T;
        assert_eq!(
            sysctl_namespace("net.ipv4.ip_unprivileged_port_start"),
            Some(T::Network)
        );
        assert_eq!(sysctl_namespace("kernel.shmmax"), Some(T::Ipc));
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Some(T::Ipc));
        assert_eq!(sysctl_namespace("kernel.hostname"), Some(T::Uts));
        assert_eq!(sysctl_namespace("vm.overcommit_memory"), None);
        assert_eq!(sysctl_namespace("kernel.pid_max"), None);
    }

    #[test]
    fn a_systemd_style_path_without_the_systemd_driver_is_named_from_the_root() {
        let s = plain_cgroups_path(with_path("k.slice:cri-containerd:abc"), false);
        assert_eq!(
            path_of(&s),
            Some(PathBuf::from("/k.slice:cri-containerd:abc"))
        );
        let s = plain_cgroups_path(with_path("k.slice:cri-containerd:abc"), true);
        assert_eq!(
            path_of(&s),
            Some(PathBuf::from("k.slice:cri-containerd:abc"))
        );
        let s = plain_cgroups_path(with_path("/k8s.io/abc"), false);
        assert_eq!(path_of(&s), Some(PathBuf::from("/k8s.io/abc")));
    }
}
