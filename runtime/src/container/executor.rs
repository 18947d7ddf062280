//! The last step inside the container's init (or exec) process before the payload runs.

use std::os::fd::{AsRawFd, OwnedFd};
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
}

impl Executor for TrenvExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        for filter in &self.filters {
            filter.install().map_err(|e| {
                ExecutorError::Other(format!("installing the seccomp profile: {e}"))
            })?;
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
