//! Idmapped mounts (mount_setattr(2) with `MOUNT_ATTR_IDMAP`): how a user-namespaced
//! container (Kubernetes' `hostUsers: false`) sees the host's files owned by its own ids.
//! Two things ask for them, and containerd's runc shim honours both:
//!
//! - the rootfs mounts containerd hands over, with the options `uidmap=C:H:S` and
//!   `gidmap=C:H:S` (CRI's snapshots of a user-namespaced pod): on an overlay each lower
//!   layer is seen through a read-only idmapped mount (the upper layer stays as it is: what
//!   the container writes is stored under its host ids), on a bind the mount itself;
//! - the spec's mounts with `uidMappings`/`gidMappings` (runtime spec 1.2; CRI's volumes,
//!   `/etc/hosts`, `/etc/resolv.conf`…). libcontainer 0.7 ignores those fields, so trenv
//!   makes each such mount itself, in the host's mount namespace under the container's
//!   state directory, and hands libcontainer a plain bind of it: a bind of an idmapped
//!   mount keeps its idmapping. They are unmounted as soon as the container's init has made
//!   its own ([`Staged::release`]).
//!
//! A user-namespaced container gets every bind mount that way (idmapped or not): its root
//! binds from inside its user namespace, as an unprivileged host user who cannot reach
//! sources below containerd's 0700 directories (a pod's `/etc/resolv.conf`, `/etc/hosts`,
//! shm); trenv opens them as root on the host, as runc does before entering the namespace.
//!
//! The mapping's user namespace is made by a short-lived child of the worker that unshares
//! one and waits while its maps are written (the way runc and containerd get one).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount as SpecMount, Spec};

/// Errors of idmapped mounts.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error(
        "mount option {option:?}: {why}; expected container-id:host-id:size (several separated by commas)"
    )]
    BadOption { option: String, why: String },
    #[error(
        "the mount of {what} asks for an idmapping of {given} ids only; uid and gid mappings go together"
    )]
    HalfMapped { what: String, given: &'static str },
    #[error(
        "the mount on {destination} asks for an idmapped mount of type {kind:?}; only bind mounts (and overlay rootfs layers) can be idmapped"
    )]
    NotBind { destination: String, kind: String },
    #[error("making the user namespace of an idmapped mount: {step}: {errno}")]
    Userns { step: &'static str, errno: Errno },
    #[error(
        "{step} {path}: {errno}; idmapped mounts need Linux 5.12 or later and a filesystem that supports them (ext4, xfs, btrfs, tmpfs, overlayfs lower layers)"
    )]
    Mount {
        step: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl IdmapError {
    /// Whether the request itself is wrong (not the node).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            IdmapError::BadOption { .. }
                | IdmapError::HalfMapped { .. }
                | IdmapError::NotBind { .. }
        )
    }
}

/// One range of a mapping, as containerd's mount options and the spec write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdRange {
    fn of_spec(m: &LinuxIdMapping) -> IdRange {
        IdRange {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        }
    }

    /// The line of `/proc/PID/{uid,gid}_map` for it.
    fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.size)
    }
}

/// A user namespace's uid and gid maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Parses the value of a `uidmap=`/`gidmap=` option: `C:H:S[,C:H:S…]`.
pub fn parse_ranges(option: &str, value: &str) -> Result<Vec<IdRange>, IdmapError> {
    let bad = |why: String| IdmapError::BadOption {
        option: option.to_string(),
        why,
    };
    let mut ranges = Vec::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let fields: Vec<&str> = part.split(':').collect();
        let [c, h, s] = fields[..] else {
            return Err(bad(format!("{part:?} has {} fields", fields.len())));
        };
        let num = |what: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|e| bad(format!("{what} {v:?}: {e}")))
        };
        let range = IdRange {
            container_id: num("container id", c)?,
            host_id: num("host id", h)?,
            size: num("size", s)?,
        };
        if range.size == 0 {
            return Err(bad(format!("{part:?} maps no id")));
        }
        ranges.push(range);
    }
    if ranges.is_empty() {
        return Err(bad("no mapping".into()));
    }
    Ok(ranges)
}

/// The idmapping a rootfs mount's options ask for, and the options without it.
pub fn split_rootfs_options(
    options: &[String],
) -> Result<(Option<IdMapping>, Vec<String>), IdmapError> {
    let mut uids = None;
    let mut gids = None;
    let mut rest = Vec::new();
    for o in options {
        if let Some(v) = o.strip_prefix("uidmap=") {
            uids = Some(parse_ranges(o, v)?);
        } else if let Some(v) = o.strip_prefix("gidmap=") {
            gids = Some(parse_ranges(o, v)?);
        } else {
            rest.push(o.clone());
        }
    }
    match (uids, gids) {
        (None, None) => Ok((None, rest)),
        (Some(uids), Some(gids)) => Ok((Some(IdMapping { uids, gids }), rest)),
        (Some(_), None) => Err(IdmapError::HalfMapped {
            what: "the rootfs".into(),
            given: "user",
        }),
        (None, Some(_)) => Err(IdmapError::HalfMapped {
            what: "the rootfs".into(),
            given: "group",
        }),
    }
}

