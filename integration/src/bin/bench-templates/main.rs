//! Start latency and memory of the Python function (docs/benchmarks.md, "Templates"):
//! cold starts on runc and trenv against restores from a copy template (vanilla CRIU
//! restore: every page copied) and a mapped template (trenv: memory mapped from the pool).
//!
//! Run it through `integration/bench/templates.sh`.
//!
//! 1. A source container runs the function (`FN_STATE_MB`, 200 by default) on trenv; once
//!    ready, `trenv template create` makes two templates of it: `--copy` (nothing mapped;
//!    the restore is CRIU's own page-copying restore) and the default (anonymous memory
//!    mapped copy-on-write from the pool file).
//! 2. **Latency**, `--runs` rounds, the four modes interleaved ABCD/DCBA. Each start first
//!    creates the container (`ctr containers create`, timed separately: "+container"),
//!    then times Create to ready through containerd ("e2e"): a cold start (`ctr task
//!    start`, stdout piped) until its `ready` line; a restore (`ctr task start -d` of a
//!    container annotated `io.trenv.template=…`) until `ctr` returns, the task running with
//!    its initialised state. Each restore is also timed through containerd's gRPC API, as
//!    faasd or nerdctl start a task with containerd's client library (Containers.Get,
//!    Snapshots.Mounts, Tasks.Create, Tasks.Start; no `ctr` process, whose start-up and
//!    stdio FIFOs are part of the `ctr` time). In the shim: Create + Start as the shim logs them
//!    ("started ID …"); for a cold start that excludes the function's initialisation
//!    after Start.
//! 3. **Concurrent starts** (`--concurrent N`, 10 by default, `--concurrent-rounds R`, 3):
//!    N starts at once through containerd's API, runc.v2 cold against the template restore
//!    in fresh and in repurposed sandboxes, and N instances taken from a shared shim's
//!    reserve of N (concurrent.rs).
//! 4. **Burst** (`--burst N`, off by default; issue 15 asks for 50 across 5 functions):
//!    N starts at once with CNI networking, runc.v2 cold with CNI per container against
//!    restores into repurposed sandboxes that keep their network (burst.rs).
//! 5. **Memory**, per template kind: `--instances` instances restored and running at once,
//!    each having read all its state (SIGUSR1: checksum over everything); reported as the
//!    sum of their Pss, the sum of their cgroups' memory usage, the pool file, and the
//!    machine's used memory (MemTotal − MemAvailable) before and after.
//!
//! `--shim-shared` puts the latency phase's trenv containers into their tenant's shared
//! shim (`io.trenv.shim=shared`): compare a run with it to one without.
//!
//! A benchmark, not a test: it exits 0 whether or not the targets (template restore ≥ 3×
//! faster than the copy restore at P50; 10 instances ≤ 35 % of the copy restore's memory)
//! are met.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trenv_integration::api::Containerd;
use trenv_integration::bench::{containerd_version, loadavg, percentile, remove_with_prefix};
use trenv_integration::cri::{self, Cri};
use trenv_integration::pyfn::{LOG_ENV, field, log_lines, signal_state, wait_line};
use trenv_integration::{BUSYBOX, Ctr, PYFN, RUNTIME};

const RUNC: &str = "io.containerd.runc.v2";
const ID_PREFIX: &str = "tbench";
const USAGE: &str = "usage: bench-templates [--runs N (30)] [--instances N (10)] [--mb N (200)] \
                     [--namespace NS (trenv-bench)] [--skip-latency] [--skip-memory] [--skip-cri] \
                     [--concurrent N (10; 0 skips)] [--concurrent-rounds N (3)] \
                     [--burst N (0: skipped; 50 for issue 15)] [--burst-functions N (5)] \
                     [--burst-rounds N (3)] [--shim-shared] \
                     [--request checksum|touch (checksum)] [--json]";

mod burst;
mod concurrent;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Options {
    runs: usize,
    instances: usize,
    mb: u32,
    namespace: String,
    latency: bool,
    memory: bool,
    cri: bool,
    concurrent: usize,
    concurrent_rounds: usize,
    burst: usize,
    burst_functions: usize,
    burst_rounds: usize,
    json: bool,
    request: Request,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        runs: 30,
        instances: 10,
        mb: 200,
        namespace: "trenv-bench".into(),
        latency: true,
        memory: true,
        cri: true,
        concurrent: 10,
        concurrent_rounds: 3,
        burst: 0,
        burst_functions: 5,
        burst_rounds: 3,
        json: false,
        request: Request::Checksum,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--runs" => {
                o.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--instances" => {
                o.instances = value("--instances")?
                    .parse()
                    .map_err(|e| format!("--instances: {e}"))?
            }
            "--concurrent" => {
                o.concurrent = value("--concurrent")?
                    .parse()
                    .map_err(|e| format!("--concurrent: {e}"))?
            }
            "--concurrent-rounds" => {
                o.concurrent_rounds = value("--concurrent-rounds")?
                    .parse()
                    .map_err(|e| format!("--concurrent-rounds: {e}"))?
            }
            "--burst" => {
                o.burst = value("--burst")?
                    .parse()
                    .map_err(|e| format!("--burst: {e}"))?
            }
            "--burst-functions" => {
                o.burst_functions = value("--burst-functions")?
                    .parse()
                    .map_err(|e| format!("--burst-functions: {e}"))?
            }
            "--burst-rounds" => {
                o.burst_rounds = value("--burst-rounds")?
                    .parse()
                    .map_err(|e| format!("--burst-rounds: {e}"))?
            }
            "--mb" => o.mb = value("--mb")?.parse().map_err(|e| format!("--mb: {e}"))?,
            "--namespace" => o.namespace = value("--namespace")?,
            "--skip-latency" => o.latency = false,
            "--skip-memory" => o.memory = false,
            "--skip-cri" => o.cri = false,
            "--json" => o.json = true,
            "--shim-shared" => SHIM_SHARED.store(true, Ordering::SeqCst),
            "--request" => {
                o.request = match value("--request")?.as_str() {
                    "checksum" => Request::Checksum,
                    "touch" => Request::Touch,
                    other => return Err(format!("--request {other}: use checksum or touch")),
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    ColdRunc,
    ColdTrenv,
    CopyRestore,
    MapRestore,
    RepurposedRestore,
    Reserve,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::ColdRunc,
        Mode::ColdTrenv,
        Mode::CopyRestore,
        Mode::MapRestore,
        Mode::RepurposedRestore,
        Mode::Reserve,
    ];
    /// The restores, in the order of the API tables.
    const RESTORES: [Mode; 4] = [
        Mode::CopyRestore,
        Mode::MapRestore,
        Mode::RepurposedRestore,
        Mode::Reserve,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::ColdRunc => "(a) cold start, runc.v2",
            Mode::ColdTrenv => "(b) cold start, trenv (fresh namespaces)",
            Mode::CopyRestore => "(c) vanilla CRIU restore (copy, fresh namespaces)",
            Mode::MapRestore => "(d) trenv template restore (map, fresh namespaces)",
            Mode::RepurposedRestore => {
                "(e) trenv template restore (map) into a repurposed sandbox that last ran \
                 another function"
            }
            Mode::Reserve => {
                "(f) trenv template restore (map) taken from a shared shim's reserve (restored \
                 ahead)"
            }
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::ColdRunc => "cold_runc",
            Mode::ColdTrenv => "cold_trenv",
            Mode::CopyRestore => "copy_restore",
            Mode::MapRestore => "map_restore",
            Mode::RepurposedRestore => "repurposed_restore",
            Mode::Reserve => "reserve",
        }
    }
}

