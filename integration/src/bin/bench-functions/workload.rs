//! A workload through the platform, in one mode: each request, at its arrival, goes to an
//! idle warm instance of its function if there is one (the most recently used), else to a
//! new instance started in the mode under test (a cold start: the request waits for it);
//! it is forwarded over the bridge, checked against the function's `check.json`, and the
//! instance is idle again. A reaper deletes instances idle longer than the keep-alive (and
//! the run goes on after the last answer until it has deleted them all). A
//! sampler reads the node's memory (MemTotal − MemAvailable) and the number of live
//! instances every 100 ms, and every 500 ms the platform's own memory: the Pss of every
//! live instance's processes and its shim's (a shim shared by several counted once), less
//! shared memory (memory::instances_kib),
//! which other activity on the node does not move.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trenv_integration::function::Instance;

use super::arrivals::Arrival;
use super::containers::Conn;
use super::memory::instances_kib;
use super::platform::{Mode, Platform, ms};
use super::{STOP, mem_used_kib};

/// How often the sampler and the reaper look.
const TICK: Duration = Duration::from_millis(100);
/// The platform's memory is read every this many ticks (reading every instance's
/// smaps_rollup costs CPU).
const PLATFORM_EVERY: usize = 5;

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct Request {
    pub at_ms: f64,
    pub function: usize,
    pub cold: bool,
    /// From its arrival until its answer (or its failure).
    pub latency_ms: f64,
    pub ok: bool,
    pub error: Option<String>,
}

/// One memory sample: ms since the workload's start, the node's used memory (KiB), live
/// instances.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t_ms: f64,
    pub used_kib: u64,
    pub live: usize,
    /// The Pss of the live instances and their shims, less shared memory (every
    /// [`PLATFORM_EVERY`] ticks), KiB.
    pub platform_kib: Option<u64>,
}

pub struct Outcome {
    pub requests: Vec<Request>,
    pub samples: Vec<Sample>,
    /// The node's used memory before the first arrival (mean of 5 samples), KiB.
    pub baseline_kib: u64,
    /// The resident size of the templates this mode restores from, KiB.
    pub templates_kib: u64,
    /// Until the last instance was deleted.
    pub wall_ms: f64,
}

struct Idle {
    instance: Instance,
    since: Instant,
}

/// The platform's instances during one run.
struct Instances<'a> {
    p: &'a Platform,
    mode: Mode,
    idle: Mutex<HashMap<usize, Vec<Idle>>>,
    live: AtomicUsize,
    /// The init pid of every live instance, by id.
    pids: Mutex<HashMap<String, i32>>,
    /// Connections to containerd, made before the first arrival and reused (a platform
    /// keeps its client connected).
    conns: Mutex<Vec<Conn>>,
}

impl Instances<'_> {
    /// An idle instance of `f`, the most recently used.
    fn take(&self, f: usize) -> Option<Instance> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&f)?.pop().map(|i| i.instance)
    }

    fn release(&self, f: usize, instance: Instance) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(f).or_default().push(Idle {
            instance,
            since: Instant::now(),
        });
    }

    /// The instances idle for longer than `keep_alive` (all of them with `ZERO`), taken out.
    fn expired(&self, keep_alive: Duration) -> Vec<Instance> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for list in idle.values_mut() {
            let (old, young): (Vec<Idle>, Vec<Idle>) = list
                .drain(..)
                .partition(|i| i.since.elapsed() >= keep_alive);
            *list = young;
            out.extend(old.into_iter().map(|i| i.instance));
        }
        out
    }

    fn conn(&self) -> Result<Conn, String> {
        let pooled = self.conns.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.map_or_else(|| Conn::new(&self.p.namespace), Ok)
    }

    fn give_back(&self, conn: Conn) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    fn remove(&self, conn: &Conn, id: &str) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.p.remove(conn, id, self.mode);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// One request: a warm instance or a cold start, the request forwarded and checked.
    fn serve(&self, a: &Arrival, arrived: Instant) -> Request {
        let warm = self.take(a.function);
        let cold = warm.is_none();
        let mut conn = None;
        let result = (|| {
            let instance = match warm {
                Some(i) => i,
                None => {
                    let c = conn.insert(self.conn()?);
                    let f = &self.p.functions[a.function].name;
                    let id = self.p.new_id(&format!("w-{f}-{}", self.mode.letter()));
                    self.live.fetch_add(1, Ordering::SeqCst);
                    match self.p.start(c, a.function, self.mode, &id) {
                        Ok(s) => {
                            self.pids
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id, s.instance.pid);
                            s.instance
                        }
                        Err(e) => {
                            self.remove(c, &id);
                            return Err(e);
                        }
                    }
                }
            };
            match self.p.forward(a.function, a.check, &instance, self.mode) {
                Ok(()) => {
                    self.release(a.function, instance);
                    Ok(())
                }
                Err(e) => {
                    // A broken instance is not reused.
                    let c = match conn.as_ref() {
                        Some(c) => c,
                        None => conn.insert(self.conn()?),
                    };
                    self.remove(c, &instance.id);
                    Err(e)
                }
            }
        })();
        let latency_ms = ms(arrived.elapsed());
        if let Some(c) = conn {
            self.give_back(c);
        }
        Request {
            at_ms: a.at_ms,
            function: a.function,
            cold,
            latency_ms,
            ok: result.is_ok(),
            error: result.err(),
        }
    }
}

