//! Lifecycle and shim-memory benchmark of trenv against runc, through a real containerd.
//!
//! Run it through `integration/bench/lifecycle.sh`, which exports `CTR` and
//! `CONTAINERD_ADDRESS` for the chosen containerd and builds this binary in release mode.
//!
//! 1. **Lifecycle latency.** `ctr run --rm <busybox> <id> true`, timed from spawning `ctr`
//!    to its exit, N times per runtime (after a few uncounted warm-up runs each). The two
//!    runtimes are interleaved in an ABBA pattern (trenv, runc, runc, trenv, ...) so that
//!    drift of the machine's state hits both alike. Reports min, P50, P90, P99 (nearest
//!    rank), max and mean, and the ratios trenv/runc at P50 and P99.
//! 2. **Shim memory.** One `sleep 600` container per runtime; the processes serving it
//!    (trenv: the `containerd-shim-trenv-v1` server and its `trenv-zygote` child; runc:
//!    `containerd-shim-runc-v2`) are found through the task's parent and the shim command
//!    line, and their VmRSS (`/proc/PID/status`) and Pss (`/proc/PID/smaps_rollup`) summed.
//!
//! The verdict is printed against the targets (lifecycle ratio <= 1.0 at P50 and P99; trenv
//! shim RSS <= 50 % of runc's). It is a benchmark, not a test: the exit status is 0 whether
//! or not the targets are met, and non-zero only if the benchmark itself could not run.
//!
//! Everything runs in a dedicated namespace (default `trenv-bench`) with container ids
//! unique to this run, all of which are removed on exit (also after Ctrl-C).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use trenv_integration::bench::{
    TRENV_SHIM, containerd_version, elf_has_debug_info, exe, find_trenv_shim, loadavg, percentile,
    ppid, remove_with_prefix, task_pid,
};

use serde_json::{Value, json};
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, pids_matching};

const RUNC: &str = "io.containerd.runc.v2";
const RUNC_SHIM: &str = "containerd-shim-runc-v2";
const ZYGOTE_COMM: &str = "trenv-zygote";
/// Prefix of every container id this benchmark creates.
const ID_PREFIX: &str = "bench";

/// Targets the verdict is printed against.
const TARGET_LIFECYCLE_RATIO: f64 = 1.0;
const TARGET_RSS_RATIO: f64 = 0.5;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

struct Options {
    runs: usize,
    warmup: usize,
    json: bool,
    namespace: String,
    image: String,
    settle: Duration,
    skip_rss: bool,
    skip_lifecycle: bool,
    /// The runtime name given to `ctr run --runtime` for trenv.
    trenv_runtime: String,
}

const USAGE: &str = "\
usage: bench-lifecycle [--runs N] [--warmup N] [--json] [--namespace NS] [--image REF]
                       [--settle-ms MS] [--no-rss] [--no-lifecycle] [--trenv-runtime R]

  --runs N         counted runs per runtime (default 50)
  --warmup N       uncounted warm-up runs per runtime (default 3)
  --json           print the results as JSON on stdout instead of the table
  --namespace NS   containerd namespace to work in (default trenv-bench)
  --image REF      image to run (default docker.io/trenv/busybox:latest)
  --settle-ms MS   wait after the long-running containers start, before reading
                   the shims' memory (default 1000)
  --no-rss         skip the shim memory measurement
  --no-lifecycle   skip the lifecycle latency measurement
  --trenv-runtime R  runtime for trenv (default io.containerd.trenv.v1); an
                   absolute path to a containerd-shim-trenv-v1 binary makes
                   containerd run that binary instead of the one in its PATH

Needs CTR and CONTAINERD_ADDRESS (integration/bench/lifecycle.sh sets them).";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        runs: 50,
        warmup: 3,
        json: false,
        namespace: "trenv-bench".to_string(),
        image: BUSYBOX.to_string(),
        settle: Duration::from_millis(1000),
        skip_rss: false,
        skip_lifecycle: false,
        trenv_runtime: RUNTIME.to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> Result<usize, String> {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match flag.as_str() {
            "--runs" => {
                o.runs = number("--runs", value("--runs")?)?;
                if o.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--warmup" => o.warmup = number("--warmup", value("--warmup")?)?,
            "--json" => o.json = true,
            "--namespace" => o.namespace = value("--namespace")?,
            "--image" => o.image = value("--image")?,
            "--settle-ms" => {
                o.settle =
                    Duration::from_millis(number("--settle-ms", value("--settle-ms")?)? as u64)
            }
            "--no-rss" => o.skip_rss = true,
            "--no-lifecycle" => o.skip_lifecycle = true,
            "--trenv-runtime" => o.trenv_runtime = value("--trenv-runtime")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument: {a}")),
        }
    }
    Ok(o)
}

