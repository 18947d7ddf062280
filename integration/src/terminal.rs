//! Commands run with a pseudo-terminal as their stdin, stdout and stderr, as a user's
//! shell runs `ctr run -t`, and everything they write to it, read until the terminal
//! hangs up.
//!
//! script(1) used to do this, but it stops reading 10 ms after its child exits: output
//! still in the kernel's tty buffers then (a busy machine flushes them late) was lost.
//! Here the reader keeps the master until every holder of the terminal's slave side has
//! closed it, which the kernel reports (EIO) only after all written data was read.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Run;

/// A command running on its own terminal.
pub struct InTerminal {
    child: Child,
    output: mpsc::Receiver<Vec<u8>>,
}

/// How long the terminal's output may trail the command's exit.
const HANG_UP: Duration = Duration::from_secs(10);

impl InTerminal {
    /// Starts `cmd` in a new session whose controlling terminal is a new pty.
    pub fn spawn(mut cmd: Command) -> std::io::Result<InTerminal> {
        let (master, slave) = open_pty()?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // `cmd` (dropped with this function) held the parent's copies of the slave side.
        drop(cmd);
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut master = File::from(master);
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match master.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO: no process has the terminal open any more.
                    Err(_) => break,
                }
            }
            let _ = tx.send(out);
        });
        Ok(InTerminal { child, output })
    }

    /// Whether the command is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for the command to end (then kills it) and returns its
    /// exit code and what it wrote to the terminal (as `stdout`).
    pub fn finish(mut self, timeout: Duration) -> Run {
        let deadline = std::time::Instant::now() + timeout;
        while self.running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let code = self.child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        let out = self.output.recv_timeout(HANG_UP).unwrap_or_default();
        Run {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::new(),
        }
    }
}

fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into valid pointers; name, termios and
    // winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETFD on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_output_is_read_and_the_exit_code_kept() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "tty; seq 1 20000 | tail -n 1; exit 3"]);
        let r = InTerminal::spawn(cmd)
            .unwrap()
            .finish(Duration::from_secs(10));
        assert_eq!(r.code, 3, "{r:#?}");
        assert!(r.stdout.starts_with("/dev/pts/"), "{r:#?}");
        assert!(r.stdout.contains("20000"), "{r:#?}");
    }
}