/// Runs `arrivals` through the platform in `mode`.
pub fn run(
    p: &Platform,
    mode: Mode,
    arrivals: &[Arrival],
    keep_alive: Duration,
) -> Result<Outcome, String> {
    let instances = Instances {
        p,
        mode,
        idle: Mutex::new(HashMap::new()),
        live: AtomicUsize::new(0),
        pids: Mutex::new(HashMap::new()),
        conns: Mutex::new(Vec::new()),
    };
    let max_burst = arrivals
        .iter()
        .fold(HashMap::<u64, usize>::new(), |mut m, a| {
            *m.entry(a.at_ms.to_bits()).or_default() += 1;
            m
        })
        .into_values()
        .max()
        .unwrap_or(1);
    for _ in 0..max_burst.clamp(4, 32) {
        instances.give_back(Conn::new(&p.namespace)?);
    }
    let baseline_kib = {
        let mut sum = 0;
        for _ in 0..5 {
            sum += mem_used_kib();
            std::thread::sleep(TICK);
        }
        sum / 5
    };
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let mut requests: Vec<Request> = Vec::with_capacity(arrivals.len());
    let mut samples = Vec::new();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut out = Vec::new();
            let mut tick = 0;
            while !done.load(Ordering::SeqCst) {
                let t_ms = ms(start.elapsed());
                let used_kib = mem_used_kib();
                let live = instances.live.load(Ordering::SeqCst);
                let platform_kib = (tick % PLATFORM_EVERY == 0).then(|| {
                    let pids: Vec<i32> = instances
                        .pids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .copied()
                        .collect();
                    instances_kib(pids)
                });
                out.push(Sample {
                    t_ms,
                    used_kib,
                    live,
                    platform_kib,
                });
                tick += 1;
                // Keep the 100 ms rhythm whatever reading the instances took.
                let next = start + TICK.mul_f64(tick as f64);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            out
        });
        let reaper = s.spawn(|| {
            let conn = Conn::new(&p.namespace);
            while !done.load(Ordering::SeqCst) {
                if let Ok(conn) = &conn {
                    for i in instances.expired(keep_alive) {
                        instances.remove(conn, &i.id);
                    }
                }
                std::thread::sleep(TICK);
            }
        });
        let mut handles = Vec::with_capacity(arrivals.len());
        for a in arrivals {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            let due = start + Duration::from_secs_f64(a.at_ms / 1e3);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let instances = &instances;
            handles.push(s.spawn(move || instances.serve(a, due)));
        }
        for h in handles {
            match h.join() {
                Ok(r) => requests.push(r),
                Err(_) => requests.push(Request {
                    at_ms: 0.0,
                    function: 0,
                    cold: false,
                    latency_ms: 0.0,
                    ok: false,
                    error: Some("a request thread panicked".into()),
                }),
            }
        }
        // The tail: sampled until the reaper has deleted every instance (the keep-alive
        // after each one's last request), at most the keep-alive and 10 s more.
        let tail = Instant::now();
        while instances.live.load(Ordering::SeqCst) > 0
            && tail.elapsed() < keep_alive + Duration::from_secs(10)
            && !STOP.load(Ordering::SeqCst)
        {
            std::thread::sleep(TICK);
        }
        done.store(true, Ordering::SeqCst);
        samples = sampler.join().unwrap_or_default();
        let _ = reaper.join();
    });
    let wall_ms = ms(start.elapsed());
    // What is left, removed (not sampled).
    let conn = Conn::new(&p.namespace)?;
    for i in instances.expired(Duration::ZERO) {
        instances.remove(&conn, &i.id);
    }
    Ok(Outcome {
        requests,
        samples,
        baseline_kib,
        templates_kib: p.templates_kib(mode),
        wall_ms,
    })
}

/// The workload memory of a sample: the node's used memory above the baseline, plus the
/// mode's templates (resident in the pool all along, so inside the baseline), KiB.
pub fn workload_kib(o: &Outcome, s: &Sample) -> u64 {
    s.used_kib.saturating_sub(o.baseline_kib) + o.templates_kib
}

/// The platform's memory of a sample, if it has one: the instances' memory plus the mode's
/// templates, KiB.
pub fn platform_kib(o: &Outcome, s: &Sample) -> Option<u64> {
    s.platform_kib.map(|k| k + o.templates_kib)
}

