//! The node-wide idle pool: one directory (`[sandboxes] dir`, a tmpfs such as
//! /run/trenv/sandboxes) shared by every trenv shim of the node and the CLI, with one
//! directory per sandbox holding its pinned namespaces and its [`Record`]. It depends on
//! no process: a shim exits when its last container is deleted, containerd may restart,
//! and the pool stays; a reboot empties it (as it empties the namespaces).
//!
//! Every change of records happens under an exclusive `flock` of `<dir>/.lock`, held only
//! while records are read and written; namespaces are made and purged outside it. Each
//! operation first sweeps: sandboxes held by a process that is gone (a shim killed while
//! its container ran or mid-purge) and idle ones past their keep-alive or beyond the
//! pool's size are destroyed; a sandbox is handed out only from the idle state.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::SandboxError;
use super::memory::MemoryAccount;
use super::network::{Attachment, Cni, IFNAME, NetTarget};
use super::pins::{Kind, Pins};
use super::policy::{Bounds, Want, choose, evictions};
use super::purge::{IpcSettings, Purged, UtsNames, names, purge};
use super::record::{Owner, Record, State, now_ms};

/// A sandbox's record file in its directory.
const RECORD: &str = "sandbox.json";
/// A directory without a record this long after it was made is a failed creation's.
const ORPHAN_AGE: Duration = Duration::from_secs(60);

/// The pool of the node.
#[derive(Debug, Clone)]
pub struct IdlePool {
    dir: PathBuf,
    bounds: Bounds,
    cni: Cni,
}

/// A sandbox given to one container, until it is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub pins: Pins,
    /// The function that ran in it before (`None`: made for this container).
    pub previous: Option<String>,
}

impl Lease {
    pub fn repurposed(&self) -> bool {
        self.previous.is_some()
    }
}

/// What a container asks of the pool when it is created.
#[derive(Debug, Clone, Copy)]
pub struct Take<'a> {
    pub want: Want<'a>,
    pub container: &'a str,
    /// The spec's hostname and domain name (else the host's, as a new namespace has).
    pub hostname: Option<&'a str>,
    pub domainname: Option<&'a str>,
    /// The CNI network the sandbox must be attached to (part of the compatibility key).
    pub network: Option<&'a str>,
}

/// What became of a released sandbox.
#[derive(Debug)]
pub enum Released {
    /// Purged and idle.
    Idle(Purged),
    /// Destroyed: the pool is full (or keeps nothing), or the purge failed (why).
    Destroyed(Option<SandboxError>),
}

