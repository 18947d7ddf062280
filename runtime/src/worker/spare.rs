//! A spare restorer: a worker forked ahead of a restore, whose `criu swrk` was started
//! ahead too ([`trenv_criu::Criu::ahead`]) and has probed the kernel. The zygote hands it
//! the next restore's descriptors instead of forking a worker, and the restore's CRIU
//! gets the request and its descriptors at once: neither fork, nor CRIU's exec and
//! start-up, nor its kernel probe (~2 ms together) are on the restore's path.
//!
//! The zygote keeps one when the shim asks ([`super::Zygote::keep_spare`]: a container
//! that will be restored is being created, or the shim was started for one). A spare
//! that cannot be made (a CRIU without trenv's patch never says it is ready) or whose
//! CRIU died is simply not used: restores then start their CRIU as before.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};
use trenv_criu::{Ahead, Criu};

use super::{MAX_FDS, exit};

/// How long a new CRIU may take to say it is ready (it takes ~2 ms).
const READY_WITHIN: Duration = Duration::from_secs(2);

/// The message a spare sends the zygote once its CRIU is ready.
pub(super) const READY: &[u8] = b"ready";

/// Where the node notes a CRIU binary that cannot be started ahead (its stamp): shims ask
/// for no spare of it (each would wait for one in vain).
fn refusal_note() -> PathBuf {
    std::path::Path::new(crate::paths::RUN_DIR).join("criu-not-ahead")
}

/// Whether `criu` was found unable to start ahead (a CRIU without trenv's patch).
pub(crate) fn refuses(criu: &Criu) -> bool {
    criu.stamp()
        .is_some_and(|s| std::fs::read_to_string(refusal_note()).is_ok_and(|n| n == s))
}

fn refused(criu: &Criu) {
    if let Some(stamp) = criu.stamp() {
        let _ = std::fs::write(refusal_note(), stamp);
    }
}

/// This process's CRIU started ahead, until a restore takes it.
static AHEAD: Mutex<Option<Ahead>> = Mutex::new(None);

/// The CRIU started ahead for a restore by `criu`'s binary, if this worker has one that
/// still runs. One of another binary, or dead, is discarded.
pub(crate) fn take(criu: &Criu) -> Option<Ahead> {
    let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    if ahead.is_of(criu) && ahead.alive() {
        Some(ahead)
    } else {
        ahead.discard();
        None
    }
}

/// The spare's life: start CRIU ahead, tell the zygote (`sock`) it is ready, wait for a
/// request's descriptors, then serve it as any worker. Exits if CRIU cannot be made
/// ready, if CRIU dies while it waits, or if the zygote goes away.
pub(super) fn spare_main(sock: OwnedFd, criu: PathBuf) -> ! {
    let Ok(criu) = Criu::locate(Some(&criu)) else {
        exit(3)
    };
    let ahead = criu
        .ahead()
        .and_then(|mut a| a.ready(READY_WITHIN).map(|()| a));
    let ahead = match ahead {
        Ok(a) => a,
        Err(trenv_criu::CriuError::NotAhead {
            unpatched: true, ..
        }) => {
            refused(&criu);
            exit(3)
        }
        Err(_) => exit(3),
    };
    if send(sock.as_raw_fd(), READY, MsgFlags::MSG_NOSIGNAL).is_err() {
        exit(0);
    }
    let fds = loop {
        let mut pfds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(ahead.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut pfds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => exit(1),
            Ok(_) => {}
        }
        if pfds[1].any().unwrap_or(true) {
            // CRIU wrote or exited while it should wait: this spare is of no use.
            exit(4);
        }
        match receive(&sock) {
            Some(fds) if !fds.is_empty() => break fds,
            Some(_) => continue,
            None => exit(0), // the zygote is gone or no longer wants it
        }
    };
    drop(sock);
    *AHEAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(ahead);
    // From here on a worker like any other: named as one, and it outlives a zygote that
    // dies, as a forked worker does.
    // SAFETY: prctl with these arguments has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"trenv-worker".as_ptr());
        libc::prctl(libc::PR_SET_PDEATHSIG, 0);
    }
    super::worker_main(fds)
}

/// One message's descriptors; `None` at the end of the socket.
fn receive(sock: &OwnedFd) -> Option<Vec<OwnedFd>> {
    let mut byte = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors for us.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                if msg.bytes == 0 && fds.is_empty() {
                    return None;
                }
                return Some(fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}
