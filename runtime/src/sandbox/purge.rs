//! Purging a sandbox before it runs another function. The container's processes are gone
//! by then (a PID namespace dies with its init, and Delete killed what was left in the
//! cgroup); the rootfs, mount namespace, /tmp, /dev/shm and cgroup are the next
//! container's own (made at its Create). What the kept namespaces still hold is removed
//! here, each by a named step:
//!
//! * [`strays`]: no process outside trenv holds a kept namespace (a sandbox that one
//!   does is destroyed, not purged: its owner could see the next function);
//! * [`names`]: the hostname and domain name back to the host's, as a new UTS namespace
//!   starts (the next container's own are set when it takes the sandbox);
//! * [`sysv`]: every SysV shared memory segment, semaphore set and message queue;
//! * [`IpcSettings`]: the IPC namespace's sysctls (a function with CAP_SYS_ADMIN may
//!   change them) back to what the namespace started with;
//! * [`mqueues`]: every POSIX message queue (in a private mount of the IPC namespace's
//!   mqueue filesystem, on a thread with a mount namespace of its own);
//! * [`links`]: every network interface but `lo` and those trenv manages for the sandbox
//!   (a client's CNI interface left behind goes, as it would with a new namespace), and,
//!   in a sandbox without a network of trenv's, `lo` down, as in a new namespace.

use std::fs;
use std::path::Path;
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::SandboxError;
use super::pins::{Kind, Pins};
use crate::sys::nsops;

/// What a purge removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Purged {
    pub sysv_objects: usize,
    /// IPC sysctls written back.
    pub sysctls: usize,
    pub mqueues: usize,
    pub links: Vec<String>,
}

/// A UTS namespace's hostname and domain name: the host's (what a new namespace starts
/// with and a purge puts back), a container's, or an idle sandbox's as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UtsNames {
    pub hostname: String,
    pub domainname: String,
}

impl UtsNames {
    /// The caller's (the shim's and the CLI's are the host's).
    pub fn current() -> UtsNames {
        let u = nix::sys::utsname::uname().ok();
        let get = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            u.as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        UtsNames {
            hostname: get(|u| u.nodename()),
            domainname: get(|u| u.domainname()),
        }
    }
}

/// The IPC namespace's sysctls, as a new namespace has them (recorded in the sandbox's
/// directory when it is made, written back by every purge).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpcSettings(Vec<(String, String)>);

/// The sysctls an IPC namespace owns.
const IPC_SYSCTLS: [&str; 16] = [
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/shm_rmid_forced",
    "kernel/shm_next_id",
    "kernel/msgmax",
    "kernel/msgmnb",
    "kernel/msgmni",
    "kernel/msg_next_id",
    "kernel/sem",
    "kernel/sem_next_id",
    "fs/mqueue/msg_max",
    "fs/mqueue/msgsize_max",
    "fs/mqueue/queues_max",
    "fs/mqueue/msg_default",
    "fs/mqueue/msgsize_default",
];

/// The file in a sandbox's directory holding its [`IpcSettings`].
const IPC_SETTINGS: &str = "ipc-sysctls.json";

impl IpcSettings {
    /// The thread's IPC namespace's values (those this kernel has).
    pub fn read() -> IpcSettings {
        IpcSettings(
            IPC_SYSCTLS
                .iter()
                .filter_map(|k| {
                    let v = fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
                    Some((k.to_string(), v.trim().to_string()))
                })
                .collect(),
        )
    }

    /// Records the values of the sandbox's new IPC namespace in its directory.
    pub fn record(pins: &Pins) -> Result<(), SandboxError> {
        let s = pins.enter(&[Kind::Ipc], || Ok(IpcSettings::read()))?;
        let p = pins.dir().join(IPC_SETTINGS);
        let body = serde_json::to_vec(&s).map_err(|e| SandboxError::io("encoding")(e.into()))?;
        fs::write(&p, body).map_err(SandboxError::io(format!("writing {}", p.display())))
    }

    fn load(pins: &Pins) -> Result<IpcSettings, SandboxError> {
        let p = pins.dir().join(IPC_SETTINGS);
        let raw = fs::read(&p).map_err(SandboxError::io(format!("reading {}", p.display())))?;
        serde_json::from_slice(&raw).map_err(|e| SandboxError::io("decoding")(e.into()))
    }

