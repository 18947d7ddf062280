//! Starts, one at a time: per function and mode, `--runs` rounds with the modes interleaved
//! (in order, then reversed, by round). Each start: the container copied from its model
//! (Containers.Create: "+container"), then through containerd's API Tasks.Create (+ CNI ADD
//! for runc) + Tasks.Start until the task runs ("Create to running"), then the function's
//! first check request forwarded over the bridge, tried again until answered correctly
//! ("Create to first response"), then the same request once more ("warm": what the function
//! itself takes, the part of the first response that no start can remove). Before each (e) start, untimed: the tenant's pool drained,
//! then an instance of another function started and removed, so that the only idle
//! sandbox is one that last ran another function; after the start, `trenv pool list`
//! tells whether the instance did get it. Mode (f): before the rounds, one untimed start of
//! each function leaves its instance in the shared shim's reserve; after each (f) start,
//! untimed, the shim's refill is waited for (the shim's log says when it is ready), so that
//! its restore neither competes with the next start nor is missing for the next (f) start.

use serde_json::{Value, json};

use super::containers::Conn;
use super::platform::{Mode, Platform, ShimLog, ms};
use super::{STOP, stats};

/// The samples of one function in one mode.
#[derive(Default)]
struct Cell {
    container: Vec<f64>,
    running: Vec<f64>,
    first: Vec<f64>,
    with_container: Vec<f64>,
    warm: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    repurposed: usize,
    /// (f) starts that took an instance from the reserve.
    reserved: usize,
}

pub fn run(p: &Platform, modes: &[Mode], runs: usize) -> Result<Value, String> {
    let conn = Conn::new(&p.namespace)?;
    let n = p.functions.len();
    let mut cells: Vec<Vec<Cell>> = (0..n)
        .map(|_| modes.iter().map(|_| Cell::default()).collect())
        .collect();
    if modes.contains(&Mode::Reserve) {
        for f in (0..n).filter(|&f| p.can(f, Mode::Reserve)) {
            let id = p.new_id(&format!("r-{}", p.functions[f].name));
            let started = p.start(&conn, f, Mode::Reserve, &id);
            let answered = started.and_then(|s| p.forward(f, 0, &s.instance, Mode::Reserve));
            p.remove(&conn, &id, Mode::Reserve);
            if let Err(e) = answered {
                eprintln!(
                    "[bench] {} (f), the reserve's first start: {e}",
                    p.functions[f].name
                );
            }
            wait_refill(p, f);
        }
    }
    for round in 0..runs {
        for (f, row) in cells.iter_mut().enumerate() {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..modes.len()).collect()
            } else {
                (0..modes.len()).rev().collect()
            };
            for m in order {
                if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err("interrupted".into());
                }
                let mode = modes[m];
                if !p.can(f, mode) {
                    continue;
                }
                let cell = &mut row[m];
                if let Err(e) = one(p, &conn, f, mode, cell) {
                    cell.errors += 1;
                    eprintln!("[bench] {} ({}): {e}", p.functions[f].name, mode.letter());
                    cell.first_error.get_or_insert(e);
                }
            }
        }
        eprintln!("[bench] starts: round {}/{runs} done", round + 1);
    }
    let mut out = serde_json::Map::new();
    for (f, row) in cells.iter_mut().enumerate() {
        let mut by_mode = serde_json::Map::new();
        for (m, c) in row.iter_mut().enumerate() {
            if !p.can(f, modes[m]) {
                continue;
            }
            by_mode.insert(
                modes[m].key().into(),
                json!({
                    "name": modes[m].name(),
                    "n": c.first.len(),
                    "errors": c.errors,
                    "first_error": c.first_error,
                    "container_ms": stats(&mut c.container),
                    "running_ms": stats(&mut c.running),
                    "first_response_ms": stats(&mut c.first),
                    "with_container_ms": stats(&mut c.with_container),
                    "warm_ms": stats(&mut c.warm),
                    "repurposed": (modes[m] == Mode::Repurposed).then_some(c.repurposed),
                    "reserved": (modes[m] == Mode::Reserve).then_some(c.reserved),
                }),
            );
        }
        out.insert(p.functions[f].name.clone(), Value::Object(by_mode));
    }
    Ok(json!({"runs": runs, "functions": out}))
}

