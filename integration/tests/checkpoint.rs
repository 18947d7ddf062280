//! containerd's checkpoint/restore through trenv and CRIU, with `ctr`.
//!
//! `ctr containers checkpoint --task --rw` stores the container (spec, rw layer) and a CRIU
//! image of its task in containerd's content store; `ctr containers restore --live --rw`
//! creates a new container from it whose task trenv restores with CRIU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use trenv_integration::pyfn::{LOG_ENV, field, log_lines, signal_state, wait_line};
use trenv_integration::{BUSYBOX, Ctr, PYFN, RUNTIME, unique_id};

fn ctr() -> Ctr {
    let c = Ctr::from_env();
    c.ensure_images();
    c
}

/// A counter that keeps its value only in memory and mirrors it into /tmp/count. Each
/// value overwrites the last in place (`1<>` does not truncate; the width is fixed), so the
/// file is never empty: a task frozen right after a truncation would have kept it empty.
const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); printf \"%010d\\n\" $i 1<> /tmp/count; sleep 0.1; done";

/// Removes containers and checkpoint images when the test ends, however it ends.
struct Cleanup<'a> {
    ctr: &'a Ctr,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.containers {
            self.ctr.remove(id);
        }
        for r in &self.images {
            let _ = self.ctr.run(&["images", "rm", r]);
        }
    }
}

/// The counter's value, read through the init process's root (works while paused).
fn count(c: &Ctr, id: &str) -> u64 {
    let ls = c.run(&["task", "ls"]).ok().stdout;
    let pid = ls
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next())?
        })
        .unwrap_or_else(|| panic!("{id} not listed: {ls}"));
    let path = format!("/proc/{pid}/root/tmp/count");
    // The file is read while the counter may be writing it: retry briefly.
    let mut out = String::new();
    for _ in 0..50 {
        out = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(n) = out.trim().parse() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("bad {path} of {id}: {out:?}")
}

