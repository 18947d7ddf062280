//! Snapshots with CRIU: containerd's checkpoint ([`checkpoint`]) and restore-on-create
//! ([`restore`]), and what both share ([`criu`]: which CRIU, the options containerd
//! sends, what trenv records beside CRIU's images).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::container::ContainerError;
use crate::error::{Classified, ErrorKind, chain};

pub mod checkpoint;
pub mod criu;
pub mod honour;
pub mod restore;

pub use checkpoint::checkpoint;
pub use criu::{CheckpointOptions, CriuConfig};
pub use restore::{Phases, RestorePlan, TemplateFile, restore};

/// Errors of checkpoints and restores.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Criu(#[from] trenv_criu::CriuError),
    #[error("container {id} is {status}: only a running or paused container can be checkpointed")]
    NotRunning { id: String, status: String },
    #[error("the container has no init pid")]
    NoPid,
    #[error(
        "checkpoint option empty_namespaces: CRIU can leave only the network namespace empty, \
         not {0:?}"
    )]
    EmptyNamespace(String),
    #[error("unknown cgroups mode {0:?}: use soft, full, strict or ignore")]
    CgroupsMode(String),
    #[error("no {0} namespace path")]
    NoNamespacePath(&'static str),
    #[error("cannot restore into the existing {kind} namespace {}", .path.display())]
    JoinedNamespace { kind: String, path: PathBuf },
    #[error("{0} in the checkpoint is corrupt: {1}")]
    CorruptImage(&'static str, #[source] serde_json::Error),
    #[error(
        "the checkpoint binds the cgroup hierarchy {fstype} ({options}) at {mountpoint}, which \
         this host does not mount"
    )]
    MissingHierarchy {
        fstype: String,
        options: String,
        mountpoint: String,
    },
    #[error(
        "template {name} failed its checksum ({what}); it was modified or corrupted: remove \
         and re-create it"
    )]
    TemplateChanged { name: String, what: String },
    /// CRIU failed; its log was copied out of the work directory, which is removed. Its
    /// last lines come with the error: the bundle that keeps the log goes with the task.
    #[error(
        "{verb} container {id}: {detail}; CRIU's log is kept at {} (its end: {tail})",
        .log.display()
    )]
    CriuLogKept {
        verb: &'static str,
        id: String,
        detail: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{verb} container {id}: {source}")]
    CriuFailed {
        verb: &'static str,
        id: String,
        #[source]
        source: trenv_criu::CriuError,
    },
    #[error("CRIU reported a restore without a pid")]
    NoRestoredPid,
    #[error("{context}: {}", chain(.source.as_ref()))]
    Adopt {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing {0}: {1}")]
    Encode(&'static str, #[source] serde_json::Error),
    /// A field of the spec could not be applied to a restored container.
    #[error("applying {field} of the spec to the restored container: {source}")]
    Apply {
        field: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("applying linux.sysctl {key}={value} to the restored container: {source}")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
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

impl SnapshotError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| SnapshotError::Io { context, source }
    }

    pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let context = context.into();
        move |source| SnapshotError::Sys { context, source }
    }

    /// CRIU's failure while `verb`-ing container `id`, with its log copied from `log` to
    /// `keep` (the work directory it is in does not survive).
    pub(crate) fn criu_failed(
        verb: &'static str,
        id: &str,
        log: &Path,
        keep: PathBuf,
    ) -> impl FnOnce(trenv_criu::CriuError) -> Self {
        let id = id.to_string();
        let log = log.to_path_buf();
        move |source| match fs::copy(&log, &keep) {
            Ok(_) => SnapshotError::CriuLogKept {
                verb,
                id,
                detail: source
                    .to_string()
                    .split("; CRIU's log:")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                tail: log_tail(&keep, 5),
                log: keep,
            },
            Err(_) => SnapshotError::CriuFailed { verb, id, source },
        }
    }
}

/// The last `n` lines of a CRIU log, joined with " | " (empty if it cannot be read).
fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

impl Classified for SnapshotError {
    fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Container(e) => e.kind(),
            SnapshotError::Criu(e) => e.kind(),
            SnapshotError::NotRunning { .. } | SnapshotError::NoPid => {
                ErrorKind::FailedPrecondition
            }
            SnapshotError::EmptyNamespace(_)
            | SnapshotError::CgroupsMode(_)
            | SnapshotError::JoinedNamespace { .. }
            | SnapshotError::Apply { .. }
            | SnapshotError::Sysctl { .. } => ErrorKind::InvalidArgument,
            SnapshotError::CorruptImage(..)
            | SnapshotError::MissingHierarchy { .. }
            | SnapshotError::TemplateChanged { .. } => ErrorKind::FailedPrecondition,
            SnapshotError::CriuLogKept { .. }
            | SnapshotError::CriuFailed { .. }
            | SnapshotError::NoRestoredPid
            | SnapshotError::NoNamespacePath(_)
            | SnapshotError::Adopt { .. }
            | SnapshotError::Encode(..)
            | SnapshotError::Io { .. }
            | SnapshotError::Sys { .. } => ErrorKind::Internal,
        }
    }
}

/// Creates `dir` (mode 0700) and its parents.
pub(crate) fn make_dir(dir: &Path) -> Result<(), SnapshotError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SnapshotError::io(format!("creating {}", dir.display())))
}

/// Opens a directory for CRIU (which reads it through /proc/<pid>/fd).
pub(crate) fn open_dir(dir: &Path) -> Result<OwnedFd, SnapshotError> {
    fs::File::open(dir)
        .map(OwnedFd::from)
        .map_err(SnapshotError::io(format!("opening {}", dir.display())))
}

/// A missing or too old CRIU is the node operator's to fix; the rest is CRIU failing.
impl Classified for trenv_criu::CriuError {
    fn kind(&self) -> ErrorKind {
        match self {
            trenv_criu::CriuError::NotFound { .. }
            | trenv_criu::CriuError::TooOld { .. }
            | trenv_criu::CriuError::NoVersion { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_criu_log_brings_its_last_lines_into_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("restore.log");
        let text: String = (1..=9).map(|i| format!("(00.0{i}) line {i}\n\n")).collect();
        fs::write(&log, text).unwrap();
        let keep = dir.path().join("kept.log");
        let e = SnapshotError::criu_failed("restoring", "c1", &log, keep.clone())(
            trenv_criu::CriuError::Died {
                op: "restore",
                how: trenv_criu::Exit::Code(0),
                log: Some(log.clone()),
            },
        )
        .to_string();
        assert!(
            e.contains("CRIU died during restore (exit status 0)"),
            "{e}"
        );
        assert!(e.contains("(00.05) line 5 | (00.06) line 6"), "{e}");
        assert!(e.ends_with("(00.09) line 9)"), "{e}");
        assert!(!e.contains("line 4"), "{e}");
        assert!(keep.exists());
    }
}
