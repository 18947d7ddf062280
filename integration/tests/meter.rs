//! Metering through containerd: every invocation leaves an exact record.
//!
//! A test program (fixtures/memphase.c, built statically and bind-mounted into busybox)
//! allocates and touches known amounts of memory in known phases and reports its own
//! view of the truth (elapsed time, VmHWM).

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use trenv_integration::api::Containerd;
use trenv_integration::cri::{containerd_state_dir, shim_processes, wait_for};
use trenv_integration::tracefs::ExecExitTrace;
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, memphase, pids_matching, unique_id};

/// The annotation of the sampling interval, and its bounds (docs/metering.md).
const INTERVAL: &str = "io.trenv.meter.interval-us";
const MAX_INTERVAL_US: u64 = 10_000_000;
const MIN_INTERVAL_US: u64 = 1_000;

/// The duration test measures to the millisecond against the kernel: the other tests of
/// this file (which load the machine with containers) do not run beside it.
static QUIET: RwLock<()> = RwLock::new(());

fn alone() -> RwLockWriteGuard<'static, ()> {
    QUIET.write().unwrap_or_else(|e| e.into_inner())
}

fn beside_others() -> RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|e| e.into_inner())
}

use trenv_integration::{meter_dir, record_in};

fn record_of(id: &str, exec_id: &str) -> serde_json::Value {
    record_in(&meter_dir(), id, exec_id)
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
    // Not in ctr's spec: the shim asked containerd for it.
    assert_eq!(rec["image"], BUSYBOX);
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

    // Duration on the monotonic clock: from the program's exec to the end of its exit. The
    // truth is the kernel's (its execve, and the SIGCHLD its exit sends its parent once its
    // memory is torn down: integration/src/tracefs.rs); the program's own main-to-return
    // time is shorter by its start-up and exit.
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
         {end_err:+} µs; the exit began {} µs before it ended), program main→return \
         {elapsed_us} µs, peak {peak}, hwm {hwm}",
        life.exit_begin_us.map_or(0, |b| exit_us.saturating_sub(b))
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

/// An interval above the longest or below the shortest allowed is refused at Create with
/// INVALID_ARGUMENT (checked through containerd's API, which carries the code on both
/// lines), naming the annotation and the range; nothing of the container is left.
#[test]
fn an_interval_outside_the_bounds_is_refused_at_create_and_leaves_nothing() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    let api = Containerd::from_env(&c.namespace).unwrap_or_else(|e| panic!("{e}"));
    for us in [MAX_INTERVAL_US + 1, 3_600_000_000, MIN_INTERVAL_US - 1, 1] {
        let id = unique_id("meterrange");
        let annotation = format!("{INTERVAL}={us}");
        c.run(&[
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            "--annotation",
            &annotation,
            BUSYBOX,
            &id,
            "true",
        ])
        .ok();
        let created = api.create_task(&id);
        let left_task = c.task_status(&id);
        c.remove(&id);
        let status = match created {
            Ok(pid) => panic!("{annotation}: the task was created (pid {pid})"),
            Err(status) => status,
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{annotation}: {status:?}"
        );
        let msg = status.message();
        assert!(
            msg.contains(INTERVAL) && msg.contains("1000 to 10000000 microseconds"),
            "{annotation}: the message must name the annotation and the range: {msg:?}"
        );
        assert!(
            left_task.is_none(),
            "{annotation}: a task is left: {left_task:?}"
        );
        assert_nothing_left(&c, &id);
    }
}

