//! Container operations on youki's libcontainer: one file per verb ([`create`], [`exec`],
//! [`lifecycle`] for start/pause/resume, [`delete`]), what they stand on (the container's
//! [`location`], its [`spec`], the [`rootfs`] containerd hands over, [`seccomp`] compiled
//! with seccompiler and installed by trenv's [`executor`]), and the container's
//! [`cgroup`] as the shim sees it; [`features`], what of the OCI spec trenv supports.
//!
//! The verbs run inside a zygote worker (see [`crate::worker`]): libcontainer may clone,
//! chdir and wait as it likes there.

use std::io;

use libcontainer::error::LibcontainerError;

use crate::error::{Classified, ErrorKind, chain};

pub mod cgroup;
pub mod create;
pub mod delete;
pub mod exec;
pub(crate) mod executor;
pub mod features;
pub mod idmap;
pub mod lifecycle;
pub mod location;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
mod stdio;

pub use location::Location;
pub use stdio::StdioFds;

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid OCI spec {path}: {reason}; fix the container's configuration")]
    InvalidSpec { path: String, reason: String },
    #[error("{0}; fix the container's configuration")]
    Spec(#[from] spec::SpecError),
    #[error("{context}: {}{}", chain(.source.as_ref()), spec_hint(.source))]
    Libcontainer {
        context: &'static str,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("writing the derived spec: {}", chain(.0))]
    SaveSpec(#[source] oci_spec::OciSpecError),
    #[error("libcontainer returned no init pid")]
    NoInitPid,
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error("{0}; fix the container's configuration or the node")]
    Idmap(#[from] idmap::IdmapError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ContainerError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| ContainerError::Io { context, source }
    }

    /// A libcontainer failure while doing `context`.
    pub(crate) fn lc(context: &'static str) -> impl FnOnce(LibcontainerError) -> Self {
        move |source| ContainerError::Libcontainer {
            context,
            source: Box::new(source),
        }
    }
}

impl Classified for ContainerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ContainerError::InvalidSpec { .. }
            | ContainerError::Spec(_)
            | ContainerError::Seccomp(_) => ErrorKind::InvalidArgument,
            ContainerError::Cgroup(cgroup::CgroupError::SystemdUnavailable) => {
                ErrorKind::InvalidArgument
            }
            ContainerError::Libcontainer { source, .. } => libcontainer_kind(source),
            ContainerError::Idmap(e)
            | ContainerError::Rootfs(rootfs::RootfsError::Idmap { source: e, .. }) => {
                if e.is_invalid_request() {
                    ErrorKind::InvalidArgument
                } else {
                    ErrorKind::FailedPrecondition
                }
            }
            // containerd's snapshot is not (or no longer) there.
            ContainerError::Rootfs(rootfs::RootfsError::OverlayDirMissing { .. }) => {
                ErrorKind::FailedPrecondition
            }
            ContainerError::Rootfs(_)
            | ContainerError::Cgroup(_)
            | ContainerError::SaveSpec(_)
            | ContainerError::NoInitPid
            | ContainerError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// For libcontainer's refusals of the spec: what to do about them.
fn spec_hint(e: &LibcontainerError) -> &'static str {
    if libcontainer_kind(e) == ErrorKind::InvalidArgument {
        "; fix the container's configuration"
    } else {
        ""
    }
}

/// What libcontainer's error says about who is to blame: its validation of the spec and
/// the container id is the user's input; anything else (an entrypoint that cannot be
/// executed, a mount that fails) stays UNKNOWN, with libcontainer's message.
fn libcontainer_kind(e: &LibcontainerError) -> ErrorKind {
    match e {
        LibcontainerError::InvalidInput(_)
        | LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_)
        | LibcontainerError::Spec(_)
        | LibcontainerError::NoUserNamespace => ErrorKind::InvalidArgument,
        LibcontainerError::Exist => ErrorKind::AlreadyExists,
        LibcontainerError::NoDirectory => ErrorKind::NotFound,
        LibcontainerError::IncorrectStatus(_) => ErrorKind::FailedPrecondition,
        _ => ErrorKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_seccomp_errors_are_the_users_to_fix() {
        let bad = ContainerError::InvalidSpec {
            path: "/b/config.json".into(),
            reason: "x".into(),
        };
        assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
        let lc = ContainerError::lc("creating the container")(LibcontainerError::MissingSpec(
            libcontainer::error::MissingSpecError::Args,
        ));
        assert_eq!(lc.kind(), ErrorKind::InvalidArgument);
        assert!(lc.to_string().contains("missing args"), "{lc}");
        assert!(
            lc.to_string()
                .ends_with("; fix the container's configuration"),
            "{lc}"
        );
        let other = ContainerError::lc("starting the container")(LibcontainerError::Other(
            "exec failed".into(),
        ));
        assert_eq!(other.kind(), ErrorKind::Unknown);
        assert_eq!(other.to_string(), "starting the container: exec failed");
        assert_eq!(
            ContainerError::Cgroup(cgroup::CgroupError::SystemdUnavailable).kind(),
            ErrorKind::InvalidArgument
        );
    }
}
