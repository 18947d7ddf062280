//! A container's OCI spec: loading it, checking it ([`validate`]), the queries every domain
//! asks of it, and the spec as trenv hands it to libcontainer ([`derive`]).
//!
//! [`validate`] refuses what runc refuses before anything exists, with an error naming the
//! field and its value: libcontainer would otherwise fail deep inside the container's init
//! with a message that names neither (or, for uid 4294967295, which setresuid(2) reads as
//! "unchanged", run the process as root).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxCapabilities, LinuxNamespaceType, Spec};

use super::executor::TrenvExecutor;
use super::{ContainerError, cgroup, seccomp};
use crate::error::chain;
use crate::sandbox::Joinable;

/// A spec that no container can run as it is. Each names the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the spec has no process")]
    NoProcess,
    #[error("process.args is empty: the spec names no program to run")]
    NoArgs,
    #[error("process.cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("process.cwd {cwd:?} cannot be created in the container's root: {source}")]
    Cwd {
        cwd: String,
        #[source]
        source: io::Error,
    },
    #[error("process.rlimits: {kind} has soft limit {soft} above its hard limit {hard}")]
    Rlimit { kind: String, soft: u64, hard: u64 },
    #[error("process.oomScoreAdj {0} is out of range: it must be between -1000 and 1000")]
    OomScoreAdj(i32),
    #[error(
        "process.user.{field} {value} is not a valid id: setresuid(2) and setresgid(2) read it \
         as -1, \"leave unchanged\", which would keep the process root"
    )]
    UnsetId { field: &'static str, value: u32 },
    #[error("linux.namespaces: the {kind} namespace path {path} does not exist")]
    NamespaceMissing {
        kind: LinuxNamespaceType,
        path: PathBuf,
    },
    #[error("linux.namespaces: the {kind} namespace path {path} is not a namespace file")]
    NotNamespace {
        kind: LinuxNamespaceType,
        path: PathBuf,
    },
    #[error("linux.namespaces: the {kind} namespace path {path} is a namespace of another type")]
    WrongNamespace {
        kind: LinuxNamespaceType,
        path: PathBuf,
    },
    #[error("linux.namespaces: the {kind} namespace path {path} cannot be checked: {source}")]
    NamespaceUnreadable {
        kind: LinuxNamespaceType,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "linux.cgroupsPath {0:?} names the root of the cgroup hierarchy; name a cgroup of the \
         container's own"
    )]
    CgroupRoot(String),
    #[error(
        "linux.cgroupsPath {0:?}: the fields of a systemd cgroups path (slice:prefix:name) \
         must not contain '/'"
    )]
    SystemdCgroupSlash(String),
}

/// Loads the spec at `path`; a spec that does not parse is the user's to fix, told which
/// field is wrong (serde alone only gives a line and column of a one-line file).
pub fn load_spec(path: &Path) -> Result<Spec, ContainerError> {
    Spec::load(path).map_err(|e| ContainerError::InvalidSpec {
        path: path.display().to_string(),
        reason: match std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .and_then(|v| failing_field(&v))
        {
            Some((field, why)) => format!("{field}: {why}"),
            None => chain(&e),
        },
    })
}

