//! Node tuning: host kernel settings that trenv's start path depends on.
//!
//! **favordynmods.** Moving a process into a cgroup (every container start: the init, or
//! CRIU before a restore) takes the kernel's threadgroup rwsem for writing. By default that
//! rwsem is a per-CPU one whose writer first waits for an RCU grace period: 5–16 ms on
//! this machine kind (HZ=250), once per burst of migrations, on cgroup v1 and v2 alike.
//! Mounting the cgroup2 hierarchy with `favordynmods` (Linux ≥ 6.0) switches the kernel to
//! a lock without that wait, at a small cost to forks and exits: what the kernel's
//! documentation recommends for hosts that create cgroups and migrate tasks often — a
//! serverless node. The setting is global (it also serves cgroup v1 hierarchies) and,
//! on Linux 6.18, cannot be turned off again until a reboot, so trenv never applies it
//! behind the operator's back: `trenv node tune` does, and `integration/setup.sh` runs it.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys::mountinfo::{self, MountEntry};

const FAVORDYNMODS: &str = "favordynmods";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "remounting the cgroup2 hierarchy at {point} with {FAVORDYNMODS} failed: {source}; \
         favordynmods needs Linux 6.0 or later and root in the host's mount namespace"
    )]
    Remount { point: PathBuf, source: nix::Error },
    #[error(
        "mounting a cgroup2 hierarchy at {point} with {FAVORDYNMODS} failed: {source}; \
         favordynmods needs Linux 6.0 or later and root in the host's mount namespace"
    )]
    Mount { point: PathBuf, source: nix::Error },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cgroup2 hierarchy at {point} was remounted with {FAVORDYNMODS} but now shows \
         `{now}` (was `{before}`); check it with `grep cgroup2 /proc/self/mountinfo`"
    )]
    NotApplied {
        point: PathBuf,
        before: String,
        now: String,
    },
}

/// Where favordynmods stands on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Favordynmods {
    /// Shown by the cgroup2 mount at this point.
    Enabled(PathBuf),
    /// The cgroup2 mount at this point does not have it.
    Disabled(PathBuf),
    /// No cgroup2 hierarchy is mounted (a cgroup v1-only host): the kernel shows the flag
    /// nowhere.
    Unknown,
}

/// What [`enable_favordynmods`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuned {
    AlreadyEnabled(PathBuf),
    /// Remounted the cgroup2 hierarchy at this point, every other option kept.
    Remounted(PathBuf),
    /// No cgroup2 mount: a cgroup2 hierarchy was mounted with the flag on a private
    /// directory and unmounted again (the flag stays with the kernel's cgroup2 root).
    SetThroughTemporaryMount,
}

/// The cgroup2 mount that shows the hierarchy's root, if any.
fn cgroup2_mount(mounts: &[MountEntry]) -> Option<&MountEntry> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup2" && m.root == "/")
}

pub fn favordynmods() -> Favordynmods {
    match cgroup2_mount(&mountinfo::read(None)) {
        Some(m) if m.has_super_option(FAVORDYNMODS) => Favordynmods::Enabled(m.mount_point.clone()),
        Some(m) => Favordynmods::Disabled(m.mount_point.clone()),
        None => Favordynmods::Unknown,
    }
}

/// Puts favordynmods back if it was on (`before`) and is off now. A dump makes CRIU mount
/// a cgroup2 hierarchy in the host's cgroup namespace, and such a mount applies its own
/// (empty) root flags: it turns favordynmods off (on Linux 6.18 only the shown flag; on
/// earlier kernels the setting itself).
pub fn keep_favordynmods(before: &Favordynmods) {
    if !matches!(before, Favordynmods::Enabled(_)) {
        return;
    }
    if let Favordynmods::Disabled(point) = favordynmods() {
        match enable_favordynmods(Path::new(crate::paths::RUN_DIR)) {
            Ok(_) => log::debug!(
                "favordynmods put back on the cgroup2 mount at {}",
                point.display()
            ),
            Err(e) => log::warn!("CRIU turned favordynmods off and it could not be put back: {e}"),
        }
    }
}

