//! Checkpointing a container with CRIU, as runc does it (docs/design/templates.md §2.3).
//!
//! Runs in a zygote worker: CRIU is a child of the worker, which waits for it. The steps:
//! find the running init ([`running_init`]), record its stdio ([`record_stdio`]), build
//! CRIU's options ([`dump_options`], [`external_mounts`]), dump ([`dump`]).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use libcontainer::container::{Container, ContainerStatus};
use oci_spec::runtime::Spec;
use trenv_criu::rpc::{
    Criu_network_lock_method, Criu_opts, Criu_req, Criu_req_type, Ext_mount_map,
};
use trenv_criu::{Criu, FdPlan, Purpose};

use super::criu::{
    CGROUP_MOUNTS, CheckpointOptions, CriuConfig, DESCRIPTORS, cgroup_mounts, cgroups_mode,
    external_namespaces, key_inode,
};
use super::{SnapshotError, make_dir, open_dir};
use crate::container::cgroup::Cgroup;
use crate::container::spec::{bind_mount_destinations, private_netns};
use crate::container::{ContainerError, Location};

/// Dumps the container into `images` (created if needed), using `work` for CRIU's log and
/// scratch files. On failure the log is copied to `<bundle>/criu-dump.log`.
pub fn checkpoint(
    at: &Location,
    images: &Path,
    work: &Path,
    opts: &CheckpointOptions,
    criu: &CriuConfig,
) -> Result<(), SnapshotError> {
    let (container, status, pid) = running_init(at)?;
    let spec = at.derived_spec()?;
    let criu = criu.criu()?;
    make_dir(images)?;
    make_dir(work)?;
    // Record stdio first: with `exit` the process is gone afterwards.
    record_stdio(pid, images)?;
    let mut o = dump_options(at, &spec, pid, opts)?;
    // CRIU freezes (and for a paused container leaves frozen) through the freezer.
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cgroup = Cgroup::open(cgroups_path.as_deref(), &at.id, container.systemd()).ok();
    if let Some(dir) = cgroup.as_ref().and_then(Cgroup::freezer_dir) {
        o.set_freeze_cgroup(dir.display().to_string());
    }
    o.ext_mnt = external_mounts(&spec, pid, cgroup.as_ref(), images)?;
    // CRIU opens these through /proc/<our pid>/fd: they stay open here until it is done.
    let (images_fd, work_fd) = (open_dir(images)?, open_dir(work)?);
    o.set_images_dir_fd(images_fd.as_raw_fd());
    o.set_work_dir_fd(work_fd.as_raw_fd());
    let result = dump(&criu, o, &work.join("dump.log"));
    drop((images_fd, work_fd));
    if let Err(e) = result {
        // A CRIU that died mid-dump leaves the cgroup frozen: thaw what was running.
        if status == ContainerStatus::Running
            && let Some(cg) = &cgroup
        {
            let _ = cg.freeze(false);
        }
        let keep = at.bundle.join("criu-dump.log");
        return Err(SnapshotError::criu_failed(
            "checkpointing",
            &at.id,
            &work.join("dump.log"),
            keep,
        )(e));
    }
    Ok(())
}

/// The pid of the container's init, if it runs (or is paused).
pub(crate) fn init_pid(at: &Location) -> Option<i32> {
    running_init(at).ok().map(|(_, _, pid)| pid)
}

/// The container's libcontainer state, its status (running or paused) and its init's pid.
fn running_init(at: &Location) -> Result<(Container, ContainerStatus, i32), SnapshotError> {
    let container = Container::load(at.container_dir())
        .map_err(ContainerError::lc("loading the container's state"))?;
    let status = container.status();
    if !matches!(status, ContainerStatus::Running | ContainerStatus::Paused) {
        return Err(SnapshotError::NotRunning {
            id: at.id.clone(),
            status: format!("{status:?}"),
        });
    }
    let pid = container.pid().ok_or(SnapshotError::NoPid)?.as_raw();
    Ok((container, status, pid))
}