/// The summary of one run (and its samples and requests) as JSON.
pub fn summary(o: &Outcome, names: &[String]) -> Value {
    let mut lat: Vec<f64> = o
        .requests
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.latency_ms)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let mut cold_lat: Vec<f64> = o
        .requests
        .iter()
        .filter(|r| r.ok && r.cold)
        .map(|r| r.latency_ms)
        .collect();
    let q = |v: &[f64], p: f64| (!v.is_empty()).then(|| trenv_integration::bench::percentile(v, p));
    let mem: Vec<u64> = o.samples.iter().map(|s| workload_kib(o, s)).collect();
    let peak = mem.iter().copied().max().unwrap_or(0);
    let mean = if mem.is_empty() {
        0
    } else {
        mem.iter().sum::<u64>() / mem.len() as u64
    };
    let platform: Vec<u64> = o
        .samples
        .iter()
        .filter_map(|s| platform_kib(o, s))
        .collect();
    let errors: Vec<&Request> = o.requests.iter().filter(|r| !r.ok).collect();
    json!({
        "requests": o.requests.len(),
        "errors": errors.len(),
        "first_error": errors.first().and_then(|r| r.error.clone()),
        "cold_starts": o.requests.iter().filter(|r| r.cold).count(),
        "e2e_ms": {
            "p50": q(&lat, 50.0),
            "p99": q(&lat, 99.0),
            "p999": q(&lat, 99.9),
            "max": lat.last(),
            "mean": (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64),
        },
        "cold_e2e_ms": super::stats(&mut cold_lat),
        "memory_kib": {
            "peak": peak,
            "mean": mean,
            "baseline_used": o.baseline_kib,
            "templates": o.templates_kib,
            "peak_used": o.samples.iter().map(|s| s.used_kib).max(),
        },
        "platform_memory_kib": {
            "peak": platform.iter().max(),
            "mean": (!platform.is_empty()).then(|| platform.iter().sum::<u64>() / platform.len() as u64),
        },
        "max_live": o.samples.iter().map(|s| s.live).max(),
        "wall_ms": o.wall_ms,
        "samples": o.samples.iter().map(|s| json!([s.t_ms.round(), s.used_kib, s.live, s.platform_kib])).collect::<Vec<_>>(),
        "per_request": o.requests.iter().map(|r| json!({
            "at_ms": r.at_ms.round(),
            "function": names.get(r.function),
            "cold": r.cold,
            "latency_ms": r.latency_ms,
            "ok": r.ok,
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}

/// A workload's table over the modes, and the (c)/(e) ratios against the targets.
pub fn print(name: &str, w: &Value, modes: &[Mode]) {
    println!(
        "\n### {name}: {}\n",
        w["description"].as_str().unwrap_or("")
    );
    println!(
        "| mode | requests | errors | cold starts | P50 | P99 | P99.9 | node peak MiB | node mean MiB | platform peak MiB | platform mean MiB | max live |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let f1 = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let mib = |v: &Value| v.as_u64().map_or("-".into(), |x| format!("{}", x >> 10));
    for m in modes {
        let r = &w["modes"][m.key()];
        if r.is_null() {
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.name(),
            r["requests"],
            r["errors"],
            r["cold_starts"],
            f1(&r["e2e_ms"]["p50"]),
            f1(&r["e2e_ms"]["p99"]),
            f1(&r["e2e_ms"]["p999"]),
            mib(&r["memory_kib"]["peak"]),
            mib(&r["memory_kib"]["mean"]),
            mib(&r["platform_memory_kib"]["peak"]),
            mib(&r["platform_memory_kib"]["mean"]),
            r["max_live"],
        );
    }
    let (c, e) = (
        &w["modes"][Mode::Copy.key()],
        &w["modes"][Mode::Repurposed.key()],
    );
    if !c.is_null() && !e.is_null() {
        let p99 = ratio(&c["e2e_ms"]["p99"], &e["e2e_ms"]["p99"]);
        let verdict = |met: Option<bool>| match met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "no value",
        };
        println!(
            "\n{name}: (c)/(e) end-to-end P99 {} (target >= 7x: {})",
            p99.map_or("-".into(), |r| format!("{r:.1}x")),
            verdict(p99.map(|r| r >= 7.0)),
        );
        for (what, key) in [
            ("node memory", "memory_kib"),
            ("platform memory", "platform_memory_kib"),
        ] {
            let less = |k: &str| ratio(&e[key][k], &c[key][k]).map(|r| 100.0 * (1.0 - r));
            let pct = |v: Option<f64>| match v {
                Some(x) if x >= 0.0 => format!("{x:.0} % less"),
                Some(x) => format!("{:.0} % more", -x),
                None => "-".into(),
            };
            println!(
                "{name}: {what}: (e) {} than (c) at the peak (target >= 48 % less: {}), {} on average",
                pct(less("peak")),
                verdict(less("peak").map(|x| x >= 48.0)),
                pct(less("mean")),
            );
        }
    }
    if let Some(e) = w["modes"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .find_map(|r| r["first_error"].as_str())
    {
        println!("first error: {e}");
    }
}

/// a / b, when both are numbers and b is positive.
fn ratio(a: &Value, b: &Value) -> Option<f64> {
    let (a, b) = (a.as_f64()?, b.as_f64()?);
    (b > 0.0).then(|| a / b)
}