    /// Writes back (on a thread in the IPC namespace) every value that changed; how many.
    fn apply(&self) -> Result<usize, SandboxError> {
        let now = IpcSettings::read();
        let mut n = 0;
        for (k, v) in &self.0 {
            if now.0.iter().any(|(nk, nv)| nk == k && nv == v) {
                continue;
            }
            let path = format!("/proc/sys/{k}");
            fs::write(&path, v).map_err(SandboxError::io(format!("resetting {path}")))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Purges the sandbox pinned by `pins`, keeping the interfaces named in `managed`.
pub fn purge(pins: &Pins, host: &UtsNames, managed: &[String]) -> Result<Purged, SandboxError> {
    strays(pins)?;
    let settings = IpcSettings::load(pins)?;
    let mq_dir = pins.dir().join("mq");
    let _ = fs::create_dir(&mq_dir);
    pins.enter(&Kind::ALL, || {
        names(&host.hostname, &host.domainname)?;
        let sysv_objects = sysv()?;
        let sysctls = settings.apply()?;
        let links = links(managed)?;
        // Last: it gives this thread a mount namespace of its own.
        let mqueues = mqueues(&mq_dir)?;
        Ok(Purged {
            sysv_objects,
            sysctls,
            mqueues,
            links,
        })
    })
}

/// Fails if a process still holds one of the kept namespaces.
pub fn strays(pins: &Pins) -> Result<(), SandboxError> {
    let inodes = pins.inodes()?;
    let Ok(procs) = fs::read_dir("/proc") else {
        return Ok(());
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        for (k, ino) in Kind::ALL.iter().zip(inodes) {
            let link = fs::read_link(format!("/proc/{pid}/ns/{}", k.name()));
            if link.is_ok_and(|l| l.to_string_lossy() == format!("{}:[{ino}]", k.name())) {
                return Err(SandboxError::Stray {
                    pid,
                    kind: k.name(),
                });
            }
        }
    }
    Ok(())
}

/// Sets the UTS namespace's names (on a thread inside it).
pub fn names(hostname: &str, domainname: &str) -> Result<(), SandboxError> {
    nsops::set_hostname(hostname).map_err(SandboxError::io("setting the hostname"))?;
    nsops::set_domainname(domainname).map_err(SandboxError::io("setting the domain name"))
}

/// The ids of the first column after the key in a `/proc/sysvipc/*` table.
fn sysv_ids(table: &str) -> Vec<i32> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Removes every SysV IPC object of the thread's IPC namespace; how many.
fn sysv() -> Result<usize, SandboxError> {
    let mut n = 0;
    let read = |what: &str| {
        fs::read_to_string(format!("/proc/sysvipc/{what}"))
            .map_err(SandboxError::io(format!("reading /proc/sysvipc/{what}")))
    };
    for id in sysv_ids(&read("shm")?) {
        // SAFETY: IPC_RMID takes no buffer.
        if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == 0 {
            n += 1;
        }
    }
    for id in sysv_ids(&read("sem")?) {
        // SAFETY: IPC_RMID takes no argument.
        if unsafe { libc::semctl(id, 0, libc::IPC_RMID) } == 0 {
            n += 1;
        }
    }
    for id in sysv_ids(&read("msg")?) {
        // SAFETY: IPC_RMID takes no buffer.
        if unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == 0 {
            n += 1;
        }
    }
    let left: usize = ["shm", "sem", "msg"]
        .iter()
        .map(|w| read(w).map(|t| sysv_ids(&t).len()))
        .sum::<Result<usize, _>>()?;
    if left > 0 {
        return Err(SandboxError::Unpurged(format!("{left} SysV IPC objects")));
    }
    Ok(n)
}

/// Removes every POSIX message queue of the thread's IPC namespace; how many. Mounts the
/// namespace's mqueue filesystem at `dir` in a private mount namespace of this thread.
fn mqueues(dir: &Path) -> Result<usize, SandboxError> {
    super::store::private_mount_namespace()?;
    mount(
        Some("mqueue"),
        dir,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(SandboxError::sys(
        "mounting the sandbox's mqueue filesystem",
    ))?;
    let mut n = 0;
    let mut failed = None;
    for e in fs::read_dir(dir)
        .map_err(SandboxError::io("listing message queues"))?
        .flatten()
    {
        match fs::remove_file(e.path()) {
            Ok(()) => n += 1,
            Err(err) => failed = Some(err),
        }
    }
    let _ = umount2(dir, MntFlags::MNT_DETACH);
    match failed {
        Some(e) => Err(SandboxError::io("removing a message queue")(e)),
        None => Ok(n),
    }
}

/// Deletes every interface but `lo` and `managed`, and takes `lo` down; the deleted names.
fn links(managed: &[String]) -> Result<Vec<String>, SandboxError> {
    let names = interfaces()?;
    let mut deleted = Vec::new();
    for name in names {
        if name == "lo" || managed.contains(&name) {
            continue;
        }
        // Rare (a client's CNI interface whose DEL never came): iproute2 does it. The child
        // is forked from this thread, so it is in the sandbox's network namespace.
        let out = crate::sys::run::output(
            Command::new("ip").args(["link", "delete", "dev", &name]),
            b"",
        )
        .map_err(SandboxError::io("running ip link delete"))?;
        if !out.status.success() && interfaces()?.contains(&name) {
            return Err(SandboxError::Unpurged(format!(
                "interface {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        deleted.push(name);
    }
    if managed.is_empty() {
        set_up("lo", false)?;
    }
    Ok(deleted)
}

/// The names of the thread's network namespace's interfaces.
pub(crate) fn interfaces() -> Result<Vec<String>, SandboxError> {
    nsops::interfaces().map_err(SandboxError::io("listing interfaces"))
}

/// Brings interface `name` of the thread's network namespace up or down.
pub(crate) fn set_up(name: &str, up: bool) -> Result<(), SandboxError> {
    nsops::set_up(name, up).map_err(SandboxError::io(format!("setting the flags of {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysv_tables_give_their_ids() {
        let shm = "       key      shmid perms       size  cpid  lpid nattch\n\
                   1234 32769 600 4096 10 10 0\n         0 5 600 10 1 1 0\n";
        assert_eq!(sysv_ids(shm), vec![32769, 5]);
        assert!(sysv_ids("key semid perms\n").is_empty());
    }

    /// Root: a sandbox whose namespaces hold every kind of leftover comes out empty.
    #[test]
    fn a_purge_removes_ipc_objects_queues_names_and_foreign_links() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let pins = Pins::create(&base.path().join("sb"), None).unwrap();
        IpcSettings::record(&pins).unwrap();
        pins.enter(&Kind::ALL, || {
            names("leftover", "left.domain")?;
            fs::write("/proc/sys/kernel/shmmni", "77").unwrap();
            fs::write("/proc/sys/fs/mqueue/msg_max", "11").unwrap();
            // SAFETY: plain SysV and POSIX IPC calls with valid arguments.
            unsafe {
                assert!(libc::shmget(libc::IPC_PRIVATE, 4096, 0o600 | libc::IPC_CREAT) >= 0);
                assert!(libc::semget(77, 1, 0o600 | libc::IPC_CREAT) >= 0);
                assert!(libc::msgget(78, 0o600 | libc::IPC_CREAT) >= 0);
                let q = libc::mq_open(
                    c"/leftover".as_ptr(),
                    libc::O_CREAT | libc::O_RDWR,
                    0o600,
                    std::ptr::null_mut::<libc::mq_attr>(),
                );
                assert!(q >= 0, "{}", std::io::Error::last_os_error());
                libc::mq_close(q);
            }
            let ok = Command::new("ip")
                .args([
                    "link", "add", "left7", "type", "veth", "peer", "name", "left8",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            set_up("lo", true)?;
            Ok(())
        })
        .unwrap();
        let host = UtsNames {
            hostname: "hostname-of-host".into(),
            domainname: "(none)".into(),
        };
        let purged = purge(&pins, &host, &[]).unwrap();
        assert_eq!(purged.sysv_objects, 3);
        assert_eq!(purged.sysctls, 2);
        assert_eq!(purged.mqueues, 1);
        assert_eq!(purged.links.first().map(String::as_str), Some("left8"));
        let (hostname, ifs, lo_up, sysv, shmmni) = pins
            .enter(&Kind::ALL, || {
                let sysv: usize = ["shm", "sem", "msg"]
                    .iter()
                    .map(|w| sysv_ids(&fs::read_to_string(format!("/proc/sysvipc/{w}")).unwrap()))
                    .map(|v| v.len())
                    .sum();
                let sock = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Datagram,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .unwrap();
                use std::os::fd::AsRawFd;
                // SAFETY: ifreq is plain old data.
                let up = unsafe {
                    let mut req: libc::ifreq = std::mem::zeroed();
                    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
                        *d = *s as libc::c_char;
                    }
                    assert!(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) >= 0);
                    req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0
                };
                Ok((
                    nix::unistd::gethostname().unwrap().into_string().unwrap(),
                    interfaces()?,
                    up,
                    sysv,
                    fs::read_to_string("/proc/sys/kernel/shmmni").unwrap(),
                ))
            })
            .unwrap();
        assert_eq!(hostname, "hostname-of-host");
        assert_eq!(ifs, vec!["lo".to_string()]);
        assert!(!lo_up, "lo is down, as in a new namespace");
        assert_eq!(sysv, 0);
        assert_ne!(shmmni.trim(), "77");
        // And the queue is gone: a second purge finds nothing.
        assert_eq!(purge(&pins, &host, &[]).unwrap(), Purged::default());
        pins.remove();
    }

    #[test]
    fn a_process_in_a_kept_namespace_stops_the_purge() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let pins = Pins::create(&base.path().join("sb"), None).unwrap();
        IpcSettings::record(&pins).unwrap();
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", pins.path(Kind::Net).unwrap().display()))
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let e = purge(&pins, &UtsNames::current(), &[]).unwrap_err();
        assert!(matches!(e, SandboxError::Stray { kind: "net", .. }), "{e}");
        child.kill().unwrap();
        child.wait().unwrap();
        pins.remove();
    }
}
