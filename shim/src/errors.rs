//! Mapping of trenv's errors to the ttrpc status codes containerd understands: the one
//! place where an [`ErrorKind`] becomes a gRPC code.

use containerd_shim::protos::ttrpc::{self, Code};
use trenv_runtime::error::chain;
use trenv_runtime::{ErrorKind, RuntimeError};

use crate::io::StdioError;

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

/// The gRPC code containerd acts on for an error of this kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::ResourceExhausted => Code::RESOURCE_EXHAUSTED,
        ErrorKind::Internal => Code::INTERNAL,
        // libcontainer's failures that trenv cannot classify (the entrypoint cannot be
        // executed, a mount fails): containerd shows the message either way.
        ErrorKind::Unknown => Code::UNKNOWN,
    }
}

/// A runtime error on its way to containerd, with its cause chain.
pub fn rt(e: impl Into<RuntimeError>) -> ttrpc::Error {
    let e = e.into();
    status(code(e.kind()), chain(&e))
}

/// The shim could not set up or serve a process's stdio: the client's fault for a bad log
/// URI or a logging program that cannot run, the shim's otherwise.
pub fn stdio(e: StdioError) -> ttrpc::Error {
    if e.is_user_error() {
        invalid(chain(&e))
    } else {
        internal(chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trenv_runtime::container::ContainerError;

    fn code_of(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn a_bad_spec_found_anywhere_is_invalid_argument() {
        let e = ContainerError::InvalidSpec {
            path: "/b/config.json".into(),
            reason: "no args".into(),
        };
        assert_eq!(code_of(rt(e)), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::ResourceExhausted,
            ErrorKind::Internal,
            ErrorKind::Unknown,
        ];
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| code(*k)).collect();
        assert_eq!(codes.len(), kinds.len());
        assert_eq!(code(ErrorKind::ResourceExhausted), Code::RESOURCE_EXHAUSTED);
    }
}