impl IdlePool {
    pub fn new(dir: &Path, bounds: Bounds, cni: Cni) -> IdlePool {
        IdlePool {
            dir: dir.to_path_buf(),
            bounds,
            cni,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(id).join(RECORD)
    }

    /// The pool's lock, held until dropped.
    fn lock(&self) -> Result<Flock<fs::File>, SandboxError> {
        fs::create_dir_all(&self.dir)
            .map_err(SandboxError::io(format!("creating {}", self.dir.display())))?;
        let path = self.dir.join(".lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(SandboxError::io(format!("opening {}", path.display())))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| SandboxError::sys(format!("locking {}", path.display()))(e))
    }

    /// Every sandbox's record (sandboxes being made or destroyed have none).
    pub fn records(&self) -> Vec<Record> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Record> = entries
            .flatten()
            .filter_map(|e| Record::read(&e.path().join(RECORD)))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Gives the container a compatible idle sandbox, or a new one; sets its names.
    pub fn take(&self, t: &Take<'_>) -> Result<Lease, SandboxError> {
        let me = Owner::me();
        let busy = State::Busy {
            owner: me,
            container: t.container.to_string(),
        };
        let taken = {
            let _lock = self.lock()?;
            let records = self.sweep_and_keep().1;
            match choose(&records, &t.want).cloned() {
                Some(mut r) => {
                    let previous = std::mem::replace(&mut r.function, t.want.function.into());
                    r.state = busy.clone();
                    r.uses += 1;
                    r.last_used_ms = now_ms();
                    let idle_names = r.names.take();
                    self.write(&r)?;
                    let lease = Lease {
                        pins: Pins::at(&self.dir.join(&r.id)),
                        id: r.id,
                        previous: Some(previous),
                    };
                    Some((lease, idle_names))
                }
                None => None,
            }
        };
        let (lease, idle_names) = match taken {
            Some(l) => l,
            None => (self.create(t, busy)?, None),
        };
        let host = UtsNames::current();
        let wanted = UtsNames {
            hostname: t.hostname.unwrap_or(&host.hostname).to_string(),
            domainname: t.domainname.unwrap_or(&host.domainname).to_string(),
        };
        // An idle sandbox has the names its purge gave it (no process ran in it since).
        if idle_names.as_ref() != Some(&wanted)
            && let Err(e) = lease
                .pins
                .enter(&[Kind::Uts], || names(&wanted.hostname, &wanted.domainname))
        {
            self.destroy(&lease.id);
            return Err(e);
        }
        Ok(lease)
    }

    /// A new sandbox, held as `busy`.
    fn create(&self, t: &Take<'_>, busy: State) -> Result<Lease, SandboxError> {
        fs::create_dir_all(&self.dir)
            .map_err(SandboxError::io(format!("creating {}", self.dir.display())))?;
        let id = new_id();
        let account = MemoryAccount::of(&id);
        let pins = Pins::create(&self.dir.join(&id), account.as_ref())?;
        let prepared = IpcSettings::record(&pins).and_then(|_| match t.network {
            Some(name) => self
                .cni
                .attach(&NetTarget::sandbox(&pins)?, &id, name, account.as_ref())
                .map(drop),
            None => Ok(()),
        });
        if let Err(e) = prepared {
            pins.remove();
            if let Some(a) = &account {
                a.remove();
            }
            return Err(e);
        }
        let now = now_ms();
        let r = Record {
            id: id.clone(),
            tenant: t.want.tenant.into(),
            key: t.want.key.into(),
            state: busy,
            function: t.want.function.into(),
            network: t.network.map(str::to_string),
            created_ms: now,
            last_used_ms: now,
            uses: 1,
            memory: None,
            names: None,
        };
        if let Err(e) = self.write(&r) {
            self.destroy(&id);
            return Err(e);
        }
        Ok(Lease {
            id,
            pins,
            previous: None,
        })
    }

    /// Purges the sandbox and makes it idle, or destroys it (a full pool, a failed purge).
    pub fn release(&self, lease: &Lease) -> Released {
        let me = Owner::me();
        let marked = (|| {
            let _lock = self.lock()?;
            let mut r = Record::read(&self.record_path(&lease.id))
                .ok_or_else(|| SandboxError::Gone(lease.id.clone()))?;
            r.state = State::Purging { owner: me };
            self.write(&r)?;
            Ok::<_, SandboxError>(r)
        })();
        let mut r = match marked {
            Ok(r) => r,
            Err(e) => {
                self.destroy(&lease.id);
                return Released::Destroyed(Some(e));
            }
        };
        if self.bounds.max_idle == 0 {
            self.destroy(&lease.id);
            return Released::Destroyed(None);
        }
        let managed: Vec<String> = r.network.iter().map(|_| IFNAME.to_string()).collect();
        let host = UtsNames::current();
        let purged = match purge(&lease.pins, &host, &managed) {
            Ok(p) => p,
            Err(e) => {
                self.destroy(&lease.id);
                return Released::Destroyed(Some(e));
            }
        };
        // What it holds now that its function is gone: what the memory bound counts.
        let memory = MemoryAccount::of(&lease.id).and_then(|a| a.usage());
        let idle = (|| {
            let _lock = self.lock()?;
            r.state = State::Idle;
            r.memory = memory;
            r.names = Some(host);
            r.last_used_ms = now_ms();
            self.write(&r)?;
            self.sweep_locked();
            Ok::<_, SandboxError>(())
        })();
        match idle {
            Ok(()) if self.record_path(&lease.id).exists() => Released::Idle(purged),
            Ok(()) => Released::Destroyed(None),
            Err(e) => {
                self.destroy(&lease.id);
                Released::Destroyed(Some(e))
            }
        }
    }

    /// Destroys a sandbox: its network detached (CNI DEL), its namespaces unpinned, its
    /// directory and its memory account gone.
    pub fn destroy(&self, id: &str) {
        let pins = Pins::at(&self.dir.join(id));
        let detached = if Attachment::of(pins.dir()).is_some() {
            NetTarget::sandbox(&pins).and_then(|t| self.cni.detach(&t, id))
        } else {
            Ok(())
        };
        if let Err(e) = detached {
            log::warn!("sandbox {id}: {e}; its namespace goes anyway");
        }
        pins.remove();
        if let Some(a) = MemoryAccount::of(id) {
            a.remove();
        }
    }

    /// Destroys the idle (and abandoned) sandboxes, of `tenant` only if given; their ids.
    /// Sandboxes in use stay: they are released to the pool, or destroyed, when their
    /// containers are deleted.
    pub fn drain(&self, tenant: Option<&str>) -> Result<Vec<String>, SandboxError> {
        let _lock = self.lock()?;
        let mut out = self.sweep_locked();
        for r in self.records() {
            if r.is_idle() && tenant.is_none_or(|t| t == r.tenant) {
                self.destroy(&r.id);
                out.push(r.id);
            }
        }
        Ok(out)
    }

    /// Destroys what must go now (sandboxes of dead holders, idle ones past their
    /// keep-alive or beyond the bounds); their ids. Every pool operation does this first;
    /// running shims also do it periodically, so that the keep-alive holds on a node where
    /// nothing is created or deleted. A pool that was never made stays unmade.
    pub fn sweep(&self) -> Result<Vec<String>, SandboxError> {
        if !self.dir.is_dir() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        Ok(self.sweep_locked())
    }

    /// Destroys what must go (the caller holds the lock); their ids.
    fn sweep_locked(&self) -> Vec<String> {
        self.sweep_and_keep().0
    }

    /// [`Self::sweep_locked`], and the records of the sandboxes left (read once: a take
    /// chooses among them).
    fn sweep_and_keep(&self) -> (Vec<String>, Vec<Record>) {
        let mut records = self.records();
        let mut gone: Vec<String> = records
            .iter()
            .filter(|r| r.abandoned())
            .map(|r| r.id.clone())
            .collect();
        gone.extend(evictions(&records, &self.bounds, now_ms()));
        // Directories without a record: a creation that died half-way.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let path = e.path();
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > ORPHAN_AGE);
                if path.is_dir() && old && !path.join(RECORD).exists() {
                    gone.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        for id in &gone {
            self.destroy(id);
        }
        records.retain(|r| !gone.contains(&r.id));
        (gone, records)
    }

    fn write(&self, r: &Record) -> Result<(), SandboxError> {
        let p = self.record_path(&r.id);
        r.write(&p)
            .map_err(SandboxError::io(format!("writing {}", p.display())))
    }
}

/// A new sandbox id: time and pid make it unique on the node.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "sb-{:x}-{}-{}",
        now_ms(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn take<'a>(tenant: &'a str, function: &'a str, container: &'a str) -> Take<'a> {
        Take {
            want: Want {
                tenant,
                key: "k",
                function,
            },
            container,
            hostname: Some("fn-host"),
            domainname: None,
            network: None,
        }
    }

