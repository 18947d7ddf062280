//! A process's stdio: containerd's FIFOs on one side, the process on the other.
//!
//! Without a terminal the process gets pipes, and copy threads move data between the pipes
//! and the FIFOs, so the shim can close stdin on CloseIO and the process never writes into a
//! FIFO whose reader went away. With a terminal, the process sends the pty master over a
//! console socket and the copy threads serve the master instead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// FIFO paths containerd gave for a process (empty = not wanted).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Counts the output streams still copying.
#[derive(Default)]
struct Drain {
    open: Mutex<usize>,
    cv: Condvar,
}

/// Waits for a process's output streams.
pub struct OutputWaiter(Arc<Drain>);

impl OutputWaiter {
    /// Waits until all output of the process reached the FIFOs (its pipes reached EOF), at
    /// most `timeout`. A process that left children holding its stdout may never get there;
    /// the exit is reported anyway.
    pub fn wait(&self, timeout: Duration) {
        let guard = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.0.cv.wait_timeout_while(guard, timeout, |n| *n > 0);
    }
}

/// The shim's side of a running process's stdio.
pub struct ProcessIo {
    paths: StdioPaths,
    stdin: Arc<Mutex<Option<File>>>,
    console: Option<File>,
    drain: Arc<Drain>,
}

/// Descriptors to hand to the process (via the zygote) for stdin, stdout and stderr.
pub type ChildStdio = [Option<OwnedFd>; 3];

/// Errors setting up or serving a process's stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("the console socket message carried no descriptor")]
    NoPtyMaster,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StdioError {
    move |source| StdioError::Io { context, source }
}

fn sys_err(context: &'static str) -> impl FnOnce(nix::Error) -> StdioError {
    move |source| StdioError::Sys { context, source }
}

impl ProcessIo {
    /// Prepares pipes for a process without a terminal and starts the copy threads.
    pub fn pipes(paths: StdioPaths) -> Result<(ProcessIo, ChildStdio), StdioError> {
        let drain = Arc::new(Drain::default());
        let stdin = Arc::new(Mutex::new(None));
        let mut child: ChildStdio = [None, None, None];
        if !paths.stdin.is_empty() {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(sys_err("creating the stdin pipe"))?;
            child[0] = Some(r);
            *stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(w));
            copy_stdin(paths.stdin.clone(), stdin.clone());
        }
        for (i, path) in [(1, &paths.stdout), (2, &paths.stderr)] {
            if path.is_empty() {
                continue;
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(sys_err("creating an output pipe"))?;
            let fifo = open_output(path)?;
            child[i] = Some(w);
            copy_output(File::from(r), fifo, drain.clone());
        }
        Ok((
            ProcessIo {
                paths,
                stdin,
                console: None,
                drain,
            },
            child,
        ))
    }

    /// Serves a process's terminal: `master` is the pty master it sent over the console
    /// socket.
    pub fn terminal(paths: StdioPaths, master: File) -> Result<ProcessIo, StdioError> {
        let drain = Arc::new(Drain::default());
        let stdin = Arc::new(Mutex::new(None));
        if !paths.stdin.is_empty() {
            let w = master
                .try_clone()
                .map_err(io_err("duplicating the pty master".into()))?;
            *stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
            copy_stdin(paths.stdin.clone(), stdin.clone());
        }
        if !paths.stdout.is_empty() {
            let r = master
                .try_clone()
                .map_err(io_err("duplicating the pty master".into()))?;
            let fifo = open_output(&paths.stdout)?;
            copy_output(r, fifo, drain.clone());
        }
        Ok(ProcessIo {
            paths,
            stdin,
            console: Some(master),
            drain,
        })
    }

    /// CloseIO: the process sees end-of-file on stdin.
    pub fn close_stdin(&self) {
        if self.console.is_some() {
            // A terminal has no end-of-file of its own: send ^D like a user would.
            if let Some(w) = self
                .stdin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                let _ = w.write_all(&[4]);
            }
        }
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Unblock a copy thread still waiting for containerd to open the FIFO.
        unblock_fifo_reader(&self.paths.stdin);
    }

    /// Resizes the terminal, if the process has one.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), StdioError> {
        let Some(console) = &self.console else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(StdioError::Io {
                context: "resizing the terminal".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A handle to wait for the process's output to be fully copied.
    pub fn waiter(&self) -> OutputWaiter {
        OutputWaiter(self.drain.clone())
    }

    /// Stops serving: drops stdin and the terminal.
    pub fn close(&mut self) {
        self.close_stdin();
        self.console.take();
    }
}

/// Opens an output FIFO read-write: never blocks, and writes never fail with EPIPE when
/// the client has gone (its data then waits in the FIFO like with runc's shim).
fn open_output(path: &str) -> Result<File, StdioError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("opening the output FIFO {path}")))
}

