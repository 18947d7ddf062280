//! Shims shared by a tenant's containers: no new shim process on the start path of clients
//! without pods (ctr, faasd, nerdctl).
//!
//! containerd runs the shim binary's `start` for every container and connects to the
//! address it answers; when a shim already serves the container's group, `start` answers
//! that shim's address and spawns nothing (containerd-shim's `spawn` finds the group's
//! socket working). A pod's containers are grouped by CRI's sandbox id; with `[shim]
//! shared = true` or the annotation `io.trenv.shim=shared`, the containers of one tenant
//! (containerd namespace, narrowed by `io.trenv.tenant`) that are not in a pod share one
//! shim as well. It lingers `[shim] linger_secs` after its last container was deleted, so
//! that the tenant's next start finds it.
//!
//! What sharing costs: failure isolation within the tenant (a shim that dies takes the
//! tenant's running containers with it; containerd reports each one exited, as for a pod)
//! — never across tenants, whose shims are distinct; and it saves memory (one shim and one
//! zygote instead of one per container).
//!
//! The end of a linger races with starts: a `start` may find the socket working just
//! before the shim goes, and containerd would then dial a shim that is gone. So `start`
//! takes a lease (touches `<socket>.lease`) before it looks; the shim goes only when no
//! lease was taken for the whole linger, moves its socket aside first (no new `start` finds
//! it; a `start` that does not spawns a new shim), then looks at the lease once more: a
//! lease taken meanwhile puts the socket back (unless a new shim took the name) and the
//! shim stays.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use trenv_runtime::config::ShimSection;
use trenv_runtime::template::Tenant;

use crate::annotations::{SANDBOX_ID, SHIM};

/// Set (to the linger in seconds) in the environment of a shared shim's server.
pub const ENV: &str = "TRENV_SHIM_SHARED";

/// How often a lingering shim looks for containers and leases.
const LINGER_TICK: Duration = Duration::from_millis(200);
/// The shortest linger: longer than containerd takes from a `start` to its Create.
const MIN_LINGER: Duration = Duration::from_secs(2);

/// The shim group of a container that shares its tenant's shim; `None` for one that gets
/// its own (or its pod's: the caller groups pods). `annotations` are the container's,
/// `namespace` containerd's, `shim_cgroup` runc's ShimCgroup option.
pub fn group_of(
    annotations: &HashMap<String, String>,
    namespace: &str,
    shim_cgroup: bool,
    config: &ShimSection,
) -> Result<Option<String>, String> {
    let wanted = match annotations.get(SHIM).map(String::as_str) {
        None => config.shared,
        Some("shared") => true,
        Some("own") => false,
        Some(other) => {
            return Err(format!(
                "annotation {SHIM}={other:?}: use \"shared\" (the tenant's containers share \
                 one shim) or \"own\" (a shim for this container alone)"
            ));
        }
    };
    if !wanted || shim_cgroup || annotations.contains_key(SANDBOX_ID) {
        return Ok(None);
    }
    let tenant = Tenant::of_container(namespace, |k| annotations.get(k).map(String::as_str))
        .map_err(|e| e.to_string())?;
    Ok(Some(format!("trenv-shared {tenant}")))
}

/// The socket file of a `unix://` address.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Removes the socket at `socket` if no server listens on it any more: a server that was
/// killed never removed it (containerd-shim's framework removes it only when the server
/// exits), and containerd's `delete` after a dead shim does not either. A socket that
/// answers, or a path that is not a socket, stays.
pub fn remove_if_dead(socket: &Path) {
    let Ok(before) = fs::symlink_metadata(socket) else {
        return;
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&before.file_type()) {
        return;
    }
    let refused = matches!(
        std::os::unix::net::UnixStream::connect(socket),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    // Not if a new server bound the name meanwhile (a start of the same group).
    if refused && fs::symlink_metadata(socket).is_ok_and(|m| m.ino() == before.ino()) {
        match fs::remove_file(socket) {
            Ok(()) => log::info!("removed the dead shim's socket {}", socket.display()),
            Err(e) => log::warn!("removing the dead shim's socket {}: {e}", socket.display()),
        }
    }
}

fn lease_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lease");
    PathBuf::from(p)
}

