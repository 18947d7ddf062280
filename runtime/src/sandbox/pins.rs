//! A sandbox's kept namespaces (network, IPC, UTS), pinned by bind-mounting their nsfs
//! files into the sandbox's directory, so that they live on with no process in them and
//! any shim of the node (or the CLI) can enter them by path. Made by a short-lived thread
//! of the caller that unshares them (these kinds may be unshared per thread) and pins its
//! own; entered the same way, by a thread that joins them and exits.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

use super::SandboxError;

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

/// The pinned namespaces of one sandbox, in its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The pins in `dir` (made earlier).
    pub fn at(dir: &Path) -> Pins {
        Pins {
            dir: dir.to_path_buf(),
        }
    }

    /// New namespaces, pinned in `dir` (created; must not exist). Nothing is left behind on
    /// failure.
    pub fn create(dir: &Path) -> Result<Pins, SandboxError> {
        fs::create_dir(dir).map_err(SandboxError::io(format!("creating {}", dir.display())))?;
        let pins = Pins::at(dir);
        let made = std::thread::scope(|s| {
            s.spawn(|| {
                let all = Kind::ALL
                    .iter()
                    .fold(CloneFlags::empty(), |f, k| f | k.flag());
                nix::sched::unshare(all).map_err(SandboxError::sys("creating namespaces"))?;
                for k in Kind::ALL {
                    pins.pin(k, Path::new(&format!("/proc/thread-self/ns/{}", k.name())))?;
                }
                Ok(())
            })
            .join()
            .unwrap_or(Err(SandboxError::ThreadPanicked))
        });
        if let Err(e) = made {
            pins.remove();
            return Err(e);
        }
        Ok(pins)
    }

    fn pin(&self, k: Kind, ns: &Path) -> Result<(), SandboxError> {
        let at = self.path(k);
        fs::File::create(&at).map_err(SandboxError::io(format!("creating {}", at.display())))?;
        mount(Some(ns), &at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(SandboxError::sys(format!("pinning {}", at.display())))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pinned namespace of kind `k` (a path a spec or CRIU joins).
    pub fn path(&self, k: Kind) -> PathBuf {
        self.dir.join(k.name())
    }

    /// The namespaces' inodes (what /proc/PID/ns/KIND links name), in [`Kind::ALL`] order.
    pub fn inodes(&self) -> Result<[u64; 3], SandboxError> {
        let mut out = [0; 3];
        for (i, k) in Kind::ALL.iter().enumerate() {
            let p = self.path(*k);
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
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in kinds {
                    let p = self.path(*k);
                    let ns = fs::File::open(&p)
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
    /// directory with everything in it. Idempotent.
    pub fn remove(&self) {
        for k in Kind::ALL {
            let _ = umount2(&self.path(k), MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
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
        let pins = Pins::create(&dir).unwrap();
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
        pins.remove();
        assert!(!dir.exists());
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&dir.display().to_string()), "{mounts}");
    }

    #[test]
    fn a_failed_create_leaves_nothing() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sb");
        Pins::create(&dir).unwrap().remove();
        fs::create_dir(&dir).unwrap();
        let e = Pins::create(&dir).unwrap_err().to_string();
        assert!(e.contains("creating"), "{e}");
        assert!(
            dir.exists(),
            "the existing directory is not the failed create's"
        );
    }
}
