//! Live metering: while an invocation (a container's init process, or an exec) runs, reads
//! the exact memory peak from its cgroup, its CPU time, wall and monotonic times, OOM
//! kills and the exit status, and samples a memory time series from an open cgroup file.
//!
//! [`Meter::start`] begins just before the process is released; [`Meter::finish`] reads the
//! counters when its exit is seen (before the cgroup goes away) and gives a [`Measured`],
//! whose [`Measured::write`] stores the record. The record format and its files are
//! `trenv_meter::record` (kernel-free, shared with the CLI); this module is the part that
//! needs a cgroup.
//!
//! What a pod author's annotation can make the sampler cost is bounded: the interval is 0
//! (the exact peak only) or [`MIN_INTERVAL`]..=[`MAX_INTERVAL`] (a shorter one burns a core
//! for nothing the exact peak does not give; a longer one is no series), the sampler is
//! woken at the exit instead of finishing its sleep (the exit is reported only after the
//! meter stops), and a series holds at most [`MAX_SERIES_POINTS`] points: a long-running
//! invocation's series is downsampled (each pair of points merged into its larger value,
//! the interval doubled) rather than growing the shim without end.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use trenv_meter::record::{self, FORMAT, Identity, Invocation, RecordError, Written};

use crate::container::cgroup::{Cgroup, Version};

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the container has no memory cgroup to meter")]
    NoCgroup,
}

/// The shortest sampling interval (other than 0, no sampling): 1 ms. At 1 µs a sampler
/// took ~40 % of a core and grew the shim by 1.6 MB/s.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest sampling interval: 10 s.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// The most points a series holds in memory (256 KiB): 164 s at the default 10 ms, after
/// which it is downsampled ([`Series`]).
pub const MAX_SERIES_POINTS: usize = 1 << 14;

/// Whether `interval` may be used: 0 (the exact peak only, no series) or
/// [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
pub fn interval_allowed(interval: Duration) -> bool {
    interval.is_zero() || (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval)
}

/// The allowed interval nearest to `interval`.
pub fn clamp_interval(interval: Duration) -> Duration {
    if interval.is_zero() {
        interval
    } else {
        interval.clamp(MIN_INTERVAL, MAX_INTERVAL)
    }
}

/// Where records go and how often memory is sampled.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    pub dir: PathBuf,
    /// Sampling interval of the memory series; zero disables sampling (the exact peak is
    /// still recorded). Allowed: [`interval_allowed`].
    pub interval: Duration,
}

impl MeterConfig {
    /// From trenv's configuration (file and environment); `None` when metering is off.
    ///
    /// An interval outside the allowed range is clamped to it, with a warning: the setting
    /// is the node operator's and applies to every container on the node, so refusing it
    /// would fail Creates (or drop the whole file) over a tuning value whose nearest safe
    /// setting is plain; an annotation outside the range is refused at Create instead.
    pub fn from_config(c: &crate::config::Config) -> Option<MeterConfig> {
        let asked = Duration::from_micros(c.meter.interval_us);
        let interval = clamp_interval(asked);
        if interval != asked {
            log::warn!(
                "metering interval {} µs ([meter] interval_us or TRENV_METER_INTERVAL_US) is \
                 outside 0 or {}..={} µs: sampling every {} µs",
                c.meter.interval_us,
                MIN_INTERVAL.as_micros(),
                MAX_INTERVAL.as_micros(),
                interval.as_micros()
            );
        }
        c.meter.enabled.then(|| MeterConfig {
            dir: c.meter.dir.clone(),
            interval,
        })
    }
}

/// Files of the cgroup that metering reads.
struct Files {
    version: Version,
    dir: PathBuf,
}

impl Files {
    fn of(cg: &Cgroup) -> Result<Files, MeterError> {
        Ok(Files {
            version: cg.version(),
            dir: cg.memory_dir().ok_or(MeterError::NoCgroup)?,
        })
    }

