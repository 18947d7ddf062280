//! The `trenv` CLI against a real containerd: `trenv trace` and `trenv meter hull`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use trenv_integration::{BUSYBOX, Ctr, RUNTIME, memphase, unique_id};

fn trenv() -> Command {
    trenv_integration::trenv_cli()
}

fn meter_dir() -> PathBuf {
    std::env::var_os("TRENV_METER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/trenv/meter"))
}

#[test]
fn trace_prints_the_full_report() {
    let c = Ctr::from_env();
    c.ensure_images();
    let out = trenv()
        .args([
            "trace",
            "--namespace",
            &c.namespace,
            "--function",
            "trace-test",
            BUSYBOX,
        ])
        .args(["sh", "-c", "echo traced"])
        .output()
        .expect("trenv trace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("traced"), "{text}");
    assert!(text.contains("function    trace-test"), "{text}");
    assert!(text.contains("exit        0"), "{text}");
    for model in [
        "aws-lambda-x86",
        "gcf-gen1",
        "azure-consumption",
        "cloudflare-workers",
    ] {
        assert!(text.contains(model), "{model} missing: {text}");
    }
}

#[test]
fn trace_of_a_missing_image_is_a_clear_error() {
    let c = Ctr::from_env();
    let out = trenv()
        .args([
            "trace",
            "--namespace",
            &c.namespace,
            "docker.io/trenv/no-such-image:latest",
            "true",
        ])
        .output()
        .expect("trenv trace");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-image"), "{err}");
}

/// 20 runs with input-dependent memory (20..60 MiB); the hull covers every one of them.
#[test]
fn hull_covers_every_run() {
    let c = Ctr::from_env();
    c.ensure_images();
    let function = unique_id("hullfn");
    let bin = memphase();
    let mount = format!(
        "type=bind,src={},dst=/memphase,options=rbind:ro",
        bin.display()
    );
    for i in 0..20u64 {
        let phases = [
            format!("{}:150", 20 + (i % 5) * 10),
            format!("{}:100", 10 + (i % 3) * 15),
        ];
        let id = format!("{function}-{i}");
        let ann = format!("io.trenv.function={function}");
        c.run(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &mount,
            "--annotation",
            &ann,
            BUSYBOX,
            &id,
            "/memphase",
            &phases[0],
            &phases[1],
        ])
        .ok();
    }
    std::thread::sleep(Duration::from_millis(300));
    let hull_file = std::env::temp_dir().join(format!("{function}.json"));
    let out = trenv()
        .args(["meter", "hull", "--function", &function, "--out"])
        .arg(&hull_file)
        .output()
        .expect("trenv meter hull");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hull: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&hull_file).unwrap()).unwrap();
    assert_eq!(hull["runs"], 20);
    let max: Vec<u64> = hull["max_hull_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let up: Vec<u64> = hull["upscaling_hull_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // Every sample of every run lies under both hulls.
    let text = std::fs::read_to_string(meter_dir().join("invocations.jsonl")).unwrap();
    let mut runs = 0;
    for rec in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if rec["function"] != function.as_str() {
            continue;
        }
        runs += 1;
        let csv =
            std::fs::read_to_string(meter_dir().join(rec["series"].as_str().unwrap())).unwrap();
        for line in csv.lines().skip(1) {
            let (t, v) = line.split_once(',').unwrap();
            let (t, v): (u64, u64) = (t.parse().unwrap(), v.parse().unwrap());
            let bin = (t / 100_000) as usize;
            assert!(
                v <= max[bin] && v <= up[bin],
                "run {} at {t} µs: {v} above the hull",
                rec["container_id"]
            );
        }
    }
    assert_eq!(runs, 20);
    // The 60 MiB phase shows up in the hull.
    assert!(max.iter().any(|&b| b >= 60 << 20), "{max:?}");
    let _ = std::fs::remove_file(hull_file);
}

/// The memory limit follows the hull of `io.trenv.meter.hull` live, and the process lives.
#[test]
fn autotuning_follows_the_hull_and_keeps_the_process_alive() {
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("autotune");
    const MIB: u64 = 1 << 20;
    let hull = serde_json::json!({
        "format": 1, "bin_ms": 100, "lookahead_bins": 2, "runs": 1,
        "max_hull_bytes": [40 * MIB, 40 * MIB, 80 * MIB, 80 * MIB, 80 * MIB, 80 * MIB],
        "upscaling_hull_bytes": [40 * MIB, 40 * MIB, 80 * MIB, 80 * MIB, 80 * MIB, 80 * MIB],
        "peak_bytes": 80 * MIB
    });
    let hull_file = hull_dir().join(format!("{id}.json"));
    std::fs::write(&hull_file, hull.to_string()).unwrap();
    let limit_file = if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        PathBuf::from(format!(
            "/sys/fs/cgroup/memory/{}/{id}/memory.limit_in_bytes",
            c.namespace
        ))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/{}/{id}/memory.max", c.namespace))
    };
    // Watch the container's limit from the host while it runs.
    let watcher = {
        let limit_file = limit_file.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<u64> = Vec::new();
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                if let Some(v) = std::fs::read_to_string(&limit_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    && seen.last() != Some(&v)
                {
                    seen.push(v);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    let bin = memphase();
    let mount = format!(
        "type=bind,src={},dst=/memphase,options=rbind:ro",
        bin.display()
    );
    let ann = format!("io.trenv.meter.hull={}", hull_file.display());
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &mount,
        "--annotation",
        &ann,
        BUSYBOX,
        &id,
        "/memphase",
        "20:250",
        "60:250",
    ]);
    assert_eq!(r.code, 0, "the process must survive autotuning: {r:#?}");
    let seen = watcher.join().unwrap();
    let pos = |v: u64| seen.iter().position(|&s| s == v);
    let (first, second) = (pos(40 * MIB), pos(80 * MIB));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "limits seen: {seen:?}"
    );
    let _ = std::fs::remove_file(hull_file);
}

