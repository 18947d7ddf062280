//! The zygote: a single-threaded process forked from the shim before any thread exists.
//!
//! libcontainer clones processes, changes the working directory of the whole process (for
//! its notify and console sockets) and waits for its own children. Inside the shim, which
//! runs a multi-threaded ttrpc server and reaps every child with `waitpid(-1)`, each of these
//! is a bug waiting to happen. So every libcontainer operation runs in a *worker*: a fresh
//! fork of the zygote that handles exactly one [`Request`] and exits.
//!
//! The wire is in [`wire`].
//!
//! The shim never sees this protocol: [`crate::Runtime`] is its door, one typed method per
//! operation; [`protocol`] and [`dispatch`] are private to the runtime. An error raised in
//! a worker comes back as a [`RemoteError`] with its [`ErrorKind`].
//!
//! A container process that a worker creates is re-parented to the shim (a child
//! subreaper) when the worker exits, so the shim sees its exit status.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork};
use serde::{Deserialize, Serialize};

use crate::error::{Classified, ErrorKind, RemoteError};

mod dispatch;
pub(crate) mod protocol;
mod wire;

use protocol::{Reply, Request};
use wire::{read_frame, write_frame};

/// Most file descriptors a single request may carry (reply socket + stdio).
const MAX_FDS: usize = 8;

