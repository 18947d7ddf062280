//! Exec: a new process in a running container (libcontainer's tenant builder), under the
//! container's seccomp profile.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use super::cgroup::NamedSystemd;
use super::executor::TrenvExecutor;
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
    let adapted = p.process.with_extension("trenv.json");
    let body = serde_json::to_vec(&process).map_err(|e| ContainerError::InvalidSpec {
        path: adapted.display().to_string(),
        reason: e.to_string(),
    })?;
    fs::write(&adapted, body)
        .map_err(ContainerError::io(format!("writing {}", adapted.display())))?;
    // The process must be in the container's `name=systemd` cgroup before its program runs
    // (runc's exec joins every cgroup of the container first): this worker, a one-request
    // fork that exits next, joins it, and the process inherits it.
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
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

fn read_process(path: &Path) -> Result<Process, ContainerError> {
    let raw = fs::read(path).map_err(ContainerError::io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&raw).map_err(|e| ContainerError::InvalidSpec {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
