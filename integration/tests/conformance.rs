//! Conformance with what containerd's clients and the kubelet expect of a runtime (issue 14):
//! each scenario runs on containerd's `io.containerd.runc.v2` and on trenv in the same run,
//! through the way real clients reach the shim (containerd's API as its client library
//! calls it, CRI as the kubelet does, or `ctr`), and both must come out the same. Every
//! scenario then checks that nothing of it is left: no task, container, shim, mount, bundle
//! or cgroup.
//!
//! | scenario                                              | how               |
//! | ----------------------------------------------------- | ----------------- |
//! | exec with the terminal asked for in the request only  | containerd's API  |
//! | `IoUid`/`IoGid`/`ShimCgroup` runtime options          | containerd's API  |
//! | containerd 1.7's `containerd.linux.runc.*` options    | containerd's API  |
//! | a `slice:prefix:name` cgroups path, cgroupfs driver   | CRI               |
//! | rootfs propagation `rshared` / `rslave`, both ways    | CRI               |
//! | Kill racing the init's exit                           | containerd's API  |
//! | runtime features (`-info`) and recursive read-only    | API, shim, `ctr`  |
//! | recursive read-only through a runc-typed CRI handler  | CRI               |
//! | a pod without host users (idmapped mounts, exec)      | CRI               |
//! | a user-namespaced container's stdio (`IoUid`/`IoGid`) | containerd's API  |
//! | templates and user namespaces: a clear refusal        | `ctr`, `trenv`    |

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;
use trenv_integration::api::{Containerd, Options, TaskIo};
use trenv_integration::cri::{
    self, Cri, HANDLER, Pod, api, container_config, containerd_state_dir, mounts_under, pod_config,
    shim_processes, wait_for,
};
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, pids_matching, unique_id};

const NAMESPACE: &str = "trenv-conformance";
const RUNC: &str = "io.containerd.runc.v2";
/// CRI's runtime handler for runc (config/containerd-*.toml.in).
const RUNC_HANDLER: &str = "runc";
const RUNTIMES: [&str; 2] = [RUNC, RUNTIME];
/// How long a shim may take to exit after its container is gone.
const SHIM_EXIT: Duration = Duration::from_secs(10);
/// The type URL of the OCI features document in a shim's `RuntimeInfo`.
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

fn ctr() -> Ctr {
    let c = Ctr::from_env().with_namespace(NAMESPACE);
    c.ensure_images();
    c
}

fn api() -> Containerd {
    Containerd::from_env(NAMESPACE).unwrap_or_else(|e| panic!("{e}"))
}

/// `CONTAINERD_VERSION` (2 or 1.7) of the containerd under test.
fn containerd_version() -> String {
    std::env::var("CONTAINERD_VERSION").unwrap_or_else(|_| {
        panic!("CONTAINERD_VERSION is not set: run the tests through integration/test.sh")
    })
}

fn short(runtime: &str) -> &'static str {
    if runtime == RUNC { "runc" } else { "trenv" }
}

// --- clean-up and leak checks ---

/// A file or directory removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_dir(prefix: &str) -> TempPath {
    let dir = TempPath(std::env::temp_dir().join(unique_id(prefix)));
    std::fs::create_dir_all(&dir.0).unwrap();
    dir
}

/// A container of the `ctr`/API scenarios: removed however the test ends;
/// [`Container::finish`] removes it and checks that nothing of it is left.
struct Container<'a> {
    ctr: &'a Ctr,
    id: String,
    runtime: &'static str,
}

impl<'a> Container<'a> {
    fn new(ctr: &'a Ctr, runtime: &'static str, tag: &str) -> Container<'a> {
        Container {
            ctr,
            id: unique_id(&format!("conf-{tag}-{}", short(runtime))),
            runtime,
        }
    }

    /// The container record (`ctr containers create`) with `flags`, busybox running `args`.
    fn create(&self, flags: &[&str], args: &[&str]) {
        let mut a = vec!["containers", "create", "--runtime", self.runtime];
        a.extend_from_slice(flags);
        a.push(BUSYBOX);
        a.push(&self.id);
        a.extend_from_slice(args);
        self.ctr.run(&a).ok();
    }

    /// `ctr run -d` of busybox running `args`.
    fn run_detached(&self, args: &[&str]) {
        let mut a = vec!["run", "-d", "--runtime", self.runtime, BUSYBOX, &self.id];
        a.extend_from_slice(args);
        self.ctr.run(&a).ok();
    }

    fn finish(self) {
        assert_nothing_left(self.ctr, &self.id, self.runtime);
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        self.ctr.remove(&self.id);
    }
}

/// Shim processes of `runtime` serving container `id` (its server and, for trenv, what the
/// server forked).
fn shims_of(runtime: &str, id: &str) -> Vec<i32> {
    let shim = if runtime == RUNC {
        "containerd-shim-runc-v2"
    } else {
        "containerd-shim-trenv-v1"
    };
    let needle = format!("-id {id} ");
    pids_matching(shim)
        .into_iter()
        .filter(|pid| cmdline(*pid).is_some_and(|c| c.contains(&needle)))
        .collect()
}

