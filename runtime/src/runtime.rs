//! The runtime's one door: [`Runtime`], a typed method per container operation, each run
//! in a fresh worker of the zygote (see [`crate::worker`]). The shim never builds a
//! request or matches a reply; errors come back as [`RuntimeError`], whose
//! [`ErrorKind`] says what containerd should be told.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;

use crate::config::ConfigError;
use crate::container::create::NewContainer;
use crate::container::exec::NewProcess;
use crate::container::rootfs::{Mount, Scratch};
use crate::container::{ContainerError, Location};
use crate::error::{Classified, ErrorKind};
use crate::snapshot::{CheckpointOptions, CriuConfig, Phases, RestorePlan, SnapshotError};
use crate::template::ready::ReadyTemplate;
use crate::template::{MemPoolError, TemplateError};
use crate::worker::protocol::{Reply, Request, StdioSlots};
use crate::worker::{WorkerError, Zygote};

/// Errors of the runtime: each domain's, composed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    MemPool(#[from] MemPoolError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Criu(#[from] trenv_criu::CriuError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl From<crate::container::cgroup::CgroupError> for RuntimeError {
    fn from(e: crate::container::cgroup::CgroupError) -> Self {
        RuntimeError::Container(e.into())
    }
}

impl Classified for RuntimeError {
    fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::Worker(e) => e.kind(),
            RuntimeError::Container(e) => e.kind(),
            RuntimeError::Snapshot(e) => e.kind(),
            RuntimeError::Template(e) => e.kind(),
            RuntimeError::MemPool(e) => e.kind(),
            RuntimeError::Config(e) => e.kind(),
            RuntimeError::Criu(e) => e.kind(),
            RuntimeError::Sandbox(e) => e.kind(),
        }
    }
}

impl RuntimeError {
    /// What containerd should be told (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        Classified::kind(self)
    }
}

/// The descriptors a new process gets: stdio (`None` is /dev/null) and the pipe into which
/// it writes the time just before it execs its program (metering's start).
#[derive(Default, Clone, Copy)]
pub struct ChildFds<'a> {
    pub stdin: Option<&'a OwnedFd>,
    pub stdout: Option<&'a OwnedFd>,
    pub stderr: Option<&'a OwnedFd>,
    pub exec_stamp: Option<&'a OwnedFd>,
}

impl<'a> ChildFds<'a> {
    /// stdio from an array of three.
    pub fn stdio(fds: &'a [Option<OwnedFd>; 3]) -> ChildFds<'a> {
        ChildFds {
            stdin: fds[0].as_ref(),
            stdout: fds[1].as_ref(),
            stderr: fds[2].as_ref(),
            exec_stamp: None,
        }
    }

    /// The descriptors in the order they are sent, and where each one is.
    fn slots(&self) -> (Vec<&'a dyn AsFd>, StdioSlots) {
        let mut fds: Vec<&'a dyn AsFd> = Vec::new();
        let mut slot = |fd: Option<&'a OwnedFd>| {
            fd.map(|fd| {
                fds.push(fd);
                fds.len() - 1
            })
        };
        let slots = StdioSlots {
            stdin: slot(self.stdin),
            stdout: slot(self.stdout),
            stderr: slot(self.stderr),
            exec_stamp: slot(self.exec_stamp),
        };
        (fds, slots)
    }
}

/// A restored init and where its restore spent its time.
#[derive(Debug)]
pub struct Restored {
    pub pid: i32,
    pub phases: Phases,
}

/// A checkpoint to take: where the images and CRIU's scratch files go, and how.
pub struct CheckpointRequest<'a> {
    pub images: &'a Path,
    pub work: &'a Path,
    pub options: CheckpointOptions,
    pub criu: CriuConfig,
}

/// The shim's handle on the runtime.
pub struct Runtime {
    zygote: Zygote,
}

impl Runtime {
    /// Forks the runtime's zygote.
    ///
    /// # Safety
    /// The calling process must be single-threaded: the zygote is a copy of it and must be
    /// able to fork again safely for each request.
    pub unsafe fn fork() -> Result<Runtime, RuntimeError> {
        // SAFETY: the caller guarantees a single-threaded process.
        let zygote = unsafe { Zygote::fork() }?;
        Ok(Runtime { zygote })
    }

    /// The zygote's pid (so the shim can recognise its exit).
    pub fn pid(&self) -> Pid {
        self.zygote.pid()
    }

    /// Stops the zygote and waits (at most `timeout`) until it is reaped.
    pub fn terminate(&self, timeout: Duration) {
        self.zygote.terminate(timeout)
    }

    fn call(&self, req: Request, fds: &[&dyn AsFd]) -> Result<Reply, RuntimeError> {
        Ok(self.zygote.call(&req, fds)?)
    }

    fn call_done(&self, req: Request) -> Result<(), RuntimeError> {
        match self.call(req, &[])? {
            Reply::Done => Ok(()),
            other => Err(unexpected("done", &other)),
        }
    }

    /// Creates a container's init process (it waits for [`Runtime::start`]); its pid.
    pub fn create(&self, container: NewContainer, fds: ChildFds<'_>) -> Result<i32, RuntimeError> {
        let (fds, stdio) = fds.slots();
        match self.call(Request::Create { container, stdio }, &fds)? {
            Reply::Pid(pid) => Ok(pid),
            other => Err(unexpected("a pid", &other)),
        }
    }

