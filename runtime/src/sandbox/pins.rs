//! A sandbox's kept namespaces (network, IPC, UTS), pinned by bind-mounting their nsfs
//! files so that they live on with no process in them and any shim of the node (or the
//! CLI) can join them. The pins live in the node's pin store ([`super::store`], a private
//! mount namespace), at the sandbox's directory's path there, not in the host's mount
//! table; the sandbox's directory in the host holds its records. Made by a short-lived
//! child process that first joins the sandbox's memory account (so that the kernel
//! charges the namespaces to it: [`super::memory`]), unshares them, joins the store and
//! pins its own; entered by a thread of the caller that joins them and exits.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use super::SandboxError;
use super::memory::MemoryAccount;
use super::store;

/// A namespace kind a sandbox keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Ipc,
    Uts,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Net, Kind::Ipc, Kind::Uts];

    /// Its name in /proc/PID/ns (and its pin's file name).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// The pinned namespaces of one sandbox, by its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

/// A sandbox's namespaces as paths that another process of the node (a container's init
/// made by the zygote, CRIU, a CNI plugin) can open while the process that made them lives:
/// what a derived spec joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joinable {
    /// The sandbox's directory (what marks a derived spec as sandboxed).
    pub dir: PathBuf,
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl Joinable {
    pub fn path(&self, k: Kind) -> &Path {
        match k {
            Kind::Net => &self.net,
            Kind::Ipc => &self.ipc,
            Kind::Uts => &self.uts,
        }
    }
}

impl Pins {
    /// The pins of the sandbox whose directory is `dir` (made earlier).
    pub fn at(dir: &Path) -> Pins {
        Pins {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
        }
    }

    /// New namespaces, pinned for the sandbox whose directory is `dir` (created; must not
    /// exist), charged to `account` if given. Nothing is left behind on failure.
    pub fn create(dir: &Path, account: Option<&MemoryAccount>) -> Result<Pins, SandboxError> {
        fs::create_dir(dir).map_err(SandboxError::io(format!("creating {}", dir.display())))?;
        let pins = Pins::at(dir);
        let made = pins.make(account);
        if let Err(e) = made {
            pins.remove();
            if let Some(a) = account {
                a.remove();
            }
            return Err(e);
        }
        Ok(pins)
    }

