//! Live memory autotuning: a thread inside the shim that applies a memory [`Hull`] to a
//! container's cgroup while it runs, by rewriting the memory limit at every bin boundary.
//!
//! At each boundary (absolute deadlines `started + k·bin_ms`, so no drift) the limit is
//! what the upscaling hull asks for at that time ([`Hull::limit_at`]), but never below the
//! current usage plus [`SAFETY_MARGIN_BYTES`], rounded up to the page size
//! ([`target_limit`]). It is written only when it differs from the last written value:
//!
//! * cgroup v2: `memory.max`;
//! * cgroup v1: `memory.limit_in_bytes`. When `memory.memsw.limit_in_bytes` is finite, the
//!   kernel refuses a memory limit above it, so the swap allowance found at start
//!   (memsw − memory) is kept: memsw is raised before memory when raising, and lowered
//!   after memory when lowering. A refused write (`EBUSY`: usage could not be reclaimed
//!   below the new limit; `EINVAL`: memsw conflict) is counted and retried at the next bin.
//!
//! The first limit is written by [`Autotuner::start`] itself, so a process released after
//! it never runs without a limit. The thread ends on [`Autotuner::stop`] (or drop) or when
//! the cgroup directory disappears.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trenv_meter::hull::Hull;

use crate::container::cgroup::{Cgroup, Version};

/// Headroom above the current usage that every limit keeps: one bin's worth of growth.
pub const SAFETY_MARGIN_BYTES: u64 = 1 << 20;

/// cgroup v1 reports "no limit" as a value near `i64::MAX` (page-aligned); anything at
/// or above this is treated as unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum AutotuneError {
    #[error("the memory hull cannot be applied: {0}; rebuild it with `trenv meter hull`")]
    InvalidHull(String),
    #[error(
        "cgroup {cgroup} has no memory controller directory; autotuning needs the memory \
         controller: enable it for the container's cgroup, or remove the \
         io.trenv.meter.hull annotation"
    )]
    NoMemoryController { cgroup: PathBuf },
    #[error(
        "opening {path} to autotune the memory limit: {source}; the shim must run as root \
         and the container's memory cgroup must exist"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "reading the memory usage from {path}: {source}; the container's memory cgroup may \
         have been removed"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "writing the initial memory limit of {bytes} bytes to {path}: {source}; the process \
         must not be released without it: check the container's memory limits (on cgroup \
         v1, memory.memsw.limit_in_bytes must allow the limit) or remove the \
         io.trenv.meter.hull annotation"
    )]
    FirstLimit {
        path: PathBuf,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error("starting the autotuning thread: {0}; the host is short of threads or memory")]
    Spawn(#[source] io::Error),
}

/// What an autotuner did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutotuneReport {
    /// Every change of the memory limit: (milliseconds since `started`, limit in bytes),
    /// the first one written by [`Autotuner::start`].
    pub changes: Vec<(u64, u64)>,
    /// How many writes the kernel refused (each retried at the next bin).
    pub refused: usize,
}

/// The limit to write at `elapsed_ms`: what the upscaling hull asks for, never below
/// `usage` plus [`SAFETY_MARGIN_BYTES`], rounded up to a multiple of `page` bytes.
pub fn target_limit(hull: &Hull, elapsed_ms: u64, usage: u64, page: u64) -> u64 {
    let page = page.max(1);
    let want = hull
        .limit_at(elapsed_ms)
        .max(usage.saturating_add(SAFETY_MARGIN_BYTES));
    want.div_ceil(page)
        .checked_mul(page)
        .unwrap_or(u64::MAX / page * page)
}

/// `limit`, but never above `ceiling`.
pub fn capped(limit: u64, ceiling: Option<u64>) -> u64 {
    ceiling.map_or(limit, |c| limit.min(c))
}

