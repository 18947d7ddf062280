//! 200 `ctr run --rm` lifecycles leave nothing behind: no mounts, cgroups, shim processes,
//! zombies or state directories. (Its own test binary and namespace, so that nothing else
//! runs meanwhile.)

use std::fs;
use std::path::Path;

use trenv_integration::{BUSYBOX, Ctr, RUNTIME, pids_matching};

fn lifecycles() -> usize {
    std::env::var("TRENV_LEAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn count_mounts(needle: &str) -> usize {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Zombies whose parent is alive and is not PID 1: children someone failed to reap. (This
/// machine's PID 1 does not reap orphans at all; a shim's own exit status belongs to
/// whoever inherits it, as for runc's shim.)
fn zombies() -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(stat) = fs::read_to_string(e.path().join("stat"))
            && let Some(rest) = stat.rsplit(')').next()
            && rest.trim_start().starts_with('Z')
            && rest.split_whitespace().nth(1) != Some("1")
        {
            out.push(stat);
        }
    }
    out
}

fn entries(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn entries_files(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn two_hundred_lifecycles_leave_nothing_behind() {
    let c = Ctr::from_env().with_namespace("trenv-leak");
    c.ensure_images();
    let ns = c.namespace.clone();
    let sockets = || entries_files("/run/containerd/s");
    let sockets_before = sockets();
    let shim_needle = format!("-namespace {ns} ");
    let shims_before = pids_matching(&shim_needle).len();
    let zombies_before = zombies().len();
    let n = lifecycles();
    for i in 0..n {
        let id = format!("leak-{i}");
        let r = c.run(&["run", "--rm", "--runtime", RUNTIME, BUSYBOX, &id, "true"]);
        assert_eq!(r.code, 0, "lifecycle {i} failed: {r:#?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));

    assert_eq!(c.run(&["container", "ls", "-q"]).stdout.trim(), "");
    assert_eq!(count_mounts("leak-"), 0, "rootfs mounts left behind");
    for ctl in [
        "memory", "pids", "cpu", "cpuacct", "freezer", "devices", "blkio", "cpuset",
    ] {
        let left: Vec<String> = entries(&format!("/sys/fs/cgroup/{ctl}/{ns}"))
            .into_iter()
            .filter(|e| e.starts_with("leak-"))
            .collect();
        assert!(left.is_empty(), "{ctl} cgroups left behind: {left:?}");
    }
    let shims_after = pids_matching(&shim_needle).len();
    assert!(
        shims_after <= shims_before,
        "shim processes left behind: {shims_before} before, {shims_after} after"
    );
    assert!(
        zombies().len() <= zombies_before,
        "zombies left behind: {:?}",
        zombies()
    );
    // containerd's state directory for this namespace holds no bundle of ours.
    let state_root = std::env::var("CONTAINERD_STATE").unwrap_or_default();
    if !state_root.is_empty() {
        let dir = format!("{state_root}/io.containerd.runtime.v2.task/{ns}");
        let left: Vec<String> = entries(&dir)
            .into_iter()
            .filter(|e| e.starts_with("leak-"))
            .collect();
        assert!(left.is_empty(), "bundles left behind in {dir}: {left:?}");
        assert!(Path::new(&state_root).exists());
    }
    let left: Vec<String> = sockets()
        .into_iter()
        .filter(|s| !sockets_before.contains(s))
        .collect();
    assert!(
        left.is_empty(),
        "shim sockets left behind in /run/containerd/s: {left:?}"
    );
    let consoles = entries("/run/trenv/console").len();
    assert_eq!(consoles, 0, "console sockets are files, not directories");
}
