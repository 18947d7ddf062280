//! The descriptors a container process gets, and libcontainer's builder set up with them.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use super::executor::TrenvExecutor;
use super::{ContainerError, Location};

/// stdin, stdout and stderr of a process; `None` is /dev/null.
pub type StdioFds = [Option<OwnedFd>; 3];

/// libcontainer's builder for the container at `at`. With a console socket the process
/// gets the pty as stdio; the descriptors set here are replaced by it.
pub(super) fn builder(
    at: &Location,
    executor: TrenvExecutor,
    console_socket: Option<PathBuf>,
    stdio: StdioFds,
) -> Result<ContainerBuilder, ContainerError> {
    let [stdin, stdout, stderr] = stdio;
    let devnull = || crate::sys::dev_null().map_err(ContainerError::io("opening /dev/null"));
    Ok(ContainerBuilder::new(at.id.clone(), SyscallType::Linux)
        .with_root_path(at.state_root.clone())
        .map_err(ContainerError::lc("preparing the state directory"))?
        .with_executor(executor)
        .with_console_socket(console_socket)
        .with_stdin(stdin.map_or_else(devnull, Ok)?)
        .with_stdout(stdout.map_or_else(devnull, Ok)?)
        .with_stderr(stderr.map_or_else(devnull, Ok)?))
}
