//! The container's root filesystem as containerd hands it over: a list of mounts (usually
//! one overlay, or a bind mount) to stack on `bundle/rootfs`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};

use super::idmap;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting {kind} {source_path} on {target}: {errno}")]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("mounting overlay on {target}: its {which} {path} does not exist")]
    OverlayDirMissing {
        target: PathBuf,
        which: &'static str,
        path: String,
    },
    #[error("unmounting {target}: {errno}")]
    Unmount { target: PathBuf, errno: nix::Error },
    #[error("mount options for {target} are too long ({len} bytes) even after shortening paths")]
    OptionsTooLong { target: PathBuf, len: usize },
    #[error("rootfs mount on {target}: {source}")]
    Idmap {
        target: PathBuf,
        #[source]
        source: super::idmap::IdmapError,
    },
    #[error("creating the rootfs directory {target}: {source}")]
    Dir {
        target: PathBuf,
        source: std::io::Error,
    },
}

/// One mount of containerd's `CreateTaskRequest.rootfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount(8)-style options into flags and filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear, prop) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), false),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, false),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), false),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), false),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), false),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, false),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), false),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, false),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), false),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, false),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), false),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, false),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), false),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), false),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), false),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, false),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), false),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, false),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), false),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, false),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), false),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, false),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), false),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, false),
            "private" => (MsFlags::MS_PRIVATE, MsFlags::empty(), true),
            "rprivate" => (
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                MsFlags::empty(),
                true,
            ),
            "shared" => (MsFlags::MS_SHARED, MsFlags::empty(), true),
            "rshared" => (MsFlags::MS_SHARED | MsFlags::MS_REC, MsFlags::empty(), true),
            "slave" => (MsFlags::MS_SLAVE, MsFlags::empty(), true),
            "rslave" => (MsFlags::MS_SLAVE | MsFlags::MS_REC, MsFlags::empty(), true),
            "unbindable" => (MsFlags::MS_UNBINDABLE, MsFlags::empty(), true),
            "runbindable" => (
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
                MsFlags::empty(),
                true,
            ),
            "defaults" => (MsFlags::empty(), MsFlags::empty(), false),
            _ => {
                data.push(o.clone());
                continue;
            }
        };
        if prop {
            propagation |= set;
        } else {
            flags |= set;
            flags &= !clear;
        }
    }
    (flags, propagation, data)
}

/// The writable layer of an overlay rootfs kept in memory (a sandbox's scratch storage,
/// docs/sandboxes.md): a tmpfs of `size` bytes (the function's memory limit; `None`: the
/// tmpfs default) holds the overlay's upper and work directories. Its pages are charged
/// to the memory cgroup of the process that writes them, so the function's metering
/// record counts what it wrote; and each container gets a new one, so nothing it wrote
/// outlives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scratch {
    pub size: Option<u64>,
}

/// Where a container's scratch tmpfs is mounted, below trenv's state directory of it.
pub fn scratch_dir(state_root: &Path) -> PathBuf {
    state_root.join("scratch")
}

/// The rootfs mounts with the overlay's upper and work directories moved into a scratch
/// tmpfs mounted at `dir`. The mounts as they are (and nothing mounted) when the rootfs is
/// not one overlay with an upper layer, or when the moved paths would not fit the mount
/// options; `Ok(None)` then.
pub fn with_scratch(
    mounts: &[Mount],
    dir: &Path,
    scratch: Scratch,
) -> Result<Option<Vec<Mount>>, RootfsError> {
    let [m] = mounts else { return Ok(None) };
    let has_upper = m.options.iter().any(|o| o.starts_with("upperdir="));
    if m.kind != "overlay" || !has_upper {
        return Ok(None);
    }
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    let options: Vec<String> = m
        .options
        .iter()
        .map(|o| match o.split_once('=') {
            Some(("upperdir", _)) => format!("upperdir={}", upper.display()),
            Some(("workdir", _)) => format!("workdir={}", work.display()),
            _ => o.clone(),
        })
        .collect();
    if options.join(",").len() >= 4096 - 512 {
        return Ok(None);
    }
    std::fs::create_dir_all(dir).map_err(|source| RootfsError::Dir {
        target: dir.to_path_buf(),
        source,
    })?;
    let data = match scratch.size {
        Some(n) => format!("mode=0755,size={n}"),
        None => "mode=0755".to_string(),
    };
    mount(
        Some("trenv-scratch"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|errno| RootfsError::Mount {
        kind: "tmpfs".into(),
        source_path: "trenv-scratch".into(),
        target: dir.to_path_buf(),
        errno,
    })?;
    for d in [&upper, &work] {
        if let Err(source) = std::fs::create_dir(d) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            return Err(RootfsError::Dir {
                target: d.clone(),
                source,
            });
        }
    }
    Ok(Some(vec![Mount {
        kind: m.kind.clone(),
        source: m.source.clone(),
        options,
    }]))
}

