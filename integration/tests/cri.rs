//! trenv as a Kubernetes runtime: the tests stand in for the kubelet and drive containerd's CRI
//! plugin with runtime handler `trenv` (RuntimeClass `handler: trenv`), namespace k8s.io.
//!
//! Needs a running containerd (2.x or 1.7) from integration/scripts/containerd.sh, its
//! environment (`eval "$(integration/scripts/containerd.sh env 2)"`), and the test images
//! (pause and busybox) imported with integration/scripts/build-images.sh.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trenv_integration::cri::{
    self, Cri, HANDLER, NAMESPACE, Pod, api, container_config, pod_config, shim_processes,
    shim_servers, wait_for,
};
use trenv_integration::{BUSYBOX, Ctr, unique_id};

/// How long a shim may take to exit after its pod is removed.
const SHIM_EXIT: Duration = Duration::from_secs(10);

/// A directory removed when dropped (the pod's log directory).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_id(prefix));
        std::fs::create_dir_all(&dir).expect("creating the log directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CRI client with the test images known to CRI.
fn setup() -> Cri {
    Ctr::from_env().with_namespace(NAMESPACE).ensure_images();
    let cri = Cri::from_env();
    let version = cri.version().expect("CRI Version");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
    cri.wait_image(BUSYBOX, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let pause = std::env::var("SANDBOX_IMAGE")
        .unwrap_or_else(|_| "docker.io/trenv/pause:latest".to_string());
    cri.wait_image(&pause, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("sandbox image: {e}"));
    cri
}

fn state_name(state: i32) -> &'static str {
    api::ContainerState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("invalid")
}

/// Asserts that nothing of the pod is left: not in CRI, no shim process, no mount, no bundle.
fn assert_gone(cri: &Cri, sandbox: &str, containers: &[&str]) {
    let pods = cri
        .list_pod_sandboxes(Some(sandbox))
        .expect("ListPodSandbox");
    assert!(pods.is_empty(), "sandbox still listed: {pods:?}");
    let left = cri.list_containers(Some(sandbox)).expect("ListContainers");
    assert!(left.is_empty(), "containers still listed: {left:?}");
    for c in containers {
        let all = cri.list_containers(None).expect("ListContainers");
        assert!(
            !all.iter().any(|x| x.id == *c),
            "container {c} still listed"
        );
    }

    let gone = wait_for(SHIM_EXIT, || shim_processes(sandbox).is_empty());
    assert!(
        gone,
        "trenv shim processes of pod {sandbox} still running {SHIM_EXIT:?} after its removal: {:?}",
        shim_processes(sandbox)
    );

    let state = cri::containerd_state_dir();
    let mut ids = vec![sandbox];
    ids.extend_from_slice(containers);
    let mounts = cri::mounts_under(&state, &ids);
    assert!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:#?}",
        state.display()
    );
    for id in &ids {
        let bundle = state
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(id);
        assert!(!bundle.exists(), "bundle {} left", bundle.display());
    }
}

/// Waits until the CRI log at `path` has a full stdout line `text`.
fn wait_log_line(path: &Path, text: &str) {
    let mut last = Ok(Vec::new());
    let found = wait_for(Duration::from_secs(5), || {
        last = cri::read_log(path);
        last.as_ref().is_ok_and(|lines| {
            lines
                .iter()
                .any(|l| l.stream == "stdout" && l.tag == "F" && l.text == text)
        })
    });
    assert!(
        found,
        "no full stdout line {text:?} in the CRI log {} within 5 s: {last:?}",
        path.display()
    );
}

