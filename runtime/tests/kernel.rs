//! Root-level tests of the runtime against the real kernel: the zygote creating containers
//! with libcontainer (namespaces, cgroups), seccomp filters, overlay rootfs mounts.
//!
//! `harness = false`: the zygote must be forked while the process is single-threaded, which
//! libtest's threads would prevent. Prints a plain "N passed, N failed" summary.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::json;
use trenv_runtime::container::Location;
use trenv_runtime::container::cgroup::{Cgroup, Version};
use trenv_runtime::container::create::NewContainer;
use trenv_runtime::container::rootfs::{self, Mount};
use trenv_runtime::{ChildFds, Runtime};

type TestResult = Result<(), String>;
type TestFn = fn(&Env) -> TestResult;

struct Env {
    runtime: Runtime,
    root: PathBuf,
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn busybox_rootfs(dir: &Path) -> Result<(), String> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    for d in ["proc", "dev", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("copying /bin/busybox (install busybox-static): {e}"))?;
    for applet in ["sh", "sleep", "true", "mkdir", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn spec(id: &str, args: &[&str], seccomp: Option<serde_json::Value>) -> serde_json::Value {
    let mut linux = json!({
        "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
        "cgroupsPath": format!("/trenv-kernel-test/{id}"),
        "resources": {"memory": {"limit": 134217728i64}},
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"]
    });
    if let Some(s) = seccomp {
        linux["seccomp"] = s;
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
            }
        },
        "root": {"path": "rootfs"},
        "hostname": "trenv-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": linux
    })
}

struct Container<'a> {
    env: &'a Env,
    at: Location,
    pid: i32,
    out: fs::File,
    err: fs::File,
}

impl Env {
    fn bundle(
        &self,
        id: &str,
        args: &[&str],
        seccomp: Option<serde_json::Value>,
    ) -> Result<Location, String> {
        let bundle = self.root.join(id);
        busybox_rootfs(&bundle.join("rootfs"))?;
        fs::write(
            bundle.join("config.json"),
            spec(id, args, seccomp).to_string(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Location::new(id, &bundle))
    }

    fn create(
        &self,
        id: &str,
        args: &[&str],
        seccomp: Option<serde_json::Value>,
    ) -> Result<Container<'_>, String> {
        let at = self.bundle(id, args, seccomp)?;
        let (out_r, out_w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
        let new = NewContainer {
            at: at.clone(),
            rootfs: Vec::new(),
            systemd_cgroup: false,
            console_socket: None,
            sandbox: None,
            scratch: None,
        };
        let fds = ChildFds {
            stdout: Some(&out_w),
            stderr: Some(&err_w),
            ..Default::default()
        };
        let created = self.runtime.create(new, fds);
        drop((out_w, err_w));
        let pid = created.map_err(|e| e.to_string())?;
        Ok(Container {
            env: self,
            at,
            pid,
            out: fs::File::from(out_r),
            err: fs::File::from(err_r),
        })
    }
}

impl Container<'_> {
    fn start(&self) -> TestResult {
        self.env.runtime.start(&self.at).map_err(|e| e.to_string())
    }

    /// Waits for the init process (re-parented to this subreaper) and returns its status.
    fn wait(&self) -> Result<i32, String> {
        let start = Instant::now();
        loop {
            match waitpid(Pid::from_raw(self.pid), None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::ECHILD) if start.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("waitpid {}: {e}", self.pid)),
            }
        }
    }

    fn output(&mut self) -> (String, String) {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = self.out.read_to_string(&mut o);
        let _ = self.err.read_to_string(&mut e);
        (o, e)
    }

    fn delete(&self) -> TestResult {
        self.env
            .runtime
            .delete(&self.at, false)
            .map_err(|e| e.to_string())
    }
}

fn memory_cgroup(id: &str) -> Option<PathBuf> {
    match Version::detect().ok()? {
        Version::V1 => trenv_runtime::container::cgroup::controller_mount("memory")
            .map(|m| m.join("trenv-kernel-test").join(id)),
        Version::V2 => Some(Path::new("/sys/fs/cgroup/trenv-kernel-test").join(id)),
    }
}

fn container_runs_and_is_cleaned_up(env: &Env) -> TestResult {
    let id = "run";
    let mut c = env.create(
        id,
        &[
            "sh",
            "-c",
            "echo hello from $(cat /proc/1/comm) pid $$; exit 7",
        ],
        None,
    )?;
    let cg = memory_cgroup(id).ok_or("no memory cgroup")?;
    check!(cg.exists(), "cgroup {} not created", cg.display());
    c.start()?;
    let code = c.wait()?;
    let (out, err) = c.output();
    check!(code == 7, "exit code {code}, stderr {err}");
    check!(
        out.trim() == "hello from sh pid 1",
        "output {out:?} (own pid namespace expected)"
    );
    c.delete()?;
    check!(!cg.exists(), "cgroup {} left behind", cg.display());
    check!(
        !c.at.state_root.exists(),
        "state {} left behind",
        c.at.state_root.display()
    );
    Ok(())
}

