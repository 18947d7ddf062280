//! Start, pause and resume of a created container: libcontainer's own verbs on its state.

use libcontainer::container::Container;

use super::{ContainerError, Location};

/// libcontainer's state of the container at `at`.
pub(crate) fn load(at: &Location) -> Result<Container, ContainerError> {
    Container::load(at.container_dir()).map_err(ContainerError::lc("loading the container's state"))
}

/// Releases the init process created at Create.
pub fn start(at: &Location) -> Result<(), ContainerError> {
    load(at)?
        .start()
        .map_err(ContainerError::lc("starting the container"))
}

/// Freezes every process of the container.
pub fn pause(at: &Location) -> Result<(), ContainerError> {
    load(at)?
        .pause()
        .map_err(ContainerError::lc("pausing the container"))
}

/// Thaws a paused container.
pub fn resume(at: &Location) -> Result<(), ContainerError> {
    load(at)?
        .resume()
        .map_err(ContainerError::lc("resuming the container"))
}
