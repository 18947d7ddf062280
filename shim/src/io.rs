//! A process's stdio: containerd's FIFOs on one side, the process on the other.
//!
//! Without a terminal the process gets pipes, and copy threads move data between the pipes
//! and the FIFOs, so the shim can close stdin on CloseIO and the process never writes into a
//! FIFO whose reader went away. With a terminal, the process sends the pty master over a
//! console socket and the copy threads serve the master instead.
//!
//! Where the output goes is containerd's stdout URI, read as runc's shim reads it (the
//! scheme of stdout decides for both streams): a FIFO path (no scheme, or `fifo`), a
//! `file:///path` the output is appended to, or a `binary:///program?arg=value` logging
//! program (faasd, nerdctl and `ctr run --log-uri` use it). The logger gets stdout on fd 3,
//! stderr on fd 4 and a readiness pipe on fd 5 that it closes when it is ready (Create
//! waits for that), with only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment.
//! Unlike runc's shim, trenv keeps no write end of the logger's pipes: the logger sees the
//! end of its input when the container's output ends, and Delete stops whatever is left of
//! it (SIGTERM, then SIGKILL after [`LOGGER_STOP_GRACE`], as runc's shim does).

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

/// FIFO paths (or, for the output, URIs) containerd gave for a process (empty = not wanted).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// Who owns the pipes the process gets (runc's `IoUid`/`IoGid`); the shim's user if
    /// `None`.
    pub owner: Option<(u32, u32)>,
    /// The container's id for an init, the exec id for an exec: a logging program's
    /// `CONTAINER_ID`, as runc's shim sets it.
    pub id: String,
}

/// The containerd namespace this shim serves: a logging program's `CONTAINER_NAMESPACE`.
static NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the namespace the shim serves (once, when the task service is made).
pub fn set_namespace(namespace: &str) {
    let _ = NAMESPACE.set(namespace.to_string());
}

/// How long Delete gives a logging program to exit after SIGTERM before SIGKILL (runc's
/// shim: 12 s).
pub const LOGGER_STOP_GRACE: Duration = Duration::from_secs(12);

/// Where a process's output goes, from containerd's stdout URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// FIFO paths, one per stream (a plain path or a `fifo` URI): what `ctr` and CRI use.
    Fifo,
    /// `binary:///program?k=v`: a logging program, run with the query's keys and values as
    /// its arguments.
    Binary(LoggerCommand),
    /// `file:///path`: both streams appended to the file (created if missing).
    File(PathBuf),
}

