//! What can go wrong when driving CRIU, each saying what to do about it.

use std::path::PathBuf;

use crate::version::{CriuVersion, MIN_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error(
        "CRIU not found (looked for {looked}): trenv needs CRIU {MIN_VERSION} or newer for \
         checkpoint/restore; install it (integration/scripts/install-deps.sh builds it) or set \
         its path in trenv's configuration"
    )]
    NotFound { looked: String },

    #[error(
        "CRIU {found} at {path} is too old: trenv needs CRIU {MIN_VERSION} or newer (older \
         releases fail on kernels with a [vvar_vclock] mapping)"
    )]
    TooOld { path: PathBuf, found: CriuVersion },

    #[error(
        "CRIU at {path} does not answer a version request ({reason}): it is older than 3.0 or \
         broken; trenv needs CRIU {MIN_VERSION} or newer"
    )]
    NoVersion { path: PathBuf, reason: String },

    #[error("starting {path} swrk: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Sys {
        context: String,
        source: nix::errno::Errno,
    },

    #[error("talking to CRIU: {0}")]
    Protocol(String),

    #[error("CRIU died during {op} ({how}){}", log_hint(log))]
    Died {
        op: &'static str,
        how: String,
        log: Option<PathBuf>,
    },

    #[error("CRIU {op} failed{}{}{}", errno_hint(*errno), msg_hint(msg), log_hint(log))]
    Failed {
        op: &'static str,
        errno: i32,
        msg: String,
        log: Option<PathBuf>,
    },

    #[error("the {script} notification was refused: {reason}")]
    Notify { script: String, reason: String },
}

impl CriuError {
    pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> CriuError {
        let context = context.into();
        move |source| CriuError::Sys { context, source }
    }
}

fn errno_hint(errno: i32) -> String {
    if errno == 0 {
        String::new()
    } else {
        format!(" ({})", nix::errno::Errno::from_raw(errno).desc())
    }
}

fn msg_hint(msg: &str) -> String {
    if msg.is_empty() {
        String::new()
    } else {
        format!(": {msg}")
    }
}

fn log_hint(log: &Option<PathBuf>) -> String {
    match log {
        Some(p) => format!("; CRIU's log: {}", p.display()),
        None => String::new(),
    }
}