/// Nothing of container `id` (already removed) is left: no container, shim, mount,
/// bundle, cgroup or metering record.
fn assert_nothing_left(c: &Ctr, id: &str) {
    let listed = c.run(&["containers", "ls", "-q"]).ok().stdout;
    assert!(
        !listed.lines().any(|l| l.trim() == id),
        "container {id} still listed"
    );
    let needle = format!("-id {id} ");
    assert!(
        wait_for(Duration::from_secs(10), || shim_processes(&needle)
            .is_empty()),
        "the shim of {id} still runs"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !info.lines().any(|l| l.contains(&format!("/{id}/"))),
        "a mount of {id} is left"
    );
    let bundle = containerd_state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(&c.namespace)
        .join(id);
    assert!(!bundle.exists(), "bundle {} left", bundle.display());
    let cgroups = ["memory", "pids", "freezer", "cpu", "devices"]
        .iter()
        .map(|ctl| {
            Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(&c.namespace)
                .join(id)
        })
        .chain([Path::new("/sys/fs/cgroup").join(&c.namespace).join(id)]);
    for dir in cgroups {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
    let log = std::fs::read_to_string(meter_dir().join("invocations.jsonl")).unwrap_or_default();
    assert!(
        !log.contains(&format!("\"container_id\":\"{id}\"")),
        "a metering record of {id}, which never ran"
    );
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// With the longest allowed interval (10 s) the sampler is asleep when the process exits:
/// the exit is reported, and `ctr run` returns, at once rather than when the sleep ends.
#[test]
fn a_container_with_the_longest_interval_exits_promptly() {
    let _quiet = beside_others();
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("meterlong");
    let annotation = format!("{INTERVAL}={MAX_INTERVAL_US}");
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        BUSYBOX,
        &id,
        "sh",
        "-c",
        "sleep 0.5",
    ]);
    let returned = now_us();
    r.ok();
    let rec = record_of(&id, "");
    assert_eq!(rec["sample_interval_us"], MAX_INTERVAL_US, "{rec}");
    // From the process's exit (the record's end) to ctr's return: a correctness bound,
    // well under the interval, not a benchmark.
    let bound_us =
        (2_000_000 * trenv_integration::time_scale() as i64).min(MAX_INTERVAL_US as i64 / 2);
    let late = returned - rec["ended_at_us"].as_i64().unwrap();
    assert!(
        late < bound_us,
        "ctr run returned {late} µs after the process exited (bound {bound_us} µs)"
    );
}

/// A tmpfs mounted for the test, unmounted (lazily if busy) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "trenv-test-meter",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// trenv's config file (/etc/trenv/config.toml, which every new shim reads at its start)
/// replaced for the test, and put back as it was when dropped.
struct ConfigFile {
    path: PathBuf,
    before: Option<Vec<u8>>,
    made_dir: bool,
}

impl ConfigFile {
    fn write(text: &str) -> ConfigFile {
        let path = PathBuf::from("/etc/trenv/config.toml");
        let dir = path.parent().unwrap();
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).unwrap();
        let before = std::fs::read(&path).ok();
        let tmp = path.with_extension("toml.test");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        ConfigFile {
            path,
            before,
            made_dir,
        }
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        match &self.before {
            Some(b) => {
                let _ = std::fs::write(&self.path, b);
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
                if self.made_dir {
                    let _ = std::fs::remove_dir(self.path.parent().unwrap());
                }
            }
        }
    }
}

/// Fills the filesystem of `dir` until a write fails for want of space.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
}

/// A meter directory with no space left keeps every record: each record (one line, which
/// fits in the slack of the log's last page) is written before its series (which needs a
/// page of its own and cannot be written), names its missing series, and no temporary
/// series file is left. The directory is a tiny tmpfs that trenv's config file names
/// while the test's shims start (containerd passes no TRENV_METER_DIR here).
#[test]
fn a_full_meter_directory_keeps_every_record() {
    let _quiet = alone();
    let c = Ctr::from_env();
    c.ensure_images();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("meter");
    let tmpfs = Tmpfs::mount(&dir, "64k");
    // The log exists and its page has room; the series directory exists; no space else.
    std::fs::write(dir.join("invocations.jsonl"), "\n").unwrap();
    std::fs::create_dir(dir.join("series")).unwrap();
    fill(&dir);
    let config = ConfigFile::write(&format!("[meter]\ndir = \"{}\"\n", dir.display()));

    let long = unique_id("meterfull");
    c.run_busybox_detached(&long, &["sleep", "300"]);
    assert!(c.wait_status(&long, "RUNNING", Duration::from_secs(10)));
    let short = unique_id("meterfull");
    c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &short,
        "sh",
        "-c",
        "sleep 0.3",
    ])
    .ok();
    drop(config); // both shims have read it
    c.run(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        &long,
        "sh",
        "-c",
        "sleep 0.3",
    ])
    .ok();
    std::thread::sleep(Duration::from_millis(300));
    c.remove(&long);

    let records = [
        record_in(&dir, &short, ""),
        record_in(&dir, &long, "x1"),
        record_in(&dir, &long, ""),
    ];
    for rec in &records {
        assert!(rec["samples"].as_u64().unwrap() > 0, "{rec}");
        let series = rec["series"].as_str().unwrap();
        assert!(!series.is_empty(), "{rec}");
        assert!(
            !dir.join(series).exists(),
            "a series was written on a full disk: {rec}"
        );
    }
    let left: Vec<String> = std::fs::read_dir(dir.join("series"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in series/: {left:?}");
    drop(tmpfs);
}