fn cmdline(pid: i32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The shim server of container `id`: the one of its shim processes that no other forked.
fn shim_server(runtime: &str, id: &str) -> Option<i32> {
    let all = shims_of(runtime, id);
    all.iter()
        .copied()
        .find(|pid| parent_of(*pid).is_none_or(|p| !all.contains(&p)))
}

/// No task, container, shim, mount, bundle or cgroup of `id`.
fn assert_nothing_left(c: &Ctr, id: &str, runtime: &str) {
    let at = format!("{id} on {}", short(runtime));
    c.remove(id);
    assert!(c.task_status(id).is_none(), "{at}: a task is left");
    let listed = c.run(&["containers", "ls", "-q"]).ok().stdout;
    assert!(
        !listed.lines().any(|l| l.trim() == id),
        "{at}: the container is still listed"
    );
    assert!(
        wait_for(SHIM_EXIT, || shims_of(runtime, id).is_empty()),
        "{at}: its shim still runs {SHIM_EXIT:?} later: {:?}",
        shims_of(runtime, id)
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left: Vec<&str> = info.lines().filter(|l| l.contains(id)).collect();
    assert!(left.is_empty(), "{at}: mounts left: {left:#?}");
    let bundle = containerd_state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(&c.namespace)
        .join(id);
    assert!(!bundle.exists(), "{at}: bundle {} left", bundle.display());
    let cgroups = cgroups_named(&[id]);
    assert!(cgroups.is_empty(), "{at}: cgroups left: {cgroups:?}");
}

/// Cgroup directories (any hierarchy, four levels deep) whose name contains one of `ids`.
fn cgroups_named(ids: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, ids: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id)) {
                out.push(path.clone());
            }
            if depth > 0 {
                walk(&path, depth - 1, ids, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 4, ids, &mut out);
    out
}

// --- stdio ---

/// A FIFO that the test holds open for reading and writing, so that a shim can open it for
/// writing at any time and what it writes stays until the test reads it.
struct Fifo {
    _dir: TempPath,
    path: String,
    file: File,
}

impl Fifo {
    fn new() -> Fifo {
        let dir = temp_dir("trenv-conf-fifo");
        let path = dir.0.join("out");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        Fifo {
            _dir: dir,
            path: path.to_str().unwrap().to_string(),
            file,
        }
    }

    /// What was written so far.
    fn read_available(&mut self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.file.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until the text contains `want` or `timeout` passes; answers all it read.
    fn read_until(&mut self, want: &str, timeout: Duration) -> String {
        let start = Instant::now();
        let mut text = String::new();
        loop {
            text.push_str(&self.read_available());
            if text.contains(want) || start.elapsed() > timeout {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// --- protobuf, as containerd's client library encodes runtime options ---

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_uint(number: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(number) << 3, out);
    varint(v, out);
}

fn field_str(number: u32, s: &str, out: &mut Vec<u8>) {
    varint((u64::from(number) << 3) | 2, out);
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// The options of one scenario, encoded as the client library of each line encodes them.
#[derive(Clone, Default)]
struct Wanted {
    shim_cgroup: Option<String>,
    io_owner: Option<(u32, u32)>,
}

/// `containerd.runc.v1.Options` (what 2.x's client sends to any runtime, and 1.7's to
/// `io.containerd.runc*`): ShimCgroup 3, IoUid 4, IoGid 5.
fn runc_options(w: &Wanted) -> Options {
    let mut v = Vec::new();
    if let Some(cg) = &w.shim_cgroup {
        field_str(3, cg, &mut v);
    }
    if let Some((uid, gid)) = w.io_owner {
        field_uint(4, uid.into(), &mut v);
        field_uint(5, gid.into(), &mut v);
    }
    Options {
        type_url: "containerd.runc.v1.Options".into(),
        value: v,
    }
}

/// `containerd.linux.runc.CreateOptions` (what 1.7's client sends to every other runtime):
/// ShimCgroup 9, IoUid 10, IoGid 11.
fn create_options_1_7(w: &Wanted) -> Options {
    let mut v = Vec::new();
    if let Some(cg) = &w.shim_cgroup {
        field_str(9, cg, &mut v);
    }
    if let Some((uid, gid)) = w.io_owner {
        field_uint(10, uid.into(), &mut v);
        field_uint(11, gid.into(), &mut v);
    }
    Options {
        type_url: "containerd.linux.runc.CreateOptions".into(),
        value: v,
    }
}

// --- 1: exec with a terminal ---

#[test]
fn an_exec_that_asks_for_a_terminal_in_the_request_only_gets_one_as_on_runc() {
    let c = ctr();
    let api = api();
    let mut seen = Vec::new();
    for runtime in RUNTIMES {
        let container = Container::new(&c, runtime, "tty");
        container.run_detached(&["sleep", "1000"]);
        let mut out = Fifo::new();
        // As containerd's client library sends it: the terminal in the request, not in
        // the process spec.
        let process = json!({
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["tty"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
        });
        let io = TaskIo {
            stdout: out.path.clone(),
            terminal: true,
            ..Default::default()
        };
        let result = api
            .exec(&container.id, "tty", &process, &io)
            .and_then(|()| api.start(&container.id, "tty"))
            .and_then(|_| api.wait(&container.id, "tty"));
        let text = out.read_until("\n", Duration::from_secs(5));
        let _ = api.delete_process(&container.id, "tty");
        seen.push((runtime, result.map_err(|e| e.message().to_string()), text));
        container.finish();
    }
    for (runtime, result, text) in &seen {
        assert_eq!(result, &Ok(0), "{runtime}: the exec failed: {seen:#?}");
        assert!(
            text.trim_start().starts_with("/dev/pts/"),
            "{runtime}: the exec has no terminal: {text:?} ({seen:#?})"
        );
    }
}

// --- 2, 3: runtime options ---

/// What a container run with some runtime options showed.
#[derive(Debug, PartialEq, Eq)]
struct OptionsOutcome {
    /// Who owns the init's stdout pipe (`uid:gid`), as the process sees it.
    stdout_owner: String,
    /// The cgroup of the shim server (see [`cgroup_of`]).
    shim_cgroup: Option<String>,
}

/// A cgroup for ShimCgroup, made in every hierarchy (cgroup v2, or each v1 controller's, a
/// cpuset one given its parent's CPUs and memory nodes): removed, once empty, when dropped.
struct ShimCgroup {
    dirs: Vec<PathBuf>,
    name: String,
}

/// Mount points of the cgroup hierarchies (v1 controllers, or the v2 tree) and whether each
/// is v2.
fn cgroup_roots() -> Vec<(PathBuf, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2_only = trenv_integration::cgroup_v2_host();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mount_point = pre.split(' ').nth(4)?;
            let wanted = if v2_only {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
            };
            wanted.then(|| (PathBuf::from(mount_point), fstype == "cgroup2"))
        })
        .collect()
}

impl ShimCgroup {
    fn new() -> ShimCgroup {
        let name = unique_id("trenv-conf-shimcg");
        let mut dirs = Vec::new();
        for (root, _) in cgroup_roots() {
            let dir = root.join(&name);
            std::fs::create_dir(&dir).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(root.join(f)) {
                    std::fs::write(dir.join(f), v.trim()).unwrap();
                }
            }
            dirs.push(dir);
        }
        ShimCgroup { dirs, name }
    }
}

impl Drop for ShimCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            wait_for(SHIM_EXIT, || std::fs::remove_dir(dir).is_ok());
        }
    }
}

/// The cgroup of `pid` in the pids controller's hierarchy (cgroup v1) or the v2 tree.
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v2 = trenv_integration::cgroup_v2_host();
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let wanted = if v2 {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "pids")
        };
        wanted.then(|| path.to_string())
    })
}

