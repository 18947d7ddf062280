//! `trenv node tune` / `trenv node check` on the real kernel: favordynmods on, and the
//! host's cgroup2 mount otherwise exactly as it was (in the VM test bed: a cgroup v2 host
//! whose hierarchy is mounted `nosuid,nodev,noexec` with `nsdelegate`, as systemd does).

use trenv_integration::trenv_cli;
use trenv_runtime::mountinfo::{self, MountEntry};

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
