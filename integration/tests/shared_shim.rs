//! Shims shared by a tenant's containers (`io.trenv.shim=shared`, shim/src/shared.rs)
//! through a real containerd: one shim process for a tenant's containers, never another
//! tenant's; it lingers for the next start, then exits and leaves nothing; killed, it takes
//! its containers with it, each reported exited and cleaned up.

use std::fs;
use std::time::{Duration, Instant};

use trenv_integration::{BUSYBOX, Ctr, RUNTIME, pids_matching, unique_id};

const SHARED: &str = "io.trenv.shim=shared";
/// `[shim] linger_secs`'s default (the tests' shims read the node's config, which leaves
/// it unset).
const LINGER: Duration = Duration::from_secs(30);

fn ctr() -> Ctr {
    let c = Ctr::from_env();
    c.ensure_images();
    c
}

/// Containers removed however the test ends.
struct Running<'a> {
    ctr: &'a Ctr,
    ids: Vec<String>,
}

impl<'a> Running<'a> {
    fn new(ctr: &'a Ctr) -> Running<'a> {
        Running {
            ctr,
            ids: Vec::new(),
        }
    }

    /// Runs a detached busybox `sleep` with the given flags; returns its id.
    fn start(&mut self, prefix: &str, flags: &[&str]) -> String {
        let id = unique_id(prefix);
        self.ids.push(id.clone());
        let mut a = vec!["run", "-d", "--runtime", RUNTIME];
        a.extend_from_slice(flags);
        a.extend([BUSYBOX, id.as_str(), "sleep", "600"]);
        self.ctr.run(&a).ok();
        assert!(
            self.ctr
                .wait_status(&id, "RUNNING", Duration::from_secs(20)),
            "{id} did not start"
        );
        id
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.ctr.remove(id);
        }
    }
}

fn init_pid(c: &Ctr, id: &str) -> i32 {
    trenv_integration::bench::task_pid(c, id).unwrap_or_else(|| panic!("{id} has no task"))
}

/// A namespace of the test's own (with the test image), removed by the caller.
fn own_namespace(name: &str) -> Ctr {
    let c = ctr().with_namespace(name);
    c.ensure_images();
    c
}

fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no parent in {stat:?}"))
}

/// The shim serving container `id` (its init's parent), checked to be a trenv shim.
fn shim_of(c: &Ctr, id: &str) -> i32 {
    let shim = parent_of(init_pid(c, id));
    let cmd = fs::read_to_string(format!("/proc/{shim}/cmdline")).unwrap_or_default();
    assert!(cmd.contains("containerd-shim-trenv-v1"), "{id}: {cmd:?}");
    shim
}

fn alive(pid: i32) -> bool {
    // A zombie is gone as far as these tests care.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn wait_gone(pid: i32, within: Duration, what: &str) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < within, "{what} (pid {pid}) still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_tenants_containers_share_one_shim_and_other_tenants_do_not() {
    let c = ctr();
    let other_ns = own_namespace("trenv-test-shim-b");
    let mut here = Running::new(&c);
    let mut there = Running::new(&other_ns);
    let a = here.start("shared-a", &["--annotation", SHARED]);
    let b = here.start("shared-b", &["--annotation", SHARED]);
    let s = shim_of(&c, &a);
    assert_eq!(shim_of(&c, &b), s, "a tenant's containers share one shim");
    // Its own shim: without the annotation (the config's default), or asking for one.
    let own = here.start("shared-own", &[]);
    assert_ne!(shim_of(&c, &own), s);
    let asked = here.start("shared-asked", &["--annotation", "io.trenv.shim=own"]);
    assert_ne!(shim_of(&c, &asked), s);
    // Other tenants: another namespace, or a tenant narrowed by io.trenv.tenant.
    let narrowed = here.start(
        "shared-team",
        &[
            "--annotation",
            SHARED,
            "--annotation",
            "io.trenv.tenant=team-b",
        ],
    );
    let t = shim_of(&c, &narrowed);
    assert_ne!(
        t, s,
        "another tenant's container in the first tenant's shim"
    );
    let elsewhere = there.start("shared-ns", &["--annotation", SHARED]);
    let e = shim_of(&other_ns, &elsewhere);
    assert!(
        e != s && e != t,
        "another namespace's container in a shared shim"
    );
    // Each container's output and exit are its own.
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        SHARED,
        BUSYBOX,
        &unique_id("shared-echo"),
        "sh",
        "-c",
        "echo hi from the shared shim; exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:#?}");
    assert_eq!(r.stdout.trim(), "hi from the shared shim", "{r:#?}");
    assert!(alive(s), "the shared shim went with one of its containers");
    drop(there);
    other_ns.remove_namespace();
}

