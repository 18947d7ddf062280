//! The memory of ten instances: per function, `--instances` (10) instances restored in mode
//! (c) (copy template: every page copied) and then in mode (e) (map template, repurposed
//! sandboxes), running at once, each having answered all its checks. Their memory: the sum
//! of the Pss of every process of each instance's tree (/proc/PID/smaps_rollup) — less, for
//! the map template, the Pss of the pool file's pages they map (shared, not theirs) — plus
//! the template's pool file (allocated size: what it holds in the tmpfs pool) counted once.

use std::fs;

use serde_json::{Value, json};
use trenv_integration::function;

use super::STOP;
use super::containers::Conn;
use super::platform::{Mode, Platform, Templates};

pub fn run(p: &Platform, instances: usize) -> Result<Value, String> {
    let conn = Conn::new(&p.namespace)?;
    let mut out = serde_json::Map::new();
    for (f, func) in p.functions.iter().enumerate() {
        let Some(t) = p.templates[f].as_ref() else {
            continue;
        };
        if !p.can(f, Mode::Copy) || !p.can(f, Mode::Repurposed) {
            continue;
        }
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        // A function whose instances fail is reported, not the end of the benchmark.
        let measured = |mode| {
            measure(p, &conn, f, mode, t, instances).unwrap_or_else(|e| {
                eprintln!("[bench] memory of {} ({}): {e}", func.name, mode.letter());
                json!({ "error": e })
            })
        };
        let copy = measured(Mode::Copy);
        let map = measured(Mode::Repurposed);
        let total = |v: &Value| v["total_kib"].as_u64().map(|k| k as f64);
        let reduction = match (total(&copy), total(&map)) {
            (Some(c), Some(m)) if c > 0.0 => Some(100.0 * (1.0 - m / c)),
            _ => None,
        };
        eprintln!(
            "[bench] memory of {instances} {} instances: (c) {} MiB, (e) {} MiB",
            func.name,
            copy["total_kib"].as_u64().unwrap_or(0) >> 10,
            map["total_kib"].as_u64().unwrap_or(0) >> 10
        );
        out.insert(
            func.name.clone(),
            json!({"copy_restore": copy, "repurposed_restore": map, "reduction_pct": reduction}),
        );
    }
    Ok(json!({"instances": instances, "functions": out}))
}