/// A logging program and its arguments (`binary:///program?k=v&k2=v2` runs
/// `program k v k2 v2`; runc's shim takes them from a Go map, in no particular order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Output {
    /// Reads containerd's stdout URI. An empty one, a plain path or a `fifo` URI is a FIFO.
    pub fn parse(stdout: &str) -> Result<Output, StdioError> {
        let bad = |reason: &str| StdioError::BadUri {
            uri: stdout.to_string(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = split_scheme(stdout) else {
            return Ok(Output::Fifo);
        };
        let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
        let (hier, query) = rest.split_once('?').unwrap_or((rest, ""));
        // `//authority/path`: the path starts at the first slash after the authority.
        let path = match hier.strip_prefix("//") {
            Some(after) => after.find('/').map_or("", |i| &after[i..]),
            None => hier,
        };
        let path = unescape(path, false).ok_or_else(|| bad("bad percent-encoding in the path"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "fifo" => Ok(Output::Fifo),
            "binary" => {
                if !path.starts_with('/') {
                    return Err(bad(
                        "a binary:// URI names the logging program by its absolute path, as in binary:///usr/local/bin/logger",
                    ));
                }
                let mut args = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    args.push(
                        unescape(k, true)
                            .ok_or_else(|| bad("bad percent-encoding in the query"))?,
                    );
                    args.push(
                        unescape(v, true)
                            .ok_or_else(|| bad("bad percent-encoding in the query"))?,
                    );
                }
                Ok(Output::Binary(LoggerCommand {
                    program: PathBuf::from(path),
                    args,
                }))
            }
            "file" => {
                if !path.starts_with('/') {
                    return Err(bad(
                        "a file:// URI names the log file by its absolute path, as in file:///var/log/task.log",
                    ));
                }
                Ok(Output::File(PathBuf::from(path)))
            }
            other => Err(bad(&format!(
                "unknown scheme {other:?}: trenv, like runc's shim, takes a FIFO path, \
                 binary:///program or file:///path"
            ))),
        }
    }
}

/// `scheme:rest` if `uri` starts with a URI scheme (a letter, then letters, digits, `+`,
/// `-` or `.`), as Go's url.Parse finds one; a path has none.
fn split_scheme(uri: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = uri.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some((scheme, rest))
}

/// Percent-decoding (and, in a query, `+` as a space), as Go's url package does it.
fn unescape(s: &str, query: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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
    /// The logging program of a `binary://` URI, stopped at Delete.
    logger: Option<Logger>,
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
    #[error("the log URI {uri:?} cannot be used: {reason}")]
    BadUri { uri: String, reason: String },
    #[error(
        "the logging program {program} cannot be started: {source}; the binary:// log URI \
         must name an executable on the shim's host"
    )]
    Logger {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StdioError {
    /// Whether the client's request was at fault (a bad log URI, a logger that cannot run),
    /// rather than the shim.
    pub fn is_user_error(&self) -> bool {
        matches!(self, StdioError::BadUri { .. } | StdioError::Logger { .. })
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StdioError {
    move |source| StdioError::Io { context, source }
}

fn sys_err(context: &'static str) -> impl FnOnce(nix::Error) -> StdioError {
    move |source| StdioError::Sys { context, source }
}

impl ProcessIo {
    /// Prepares pipes for a process without a terminal and starts the copy threads (for a
    /// logging program, the process writes into the logger's pipes directly).
    pub fn pipes(paths: StdioPaths) -> Result<(ProcessIo, ChildStdio), StdioError> {
        let output = Output::parse(&paths.stdout)?;
        let drain = Arc::new(Drain::default());
        let stdin = Arc::new(Mutex::new(None));
        let mut child: ChildStdio = [None, None, None];
        let mut logger = None;
        match &output {
            Output::Fifo => {
                for (i, path) in [(1, &paths.stdout), (2, &paths.stderr)] {
                    if path.is_empty() {
                        continue;
                    }
                    let (r, w) = pipe("an output pipe")?;
                    chown_pipe(&w, paths.owner)?;
                    let fifo = open_output(path)?;
                    child[i] = Some(w);
                    copy_output(File::from(r), Sink::Fifo(fifo), drain.clone());
                }
            }
            Output::File(path) => {
                let file = open_log_file(path)?;
                for i in [1, 2] {
                    let (r, w) = pipe("an output pipe")?;
                    chown_pipe(&w, paths.owner)?;
                    let to = file
                        .try_clone()
                        .map_err(io_err(format!("duplicating {}", path.display())))?;
                    child[i] = Some(w);
                    copy_output(File::from(r), Sink::File(to), drain.clone());
                }
            }
            Output::Binary(cmd) => {
                let (out_r, out_w) = pipe("the logger's stdout pipe")?;
                let (err_r, err_w) = pipe("the logger's stderr pipe")?;
                chown_pipe(&out_w, paths.owner)?;
                chown_pipe(&err_w, paths.owner)?;
                logger = Some(Logger::spawn(cmd, &paths.id, out_r, err_r)?);
                child[1] = Some(out_w);
                child[2] = Some(err_w);
            }
        }
        if !paths.stdin.is_empty() {
            let (r, w) = pipe("the stdin pipe")?;
            chown_pipe(&r, paths.owner)?;
            child[0] = Some(r);
            *stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(w));
            copy_stdin(paths.stdin.clone(), stdin.clone());
        }
        Ok((
            ProcessIo {
                paths,
                stdin,
                console: None,
                drain,
                logger,
            },
            child,
        ))
    }

    /// Pipes for a process restored before anyone asked for it (a shared shim's reserve,
    /// shim/src/reserve.rs): the process gets all three, the shim keeps its ends unserved
    /// until [`ReservedPipes::connect`] gives them to a container's stdio.
    pub fn reserved(owner: Option<(u32, u32)>) -> Result<(ReservedPipes, ChildStdio), StdioError> {
        let (in_r, in_w) = pipe("the stdin pipe")?;
        let (out_r, out_w) = pipe("an output pipe")?;
        let (err_r, err_w) = pipe("an output pipe")?;
        for end in [&in_r, &out_w, &err_w] {
            chown_pipe(end, owner)?;
        }
        Ok((
            ReservedPipes {
                stdin: in_w,
                stdout: out_r,
                stderr: err_r,
            },
            [Some(in_r), Some(out_w), Some(err_w)],
        ))
    }

    /// Serves a process's terminal: `master` is the pty master it sent over the console
    /// socket. The terminal's output goes where stdout's URI says (a terminal has no
    /// separate stderr: a logging program's fd 4 only ever sees end-of-file).
    pub fn terminal(paths: StdioPaths, master: File) -> Result<ProcessIo, StdioError> {
        let output = Output::parse(&paths.stdout)?;
        let drain = Arc::new(Drain::default());
        let stdin = Arc::new(Mutex::new(None));
        let mut logger = None;
        if !paths.stdout.is_empty() {
            let r = master
                .try_clone()
                .map_err(io_err("duplicating the pty master".into()))?;
            let sink = match &output {
                Output::Fifo => Sink::Fifo(open_output(&paths.stdout)?),
                Output::File(path) => Sink::File(open_log_file(path)?),
                Output::Binary(cmd) => {
                    let (out_r, out_w) = pipe("the logger's stdout pipe")?;
                    let (err_r, err_w) = pipe("the logger's stderr pipe")?;
                    drop(err_w);
                    logger = Some(Logger::spawn(cmd, &paths.id, out_r, err_r)?);
                    Sink::File(File::from(out_w))
                }
            };
            copy_output(r, sink, drain.clone());
        }
        if !paths.stdin.is_empty() {
            let w = master
                .try_clone()
                .map_err(io_err("duplicating the pty master".into()))?;
            *stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
            copy_stdin(paths.stdin.clone(), stdin.clone());
        }
        Ok(ProcessIo {
            paths,
            stdin,
            console: Some(master),
            drain,
            logger,
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

    /// Stops serving: drops stdin and the terminal, and stops the logging program (it has
    /// normally exited already, at the end of the output).
    pub fn close(&mut self) {
        self.close_stdin();
        self.console.take();
        if let Some(logger) = self.logger.take() {
            logger.stop(LOGGER_STOP_GRACE);
        }
    }
}

/// The shim's ends of a reserved process's stdio pipes ([`ProcessIo::reserved`]).
pub struct ReservedPipes {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl ReservedPipes {
    /// Serves the pipes as the stdio `paths` of the container that took the process, as
    /// [`ProcessIo::pipes`] would have: an output nobody asked for is drained (as into the
    /// /dev/null a process without it gets), and stdin nobody writes is closed (end of
    /// file, as /dev/null reads).
    pub fn connect(self, paths: StdioPaths) -> Result<ProcessIo, StdioError> {
        let output = Output::parse(&paths.stdout)?;
        let drain = Arc::new(Drain::default());
        let stdin = Arc::new(Mutex::new(None));
        let mut logger = None;
        let outputs = [(self.stdout, &paths.stdout), (self.stderr, &paths.stderr)];
        match &output {
            Output::Fifo => {
                for (r, path) in outputs {
                    let sink = if path.is_empty() {
                        Sink::File(
                            dev_null_for_writing().map_err(io_err("opening /dev/null".into()))?,
                        )
                    } else {
                        Sink::Fifo(open_output(path)?)
                    };
                    copy_output(File::from(r), sink, drain.clone());
                }
            }
            Output::File(path) => {
                let file = open_log_file(path)?;
                for (r, _) in outputs {
                    let to = file
                        .try_clone()
                        .map_err(io_err(format!("duplicating {}", path.display())))?;
                    copy_output(File::from(r), Sink::File(to), drain.clone());
                }
            }
            Output::Binary(cmd) => {
                let [(out_r, _), (err_r, _)] = outputs;
                logger = Some(Logger::spawn(cmd, &paths.id, out_r, err_r)?);
            }
        }
        if !paths.stdin.is_empty() {
            *stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(self.stdin));
            copy_stdin(paths.stdin.clone(), stdin.clone());
        }
        Ok(ProcessIo {
            paths,
            stdin,
            console: None,
            drain,
            logger,
        })
    }
}

fn dev_null_for_writing() -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
}

fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| StdioError::Sys {
        context: what,
        source,
    })
}

/// Opens (creating it and its directory if missing) a `file://` log for appending, as
/// runc's shim does.
fn open_log_file(path: &Path) -> Result<File, StdioError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("opening the log file {}", path.display())))
}