/// Turns favordynmods on (see the module's documentation), keeping every other option of
/// the cgroup2 mount. Idempotent.
pub fn enable_favordynmods(scratch: &Path) -> Result<Tuned, NodeError> {
    let mounts = mountinfo::read(None);
    let Some(m) = cgroup2_mount(&mounts) else {
        return mount_temporarily(scratch);
    };
    if m.has_super_option(FAVORDYNMODS) {
        return Ok(Tuned::AlreadyEnabled(m.mount_point.clone()));
    }
    let (flags, data) = remount_arguments(m);
    mount(
        None::<&str>,
        &m.mount_point,
        None::<&str>,
        flags,
        Some(data.as_str()),
    )
    .map_err(|source| NodeError::Remount {
        point: m.mount_point.clone(),
        source,
    })?;
    let after = mountinfo::read(None);
    let now = after
        .iter()
        .find(|a| a.mount_point == m.mount_point && a.fstype == "cgroup2")
        .map(|a| (a.super_options.clone(), a.mount_options.clone()));
    let kept = |now_super: &str, now_mount: &str| {
        let has = |list: &str, o: &str| list.split(',').any(|x| x == o);
        has(now_super, FAVORDYNMODS)
            && m.super_options.split(',').all(|o| has(now_super, o))
            && m.mount_options.split(',').all(|o| has(now_mount, o))
    };
    match now {
        Some((s, o)) if kept(&s, &o) => Ok(Tuned::Remounted(m.mount_point.clone())),
        other => Err(NodeError::NotApplied {
            point: m.mount_point.clone(),
            before: format!("{} / {}", m.mount_options, m.super_options),
            now: other.map_or("no cgroup2 mount".into(), |(s, o)| format!("{o} / {s}")),
        }),
    }
}

/// The flags and data of a remount that changes nothing but adds favordynmods: a legacy
/// remount applies the per-mount flags it is given (so nosuid, nodev, noexec… must be
/// repeated) and cgroup2 takes the superblock options given as the whole new set (so
/// nsdelegate, memory_recursiveprot… must be repeated too).
fn remount_arguments(m: &MountEntry) -> (MsFlags, String) {
    let mut flags = MsFlags::MS_REMOUNT;
    for o in m.mount_options.split(',') {
        flags |= match o {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    let mut data: Vec<&str> = m
        .super_options
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect();
    data.push(FAVORDYNMODS);
    (flags, data.join(","))
}

fn mount_temporarily(scratch: &Path) -> Result<Tuned, NodeError> {
    let point = scratch.join(format!("cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&point).map_err(|source| NodeError::Io {
        what: "creating",
        path: point.clone(),
        source,
    })?;
    let mounted = mount(
        Some("cgroup2"),
        &point,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(FAVORDYNMODS),
    );
    if mounted.is_ok() {
        let _ = umount2(&point, MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&point);
    mounted.map_err(|source| NodeError::Mount {
        point: point.clone(),
        source,
    })?;
    Ok(Tuned::SetThroughTemporaryMount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mount_options: &str, super_options: &str) -> MountEntry {
        MountEntry {
            id: 1,
            root: "/".into(),
            mount_point: "/sys/fs/cgroup".into(),
            mount_options: mount_options.into(),
            fstype: "cgroup2".into(),
            source: "cgroup2".into(),
            super_options: super_options.into(),
        }
    }

    #[test]
    fn a_remount_repeats_every_flag_and_option() {
        // What systemd mounts.
        let (flags, data) = remount_arguments(&entry(
            "rw,nosuid,nodev,noexec,relatime",
            "rw,nsdelegate,memory_recursiveprot",
        ));
        assert_eq!(
            flags,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RELATIME
        );
        assert_eq!(data, "nsdelegate,memory_recursiveprot,favordynmods");
    }

    #[test]
    fn a_read_only_mount_stays_read_only() {
        let (flags, data) = remount_arguments(&entry("ro,relatime", "ro"));
        assert!(flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(data, "favordynmods");
    }

    #[test]
    fn the_hierarchy_root_mount_is_the_one_read() {
        let mut sub = entry("rw", "rw");
        sub.root = "/kubepods".into();
        sub.mount_point = "/container/cgroup".into();
        let mut root = entry("rw", "rw,favordynmods");
        root.mount_point = "/sys/fs/cgroup/unified".into();
        let mounts = [sub, root];
        assert_eq!(
            cgroup2_mount(&mounts).map(|m| m.mount_point.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount(&mounts[..1]), None);
    }
}