/// The innermost of the spec's sections that does not deserialize, and why.
fn failing_field(spec: &serde_json::Value) -> Option<(&'static str, String)> {
    use oci_spec::runtime as oci;
    use serde::de::DeserializeOwned;
    fn check<T: DeserializeOwned>(v: &serde_json::Value) -> Option<String> {
        serde_json::from_value::<T>(v.clone())
            .err()
            .map(|e| e.to_string())
    }
    type Check = fn(&serde_json::Value) -> Option<String>;
    // Innermost first.
    let sections: [(&'static str, &str, Check); 14] = [
        (
            "linux.seccomp",
            "/linux/seccomp",
            check::<oci::LinuxSeccomp>,
        ),
        (
            "linux.resources",
            "/linux/resources",
            check::<oci::LinuxResources>,
        ),
        (
            "linux.namespaces",
            "/linux/namespaces",
            check::<Vec<oci::LinuxNamespace>>,
        ),
        (
            "linux.devices",
            "/linux/devices",
            check::<Vec<oci::LinuxDevice>>,
        ),
        (
            "linux.uidMappings",
            "/linux/uidMappings",
            check::<Vec<oci::LinuxIdMapping>>,
        ),
        (
            "linux.gidMappings",
            "/linux/gidMappings",
            check::<Vec<oci::LinuxIdMapping>>,
        ),
        (
            "process.rlimits",
            "/process/rlimits",
            check::<Vec<oci::PosixRlimit>>,
        ),
        (
            "process.capabilities",
            "/process/capabilities",
            check::<oci::LinuxCapabilities>,
        ),
        ("process.user", "/process/user", check::<oci::User>),
        ("process", "/process", check::<oci::Process>),
        ("linux", "/linux", check::<oci::Linux>),
        ("mounts", "/mounts", check::<Vec<oci::Mount>>),
        ("hooks", "/hooks", check::<oci::Hooks>),
        ("root", "/root", check::<oci::Root>),
    ];
    sections.iter().find_map(|(field, pointer, check)| {
        let why = check(spec.pointer(pointer)?)?;
        Some((*field, why))
    })
}

/// Checks what runc checks before creating anything: a program to run, an absolute working
/// directory, rlimits whose soft limit is within the hard one, an oom_score_adj the kernel
/// takes, user and group ids other than (uid_t)-1, namespace paths that are namespaces of
/// the type they are joined as, and a cgroups path naming a cgroup below the root.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    if process.args().as_ref().is_none_or(Vec::is_empty) {
        return Err(SpecError::NoArgs);
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::RelativeCwd(process.cwd().display().to_string()));
    }
    for r in process.rlimits().iter().flatten() {
        if r.soft() > r.hard() {
            return Err(SpecError::Rlimit {
                kind: r.typ().to_string(),
                soft: r.soft(),
                hard: r.hard(),
            });
        }
    }
    if let Some(adj) = process.oom_score_adj()
        && !(-1000..=1000).contains(&adj)
    {
        return Err(SpecError::OomScoreAdj(adj));
    }
    let user = process.user();
    let ids = [("uid", user.uid()), ("gid", user.gid())]
        .into_iter()
        .chain(
            user.additional_gids()
                .iter()
                .flatten()
                .map(|g| ("additionalGids", *g)),
        );
    for (field, value) in ids {
        if value == u32::MAX {
            return Err(SpecError::UnsetId { field, value });
        }
    }
    let linux = spec.linux().as_ref();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(path) = ns.path() {
            check_namespace_path(ns.typ(), path)?;
        }
    }
    if let Some(path) = linux.and_then(|l| l.cgroups_path().as_ref()) {
        check_cgroups_path(path)?;
    }
    Ok(())
}

