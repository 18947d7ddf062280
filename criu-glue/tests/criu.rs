//! Against the real CRIU that integration/setup.sh installs.

use std::time::Duration;

use trenv_criu::rpc::{Criu_req, Criu_req_type};
use trenv_criu::{Criu, FdPlan, MIN_VERSION, Purpose};

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

/// A process in a UTS namespace of its own is restored with its host name in a namespace
/// of its own, the host's untouched: trenv's CRIU (criu-glue/patches/0007) writes a
/// restored UTS namespace's names from the restoring task itself instead of a worker it
/// forks into the namespace.
#[test]
fn a_process_is_restored_with_the_host_name_of_its_own_uts_namespace() {
    use trenv_criu::rpc::Criu_opts;
    let Some(criu) = criu_as_root() else { return };
    let host = nix::unistd::gethostname().unwrap();
    let images = tempfile::tempdir().unwrap();
    let name = format!("trenv-uts-{}", std::process::id());
    let hostname_of = |pid: i32| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-u", "hostname"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let pid = sleeper(&["--uts"], &format!("hostname {name}"), |pid| {
        hostname_of(pid) == name
    });
    dump(&criu, images.path(), pid, |_| {});
    let restored = restore(&criu, images.path(), |_: &mut Criu_opts| {});
    let named = hostname_of(restored);
    let own_ns = std::fs::read_link(format!("/proc/{restored}/ns/uts")).unwrap()
        != std::fs::read_link("/proc/self/ns/uts").unwrap();
    kill_and_reap(restored);
    assert_eq!(named, name);
    assert!(own_ns, "restored into the host's UTS namespace");
    assert_eq!(
        nix::unistd::gethostname().unwrap(),
        host,
        "the host's name changed"
    );
}

/// A process of a network namespace of its own, dumped empty as trenv dumps a template's,
/// restored into another network namespace (`join_ns net`, as into a sandbox's): it runs
/// in that namespace, and trenv's CRIU (criu-glue/patches/0008) joined it where it made a
/// new one before, only to leave it at once.
#[test]
fn a_process_restored_into_a_joined_network_namespace_makes_none() {
    use trenv_criu::rpc::{Criu_network_lock_method, Join_namespace};
    let Some(criu) = criu_as_root() else { return };
    let images = tempfile::tempdir().unwrap();
    let pid = sleeper(&["--net"], "true", |_| true);
    dump(&criu, images.path(), pid, |o| {
        o.set_network_lock(Criu_network_lock_method::SKIP);
        o.set_empty_ns(libc::CLONE_NEWNET as u32);
    });
    // The namespace to join, held by a process of its own.
    let target = sleeper(&["--net"], "true", |_| true);
    let net = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let restored = restore(&criu, images.path(), |o| {
        let mut j = Join_namespace::new();
        j.set_ns("net".into());
        j.set_ns_file(format!("/proc/{target}/ns/net"));
        o.join_ns.push(j);
    });
    let (joined, wanted) = (net(restored), net(target));
    kill_and_reap(restored);
    kill_and_reap(target);
    assert_eq!(joined, wanted);
    let log = std::fs::read_to_string(images.path().join("restore.log")).unwrap();
    assert!(
        log.contains("Joined network namespace"),
        "a network namespace was made and left:\n{log}"
    );
}

/// A restore ends without hardware breakpoints (swrk.rs, `NO_BREAKPOINTS`: the node's
/// first ptrace breakpoint enables the kernel's perf scheduling hooks, milliseconds on the
/// start path): CRIU steps the restored task through its last syscalls instead, and the
/// task runs on as it should. A dump is left as CRIU makes it.
#[test]
fn a_restore_ends_without_hardware_breakpoints_and_the_process_runs_on() {
    let Some(criu) = criu_as_root() else { return };
    let images = tempfile::tempdir().unwrap();
    let pid = sleeper(&[], "true", |_| true);
    dump(&criu, images.path(), pid, |_| {});
    let restored = restore(&criu, images.path(), |_| {});
    let running = comm_is(restored, "sleep")
        && std::fs::read_to_string(format!("/proc/{restored}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('S'))
        });
    kill_and_reap(restored);
    assert!(running, "the restored process is not sleeping on");
    let log = std::fs::read_to_string(images.path().join("restore.log")).unwrap();
    assert!(
        log.contains(&format!("Force no-breakpoints restore of {restored}")),
        "the restore set a hardware breakpoint:\n{log}"
    );
}

/// The installed CRIU, and this process made a child subreaper (a restored process comes
/// back to it); `None` without root.
fn criu_as_root() -> Option<Criu> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: CRIU needs root to dump and restore processes");
        return None;
    }
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    Some(Criu::locate(None).expect("CRIU is installed by integration/setup.sh"))
}

/// A `sleep` in a session of its own and in new namespaces (`unshare` flags), once `setup`
/// ran in them and `ready` says so.
fn sleeper(unshare: &[&str], setup: &str, ready: impl Fn(i32) -> bool) -> i32 {
    use std::process::{Command, Stdio};
    let child = Command::new("setsid")
        .arg("unshare")
        .args(unshare)
        .args(["sh", "-c"])
        .arg(format!("{setup} && exec sleep 600"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !comm_is(pid, "sleep") || !ready(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the process never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reaped by whoever waits: this process is a subreaper and the dump kills it.
    std::mem::forget(child);
    pid
}

/// One CRIU request on the images in `images`, its log there as `log`.
fn call(
    criu: &Criu,
    images: &std::path::Path,
    req_type: Criu_req_type,
    mut o: trenv_criu::rpc::Criu_opts,
    log: &str,
) -> trenv_criu::rpc::Criu_resp {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(images).unwrap();
    o.set_images_dir_fd(dir.as_raw_fd());
    o.set_log_file(log.into());
    o.set_log_level(4);
    let mut req = Criu_req::new();
    req.set_type(req_type);
    req.opts = Some(o).into();
    let log = images.join(log);
    let purpose = match req_type {
        Criu_req_type::RESTORE => Purpose::Restore,
        _ => Purpose::Other,
    };
    criu.start(FdPlan::default(), purpose)
        .unwrap()
        .call(req, "test", Some(log.clone()), &mut ())
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
}

/// Dumps (and so kills) `pid` into `images`, with what `edit` adds to the options.
fn dump(
    criu: &Criu,
    images: &std::path::Path,
    pid: i32,
    edit: impl FnOnce(&mut trenv_criu::rpc::Criu_opts),
) {
    let mut o = trenv_criu::rpc::Criu_opts::new();
    o.set_pid(pid);
    edit(&mut o);
    call(criu, images, Criu_req_type::DUMP, o, "dump.log");
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

/// Restores the images in `images` as this process's child; the restored pid.
fn restore(
    criu: &Criu,
    images: &std::path::Path,
    edit: impl FnOnce(&mut trenv_criu::rpc::Criu_opts),
) -> i32 {
    let mut o = trenv_criu::rpc::Criu_opts::new();
    o.set_rst_sibling(true);
    edit(&mut o);
    let resp = call(criu, images, Criu_req_type::RESTORE, o, "restore.log");
    let pid = resp.restore.as_ref().map_or(0, |r| r.pid());
    assert!(pid > 0, "{resp:?}");
    pid
}

fn kill_and_reap(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

fn comm_is(pid: i32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
}
