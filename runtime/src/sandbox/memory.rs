//! What a sandbox costs the node, measured rather than guessed: each sandbox has a memory
//! cgroup of its own (`trenv-sandboxes/<id>` in the memory hierarchy, v1 or v2), and the
//! processes that make its namespaces and attach its CNI network run in it, so the kernel
//! charges to it what they allocate and what outlives them (the network namespace with
//! its loopback, sysctl tables and per-CPU statistics, the IPC and UTS namespaces, the
//! CNI interfaces and addresses, the pins' mounts). A function that later runs in the
//! sandbox is charged to its own cgroup, as before. What the cgroup holds once the sandbox
//! is purged and idle is what the pool's memory bound adds up (`[sandboxes]
//! max_idle_memory_mib`): ~90 KiB per sandbox, ~170 KiB with a bridge interface.
//!
//! The cgroup is named by the sandbox's id, which is unique on the node, and goes with the
//! sandbox (an emptied memory cgroup can be removed while the kernel still holds charges
//! of it: they move to its parent). A host without a usable memory controller gets
//! sandboxes without one: their memory counts as zero and the pool is bounded by its
//! other bounds.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::container::cgroup::Version;

/// The parent cgroup of every sandbox's, in the memory hierarchy.
const PARENT: &str = "trenv-sandboxes";

/// One sandbox's memory cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryAccount {
    dir: PathBuf,
    version: Version,
}

impl MemoryAccount {
    /// The account of sandbox `id`, if this host has a memory controller trenv can use.
    pub fn of(id: &str) -> Option<MemoryAccount> {
        static ROOT: OnceLock<Option<(PathBuf, Version)>> = OnceLock::new();
        let (root, version) = ROOT.get_or_init(memory_root).clone()?;
        Some(MemoryAccount {
            dir: root.join(PARENT).join(id),
            version,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the cgroup (and its parent, with the memory controller enabled for its
    /// children on v2).
    pub fn create(&self) -> io::Result<()> {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            match fs::create_dir(parent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        if self.version == Version::V2 {
            let control = parent.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control)?;
            if !enabled.split_whitespace().any(|c| c == "memory") {
                fs::write(&control, "+memory")?;
            }
        }
        fs::create_dir(&self.dir)
    }

    /// What a child process does before it execs, to be charged to this account: its
    /// `cgroup.procs` path, made now (the child may not allocate).
    pub fn joiner(&self) -> Joiner {
        let procs = self.dir.join("cgroup.procs");
        Joiner(CString::new(procs.as_os_str().as_bytes()).unwrap_or_default())
    }

    /// The memory charged to it now, less its page cache: what the sandbox holds. v1: the
    /// kernel memory counter (`memory.kmem.usage_in_bytes`). v2 has no such counter, and
    /// `memory.stat` is flushed lazily (a small cgroup's lines may read 0 for up to two
    /// seconds after its charges): `memory.current`, exact, less the `file` line of
    /// `memory.stat` (should that still read 0, the page cache is counted: an
    /// overestimate, which the bound errs on). The page cache is left out because it is
    /// not the sandbox's: the CNI plugins' binaries and IPAM files its makers read first
    /// are charged to it, but they are the node's, shared and reclaimable (~3.5 MiB of
    /// them for a bridge network here).
    pub fn usage(&self) -> Option<u64> {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).ok();
        match self.version {
            Version::V1 => read("memory.kmem.usage_in_bytes")?.trim().parse().ok(),
            Version::V2 => {
                let current: u64 = read("memory.current")?.trim().parse().ok()?;
                let file = read("memory.stat")
                    .and_then(|s| stat_line(&s, "file"))
                    .unwrap_or(0);
                Some(current.saturating_sub(file))
            }
        }
    }

    /// Removes the cgroup (no process is left in it: its makers have exited). Idempotent.
    pub fn remove(&self) {
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", self.dir.display()),
        }
    }
}

/// The value of `key` in a `memory.stat`.
fn stat_line(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The root of the memory hierarchy and its version.
fn memory_root() -> Option<(PathBuf, Version)> {
    let version = Version::detect().ok()?;
    let root = match version {
        Version::V1 => PathBuf::from("/sys/fs/cgroup/memory"),
        Version::V2 => {
            let root = PathBuf::from("/sys/fs/cgroup");
            let controllers = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return None;
            }
            root
        }
    };
    root.is_dir().then_some((root, version))
}

/// Moves the calling process into an account (see [`MemoryAccount::joiner`]).
#[derive(Debug, Clone)]
pub struct Joiner(CString);

impl Joiner {
    /// Joins the account. Only system calls, no allocation: safe between fork and exec.
    pub fn join(&self) -> io::Result<()> {
        // SAFETY: open(2) of a NUL-terminated path that lives as long as `self`.
        let fd = unsafe { libc::open(self.0.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // "0" is the writing process itself.
        // SAFETY: write(2) of one byte from a static buffer to the descriptor just opened.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let err = io::Error::last_os_error();
        // SAFETY: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        if n == 1 { Ok(()) } else { Err(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_named_by_its_sandbox_below_one_parent() {
        let Some(a) = MemoryAccount::of("sb-1-2-3") else {
            eprintln!("skipped: no memory controller");
            return;
        };
        assert!(a.dir().ends_with("trenv-sandboxes/sb-1-2-3"), "{a:?}");
        let j = a.joiner();
        assert!(j.0.to_bytes().ends_with(b"sb-1-2-3/cgroup.procs"));
    }

    #[test]
    fn a_line_of_a_v2_stat_is_read() {
        let stat = "anon 0\nfile 3612672\nkernel 172032\nkernel_stack 0\n";
        assert_eq!(stat_line(stat, "file"), Some(3612672));
        assert_eq!(stat_line(stat, "kern"), None);
        assert_eq!(stat_line("file x\n", "file"), None);
    }

    #[test]
    fn a_child_that_joins_is_charged_and_the_account_goes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(a) = MemoryAccount::of(&format!("test-{}", std::process::id())) else {
            eprintln!("skipped: no memory controller");
            return;
        };
        a.create().unwrap();
        let j = a.joiner();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "cat /proc/self/cgroup"]);
        // SAFETY: the closure only makes system calls (Joiner::join).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || j.join());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let seen = String::from_utf8_lossy(&out.stdout);
        let id = a.dir().file_name().unwrap().to_string_lossy().into_owned();
        assert!(seen.contains(&format!("trenv-sandboxes/{id}")), "{seen}");
        assert!(a.usage().is_some());
        a.remove();
        assert!(!a.dir().exists());
        a.remove();
    }
}