/// A namespace path must be a namespace (a file of nsfs) of the type it is joined as.
/// Checked without opening anything but nsfs files, so a FIFO or device is never opened.
fn check_namespace_path(kind: LinuxNamespaceType, path: &Path) -> Result<(), SpecError> {
    let unreadable = |source| SpecError::NamespaceUnreadable {
        kind,
        path: path.to_path_buf(),
        source,
    };
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {}
        Ok(_) => {
            return Err(SpecError::NotNamespace {
                kind,
                path: path.to_path_buf(),
            });
        }
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            return Err(SpecError::NamespaceMissing {
                kind,
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(unreadable(e.into())),
    }
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open descriptor.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if nstype < 0 {
        return Err(unreadable(io::Error::last_os_error()));
    }
    // oci-spec's namespace types carry their CLONE_NEW* flags as values.
    if nstype != kind as i32 {
        return Err(SpecError::WrongNamespace {
            kind,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A cgroups path must name a cgroup below the hierarchy's root once cleaned (see
/// [`cgroup::clean_path`]), and a systemd one must not smuggle a path into its fields.
fn check_cgroups_path(path: &Path) -> Result<(), SpecError> {
    let text = path.display().to_string();
    if cgroup::is_systemd_path(path) {
        if text.contains('/') {
            return Err(SpecError::SystemdCgroupSlash(text));
        }
        return Ok(());
    }
    let cleaned = cgroup::clean_path(path);
    if cleaned.components().all(|c| c == Component::RootDir) {
        return Err(SpecError::CgroupRoot(text));
    }
    Ok(())
}

/// Creates the process's working directory in the container's root if it is missing, as
/// runc does (an image's WORKDIR need not exist in its layers). Every step is resolved
/// inside the root, symlinks included (openat2 with RESOLVE_IN_ROOT), so that a link in the
/// image cannot make trenv create anything outside it; what is created is root's, mode
/// 0755, as runc makes it. (A working directory below one of the spec's mounts is created
/// in the root underneath that mount, where the process does not see it.)
pub(crate) fn ensure_cwd(spec: &Spec) -> Result<(), SpecError> {
    let (Some(root), Some(process)) = (spec.root(), spec.process()) else {
        return Ok(());
    };
    let cwd = process.cwd();
    let err = |source: io::Error| SpecError::Cwd {
        cwd: cwd.display().to_string(),
        source,
    };
    let names: Vec<&std::ffi::OsStr> = cwd.components().fold(Vec::new(), |mut names, c| {
        match c {
            Component::Normal(n) => names.push(n),
            Component::ParentDir => {
                names.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
        names
    });
    if names.is_empty() {
        return Ok(());
    }
    let root_dir = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root.path())
        .map_err(err)?;
    let open_in_root = |rel: &Path| -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(root_dir.as_raw_fd(), rel, how)?;
        // SAFETY: openat2 just returned this descriptor, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut rel = PathBuf::from(".");
    let mut dir = open_in_root(&rel).map_err(|e| err(e.into()))?;
    for name in names {
        rel.push(name);
        dir = match open_in_root(&rel) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(
                    Some(dir.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(err(e.into())),
                }
                open_in_root(&rel).map_err(|e| err(e.into()))?
            }
            Err(e) => return Err(err(e.into())),
        };
    }
    Ok(())
}

/// The non-recursive name of a recursive rootfs propagation, if it is one.
fn plain_propagation(propagation: &str) -> Option<&'static str> {
    Some(match propagation {
        "rshared" => "shared",
        "rslave" => "slave",
        "rprivate" => "private",
        "runbindable" => "unbindable",
        _ => return None,
    })
}

/// Adapts containerd's spec for libcontainer:
/// * the rootfs path becomes absolute (libcontainer sees a different bundle directory);
/// * a recursive rootfs propagation ("rshared", "rslave", "rprivate", "runbindable", which the
///   OCI spec allows and CRI writes for bidirectional and host-to-container mounts) becomes
///   the form libcontainer knows; libcontainer applies it to the whole tree (MS_REC) anyway;
/// * the cgroups path is cleaned ([`cgroup::clean_path`]): libcgroups joins it to each
///   hierarchy's mount point as it is, so a `..` would climb out of the hierarchy;
/// * the seccomp profile is compiled here and installed by trenv's executor just before
///   exec (libcontainer without libseccomp would silently skip it);
/// * when there is a profile, dropping capabilities is deferred to the executor so that the
///   profile can be installed while CAP_SYS_ADMIN is still held (needed without
///   no_new_privileges), exactly as runc orders it.
pub(crate) fn derive(
    spec: Spec,
    bundle: &Path,
    sandbox: Option<&Joinable>,
) -> Result<(Spec, TrenvExecutor), ContainerError> {
    let mut spec = adapt(spec, bundle, sandbox);
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut executor = TrenvExecutor::default();
    if let Some(profile) = profile {
        executor.filters = seccomp::compile(&profile)?;
        executor.deferred_caps = without_seccomp(&mut spec);
    }
    Ok((spec, executor))
}

/// The spec [`derive`] derives, for processes that CRIU restores: their seccomp filters
/// and capabilities come from the image, so the spec's profile is not compiled.
pub(crate) fn derive_for_restore(spec: Spec, bundle: &Path, sandbox: Option<&Joinable>) -> Spec {
    let mut spec = adapt(spec, bundle, sandbox);
    if spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some()) {
        without_seccomp(&mut spec);
    }
    spec
}

/// [`derive`]'s changes but the seccomp profile's.
fn adapt(mut spec: Spec, bundle: &Path, sandbox: Option<&Joinable>) -> Spec {
    join_sandbox(&mut spec, sandbox);
    sysfs_by_bind(&mut spec);
    if let Some(root) = spec.root().clone() {
        let mut root = root;
        if root.path().is_relative() {
            root.set_path(bundle.join(root.path()));
        }
        spec.set_root(Some(root));
    }
    if let Some(mut linux) = spec.linux().clone()
        && let Some(propagation) = linux.rootfs_propagation().clone()
        && let Some(plain) = plain_propagation(&propagation)
    {
        linux.set_rootfs_propagation(Some(plain.to_string()));
        spec.set_linux(Some(linux));
    }
    if let Some(mut linux) = spec.linux().clone()
        && let Some(path) = linux.cgroups_path().clone()
        && !cgroup::is_systemd_path(&path)
    {
        linux.set_cgroups_path(Some(cgroup::clean_path(&path)));
        spec.set_linux(Some(linux));
    }
    spec
}

/// Removes the seccomp profile from `spec` and the capabilities from its process (a
/// process under a profile drops them after installing its filters); those capabilities.
fn without_seccomp(spec: &mut Spec) -> Option<LinuxCapabilities> {
    if let Some(mut linux) = spec.linux().clone() {
        linux.set_seccomp(None);
        spec.set_linux(Some(linux));
    }
    let mut process = spec.process().clone()?;
    let caps = process.capabilities().clone();
    process.set_capabilities(None);
    spec.set_process(Some(process));
    caps
}

/// A user-namespaced container in a network namespace its user namespace does not own (a
/// pod's, made by CRI before the container; or the host's) may not mount sysfs (EPERM): it
/// gets a recursive bind of the host's /sys instead, with the mount's flags, as runc
/// falls back to.
fn sysfs_by_bind(spec: &mut Spec) {
    if !user_namespaced(spec) || has_own_namespace(spec, LinuxNamespaceType::Network) {
        return;
    }
    let Some(mut mounts) = spec.mounts().clone() else {
        return;
    };
    let mut changed = false;
    for m in mounts
        .iter_mut()
        .filter(|m| m.typ().as_deref() == Some("sysfs"))
    {
        let mut options: Vec<String> = m.options().clone().unwrap_or_default();
        options.retain(|o| o != "bind" && o != "rbind");
        options.insert(0, "rbind".into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some("/sys".into()));
        m.set_options(Some(options));
        changed = true;
    }
    if changed {
        spec.set_mounts(Some(mounts));
    }
}

/// The annotation of a derived spec naming the sandbox whose namespaces the container
/// joined (written by trenv only: [`join_sandbox`] removes any other value).
pub const SANDBOX_MARK: &str = "io.trenv.sandbox-dir";

/// Points the spec's network, IPC and UTS namespaces at the sandbox's pinned ones (or, with
/// no sandbox, makes sure the spec carries no sandbox mark).
fn join_sandbox(spec: &mut Spec, sandbox: Option<&Joinable>) {
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    let marked = annotations.remove(SANDBOX_MARK).is_some();
    if let Some(pins) = sandbox {
        if let Some(mut linux) = spec.linux().clone() {
            let namespaces = linux.namespaces().clone().unwrap_or_default();
            let joined = namespaces
                .into_iter()
                .map(|mut n| {
                    let kind = match n.typ() {
                        LinuxNamespaceType::Network => Some(crate::sandbox::Kind::Net),
                        LinuxNamespaceType::Ipc => Some(crate::sandbox::Kind::Ipc),
                        LinuxNamespaceType::Uts => Some(crate::sandbox::Kind::Uts),
                        _ => None,
                    };
                    if let Some(k) = kind {
                        n.set_path(Some(pins.path(k).to_path_buf()));
                    }
                    n
                })
                .collect();
            linux.set_namespaces(Some(joined));
            spec.set_linux(Some(linux));
        }
        annotations.insert(SANDBOX_MARK.into(), pins.dir.display().to_string());
    } else if !marked {
        return;
    }
    spec.set_annotations(Some(annotations));
}

/// The (derived) spec runs the container in a sandbox: its network, IPC and UTS namespaces
/// are joined by path but are the container's own, as new ones would be.
pub fn sandboxed(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(SANDBOX_MARK))
}

/// The container runs in a user namespace (uid/gid mappings: Kubernetes' `hostUsers:
/// false`, `ctr run --uidmap`).
pub fn user_namespaced(spec: &Spec) -> bool {
    spec.linux().as_ref().is_some_and(|l| {
        l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || l.namespaces()
                .as_ref()
                .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::User))
    })
}

