//! `trenv node tune` / `trenv node check` on the real kernel: favordynmods on, and the
//! host's cgroup2 mount otherwise exactly as it was (in the VM test bed: a cgroup v2 host
//! whose hierarchy is mounted `nosuid,nodev,noexec` with `nsdelegate`, as systemd does).

use trenv_integration::{BUSYBOX, Ctr, RUNTIME, trenv_cli, unique_id};
use trenv_runtime::sys::mountinfo::{self, MountEntry};

fn cgroup2() -> Option<MountEntry> {
    mountinfo::read(None)
        .into_iter()
        .find(|m| m.fstype == "cgroup2" && m.root == "/")
}

fn options(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|o| *o != "favordynmods")
        .map(String::from)
        .collect()
}

#[test]
fn tune_turns_favordynmods_on_and_keeps_every_other_mount_option() {
    let before = cgroup2();
    let out = trenv_cli().args(["node", "tune"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "trenv node tune: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("favordynmods: "), "{stdout}");
    let Some(before) = before else {
        // A cgroup v1-only host: the flag is set through a private mount and shown nowhere.
        assert!(stdout.contains("private cgroup2 mount"), "{stdout}");
        return;
    };
    let after = cgroup2().expect("the cgroup2 mount is still there");
    assert_eq!(after.mount_point, before.mount_point);
    assert!(after.has_super_option("favordynmods"), "{after:?}");
    assert_eq!(
        options(&after.super_options),
        options(&before.super_options),
        "superblock options other than favordynmods"
    );
    assert_eq!(after.mount_options, before.mount_options, "per-mount flags");

    // Idempotent, and check agrees.
    let again = trenv_cli().args(["node", "tune"]).output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already on"));
    let check = trenv_cli().args(["node", "check"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A CRIU dump mounts a cgroup2 hierarchy in the host's cgroup namespace, which resets the
/// root's flags: trenv puts favordynmods back after every dump (checkpoint, template).
#[test]
fn a_dump_leaves_the_node_tuned() {
    let out = trenv_cli().args(["node", "tune"]).output().unwrap();
    assert!(out.status.success());
    if cgroup2().is_none() {
        return; // nothing shows the flag on a cgroup v1-only host
    }
    let c = Ctr::from_env();
    c.ensure_images();
    let id = unique_id("node-dump");
    let name = unique_id("node-dump");
    struct Gone<'a>(&'a Ctr, &'a str, &'a str);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            self.0.remove(self.1);
            // The template belongs to the test's namespace (its tenant), not to "default".
            let _ = trenv_cli()
                .args(["template", "rm", self.2, "-n", &self.0.namespace])
                .output();
        }
    }
    let _gone = Gone(&c, &id, &name);
    c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &id,
        "sleep",
        "1000",
    ])
    .ok();
    let made = trenv_cli()
        .args([
            "template",
            "create",
            &name,
            "--from",
            &id,
            "-n",
            &c.namespace,
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let after = cgroup2().unwrap();
    assert!(
        after.has_super_option("favordynmods"),
        "favordynmods lost after a dump: {after:?}"
    );
}
