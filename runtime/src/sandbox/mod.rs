//! Sandbox repurposing (docs/sandboxes.md): a container's network, IPC and UTS namespaces
//! outlive it in a node-wide idle pool, purged, and the next compatible container — of the
//! same function or any other of its tenant — starts in them instead of in new ones. Its
//! mount and PID namespaces, rootfs and cgroup are its own, made at its Create; what the
//! kept namespaces held is purged before they are handed on.
//!
//! * [`key`]: which containers take part, and what makes two of them compatible;
//! * [`policy`]: which idle sandbox a container gets, which ones are evicted (pure);
//! * [`record`]: a sandbox's state on disk, and who holds it;
//! * [`pins`]: the kept namespaces, pinned by bind mounts;
//! * [`store`]: the private mount namespace those pins live in, out of the host's mount table;
//! * [`memory`]: what a sandbox holds, in a memory cgroup of its own;
//! * [`purge`]: the purge, step by step;
//! * [`network`]: a sandbox's CNI network, attached once and kept;
//! * [`pool`]: the pool itself, shared by every shim of the node and the CLI.

pub mod key;
pub mod memory;
pub mod network;
pub mod pins;
pub mod policy;
pub mod pool;
pub mod purge;
pub mod record;
pub mod store;

pub use key::{Ineligible, compat_key, eligible};
pub use pins::{Joinable, Kind, Pins};
pub use policy::{Bounds, Want};
pub use pool::{IdlePool, Lease, Released, Take};
pub use record::{Record, State};

use crate::error::{Classified, ErrorKind};

/// What can go wrong with a sandbox: trenv's or the node's, but for a network the
/// container names that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("a thread working in a sandbox's namespaces panicked")]
    ThreadPanicked,
    #[error(
        "process {pid} outside trenv holds the sandbox's {kind} namespace: the sandbox is \
         destroyed rather than handed to another function"
    )]
    Stray { pid: i32, kind: &'static str },
    #[error("the purge left {0}")]
    Unpurged(String),
    #[error("sandbox {0} is no longer in the pool")]
    Gone(String),
    #[error(
        "no CNI network {name:?} in {} ([sandboxes] cni_conf_dir): add its configuration \
         list there or name another network",
        .dir.display()
    )]
    NoNetwork {
        name: String,
        dir: std::path::PathBuf,
    },
    #[error("CNI {command} with plugin {plugin} failed: {reason}")]
    Cni {
        command: String,
        plugin: String,
        reason: String,
    },
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let what = what.into();
        move |source| SandboxError::Io { what, source }
    }

    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
        let what = what.into();
        move |source| SandboxError::Sys { what, source }
    }
}

impl Classified for SandboxError {
    fn kind(&self) -> ErrorKind {
        match self {
            SandboxError::NoNetwork { .. } => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}