fn missing_binary_fails_at_create(env: &Env) -> TestResult {
    let err = match env.create("nobin", &["/bin/does-not-exist"], None) {
        Ok(c) => {
            let _ = c.delete();
            return Err("create succeeded".into());
        }
        Err(e) => e,
    };
    check!(err.contains("does-not-exist"), "unclear error: {err}");
    let cg = memory_cgroup("nobin").ok_or("no memory cgroup")?;
    check!(!cg.exists(), "cgroup left behind after a failed create");
    Ok(())
}

fn seccomp_profile_is_enforced(env: &Env) -> TestResult {
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    });
    let mut c = env.create(
        "seccomp",
        &[
            "sh",
            "-c",
            "mkdir /tmp/x; echo mkdir=$?; grep Seccomp: /proc/self/status",
        ],
        Some(profile),
    )?;
    c.start()?;
    let code = c.wait()?;
    let (out, err) = c.output();
    c.delete()?;
    check!(code == 0, "exit {code}: {err}");
    check!(out.contains("mkdir=1"), "mkdir was not denied: {out} {err}");
    check!(
        err.contains("Operation not permitted"),
        "EPERM expected: {err}"
    );
    check!(out.contains("Seccomp:\t2"), "no filter installed: {out}");
    Ok(())
}

fn capabilities_are_dropped_after_seccomp(env: &Env) -> TestResult {
    // With a profile, dropping capabilities is deferred to trenv's executor: check the
    // result is exactly the spec's set (CAP_KILL = bit 5).
    let profile = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]});
    let mut c = env.create(
        "caps",
        &["sh", "-c", "grep -E 'Cap(Eff|Bnd|Prm)' /proc/self/status"],
        Some(profile),
    )?;
    c.start()?;
    c.wait()?;
    let (out, _) = c.output();
    c.delete()?;
    for line in out.lines() {
        let v = line.split_whitespace().nth(1).unwrap_or("");
        check!(v == "0000000000000020", "unexpected capability set: {line}");
    }
    check!(out.lines().count() == 3, "{out}");
    Ok(())
}

fn cgroup_stats_update_freeze_pids(env: &Env) -> TestResult {
    let id = "cgroup";
    let c = env.create(id, &["sleep", "30"], None)?;
    c.start()?;
    let cg = Cgroup::open(
        Some(Path::new(&format!("/trenv-kernel-test/{id}"))),
        id,
        false,
    )
    .map_err(|e| e.to_string())?;
    let result = (|| {
        let pids = cg.pids().map_err(|e| e.to_string())?;
        check!(pids.contains(&c.pid), "pid {} not in {pids:?}", c.pid);
        let stats = cg.stats().map_err(|e| e.to_string())?;
        check!(
            stats.memory.memory.limit == 134217728,
            "limit {}",
            stats.memory.memory.limit
        );
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_value(json!({"memory": {"limit": 67108864}}))
                .map_err(|e| e.to_string())?;
        cg.update(&res).map_err(|e| e.to_string())?;
        let stats = cg.stats().map_err(|e| e.to_string())?;
        check!(
            stats.memory.memory.limit == 67108864,
            "updated limit {}",
            stats.memory.memory.limit
        );
        check!(cg.memory_peak().is_some(), "no memory peak");
        check!(cg.oom_kills() == Some(0), "oom kills {:?}", cg.oom_kills());
        cg.freeze(true).map_err(|e| e.to_string())?;
        let state =
            fs::read_to_string(format!("/proc/{}/stat", c.pid)).map_err(|e| e.to_string())?;
        cg.freeze(false).map_err(|e| e.to_string())?;
        check!(
            state.contains(") S") || state.contains(") D"),
            "frozen task state: {state}"
        );
        Ok(())
    })();
    let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), nix::sys::signal::Signal::SIGKILL);
    let code = c.wait()?;
    c.delete()?;
    result?;
    check!(code == 137, "killed task exit {code}");
    Ok(())
}

fn overlay_rootfs_mounts_and_unmounts(env: &Env) -> TestResult {
    let base = env.root.join("overlay");
    let (lower, upper, work, target) = (
        base.join("lower"),
        base.join("upper"),
        base.join("work"),
        base.join("rootfs"),
    );
    for d in [&lower, &upper, &work, &target] {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    fs::write(lower.join("from-lower"), "x").map_err(|e| e.to_string())?;
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    };
    rootfs::mount_all(&[m], &target).map_err(|e| e.to_string())?;
    let visible = target.join("from-lower").exists();
    fs::write(target.join("written"), "y").map_err(|e| e.to_string())?;
    rootfs::unmount(&target).map_err(|e| e.to_string())?;
    check!(visible, "lower layer not visible");
    check!(
        upper.join("written").exists(),
        "write did not reach the upper layer"
    );
    check!(!target.join("from-lower").exists(), "still mounted");
    // Unmounting again is not an error.
    rootfs::unmount(&target).map_err(|e| e.to_string())?;
    Ok(())
}

