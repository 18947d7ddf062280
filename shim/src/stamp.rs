//! Exec stamps: when a process exec'ed its program, as the process itself wrote it (see
//! `trenv_runtime::ChildFds::exec_stamp`). Metering starts an invocation there, so
//! that its duration is the program's run, not the runtime's work to start it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use nix::fcntl::OFlag;

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
}
