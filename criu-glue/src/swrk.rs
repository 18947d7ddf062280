//! One `criu swrk` process per operation, spoken to over a SEQPACKET socketpair.
//!
//! CRIU's side of the socket is its descriptor 3 (`criu swrk 3`). Descriptors CRIU must
//! inherit (restored stdio, namespaces, template files) are placed at fixed numbers from 4
//! on by an [`FdPlan`]; requests refer to them by those numbers (`inherit_fd`, `join_ns`).
//!
//! Must be used from a process whose children nobody else reaps (trenv's zygote workers):
//! the session waits for its CRIU process with `waitpid`.

use std::fs;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    send, sendmsg, socketpair,
};
use protobuf::Message;

use crate::error::{CriuError, Exit, NoAnswer, Refusal};
use crate::rpc::{Criu_req, Criu_req_type, Criu_resp};
use crate::version::{CriuVersion, MIN_VERSION};

/// Descriptors are moved above this number before they are placed, so that no source
/// collides with a target.
const PARK_FLOOR: RawFd = 100;
/// Largest response accepted from CRIU (they are a few hundred bytes).
const MAX_RESPONSE: usize = 1 << 20;
/// Tells a patched CRIU that it was started ahead of its request (criu-glue/patches/0006).
const AHEAD_ENV: &str = "CRIU_SWRK_AHEAD";
/// Why a CRIU started ahead is refused when it never says it is ready.
const NEVER_READY: &str = "it did not say it was ready; is it trenv's CRIU?";
/// CRIU's own switch (`CRIU_FAULT`, `FI_NO_BREAKPOINTS`) for ending a restore without
/// hardware breakpoints: the restored tasks are stepped through their last syscalls
/// instead (what CRIU does on architectures without them). A breakpoint set through
/// ptrace is a perf event of the task, and the node's first such event enables the
/// kernel's perf scheduling hooks (code patched on every CPU, then an RCU grace period);
/// they are disabled again a second after the last one is gone. A restore on a node where
/// no restored process lived in the last second paid 5-11 ms for it here, a third of
/// CRIU's call, and every restored thread kept its disabled breakpoint event, and the
/// node its hooks on every context switch, for as long as it lived.
const NO_BREAKPOINTS: (&str, &str) = ("CRIU_FAULT", "130");

/// What a CRIU process is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A restore: it ends without hardware breakpoints ([`NO_BREAKPOINTS`]).
    Restore,
    /// Anything else (a dump, a question).
    Other,
}

/// A CRIU binary.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
}