/// Runs busybox as user 1000 on `runtime` through containerd's API with `options` at
/// Tasks.Create (containerd gives them to the shim's `start` too): what the process sees of
/// its stdout and where the shim runs.
fn run_with_options(
    c: &Ctr,
    runtime: &'static str,
    options: &Options,
) -> Result<OptionsOutcome, String> {
    let api = api();
    let container = Container::new(c, runtime, "opts");
    container.create(
        &["--user", "1000:1000"],
        &["sh", "-c", "stat -L -c %u:%g /proc/self/fd/1; sleep 1000"],
    );
    let mut out = Fifo::new();
    let io = TaskIo {
        stdout: out.path.clone(),
        stderr: out.path.clone(),
        ..Default::default()
    };
    let outcome = api
        .create_task_with(&container.id, &io, Some(options), None)
        .and_then(|_| api.start(&container.id, ""))
        .map_err(|e| format!("{}: {}", short(runtime), e.message()))
        .map(|_| {
            let text = out.read_until("\n", Duration::from_secs(5));
            let shim_cgroup = shim_server(runtime, &container.id).and_then(cgroup_of);
            OptionsOutcome {
                stdout_owner: text.trim().to_string(),
                shim_cgroup,
            }
        });
    let _ = api.kill(&container.id, "", 9, true);
    let _ = api.wait(&container.id, "");
    let _ = api.delete_task(&container.id);
    container.finish();
    outcome
}

fn assert_options_honoured(trenv_options: impl Fn(&Wanted) -> Options) {
    let c = ctr();
    for runtime in RUNTIMES {
        let cgroup = ShimCgroup::new();
        let wanted = Wanted {
            shim_cgroup: Some(format!("/{}", cgroup.name)),
            io_owner: Some((1000, 1000)),
        };
        let options = if runtime == RUNC {
            runc_options(&wanted)
        } else {
            trenv_options(&wanted)
        };
        let outcome = run_with_options(&c, runtime, &options)
            .unwrap_or_else(|e| panic!("{} refused the options: {e}", short(runtime)));
        assert_eq!(
            outcome,
            OptionsOutcome {
                stdout_owner: "1000:1000".into(),
                shim_cgroup: Some(format!("/{}", cgroup.name)),
            },
            "{}: IoUid/IoGid or ShimCgroup not honoured",
            short(runtime)
        );
        // A ShimCgroup that does not exist fails the start, and leaves no shim behind.
        let missing = Wanted {
            shim_cgroup: Some(format!("/{}-missing", cgroup.name)),
            io_owner: None,
        };
        let options = if runtime == RUNC {
            runc_options(&missing)
        } else {
            trenv_options(&missing)
        };
        let refused = run_with_options(&c, runtime, &options);
        assert!(
            refused.is_err(),
            "{}: ran with a missing ShimCgroup: {refused:?}",
            short(runtime)
        );
    }
}

#[test]
fn io_uid_io_gid_and_shim_cgroup_are_honoured_as_on_runc() {
    assert_options_honoured(runc_options);
}

#[test]
fn containerd_1_7_create_options_are_honoured_as_runc_honours_its_own() {
    // containerd 1.7's client library (WithShimCgroup, WithUIDOwner, WithGIDOwner) sends
    // `containerd.linux.runc.CreateOptions` to every runtime not named io.containerd.runc*,
    // and containerd 1.7 hands them to the shim as they are. containerd 2.x no longer knows
    // the type and refuses it itself, whichever the runtime (its client never sends it).
    if containerd_version() != "2" {
        assert_options_honoured(create_options_1_7);
        return;
    }
    let c = ctr();
    let wanted = Wanted {
        shim_cgroup: None,
        io_owner: Some((1000, 1000)),
    };
    let refusals: Vec<String> = RUNTIMES
        .into_iter()
        .map(|runtime| {
            let r = run_with_options(&c, runtime, &create_options_1_7(&wanted));
            let e = r.expect_err("containerd 2.x passed containerd.linux.runc.CreateOptions on");
            e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string())
        })
        .collect();
    assert_eq!(refusals[0], refusals[1], "different refusals");
}