#[test]
fn a_shared_shim_lingers_for_the_next_start_then_exits_and_leaves_nothing() {
    let c = own_namespace("trenv-test-linger");
    let mut run = Running::new(&c);
    let a = run.start("linger-a", &["--annotation", SHARED]);
    let s = shim_of(&c, &a);
    c.remove(&a);
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(s), "the shared shim exited with its last container");
    // The next start finds it: no new shim process.
    let b = run.start("linger-b", &["--annotation", SHARED]);
    assert_eq!(
        shim_of(&c, &b),
        s,
        "the next start did not find the lingering shim"
    );
    // Its log still reaches containerd's (it started in a's bundle, which is gone).
    let log = std::env::var("CONTAINERD_LOG").expect("CONTAINERD_LOG (integration/test.sh)");
    let started = format!("started {b} (");
    let seen = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&started)
    {
        assert!(
            seen.elapsed() < Duration::from_secs(10),
            "the shared shim's log line {started:?} never reached containerd's log"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.remove(&b);
    // Then it goes, after its linger, leaving no shim, zygote or socket.
    wait_gone(s, LINGER + Duration::from_secs(20), "the lingering shim");
    let leftovers = pids_matching(&format!("-id {a} "));
    assert!(leftovers.is_empty(), "shim processes left: {leftovers:?}");
    // A start after that gets a new shim.
    let d = run.start("linger-d", &["--annotation", SHARED]);
    assert_ne!(shim_of(&c, &d), s);
    drop(run);
    c.remove_namespace();
}

#[test]
fn a_killed_shared_shim_reports_each_of_its_containers_exited_and_leaves_nothing() {
    let c = own_namespace("trenv-test-shimkill");
    let mut run = Running::new(&c);
    let a = run.start("kill-a", &["--annotation", SHARED]);
    let b = run.start("kill-b", &["--annotation", SHARED]);
    let s = shim_of(&c, &a);
    assert_eq!(shim_of(&c, &b), s);
    let inits = [init_pid(&c, &a), init_pid(&c, &b)];
    let cmdline = fs::read(format!("/proc/{s}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let socket = args
        .iter()
        .skip_while(|a| *a != "-socket")
        .nth(1)
        .and_then(|a| a.strip_prefix("unix://"))
        .map(std::path::PathBuf::from)
        .expect("the shim's -socket");
    assert!(socket.exists());
    // SAFETY: kill(2) of a pid this test found.
    assert_eq!(unsafe { libc::kill(s, libc::SIGKILL) }, 0);
    for id in [&a, &b] {
        let start = Instant::now();
        while c.task_status(id).as_deref() == Some("RUNNING") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} still RUNNING after its shim was killed"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // containerd cleaned up after the shim: the containers' processes are gone, and
    // their tasks and containers delete.
    for pid in inits {
        wait_gone(
            pid,
            Duration::from_secs(30),
            "a killed shim's container process",
        );
    }
    for id in [&a, &b] {
        let _ = c.run(&["task", "delete", id]);
        c.run(&["container", "delete", id]).ok();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&format!("/{id}/")), "a mount of {id} left");
    }
    // Nor the killed shim's socket, which it could not remove itself.
    assert!(
        !socket.exists(),
        "the killed shim's socket {socket:?} is left"
    );
    drop(run);
    c.remove_namespace();
}

#[test]
fn a_bad_shim_annotation_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    let id = unique_id("shared-bad");
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.trenv.shim=yes",
        BUSYBOX,
        &id,
        "true",
    ]);
    let _ = c.run(&["container", "delete", &id]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(
        r.stderr.contains("io.trenv.shim=\\\"yes\\\"")
            || r.stderr.contains("io.trenv.shim=\"yes\""),
        "{r:#?}"
    );
    assert!(r.stderr.contains("shared"), "{r:#?}");
    let list = c.run(&["container", "ls", "-q"]).stdout;
    assert!(!list.lines().any(|l| l == id), "container {id} left behind");
    assert!(
        pids_matching(&format!("-id {id} ")).is_empty(),
        "a shim for {id} runs"
    );
}
