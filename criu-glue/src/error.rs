//! What can go wrong when driving CRIU, each saying what to do about it.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;

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
    NoVersion { path: PathBuf, reason: NoAnswer },

    #[error("CRIU at {path} started ahead of its request is not usable: {reason}")]
    NotAhead {
        path: PathBuf,
        reason: String,
        /// It never said it was ready: a CRIU without trenv's patch.
        unpatched: bool,
    },

    #[error("starting {path} swrk: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Sys {
        context: &'static str,
        source: nix::errno::Errno,
    },

    #[error("talking to CRIU: encoding a request: {source}")]
    Encode { source: protobuf::Error },

    #[error("talking to CRIU: decoding CRIU's answer: {source}")]
    Decode { source: protobuf::Error },

    #[error("CRIU died during {op} ({how}){}", log_hint(log))]
    Died {
        op: &'static str,
        how: Exit,
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
    Notify {
        script: String,
        #[source]
        reason: Refusal,
    },
}

/// Why a [`Notify`](crate::Notify) handler refused a notification: the handler's own
/// error, kept whole (as the `source` of [`CriuError::Notify`]) so that callers can
/// downcast it.
pub type Refusal = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why CRIU gave no version.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    #[error("it refused")]
    Refused,
    #[error("{0}")]
    Died(Exit),
    #[error("the answer carries no version")]
    NoVersion,
}

/// How a CRIU process ended, as far as trenv learnt it.
#[derive(Debug)]
pub enum Exit {
    /// Not learnt yet: a session fills it in once it has waited for CRIU.
    Unknown,
    Code(i32),
    Signal(i32),
    /// Neither an exit code nor a signal (e.g. stopped).
    Status(ExitStatus),
    /// Waiting for CRIU failed.
    Unwaitable(std::io::Error),
}

impl Exit {
    pub(crate) fn of(status: std::io::Result<ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (_, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Status(s),
            },
            Err(e) => Exit::Unwaitable(e),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Unknown => Ok(()),
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(sig) => write!(f, "killed by signal {sig}"),
            Exit::Status(s) => write!(f, "{s}"),
            Exit::Unwaitable(e) => write!(f, "cannot wait for it: {e}"),
        }
    }
}

impl CriuError {
    pub(crate) fn sys(context: &'static str) -> impl FnOnce(nix::errno::Errno) -> CriuError {
        move |source| CriuError::Sys { context, source }
    }

    /// CRIU is gone (how is learnt later, see [`Exit::Unknown`]).
    pub(crate) fn died(op: &'static str, log: &Option<PathBuf>) -> CriuError {
        CriuError::Died {
            op,
            how: Exit::Unknown,
            log: log.clone(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_read_as_before() {
        let died = |how| CriuError::Died {
            op: "restore",
            how,
            log: Some("/x/restore.log".into()),
        };
        assert_eq!(
            died(Exit::of(Ok(ExitStatus::from_raw(1 << 8)))).to_string(),
            "CRIU died during restore (exit status 1); CRIU's log: /x/restore.log"
        );
        assert_eq!(
            died(Exit::of(Ok(ExitStatus::from_raw(9)))).to_string(),
            "CRIU died during restore (killed by signal 9); CRIU's log: /x/restore.log"
        );
        let e = Exit::of(Err(std::io::Error::from_raw_os_error(libc::ECHILD)));
        assert!(e.to_string().starts_with("cannot wait for it: "), "{e}");
    }

    #[test]
    fn a_refused_notification_keeps_the_handlers_error() {
        let e = CriuError::Notify {
            script: "orphan-pts-master".into(),
            reason: "no console socket for the restored terminal".into(),
        };
        assert_eq!(
            e.to_string(),
            "the orphan-pts-master notification was refused: no console socket for the \
             restored terminal"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
