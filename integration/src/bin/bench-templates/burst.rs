//! The burst (issue 15): `--burst N` starts (50) across `--burst-functions F` (5) functions,
//! all at once, with CNI networking (network `trenv-fn` of config/cni: bridge + host-local),
//! through containerd's API on this 2-core machine. The functions are the Python function
//! with F state sizes (16, 24, … MiB), each with a map template. Two modes, alternating by
//! round: (a) runc.v2 cold, the network set up per container as faasd does it (CNI ADD on
//! the task's network namespace between Tasks.Create and Tasks.Start), until the function
//! logged `ready`; (e) template restores into repurposed sandboxes
//! (`io.trenv.network=trenv-fn`) whose network was attached once, before the burst
//! (untimed: N containers of another function run with the network and deleted). Per start
//! (Create to ready, CNI included) and the burst's total (first Create to last start done).

use std::fs;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trenv_integration::api::Containerd;
use trenv_integration::pyfn::{LOG_ENV, wait_line};
use trenv_integration::{Ctr, PYFN, RUNTIME};
use trenv_runtime::sandbox::network::Cni;
use trenv_runtime::sandbox::network::NetTarget;

use super::concurrent::{idle_sandboxes, wait_ready};
use super::{REPURPOSED, RUNC, STOP, stats, trenv_cli};

/// The network of the burst.
const NETWORK: &str = "trenv-fn";

pub struct Burst<'a> {
    pub ctr: &'a Ctr,
    pub namespace: &'a str,
    pub n: usize,
    pub functions: usize,
    pub rounds: usize,
    pub prefix: &'a str,
}

/// One function of the burst: its state size and its template.
struct Function {
    mb: u32,
    template: String,
}

pub fn run(b: &Burst<'_>) -> Result<Value, String> {
    let config = trenv_runtime::config::Config::load().map_err(|e| e.to_string())?;
    let cni = Cni {
        conf_dir: config.sandboxes.cni_conf_dir.clone(),
        bin_dir: config.sandboxes.cni_bin_dir.clone(),
    };
    cni.find(NETWORK).map_err(|e| e.to_string())?;
    let functions = make_functions(b)?;
    let result = rounds(b, &cni, &functions);
    for f in &functions {
        let _ = trenv_cli()
            .args(["template", "rm", &f.template, "--tenant", b.namespace])
            .output();
    }
    result
}

