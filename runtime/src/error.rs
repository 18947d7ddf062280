//! What every domain's errors have in common: the [`ErrorKind`] that says what a caller can
//! do about one (the shim turns it into the gRPC code containerd acts on), and
//! [`chain`], which formats an error with its causes.
//!
//! Each domain owns its error enum (`ContainerError`, `SnapshotError`, `TemplateError`,
//! …); [`crate::RuntimeError`] composes them. An error raised inside a zygote worker
//! crosses to the shim as its kind and its message ([`RemoteError`]), so a
//! bad spec is INVALID_ARGUMENT whichever process found it.

use serde::{Deserialize, Serialize};

/// What went wrong, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request or the container's configuration is wrong: fix it and retry.
    InvalidArgument,
    /// Something the request names does not exist (a template, a container's state).
    NotFound,
    /// Something the request would create exists already.
    AlreadyExists,
    /// The request is valid but the object is not in a state that allows it.
    FailedPrecondition,
    /// A bounded resource is full (the memory pool).
    ResourceExhausted,
    /// trenv's own machinery failed (the zygote, a worker, CRIU's protocol).
    Internal,
    /// The container's own program or environment failed in a way trenv cannot classify
    /// (e.g. libcontainer could not exec the entrypoint); the message says what.
    Unknown,
}

/// Formats an error with its whole `source()` chain, which libcontainer's errors need to be
/// understandable ("failed to run container process: ...: executable not found").
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = e.source();
    }
    msg
}

/// An error that knows its [`ErrorKind`]: every domain's error enum.
pub trait Classified: std::error::Error + 'static {
    fn kind(&self) -> ErrorKind;
}

/// An error raised in a zygote worker, as it reaches the shim: its kind and everything it
/// said (its whole cause chain).
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn of<E: Classified>(e: E) -> RemoteError {
        RemoteError {
            kind: e.kind(),
            message: chain(&e),
        }
    }
}
