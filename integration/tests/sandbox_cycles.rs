//! 1,000 take/release cycles of one sandbox through a real containerd leave nothing behind:
//! the counts of mounts, pinned namespaces, cgroups, the shim's open descriptors and
//! threads and trenv's processes are where they started, and the pool holds one idle
//! sandbox that ran every container. The containers are grouped into one shim (as CRI
//! groups a pod's) by `io.kubernetes.cri.sandbox-id`, so that one shim process serves every
//! cycle and its descriptors can be counted. (Its own test binary, so that nothing else
//! runs meanwhile.) `TRENV_SANDBOX_CYCLES` sets the count.

use std::fs;

use trenv_integration::cri::shim_servers;
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, trenv_cli, unique_id};

fn cycles() -> usize {
    std::env::var("TRENV_SANDBOX_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// What must not grow.
#[derive(Debug, PartialEq)]
struct Counts {
    mounts: usize,
    pins: usize,
    cgroups: usize,
    shim_fds: usize,
    shim_threads: usize,
    shims: usize,
}

fn count(ns: &str, shim: i32) -> Counts {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let entries = |d: &str| fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    Counts {
        mounts: info.lines().count(),
        pins: trenv_runtime::sandbox::store::pinned().unwrap(),
        cgroups: entries(&format!("/sys/fs/cgroup/memory/{ns}"))
            + entries(&format!("/sys/fs/cgroup/{ns}")),
        shim_fds: entries(&format!("/proc/{shim}/fd")),
        shim_threads: entries(&format!("/proc/{shim}/task")),
        shims: trenv_integration::pids_matching(&format!("-namespace {ns} ")).len(),
    }
}

#[test]
fn a_thousand_take_release_cycles_leave_nothing_behind() {
    let ns = unique_id("trenv-sbcycle");
    let c = Ctr::from_env().with_namespace(&ns);
    c.ensure_images();
    let group = format!("io.kubernetes.cri.sandbox-id={}", unique_id("group"));
    let anchor = unique_id("anchor");
    c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &group,
        "--annotation",
        "io.trenv.repurpose=false",
        BUSYBOX,
        &anchor,
        "sleep",
        "3600",
    ])
    .ok();
    let cycle = |i: usize| {
        let id = format!("cycle-{i}");
        c.run(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &group,
            "--annotation",
            "io.trenv.repurpose=true",
            BUSYBOX,
            &id,
            "true",
        ])
        .ok();
    };
    // Idle sandboxes that earlier suites left (of any tenant) would reach their keep-alive
    // during the cycles and be swept, and the counts would drop: the pool starts empty.
    let emptied = trenv_cli().args(["pool", "drain"]).output().unwrap();
    assert!(
        emptied.status.success(),
        "trenv pool drain: {}",
        String::from_utf8_lossy(&emptied.stderr)
    );
    // The first cycle makes the sandbox; the others take it back.
    cycle(0);
    let servers = shim_servers(&format!("-namespace {ns} "));
    assert_eq!(servers.len(), 1, "one shim serves the group: {servers:?}");
    let shim = servers[0];
    // The shim's threads and descriptors of the first cycle's exit settle first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = count(&ns, shim);
    let n = cycles();
    for i in 1..=n {
        cycle(i);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = count(&ns, shim);
    let pool: Vec<serde_json::Value> = serde_json::from_slice(
        &trenv_cli()
            .args(["pool", "list", "--json", "--tenant", &ns])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    c.remove(&anchor);
    let drained = trenv_cli()
        .args(["pool", "drain", "--tenant", &ns])
        .output()
        .unwrap();
    c.remove_namespace();
    // Nothing may grow; the shim may hold fewer transient threads or descriptors than when
    // it was first counted.
    let grown = after.mounts != before.mounts
        || after.pins != before.pins
        || after.cgroups != before.cgroups
        || after.shims != before.shims
        || after.shim_fds > before.shim_fds
        || after.shim_threads > before.shim_threads;
    assert!(
        !grown,
        "{n} cycles left something behind: {before:?} -> {after:?}"
    );
    assert_eq!(pool.len(), 1, "{pool:?}");
    assert_eq!(pool[0]["state"], "idle");
    assert_eq!(pool[0]["uses"], n as u64 + 1);
    assert!(drained.status.success(), "{drained:?}");
    let info = trenv_runtime::sandbox::store::mounts().unwrap();
    let id = pool[0]["id"].as_str().unwrap();
    assert!(!info.contains(id), "the drained sandbox is still pinned");
}
