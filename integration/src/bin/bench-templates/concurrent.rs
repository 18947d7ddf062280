//! Concurrent starts (issue 15): `--concurrent N` containers of the Python function started
//! at once through containerd's API, each from its own thread and client connection, as a
//! FaaS platform scales a function out. Three modes, interleaved by round: (a) runc.v2 cold
//! start, until the function has logged `ready` (its initialisation is the start); (d) the
//! map template restored into namespaces of its own; (e) the same restored into repurposed
//! sandboxes that last ran another function (before each (e) round, untimed: the tenant's
//! pool drained, N busybox containers run at once and deleted, leaving N idle sandboxes);
//! (f) instances the tenant's shared shim restored ahead, `io.trenv.reserve=N` of them
//! (before and after each (f) round, untimed: N instances ready, so that the refill
//! competes with no timed start; N at most the node's `[shim] reserve_max`, 16 by default).
//! Per start: Create to running (a restore is ready when it runs) or to `ready`; per round:
//! from the first Create to the last start done, and the CPU time the machine and containerd
//! (with the `shim start` commands it runs) used meanwhile: on a machine of C CPUs, N starts
//! at once cannot all be up before busy/C, and containerd's share of it is no shim's.

use std::fs;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trenv_integration::api::Containerd;
use trenv_integration::pyfn::LOG_ENV;
use trenv_integration::{BUSYBOX, Ctr, PYFN, RUNTIME};

use trenv_integration::bench::{
    TRENV_SHIM, cpu_of_exe_ms, machine_busy_ms, process_cpu_ms, server_pid,
};

use super::{FRESH, REPURPOSED, RESERVE, RUNC, STOP, stats, trenv_cli};

/// The modes of the phase, as (key, name).
pub const MODES: [(&str, &str); 4] = [
    ("cold_runc", "(a) cold start, runc.v2, until ready"),
    ("map_restore", "(d) template restore, fresh namespaces"),
    (
        "repurposed_restore",
        "(e) template restore, repurposed sandboxes",
    ),
    (
        "reserve_restore",
        "(f) taken from the shared shim's reserve (io.trenv.reserve=N)",
    ),
];

/// Mode (f)'s index in [`MODES`].
const RESERVE_MODE: usize = 3;

/// The most instances a container may ask its shim to keep (`[shim] reserve_max`'s
/// default): a larger N runs no (f) rounds.
const RESERVE_MAX: usize = 16;

/// What the phase needs of the run.
pub struct Phase<'a> {
    pub ctr: &'a Ctr,
    pub namespace: &'a str,
    /// Containers started at once.
    pub n: usize,
    pub rounds: usize,
    pub mb: u32,
    /// The map template.
    pub template: &'a str,
    /// The source function's environment as `ctr` flags.
    pub env: &'a [String],
    pub prefix: &'a str,
}