fn wait_count(c: &Ctr, id: &str, at_least: u64) -> u64 {
    let start = Instant::now();
    loop {
        let n = count(c, id);
        if n >= at_least {
            return n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{id} counted only to {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_detached(c: &Ctr, id: &str, flags: &[&str], image: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.push(image);
    a.push(id);
    a.extend_from_slice(args);
    c.run(&a).ok();
    assert!(
        c.wait_status(id, "RUNNING", Duration::from_secs(10)),
        "{id} did not start"
    );
}

/// Kills and removes a container, waiting until it is gone.
fn remove(c: &Ctr, id: &str) {
    c.remove(id);
    assert!(c.task_status(id).is_none(), "{id} still listed");
}

fn restore(c: &Ctr, id: &str, reference: &str) {
    let before = extractions();
    c.run(&["containers", "restore", "--live", "--rw", id, reference])
        .ok();
    assert!(
        c.wait_status(id, "RUNNING", Duration::from_secs(10)),
        "{id} restored from {reference} is not running: {:?}",
        c.task_status(id)
    );
    // containerd extracts the checkpoint into a temporary directory for the task's Create
    // and never removes it (runc.v2 leaves it too); trenv removes it once restored. Other
    // tests' restores may extract theirs meanwhile: each goes when its restore is done.
    let start = Instant::now();
    loop {
        let left: Vec<PathBuf> = extractions().difference(&before).cloned().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "containerd's extraction of {reference} is left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd's extractions of checkpoints for restores (`/tmp/ctrd-checkpoint*`).
fn extractions() -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("ctrd-checkpoint")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// No CRIU mount of the restore of container `id` is left on the host.
fn assert_no_criu_mounts(id: &str) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info
            .lines()
            .any(|l| l.contains("criu-root") && l.contains(&format!("/{id}/"))),
        "a CRIU root mount of {id} was left behind"
    );
}

#[test]
fn a_checkpointed_counter_keeps_running_and_its_restore_continues_from_memory() {
    let c = ctr();
    let id = unique_id("ckpt");
    let copy = unique_id("rst");
    let reference = format!("trenv.test/checkpoint/{id}:1");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![id.clone(), copy.clone()],
        images: vec![reference.clone()],
    };
    run_detached(&c, &id, &[], BUSYBOX, &["sh", "-c", COUNTER]);
    wait_count(&c, &id, 30);
    c.run(&[
        "containers",
        "checkpoint",
        "--task",
        "--rw",
        &id,
        &reference,
    ])
    .ok();
    let images = c.run(&["images", "ls", "-q"]).ok().stdout;
    assert!(
        images.lines().any(|l| l == reference),
        "no checkpoint image {reference}: {images}"
    );
    // Leave-running is the default: the original goes on counting.
    assert_eq!(c.task_status(&id).as_deref(), Some("RUNNING"));
    let before = count(&c, &id);
    let later = wait_count(&c, &id, before + 3);
    assert!(later > before);
    remove(&c, &id);

    restore(&c, &copy, &reference);
    // The restored counter resumes from the value it had in memory (at least 30), it does
    // not start again at 0: a second later it is well above where a restart would be.
    let first = count(&c, &copy);
    assert!(first >= 30, "restored counter at {first}");
    std::thread::sleep(Duration::from_secs(1));
    let second = count(&c, &copy);
    assert!(second > first, "restored counter stuck at {first}");
    assert!(second >= 35, "restored counter restarted: {second}");

    // The restored task is a normal task: pause, resume, list its processes, stop it.
    c.run(&["task", "pause", &copy]).ok();
    assert_eq!(c.task_status(&copy).as_deref(), Some("PAUSED"));
    let paused = count(&c, &copy);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&c, &copy),
        paused,
        "paused restored task kept counting"
    );
    c.run(&["task", "resume", &copy]).ok();
    wait_count(&c, &copy, paused + 2);
    let ps = c.run(&["task", "ps", &copy]).ok().stdout;
    assert!(ps.lines().count() >= 2, "no processes listed: {ps}");
    c.run(&["task", "kill", "-s", "SIGKILL", &copy]).ok();
    assert!(c.wait_status(&copy, "STOPPED", Duration::from_secs(10)));
    c.run(&["task", "delete", &copy]).ok();
    assert_no_criu_mounts(&copy);
}

#[test]
fn a_paused_container_is_checkpointed_and_stays_paused() {
    let c = ctr();
    let id = unique_id("ckpt-paused");
    let reference = format!("trenv.test/checkpoint/{id}:1");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![id.clone()],
        images: vec![reference.clone()],
    };
    run_detached(&c, &id, &[], BUSYBOX, &["sh", "-c", COUNTER]);
    wait_count(&c, &id, 2);
    c.run(&["task", "pause", &id]).ok();
    // `ctr task checkpoint` leaves a paused task paused (the client resumes only what it
    // paused itself).
    c.run(&["task", "checkpoint", &id]).ok();
    assert_eq!(c.task_status(&id).as_deref(), Some("PAUSED"));
    let frozen = count(&c, &id);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&c, &id), frozen, "checkpoint thawed a paused task");
    c.run(&["task", "resume", &id]).ok();
    wait_count(&c, &id, frozen + 2);
    // `ctr task checkpoint` names its image after the container.
    let images = c.run(&["images", "ls", "-q"]).ok().stdout;
    for r in images
        .lines()
        .filter(|l| l.starts_with(&format!("containerd.io/checkpoint/{id}:")))
    {
        let _ = c.run(&["images", "rm", r]);
    }
}

#[test]
fn checkpoint_with_exit_stops_the_task() {
    let c = ctr();
    // ctr 1.7 sends checkpoint options only to runc runtimes (docs/design/templates.md
    // §2.4); ctr 2.x always sends them and talks to containerd 1.7 as well.
    let c2 = Ctr {
        bin: trenv_integration::ctr2_binary(),
        ..c.clone()
    };
    let id = unique_id("ckpt-exit");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![id.clone()],
        images: vec![],
    };
    run_detached(&c, &id, &[], BUSYBOX, &["sh", "-c", COUNTER]);
    wait_count(&c, &id, 2);
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("image");
    c2.run(&[
        "task",
        "checkpoint",
        "--exit",
        "--image-path",
        images.to_str().unwrap(),
        &id,
    ])
    .ok();
    assert!(
        c.wait_status(&id, "STOPPED", Duration::from_secs(10)),
        "task still {:?} after checkpoint --exit",
        c.task_status(&id)
    );
    let listed = c.run(&["images", "ls", "-q"]).ok().stdout;
    let stored: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with(&format!("containerd.io/checkpoint/{id}:")))
        .collect();
    if std::env::var("CONTAINERD_VERSION").as_deref() == Ok("1.7") {
        // containerd 1.7 honours --image-path only for runc: the image is in its store.
        assert_eq!(stored.len(), 1, "no checkpoint image stored: {listed}");
    } else {
        assert!(
            images.join("inventory.img").exists() && images.join("descriptors.json").exists(),
            "no CRIU image written to {}",
            images.display()
        );
    }
    // (ctr 2.x records an empty checkpoint image even with --image-path.)
    for r in stored {
        let _ = c.run(&["images", "rm", r]);
    }
}

