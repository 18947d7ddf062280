//! What checkpoints and restores share: which CRIU runs, the options containerd sends, and
//! what trenv records beside CRIU's images (stdio, cgroup mounts) so a restore can redo
//! what libcontainer did for the dumped container.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use trenv_criu::Criu;
use trenv_criu::rpc::Criu_cg_mode;

use super::SnapshotError;
use crate::container::spec::namespace_path;
use crate::sys::mountinfo;

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

/// Where CRIU is, where it may cache what it learnt about it, and how much a restore's
/// CRIU writes to its log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CriuConfig {
    /// Explicit binary; `None` = `criu` on PATH or in the sbin directories.
    pub binary: Option<PathBuf>,
    /// Directory for the cached version answer (a tmpfs such as /run/trenv).
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub restore_log_level: LogLevel,
}

/// CRIU's log level (`-v`): 0 nothing, 1 errors, 2 and warnings, 3 and what each step
/// does, 4 and debugging detail. A restore's log is written on its start path: at 4 a
/// template restore writes ~900 lines, ~0.6 ms of CRIU's ~7 ms (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct LogLevel(u32);

impl LogLevel {
    /// Errors and warnings: what a failed restore's error quotes from the log.
    pub const WARNINGS: LogLevel = LogLevel(2);
    /// Everything CRIU says: checkpoints, which are not on a start path.
    pub const DEBUG: LogLevel = LogLevel(4);

    /// As CRIU's RPC options take it.
    pub fn get(self) -> i32 {
        self.0 as i32
    }
}

impl Default for LogLevel {
    fn default() -> LogLevel {
        LogLevel::WARNINGS
    }
}

impl TryFrom<u32> for LogLevel {
    type Error = String;

    fn try_from(v: u32) -> Result<LogLevel, String> {
        if v <= LogLevel::DEBUG.0 {
            Ok(LogLevel(v))
        } else {
            Err(format!(
                "CRIU's log level {v} does not exist: 0 (nothing) to 4 (debugging detail)"
            ))
        }
    }
}

impl From<LogLevel> for u32 {
    fn from(l: LogLevel) -> u32 {
        l.0
    }
}

impl CriuConfig {
    /// A CRIU binary recent enough for trenv.
    pub fn criu(&self) -> Result<Criu, SnapshotError> {
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

pub(crate) fn cgroup_mounts(pid: i32, cgroup_path: &str) -> CgroupMounts {
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

pub(crate) fn cgroups_mode(mode: &str) -> Result<Option<Criu_cg_mode>, SnapshotError> {
    Ok(Some(match mode {
        "" => return Ok(None),
        "soft" => Criu_cg_mode::SOFT,
        "full" => Criu_cg_mode::FULL,
        "strict" => Criu_cg_mode::STRICT,
        "ignore" => Criu_cg_mode::IGNORE,
        other => {
            return Err(SnapshotError::CgroupsMode(other.to_string()));
        }
    }))
}

/// Namespaces the container joined from a path that CRIU must treat as external, with the
/// key runc uses for them (so images interoperate). A sandbox's network namespace is the
/// container's own, not external.
pub(crate) fn external_namespaces(spec: &Spec) -> Vec<(&'static str, &'static str)> {
    let sandboxed = crate::container::spec::sandboxed(spec);
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
            LinuxNamespaceType::Network if !sandboxed => out.push(("net", "extRootNetNS")),
            LinuxNamespaceType::Pid => out.push(("pid", "extRootPidNS")),
            _ => {}
        }
    }
    out
}

pub(crate) fn key_inode(spec: &Spec, kind: &'static str) -> Result<u64, SnapshotError> {
    let path = namespace_path(spec, kind).ok_or(SnapshotError::NoNamespacePath(kind))?;
    fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(SnapshotError::io(format!("reading {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn only_joined_net_and_pid_namespaces_are_external() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
                {"type":"pid"},{"type":"network","path":"/var/run/netns/x"},
                {"type":"ipc","path":"/proc/1/ns/ipc"}]}}"#,
        );
        assert_eq!(external_namespaces(&s), vec![("net", "extRootNetNS")]);
    }

    #[test]
    fn cgroup_modes_are_checked() {
        assert!(cgroups_mode("").unwrap().is_none());
        assert_eq!(cgroups_mode("strict").unwrap(), Some(Criu_cg_mode::STRICT));
        let e = cgroups_mode("loose").unwrap_err().to_string();
        assert!(e.contains("soft, full, strict or ignore"), "{e}");
    }
}
