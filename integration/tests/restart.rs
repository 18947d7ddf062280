//! The shim survives a containerd restart: its task stays listed, killable and waitable.
//! (Its own test binary: restarting containerd must not disturb other tests.)

use std::process::Command;
use std::time::Duration;

use trenv_integration::{Ctr, unique_id};

/// The tests here restart containerd: one at a time.
static RESTARTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _one = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
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

/// Idle sandboxes live in trenv's pool, not in containerd or a shim: after a containerd
/// restart the next container of the tenant is given the one the previous left.
#[test]
fn idle_sandboxes_survive_a_containerd_restart_and_are_taken_after() {
    let _one = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
    // A namespace of its own, kept between runs (its images stay imported); whatever a
    // previous run left idle in its pool is drained first.
    let ns = "trenv-sbrestart".to_string();
    let c = Ctr::from_env().with_namespace(&ns);
    let _ = trenv_integration::trenv_cli()
        .args(["pool", "drain", "--tenant", &ns])
        .output();
    c.ensure_images();
    let net = |id: &str| {
        c.run(&[
            "run",
            "--rm",
            "--runtime",
            trenv_integration::RUNTIME,
            "--annotation",
            "io.trenv.repurpose=true",
            trenv_integration::BUSYBOX,
            id,
            "readlink",
            "/proc/self/ns/net",
        ])
        .ok()
        .stdout
        .trim()
        .to_string()
    };
    let before = net(&unique_id("sb-before"));
    restart_containerd();
    let after = net(&unique_id("sb-after"));
    let _ = trenv_integration::trenv_cli()
        .args(["pool", "drain", "--tenant", &ns])
        .output();
    assert!(before.starts_with("net:["), "{before}");
    assert_eq!(
        after, before,
        "the idle sandbox was not taken after the restart"
    );
}