/// A user namespace with the given maps, made to idmap mounts with (no process lives in it
/// once this returns).
pub fn user_namespace(mapping: &IdMapping) -> Result<OwnedFd, IdmapError> {
    let err = |step| move |errno| IdmapError::Userns { step, errno };
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(err("pipe"))?;
    let (go_r, go_w) = nix::unistd::pipe().map_err(err("pipe"))?;
    // SAFETY: the child only calls async-signal-safe functions (unshare, write, read,
    // _exit) before it exits.
    match unsafe { nix::unistd::fork() }.map_err(err("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_w, &[u8::from(ok)]);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(go_r.as_raw_fd(), &mut b);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            let result = (|| {
                let mut b = [0u8; 1];
                let n = nix::unistd::read(ready_r.as_raw_fd(), &mut b).map_err(err("read"))?;
                if n != 1 || b[0] != 1 {
                    return Err(IdmapError::Userns {
                        step: "unshare(CLONE_NEWUSER) in the helper",
                        errno: Errno::EPERM,
                    });
                }
                let proc = PathBuf::from(format!("/proc/{child}"));
                for (file, ranges) in [("uid_map", &mapping.uids), ("gid_map", &mapping.gids)] {
                    let text: String = ranges.iter().map(IdRange::map_line).collect();
                    std::fs::write(proc.join(file), text).map_err(|source| IdmapError::Io {
                        context: format!("writing {file} of the idmapping's user namespace"),
                        source,
                    })?;
                }
                std::fs::File::open(proc.join("ns/user"))
                    .map(OwnedFd::from)
                    .map_err(|source| IdmapError::Io {
                        context: "opening the idmapping's user namespace".into(),
                        source,
                    })
            })();
            drop(go_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// How a tree is cloned and idmapped.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeOptions {
    /// Clone the submounts too (`rbind`).
    pub recursive_clone: bool,
    /// Idmap the submounts too (`ridmap`).
    pub recursive_idmap: bool,
    pub read_only: bool,
}

/// A detached clone of the mount tree at `source`, idmapped through `userns`.
pub fn idmapped_tree(
    source: &Path,
    userns: BorrowedFd<'_>,
    how: TreeOptions,
) -> Result<OwnedFd, IdmapError> {
    clone_tree(source, Some(userns), how)
}

/// A detached clone of the mount tree at `source` (opened here, by root in the host's
/// namespaces), idmapped through `userns` if given.
pub fn clone_tree(
    source: &Path,
    userns: Option<BorrowedFd<'_>>,
    how: TreeOptions,
) -> Result<OwnedFd, IdmapError> {
    let path = CString::new(source.as_os_str().as_bytes()).map_err(|_| IdmapError::Mount {
        step: "open_tree",
        path: source.to_path_buf(),
        errno: Errno::EINVAL,
    })?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if how.recursive_clone {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a path string that lives across the call; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(IdmapError::Mount {
            step: "open_tree",
            path: source.to_path_buf(),
            errno: Errno::last(),
        });
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let Some(userns) = userns else {
        return Ok(tree);
    };
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    if how.read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let mut at = libc::AT_EMPTY_PATH;
    if how.recursive_idmap {
        at |= libc::AT_RECURSIVE;
    }
    // SAFETY: a valid fd, an empty C path, and a mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(IdmapError::Mount {
            step: "mount_setattr(MOUNT_ATTR_IDMAP) on",
            path: source.to_path_buf(),
            errno: Errno::last(),
        });
    }
    Ok(tree)
}

/// Attaches a detached tree on `target` (an existing file or directory).
pub fn attach(tree: OwnedFd, target: &Path) -> Result<(), IdmapError> {
    let failed = |errno| IdmapError::Mount {
        step: "move_mount onto",
        path: target.to_path_buf(),
        errno,
    };
    let path = CString::new(target.as_os_str().as_bytes()).map_err(|_| failed(Errno::EINVAL))?;
    // SAFETY: a valid fd, C strings that live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(failed(Errno::last()));
    }
    Ok(())
}

