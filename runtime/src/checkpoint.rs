//! Checkpointing a container with CRIU, as runc does it (docs/design/templates.md §2.3).
//!
//! Runs in a zygote worker: CRIU is a child of the worker, which waits for it.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use libcontainer::container::{Container, ContainerStatus};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use trenv_criu::rpc::{
    Criu_cg_mode, Criu_network_lock_method, Criu_opts, Criu_req, Criu_req_type, Ext_mount_map,
};
use trenv_criu::{Criu, FdPlan};

use crate::cgroup::Cgroup;
use crate::error::{RuntimeError, chain};
use crate::mountinfo;
use crate::sandbox::Location;

/// What containerd asks of a checkpoint (`containerd.runc.v1.CheckpointOptions`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckpointOptions {
    /// Stop the container after the dump (CRIU kills it).
    pub exit: bool,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    pub terminal: bool,
    pub file_locks: bool,
    /// Namespaces left empty in the image ("network" is the one CRIU supports).
    pub empty_namespaces: Vec<String>,
    /// soft, full, strict or ignore; empty = CRIU's default (soft).
    pub cgroups_mode: String,
    /// A dump for a memory template: no network lock (a function has no established
    /// connections to protect, and the lock costs ~50 ms per restore), and a private
    /// network namespace is dumped empty (restored with only `lo`, brought up by trenv)
    /// instead of replaying its routes and firewall with `ip`/`iptables` runs.
    #[serde(default)]
    pub for_template: bool,
}

/// Where CRIU is and where it may cache what it learnt about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CriuConfig {
    /// Explicit binary; `None` = `criu` on PATH or in the sbin directories.
    pub binary: Option<PathBuf>,
    /// Directory for the cached version answer (a tmpfs such as /run/trenv).
    pub cache_dir: Option<PathBuf>,
}

impl CriuConfig {
    /// A CRIU binary recent enough for trenv.
    pub fn criu(&self) -> Result<Criu, RuntimeError> {
        let criu = Criu::locate(self.binary.as_deref())?;
        if let Some(d) = &self.cache_dir {
            let _ = fs::create_dir_all(d);
        }
        criu.require_version(self.cache_dir.as_deref())?;
        Ok(criu)
    }
}

/// The cgroup filesystems bound into the container (cgroup v1 hierarchies or the v2 tree,
/// each bound at the container's own cgroup): CRIU cannot dump them, so they are external
/// mounts, re-bound at restore to the new container's cgroup. Recorded in the image
/// directory as [`CGROUP_MOUNTS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMounts {
    /// The container's cgroup path at dump time.
    pub cgroup_path: String,
    pub mounts: Vec<CgroupMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMount {
    /// Where it is mounted inside the container.
    pub mountpoint: String,
    /// The cgroup directory bound there.
    pub root: String,
    pub fstype: String,
    /// The hierarchy's super options (e.g. "rw,memory"), to find it on the host.
    pub options: String,
}

pub const CGROUP_MOUNTS: &str = "trenv-cgroup-mounts.json";

fn cgroup_mounts(pid: i32, cgroup_path: &str) -> CgroupMounts {
    CgroupMounts {
        cgroup_path: cgroup_path.to_string(),
        mounts: mountinfo::read(Some(pid))
            .into_iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .map(|m| CgroupMount {
                mountpoint: m.mount_point.display().to_string(),
                root: m.root,
                fstype: m.fstype,
                options: m.super_options,
            })
            .collect(),
    }
}

/// The name of the file, in the image directory, recording what the init process's stdio
/// was at dump time (runc's format: a JSON array of three `readlink` targets).
pub const DESCRIPTORS: &str = "descriptors.json";

