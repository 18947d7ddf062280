//! A shared shim's reserve: instances of the templates it restored, restored ahead of the
//! Creates that will want them and left stopped, so that the next Create of the same
//! function takes a process that already exists instead of running CRIU (issue 18's path
//! below the CRIU floor; docs/templates.md "The reserve").
//!
//! An instance is a container of the shim's own (id `trenv-reserve-…`, its bundle below
//! [`DIR`]), made by the same Create path as any template restore: a sandbox from the
//! node's pool, the rootfs of the container it was made after — the image's layers under
//! a fresh in-memory writable layer, which is all a repurposed container's rootfs is — a
//! cgroup of its own, and stdio pipes the shim holds until a container takes them. A
//! Create takes an instance only when everything it would have restored is the same: the
//! tenant, the template (its pool file's stamp), the spec but for its cgroup path and
//! non-trenv annotations, the image's layers and the runtime options ([`key`]). Taking it
//! moves its processes into the container's cgroup, gives its libcontainer state the
//! container's cgroup and connects its pipes to the container's stdio (container/
//! reserved.rs); Start continues it as it continues any template restore.
//!
//! Instances belong to the shim: they go when it exits (its linger ended) and a shim that
//! was killed leaves its instances' directories, whose processes, cgroups and mounts the
//! next shared shim of the node removes ([`sweep_dead`]); the pool destroys the sandboxes
//! of dead holders.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use containerd_shim::protos::api::CreateTaskRequest;
use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};
use trenv_runtime::container::Location;
use trenv_runtime::container::cgroup::Cgroup;
use trenv_runtime::container::rootfs::Mount;

use crate::container::Container;
use crate::io::ReservedPipes;
use crate::options::RuntimeOptions;

/// Where instances' bundles are: `<DIR>/<shim pid>-<its start time>/<id>`.
pub const DIR: &str = "/run/trenv/reserve";

/// Written in an instance's directory once a Create can take it.
pub const READY_FILE: &str = "ready";

/// The prefix of an instance's container id.
pub const ID_PREFIX: &str = "trenv-reserve-";

/// How long [`Reserve::close`] waits for fills in progress.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

/// A fill restores its next instance once no Create or Start of the shim is in progress
/// and none ended for this long: the starts of a burst go first, and the restores that
/// refill the reserve (CRIU's CPU time, ~10 ms each here, and the prefault's) come after
/// it instead of competing with it…
const QUIET: Duration = Duration::from_millis(20);

/// …but it waits at most this long for a quiet moment, so that steady traffic does not
/// starve the reserve. (A burst of ten restores at once on two CPUs lasts ~0.5–1 s.)
const MAX_DEFER: Duration = Duration::from_millis(1000);

/// What a fill needs of a container that restored a template, to restore another instance
/// like it.
#[derive(Clone)]
pub struct Source {
    pub key: String,
    /// The template's pool file, whose mappings an instance has faulted in ahead.
    pub pool_file: PathBuf,
    /// The container's spec as containerd wrote it.
    pub spec: Spec,
    pub rootfs: Vec<Mount>,
    pub opts: RuntimeOptions,
    pub namespace: String,
    /// Instances to keep ready (`[shim] reserve`).
    pub want: usize,
    /// An instance not taken for this long goes (`[sandboxes] keep_alive_secs`, as an
    /// idle sandbox).
    pub keep_alive: Duration,
    /// At most this many functions (keys) have instances in the shim
    /// (`[shim] reserve_functions`): a new one's instance replaces those of the function
    /// whose newest instance is the oldest.
    pub functions: usize,
}

/// A restored, stopped instance waiting for a Create.
pub struct Instance {
    pub container: Container,
    pub pipes: ReservedPipes,
    /// The instance's init, held so that its exit is seen (a pidfd never names another
    /// process).
    pidfd: OwnedFd,
    pub made: Instant,
    /// Its cgroup's path (from each hierarchy's root): beside the cgroups of the
    /// containers it was made after, so that a container's can be it, renamed.
    pub cgroup_path: PathBuf,
}