/// Keeps a container out of sandbox repurposing: (b)-(d) start in namespaces of their own.
const FRESH: [&str; 2] = ["--annotation", "io.trenv.repurpose=false"];
/// Asks for a pooled sandbox: (e).
const REPURPOSED: [&str; 2] = ["--annotation", "io.trenv.repurpose=true"];
/// (f): a pooled sandbox, the tenant's shared shim, and a memory limit (the reserve is for
/// containers whose writable layer is in memory, which a limit bounds).
const RESERVE: [&str; 6] = [
    "--annotation",
    "io.trenv.repurpose=true",
    "--annotation",
    "io.trenv.shim=shared",
    "--memory-limit",
    "2147483648",
];

/// `--shim-shared`: the latency phase's trenv containers share their tenant's shim
/// (shim/src/shared.rs), which lingers between starts: no shim process spawned per start.
static SHIM_SHARED: AtomicBool = AtomicBool::new(false);

/// The flags of [`SHIM_SHARED`] (none without it).
fn shim_flags() -> &'static [&'static str] {
    if SHIM_SHARED.load(Ordering::SeqCst) {
        &["--annotation", "io.trenv.shim=shared"]
    } else {
        &[]
    }
}

/// Leaves the bench namespace's pool with one idle sandbox, last used by another function
/// (busybox), for the next (e) start: the pool of the tenant drained, then a busybox
/// container run and deleted in a new sandbox. Not timed.
fn prepare_repurposed(ctr: &Ctr, id: &str) -> Result<(), String> {
    let drained = trenv_cli()
        .args(["pool", "drain", "--tenant", &ctr.namespace])
        .output()
        .map_err(|e| format!("running trenv pool drain: {e}"))?;
    if !drained.status.success() {
        return Err(format!(
            "trenv pool drain: {}",
            String::from_utf8_lossy(&drained.stderr).trim()
        ));
    }
    let mut args = vec![
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.trenv.function=other",
        REPURPOSED[0],
        REPURPOSED[1],
    ];
    args.extend(shim_flags());
    args.extend([BUSYBOX, id, "true"]);
    let r = ctr.run(&args);
    if r.code != 0 {
        return Err(format!("the other function {id}: {}", r.stderr.trim()));
    }
    Ok(())
}

fn trenv_cli() -> Command {
    Command::new(std::env::var("TRENV_CLI").unwrap_or_else(|_| "trenv".into()))
}

struct Cleanup {
    ctr: Ctr,
    prefix: String,
    templates: Vec<String>,
    /// The templates' tenant (`trenv template rm --tenant`).
    tenant: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_with_prefix(&self.ctr, &self.prefix);
        // The idle sandboxes the bench's containers left (with their networks).
        let _ = trenv_cli()
            .args(["pool", "drain", "--tenant", &self.tenant])
            .output();
        for t in &self.templates {
            let _ = trenv_cli()
                .args(["template", "rm", t, "--tenant", &self.tenant])
                .output();
        }
    }
}

/// `ctr containers create` (the container record and its snapshot), timed.
fn create_container(ctr: &Ctr, id: &str, flags: &[&str]) -> Result<f64, String> {
    let mut a = vec!["containers", "create"];
    a.extend_from_slice(flags);
    a.push(PYFN);
    a.push(id);
    let start = Instant::now();
    let r = ctr.run(&a);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if r.code != 0 {
        return Err(format!("creating container {id}: {}", r.stderr.trim()));
    }
    Ok(ms)
}

/// Cold start of a created container: `ctr task start` attached (Create + Start through
/// containerd), until the function prints `ready`. Returns (container ms, task ms).
fn cold(ctr: &Ctr, runtime: &str, id: &str, mb: u32, extra: &[&str]) -> Result<(f64, f64), String> {
    let state = format!("FN_STATE_MB={mb}");
    let mut flags = vec!["--runtime", runtime, "--env", &state];
    flags.extend(extra);
    let created = create_container(ctr, id, &flags)?;
    let start = Instant::now();
    let mut child = ctr
        .cmd(&["task", "start", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running ctr: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.starts_with("ready ") {
            ready = Some(start.elapsed().as_secs_f64() * 1e3);
            break;
        }
    }
    let _ = ctr.run(&["task", "kill", "-s", "SIGKILL", id]);
    let _ = child.wait();
    ctr.remove(id);
    ready
        .map(|r| (created, r))
        .ok_or_else(|| format!("{id} never printed ready"))
}

/// The source function's environment as `ctr` flags: an instance restored from its
/// template must have the same (trenv refuses a restore whose environment differs).
fn source_env(mb: u32) -> [String; 4] {
    [
        "--env".into(),
        format!("FN_STATE_MB={mb}"),
        "--env".into(),
        LOG_ENV.into(),
    ]
}

/// Restore of a created container: `ctr task start -d` (Create + Start through
/// containerd) until it returns with the task running. Returns (container ms, task ms).
fn restore(ctr: &Ctr, template: &str, id: &str, env: &[String]) -> Result<(f64, f64), String> {
    let annotation = format!("io.trenv.template={template}");
    let mut flags = vec!["--runtime", RUNTIME, "--annotation", &annotation];
    flags.extend(env.iter().map(String::as_str));
    let created = create_container(ctr, id, &flags)?;
    let start = Instant::now();
    let r = ctr.run(&["task", "start", "-d", id]);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if r.code != 0 {
        return Err(format!("restoring {id}: {}", r.stderr.trim()));
    }
    if ctr.task_status(id).as_deref() != Some("RUNNING") {
        return Err(format!("{id} is not running after its restore"));
    }
    Ok((created, ms))
}

/// Restore of a created container through containerd's API, as faasd or any program on
/// containerd's client library starts it (no `ctr` process): the container record, its
/// snapshot's mounts, Tasks.Create, Tasks.Start, until Start returns with the task running.
/// Returns (container ms, task ms).
fn restore_api(
    ctr: &Ctr,
    api: &Containerd,
    template: &str,
    id: &str,
    env: &[String],
) -> Result<(f64, f64), String> {
    let annotation = format!("io.trenv.template={template}");
    let mut flags = vec!["--runtime", RUNTIME, "--annotation", &annotation];
    flags.extend(env.iter().map(String::as_str));
    let created = create_container(ctr, id, &flags)?;
    let start = Instant::now();
    api.start_task(id)
        .map_err(|e| format!("restoring {id} through the API: {e}"))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let status = api.task_status(id)?;
    if status != "RUNNING" {
        return Err(format!("{id} is {status} after its restore, not RUNNING"));
    }
    Ok((created, ms))
}

/// The shim's own Create + Start time for container `id`, from containerd's log.
/// The shim logged that container `id` started from an instance of its reserve (a shared
/// shim's log follows its newest container from its Create's end: the "started" line is
/// the first of the container's that surely reaches containerd).
fn took_instance(log: &PathBuf, id: &str) -> bool {
    let needle = format!("started {id} (");
    fs::read_to_string(log).is_ok_and(|t| {
        t.lines()
            .any(|l| l.contains(&needle) && l.contains("from the reserve"))
    })
}

fn shim_time(log: &PathBuf, id: &str) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let needle = format!("started {id} (");
    let line = text.lines().rev().find(|l| l.contains(&needle))?;
    let num = |key: &str| -> Option<f64> {
        let rest = line.split(key).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    Some(num("create ")? + num("start ")?)
}

fn stats(v: &mut [f64]) -> Value {
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
    })
}