/// Dumps the container into `images` (created if needed), using `work` for CRIU's log and
/// scratch files. On failure the log is copied to `<bundle>/criu-dump.log`.
pub fn checkpoint(
    at: &Location,
    images: &Path,
    work: &Path,
    opts: &CheckpointOptions,
    criu: &CriuConfig,
) -> Result<(), RuntimeError> {
    let container = Container::load(at.container_dir()).map_err(|e| {
        RuntimeError::Worker(format!("loading the container's state: {}", chain(&e)))
    })?;
    let status = container.status();
    if !matches!(status, ContainerStatus::Running | ContainerStatus::Paused) {
        return Err(RuntimeError::Worker(format!(
            "container {} is {status:?}: only a running or paused container can be checkpointed",
            at.id
        )));
    }
    let pid = container
        .pid()
        .ok_or_else(|| RuntimeError::Worker("the container has no init pid".into()))?
        .as_raw();
    let spec = at.derived_spec()?;
    let criu = criu.criu()?;
    make_dir(images)?;
    make_dir(work)?;

    // Record stdio first: with `exit` the process is gone afterwards.
    let stdio: Vec<String> = (0..3)
        .map(|n| {
            fs::read_link(format!("/proc/{pid}/fd/{n}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "/dev/null".into())
        })
        .collect();
    fs::write(
        images.join(DESCRIPTORS),
        serde_json::to_vec(&stdio).map_err(|e| RuntimeError::Protocol(e.to_string()))?,
    )
    .map_err(RuntimeError::io(format!("writing {DESCRIPTORS}")))?;

    let plan = FdPlan::default();
    let mut o = Criu_opts::new();
    // CRIU opens these through /proc/<our pid>/fd: they stay open here until it is done.
    let (images_fd, work_fd) = (open_dir(images)?, open_dir(work)?);
    o.set_images_dir_fd(images_fd.as_raw_fd());
    o.set_work_dir_fd(work_fd.as_raw_fd());
    o.set_pid(pid);
    o.set_log_file("dump.log".into());
    o.set_log_level(4);
    o.set_root(rootfs_of(&spec, at).display().to_string());
    o.set_leave_running(!opts.exit);
    o.set_ext_unix_sk(opts.external_unix_sockets);
    o.set_tcp_established(opts.open_tcp);
    o.set_shell_job(opts.terminal);
    o.set_file_locks(opts.file_locks);
    o.set_orphan_pts_master(true);
    if opts.for_template {
        o.set_network_lock(Criu_network_lock_method::SKIP);
        if private_netns(&spec) {
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
            other => {
                return Err(RuntimeError::Worker(format!(
                    "checkpoint option empty_namespaces: CRIU can leave only the network \
                     namespace empty, not {other:?}"
                )));
            }
        }
    }
    // CRIU freezes (and for a paused container leaves frozen) through the freezer.
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cgroup = Cgroup::open(cgroups_path.as_deref(), &at.id, container.systemd()).ok();
    if let Some(dir) = cgroup.as_ref().and_then(Cgroup::freezer_dir) {
        o.set_freeze_cgroup(dir.display().to_string());
    }
    for (kind, key) in external_namespaces(&spec) {
        o.external
            .push(format!("{kind}[{}]:{key}", key_inode(&spec, kind)?));
    }
    let cg_path = cgroup
        .as_ref()
        .map(|c| c.path().display().to_string())
        .unwrap_or_default();
    let cg_mounts = cgroup_mounts(pid, &cg_path);
    fs::write(
        images.join(CGROUP_MOUNTS),
        serde_json::to_vec(&cg_mounts).map_err(|e| RuntimeError::Protocol(e.to_string()))?,
    )
    .map_err(RuntimeError::io(format!("writing {CGROUP_MOUNTS}")))?;
    let cg_points = cg_mounts.mounts.iter().map(|m| m.mountpoint.clone());
    for dest in bind_mount_destinations(&spec).into_iter().chain(cg_points) {
        let mut m = Ext_mount_map::new();
        m.set_key(dest.clone());
        m.set_val(dest);
        o.ext_mnt.push(m);
    }
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::DUMP);
    req.opts = Some(o).into();
    let log = work.join("dump.log");
    let tuned = crate::node::favordynmods();
    let result = criu
        .start(plan)
        .and_then(|s| s.call(req, "dump", Some(log.clone()), &mut ()));
    drop((images_fd, work_fd));
    crate::node::keep_favordynmods(&tuned);
    if let Err(e) = result {
        // A CRIU that died mid-dump leaves the cgroup frozen: thaw what was running.
        if status == ContainerStatus::Running
            && let Some(cg) = &cgroup
        {
            let _ = cg.freeze(false);
        }
        let kept = at.bundle.join("criu-dump.log");
        let err = match fs::copy(&log, &kept) {
            Ok(_) => format!(
                "checkpointing container {}: {}; CRIU's log is kept at {}",
                at.id,
                without_log_hint(&e.to_string()),
                kept.display()
            ),
            Err(_) => format!("checkpointing container {}: {e}", at.id),
        };
        return Err(RuntimeError::Worker(err));
    }
    Ok(())
}

fn without_log_hint(msg: &str) -> &str {
    msg.split("; CRIU's log:").next().unwrap_or(msg)
}

pub(crate) fn cgroups_mode(mode: &str) -> Result<Option<Criu_cg_mode>, RuntimeError> {
    Ok(Some(match mode {
        "" => return Ok(None),
        "soft" => Criu_cg_mode::SOFT,
        "full" => Criu_cg_mode::FULL,
        "strict" => Criu_cg_mode::STRICT,
        "ignore" => Criu_cg_mode::IGNORE,
        other => {
            return Err(RuntimeError::Worker(format!(
                "unknown cgroups mode {other:?}: use soft, full, strict or ignore"
            )));
        }
    }))
}

pub(crate) fn make_dir(dir: &Path) -> Result<(), RuntimeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(RuntimeError::io(format!("creating {}", dir.display())))
}

