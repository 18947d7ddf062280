//! The real functions through a small function platform (issue 17; docs/benchmarks.md,
//! "Real functions"): the functions of integration/functions/ started in five modes —
//! (a) runc.v2 cold with CNI per container, (c) vanilla CRIU restore (a `copy` template) in
//! a fresh sandbox, (d) trenv template restore (`map`) in a fresh sandbox, (e) trenv
//! template restore into a sandbox repurposed from another function, (f) an instance the
//! tenant's shared shim restored ahead (its reserve, issue 18) — all on the CNI network
//! `trenv-fn`, requests forwarded over the bridge as a platform forwards them.
//!
//! Run it through `integration/bench/functions.sh`.
//!
//! 1. Templates: per function, a `copy` and a `map` template, made by the shim from source
//!    containers annotated `io.trenv.template.create` once the function is ready
//!    (/tmp/.lock); removed at the end.
//! 2. **Starts** (starts.rs), `--runs` rounds, modes interleaved: Create to running and
//!    Create to first response through containerd's API, per function and mode.
//! 3. **Memory of ten instances** (memory.rs) in modes (c) and (e).
//! 4. **Workloads** (workload.rs, arrivals.rs): W1, W2 and a trace shaped like the Azure
//!    Functions 2019 dataset, each once per mode with the same seeded arrivals; per request
//!    the end-to-end latency and whether it was a cold start; the node's memory over time
//!    (plot.rs: an SVG per workload in `--out`).
//!
//! Instances are container records copied from a model container per function and mode
//! (containers.rs), so that no `ctr` process runs in a measured path. Everything of a run
//! (containers, runc CNI attachments, templates, idle sandboxes of the namespace, leases)
//! is removed at the end and on SIGINT/SIGTERM.
//!
//! A benchmark, not a test: it exits 0 whether or not the targets ((e) end-to-end P99 at
//! least 7× lower than (c); (e) memory at least 48 % lower) are met.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trenv_integration::bench::{containerd_version, loadavg, percentile, remove_with_prefix};
use trenv_integration::function::{self, Function};
use trenv_integration::{BUSYBOX, Ctr};

mod arrivals;
mod containers;
mod memory;
mod platform;
mod plot;
mod starts;
mod workload;

use platform::{Mode, Platform, trenv_cli};