#[test]
fn pod_lifecycle() {
    let cri = setup();
    let logs = TempDir::new("trenv-cri-logs");
    let name = unique_id("cri-pod");
    let mut pod = Pod::run(
        &cri,
        pod_config(&name, &format!("uid-{name}"), &logs.0),
        HANDLER,
    );

    let status = cri.pod_sandbox_status(&pod.id).expect("PodSandboxStatus");
    assert_eq!(
        status.state,
        api::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    assert_eq!(status.runtime_handler, HANDLER, "{status:?}");

    // A graceful container: sh waits on sleep so that the TERM trap runs at once.
    let app = pod.start(&container_config(
        "app",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo cri-ok; sleep 300 & wait",
        ],
        "app_0.log",
    ));

    let st = cri.container_status(&app).expect("ContainerStatus");
    assert_eq!(
        st.state,
        api::ContainerState::ContainerRunning as i32,
        "container not running: {} {st:?}",
        state_name(st.state)
    );
    let log = logs.0.join("app_0.log");
    assert_eq!(Path::new(&st.log_path), log, "{st:?}");
    wait_log_line(&log, "cri-ok");

    // UpdateContainerResources reaches the container's cgroup.
    cri.update_memory_limit(&app, 64 << 20)
        .expect("UpdateContainerResources");
    let cg = cri
        .exec_sync(&app, &["cat", "/proc/self/cgroup"], 10)
        .expect("ExecSync cat /proc/self/cgroup");
    let cg = String::from_utf8_lossy(&cg.stdout).into_owned();
    let limit = match cg.lines().find_map(|l| l.strip_prefix("0::")) {
        // cgroup v2: the container's own cgroup, as the container sees it (the CRI gives
        // it a private cgroup namespace on v2 hosts, so read it from inside).
        Some(p) if !cg.lines().any(|l| l.contains(":memory:")) => {
            let file = format!("/sys/fs/cgroup{}/memory.max", p.trim_end_matches('/'));
            let r = cri
                .exec_sync(&app, &["cat", &file], 10)
                .expect("ExecSync cat memory.max");
            assert_eq!(r.exit_code, 0, "cat {file}: {r:?}");
            String::from_utf8_lossy(&r.stdout).into_owned()
        }
        _ => {
            let p = cg
                .lines()
                .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
                .expect("memory cgroup line");
            let file = format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes");
            std::fs::read_to_string(&file).expect("reading the memory limit")
        }
    };
    assert_eq!(limit.trim(), (64u64 << 20).to_string(), "{cg}");

    // One shim process serves the pod.
    let servers = shim_servers(&pod.id);
    assert_eq!(
        servers.len(),
        1,
        "shim servers of pod {}: {servers:?}",
        pod.id
    );

    // ExecSync: output, stderr and exit code.
    let r = cri
        .exec_sync(&app, &["echo", "exec-ok"], 10)
        .expect("ExecSync echo");
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (0, &b"exec-ok\n"[..], &b""[..]),
        "stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let r = cri
        .exec_sync(&app, &["sh", "-c", "echo oops >&2; exit 3"], 10)
        .expect("ExecSync exit 3");
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (3, &b""[..], &b"oops\n"[..]),
        "stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );

    // ContainerStats: CPU time and memory from the shim's cgroup metrics.
    let stats = cri.container_stats(&app).expect("ContainerStats");
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    assert!(cpu.is_some_and(|v| v > 0), "no CPU usage: {stats:?}");
    let mem = stats.memory.as_ref();
    let working_set = mem
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    let usage = mem.and_then(|m| m.usage_bytes.as_ref()).map(|v| v.value);
    assert!(
        working_set.is_some_and(|v| v > 0) && usage.is_some_and(|v| v > 0),
        "no memory usage: {stats:?}"
    );

    // Stop: the stop signal (SIGTERM) reaches the container, which exits 0 at once.
    let t = Instant::now();
    cri.stop_container(&app, 10).expect("StopContainer");
    let took = t.elapsed();
    let st = cri.container_status(&app).expect("ContainerStatus");
    assert_eq!(
        (st.state, st.exit_code),
        (api::ContainerState::ContainerExited as i32, 0),
        "after StopContainer: {} {st:?}",
        state_name(st.state)
    );
    assert!(
        took < Duration::from_secs(5),
        "StopContainer took {took:?}: SIGTERM not delivered?"
    );

    let sandbox = pod.id.clone();
    pod.teardown(0);
    drop(pod);
    assert_gone(&cri, &sandbox, &[&app]);
}

