//! Create: the spec checked (before anything is made), the rootfs mounted, the spec derived
//! for libcontainer, a missing working directory made in the root as runc makes it, the
//! init process created and waiting for Start. Also the Create of a container that a checkpoint or template
//! restores at Start (rootfs and spec only). Nothing is left behind on failure.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rootfs::{self, Mount};
use super::spec::{derive, ensure_cwd, validate};
use super::stdio::builder;
use super::{ContainerError, Location, StdioFds};

/// A container to create, as the shim describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewContainer {
    pub at: Location,
    /// Rootfs mounts handed over by containerd; empty when the bundle's rootfs is ready.
    pub rootfs: Vec<Mount>,
    pub systemd_cgroup: bool,
    /// Where the init's pty master is sent (a terminal was asked for).
    pub console_socket: Option<PathBuf>,
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
    let mounted = mount_rootfs(at, &c.rootfs)?;
    let result = (|| {
        let (derived, mut executor) = derive(spec, &at.bundle)?;
        ensure_cwd(&derived)?;
        executor.exec_stamp = exec_stamp.map(Arc::new);
        let dir = at.save_derived(&derived)?;
        let container = builder(at, executor, c.console_socket.clone(), stdio)?
            .validate_id()
            .map_err(ContainerError::lc("checking the container id"))?
            .as_init(&dir)
            .with_systemd(c.systemd_cgroup)
            .with_detach(true)
            .build()
            .map_err(ContainerError::lc("creating the container"))?;
        let pid = container.pid().ok_or(ContainerError::NoInitPid)?;
        Ok(pid.as_raw())
    })();
    if result.is_err() {
        undo(at, mounted);
    }
    result
}

/// Create of a container restored at Start: mounts the rootfs and records the derived
/// spec (what exec and delete read later); the processes come from CRIU.
pub fn prepare_restore(at: &Location, mounts: &[Mount]) -> Result<(), ContainerError> {
    let spec = at.spec()?;
    validate(&spec)?;
    let mounted = mount_rootfs(at, mounts)?;
    // The seccomp filters and capabilities of a restored process come from the image.
    let result = derive(spec, &at.bundle).and_then(|(derived, _)| at.save_derived(&derived));
    if result.is_err() {
        undo(at, mounted);
    }
    result.map(|_| ())
}

/// Mounts containerd's rootfs mounts, if any; says whether it did.
fn mount_rootfs(at: &Location, mounts: &[Mount]) -> Result<bool, ContainerError> {
    if mounts.is_empty() {
        return Ok(false);
    }
    rootfs::mount_all(mounts, &at.rootfs())?;
    Ok(true)
}

/// Removes what a failed create made.
fn undo(at: &Location, mounted: bool) {
    let _ = fs::remove_dir_all(&at.state_root);
    if mounted {
        let _ = rootfs::unmount(&at.rootfs());
    }
}