/// Where the shim reads hull files from (trenv's default `[meter] hull_dir`).
fn hull_dir() -> PathBuf {
    let dir = PathBuf::from("/var/lib/trenv/hulls");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Host files that a hull annotation names outside the hull directory are refused before
/// anything reads them: no content in the error, no hang on a FIFO, no gigabytes from
/// /dev/zero; a FIFO inside the directory is refused at once too.
#[test]
fn hull_files_outside_the_hull_directory_are_refused_unread() {
    let c = Ctr::from_env();
    c.ensure_images();
    let fifo_out = std::env::temp_dir().join(unique_id("hullfifo"));
    let fifo_in = hull_dir().join(format!("{}.json", unique_id("hullfifo")));
    for f in [&fifo_out, &fifo_in] {
        assert!(Command::new("mkfifo").arg(f).status().unwrap().success());
    }
    let cases = [
        ("/etc/shadow".to_string(), "hull files are read only from"),
        ("/dev/zero".to_string(), "hull files are read only from"),
        (
            "../../../etc/passwd".to_string(),
            "hull files are read only from",
        ),
        (
            fifo_out.display().to_string(),
            "hull files are read only from",
        ),
        (fifo_in.display().to_string(), "is not a regular file"),
    ];
    for (value, says) in cases {
        let id = unique_id("hullpath");
        let ann = format!("io.trenv.meter.hull={value}");
        let began = std::time::Instant::now();
        let r = c.run(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &ann,
            BUSYBOX,
            &id,
            "true",
        ]);
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{value}: took {:?}",
            began.elapsed()
        );
        assert_ne!(r.code, 0, "{value}: {r:#?}");
        assert!(
            r.stderr.contains("io.trenv.meter.hull") && r.stderr.contains(says),
            "{value}: {r:#?}"
        );
        assert!(
            !r.stderr.contains("root:"),
            "{value}: the error shows file content: {r:#?}"
        );
        assert_eq!(c.task_status(&id), None, "{value}");
        c.remove(&id);
    }
    for f in [&fifo_out, &fifo_in] {
        let _ = std::fs::remove_file(f);
    }
}

/// A hull that asks for more memory than the spec's limit never gets it.
#[test]
fn a_hull_never_raises_the_memory_limit_above_the_specs() {
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("hullcap");
    const MIB: u64 = 1 << 20;
    let hull = serde_json::json!({
        "format": 1, "bin_ms": 50, "lookahead_bins": 0, "runs": 1,
        "max_hull_bytes": vec![1024 * MIB; 8], "upscaling_hull_bytes": vec![1024 * MIB; 8],
        "peak_bytes": 1024 * MIB
    });
    let hull_file = hull_dir().join(format!("{id}.json"));
    std::fs::write(&hull_file, hull.to_string()).unwrap();
    let limit_file = if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        PathBuf::from(format!(
            "/sys/fs/cgroup/memory/{}/{id}/memory.limit_in_bytes",
            c.namespace
        ))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/{}/{id}/memory.max", c.namespace))
    };
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<u64> = Vec::new();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Some(v) = std::fs::read_to_string(&limit_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                && seen.last() != Some(&v)
            {
                seen.push(v);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    });
    let ann = format!("io.trenv.meter.hull={}", hull_file.display());
    let limit = (64 * MIB).to_string();
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit,
        "--annotation",
        &ann,
        BUSYBOX,
        &id,
        "sleep",
        "1",
    ]);
    assert_eq!(r.code, 0, "{r:#?}");
    let seen = watcher.join().unwrap();
    // A cgroup is made without a limit (v1 shows the kernel's "no limit", 2^63 rounded down
    // to pages; v2's "max" does not parse) and gets the spec's a moment later: the watcher
    // may read it in between. What counts is every value from the first limit on.
    let applied: Vec<u64> = seen.iter().copied().skip_while(|&v| v >= 1 << 62).collect();
    assert!(!applied.is_empty(), "no limit was ever read: {seen:?}");
    assert!(
        applied.iter().all(|&v| v <= 64 * MIB),
        "the hull raised the limit above the spec's 64 MiB: {seen:?}"
    );
    let _ = std::fs::remove_file(hull_file);
}

#[test]
fn an_unreadable_hull_annotation_is_a_clear_error() {
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("badhull");
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.trenv.meter.hull=/nonexistent/hull.json",
        BUSYBOX,
        &id,
        "true",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("io.trenv.meter.hull") && r.stderr.contains("trenv meter hull"),
        "{r:#?}"
    );
    assert_eq!(c.task_status(&id), None);
}