    fn usage_file(&self) -> PathBuf {
        match self.version {
            Version::V1 => self.dir.join("memory.usage_in_bytes"),
            Version::V2 => self.dir.join("memory.current"),
        }
    }

    /// CPU time (user, system) in microseconds.
    fn cpu(&self) -> (u64, u64) {
        match self.version {
            Version::V1 => {
                let Some(cpuacct) = crate::container::cgroup::controller_mount("cpuacct") else {
                    return (0, 0);
                };
                let rel = self
                    .dir
                    .strip_prefix(
                        crate::container::cgroup::controller_mount("memory").unwrap_or_default(),
                    )
                    .unwrap_or(Path::new(""));
                let d = cpuacct.join(rel);
                let ns = |f: &str| read_u64(&d.join(f)).unwrap_or(0) / 1000;
                (ns("cpuacct.usage_user"), ns("cpuacct.usage_sys"))
            }
            Version::V2 => {
                let text = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
                let get = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                        .unwrap_or(0)
                };
                (get("user_usec "), get("system_usec "))
            }
        }
    }

    fn limit(&self) -> u64 {
        match self.version {
            Version::V1 => read_u64(&self.dir.join("memory.limit_in_bytes"))
                .filter(|&l| l < (1 << 62))
                .unwrap_or(0),
            Version::V2 => read_u64(&self.dir.join("memory.max")).unwrap_or(0),
        }
    }

    fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => self.dir.join("memory.oom_control"),
            Version::V2 => self.dir.join("memory.events"),
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The peak counter, reset at the start of an invocation so that a reused cgroup does
/// not report an earlier invocation's peak.
///
/// Several invocations can run in one cgroup (the init and its execs), and a reset for a
/// new one must not erase the others' peaks: v1 has one counter per cgroup, and on v2 a
/// reset through one descriptor of `memory.peak` sets the other descriptors' peaks to the
/// usage *at that moment*, losing a higher peak they saw before. So every reset first hands
/// each invocation still running in the cgroup its peak so far ([`Watchers`]), and an
/// invocation's peak is the larger of what it was handed and its counter at the end.
struct Peak {
    version: Version,
    /// v1: `memory.max_usage_in_bytes`; v2: `memory.peak`.
    path: PathBuf,
    watcher: Arc<Watcher>,
}

/// One running invocation's view of its cgroup's peak.
#[derive(Default)]
struct Watcher {
    /// The largest peak handed over by other invocations' resets.
    carried: AtomicU64,
    /// v2: the invocation's own descriptor of `memory.peak` (reset through it at start;
    /// Linux ≥ 6.12). `None` while the cgroup does not exist yet (a restore creates it
    /// during Start): it is opened, without a reset, when first read — a cgroup that
    /// appeared after the invocation started holds only it.
    file: Mutex<Option<File>>,
}

impl Watcher {
    /// The peak seen through this watcher's own counter (v2) or the shared one (v1).
    fn counter(&self, version: Version, path: &Path) -> u64 {
        match version {
            Version::V1 => read_u64(path).unwrap_or(0),
            Version::V2 => {
                let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
                if file.is_none() {
                    *file = File::open(path).ok();
                }
                let Some(f) = file.as_mut() else { return 0 };
                let mut s = String::new();
                let _ = f.seek(SeekFrom::Start(0));
                let _ = f.read_to_string(&mut s);
                s.trim().parse().unwrap_or(0)
            }
        }
    }
}

/// The running invocations of each cgroup, by its peak file.
struct Watchers;

type PeakWatchers = HashMap<PathBuf, Vec<Weak<Watcher>>>;