    /// Releases the init process created by [`Runtime::create`].
    pub fn start(&self, at: &Location) -> Result<(), RuntimeError> {
        self.call_done(Request::Start { at: at.clone() })
    }

    /// Starts a process in a running container; its pid.
    pub fn exec(&self, process: NewProcess, fds: ChildFds<'_>) -> Result<i32, RuntimeError> {
        let (fds, stdio) = fds.slots();
        match self.call(Request::Exec { process, stdio }, &fds)? {
            Reply::Pid(pid) => Ok(pid),
            other => Err(unexpected("a pid", &other)),
        }
    }

    pub fn pause(&self, at: &Location) -> Result<(), RuntimeError> {
        self.call_done(Request::Pause { at: at.clone() })
    }

    pub fn resume(&self, at: &Location) -> Result<(), RuntimeError> {
        self.call_done(Request::Resume { at: at.clone() })
    }

    /// Removes the container; `unmount_rootfs` when trenv mounted its rootfs.
    pub fn delete(&self, at: &Location, unmount_rootfs: bool) -> Result<(), RuntimeError> {
        self.call_done(Request::Delete {
            at: at.clone(),
            unmount_rootfs,
        })
    }

    /// Dumps the container with CRIU.
    pub fn checkpoint(&self, at: &Location, c: CheckpointRequest<'_>) -> Result<(), RuntimeError> {
        self.call_done(Request::Checkpoint {
            at: at.clone(),
            images: c.images.to_path_buf(),
            work: c.work.to_path_buf(),
            options: c.options,
            criu: c.criu,
        })
    }

    /// Create of a container that Start restores: its rootfs and spec (joining the
    /// namespaces of `sandbox`, a sandbox of the pool, if given).
    pub fn prepare_restore(
        &self,
        at: &Location,
        rootfs: &[Mount],
        sandbox: Option<&crate::sandbox::Joinable>,
        scratch: Option<Scratch>,
    ) -> Result<Phases, RuntimeError> {
        let req = Request::PrepareRestore {
            at: at.clone(),
            rootfs: rootfs.to_vec(),
            sandbox: sandbox.cloned(),
            scratch,
        };
        match self.call(req, &[])? {
            Reply::Prepared(phases) => Ok(phases),
            other => Err(unexpected("a prepared restore", &other)),
        }
    }

    /// Start of such a container: CRIU restores its processes.
    pub fn restore(
        &self,
        at: &Location,
        plan: &RestorePlan,
        console_socket: Option<PathBuf>,
        fds: ChildFds<'_>,
        criu: &CriuConfig,
    ) -> Result<Restored, RuntimeError> {
        let (fds, stdio) = fds.slots();
        let req = Request::Restore {
            at: at.clone(),
            plan: plan.clone(),
            console_socket,
            stdio,
            criu: criu.clone(),
        };
        match self.call(req, &fds)? {
            Reply::Restored { pid, phases } => Ok(Restored { pid, phases }),
            other => Err(unexpected("a restore", &other)),
        }
    }

    /// Has a spare restorer made ahead of a restore that is coming (worker/spare.rs): the
    /// restore then neither forks a worker nor starts CRIU. `always`: after each restore
    /// that takes it, another (a shim serving many containers). Nothing if `criu` names no
    /// usable CRIU (the restore will say why), one that cannot start ahead, or one is
    /// kept already.
    pub fn keep_spare_restorer(&self, criu: &CriuConfig, always: bool) -> Result<(), RuntimeError> {
        match criu.criu() {
            Ok(c) if !crate::worker::spare::refuses(&c) => {
                Ok(self.zygote.keep_spare(c.path(), always)?)
            }
            _ => Ok(()),
        }
    }

    /// Makes template `template` of the running container; one line on what it holds.
    pub fn make_template(
        &self,
        at: &Location,
        template: &ReadyTemplate,
        criu: &CriuConfig,
    ) -> Result<String, RuntimeError> {
        let req = Request::MakeTemplate {
            at: at.clone(),
            template: template.clone(),
            criu: criu.clone(),
        };
        match self.call(req, &[])? {
            Reply::Template(summary) => Ok(summary),
            other => Err(unexpected("a template", &other)),
        }
    }
}

fn unexpected(asked: &'static str, got: &Reply) -> RuntimeError {
    WorkerError::UnexpectedReply {
        asked,
        got: got.name(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RemoteError;

    #[test]
    fn only_the_given_descriptors_are_sent_and_their_slots_follow_them() {
        let null = || crate::sys::dev_null().unwrap();
        let (out, stamp) = (null(), null());
        let fds = ChildFds {
            stdout: Some(&out),
            exec_stamp: Some(&stamp),
            ..Default::default()
        };
        let (sent, slots) = fds.slots();
        assert_eq!(sent.len(), 2);
        assert_eq!(slots.stdin, None);
        assert_eq!(slots.stdout, Some(0));
        assert_eq!(slots.stderr, None);
        assert_eq!(slots.exec_stamp, Some(1));
    }

    #[test]
    fn an_error_from_a_worker_keeps_its_kind() {
        let bad = ContainerError::InvalidSpec {
            path: "/b/config.json".into(),
            reason: "missing args".into(),
        };
        let remote = RemoteError::of(bad);
        let wire = serde_json::to_string(&remote).unwrap();
        let back: RemoteError = serde_json::from_str(&wire).unwrap();
        let e = RuntimeError::from(WorkerError::from(back));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.to_string().contains("fix the container's configuration"),
            "{e}"
        );
    }
}
