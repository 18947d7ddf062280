//! Delete: libcontainer's state and cgroup, the rootfs mount, trenv's state directory.
//! Every step is tried; the first failure is reported.

use std::fs;

use libcontainer::container::Container;

use super::{ContainerError, Location, rootfs};

/// Removes the container at `at`; `unmount_rootfs` when trenv mounted its rootfs.
pub fn delete(at: &Location, unmount_rootfs: bool) -> Result<(), ContainerError> {
    let mut first_err = None;
    if at.container_dir().exists() {
        match Container::load(at.container_dir()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    first_err = Some(ContainerError::lc("deleting the container")(e));
                }
            }
            Err(e) => first_err = Some(ContainerError::lc("loading the container's state")(e)),
        }
    }
    if unmount_rootfs && let Err(e) = rootfs::unmount(&at.rootfs()) {
        first_err.get_or_insert(e.into());
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