fn owner(p: &Path) -> Result<(u32, u32), String> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((md.uid(), md.gid()))
}

/// containerd's `uidmap=`/`gidmap=` rootfs options (a user-namespaced pod's snapshot): an
/// overlay's lower layers and a bind seen through the mapping; nothing of the idmapped
/// layers' staging left; a half mapping refused with nothing mounted.
fn idmapped_rootfs_overlay_and_bind(env: &Env) -> TestResult {
    let base = env.root.join("idmapped");
    let (l1, l2, upper, work, target, bind_target) = (
        base.join("l1"),
        base.join("l2"),
        base.join("upper"),
        base.join("work"),
        base.join("rootfs"),
        base.join("bound"),
    );
    for d in [&l1, &l2, &upper, &work, &target, &bind_target] {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    fs::write(l1.join("root-owned"), "x").map_err(|e| e.to_string())?;
    fs::write(l2.join("user-owned"), "y").map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(l2.join("user-owned"), Some(1000), Some(1001))
        .map_err(|e| e.to_string())?;
    let map = ["uidmap=0:100000:65536", "gidmap=0:100000:65536"];
    let overlay = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: [
            format!("lowerdir={}:{}", l1.display(), l2.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
            map[0].to_string(),
            map[1].to_string(),
        ]
        .into(),
    };
    rootfs::mount_all(&[overlay], &target).map_err(|e| e.to_string())?;
    let seen = (
        owner(&target.join("root-owned")),
        owner(&target.join("user-owned")),
    );
    let staging_left = rootfs::idmapped_layers_dir(&target).exists();
    rootfs::unmount(&target).map_err(|e| e.to_string())?;
    let (root_owned, user_owned) = (seen.0?, seen.1?);
    check!(root_owned == (100000, 100000), "overlay: {root_owned:?}");
    check!(user_owned == (101000, 101001), "overlay: {user_owned:?}");
    check!(
        !staging_left,
        "the idmapped layers' staging directory is left"
    );
    // On the layers themselves nothing changed.
    check!(
        owner(&l2.join("user-owned"))? == (1000, 1001),
        "layer changed"
    );
    let bind = Mount {
        kind: "bind".into(),
        source: l2.display().to_string(),
        options: vec!["rbind".into(), "ro".into(), map[0].into(), map[1].into()],
    };
    rootfs::mount_all(&[bind], &bind_target).map_err(|e| e.to_string())?;
    let seen = owner(&bind_target.join("user-owned"));
    let write = fs::write(bind_target.join("new"), "z");
    rootfs::unmount(&bind_target).map_err(|e| e.to_string())?;
    let seen = seen?;
    check!(seen == (101000, 101001), "bind: {seen:?}");
    check!(write.is_err(), "a read-only idmapped bind was writable");
    let half = Mount {
        kind: "bind".into(),
        source: l2.display().to_string(),
        options: vec!["rbind".into(), map[0].into()],
    };
    let e = rootfs::mount_all(&[half], &bind_target)
        .map(|_| ())
        .unwrap_err();
    check!(e.to_string().contains("go together"), "half mapping: {e}");
    check!(
        !bind_target.join("user-owned").exists(),
        "a refused idmapped mount left something mounted"
    );
    Ok(())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("kernel tests need root");
        println!("0 passed, 1 failed");
        std::process::exit(1);
    }
    // SAFETY: nothing has started a thread yet.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // SAFETY: single-threaded here.
    let runtime = unsafe { Runtime::fork() }.expect("forking the runtime's zygote");
    let root = std::env::temp_dir().join(format!("trenv-kernel-{}", std::process::id()));
    fs::create_dir_all(&root).expect("temp dir");
    let env = Env { runtime, root };
    let tests: &[(&str, TestFn)] = &[
        (
            "container_runs_and_is_cleaned_up",
            container_runs_and_is_cleaned_up,
        ),
        (
            "missing_binary_fails_at_create",
            missing_binary_fails_at_create,
        ),
        ("seccomp_profile_is_enforced", seccomp_profile_is_enforced),
        (
            "capabilities_are_dropped_after_seccomp",
            capabilities_are_dropped_after_seccomp,
        ),
        (
            "cgroup_stats_update_freeze_pids",
            cgroup_stats_update_freeze_pids,
        ),
        (
            "overlay_rootfs_mounts_and_unmounts",
            overlay_rootfs_mounts_and_unmounts,
        ),
        (
            "idmapped_rootfs_overlay_and_bind",
            idmapped_rootfs_overlay_and_bind,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        match test(&env) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
        }
    }
    let _ = fs::remove_dir_all(&env.root);
    if let Some(dir) = memory_cgroup("x").and_then(|p| p.parent().map(Path::to_path_buf)) {
        let _ = fs::remove_dir(dir);
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