#[test]
fn a_checkpoint_with_containerd_1_7_options_writes_the_image_where_asked_as_on_runc() {
    // The client library's WithCheckpointImagePath: containerd 1.7's sends
    // `containerd.linux.runc.CheckpointOptions` to a runtime not named io.containerd.runc*,
    // whose image and work paths have each other's numbers (work 8, image 9); 2.x's sends
    // `containerd.runc.v1.CheckpointOptions` (image 8) to any runtime, and its daemon
    // refuses the old type.
    let c = ctr();
    let api = api();
    let old_type = containerd_version() == "1.7";
    for runtime in RUNTIMES {
        let container = Container::new(&c, runtime, "ckpt");
        container.run_detached(&["sleep", "1000"]);
        let dir = temp_dir("trenv-conf-ckpt");
        let images = dir.0.join("images");
        let image_path = images.to_str().unwrap();
        let mut v = Vec::new();
        let options = if runtime == RUNTIME && old_type {
            field_str(9, image_path, &mut v);
            Options {
                type_url: "containerd.linux.runc.CheckpointOptions".into(),
                value: v,
            }
        } else {
            field_str(8, image_path, &mut v);
            Options {
                type_url: "containerd.runc.v1.CheckpointOptions".into(),
                value: v,
            }
        };
        let result = api.checkpoint(&container.id, &options);
        assert!(
            result.is_ok(),
            "{}: checkpoint with {}: {:?}",
            short(runtime),
            options.type_url,
            result.map_err(|e| e.message().to_string())
        );
        assert!(
            images.join("inventory.img").exists(),
            "{}: no CRIU image in {image_path}",
            short(runtime)
        );
        // containerd 1.7 records a checkpoint image for it in its store.
        let listed = c.run(&["images", "ls", "-q"]).ok().stdout;
        for r in listed
            .lines()
            .filter(|l| l.starts_with(&format!("containerd.io/checkpoint/{}:", container.id)))
        {
            let _ = c.run(&["images", "rm", r]);
        }
        container.finish();
    }
}

// --- 6: Kill racing an exit ---

#[test]
fn kills_racing_the_exit_of_the_init_answer_as_on_runc() {
    // The first SIGKILL ends the init; the next ones arrive while the shim reaps it and
    // holds its exit back for its output: each must answer success or NOT_FOUND (what
    // runc's shim answers for a finished process), never an internal error.
    let c = ctr();
    let api = api();
    for runtime in RUNTIMES {
        let container = Container::new(&c, runtime, "killrace");
        container.create(&[], &["sh", "-c", "sleep 1000 & sleep 1000"]);
        let mut out = Fifo::new();
        let io = TaskIo {
            stdout: out.path.clone(),
            stderr: out.path.clone(),
            ..Default::default()
        };
        api.create_task_with(&container.id, &io, None, None)
            .and_then(|_| api.start(&container.id, ""))
            .unwrap_or_else(|e| panic!("{}: starting: {}", short(runtime), e.message()));
        let mut failures = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Err(e) = api.kill(&container.id, "", 9, false)
                && e.code() != Code::NotFound
            {
                failures.push(format!("{:?}: {}", e.code(), e.message()));
            }
            if api.task_status(&container.id).as_deref() == Ok("STOPPED") {
                break;
            }
        }
        // A few more once it is reported.
        for _ in 0..20 {
            if let Err(e) = api.kill(&container.id, "", 9, false)
                && e.code() != Code::NotFound
            {
                failures.push(format!("{:?}: {}", e.code(), e.message()));
            }
        }
        let _ = out.read_available();
        let _ = api.wait(&container.id, "");
        let _ = api.delete_task(&container.id);
        container.finish();
        assert!(
            failures.is_empty(),
            "{}: kills of the exiting init failed: {failures:#?}",
            short(runtime)
        );
    }
}

/// A task created through containerd's API without stdio (`cio.NullIO`, what faasd asks
/// for) gets /dev/null for reading and writing, as runc gives it: its writes to stdout
/// and stderr succeed (libcontainer reopened it read-only, and a function's first print
/// failed).
#[test]
fn a_task_without_stdio_can_write_to_stdout_and_stderr_as_on_runc() {
    let c = ctr();
    let api = api();
    for runtime in RUNTIMES {
        let container = Container::new(&c, runtime, "nullio");
        container.create(
            &[],
            &[
                "sh",
                "-c",
                "echo out && echo err >&2 && read x; test $? = 1",
            ],
        );
        api.create_task(&container.id)
            .and_then(|_| api.start(&container.id, ""))
            .unwrap_or_else(|e| panic!("{}: starting: {}", short(runtime), e.message()));
        let status = api.wait(&container.id, "");
        let _ = api.delete_task(&container.id);
        container.finish();
        assert_eq!(
            status.map_err(|e| e.message().to_string()),
            Ok(0),
            "{}: writing to stdout or stderr failed (or stdin was not at its end)",
            short(runtime)
        );
    }
}

// --- 7: runtime features, recursive read-only mounts ---

/// The OCI features document of a shim's `RuntimeInfo`.
fn features_of(info: &trenv_integration::api::RuntimeInfo, runtime: &str) -> serde_json::Value {
    let features = info
        .features
        .as_ref()
        .unwrap_or_else(|| panic!("{runtime}: RuntimeInfo without features: {info:?}"));
    assert_eq!(features.type_url, FEATURES_TYPE_URL, "{runtime}");
    serde_json::from_slice(&features.value)
        .unwrap_or_else(|e| panic!("{runtime}: features are not JSON: {e}"))
}

fn offers(features: &serde_json::Value, option: &str) -> bool {
    features["mountOptions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|o| o == option))
}

/// `<shim> -info` run as containerd 2.x runs it (options on stdin: none).
fn info_of_binary(bin: &Path) -> trenv_integration::api::RuntimeInfo {
    use prost::Message;
    let out = Command::new(bin)
        .arg("-info")
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} -info: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} -info failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    trenv_integration::api::RuntimeInfo::decode(out.stdout.as_slice())
        .unwrap_or_else(|e| panic!("{} -info: not a RuntimeInfo: {e}", bin.display()))
}