fn mem_used_kib() -> u64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    get("MemTotal:").saturating_sub(get("MemAvailable:"))
}

/// (Pss of the whole process, Pss of the template's pages it maps), in KiB: the pages of
/// `shared_file`'s mappings, or, with the kernel backend, of the VMAs the module attached
/// the template to (`mm` in VmFlags: they name no file). Pages an instance wrote are
/// anonymous copies and stay in its own share.
fn pss_kib(pid: i32, shared_file: Option<&str>) -> (u64, u64) {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    pss_of_smaps(&smaps, shared_file)
}

fn pss_of_smaps(smaps: &str, shared_file: Option<&str>) -> (u64, u64) {
    let kib = |rest: &str| -> u64 {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut total, mut shared) = (0, 0);
    // The VMA being read: its Pss, Anonymous, and whether it is the template's.
    let (mut pss, mut anon, mut template) = (0, 0, false);
    let mut end_vma = |pss: u64, anon: u64, template: bool| {
        total += pss;
        if template {
            shared += pss.saturating_sub(anon);
        }
    };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            end_vma(pss, anon, template);
            (pss, anon) = (0, 0);
            template = shared_file.is_some_and(|f| line.trim_end().ends_with(f));
        } else if let Some(rest) = line.strip_prefix("Pss:") {
            pss = kib(rest);
        } else if let Some(rest) = line.strip_prefix("Anonymous:") {
            anon = kib(rest);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            template |= flags.split_whitespace().any(|f| f == "mm");
        }
    }
    end_vma(pss, anon, template);
    (total, shared)
}

/// Memory charged to a container's cgroup (v1 memory controller or v2), in KiB.
fn cgroup_kib(namespace: &str, id: &str) -> u64 {
    let v1 = PathBuf::from("/sys/fs/cgroup/memory")
        .join(namespace)
        .join(id)
        .join("memory.usage_in_bytes");
    let v2 = PathBuf::from("/sys/fs/cgroup")
        .join(namespace)
        .join(id)
        .join("memory.current");
    fs::read_to_string(&v1)
        .or_else(|_| fs::read_to_string(&v2))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(0, |b| b / 1024)
}