pub fn run(p: &Phase<'_>) -> Result<Value, String> {
    let mut per_start: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut all_up: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut busy: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut containerd: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut shim: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut clients: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let containerd_pid = std::env::var("CONTAINERD_ADDRESS")
        .ok()
        .and_then(|a| server_pid(std::path::Path::new(&a)));
    for round in 0..p.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..MODES.len()).collect()
        } else {
            (0..MODES.len()).rev().collect()
        };
        for m in order {
            if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            if m == RESERVE_MODE && p.n > RESERVE_MAX {
                continue;
            }
            let ids: Vec<String> = (0..p.n)
                .map(|i| format!("{}-n{}-{round}-{i}", p.prefix, MODES[m].0))
                .collect();
            let result = one_round(p, m, &ids, containerd_pid);
            for id in &ids {
                p.ctr.remove(id);
            }
            if m == RESERVE_MODE && result.is_ok() {
                // The shim restores N more: done before anything else is timed.
                wait_reserve(p.n)?;
            }
            let r = result?;
            per_start[m].extend(r.starts);
            all_up[m].push(r.wall);
            busy[m].extend(r.busy_ms);
            containerd[m].extend(r.containerd_ms);
            shim[m].push(r.shim_ms);
            clients[m].extend(r.clients_ms);
        }
        eprintln!(
            "[bench] {} concurrent starts: round {}/{} done",
            p.n,
            round + 1,
            p.rounds
        );
    }
    let mut out = serde_json::Map::new();
    for (m, (key, name)) in MODES.iter().enumerate() {
        out.insert(
            (*key).into(),
            json!({
                "name": name,
                "start_ms": stats(&mut per_start[m]),
                "all_up_ms": stats(&mut all_up[m]),
                "busy_cpu_ms": stats(&mut busy[m]),
                "containerd_cpu_ms": stats(&mut containerd[m]),
                "shim_cpu_ms": stats(&mut shim[m]),
                "clients_cpu_ms": stats(&mut clients[m]),
            }),
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(json!({"n": p.n, "rounds": p.rounds, "cpus": cpus, "modes": out}))
}

/// What one round measured.
struct Round {
    /// Each start's time, ms.
    starts: Vec<f64>,
    /// From the first Create to the last start done, ms.
    wall: f64,
    /// CPU time the machine was busy meanwhile, ms (None: /proc/stat unreadable).
    busy_ms: Option<f64>,
    /// CPU time containerd and the commands it ran used meanwhile, ms.
    containerd_ms: Option<f64>,
    /// CPU time trenv's shim processes (servers, zygotes, workers and what they reaped)
    /// used meanwhile, ms.
    shim_ms: f64,
    /// CPU time the bench's own clients used meanwhile, ms.
    clients_ms: Option<f64>,
}

/// One round of mode `m`: the containers created (untimed), then started at once; the
/// time of each start and of the whole round, and the CPU time used meanwhile.
fn one_round(
    p: &Phase<'_>,
    m: usize,
    ids: &[String],
    containerd_pid: Option<i32>,
) -> Result<Round, String> {
    let state = format!("FN_STATE_MB={}", p.mb);
    let annotation = format!("io.trenv.template={}", p.template);
    let reserve = format!("{RESERVE_ANNOTATION}={}", p.n);
    let mut flags: Vec<&str> = match m {
        0 => vec!["--runtime", RUNC, "--env", &state, "--env", LOG_ENV],
        _ => {
            let mut f = vec!["--runtime", RUNTIME, "--annotation", &annotation];
            f.extend(p.env.iter().map(String::as_str));
            f
        }
    };
    match m {
        1 => flags.extend(FRESH),
        2 => flags.extend(REPURPOSED),
        RESERVE_MODE => flags.extend(RESERVE.iter().copied().chain(["--annotation", &reserve])),
        _ => {}
    }
    for id in ids {
        let mut a = vec!["containers", "create"];
        a.extend_from_slice(&flags);
        a.extend([PYFN, id.as_str()]);
        let r = p.ctr.run(&a);
        if r.code != 0 {
            return Err(format!("creating container {id}: {}", r.stderr.trim()));
        }
    }
    if m == 2 {
        idle_sandboxes(p.ctr, p.namespace, p.n, &format!("{}-other", ids[0]), &[])?;
    }
    if m == RESERVE_MODE && ready_reserve(p.n) < p.n {
        // The first start of the spec restores the template, and the shim then restores
        // N ahead: one untimed start first.
        let warm = format!("{}-warm", ids[0]);
        let mut a = vec!["containers", "create"];
        a.extend_from_slice(&flags);
        a.extend([PYFN, warm.as_str()]);
        let r = p.ctr.run(&a);
        let started = if r.code != 0 {
            Err(r.stderr.trim().to_string())
        } else {
            Containerd::from_env(p.namespace).and_then(|api| api.start_task(&warm).map(|_| ()))
        };
        p.ctr.remove(&warm);
        started.map_err(|e| format!("the warm-up start {warm}: {e}"))?;
        wait_reserve(p.n)?;
    }
    let cold = m == 0;
    let barrier = Barrier::new(ids.len() + 1);
    let mut cpu = (None, None, 0.0, None);
    let results: Vec<Result<(Instant, Instant), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let barrier = &barrier;
                s.spawn(move || {
                    let api = Containerd::from_env(p.namespace);
                    barrier.wait();
                    let api = api?;
                    let t0 = Instant::now();
                    let started = api.start_task(id)?;
                    if cold {
                        wait_ready(started.pid as i32, id)?;
                    }
                    Ok((t0, Instant::now()))
                })
            })
            .collect();
        // Every thread has its connection: the CPU marks bracket the starts alone.
        let me = std::process::id() as i32;
        let marks = (
            machine_busy_ms(),
            containerd_pid.and_then(process_cpu_ms),
            cpu_of_exe_ms(TRENV_SHIM),
            process_cpu_ms(me),
        );
        barrier.wait();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a start thread panicked".into()))
            })
            .collect();
        let after = (
            machine_busy_ms(),
            containerd_pid.and_then(process_cpu_ms),
            cpu_of_exe_ms(TRENV_SHIM),
            process_cpu_ms(me),
        );
        cpu = (
            marks.0.zip(after.0).map(|(a, b)| b - a),
            marks.1.zip(after.1).map(|(a, b)| b - a),
            after.2 - marks.2,
            marks.3.zip(after.3).map(|(a, b)| b - a),
        );
        results
    });
    let times = results.into_iter().collect::<Result<Vec<_>, String>>()?;
    let first = times.iter().map(|t| t.0).min().ok_or("no starts")?;
    let last = times.iter().map(|t| t.1).max().ok_or("no starts")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Round {
        starts: times.iter().map(|(a, b)| ms(*b - *a)).collect(),
        wall: ms(last - first),
        busy_ms: cpu.0,
        containerd_ms: cpu.1,
        shim_ms: cpu.2,
        clients_ms: cpu.3,
    })
}