/// Mounts every mount onto `target` in order.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(target).map_err(|source| RootfsError::Dir {
        target: target.to_path_buf(),
        source,
    })?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), RootfsError> {
    let idmap_err = |source| RootfsError::Idmap {
        target: target.to_path_buf(),
        source,
    };
    let (idmapping, options) = idmap::split_rootfs_options(&m.options).map_err(idmap_err)?;
    let Some(mapping) = idmapping else {
        return mount_plain(m, &m.options, target);
    };
    // containerd's `uidmap=`/`gidmap=` options (a user-namespaced pod's snapshot): the
    // mount seen through the mapping (see super::idmap).
    let userns = idmap::user_namespace(&mapping).map_err(idmap_err)?;
    let (flags, _, data) = parse_options(&options);
    if m.kind == "overlay" {
        // Each lower layer through a read-only idmapped mount beside the rootfs, for as long
        // as the overlay takes to be made (it keeps its own clones of its layers).
        let staging = idmapped_layers_dir(target);
        let mut staged = idmap::Staged::default();
        let mut options = Vec::with_capacity(options.len());
        for o in data.iter() {
            let Some(dirs) = o.strip_prefix("lowerdir=") else {
                continue;
            };
            let mut mapped = Vec::new();
            for (i, dir) in dirs.split(':').enumerate() {
                let how = idmap::TreeOptions {
                    read_only: true,
                    ..Default::default()
                };
                let tree =
                    idmap::idmapped_tree(Path::new(dir), userns.as_fd(), how).map_err(idmap_err)?;
                let p = staged
                    .stage(&staging, &i.to_string(), tree, true)
                    .map_err(idmap_err)?;
                mapped.push(p.display().to_string());
            }
            options.push(format!("lowerdir={}", mapped.join(":")));
        }
        options.extend(
            m.options
                .iter()
                .filter(|o| {
                    !o.starts_with("lowerdir=")
                        && !o.starts_with("uidmap=")
                        && !o.starts_with("gidmap=")
                })
                .cloned(),
        );
        let result = mount_plain(m, &options, target);
        staged.release();
        return result;
    }
    if m.kind != "bind" && !flags.contains(MsFlags::MS_BIND) {
        return Err(idmap_err(idmap::IdmapError::NotBind {
            destination: "/".into(),
            kind: m.kind.clone(),
        }));
    }
    let how = idmap::TreeOptions {
        recursive_clone: flags.contains(MsFlags::MS_REC),
        recursive_idmap: false,
        read_only: flags.contains(MsFlags::MS_RDONLY),
    };
    let tree =
        idmap::idmapped_tree(Path::new(&m.source), userns.as_fd(), how).map_err(idmap_err)?;
    idmap::attach(tree, target).map_err(idmap_err)
}

/// Where the idmapped lower layers of the overlay on `target` are mounted while it is made.
pub fn idmapped_layers_dir(target: &Path) -> PathBuf {
    target.with_file_name(".rootfs-idmapped-layers")
}

/// Mounts `m` with `options` (no idmapping) on `target`.
fn mount_plain(m: &Mount, options: &[String], target: &Path) -> Result<(), RootfsError> {
    let (mut flags, propagation, data) = parse_options(options);
    if m.kind == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    let mut data = data.join(",");
    let page = 4096usize;
    let mut cwd_changed = false;
    if m.kind == "overlay" && data.len() >= page - 512 {
        // The mount data must fit in a page: move into the directory all layer paths share
        // and give them relative to it (safe here, this process is a single-use worker).
        if let Some((dir, short)) = shorten_overlay(&data)
            && nix::unistd::chdir(Path::new(&dir)).is_ok()
        {
            data = short;
            cwd_changed = true;
        }
        if data.len() >= page {
            return Err(RootfsError::OptionsTooLong {
                target: target.to_path_buf(),
                len: data.len(),
            });
        }
    }
    let err = |errno| RootfsError::Mount {
        kind: m.kind.clone(),
        source_path: m.source.clone(),
        target: target.to_path_buf(),
        errno,
    };
    let fstype = if m.kind == "bind" {
        None
    } else {
        Some(m.kind.as_str())
    };
    let data_opt = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    let result = mount(Some(m.source.as_str()), target, fstype, flags, data_opt);
    if cwd_changed {
        let _ = nix::unistd::chdir("/");
    }
    result.map_err(|errno| match missing_overlay_dir(m, options, errno) {
        Some((which, path)) => RootfsError::OverlayDirMissing {
            target: target.to_path_buf(),
            which,
            path,
        },
        None => err(errno),
    })?;
    // A read-only bind mount needs a remount to become read-only.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount::<str, Path, str, str>(None, target, None, flags | MsFlags::MS_REMOUNT, None)
            .map_err(err)?;
    }
    if !propagation.is_empty() {
        mount::<str, Path, str, str>(None, target, None, propagation, None).map_err(err)?;
    }
    Ok(())
}

