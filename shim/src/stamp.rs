//! Exec stamps: when a process exec'ed its program, as the process itself wrote it (see
//! `trenv_runtime::ChildFds::exec_stamp`). Metering starts an invocation there, so
//! that its duration is the program's run, not the runtime's work to start it.
//!
//! The process's end of the pipe is close-on-exec and nobody else keeps it: the pipe
//! hangs up when the process has exec'ed its program (or died before). Start waits for
//! that, so that what containerd then reports running is the container's program, not
//! the shim's fork of itself on its way to the exec (a checkpoint right after Start
//! found the shim's binary mapped in the process).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How long Start waits for a released process to exec its program (it takes
/// milliseconds; a startContainer hook runs before it).
pub const EXEC_WITHIN: Duration = Duration::from_secs(10);

/// The shim's end of a process's stamp pipe.
pub struct ExecStamp(OwnedFd);

impl ExecStamp {
    /// A pipe: the stamp to keep, and the end to hand to the process.
    pub fn pipe() -> std::io::Result<(ExecStamp, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok((ExecStamp(read), write))
    }

    /// When the process exec'ed, if it got that far (never blocks).
    pub fn read(&self) -> Option<Instant> {
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(self.0.as_raw_fd(), &mut buf).ok()?;
        (n == buf.len()).then(|| trenv_runtime::sys::clock::instant_of(u64::from_ne_bytes(buf)))
    }

    /// An end to wait on for the exec (see [`wait_for_exec`]) without holding this one.
    pub fn watcher(&self) -> std::io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

/// Waits until the process of `stamp` (an [`ExecStamp::watcher`]) has exec'ed its program
/// or died: its end of the pipe closed. The stamp it wrote stays in the pipe for metering.
/// False if that did not happen `within`.
pub fn wait_for_exec(stamp: &OwnedFd, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        // No event asked for: a hang-up (every writer gone) is reported regardless, and
        // the stamp's arrival, just before the exec, does not end the wait.
        let mut fds = [PollFd::new(stamp.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_stamp_reads_back_and_a_missing_one_is_none() {
        let (stamp, write) = ExecStamp::pipe().unwrap();
        assert!(stamp.read().is_none());
        let before = Instant::now();
        let ns = trenv_runtime::sys::clock::monotonic_ns();
        nix::unistd::write(&write, &ns.to_ne_bytes()).unwrap();
        let at = stamp.read().unwrap();
        assert!(at + std::time::Duration::from_micros(50) >= before);
        assert!(at <= Instant::now());
        drop(write);
        assert!(stamp.read().is_none());
    }

    #[test]
    fn the_wait_for_an_exec_ends_when_the_process_s_end_closes_not_at_its_stamp() {
        let (stamp, write) = ExecStamp::pipe().unwrap();
        let watcher = stamp.watcher().unwrap();
        assert!(!wait_for_exec(&watcher, Duration::from_millis(20)));
        let ns = trenv_runtime::sys::clock::monotonic_ns();
        nix::unistd::write(&write, &ns.to_ne_bytes()).unwrap();
        assert!(
            !wait_for_exec(&watcher, Duration::from_millis(20)),
            "the stamp is written before the exec, not at it"
        );
        drop(write);
        assert!(wait_for_exec(&watcher, Duration::from_secs(5)));
        assert!(stamp.read().is_some(), "the stamp is left for metering");
    }
}