    fn pool(dir: &Path, max_idle: usize) -> IdlePool {
        pool_keeping(dir, max_idle, Duration::from_secs(600))
    }

    fn pool_keeping(dir: &Path, max_idle: usize, keep_alive: Duration) -> IdlePool {
        pool_bounded(dir, max_idle, keep_alive, u64::MAX)
    }

    fn pool_bounded(dir: &Path, max_idle: usize, keep_alive: Duration, memory: u64) -> IdlePool {
        IdlePool::new(
            dir,
            Bounds {
                max_idle,
                max_idle_per_tenant: max_idle,
                keep_alive,
                max_idle_memory: memory,
            },
            Cni {
                conf_dir: dir.join("no-cni"),
                bin_dir: "/usr/lib/cni".into(),
            },
        )
    }

    #[test]
    fn a_released_sandbox_goes_to_the_next_container_of_its_tenant_only() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let p = pool(&base.path().join("pool"), 4);
        let a = p.take(&take("t1", "fa", "c1")).unwrap();
        assert!(!a.repurposed());
        let hostname = a
            .pins
            .enter(&[Kind::Uts], || {
                Ok(nix::unistd::gethostname().unwrap().into_string().unwrap())
            })
            .unwrap();
        assert_eq!(hostname, "fn-host");
        assert!(matches!(p.release(&a), Released::Idle(_)));
        let other = p.take(&take("t2", "fb", "c2")).unwrap();
        assert_ne!(other.id, a.id, "never across tenants");
        let b = p.take(&take("t1", "fb", "c3")).unwrap();
        assert_eq!(b.id, a.id);
        assert_eq!(b.previous.as_deref(), Some("fa"));
        let r = p.records().into_iter().find(|r| r.id == a.id).unwrap();
        assert_eq!(r.uses, 2);
        assert!(matches!(r.state, State::Busy { .. }));
        // Nothing is idle: a third container gets a new one.
        let c = p.take(&take("t1", "fc", "c4")).unwrap();
        assert!(c.id != a.id && !c.repurposed());
        for l in [&other, &b, &c] {
            p.release(l);
        }
        assert_eq!(p.records().len(), 3);
        let drained = p.drain(None).unwrap();
        assert_eq!(drained.len(), 3);
        assert!(p.records().is_empty());
        let left: Vec<_> = fs::read_dir(p.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != ".lock")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A taken sandbox has the names its container wants: its own, or the host's (which
    /// an idle sandbox already has from its purge, recorded, so the take leaves them).
    #[test]
    fn a_taken_sandbox_has_the_wanted_names_set_or_kept_from_its_purge() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let p = pool(&base.path().join("pool"), 4);
        let names_of = |l: &Lease| {
            l.pins
                .enter(&[Kind::Uts], || {
                    let u = nix::sys::utsname::uname().unwrap();
                    Ok((
                        u.nodename().to_string_lossy().into_owned(),
                        u.domainname().to_string_lossy().into_owned(),
                    ))
                })
                .unwrap()
        };
        let host = UtsNames::current();
        let host = (host.hostname, host.domainname);
        let record = |id: &str| p.records().into_iter().find(|r| r.id == id).unwrap();
        let a = p.take(&take("t1", "fa", "c1")).unwrap();
        assert_eq!(names_of(&a).0, "fn-host");
        // The function names itself: a purge puts the host's names back and records them.
        a.pins
            .enter(&[Kind::Uts], || names("changed-by-fa", "fa.domain"))
            .unwrap();
        assert!(matches!(p.release(&a), Released::Idle(_)));
        let idle = record(&a.id).names.unwrap();
        assert_eq!((idle.hostname, idle.domainname), host);
        let hosts = Take {
            hostname: None,
            ..take("t1", "fb", "c2")
        };
        let b = p.take(&hosts).unwrap();
        assert_eq!(b.id, a.id);
        assert_eq!(names_of(&b), host);
        assert_eq!(
            record(&b.id).names,
            None,
            "a busy sandbox's names are not known"
        );
        // Renamed while busy: the record knows nothing of it, the purge resets it.
        b.pins
            .enter(&[Kind::Uts], || names("changed-by-fb", "fb.domain"))
            .unwrap();
        p.release(&b);
        let c = p.take(&hosts).unwrap();
        assert_eq!((c.id.as_str(), names_of(&c)), (a.id.as_str(), host.clone()));
        p.release(&c);
        let d = p.take(&take("t1", "fd", "c4")).unwrap();
        assert_eq!(d.id, a.id);
        assert_eq!(names_of(&d), ("fn-host".to_string(), host.1.clone()));
        p.release(&d);
        p.drain(None).unwrap();
    }

    #[test]
    fn a_sweep_destroys_idle_sandboxes_past_their_keep_alive_and_makes_no_pool() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let never = pool(&base.path().join("never-made"), 4);
        assert!(never.sweep().unwrap().is_empty());
        assert!(!never.dir().exists(), "a sweep makes no pool");
        let p = pool_keeping(&base.path().join("pool"), 4, Duration::from_secs(1));
        let a = p.take(&take("t", "f", "c1")).unwrap();
        assert!(matches!(p.release(&a), Released::Idle(_)));
        assert!(p.sweep().unwrap().is_empty(), "still within its keep-alive");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(p.sweep().unwrap(), vec![a.id.clone()]);
        assert!(p.records().is_empty());
        assert!(!p.dir().join(&a.id).exists());
    }

    #[test]
    fn the_pool_keeps_at_most_max_idle_and_abandoned_sandboxes_are_destroyed() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let p = pool(&base.path().join("pool"), 1);
        let a = p.take(&take("t", "f", "c1")).unwrap();
        let b = p.take(&take("t", "f", "c2")).unwrap();
        assert!(matches!(p.release(&a), Released::Idle(_)));
        p.release(&b);
        assert_eq!(p.records().len(), 1, "the older idle one was evicted");
        // A holder that died mid-purge: its sandbox is never handed out.
        let c = p.take(&take("t", "f", "c3")).unwrap();
        let mut r = Record::read(&p.record_path(&c.id)).unwrap();
        r.state = State::Purging {
            owner: Owner {
                pid: i32::MAX,
                start: 1,
            },
        };
        r.write(&p.record_path(&c.id)).unwrap();
        let d = p.take(&take("t", "f", "c4")).unwrap();
        assert_ne!(d.id, c.id);
        assert!(!p.dir().join(&c.id).exists(), "destroyed by the sweep");
        p.release(&d);
        p.drain(None).unwrap();
        assert!(p.records().is_empty());
        let zero = pool(&base.path().join("pool0"), 0);
        let e = zero.take(&take("t", "f", "c5")).unwrap();
        assert!(matches!(zero.release(&e), Released::Destroyed(None)));
        assert!(zero.records().is_empty());
    }

    #[test]
    fn idle_sandboxes_are_measured_and_the_memory_bound_evicts_the_least_recently_used() {
        if !root() {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let roomy = pool(&base.path().join("pool"), 8);
        let a = roomy.take(&take("t", "f", "c1")).unwrap();
        let first = a.id.clone();
        let account = MemoryAccount::of(&a.id);
        if account.is_none() {
            eprintln!("skipped: no memory controller");
            roomy.release(&a);
            roomy.drain(None).unwrap();
            return;
        }
        let account = account.unwrap();
        assert!(account.dir().is_dir(), "{account:?}");
        // Its namespaces were made in its own cgroup: charged there, not to this process.
        assert!(matches!(roomy.release(&a), Released::Idle(_)));
        let held = roomy.records()[0].memory.expect("measured at its purge");
        assert!(
            held >= 16 << 10,
            "a network, IPC and UTS namespace hold more than {held} bytes"
        );
        // A bound that holds it alone: once a second sandbox is idle too, the older goes
        // (the newer stays if it holds no more than the bound).
        let bounded = pool_bounded(roomy.dir(), 8, Duration::from_secs(600), held);
        let a = bounded.take(&take("t", "f", "c2")).unwrap();
        let b = bounded.take(&take("t", "f", "c3")).unwrap();
        assert_eq!(a.id, first, "the idle one is taken again");
        assert!(matches!(bounded.release(&a), Released::Idle(_)));
        std::thread::sleep(Duration::from_millis(5));
        let released = bounded.release(&b);
        let left = bounded.records();
        assert!(
            left.iter()
                .all(|r| r.id == b.id && r.memory.unwrap() <= held),
            "{left:?}"
        );
        assert_eq!(matches!(released, Released::Idle(_)), left.len() == 1);
        assert!(
            !account.dir().exists(),
            "the evicted sandbox's account went with it"
        );
        bounded.drain(None).unwrap();
        assert!(bounded.records().is_empty());
        assert!(!MemoryAccount::of(&b.id).unwrap().dir().exists());
    }
}