#[test]
fn one_shim_per_pod() {
    let cri = setup();
    let logs = TempDir::new("trenv-cri-logs");
    let name = unique_id("cri-pod");
    let mut pod = Pod::run(
        &cri,
        pod_config(&name, &format!("uid-{name}"), &logs.0),
        HANDLER,
    );
    let a = pod.start(&container_config(
        "a",
        BUSYBOX,
        &["sh", "-c", "echo a-ok; sleep 300"],
        "a_0.log",
    ));
    let b = pod.start(&container_config(
        "b",
        BUSYBOX,
        &["sh", "-c", "echo b-ok; sleep 300"],
        "b_0.log",
    ));
    for c in [&a, &b] {
        let st = cri.container_status(c).expect("ContainerStatus");
        assert_eq!(
            st.state,
            api::ContainerState::ContainerRunning as i32,
            "container {c} not running: {} {st:?}",
            state_name(st.state)
        );
    }
    wait_log_line(&logs.0.join("a_0.log"), "a-ok");
    wait_log_line(&logs.0.join("b_0.log"), "b-ok");

    // The sandbox's shim serves both containers: no server was started for either of them.
    let servers = shim_servers(&pod.id);
    assert_eq!(
        servers.len(),
        1,
        "shim servers of pod {}: {servers:?}",
        pod.id
    );
    for c in [&a, &b] {
        let own = shim_servers(c);
        assert!(own.is_empty(), "container {c} has its own shim: {own:?}");
    }
    // Both are alive and served: exec works in each.
    for c in [&a, &b] {
        let r = cri
            .exec_sync(c, &["echo", "exec-ok"], 10)
            .expect("ExecSync");
        assert_eq!(r.stdout, b"exec-ok\n", "exec in {c}: {r:?}");
    }

    let sandbox = pod.id.clone();
    pod.teardown(0);
    drop(pod);
    assert_gone(&cri, &sandbox, &[&a, &b]);
}

/// A pod with `shareProcessNamespace: true`: the container's init is not PID 1, so its
/// children outlive it. When init exits the shim must end them (as runc's shim does) and
/// report the exit at once: the exit time CRI reports is the stop's.
#[test]
fn shared_pid_namespace_stop() {
    let cri = setup();
    let logs = TempDir::new("trenv-cri-logs");
    let name = unique_id("cri-pod");
    let mut pod_cfg = pod_config(&name, &format!("uid-{name}"), &logs.0);
    // The background sleep keeps the container's stdout open after sh has exited.
    let mut cfg = container_config(
        "app",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo cri-ok; sleep 987 & wait",
        ],
        "app_0.log",
    );
    cri::share_pid_namespace(&mut pod_cfg, &mut cfg);
    let mut pod = Pod::run(&cri, pod_cfg, HANDLER);
    let app = pod.start(&cfg);
    wait_log_line(&logs.0.join("app_0.log"), "cri-ok");
    let sleeps = trenv_integration::pids_matching("sleep 987");
    assert!(
        !sleeps.is_empty(),
        "the container's background sleep is not running"
    );

    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    cri.stop_container(&app, 10).expect("StopContainer");
    let st = cri.container_status(&app).expect("ContainerStatus");
    assert_eq!(
        (st.state, st.exit_code),
        (api::ContainerState::ContainerExited as i32, 0),
        "after StopContainer: {} {st:?}",
        state_name(st.state)
    );
    let after = Duration::from_nanos((st.finished_at - asked).max(0) as u64);
    // sh exits on SIGTERM at once: with runtime handler runc, CRI reports it 15-40 ms after
    // StopContainer was called on this machine (containerd 2.1 and 1.7).
    assert!(
        after < Duration::from_millis(300),
        "the exit was reported {after:?} after StopContainer (runc: 15-40 ms)"
    );
    let left: Vec<i32> = sleeps
        .into_iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(
        left.is_empty(),
        "the container's children survive it: {left:?}"
    );

    let sandbox = pod.id.clone();
    pod.teardown(0);
    drop(pod);
    assert_gone(&cri, &sandbox, &[&app]);
}