/// The container has a network namespace of its own (not a pod's, not the host's): a new
/// one, or its sandbox's.
pub fn private_netns(spec: &Spec) -> bool {
    has_own_namespace(spec, LinuxNamespaceType::Network) || sandboxed(spec)
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

    /// A spec runc runs, changed by `edit`.
    fn valid(edit: impl FnOnce(&mut serde_json::Value)) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": { "path": "/nonexistent-root" },
            "process": {
                "args": ["/bin/true"], "cwd": "/", "user": { "uid": 0, "gid": 0 },
                "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024 }],
                "oomScoreAdj": 0,
            },
            "linux": {
                "namespaces": [{ "type": "pid" }, { "type": "network", "path": "/proc/self/ns/net" }],
                "cgroupsPath": "/default/c1",
            },
        });
        edit(&mut v);
        serde_json::from_value(v).unwrap()
    }

    fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let e = validate(&valid(edit)).expect_err("validation passed");
        ContainerError::from(e).to_string()
    }

    #[test]
    fn a_spec_that_does_not_parse_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let mut v = serde_json::to_value(valid(|_| {})).unwrap();
        v["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["mkdir"], "action": "SCMP_ACT_BOGUS" }],
        });
        std::fs::write(&file, v.to_string()).unwrap();
        let msg = load_spec(&file).unwrap_err().to_string();
        assert!(
            msg.contains("linux.seccomp: unknown variant `SCMP_ACT_BOGUS`"),
            "{msg}"
        );
        assert!(
            msg.ends_with("; fix the container's configuration"),
            "{msg}"
        );
    }

    #[test]
    fn a_restored_container_s_spec_is_derived_as_a_cold_start_s_without_compiling_its_profile() {
        let with_profile = |profile: serde_json::Value| {
            valid(|v| {
                v["root"]["path"] = "rootfs".into();
                v["process"]["capabilities"] = serde_json::json!({ "bounding": ["CAP_KILL"] });
                v["linux"]["cgroupsPath"] = "/default/../c1".into();
                v["linux"]["seccomp"] = profile;
            })
        };
        let bundle = Path::new("/run/b");
        let profile = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["mkdir"], "action": "SCMP_ACT_ERRNO" }],
        });
        let (cold, executor) = derive(with_profile(profile.clone()), bundle, None).unwrap();
        assert!(!executor.filters.is_empty());
        assert!(executor.deferred_caps.is_some());
        let restored = derive_for_restore(with_profile(profile), bundle, None);
        assert_eq!(restored, cold);
        assert_eq!(
            restored.root().as_ref().unwrap().path(),
            &bundle.join("rootfs")
        );
        // A profile that would not compile (a syscall this architecture does not have) is
        // not the restore's concern: its filters come from the image.
        let bad = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO" }],
        });
        let restored = derive_for_restore(with_profile(bad), bundle, None);
        assert!(restored.linux().as_ref().unwrap().seccomp().is_none());
        assert!(
            restored
                .process()
                .as_ref()
                .unwrap()
                .capabilities()
                .is_none()
        );
    }

    #[test]
    fn a_spec_runc_runs_passes_validation() {
        validate(&valid(|_| {})).unwrap();
    }

    #[test]
    fn what_runc_refuses_is_refused_naming_the_field_and_the_value() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &[&str])> = vec![
            (
                Box::new(|v| v["process"]["args"] = serde_json::json!([])),
                &["process.args", "empty"],
            ),
            (
                Box::new(|v| v["process"]["rlimits"][0]["soft"] = 4096.into()),
                &["process.rlimits", "RLIMIT_NOFILE", "4096", "1024"],
            ),
            (
                Box::new(|v| v["process"]["oomScoreAdj"] = 5000.into()),
                &["oomScoreAdj", "5000"],
            ),
            (
                Box::new(|v| v["process"]["user"]["uid"] = u32::MAX.into()),
                &["process.user.uid", "4294967295"],
            ),
            (
                Box::new(|v| {
                    v["process"]["user"]["additionalGids"] = serde_json::json!([5, u32::MAX])
                }),
                &["additionalGids", "4294967295"],
            ),
            (
                Box::new(|v| v["process"]["cwd"] = "work".into()),
                &["process.cwd", "\"work\""],
            ),
            (
                Box::new(|v| {
                    v["linux"]["namespaces"][1]["path"] = "/var/run/netns/no-such-ns".into()
                }),
                &[
                    "net namespace path /var/run/netns/no-such-ns",
                    "does not exist",
                ],
            ),
            (
                Box::new(|v| v["linux"]["namespaces"][1]["path"] = "/etc/hostname".into()),
                &["net namespace path /etc/hostname", "not a namespace"],
            ),
            (
                Box::new(|v| v["linux"]["namespaces"][1]["path"] = "/proc/self/ns/pid".into()),
                &["net namespace path /proc/self/ns/pid", "another type"],
            ),
            (
                Box::new(|v| v["linux"]["cgroupsPath"] = "a/..".into()),
                &["linux.cgroupsPath", "\"a/..\""],
            ),
            (
                Box::new(|v| v["linux"]["cgroupsPath"] = "s.slice:p:../../x".into()),
                &["linux.cgroupsPath", "s.slice:p:../../x"],
            ),
        ];
        for (edit, says) in cases {
            let msg = refused(edit);
            for s in says {
                assert!(msg.contains(s), "{msg:?} does not say {s:?}");
            }
            assert!(
                msg.ends_with("; fix the container's configuration"),
                "{msg}"
            );
        }
    }

    #[test]
    fn derive_cleans_the_cgroups_path() {
        let spec = valid(|v| v["linux"]["cgroupsPath"] = "/../../../tmp/escape".into());
        let (derived, _) = derive(spec, Path::new("/b"), None).unwrap();
        assert_eq!(
            derived.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/tmp/escape"))
        );
    }

    #[test]
    fn a_sandboxed_spec_joins_the_sandbox_and_only_trenv_marks_it() {
        let spec = valid(|v| {
            v["linux"]["namespaces"] = serde_json::json!([
                {"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}
            ]);
            v["annotations"] = serde_json::json!({ SANDBOX_MARK: "/forged" });
        });
        let (plain, _) = derive(spec.clone(), Path::new("/b"), None).unwrap();
        assert!(!sandboxed(&plain), "a client cannot forge the mark");
        assert!(private_netns(&plain));
        let at = |k: &str| PathBuf::from(format!("/proc/7/task/8/root/run/sb/1/{k}"));
        let pins = Joinable {
            dir: "/run/sb/1".into(),
            net: at("net"),
            ipc: at("ipc"),
            uts: at("uts"),
        };
        let (joined, _) = derive(spec, Path::new("/b"), Some(&pins)).unwrap();
        assert!(sandboxed(&joined) && private_netns(&joined));
        let paths: Vec<_> = joined
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert_eq!(
            paths,
            vec![
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Network, Some(at("net"))),
                (LinuxNamespaceType::Ipc, Some(at("ipc"))),
                (LinuxNamespaceType::Uts, Some(at("uts"))),
                (LinuxNamespaceType::Mount, None),
            ]
        );
    }

    #[test]
    fn a_user_namespace_is_seen_by_its_mappings_or_its_namespace() {
        assert!(!user_namespaced(&valid(|_| {})));
        let mapped = valid(|v| {
            v["linux"]["uidMappings"] =
                serde_json::json!([{ "containerID": 0, "hostID": 1000, "size": 1 }])
        });
        assert!(user_namespaced(&mapped));
        let own = valid(|v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({ "type": "user" }))
        });
        assert!(user_namespaced(&own));
    }

    #[test]
    fn derive_gives_libcontainer_the_plain_form_of_a_recursive_rootfs_propagation() {
        for (asked, plain) in [
            ("rshared", "shared"),
            ("rslave", "slave"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("shared", "shared"),
        ] {
            let spec = valid(|v| v["linux"]["rootfsPropagation"] = asked.into());
            let (derived, _) = derive(spec, Path::new("/b"), None).unwrap();
            assert_eq!(
                derived
                    .linux()
                    .as_ref()
                    .unwrap()
                    .rootfs_propagation()
                    .as_deref(),
                Some(plain),
                "{asked}"
            );
        }
    }

    #[test]
    fn sysfs_is_bound_from_the_host_in_a_user_namespace_without_its_own_network() {
        let sysfs_of = |spec: Spec| {
            let (derived, _) = derive(spec, Path::new("/b"), None).unwrap();
            let m = derived
                .mounts()
                .iter()
                .flatten()
                .find(|m| m.destination() == Path::new("/sys"))
                .cloned()
                .unwrap();
            (
                m.typ().clone().unwrap(),
                m.source().clone().unwrap(),
                m.options().clone().unwrap(),
            )
        };
        let with = |netns_path: Option<&str>, userns: bool| {
            valid(|v| {
                v["mounts"] = serde_json::json!([{ "destination": "/sys", "type": "sysfs",
                    "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }]);
                let mut ns = vec![serde_json::json!({ "type": "mount" })];
                ns.push(match netns_path {
                    Some(p) => serde_json::json!({ "type": "network", "path": p }),
                    None => serde_json::json!({ "type": "network" }),
                });
                if userns {
                    ns.push(serde_json::json!({ "type": "user" }));
                    let map =
                        serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
                    v["linux"]["uidMappings"] = map.clone();
                    v["linux"]["gidMappings"] = map;
                }
                v["linux"]["namespaces"] = ns.into();
            })
        };
        let bound = sysfs_of(with(Some("/var/run/netns/pod"), true));
        assert_eq!(bound.0, "bind");
        assert_eq!(bound.1, Path::new("/sys"));
        assert_eq!(bound.2, ["rbind", "nosuid", "noexec", "nodev", "ro"]);
        // Its own network namespace (owned by its user namespace), or no user namespace:
        // sysfs as asked.
        assert_eq!(sysfs_of(with(None, true)).0, "sysfs");
        assert_eq!(sysfs_of(with(Some("/var/run/netns/pod"), false)).0, "sysfs");
    }

    fn with_cwd(root: &Path, cwd: &str) -> Spec {
        valid(|v| {
            v["root"]["path"] = root.display().to_string().into();
            v["process"]["cwd"] = cwd.into();
        })
    }

    #[test]
    fn a_missing_working_directory_is_created_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        ensure_cwd(&with_cwd(root.path(), "/srv/app/./data")).unwrap();
        assert!(root.path().join("srv/app/data").is_dir());
        // An existing one is left as it is.
        ensure_cwd(&with_cwd(root.path(), "/srv/app")).unwrap();
    }

    #[test]
    fn a_working_directory_through_symlinks_is_created_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("escaped");
        // Absolute and climbing links: both resolve inside the root.
        std::os::unix::fs::symlink(&target, root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.path().join("up")).unwrap();
        std::fs::create_dir_all(root.path().join(outside.path().strip_prefix("/").unwrap()))
            .unwrap();
        ensure_cwd(&with_cwd(root.path(), "/up/made")).unwrap();
        assert!(root.path().join("made").is_dir());
        // A link to a missing directory is not followed to create it (runc would create
        // its target inside the root): refused, and nothing made outside.
        let r = ensure_cwd(&with_cwd(root.path(), "/abs/x"));
        assert!(r.is_err(), "{r:?}");
        assert!(!target.exists(), "created outside the root");
        // Through a link to a directory that exists in the root, it is made there.
        std::fs::create_dir_all(root.path().join(target.strip_prefix("/").unwrap())).unwrap();
        ensure_cwd(&with_cwd(root.path(), "/abs/x")).unwrap();
        assert!(!target.exists(), "created outside the root");
        assert!(
            root.path()
                .join(target.strip_prefix("/").unwrap())
                .join("x")
                .is_dir()
        );
    }

    #[test]
    fn a_working_directory_below_a_file_is_the_users_to_fix() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), b"").unwrap();
        let e = ensure_cwd(&with_cwd(root.path(), "/file/x")).unwrap_err();
        let msg = ContainerError::from(e).to_string();
        assert!(msg.contains("process.cwd \"/file/x\""), "{msg}");
    }
}
