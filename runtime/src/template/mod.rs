//! Memory templates: a function checkpointed once, its memory moved to a file in a memory
//! pool, restored by mapping that file copy-on-write (docs/templates.md).
//!
//! * [`tenant`]: who a template belongs to (the only tenant that sees and restores it);
//! * [`manifest`]: what a template is (its owner, files, checksums, source, conversion);
//! * [`build`]: making one from a running container (bounds, dump, rewrite, publish);
//! * [`store`]: finding, listing, checking and removing templates;
//! * [`ready`]: templates the shim makes once a function reports ready;
//! * [`warmup`]: requests a function serves before its template is taken (priming);
//! * [`mempool`]: the memory the pool files live in (tmpfs, DAX, NUMA-bound tmpfs).

use std::path::{Path, PathBuf};

use trenv_criu::template::TemplateError as ConvertError;

use crate::container::ContainerError;
use crate::error::{Classified, ErrorKind};
use crate::snapshot::SnapshotError;

pub mod build;
pub mod kernel;
pub mod manifest;
pub mod mempool;
pub mod ready;
pub mod store;
pub mod tenant;
pub mod warmup;

pub use manifest::{FileSum, Manifest, PoolFile, security_digest, sha256_file};
pub use mempool::{MemPool, MemPoolError, MemPoolKind};
pub use store::{Checked, TemplateStore, TenantLimits, Usage};
pub use tenant::{Tenant, TenantError};

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
        "template {name} of tenant {tenant} already exists in {store}; remove it first \
         (trenv template rm {name} --tenant {tenant})"
    )]
    Exists {
        name: String,
        /// The tenant as displayed (kept small: every Result of the runtime carries this).
        tenant: String,
        store: PathBuf,
    },
    #[error(
        "template {name} not found for tenant {tenant} in {store} (a template is restored only \
         in the tenant that made it); create it with `trenv template create {name} --from \
         CONTAINER -n NAMESPACE`"
    )]
    NotFound {
        name: String,
        /// The tenant as displayed (kept small: every Result of the runtime carries this).
        tenant: String,
        store: PathBuf,
    },
    #[error(
        "no template {name} of the layout before tenants in {store}; `trenv template list` \
         shows them"
    )]
    LegacyNotFound { name: String, store: PathBuf },
    #[error(
        "template {name} ({dir}) is of the layout before tenants: it has no owner and is never \
         restored; re-create it from a running container (trenv template create {name} --from \
         CONTAINER -n NAMESPACE) and remove this one (trenv template rm --legacy {name})"
    )]
    Legacy { name: String, dir: PathBuf },
    #[error(
        "tenant {tenant} cannot make another template: {what}; remove some of its templates \
         (trenv template list --tenant {tenant}, trenv template rm NAME --tenant {tenant}) or \
         raise the bound in trenv's config"
    )]
    TenantFull { tenant: String, what: String },
    #[error(
        "template {name} cannot be {action} a container in a user namespace (uid/gid mappings, \
         Kubernetes hostUsers: false): CRIU gives the processes it restores the ids they were \
         dumped with, which a mapping changes; run the container without a user namespace \
         (hostUsers: true) or without the template"
    )]
    UserNamespace { name: String, action: &'static str },
    #[error(transparent)]
    Tenant(#[from] TenantError),
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
    #[error("template {name} cannot be restored into this container: {difference}")]
    SpecDiffers {
        name: String,
        difference: crate::snapshot::honour::Difference,
    },
    #[error(
        "template {name} was made before trenv recorded the spec fields a restore cannot \
         change (process.args, process.cwd, process.env, mounts): re-create it (trenv \
         template rm {name} --tenant {tenant}, then trenv template create {name} --from \
         CONTAINER -n NAMESPACE)"
    )]
    Outdated { name: String, tenant: String },
    #[error(
        "template {name} was made for the kernel backend (trenv-mmt), and restores on this \
         node map the pool file ({why}): load the trenv-mmt module and set [pool] \
         kernel_templates = true, or remove the template and make it again here (that \
         memory is then copied at restore)"
    )]
    NeedsKernelBackend { name: String, why: String },
    #[error(
        "template {name}: the function held {files:?} open or mapped at each of {dumps} dumps, \
         files of its writable layer that an instance's fresh rootfs does not have, so no \
         restore could open them; keep such files on a volume or in the image, or have the \
         function close them before it is templated"
    )]
    HeldFiles {
        name: String,
        files: Vec<String>,
        dumps: u32,
    },
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
    #[error(transparent)]
    Kernel(#[from] trenv_criu::kernel_templates::KernelTemplateError),
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
            TemplateError::BadName(_) | TemplateError::UserNamespace { .. } => {
                ErrorKind::InvalidArgument
            }
            TemplateError::Tenant(e) => e.kind(),
            TemplateError::Exists { .. } => ErrorKind::AlreadyExists,
            TemplateError::NotFound { .. } | TemplateError::LegacyNotFound { .. } => {
                ErrorKind::NotFound
            }
            TemplateError::TenantFull { .. } => ErrorKind::ResourceExhausted,
            TemplateError::Corrupt { .. }
            | TemplateError::SpecMismatch { .. }
            | TemplateError::SpecDiffers { .. }
            | TemplateError::Outdated { .. }
            | TemplateError::NeedsKernelBackend { .. }
            | TemplateError::HeldFiles { .. }
            | TemplateError::Legacy { .. } => ErrorKind::FailedPrecondition,
            TemplateError::Io { source, .. } if is_full(source) => ErrorKind::ResourceExhausted,
            TemplateError::Convert { source, .. } => match source {
                ConvertError::PoolFull { .. } => ErrorKind::ResourceExhausted,
                ConvertError::Incremental => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
            TemplateError::Checkpoint(e) => e.kind(),
            TemplateError::Container(e) => e.kind(),
            TemplateError::Criu(e) => e.kind(),
            TemplateError::Kernel(trenv_criu::kernel_templates::KernelTemplateError::Stale {
                ..
            }) => ErrorKind::FailedPrecondition,
            TemplateError::Kernel(_) => ErrorKind::Internal,
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