/// One start of function `f` in `mode`, measured, then removed.
fn one(p: &Platform, conn: &Conn, f: usize, mode: Mode, cell: &mut Cell) -> Result<(), String> {
    if mode == Mode::Repurposed {
        p.idle_sandbox_from_other(conn, f)?;
    }
    let id = p.new_id(&format!("s-{}-{}", p.functions[f].name, mode.letter()));
    let log = ShimLog::here();
    let result = (|| {
        let s = p.start(conn, f, mode, &id)?;
        p.forward(f, 0, &s.instance, mode)?;
        let first = ms(s.created_at.elapsed());
        let again = std::time::Instant::now();
        p.forward(f, 0, &s.instance, mode)?;
        cell.warm.push(ms(again.elapsed()));
        cell.container.push(s.container_ms);
        cell.running.push(s.running_ms);
        cell.first.push(first);
        cell.with_container.push(s.container_ms + first);
        if mode == Mode::Repurposed && p.repurposed(&id) == Some(true) {
            cell.repurposed += 1;
        }
        Ok(())
    })();
    p.remove(conn, &id, mode);
    if mode == Mode::Reserve {
        if result.is_ok() && log.started_from_reserve(&id) {
            cell.reserved += 1;
        }
        wait_refill(p, f);
    }
    result
}

/// Waits (untimed, at most 20 s) for the reserve's instance of function `f` that the shim
/// restores after a mode (f) start.
fn wait_refill(p: &Platform, f: usize) {
    let Some(template) = p.templates[f].as_ref().map(|t| t.map.clone()) else {
        return;
    };
    let start = std::time::Instant::now();
    while trenv_integration::bench::ready_reserve_instances(|spec| {
        spec["annotations"]["io.trenv.template"] == template.as_str()
    }) == 0
    {
        if start.elapsed() > std::time::Duration::from_secs(20)
            || STOP.load(std::sync::atomic::Ordering::SeqCst)
        {
            eprintln!(
                "[bench] {} (f): no instance of the reserve ready within 20 s",
                p.functions[f].name
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The phase's tables: per function, a row per mode; then the ratios against (e).
pub fn print(r: &Value, modes: &[Mode]) {
    println!("\n## Starts, one at a time ({} rounds; ms)\n", r["runs"]);
    println!(
        "Create: Tasks.Create asked for (through containerd's API); running: Tasks.Create (+ CNI \
         ADD for runc) + Tasks.Start returned; first response: the function's first request \
         answered correctly over the bridge; +container: plus Containers.Create with its \
         snapshot before; warm: the same request again (the function's own time)\n"
    );
    println!(
        "| function | mode | n | err | Create→running P50 | P99 | Create→first response P50 | P99 | +container P50 | P99 | warm P50 |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let f1 = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let Some(functions) = r["functions"].as_object() else {
        return;
    };
    for (name, by_mode) in functions {
        for mode in modes {
            let c = &by_mode[mode.key()];
            if c.is_null() {
                continue;
            }
            println!(
                "| {name} | ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mode.letter(),
                c["n"],
                c["errors"],
                f1(&c["running_ms"]["p50"]),
                f1(&c["running_ms"]["p99"]),
                f1(&c["first_response_ms"]["p50"]),
                f1(&c["first_response_ms"]["p99"]),
                f1(&c["with_container_ms"]["p50"]),
                f1(&c["with_container_ms"]["p99"]),
                f1(&c["warm_ms"]["p50"]),
            );
        }
    }
    println!();
    for (name, by_mode) in functions {
        for mode in [Mode::Repurposed, Mode::Reserve] {
            let e = &by_mode[mode.key()];
            if e.is_null() {
                continue;
            }
            let l = mode.letter();
            let ratio = |m: Mode, q: &str| {
                let x = by_mode[m.key()]["first_response_ms"][q].as_f64();
                let y = e["first_response_ms"][q].as_f64();
                match (x, y) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.1}x", x / y),
                    _ => "-".into(),
                }
            };
            let how = if mode == Mode::Reserve {
                format!("from the reserve {} of {} times", e["reserved"], e["n"])
            } else {
                format!(
                    "in a repurposed sandbox {} of {} times",
                    e["repurposed"], e["n"]
                )
            };
            println!(
                "{name}: Create→first response, ({l}) vs (a) {} / {}, vs (c) {} / {}, vs (d) {} \
                 / {} (P50 / P99); ({l}) {how}",
                ratio(Mode::Runc, "p50"),
                ratio(Mode::Runc, "p99"),
                ratio(Mode::Copy, "p50"),
                ratio(Mode::Copy, "p99"),
                ratio(Mode::Map, "p50"),
                ratio(Mode::Map, "p99"),
            );
            if let (Some(p99), Some(warm)) = (
                e["first_response_ms"]["p99"].as_f64(),
                e["warm_ms"]["p50"].as_f64(),
            ) {
                let verdict = |x: f64| if x <= 25.0 { "MET" } else { "MISSED" };
                println!(
                    "{name}: ({l}) Create→first response P99 {p99:.1} ms (target <= 25 ms: {}); \
                     less the function's own warm time (P50 {warm:.1} ms): {:.1} ms ({})",
                    verdict(p99),
                    p99 - warm,
                    verdict(p99 - warm),
                );
            }
        }
    }
    if let Some(e) = functions
        .values()
        .flat_map(|m| m.as_object().into_iter().flat_map(|o| o.values()))
        .find_map(|c| c["first_error"].as_str())
    {
        println!("\nfirst error: {e}");
    }
}