/// The zygote or a worker failed to carry a request or its answer.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the runtime zygote is gone (the shim must be restarted): {context}: {source}")]
    ZygoteGone {
        context: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(
        "the runtime zygote is gone (the shim must be restarted): control socket lock poisoned"
    )]
    Poisoned,
    #[error(
        "protocol error talking to the runtime zygote: too many file descriptors for one request ({0})"
    )]
    TooManyFds(usize),
    #[error("protocol error talking to the runtime zygote: {context}: {source}")]
    Frame {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol error talking to the runtime zygote: {context}: {source}")]
    Json {
        context: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the runtime worker died before it answered ({0}); see the shim log")]
    Died(#[source] std::io::Error),
    #[error("protocol error talking to the runtime zygote: descriptor {0} missing")]
    MissingFd(usize),
    #[error("protocol error talking to the runtime zygote: a worker answered {got} to {asked}")]
    UnexpectedReply {
        asked: &'static str,
        got: &'static str,
    },
    /// The operation itself failed in the worker.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl Classified for WorkerError {
    fn kind(&self) -> ErrorKind {
        match self {
            WorkerError::Remote(e) => e.kind,
            _ => ErrorKind::Internal,
        }
    }
}

/// The shim's handle on its zygote.
pub struct Zygote {
    ctrl: Mutex<OwnedFd>,
    pid: Pid,
}

#[derive(Serialize, Deserialize)]
enum WireReply {
    Ok(Reply),
    Err(RemoteError),
}

impl Zygote {
    /// Forks the zygote.
    ///
    /// # Safety
    /// The calling process must be single-threaded: the zygote is a copy of it and must be
    /// able to fork again safely for each request.
    pub unsafe fn fork() -> Result<Zygote, WorkerError> {
        let (shim_end, zygote_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|source| WorkerError::ZygoteGone {
            context: "creating the zygote's control socket",
            source,
        })?;
        let parent = nix::unistd::getpid();
        // SAFETY: the caller guarantees a single-threaded process.
        let forked = unsafe { fork() }.map_err(|source| WorkerError::ZygoteGone {
            context: "forking the runtime zygote",
            source,
        })?;
        match forked {
            ForkResult::Parent { child } => {
                drop(zygote_end);
                Ok(Zygote {
                    ctrl: Mutex::new(shim_end),
                    pid: child,
                })
            }
            ForkResult::Child => {
                drop(shim_end);
                zygote_main(zygote_end, parent)
            }
        }
    }

    /// The zygote's pid (so the shim can recognise its exit).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Stops the zygote and waits (at most `timeout`) until its parent reaped it, so that it
    /// does not outlive the shim as a zombie of init.
    pub fn terminate(&self, timeout: std::time::Duration) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if nix::sys::signal::kill(self.pid, None).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Runs `req` in a new worker and waits for its reply. `fds` are passed to the worker
    /// in order; the request refers to them by index.
    pub(crate) fn call(&self, req: &Request, fds: &[&dyn AsFd]) -> Result<Reply, WorkerError> {
        if fds.len() + 1 > MAX_FDS {
            return Err(WorkerError::TooManyFds(fds.len()));
        }
        let (mine, theirs) = UnixStream::pair().map_err(|source| WorkerError::Frame {
            context: "creating a reply socket",
            source,
        })?;
        let mut raw: Vec<RawFd> = vec![theirs.as_raw_fd()];
        raw.extend(fds.iter().map(|f| f.as_fd().as_raw_fd()));
        {
            let ctrl = self.ctrl.lock().map_err(|_| WorkerError::Poisoned)?;
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(
                ctrl.as_raw_fd(),
                &[IoSlice::new(b"r")],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(|source| WorkerError::ZygoteGone {
                context: "sending a request",
                source,
            })?;
        }
        drop(theirs);
        let mut stream = mine;
        let body = serde_json::to_vec(req).map_err(|source| WorkerError::Json {
            context: "encoding a request",
            source,
        })?;
        write_frame(&mut stream, &body).map_err(|source| WorkerError::Frame {
            context: "sending a request to a worker",
            source,
        })?;
        let frame = read_frame(&mut stream).map_err(WorkerError::Died)?;
        match serde_json::from_slice::<WireReply>(&frame).map_err(|source| WorkerError::Json {
            context: "bad reply from a worker",
            source,
        })? {
            WireReply::Ok(r) => Ok(r),
            WireReply::Err(e) => Err(e.into()),
        }
    }
}

fn zygote_main(ctrl: OwnedFd, parent: Pid) -> ! {
    // Die with the shim; a zygote must never outlive it.
    // SAFETY: prctl with these arguments has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"trenv-zygote".as_ptr());
    }
    if nix::unistd::getppid() != parent {
        exit(0);
    }
    // containerd reads the shim's stdout until EOF to learn its address: the zygote must
    // not keep that pipe (or any other of the shim's stdio) open.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
    // Workers are reaped automatically; each worker restores the default disposition.
    // SAFETY: installing SIG_IGN is async-signal-safe.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    let mut trimmed = false;
    loop {
        // Once idle for a while, unmap the code that served the last requests.
        if !trimmed {
            let mut pfd = [nix::poll::PollFd::new(
                ctrl.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if let Ok(0) = nix::poll::poll(&mut pfd, crate::node::trim::IDLE_MS) {
                crate::node::trim::read_only_file_pages();
                trimmed = true;
                continue;
            }
        }
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let fds: Vec<OwnedFd> = match recvmsg::<()>(
            ctrl.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.extend(
                                raw.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                if msg.bytes == 0 && fds.is_empty() {
                    exit(0); // the shim closed the control socket
                }
                fds
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => exit(1),
        };
        if fds.is_empty() {
            continue;
        }
        trimmed = false;
        // SAFETY: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: restoring the default disposition is async-signal-safe.
                let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
                // SAFETY: see above.
                unsafe { libc::prctl(libc::PR_SET_NAME, c"trenv-worker".as_ptr()) };
                drop(ctrl);
                worker_main(fds)
            }
            Ok(ForkResult::Parent { .. }) => drop(fds),
            Err(_) => drop(fds), // the shim sees EOF on its reply socket
        }
    }
}

fn worker_main(mut fds: Vec<OwnedFd>) -> ! {
    let reply = fds.remove(0);
    let mut stream = UnixStream::from(reply);
    let answer = match read_frame(&mut stream) {
        Ok(frame) => match serde_json::from_slice::<Request>(&frame) {
            Ok(req) => match dispatch::handle(req, fds) {
                Ok(r) => WireReply::Ok(r),
                Err(e) => WireReply::Err(e),
            },
            Err(e) => WireReply::Err(RemoteError {
                kind: ErrorKind::Internal,
                message: format!("malformed request: {e}"),
            }),
        },
        Err(_) => exit(1),
    };
    let body = serde_json::to_vec(&answer).unwrap_or_else(|_| {
        br#"{"Err":{"kind":"Internal","message":"unencodable reply"}}"#.to_vec()
    });
    let code = if write_frame(&mut stream, &body).is_ok() {
        0
    } else {
        1
    };
    exit(code)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and skips atexit handlers, which belong to the shim.
    unsafe { libc::_exit(code) }
}