fn closing_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".closing");
    PathBuf::from(p)
}

/// Taken by `start` before it looks for the group's shim: a lingering shim does not go
/// for a whole linger after this.
pub fn take_lease(socket: &Path) -> std::io::Result<()> {
    fs::write(lease_path(socket), b"")
}

/// When the last lease was taken (`None`: never).
fn lease_taken(socket: &Path) -> Option<SystemTime> {
    fs::metadata(lease_path(socket)).ok()?.modified().ok()
}

/// The server's socket file, so that it removes only its own when it exits (a shared
/// shim's name may be a newer shim's by then).
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    ino: Option<u64>,
}

impl SocketFile {
    /// The socket at `path` as it is now (the server's own: `spawn` bound it).
    pub fn of(path: &Path) -> SocketFile {
        SocketFile {
            path: path.to_path_buf(),
            ino: fs::metadata(path).ok().map(|m| m.ino()),
        }
    }

    /// Removes the socket (or its moved-aside name) if it is still this server's.
    pub fn remove_if_ours(&self) {
        for p in [self.path.clone(), closing_path(&self.path)] {
            if let (Ok(m), Some(ino)) = (fs::metadata(&p), self.ino)
                && m.ino() == ino
            {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

/// A shared shim's lingering after its last container.
pub struct Linger {
    /// The shim's socket.
    socket: PathBuf,
    keep: Duration,
    /// A linger thread is running.
    running: AtomicBool,
}

/// What the end of a linger found.
#[derive(Debug, PartialEq, Eq)]
enum Close {
    /// The socket is gone from its name: the shim exits.
    Closed,
    /// A start came meanwhile: the socket is back, the shim stays.
    Stayed,
}

impl Linger {
    pub fn new(socket: &Path, keep: Duration) -> Linger {
        Linger {
            socket: socket.to_path_buf(),
            keep,
            running: AtomicBool::new(false),
        }
    }

    /// The linger of a shim read from its environment, if it is a shared one (at least
    /// [`MIN_LINGER`]).
    pub fn from_env(socket: &str) -> Option<Linger> {
        let secs: u64 = std::env::var(ENV).ok()?.parse().ok()?;
        Some(Linger::new(
            &socket_path(socket),
            Duration::from_secs(secs).max(MIN_LINGER),
        ))
    }

    /// Lingers in a thread of its own (one at a time): returns when `has_containers`
    /// holds again, or calls `exit` once the shim may go.
    pub fn start(
        self: &Arc<Self>,
        has_containers: impl Fn() -> bool + Send + 'static,
        exit: impl FnOnce() + Send + 'static,
    ) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("linger".into())
            .spawn(move || {
                let idle_since = SystemTime::now();
                let go = me.wait(idle_since, &has_containers);
                me.running.store(false, Ordering::SeqCst);
                if go {
                    exit();
                }
            });
        if let Err(e) = spawned {
            log::warn!("shared shim: no linger thread ({e}); it stays until its next container");
            self.running.store(false, Ordering::SeqCst);
        }
    }

    /// True once the shim may go; false as soon as it has a container again.
    fn wait(&self, idle_since: SystemTime, has_containers: &dyn Fn() -> bool) -> bool {
        loop {
            std::thread::sleep(LINGER_TICK);
            if has_containers() {
                return false;
            }
            let lease = lease_taken(&self.socket);
            let last = lease.map_or(idle_since, |l| l.max(idle_since));
            if SystemTime::now()
                .duration_since(last)
                .is_ok_and(|idle| idle >= self.keep)
            {
                match self.close(lease, has_containers) {
                    Close::Closed => return true,
                    Close::Stayed => continue,
                }
            }
        }
    }

    /// Moves the socket aside, then stays if a start came meanwhile (the lease changed
    /// since `seen`, or a container arrived through a connection made before).
    fn close(&self, seen: Option<SystemTime>, has_containers: &dyn Fn() -> bool) -> Close {
        let path = &self.socket;
        if let Err(e) = fs::rename(path, closing_path(path)) {
            // Not at its name (removed by hand?): nobody can find this shim any more.
            log::info!(
                "shared shim: socket {} not moved aside: {e}",
                path.display()
            );
            return Close::Closed;
        }
        self.settle(seen, has_containers)
    }

    /// With the socket aside: back to its name if a start came meanwhile, else gone.
    fn settle(&self, seen: Option<SystemTime>, has_containers: &dyn Fn() -> bool) -> Close {
        let path = &self.socket;
        let aside = closing_path(path);
        if lease_taken(path) == seen && !has_containers() {
            let _ = fs::remove_file(&aside);
            log::info!("shared shim: no container for {:?}: exiting", self.keep);
            return Close::Closed;
        }
        match rename_noreplace(&aside, path) {
            Ok(()) => Close::Stayed,
            // A new shim took the name: the start that came meanwhile went to it, unless
            // its container is already here.
            Err(e) if has_containers() => {
                log::warn!(
                    "shared shim: socket name taken by another shim ({e}); serving the \
                     containers that came meanwhile until they are deleted"
                );
                Close::Stayed
            }
            Err(_) => {
                let _ = fs::remove_file(&aside);
                Close::Closed
            }
        }
    }
}

/// The shim's log: containerd reads it from the `log` FIFO of the bundle the shim started
/// in, and stops reading when that container is deleted. A shared shim outlives its first
/// container, so its log follows a container it still serves: the descriptor the log
/// writes to is pointed at that container's FIFO (containerd opens every container's, the
/// shim's or not).
pub struct ShimLog {
    fd: Option<std::os::fd::RawFd>,
    following: std::sync::Mutex<Option<PathBuf>>,
}

impl ShimLog {
    /// The log's descriptor: the first of this process's descriptors that is a FIFO named
    /// `log` (containerd-shim's logger opens it at start-up, before any other).
    pub fn find() -> ShimLog {
        let mut fds: Vec<i32> = fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        fds.sort_unstable();
        let fd = fds.into_iter().find(|fd| {
            let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            link.file_name().is_some_and(|n| n == "log")
                && fs::metadata(&link)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
        });
        let following = fd.and_then(|fd| {
            let link = fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some(link.parent()?.to_path_buf())
        });
        ShimLog {
            fd,
            following: std::sync::Mutex::new(following),
        }
    }

    /// Points the log at `bundle`'s FIFO, if containerd reads it.
    pub fn follow(&self, bundle: &Path) {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(fd) = self.fd else {
            return;
        };
        // Non-blocking: a FIFO nobody reads would block the open (ENXIO instead).
        let fifo = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join("log"));
        let Ok(fifo) = fifo else {
            return;
        };
        // SAFETY: fcntl and dup3 on descriptors this process owns; `fd` is the logger's,
        // replaced atomically by the new FIFO.
        unsafe {
            let flags = libc::fcntl(fifo.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fifo.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            if libc::dup3(fifo.as_raw_fd(), fd, libc::O_CLOEXEC) < 0 {
                return;
            }
        }
        *self.following.lock().unwrap_or_else(|e| e.into_inner()) = Some(bundle.to_path_buf());
    }

    /// The bundle whose FIFO the log goes to.
    pub fn following(&self) -> Option<PathBuf> {
        self.following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// rename(2) that fails rather than replace an existing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config(shared: bool) -> ShimSection {
        ShimSection {
            shared,
            ..Default::default()
        }
    }

    #[test]
    fn a_tenant_shares_one_shim_when_asked_and_never_with_another_tenant() {
        let none = annotations(&[]);
        assert_eq!(group_of(&none, "default", false, &config(false)), Ok(None));
        let shared = group_of(&none, "default", false, &config(true)).unwrap();
        assert_eq!(shared.as_deref(), Some("trenv-shared default"));
        let asked = annotations(&[(SHIM, "shared")]);
        assert_eq!(
            group_of(&asked, "default", false, &config(false)),
            Ok(shared)
        );
        // Another tenant in the same namespace, or another namespace: another group.
        let narrowed = annotations(&[(SHIM, "shared"), ("io.trenv.tenant", "team-b")]);
        let other = group_of(&narrowed, "default", false, &config(false)).unwrap();
        assert_eq!(other.as_deref(), Some("trenv-shared default//team-b"));
        let elsewhere = group_of(&asked, "faas", false, &config(false)).unwrap();
        assert_eq!(elsewhere.as_deref(), Some("trenv-shared faas"));
    }

    #[test]
    fn pods_shim_cgroups_and_own_keep_their_shims() {
        let own = annotations(&[(SHIM, "own")]);
        assert_eq!(group_of(&own, "default", false, &config(true)), Ok(None));
        let pod = annotations(&[(SHIM, "shared"), (SANDBOX_ID, "pod1")]);
        assert_eq!(group_of(&pod, "k8s.io", false, &config(true)), Ok(None));
        let none = annotations(&[]);
        assert_eq!(group_of(&none, "default", true, &config(true)), Ok(None));
    }

    #[test]
    fn a_bad_value_names_the_annotation_and_what_it_accepts() {
        let bad = annotations(&[(SHIM, "yes")]);
        let e = group_of(&bad, "default", false, &config(false)).unwrap_err();
        assert!(e.contains("io.trenv.shim=\"yes\""), "{e}");
        assert!(e.contains("\"shared\"") && e.contains("\"own\""), "{e}");
    }

    /// A socket file stand-in and the linger's parts around it.
    fn fixture() -> (tempfile::TempDir, PathBuf, Linger) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        fs::write(&sock, b"").unwrap();
        let linger = Linger::new(&sock, Duration::from_millis(300));
        (dir, sock, linger)
    }

    #[test]
    fn a_socket_nobody_listens_on_is_removed_and_a_served_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let served = dir.path().join("served");
        let _listener = std::os::unix::net::UnixListener::bind(&served).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        for p in [&dead, &served, &file, &dir.path().join("missing")] {
            remove_if_dead(p);
        }
        assert!(!dead.exists(), "a dead server's socket stays");
        assert!(served.exists() && file.exists());
    }

    #[test]
    fn without_starts_a_linger_ends_by_taking_the_socket_away() {
        let (_dir, sock, linger) = fixture();
        let t = std::time::Instant::now();
        assert!(linger.wait(SystemTime::now(), &|| false));
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(!sock.exists() && !closing_path(&sock).exists());
    }

    #[test]
    fn a_container_ends_the_linger_and_the_shim_stays() {
        let (_dir, sock, linger) = fixture();
        assert!(!linger.wait(SystemTime::now(), &|| true));
        assert!(sock.exists());
    }

    #[test]
    fn a_lease_taken_while_the_socket_is_aside_puts_it_back() {
        let (_dir, sock, linger) = fixture();
        let seen = lease_taken(&sock);
        take_lease(&sock).unwrap();
        // The lease changed since the linger looked: the socket comes back.
        assert_eq!(linger.close(seen, &|| false), Close::Stayed);
        assert!(sock.exists() && !closing_path(&sock).exists());
        // Unchanged since: the socket goes.
        assert_eq!(linger.close(lease_taken(&sock), &|| false), Close::Closed);
        assert!(!sock.exists());
    }

    #[test]
    fn a_new_shim_under_the_name_is_left_alone() {
        let (_dir, sock, linger) = fixture();
        let seen = lease_taken(&sock);
        fs::rename(&sock, closing_path(&sock)).unwrap();
        // Meanwhile a start found no socket, took a lease and spawned a new shim.
        take_lease(&sock).unwrap();
        fs::write(&sock, b"new").unwrap();
        assert_eq!(linger.settle(seen, &|| false), Close::Closed);
        assert_eq!(fs::read(&sock).unwrap(), b"new");
        assert!(!closing_path(&sock).exists());
    }

    #[test]
    fn a_server_removes_only_its_own_socket() {
        let (_dir, sock, _) = fixture();
        let old = SocketFile::of(&sock);
        // The old socket lives on elsewhere (as a listening socket's inode does), so the
        // new file cannot reuse its inode number.
        fs::rename(&sock, sock.with_extension("old")).unwrap();
        fs::write(&sock, b"another shim's").unwrap();
        old.remove_if_ours();
        assert!(sock.exists());
        let mine = SocketFile::of(&sock);
        mine.remove_if_ours();
        assert!(!sock.exists());
    }
}