pub(crate) fn open_dir(dir: &Path) -> Result<OwnedFd, RuntimeError> {
    fs::File::open(dir)
        .map(OwnedFd::from)
        .map_err(RuntimeError::io(format!("opening {}", dir.display())))
}

/// The container's root filesystem (absolute in the derived spec).
pub(crate) fn rootfs_of(spec: &Spec, at: &Location) -> PathBuf {
    spec.root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| at.rootfs())
}

/// Namespaces the container joined from a path that CRIU must treat as external, with the
/// key runc uses for them (so images interoperate).
pub(crate) fn external_namespaces(spec: &Spec) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        if ns.path().is_none() {
            continue;
        }
        match ns.typ() {
            LinuxNamespaceType::Network => out.push(("net", "extRootNetNS")),
            LinuxNamespaceType::Pid => out.push(("pid", "extRootPidNS")),
            _ => {}
        }
    }
    out
}

/// The container has a network namespace of its own (not a pod's, not the host's).
pub(crate) fn private_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

/// The path of the namespace of `kind` ("net" or "pid") the spec joins.
pub(crate) fn namespace_path(spec: &Spec, kind: &str) -> Option<PathBuf> {
    let want = match kind {
        "net" => LinuxNamespaceType::Network,
        "pid" => LinuxNamespaceType::Pid,
        _ => return None,
    };
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .find(|n| n.typ() == want)
        .and_then(|n| n.path().clone())
}

fn key_inode(spec: &Spec, kind: &str) -> Result<u64, RuntimeError> {
    let path = namespace_path(spec, kind)
        .ok_or_else(|| RuntimeError::Worker(format!("no {kind} namespace path")))?;
    fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(RuntimeError::io(format!("reading {}", path.display())))
}

/// Destinations of the spec's bind mounts: their sources lie outside the container, so
/// CRIU records them as external mounts (by destination) instead of dumping them.
pub(crate) fn bind_mount_destinations(spec: &Spec) -> Vec<String> {
    bind_mounts(spec).into_iter().map(|(d, _)| d).collect()
}

/// (destination, source) of every bind mount in the spec.
pub(crate) fn bind_mounts(spec: &Spec) -> Vec<(String, String)> {
    spec.mounts()
        .as_ref()
        .into_iter()
        .flatten()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
        })
        .filter_map(|m| {
            Some((
                m.destination().display().to_string(),
                m.source().as_ref()?.display().to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn bind_mounts_are_found_by_type_or_option() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/etc/hosts","type":"bind","source":"/var/h","options":["rbind","ro"]},
                {"destination":"/data","source":"/srv/data","options":["bind"]}]}"#,
        );
        assert_eq!(
            bind_mounts(&s),
            vec![
                ("/etc/hosts".to_string(), "/var/h".to_string()),
                ("/data".to_string(), "/srv/data".to_string())
            ]
        );
    }

    #[test]
    fn only_joined_net_and_pid_namespaces_are_external() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
                {"type":"pid"},{"type":"network","path":"/var/run/netns/x"},
                {"type":"ipc","path":"/proc/1/ns/ipc"}]}}"#,
        );
        assert_eq!(external_namespaces(&s), vec![("net", "extRootNetNS")]);
        assert_eq!(
            namespace_path(&s, "net"),
            Some(PathBuf::from("/var/run/netns/x"))
        );
    }

    #[test]
    fn cgroup_modes_are_checked() {
        assert!(cgroups_mode("").unwrap().is_none());
        assert_eq!(cgroups_mode("strict").unwrap(), Some(Criu_cg_mode::STRICT));
        let e = cgroups_mode("loose").unwrap_err().to_string();
        assert!(e.contains("soft, full, strict or ignore"), "{e}");
    }
}