/// A running logging program (`binary://`), held by a pidfd: the shim's reaper reaps it
/// whenever it exits, and the pidfd never names another process.
struct Logger {
    pid: i32,
    pidfd: OwnedFd,
}

impl Logger {
    /// Starts `cmd` with `stdout` on fd 3, `stderr` on fd 4 and a readiness pipe on fd 5,
    /// and waits until it closes fd 5 (or writes to it, or exits), as runc's shim does.
    fn spawn(
        cmd: &LoggerCommand,
        id: &str,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Logger, StdioError> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let failed = |source: std::io::Error| StdioError::Logger {
            program: cmd.program.clone(),
            source,
        };
        let cstr = |s: &[u8]| {
            CString::new(s).map_err(|_| StdioError::BadUri {
                uri: cmd.program.display().to_string(),
                reason: "a NUL byte in the program or its arguments".into(),
            })
        };
        let program = cstr(cmd.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for a in &cmd.args {
            argv.push(cstr(a.as_bytes())?);
        }
        let namespace = NAMESPACE.get().map(String::as_str).unwrap_or_default();
        let envp = [
            cstr(format!("CONTAINER_ID={id}").as_bytes())?,
            cstr(format!("CONTAINER_NAMESPACE={namespace}").as_bytes())?,
        ];
        let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_p.push(std::ptr::null());

        let dev_null = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map_err(io_err("opening /dev/null".into()))?;
        let (ready_r, ready_w) = pipe("the logger's readiness pipe")?;
        // The child waits on `go` until the parent holds its pidfd, and reports a failed
        // exec on `errors` (close-on-exec: nothing arrives when the exec succeeds).
        let (go_r, go_w) = pipe("a pipe to the logger")?;
        let (errors_r, errors_w) = pipe("a pipe from the logger")?;
        let sources = [stdout.as_raw_fd(), stderr.as_raw_fd(), ready_w.as_raw_fd()];
        let (go_raw, errors_raw) = (go_r.as_raw_fd(), errors_w.as_raw_fd());
        // SAFETY: after fork the child only makes async-signal-safe calls (read, fcntl,
        // dup2, sigprocmask, signal, execve, write, _exit) on memory prepared before the
        // fork, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: see above; this is the child.
            unsafe {
                logger_child(
                    go_raw,
                    dev_null.as_raw_fd(),
                    errors_raw,
                    sources,
                    &argv_p,
                    &envp_p,
                )
            }
        }
        drop((go_r, errors_w, ready_w, stdout, stderr));
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: kill only sends a signal; the child waits for `go`, so it is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(failed(e));
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        // Let the child exec (a byte, not end-of-file: a child another thread forks meanwhile
        // holds a copy of `go_w` until it execs); its exec error, if any, comes back on
        // `errors`.
        let _ = (&File::from(go_w)).write_all(&[1]);
        let mut errno = [0u8; 4];
        if read_full(&File::from(errors_r), &mut errno) == 4 {
            return Err(failed(std::io::Error::from_raw_os_error(
                i32::from_ne_bytes(errno),
            )));
        }
        let logger = Logger { pid, pidfd };
        // Ready when it closes fd 5 (end-of-file), writes to it, or exits.
        let mut byte = [0u8; 1];
        let _ = read_full(&File::from(ready_r), &mut byte);
        log::info!(
            "logging program {} (pid {pid}) ready for {id}",
            cmd.program.display()
        );
        Ok(logger)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    fn stop(self, grace: Duration) {
        if !self.signal(libc::SIGTERM) {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = grace.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll reads one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc == 0 {
            log::warn!(
                "logging program (pid {}) still runs {grace:?} after SIGTERM: SIGKILL",
                self.pid
            );
            self.signal(libc::SIGKILL);
        }
    }

    /// Sends `sig`; false if the logger is gone.
    fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal takes a pidfd, a signal, a null siginfo and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// The logger's side of the fork: waits for the parent's byte on `go`, puts `null` on fds
/// 0-2 and `sources` on fds 3, 4, 5 and execs; on failure, reports errno on `errors` and
/// exits.
///
/// # Safety
/// Only in a freshly forked child: it never returns.
unsafe fn logger_child(
    go: i32,
    null: i32,
    errors: i32,
    sources: [i32; 3],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: only async-signal-safe calls on descriptors and memory the parent prepared.
    unsafe {
        let mut b = 0u8;
        let mut n = libc::read(go, (&raw mut b).cast(), 1);
        while n < 0 && *libc::__errno_location() == libc::EINTR {
            n = libc::read(go, (&raw mut b).cast(), 1);
        }
        if n != 1 {
            libc::_exit(127);
        }
        // stdin, stdout and stderr: /dev/null, as for runc's shim's logger.
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        // Out of the way of 3..=5 first: a source may sit on one of those numbers.
        let mut high = [0i32; 3];
        for (h, s) in high.iter_mut().zip(sources) {
            *h = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, 10);
        }
        let mut ok = high.iter().all(|h| *h >= 0);
        for (target, h) in (3..).zip(high) {
            ok = ok && libc::dup2(h, target) == target;
        }
        if ok {
            // The shim's signal mask and ignored signals (SIGPIPE) are not the logger's.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        }
        let errno = *libc::__errno_location();
        libc::write(errors, (&raw const errno).cast(), 4);
        libc::_exit(127)
    }
}

/// Reads until `buf` is full or end-of-file; answers how much it read.
fn read_full(mut f: &File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    n
}

/// Where copied output goes: a FIFO (whose reader gets a moment to read the end, see
/// [`wait_until_read`]) or a plain file or pipe.
enum Sink {
    Fifo(File),
    File(File),
}

/// Opens an output FIFO read-write: never blocks, and writes never fail with EPIPE when
/// the client has gone (its data then waits in the FIFO like with runc's shim).
/// Gives a pipe (both ends: one inode) to `owner`, as runc's shim does for `IoUid`/`IoGid`.
fn chown_pipe(end: &OwnedFd, owner: Option<(u32, u32)>) -> Result<(), StdioError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    nix::unistd::fchown(
        end.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(sys_err("giving a stdio pipe to IoUid/IoGid"))
}

fn open_output(path: &str) -> Result<File, StdioError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("opening the output FIFO {path}")))
}

