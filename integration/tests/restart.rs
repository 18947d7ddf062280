//! The shim survives a containerd restart: its task stays listed, killable and waitable.
//! (Its own test binary: restarting containerd must not disturb other tests.)

use std::process::Command;
use std::time::Duration;

use trenv_integration::{Ctr, unique_id};

fn restart_containerd() {
    let version = std::env::var("CONTAINERD_VERSION")
        .expect("CONTAINERD_VERSION is set by integration/test.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/containerd.sh");
    let st = Command::new("bash")
        .args([script, "restart", &version])
        .status()
        .expect("running containerd.sh restart");
    assert!(st.success(), "containerd restart failed");
}

#[test]
fn task_survives_containerd_restart() {
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("restart");
    c.run_busybox_detached(&id, &["sleep", "300"]);
    assert!(c.wait_status(&id, "RUNNING", Duration::from_secs(10)));
    let before = c.run(&["task", "ls"]).stdout;

    restart_containerd();

    assert!(
        c.wait_status(&id, "RUNNING", Duration::from_secs(20)),
        "task not listed as RUNNING after the restart; before: {before}"
    );
    // Still usable: exec, kill, and its exit is observed.
    let r = c.run(&["task", "exec", "--exec-id", "after", &id, "echo", "alive"]);
    assert_eq!(r.stdout.trim(), "alive", "{r:#?}");
    c.run(&["task", "kill", "-s", "SIGKILL", &id]).ok();
    assert!(
        c.wait_status(&id, "STOPPED", Duration::from_secs(10)),
        "the kill after the restart was not observed"
    );
    let del = c.run(&["task", "delete", &id]);
    assert!(del.stderr.contains("137"), "{del:#?}");
    c.run(&["container", "delete", &id]).ok();
}
