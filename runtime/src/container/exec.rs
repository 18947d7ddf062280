//! Exec: a new process in a running container (libcontainer's tenant builder), under the
//! container's seccomp profile.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use super::cgroup::{NamedSystemd, is_systemd_path};
use super::executor::{EnterUserNamespace, TrenvExecutor};
use super::stdio::builder;
use super::{ContainerError, Location, StdioFds, seccomp};

/// A process to start in a container, as the shim describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewProcess {
    pub at: Location,
    /// A file holding the exec process as OCI JSON.
    pub process: PathBuf,
    pub console_socket: Option<PathBuf>,
}

/// Starts the process; returns its pid.
pub fn exec(
    p: &NewProcess,
    stdio: StdioFds,
    exec_stamp: Option<OwnedFd>,
) -> Result<i32, ContainerError> {
    let spec = p.at.spec()?;
    let mut process = read_process(&p.process)?;
    let mut executor = TrenvExecutor {
        exec_stamp: exec_stamp.map(Arc::new),
        ..TrenvExecutor::default()
    };
    if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        executor.filters = seccomp::compile(profile)?;
        executor.deferred_caps = process.capabilities().clone();
        process.set_capabilities(None);
    }
    if super::spec::user_namespaced(&spec) {
        enter_user_namespace_last(&p.at, &mut process, &mut executor)?;
    }
    let adapted = p.process.with_extension("trenv.json");
    let body = serde_json::to_vec(&process).map_err(|e| ContainerError::InvalidSpec {
        path: adapted.display().to_string(),
        reason: e.to_string(),
    })?;
    fs::write(&adapted, body)
        .map_err(ContainerError::io(format!("writing {}", adapted.display())))?;
    // The process must be in the container's `name=systemd` cgroup before its program runs
    // (runc's exec joins every cgroup of the container first): this worker, a one-request
    // fork that exits next, joins it, and the process inherits it. The container's cgroup
    // is its derived spec's, which libcontainer's state follows: a container that took a
    // reserve's instance has the instance's bundle spec but its own cgroup.
    // (A systemd-style path has none on v1, as at Create: only cgroupfs paths are taken.)
    let cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|original| {
            if is_systemd_path(&original) {
                return original;
            }
            p.at.derived_spec()
                .ok()
                .and_then(|d| d.linux().as_ref().and_then(|l| l.cgroups_path().clone()))
                .unwrap_or(original)
        });
    if let Some(named) = NamedSystemd::of(cgroups_path.as_deref(), &p.at.id)
        && let Err(e) = named.join(std::process::id() as i32)
    {
        log::warn!("joining {}: {e}", named.path().display());
    }
    let pid = builder(&p.at, executor, p.console_socket.clone(), stdio)?
        .as_tenant()
        .with_process(Some(&adapted))
        .with_detach(true)
        .build()
        .map_err(ContainerError::lc("starting the exec process"));
    let _ = fs::remove_file(&adapted);
    Ok(pid?.as_raw())
}

/// An exec into a user-namespaced container enters the init's user namespace after every
/// other namespace, from trenv's executor (see [`EnterUserNamespace`]): libcontainer sets
/// the process up as root (so that it can still enter), the executor then takes the
/// process's user there and drops the capabilities.
fn enter_user_namespace_last(
    at: &super::Location,
    process: &mut Process,
    executor: &mut TrenvExecutor,
) -> Result<(), ContainerError> {
    let container = super::lifecycle::load(at)?;
    let pid = container.pid().ok_or(ContainerError::NoInitPid)?;
    let path = format!("/proc/{pid}/ns/user");
    let ns = fs::File::open(&path).map_err(ContainerError::io(format!("opening {path}")))?;
    let user = process.user().clone();
    executor.user_namespace = Some(EnterUserNamespace {
        ns: Arc::new(ns.into()),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
    });
    let root = oci_spec::runtime::UserBuilder::default()
        .uid(0u32)
        .gid(0u32)
        .build()
        .map_err(|e| ContainerError::InvalidSpec {
            path: "process.user".into(),
            reason: e.to_string(),
        })?;
    process.set_user(root);
    if executor.deferred_caps.is_none() {
        executor.deferred_caps = process.capabilities().clone();
        process.set_capabilities(None);
    }
    Ok(())
}

fn read_process(path: &Path) -> Result<Process, ContainerError> {
    let raw = fs::read(path).map_err(ContainerError::io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&raw).map_err(|e| ContainerError::InvalidSpec {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
