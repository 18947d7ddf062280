//! Metering overhead and peak accuracy benchmark of trenv, through a real containerd.
//!
//! Run it through `integration/bench/meter.sh`, which exports `CTR` and `CONTAINERD_ADDRESS`
//! for the chosen containerd and builds this binary in release mode.
//!
//! The sampling interval of each container is set with the annotation
//! `io.trenv.meter.interval-us` (0 = no series; the exact peak is still read). The settings
//! compared are `--intervals` (default 0, 10000 and 1000 µs).
//!
//! 1. **Shim CPU.** Per setting, `--cpu-reps` containers `sleep HOLD` (default 5 × 5 s),
//!    detached. Once the task is RUNNING, the shim server (the task's parent) is found and its
//!    CPU time (utime + stime of the whole process, `/proc/PID/stat`, clock ticks) read; it
//!    is read again once the invocation's record is in `invocations.jsonl`, i.e. after the
//!    sampler stopped and the series and record were written. Nothing talks to the shim in
//!    between (the record is awaited by reading the file). Reported as ms of CPU and % of one
//!    core over that window, the mean of the repetitions; settings are interleaved.
//! 2. **Start latency.** `ctr run --rm --annotation io.trenv.meter.interval-us=X IMAGE ID
//!    true`, wall time from spawning `ctr` to its exit, `--runs` times per setting (default
//!    30, after `--warmup` uncounted runs), settings interleaved in rotating order.
//!    Nearest-rank P50/P99.
//! 3. **Peak accuracy.** A spiky workload (the static test program
//!    `integration/tests/fixtures/memphase.c`, built with gcc and bind-mounted into busybox):
//!    `--phases` (default a 10 MiB base with spikes of 60–120 MiB held 8–12 ms). `--peak-runs`
//!    (default 10) runs at the fine interval (1000 µs) and as many at the coarse one
//!    (30000 µs), interleaved. Against each run's exact peak (`memory_peak_bytes`) it
//!    compares: the sampled max at 1 ms (`memory_sampled_max_bytes`); the max of the 1 ms
//!    series subsampled every 30 ms from a random phase (emulating a 30 ms sampler), and the
//!    same over every 1 ms phase; and the sampled max of the real 30 ms runs. Error =
//!    (exact − sampled) / exact.
//!
//! It is a benchmark, not a test: exit status 0 when it ran, non-zero only if it could not.
//! Everything runs in a dedicated namespace (default `trenv-meterbench`) with container ids
//! unique to this run, all removed on exit (also after Ctrl-C). Records and series files the
//! shim wrote stay in the metering directory (it is append-only and shared).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use trenv_integration::bench::{
    containerd_version, elf_has_debug_info, exe, find_trenv_shim, loadavg, percentile, ppid,
    remove_with_prefix, task_pid,
};

use serde_json::Value;
use trenv_integration::{BUSYBOX, Ctr, RUNTIME};

const ANNOTATION: &str = "io.trenv.meter.interval-us";
/// Prefix of every container id this benchmark creates.
const ID_PREFIX: &str = "meterbench";
const DEFAULT_PHASES: &str = "10:40 90:8 10:40 70:12 10:40 120:10 10:40 80:8 10:40 60:12 10:40";
const MEMPHASE_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/memphase.c");

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn progress(msg: &str) {
    eprintln!("[bench-meter] {msg}");
}

struct Options {
    intervals: Vec<u64>,
    runs: usize,
    warmup: usize,
    cpu_reps: usize,
    hold_s: u64,
    peak_runs: usize,
    fine_us: u64,
    coarse_us: u64,
    phases: Vec<String>,
    seed: Option<u64>,
    namespace: String,
    image: String,
    meter_dir: PathBuf,
    trenv_runtime: String,
    skip_cpu: bool,
    skip_latency: bool,
    skip_peak: bool,
}

