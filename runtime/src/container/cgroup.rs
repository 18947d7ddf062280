//! A container's cgroup, seen from the shim: stats, limit updates, pids and OOM events, on
//! cgroup v1 (and hybrid hosts, whose controllers are all on v1) and on cgroup v2.
//!
//! The spec's cgroupsPath is cleaned ([`clean_path`]) wherever trenv or libcontainer uses
//! it: libcgroups joins it to each hierarchy's mount point as it comes, so that
//! `/../../../tmp/x` would create `/tmp/x` on the host. runc cleans it the same way.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt, FreezerState,
};
use libcgroups::stats::Stats;
use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot detect this host's cgroup setup: {0}")]
    Setup(String),
    #[error("opening cgroup {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("cgroup {path}: {op} failed: {reason}")]
    Op {
        path: PathBuf,
        op: &'static str,
        reason: String,
    },
    #[error(
        "the systemd cgroup driver was requested (SystemdCgroup = true), but this host's \
         cgroups are not managed by systemd; use the cgroupfs driver (SystemdCgroup = false)"
    )]
    SystemdUnavailable,
    #[error("watching cgroup {path} for OOM events: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// cgroup v1's named hierarchy `name=systemd`, where runc puts every process of a container
/// too (`<mount>/<cgroupsPath>`, the path the other hierarchies get), as systemd and tools
/// reading `/proc/PID/cgroup` expect on v1 hosts. libcgroups' v1 manager only knows the
/// controllers, so trenv does it here. Where the hierarchy is not mounted (a v2-only host)
/// there is nothing to do.
pub struct NamedSystemd(PathBuf);

impl NamedSystemd {
    /// The directory of the container with this `cgroupsPath` in `name=systemd`, if the
    /// hierarchy is mounted (and the cgroupfs driver is in use: a systemd-style path on v1
    /// is refused before this).
    pub fn of(cgroups_path: Option<&Path>, id: &str) -> Option<NamedSystemd> {
        if cgroups_path.is_some_and(is_systemd_path) {
            return None;
        }
        let mount = named_systemd_mount(&fs::read_to_string("/proc/self/mountinfo").ok()?)?;
        let cleaned = cgroups_path.map(clean_path);
        let path = libcontainer::utils::get_cgroup_path(&cleaned, id);
        let relative = path.strip_prefix("/").unwrap_or(&path);
        Some(NamedSystemd(mount.join(relative)))
    }

    /// Moves `pid` into the container's `name=systemd` cgroup (made if missing).
    pub fn join(&self, pid: i32) -> std::io::Result<()> {
        fs::create_dir_all(&self.0)?;
        fs::write(self.0.join("cgroup.procs"), pid.to_string())
    }