/// Every id of the benchmark starts with it (`fnb-<pid>-…` for one run).
const ID_PREFIX: &str = "fnb";
const USAGE: &str = "usage: bench-functions [--functions a,b (all)] [--modes a,c,d,e,f (all)] \
     [--runs N (30)] [--instances N (10)] [--skip-starts] [--skip-memory] \
     [--workloads w1,w2,trace (all; none)] [--max N (10)] [--keep-alive S (10)] \
     [--bursts N (8)] [--burst-gap S (6)] [--trace-minutes N (30)] [--minute-secs S (4)] \
     [--trace-per-minute N (8)] [--trace-csv FILE] [--seed N (1)] \
     [--warmup N (0)] [--namespace NS (trenv-bench-fn)] \
     [--out DIR (/tmp/trenv-bench-functions)] [--json]";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Options {
    functions: Option<Vec<String>>,
    modes: Vec<Mode>,
    runs: usize,
    instances: usize,
    starts: bool,
    memory: bool,
    workloads: Vec<String>,
    max: usize,
    keep_alive_s: f64,
    bursts: usize,
    gap_s: f64,
    trace_minutes: usize,
    minute_secs: f64,
    trace_per_minute: f64,
    trace_csv: Option<PathBuf>,
    seed: u64,
    /// Warm-up requests each template's source serves before the template is taken.
    warmup: u32,
    namespace: String,
    out: PathBuf,
    json: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        functions: None,
        modes: Mode::ALL.to_vec(),
        runs: 30,
        instances: 10,
        starts: true,
        memory: true,
        workloads: vec!["w1".into(), "w2".into(), "trace".into()],
        max: 10,
        keep_alive_s: 10.0,
        bursts: 8,
        gap_s: 6.0,
        trace_minutes: 30,
        minute_secs: 4.0,
        trace_per_minute: 8.0,
        trace_csv: None,
        seed: 1,
        warmup: 0,
        namespace: "trenv-bench-fn".into(),
        out: PathBuf::from("/tmp/trenv-bench-functions"),
        json: false,
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{name}: {e}"))
        }
        match a.as_str() {
            "--functions" => o.functions = Some(list(value()?)),
            "--modes" => {
                o.modes = list(value()?)
                    .iter()
                    .map(|m| {
                        Mode::from_letter(m)
                            .ok_or(format!("--modes: {m} is not one of a, c, d, e, f"))
                    })
                    .collect::<Result<_, _>>()?;
                o.modes.sort_by_key(|m| m.letter());
                o.modes.dedup();
            }
            "--runs" => o.runs = num("--runs", value()?)?,
            "--instances" => o.instances = num("--instances", value()?)?,
            "--skip-starts" => o.starts = false,
            "--skip-memory" => o.memory = false,
            "--workloads" => {
                o.workloads = list(value()?).into_iter().filter(|w| w != "none").collect();
                if let Some(w) = o
                    .workloads
                    .iter()
                    .find(|w| !["w1", "w2", "trace"].contains(&w.as_str()))
                {
                    return Err(format!(
                        "--workloads: {w} is not one of w1, w2, trace, none"
                    ));
                }
            }
            "--max" => o.max = num::<usize>("--max", value()?)?.max(1),
            "--keep-alive" => o.keep_alive_s = num("--keep-alive", value()?)?,
            "--bursts" => o.bursts = num("--bursts", value()?)?,
            "--burst-gap" => o.gap_s = num("--burst-gap", value()?)?,
            "--trace-minutes" => o.trace_minutes = num("--trace-minutes", value()?)?,
            "--minute-secs" => o.minute_secs = num("--minute-secs", value()?)?,
            "--trace-per-minute" => o.trace_per_minute = num("--trace-per-minute", value()?)?,
            "--trace-csv" => o.trace_csv = Some(PathBuf::from(value()?)),
            "--seed" => o.seed = num("--seed", value()?)?,
            "--warmup" => o.warmup = num("--warmup", value()?)?,
            "--namespace" => o.namespace = value()?,
            "--out" => o.out = PathBuf::from(value()?),
            "--json" => o.json = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// Removes what a run made, however it ends.
struct Cleanup {
    ctr: Ctr,
    prefix: String,
    namespace: String,
    /// Template names asked for (made or not).
    templates: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_with_prefix(&self.ctr, &self.prefix);
        if let Ok(cni) = function::cni()
            && let Some(dir) = function::runc_netns_dir("x").parent()
            && let Ok(entries) = fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if id.starts_with(&self.prefix) {
                    let _ = cni.detach(
                        &trenv_runtime::sandbox::network::NetTarget::at(&e.path()),
                        &id,
                    );
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = trenv_cli()
            .args(["pool", "drain", "--tenant", &self.namespace])
            .output();
        for t in &self.templates {
            let _ = trenv_cli()
                .args(["template", "rm", t, "-n", &self.namespace])
                .output();
        }
        if let Ok(conn) = containers::Conn::new(&self.namespace) {
            conn.drop_leases(&self.prefix);
        }
    }
}

/// Statistics of samples (sorted in place): n, min, P50, P99, max, mean.
pub fn stats(v: &mut [f64]) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return Value::Null;
    }
    json!({
        "n": v.len(),
        "min": v[0],
        "p50": percentile(v, 50.0),
        "p99": percentile(v, 99.0),
        "max": v[v.len() - 1],
        "mean": v.iter().sum::<f64>() / v.len() as f64,
    })
}

/// The node's used memory, MemTotal − MemAvailable, KiB.
pub fn mem_used_kib() -> u64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    get("MemTotal:").saturating_sub(get("MemAvailable:"))
}