/// Index of the next bin boundary to wake at after bin boundary `k`, having woken at
/// `elapsed_ms`: the following one, or when the thread fell behind, the first one still
/// in the future (skipped boundaries are not caught up in a burst).
fn next_boundary(k: u64, elapsed_ms: u64, bin_ms: u64) -> u64 {
    (k + 1).max(elapsed_ms / bin_ms + 1)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// The cgroup is gone: its files answer ENOENT (by path) or ENODEV (open descriptors).
fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV))
}

fn read_u64(f: &File) -> io::Result<u64> {
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0)?;
    let s = std::str::from_utf8(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .trim();
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn write_u64(f: &File, v: u64) -> io::Result<()> {
    f.write_all_at(v.to_string().as_bytes(), 0)
}

/// Result of one attempt to set the limit.
enum Outcome {
    Written,
    /// The kernel refused; `memory_changed` if the memory limit itself was written (only
    /// the memsw write after it failed).
    Refused {
        memory_changed: bool,
        error: io::Error,
    },
    /// The cgroup disappeared.
    Gone(io::Error),
}

/// v1 `memory.memsw.limit_in_bytes`, when it is finite.
struct Memsw {
    file: File,
    /// memsw − memory at start, kept as limits change.
    allowance: u64,
}

/// Open descriptors of the cgroup files the autotuner reads and writes.
struct Files {
    dir: PathBuf,
    usage_path: PathBuf,
    usage: File,
    limit_path: PathBuf,
    limit: File,
    memsw: Option<Memsw>,
}

impl Files {
    fn open(version: Version, dir: &Path) -> Result<Files, AutotuneError> {
        let (usage_name, limit_name) = match version {
            Version::V1 => ("memory.usage_in_bytes", "memory.limit_in_bytes"),
            Version::V2 => ("memory.current", "memory.max"),
        };
        let open = |name: &str, write: bool| {
            let path = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(write)
                .open(&path)
                .map(|f| (path.clone(), f))
                .map_err(|source| AutotuneError::Open { path, source })
        };
        let (usage_path, usage) = open(usage_name, false)?;
        let (limit_path, limit) = open(limit_name, true)?;
        let memsw = match version {
            Version::V2 => None,
            Version::V1 if !dir.join("memory.memsw.limit_in_bytes").exists() => None,
            Version::V1 => {
                let (path, file) = open("memory.memsw.limit_in_bytes", true)?;
                let read = |f: &File, path: &Path| {
                    read_u64(f).map_err(|source| AutotuneError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                };
                let memsw = read(&file, &path)?;
                let memory = read(&limit, &limit_path)?;
                (memsw < V1_UNLIMITED).then(|| Memsw {
                    file,
                    allowance: memsw.saturating_sub(memory),
                })
            }
        };
        Ok(Files {
            dir: dir.to_path_buf(),
            usage_path,
            usage,
            limit_path,
            limit,
            memsw,
        })
    }

    fn usage(&self) -> io::Result<u64> {
        read_u64(&self.usage)
    }

    /// Sets the memory limit (and on v1 with a finite memsw limit, memsw in the order the
    /// kernel accepts: memory ≤ memsw must hold after every write).
    fn set(&self, bytes: u64) -> Outcome {
        let classify = |error: io::Error, memory_changed| {
            if is_gone(&error) {
                Outcome::Gone(error)
            } else {
                Outcome::Refused {
                    memory_changed,
                    error,
                }
            }
        };
        let Some(memsw) = &self.memsw else {
            return match write_u64(&self.limit, bytes) {
                Ok(()) => Outcome::Written,
                Err(e) => classify(e, false),
            };
        };
        let new_memsw = bytes.saturating_add(memsw.allowance);
        let current = match read_u64(&memsw.file) {
            Ok(v) => v,
            Err(e) => return classify(e, false),
        };
        if new_memsw > current {
            // Raising: memsw first, so the old memory limit stays below it, then memory.
            if let Err(e) = write_u64(&memsw.file, new_memsw) {
                return classify(e, false);
            }
            match write_u64(&self.limit, bytes) {
                Ok(()) => Outcome::Written,
                Err(e) => classify(e, false),
            }
        } else {
            // Lowering (or equal): memory first, then memsw down to it.
            if let Err(e) = write_u64(&self.limit, bytes) {
                return classify(e, false);
            }
            if new_memsw == current {
                return Outcome::Written;
            }
            match write_u64(&memsw.file, new_memsw) {
                Ok(()) => Outcome::Written,
                Err(e) => classify(e, true),
            }
        }
    }
}

/// Applies a memory hull to a running container's cgroup from a thread of its own.
pub struct Autotuner {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<AutotuneReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Autotuner {
    /// Writes the first limit (for the time elapsed since `started`, normally ~0) and
    /// starts the thread that follows the hull. Call before the process is released.
    ///
    /// If starting the thread fails, the first limit stays in force.
    /// Starts following `hull` from `started`; never above `ceiling` (the spec's memory
    /// limit: a hull file must not give a container more memory than its spec allows).
    pub fn start(
        cg: &Cgroup,
        hull: Hull,
        started: Instant,
        ceiling: Option<u64>,
    ) -> Result<Autotuner, AutotuneError> {
        if hull.bin_ms == 0 {
            return Err(AutotuneError::InvalidHull("its bin_ms is 0".into()));
        }
        if hull.upscaling_hull_bytes.is_empty() {
            return Err(AutotuneError::InvalidHull(
                "its upscaling_hull_bytes is empty".into(),
            ));
        }
        let dir = cg.memory_dir().filter(|d| d.is_dir()).ok_or_else(|| {
            AutotuneError::NoMemoryController {
                cgroup: cg.path().to_path_buf(),
            }
        })?;
        let files = Files::open(cg.version(), &dir)?;
        let page = page_size();

        let usage = files.usage().map_err(|source| AutotuneError::Read {
            path: files.usage_path.clone(),
            source,
        })?;
        let at = elapsed_ms(started);
        let first = capped(target_limit(&hull, at, usage, page), ceiling);
        match files.set(first) {
            Outcome::Written => {}
            Outcome::Refused { error, .. } | Outcome::Gone(error) => {
                return Err(AutotuneError::FirstLimit {
                    path: files.limit_path.clone(),
                    bytes: first,
                    source: error,
                });
            }
        }
        log::debug!(
            "autotune {}: initial memory limit {first} bytes at {at} ms",
            dir.display()
        );

        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(AutotuneReport {
            changes: vec![(at, first)],
            refused: 0,
        }));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            let tuner = Tuner {
                files,
                hull,
                ceiling,
                started,
                page,
                last: first,
                retry: false,
            };
            std::thread::Builder::new()
                .name("autotune".into())
                .spawn(move || tuner.run(&stop, &report))
                .map_err(AutotuneError::Spawn)?
        };
        Ok(Autotuner {
            stop,
            report,
            thread: Some(thread),
        })
    }

    /// Whether the thread still runs (it ends by itself when the cgroup disappears).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread, waits for it, and returns what it did. The limit last written
    /// stays in force.
    pub fn stop(mut self) -> AutotuneReport {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.report.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Autotuner {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The thread's state.
struct Tuner {
    files: Files,
    hull: Hull,
    /// The spec's limit, never exceeded.
    ceiling: Option<u64>,
    started: Instant,
    page: u64,
    /// The limit last written.
    last: u64,
    /// The last write was refused (or half done): write again even if unchanged.
    retry: bool,
}

impl Tuner {
    fn run(mut self, stop: &AtomicBool, report: &Mutex<AutotuneReport>) {
        let bin_ms = self.hull.bin_ms;
        let mut k = elapsed_ms(self.started) / bin_ms + 1;
        loop {
            let deadline = self.started + Duration::from_millis(k.saturating_mul(bin_ms));
            // Sleep until the boundary; stop() unparks the thread to end it at once.
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::park_timeout(deadline - now);
            }
            if !self.files.dir.is_dir() {
                log::debug!("autotune {}: cgroup removed", self.files.dir.display());
                return;
            }
            let usage = match self.files.usage() {
                Ok(u) => u,
                Err(e) if is_gone(&e) => return,
                Err(e) => {
                    log::debug!(
                        "autotune: reading {}: {e}; following the hull alone",
                        self.files.usage_path.display()
                    );
                    0
                }
            };
            let at = elapsed_ms(self.started);
            let want = capped(target_limit(&self.hull, at, usage, self.page), self.ceiling);
            if want != self.last || self.retry {
                match self.files.set(want) {
                    Outcome::Written => {
                        self.record(report, at, want);
                        self.retry = false;
                    }
                    Outcome::Refused {
                        memory_changed,
                        error,
                    } => {
                        let refused = {
                            let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                            r.refused += 1;
                            r.refused
                        };
                        log::debug!(
                            "autotune {}: limit {want} bytes at {at} ms refused ({error}); \
                             {refused} refusal(s) so far, retrying at the next bin",
                            self.files.dir.display()
                        );
                        if memory_changed {
                            self.record(report, at, want);
                        }
                        self.retry = true;
                    }
                    Outcome::Gone(_) => return,
                }
            }
            k = next_boundary(k, at, bin_ms);
        }
    }

    fn record(&mut self, report: &Mutex<AutotuneReport>, at: u64, bytes: u64) {
        if bytes != self.last {
            report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .changes
                .push((at, bytes));
            self.last = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 4096;

    /// A hull given bin by bin (max and upscaling hulls equal, no look-ahead).
    fn hull(bin_ms: u64, bins: &[u64], peak: u64) -> Hull {
        Hull {
            format: trenv_meter::hull::FORMAT,
            bin_ms,
            lookahead_bins: 0,
            runs: 1,
            max_hull_bytes: bins.to_vec(),
            upscaling_hull_bytes: bins.to_vec(),
            peak_bytes: peak,
        }
    }

    #[test]
    fn the_limit_rises_before_the_memory_is_needed() {
        // One run that jumps to 50 MiB in bin 3; look-ahead of 2 bins.
        let s = vec![
            (0, 4 * MIB),
            (100_000, 4 * MIB),
            (200_000, 4 * MIB),
            (300_000, 50 * MIB),
            (400_000, 4 * MIB),
        ];
        let h = Hull::build(&[s], &[50 * MIB], 100, 2).unwrap();
        let at = |ms| target_limit(&h, ms, 0, PAGE);
        assert_eq!(at(0), 4 * MIB);
        assert_eq!(at(99), 4 * MIB);
        // Two bins before the jump, the limit is already up.
        assert_eq!(at(100), 50 * MIB);
        assert_eq!(at(250), 50 * MIB);
        assert_eq!(at(399), 50 * MIB);
        // And comes down once it has passed.
        assert_eq!(at(400), 4 * MIB);
    }

    #[test]
    fn the_limit_is_never_below_usage_plus_the_margin() {
        let h = hull(100, &[8 * MIB, 8 * MIB], 8 * MIB);
        assert_eq!(target_limit(&h, 0, 0, PAGE), 8 * MIB);
        assert_eq!(capped(target_limit(&h, 0, 0, PAGE), Some(4 * MIB)), 4 * MIB);
        assert_eq!(capped(target_limit(&h, 0, 0, PAGE), None), 8 * MIB);
        assert_eq!(target_limit(&h, 0, 7 * MIB, PAGE), 8 * MIB);
        assert_eq!(target_limit(&h, 0, 7 * MIB + 1, PAGE), 8 * MIB + PAGE);
        assert_eq!(target_limit(&h, 50, 100 * MIB, PAGE), 101 * MIB);
        // An empty bin still leaves the margin.
        let empty = hull(100, &[0], 0);
        assert_eq!(target_limit(&empty, 0, 0, PAGE), SAFETY_MARGIN_BYTES);
        // Absurd usage saturates instead of overflowing, and stays page-aligned.
        let top = target_limit(&h, 0, u64::MAX, PAGE);
        assert_eq!(top % PAGE, 0);
        assert!(top > u64::MAX - PAGE);
    }

    #[test]
    fn the_limit_is_rounded_up_to_the_page_size() {
        let h = hull(100, &[10_000_001], 0);
        assert_eq!(target_limit(&h, 0, 0, PAGE), 10_002_432);
        assert_eq!(target_limit(&h, 0, 0, 65536), 10_027_008);
        let exact = hull(100, &[2443 * PAGE], 0);
        assert_eq!(target_limit(&exact, 0, 0, PAGE), 2443 * PAGE);
        // A bogus page size of 0 does not divide by zero.
        assert_eq!(target_limit(&h, 0, 0, 0), 10_000_001);
        assert_eq!(page_size() % 4096, 0);
    }

    #[test]
    fn after_the_hull_the_limit_is_its_maximum_or_the_peak() {
        let h = hull(100, &[8 * MIB, 64 * MIB, 16 * MIB], 0);
        assert_eq!(target_limit(&h, 250, 0, PAGE), 16 * MIB);
        assert_eq!(target_limit(&h, 300, 0, PAGE), 64 * MIB);
        assert_eq!(target_limit(&h, 3_600_000, 0, PAGE), 64 * MIB);
        // The exact peak covers what sampling missed.
        let p = hull(100, &[8 * MIB, 64 * MIB, 16 * MIB], 70 * MIB);
        assert_eq!(target_limit(&p, 300, 0, PAGE), 70 * MIB);
        // Usage above everything still wins.
        assert_eq!(target_limit(&p, 300, 90 * MIB, PAGE), 91 * MIB);
    }

    #[test]
    fn boundaries_are_not_caught_up_in_a_burst() {
        assert_eq!(next_boundary(1, 50, 50), 2);
        assert_eq!(next_boundary(1, 99, 50), 2);
        // Woke three bins late: go to the first boundary still ahead.
        assert_eq!(next_boundary(1, 210, 50), 5);
    }

    #[test]
    fn an_unusable_hull_is_refused_before_touching_the_cgroup() {
        let Ok(cg) = Cgroup::open(Some(Path::new("/trenv-autotune-nonexistent")), "x", false)
        else {
            return; // no cgroup manager on this host: nothing to check
        };
        let bad = hull(0, &[MIB], 0);
        let err = Autotuner::start(&cg, bad, Instant::now(), None)
            .err()
            .unwrap();
        assert!(matches!(err, AutotuneError::InvalidHull(_)), "{err}");
        assert!(err.to_string().contains("trenv meter hull"));
        // A valid hull on a cgroup that does not exist.
        let err = Autotuner::start(&cg, hull(50, &[MIB], 0), Instant::now(), None)
            .err()
            .unwrap();
        assert!(
            matches!(err, AutotuneError::NoMemoryController { .. }),
            "{err}"
        );
    }

    /// A memory cgroup made for a test, removed on drop.
    struct TestCgroup {
        dir: PathBuf,
        cg: Cgroup,
        version: Version,
    }

    impl TestCgroup {
        /// None (with a note) when the test cannot run here.
        fn create(tag: &str) -> Option<TestCgroup> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipping: the autotune kernel test needs root");
                return None;
            }
            let Ok(version) = Version::detect() else {
                eprintln!("skipping: no cgroups on this host");
                return None;
            };
            let root = match version {
                Version::V1 => crate::container::cgroup::controller_mount("memory"),
                Version::V2 => Some(PathBuf::from(libcgroups::common::DEFAULT_CGROUP_ROOT)),
            };
            let Some(root) = root else {
                eprintln!("skipping: no memory controller mounted");
                return None;
            };
            let name = format!("trenv-autotune-test-{}-{tag}", std::process::id());
            let dir = root.join(&name);
            if let Err(e) = std::fs::create_dir(&dir) {
                eprintln!("skipping: cannot create {}: {e}", dir.display());
                return None;
            }
            let limit = match version {
                Version::V1 => "memory.limit_in_bytes",
                Version::V2 => "memory.max",
            };
            if !dir.join(limit).exists() {
                let _ = std::fs::remove_dir(&dir);
                eprintln!(
                    "skipping: the memory controller is not enabled below {}",
                    root.display()
                );
                return None;
            }
            // Cgroup::open takes the path relative to the hierarchy's root.
            let cgroups_path = PathBuf::from("/").join(&name);
            let cg = Cgroup::open(Some(&cgroups_path), &name, false).unwrap();
            assert_eq!(cg.memory_dir().unwrap(), dir);
            Some(TestCgroup { dir, cg, version })
        }

        fn read(&self, file: &str) -> u64 {
            let s = std::fs::read_to_string(self.dir.join(file)).unwrap();
            let s = s.trim();
            if s == "max" {
                u64::MAX
            } else {
                s.parse().unwrap()
            }
        }

        fn limit_file(&self) -> &'static str {
            match self.version {
                Version::V1 => "memory.limit_in_bytes",
                Version::V2 => "memory.max",
            }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if self.dir.exists()
                && let Err(e) = std::fs::remove_dir(&self.dir)
            {
                eprintln!("could not remove {}: {e}", self.dir.display());
            }
        }
    }

    #[test]
    fn kernel_autotuner_writes_the_hull_in_order() {
        let Some(t) = TestCgroup::create("order") else {
            return;
        };
        let memsw = t.dir.join("memory.memsw.limit_in_bytes");
        let with_memsw = t.version == Version::V1 && memsw.exists();
        if with_memsw {
            // A finite memsw limit (no swap allowance): raising memory above it is
            // refused unless memsw is raised first.
            std::fs::write(t.dir.join("memory.limit_in_bytes"), (32 * MIB).to_string()).unwrap();
            std::fs::write(&memsw, (32 * MIB).to_string()).unwrap();
        }
        let h = hull(50, &[8 * MIB, 8 * MIB, 64 * MIB, 16 * MIB], 0);
        let started = Instant::now();
        let tuner = Autotuner::start(&t.cg, h, started, None).unwrap();
        // Limited from the start, before any process could have been released.
        assert_eq!(t.read(t.limit_file()), 8 * MIB);
        std::thread::sleep(Duration::from_millis(330));
        assert!(tuner.is_running());
        let report = tuner.stop();
        eprintln!("autotune report: {report:?}");

        let values: Vec<u64> = report.changes.iter().map(|c| c.1).collect();
        // Bin 0: 8 MiB, bin 2: 64 MiB, bin 3: 16 MiB, after the hull: its maximum.
        assert_eq!(values, vec![8 * MIB, 64 * MIB, 16 * MIB, 64 * MIB]);
        let bins: Vec<u64> = report.changes.iter().map(|c| c.0 / 50).collect();
        assert_eq!(bins, vec![0, 2, 3, 4]);
        assert_eq!(report.refused, 0);
        assert_eq!(t.read(t.limit_file()), 64 * MIB);
        if with_memsw {
            assert_eq!(t.read("memory.memsw.limit_in_bytes"), 64 * MIB);
        }
    }

    #[test]
    fn kernel_autotuner_ends_when_the_cgroup_is_removed() {
        let Some(t) = TestCgroup::create("gone") else {
            return;
        };
        let tuner = Autotuner::start(&t.cg, hull(20, &[8 * MIB], 0), Instant::now(), None).unwrap();
        assert!(tuner.is_running());
        std::fs::remove_dir(&t.dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while tuner.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!tuner.is_running(), "the thread outlived its cgroup");
        let values: Vec<u64> = tuner.stop().changes.iter().map(|c| c.1).collect();
        assert_eq!(values, vec![8 * MIB]);
    }
}
