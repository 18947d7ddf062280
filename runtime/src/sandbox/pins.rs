//! A sandbox's kept namespaces (network, IPC, UTS), pinned by bind-mounting their nsfs
//! files into the sandbox's directory, so that they live on with no process in them and
//! any shim of the node (or the CLI) can enter them by path. Made by a short-lived child
//! process that first joins the sandbox's memory account (so that the kernel charges the
//! namespaces to it: [`super::memory`]), unshares them and pins its own; entered by a
//! thread of the caller that joins them and exits.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

use super::SandboxError;
use super::memory::MemoryAccount;

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

    /// New namespaces, pinned in `dir` (created; must not exist), charged to `account` if
    /// given. Nothing is left behind on failure.
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

    /// Runs the child that makes and pins the namespaces.
    fn make(&self, account: Option<&MemoryAccount>) -> Result<(), SandboxError> {
        let joiner = match account.map(|a| (a, a.create())) {
            Some((a, Ok(()))) => Some(a.joiner()),
            Some((a, Err(e))) => {
                // The sandbox is made without one: its memory counts as zero.
                log::warn!("sandbox memory account {}: {e}", a.dir().display());
                None
            }
            None => None,
        };
        let mut targets = Vec::new();
        for k in Kind::ALL {
            let at = self.path(k);
            fs::File::create(&at)
                .map_err(SandboxError::io(format!("creating {}", at.display())))?;
            let src = CString::new(format!("/proc/self/ns/{}", k.name())).unwrap_or_default();
            let dst = CString::new(at.as_os_str().as_bytes()).map_err(|e| {
                SandboxError::io(format!("naming {}", at.display()))(io::Error::other(e))
            })?;
            targets.push((src, dst));
        }
        let all = Kind::ALL
            .iter()
            .fold(CloneFlags::empty(), |f, k| f | k.flag());
        // The child does its work between fork and exec and exits there, so the program is
        // never run (`true` names it, should the closure ever return Ok).
        let mut cmd = Command::new("/bin/true");
        // SAFETY: after the fork the closure makes system calls only, on data made before
        // the fork (no allocation, no lock): join the account, unshare, bind-mount, exit.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(j) = &joiner {
                    j.join()?;
                }
                nix::sched::unshare(all)?;
                for (src, dst) in &targets {
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
                    network, IPC and UTS namespaces, pinning them)";
        let out = crate::sys::run::output(&mut cmd, b"").map_err(SandboxError::io(what))?;
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
        let pins = Pins::create(&dir, None).unwrap();
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