    /// Removes the container's `name=systemd` cgroup once its processes are gone.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_dir(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("removing {}: {e}", self.0.display());
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// The mount point of the v1 hierarchy `name=systemd` in a mountinfo table.
fn named_systemd_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
        (fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// A cgroups path cleaned lexically as runc's `utils.CleanPath` does (Go's `filepath.Clean`
/// rooted at "/"): `.` and empty components go, and a `..` removes the component before it
/// but never climbs above the start, so an absolute path stays below the hierarchy's root
/// and a relative one below where it is joined. (Symlinks do not matter: cgroupfs has none.)
pub fn clean_path(path: &Path) -> PathBuf {
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::ParentDir => {
                names.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut cleaned = if path.has_root() {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    };
    cleaned.extend(names);
    cleaned
}

/// Moves process `pid` into cgroup `path` (from each hierarchy's root) in every hierarchy in
/// which it exists, as runc's shim places itself for `ShimCgroup` (containerd's cgroups
/// library keeps the hierarchies where the path exists); an error if it exists in none.
pub fn join_existing(path: &Path, pid: u32) -> Result<(), CgroupError> {
    let cleaned = clean_path(&Path::new("/").join(path));
    let relative = cleaned.strip_prefix("/").unwrap_or(&cleaned);
    let mut joined = 0;
    for m in crate::sys::mountinfo::read(None) {
        if m.fstype != "cgroup" && m.fstype != "cgroup2" {
            continue;
        }
        let dir = m.mount_point.join(relative);
        if !dir.is_dir() {
            continue;
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| CgroupError::Op {
            path: dir.clone(),
            op: "adding a process",
            reason: e.to_string(),
        })?;
        joined += 1;
    }
    if joined == 0 {
        return Err(CgroupError::Open {
            path: cleaned,
            reason: "it exists in no cgroup hierarchy of this host".into(),
        });
    }
    Ok(())
}

/// A systemd-style cgroups path, "slice:prefix:name" (relative, three fields), which the
/// systemd driver reads as unit names rather than as a path.
pub fn is_systemd_path(path: &Path) -> bool {
    let s = path.to_string_lossy();
    !s.starts_with('/') && s.split(':').count() == 3
}

/// Which cgroup API this host offers for resource control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy or hybrid hierarchy: all controllers are on v1.
    V1,
    /// Unified hierarchy.
    V2,
}

impl Version {
    pub fn detect() -> Result<Version, CgroupError> {
        match libcgroups::common::get_cgroup_setup()
            .map_err(|e| CgroupError::Setup(e.to_string()))?
        {
            CgroupSetup::Legacy | CgroupSetup::Hybrid => Ok(Version::V1),
            CgroupSetup::Unified => Ok(Version::V2),
        }
    }
}

/// The cgroup of one container.
pub struct Cgroup {
    version: Version,
    /// The path as libcontainer resolves it from the spec's cgroupsPath.
    path: PathBuf,
    manager: AnyCgroupManager,
}

impl Cgroup {
    /// The host's cgroup version, and whether it can serve the systemd driver if asked: what
    /// [`Cgroup::open`] checks before anything else (microseconds, where opening takes ~1 ms).
    pub fn check(systemd: bool) -> Result<Version, CgroupError> {
        let version = Version::detect()?;
        if systemd && (version == Version::V1 || !Path::new("/run/systemd/system").exists()) {
            return Err(CgroupError::SystemdUnavailable);
        }
        Ok(version)
    }

    /// The path (from each hierarchy's root) that libcontainer gives the cgroup of a
    /// container with this `cgroupsPath`.
    pub fn path_of(cgroups_path: Option<&Path>, id: &str) -> PathBuf {
        let cleaned = cgroups_path.map(|p| {
            if is_systemd_path(p) {
                p.to_path_buf()
            } else {
                clean_path(p)
            }
        });
        libcontainer::utils::get_cgroup_path(&cleaned, id)
    }

    /// Opens the cgroup that libcontainer uses for a container with this `cgroupsPath`.
    pub fn open(
        cgroups_path: Option<&Path>,
        id: &str,
        systemd: bool,
    ) -> Result<Cgroup, CgroupError> {
        let version = Cgroup::check(systemd)?;
        let path = Cgroup::path_of(cgroups_path, id);
        let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: path.clone(),
            systemd_cgroup: systemd,
            container_name: id.to_string(),
        })
        .map_err(|e| CgroupError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Cgroup {
            version,
            path,
            manager,
        })
    }