fn progress(msg: &str) {
    eprintln!("[bench-lifecycle] {msg}");
}

/// Removes, on drop (also when unwinding from a panic), every container of this run.
struct Cleanup {
    ctr: Ctr,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_with_prefix(&self.ctr, &self.prefix);
    }
}

// ---------------------------------------------------------------------------------------
// Lifecycle latency

#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    failures: usize,
    first_failure: Option<String>,
}

struct Stats {
    n: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Some(Stats {
        n: s.len(),
        min: s[0],
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    })
}

/// One `ctr run --rm IMAGE ID true`; its wall time in ms, or the failure.
fn lifecycle_once(ctr: &Ctr, runtime: &str, image: &str, id: &str) -> Result<f64, String> {
    let start = Instant::now();
    let r = ctr.run(&["run", "--rm", "--runtime", runtime, image, id, "true"]);
    // Microsecond resolution is plenty for ~100 ms runs.
    let ms = start.elapsed().as_micros() as f64 / 1000.0;
    if r.code == 0 {
        Ok(ms)
    } else {
        // Leave nothing behind, so that later runs are not disturbed.
        ctr.remove(id);
        Err(format!(
            "ctr run --rm --runtime {runtime} {image} {id} true: exit {}: {}{}",
            r.code,
            r.stdout.trim(),
            r.stderr.trim()
        ))
    }
}

struct Lifecycle {
    trenv: Samples,
    runc: Samples,
}

