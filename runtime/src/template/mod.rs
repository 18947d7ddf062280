//! Memory templates: a function checkpointed once, its memory moved to a file in a memory
//! pool, restored by mapping that file copy-on-write (docs/templates.md).
//!
//! * [`manifest`]: what a template is (its files, checksums, source, conversion);
//! * [`build`]: making one from a running container (dump, rewrite, publish);
//! * [`store`]: finding, listing, checking and removing templates;
//! * [`ready`]: templates the shim makes once a function reports ready;
//! * [`mempool`]: the memory the pool files live in (tmpfs, DAX, NUMA-bound tmpfs).

use std::path::{Path, PathBuf};

use trenv_criu::template::TemplateError as ConvertError;

use crate::container::ContainerError;
use crate::error::{Classified, ErrorKind};
use crate::snapshot::SnapshotError;

pub mod build;
pub mod manifest;
pub mod mempool;
pub mod ready;
pub mod store;

pub use manifest::{FileSum, Manifest, PoolFile, security_digest, sha256_file};
pub use mempool::{MemPool, MemPoolError, MemPoolKind};
pub use store::{Checked, TemplateStore, stage_images};

/// Annotation naming the template a container is restored from.
pub const TEMPLATE_ANNOTATION: &str = "io.trenv.template";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "invalid template name {0:?}: use 1-63 lower-case letters, digits, '.', '_' or '-', \
         starting with a letter or digit"
    )]
    BadName(String),
    #[error(
        "template {name} already exists in {store}; remove it first (trenv template rm {name})"
    )]
    Exists { name: String, store: PathBuf },
    #[error(
        "template {name} not found in {store}; create it with `trenv template create {name} \
         --from CONTAINER`"
    )]
    NotFound { name: String, store: PathBuf },
    #[error(
        "template {name} failed its checksum ({what}); it was modified or corrupted: remove \
         and re-create it"
    )]
    Corrupt { name: String, what: String },
    #[error(
        "template {name} was made from a container with different security settings \
         ({fields}); CRIU restores credentials, capabilities and seccomp from the template, \
         so the new container's spec must match"
    )]
    SpecMismatch { name: String, fields: String },
    #[error("template {name}: {source}")]
    Convert {
        name: String,
        #[source]
        source: ConvertError,
    },
    #[error("template store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Dumping the source container failed.
    #[error(transparent)]
    Checkpoint(#[from] SnapshotError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Criu(#[from] trenv_criu::CriuError),
    #[error("writing template {name}'s manifest: {source}")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Classified for TemplateError {
    fn kind(&self) -> ErrorKind {
        match self {
            TemplateError::BadName(_) => ErrorKind::InvalidArgument,
            TemplateError::Exists { .. } => ErrorKind::AlreadyExists,
            TemplateError::NotFound { .. } => ErrorKind::NotFound,
            TemplateError::Corrupt { .. } | TemplateError::SpecMismatch { .. } => {
                ErrorKind::FailedPrecondition
            }
            TemplateError::Io { source, .. } if is_full(source) => ErrorKind::ResourceExhausted,
            TemplateError::Convert { source, .. } => match source {
                ConvertError::PoolFull { .. } => ErrorKind::ResourceExhausted,
                ConvertError::MultiProcess { .. } | ConvertError::Incremental => {
                    ErrorKind::FailedPrecondition
                }
                _ => ErrorKind::Internal,
            },
            TemplateError::Checkpoint(e) => e.kind(),
            TemplateError::Container(e) => e.kind(),
            TemplateError::Criu(e) => e.kind(),
            TemplateError::Io { .. } | TemplateError::Encode { .. } => ErrorKind::Internal,
        }
    }
}

/// The pool (or the store) is full.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    }
}
