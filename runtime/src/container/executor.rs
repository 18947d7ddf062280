//! The last step inside the container's init (or exec) process before the payload runs.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxCapabilities, Spec};

use super::seccomp::Filter;

/// Installs the compiled seccomp filters, then drops the capabilities whose drop was
/// deferred (see `sandbox::derive_spec`), then execs the payload like libcontainer's
/// default executor. Just before the exec it writes the time to `exec_stamp` (see
/// `sandbox::Stdio::exec_stamp`); the pipe is close-on-exec, so the program never sees it.
#[derive(Clone, Default)]
pub(crate) struct TrenvExecutor {
    pub filters: Vec<Filter>,
    pub deferred_caps: Option<LinuxCapabilities>,
    pub exec_stamp: Option<Arc<OwnedFd>>,
    /// An exec into a user-namespaced container: the namespace to enter last.
    pub user_namespace: Option<EnterUserNamespace>,
}

/// The user namespace of a container that an exec process enters after every other
/// namespace (libcontainer 0.7's exec joins all of the init's namespaces but this one, so
/// without it the process would run as the host's root), and the ids it then takes there
/// (libcontainer set it up as root, so that it could still enter).
#[derive(Clone)]
pub(crate) struct EnterUserNamespace {
    pub ns: Arc<OwnedFd>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl EnterUserNamespace {
    fn enter(&self) -> Result<(), String> {
        use nix::unistd::{Gid, setgroups, setresgid};
        nix::sched::setns(self.ns.as_ref(), nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("entering the container's user namespace: {e}"))?;
        let groups: Vec<Gid> = self
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        setgroups(&groups).map_err(|e| format!("setting the groups {groups:?}: {e}"))?;
        let gid = Gid::from_raw(self.gid);
        setresgid(gid, gid, gid).map_err(|e| format!("setting gid {gid}: {e}"))?;
        Ok(())
    }

    /// Takes the process's uid in the namespace, keeping the permitted capabilities for
    /// the deferred drop that follows.
    fn become_user(&self) -> Result<(), String> {
        use nix::unistd::{Uid, setresuid};
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        let uid = Uid::from_raw(self.uid);
        let r = setresuid(uid, uid, uid).map_err(|e| format!("setting uid {uid}: {e}"));
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        r
    }
}

impl Executor for TrenvExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        writable_dev_null(&[0, 1, 2]).map_err(|e| {
            ExecutorError::Other(format!("reopening /dev/null for the process's stdio: {e}"))
        })?;
        if let Some(userns) = &self.user_namespace {
            userns.enter().map_err(ExecutorError::Other)?;
        }
        for filter in &self.filters {
            filter.install().map_err(|e| {
                ExecutorError::Other(format!("installing the seccomp profile: {e}"))
            })?;
        }
        if let Some(userns) = &self.user_namespace {
            userns.become_user().map_err(ExecutorError::Other)?;
        }
        if let Some(caps) = &self.deferred_caps {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref()).map_err(|e| {
                ExecutorError::Other(format!(
                    "dropping capabilities after installing the seccomp profile (does the profile \
                     allow capset and prctl?): {e}"
                ))
            })?;
        }
        if let Some(fd) = &self.exec_stamp {
            let ns = crate::sys::clock::monotonic_ns().to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer; a full or closed pipe only loses
            // the stamp (the record then starts when the shim started the process).
            unsafe { libc::write(fd.as_raw_fd(), ns.as_ptr().cast(), ns.len()) };
        }
        DefaultExecutor {}.exec(spec)
    }

    /// libcontainer's check, except that a spec without PATH whose program is named by a
    /// path runs, as under runc (the program is exec'd by that path; PATH only serves to
    /// look up a bare name, which then fails as runc's lookup does).
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let env = spec.process().as_ref().and_then(|p| p.env().as_ref());
        if env.is_some_and(|e| e.iter().any(|v| v.starts_with("PATH="))) {
            return DefaultExecutor {}.validate(spec);
        }
        let mut with_path = spec.clone();
        if let Some(mut process) = with_path.process().clone() {
            let mut env = process.env().clone().unwrap_or_default();
            env.push("PATH=".into());
            process.set_env(Some(env));
            with_path.set_process(Some(process));
        }
        DefaultExecutor {}.validate(&with_path)
    }
}

/// Makes each of `fds` that is /dev/null open for reading and writing. libcontainer
/// (0.7) points an init's stdio that is the host's /dev/null at the container's, opened
/// read-only: a process then fails to write to stdout or stderr (EBADF; Python exits 1
/// at its first print), where runc opens it O_RDWR. containerd's API gives a task no
/// stdio when the client asks for none (faasd's tasks, `cio.NullIO`), so this is common.
fn writable_dev_null(fds: &[RawFd]) -> std::io::Result<()> {
    let mut null: Option<File> = None;
    for &fd in fds {
        // SAFETY: fstat writes into a zeroed stat buffer; fcntl only reads flags.
        let (rdev, mode, flags) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                continue;
            }
            (st.st_rdev, st.st_mode, libc::fcntl(fd, libc::F_GETFL))
        };
        let is_null = mode & libc::S_IFMT == libc::S_IFCHR && rdev == libc::makedev(1, 3);
        if !is_null || flags < 0 || flags & libc::O_ACCMODE == libc::O_RDWR {
            continue;
        }
        if null.is_none() {
            null = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")?,
            );
        }
        let from = null.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: dup2 of a descriptor we own onto one of this process's stdio slots.
        if unsafe { libc::dup2(from, fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access_mode(fd: RawFd) -> i32 {
        // SAFETY: fcntl only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE }
    }

    #[test]
    fn a_read_only_dev_null_becomes_writable_and_other_files_are_left_alone() {
        let ro = File::open("/dev/null").unwrap();
        let other = File::open("/proc/self/status").unwrap();
        writable_dev_null(&[ro.as_raw_fd(), other.as_raw_fd()]).unwrap();
        assert_eq!(access_mode(ro.as_raw_fd()), libc::O_RDWR);
        assert_eq!(access_mode(other.as_raw_fd()), libc::O_RDONLY);
        let mut w = &ro;
        std::io::Write::write_all(&mut w, b"x").unwrap();
    }
}
