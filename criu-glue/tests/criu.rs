//! Against the real CRIU that integration/setup.sh installs.

use std::time::Duration;

use trenv_criu::rpc::{Criu_req, Criu_req_type};
use trenv_criu::{Criu, FdPlan, MIN_VERSION};

#[test]
fn the_installed_criu_answers_its_version_over_rpc() {
    let criu = Criu::locate(None).expect("CRIU is installed by integration/setup.sh");
    let v = criu.version().expect("CRIU answers VERSION");
    assert!(v >= MIN_VERSION, "{v} at {}", criu.path().display());
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(criu.require_version(Some(dir.path())).unwrap(), v);
    // Second time from the cache file.
    assert!(dir.path().join("criu-version").exists());
    assert_eq!(criu.require_version(Some(dir.path())).unwrap(), v);
}

/// A stand-in for an old CRIU that answers the VERSION request over the swrk socket (fd 3)
/// with 3.17.0: trenv must refuse it, naming both versions.
#[test]
fn an_old_criu_is_refused_naming_the_version_needed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("criu");
    // criu_resp{type: VERSION (10), success: true, version: {major 3, minor 17}}
    std::fs::write(
        &fake,
        "#!/usr/bin/env python3\n\
         import os\n\
         os.read(3, 4096)\n\
         os.write(3, bytes([0x08, 0x0a, 0x10, 0x01, 0x52, 0x04, 0x08, 0x03, 0x10, 0x11]))\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let criu = Criu::locate(Some(&fake)).unwrap();
    assert_eq!(criu.version().unwrap().to_string(), "3.17.0");
    let msg = criu.require_version(None).unwrap_err().to_string();
    assert!(msg.contains("CRIU 3.17.0"), "{msg}");
    assert!(msg.contains("too old"), "{msg}");
    assert!(msg.contains("4.1.0 or newer"), "{msg}");
}

/// trenv's CRIU started ahead (criu-glue/patches/0006) says it is ready, then serves a
/// request that brings its descriptors.
#[test]
fn the_installed_criu_started_ahead_says_it_is_ready_and_serves_its_request() {
    let criu = Criu::locate(None).expect("CRIU is installed by integration/setup.sh");
    let mut ahead = criu.ahead().unwrap();
    ahead.ready(Duration::from_secs(5)).unwrap();
    assert!(ahead.alive());
    let mut plan = FdPlan::default();
    plan.stdio(1, std::fs::File::open("/dev/null").unwrap().into());
    plan.add(std::fs::File::open("/").unwrap().into());
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::VERSION);
    let resp = ahead
        .session(plan)
        .unwrap()
        .call(req, "version", None, &mut ())
        .unwrap();
    assert!(resp.version.is_some(), "{resp:?}");
}

fn fake_criu(dir: &std::path::Path, body: &str) -> Criu {
    use std::os::unix::fs::PermissionsExt;
    let fake = dir.join("criu");
    std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    Criu::locate(Some(&fake)).unwrap()
}

/// A CRIU without trenv's patch never says it is ready (it waits for its request): it is
/// refused and stopped, not left waiting.
#[test]
fn a_criu_that_never_says_it_is_ready_is_refused_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let criu = fake_criu(dir.path(), "exec sleep 60");
    let mut ahead = criu.ahead().unwrap();
    let pid = ahead.pid();
    let msg = ahead
        .ready(Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("did not say it was ready"), "{msg}");
    assert!(msg.contains("trenv's CRIU"), "{msg}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the CRIU that was not ready still runs"
    );
}

#[test]
fn a_criu_that_exits_before_it_is_ready_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let criu = fake_criu(dir.path(), "exit 1");
    let msg = criu
        .ahead()
        .unwrap()
        .ready(Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("exited before it was ready"), "{msg}");
}

/// A CRIU that waits stopped (a signal, a tracer) or exited is not alive: a request sent to
/// it would hang or fail. Discarding it kills and reaps it.
#[test]
fn a_criu_started_ahead_that_is_stopped_or_gone_is_not_alive() {
    let dir = tempfile::tempdir().unwrap();
    let criu = fake_criu(dir.path(), "exec sleep 60");
    let mut ahead = criu.ahead().unwrap();
    let pid = ahead.pid();
    assert!(ahead.alive());
    signal(pid, "STOP");
    wait_not_alive(&mut ahead, "stopped");
    signal(pid, "CONT");
    ahead.discard();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    let mut gone = criu.ahead().unwrap();
    signal(gone.pid(), "KILL");
    wait_not_alive(&mut gone, "killed");
}

fn signal(pid: i32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -s {sig} {pid}");
}

fn wait_not_alive(ahead: &mut trenv_criu::Ahead, how: &str) {
    let start = std::time::Instant::now();
    while ahead.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{how}, still alive"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
