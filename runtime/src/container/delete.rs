//! Delete: libcontainer's state and cgroup, the rootfs mount, trenv's state directory.
//! Every step is tried; the first failure is reported.
//!
//! Delete must clean up whether or not libcontainer's state was ever written: a restore
//! whose worker died after CRIU restored the function leaves a running process tree in the
//! container's cgroup, CRIU's root bind mount, and no state. So whatever libcontainer did
//! not remove is swept from the spec: every process in the container's cgroup killed, the
//! cgroup removed, leftover mounts below the state directory detached.

use std::fs;
use std::time::Duration;

use libcontainer::container::Container;
use nix::mount::{MntFlags, umount2};

use super::cgroup::{Cgroup, NamedSystemd, is_systemd_path};
use super::{ContainerError, Location, rootfs};

/// How long killed processes get to leave the cgroup.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// Removes the container at `at`; `unmount_rootfs` when trenv mounted its rootfs.
pub fn delete(at: &Location, unmount_rootfs: bool) -> Result<(), ContainerError> {
    let mut first_err = None;
    let mut swept = false;
    if at.container_dir().exists() {
        match Container::load(at.container_dir()) {
            Ok(mut c) => match c.delete(true) {
                Ok(()) => swept = true,
                Err(e) => first_err = Some(ContainerError::lc("deleting the container")(e)),
            },
            // Unreadable state: the sweep below does the work.
            Err(e) => log::warn!(
                "container {}: {}",
                at.id,
                ContainerError::lc("loading the container's state")(e)
            ),
        }
    }
    if !swept && let Err(e) = sweep(at) {
        log::warn!("container {}: {e}", at.id);
    }
    // The `name=systemd` cgroup, empty now that the container's processes are gone
    // (libcontainer neither made nor removes it).
    if let Ok(spec) = at.derived_spec().or_else(|_| at.spec()) {
        let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        if let Some(named) = NamedSystemd::of(path.as_deref(), &at.id) {
            named.remove();
        }
    }
    // What a restore left mounted (CRIU's root, a template's images: a worker killed
    // mid-restore, or one unmounting them after it answered) goes before the rootfs it
    // binds.
    unmount_restore_binds(&at.state_root);
    if unmount_rootfs && let Err(e) = rootfs::unmount(&at.rootfs()) {
        first_err.get_or_insert(e.into());
    }
    // The scratch tmpfs holding the rootfs's writable layer, once the overlay is gone.
    let _ = umount2(&rootfs::scratch_dir(&at.state_root), MntFlags::MNT_DETACH);
    // Idmapped mounts a create that did not finish left (removing the state below a
    // mount would reach into what it shows).
    for dir in [at.idmap_dir(), rootfs::idmapped_layers_dir(&at.rootfs())] {
        if let Err(e) = super::idmap::sweep(&dir) {
            return Err(e.into());
        }
    }
    if let Err(e) = fs::remove_dir_all(&at.state_root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        first_err.get_or_insert(ContainerError::Io {
            context: format!("removing {}", at.state_root.display()),
            source: e,
        });
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Detaches the binds of restores below `state` (`criu-root-PID`, `criu-images-PID`).
fn unmount_restore_binds(state: &std::path::Path) {
    use crate::snapshot::restore::{IMAGES_BIND, ROOT_BIND};
    let Ok(entries) = fs::read_dir(state) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if [ROOT_BIND, IMAGES_BIND]
            .iter()
            .any(|b| name.strip_prefix(b).is_some_and(|r| r.starts_with('-')))
        {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
}

/// Kills every process in the container's cgroup (as the spec names it) and removes the
/// cgroup; nothing to do when it does not exist.
fn sweep(at: &Location) -> Result<(), ContainerError> {
    let spec = at.derived_spec().or_else(|_| at.spec())?;
    let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    // A path of systemd's form that the systemd driver cannot serve here was a plain
    // cgroupfs path (see create.rs `plain_cgroups_path`).
    let systemd = path.as_deref().is_some_and(is_systemd_path) && Cgroup::check(true).is_ok();
    let Ok(cgroup) = Cgroup::open(path.as_deref(), &at.id, systemd) else {
        return Ok(());
    };
    cgroup.kill_all(KILL_PATIENCE);
    cgroup.remove()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(path: &std::path::Path) -> bool {
        let p = path.display().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
    }

    /// Delete detaches the binds every restore of the container left (a worker killed
    /// mid-restore, or one still unmounting after it answered), whichever worker made
    /// them, and no other mount below the state directory.
    #[test]
    fn the_binds_of_every_restore_are_detached_and_nothing_else() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let state = dir.path().join("state");
        fs::create_dir_all(&source).unwrap();
        let names = [
            "criu-root-17",
            "criu-images-17",
            "criu-root-23",
            "criu-rootfs",
        ];
        for n in names {
            let at = state.join(n);
            fs::create_dir_all(&at).unwrap();
            nix::mount::mount(
                Some(&source),
                &at,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        }
        unmount_restore_binds(&state);
        let left: Vec<_> = names.iter().filter(|n| mounted(&state.join(n))).collect();
        let _ = umount2(&state.join("criu-rootfs"), MntFlags::MNT_DETACH);
        assert_eq!(left, [&"criu-rootfs"]);
    }
}
