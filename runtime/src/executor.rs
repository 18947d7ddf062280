//! The last step inside the container's init (or exec) process before the payload runs.

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxCapabilities, Spec};

use crate::seccomp::Filter;

/// Installs the compiled seccomp filters, then drops the capabilities whose drop was
/// deferred (see `sandbox::derive_spec`), then execs the payload like libcontainer's
/// default executor.
#[derive(Clone, Default)]
pub(crate) struct TrenvExecutor {
    pub filters: Vec<Filter>,
    pub deferred_caps: Option<LinuxCapabilities>,
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
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