impl Instance {
    /// The init still exists (it was not killed while it waited, e.g. by the OOM killer).
    fn alive(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 0
    }

    /// Removes the instance: its processes, state, mounts and cgroup; its sandbox is
    /// released (purged for the pool).
    pub fn destroy(self) {
        let id = self.container.id.clone();
        drop(self.pipes);
        if let Err(e) = self.container.destroy() {
            log::warn!("reserve: removing instance {id}: {e:?}");
        }
        self.container.cgroup.undo_prepared();
        remove_bundle(&self.container.at.bundle);
    }
}

#[derive(Default)]
struct State {
    ready: HashMap<String, Vec<Instance>>,
    /// Keys with a fill in progress.
    filling: HashSet<String>,
    /// The shim is going: no more fills.
    closed: bool,
    made: u64,
    /// When a container last took an instance or started, or a Create or Start ended
    /// (see [`QUIET`]).
    last_demand: Option<Instant>,
    /// Creates and Starts of the shim in progress ([`Reserve::busy`]).
    busy: usize,
}

/// A Create or Start in progress (the fills wait for it to end): [`Reserve::busy`].
pub struct Busy(&'static Reserve);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.busy = s.busy.saturating_sub(1);
        s.last_demand = Some(Instant::now());
    }
}

/// The shim's reserve (one per shared shim).
#[derive(Default)]
pub struct Reserve {
    state: Mutex<State>,
    idle: Condvar,
}

static RESERVE: OnceLock<Arc<Reserve>> = OnceLock::new();

/// The reserve of this shim, if it is a shared one (only a shim that outlives its
/// containers can keep instances for the next).
pub fn get() -> Option<&'static Arc<Reserve>> {
    std::env::var_os(crate::shared::ENV)?;
    Some(RESERVE.get_or_init(|| {
        // What shims that died left, removed beside the first Create.
        if let Err(e) = std::thread::Builder::new()
            .name("reserve-sweep".into())
            .spawn(sweep_dead)
        {
            log::warn!("reserve: no sweep thread: {e}");
        }
        Arc::default()
    }))
}

/// Takes out of `ready` the items older than `keep_alive` (by `made`), then those of the
/// keys beyond `max_keys` whose newest item is the oldest.
fn evict<T>(
    ready: &mut HashMap<String, Vec<T>>,
    made: impl Fn(&T) -> Instant,
    keep_alive: Duration,
    max_keys: usize,
) -> Vec<T> {
    let mut out = Vec::new();
    for list in ready.values_mut() {
        let (old, young): (Vec<T>, Vec<T>) = std::mem::take(list)
            .into_iter()
            .partition(|i| made(i).elapsed() > keep_alive);
        out.extend(old);
        *list = young;
    }
    ready.retain(|_, l| !l.is_empty());
    while ready.len() > max_keys {
        let oldest = ready
            .iter()
            .min_by_key(|(_, l)| l.iter().map(&made).max())
            .map(|(k, _)| k.clone());
        match oldest.and_then(|k| ready.remove(&k)) {
            Some(l) => out.extend(l),
            None => break,
        }
    }
    out
}

/// The reserve of this shim if it has one already (nothing is swept or made).
pub fn existing() -> Option<&'static Arc<Reserve>> {
    RESERVE.get()
}

impl Reserve {
    /// Removes the instances not taken within `keep_alive` (run with the pool's periodic
    /// sweep, so that an unused instance goes even if no other is made).
    pub fn expire(&self, keep_alive: Duration, functions: usize) {
        let gone = evict(&mut self.state().ready, |i| i.made, keep_alive, functions);
        for inst in gone {
            log::info!("reserve: instance {} expired", inst.container.id);
            inst.destroy();
        }
    }