/// What busybox sees of a directory bind-mounted with `options` (a tmpfs is mounted on its
/// `sub`): whether the top and the submount are writable, as "top-rw"/"top-ro" and
/// "sub-rw"/"sub-ro". The container answers in its exit status, not on stdout: `ctr run`
/// through runc.v2 has been seen to drop a short task's last line (CI, 2026-12-05).
fn write_through_bind(c: &Ctr, runtime: &'static str, options: &str) -> String {
    let dir = temp_dir("trenv-conf-rro");
    let sub = dir.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let sub_s = sub.to_str().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", sub_s])
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs on {sub_s}");
    let container = Container::new(c, runtime, "rro");
    let mount = format!(
        "type=bind,src={},dst=/mnt,options={options}",
        dir.0.display()
    );
    let script = "s=0; touch /mnt/top 2>/dev/null || s=$((s+1)); \
                  touch /mnt/sub/x 2>/dev/null || s=$((s+2)); exit $((10+s))";
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--mount",
        &mount,
        BUSYBOX,
        &container.id,
        "sh",
        "-c",
        script,
    ]);
    let _ = Command::new("umount").arg(sub_s).status();
    container.finish();
    let read_only = r.code.checked_sub(10).filter(|s| (0..4).contains(s));
    let Some(read_only) = read_only else {
        panic!("{}: the probe did not finish: {r:#?}", short(runtime));
    };
    let top = if read_only & 1 == 0 { "rw" } else { "ro" };
    let sub = if read_only & 2 == 0 { "rw" } else { "ro" };
    format!("top-{top}\nsub-{sub}\n")
}

#[test]
fn runtime_features_are_answered_and_recursive_read_only_mounts_honoured_as_on_runc() {
    // The shims themselves, as containerd 2.x runs them (`-info`, options on stdin). The
    // peer is containerd 2.x's runc shim: 1.7's has no -info.
    let cache = std::env::var("TRENV_CACHE").unwrap_or_else(|_| "/var/cache/trenv".into());
    let runc_shim = Path::new(&cache).join("containerd-2/usr/bin/containerd-shim-runc-v2");
    for (runtime, bin) in [
        (RUNC, runc_shim),
        (
            RUNTIME,
            PathBuf::from("/usr/local/bin/containerd-shim-trenv-v1"),
        ),
    ] {
        let info = info_of_binary(&bin);
        assert_eq!(info.name, runtime);
        let features = features_of(&info, runtime);
        assert!(offers(&features, "rro"), "{runtime}: no rro in {features}");
    }
    // Through containerd's introspection (2.x only: 1.7 does not ask runtimes).
    if containerd_version() == "2" {
        let api = api();
        for runtime in RUNTIMES {
            let info = api
                .runtime_info(runtime, None)
                .unwrap_or_else(|e| panic!("{runtime}: PluginInfo: {}", e.message()));
            assert_eq!(info.name, runtime);
            let features = features_of(&info, runtime);
            assert!(offers(&features, "rro"), "{runtime}: no rro in {features}");
        }
    }
    // And what it promises: "rro" makes the submount read-only too, "ro" only the top.
    let c = ctr();
    for runtime in RUNTIMES {
        assert_eq!(
            write_through_bind(&c, runtime, "rbind:rro"),
            "top-ro\nsub-ro\n",
            "{}: rro",
            short(runtime)
        );
        assert_eq!(
            write_through_bind(&c, runtime, "rbind:ro"),
            "top-ro\nsub-rw\n",
            "{}: ro",
            short(runtime)
        );
    }
}

// --- CRI: 4 (cgroups path), 5 (propagation) ---

