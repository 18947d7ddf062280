use std::io;

use crate::{cgroup::CgroupError, rootfs::RootfsError, seccomp::SeccompError};

/// Errors of the runtime layer. Messages are meant to reach the user through containerd.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the runtime zygote is gone (the shim must be restarted): {0}")]
    ZygoteGone(String),
    #[error("protocol error talking to the runtime zygote: {0}")]
    Protocol(String),
    #[error("{0}")]
    Worker(String),
    #[error("invalid OCI spec {path}: {reason}; fix the container's configuration")]
    InvalidSpec { path: String, reason: String },
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Criu(#[from] trenv_criu::CriuError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }

    pub fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::Sys { context, source }
    }
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