    /// Marks a Create or Start of the shim in progress until the guard is dropped.
    pub fn busy(&'static self) -> Busy {
        let mut s = self.state();
        s.busy += 1;
        s.last_demand = Some(Instant::now());
        Busy(self)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An instance for `key` whose init is still there, if any: the one made first.
    pub fn take(&self, key: &str) -> Option<Instance> {
        loop {
            let inst = {
                let mut s = self.state();
                s.last_demand = Some(Instant::now());
                let list = s.ready.get_mut(key)?;
                // The one waiting longest first (the others are further from their
                // keep-alive's end; refills go after them).
                let inst = (!list.is_empty()).then(|| list.remove(0));
                if list.is_empty() {
                    s.ready.remove(key);
                }
                inst?
            };
            if inst.alive() {
                return Some(inst);
            }
            log::warn!(
                "reserve: instance {} exited while it waited; removed",
                inst.container.id
            );
            inst.destroy();
        }
    }

    /// Restores instances like `source`'s container in the background until `want` are
    /// ready (one fill per key at a time).
    pub fn refill(self: &Arc<Self>, source: Source) {
        {
            let mut s = self.state();
            s.last_demand = Some(Instant::now());
            let have = s.ready.get(&source.key).map_or(0, Vec::len);
            if s.closed || have >= source.want || !s.filling.insert(source.key.clone()) {
                return;
            }
        }
        let me = self.clone();
        let key = source.key.clone();
        let spawned = std::thread::Builder::new()
            .name("reserve-fill".into())
            .spawn(move || {
                me.fill(&source);
                let mut s = me.state();
                s.filling.remove(&source.key);
                me.idle.notify_all();
            });
        if let Err(e) = spawned {
            log::warn!("reserve: no fill thread: {e}");
            self.state().filling.remove(&key);
        }
    }

    fn fill(&self, source: &Source) {
        loop {
            if !self.wait_quiet() {
                return;
            }
            let n = {
                let mut s = self.state();
                let have = s.ready.get(&source.key).map_or(0, Vec::len);
                if s.closed || have >= source.want {
                    return;
                }
                s.made += 1;
                s.made
            };
            let began = Instant::now();
            let inst = match make(source, n) {
                Ok(inst) => inst,
                Err(e) => {
                    log::warn!("reserve: no instance made: {e}");
                    return;
                }
            };
            log::info!(
                "reserve: instance {} ready in {:.1} ms",
                inst.container.id,
                began.elapsed().as_secs_f64() * 1e3
            );
            let evicted = {
                let mut s = self.state();
                if s.closed {
                    drop(s);
                    inst.destroy();
                    return;
                }
                if let Err(e) = fs::write(inst.container.at.bundle.join(READY_FILE), "") {
                    log::debug!("reserve: instance {}: {e}", inst.container.id);
                }
                s.ready.entry(source.key.clone()).or_default().push(inst);
                evict(
                    &mut s.ready,
                    |i| i.made,
                    source.keep_alive,
                    source.functions,
                )
            };
            for old in evicted {
                log::info!("reserve: instance {} evicted", old.container.id);
                old.destroy();
            }
        }
    }

    /// Waits until no Create or Start is in progress and none ended (no instance taken, no
    /// container started) for [`QUIET`], at most [`MAX_DEFER`]; false if the shim is going.
    fn wait_quiet(&self) -> bool {
        let waiting = Instant::now();
        loop {
            let wait = {
                let s = self.state();
                if s.closed {
                    return false;
                }
                defer_for(Instant::now(), s.last_demand, s.busy > 0, waiting)
            };
            match wait {
                Some(d) => std::thread::sleep(d),
                None => return true,
            }
        }
    }

    /// No more fills; every instance removed (the shim exits). Waits for fills in
    /// progress, at most [`CLOSE_PATIENCE`].
    pub fn close(&self) {
        let all: Vec<Instance> = {
            let mut s = self.state();
            s.closed = true;
            let deadline = Instant::now() + CLOSE_PATIENCE;
            while !s.filling.is_empty() && Instant::now() < deadline {
                s = self
                    .idle
                    .wait_timeout(s, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            s.ready.drain().flat_map(|(_, v)| v).collect()
        };
        for inst in all {
            inst.destroy();
        }
    }
}

/// How much longer a fill that began waiting at `waiting` waits at `now`, the last take,
/// start or end of a Create or Start having been at `last_demand`, and `busy` if one is in
/// progress; None: it restores now.
fn defer_for(
    now: Instant,
    last_demand: Option<Instant>,
    busy: bool,
    waiting: Instant,
) -> Option<Duration> {
    let left = MAX_DEFER.checked_sub(now.saturating_duration_since(waiting))?;
    let quiet = if busy {
        QUIET
    } else {
        QUIET.checked_sub(now.saturating_duration_since(last_demand?))?
    };
    Some(quiet.min(left)).filter(|d| !d.is_zero())
}

/// Restores instance number `n` like `source`'s container.
fn make(source: &Source, n: u64) -> Result<Instance, String> {
    let id = format!("{ID_PREFIX}{}-{n}", std::process::id());
    let bundle = owner_dir().join(&id);
    fs::create_dir_all(&bundle).map_err(|e| format!("creating {}: {e}", bundle.display()))?;
    let made = make_in(source, &id, &bundle);
    if made.is_err() {
        remove_bundle(&bundle);
    }
    made
}

fn make_in(source: &Source, id: &str, bundle: &Path) -> Result<Instance, String> {
    let mut spec = source.spec.clone();
    // A cgroup of its own until a container takes it, beside the source container's
    // (cgroupfs: the key's runtime options exclude the systemd driver).
    let source_cgroup = Cgroup::path_of(
        spec.linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref()),
        &source.key,
    );
    let cgroup_path = source_cgroup.parent().unwrap_or(Path::new("/")).join(id);
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(cgroup_path.clone()));
    }
    spec.save(bundle.join("config.json"))
        .map_err(|e| format!("writing the instance's spec: {e}"))?;
    let req = CreateTaskRequest {
        id: id.to_string(),
        bundle: bundle.display().to_string(),
        rootfs: source
            .rootfs
            .iter()
            .map(|m| containerd_shim::protos::types::mount::Mount {
                type_: m.kind.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let c = Container::create_reserved(&req, &source.opts, &source.namespace)
        .map_err(|e| format!("restoring instance {id}: {e:?}"))?;
    let pid = c.init.pid();
    let Some(pipes) = c.take_reserved_io() else {
        let _ = c.destroy();
        return Err(format!(
            "instance {id} was not restored with reserved stdio"
        ));
    };
    // SAFETY: pidfd_open takes a pid and flags; the result is a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        let _ = c.destroy();
        return Err(format!("holding instance {id}'s init {pid}: {e}"));
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    // The template's pages mapped into the instance's processes now (a function of
    // several processes maps it in each), not at its first request.
    for p in trenv_runtime::sys::tree::process_tree(pid) {
        match prefault(p, &source.pool_file) {
            Ok(bytes) => log::debug!(
                "reserve: instance {id}, process {p}: {} MiB faulted in",
                bytes >> 20
            ),
            Err(e) => log::debug!("reserve: instance {id}, process {p}: nothing faulted in: {e}"),
        }
    }
    Ok(Instance {
        container: c,
        pipes,
        pidfd,
        made: Instant::now(),
        cgroup_path,
    })
}

/// Maps the pages of `pool_file` that process `pid` maps (stopped: a reserve's instance)
/// into its page tables: one byte of each page read with `process_vm_readv`, the kernel
/// faulting the page in the target's address space (read-only: a write still copies).
/// What the function reads of its template first then costs it no page fault; reading one
/// byte a page instead of the whole mapping (through `/proc/PID/mem`, as before) spares the
/// copy of every byte (a third of a shared shim's CPU time when it refilled its reserve
/// with a 64 MiB template). The bytes of the pages faulted in.
fn prefault(pid: i32, pool_file: &Path) -> std::io::Result<u64> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    };
    let mut sink = [0u8; PREFAULT_BATCH];
    let mut faulted = 0u64;
    for batch in page_batches(&mapped_ranges(&maps, pool_file), page, PREFAULT_BATCH) {
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|&a| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: 1,
            })
            .collect();
        let local = libc::iovec {
            iov_base: sink.as_mut_ptr().cast(),
            iov_len: remote.len(),
        };
        // SAFETY: `local` covers `sink` (at least `remote.len()` bytes, one per remote
        // byte); the remote addresses are the target's and only read by the kernel.
        let got = unsafe {
            libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
        };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A short read stops at a page that could not be read (the mapping changed):
        // the rest of the batch is left to the function's own faults.
        faulted += got as u64 * page;
    }
    Ok(faulted)
}