fn bench_lifecycle(ctr: &Ctr, o: &Options, prefix: &str) -> Lifecycle {
    let mut seq = 0usize;
    let mut next_id = |tag: &str| {
        seq += 1;
        format!("{prefix}-{tag}-{seq}")
    };
    let runtimes = [(o.trenv_runtime.as_str(), "trenv"), (RUNC, "runc")];

    progress(&format!("warm-up: {} run(s) per runtime", o.warmup));
    for _ in 0..o.warmup {
        for (rt, tag) in runtimes {
            if interrupted() {
                break;
            }
            if let Err(e) = lifecycle_once(ctr, rt, &o.image, &next_id(&format!("warm-{tag}"))) {
                progress(&format!("warm-up run failed: {e}"));
            }
        }
    }

    let mut out = Lifecycle {
        trenv: Samples::default(),
        runc: Samples::default(),
    };
    progress(&format!(
        "lifecycle: {} run(s) per runtime, interleaved (ABBA)",
        o.runs
    ));
    for i in 0..o.runs {
        // ABBA: trenv first on even rounds, runc first on odd ones.
        let order = if i % 2 == 0 {
            [runtimes[0], runtimes[1]]
        } else {
            [runtimes[1], runtimes[0]]
        };
        for (rt, tag) in order {
            if interrupted() {
                break;
            }
            let samples = if tag == "trenv" {
                &mut out.trenv
            } else {
                &mut out.runc
            };
            match lifecycle_once(ctr, rt, &o.image, &next_id(tag)) {
                Ok(ms) => samples.ms.push(ms),
                Err(e) => {
                    progress(&format!("run failed: {e}"));
                    samples.failures += 1;
                    samples.first_failure.get_or_insert(e);
                }
            }
        }
        if interrupted() {
            progress("interrupted: stopping the lifecycle runs");
            break;
        }
        if (i + 1) % 10 == 0 {
            progress(&format!("  {}/{} rounds", i + 1, o.runs));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Shim memory

#[derive(Clone)]
struct ProcMem {
    role: String,
    pid: i32,
    rss_kb: u64,
    pss_kb: u64,
    /// Private_Clean + Private_Dirty: pages no other process maps.
    uss_kb: u64,
}

struct ShimMem {
    /// The shim binary the server process runs.
    exe: PathBuf,
    procs: Vec<ProcMem>,
    /// Other processes running the same binary when measured (they share its file pages,
    /// which lowers Pss).
    others: usize,
}

impl ShimMem {
    fn rss_kb(&self) -> u64 {
        self.procs.iter().map(|p| p.rss_kb).sum()
    }
    fn pss_kb(&self) -> u64 {
        self.procs.iter().map(|p| p.pss_kb).sum()
    }
    fn uss_kb(&self) -> u64 {
        self.procs.iter().map(|p| p.uss_kb).sum()
    }
}

fn proc_field_kb(path: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn read_mem(role: &str, pid: i32) -> Result<ProcMem, String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let rss_kb = proc_field_kb(&proc.join("status"), "VmRSS")
        .ok_or_else(|| format!("no VmRSS for pid {pid} ({role})"))?;
    let rollup = proc.join("smaps_rollup");
    let field = |f: &str| {
        proc_field_kb(&rollup, f)
            .ok_or_else(|| format!("no {f} in /proc/{pid}/smaps_rollup ({role})"))
    };
    Ok(ProcMem {
        role: role.to_string(),
        pid,
        rss_kb,
        pss_kb: field("Pss")?,
        uss_kb: field("Private_Clean")? + field("Private_Dirty")?,
    })
}

/// Pids of all processes whose executable is `path`.
fn processes_running(path: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| exe(pid).as_deref() == Some(path))
        .collect()
}

/// Starts a `sleep 600` container and finds the shim processes serving it.
fn shim_processes(
    ctr: &Ctr,
    trenv: bool,
    runtime: &str,
    image: &str,
    id: &str,
    settle: Duration,
) -> Result<ShimMem, String> {
    let r = ctr.run(&["run", "-d", "--runtime", runtime, image, id, "sleep", "600"]);
    if r.code != 0 {
        return Err(format!(
            "ctr run -d --runtime {runtime} {image} {id} sleep 600: exit {}: {}",
            r.code,
            r.stderr.trim()
        ));
    }
    if !ctr.wait_status(id, "RUNNING", Duration::from_secs(20)) {
        return Err(format!(
            "{id} ({runtime}) did not reach RUNNING within 20 s (status {:?})",
            ctr.task_status(id)
        ));
    }
    std::thread::sleep(settle);
    let task = task_pid(ctr, id).ok_or_else(|| format!("no task pid for {id}"))?;
    // The shim reaps the container process (child subreaper), so it is the task's parent.
    let server = ppid(task).ok_or_else(|| format!("no parent for task pid {task}"))?;
    let shim_name = if trenv { TRENV_SHIM } else { RUNC_SHIM };
    let server_exe = exe(server).unwrap_or_default();
    if server_exe.file_name().and_then(|n| n.to_str()) != Some(shim_name) {
        return Err(format!(
            "parent {server} of task {task} ({id}) is {} (comm {}), not {shim_name}",
            server_exe.display(),
            comm(server)
        ));
    }
    let mut procs = vec![read_mem(shim_name, server)?];
    if trenv {
        // The zygote is a fork of the server: same command line, comm trenv-zygote,
        // parent the server. Anything else carrying this shim's command line (workers
        // of the moment) is counted too, but the zygote must be there.
        let needle = format!("-id {id} ");
        let mut zygote_found = false;
        for pid in pids_matching(&needle) {
            if pid == server
                || ppid(pid) != Some(server)
                || exe(pid).as_deref() != Some(server_exe.as_path())
            {
                continue;
            }
            let c = comm(pid);
            zygote_found |= c == ZYGOTE_COMM;
            procs.push(read_mem(&c, pid)?);
        }
        if !zygote_found {
            return Err(format!(
                "no {ZYGOTE_COMM} child of shim {server} for {id} found"
            ));
        }
    }
    let ours: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    let others = processes_running(&server_exe)
        .into_iter()
        .filter(|p| !ours.contains(p))
        .count();
    Ok(ShimMem {
        exe: server_exe,
        procs,
        others,
    })
}

struct Memory {
    trenv: ShimMem,
    runc: ShimMem,
}

fn bench_memory(ctr: &Ctr, o: &Options, prefix: &str) -> Result<Memory, String> {
    progress("shim memory: one `sleep 600` container per runtime");
    let trenv_id = format!("{prefix}-rss-trenv");
    let runc_id = format!("{prefix}-rss-runc");
    let res = (|| {
        let trenv = shim_processes(ctr, true, &o.trenv_runtime, &o.image, &trenv_id, o.settle)?;
        let runc = shim_processes(ctr, false, RUNC, &o.image, &runc_id, o.settle)?;
        Ok(Memory { trenv, runc })
    })();
    ctr.remove(&trenv_id);
    ctr.remove(&runc_id);
    res
}

// ---------------------------------------------------------------------------------------
// Environment facts

struct ShimBuild {
    path: PathBuf,
    size: u64,
    modified: Option<std::time::SystemTime>,
    build: &'static str,
}

fn shim_build(path: PathBuf) -> ShimBuild {
    let meta = std::fs::metadata(&path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta.and_then(|m| m.modified().ok());
    let build = match elf_has_debug_info(&path) {
        Some(true) => "debug (has .debug_info)",
        Some(false) => "release (no debug info)",
        None => "unknown",
    };
    ShimBuild {
        path,
        size,
        modified,
        build,
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

struct Report<'a> {
    o: &'a Options,
    containerd: String,
    shim: ShimBuild,
    /// Doubts about which shim binary was measured.
    warnings: Vec<String>,
    cpus: usize,
    /// /proc/loadavg (1, 5, 15 min) before and after the benchmark.
    load: (String, String),
    lifecycle: Option<Lifecycle>,
    memory: Option<Result<Memory, String>>,
}

impl Report<'_> {
    fn lifecycle_ratios(&self) -> Option<(f64, f64)> {
        let l = self.lifecycle.as_ref()?;
        let (t, r) = (stats(&l.trenv.ms)?, stats(&l.runc.ms)?);
        Some((ratio(t.p50, r.p50), ratio(t.p99, r.p99)))
    }

    /// trenv/runc ratios of VmRSS, Pss and USS.
    fn memory_ratios(&self) -> Option<(f64, f64, f64)> {
        let m = self.memory.as_ref()?.as_ref().ok()?;
        Some((
            ratio(m.trenv.rss_kb() as f64, m.runc.rss_kb() as f64),
            ratio(m.trenv.pss_kb() as f64, m.runc.pss_kb() as f64),
            ratio(m.trenv.uss_kb() as f64, m.runc.uss_kb() as f64),
        ))
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let o = self.o;
        let _ = writeln!(
            s,
            "trenv lifecycle benchmark: containerd {}, {} CPU(s), namespace {}, load average \
             {} before, {} after",
            self.containerd, self.cpus, o.namespace, self.load.0, self.load.1
        );
        let _ = writeln!(
            s,
            "trenv shim: {} ({:.1} MB, build: {})",
            self.shim.path.display(),
            self.shim.size as f64 / 1e6,
            self.shim.build
        );
        let _ = writeln!(s, "runtimes: trenv = {}, runc = {RUNC}", o.trenv_runtime);
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING: {w}");
        }
        if let Some(l) = &self.lifecycle {
            let _ = writeln!(
                s,
                "\nContainer lifecycle: `ctr run --rm {} ID true`, wall ms; {} run(s) per runtime \
                 after {} warm-up, interleaved ABBA",
                o.image, o.runs, o.warmup
            );
            let _ = writeln!(
                s,
                "{:<24} {:>4} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "runtime", "runs", "fail", "min", "P50", "P90", "P99", "max", "mean"
            );
            for (name, smp) in [("trenv", &l.trenv), ("runc", &l.runc)] {
                match stats(&smp.ms) {
                    Some(st) => {
                        let _ = writeln!(
                            s,
                            "{:<24} {:>4} {:>4} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                            name,
                            st.n,
                            smp.failures,
                            st.min,
                            st.p50,
                            st.p90,
                            st.p99,
                            st.max,
                            st.mean
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            "{:<24} {:>4} {:>4}  (no successful run)",
                            name, 0, smp.failures
                        );
                    }
                }
                if let Some(e) = &smp.first_failure {
                    let _ = writeln!(s, "    first failure: {e}");
                }
            }
            if let (Some(t), Some(r)) = (stats(&l.trenv.ms), stats(&l.runc.ms)) {
                let _ = writeln!(
                    s,
                    "{:<24} {:>4} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                    "ratio trenv/runc",
                    "",
                    "",
                    ratio(t.min, r.min),
                    ratio(t.p50, r.p50),
                    ratio(t.p90, r.p90),
                    ratio(t.p99, r.p99),
                    ratio(t.max, r.max),
                    ratio(t.mean, r.mean)
                );
            }
            let n = l.trenv.ms.len().min(l.runc.ms.len());
            if (1..100).contains(&n) {
                let _ = writeln!(
                    s,
                    "(nearest-rank percentiles: with {n} runs P99 is the maximum)"
                );
            }
        }
        match &self.memory {
            None => {}
            Some(Err(e)) => {
                let _ = writeln!(s, "\nShim memory: FAILED: {e}");
            }
            Some(Ok(m)) => {
                let _ = writeln!(
                    s,
                    "\nShim memory: processes serving one `sleep 600` container, kB \
                     (USS = Private_Clean + Private_Dirty)"
                );
                let row = |a: &str, b: &str, c: &str, d: &str, e: &str| {
                    format!("{a:<34} {b:>8} {c:>8} {d:>8} {e:>8}\n")
                };
                s += &row("process", "pid", "VmRSS", "Pss", "USS");
                for (label, mem) in [("trenv", &m.trenv), ("runc", &m.runc)] {
                    for p in &mem.procs {
                        s += &row(
                            &format!("{label}: {}", p.role),
                            &p.pid.to_string(),
                            &p.rss_kb.to_string(),
                            &p.pss_kb.to_string(),
                            &p.uss_kb.to_string(),
                        );
                    }
                    s += &row(
                        &format!("{label} total"),
                        "",
                        &mem.rss_kb().to_string(),
                        &mem.pss_kb().to_string(),
                        &mem.uss_kb().to_string(),
                    );
                }
                if let Some((rss, pss, uss)) = self.memory_ratios() {
                    let pct = |r: f64| format!("{:.0}%", r * 100.0);
                    s += &row("ratio trenv/runc", "", &pct(rss), &pct(pss), &pct(uss));
                }
                let _ = writeln!(
                    s,
                    "(VmRSS counts the pages the trenv server and its zygote share copy-on-write \
                     twice; Pss splits shared pages among all their users, so it falls when other \
                     processes run the same binary: {} other trenv shim process(es), {} other runc \
                     shim(s) were running)",
                    m.trenv.others, m.runc.others
                );
            }
        }
        let _ = writeln!(s, "\nVerdict");
        if interrupted() {
            let _ = writeln!(s, "  INTERRUPTED: the results are partial");
        }
        if let Some((p50, p99)) = self.lifecycle_ratios() {
            let _ = writeln!(
                s,
                "  lifecycle P50 ratio trenv/runc {:.2} <= {:.2}: {}",
                p50,
                TARGET_LIFECYCLE_RATIO,
                verdict(p50 <= TARGET_LIFECYCLE_RATIO)
            );
            let _ = writeln!(
                s,
                "  lifecycle P99 ratio trenv/runc {:.2} <= {:.2}: {}",
                p99,
                TARGET_LIFECYCLE_RATIO,
                verdict(p99 <= TARGET_LIFECYCLE_RATIO)
            );
        } else if self.lifecycle.is_some() {
            let _ = writeln!(s, "  lifecycle: MISSED (no successful runs to compare)");
        }
        if let Some((rss, pss, uss)) = self.memory_ratios() {
            let _ = writeln!(
                s,
                "  shim RSS trenv/runc {:.0} % <= {:.0} %: {}   (for information: Pss {:.0} %, \
                 USS {:.0} %)",
                rss * 100.0,
                TARGET_RSS_RATIO * 100.0,
                verdict(rss <= TARGET_RSS_RATIO),
                pss * 100.0,
                uss * 100.0
            );
        } else if self.memory.is_some() {
            let _ = writeln!(s, "  shim RSS: MISSED (not measured)");
        }
        s
    }

    fn json(&self) -> Value {
        let stats_json = |smp: &Samples| -> Value {
            let st = stats(&smp.ms);
            json!({
                "runs": smp.ms.len(),
                "failures": smp.failures,
                "first_failure": smp.first_failure,
                "min_ms": st.as_ref().map(|s| s.min),
                "p50_ms": st.as_ref().map(|s| s.p50),
                "p90_ms": st.as_ref().map(|s| s.p90),
                "p99_ms": st.as_ref().map(|s| s.p99),
                "max_ms": st.as_ref().map(|s| s.max),
                "mean_ms": st.as_ref().map(|s| s.mean),
                "samples_ms": smp.ms,
            })
        };
        let mem_json = |m: &ShimMem| -> Value {
            json!({
                "processes": m.procs.iter().map(|p| json!({
                    "role": p.role, "pid": p.pid, "vm_rss_kb": p.rss_kb, "pss_kb": p.pss_kb,
                    "uss_kb": p.uss_kb,
                })).collect::<Vec<_>>(),
                "binary": m.exe,
                "vm_rss_kb": m.rss_kb(),
                "pss_kb": m.pss_kb(),
                "uss_kb": m.uss_kb(),
                "other_processes_of_binary": m.others,
            })
        };
        let lifecycle = self.lifecycle.as_ref().map(|l| {
            let r = self.lifecycle_ratios();
            json!({
                "command": format!("ctr run --rm --runtime RUNTIME {} ID true", self.o.image),
                "runs_per_runtime": self.o.runs,
                "warmup_per_runtime": self.o.warmup,
                "order": "interleaved ABBA",
                "percentiles": "nearest rank",
                "trenv": stats_json(&l.trenv),
                "runc": stats_json(&l.runc),
                "ratio_p50": r.map(|r| r.0),
                "ratio_p99": r.map(|r| r.1),
                "target_ratio_max": TARGET_LIFECYCLE_RATIO,
                "p50_met": r.is_some_and(|r| r.0 <= TARGET_LIFECYCLE_RATIO),
                "p99_met": r.is_some_and(|r| r.1 <= TARGET_LIFECYCLE_RATIO),
            })
        });
        let memory = self.memory.as_ref().map(|m| match m {
            Err(e) => json!({ "error": e, "met": false }),
            Ok(m) => {
                let r = self.memory_ratios();
                json!({
                    "trenv": mem_json(&m.trenv),
                    "runc": mem_json(&m.runc),
                    "ratio_rss": r.map(|r| r.0),
                    "ratio_pss": r.map(|r| r.1),
                    "ratio_uss": r.map(|r| r.2),
                    "target_ratio_max": TARGET_RSS_RATIO,
                    "met": r.is_some_and(|r| r.0 <= TARGET_RSS_RATIO),
                })
            }
        });
        json!({
            "containerd_version": self.containerd,
            "cpus": self.cpus,
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "namespace": self.o.namespace,
            "image": self.o.image,
            "runtimes": { "trenv": self.o.trenv_runtime, "runc": RUNC },
            "warnings": self.warnings,
            "trenv_shim": {
                "path": self.shim.path,
                "size_bytes": self.shim.size,
                "build": self.shim.build,
            },
            "lifecycle": lifecycle,
            "shim_memory": memory,
        })
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-lifecycle: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    // Ctrl-C / SIGTERM: finish the current ctr call, then clean up and report what we have.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }

    let ctr = trenv_integration::bench::connect(
        "bench-lifecycle",
        "integration/bench/lifecycle.sh",
        &o.namespace,
    );
    let containerd = containerd_version(&ctr);
    progress(&format!(
        "containerd {containerd} at {}, namespace {}",
        ctr.address, o.namespace
    ));
    if o.image == BUSYBOX {
        ctr.ensure_images();
    }

    // Containers left behind by an earlier, killed run of this benchmark.
    remove_with_prefix(&ctr, &format!("{ID_PREFIX}-"));

    let prefix = format!("{ID_PREFIX}-{}", std::process::id());
    let cleanup = Cleanup {
        ctr: ctr.clone(),
        prefix: format!("{prefix}-"),
    };

    let shim = shim_build(find_trenv_shim(&o.trenv_runtime));
    progress(&format!(
        "trenv shim {} ({} build), runtime {}",
        shim.path.display(),
        shim.build,
        o.trenv_runtime
    ));
    let load_before = loadavg();
    let lifecycle = (!o.skip_lifecycle).then(|| bench_lifecycle(&ctr, &o, &prefix));
    let memory = (!o.skip_rss && !interrupted()).then(|| bench_memory(&ctr, &o, &prefix));
    drop(cleanup);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let after = shim_build(shim.path.clone());
    let mut warnings = Vec::new();
    if (after.size, after.modified) != (shim.size, shim.modified) {
        warnings.push(format!(
            "the trenv shim binary {} was replaced while the benchmark ran ({} build, {} bytes \
             before; {} build, {} bytes after): the results mix builds",
            shim.path.display(),
            shim.build,
            shim.size,
            after.build,
            after.size
        ));
    }
    if let Some(Ok(m)) = &memory
        && m.trenv.exe != shim.path
    {
        warnings.push(format!(
            "the measured trenv shim ran {}, not {}",
            m.trenv.exe.display(),
            shim.path.display()
        ));
    }
    for w in &warnings {
        progress(&format!("WARNING: {w}"));
    }
    let report = Report {
        o: &o,
        containerd,
        shim,
        warnings,
        cpus,
        load: (load_before, loadavg()),
        lifecycle,
        memory,
    };
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).expect("serialising the report")
        );
    } else {
        print!("{}", report.table());
    }
    if interrupted() {
        progress("interrupted: the results above are partial");
    }
}