/// Writes [`DESCRIPTORS`]: what the init's stdio is (runc's format).
fn record_stdio(pid: i32, images: &Path) -> Result<(), SnapshotError> {
    let stdio: Vec<String> = (0..3)
        .map(|n| {
            fs::read_link(format!("/proc/{pid}/fd/{n}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "/dev/null".into())
        })
        .collect();
    let body = serde_json::to_vec(&stdio).map_err(|e| SnapshotError::Encode(DESCRIPTORS, e))?;
    fs::write(images.join(DESCRIPTORS), body)
        .map_err(SnapshotError::io(format!("writing {DESCRIPTORS}")))
}

/// CRIU's options for dumping `pid` as containerd asked (`opts`).
fn dump_options(
    at: &Location,
    spec: &Spec,
    pid: i32,
    opts: &CheckpointOptions,
) -> Result<Criu_opts, SnapshotError> {
    let mut o = Criu_opts::new();
    o.set_pid(pid);
    o.set_log_file("dump.log".into());
    o.set_log_level(super::criu::LogLevel::DEBUG.get());
    o.set_root(at.rootfs_of(spec).display().to_string());
    o.set_leave_running(!opts.exit);
    o.set_ext_unix_sk(opts.external_unix_sockets);
    o.set_tcp_established(opts.open_tcp);
    o.set_shell_job(opts.terminal);
    o.set_file_locks(opts.file_locks);
    o.set_orphan_pts_master(true);
    if opts.for_template {
        o.set_network_lock(Criu_network_lock_method::SKIP);
        if private_netns(spec) {
            o.set_empty_ns(o.empty_ns() | libc::CLONE_NEWNET as u32);
        }
    }
    o.set_manage_cgroups(true);
    if let Some(mode) = cgroups_mode(&opts.cgroups_mode)? {
        o.set_manage_cgroups_mode(mode);
    }
    for ns in &opts.empty_namespaces {
        match ns.as_str() {
            "network" | "net" => o.set_empty_ns(o.empty_ns() | libc::CLONE_NEWNET as u32),
            other => return Err(SnapshotError::EmptyNamespace(other.to_string())),
        }
    }
    for (kind, key) in external_namespaces(spec) {
        o.external
            .push(format!("{kind}[{}]:{key}", key_inode(spec, kind)?));
    }
    Ok(o)
}

/// The mounts CRIU must leave alone (bind mounts of the spec and the cgroup filesystems,
/// by destination); the cgroup mounts are recorded in [`CGROUP_MOUNTS`] for the restore.
fn external_mounts(
    spec: &Spec,
    pid: i32,
    cgroup: Option<&Cgroup>,
    images: &Path,
) -> Result<Vec<Ext_mount_map>, SnapshotError> {
    let cg_path = cgroup
        .map(|c| c.path().display().to_string())
        .unwrap_or_default();
    let cg_mounts = cgroup_mounts(pid, &cg_path);
    let body =
        serde_json::to_vec(&cg_mounts).map_err(|e| SnapshotError::Encode(CGROUP_MOUNTS, e))?;
    fs::write(images.join(CGROUP_MOUNTS), body)
        .map_err(SnapshotError::io(format!("writing {CGROUP_MOUNTS}")))?;
    let cg_points = cg_mounts.mounts.iter().map(|m| m.mountpoint.clone());
    Ok(bind_mount_destinations(spec)
        .into_iter()
        .chain(cg_points)
        .map(|dest| {
            let mut m = Ext_mount_map::new();
            m.set_key(dest.clone());
            m.set_val(dest);
            m
        })
        .collect())
}

/// Runs CRIU's dump with `o`; keeps a tuned node tuned (a dump mounts cgroup2 in the
/// host's cgroup namespace, which resets favordynmods).
fn dump(criu: &Criu, o: Criu_opts, log: &Path) -> Result<(), trenv_criu::CriuError> {
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::DUMP);
    req.opts = Some(o).into();
    let tuned = crate::node::favordynmods();
    let result = criu
        .start(FdPlan::default(), Purpose::Other)
        .and_then(|s| s.call(req, "dump", Some(log.to_path_buf()), &mut ()));
    crate::node::keep_favordynmods(&tuned);
    result.map(drop)
}