/// The F functions' templates, each made from a source container of its own.
fn make_functions(b: &Burst<'_>) -> Result<Vec<Function>, String> {
    let mut out = Vec::new();
    for f in 0..b.functions {
        let mb = 16 + 8 * f as u32;
        let src = format!("{}-bsrc{f}", b.prefix);
        let template = format!("{}-burst{f}", b.prefix);
        let state = format!("FN_STATE_MB={mb}");
        let r = b.ctr.run(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--env",
            &state,
            "--env",
            LOG_ENV,
            "--annotation",
            "io.trenv.repurpose=false",
            PYFN,
            &src,
        ]);
        if r.code != 0 {
            return Err(format!("the source {src}: {}", r.stderr.trim()));
        }
        wait_line(b.ctr, &src, "ready ", 0);
        let made = trenv_cli()
            .args(["template", "create", &template, "--from", &src])
            .args(["-n", b.namespace])
            .output()
            .map_err(|e| format!("running trenv template create: {e}"))?;
        b.ctr.remove(&src);
        if !made.status.success() {
            return Err(format!(
                "trenv template create {template}: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        out.push(Function { mb, template });
    }
    Ok(out)
}

fn rounds(b: &Burst<'_>, cni: &Cni, functions: &[Function]) -> Result<Value, String> {
    let mut per_start: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut total: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..b.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for m in order {
            if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            let ids: Vec<String> = (0..b.n)
                .map(|i| format!("{}-b{m}-{round}-{i}", b.prefix))
                .collect();
            let result = one_burst(b, cni, functions, m, &ids);
            for id in &ids {
                b.ctr.remove(id);
                let dir = netns_dir(id);
                if m == 0 && dir.exists() {
                    let _ = cni.detach(&NetTarget::at(&dir), id);
                }
                let _ = fs::remove_dir_all(&dir);
            }
            let (starts, all) = result?;
            per_start[m].extend(starts);
            total[m].push(all);
        }
        eprintln!("[bench] burst: round {}/{} done", round + 1, b.rounds);
    }
    let modes = ["cold_runc_cni", "repurposed_restore_cni"];
    let mut out = serde_json::Map::new();
    for m in 0..2 {
        out.insert(
            modes[m].into(),
            json!({
                "start_ms": stats(&mut per_start[m]),
                "total_ms": stats(&mut total[m]),
            }),
        );
    }
    Ok(json!({
        "n": b.n, "functions": b.functions, "rounds": b.rounds, "network": NETWORK,
        "modes": out,
    }))
}

/// Where the bench points CNI at a runc container's network namespace (a symbolic link
/// `net` to /proc/PID/ns/net, as trenv's pinned sandboxes have a `net` file).
fn netns_dir(id: &str) -> PathBuf {
    PathBuf::from("/run/trenv/bench-cni").join(id)
}

fn one_burst(
    b: &Burst<'_>,
    cni: &Cni,
    functions: &[Function],
    m: usize,
    ids: &[String],
) -> Result<(Vec<f64>, f64), String> {
    let network = format!("io.trenv.network={NETWORK}");
    for (i, id) in ids.iter().enumerate() {
        let f = &functions[i % functions.len()];
        let state = format!("FN_STATE_MB={}", f.mb);
        let annotation = format!("io.trenv.template={}", f.template);
        let mut a = vec!["containers", "create"];
        if m == 0 {
            a.extend(["--runtime", RUNC, "--env", &state, "--env", LOG_ENV]);
        } else {
            a.extend(["--runtime", RUNTIME, "--annotation", &annotation]);
            a.extend(["--env", &state, "--env", LOG_ENV, "--annotation", &network]);
            a.extend(REPURPOSED);
        }
        a.extend([PYFN, id.as_str()]);
        let r = b.ctr.run(&a);
        if r.code != 0 {
            return Err(format!("creating container {id}: {}", r.stderr.trim()));
        }
    }
    if m == 1 {
        idle_sandboxes(
            b.ctr,
            b.namespace,
            b.n,
            &format!("{}-other", ids[0]),
            &["--annotation", &network],
        )?;
    }
    let barrier = Barrier::new(ids.len());
    let results: Vec<Result<(Instant, Instant), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let barrier = &barrier;
                s.spawn(move || {
                    let api = Containerd::from_env(b.namespace)
                        .map(|c| c.with_timeout(Duration::from_secs(600)));
                    barrier.wait();
                    let api = api?;
                    let t0 = Instant::now();
                    if m == 0 {
                        let pid = api
                            .create_task(id)
                            .map_err(|e| format!("creating the task of {id}: {}", e.message()))?;
                        let dir = netns_dir(id);
                        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                        std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), dir.join("net"))
                            .map_err(|e| format!("{}: {e}", dir.display()))?;
                        cni.attach(&NetTarget::at(&dir), id, NETWORK, None)
                            .map_err(|e| format!("CNI ADD for {id}: {e}"))?;
                        api.start(id, "")
                            .map_err(|e| format!("starting {id}: {}", e.message()))?;
                        wait_ready(pid as i32, id)?;
                    } else {
                        api.start_task(id)?;
                    }
                    Ok((t0, Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a start thread panicked".into()))
            })
            .collect()
    });
    let times = results.into_iter().collect::<Result<Vec<_>, String>>()?;
    let first = times.iter().map(|t| t.0).min().ok_or("no starts")?;
    let last = times.iter().map(|t| t.1).max().ok_or("no starts")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((
        times.iter().map(|(a, b)| ms(*b - *a)).collect(),
        ms(last - first),
    ))
}

pub fn print(r: &Value) {
    println!(
        "\n## Burst: {} starts across {} functions at once, CNI network {} (ms; {} rounds)\n",
        r["n"], r["functions"], r["network"], r["rounds"]
    );
    println!(
        "start: Tasks.Create to ready (runc: with CNI ADD on the task's network namespace \
         before Tasks.Start, until the function logged ready; trenv: a restore into a \
         repurposed sandbox whose network was attached before); total: first Create to the \
         last start done\n"
    );
    println!("| mode | start P50 | start P99 | total P50 | total P99 | n |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    for (key, name) in [
        ("cold_runc_cni", "(a) runc.v2 cold + CNI per container"),
        (
            "repurposed_restore_cni",
            "(e) template restore, repurposed sandbox with its network",
        ),
    ] {
        let m = &r["modes"][key];
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            f(&m["start_ms"]["p50"]),
            f(&m["start_ms"]["p99"]),
            f(&m["total_ms"]["p50"]),
            f(&m["total_ms"]["p99"]),
            m["start_ms"]["n"]
        );
    }
    let p = |k: &str, w: &str, q: &str| r["modes"][k][w][q].as_f64().unwrap_or(f64::NAN);
    let r99 =
        p("cold_runc_cni", "start_ms", "p99") / p("repurposed_restore_cni", "start_ms", "p99");
    println!(
        "\nburst P99: (e) {r99:.1}x better than runc.v2 (target >= 10x: {}); P50 {:.1}x; total {:.1}x",
        if r99 >= 10.0 { "MET" } else { "MISSED" },
        p("cold_runc_cni", "start_ms", "p50") / p("repurposed_restore_cni", "start_ms", "p50"),
        p("cold_runc_cni", "total_ms", "p50") / p("repurposed_restore_cni", "total_ms", "p50"),
    );
}