/// The functions asked for, checked against integration/functions/ and the images built.
fn select_functions(o: &Options) -> Result<Vec<Function>, String> {
    if !function::dir().is_dir() {
        return Err(format!(
            "{} does not exist: no functions to run",
            function::dir().display()
        ));
    }
    let all = function::all();
    let chosen: Vec<Function> = match &o.functions {
        None => all,
        Some(names) => names
            .iter()
            .map(|n| {
                all.iter().find(|f| &f.name == n).cloned().ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
                    format!(
                        "--functions: no function {n} (there are {})",
                        known.join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if chosen.is_empty() {
        return Err("no functions to run".into());
    }
    Ok(chosen)
}

/// Removes what an earlier, killed run left in the namespace: containers, templates, idle
/// sandboxes, leases.
fn remove_leftovers(ctr: &Ctr, namespace: &str) {
    remove_with_prefix(ctr, &format!("{ID_PREFIX}-"));
    if let Ok(out) = trenv_cli()
        .args(["template", "list", "-n", namespace, "--json"])
        .output()
        && let Ok(list) = serde_json::from_slice::<Value>(&out.stdout)
    {
        for t in list.as_array().into_iter().flatten() {
            if let Some(name) = t["name"].as_str().filter(|n| n.starts_with(ID_PREFIX)) {
                eprintln!("[bench] removing template {name} of an earlier run");
                let _ = trenv_cli()
                    .args(["template", "rm", name, "-n", namespace])
                    .output();
            }
        }
    }
    let _ = trenv_cli()
        .args(["pool", "drain", "--tenant", namespace])
        .output();
    if let Ok(conn) = containers::Conn::new(namespace) {
        conn.drop_leases(&format!("{ID_PREFIX}-"));
    }
}

fn run(o: &Options) -> Result<Value, String> {
    let ctr = trenv_integration::bench::connect(
        "bench-functions",
        "integration/bench/functions.sh",
        &o.namespace,
    );
    let functions = select_functions(o)?;
    remove_leftovers(&ctr, &o.namespace);
    let default = ctr.with_namespace("default");
    for image in functions.iter().map(|f| f.image.as_str()).chain([BUSYBOX]) {
        if default.image_digest(image).is_none() {
            return Err(format!(
                "image {image} is not in containerd's default namespace: build it with \
                 integration/scripts/build-images.sh import 2"
            ));
        }
        // Copied again if it was rebuilt since.
        ctr.ensure_image(image);
    }
    let prefix = format!("{ID_PREFIX}-{}", std::process::id());
    let _cleanup = Cleanup {
        ctr: ctr.clone(),
        prefix: format!("{prefix}-"),
        namespace: o.namespace.clone(),
        templates: functions
            .iter()
            .flat_map(|f| ["copy", "map"].map(|k| format!("{prefix}-{}-{k}", f.name)))
            .collect(),
    };
    fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;

    let began = Instant::now();
    let mut p = Platform::new(ctr.clone(), &o.namespace, &prefix, functions)?;
    p.warmup = o.warmup;
    let mut report = json!({
        "warmup_requests": o.warmup,
        "containerd": containerd_version(&ctr),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_before": loadavg(),
        "namespace": o.namespace,
        "functions": p.functions.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "modes": o.modes.iter().map(|m| m.key()).collect::<Vec<_>>(),
    });
    let restores = o.modes.iter().any(|m| m.restores()) || o.memory;
    if restores {
        let problems = p.make_templates();
        report["template_problems"] = json!(problems);
    }
    if STOP.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    report["templates"] = Value::Object(
        p.functions
            .iter()
            .zip(&p.templates)
            .filter_map(|(f, t)| {
                let t = t.as_ref()?;
                Some((
                    f.name.clone(),
                    json!({
                        "copy_pool_kib": t.copy_pool_kib,
                        "map_pool_kib": t.map_pool_kib,
                        "conversion": t.conversion,
                    }),
                ))
            })
            .collect(),
    );
    let conn = containers::Conn::new(&o.namespace)?;
    let mut model_modes = o.modes.clone();
    if o.memory && o.instances > 0 {
        model_modes.extend([Mode::Copy, Mode::Repurposed]);
        model_modes.sort_by_key(|m| m.letter());
        model_modes.dedup();
    }
    p.make_models(&conn, &model_modes)?;

    report["phase_secs"] = json!({"templates": began.elapsed().as_secs_f64().round()});
    let timed = |report: &mut Value, key: &str, phase: &dyn Fn() -> Result<Value, String>| {
        let t = Instant::now();
        report[key] = phase()?;
        report["phase_secs"][key] = json!(t.elapsed().as_secs_f64().round());
        Ok::<(), String>(())
    };
    if o.starts && o.runs > 0 {
        timed(&mut report, "starts", &|| starts::run(&p, &o.modes, o.runs))?;
    }
    if o.memory && o.instances > 0 {
        timed(&mut report, "memory", &|| memory::run(&p, o.instances))?;
    }
    if !o.workloads.is_empty() {
        timed(&mut report, "workloads", &|| workloads(&p, o))?;
    }
    report["loadavg_after"] = json!(loadavg());
    let path = o.out.join("report.json");
    fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(report)
}

/// Every workload asked for, once per mode, with the same arrivals; the charts.
fn workloads(p: &Platform, o: &Options) -> Result<Value, String> {
    // The functions every mode can start.
    let usable: Vec<usize> = (0..p.functions.len())
        .filter(|&f| o.modes.iter().all(|&m| p.can(f, m)))
        .collect();
    if usable.is_empty() {
        return Err("no function can start in every mode asked for".into());
    }
    let names: Vec<String> = usable
        .iter()
        .map(|&f| p.functions[f].name.clone())
        .collect();
    let checks: Vec<usize> = usable
        .iter()
        .map(|&f| p.functions[f].checks.len())
        .collect();
    let keep_alive = Duration::from_secs_f64(o.keep_alive_s);
    let mut out = serde_json::Map::new();
    for (w, name) in o.workloads.iter().enumerate() {
        let seed = arrivals::seed_for(o.seed, name);
        let (mut list, description) = match name.as_str() {
            "w1" => (
                arrivals::bursts(seed, &checks, o.bursts, o.max, o.gap_s, false),
                format!(
                    "{} bursts of N({}, {:.1}) concurrent requests over the functions, gaps \
                     uniform in [{:.1}, {:.1}] s",
                    o.bursts,
                    o.max,
                    0.1 * o.max as f64,
                    0.5 * o.gap_s,
                    1.5 * o.gap_s
                ),
            ),
            "w2" => (
                arrivals::bursts(seed, &checks, o.bursts, o.max, o.gap_s, true),
                format!(
                    "{} bursts of {} concurrent requests over the functions, every {:.1} s",
                    o.bursts, o.max, o.gap_s
                ),
            ),
            _ => {
                let (rows, source) = match &o.trace_csv {
                    Some(file) => {
                        let text = fs::read_to_string(file)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                        (
                            arrivals::from_csv(&text, &names, o.trace_minutes)?,
                            format!("from {}", file.display()),
                        )
                    }
                    None => (
                        arrivals::synthesise(seed, &names, o.trace_minutes, o.trace_per_minute),
                        format!(
                            "synthesised in the Azure Functions 2019 form, {} invocations a \
                             minute on average, seed {}",
                            o.trace_per_minute, o.seed
                        ),
                    ),
                };
                let csv = o.out.join("trace-invocations.csv");
                fs::write(&csv, arrivals::to_csv(&rows))
                    .map_err(|e| format!("{}: {e}", csv.display()))?;
                (
                    arrivals::from_trace(seed, &rows, &checks, o.minute_secs),
                    format!(
                        "{} minutes of per-minute counts ({source}), a minute compressed to \
                         {} s",
                        o.trace_minutes, o.minute_secs
                    ),
                )
            }
        };
        for a in &mut list {
            a.function = usable[a.function];
        }
        let order: Vec<Mode> = if w % 2 == 0 {
            o.modes.clone()
        } else {
            o.modes.iter().rev().copied().collect()
        };
        eprintln!(
            "[bench] workload {name}: {} requests over {:.0} s, modes {}",
            list.len(),
            list.last().map_or(0.0, |a| a.at_ms / 1e3),
            order
                .iter()
                .map(|m| m.letter().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut by_mode = serde_json::Map::new();
        let mut lines = Vec::new();
        for mode in order {
            if STOP.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            if matches!(mode, Mode::Repurposed | Mode::Reserve) {
                let conn = containers::Conn::new(&p.namespace)?;
                p.prewarm_sandboxes(&conn, o.max)?;
            }
            // Let the previous run's shims exit and their memory go.
            std::thread::sleep(Duration::from_secs(3));
            let outcome = workload::run(p, mode, &list, keep_alive)?;
            let all_names: Vec<String> = p.functions.iter().map(|f| f.name.clone()).collect();
            let s = workload::summary(&outcome, &all_names);
            eprintln!(
                "[bench] {name} ({}): {} requests, {} cold, {} errors, P99 {:.1} ms, peak {} MiB",
                mode.letter(),
                s["requests"],
                s["cold_starts"],
                s["errors"],
                s["e2e_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
                s["memory_kib"]["peak"].as_u64().unwrap_or(0) >> 10
            );
            let t = |x: &workload::Sample| x.t_ms / 1e3;
            lines.push(plot::Line {
                label: mode.name().to_string(),
                node: outcome
                    .samples
                    .iter()
                    .map(|x| (t(x), workload::workload_kib(&outcome, x) as f64 / 1024.0))
                    .collect(),
                platform: outcome
                    .samples
                    .iter()
                    .filter_map(|x| {
                        Some((t(x), workload::platform_kib(&outcome, x)? as f64 / 1024.0))
                    })
                    .collect(),
                live: outcome
                    .samples
                    .iter()
                    .map(|x| (t(x), x.live as f64))
                    .collect(),
            });
            by_mode.insert(mode.key().into(), s);
        }
        lines.sort_by_key(|l| l.label.clone());
        let svg = o.out.join(format!("{name}-memory.svg"));
        let chart = plot::memory_over_time(
            &svg,
            &format!("{name}: memory during the workload, by mode"),
            &lines,
        )
        .map(|()| svg.display().to_string());
        if let Err(e) = &chart {
            eprintln!("[bench] no chart for {name}: {e}");
        }
        out.insert(
            name.clone(),
            json!({
                "description": description,
                "arrivals": list.len(),
                "seed": seed,
                "keep_alive_s": o.keep_alive_s,
                "chart": chart.ok(),
                "modes": by_mode,
            }),
        );
    }
    Ok(Value::Object(out))
}

fn print_report(r: &Value, o: &Options) {
    println!("# Real functions through a function platform");
    println!(
        "containerd {}, {} CPU(s), namespace {}, load {} -> {}",
        r["containerd"], r["cpus"], r["namespace"], r["loadavg_before"], r["loadavg_after"]
    );
    println!(
        "functions: {}",
        r["functions"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    for m in &o.modes {
        println!("  {}", m.name());
    }
    if let Some(t) = r["templates"].as_object() {
        for (name, v) in t {
            println!(
                "template of {name}: map {} MiB in the pool ({} MiB still copied at restore)",
                v["map_pool_kib"].as_u64().unwrap_or(0) >> 10,
                v["conversion"]["map"]["bytes_copied"].as_u64().unwrap_or(0) >> 20
            );
        }
    }
    for p in r["template_problems"].as_array().into_iter().flatten() {
        println!("no templates: {}", p.as_str().unwrap_or(""));
    }
    if let Some(s) = r.get("starts") {
        starts::print(s, &o.modes);
    }
    if let Some(m) = r.get("memory") {
        memory::print(m);
    }
    if let Some(w) = r["workloads"].as_object() {
        println!(
            "\n## Workloads (end-to-end ms from arrival to answer; memory: the node's used memory \
             above its level before the workload, plus the mode's templates in the pool; \
             keep-alive {} s)",
            o.keep_alive_s
        );
        for name in &o.workloads {
            let Some(v) = w.get(name) else { continue };
            workload::print(name, v, &o.modes);
            if let Some(c) = v["chart"].as_str() {
                println!("chart: {c}");
            }
        }
    }
    let parts: Vec<String> = ["templates", "starts", "memory", "workloads"]
        .iter()
        .filter_map(|k| Some(format!("{k} {} s", r["phase_secs"].get(*k)?)))
        .collect();
    println!("\ntime taken: {}", parts.join(", "));
    println!("report: {}", o.out.join("report.json").display());
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-functions: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    match run(&o) {
        Ok(r) if o.json => println!("{r}"),
        Ok(r) => print_report(&r, &o),
        Err(e) => {
            eprintln!("bench-functions: {e}");
            std::process::exit(1);
        }
    }
}