fn copy_output(mut from: File, mut to: File, drain: Arc<Drain>) {
    *drain.open.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let spawned = thread::Builder::new().name("stdout".into()).spawn({
        let drain = drain.clone();
        move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            // Keep draining so the process never blocks on a full pipe.
                            continue;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO: the terminal's slave side is closed.
                    Err(_) => break,
                }
            }
            wait_until_read(&to);
            drop(to);
            let mut n = drain.open.lock().unwrap_or_else(|e| e.into_inner());
            *n -= 1;
            drain.cv.notify_all();
        }
    });
    if spawned.is_err() {
        *drain.open.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        log::error!("cannot spawn an output copy thread");
    }
}

/// How long the end of a process's output waits for the client to read what is still in
/// the FIFO.
const READ_GRACE: Duration = Duration::from_millis(100);

/// Gives the client up to [`READ_GRACE`] to read the output left in `fifo`, before the exit
/// is reported: `ctr` closes its end of the FIFOs as soon as it learns of an exit and drops
/// what it had not read yet (on a busy machine, the whole output of a short `ctr task
/// exec`; with runc's shim too). Output nobody reads (a detached task) costs that delay.
fn wait_until_read(fifo: &File) {
    let deadline = std::time::Instant::now() + READ_GRACE;
    while unread(fifo) > 0 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Bytes in a FIFO that no reader has taken yet.
fn unread(fifo: &File) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int through a valid pointer.
    let rc = unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { n.max(0) as usize } else { 0 }
}

fn copy_stdin(path: String, to: Arc<Mutex<Option<File>>>) {
    let spawned = thread::Builder::new().name("stdin".into()).spawn(move || {
        // Blocks until containerd (or the client) opens the FIFO for writing.
        let Ok(mut fifo) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        else {
            to.lock().unwrap_or_else(|e| e.into_inner()).take();
            return;
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match fifo.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut guard = to.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = guard.as_mut() else { break };
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // End of input: the process sees EOF (for a terminal, CloseIO sends ^D instead).
        let mut guard = to.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = guard.as_ref()
            && !is_tty(w)
        {
            guard.take();
        }
    });
    if spawned.is_err() {
        log::error!("cannot spawn the stdin copy thread");
    }
}

fn is_tty(f: &File) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(f.as_raw_fd()) == 1 }
}

/// A reader blocked in open(2) on a FIFO returns once a writer opens it.
fn unblock_fifo_reader(path: &str) {
    if path.is_empty() {
        return;
    }
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
}

/// A listening console socket for one terminal process.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket, StdioError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // Socket paths are limited to 108 bytes: keep them short and out of the bundle.
        let dir = Path::new(trenv_runtime::paths::CONSOLE_DIR);
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let path = dir.join(format!(
            "{}-{}.sock",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(io_err(format!(
            "binding the console socket {}",
            path.display()
        )))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master the process sent. Called after the process was created, so
    /// the connection is already waiting.
    pub fn receive(&self) -> Result<File, StdioError> {
        self.listener
            .set_nonblocking(true)
            .map_err(io_err("console socket".into()))?;
        let (stream, _) = self.listener.accept().map_err(io_err(
            "the process did not connect to the console socket".into(),
        ))?;
        stream
            .set_nonblocking(false)
            .map_err(io_err("console socket".into()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("console socket".into()))?;
        recv_fd(&stream)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(stream: &UnixStream) -> Result<File, StdioError> {
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(sys_err("receiving the pty master"))?;
    for c in msg.cmsgs().map_err(sys_err("receiving the pty master"))? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel installed this descriptor for us.
            return Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(*fd) });
        }
    }
    Err(StdioError::NoPtyMaster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn unread_output_is_counted_until_the_client_reads_it() {
        let (_dir, path) = fifo();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut out = open_output(&path).unwrap();
        out.write_all(b"exec-out\n").unwrap();
        assert_eq!(unread(&out), 9);
        let mut buf = [0u8; 16];
        assert_eq!(reader.read(&mut buf).unwrap(), 9);
        assert_eq!(unread(&out), 0);
        wait_until_read(&out);
    }

    #[test]
    fn output_nobody_reads_does_not_hold_the_exit_forever() {
        let (_dir, path) = fifo();
        let mut out = open_output(&path).unwrap();
        out.write_all(b"nobody reads this\n").unwrap();
        wait_until_read(&out);
        assert_eq!(unread(&out), 18);
    }
}
