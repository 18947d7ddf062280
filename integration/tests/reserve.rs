//! A shared shim's reserve (shim/src/reserve.rs) through a real containerd: after a
//! template restore, the tenant's shim restores another instance ahead and leaves it
//! stopped; the next Create of the same function takes that process instead of running
//! CRIU — in the container's own cgroup, with its own stdio, exec, exit and Delete — while
//! a container whose spec differs does not; a killed shim's instances are removed by the
//! next shim of the node.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trenv_integration::pyfn::{LOG_ENV, field, signal_state, wait_line};
use trenv_integration::{Ctr, PYFN, RUNTIME, cgroup_v2_host, trenv_cli, unique_id};

const SHARED: &str = "io.trenv.shim=shared";
/// A memory limit: the reserve is for containers whose writable layer is in memory.
const LIMIT: &str = "268435456";
const STATE_MB: &str = "FN_STATE_MB=16";

/// A namespace of the test's own (its own tenant, so its own shared shim and templates).
fn own_namespace(name: &str) -> Ctr {
    let c = Ctr::from_env().with_namespace(name);
    c.ensure_images();
    c.ensure_image(PYFN);
    c
}

/// Containers and a template removed however the test ends.
struct Cleanup<'a> {
    ctr: &'a Ctr,
    containers: Vec<String>,
    template: Option<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.containers {
            self.ctr.remove(id);
        }
        // With no container left, the tenant's shared shim lingers, then goes with its
        // instances: waited for (at most 90 s), so that no later test finds them.
        let start = Instant::now();
        while !instances(&self.ctr.namespace).is_empty()
            && start.elapsed() < Duration::from_secs(90)
        {
            std::thread::sleep(Duration::from_millis(250));
        }
        if let Some(t) = &self.template {
            let _ = trenv_cli()
                .args(["template", "rm", t, "-n", &self.ctr.namespace])
                .output();
        }
    }
}

fn run_detached(c: &Ctr, id: &str, flags: &[&str]) {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.extend(["--env", STATE_MB, "--env", LOG_ENV, PYFN, id]);
    c.run(&a).ok();
    assert!(
        c.wait_status(id, "RUNNING", Duration::from_secs(30)),
        "{id} did not start: {:?}",
        c.task_status(id)
    );
}

/// A template of the 16 MiB Python function in `c`'s namespace; its state checksum.
fn make_template(c: &Ctr, clean: &mut Cleanup<'_>, name: &str) -> String {
    let src = unique_id("rsv-src");
    clean.containers.push(src.clone());
    run_detached(c, &src, &[]);
    let state = field(&wait_line(c, &src, "ready ", 0), "state=");
    let out = trenv_cli()
        .args([
            "template",
            "create",
            name,
            "--from",
            &src,
            "-n",
            &c.namespace,
        ])
        .output()
        .expect("running trenv");
    assert!(
        out.status.success(),
        "template create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    clean.template = Some(name.to_string());
    c.remove(&src);
    state
}

fn restoring_flags(template: &str) -> Vec<String> {
    [
        "--memory-limit",
        LIMIT,
        "--annotation",
        SHARED,
        "--annotation",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("io.trenv.template={template}")])
    .collect()
}

/// The directory holding the tenant's containers' cgroups in the pids hierarchy (v1) or
/// the unified one (v2): ctr's `cgroupsPath` is `/<namespace>/<id>`.
fn cgroup_parent(ns: &str) -> PathBuf {
    if cgroup_v2_host() {
        Path::new("/sys/fs/cgroup").join(ns)
    } else {
        Path::new("/sys/fs/cgroup/pids").join(ns)
    }
}

/// The reserve's instances of the tenant: (cgroup directory, processes in it).
fn instances(ns: &str) -> Vec<(PathBuf, Vec<i32>)> {
    let Ok(dir) = fs::read_dir(cgroup_parent(ns)) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("trenv-reserve-")
        })
        .map(|e| {
            let procs = fs::read_to_string(e.path().join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            (e.path(), procs)
        })
        .collect()
}

/// The tenant's instances now (a lingering shim of an earlier run may hold some, of
/// other templates).
fn instance_dirs_now(ns: &str) -> Vec<PathBuf> {
    instances(ns).into_iter().map(|(dir, _)| dir).collect()
}

/// The inits of the tenant's instances not among `before` that are ready (their directory
/// says so once a Create can take them).
fn ready_instances(ns: &str, before: &[PathBuf]) -> Vec<i32> {
    instances(ns)
        .iter()
        .filter(|(dir, procs)| {
            let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            !before.contains(dir)
                && !procs.is_empty()
                && id.is_some_and(|id| instance_dirs(&id).iter().any(|d| d.join("ready").exists()))
        })
        .filter_map(|(_, procs)| procs.iter().min().copied())
        .collect()
}

