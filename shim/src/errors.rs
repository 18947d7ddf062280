//! Mapping of trenv's errors to ttrpc status codes containerd understands.

use containerd_shim::protos::ttrpc::{self, Code};
use trenv_runtime::RuntimeError;

pub fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

pub fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what} not found"))
}

pub fn invalid(msg: impl ToString) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, msg)
}

pub fn precondition(msg: impl ToString) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, msg)
}

pub fn internal(msg: impl ToString) -> ttrpc::Error {
    status(Code::INTERNAL, msg)
}

impl From<RuntimeErrorStatus> for ttrpc::Error {
    fn from(e: RuntimeErrorStatus) -> Self {
        let msg = trenv_runtime::error::chain(&e.0);
        match e.0 {
            RuntimeError::InvalidSpec { .. } | RuntimeError::Seccomp(_) => invalid(msg),
            RuntimeError::Cgroup(trenv_runtime::cgroup::CgroupError::SystemdUnavailable) => {
                invalid(msg)
            }
            // Worker errors are mostly the container's configuration (binary not found,
            // bad mounts); containerd shows the message either way.
            RuntimeError::Worker(_) => status(Code::UNKNOWN, msg),
            _ => internal(msg),
        }
    }
}

/// A runtime error on its way to containerd.
pub struct RuntimeErrorStatus(pub RuntimeError);

impl From<RuntimeError> for RuntimeErrorStatus {
    fn from(e: RuntimeError) -> Self {
        RuntimeErrorStatus(e)
    }
}

pub fn rt(e: impl Into<RuntimeError>) -> ttrpc::Error {
    RuntimeErrorStatus(e.into()).into()
}