fn copy_output(mut from: File, sink: Sink, drain: Arc<Drain>) {
    let (mut to, fifo) = match sink {
        Sink::Fifo(f) => (f, true),
        Sink::File(f) => (f, false),
    };
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
            if fifo {
                wait_until_read(&to);
            }
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
    fn output_uris_are_read_as_runc_reads_them() {
        assert_eq!(Output::parse("").unwrap(), Output::Fifo);
        assert_eq!(
            Output::parse("/run/containerd/fifo/1/x-stdout").unwrap(),
            Output::Fifo
        );
        assert_eq!(Output::parse("fifo:///run/x").unwrap(), Output::Fifo);
        assert_eq!(
            Output::parse("binary:///usr/bin/logger?-v=1&tag=a%20b+c&flag").unwrap(),
            Output::Binary(LoggerCommand {
                program: "/usr/bin/logger".into(),
                args: ["-v", "1", "tag", "a b c", "flag", ""]
                    .map(String::from)
                    .to_vec(),
            })
        );
        assert_eq!(
            Output::parse("binary:///opt/my%20logger").unwrap(),
            Output::Binary(LoggerCommand {
                program: "/opt/my logger".into(),
                args: vec![],
            })
        );
        assert_eq!(
            Output::parse("file:///var/log/task.log").unwrap(),
            Output::File("/var/log/task.log".into())
        );
        for bad in [
            "http://example.com/x",
            "binary://logger",
            "file:relative",
            "binary:///a%zz",
        ] {
            assert!(
                matches!(Output::parse(bad), Err(StdioError::BadUri { .. })),
                "{bad}"
            );
        }
    }

    /// A logging program, `/bin/sh -c SCRIPT` (no script file: a test thread's fork could
    /// hold it open for writing and make its exec fail with ETXTBSY), that copies fd 3 to
    /// `out`, marks its readiness after `delay` and records its environment.
    fn logger_paths(dir: &Path, delay: &str, trap: &str) -> StdioPaths {
        let script = format!(
            "{trap}\nprintf '%s\\n' \"$CONTAINER_ID\" >{d}/env\n/bin/sleep {delay}\n\
             exec 5>&-\nexec /bin/cat <&3 >{d}/out\n",
            d = dir.display()
        );
        let encoded: String = script
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let uri = format!("binary:///bin/sh?-c={encoded}");
        StdioPaths {
            stdout: uri.clone(),
            stderr: uri,
            id: "c1".into(),
            ..StdioPaths::default()
        }
    }

    #[test]
    fn a_logger_gets_the_output_is_waited_for_and_exits_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let began = std::time::Instant::now();
        let (io, mut child) = ProcessIo::pipes(logger_paths(dir.path(), "0.3", "")).unwrap();
        assert!(
            began.elapsed() >= Duration::from_millis(300),
            "readiness not awaited"
        );
        let mut out = File::from(child[1].take().unwrap());
        out.write_all(b"hello\n").unwrap();
        drop((out, child));
        let pidfd = io.logger.as_ref().unwrap().pidfd.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(rc, 1, "the logger did not exit at the end of the output");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("env")).unwrap(),
            "c1\n"
        );
    }

    #[test]
    fn a_logger_that_ignores_sigterm_is_killed_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let (io, child) = ProcessIo::pipes(logger_paths(dir.path(), "0", "trap '' TERM")).unwrap();
        let logger = io.logger.as_ref().unwrap();
        let pid = logger.pid;
        // The output stays open (the child's ends are held): only a signal ends the logger.
        let began = std::time::Instant::now();
        let mut io = io;
        let logger = io.logger.take().unwrap();
        logger.stop(Duration::from_millis(300));
        assert!(began.elapsed() >= Duration::from_millis(300));
        // SAFETY: waitpid on our own child.
        let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        assert_eq!(reaped, pid);
        drop(child);
    }

    #[test]
    fn a_logging_program_that_cannot_run_is_the_clients_error() {
        let paths = StdioPaths {
            stdout: "binary:///nonexistent/logger".into(),
            ..StdioPaths::default()
        };
        let Err(e) = ProcessIo::pipes(paths) else {
            panic!("a missing logger was started");
        };
        assert!(e.is_user_error(), "{e}");
        assert!(e.to_string().contains("/nonexistent/logger"), "{e}");
    }

    #[test]
    fn a_file_uri_appends_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sub/task.log");
        let paths = StdioPaths {
            stdout: format!("file://{}", log.display()),
            stderr: format!("file://{}", log.display()),
            ..StdioPaths::default()
        };
        let (io, mut child) = ProcessIo::pipes(paths).unwrap();
        File::from(child[1].take().unwrap())
            .write_all(b"out\n")
            .unwrap();
        drop(child);
        io.waiter().wait(Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\n");
    }

    #[test]
    fn reserved_pipes_serve_the_stdio_of_whoever_takes_them() {
        // Taken by a container that logs to a file: both streams reach it, written before
        // and after the connection, and end with the process.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("taken.log");
        let (pipes, mut child) = ProcessIo::reserved(None).unwrap();
        let mut out = File::from(child[1].take().unwrap());
        out.write_all(b"before\n").unwrap();
        let io = pipes
            .connect(StdioPaths {
                stdout: format!("file://{}", log.display()),
                stderr: format!("file://{}", log.display()),
                ..StdioPaths::default()
            })
            .unwrap();
        out.write_all(b"after\n").unwrap();
        drop((out, child));
        io.waiter().wait(Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");

        // Taken by one that asks for no stdio: output is drained (no EPIPE, never blocks
        // on a full pipe) and stdin reads end-of-file.
        let (pipes, mut child) = ProcessIo::reserved(None).unwrap();
        let io = pipes.connect(StdioPaths::default()).unwrap();
        let mut out = File::from(child[1].take().unwrap());
        for _ in 0..64 {
            out.write_all(&[b'x'; 4096]).unwrap();
        }
        let mut input = File::from(child[0].take().unwrap());
        let mut buf = [0u8; 8];
        assert_eq!(input.read(&mut buf).unwrap(), 0, "stdin is at its end");
        drop((out, child));
        io.waiter().wait(Duration::from_secs(5));
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