/// The most pages one `process_vm_readv` reads (the kernel's IOV_MAX).
const PREFAULT_BATCH: usize = 1024;

/// The first address of every page of `ranges`, in batches of at most `max`.
fn page_batches(ranges: &[(u64, u64)], page: u64, max: usize) -> Vec<Vec<u64>> {
    let mut batches: Vec<Vec<u64>> = Vec::new();
    for &(start, end) in ranges {
        let mut a = start - start % page;
        while a < end {
            match batches.last_mut() {
                Some(b) if b.len() < max => b.push(a),
                _ => batches.push(vec![a]),
            }
            a += page;
        }
    }
    batches
}

fn mapped_ranges(maps: &str, file: &Path) -> Vec<(u64, u64)> {
    let file = file.to_string_lossy();
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if path != file || !perms.starts_with('r') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// This shim's directory below [`DIR`]: named after its pid and start time, so that a
/// later shim tells a dead owner's directory from a live one's.
fn owner_dir() -> PathBuf {
    let me = std::process::id() as i32;
    Path::new(DIR).join(format!("{me}-{}", start_time(me).unwrap_or(0)))
}

/// A live process's start time (field 22 of its stat), in clock ticks since boot; `None`
/// for a process that is gone or a zombie (dead, not yet reaped).
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the owner of an owner directory named `name` (`<pid>-<start time>`) is alive.
fn owner_alive(name: &str) -> bool {
    let Some((pid, start)) = name.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

/// Whether `bundle` is an instance's directory (below [`DIR`]).
pub fn owns(bundle: &Path) -> bool {
    bundle.starts_with(DIR)
}

/// Removes an instance's directory once its container is deleted (nothing is mounted
/// below it then: Delete unmounted the rootfs and the scratch layer).
pub fn remove_bundle(bundle: &Path) {
    if !owns(bundle) {
        return;
    }
    let mounted = trenv_runtime::sys::mountinfo::read(None)
        .iter()
        .any(|m| m.mount_point.starts_with(bundle));
    if mounted {
        log::warn!(
            "reserve: {} still has mounts below it; left in place",
            bundle.display()
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(bundle)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("reserve: removing {}: {e}", bundle.display());
    }
    if let Some(owner) = bundle.parent() {
        let _ = fs::remove_dir(owner);
    }
}

/// Removes what shims that died left of their reserves: every instance's processes (by
/// its cgroup), mounts, state and directory. Instances of live shims are theirs.
pub fn sweep_dead() {
    let Ok(owners) = fs::read_dir(DIR) else {
        return;
    };
    for owner in owners.flatten() {
        let name = owner.file_name().to_string_lossy().into_owned();
        if owner_alive(&name) {
            continue;
        }
        for inst in fs::read_dir(owner.path()).into_iter().flatten().flatten() {
            let bundle = inst.path();
            let id = inst.file_name().to_string_lossy().into_owned();
            let at = Location::new(&id, &bundle);
            match crate::runtime().delete(&at, true) {
                Ok(()) => log::info!("reserve: removed instance {id} of a shim that died"),
                Err(e) => log::warn!("reserve: removing instance {id} of a shim that died: {e}"),
            }
            remove_bundle(&bundle);
        }
        let _ = fs::remove_dir(owner.path());
    }
}

/// What a container restored from a template must share with an instance to take it: its
/// tenant, the template's pool file (`template`, its path and stamp), the spec but for its
/// cgroup path and annotations other than trenv's, the rootfs but for its writable layer
/// (in memory in both), and the runtime options.
pub fn key(
    tenant: &str,
    template: &str,
    spec: &Spec,
    rootfs: &[Mount],
    opts: &RuntimeOptions,
) -> Option<String> {
    let mut v = serde_json::to_value(spec).ok()?;
    if let Some(linux) = v.get_mut("linux").and_then(|l| l.as_object_mut()) {
        linux.remove("cgroupsPath");
    }
    // Capability sets are hash sets: in order, as the objects' keys are ([`sorted`]).
    if let Some(caps) = v
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(a) = set.as_array_mut() {
                a.sort_by_key(|c| c.to_string());
            }
        }
    }
    if let Some(obj) = v.as_object_mut()
        && let Some(serde_json::Value::Object(a)) = obj.remove("annotations")
    {
        let trenv: serde_json::Map<_, _> = a
            .into_iter()
            .filter(|(k, _)| k.starts_with("io.trenv."))
            .collect();
        obj.insert("annotations".into(), trenv.into());
    }
    let layers: Vec<(String, String, Vec<String>)> = rootfs
        .iter()
        .map(|m| {
            let options = m
                .options
                .iter()
                .filter(|o| !o.starts_with("upperdir=") && !o.starts_with("workdir="))
                .cloned()
                .collect();
            (m.kind.clone(), m.source.clone(), options)
        })
        .collect();
    let all = serde_json::json!({
        "tenant": tenant,
        "template": template,
        "spec": v,
        "rootfs": layers,
        "options": format!("{:?}", (opts.systemd_cgroup, opts.io_owner, &opts.criu_path)),
    });
    Some(format!(
        "{:x}",
        Sha256::digest(sorted(all).to_string().as_bytes())
    ))
}

/// `v` with every object's keys in order, whatever the JSON library keeps them in.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &str, cgroup: &str, annotation: (&str, &str)) -> Spec {
        let mut s = Spec::default();
        if let Some(p) = s.process_mut() {
            p.set_env(Some(vec![format!("A={env}")]));
        }
        if let Some(l) = s.linux_mut() {
            l.set_cgroups_path(Some(PathBuf::from(cgroup)));
        }
        s.set_annotations(Some(
            [(annotation.0.to_string(), annotation.1.to_string())].into(),
        ));
        s
    }

    fn overlay(upper: &str) -> Vec<Mount> {
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir=/snap/{upper}/work"),
                format!("upperdir=/snap/{upper}/fs"),
                "lowerdir=/snap/1/fs:/snap/2/fs".into(),
            ],
        }]
    }

    #[test]
    fn containers_that_differ_only_in_cgroup_other_annotations_and_writable_layer_share_a_key() {
        let opts = RuntimeOptions::default();
        let a = key(
            "default",
            "t@1",
            &spec("1", "/default/a", ("nerdctl/name", "a")),
            &overlay("10"),
            &opts,
        );
        let b = key(
            "default",
            "t@1",
            &spec("1", "/default/b", ("nerdctl/name", "b")),
            &overlay("11"),
            &opts,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn the_order_of_the_spec_s_maps_makes_no_other_key() {
        let opts = RuntimeOptions::default();
        let with = |order: &[usize]| {
            let mut s = spec("1", "/default/a", ("x", "y"));
            let mut m = std::collections::HashMap::new();
            for i in order {
                m.insert(format!("io.trenv.k{i}"), i.to_string());
            }
            s.set_annotations(Some(m));
            key("default", "t@1", &s, &overlay("10"), &opts)
        };
        let forward: Vec<usize> = (0..32).collect();
        let backward: Vec<usize> = (0..32).rev().collect();
        assert_eq!(with(&forward), with(&backward));
    }

    #[test]
    fn anything_else_that_differs_makes_another_key() {
        let opts = RuntimeOptions::default();
        let s = spec("1", "/default/a", ("x", "y"));
        let base = key("default", "t@1", &s, &overlay("10"), &opts);
        let env = key(
            "default",
            "t@1",
            &spec("2", "/default/a", ("x", "y")),
            &overlay("10"),
            &opts,
        );
        let tenant = key("other", "t@1", &s, &overlay("10"), &opts);
        let template = key("default", "t@2", &s, &overlay("10"), &opts);
        let trenv_annotation = key(
            "default",
            "t@1",
            &spec("1", "/default/a", ("io.trenv.network", "trenv-fn")),
            &overlay("10"),
            &opts,
        );
        let mut layers = overlay("10");
        layers[0].options[3] = "lowerdir=/snap/1/fs:/snap/3/fs".into();
        let image = key("default", "t@1", &s, &layers, &opts);
        let owner = key(
            "default",
            "t@1",
            &s,
            &overlay("10"),
            &RuntimeOptions {
                io_owner: Some((1000, 1000)),
                ..Default::default()
            },
        );
        for other in [env, tenant, template, trenv_annotation, image, owner] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn every_page_of_the_ranges_is_read_once_in_batches_of_the_kernel_s_bound() {
        let b = page_batches(&[(0x1000, 0x3000), (0x10_0800, 0x10_2000)], 0x1000, 2);
        assert_eq!(
            b,
            vec![vec![0x1000, 0x2000], vec![0x10_0000, 0x10_1000]],
            "a range that starts inside a page reads that page"
        );
        let many = page_batches(&[(0, 0x1000 * 2500)], 0x1000, PREFAULT_BATCH);
        assert_eq!(
            many.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1024, 1024, 452]
        );
        assert!(page_batches(&[], 0x1000, 8).is_empty());
    }

    /// The Rss (KiB) of `pid`'s mappings of `file`, from /proc/PID/smaps.
    fn rss_of_mapping(pid: i32, file: &Path) -> u64 {
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut inside = false;
        let mut kib = 0;
        for l in smaps.lines() {
            if l.contains('-') && l.split_whitespace().count() >= 5 && !l.ends_with("kB") {
                inside = l.ends_with(&*file.to_string_lossy());
            } else if inside && let Some(v) = l.strip_prefix("Rss:") {
                kib += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        kib
    }

    #[test]
    fn prefault_maps_every_page_of_the_file_into_another_process() {
        let file = std::env::temp_dir().join(format!("trenv-prefault-{}", std::process::id()));
        fs::write(&file, vec![7u8; 1 << 20]).unwrap();
        let path = std::ffi::CString::new(file.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: the child only makes system calls (open, mmap, pause) before it is killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above; the child never returns into the test harness.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                let m = libc::mmap(
                    std::ptr::null_mut(),
                    1 << 20,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    fd,
                    0,
                );
                if m == libc::MAP_FAILED {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        assert!(child > 0);
        let mapped = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            fs::read_to_string(format!("/proc/{child}/maps"))
                .is_ok_and(|m| m.contains(&*file.to_string_lossy()))
        });
        let before = rss_of_mapping(child, &file);
        let faulted = prefault(child, &file);
        let after = rss_of_mapping(child, &file);
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        fs::remove_file(&file).unwrap();
        assert!(mapped, "the child never mapped the file");
        assert_eq!(before, 0, "nothing of the mapping was resident before");
        assert_eq!(faulted.unwrap(), 1 << 20);
        assert_eq!(after, 1024, "every page of the mapping is resident after");
    }

    #[test]
    fn a_fill_waits_for_a_quiet_moment_but_not_for_ever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Nothing asked yet: at once.
        assert_eq!(defer_for(t0, None, false, t0), None);
        // A start just now: the rest of the quiet time.
        assert_eq!(defer_for(t0 + ms(5), Some(t0), false, t0), Some(ms(15)));
        // Quiet long enough: at once.
        assert_eq!(defer_for(t0 + ms(20), Some(t0), false, t0), None);
        assert_eq!(defer_for(t0 + ms(50), Some(t0), false, t0), None);
        // A Create or Start in progress (a burst's restores): waits, however long ago the
        // last one began.
        assert_eq!(defer_for(t0 + ms(50), Some(t0), true, t0), Some(ms(20)));
        assert_eq!(defer_for(t0 + ms(50), None, true, t0), Some(ms(20)));
        // Steady demand: never past MAX_DEFER, and never longer than what is left of it.
        let waiting = t0;
        let end = MAX_DEFER;
        assert_eq!(
            defer_for(t0 + end - ms(10), Some(t0 + end - ms(11)), false, waiting),
            Some(ms(10))
        );
        assert_eq!(
            defer_for(t0 + end - ms(5), None, true, waiting),
            Some(ms(5))
        );
        assert_eq!(
            defer_for(t0 + end, Some(t0 + end - ms(1)), false, waiting),
            None
        );
        assert_eq!(defer_for(t0 + end, None, true, waiting), None);
        assert_eq!(
            defer_for(t0 + end + ms(300), Some(t0 + end + ms(299)), true, waiting),
            None
        );
    }

    #[test]
    fn instances_past_their_keep_alive_go_then_the_stalest_functions_beyond_the_bound() {
        let now = Instant::now();
        let at = |secs_ago: u64| now - Duration::from_secs(secs_ago);
        let mut ready: HashMap<String, Vec<Instant>> = HashMap::new();
        ready.insert("old".into(), vec![at(100), at(5)]);
        ready.insert("a".into(), vec![at(1)]);
        ready.insert("b".into(), vec![at(2)]);
        ready.insert("c".into(), vec![at(3)]);
        let gone = evict(&mut ready, |i| *i, Duration::from_secs(60), 3);
        // The expired one, then "old" (its newest is the oldest newest) for the bound.
        assert_eq!(gone, vec![at(100), at(5)]);
        let mut keys: Vec<&String> = ready.keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(evict(&mut ready, |i| *i, Duration::from_secs(60), 3).is_empty());
    }

    #[test]
    fn the_readable_mappings_of_the_pool_file_are_found() {
        let maps = "\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 1 /usr/bin/python3.11
7f0000000000-7f000c000000 rw-p 00000000 00:2a 77 /run/trenv/pool/@t/fn-1.tpl
7f000c000000-7f000c001000 ---p 0c000000 00:2a 77 /run/trenv/pool/@t/fn-1.tpl
7f000d000000-7f000d400000 rw-p 0d000000 00:2a 78 /run/trenv/pool/@t/other.tpl
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
";
        let ranges = mapped_ranges(maps, Path::new("/run/trenv/pool/@t/fn-1.tpl"));
        assert_eq!(ranges, vec![(0x7f0000000000, 0x7f000c000000)]);
    }

    #[test]
    fn an_owner_directory_names_a_live_shim_only_while_it_runs() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("our own start time");
        assert!(owner_alive(&format!("{me}-{start}")));
        assert!(!owner_alive(&format!("{me}-{}", start + 1)));
        assert!(!owner_alive("not-a-pid"));
        assert!(!owner_alive("2147483646-1"));
    }
}