/// A CRI client with the test images known to CRI.
fn cri_setup() -> Cri {
    Ctr::from_env()
        .with_namespace(cri::NAMESPACE)
        .ensure_images();
    let cri = Cri::from_env();
    cri.wait_image(BUSYBOX, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    cri
}

/// Nothing of pod `sandbox` and its containers is left: not in CRI, no trenv shim, no mount
/// under containerd's state, no bundle, no cgroup.
fn assert_pod_gone(cri: &Cri, sandbox: &str, containers: &[String]) {
    let pods = cri
        .list_pod_sandboxes(Some(sandbox))
        .expect("ListPodSandbox");
    assert!(pods.is_empty(), "sandbox still listed: {pods:?}");
    assert!(
        wait_for(SHIM_EXIT, || shim_processes(sandbox).is_empty()),
        "trenv shims of pod {sandbox} still run: {:?}",
        shim_processes(sandbox)
    );
    let mut ids: Vec<&str> = containers.iter().map(String::as_str).collect();
    ids.push(sandbox);
    let state = containerd_state_dir();
    let mounts = mounts_under(&state, &ids);
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    for id in &ids {
        let bundle = state
            .join("io.containerd.runtime.v2.task")
            .join(cri::NAMESPACE)
            .join(id);
        assert!(!bundle.exists(), "bundle {} left", bundle.display());
    }
    let cgroups = cgroups_named(&ids);
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

fn busybox_container(name: &str) -> api::ContainerConfig {
    container_config(name, BUSYBOX, &["sleep", "1000"], &format!("{name}.log"))
}

#[test]
fn a_slice_style_cgroup_parent_without_the_systemd_driver_runs_as_on_runc() {
    // containerd's CRI writes cgroupsPath "<parent>:cri-containerd:<id>" whenever the
    // kubelet's cgroup parent ends in ".slice", whichever driver is configured; with
    // SystemdCgroup off (this containerd's config) it is a cgroupfs path.
    let cri = cri_setup();
    for handler in [RUNC_HANDLER, HANDLER] {
        let logs = temp_dir("trenv-conf-logs");
        let name = unique_id(&format!("conf-slice-{handler}"));
        let mut config = pod_config(&name, &format!("uid-{name}"), &logs.0);
        if let Some(linux) = config.linux.as_mut() {
            linux.cgroup_parent = "trenvconf.slice".into();
        }
        let mut pod = Pod::run(&cri, config, handler);
        let id = pod.start(&busybox_container("c"));
        let out = cri
            .exec_sync(&id, &["echo", "running"], 10)
            .unwrap_or_else(|e| panic!("{handler}: ExecSync: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "running\n",
            "{handler}"
        );
        let sandbox = pod.id.clone();
        let containers = pod.containers.clone();
        pod.teardown(0);
        assert_pod_gone(&cri, &sandbox, &containers);
    }
}

/// A tmpfs mounted on a new directory and made shared (as a kubelet's pod volume directory
/// is on a host with systemd): unmounted, with whatever is below it, when dropped.
struct SharedMount(TempPath);

impl SharedMount {
    fn new() -> SharedMount {
        let dir = temp_dir("trenv-conf-prop");
        let d = dir.0.to_str().unwrap().to_string();
        for args in [
            vec!["-t", "tmpfs", "-o", "size=1m", "tmpfs", d.as_str()],
            vec!["--make-shared", d.as_str()],
        ] {
            let st = Command::new("mount").args(&args).status().unwrap();
            assert!(st.success(), "mount {args:?}");
        }
        for sub in ["h2c", "h2c/m", "bidi"] {
            std::fs::create_dir(dir.0.join(sub)).unwrap();
        }
        SharedMount(dir)
    }

    fn path(&self, sub: &str) -> String {
        self.0.0.join(sub).to_str().unwrap().to_string()
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-R", "-l", self.0.0.to_str().unwrap()])
            .status();
    }
}

fn with_mount(
    mut config: api::ContainerConfig,
    host_path: String,
    container_path: &str,
    propagation: api::MountPropagation,
    privileged: bool,
) -> api::ContainerConfig {
    config.mounts.push(api::Mount {
        container_path: container_path.into(),
        host_path,
        propagation: propagation as i32,
        ..Default::default()
    });
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.privileged = privileged;
    }
    config
}

#[test]
fn rshared_and_rslave_rootfs_propagation_carry_mounts_both_ways_as_on_runc() {
    // CRI writes rootfsPropagation "rslave" for a host-to-container mount and "rshared" for
    // a bidirectional one (the OCI spec's recursive forms).
    let cri = cri_setup();
    for handler in [RUNC_HANDLER, HANDLER] {
        let shared = SharedMount::new();
        let logs = temp_dir("trenv-conf-logs");
        let name = unique_id(&format!("conf-prop-{handler}"));
        let mut config = pod_config(&name, &format!("uid-{name}"), &logs.0);
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.privileged = true;
        }
        let mut pod = Pod::run(&cri, config, handler);
        let slave = pod.start(&with_mount(
            busybox_container("slave"),
            shared.path("h2c"),
            "/h2c",
            api::MountPropagation::PropagationHostToContainer,
            false,
        ));
        let bidi = pod.start(&with_mount(
            busybox_container("bidi"),
            shared.path("bidi"),
            "/bidi",
            api::MountPropagation::PropagationBidirectional,
            true,
        ));
        // Host to container: a mount made on the host after the start shows inside.
        let m = shared.path("h2c/m");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", &m])
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(format!("{m}/hello"), "from-host").unwrap();
        let seen = cri
            .exec_sync(&slave, &["cat", "/h2c/m/hello"], 10)
            .unwrap_or_else(|e| panic!("{handler}: ExecSync: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&seen.stdout),
            "from-host",
            "{handler}: the host's mount did not reach the container: {seen:?}"
        );
        // Container to host: a mount made inside shows on the host.
        let made = cri
            .exec_sync(
                &bidi,
                &[
                    "sh",
                    "-c",
                    "mkdir -p /bidi/m && mount -t tmpfs tmpfs /bidi/m && \
                     echo from-container > /bidi/m/f",
                ],
                10,
            )
            .unwrap_or_else(|e| panic!("{handler}: ExecSync: {e}"));
        assert_eq!(made.exit_code, 0, "{handler}: {made:?}");
        let back = std::fs::read_to_string(format!("{}/m/f", shared.path("bidi")));
        assert_eq!(
            back.as_deref().ok(),
            Some("from-container\n"),
            "{handler}: the container's mount did not reach the host"
        );
        let sandbox = pod.id.clone();
        let containers = pod.containers.clone();
        pod.teardown(0);
        drop(shared);
        assert_pod_gone(&cri, &sandbox, &containers);
    }
}

// --- 3: user namespaces (Kubernetes hostUsers: false) ---

/// The ids a user-namespaced container gets: its root is host uid/gid 100000.
const USERNS_MAP: &str = "0:100000:65536";
const USERNS_HOST_ID: u32 = 100_000;

/// A root filesystem holding only the host's static busybox (readable by any user) and the
/// directories the spec mounts on (which a mapped root could not create).
fn busybox_rootfs() -> TempPath {
    let dir = temp_dir("trenv-conf-rootfs");
    for d in ["bin", "proc", "dev", "sys", "run", "tmp"] {
        std::fs::create_dir_all(dir.0.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a static busybox on the host (Debian's busybox-static or busybox)");
    std::fs::copy(busybox, dir.0.join("bin/busybox")).unwrap();
    dir
}

/// containerd's default spec (`ctr oci spec`) for container `id` in a user namespace (the
/// mapping of [`USERNS_MAP`]), running busybox `args` from `rootfs`; written to a file.
fn userns_spec(c: &Ctr, id: &str, rootfs: &Path, args: &[&str]) -> TempPath {
    let out = c.run(&["oci", "spec"]).ok().stdout;
    let mut spec: serde_json::Value = serde_json::from_str(&out).expect("ctr oci spec: JSON");
    spec["root"] = json!({ "path": rootfs, "readonly": true });
    let mut argv = vec!["/bin/busybox"];
    argv.extend_from_slice(args);
    spec["process"]["args"] = json!(argv);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/{}/{id}", c.namespace).into();
    let mapping = json!([{ "containerID": 0, "hostID": USERNS_HOST_ID, "size": 65536 }]);
    spec["linux"]["uidMappings"] = mapping.clone();
    spec["linux"]["gidMappings"] = mapping;
    spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces in the default spec")
        .push(json!({ "type": "user" }));
    let file = TempPath(std::env::temp_dir().join(unique_id("trenv-conf-spec")));
    std::fs::write(&file.0, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    file
}

#[test]
fn a_user_namespaced_container_owns_its_stdio_with_io_uid_and_io_gid_as_on_runc() {
    // What IoUid/IoGid are for: the container's root is an unprivileged host user, who can
    // reopen its stdio (/proc/self/fd/N, /dev/stdout) only if the pipes are its own.
    let c = ctr();
    let api = api();
    let wanted = Wanted {
        shim_cgroup: None,
        io_owner: Some((USERNS_HOST_ID, USERNS_HOST_ID)),
    };
    for runtime in RUNTIMES {
        let container = Container::new(&c, runtime, "userns");
        let rootfs = busybox_rootfs();
        let spec = userns_spec(
            &c,
            &container.id,
            &rootfs.0,
            &[
                "sh",
                "-c",
                "busybox stat -L -c %u:%g /proc/self/fd/1; echo reopened > /proc/self/fd/1",
            ],
        );
        c.run(&[
            "containers",
            "create",
            "--runtime",
            runtime,
            "--config",
            spec.0.to_str().unwrap(),
            &container.id,
        ])
        .ok();
        let mut out = Fifo::new();
        let io = TaskIo {
            stdout: out.path.clone(),
            stderr: out.path.clone(),
            ..Default::default()
        };
        let status = api
            .create_task_with(&container.id, &io, Some(&runc_options(&wanted)), None)
            .and_then(|_| api.start(&container.id, ""))
            .and_then(|_| api.wait(&container.id, ""))
            .map_err(|e| e.message().to_string());
        let text = out.read_until("reopened\n", Duration::from_secs(5));
        let _ = api.delete_task(&container.id);
        container.finish();
        assert_eq!(status, Ok(0), "{}: {text}", short(runtime));
        assert_eq!(text, "0:0\nreopened\n", "{}", short(runtime));
    }
}

#[test]
fn templates_are_refused_clearly_for_user_namespaced_containers() {
    // CRIU restores a template's processes with the ids they were dumped with; a mapping
    // changes them. Neither a restore into a user namespace nor a template made from a
    // user-namespaced container is attempted: both are refused, saying why and what to do.
    // (runc has no templates: this is trenv's own refusal.)
    let c = ctr();
    let says = ["user namespace", "hostUsers: true", "without the template"];
    let check = |what: &str, text: &str| {
        for s in says {
            assert!(
                text.contains(s),
                "{what}: the refusal does not say {s:?}: {text}"
            );
        }
    };
    // A restore into a user namespace.
    let restored = Container::new(&c, RUNTIME, "userns-tpl");
    let annotation = format!("io.trenv.template={}", unique_id("tpl"));
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--uidmap",
        USERNS_MAP,
        "--gidmap",
        USERNS_MAP,
        "--annotation",
        &annotation,
        BUSYBOX,
        &restored.id,
        "true",
    ]);
    assert_ne!(r.code, 0, "restored into a user namespace: {r:#?}");
    check("restore", &r.stderr);
    restored.finish();
    // A template made from a user-namespaced container.
    let source = Container::new(&c, RUNTIME, "userns-src");
    c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--uidmap",
        USERNS_MAP,
        "--gidmap",
        USERNS_MAP,
        BUSYBOX,
        &source.id,
        "sleep",
        "1000",
    ])
    .ok();
    let name = unique_id("userns-tpl");
    let made = trenv_integration::trenv_cli()
        .args([
            "template", "create", &name, "--from", &source.id, "-n", NAMESPACE,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running trenv");
    let err = String::from_utf8_lossy(&made.stderr).into_owned();
    let _ = trenv_integration::trenv_cli()
        .args(["template", "rm", &name, "-n", NAMESPACE])
        .output();
    assert!(!made.status.success(), "a template was made: {err}");
    check("template create", &err);
    source.finish();
}

// --- CRI: user namespaces (Kubernetes' hostUsers: false) ---

/// The output of the scenario below when a runtime runs it: the user namespace's map, the
/// ids the container sees on its rootfs and on the volume, and what a write into the volume
/// is owned by on the host.
const USERNS_POD_SEES: &str = "0 100000 65536\nuid 0\nrootfs 0:0\njoined user net ipc uts\n";
const USERNS_VOLUME_SEEN: &str = "volume 0:0\n";

#[test]
fn a_pod_without_host_users_sees_its_rootfs_and_volumes_as_its_own_as_on_runc() {
    // Kubernetes' `hostUsers: false`: CRI puts the pod in a user namespace and asks for
    // idmapped mounts (containerd's `uidmap=` options on the rootfs snapshot, uidMappings on
    // the spec's bind mounts: the volume here, and CRI's own /etc files). The container's
    // root is host uid 100000, yet sees the image's files and the host's volume as root's,
    // and what it writes into the volume is root's on the host.
    let cri = cri_setup();
    let volume = temp_dir("trenv-conf-userns-vol");
    std::fs::write(volume.0.join("file"), "hello\n").unwrap();
    let map = vec![api::IdMapping {
        host_id: USERNS_HOST_ID,
        container_id: 0,
        length: 65536,
    }];
    let userns = api::NamespaceOption {
        userns_options: Some(api::UserNamespace {
            mode: api::NamespaceMode::Pod as i32,
            uids: map.clone(),
            gids: map.clone(),
        }),
        ..cri::namespace_options(false)
    };
    // containerd 1.7's CRI refuses idmapped volumes itself ("idmap mounts not yet
    // supported"), whatever the runtime: there the pod has no volume.
    let with_volume = containerd_version() != "1.7";
    let script = "cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; echo uid $(id -u); \
                  echo rootfs $(stat -c %u:%g /bin/busybox); \
                  j=joined; for n in user net ipc uts; do \
                  [ $(readlink /proc/self/ns/$n) = $(readlink /proc/1/ns/$n) ] && j=\"$j $n\"; done; echo $j; \
                  if [ -e /vol/file ]; then echo volume $(stat -c %u:%g /vol/file); echo written > /vol/new; fi";
    for handler in [RUNC_HANDLER, HANDLER] {
        let _ = std::fs::remove_file(volume.0.join("new"));
        let logs = temp_dir("trenv-conf-logs");
        let name = unique_id(&format!("conf-userns-{handler}"));
        let mut config = pod_config(&name, &format!("uid-{name}"), &logs.0);
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.namespace_options = Some(userns.clone());
        }
        let mut pod = Pod::run(&cri, config, handler);
        let mut c = busybox_container("c");
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.namespace_options = Some(userns.clone());
        }
        if with_volume {
            c.mounts.push(api::Mount {
                container_path: "/vol".into(),
                host_path: volume.0.to_str().unwrap().into(),
                uid_mappings: map.clone(),
                gid_mappings: map.clone(),
                ..Default::default()
            });
        }
        let started = pod.try_start(&c);
        let outcome = started.as_ref().map(|id| {
            let out = cri
                .exec_sync(id, &["sh", "-c", script], 10)
                .unwrap_or_else(|e| panic!("{handler}: ExecSync: {e}"));
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let written = std::fs::metadata(volume.0.join("new"))
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.uid(), m.gid())
            })
            .ok();
        let sandbox = pod.id.clone();
        let containers = pod.containers.clone();
        pod.teardown(0);
        assert_pod_gone(&cri, &sandbox, &containers);
        match outcome {
            Ok(out) if with_volume => {
                assert_eq!(
                    out,
                    format!("{USERNS_POD_SEES}{USERNS_VOLUME_SEEN}"),
                    "{handler}"
                );
                assert_eq!(written, Some((0, 0)), "{handler}: the volume write's owner");
            }
            Ok(out) => assert_eq!(out, USERNS_POD_SEES, "{handler}"),
            // runc before 1.2 (Debian 12's 1.1.5) has no idmapped mounts: containerd's runc
            // shim refuses the pod from runc's features. trenv must not.
            Err(e) if handler == RUNC_HANDLER && e.contains("idmap mounts not supported") => {
                eprintln!("runc.v2 on this node: {e}");
            }
            Err(e) => panic!("{handler}: StartContainer: {e}"),
        }
    }
}

/// CRI's runtime handler typed `io.containerd.runc.v2` whose binary is trenv in alias mode
/// (config/containerd-2.toml.in): how containerd 2.x's CRI learns trenv's features.
const TRENV_RUNC_TYPE: &str = "trenv-runc-type";

/// Processes running trenv's shim binary (under whatever name: alias mode runs it as
/// `containerd-shim-runc-v2`) whose command line names `id`.
fn trenv_binaries_serving(id: &str) -> Vec<i32> {
    let trenv = std::fs::canonicalize("/usr/local/bin/containerd-shim-trenv-v1").ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).ok() == trenv
                && cmdline(*pid).is_some_and(|c| c.contains(id))
        })
        .collect()
}