impl Watchers {
    fn registry() -> &'static Mutex<PeakWatchers> {
        static R: OnceLock<Mutex<PeakWatchers>> = OnceLock::new();
        R.get_or_init(Default::default)
    }

    /// Registers a new invocation and resets its counter, after handing the peak so far to
    /// the invocations running in the same cgroup.
    fn reset(version: Version, path: &Path) -> Arc<Watcher> {
        let mut r = Watchers::registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let watchers = r.entry(path.to_path_buf()).or_default();
        watchers.retain(|w| w.strong_count() > 0);
        for w in watchers.iter().filter_map(Weak::upgrade) {
            let so_far = w.counter(version, path);
            w.carried.fetch_max(so_far, Ordering::Relaxed);
        }
        let mine = Arc::new(Watcher::default());
        match version {
            Version::V1 => {
                let _ = fs::write(path, "0");
            }
            Version::V2 => {
                let file = match OpenOptions::new().read(true).write(true).open(path) {
                    Ok(mut f) => {
                        let _ = f.write_all(b"reset\n");
                        Some(f)
                    }
                    // Older kernels: memory.peak is read-only (the cgroup's lifetime peak).
                    Err(_) => File::open(path).ok(),
                };
                *mine.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
            }
        }
        watchers.push(Arc::downgrade(&mine));
        r.retain(|_, w| w.iter().any(|w| w.strong_count() > 0));
        mine
    }
}

impl Peak {
    fn start(files: &Files) -> Option<Peak> {
        let path = match files.version {
            Version::V1 => files.dir.join("memory.max_usage_in_bytes"),
            Version::V2 => files.dir.join("memory.peak"),
        };
        let watcher = Watchers::reset(files.version, &path);
        Some(Peak {
            version: files.version,
            path,
            watcher,
        })
    }

    fn read(&mut self) -> u64 {
        self.watcher
            .counter(self.version, &self.path)
            .max(self.watcher.carried.load(Ordering::Relaxed))
    }
}

/// An invocation's memory series in bounded memory: at most `cap` points. When it fills,
/// each pair of points becomes one (the first's time, the larger value: a peak is never
/// lost, only placed up to one point early, which keeps an upscaling hull safe) and each
/// point from then on stands for twice as many samples, so the effective interval doubles.
#[derive(Debug)]
struct Series {
    points: Vec<(u64, u64)>,
    cap: usize,
    /// Samples per point: 2^(halvings so far).
    per_point: u64,
    /// The point being filled: the time of its first sample, the largest value, samples.
    pending: Option<(u64, u64, u64)>,
}

impl Series {
    /// `cap` is rounded up to an even number of at least 2.
    fn new(cap: usize) -> Series {
        Series {
            points: Vec::new(),
            cap: cap.max(2).next_multiple_of(2),
            per_point: 1,
            pending: None,
        }
    }

    fn push(&mut self, t: u64, v: u64) {
        let (t0, max, n) = match self.pending.take() {
            Some((t0, max, n)) => (t0, max.max(v), n + 1),
            None => (t, v, 1),
        };
        if n < self.per_point {
            self.pending = Some((t0, max, n));
            return;
        }
        self.points.push((t0, max));
        if self.points.len() >= self.cap {
            self.halve();
        }
    }

    fn halve(&mut self) {
        let half = self.points.len() / 2;
        for i in 0..half {
            let (a, b) = (self.points[2 * i], self.points[2 * i + 1]);
            self.points[i] = (a.0, a.1.max(b.1));
        }
        self.points.truncate(half);
        self.per_point *= 2;
    }

    /// The points (a last, partly filled one included) and the samples each stands for.
    fn finish(mut self) -> (Vec<(u64, u64)>, u64) {
        if let Some((t0, max, _)) = self.pending.take() {
            self.points.push((t0, max));
        }
        (self.points, self.per_point)
    }
}

type SharedSeries = Arc<Mutex<Series>>;