    /// Makes the cgroup in each v1 hierarchy and applies `resources`, with no process in
    /// it yet; returns the `cgroup.procs` files that a process joins it by
    /// ([`join_prepared`]). A restore's CRIU joins it so, in the worker, with one write per
    /// hierarchy instead of opening the cgroup there again (~1.5 ms: libcgroups reads the
    /// mount table once per controller) and applying the limits on the restore's critical
    /// path; the shim prepares it while the rest of Create runs. `None` on v2 and with the
    /// systemd driver: there the worker opens and joins the cgroup as before.
    pub fn prepare_join(
        &self,
        resources: Option<&LinuxResources>,
    ) -> Result<Option<Vec<PathBuf>>, CgroupError> {
        if !matches!(self.manager, AnyCgroupManager::V1(_)) {
            return Ok(None);
        }
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        let failed = |dir: &Path, e: std::io::Error| CgroupError::Op {
            path: dir.to_path_buf(),
            op: "creating",
            reason: e.to_string(),
        };
        let mut procs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in crate::sys::mountinfo::read(None) {
            let managed = V1_CONTROLLERS.iter().any(|c| m.has_super_option(c));
            // A hierarchy mounted twice is joined once.
            if m.fstype != "cgroup" || !managed || !seen.insert(m.super_options.clone()) {
                continue;
            }
            let dir = m.mount_point.join(rel);
            fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
            if m.has_super_option("cpuset") {
                fill_cpuset(&m.mount_point, rel).map_err(|e| failed(&dir, e))?;
            }
            procs.push(dir.join("cgroup.procs"));
        }
        if let Some(r) = resources
            && let Err(e) = self.update(r)
        {
            unprepare(&procs);
            return Err(e);
        }
        Ok(Some(procs))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn op_err(
        &self,
        op: &'static str,
    ) -> impl FnOnce(libcgroups::common::AnyManagerError) -> CgroupError + '_ {
        move |e| CgroupError::Op {
            path: self.path.clone(),
            op,
            reason: e.to_string(),
        }
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        self.manager.stats().map_err(self.op_err("reading stats"))
    }