/// For an overlay mount that failed with ENOENT: the first of its directories that does not
/// exist (which option, and the path), so that the error says what is missing.
fn missing_overlay_dir(
    m: &Mount,
    options: &[String],
    errno: nix::Error,
) -> Option<(&'static str, String)> {
    if m.kind != "overlay" || errno != nix::Error::ENOENT {
        return None;
    }
    options.iter().find_map(|o| {
        let (k, v) = o.split_once('=')?;
        let which = match k {
            "lowerdir" => "lower directory",
            "upperdir" => "upper directory",
            "workdir" => "work directory",
            _ => return None,
        };
        v.split(':')
            .find(|p| !p.is_empty() && !Path::new(p).exists())
            .map(|p| (which, p.to_string()))
    })
}

/// Rewrites overlay options with paths relative to the deepest directory all of them
/// share. Returns that directory and the new option string.
fn shorten_overlay(data: &str) -> Option<(String, String)> {
    let mut paths: Vec<&str> = Vec::new();
    for opt in data.split(',') {
        if let Some((k, v)) = opt.split_once('=')
            && matches!(k, "lowerdir" | "upperdir" | "workdir")
        {
            paths.extend(v.split(':'));
        }
    }
    let first = paths.first()?;
    let mut prefix = Path::new(first).parent()?.to_path_buf();
    while !paths.iter().all(|p| Path::new(p).starts_with(&prefix)) {
        prefix = prefix.parent()?.to_path_buf();
    }
    let prefix_s = prefix.to_str()?.trim_end_matches('/').to_string();
    let strip = |p: &str| -> String {
        p.strip_prefix(&prefix_s)
            .map(|r| r.trim_start_matches('/').to_string())
            .unwrap_or_else(|| p.to_string())
    };
    let rewritten: Vec<String> = data
        .split(',')
        .map(|opt| match opt.split_once('=') {
            Some((k, v)) if matches!(k, "lowerdir" | "upperdir" | "workdir") => {
                format!(
                    "{k}={}",
                    v.split(':').map(strip).collect::<Vec<_>>().join(":")
                )
            }
            _ => opt.to_string(),
        })
        .collect();
    Some((prefix_s, rewritten.join(",")))
}

/// Unmounts everything stacked on `target`. Not mounted is not an error.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(RootfsError::Unmount {
                    target: target.to_path_buf(),
                    errno,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_missing_overlay_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let have = dir.path().display().to_string();
        let gone = dir.path().join("gone").display().to_string();
        let overlay = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![],
        };
        let options = opts(&[
            "index=off",
            &format!("workdir={have}"),
            &format!("upperdir={have}"),
            &format!("lowerdir={have}:{gone}"),
        ]);
        let enoent = nix::Error::ENOENT;
        assert_eq!(
            missing_overlay_dir(&overlay, &options, enoent),
            Some(("lower directory", gone.clone()))
        );
        assert_eq!(
            missing_overlay_dir(&overlay, &options, nix::Error::EINVAL),
            None
        );
        let all_there = opts(&[&format!("upperdir={have}"), &format!("lowerdir={have}")]);
        assert_eq!(missing_overlay_dir(&overlay, &all_there, enoent), None);
        let bind = Mount {
            kind: "bind".into(),
            ..overlay
        };
        assert_eq!(missing_overlay_dir(&bind, &options, enoent), None);
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, prop, data) =
            parse_options(&opts(&["ro", "nosuid", "rbind", "rprivate", "index=off"]));
        assert!(flags.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        ));
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, vec!["index=off".to_string()]);
    }

    #[test]
    fn rw_clears_ro() {
        let (flags, _, _) = parse_options(&opts(&["ro", "rw"]));
        assert!(!flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn overlay_paths_are_shortened_to_a_common_prefix() {
        let data = "index=off,lowerdir=/var/lib/s/snapshots/2/fs:/var/lib/s/snapshots/1/fs,upperdir=/var/lib/s/snapshots/3/fs,workdir=/var/lib/s/snapshots/3/work";
        let (dir, short) = shorten_overlay(data).unwrap();
        assert_eq!(dir, "/var/lib/s/snapshots");
        assert_eq!(
            short,
            "index=off,lowerdir=2/fs:1/fs,upperdir=3/fs,workdir=3/work"
        );
    }
}