/// The annotation asking a shim for N instances ahead.
const RESERVE_ANNOTATION: &str = "io.trenv.reserve";

/// The node's reserve instances ready for a container annotated `io.trenv.reserve=n` (the
/// instance's spec in its directory says so; `ready` in it once a Create can take it).
fn ready_reserve(n: usize) -> usize {
    let want = n.to_string();
    trenv_integration::bench::ready_reserve_instances(|spec| {
        spec["annotations"][RESERVE_ANNOTATION] == want.as_str()
    })
}

/// Waits (at most two minutes) until `n` instances are ready for the (f) spec.
fn wait_reserve(n: usize) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let ready = ready_reserve(n);
        if ready >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120)
            || STOP.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(format!(
                "{ready} of {n} reserve instances ready after two minutes (the shim's log, in \
                 containerd's, says why)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most five minutes: fifty cold starts at once on two cores take a while) until
/// the cold-started function has logged `ready`, read from its /tmp through /proc (no
/// `ctr` process in the measured time).
pub(super) fn wait_ready(pid: i32, id: &str) -> Result<(), String> {
    let log = format!("/proc/{pid}/root/tmp/fn.log");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        if fs::read_to_string(&log).is_ok_and(|t| t.lines().any(|l| l.starts_with("ready "))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!(
        "{id} (pid {pid}) logged no ready line in five minutes"
    ))
}

/// Leaves the tenant's pool with `n` idle sandboxes last used by another function: the
/// pool drained, `n` busybox containers (with `extra` flags: a network) running at once,
/// each in a sandbox of its own, then deleted.
pub(super) fn idle_sandboxes(
    ctr: &Ctr,
    namespace: &str,
    n: usize,
    prefix: &str,
    extra: &[&str],
) -> Result<(), String> {
    let drained = trenv_cli()
        .args(["pool", "drain", "--tenant", namespace])
        .output()
        .map_err(|e| format!("running trenv pool drain: {e}"))?;
    if !drained.status.success() {
        return Err(format!(
            "trenv pool drain: {}",
            String::from_utf8_lossy(&drained.stderr).trim()
        ));
    }
    let others: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let mut failed = None;
    for id in &others {
        let mut a = vec![
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.trenv.function=other",
            REPURPOSED[0],
            REPURPOSED[1],
        ];
        a.extend_from_slice(extra);
        a.extend([BUSYBOX, id.as_str(), "sleep", "1000"]);
        let r = ctr.run(&a);
        if r.code != 0 {
            failed = Some(format!("the other function {id}: {}", r.stderr.trim()));
            break;
        }
    }
    for id in &others {
        ctr.remove(id);
    }
    failed.map_or(Ok(()), Err)
}

/// The phase's table and ratios.
pub fn print(r: &Value) {
    println!(
        "\n## {} concurrent starts through containerd's API (ms; {} rounds)\n",
        r["n"], r["rounds"]
    );
    println!(
        "start: one container's Tasks.Create + Tasks.Start (for (a) until the function logged \
         ready), all {} started at once from their own threads; all up: from the first Create \
         to the last start done; CPU: the CPU time the machine ({} CPUs) was busy during a \
         round, and containerd's share (with the `shim start` commands it ran)\n",
        r["n"], r["cpus"]
    );
    println!(
        "| mode | start P50 | start P99 | all up P50 | all up P99 | CPU P50 | containerd CPU P50 \
         | n |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    for (key, name) in MODES {
        let m = &r["modes"][key];
        if m["start_ms"]["n"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            f(&m["start_ms"]["p50"]),
            f(&m["start_ms"]["p99"]),
            f(&m["all_up_ms"]["p50"]),
            f(&m["all_up_ms"]["p99"]),
            f(&m["busy_cpu_ms"]["p50"]),
            f(&m["containerd_cpu_ms"]["p50"]),
            m["start_ms"]["n"]
        );
    }
    let p = |k: &str, what: &str, q: &str| r["modes"][k][what][q].as_f64().unwrap_or(f64::NAN);
    for q in ["p50", "p99"] {
        println!(
            "{q}: (e) vs (a) runc cold {:.1}x per start, {:.1}x all up; (e) vs (d) {:.2}x per start",
            p("cold_runc", "start_ms", q) / p("repurposed_restore", "start_ms", q),
            p("cold_runc", "all_up_ms", q) / p("repurposed_restore", "all_up_ms", q),
            p("map_restore", "start_ms", q) / p("repurposed_restore", "start_ms", q),
        );
    }
    let all_up = p("reserve_restore", "all_up_ms", "p99");
    if all_up.is_finite() {
        println!(
            "(f) all {} up: P50 {:.1} ms, P99 {all_up:.1} ms (issue 18's target: all ten within 30 \
             ms: {}); per start P50 {:.1} ms, P99 {:.1} ms; (e)/(f) per start at P50 {:.1}x",
            r["n"],
            p("reserve_restore", "all_up_ms", "p50"),
            if all_up <= 30.0 { "MET" } else { "MISSED" },
            p("reserve_restore", "start_ms", "p50"),
            p("reserve_restore", "start_ms", "p99"),
            p("repurposed_restore", "start_ms", "p50") / p("reserve_restore", "start_ms", "p50"),
        );
        let cpus = r["cpus"].as_f64().unwrap_or(1.0);
        let n = r["n"].as_f64().unwrap_or(1.0);
        let busy = p("reserve_restore", "busy_cpu_ms", "p50");
        let containerd = p("reserve_restore", "containerd_cpu_ms", "p50");
        let shim = p("reserve_restore", "shim_cpu_ms", "p50");
        let clients = p("reserve_restore", "clients_cpu_ms", "p50");
        if busy.is_finite() && containerd.is_finite() {
            println!(
                "(f) CPU of a round at P50: {busy:.1} ms busy on {cpus} CPUs, so no round could \
                 end before {:.1} ms; containerd's share {containerd:.1} ms ({:.1} ms per start, \
                 {:.1} ms of the round's floor), trenv's shims {shim:.1} ms ({:.1} per start), \
                 the bench's clients {clients:.1} ms, the rest {:.1} ms (the functions, CRIU \
                 not yet reaped, the kernel's work for others)",
                busy / cpus,
                containerd / n,
                containerd / cpus,
                shim / n,
                busy - containerd - shim - clients,
            );
        }
    }
}