fn measure(
    p: &Platform,
    conn: &Conn,
    f: usize,
    mode: Mode,
    t: &Templates,
    n: usize,
) -> Result<Value, String> {
    let func = &p.functions[f];
    let mut ids = Vec::new();
    let result = (|| {
        let before = super::mem_used_kib();
        let mut pids = Vec::new();
        for _ in 0..n {
            if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("interrupted".to_string());
            }
            let id = p.new_id(&format!("m-{}-{}", func.name, mode.letter()));
            ids.push(id.clone());
            let s = p.start(conn, f, mode, &id)?;
            p.forward(f, 0, &s.instance, mode)?;
            function::check(func, &s.instance.ip)?;
            pids.push(s.instance.pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let after = super::mem_used_kib();
        let shared_file = (mode != Mode::Copy).then_some(t.map_pool_path.as_str());
        let (mut pss, mut of_template, mut processes) = (0, 0, 0);
        for pid in pids {
            for q in function::process_tree(pid) {
                pss += rollup_pss_kib(q);
                of_template += shared_file.map_or(0, |file| file_pss_kib(q, file));
                processes += 1;
            }
        }
        let pool = match mode {
            Mode::Copy => t.copy_pool_kib,
            _ => t.map_pool_kib,
        };
        Ok(json!({
            "instances": n,
            "processes": processes,
            "pss_sum_kib": pss,
            "pss_of_template_kib": of_template,
            "pool_file_kib": pool,
            "total_kib": pss - of_template.min(pss) + pool,
            "machine_used_delta_kib": after.saturating_sub(before),
        }))
    })();
    for id in &ids {
        p.remove(conn, id, mode);
    }
    result
}

/// Pss of process `pid`, KiB (/proc/PID/smaps_rollup).
fn rollup_pss_kib(pid: i32) -> u64 {
    rollup_kib(pid).0
}

/// Pss and Pss_Shmem of process `pid` (/proc/PID/smaps_rollup), KiB; 0 if it is gone.
fn rollup_kib(pid: i32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Pss_Shmem:"))
}

/// The root of the process tree whose memory an instance whose init is `pid` is charged
/// with: its shim (which may be shared by several instances: mode (f)), or the function's
/// own init if its parent is not a shim.
pub fn instance_root(pid: i32) -> i32 {
    trenv_integration::bench::ppid(pid)
        .filter(|&pp| {
            fs::read_to_string(format!("/proc/{pp}/comm"))
                .is_ok_and(|c| c.starts_with("containerd-shim"))
        })
        .unwrap_or(pid)
}

/// The memory of the instances whose inits are `pids`, KiB: the Pss of every process of
/// their shims' trees (the shim, trenv's zygote, the functions' processes; just the
/// function's tree if its parent is not a shim), each tree counted once however many
/// instances share its shim, less their Pss of shared memory (tmpfs: a map template's pool
/// file, counted once apart).
pub fn instances_kib(pids: impl IntoIterator<Item = i32>) -> u64 {
    let roots: std::collections::BTreeSet<i32> = pids.into_iter().map(instance_root).collect();
    roots.into_iter().map(tree_kib).sum()
}

/// [`instances_kib`] of one tree.
fn tree_kib(root: i32) -> u64 {
    function::process_tree(root)
        .into_iter()
        .map(|q| {
            let (pss, shmem) = rollup_kib(q);
            pss.saturating_sub(shmem)
        })
        .sum()
}

/// Pss of the pages of `file` that `pid` maps and has not written (written pages are
/// anonymous copies, its own), KiB (/proc/PID/smaps).
fn file_pss_kib(pid: i32, file: &str) -> u64 {
    if file.is_empty() {
        return 0;
    }
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut inside = false;
    let mut total: u64 = 0;
    let kib = |rest: &str| -> u64 {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.trim_end().ends_with(file);
        } else if inside {
            if let Some(rest) = line.strip_prefix("Pss:") {
                total += kib(rest);
            } else if let Some(rest) = line.strip_prefix("Anonymous:") {
                total = total.saturating_sub(kib(rest));
            }
        }
    }
    total
}

pub fn print(r: &Value) {
    println!(
        "\n## Memory of {} instances at once (MiB)\n",
        r["instances"]
    );
    println!(
        "total: sum of the Pss of every process of every instance, less the Pss of the map \
         template's shared pages, plus the template's pool file once\n"
    );
    println!(
        "| function | (c) Pss | (c) pool file | (c) total | (e) Pss | (e) of it template pages | (e) pool file | (e) total | reduction |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let Some(functions) = r["functions"].as_object() else {
        return;
    };
    let mib = |v: &Value| v.as_u64().unwrap_or(0) >> 10;
    let (mut c_sum, mut e_sum) = (0, 0);
    for (name, m) in functions {
        let (c, e) = (&m["copy_restore"], &m["repurposed_restore"]);
        if let Some(err) = c["error"].as_str().or(e["error"].as_str()) {
            println!(
                "| {name} | failed: {} |||||||| |",
                err.chars().take(300).collect::<String>()
            );
            continue;
        }
        c_sum += c["total_kib"].as_u64().unwrap_or(0);
        e_sum += e["total_kib"].as_u64().unwrap_or(0);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mib(&c["pss_sum_kib"]),
            mib(&c["pool_file_kib"]),
            mib(&c["total_kib"]),
            mib(&e["pss_sum_kib"]),
            mib(&e["pss_of_template_kib"]),
            mib(&e["pool_file_kib"]),
            mib(&e["total_kib"]),
            m["reduction_pct"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.0} %"))
        );
    }
    if c_sum > 0 {
        println!(
            "\nall functions: (c) {} MiB, (e) {} MiB: (e) uses {:.0} % of (c)'s memory, {:.0} % \
             less",
            c_sum >> 10,
            e_sum >> 10,
            100.0 * e_sum as f64 / c_sum as f64,
            100.0 * (1.0 - e_sum as f64 / c_sum as f64)
        );
    }
}
