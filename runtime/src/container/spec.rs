//! A container's OCI spec: loading it, the queries every domain asks of it, and the spec
//! as trenv hands it to libcontainer ([`derive`]).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::executor::TrenvExecutor;
use super::{ContainerError, seccomp};
use crate::error::chain;

/// Loads the spec at `path`; a spec that does not parse is the user's to fix.
pub fn load_spec(path: &Path) -> Result<Spec, ContainerError> {
    Spec::load(path).map_err(|e| ContainerError::InvalidSpec {
        path: path.display().to_string(),
        reason: chain(&e),
    })
}

/// Adapts containerd's spec for libcontainer:
/// * the rootfs path becomes absolute (libcontainer sees a different bundle directory);
/// * the seccomp profile is compiled here and installed by trenv's executor just before
///   exec (libcontainer without libseccomp would silently skip it);
/// * when there is a profile, dropping capabilities is deferred to the executor so that the
///   profile can be installed while CAP_SYS_ADMIN is still held (needed without
///   no_new_privileges), exactly as runc orders it.
pub(crate) fn derive(
    mut spec: Spec,
    bundle: &Path,
) -> Result<(Spec, TrenvExecutor), ContainerError> {
    if let Some(root) = spec.root().clone() {
        let mut root = root;
        if root.path().is_relative() {
            root.set_path(bundle.join(root.path()));
        }
        spec.set_root(Some(root));
    }
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut executor = TrenvExecutor::default();
    if let Some(profile) = profile {
        executor.filters = seccomp::compile(&profile)?;
        if let Some(mut linux) = spec.linux().clone() {
            linux.set_seccomp(None);
            spec.set_linux(Some(linux));
        }
        if let Some(mut process) = spec.process().clone() {
            executor.deferred_caps = process.capabilities().clone();
            process.set_capabilities(None);
            spec.set_process(Some(process));
        }
    }
    Ok((spec, executor))
}

/// The container has a network namespace of its own (not a pod's, not the host's).
pub fn private_netns(spec: &Spec) -> bool {
    has_own_namespace(spec, LinuxNamespaceType::Network)
}

/// The spec asks for a new namespace of `kind` (rather than joining one by path).
pub fn has_own_namespace(spec: &Spec, kind: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == kind && n.path().is_none()))
}

/// The path of the namespace of `kind` ("net" or "pid") the spec joins.
pub(crate) fn namespace_path(spec: &Spec, kind: &str) -> Option<PathBuf> {
    let want = match kind {
        "net" => LinuxNamespaceType::Network,
        "pid" => LinuxNamespaceType::Pid,
        _ => return None,
    };
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .find(|n| n.typ() == want)
        .and_then(|n| n.path().clone())
}

/// Destinations of the spec's bind mounts: their sources lie outside the container, so
/// CRIU records them as external mounts (by destination) instead of dumping them.
pub(crate) fn bind_mount_destinations(spec: &Spec) -> Vec<String> {
    bind_mounts(spec).into_iter().map(|(d, _)| d).collect()
}

/// (destination, source) of every bind mount in the spec.
pub(crate) fn bind_mounts(spec: &Spec) -> Vec<(String, String)> {
    spec.mounts()
        .as_ref()
        .into_iter()
        .flatten()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
        })
        .filter_map(|m| {
            Some((
                m.destination().display().to_string(),
                m.source().as_ref()?.display().to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn bind_mounts_are_found_by_type_or_option() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/etc/hosts","type":"bind","source":"/var/h","options":["rbind","ro"]},
                {"destination":"/data","source":"/srv/data","options":["bind"]}]}"#,
        );
        assert_eq!(
            bind_mounts(&s),
            vec![
                ("/etc/hosts".to_string(), "/var/h".to_string()),
                ("/data".to_string(), "/srv/data".to_string())
            ]
        );
    }

    #[test]
    fn joined_namespaces_have_paths_and_new_ones_do_not() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
                {"type":"pid"},{"type":"network","path":"/var/run/netns/x"},
                {"type":"ipc","path":"/proc/1/ns/ipc"}]}}"#,
        );
        assert_eq!(
            namespace_path(&s, "net"),
            Some(PathBuf::from("/var/run/netns/x"))
        );
        assert!(has_own_namespace(&s, LinuxNamespaceType::Pid));
        assert!(!private_netns(&s));
    }
}