/// `n` instances of `template` running at once, each having read all its state.
fn memory(
    ctr: &Ctr,
    template: &str,
    pool_file: Option<&str>,
    prefix: &str,
    n: usize,
    ready: &str,
    env: &[String],
) -> Result<Value, String> {
    let before = mem_used_kib();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        restore(ctr, template, id, env)?;
    }
    for id in &ids {
        let state = signal_state(ctr, id, "SIGUSR1");
        if state != ready {
            return Err(format!(
                "{id}: state {state} differs from the template's {ready}"
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = mem_used_kib();
    let (mut pss, mut shared, mut cgroups) = (0, 0, 0);
    for id in &ids {
        let pid = trenv_integration::bench::task_pid(ctr, id).ok_or(format!("{id} has no pid"))?;
        let (total, of_template) = pss_kib(pid, pool_file);
        pss += total;
        shared += of_template;
        cgroups += cgroup_kib(&ctr.namespace, id);
    }
    for id in &ids {
        ctr.remove(id);
    }
    Ok(json!({
        "instances": n,
        "pss_sum_kib": pss,
        "pss_of_template_kib": shared,
        "cgroup_sum_kib": cgroups,
        "machine_used_delta_kib": after.saturating_sub(before),
    }))
}

/// The two templates of the running function `src` (namespace `ns`): `copy` made with
/// `--copy` (CRIU's page-copying restore), `map` the default (memory mapped from the pool).
fn make_templates(src: &str, ns: &str, copy: &str, map: &str) -> Result<(), String> {
    for (name, extra) in [(copy, Some("--copy")), (map, None)] {
        let mut cmd = trenv_cli();
        cmd.args(["template", "create", name, "--from", src, "-n", ns]);
        cmd.args(extra);
        let out = cmd.output().map_err(|e| format!("running trenv: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "trenv template create {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// Template `name`'s manifest; `tenant` as `trenv template list` shows it.
fn template_info(name: &str, tenant: &str) -> Result<Value, String> {
    let out = trenv_cli()
        .args(["template", "inspect", name, "--tenant", tenant])
        .output()
        .map_err(|e| format!("running trenv: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("trenv template inspect {name}: {e}"))
}

fn run(o: &Options) -> Result<Value, String> {
    let ctr = trenv_integration::bench::connect(
        "bench-templates",
        "integration/bench/templates.sh",
        &o.namespace,
    );
    ctr.ensure_image(PYFN);
    remove_with_prefix(&ctr, &format!("{ID_PREFIX}-"));
    let pid = std::process::id();
    let prefix = format!("{ID_PREFIX}-{pid}");
    let copy_t = format!("tbench-copy-{pid}");
    let map_t = format!("tbench-map-{pid}");
    let _cleanup = Cleanup {
        ctr: ctr.clone(),
        prefix: format!("{prefix}-"),
        templates: vec![copy_t.clone(), map_t.clone()],
        tenant: o.namespace.clone(),
    };
    let log = PathBuf::from(std::env::var("TRENV_CACHE").unwrap_or("/var/cache/trenv".into()))
        .join(format!(
            "run/containerd-{}/containerd.log",
            std::env::var("TRENV_CONTAINERD_VERSION").unwrap_or("2".into())
        ));

    // The source function and its two templates.
    let src = format!("{prefix}-src");
    let state = format!("FN_STATE_MB={}", o.mb);
    ctr.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--env",
        &state,
        "--env",
        LOG_ENV,
        PYFN,
        &src,
    ])
    .ok();
    let ready = field(&wait_line(&ctr, &src, "ready ", 0), "state=");
    let env = source_env(o.mb);
    make_templates(&src, &o.namespace, &copy_t, &map_t)?;
    ctr.remove(&src);
    let mut report = json!({
        "containerd": containerd_version(&ctr),
        "state_mb": o.mb,
        "shim_shared": SHIM_SHARED.load(Ordering::SeqCst),
        "request": o.request.name(),
        "loadavg_before": loadavg(),
        "templates": {
            "copy": template_info(&copy_t, &o.namespace)?["conversion"],
            "map": template_info(&map_t, &o.namespace)?["conversion"],
        },
        "memory_backend": template_info(&map_t, &o.namespace)?["memory_backend"],
    });

    if o.latency {
        let n = Mode::ALL.len();
        let mut e2e: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut with_container: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut shim: Vec<Vec<f64>> = vec![Vec::new(); n];
        // The first request that reads all the state, the same request again, and Create
        // to the first one's answer.
        let mut requests: Vec<Vec<Requests>> = (0..n).map(|_| Vec::new()).collect();
        // Through the API: the restores only ([copy, map, repurposed]).
        let api = Containerd::from_env(&o.namespace)?;
        let r = Mode::RESTORES.len();
        let mut api_start: Vec<Vec<f64>> = vec![Vec::new(); r];
        let mut api_with_container: Vec<Vec<f64>> = vec![Vec::new(); r];
        let mut api_shim: Vec<Vec<f64>> = vec![Vec::new(); r];
        // (f) starts that took an instance from the reserve, of all (f) starts.
        let mut taken = [0usize; 2];
        ctr.ensure_image(BUSYBOX);
        let fresh_env: Vec<String> = env
            .iter()
            .cloned()
            .chain(FRESH.iter().chain(shim_flags()).map(|s| s.to_string()))
            .collect();
        let repurposed_env: Vec<String> = env
            .iter()
            .cloned()
            .chain(REPURPOSED.iter().chain(shim_flags()).map(|s| s.to_string()))
            .collect();
        let reserve_env: Vec<String> = env
            .iter()
            .cloned()
            .chain(RESERVE.iter().map(|s| s.to_string()))
            .collect();
        let cold_trenv: Vec<&str> = FRESH.iter().chain(shim_flags()).copied().collect();
        // The first (f) start of a spec restores the template, and its shim restores an
        // instance ahead for the next: one untimed start of each kind (ctr, API) first.
        for warm in [
            format!("{prefix}-reserve-warm"),
            format!("{prefix}-reserve-warm-api"),
        ] {
            restore(&ctr, &map_t, &warm, &reserve_env)?;
            ctr.remove(&warm);
        }
        for round in 0..o.runs {
            let order: Vec<Mode> = if round % 2 == 0 {
                Mode::ALL.to_vec()
            } else {
                Mode::ALL.iter().rev().copied().collect()
            };
            for mode in order {
                if STOP.load(Ordering::SeqCst) {
                    return Err("interrupted".into());
                }
                let id = format!("{prefix}-{}-{round}", mode.key());
                if mode == Mode::RepurposedRestore {
                    prepare_repurposed(&ctr, &format!("{id}-other"))?;
                }
                let (container_ms, ms) = match mode {
                    Mode::ColdRunc => cold(&ctr, RUNC, &id, o.mb, &[])?,
                    Mode::ColdTrenv => cold(&ctr, RUNTIME, &id, o.mb, &cold_trenv)?,
                    Mode::CopyRestore => restore(&ctr, &copy_t, &id, &fresh_env)?,
                    Mode::MapRestore => restore(&ctr, &map_t, &id, &fresh_env)?,
                    Mode::RepurposedRestore => restore(&ctr, &map_t, &id, &repurposed_env)?,
                    Mode::Reserve => {
                        // Its instance is restored after the previous start: give it the
                        // time a function's next request would come after.
                        std::thread::sleep(Duration::from_millis(300));
                        let r = restore(&ctr, &map_t, &id, &reserve_env)?;
                        taken[0] += usize::from(took_instance(&log, &id));
                        taken[1] += 1;
                        r
                    }
                };
                let i = Mode::ALL.iter().position(|m| *m == mode).unwrap_or(0);
                e2e[i].push(ms);
                with_container[i].push(container_ms + ms);
                if mode != Mode::ColdRunc
                    && let Some(s) = shim_time(&log, &id)
                {
                    shim[i].push(s);
                }
                // A cold start is stopped at its ready line (see cold()): restores only.
                if matches!(
                    mode,
                    Mode::CopyRestore | Mode::MapRestore | Mode::RepurposedRestore | Mode::Reserve
                ) {
                    let [first, second] = full_state_requests(&ctr, &id, &ready, o.request)?;
                    requests[i].push(Requests {
                        start_ms: ms,
                        first,
                        second,
                    });
                }
                ctr.remove(&id);
                let (j, template, env) = match mode {
                    Mode::CopyRestore => (0, &copy_t, &fresh_env[..]),
                    Mode::MapRestore => (1, &map_t, &fresh_env[..]),
                    Mode::RepurposedRestore => (2, &map_t, &repurposed_env[..]),
                    Mode::Reserve => {
                        std::thread::sleep(Duration::from_millis(300));
                        (3, &map_t, &reserve_env[..])
                    }
                    _ => continue,
                };
                let id = format!("{id}-api");
                if mode == Mode::RepurposedRestore {
                    prepare_repurposed(&ctr, &format!("{id}-other"))?;
                }
                let (container_ms, ms) = restore_api(&ctr, &api, template, &id, env)?;
                if mode == Mode::Reserve {
                    taken[0] += usize::from(took_instance(&log, &id));
                    taken[1] += 1;
                }
                api_start[j].push(ms);
                api_with_container[j].push(container_ms + ms);
                if let Some(s) = shim_time(&log, &id) {
                    api_shim[j].push(s);
                }
                ctr.remove(&id);
            }
            eprintln!("[bench] round {}/{} done", round + 1, o.runs);
        }
        report["latency"] = latency_table(
            &Mode::ALL,
            "end_to_end_ms",
            [&mut e2e, &mut with_container, &mut shim],
        );
        report["full_state_request"] = request_table(&Mode::ALL, &requests);
        report["api_latency"] = latency_table(
            &Mode::RESTORES,
            "start_ms",
            [&mut api_start, &mut api_with_container, &mut api_shim],
        );
        report["reserve_taken"] = json!({ "taken": taken[0], "starts": taken[1] });
    }

    if o.concurrent > 0 {
        ctr.ensure_image(BUSYBOX);
        report["concurrent"] = concurrent::run(&concurrent::Phase {
            ctr: &ctr,
            namespace: &o.namespace,
            n: o.concurrent,
            rounds: o.concurrent_rounds,
            mb: o.mb,
            template: &map_t,
            env: &env,
            prefix: &prefix,
        })?;
    }
    if o.burst > 0 {
        ctr.ensure_image(BUSYBOX);
        report["burst"] = burst::run(&burst::Burst {
            ctr: &ctr,
            namespace: &o.namespace,
            n: o.burst,
            functions: o.burst_functions.max(1),
            rounds: o.burst_rounds,
            prefix: &prefix,
        })?;
    }
    if o.memory {
        let info = template_info(&map_t, &o.namespace)?;
        let pool_path = info["pool"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pool_kib = fs::metadata(&pool_path)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512 / 1024)
            .unwrap_or(0);
        let copy = memory(
            &ctr,
            &copy_t,
            None,
            &format!("{prefix}-memc"),
            o.instances,
            &ready,
            &env,
        )?;
        let map = memory(
            &ctr,
            &map_t,
            Some(&pool_path),
            &format!("{prefix}-memm"),
            o.instances,
            &ready,
            &env,
        )?;
        report["memory"] = json!({"copy": copy, "map": map, "map_pool_file_kib": pool_kib});
    }
    if o.cri && o.latency {
        report["cri_latency"] = cri_latency(o, &log)?;
    }
    report["loadavg_after"] = json!(loadavg());
    Ok(report)
}

/// The report of one latency phase: per mode (samples indexed like `modes`), the statistics
/// of its first column (`first`), of "+container" and of the shim's own time.
fn latency_table(modes: &[Mode], first: &str, samples: [&mut [Vec<f64>]; 3]) -> Value {
    let [first_ms, with_container, shim] = samples;
    let mut out = serde_json::Map::new();
    for (i, mode) in modes.iter().enumerate() {
        let mut row = serde_json::Map::new();
        row.insert("name".into(), json!(mode.name()));
        row.insert(first.into(), stats(&mut first_ms[i]));
        row.insert("with_container_ms".into(), stats(&mut with_container[i]));
        row.insert("in_shim_ms".into(), stats(&mut shim[i]));
        out.insert(mode.key().into(), Value::Object(row));
    }
    Value::Object(out)
}

/// One full-state request: its time through `ctr` (the answer is polled from the
/// function's log, so this is coarse), the CPU time the function spent on it (user and
/// system, in clock ticks: what the request itself cost, page faults included), the page
/// faults it took (exact) and how many of them copied a page (the function's anonymous
/// memory grew by that many pages: copy-on-write of template pages, which a mapped
/// template takes on the first write whatever the backend; the rest map a page in).
struct Sample {
    ms: f64,
    /// The request's wall time as the function measured it, from its start to its answer
    /// (`us=` of pyfn's `touched` line): its response time without `ctr`'s. NaN for the
    /// checksum request, which does not report it.
    fn_ms: f64,
    cpu_ms: f64,
    faults: f64,
    copied_pages: f64,
}

/// A restore's start time and its two full-state requests.
struct Requests {
    start_ms: f64,
    first: Sample,
    second: Sample,
}

/// The function's first request that reads all of its state (SIGUSR1: a checksum over
/// everything, answered in its log), then the same request again. Their difference is
/// what the first touch of the state costs: the page faults of a template mapped lazily,
/// none where the page tables were filled at restore.
fn full_state_requests(
    ctr: &Ctr,
    id: &str,
    ready: &str,
    request: Request,
) -> Result<[Sample; 2], String> {
    let pid = trenv_integration::bench::task_pid(ctr, id).ok_or(format!("{id} has no pid"))?;
    let mut out = [0, 1].map(|_| Sample {
        ms: 0.0,
        fn_ms: f64::NAN,
        cpu_ms: 0.0,
        faults: 0.0,
        copied_pages: 0.0,
    });
    let mut answers = Vec::new();
    for r in &mut out {
        let before = Counters::of(pid)?;
        let start = Instant::now();
        let answer = match request {
            Request::Checksum => signal_state(ctr, id, "SIGUSR1"),
            Request::Touch => {
                let seen = log_lines(ctr, id).len();
                ctr.run(&["task", "kill", "-s", "SIGHUP", id]).ok();
                let line = wait_line(ctr, id, "touched ", seen);
                let us: f64 = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("us=")?.parse().ok())
                    .ok_or(format!("{id}: no request time (us=) in {line:?}"))?;
                r.fn_ms = us / 1000.0;
                // The answer without its timing, so that two touches compare equal.
                line.split_whitespace()
                    .filter(|w| !w.starts_with("us="))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        r.ms = start.elapsed().as_secs_f64() * 1000.0;
        let after = Counters::of(pid)?;
        r.faults = after.faults.saturating_sub(before.faults) as f64;
        r.cpu_ms = after.cpu_ms - before.cpu_ms;
        r.copied_pages = after.anon_kib.saturating_sub(before.anon_kib) as f64 / 4.0;
        answers.push(answer);
    }
    // Correct answers: the state is the template's (checked after touching, untimed).
    let state = match request {
        Request::Checksum => answers[0].clone(),
        Request::Touch => {
            if answers[0] != answers[1] {
                return Err(format!("{id}: two touches answered {answers:?}"));
            }
            signal_state(ctr, id, "SIGUSR1")
        }
    };
    if state != ready {
        return Err(format!(
            "{id}: state {state} differs from the template's {ready}"
        ));
    }
    Ok(out)
}

/// What the full-state request does (`--request`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Request {
    /// SIGUSR1: a SHA-256 over all of the state (much computing per page).
    Checksum,
    /// SIGHUP: one byte of every page read, every object visited (little computing).
    Touch,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Checksum => "checksum",
            Request::Touch => "touch",
        }
    }
}

/// What a process has spent so far: page faults, CPU time, anonymous memory.
struct Counters {
    faults: u64,
    cpu_ms: f64,
    anon_kib: u64,
}

impl Counters {
    fn of(pid: i32) -> Result<Counters, String> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("{e}"))?;
        let rollup =
            fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).map_err(|e| format!("{e}"))?;
        let (faults, ticks) = stat_counters(&stat);
        // USER_HZ is 100 on every Linux architecture trenv runs on.
        Ok(Counters {
            faults,
            cpu_ms: ticks as f64 * 10.0,
            anon_kib: rollup_kib(&rollup, "Anonymous"),
        })
    }
}

/// Page faults (minor + major) and CPU clock ticks (user + system) from /proc/PID/stat.
fn stat_counters(stat: &str) -> (u64, u64) {
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |field: usize| f.get(field - 3).copied().unwrap_or(0);
    // rest starts at field 3 (state): minflt 10, majflt 12, utime 14, stime 15.
    (at(10) + at(12), at(14) + at(15))
}

/// A `Key:   N kB` line of /proc/PID/smaps_rollup, in KiB (0 if absent).
fn rollup_kib(rollup: &str, key: &str) -> u64 {
    rollup
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The full-state request table: per mode the first request, the second, and Create to
/// the first one's answer.
fn request_table(modes: &[Mode], requests: &[Vec<Requests>]) -> Value {
    let mut out = serde_json::Map::new();
    for (i, mode) in modes.iter().enumerate() {
        let rs = &requests[i];
        let col = |f: &dyn Fn(&Requests) -> f64| stats(&mut rs.iter().map(f).collect::<Vec<_>>());
        out.insert(
            mode.key().into(),
            json!({
                "name": mode.name(),
                "first_request_ms": col(&|r| r.first.ms),
                "second_request_ms": col(&|r| r.second.ms),
                "create_to_first_full_response_ms": col(&|r| r.start_ms + r.first.ms),
                "first_request_fn_ms": col(&|r| r.first.fn_ms),
                "second_request_fn_ms": col(&|r| r.second.fn_ms),
                "first_request_cpu_ms": col(&|r| r.first.cpu_ms),
                "second_request_cpu_ms": col(&|r| r.second.cpu_ms),
                "first_request_faults": col(&|r| r.first.faults),
                "second_request_faults": col(&|r| r.second.faults),
                "first_request_copied_pages": col(&|r| r.first.copied_pages),
            }),
        );
    }
    Value::Object(out)
}

/// A CRI pod sandbox, stopped and removed (with its containers) on drop.
struct CriPod<'a> {
    cri: &'a Cri,
    id: String,
    config: cri::api::PodSandboxConfig,
}

impl Drop for CriPod<'_> {
    fn drop(&mut self) {
        let _ = self.cri.stop_pod_sandbox(&self.id);
        let _ = self.cri.remove_pod_sandbox(&self.id);
    }
}

/// The restores as the kubelet starts a function, through containerd's CRI: one pod
/// sandbox (handler `trenv`) serves the whole phase, so each container's task goes to the
/// pod's running shim. A source container in another pod makes the two templates (CRI
/// specs differ from ctr's, and a template is only restored under the spec it was made
/// with). Each round, per template: CreateContainer (timed: "+container"), StartContainer
/// (timed: "start", the task's Create and Start until it runs restored), then stop and
/// remove.
fn cri_latency(o: &Options, log: &PathBuf) -> Result<Value, String> {
    let cri = Cri::from_env();
    Ctr::from_env()
        .with_namespace(cri::NAMESPACE)
        .ensure_image(PYFN);
    cri.wait_image(PYFN, Duration::from_secs(60))?;
    let pid = std::process::id();
    let logs = std::env::temp_dir().join(format!("trenv-bench-cri-{pid}"));
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _logs = RmDir(logs.clone());
    let pod = |name: &str| -> Result<CriPod<'_>, String> {
        let config = cri::pod_config(name, &format!("uid-{name}"), &logs);
        let id = cri
            .run_pod_sandbox(&config, cri::HANDLER)
            .map_err(|e| format!("RunPodSandbox {name}: {e}"))?;
        Ok(CriPod {
            cri: &cri,
            id,
            config,
        })
    };
    let fn_config = |name: &str, template: Option<&str>| {
        let mut c = cri::container_config(name, PYFN, &[], &format!("{name}.log"));
        c.envs = [
            ("FN_STATE_MB".to_string(), o.mb.to_string()),
            ("FN_LOG".to_string(), "/tmp/fn.log".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| cri::api::KeyValue { key, value })
        .collect();
        if let Some(t) = template {
            c.annotations
                .insert("io.trenv.template".to_string(), t.to_string());
        }
        c
    };

    // The source function and its two templates.
    let copy_t = format!("tbench-cri-copy-{pid}");
    let map_t = format!("tbench-cri-map-{pid}");
    let _templates = Cleanup {
        ctr: Ctr::from_env().with_namespace(cri::NAMESPACE),
        prefix: format!("{ID_PREFIX}-cri-{pid}-"),
        templates: vec![copy_t.clone(), map_t.clone()],
        // The pods' tenant: namespace k8s.io, Kubernetes namespace of cri::pod_config.
        tenant: format!("{}/default", cri::NAMESPACE),
    };
    {
        let src_pod = pod(&format!("{ID_PREFIX}-cri-{pid}-src"))?;
        let src = cri
            .create_container(&src_pod.id, &fn_config("src", None), &src_pod.config)
            .and_then(|id| cri.start_container(&id).map(|_| id))
            .map_err(|e| format!("starting the CRI source function: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = cri
                .exec_sync(&src, &["cat", "/tmp/fn.log"], 10)
                .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
                .unwrap_or_default();
            if out.lines().any(|l| l.starts_with("ready ")) {
                break;
            }
            if Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
                return Err("the CRI source function never got ready".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        make_templates(&src, cri::NAMESPACE, &copy_t, &map_t)?;
    }

    let instances = pod(&format!("{ID_PREFIX}-cri-{pid}-instances"))?;
    let modes = [(Mode::CopyRestore, &copy_t), (Mode::MapRestore, &map_t)];
    let mut start: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut with_container: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut shim: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for round in 0..o.runs {
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            if STOP.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            let (mode, template) = modes[i];
            let name = format!("{}-{round}", mode.key());
            let t0 = Instant::now();
            let id = cri
                .create_container(
                    &instances.id,
                    &fn_config(&name, Some(template)),
                    &instances.config,
                )
                .map_err(|e| format!("CreateContainer {name}: {e}"))?;
            let created = t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            cri.start_container(&id)
                .map_err(|e| format!("StartContainer {name}: {e}"))?;
            let started = t1.elapsed().as_secs_f64() * 1e3;
            let st = cri
                .container_status(&id)
                .map_err(|e| format!("ContainerStatus {name}: {e}"))?;
            if st.state != cri::api::ContainerState::ContainerRunning as i32 {
                return Err(format!("{name} is not running after its restore: {st:?}"));
            }
            start[i].push(started);
            with_container[i].push(created + started);
            if let Some(s) = shim_time(log, &id) {
                shim[i].push(s);
            }
            let _ = cri.stop_container(&id, 0);
            let _ = cri.remove_container(&id);
        }
        eprintln!("[bench] CRI round {}/{} done", round + 1, o.runs);
    }
    let modes: Vec<Mode> = modes.iter().map(|(m, _)| *m).collect();
    Ok(latency_table(
        &modes,
        "start_ms",
        [&mut start, &mut with_container, &mut shim],
    ))
}

/// A latency table (`first`: the key of the first column pair, titled `title`) and the
/// copy/map restore ratios of each column, their lines prefixed with `prefix`.
fn print_latency(lat: &Value, modes: &[Mode], first: &str, title: &str, prefix: &str) {
    let columns = [first, "with_container_ms", "in_shim_ms"];
    println!(
        "| mode | {title} P50 | {title} P99 | +container P50 | +container P99 | in-shim P50 | in-shim P99 | n |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    for m in modes {
        let cells: Vec<String> = columns
            .iter()
            .flat_map(|c| {
                let v = &lat[m.key()][*c];
                [f(&v["p50"]), f(&v["p99"])]
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            m.name(),
            cells.join(" | "),
            lat[m.key()][first]["n"]
        );
    }
    let p = |k: &str, what: &str, q: &str| lat[k][what][q].as_f64().unwrap_or(f64::NAN);
    for what in columns {
        let r50 = p("copy_restore", what, "p50") / p("map_restore", what, "p50");
        let r99 = p("copy_restore", what, "p99") / p("map_restore", what, "p99");
        println!(
            "\n{prefix}{what}: template restore is {r50:.2}x faster than the copy restore at \
             P50, {r99:.2}x at P99 (target >= 3x at P50: {})",
            if r50 >= 3.0 { "MET" } else { "MISSED" }
        );
    }
}

fn print_report(r: &Value) {
    println!(
        "# Templates benchmark ({} MiB Python function)",
        r["state_mb"]
    );
    println!(
        "containerd {}, load {} -> {}",
        r["containerd"], r["loadavg_before"], r["loadavg_after"]
    );
    if r["shim_shared"].as_bool() == Some(true) {
        println!("trenv containers of the latency phase in their tenant's shared shim");
    }
    for k in ["copy", "map"] {
        let c = &r["templates"][k];
        println!(
            "template {k}: {} VMAs mapped, {} MiB mapped, {} MiB copied at restore",
            c["vmas"].as_array().map_or(0, Vec::len),
            c["bytes_moved"].as_u64().unwrap_or(0) >> 20,
            c["bytes_copied"].as_u64().unwrap_or(0) >> 20
        );
    }
    if let Some(lat) = r.get("latency") {
        println!("\n## Create to ready (ms)\n");
        println!(
            "e2e: Create to ready through containerd with `ctr task start` (which includes \
             starting the ctr process itself and its stdio FIFOs); +container: plus \
             creating the container record and snapshot (`ctr containers create`) first\n"
        );
        print_latency(lat, &Mode::ALL, "end_to_end_ms", "e2e", "");
        let p = |k: &str, what: &str, q: &str| lat[k][what][q].as_f64().unwrap_or(f64::NAN);
        let cold =
            p("cold_runc", "end_to_end_ms", "p50") / p("map_restore", "end_to_end_ms", "p50");
        println!("template restore vs cold start on runc (e2e P50): {cold:.1}x faster");
        for q in ["p50", "p99"] {
            let a = p("cold_runc", "end_to_end_ms", q);
            let d = p("map_restore", "end_to_end_ms", q);
            let e = p("repurposed_restore", "end_to_end_ms", q);
            let (ds, es) = (
                p("map_restore", "in_shim_ms", q),
                p("repurposed_restore", "in_shim_ms", q),
            );
            println!(
                "{q}: (e) repurposed vs (a) runc cold {:.1}x, vs (d) fresh {:.2}x (e2e); in the \
                 shim (e) {es:.1} ms vs (d) {ds:.1} ms",
                a / e,
                d / e
            );
        }
    }
    if let Some(lat) = r.get("api_latency") {
        println!("\n## Through containerd's API, as faasd starts a function (ms)\n");
        println!(
            "start: containerd's client library's NewTask + Start of a created container \
             (Containers.Get, Snapshots.Mounts, Tasks.Create, Tasks.Start; no ctr process, no \
             stdio) until Start returns with the task running restored; +container: plus \
             `ctr containers create`\n"
        );
        print_latency(lat, &Mode::RESTORES, "start_ms", "start", "API ");
        let p = |k: &str, what: &str, q: &str| lat[k][what][q].as_f64().unwrap_or(f64::NAN);
        let (e50, e99) = (
            p("repurposed_restore", "in_shim_ms", "p50"),
            p("repurposed_restore", "in_shim_ms", "p99"),
        );
        let api50 = p("repurposed_restore", "start_ms", "p50");
        println!(
            "\n(e) in the shim: P50 {e50:.1} ms (target <= 8: {}), P99 {e99:.1} ms (target <= \
             12: {}); through the API: P50 {api50:.1} ms (target <= 15: {})",
            if e50 <= 8.0 { "MET" } else { "MISSED" },
            if e99 <= 12.0 { "MET" } else { "MISSED" },
            if api50 <= 15.0 { "MET" } else { "MISSED" }
        );
        let (f50, f99) = (
            p("reserve", "in_shim_ms", "p50"),
            p("reserve", "in_shim_ms", "p99"),
        );
        let fapi50 = p("reserve", "start_ms", "p50");
        println!(
            "(f) in the shim: P50 {f50:.1} ms (issue 18's target <= 3: {}), P99 {f99:.1} ms \
             (target <= 5: {}); through the API: P50 {fapi50:.1} ms; instances taken: {} of {} \
             (f) starts",
            if f50 <= 3.0 { "MET" } else { "MISSED" },
            if f99 <= 5.0 { "MET" } else { "MISSED" },
            r["reserve_taken"]["taken"],
            r["reserve_taken"]["starts"]
        );
    }
    if let Some(req) = r.get("full_state_request") {
        println!("\n## The first request that touches all the state (ms, through ctr)\n");
        let what = match r["request"].as_str() {
            Some("touch") => {
                "SIGHUP: one byte of every page of the state read, every object visited \
                 (--request touch)"
            }
            _ => "SIGUSR1: a SHA-256 over the whole state (--request checksum)",
        };
        println!(
            "first: the first request after the start, {what}; second: the same again; \
             Create to first: the start (e2e) plus the first. Memory backend of the template \
             restores: {}\n",
            r["memory_backend"].as_str().unwrap_or("?")
        );
        println!(
            "| mode | first P50 | first P99 | second P50 | second P99 | Create to first P50 | Create to first P99 | faults, first P50 | faults, second P50 | n |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
        for m in Mode::RESTORES {
            let row = &req[m.key()];
            let cells: Vec<String> = [
                "first_request_ms",
                "second_request_ms",
                "create_to_first_full_response_ms",
            ]
            .iter()
            .flat_map(|c| [f(&row[*c]["p50"]), f(&row[*c]["p99"])])
            .collect();
            println!(
                "| {} | {} | {} | {} | {} |",
                m.name(),
                cells.join(" | "),
                f(&row["first_request_faults"]["p50"]),
                f(&row["second_request_faults"]["p50"]),
                row["first_request_ms"]["n"]
            );
        }
        let p = |k: &str, what: &str| req[k][what]["p50"].as_f64().unwrap_or(f64::NAN);
        println!(
            "\nfirst minus second request at P50 (the first touch of the state): copy restore \
             {:.1} ms, template restore {:.1} ms",
            p("copy_restore", "first_request_ms") - p("copy_restore", "second_request_ms"),
            p("map_restore", "first_request_ms") - p("map_restore", "second_request_ms")
        );
        println!(
            "\nThe function's own CPU time for the request (user + system, 10 ms ticks: the \
             fault handling included, ctr's not) and its page faults split by kind: \
             copies (its anonymous memory grew by a page) and the rest (a page mapped in); \
             for the touch request also its wall time as the function measured it, from its \
             start to its answer (its response time without ctr's)\n"
        );
        println!(
            "| mode | time first P50 | time first P99 | time second P50 | CPU first P50 | CPU first P99 | CPU second P50 | faults first P50 | copies P50 | other faults P50 |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for m in Mode::RESTORES {
            let row = &req[m.key()];
            let q = |c: &str, at: &str| row[c][at].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                m.name(),
                q("first_request_fn_ms", "p50"),
                q("first_request_fn_ms", "p99"),
                q("second_request_fn_ms", "p50"),
                q("first_request_cpu_ms", "p50"),
                q("first_request_cpu_ms", "p99"),
                q("second_request_cpu_ms", "p50"),
                q("first_request_faults", "p50"),
                q("first_request_copied_pages", "p50"),
                q("first_request_faults", "p50") - q("first_request_copied_pages", "p50"),
            );
        }
    }
    if let Some(lat) = r.get("cri_latency") {
        println!("\n## Through CRI, as the kubelet starts a function (ms)\n");
        println!(
            "start: StartContainer of a created container in a running pod (handler trenv: \
             the pod's shim is already running) until it runs restored; +container: plus \
             CreateContainer\n"
        );
        print_latency(
            lat,
            &[Mode::CopyRestore, Mode::MapRestore],
            "start_ms",
            "start",
            "CRI ",
        );
    }
    if let Some(c) = r.get("concurrent") {
        concurrent::print(c);
    }
    if let Some(b) = r.get("burst") {
        burst::print(b);
    }
    if let Some(m) = r.get("memory") {
        let kib = |v: &Value| v.as_u64().unwrap_or(0);
        let c = &m["copy"];
        let t = &m["map"];
        let pool = kib(&m["map_pool_file_kib"]);
        let private = |x: &Value| kib(&x["pss_sum_kib"]) - kib(&x["pss_of_template_kib"]);
        let copy_total = kib(&c["pss_sum_kib"]);
        let map_total = private(t) + pool;
        println!(
            "\n## Memory of {} concurrent instances (MiB)\n",
            c["instances"]
        );
        println!("| | copy restore | template restore |");
        println!("| --- | ---: | ---: |");
        println!(
            "| sum of Pss (all mappings) | {} | {} |",
            copy_total >> 10,
            kib(&t["pss_sum_kib"]) >> 10
        );
        println!(
            "| sum of Pss outside the template's shared pages | {} | {} |",
            private(c) >> 10,
            private(t) >> 10
        );
        println!(
            "| template file (resident in the pool) | 0 | {} |",
            pool >> 10
        );
        println!(
            "| **total: Pss outside the template + the template** | **{}** | **{}** |",
            copy_total >> 10,
            map_total >> 10
        );
        println!(
            "| sum of cgroup usage | {} | {} |",
            kib(&c["cgroup_sum_kib"]) >> 10,
            kib(&t["cgroup_sum_kib"]) >> 10
        );
        println!(
            "| machine used-memory delta | {} | {} |",
            kib(&c["machine_used_delta_kib"]) >> 10,
            kib(&t["machine_used_delta_kib"]) >> 10
        );
        let ratio = map_total as f64 / copy_total.max(1) as f64;
        println!(
            "\ntemplate instances use {:.0} % of the copy restore's memory (target <= 35 %: {}). \
             The template's pages are charged to the cgroup that wrote them (trenv template \
             create's), not to the instances.",
            ratio * 100.0,
            if ratio <= 0.35 { "MET" } else { "MISSED" },
        );
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-templates: {e}\n\n{USAGE}");
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
        Ok(r) => print_report(&r),
        Err(e) => {
            eprintln!("bench-templates: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pss_of_smaps, rollup_kib, stat_counters};

    #[test]
    fn stat_counters_read_faults_and_cpu_ticks_after_a_command_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "42 (py fn) S 1 42 42 0 -1 4194560 1000 7 20 3 150 50 0 0 20 0 1";
        assert_eq!(stat_counters(stat), (1020, 200));
        assert_eq!(stat_counters("garbage"), (0, 0));
    }

    #[test]
    fn the_template_share_is_read_from_file_mappings_and_attached_vmas() {
        let smaps = "\
00400000-00500000 r-xp 00000000 08:01 12 /usr/bin/python3
Pss:                 100 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0000100000 rw-p 00000000 00:2a 7 /pool/t.tpl
Pss:                 300 kB
Anonymous:            40 kB
VmFlags: rd wr mr mw me ac
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
Pss:                 500 kB
Anonymous:            60 kB
VmFlags: rd wr mr mw me ac mm
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 
Pss:                  70 kB
Anonymous:            70 kB
VmFlags: rd wr mr mw me ac
";
        // The pool file's mapping and the attached VMA, without their anonymous copies.
        assert_eq!(pss_of_smaps(smaps, Some("/pool/t.tpl")), (970, 260 + 440));
        assert_eq!(pss_of_smaps(smaps, None), (970, 440));
    }

    #[test]
    fn rollup_kib_reads_one_key_exactly() {
        let rollup = "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss:  1200 kB\n\
                      Anonymous:      512 kB\nAnonHugePages:  0 kB\n";
        assert_eq!(rollup_kib(rollup, "Anonymous"), 512);
        assert_eq!(rollup_kib(rollup, "Rss"), 1200);
        assert_eq!(rollup_kib(rollup, "Swap"), 0);
    }
}