#[test]
fn recursive_read_only_mounts_reach_pods_through_the_runc_typed_handler_as_on_runc() {
    // containerd 2.x's CRI asks only runtimes of runc's type for their features and refuses
    // a recursive read-only mount to a runtime that does not offer it. trenv under runc's
    // type (runtime_path: trenv as containerd-shim-runc-v2) answers with its own.
    // containerd 1.7's CRI has no recursive read-only mounts.
    if containerd_version() != "2" {
        return;
    }
    let cri = cri_setup();
    let handlers = cri.runtime_handlers().expect("CRI Status");
    let features = |name: &str| {
        handlers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.features)
            .unwrap_or_else(|| panic!("no features for handler {name}: {handlers:?}"))
    };
    let ours = features(TRENV_RUNC_TYPE);
    assert!(
        ours.recursive_read_only_mounts,
        "{TRENV_RUNC_TYPE}: {ours:?}"
    );
    assert_eq!(
        ours.recursive_read_only_mounts,
        features(RUNC_HANDLER).recursive_read_only_mounts,
        "CRI's view of trenv and of runc differ: {handlers:?}"
    );
    // A host directory with a mount below it, given read-only and recursively so.
    let host = SharedMount::new();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", &host.path("h2c/m")])
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs below the volume");
    for handler in [RUNC_HANDLER, TRENV_RUNC_TYPE] {
        let logs = temp_dir("trenv-conf-logs");
        let name = unique_id(&format!("conf-rro-{handler}"));
        let mut pod = Pod::run(
            &cri,
            pod_config(&name, &format!("uid-{name}"), &logs.0),
            handler,
        );
        let mut c = busybox_container("c");
        c.mounts.push(api::Mount {
            container_path: "/vol".into(),
            host_path: host.path("h2c"),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        });
        let id = pod.start(&c);
        let out = cri
            .exec_sync(
                &id,
                &[
                    "sh",
                    "-c",
                    "for d in /vol /vol/m; do touch $d/x 2>/dev/null && echo $d rw || echo $d ro; done",
                ],
                10,
            )
            .unwrap_or_else(|e| panic!("{handler}: ExecSync: {e}"));
        let sandbox = pod.id.clone();
        let containers = pod.containers.clone();
        let served_by_trenv = !trenv_binaries_serving(&sandbox).is_empty();
        pod.teardown(0);
        assert_pod_gone(&cri, &sandbox, &containers);
        assert!(
            wait_for(SHIM_EXIT, || trenv_binaries_serving(&sandbox).is_empty()),
            "{handler}: a shim of pod {sandbox} still runs"
        );
        assert_eq!(served_by_trenv, handler == TRENV_RUNC_TYPE, "{handler}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/vol ro\n/vol/m ro\n",
            "{handler}"
        );
    }
}
