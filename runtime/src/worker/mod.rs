//! The zygote: a single-threaded process forked from the shim before any thread exists.
//!
//! libcontainer clones processes, changes the working directory of the whole process (for
//! its notify and console sockets) and waits for its own children. Inside the shim, which
//! runs a multi-threaded ttrpc server and reaps every child with `waitpid(-1)`, each of these
//! is a bug waiting to happen. So every libcontainer operation runs in a *worker*: a fresh
//! fork of the zygote that handles exactly one [`Request`] and exits.
//!
//! A restore may instead go to a *spare restorer* forked ahead, whose CRIU was started
//! ahead too ([`spare`]); the shim asks for one when a restore is coming.
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
pub(crate) mod spare;
mod wire;

use protocol::{Reply, Request};
use wire::{read_frame, write_frame};

/// Most file descriptors a single request may carry (reply socket + stdio).
const MAX_FDS: usize = 8;

/// The first byte of a message to the zygote: fork a worker for the request that follows
/// on the reply socket it carries…
const RUN: u8 = b'r';
/// … the same for a restore, which a ready spare restorer takes instead (spare.rs)…
const RESTORE: u8 = b'R';
/// … or keep a spare restorer of the CRIU binary whose path follows…
const SPARE: u8 = b'P';
/// … and another after each restore that takes one.
const SPARES: u8 = b'A';
/// How long the zygote waits for quiet (no message) before it replaces a spare a restore
/// took: not while that restore runs on the node's few CPUs.
const RESPARE_AFTER_MS: u16 = 50;
/// Longest message to the zygote: a tag and a path.
const MAX_MESSAGE: usize = 1 + 4096;
/// How long a restore waits for a spare restorer that is starting (it starts in ~2 ms,
/// longer when the CPUs are busy) before a worker is forked for it instead: a spare that
/// started earlier is ready sooner than a new CRIU would be, and starting both would spend
/// the CPU twice.
const SPARE_WAIT_MS: u16 = 100;
/// Spares that die before they are ready (a CRIU without trenv's patch) after which the
/// zygote makes no more.
const SPARE_FAILURES: u32 = 2;

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

    /// Asks the zygote to keep a spare restorer of the CRIU binary at `criu` (spare.rs),
    /// if it has none yet.
    pub(crate) fn keep_spare(
        &self,
        criu: &std::path::Path,
        always: bool,
    ) -> Result<(), WorkerError> {
        use std::os::unix::ffi::OsStrExt;
        let mut msg = vec![if always { SPARES } else { SPARE }];
        msg.extend_from_slice(criu.as_os_str().as_bytes());
        if msg.len() > MAX_MESSAGE {
            return Ok(());
        }
        let ctrl = self.ctrl.lock().map_err(|_| WorkerError::Poisoned)?;
        nix::sys::socket::send(ctrl.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL).map_err(
            |source| WorkerError::ZygoteGone {
                context: "asking for a spare restorer",
                source,
            },
        )?;
        Ok(())
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
        let tag = match req {
            Request::Restore { .. } => RESTORE,
            _ => RUN,
        };
        {
            let ctrl = self.ctrl.lock().map_err(|_| WorkerError::Poisoned)?;
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(
                ctrl.as_raw_fd(),
                &[IoSlice::new(&[tag])],
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
    let mut spares = Spares::default();
    loop {
        // A spare to replace once quiet; once idle for a while, unmap the code that served
        // the last requests.
        let respare = spares.wanted();
        let timeout = if respare {
            nix::poll::PollTimeout::from(RESPARE_AFTER_MS)
        } else if trimmed {
            nix::poll::PollTimeout::NONE
        } else {
            nix::poll::PollTimeout::from(crate::node::trim::IDLE_MS)
        };
        let (ctrl_ready, spare_ready) = {
            let mut pfd = vec![nix::poll::PollFd::new(
                ctrl.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if let Some(s) = &spares.spare {
                pfd.push(nix::poll::PollFd::new(
                    s.sock.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            match nix::poll::poll(&mut pfd, timeout) {
                Ok(0) if respare => {
                    spares.replace(&ctrl);
                    continue;
                }
                Ok(0) => {
                    crate::node::trim::read_only_file_pages();
                    trimmed = true;
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => exit(1),
            }
            let ready = |p: &nix::poll::PollFd<'_>| p.any().unwrap_or(false);
            (ready(&pfd[0]), pfd.get(1).is_some_and(ready))
        };
        if spare_ready {
            spares.heard();
        }
        if !ctrl_ready {
            continue;
        }
        let mut msg = [0u8; MAX_MESSAGE];
        let mut iov = [IoSliceMut::new(&mut msg)];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (bytes, fds): (usize, Vec<OwnedFd>) = match recvmsg::<()>(
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
                (msg.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => exit(1),
        };
        trimmed = false;
        let tag = msg.first().copied().unwrap_or(RUN);
        if tag == SPARE || tag == SPARES {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&msg[1..bytes]));
            if tag == SPARES {
                spares.always = Some(path.to_path_buf());
            }
            spares.keep(path, &ctrl);
            continue;
        }
        if fds.is_empty() {
            continue;
        }
        let fds = if tag == RESTORE {
            match spares.hand(fds) {
                Ok(()) => continue,
                Err(fds) => fds,
            }
        } else {
            fds
        };
        // SAFETY: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: restoring the default disposition is async-signal-safe.
                let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
                // SAFETY: see above.
                unsafe { libc::prctl(libc::PR_SET_NAME, c"trenv-worker".as_ptr()) };
                drop(ctrl);
                // The spare is the zygote's, not this worker's: its socket closes here.
                drop(spares);
                worker_main(fds)
            }
            Ok(ForkResult::Parent { .. }) => drop(fds),
            Err(_) => drop(fds), // the shim sees EOF on its reply socket
        }
    }
}

/// The zygote's spare restorer (spare.rs), at most one.
#[derive(Default)]
struct Spares {
    spare: Option<Spare>,
    /// Spares that died before they were ready.
    failures: u32,
    /// The CRIU binary of which a spare is kept at all times (a shared shim).
    always: Option<std::path::PathBuf>,
}

struct Spare {
    criu: std::path::PathBuf,
    /// The zygote's end of the spare's socket.
    sock: OwnedFd,
    ready: bool,
}

impl Spares {
    /// Forks a spare for `criu` unless one is there (one of another binary is replaced),
    /// or spares keep failing.
    fn keep(&mut self, criu: &std::path::Path, ctrl: &OwnedFd) {
        if self.spare.as_ref().is_some_and(|s| s.criu == criu) || self.failures >= SPARE_FAILURES {
            return;
        }
        self.spare = None;
        let Ok((mine, theirs)) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) else {
            return;
        };
        // SAFETY: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: as for a worker; and the spare must not outlive the zygote.
                unsafe {
                    let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
                    libc::prctl(libc::PR_SET_NAME, c"trenv-spare".as_ptr());
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                // SAFETY: closing descriptors this child owns a copy of.
                unsafe { libc::close(ctrl.as_raw_fd()) };
                drop(mine);
                spare::spare_main(theirs, criu.to_path_buf())
            }
            Ok(ForkResult::Parent { .. }) => {
                self.spare = Some(Spare {
                    criu: criu.to_path_buf(),
                    sock: mine,
                    ready: false,
                });
            }
            Err(_) => {}
        }
    }

    /// Whether a spare kept at all times is missing.
    fn wanted(&self) -> bool {
        self.always.is_some() && self.spare.is_none() && self.failures < SPARE_FAILURES
    }

    /// Makes the spare kept at all times again.
    fn replace(&mut self, ctrl: &OwnedFd) {
        if let Some(path) = self.always.clone() {
            self.keep(&path, ctrl);
        }
    }

    /// The spare said something: it is ready, or it is gone.
    fn heard(&mut self) {
        let Some(s) = &mut self.spare else { return };
        let mut buf = [0u8; 16];
        match nix::sys::socket::recv(s.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n > 0 => s.ready = true,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            _ => {
                if !s.ready {
                    self.failures += 1;
                }
                self.spare = None;
            }
        }
    }

    /// Gives a restore's descriptors to the spare, waiting briefly for one that starts;
    /// gives them back when there is no spare ready to take them.
    fn hand(&mut self, fds: Vec<OwnedFd>) -> Result<(), Vec<OwnedFd>> {
        if self.spare.as_ref().is_some_and(|s| !s.ready) {
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_millis(SPARE_WAIT_MS.into());
            while let Some(s) = self.spare.as_ref().filter(|s| !s.ready) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut pfd = [nix::poll::PollFd::new(
                    s.sock.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(SPARE_WAIT_MS);
                match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
                    Ok(0) => break,
                    Ok(_) => self.heard(),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        }
        let Some(s) = self.spare.take_if(|s| s.ready) else {
            return Err(fds);
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        match sendmsg::<()>(
            s.sock.as_raw_fd(),
            &[IoSlice::new(b"h")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => Ok(()),
            Err(_) => Err(fds),
        }
    }
}

fn worker_main(mut fds: Vec<OwnedFd>) -> ! {
    let reply = fds.remove(0);
    let mut stream = UnixStream::from(reply);
    let mut after = dispatch::AfterReply::new();
    let answer = match read_frame(&mut stream) {
        Ok(frame) => match serde_json::from_slice::<Request>(&frame) {
            Ok(req) => match dispatch::handle(req, fds, &mut after) {
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
    drop(stream);
    for f in after {
        f();
    }
    exit(code)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and skips atexit handlers, which belong to the shim.
    unsafe { libc::_exit(code) }
}