const USAGE: &str = "\
usage: bench-meter [--intervals LIST] [--runs N] [--warmup N] [--cpu-reps N] [--hold-s S]
                   [--peak-runs K] [--fine-us US] [--coarse-us US] [--phases 'MB:MS ...']
                   [--seed N] [--namespace NS] [--image REF] [--meter-dir DIR]
                   [--trenv-runtime R] [--no-cpu] [--no-latency] [--no-peak]

  --intervals LIST  sampling intervals compared, µs, comma separated (default 0,10000,1000;
                    0 = no series, exact peak only)
  --runs N          counted `ctr run --rm ... true` runs per interval (default 30)
  --warmup N        uncounted warm-up runs per interval (default 3)
  --cpu-reps N      shim CPU measurements per interval (default 5)
  --hold-s S        length of each CPU measurement container, `sleep S` (default 5)
  --peak-runs K     spiky-workload runs at the fine and at the coarse interval (default 10)
  --fine-us US      fine sampling interval of the peak runs (default 1000)
  --coarse-us US    coarse sampling interval, real and emulated (default 30000)
  --phases P        memphase phases, MB:MS separated by spaces (default
                    '10:40 90:8 10:40 70:12 10:40 120:10 10:40 80:8 10:40 60:12 10:40')
  --seed N          seed of the random phases of the emulated coarse sampler (default: time)
  --namespace NS    containerd namespace to work in (default trenv-meterbench)
  --image REF       image to run (default docker.io/trenv/busybox:latest)
  --meter-dir DIR   the shim's metering directory (default $TRENV_METER_DIR or
                    /var/lib/trenv/meter; it must be the one containerd's shims write)
  --trenv-runtime R runtime for trenv (default io.containerd.trenv.v1); an absolute path
                    to a containerd-shim-trenv-v1 binary makes containerd run that binary
  --no-cpu, --no-latency, --no-peak   skip that part

Needs CTR and CONTAINERD_ADDRESS (integration/bench/meter.sh sets them) and gcc.";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        intervals: vec![0, 10_000, 1_000],
        runs: 30,
        warmup: 3,
        cpu_reps: 5,
        hold_s: 5,
        peak_runs: 10,
        fine_us: 1_000,
        coarse_us: 30_000,
        phases: DEFAULT_PHASES
            .split_whitespace()
            .map(String::from)
            .collect(),
        seed: None,
        namespace: "trenv-meterbench".to_string(),
        image: BUSYBOX.to_string(),
        meter_dir: std::env::var_os("TRENV_METER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/trenv/meter")),
        trenv_runtime: RUNTIME.to_string(),
        skip_cpu: false,
        skip_latency: false,
        skip_peak: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| -> Result<u64, String> {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--intervals" => {
                o.intervals = value()?
                    .split(',')
                    .map(|v| number(v.to_string()))
                    .collect::<Result<_, _>>()?;
                if o.intervals.is_empty() {
                    return Err("--intervals needs at least one value".into());
                }
            }
            "--runs" => o.runs = number(value()?)?.max(1) as usize,
            "--warmup" => o.warmup = number(value()?)? as usize,
            "--cpu-reps" => o.cpu_reps = number(value()?)?.max(1) as usize,
            "--hold-s" => o.hold_s = number(value()?)?.max(1),
            "--peak-runs" => o.peak_runs = number(value()?)?.max(1) as usize,
            "--fine-us" => o.fine_us = number(value()?)?.max(1),
            "--coarse-us" => o.coarse_us = number(value()?)?.max(1),
            "--phases" => {
                o.phases = value()?.split_whitespace().map(String::from).collect();
                if o.phases.is_empty() {
                    return Err("--phases needs at least one MB:MS phase".into());
                }
            }
            "--seed" => o.seed = Some(number(value()?)?),
            "--namespace" => o.namespace = value()?,
            "--image" => o.image = value()?,
            "--meter-dir" => o.meter_dir = PathBuf::from(value()?),
            "--trenv-runtime" => o.trenv_runtime = value()?,
            "--no-cpu" => o.skip_cpu = true,
            "--no-latency" => o.skip_latency = true,
            "--no-peak" => o.skip_peak = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument: {a}")),
        }
    }
    if o.coarse_us < o.fine_us {
        return Err("--coarse-us must not be smaller than --fine-us".into());
    }
    Ok(o)
}

