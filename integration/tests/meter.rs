//! Metering through containerd: every invocation leaves an exact record.
//!
//! A test program (fixtures/memphase.c, built statically and bind-mounted into busybox)
//! allocates and touches known amounts of memory in known phases and reports its own
//! view of the truth (elapsed time, VmHWM).

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use trenv_integration::tracefs::ExecExitTrace;
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, memphase, pids_matching, unique_id};

/// The duration test measures to the millisecond against the kernel: the other tests of
/// this file (which load the machine with containers) do not run beside it.
static QUIET: RwLock<()> = RwLock::new(());

fn alone() -> RwLockWriteGuard<'static, ()> {
    QUIET.write().unwrap_or_else(|e| e.into_inner())
}

fn beside_others() -> RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|e| e.into_inner())
}

fn meter_dir() -> PathBuf {
    std::env::var_os("TRENV_METER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/trenv/meter"))
}

fn record_of(id: &str, exec_id: &str) -> serde_json::Value {
    let path = meter_dir().join("invocations.jsonl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(r) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|r| r["container_id"] == id && r["exec_id"] == exec_id)
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no metering record for {id}/{exec_id} in {}",
        path.display()
    );
}

fn series(rec: &serde_json::Value) -> Vec<(u64, u64)> {
    let path = meter_dir().join(rec["series"].as_str().expect("series path"));
    let text = std::fs::read_to_string(&path).expect("series file");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (t, v) = l.split_once(',')?;
            Some((t.parse().ok()?, v.parse().ok()?))
        })
        .collect()
}

fn run_memphase(c: &Ctr, id: &str, flags: &[&str], phases: &[&str]) -> trenv_integration::Run {
    let bin = memphase();
    let mount = format!(
        "type=bind,src={},dst=/memphase,options=rbind:ro",
        bin.display()
    );
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME, "--mount", &mount];
    a.extend_from_slice(flags);
    a.push(BUSYBOX);
    a.push(id);
    a.push("/memphase");
    a.extend_from_slice(phases);
    c.run(&a)
}

fn field(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in {out:?}"))
}

#[test]
fn record_has_exact_peak_duration_and_both_phases() {
    let _quiet = alone();
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("meter");
    // The kernel's view of the program's life: its exec and its exit.
    let trace = ExecExitTrace::start(&unique_id("trenv-meter-test"), "memphase");
    let r = run_memphase(
        &c,
        &id,
        &["--annotation", "io.trenv.function=memphase"],
        &["50:300", "120:200"],
    )
    .ok();
    let (elapsed_us, hwm) = (
        field(&r.stdout, "elapsed_us"),
        field(&r.stdout, "hwm_kb") << 10,
    );
    let rec = record_of(&id, "");
    assert_eq!(rec["format"], 1);
    assert_eq!(rec["function"], "memphase");
    assert_eq!(rec["exit_status"], 0);
    assert_eq!(rec["namespace"], c.namespace.as_str());

    // The exact peak: the program's high-water mark plus what the kernel charges around
    // it (page tables, its binary), within 2 %.
    let peak = rec["memory_peak_bytes"].as_u64().unwrap();
    let err = (peak as f64 - hwm as f64).abs() / hwm as f64;
    assert!(
        err < 0.02,
        "peak {peak} vs VmHWM {hwm}: {:.2} % off",
        err * 100.0
    );

    // Duration on the monotonic clock: from the program's exec to its exit. The truth is
    // the kernel's (the scheduler's exec and exit tracepoints); the program's own
    // main-to-return time is shorter by its start-up and exit.
    let dur = rec["duration_us"].as_u64().unwrap();
    let pid = rec["pid"].as_i64().unwrap() as i32;
    let life = trace.lifetimes().get(&pid).copied().unwrap_or_default();
    let (Some(exec_us), Some(exit_us)) = (life.exec_us, life.exit_us) else {
        panic!("the kernel trace lacks the exec or exit of pid {pid}: {life:?}");
    };
    let truth = exit_us - exec_us;
    // Where the ends lie against the kernel's (wall clock = CLOCK_MONOTONIC + offset).
    let offset = trenv_integration::tracefs::wall_minus_monotonic_us();
    let start_err = rec["started_at_us"].as_i64().unwrap() - (exec_us as i64 + offset);
    let end_err = rec["ended_at_us"].as_i64().unwrap() - (exit_us as i64 + offset);
    let bound = 2_000 * trenv_integration::time_scale();
    assert!(
        dur.abs_diff(truth) <= bound,
        "duration {dur} µs vs the kernel's exec→exit {truth} µs: more than {bound} µs apart \
         (start {start_err:+} µs, end {end_err:+} µs against the kernel's)"
    );
    eprintln!(
        "duration {dur} µs, kernel exec→exit {truth} µs (start {start_err:+} µs, end \
         {end_err:+} µs), program main→return {elapsed_us} µs, peak {peak}, hwm {hwm}"
    );
    assert!(
        dur >= elapsed_us,
        "duration {dur} µs < the program's own {elapsed_us} µs"
    );
    let (start, end) = (
        rec["started_at_us"].as_i64().unwrap(),
        rec["ended_at_us"].as_i64().unwrap(),
    );
    assert!(
        (end - start - dur as i64).abs() < 5_000,
        "wall {start}..{end} vs {dur}"
    );

    // The series shows both phases: ~50 MiB, then ~120 MiB.
    let s = series(&rec);
    assert_eq!(s.len() as u64, rec["samples"].as_u64().unwrap());
    let mib = |v: u64| v >> 20;
    assert!(
        s.iter().any(|&(_, v)| (48..=60).contains(&mib(v))),
        "no ~50 MiB phase: {s:?}"
    );
    assert!(
        s.iter().any(|&(_, v)| (118..=130).contains(&mib(v))),
        "no ~120 MiB phase: {s:?}"
    );
    let first_big = s.iter().position(|&(_, v)| mib(v) >= 118).unwrap();
    let first_mid = s
        .iter()
        .position(|&(_, v)| (48..=60).contains(&mib(v)))
        .unwrap();
    assert!(first_mid < first_big, "phases out of order");
    assert!(rec["memory_sampled_max_bytes"].as_u64().unwrap() <= peak);
}