    /// Runs the child that makes the namespaces and pins them in the store.
    fn make(&self, account: Option<&MemoryAccount>) -> Result<(), SandboxError> {
        let store = store::open()?;
        let joiner = match account.map(|a| (a, a.create())) {
            Some((a, Ok(()))) => Some(a.joiner()),
            Some((a, Err(e))) => {
                // The sandbox is made without one: its memory counts as zero.
                log::warn!("sandbox memory account {}: {e}", a.dir().display());
                None
            }
            None => None,
        };
        // The directory's path in the store, from its top down (made there by the child).
        let mut dirs: Vec<CString> = self
            .dir
            .ancestors()
            .filter(|a| a.parent().is_some())
            .map(store::c_path)
            .collect::<Result<_, _>>()?;
        dirs.reverse();
        let mut targets = Vec::new();
        for k in Kind::ALL {
            let src = CString::new(format!("/proc/self/ns/{}", k.name())).unwrap_or_default();
            targets.push((src, store::c_path(&self.dir.join(k.name()))?));
        }
        let all = Kind::ALL
            .iter()
            .fold(CloneFlags::empty(), |f, k| f | k.flag());
        let store_fd = store.as_raw_fd();
        // The child does its work between fork and exec and exits there, so the program is
        // never run (`true` names it, should the closure ever return Ok).
        let mut cmd = Command::new("/bin/true");
        // SAFETY: after the fork the closure makes system calls only, on data made before
        // the fork (no allocation, no lock): join the account, unshare, join the store
        // (whose descriptor the child inherited), make the pins' directory and files,
        // bind-mount, exit.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(j) = &joiner {
                    j.join()?;
                }
                nix::sched::unshare(all)?;
                nix::sched::setns(BorrowedFd::borrow_raw(store_fd), CloneFlags::CLONE_NEWNS)?;
                for d in &dirs {
                    match nix::unistd::mkdir(d.as_c_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                for (src, dst) in &targets {
                    let fd = nix::fcntl::open(
                        dst.as_c_str(),
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )?;
                    nix::unistd::close(fd)?;
                    mount(
                        Some(src.as_c_str()),
                        dst.as_c_str(),
                        None::<&CStr>,
                        MsFlags::MS_BIND,
                        None::<&CStr>,
                    )?;
                }
                // Done: the pins hold the namespaces. Nothing to exec.
                // _exit(2) ends this child without running anything of the parent's.
                libc::_exit(0)
            });
        }
        let what = "making the sandbox's namespaces (joining its memory account, unsharing \
                    network, IPC and UTS namespaces, pinning them in the pin store)";
        let out = crate::sys::run::output(&mut cmd, b"").map_err(SandboxError::io(what))?;
        drop(store);
        if !out.status.success() {
            return Err(SandboxError::io(what)(io::Error::other(format!(
                "the child that made them ended with {}",
                out.status
            ))));
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pinned namespace of kind `k`, as a path any root process of the node can open
    /// while this process lives (through its gate into the store).
    pub fn path(&self, k: Kind) -> Result<PathBuf, SandboxError> {
        Ok(store::under(&store::root()?, &self.dir.join(k.name())))
    }

    /// The namespaces' paths for a spec (see [`Pins::path`]).
    pub fn joinable(&self) -> Result<Joinable, SandboxError> {
        let root = store::root()?;
        let at = |k: Kind| store::under(&root, &self.dir.join(k.name()));
        Ok(Joinable {
            dir: self.dir.clone(),
            net: at(Kind::Net),
            ipc: at(Kind::Ipc),
            uts: at(Kind::Uts),
        })
    }

    /// The namespaces' inodes (what /proc/PID/ns/KIND links name), in [`Kind::ALL`] order.
    pub fn inodes(&self) -> Result<[u64; 3], SandboxError> {
        let mut out = [0; 3];
        for (i, k) in Kind::ALL.iter().enumerate() {
            let p = self.path(*k)?;
            out[i] = fs::metadata(&p)
                .map_err(SandboxError::io(format!("reading {}", p.display())))?
                .ino();
        }
        Ok(out)
    }

    /// Runs `f` on a thread that has joined the namespaces `kinds`.
    pub fn enter<T: Send>(
        &self,
        kinds: &[Kind],
        f: impl FnOnce() -> Result<T, SandboxError> + Send,
    ) -> Result<T, SandboxError> {
        let paths = kinds
            .iter()
            .map(|k| Ok((*k, self.path(*k)?)))
            .collect::<Result<Vec<_>, SandboxError>>()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                for (k, p) in &paths {
                    let ns = fs::File::open(p)
                        .map_err(SandboxError::io(format!("opening {}", p.display())))?;
                    nix::sched::setns(&ns, k.flag())
                        .map_err(SandboxError::sys(format!("joining {}", p.display())))?;
                }
                f()
            })
            .join()
            .unwrap_or(Err(SandboxError::ThreadPanicked))
        })
    }

    /// Unpins the namespaces (they go once nothing else holds them) and removes the
    /// directory with everything in it, in the store and in the host (where a trenv before
    /// the store pinned them). Idempotent.
    pub fn remove(&self) {
        let dir = self.dir.clone();
        let unpin = move || {
            for k in Kind::ALL {
                let _ = umount2(&dir.join(k.name()), MntFlags::MNT_DETACH);
            }
            let _ = fs::remove_dir_all(&dir);
            Ok(())
        };
        if let Some(Err(e)) = store::inside(unpin.clone()) {
            log::warn!("unpinning {}: {e}", self.dir.display());
        }
        let _ = unpin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn pinned_namespaces_are_new_outlive_their_thread_and_go_when_removed() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sb");
        let pins = Pins::create(&dir, None).unwrap();
        let d = dir.display().to_string();
        let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !host.contains(&d),
            "pinned in the host's mount table: {host}"
        );
        let inside = store::mounts().unwrap();
        assert_eq!(inside.matches(&d).count(), 3, "{inside}");
        let ino = pins.inodes().unwrap();
        let host = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(ino[0], host, "a new network namespace");
        let seen = pins
            .enter(&[Kind::Net, Kind::Uts], || {
                Ok(fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
            })
            .unwrap();
        assert_eq!(seen, ino[0]);
        assert_eq!(
            fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
            host,
            "the caller's own thread is untouched"
        );
        let joinable = pins.joinable().unwrap();
        let opened = fs::File::open(&joinable.net).unwrap();
        assert_eq!(opened.metadata().unwrap().ino(), ino[0]);
        pins.remove();
        assert!(!dir.exists());
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&d), "{mounts}");
        let inside = store::mounts().unwrap();
        assert!(!inside.contains(&d), "{inside}");
        assert!(fs::File::open(&joinable.net).is_err());
    }

    #[test]
    fn a_failed_create_leaves_nothing() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sb");
        Pins::create(&dir, None).unwrap().remove();
        fs::create_dir(&dir).unwrap();
        let e = Pins::create(&dir, None).unwrap_err().to_string();
        assert!(e.contains("creating"), "{e}");
        assert!(
            dir.exists(),
            "the existing directory is not the failed create's"
        );
    }
}
