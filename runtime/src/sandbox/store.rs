//! The node's pin store: one private mount namespace in which the namespaces of every
//! sandbox are pinned (nsfs bind mounts, [`super::pins`]). Pinned in the host's mount
//! namespace, they took three lines per sandbox of the host's mount table, which every
//! reader of it on the node parses (libcgroups once per v1 controller for each container,
//! CRIU at each restore, systemd at each mount event); in the store they take none. The
//! store holds a small tmpfs (its root), a `/proc` and the pins; it is itself pinned by a
//! bind mount of its nsfs file at [`STORE`], in a directory that is a private mount of
//! its own (the kernel refuses to propagate a mount namespace's pin, so it cannot sit on
//! a shared mount such as `/run`): two host lines in all.
//!
//! A process reaches the pins through its *gate*: a thread that joined the store and
//! waits, whose `/proc/PID/task/TID/root` leads any root process of the node into the
//! store's tree — the paths a derived spec, CRIU's `--join-ns` and CNI are given, valid
//! while the process lives. Work inside the store (making the root, unpinning) happens
//! on short-lived threads that leave the process's own filesystem context untouched.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use super::SandboxError;

/// The directory of the store's pin (a private mount of its own).
pub const STORE_DIR: &str = "/run/trenv/pin-store";
/// The store's pin: a bind mount of its mount namespace's nsfs file.
pub const STORE: &str = "/run/trenv/pin-store/mnt";
/// Taken while the store is made, so that two shims make one.
const LOCK: &str = "/run/trenv/pin-store.lock";

/// The store's namespace, made first if the node has none (after a boot).
pub fn open() -> Result<File, SandboxError> {
    if let Some(f) = existing() {
        return Ok(f);
    }
    make()?;
    existing().ok_or_else(|| {
        SandboxError::io(format!("opening {STORE}"))(std::io::Error::other(
            "the pin store was made but is not pinned",
        ))
    })
}

/// The store's namespace if it is pinned.
pub fn existing() -> Option<File> {
    let f = File::open(STORE).ok()?;
    is_nsfs(&f).then_some(f)
}

fn is_nsfs(f: &File) -> bool {
    fstatfs(f).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Makes and pins the store, unless another process did while this one waited.
fn make() -> Result<(), SandboxError> {
    fs::create_dir_all(STORE_DIR).map_err(SandboxError::io(format!("creating {STORE_DIR}")))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(SandboxError::io(format!("opening {LOCK}")))?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| SandboxError::sys(format!("locking {LOCK}"))(e))?;
    if existing().is_some() {
        return Ok(());
    }
    private_dir()?;
    let ns = new_namespace()?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(STORE)
        .map_err(SandboxError::io(format!("creating {STORE}")))?;
    let src = format!("/proc/self/fd/{}", ns.as_raw_fd());
    mount(
        Some(src.as_str()),
        STORE,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(SandboxError::sys(format!(
        "pinning the pin store at {STORE}"
    )))?;
    log::debug!("made the node's pin store at {STORE}");
    Ok(())
}

/// Makes [`STORE_DIR`] a mount of its own with private propagation.
fn private_dir() -> Result<(), SandboxError> {
    let mounted = crate::sys::mountinfo::read(None)
        .iter()
        .any(|m| m.mount_point == Path::new(STORE_DIR));
    if !mounted {
        mount(
            Some(STORE_DIR),
            STORE_DIR,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(SandboxError::sys(format!(
            "bind-mounting {STORE_DIR} onto itself"
        )))?;
    }
    mount(
        None::<&str>,
        STORE_DIR,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(SandboxError::sys(format!(
        "making {STORE_DIR} a private mount"
    )))
}

/// A new mount namespace whose whole tree is a small tmpfs and a `/proc` (none of the
/// host's mounts, which it would otherwise keep alive), on a thread of its own; its nsfs
/// file.
fn new_namespace() -> Result<File, SandboxError> {
    on_thread(|| {
        let sys = |what: &str| SandboxError::sys(format!("making the pin store: {what}"));
        let io = |what: &str| SandboxError::io(format!("making the pin store: {what}"));
        private_mount_namespace()?;
        let root = Path::new(STORE_DIR);
        mount(
            Some("trenv-pins"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700,size=1m"),
        )
        .map_err(sys("mounting its tmpfs"))?;
        fs::create_dir(root.join("proc")).map_err(io("making /proc"))?;
        mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(sys("mounting /proc"))?;
        fs::create_dir(root.join("old")).map_err(io("making the old root's directory"))?;
        nix::unistd::pivot_root(root, &root.join("old")).map_err(sys("pivot_root"))?;
        nix::unistd::chdir("/").map_err(sys("chdir /"))?;
        umount2("/old", MntFlags::MNT_DETACH).map_err(sys("detaching the host's tree"))?;
        fs::remove_dir("/old").map_err(io("removing the old root's directory"))?;
        File::open("/proc/thread-self/ns/mnt").map_err(io("opening its namespace"))
    })
}

/// Gives the calling thread a filesystem context and a mount namespace of its own, whose
/// mounts propagate nowhere.
pub(crate) fn private_mount_namespace() -> Result<(), SandboxError> {
    nix::sched::unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)
        .map_err(SandboxError::sys("unsharing a thread's mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(SandboxError::sys("making a thread's mounts private"))
}

/// Runs `f` on a new thread of this process (its result handed back).
fn on_thread<T: Send>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send,
) -> Result<T, SandboxError> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or(Err(SandboxError::ThreadPanicked))
    })
}

/// Joins the store on the calling thread (which gets a filesystem context of its own).
fn join(store: &File) -> Result<(), SandboxError> {
    nix::sched::unshare(CloneFlags::CLONE_FS)
        .map_err(SandboxError::sys("unsharing a thread's filesystem context"))?;
    nix::sched::setns(store, CloneFlags::CLONE_NEWNS)
        .map_err(SandboxError::sys(format!("joining the pin store {STORE}")))
}

/// Runs `f` on a thread inside the store (paths are the store's). Nothing if the node has
/// no store.
pub fn inside<T: Send>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send,
) -> Option<Result<T, SandboxError>> {
    let store = existing()?;
    Some(on_thread(move || {
        join(&store)?;
        f()
    }))
}