fn interval_label(us: u64) -> String {
    match us {
        0 => "0 (no series)".to_string(),
        us if us % 1000 == 0 => format!("{} ms", us / 1000),
        us => format!("{us} µs"),
    }
}

/// Removes, on drop (also when unwinding from a panic), every container of this run and the
/// built test program.
struct Cleanup {
    ctr: Ctr,
    prefix: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_with_prefix(&self.ctr, &self.prefix);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// splitmix64: enough randomness for sampling phases, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------
// Records

/// The record of `id`'s init process, waiting for it at most `timeout`.
fn record_of(dir: &Path, id: &str, timeout: Duration) -> Result<Value, String> {
    let path = dir.join("invocations.jsonl");
    let needle = format!("\"container_id\":\"{id}\"");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(r) = text
                .lines()
                .filter(|l| l.contains(&needle))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["container_id"] == id && r["exec_id"] == "")
        {
            return Ok(r);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no metering record for {id} in {} after {:?} (is --meter-dir the shim's?)",
                path.display(),
                timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn u64_of(rec: &Value, key: &str) -> Result<u64, String> {
    rec[key]
        .as_u64()
        .ok_or_else(|| format!("record has no {key}: {rec}"))
}

fn series_of(dir: &Path, rec: &Value) -> Result<Vec<(u64, u64)>, String> {
    let rel = rec["series"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("record has no series: {rec}"))?;
    let path = dir.join(rel);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (t, v) = l.split_once(',')?;
            Some((t.trim().parse().ok()?, v.trim().parse().ok()?))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Processes

/// utime + stime of the whole process (all its threads, live and exited), clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces): state is field 3, utime 14,
    // stime 15.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

// ---------------------------------------------------------------------------------------
// Statistics

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

// ---------------------------------------------------------------------------------------
// 1. Shim CPU

#[derive(Default)]
struct CpuResult {
    /// Per repetition: (CPU ms, window ms, samples in the record).
    reps: Vec<(f64, f64, u64)>,
    errors: Vec<String>,
}

impl CpuResult {
    fn cpu_ms(&self) -> f64 {
        mean(&self.reps.iter().map(|r| r.0).collect::<Vec<_>>())
    }
    fn window_ms(&self) -> f64 {
        mean(&self.reps.iter().map(|r| r.1).collect::<Vec<_>>())
    }
    fn pct(&self) -> f64 {
        let total: f64 = self.reps.iter().map(|r| r.1).sum();
        if total > 0.0 {
            100.0 * self.reps.iter().map(|r| r.0).sum::<f64>() / total
        } else {
            f64::NAN
        }
    }
    fn pct_min_max(&self) -> (f64, f64) {
        let p: Vec<f64> = self.reps.iter().map(|r| 100.0 * r.0 / r.1).collect();
        let s = sorted(&p);
        (
            s.first().copied().unwrap_or(f64::NAN),
            s.last().copied().unwrap_or(f64::NAN),
        )
    }
    fn samples(&self) -> f64 {
        mean(&self.reps.iter().map(|r| r.2 as f64).collect::<Vec<_>>())
    }
}

fn cpu_once(
    ctr: &Ctr,
    o: &Options,
    shim: &Path,
    interval: u64,
    id: &str,
) -> Result<(f64, f64, u64), String> {
    let ann = format!("{ANNOTATION}={interval}");
    let hold = o.hold_s.to_string();
    let r = ctr.run(&[
        "run",
        "-d",
        "--runtime",
        &o.trenv_runtime,
        "--annotation",
        &ann,
        &o.image,
        id,
        "sleep",
        &hold,
    ]);
    if r.code != 0 {
        return Err(format!(
            "ctr run -d {id} sleep {hold}: exit {}: {}",
            r.code,
            r.stderr.trim()
        ));
    }
    if !ctr.wait_status(id, "RUNNING", Duration::from_secs(20)) {
        return Err(format!("{id} did not reach RUNNING within 20 s"));
    }
    let task = task_pid(ctr, id).ok_or_else(|| format!("no task pid for {id}"))?;
    // The shim reaps the container process (child subreaper), so it is the task's parent.
    let server = ppid(task).ok_or_else(|| format!("no parent for task pid {task}"))?;
    let t0 = Instant::now();
    let c0 = cpu_ticks(server).ok_or_else(|| format!("no /proc/{server}/stat"))?;
    let server_exe = exe(server).unwrap_or_default();
    if server_exe != shim {
        return Err(format!(
            "parent {server} of task {task} ({id}) runs {}, not {}",
            server_exe.display(),
            shim.display()
        ));
    }
    // Only the file is read until the record is there: nothing talks to the shim.
    let rec = record_of(&o.meter_dir, id, Duration::from_secs(o.hold_s + 30))?;
    let c1 = cpu_ticks(server).ok_or_else(|| format!("shim {server} gone before the end"))?;
    let window_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let cpu_ms = (c1 - c0) as f64 * 1000.0 / clock_ticks_per_s() as f64;
    if u64_of(&rec, "sample_interval_us")? != interval {
        return Err(format!("record of {id} has another interval: {rec}"));
    }
    Ok((cpu_ms, window_ms, u64_of(&rec, "samples")?))
}

fn bench_cpu(ctr: &Ctr, o: &Options, shim: &Path, prefix: &str) -> Vec<CpuResult> {
    let n = o.intervals.len();
    let mut out: Vec<CpuResult> = (0..n).map(|_| CpuResult::default()).collect();
    progress(&format!(
        "shim CPU: {} × `sleep {}` per interval, interleaved",
        o.cpu_reps, o.hold_s
    ));
    for rep in 0..o.cpu_reps {
        for j in 0..n {
            if interrupted() {
                return out;
            }
            let k = (j + rep) % n;
            let iv = o.intervals[k];
            let id = format!("{prefix}-cpu-{iv}-{rep}");
            let res = cpu_once(ctr, o, shim, iv, &id);
            ctr.remove(&id);
            match res {
                Ok(r) => {
                    progress(&format!(
                        "  {}: {:.0} ms CPU over {:.0} ms ({:.2} %), {} samples",
                        interval_label(iv),
                        r.0,
                        r.1,
                        100.0 * r.0 / r.1,
                        r.2
                    ));
                    out[k].reps.push(r);
                }
                Err(e) => {
                    progress(&format!("  failed: {e}"));
                    out[k].errors.push(e);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 2. Start latency

#[derive(Default)]
struct Latency {
    ms: Vec<f64>,
    failures: usize,
    first_failure: Option<String>,
}

fn latency_once(ctr: &Ctr, o: &Options, interval: u64, id: &str) -> Result<f64, String> {
    let ann = format!("{ANNOTATION}={interval}");
    let start = Instant::now();
    let r = ctr.run(&[
        "run",
        "--rm",
        "--runtime",
        &o.trenv_runtime,
        "--annotation",
        &ann,
        &o.image,
        id,
        "true",
    ]);
    let ms = start.elapsed().as_micros() as f64 / 1000.0;
    if r.code == 0 {
        Ok(ms)
    } else {
        ctr.remove(id);
        Err(format!(
            "ctr run --rm {id} true: exit {}: {}{}",
            r.code,
            r.stdout.trim(),
            r.stderr.trim()
        ))
    }
}

fn bench_latency(ctr: &Ctr, o: &Options, prefix: &str) -> Vec<Latency> {
    let n = o.intervals.len();
    let mut out: Vec<Latency> = (0..n).map(|_| Latency::default()).collect();
    let mut seq = 0usize;
    progress(&format!(
        "start latency: {} warm-up run(s) per interval",
        o.warmup
    ));
    for _ in 0..o.warmup {
        for &iv in &o.intervals {
            if interrupted() {
                return out;
            }
            seq += 1;
            if let Err(e) = latency_once(ctr, o, iv, &format!("{prefix}-warm-{iv}-{seq}")) {
                progress(&format!("  warm-up failed: {e}"));
            }
        }
    }
    progress(&format!(
        "start latency: {} run(s) per interval, rotating order",
        o.runs
    ));
    for i in 0..o.runs {
        for j in 0..n {
            if interrupted() {
                return out;
            }
            let k = (j + i) % n;
            let iv = o.intervals[k];
            seq += 1;
            match latency_once(ctr, o, iv, &format!("{prefix}-lat-{iv}-{seq}")) {
                Ok(ms) => out[k].ms.push(ms),
                Err(e) => {
                    progress(&format!("  run failed: {e}"));
                    out[k].failures += 1;
                    out[k].first_failure.get_or_insert(e);
                }
            }
        }
        if (i + 1) % 10 == 0 {
            progress(&format!("  {}/{} rounds", i + 1, o.runs));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 3. Peak accuracy

/// One spiky run.
struct PeakRun {
    exact: u64,
    sampled: u64,
    samples: u64,
    duration_us: u64,
    /// The program's own VmHWM, bytes.
    hwm: u64,
    /// Fine runs only: max of the series subsampled at the coarse interval from a random
    /// phase, and from every fine phase.
    emulated_random: Option<u64>,
    emulated_all: Vec<u64>,
    /// Fine runs only: how long the series stayed at >= 95 % of the exact peak, ms.
    near_peak_ms: Option<f64>,
}

#[derive(Default)]
struct Peak {
    fine: Vec<PeakRun>,
    coarse: Vec<PeakRun>,
    errors: Vec<String>,
    seed: u64,
}

fn build_memphase(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = dir.join("memphase");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(MEMPHASE_SRC)
        .status()
        .map_err(|e| format!("running gcc: {e}"))?;
    if !st.success() {
        return Err(format!("gcc -static {MEMPHASE_SRC} failed: {st}"));
    }
    Ok(out)
}

/// The max of the samples taken first at or after `phase + k * step` for every k: what a
/// sampler of period `step` would have seen.
fn subsampled_max(series: &[(u64, u64)], phase: u64, step: u64) -> u64 {
    let mut best = 0;
    let mut due = phase;
    for &(t, v) in series {
        if t >= due {
            best = best.max(v);
            while due <= t {
                due += step;
            }
        }
    }
    best
}

fn field(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

fn peak_once(
    ctr: &Ctr,
    o: &Options,
    memphase: &Path,
    interval: u64,
    id: &str,
    rng: &mut Rng,
) -> Result<PeakRun, String> {
    let mount = format!(
        "type=bind,src={},dst=/memphase,options=rbind:ro",
        memphase.display()
    );
    let ann = format!("{ANNOTATION}={interval}");
    let mut a = vec![
        "run",
        "--rm",
        "--runtime",
        &o.trenv_runtime,
        "--mount",
        &mount,
        "--annotation",
        &ann,
        &o.image,
        id,
        "/memphase",
    ];
    a.extend(o.phases.iter().map(String::as_str));
    let r = ctr.run(&a);
    if r.code != 0 {
        ctr.remove(id);
        return Err(format!(
            "memphase run {id}: exit {}: {}{}",
            r.code,
            r.stdout.trim(),
            r.stderr.trim()
        ));
    }
    let rec = record_of(&o.meter_dir, id, Duration::from_secs(10))?;
    let mut run = PeakRun {
        exact: u64_of(&rec, "memory_peak_bytes")?,
        sampled: u64_of(&rec, "memory_sampled_max_bytes")?,
        samples: u64_of(&rec, "samples")?,
        duration_us: u64_of(&rec, "duration_us")?,
        hwm: field(&r.stdout, "hwm_kb") << 10,
        emulated_random: None,
        emulated_all: Vec::new(),
        near_peak_ms: None,
    };
    if interval == o.fine_us {
        let s = series_of(&o.meter_dir, &rec)?;
        let phase = rng.below(o.coarse_us);
        run.emulated_random = Some(subsampled_max(&s, phase, o.coarse_us));
        run.emulated_all = (0..o.coarse_us)
            .step_by(o.fine_us as usize)
            .map(|p| subsampled_max(&s, p, o.coarse_us))
            .collect();
        let near = s
            .windows(2)
            .filter(|w| w[0].1 as f64 >= 0.95 * run.exact as f64)
            .map(|w| w[1].0 - w[0].0)
            .sum::<u64>();
        run.near_peak_ms = Some(near as f64 / 1000.0);
    }
    Ok(run)
}

fn bench_peak(ctr: &Ctr, o: &Options, memphase: &Path, prefix: &str, seed: u64) -> Peak {
    let mut rng = Rng(seed);
    let mut out = Peak {
        seed,
        ..Peak::default()
    };
    progress(&format!(
        "peak accuracy: {} spiky run(s) at {} µs and at {} µs, interleaved; phases {}",
        o.peak_runs,
        o.fine_us,
        o.coarse_us,
        o.phases.join(" ")
    ));
    for i in 0..o.peak_runs {
        let order = if i % 2 == 0 {
            [o.fine_us, o.coarse_us]
        } else {
            [o.coarse_us, o.fine_us]
        };
        for iv in order {
            if interrupted() {
                return out;
            }
            let id = format!("{prefix}-peak-{iv}-{i}");
            match peak_once(ctr, o, memphase, iv, &id, &mut rng) {
                Ok(run) if iv == o.fine_us => out.fine.push(run),
                Ok(run) => out.coarse.push(run),
                Err(e) => {
                    progress(&format!("  failed: {e}"));
                    out.errors.push(e);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Environment facts

fn shim_description(path: &Path) -> String {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let build = match elf_has_debug_info(path) {
        Some(true) => "debug (has .debug_info)",
        Some(false) => "release (no debug info)",
        None => "unknown",
    };
    format!(
        "{} ({:.1} MB, build: {build})",
        path.display(),
        size as f64 / 1e6
    )
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cgroup_version() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    }
}

// ---------------------------------------------------------------------------------------
// Report

struct Report<'a> {
    o: &'a Options,
    header: String,
    cpu: Option<Vec<CpuResult>>,
    latency: Option<Vec<Latency>>,
    peak: Option<Peak>,
}

fn err_pct(exact: u64, seen: u64) -> f64 {
    if exact == 0 {
        f64::NAN
    } else {
        100.0 * (exact as f64 - seen as f64) / exact as f64
    }
}

/// Errors in percent: mean, worst (largest), and how many within 2 %.
fn err_row(s: &mut String, label: &str, errs: &[f64]) {
    if errs.is_empty() {
        let _ = writeln!(s, "{label:<44} {:>6}  (no data)", 0);
        return;
    }
    let worst = errs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let within = errs.iter().filter(|e| e.abs() <= 2.0).count();
    let _ = writeln!(
        s,
        "{label:<44} {:>6} {:>9.1} {:>9.1} {:>12}",
        errs.len(),
        mean(errs),
        worst,
        format!("{within}/{}", errs.len())
    );
}

impl Report<'_> {
    fn table(&self) -> String {
        let o = self.o;
        let mut s = self.header.clone();
        let mib = |b: f64| b / f64::from(1u32 << 20);
        if let Some(cpu) = &self.cpu {
            let _ = writeln!(
                s,
                "\nShim CPU: server process (task's parent), utime+stime from /proc/PID/stat \
                 ({} ticks/s), from RUNNING until the record of a `sleep {}` container is \
                 written; mean of {} rep(s)",
                clock_ticks_per_s(),
                o.hold_s,
                o.cpu_reps
            );
            let _ = writeln!(
                s,
                "{:<16} {:>4} {:>10} {:>10} {:>9} {:>15} {:>9}",
                "interval", "reps", "window ms", "CPU ms", "% core", "% core min-max", "samples"
            );
            for (iv, r) in o.intervals.iter().zip(cpu) {
                let (lo, hi) = r.pct_min_max();
                let _ = writeln!(
                    s,
                    "{:<16} {:>4} {:>10.0} {:>10.1} {:>9.2} {:>15} {:>9.0}",
                    interval_label(*iv),
                    r.reps.len(),
                    r.window_ms(),
                    r.cpu_ms(),
                    r.pct(),
                    format!("{lo:.2}-{hi:.2}"),
                    r.samples()
                );
                if let Some(e) = r.errors.first() {
                    let _ = writeln!(s, "    {} failure(s), first: {e}", r.errors.len());
                }
            }
            let _ = writeln!(
                s,
                "(one tick = {:.0} ms of CPU; the window includes the exit, the series write and \
                 the record's fdatasync)",
                1000.0 / clock_ticks_per_s() as f64
            );
        }
        if let Some(lat) = &self.latency {
            let _ = writeln!(
                s,
                "\nStart latency: `ctr run --rm --annotation {ANNOTATION}=X {} ID true`, wall ms; \
                 {} run(s) per interval after {} warm-up, rotating order",
                o.image, o.runs, o.warmup
            );
            let _ = writeln!(
                s,
                "{:<16} {:>4} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "interval", "runs", "fail", "min", "P50", "P99", "max", "mean"
            );
            for (iv, l) in o.intervals.iter().zip(lat) {
                if l.ms.is_empty() {
                    let _ = writeln!(
                        s,
                        "{:<16} {:>4} {:>4}  (no successful run)",
                        interval_label(*iv),
                        0,
                        l.failures
                    );
                } else {
                    let st = sorted(&l.ms);
                    let _ = writeln!(
                        s,
                        "{:<16} {:>4} {:>4} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                        interval_label(*iv),
                        st.len(),
                        l.failures,
                        st[0],
                        percentile(&st, 50.0),
                        percentile(&st, 99.0),
                        st[st.len() - 1],
                        mean(&st)
                    );
                }
                if let Some(e) = &l.first_failure {
                    let _ = writeln!(s, "    first failure: {e}");
                }
            }
            if o.runs < 100 {
                let _ = writeln!(
                    s,
                    "(nearest-rank percentiles: with {} runs P99 is the maximum)",
                    o.runs
                );
            }
        }
        if let Some(p) = &self.peak {
            let exact_f: Vec<f64> = p.fine.iter().map(|r| r.exact as f64).collect();
            let exact_c: Vec<f64> = p.coarse.iter().map(|r| r.exact as f64).collect();
            let _ = writeln!(
                s,
                "\nPeak accuracy: memphase {} (MiB:ms; busybox, bind-mounted static program)",
                o.phases.join(" ")
            );
            let _ = writeln!(
                s,
                "{} run(s) at {} µs, {} at {} µs; exact peak (memory_peak_bytes) mean {:.1} / \
                 {:.1} MiB, program VmHWM mean {:.1} MiB; {} µs runs: {:.0} samples over {:.0} ms \
                 mean; random phases seed {}",
                p.fine.len(),
                o.fine_us,
                p.coarse.len(),
                o.coarse_us,
                mib(mean(&exact_f)),
                mib(mean(&exact_c)),
                mib(mean(
                    &p.fine
                        .iter()
                        .chain(&p.coarse)
                        .map(|r| r.hwm as f64)
                        .collect::<Vec<_>>()
                )),
                o.fine_us,
                mean(&p.fine.iter().map(|r| r.samples as f64).collect::<Vec<_>>()),
                mean(
                    &p.fine
                        .iter()
                        .map(|r| r.duration_us as f64 / 1000.0)
                        .collect::<Vec<_>>()
                ),
                p.seed
            );
            let _ = writeln!(
                s,
                "the {} µs series stays at >= 95 % of the exact peak for {:.1} ms per run (mean; \
                 the top spike's first touch, hold and unmap)",
                o.fine_us,
                mean(
                    &p.fine
                        .iter()
                        .filter_map(|r| r.near_peak_ms)
                        .collect::<Vec<_>>()
                )
            );
            let _ = writeln!(
                s,
                "error vs the run's exact peak, % ((exact - sampled) / exact; worst = largest)"
            );
            let _ = writeln!(
                s,
                "{:<44} {:>6} {:>9} {:>9} {:>12}",
                "peak seen by", "cases", "mean %", "worst %", "within 2 %"
            );
            let fine_ms = interval_label(o.fine_us);
            let coarse_ms = interval_label(o.coarse_us);
            err_row(
                &mut s,
                &format!("sampled max at {fine_ms} (real)"),
                &p.fine
                    .iter()
                    .map(|r| err_pct(r.exact, r.sampled))
                    .collect::<Vec<_>>(),
            );
            err_row(
                &mut s,
                &format!("{fine_ms} series every {coarse_ms}, random phase"),
                &p.fine
                    .iter()
                    .filter_map(|r| Some(err_pct(r.exact, r.emulated_random?)))
                    .collect::<Vec<_>>(),
            );
            err_row(
                &mut s,
                &format!("{fine_ms} series every {coarse_ms}, every phase"),
                &p.fine
                    .iter()
                    .flat_map(|r| r.emulated_all.iter().map(|&m| err_pct(r.exact, m)))
                    .collect::<Vec<_>>(),
            );
            err_row(
                &mut s,
                &format!("sampled max at {coarse_ms} (real)"),
                &p.coarse
                    .iter()
                    .map(|r| err_pct(r.exact, r.sampled))
                    .collect::<Vec<_>>(),
            );
            for e in p.errors.iter().take(3) {
                let _ = writeln!(s, "    failure: {e}");
            }
        }
        if interrupted() {
            let _ = writeln!(s, "\nINTERRUPTED: the results are partial");
        }
        s
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-meter: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }

    let ctr = trenv_integration::bench::connect(
        "bench-meter",
        "integration/bench/meter.sh",
        &o.namespace,
    );
    let containerd = containerd_version(&ctr);
    if o.image == BUSYBOX {
        ctr.ensure_images();
    }
    remove_with_prefix(&ctr, &format!("{ID_PREFIX}-"));

    let prefix = format!("{ID_PREFIX}-{}", std::process::id());
    let work = std::env::temp_dir().join(format!("trenv-meterbench-{}", std::process::id()));
    let cleanup = Cleanup {
        ctr: ctr.clone(),
        prefix: format!("{prefix}-"),
        dir: work.clone(),
    };
    let shim = find_trenv_shim(&o.trenv_runtime);
    let shim_desc = shim_description(&shim);
    progress(&format!(
        "containerd {containerd} at {}, namespace {}, shim {shim_desc}",
        ctr.address, o.namespace
    ));
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let load_before = loadavg();

    let cpu = (!o.skip_cpu).then(|| bench_cpu(&ctr, &o, &shim, &prefix));
    let latency = (!o.skip_latency && !interrupted()).then(|| bench_latency(&ctr, &o, &prefix));
    let peak = if o.skip_peak || interrupted() {
        None
    } else {
        match build_memphase(&work) {
            Ok(bin) => Some(bench_peak(&ctr, &o, &bin, &prefix, seed)),
            Err(e) => {
                progress(&format!("peak accuracy skipped: {e}"));
                Some(Peak {
                    errors: vec![e],
                    seed,
                    ..Peak::default()
                })
            }
        }
    };
    drop(cleanup);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let header = format!(
        "trenv metering benchmark: containerd {containerd}, kernel {}, cgroup {}, {cpus} CPU(s), \
         namespace {}, load average {load_before} before, {} after\ntrenv shim: {shim_desc}, \
         runtime {}\nmetering directory: {}\n",
        kernel(),
        cgroup_version(),
        o.namespace,
        loadavg(),
        o.trenv_runtime,
        o.meter_dir.display()
    );
    let report = Report {
        o: &o,
        header,
        cpu,
        latency,
        peak,
    };
    print!("{}", report.table());
    if interrupted() {
        progress("interrupted: the results above are partial");
    }
}