/// The thread that samples memory usage into a series; [`Sampler::stop`] wakes it (it may
/// be sleeping out a 10 s interval) and waits for it.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Samples `path` every `interval` (not zero), times relative to `t0`.
    fn spawn(path: PathBuf, interval: Duration, t0: Instant, series: SharedSeries) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("meter".into())
            .spawn(move || {
                // A container restored from a checkpoint or template gets its cgroup
                // only while Start runs: wait for it.
                let file = loop {
                    match File::open(&path) {
                        Ok(f) => break f,
                        Err(_) if sleep_until(Instant::now() + interval, &flag) => return,
                        Err(_) => {}
                    }
                };
                sample(&file, interval, t0, &flag, &series)
            })
            .ok();
        Sampler { stop, thread }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps until `deadline` unless `stop` is set (then, or when set meanwhile and the
/// thread unparked, returns true at once).
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// A running invocation's meter.
pub struct Meter {
    identity: Identity,
    files: Files,
    config: MeterConfig,
    started_wall: SystemTime,
    started: Instant,
    cpu_at_start: (u64, u64),
    peak: Option<Peak>,
    series: SharedSeries,
    sampler: Option<Sampler>,
}

impl Meter {
    /// Starts metering an invocation in `cg`. Call just before the process is released.
    pub fn start(
        identity: Identity,
        cg: &Cgroup,
        config: &MeterConfig,
    ) -> Result<Meter, MeterError> {
        let files = Files::of(cg)?;
        let peak = Peak::start(&files);
        let cpu_at_start = files.cpu();
        let series: SharedSeries = Arc::new(Mutex::new(Series::new(MAX_SERIES_POINTS)));
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let sampler = (!config.interval.is_zero())
            .then(|| Sampler::spawn(files.usage_file(), config.interval, started, series.clone()));
        Ok(Meter {
            identity,
            files,
            config: config.clone(),
            started_wall,
            started,
            cpu_at_start,
            peak,
            series,
            sampler,
        })
    }

    /// Ends the invocation (`ended` is when its exit was seen): reads the counters, which
    /// must happen before the cgroup goes away. [`Measured::write`] then stores the record.
    /// `execed` is when the process exec'ed its program, if known: the record starts there
    /// rather than when the meter started (before the runtime's own work to start it).
    pub fn finish(
        mut self,
        pid: i32,
        exit_status: u32,
        execed: Option<Instant>,
        ended: Instant,
        ended_wall: SystemTime,
    ) -> Measured {
        if let Some(mut s) = self.sampler.take() {
            s.stop();
        }
        let (user, system) = self.files.cpu();
        let peak = self.peak.as_mut().map_or(0, Peak::read);
        let (mut series, per_point) = std::mem::replace(
            &mut *self.series.lock().unwrap_or_else(|e| e.into_inner()),
            Series::new(2),
        )
        .finish();
        // Start at the exec when it is known: series times are shifted to it (samples
        // taken before it, of the runtime's own set-up, are dropped).
        let mut started_wall = self.started_wall;
        if let Some(at) = execed.filter(|at| *at > self.started && *at <= ended) {
            let shift = at.duration_since(self.started);
            started_wall += shift;
            self.started = at;
            let us = shift.as_micros() as u64;
            series.retain(|s| s.0 >= us);
            for s in &mut series {
                s.0 -= us;
            }
        }
        let record = Invocation {
            format: FORMAT,
            identity: self.identity.clone(),
            pid,
            started_at_us: micros(started_wall),
            ended_at_us: micros(ended_wall),
            duration_us: ended.saturating_duration_since(self.started).as_micros() as u64,
            cpu_user_us: user.saturating_sub(self.cpu_at_start.0),
            cpu_system_us: system.saturating_sub(self.cpu_at_start.1),
            memory_peak_bytes: peak,
            memory_sampled_max_bytes: series.iter().map(|s| s.1).max().unwrap_or(0),
            memory_limit_bytes: self.files.limit(),
            oom_kills: self.files.oom_kills(),
            exit_status,
            cgroup_version: match self.files.version {
                Version::V1 => 1,
                Version::V2 => 2,
            },
            // The series' effective interval (longer than asked once downsampled).
            sample_interval_us: (self.config.interval.as_micros() as u64).saturating_mul(per_point),
            samples: series.len(),
            series: String::new(),
        };
        Measured {
            dir: self.config.dir.clone(),
            record,
            series,
        }
    }
}

/// A finished invocation whose record is not written yet.
pub struct Measured {
    dir: PathBuf,
    pub record: Invocation,
    series: Vec<(u64, u64)>,
}

impl Measured {
    /// Appends the record, then writes its series; a series that cannot be written (a full
    /// disk) leaves the record in place and is reported in [`Written::series_lost`].
    pub fn write(self) -> Result<Written, MeterError> {
        Ok(record::write_record(&self.dir, self.record, &self.series)?)
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Samples memory usage on absolute deadlines (no drift) until told to stop.
fn sample(file: &File, interval: Duration, t0: Instant, stop: &AtomicBool, series: &SharedSeries) {
    let mut buf = [0u8; 32];
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Ok(n) = file.read_at(&mut buf, 0)
            && let Some(v) = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        {
            let at = t0.elapsed().as_micros() as u64;
            series.lock().unwrap_or_else(|e| e.into_inner()).push(at, v);
        }
        next += interval;
        let now = Instant::now();
        if next <= now {
            next = now; // fell behind: do not burst
        }
        if sleep_until(next, stop) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file stands in for v1's `memory.max_usage_in_bytes` (the kernel would raise it).
    #[test]
    fn a_v1_reset_hands_the_peak_so_far_to_running_invocations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.max_usage_in_bytes");
        let peak = |watcher| Peak {
            version: Version::V1,
            path: path.clone(),
            watcher,
        };
        fs::write(&path, "900").unwrap();
        let mut init = peak(Watchers::reset(Version::V1, &path));
        assert_eq!(fs::read_to_string(&path).unwrap(), "0", "reset at start");
        fs::write(&path, "500").unwrap(); // the init's spike
        let mut exec = peak(Watchers::reset(Version::V1, &path));
        fs::write(&path, "200").unwrap(); // the exec's peak since its reset
        assert_eq!(exec.read(), 200, "the exec's own peak");
        assert_eq!(init.read(), 500, "the init keeps its spike");
        drop(exec);
        fs::write(&path, "700").unwrap();
        assert_eq!(init.read(), 700);
        drop(init);
        // Nobody runs there any more: a new invocation is handed nothing.
        let w = Watchers::reset(Version::V1, &path);
        assert_eq!(w.carried.load(Ordering::Relaxed), 0);
        assert!(
            Watchers::registry()
                .lock()
                .unwrap()
                .get(&path)
                .is_none_or(|w| w.len() <= 1),
            "finished invocations are forgotten"
        );
    }

    /// v2: each invocation reads its own descriptor; a peer's reset hands over what that
    /// descriptor showed (a file stands in for `memory.peak`, as the kernel would show it).
    #[test]
    fn a_v2_reset_hands_each_running_invocation_its_own_peak() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.peak");
        fs::write(&path, "0").unwrap();
        let mut init = Peak {
            version: Version::V2,
            path: path.clone(),
            watcher: Watchers::reset(Version::V2, &path),
        };
        fs::write(&path, "98000000").unwrap(); // the init's spike, seen through its fd
        let exec = Watchers::reset(Version::V2, &path);
        // The kernel now shows the init only the usage at the exec's reset.
        fs::write(&path, "47000000").unwrap();
        assert_eq!(init.read(), 98_000_000, "the init keeps its spike");
        drop(exec);
    }

    #[test]
    fn intervals_are_zero_or_between_one_millisecond_and_ten_seconds() {
        let us = Duration::from_micros;
        for ok in [0, 1_000, 10_000, 10_000_000] {
            assert!(interval_allowed(us(ok)), "{ok} µs");
        }
        for bad in [1, 999, 10_000_001, 3_600_000_000, u64::MAX] {
            assert!(!interval_allowed(us(bad)), "{bad} µs");
        }
        assert_eq!(clamp_interval(us(1)), MIN_INTERVAL);
        assert_eq!(clamp_interval(us(u64::MAX)), MAX_INTERVAL);
        assert_eq!(clamp_interval(us(0)), Duration::ZERO);
        assert_eq!(clamp_interval(us(20_000)), us(20_000));
    }

    #[test]
    fn a_configured_interval_outside_the_bounds_is_clamped() {
        let with = |us| {
            let mut c = crate::config::Config::default();
            c.meter.interval_us = us;
            MeterConfig::from_config(&c).unwrap().interval
        };
        assert_eq!(with(1), MIN_INTERVAL);
        assert_eq!(with(u64::MAX), MAX_INTERVAL);
        assert_eq!(with(0), Duration::ZERO);
        assert_eq!(with(5_000), Duration::from_millis(5));
    }

    #[test]
    fn a_full_series_is_downsampled_keeping_every_peak() {
        let mut s = Series::new(8);
        // 100 samples 10 ms apart, flat at 100 but for one spike of 999 at sample 37.
        for i in 0..100u64 {
            s.push(i * 10_000, if i == 37 { 999 } else { 100 });
            assert!(s.points.len() < 8, "{} points held", s.points.len());
        }
        let (points, per_point) = s.finish();
        // 8 → 4 points at 2 samples each, → 4 at 4, → 4 at 8, → 4 at 16: 100 samples fit
        // in 6 full points of 16 and one partial.
        assert_eq!(per_point, 16);
        assert_eq!(points.len(), 7, "{points:?}");
        assert_eq!(
            points.iter().map(|p| p.1).max(),
            Some(999),
            "the spike is kept"
        );
        let spike = points.iter().find(|p| p.1 == 999).unwrap();
        assert_eq!(
            spike.0, 320_000,
            "placed at the start of its point (samples 32..48)"
        );
        assert!(points.windows(2).all(|w| w[1].0 - w[0].0 == 160_000));
        assert_eq!(points[0], (0, 100));
    }

    #[test]
    fn a_short_series_is_kept_whole() {
        let mut s = Series::new(MAX_SERIES_POINTS);
        for i in 0..1000u64 {
            s.push(i, i);
        }
        let (points, per_point) = s.finish();
        assert_eq!(per_point, 1);
        assert_eq!(points, (0..1000).map(|i| (i, i)).collect::<Vec<_>>());
    }

    fn sampler_on(path: PathBuf) -> (Sampler, SharedSeries) {
        let series = Arc::new(Mutex::new(Series::new(MAX_SERIES_POINTS)));
        let s = Sampler::spawn(path, MAX_INTERVAL, Instant::now(), series.clone());
        (s, series)
    }

    /// The sampler sleeps out the longest interval between samples; stopping it (at the
    /// exit) wakes it instead of waiting for the sleep to end.
    #[test]
    fn stopping_a_sampler_wakes_it_from_the_longest_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.current");
        fs::write(&path, "4096\n").unwrap();
        let (mut sampler, series) = sampler_on(path);
        let t = Instant::now();
        while series.lock().unwrap().points.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5), "no first sample");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        sampler.stop();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            t.elapsed()
        );
        let values: Vec<u64> = series.lock().unwrap().points.iter().map(|p| p.1).collect();
        assert_eq!(values, vec![4096], "one sample, then asleep until stopped");
    }

    /// A restored container's cgroup appears only during Start: the sampler waiting for it
    /// is woken too.
    #[test]
    fn stopping_a_sampler_that_waits_for_its_cgroup_wakes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sampler, series) = sampler_on(dir.path().join("not-yet"));
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        sampler.stop();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            t.elapsed()
        );
        assert!(series.lock().unwrap().points.is_empty());
    }
}