impl Criu {
    /// Uses `configured` if given, else the first `criu` on `PATH` or in the usual sbin
    /// directories (containerd starts shims with a PATH that may lack them).
    pub fn locate(configured: Option<&Path>) -> Result<Criu, CriuError> {
        if let Some(p) = configured {
            return if is_executable(p) {
                Ok(Criu {
                    path: p.to_path_buf(),
                })
            } else {
                Err(CriuError::NotFound {
                    looked: p.display().to_string(),
                })
            };
        }
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/sbin"] {
            let d = PathBuf::from(d);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs.iter()
            .map(|d| d.join("criu"))
            .find(|p| is_executable(p))
            .map(|path| Criu { path })
            .ok_or_else(|| CriuError::NotFound {
                looked: format!(
                    "criu in {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks CRIU for its version.
    pub fn version(&self) -> Result<CriuVersion, CriuError> {
        let mut req = Criu_req::new();
        req.set_type(Criu_req_type::VERSION);
        let no_version = |reason: NoAnswer| CriuError::NoVersion {
            path: self.path.clone(),
            reason,
        };
        let resp =
            match self
                .start(FdPlan::default(), Purpose::Other)?
                .call(req, "version", None, &mut ())
            {
                Ok(r) => r,
                Err(CriuError::Failed { .. }) => return Err(no_version(NoAnswer::Refused)),
                Err(CriuError::Died { how, .. }) => return Err(no_version(NoAnswer::Died(how))),
                Err(e) => return Err(e),
            };
        match resp.version.as_ref() {
            Some(v) => Ok(CriuVersion::from_rpc(v)),
            None => Err(no_version(NoAnswer::NoVersion)),
        }
    }

    /// The version, if it is recent enough. The answer is cached in `cache_dir` (keyed by
    /// the binary's path, size and mtime), because every operation runs in a new process.
    pub fn require_version(&self, cache_dir: Option<&Path>) -> Result<CriuVersion, CriuError> {
        let key = self.stamp();
        let cache = cache_dir.map(|d| d.join("criu-version"));
        if let (Some(key), Some(cache)) = (&key, &cache)
            && let Ok(text) = fs::read_to_string(cache)
            && let Some((k, v)) = text.rsplit_once('\n').map(|(k, v)| (k, v.trim()))
            && k == key
            && let Some(v) = parse_version(v)
            && v >= MIN_VERSION
        {
            return Ok(v);
        }
        let v = self.version()?;
        if v < MIN_VERSION {
            return Err(CriuError::TooOld {
                path: self.path.clone(),
                found: v,
            });
        }
        if let (Some(key), Some(cache)) = (key, cache) {
            let tmp = cache.with_extension(format!("{}", std::process::id()));
            if fs::write(&tmp, format!("{key}\n{v}")).is_ok() {
                let _ = fs::rename(&tmp, &cache);
            }
        }
        Ok(v)
    }

    /// What identifies this binary for answers cached about it: its path, size and mtime.
    pub fn stamp(&self) -> Option<String> {
        fs::metadata(&self.path)
            .map(|m| format!("{} {} {}", self.path.display(), m.size(), m.mtime_nsec()))
            .ok()
    }

    /// Starts `criu swrk` for `purpose` with the descriptors of `plan`.
    pub fn start(&self, plan: FdPlan, purpose: Purpose) -> Result<Session, CriuError> {
        let (child, sock) = self.spawn(plan, purpose, false)?;
        Ok(Session {
            child,
            sock,
            pending: Vec::new(),
        })
    }

    /// Starts `criu swrk` ahead of its request: it probes the kernel, says it is ready
    /// ([`Ahead::ready`]) and waits; its descriptors come with the request
    /// ([`Ahead::session`]). Needs trenv's CRIU (criu-glue/patches/0006). It serves a
    /// restore (trenv's spare restorers).
    pub fn ahead(&self) -> Result<Ahead, CriuError> {
        let (child, sock) = self.spawn(FdPlan::default(), Purpose::Restore, true)?;
        Ok(Ahead {
            path: self.path.clone(),
            child,
            sock,
        })
    }

    fn spawn(
        &self,
        plan: FdPlan,
        purpose: Purpose,
        ahead: bool,
    ) -> Result<(Child, OwnedFd), CriuError> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(CriuError::sys("creating CRIU's socket"))?;
        // Park every inherited descriptor above the targets, then place them in the child.
        let mut placed: Vec<(OwnedFd, RawFd)> = Vec::new();
        placed.push((park(&theirs)?, 3));
        for (i, fd) in plan.extra.iter().enumerate() {
            placed.push((park(fd)?, 4 + i as RawFd));
        }
        let targets: Vec<(RawFd, RawFd)> =
            placed.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
        let mut cmd = Command::new(&self.path);
        cmd.arg("swrk").arg("3");
        if ahead {
            cmd.env(AHEAD_ENV, "1");
        }
        match purpose {
            Purpose::Restore => cmd.env(NO_BREAKPOINTS.0, NO_BREAKPOINTS.1),
            Purpose::Other => cmd.env_remove(NO_BREAKPOINTS.0),
        };
        // containerd gives its shims `LD_LIBRARY_PATH=<opt>/lib:` (its opt plugin's
        // directory, usually absent, and an empty entry: the working directory). The
        // dynamic loader would search both, with their hardware-capability subdirectories,
        // for each of CRIU's libraries at every exec (CRIU's own and its `tar`'s).
        if let Some(value) = std::env::var_os("LD_LIBRARY_PATH") {
            match library_path(&value.to_string_lossy(), |p| p.is_dir()) {
                Some(kept) => cmd.env("LD_LIBRARY_PATH", kept),
                None => cmd.env_remove("LD_LIBRARY_PATH"),
            };
        }
        let [stdin, stdout, stderr] = plan.stdio;
        cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from));
        cmd.stdout(stdout.map_or_else(Stdio::null, Stdio::from));
        cmd.stderr(stderr.map_or_else(Stdio::null, Stdio::from));
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &(src, target) in &targets {
                    if libc::dup2(src, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CriuError::NotFound {
                    looked: self.path.display().to_string(),
                }
            } else {
                CriuError::Spawn {
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        drop(placed);
        drop(theirs);
        Ok((child, mine))
    }
}

/// The entries of a `LD_LIBRARY_PATH` worth CRIU's loader searching: absolute paths of
/// directories that exist (`is_dir`). Not an empty entry nor a relative one, which name
/// the working directory: CRIU runs as root, and its libraries come from nowhere it
/// happens to be started in. `None` when nothing is left.
fn library_path(value: &str, is_dir: impl Fn(&Path) -> bool) -> Option<String> {
    let kept: Vec<&str> = value
        .split(':')
        .filter(|e| e.starts_with('/') && is_dir(Path::new(e)))
        .collect();
    (!kept.is_empty()).then(|| kept.join(":"))
}

/// The last error lines of a CRIU log: what went wrong (CRIU's own `cr_errmsg` is its
/// *first* error, often a harmless one such as failing to raise RLIMIT_NOFILE).
fn last_errors(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error (") && !l.contains("RLIMIT_NOFILE"))
        .map(|l| l.split_once(") Error").map_or(l, |(_, rest)| rest).trim())
        .collect();
    let tail = &errors[errors.len().saturating_sub(3)..];
    (!tail.is_empty()).then(|| tail.join("; "))
}

fn parse_version(s: &str) -> Option<CriuVersion> {
    let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
    Some(CriuVersion {
        major: it.next()??,
        minor: it.next()??,
        sublevel: it.next()??,
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn park(fd: &impl AsRawFd) -> Result<OwnedFd, CriuError> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one that we own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PARK_FLOOR) };
    if raw < 0 {
        return Err(CriuError::Sys {
            context: "duplicating a descriptor for CRIU",
            source: nix::errno::Errno::last(),
        });
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The descriptors a CRIU process starts with: its stdio (the restored process's stdio
/// when restoring) and extra descriptors at 4, 5, … in the order they were added.
#[derive(Default)]
pub struct FdPlan {
    stdio: [Option<OwnedFd>; 3],
    extra: Vec<OwnedFd>,
}

impl FdPlan {
    /// Sets CRIU's descriptor `n` (0, 1 or 2); unset ones are /dev/null.
    pub fn stdio(&mut self, n: usize, fd: OwnedFd) {
        if let Some(slot) = self.stdio.get_mut(n) {
            *slot = Some(fd);
        }
    }

    /// Adds a descriptor; returns the number CRIU will see it as.
    pub fn add(&mut self, fd: OwnedFd) -> i32 {
        self.extra.push(fd);
        3 + self.extra.len() as i32
    }

    /// The descriptors in the order a CRIU started ahead installs them: its 0, 1 and 2
    /// (`/dev/null` for those unset), then 4, 5, …
    fn into_sent(self) -> Result<Vec<OwnedFd>, CriuError> {
        let mut sent = Vec::with_capacity(3 + self.extra.len());
        for fd in self.stdio {
            sent.push(match fd {
                Some(fd) => fd,
                None => fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(|e| CriuError::Sys {
                        context: "opening /dev/null for CRIU",
                        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    })?,
            });
        }
        sent.extend(self.extra);
        Ok(sent)
    }
}

/// A `criu swrk` started ahead of its request ([`Criu::ahead`]).
pub struct Ahead {
    path: PathBuf,
    child: Child,
    sock: OwnedFd,
}

impl Ahead {
    /// Waits (at most `timeout`) until CRIU says it probed the kernel and waits for its
    /// request. A CRIU without trenv's patch never says so: it is stopped and this fails.
    pub fn ready(&mut self, timeout: std::time::Duration) -> Result<(), CriuError> {
        let not_ready = |reason: &str| CriuError::NotAhead {
            path: self.path.clone(),
            reason: reason.to_string(),
            unpatched: reason == NEVER_READY,
        };
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut pfd = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let ready = loop {
            match poll(&mut pfd, PollTimeout::from(ms)) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        let answer = match ready {
            Ok(0) => Err(not_ready(NEVER_READY)),
            Ok(_) => {
                let mut buf = [0u8; 256];
                match nix::sys::socket::recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(0) | Err(_) => Err(not_ready("it exited before it was ready")),
                    Ok(n) => match Criu_resp::parse_from_bytes(&buf[..n]) {
                        Ok(r) if r.type_() == Criu_req_type::EMPTY && r.success() => Ok(()),
                        Ok(r) if r.type_() == Criu_req_type::EMPTY => {
                            Err(not_ready("its kernel probe failed"))
                        }
                        _ => Err(not_ready("it answered something else than ready")),
                    },
                }
            }
            Err(e) => Err(CriuError::sys("waiting for CRIU to be ready")(e)),
        };
        if answer.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        answer
    }

    /// Whether this is a process of `criu`'s binary.
    pub fn is_of(&self, criu: &Criu) -> bool {
        self.path == criu.path
    }

    /// CRIU's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether CRIU still runs and could serve a request: not exited (killed while it
    /// waited) nor stopped (by a signal or a tracer: a restore sent to it would hang).
    pub fn alive(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return false;
        }
        fs::read_to_string(format!("/proc/{}/stat", self.child.id())).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|state| !matches!(state, "T" | "t" | "Z" | "X"))
        })
    }

    /// Stops CRIU and reaps it.
    pub fn discard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The session of this CRIU, whose first request carries `plan`'s descriptors.
    pub fn session(self, plan: FdPlan) -> Result<Session, CriuError> {
        Ok(Session {
            child: self.child,
            sock: self.sock,
            pending: plan.into_sent()?,
        })
    }
}

/// Answers CRIU's notifications (`notify_scripts`). `fd` is the descriptor CRIU passed
/// along (the pty master with `orphan-pts-master`). An `Err` aborts the operation; it
/// reaches the caller as the source of [`CriuError::Notify`].
pub trait Notify {
    fn notify(&mut self, script: &str, pid: i32, fd: Option<OwnedFd>) -> Result<(), Refusal>;
}

/// Acknowledges everything.
impl Notify for () {
    fn notify(&mut self, _script: &str, _pid: i32, _fd: Option<OwnedFd>) -> Result<(), Refusal> {
        Ok(())
    }
}

/// CRIU's socket: readable (or hung up) only when CRIU exits, while it waits for its
/// request.
impl AsFd for Ahead {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A running `criu swrk`.
pub struct Session {
    child: Child,
    sock: OwnedFd,
    /// Descriptors its first request carries (a CRIU started ahead).
    pending: Vec<OwnedFd>,
}

impl Session {
    /// CRIU's pid (e.g. to move it into the restored container's cgroup first).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `req`, answers notifications until the final response, then waits for CRIU to
    /// exit. `op` names the operation in errors, `log` is CRIU's log file (named in errors).
    pub fn call(
        mut self,
        req: Criu_req,
        op: &'static str,
        log: Option<PathBuf>,
        notify: &mut dyn Notify,
    ) -> Result<Criu_resp, CriuError> {
        let result = self.exchange(&req, op, &log, notify);
        // CRIU exits when its socket closes.
        drop(self.sock);
        let status = self.child.wait();
        match result {
            Err(CriuError::Died { op, log, .. }) => Err(CriuError::Died {
                op,
                how: Exit::of(status),
                log,
            }),
            other => other,
        }
    }

    fn exchange(
        &mut self,
        req: &Criu_req,
        op: &'static str,
        log: &Option<PathBuf>,
        notify: &mut dyn Notify,
    ) -> Result<Criu_resp, CriuError> {
        self.send(req, op, log)?;
        loop {
            let (resp, fd) = self.receive(op, log)?;
            if resp.type_() == Criu_req_type::NOTIFY {
                let n = resp.notify.as_ref();
                let script = n.map(|n| n.script().to_string()).unwrap_or_default();
                let pid = n.map_or(0, |n| n.pid());
                let verdict = notify.notify(&script, pid, fd);
                let mut ack = Criu_req::new();
                ack.set_type(Criu_req_type::NOTIFY);
                ack.set_notify_success(verdict.is_ok());
                self.send(&ack, op, log)?;
                if let Err(reason) = verdict {
                    return Err(CriuError::Notify { script, reason });
                }
                continue;
            }
            if !resp.success() {
                // CRIU refuses some requests before it opens its log.
                let log = log.clone().filter(|p| p.exists());
                let msg = log
                    .as_deref()
                    .and_then(last_errors)
                    .unwrap_or_else(|| resp.cr_errmsg().trim().to_string());
                return Err(CriuError::Failed {
                    op,
                    errno: resp.cr_errno(),
                    msg,
                    log,
                });
            }
            return Ok(resp);
        }
    }

    fn send(
        &mut self,
        msg: &Criu_req,
        op: &'static str,
        log: &Option<PathBuf>,
    ) -> Result<(), CriuError> {
        let bytes = msg
            .write_to_bytes()
            .map_err(|source| CriuError::Encode { source })?;
        let sent = if self.pending.is_empty() {
            send(self.sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
        } else {
            let raw: Vec<RawFd> = self.pending.iter().map(AsRawFd::as_raw_fd).collect();
            let sent = sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            );
            // CRIU holds its copies now (or never will).
            self.pending.clear();
            sent
        };
        match sent {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                Err(CriuError::died(op, log))
            }
            Err(e) => Err(CriuError::sys("sending a request to CRIU")(e)),
        }
    }

    fn receive(
        &mut self,
        op: &'static str,
        log: &Option<PathBuf>,
    ) -> Result<(Criu_resp, Option<OwnedFd>), CriuError> {
        // CRIU's children (the tasks it restores) inherit its end of the socket, so a CRIU
        // that dies does not always close it: watch the process as well.
        loop {
            let mut pfd = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut pfd, PollTimeout::from(50u16)) {
                Ok(0) => {
                    // CRIU may have answered and exited between the poll's timeout and
                    // this check: an answer already in the socket is read, not lost.
                    if let Ok(Some(_)) = self.child.try_wait() {
                        let mut again = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
                        if matches!(poll(&mut again, PollTimeout::ZERO), Ok(n) if n > 0) {
                            break;
                        }
                        return Err(CriuError::died(op, log));
                    }
                }
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(CriuError::sys("waiting for CRIU's answer")(e)),
            }
        }
        let mut buf = vec![0u8; MAX_RESPONSE];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let (n, fds) = loop {
            match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                // SAFETY: the kernel just installed these descriptors.
                                fds.extend(
                                    raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                                );
                            }
                        }
                    }
                    break (msg.bytes, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECONNRESET) => break (0, Vec::<OwnedFd>::new()),
                Err(e) => return Err(CriuError::sys("reading CRIU's answer")(e)),
            };
        };
        if n == 0 {
            return Err(CriuError::died(op, log));
        }
        let resp = Criu_resp::parse_from_bytes(&buf[..n])
            .map_err(|source| CriuError::Decode { source })?;
        Ok((resp, fds.into_iter().next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("criu");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn descriptors_sent_with_a_request_come_in_the_order_criu_installs_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| -> OwnedFd {
            let p = dir.path().join(name);
            fs::write(&p, name).unwrap();
            fs::File::open(p).unwrap().into()
        };
        let mut plan = FdPlan::default();
        plan.stdio(1, file("out"));
        assert_eq!(plan.add(file("a")), 4);
        assert_eq!(plan.add(file("b")), 5);
        let sent = plan.into_sent().unwrap();
        let names: Vec<String> = sent
            .iter()
            .map(|fd| {
                fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        // 0, 1, 2 (unset ones /dev/null), then 4, 5: CRIU's 3 is its socket.
        assert_eq!(names, ["null", "out", "null", "a", "b"]);
    }

    #[test]
    fn criu_s_library_path_keeps_only_absolute_directories_that_exist() {
        let exists = |p: &Path| p == Path::new("/opt/criu/lib") || p == Path::new("/usr/lib");
        // containerd's value for its shims: an absent opt directory and the working one.
        assert_eq!(library_path("/opt/containerd/lib:", exists), None);
        assert_eq!(library_path("", exists), None);
        assert_eq!(
            library_path("/opt/criu/lib::lib:./x:/gone:/usr/lib", exists).as_deref(),
            Some("/opt/criu/lib:/usr/lib")
        );
    }

    #[test]
    fn a_missing_binary_names_where_it_looked_and_the_version_needed() {
        let err = Criu::locate(Some(Path::new("/nonexistent/criu"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/criu"), "{msg}");
        assert!(msg.contains("4.1.0 or newer"), "{msg}");
    }

    #[test]
    fn a_binary_that_does_not_answer_counts_as_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let criu = Criu::locate(Some(&script(dir.path(), "exit 1"))).unwrap();
        let msg = criu.require_version(None).unwrap_err().to_string();
        assert!(msg.contains("does not answer a version request"), "{msg}");
        assert!(msg.contains("exit status 1"), "{msg}");
        assert!(msg.contains("4.1.0 or newer"), "{msg}");
    }

    #[test]
    fn failures_quote_the_last_errors_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        fs::write(
            &log,
            "(00.05) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self\n\
             (00.10) Info ok\n\
             (00.20) Error (criu/mount.c:1): mnt: 1055:./etc/hosts doesn't have a proper root\n\
             (00.30) Error (criu/cr-dump.c:2): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(
            last_errors(&log).unwrap(),
            "(criu/mount.c:1): mnt: 1055:./etc/hosts doesn't have a proper root; \
             (criu/cr-dump.c:2): Dumping FAILED."
        );
    }

    #[test]
    fn parsed_cache_entries_round_trip() {
        assert_eq!(
            parse_version("4.1.1"),
            Some(CriuVersion {
                major: 4,
                minor: 1,
                sublevel: 1
            })
        );
        assert_eq!(parse_version("4.x"), None);
    }

    #[test]
    fn fd_plans_number_extra_descriptors_from_four() {
        let mut plan = FdPlan::default();
        let f = || OwnedFd::from(fs::File::open("/dev/null").unwrap());
        assert_eq!(plan.add(f()), 4);
        assert_eq!(plan.add(f()), 5);
    }
}