/// Mounts made for a while in the host's mount namespace (idmapped copies of what a mount
/// asks for), unmounted and their mount points removed by [`Staged::release`] or on drop.
#[derive(Debug, Default)]
pub struct Staged {
    points: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Staged {
    /// Attaches `tree` on a new mount point `name` under `dir` (made if missing); says where.
    pub fn stage(
        &mut self,
        dir: &Path,
        name: &str,
        tree: OwnedFd,
        is_dir: bool,
    ) -> Result<PathBuf, IdmapError> {
        let io = |context: String| move |source| IdmapError::Io { context, source };
        if self.dir.is_none() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            self.dir = Some(dir.to_path_buf());
        }
        let p = dir.join(name);
        if is_dir {
            std::fs::create_dir(&p).map_err(io(format!("creating {}", p.display())))?;
        } else {
            std::fs::File::create(&p).map_err(io(format!("creating {}", p.display())))?;
        }
        self.points.push(p.clone());
        attach(tree, &p)?;
        Ok(p)
    }

    /// Whether anything was staged (before [`Staged::release`]).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Unmounts everything staged and removes the mount points (what cannot be unmounted
    /// is left, and logged: removing below a mount would reach into what it shows).
    pub fn release(&mut self) {
        for p in self.points.drain(..).rev() {
            match unmount_all(&p) {
                Ok(()) => {
                    let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
                }
                Err(e) => log::warn!("unmounting the staged idmapped mount {}: {e}", p.display()),
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.release();
    }
}

/// Unmounts everything stacked on `p`; not mounted is not an error.
fn unmount_all(p: &Path) -> Result<(), Errno> {
    loop {
        match umount2(p, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Unmounts and removes whatever is left under `dir` (a staging directory of a container
/// whose create did not finish); nothing there is not an error.
pub fn sweep(dir: &Path) -> Result<(), IdmapError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(IdmapError::Io {
                context: format!("reading {}", dir.display()),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        unmount_all(&p).map_err(|errno| IdmapError::Mount {
            step: "unmounting",
            path: p.clone(),
            errno,
        })?;
        let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// The ranges of a spec mount's idmapping, if it asks for one.
fn spec_mount_ranges(m: &SpecMount) -> Result<Option<IdMapping>, IdmapError> {
    let uids = m.uid_mappings().as_deref().unwrap_or_default();
    let gids = m.gid_mappings().as_deref().unwrap_or_default();
    let what = || m.destination().display().to_string();
    match (uids.is_empty(), gids.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(IdMapping {
            uids: uids.iter().map(IdRange::of_spec).collect(),
            gids: gids.iter().map(IdRange::of_spec).collect(),
        })),
        (false, true) => Err(IdmapError::HalfMapped {
            what: what(),
            given: "user",
        }),
        (true, false) => Err(IdmapError::HalfMapped {
            what: what(),
            given: "group",
        }),
    }
}

/// Whether the spec asks for any idmapped mount.
pub fn spec_has_idmapped_mounts(spec: &Spec) -> bool {
    spec.mounts().iter().flatten().any(|m| {
        m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
            || m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty())
    })
}

/// Checks the spec's idmapped mounts without making anything (at validation: a bad one is
/// the user's to fix).
pub fn check_spec(spec: &Spec) -> Result<(), IdmapError> {
    for m in spec.mounts().iter().flatten() {
        if spec_mount_ranges(m)?.is_some() && !is_bind(m) {
            return Err(IdmapError::NotBind {
                destination: m.destination().display().to_string(),
                kind: m.typ().clone().unwrap_or_default(),
            });
        }
    }
    Ok(())
}

fn is_bind(m: &SpecMount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Replaces bind mounts of the spec by plain binds of copies made under `dir` (see the
/// module's documentation): each idmapped one by an idmapped copy and, with `every_bind`
/// (a user-namespaced container), every other bind by a plain copy — opened here, by root
/// on the host, where the container's root might not reach (containerd keeps a pod's
/// `/etc/resolv.conf`, `/etc/hosts` and shm under 0700 directories; runc opens such
/// sources before entering the user namespace too). The copies stay until the returned
/// [`Staged`] is released.
pub fn stage_spec_mounts(
    mut spec: Spec,
    dir: &Path,
    every_bind: bool,
) -> Result<(Spec, Staged), IdmapError> {
    let mut staged = Staged::default();
    let wanted = |m: &SpecMount| {
        m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
            || m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty())
            || (every_bind && is_bind(m))
    };
    if !spec.mounts().iter().flatten().any(wanted) {
        return Ok((spec, staged));
    }
    check_spec(&spec)?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (i, m) in mounts.iter_mut().enumerate() {
        if !wanted(m) {
            continue;
        }
        let mapping = spec_mount_ranges(m)?;
        let options: Vec<String> = m.options().clone().unwrap_or_default();
        let has = |o: &str| options.iter().any(|x| x == o);
        let how = TreeOptions {
            recursive_clone: has("rbind"),
            recursive_idmap: has("ridmap"),
            read_only: false,
        };
        let source = m.source().clone().unwrap_or_default();
        let userns = mapping.as_ref().map(user_namespace).transpose()?;
        let tree = clone_tree(&source, userns.as_ref().map(|u| u.as_fd()), how)?;
        let is_dir = std::fs::metadata(&source)
            .map(|md| md.is_dir())
            .unwrap_or(true);
        let point = staged.stage(dir, &i.to_string(), tree, is_dir)?;
        m.set_source(Some(point));
        drop_idmapping(m);
    }
    spec.set_mounts(Some(mounts));
    Ok((spec, staged))
}

/// The spec without its mounts' idmappings (what is recorded once the init has made its
/// mounts: libcontainer's exec refuses a spec that asks for idmapped mounts).
pub fn without_mount_idmaps(mut spec: Spec) -> Spec {
    if let Some(mut mounts) = spec.mounts().clone() {
        mounts.iter_mut().for_each(drop_idmapping);
        spec.set_mounts(Some(mounts));
    }
    spec
}

/// Removes a mount's idmapping (its mappings and the `idmap`/`ridmap` options).
fn drop_idmapping(m: &mut SpecMount) {
    if let Some(options) = m.options().clone() {
        m.set_options(Some(
            options
                .into_iter()
                .filter(|o| o != "idmap" && o != "ridmap")
                .collect(),
        ));
    }
    m.set_uid_mappings(None);
    m.set_gid_mappings(None);
}

/// Builds spec mappings from ranges (tests and callers that write specs).
pub fn spec_mapping(r: IdRange) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(r.container_id)
        .host_id(r.host_id)
        .size(r.size)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn containerds_rootfs_options_are_split_from_the_rest() {
        let (map, rest) = split_rootfs_options(&opts(&[
            "index=off",
            "uidmap=0:100000:65536",
            "gidmap=0:100000:65536,65536:300000:10",
            "lowerdir=/a:/b",
        ]))
        .unwrap();
        assert_eq!(rest, opts(&["index=off", "lowerdir=/a:/b"]));
        let IdMapping { uids: u, gids: g } = map.unwrap();
        assert_eq!(
            u,
            vec![IdRange {
                container_id: 0,
                host_id: 100000,
                size: 65536
            }]
        );
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].map_line(), "65536 300000 10\n");
        let (none, rest) = split_rootfs_options(&opts(&["ro"])).unwrap();
        assert!(none.is_none());
        assert_eq!(rest, opts(&["ro"]));
    }

    #[test]
    fn bad_or_half_mappings_are_refused_saying_what_is_expected() {
        for bad in ["uidmap=0:1", "uidmap=a:1:2", "uidmap=0:1:0", "uidmap="] {
            let e = split_rootfs_options(&opts(&[bad, "gidmap=0:1:1"])).unwrap_err();
            assert!(
                e.to_string().contains("container-id:host-id:size"),
                "{bad}: {e}"
            );
        }
        let e = split_rootfs_options(&opts(&["uidmap=0:1:1"])).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
    }

    fn mount_with(kind: &str, options: &[&str], mapped: bool) -> SpecMount {
        let mut m = SpecMount::default();
        m.set_destination("/vol".into());
        m.set_typ(Some(kind.into()));
        m.set_source(Some("/srv".into()));
        m.set_options(Some(opts(options)));
        if mapped {
            let r = IdRange {
                container_id: 0,
                host_id: 100000,
                size: 65536,
            };
            m.set_uid_mappings(Some(vec![spec_mapping(r)]));
            m.set_gid_mappings(Some(vec![spec_mapping(r)]));
        }
        m
    }

    #[test]
    fn only_bind_mounts_may_be_idmapped() {
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![mount_with("bind", &["rbind", "ro"], true)]));
        assert!(spec_has_idmapped_mounts(&spec));
        check_spec(&spec).unwrap();
        spec.set_mounts(Some(vec![mount_with("none", &["bind"], true)]));
        check_spec(&spec).unwrap();
        spec.set_mounts(Some(vec![mount_with("tmpfs", &["nosuid"], true)]));
        let e = check_spec(&spec).unwrap_err();
        assert!(e.to_string().contains("only bind mounts"), "{e}");
        spec.set_mounts(Some(vec![mount_with("tmpfs", &["nosuid"], false)]));
        assert!(!spec_has_idmapped_mounts(&spec));
        check_spec(&spec).unwrap();
    }

    #[test]
    fn a_spec_without_idmapped_mounts_is_left_as_it_is() {
        let spec = Spec::default();
        let before = serde_json::to_string(&spec).unwrap();
        let (after, staged) =
            stage_spec_mounts(spec, Path::new("/nonexistent/trenv-idmap"), true).unwrap();
        assert_eq!(serde_json::to_string(&after).unwrap(), before);
        assert!(staged.points.is_empty() && staged.dir.is_none());
    }
}
