//! The `trenv` command line on a meter directory with known records.

use std::process::Command;

use trenv_meter::record::{FORMAT, Identity, Invocation, write_record};

fn record(
    container: &str,
    function: &str,
    duration_ms: u64,
    peak_mib: u64,
    exit: u32,
) -> Invocation {
    Invocation {
        format: FORMAT,
        identity: Identity {
            namespace: "default".into(),
            container_id: container.into(),
            function: function.into(),
            ..Default::default()
        },
        pid: 42,
        started_at_us: 1_700_000_000_000_000,
        ended_at_us: 1_700_000_000_000_000 + (duration_ms * 1000) as i64,
        duration_us: duration_ms * 1000,
        cpu_user_us: 1000,
        cpu_system_us: 500,
        memory_peak_bytes: peak_mib << 20,
        memory_sampled_max_bytes: peak_mib << 20,
        memory_limit_bytes: 0,
        oom_kills: 0,
        exit_status: exit,
        cgroup_version: 1,
        sample_interval_us: 10_000,
        samples: 3,
        series: String::new(),
    }
}

fn trenv(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trenv"))
        .arg("meter")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running trenv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, d) in [100, 200, 300, 400].iter().enumerate() {
        write_record(
            dir.path(),
            record(&format!("f-{i}"), "resize", *d, 10 * (i as u64 + 1), 0),
            &[(0, 1 << 20), (10_000, 5 << 20), (20_000, 2 << 20)],
        )
        .unwrap();
    }
    write_record(dir.path(), record("g-0", "thumb", 50, 64, 1), &[]).unwrap();
    dir
}

#[test]
fn list_shows_every_record() {
    let dir = fixture();
    let (code, out, err) = trenv(dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 6, "{out}");
    assert!(out.contains("2023-11-14T22:13:20.000Z"), "{out}");
    let (_, out, _) = trenv(dir.path(), &["list", "--function", "thumb", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["container_id"], "g-0");
}

#[test]
fn show_prints_one_invocation_with_its_series() {
    let dir = fixture();
    let (code, out, err) = trenv(dir.path(), &["show", "f-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("duration    200.000 ms"), "{out}");
    assert!(out.contains("peak 20.00 MiB"), "{out}");
    assert!(out.contains("3 samples"), "{out}");
    assert!(
        out.contains("aws-lambda-x86") && out.contains("cloudflare-workers"),
        "{out}"
    );
    let (code, _, err) = trenv(dir.path(), &["show", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no record for container nope"), "{err}");
}

#[test]
fn summary_groups_by_function_with_percentiles() {
    let dir = fixture();
    let (code, out, err) = trenv(dir.path(), &["summary", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let resize = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "resize")
        .unwrap();
    assert_eq!(resize["count"], 4);
    assert_eq!(resize["duration_ms_p50"], 200.0);
    assert_eq!(resize["duration_ms_p99"], 400.0);
    assert_eq!(resize["peak_mib_p90"], 40.0);
    let thumb = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "thumb")
        .unwrap();
    assert_eq!(thumb["failures"], 1);
    // thumb: 50 ms, 64 MiB peak, no limit -> AWS x86 bills 128 MB for 50 ms:
    // 0.05 s * 0.125 GB * 0.0000166667 + 0.0000002 = 3.041669e-7 $ -> 0.3041669 $/M.
    let aws = thumb["costs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "aws-lambda-x86")
        .unwrap();
    let per_million = aws["cost_per_million_usd"].as_f64().unwrap();
    assert!((per_million - 0.3041669).abs() < 1e-6, "{per_million}");
}

#[test]
fn export_writes_csv_and_openmetrics() {
    let dir = fixture();
    let (_, csv, _) = trenv(dir.path(), &["export"]);
    assert_eq!(csv.lines().count(), 6);
    assert!(
        csv.lines().nth(1).unwrap().contains(",f-0,,resize,100000,"),
        "{csv}"
    );
    let (_, om, _) = trenv(dir.path(), &["export", "--format", "openmetrics"]);
    assert!(om.contains("trenv_invocation_memory_peak_bytes{namespace=\"default\",container=\"f-0\",exec=\"\",function=\"resize\"} 10485760"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"));
}

#[test]
fn a_price_file_overrides_the_built_in_models() {
    let dir = fixture();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "[[model]]\nname = \"aws-lambda-x86\"\nrequest_usd_per_million = 1.0\n",
    )
    .unwrap();
    let (code, out, err) = trenv(
        dir.path(),
        &[
            "show",
            "g-0",
            "--json",
            "--prices",
            prices.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let aws = v["bills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["model"] == "aws-lambda-x86")
        .unwrap();
    // 0.05 * 0.125 * 0.0000166667 + 1e-6 = 1.1041669e-6
    assert!(
        (aws["cost_usd"].as_f64().unwrap() - 1.1041669e-6).abs() < 1e-12,
        "{aws}"
    );
    std::fs::write(
        &prices,
        "[[model]]\nname = \"aws-lambda-x86\"\ngranularity_ms = \"fast\"\n",
    )
    .unwrap();
    let (code, _, err) = trenv(dir.path(), &["list", "--prices", prices.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("granularity_ms"), "{err}");
}

#[test]
fn plot_writes_an_svg_of_an_invocation() {
    let dir = fixture();
    let svg = dir.path().join("f-1.svg");
    let (code, _, err) = trenv(dir.path(), &["plot", "f-1", "--out", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<svg") && text.contains("exact peak"),
        "{}",
        &text[..200.min(text.len())]
    );
    let (code, _, err) = trenv(dir.path(), &["plot", "f-1", "--out", "/tmp/x.gif"]);
    assert_ne!(code, 0);
    assert!(err.contains(".svg or *.png"), "{err}");
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let (code, _, err) = trenv(std::path::Path::new("/nonexistent/meter"), &["list"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no meter directory at /nonexistent/meter"),
        "{err}"
    );
}