/// A container with a terminal (`ctr run -t`), checkpointed and restored after its source
/// is gone: the restored shell keeps counting from memory and still has a terminal (CRIU
/// hands the restored pty's master to trenv, which gives it to containerd's console like a
/// new one), into which `ctr task exec -t` works too.
#[test]
fn a_terminal_container_is_checkpointed_and_restored_with_its_terminal() {
    let c = ctr();
    let id = unique_id("cptty");
    let copy = format!("{id}-restored");
    let reference = format!("trenv.test/checkpoint/{id}:1");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![id.clone(), copy.clone()],
        images: vec![reference.clone()],
    };
    let r = c.run_in_terminal(&format!(
        "run -d -t --runtime {RUNTIME} {BUSYBOX} {id} sh -c '{COUNTER}'"
    ));
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(
        c.wait_status(&id, "RUNNING", Duration::from_secs(10)),
        "{id} did not start"
    );
    let before = wait_count(&c, &id, 10);
    c.run(&["containers", "checkpoint", "--task", &id, &reference])
        .ok();
    remove(&c, &id);

    // Like `ctr run -t`, the restore stays attached to the task's terminal.
    let attached = c.spawn_in_terminal(&format!("containers restore --live {copy} {reference}"));
    assert!(
        c.wait_status(&copy, "RUNNING", Duration::from_secs(10)),
        "{copy} is not running: {:?}",
        c.task_status(&copy)
    );
    let first = count(&c, &copy);
    assert!(
        first >= before,
        "the restored counter restarted at {first} (it was at {before})"
    );
    wait_count(&c, &copy, first + 5);
    let r = c
        .run(&[
            "task",
            "exec",
            "--exec-id",
            "t1",
            &copy,
            "sh",
            "-c",
            "tty < /proc/1/fd/0; readlink /proc/1/fd/1; echo through-the-console > /proc/1/fd/1",
        ])
        .ok();
    assert!(
        r.stdout.lines().all(|l| l.starts_with("/dev/pts/")) && r.stdout.lines().count() == 2,
        "the restored shell has no terminal: {r:#?}"
    );
    let r = c.run_in_terminal(&format!(
        "task exec -t --exec-id t2 {copy} sh -c 'tty; echo tty-ok'"
    ));
    assert!(r.stdout.contains("tty-ok"), "{r:#?}");
    assert!(r.stdout.contains("/dev/pts/"), "{r:#?}");
    remove(&c, &copy);
    // What was written to the restored shell's terminal reached the attached ctr, which
    // ends with the task.
    let out = attached.finish(Duration::from_secs(10)).stdout;
    assert!(
        out.contains("through-the-console"),
        "the restored terminal's output did not reach ctr: {out:?}"
    );
    assert_no_criu_mounts(&copy);
}

/// The Python function (200 MB of state) checkpointed and restored: the checksum it
/// computes over its state after the restore equals the one it computed when ready.
#[test]
fn the_python_function_keeps_its_state_across_checkpoint_and_restore() {
    let c = ctr();
    c.ensure_image(PYFN);
    let id = unique_id("ckpt-py");
    let copy = unique_id("rst-py");
    let reference = format!("trenv.test/checkpoint/{id}:1");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![id.clone(), copy.clone()],
        images: vec![reference.clone()],
    };
    run_detached(
        &c,
        &id,
        &[
            "--env",
            "FN_STATE_MB=200",
            "--env",
            LOG_ENV,
            "--env",
            "FN_TICK_MS=1000",
        ],
        PYFN,
        &[],
    );
    let ready = wait_line(&c, &id, "ready ", 0);
    let state = field(&ready, "state=");
    c.run(&[
        "containers",
        "checkpoint",
        "--task",
        "--rw",
        &id,
        &reference,
    ])
    .ok();
    remove(&c, &id);

    restore(&c, &copy, &reference);
    assert_eq!(
        signal_state(&c, &copy, "SIGUSR1"),
        state,
        "restored state differs"
    );
    // Still ticking, and the tick count continued from memory.
    let ticks: Vec<u64> = log_lines(&c, &copy)
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "tick sequence broken: {ticks:?}"
    );
    c.run(&["task", "kill", "-s", "SIGTERM", &copy]).ok();
    assert!(c.wait_status(&copy, "STOPPED", Duration::from_secs(10)));
    assert_no_criu_mounts(&copy);
}