#[test]
fn oom_killed_invocation_is_recorded_as_such() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("meteroom");
    let r = run_memphase(&c, &id, &["--memory-limit", "67108864"], &["200:100"]);
    assert_eq!(r.code, 137, "{r:#?}");
    let rec = record_of(&id, "");
    assert_eq!(rec["exit_status"], 137);
    assert!(rec["oom_kills"].as_u64().unwrap() >= 1, "{rec}");
    assert_eq!(rec["memory_limit_bytes"], 67108864);
    assert!(
        rec["memory_peak_bytes"].as_u64().unwrap() <= 67108864,
        "{rec}"
    );
}

#[test]
fn execs_are_invocations_too() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("meterexec");
    c.run_busybox_detached(&id, &["sleep", "300"]);
    assert!(c.wait_status(&id, "RUNNING", Duration::from_secs(10)));
    c.run(&["task", "exec", "--exec-id", "x1", &id, "sh", "-c", "exit 4"]);
    let rec = record_of(&id, "x1");
    assert_eq!(rec["exit_status"], 4);
    c.remove(&id);
    let init = record_of(&id, "");
    assert_eq!(init["exit_status"], 137);
}

/// A cgroup that served an earlier, bigger invocation: an exec started after the init
/// process's 48 MB spike reports its own peak, not the spike, and the init process's
/// record still holds its spike. On v2 (Linux >= 6.12) each invocation resets
/// `memory.peak` through its own descriptor; on v1, whose one counter an exec's reset
/// clears, the meter hands the peak so far to the running invocations first.
#[test]
fn a_reused_cgroup_reports_each_invocations_own_peak() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("meterreuse");
    c.run_busybox_detached(
        &id,
        &[
            "sh",
            "-c",
            "(x=$(head -c 48000000 /dev/zero | tr '\\0' a)); touch /tmp/spiked; sleep 300",
        ],
    );
    let start = Instant::now();
    while c
        .run(&[
            "task",
            "exec",
            "--exec-id",
            &unique_id("probe"),
            &id,
            "test",
            "-f",
            "/tmp/spiked",
        ])
        .code
        != 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the spike did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.run(&["task", "exec", "--exec-id", "after", &id, "true"])
        .ok();
    let after = record_of(&id, "after");
    let peak = after["memory_peak_bytes"].as_u64().expect("peak");
    assert!(
        peak > 0 && peak < 24_000_000,
        "the exec's own peak expected, not the init process's spike: {after}"
    );
    c.remove(&id);
    let init = record_of(&id, "");
    assert!(
        init["memory_peak_bytes"].as_u64().expect("peak") >= 48_000_000,
        "the init process's spike expected in its record: {init}"
    );
}

#[test]
fn records_survive_a_shim_kill() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    let before = unique_id("meterkept");
    c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &before,
        "true",
    ])
    .ok();
    record_of(&before, "");
    let id = unique_id("meterkill");
    c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &id,
        "sleep",
        "300",
    ])
    .ok();
    assert!(c.wait_status(&id, "RUNNING", Duration::from_secs(10)));
    for pid in pids_matching(&format!("-id {id} -address")) {
        let _ = nix_kill(pid);
    }
    std::thread::sleep(Duration::from_millis(300));
    c.remove(&id);
    // The log still parses and still holds the earlier record.
    let text = std::fs::read_to_string(meter_dir().join("invocations.jsonl")).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("\"container_id\":\"{before}\"")))
    );
    assert!(Path::new(&meter_dir()).join("series").is_dir());
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid read from /proc.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn sampling_interval_per_container_and_bad_values() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    // 1 ms sampling keeps up: a 300 ms hold yields well over 200 samples.
    let id = unique_id("meter1ms");
    run_memphase(
        &c,
        &id,
        &["--annotation", "io.trenv.meter.interval-us=1000"],
        &["10:300"],
    )
    .ok();
    let rec = record_of(&id, "");
    assert_eq!(rec["sample_interval_us"], 1000);
    assert!(rec["samples"].as_u64().unwrap() >= 200, "{rec}");
    // 0: no series, but the exact peak.
    let id = unique_id("meter0");
    run_memphase(
        &c,
        &id,
        &["--annotation", "io.trenv.meter.interval-us=0"],
        &["10:50"],
    )
    .ok();
    let rec = record_of(&id, "");
    assert_eq!(rec["samples"], 0);
    assert!(
        rec["memory_peak_bytes"].as_u64().unwrap() >= 10 << 20,
        "{rec}"
    );
    // A value that is not a number is refused at create, naming the annotation.
    let id = unique_id("meterbad");
    let r = run_memphase(
        &c,
        &id,
        &["--annotation", "io.trenv.meter.interval-us=fast"],
        &["1:1"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("io.trenv.meter.interval-us"), "{r:#?}");
}