    /// Applies new resource limits (containerd's Update).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(self.op_err("updating resources"))
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.manager.freeze(state).map_err(self.op_err("freezing"))
    }

    /// Moves a process into the cgroup (creating it if needed).
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager
            .add_task(nix::unistd::Pid::from_raw(pid))
            .map_err(self.op_err("adding a process"))
    }

    /// Removes the (empty) cgroup.
    /// Kills every process in the cgroup and waits (at most `patience`) until none is
    /// left.
    pub fn kill_all(&self, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        while let Ok(pids) = self.pids() {
            if pids.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn remove(&self) -> Result<(), CgroupError> {
        self.manager.remove().map_err(self.op_err("removing"))
    }

    /// The directory of the freezer that stops the whole cgroup (what CRIU's
    /// `freeze_cgroup` wants): the v1 freezer hierarchy's, or the v2 cgroup itself.
    pub fn freezer_dir(&self) -> Option<PathBuf> {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match self.version {
            Version::V1 => controller_mount("freezer").map(|m| m.join(rel)),
            Version::V2 => Some(Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(rel)),
        }
    }

    /// Every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(self
            .manager
            .get_all_pids()
            .map_err(self.op_err("listing processes"))?
            .into_iter()
            .map(|p| p.as_raw())
            .collect())
    }

    /// The directory holding the memory controller's files of this cgroup.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match self.version {
            Version::V1 => controller_mount("memory").map(|m| m.join(rel)),
            Version::V2 => Some(Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(rel)),
        }
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup so far.
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        let file = match self.version {
            Version::V1 => dir.join("memory.oom_control"),
            Version::V2 => dir.join("memory.events"),
        };
        read_keyed(&file, "oom_kill")
    }

    /// v2 extras that libcgroups' stats do not carry: `memory.peak` and `memory.events`.
    pub fn memory_peak(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        let file = match self.version {
            Version::V1 => dir.join("memory.max_usage_in_bytes"),
            Version::V2 => dir.join("memory.peak"),
        };
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// `memory.events` of a v2 cgroup as (key, value) pairs.
    pub fn memory_events(&self) -> Vec<(String, u64)> {
        if self.version != Version::V2 {
            return Vec::new();
        }
        let Some(dir) = self.memory_dir() else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("memory.events"))
            .map(|s| {
                s.lines()
                    .filter_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        Some((k.to_string(), v.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts watching for OOM events.
    pub fn watch_oom(&self) -> Result<OomWatcher, CgroupError> {
        let dir = self.memory_dir().ok_or_else(|| CgroupError::Watch {
            path: self.path.clone(),
            source: std::io::Error::other("no memory controller mounted"),
        })?;
        let werr = |source| CgroupError::Watch {
            path: dir.clone(),
            source,
        };
        match self.version {
            Version::V1 => {
                let control = fs::File::open(dir.join("memory.oom_control")).map_err(werr)?;
                let efd = nix::sys::eventfd::EventFd::from_value_and_flags(
                    0,
                    nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
                )
                .map_err(|e| werr(e.into()))?;
                let line = format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd());
                fs::write(dir.join("cgroup.event_control"), line).map_err(werr)?;
                Ok(OomWatcher::V1 {
                    efd: OwnedFd::from(efd),
                    _control: control,
                })
            }
            Version::V2 => {
                use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
                let ino = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| werr(e.into()))?;
                ino.add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
                    .map_err(|e| werr(e.into()))?;
                Ok(OomWatcher::V2 { ino })
            }
        }
    }
}

/// Blocks until the kernel reports memory pressure events on a cgroup.
pub enum OomWatcher {
    V1 { efd: OwnedFd, _control: fs::File },
    V2 { ino: nix::sys::inotify::Inotify },
}

impl OomWatcher {
    /// Waits for the next event. Returns false once the cgroup is gone.
    pub fn wait(&self) -> bool {
        match self {
            OomWatcher::V1 { efd, .. } => {
                let mut buf = [0u8; 8];
                // SAFETY: a borrowed duplicate; the File is forgotten before it would close.
                let mut f = unsafe { fs::File::from_raw_fd(efd.as_raw_fd()) };
                let ok = f.read_exact(&mut buf).is_ok();
                std::mem::forget(f);
                // The kernel also signals the eventfd when the cgroup is removed.
                ok
            }
            OomWatcher::V2 { ino } => match ino.read_events() {
                Ok(events) => !events.iter().any(|e| {
                    e.mask
                        .contains(nix::sys::inotify::AddWatchFlags::IN_IGNORED)
                }),
                Err(_) => false,
            },
        }
    }
}

fn read_keyed(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The v1 controllers libcgroups manages: a container's cgroup is in each one's hierarchy.
const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// A new v1 cpuset cgroup has no CPUs and no memory nodes, and a process cannot join it:
/// each directory from the hierarchy's root down to `rel` that has none gets its
/// parent's (as libcgroups does when it adds a task).
fn fill_cpuset(mount: &Path, rel: &Path) -> std::io::Result<()> {
    let mut dir = mount.to_path_buf();
    for c in rel.components() {
        let parent = dir.clone();
        dir.push(c);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if fs::read_to_string(dir.join(f))?.trim().is_empty() {
                fs::write(dir.join(f), fs::read_to_string(parent.join(f))?.trim())?;
            }
        }
    }
    Ok(())
}

/// Removes a cgroup made by [`Cgroup::prepare_join`] that nothing joined (a Create that
/// failed first): each hierarchy's directory, if it is empty. Nothing is killed: a cgroup
/// that something did join is not this function's to remove.
pub fn unprepare(procs: &[PathBuf]) {
    for dir in procs.iter().filter_map(|p| p.parent()) {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", dir.display()),
        }
    }
}

/// Moves process `pid` into a cgroup made by [`Cgroup::prepare_join`], by its
/// `cgroup.procs` files.
pub fn join_prepared(procs: &[PathBuf], pid: i32) -> Result<(), CgroupError> {
    for p in procs {
        fs::write(p, pid.to_string()).map_err(|e| CgroupError::Op {
            path: p.parent().unwrap_or(p).to_path_buf(),
            op: "adding a process",
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Mount point of a cgroup v1 controller, from /proc/self/mountinfo.
pub fn controller_mount(controller: &str) -> Option<PathBuf> {
    crate::sys::mountinfo::read(None)
        .into_iter()
        .find(|m| m.fstype == "cgroup" && m.has_super_option(controller))
        .map(|m| m.mount_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(read_keyed(&f, "oom_kill"), Some(2));
        assert_eq!(read_keyed(&f, "missing"), None);
    }

    #[test]
    fn cgroups_paths_are_cleaned_so_that_they_cannot_climb_out() {
        let clean = |p: &str| clean_path(Path::new(p)).display().to_string();
        assert_eq!(clean("/../../../tmp/escape"), "/tmp/escape");
        assert_eq!(clean("/trenv/../../x/./y//z/.."), "/x/y");
        assert_eq!(clean("a/../../b"), "b");
        assert_eq!(clean("../../etc"), "etc");
        assert_eq!(clean("/default/abc"), "/default/abc");
        assert_eq!(clean("/.."), "/");
        assert_eq!(clean("a/.."), "");
    }

    #[test]
    fn the_name_systemd_hierarchy_is_found_in_mountinfo() {
        let table = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                     40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                     41 31 0:38 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n";
        assert_eq!(
            named_systemd_mount(table),
            Some(PathBuf::from("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(
            named_systemd_mount("41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
            None
        );
    }

    #[test]
    fn systemd_cgroups_paths_are_recognised() {
        assert!(is_systemd_path(Path::new(
            "kubepods-besteffort-pod1.slice:cri-containerd:abc"
        )));
        assert!(!is_systemd_path(Path::new("/k8s.io/abc")));
        assert!(!is_systemd_path(Path::new("a/../../b")));
        assert!(!is_systemd_path(Path::new("/default/abc")));
    }

    #[test]
    fn an_escaping_cgroups_path_opens_a_cgroup_inside_the_hierarchy() {
        // Opening only computes the paths; nothing is created.
        let cg = Cgroup::open(Some(Path::new("/../../../tmp/escape")), "x", false).unwrap();
        assert_eq!(cg.path(), Path::new("/tmp/escape"));
        let memory = cg.memory_dir().unwrap();
        assert!(memory.starts_with("/sys/fs/cgroup"), "{}", memory.display());
        assert!(
            !memory.to_string_lossy().contains(".."),
            "{}",
            memory.display()
        );
    }

    #[test]
    fn detects_a_cgroup_version() {
        // Every Linux host running the tests has cgroups of some kind.
        assert!(Version::detect().is_ok());
    }

    #[test]
    fn a_prepared_v1_cgroup_is_limited_before_a_process_joins_it_by_its_procs_files() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let id = format!("trenv-prepare-test-{}", std::process::id());
        let cg = Cgroup::open(Some(Path::new(&format!("/{id}"))), &id, false).unwrap();
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "pids": {"limit": 7}
        }))
        .unwrap();
        let Some(procs) = cg.prepare_join(Some(&resources)).unwrap() else {
            assert_eq!(cg.version(), Version::V2, "v1 cgroupfs is prepared");
            return;
        };
        assert!(procs.len() >= 4, "one per hierarchy: {procs:?}");
        // A Create that fails before anything joins removes it again.
        unprepare(&procs);
        assert!(procs.iter().all(|p| !p.parent().unwrap().exists()));
        let procs = cg.prepare_join(Some(&resources)).unwrap().unwrap();
        let pids_dir = controller_mount("pids").unwrap().join(&id);
        assert_eq!(
            fs::read_to_string(pids_dir.join("pids.max"))
                .unwrap()
                .trim(),
            "7",
            "limited before anything joined"
        );
        let cpuset = controller_mount("cpuset").unwrap().join(&id);
        assert!(
            !fs::read_to_string(cpuset.join("cpuset.cpus"))
                .unwrap()
                .trim()
                .is_empty()
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        join_prepared(&procs, child.id() as i32).unwrap();
        let seen = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        for c in ["pids", "memory", "cpuset", "devices"] {
            let line = seen
                .lines()
                .find(|l| l.split(':').nth(1).unwrap().split(',').any(|x| x == c));
            assert!(line.unwrap().ends_with(&format!("/{id}")), "{c} in {seen}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove().unwrap();
        assert!(!pids_dir.exists() && !cpuset.exists());
    }
}