/// The kubelet's way to a template restore: a container annotated `io.trenv.template`
/// (allow-listed for handler `trenv` in the containerd config) starts restored, with CRI
/// logs, ExecSync and stats as for a cold start.
#[test]
fn a_pod_container_restores_from_a_template() {
    use trenv_integration::PYFN;
    let cri = setup();
    Ctr::from_env().with_namespace(NAMESPACE).ensure_image(PYFN);
    cri.wait_image(PYFN, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let logs = TempDir::new("trenv-cri-tpl");
    let fn_config = |name: &str, annotation: Option<&str>| {
        let mut c = container_config(name, PYFN, &[], &format!("{name}_0.log"));
        c.envs = [("FN_STATE_MB", "32"), ("FN_LOG", "/tmp/fn.log")]
            .iter()
            .map(|(k, v)| api::KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect();
        if let Some(t) = annotation {
            c.annotations
                .insert("io.trenv.template".to_string(), t.to_string());
        }
        c
    };
    let log_of = |id: &str| -> String {
        cri.exec_sync(id, &["sh", "-c", "cat /tmp/fn.log 2>/dev/null || true"], 10)
            .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
            .unwrap_or_default()
    };
    let state_of = |line: &str| line.split("state=").nth(1).unwrap_or_default().to_string();
    let wait_for_line = |id: &str, prefix: &str, skip: usize| -> String {
        let mut found = String::new();
        let ok = wait_for(Duration::from_secs(60), || {
            found = log_of(id)
                .lines()
                .skip(skip)
                .find(|l| l.starts_with(prefix))
                .unwrap_or_default()
                .to_string();
            !found.is_empty()
        });
        assert!(ok, "{id} printed no {prefix:?} line: {}", log_of(id));
        found
    };

    // The source function in one pod.
    let src_name = unique_id("cri-tpl-src");
    let mut src_pod = Pod::run(
        &cri,
        pod_config(&src_name, &format!("uid-{src_name}"), &logs.0),
        HANDLER,
    );
    let src = src_pod.start(&fn_config("fn", None));
    let ready = state_of(&wait_for_line(&src, "ready ", 0));
    let template = unique_id("cri");
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = trenv_integration::trenv_cli()
                .args(["template", "rm", &self.0, "--tenant", &tenant()])
                .output();
        }
    }
    let _rm = Rm(template.clone());
    // The pods' tenant: CRI's namespace, narrowed by the pod's Kubernetes namespace.
    fn tenant() -> String {
        format!("{NAMESPACE}/default")
    }
    let out = trenv_integration::trenv_cli()
        .args([
            "template", "create", &template, "--from", &src, "-n", NAMESPACE,
        ])
        .output()
        .expect("running trenv");
    assert!(
        out.status.success(),
        "template create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    src_pod.teardown(0);

    // An instance in another pod, restored from the template.
    let name = unique_id("cri-tpl");
    let mut pod = Pod::run(
        &cri,
        pod_config(&name, &format!("uid-{name}"), &logs.0),
        HANDLER,
    );
    let inst = pod.start(&fn_config("fn", Some(&template)));
    let st = cri.container_status(&inst).expect("ContainerStatus");
    assert_eq!(
        st.state,
        api::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    let seen = log_of(&inst).lines().count();
    let r = cri
        .exec_sync(&inst, &["sh", "-c", "kill -USR1 1"], 10)
        .expect("ExecSync kill");
    assert_eq!(r.exit_code, 0, "{r:?}");
    let check = wait_for_line(&inst, "check ", seen);
    assert_eq!(state_of(&check), ready, "restored state differs");
    // The restored function's stdout reaches its CRI log.
    let log = logs.0.join("fn_0.log");
    let mut lines = Vec::new();
    assert!(
        wait_for(Duration::from_secs(5), || {
            lines = cri::read_log(&log).unwrap_or_default();
            lines.iter().any(|l| l.text.starts_with("check "))
        }),
        "no check line in the CRI log {}: {lines:?}",
        log.display()
    );
    cri.container_stats(&inst).expect("ContainerStats");
    let ids = [inst.clone()];
    pod.teardown(0);
    assert_gone(
        &cri,
        &pod.id,
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}