/// Waits (at most a minute) for `n` instances not among `before` to be ready; their inits.
fn wait_instances(ns: &str, before: &[PathBuf], n: usize) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let ready = ready_instances(ns, before);
        if ready.len() >= n {
            return ready;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {n} reserve instances appeared in {}",
            ready.len(),
            cgroup_parent(ns).display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most a minute) for an instance not among `before` to be ready; its init.
fn wait_instance(ns: &str, before: &[PathBuf]) -> i32 {
    wait_instances(ns, before, 1)[0]
}

fn proc_state(pid: i32) -> char {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next()?.trim_start().chars().next())
        .unwrap_or('-')
}

/// The process is gone (a zombie is: its orphans are reaped by the node's init, whenever
/// it gets to it).
fn gone(pid: i32) -> bool {
    matches!(proc_state(pid), '-' | 'Z')
}

fn init_pid(c: &Ctr, id: &str) -> i32 {
    trenv_integration::bench::task_pid(c, id).unwrap_or_else(|| panic!("{id} has no task"))
}

fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no parent in {stat:?}"))
}

/// Lines of /proc/self/mountinfo naming `what`.
fn mounts_naming(what: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

fn wait_until(within: Duration, what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A template of the test's own and the first start from it in a shared shim, which then
/// restores an instance ahead: (the template's state checksum, the flags of a start like
/// the first, the first container, the instance's init once ready).
fn first_start(c: &Ctr, clean: &mut Cleanup<'_>) -> (String, Vec<String>, String, i32) {
    let name = unique_id("rsv-t");
    let state = make_template(c, clean, &name);
    let flags = restoring_flags(&name);
    let a = unique_id("rsv-a");
    clean.containers.push(a.clone());
    let before = instance_dirs_now(&c.namespace);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    run_detached(c, &a, &refs);
    let reserved = wait_instance(&c.namespace, &before);
    (state, flags, a, reserved)
}

#[test]
fn the_next_start_takes_the_reserved_instance_and_it_is_the_container_s_own() {
    let c = own_namespace("trenv-test-reserve");
    let mut clean = Cleanup {
        ctr: &c,
        containers: Vec::new(),
        template: None,
    };
    // The first start restores the template; the shim then restores one more, stopped.
    let (state, flags, a, reserved) = first_start(&c, &mut clean);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    assert_eq!(signal_state(&c, &a, "SIGUSR1"), state);
    let instance_id = instance_of(&c.namespace, reserved);
    assert_eq!(
        proc_state(reserved),
        'T',
        "a reserved instance waits stopped"
    );
    assert_eq!(
        parent_of(reserved),
        parent_of(init_pid(&c, &a)),
        "the instance is a child of the tenant's shim"
    );
    // The next start takes it: the same process, now the container's, with its output
    // going where the container's goes.
    let b = unique_id("rsv-b");
    clean.containers.push(b.clone());
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    let out = out_dir.path().join("b.log");
    let log_uri = format!("file://{}", out.display());
    let mut b_flags = flags.clone();
    b_flags.extend(["--log-uri", log_uri.as_str()]);
    run_detached(&c, &b, &b_flags);
    assert_eq!(init_pid(&c, &b), reserved, "{b} did not take the instance");
    // Continued: no longer stopped (sleeping, or still running what SIGCONT resumed: a
    // slow machine such as the VM test bed caught it running).
    let run_state = proc_state(reserved);
    assert!(
        matches!(run_state, 'S' | 'R' | 'D'),
        "Start continued the instance: its state is {run_state:?}"
    );
    let cgroup = fs::read_to_string(format!("/proc/{reserved}/cgroup")).unwrap_or_default();
    let own = format!("/{}/{b}", c.namespace);
    assert!(
        cgroup
            .lines()
            .all(|l| l.ends_with(&own) || l.ends_with(":/")),
        "{b}'s processes are in its own cgroup: {cgroup}"
    );
    // Its memory is the template's, it answers through exec, and its stdout is the
    // container's.
    assert_eq!(signal_state(&c, &b, "SIGUSR1"), state);
    wait_until(Duration::from_secs(10), "no output reached b's log", || {
        fs::read_to_string(&out).is_ok_and(|t| t.contains("check state="))
    });
    // The instance's cgroup became the container's (or its processes left it).
    assert!(
        !cgroup_parent(&c.namespace).join(&instance_id).exists(),
        "the instance's cgroup is left"
    );
    // Also in `name=systemd` on a v1 host, where the execs above joined b's cgroup (as a
    // cold start's execs do), not the instance's made again.
    let named = Path::new("/sys/fs/cgroup/systemd").join(&c.namespace);
    if !cgroup_v2_host() && named.is_dir() {
        assert!(
            !named.join(&instance_id).exists(),
            "the instance's name=systemd cgroup is left"
        );
        assert!(named.join(&b).is_dir(), "{b} has no name=systemd cgroup");
    }
    // It exits and is deleted like any container, and takes its directory with it.
    c.run(&["task", "kill", "-s", "SIGTERM", &b]).ok();
    assert!(
        c.wait_status(&b, "STOPPED", Duration::from_secs(20)),
        "{b} did not stop"
    );
    // Its metering record: a template restore, restored ahead, in a repurposed sandbox or
    // a new one, exiting as SIGTERM made it.
    let record = trenv_integration::record_in(&trenv_integration::meter_dir(), &b, "");
    assert_eq!(record["start"], "template", "{record}");
    assert_eq!(record["reserve"], true, "{record}");
    assert_ne!(record["sandbox"], "", "{record}");
    c.remove(&b);
    let cgroup_dir = cgroup_parent(&c.namespace).join(&b);
    assert!(!cgroup_dir.exists(), "{} is left", cgroup_dir.display());
    assert!(
        mounts_naming(&instance_id).is_empty(),
        "its mounts are left"
    );
    assert!(
        instance_dirs(&instance_id).is_empty(),
        "its directory is left"
    );
    // With no container left, the shim lingers (`[shim] linger_secs`, 30 s), then exits
    // and removes the instance it made after b.
    let shim = parent_of(init_pid(&c, &a));
    let waiting: Vec<String> = instances(&c.namespace)
        .iter()
        .filter_map(|(dir, _)| Some(dir.file_name()?.to_string_lossy().into_owned()))
        .collect();
    c.remove(&a);
    wait_until(
        Duration::from_secs(90),
        "the shim outlived its linger",
        || gone(shim),
    );
    for id in &waiting {
        assert!(
            mounts_naming(id).is_empty() && instance_dirs(id).is_empty(),
            "the exited shim's instance {id} is left"
        );
        assert!(!cgroup_parent(&c.namespace).join(id).exists());
    }
}

/// The id of the instance whose init is `pid` (its cgroup's name).
fn instance_of(ns: &str, pid: i32) -> String {
    instances(ns)
        .into_iter()
        .find(|(_, procs)| procs.contains(&pid))
        .and_then(|(dir, _)| Some(dir.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| panic!("{pid} is in no instance's cgroup"))
}

/// Directories of the instance `id` below the reserve's directory.
fn instance_dirs(id: &str) -> Vec<PathBuf> {
    fs::read_dir("/run/trenv/reserve")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|owner| fs::read_dir(owner.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.ends_with(id))
        .collect()
}

#[test]
fn a_function_asking_for_three_instances_gets_them_and_three_starts_at_once_take_them() {
    let c = own_namespace("trenv-test-reserve-n");
    let mut clean = Cleanup {
        ctr: &c,
        containers: Vec::new(),
        template: None,
    };
    let name = unique_id("rsv-t");
    let state = make_template(&c, &mut clean, &name);
    let mut flags = restoring_flags(&name);
    flags.extend(["--annotation".to_string(), "io.trenv.reserve=3".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = unique_id("rsv-a");
    clean.containers.push(a.clone());
    let before = instance_dirs_now(&c.namespace);
    run_detached(&c, &a, &flags);
    // The shim restores three ahead (io.trenv.reserve=3 instead of [shim] reserve).
    let mut reserved = wait_instances(&c.namespace, &before, 3);
    reserved.sort_unstable();
    // Three starts at once (as a platform scales out) take one each (the one made first:
    // the refill that begins after the first take is not taken before them).
    let ids: Vec<String> = (0..3).map(|_| unique_id("rsv-n")).collect();
    clean.containers.extend(ids.iter().cloned());
    std::thread::scope(|s| {
        for id in &ids {
            let (c, flags) = (&c, &flags);
            s.spawn(move || run_detached(c, id, flags));
        }
    });
    let mut took: Vec<i32> = ids.iter().map(|id| init_pid(&c, id)).collect();
    took.sort_unstable();
    assert_eq!(
        took, reserved,
        "the three starts did not take the three instances"
    );
    for id in &ids {
        assert_eq!(signal_state(&c, id, "SIGUSR1"), state, "{id}'s memory");
    }
}

#[test]
fn a_start_whose_spec_differs_does_not_take_the_instance() {
    let c = own_namespace("trenv-test-reserve-d");
    let mut clean = Cleanup {
        ctr: &c,
        containers: Vec::new(),
        template: None,
    };
    let (state, flags, _a, reserved) = first_start(&c, &mut clean);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Another hostname: restored from the template as before, not given the instance
    // made with a's.
    let b = unique_id("rsv-b");
    clean.containers.push(b.clone());
    let mut b_flags = flags.clone();
    b_flags.extend(["--hostname", "elsewhere"]);
    run_detached(&c, &b, &b_flags);
    assert_ne!(init_pid(&c, &b), reserved);
    assert_eq!(
        proc_state(reserved),
        'T',
        "the instance {reserved} still waits: {:?}",
        instances(&c.namespace)
    );
    assert_eq!(signal_state(&c, &b, "SIGUSR1"), state);
    let hostname = trenv_integration::exec(&c, &b, &["cat", "/proc/sys/kernel/hostname"]);
    assert_eq!(hostname.trim(), "elsewhere");
}

#[test]
fn a_killed_shims_instances_and_the_containers_that_took_them_leave_nothing() {
    let c = own_namespace("trenv-test-reserve-k");
    let mut clean = Cleanup {
        ctr: &c,
        containers: Vec::new(),
        template: None,
    };
    // a restores the template; b takes the instance made after it; a second instance
    // waits when the shim is killed.
    let (_, flags, a, taken) = first_start(&c, &mut clean);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let b = unique_id("rsv-b");
    clean.containers.push(b.clone());
    let taken_id = instance_of(&c.namespace, taken);
    let before = instance_dirs_now(&c.namespace);
    run_detached(&c, &b, &flags);
    assert_eq!(init_pid(&c, &b), taken, "{b} did not take the instance");
    let waiting = wait_instance(&c.namespace, &before);
    let waiting_id = instance_of(&c.namespace, waiting);
    let shim = parent_of(init_pid(&c, &a));
    // SAFETY: kill(2) with a pid and a signal number.
    let killed = unsafe { libc::kill(shim, libc::SIGKILL) };
    assert_eq!(killed, 0, "killing the shim");
    // containerd cleans up after the shim (the task is then gone or stopped), and with it
    // the processes of both containers.
    for id in [&a, &b] {
        wait_until(Duration::from_secs(30), "a container still runs", || {
            c.task_status(id).as_deref() != Some("RUNNING")
        });
        c.remove(id);
    }
    wait_until(Duration::from_secs(30), "b's process is left", || {
        gone(taken)
    });
    // containerd's clean-up after the dead shim (its `delete` command, once per container)
    // removes what the shim's reserve held too: the waiting instance and what b took.
    for id in [&taken_id, &waiting_id] {
        wait_until(
            Duration::from_secs(30),
            "a dead shim's instance was not removed",
            || mounts_naming(id).is_empty() && instance_dirs(id).is_empty(),
        );
        let cgroup = cgroup_parent(&c.namespace).join(id);
        wait_until(Duration::from_secs(10), "its cgroup is left", || {
            !cgroup.exists()
        });
    }
    wait_until(
        Duration::from_secs(10),
        "the waiting instance's process is left",
        || gone(waiting),
    );
    // The tenant's next start restores as before.
    let d = unique_id("rsv-d");
    clean.containers.push(d.clone());
    run_detached(&c, &d, &flags);
    assert!(gone(waiting), "the waiting instance's process is left");
    assert!(
        !cgroup_parent(&c.namespace).join(&b).exists(),
        "b's cgroup is left"
    );
}

#[test]
fn an_instance_killed_while_it_waits_is_removed_and_the_next_start_restores() {
    let c = own_namespace("trenv-test-reserve-x");
    let mut clean = Cleanup {
        ctr: &c,
        containers: Vec::new(),
        template: None,
    };
    let (state, flags, _a, reserved) = first_start(&c, &mut clean);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let instance_id = instance_of(&c.namespace, reserved);
    // SAFETY: kill(2) with a pid and a signal number.
    let killed = unsafe { libc::kill(reserved, libc::SIGKILL) };
    assert_eq!(killed, 0, "killing the instance");
    wait_until(Duration::from_secs(10), "the instance did not die", || {
        gone(reserved)
    });
    let b = unique_id("rsv-b");
    clean.containers.push(b.clone());
    run_detached(&c, &b, &flags);
    assert_ne!(init_pid(&c, &b), reserved);
    assert_eq!(signal_state(&c, &b, "SIGUSR1"), state);
    // The dead instance is gone with everything it had.
    let cgroup = cgroup_parent(&c.namespace).join(&instance_id);
    wait_until(Duration::from_secs(10), "the dead instance is left", || {
        !cgroup.exists() && mounts_naming(&instance_id).is_empty()
    });
    assert!(
        instance_dirs(&instance_id).is_empty(),
        "its directory is left"
    );
}