/// This process's gate into the store.
struct Gate {
    tid: i32,
    /// The store's namespace it joined (a store made anew after its pin went needs a new
    /// gate).
    ns: u64,
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

static GATE: Mutex<Option<Gate>> = Mutex::new(None);

/// The root of the store's tree as any root process of the node can reach it while this
/// process lives: `/proc/PID/task/TID/root` of this process's gate thread (made at the
/// first call, with the store if the node has none).
pub fn root() -> Result<PathBuf, SandboxError> {
    let store = open()?;
    let ns = store
        .metadata()
        .map_err(SandboxError::io(format!("reading {STORE}")))?
        .ino();
    let mut gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = gate.as_ref().filter(|g| g.ns == ns) {
        return Ok(gate_root(g.tid));
    }
    if let Some(old) = gate.take() {
        old.stop.store(true, Ordering::Relaxed);
        old.thread.unpark();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("pin-gate".into())
        .spawn(move || {
            let joined = join(&store).map(|_| nix::unistd::gettid().as_raw());
            drop(store);
            let ok = joined.is_ok();
            let _ = tx.send(joined);
            while ok && !stopped.load(Ordering::Relaxed) {
                std::thread::park();
            }
        })
        .map_err(SandboxError::io("starting the pin store's gate thread"))?;
    let tid = rx.recv().unwrap_or(Err(SandboxError::ThreadPanicked))?;
    *gate = Some(Gate {
        tid,
        ns,
        stop,
        thread: thread.thread().clone(),
    });
    Ok(gate_root(tid))
}

fn gate_root(tid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{}/task/{tid}/root", std::process::id()))
}

/// The store's mount table (its tmpfs, /proc and one line per pin), as its gate sees it.
pub fn mounts() -> Result<String, SandboxError> {
    let root = root()?;
    let p = root.with_file_name("mountinfo");
    fs::read_to_string(&p).map_err(SandboxError::io(format!("reading {}", p.display())))
}

/// How many namespaces are pinned in the store.
pub fn pinned() -> Result<usize, SandboxError> {
    Ok(mounts()?
        .lines()
        .filter(|l| {
            l.split_once(" - ")
                .is_some_and(|(_, f)| f.starts_with("nsfs "))
        })
        .count())
}

/// `path` (absolute) as a path inside a tree rooted at `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The C string of a path, for the system calls made between fork and exec.
pub(crate) fn c_path(p: &Path) -> Result<std::ffi::CString, SandboxError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|e| SandboxError::io(format!("naming {}", p.display()))(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_user() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_path_is_put_under_a_root() {
        assert_eq!(
            under(Path::new("/proc/1/task/2/root"), Path::new("/run/x/net")),
            PathBuf::from("/proc/1/task/2/root/run/x/net")
        );
    }

    #[test]
    fn the_store_is_made_once_holds_none_of_the_host_s_mounts_and_is_reached_by_its_gate() {
        if !root_user() {
            eprintln!("skipped: needs root");
            return;
        }
        let a = root().unwrap();
        let b = root().unwrap();
        assert_eq!(a, b, "one gate per process");
        let store = existing().unwrap();
        assert!(is_nsfs(&store));
        let mine = fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        assert_ne!(store.metadata().unwrap().ino(), mine);
        let inside = mounts().unwrap();
        assert!(inside.contains(" - tmpfs trenv-pins ") && inside.contains(" - proc "));
        for l in inside.lines() {
            let fs = l.split_once(" - ").unwrap().1;
            assert!(
                fs.starts_with("tmpfs trenv-pins")
                    || fs.starts_with("proc ")
                    || fs.starts_with("nsfs "),
                "a mount of the host's in the store: {l}"
            );
        }
        let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(
            host.lines().filter(|l| l.contains(STORE_DIR)).count(),
            2,
            "{host}"
        );
        // The gate's root is the store's: a file made inside is seen through it.
        let name = format!("gate-test-{}", std::process::id());
        inside_ok(move || fs::write(Path::new("/").join(&name), b"x"));
        let through = a.join(format!("gate-test-{}", std::process::id()));
        assert_eq!(fs::read(&through).unwrap(), b"x");
        inside_ok(|| fs::remove_file(format!("/gate-test-{}", std::process::id())));
        assert!(!through.exists());
    }

    fn inside_ok(f: impl FnOnce() -> std::io::Result<()> + Send) {
        inside(|| f().map_err(SandboxError::io("test")))
            .unwrap()
            .unwrap();
    }
}
