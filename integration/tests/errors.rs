//! Errors at Create reach the user with the gRPC code that names what went wrong and a
//! message that says what to do, through every way a container gets started: `ctr`,
//! containerd's own API (the containerd-client crate, as faasd or nerdctl call it) and CRI
//! (the kubelet's way), and they leave nothing behind.
//!
//! | case                             | code             |
//! | -------------------------------- | ---------------- |
//! | a malformed spec                 | INVALID_ARGUMENT |
//! | an unenforceable seccomp profile | INVALID_ARGUMENT |
//! | a missing template               | NOT_FOUND        |
//!
//! How the code travels (seen on both lines): the shim answers the task Create with a
//! ttrpc status; containerd turns it into one of its errdefs errors and answers its own
//! gRPC clients with the same code. `ctr` prints that error: containerd 1.7 ends its text
//! with the errdefs class ("…: invalid argument", "…: not found", "…: unknown"), 2.x does
//! not (see [`Expect::check_ctr`]). CRI creates the task only at StartContainer
//! (CreateContainer only records the container), wraps the error ("failed to create
//! containerd task: …") and answers StartContainer with the shim's code unchanged; a pod's
//! sandbox (pause) container is created at RunPodSandbox, which does the same.
//!
//! What the message must say to do: for a malformed spec, trenv's words for a spec it
//! refuses, "fix the container's configuration", after what is wrong; for a seccomp
//! profile, which actions trenv enforces; for a missing template, how to make it.
//!
//! The inputs, each something containerd accepts and only the runtime can refuse:
//! * malformed spec: a hostname without a UTS namespace of its own (libcontainer's spec
//!   validation, run in the zygote's worker), a capability that does not exist (refused
//!   by the shim when it reads the spec), and through CRI, which only builds well-formed
//!   container specs, the capability and a pod sysctl that no namespace isolates;
//! * unenforceable seccomp profile: a rule with action SCMP_ACT_NOTIFY (which needs a
//!   notify agent trenv does not have);
//! * missing template: annotation `io.trenv.template=NAME` naming no template.
//!
//! Through containerd's API, `ctr containers create` makes the container record (with the
//! same flags as the `ctr run` case) and the test calls Tasks.Create itself, where the shim
//! comes in, so that the tonic code is the one containerd answered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::{Code, Status};
use trenv_integration::api::Containerd;
use trenv_integration::cri::{
    self, Cri, HANDLER, NAMESPACE as CRI_NAMESPACE, Pod, api, container_config, pod_config,
    shim_processes, wait_for,
};
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, unique_id};

/// The containerd namespace of the `ctr` and API cases (CRI works in k8s.io).
const NAMESPACE: &str = "trenv-errors";
const TEMPLATE_ANNOTATION: &str = "io.trenv.template";
/// How long a shim may take to exit after its container or pod is gone.
const SHIM_EXIT: Duration = Duration::from_secs(10);

fn ctr() -> Ctr {
    let c = Ctr::from_env().with_namespace(NAMESPACE);
    c.ensure_images();
    c
}

fn api() -> Containerd {
    Containerd::from_env(NAMESPACE).unwrap_or_else(|e| panic!("{e}"))
}

/// What one failure must look like: its gRPC code and what its message must contain
/// (what is wrong and what to do), compared without regard to case.
struct Expect {
    code: Code,
    says: Vec<String>,
}

impl Expect {
    fn malformed(what: &[&str]) -> Expect {
        let mut says: Vec<String> = what.iter().map(|s| s.to_string()).collect();
        says.push("fix the container's configuration".into());
        Expect {
            code: Code::InvalidArgument,
            says,
        }
    }

    fn seccomp() -> Expect {
        Expect {
            code: Code::InvalidArgument,
            says: vec![
                "seccomp".into(),
                "notify".into(),
                "not supported by trenv".into(),
                "use ALLOW, ERRNO, KILL*, TRAP, TRACE or LOG".into(),
            ],
        }
    }

    fn missing_template(name: &str) -> Expect {
        Expect {
            code: Code::NotFound,
            says: vec![
                format!("template {name} not found"),
                format!("trenv template create {name}"),
            ],
        }
    }

    /// The text containerd's errdefs class adds at the end of the error `ctr` prints.
    fn ctr_class(&self) -> &'static str {
        match self.code {
            Code::InvalidArgument => "invalid argument",
            Code::NotFound => "not found",
            Code::FailedPrecondition => "failed precondition",
            Code::AlreadyExists => "already exists",
            Code::Unknown => "unknown",
            other => panic!("no errdefs class known for {other:?}"),
        }
    }

    fn check_message(&self, path: &str, message: &str) {
        let lower = message.to_lowercase();
        for s in &self.says {
            assert!(
                lower.contains(&s.to_lowercase()),
                "{path}: the message does not say {s:?}: {message:?}"
            );
        }
    }

    /// A gRPC status from containerd's API or CRI.
    fn check_status(&self, path: &str, status: &Status) {
        assert_eq!(
            status.code(),
            self.code,
            "{path}: expected {:?}, got {:?}: {:?}",
            self.code,
            status.code(),
            status.message()
        );
        self.check_message(path, status.message());
    }

    /// What `ctr` printed for a failed command. containerd 1.7 ends the text with the
    /// errdefs class of the code ("…: invalid argument", "…: not found", "…: unknown");
    /// containerd 2.x (errdefs 1.0, whose errors keep their class out of their text) prints
    /// the shim's message alone, so through `ctr` only the message can be checked there:
    /// the code is checked through containerd's API on the same line.
    fn check_ctr(&self, r: &trenv_integration::Run) {
        assert_ne!(r.code, 0, "ctr succeeded: {r:#?}");
        let err = r.stderr.trim_end();
        if containerd_version() == "1.7" {
            let class = format!(": {}", self.ctr_class());
            assert!(
                err.ends_with(&class),
                "ctr: expected an error ending in {class:?} ({:?}), got: {err:?}",
                self.code
            );
        }
        self.check_message("ctr", err);
    }
}

/// `CONTAINERD_VERSION` (2 or 1.7) of the containerd under test.
fn containerd_version() -> String {
    std::env::var("CONTAINERD_VERSION").unwrap_or_else(|_| {
        panic!("CONTAINERD_VERSION is not set: run the tests through integration/test.sh")
    })
}

/// A container of the `ctr`/API cases: removed however the test ends.
struct Container<'a> {
    ctr: &'a Ctr,
    id: String,
}

impl<'a> Container<'a> {
    fn new(ctr: &'a Ctr, tag: &str) -> Container<'a> {
        Container {
            ctr,
            id: unique_id(&format!("err-{tag}")),
        }
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        self.ctr.remove(&self.id);
    }
}

/// A file or directory removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_path(prefix: &str) -> TempPath {
    TempPath(std::env::temp_dir().join(unique_id(prefix)))
}

/// `ctr run -d` on trenv with `flags` of busybox running `true` as `id`.
fn ctr_run(c: &Ctr, id: &str, flags: &[&str]) -> trenv_integration::Run {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.extend([BUSYBOX, id, "true"]);
    c.run(&a)
}

/// `ctr containers create` on trenv with `flags` of busybox running `true` as `id`: the
/// container record and its snapshot, for a task created through the API.
fn ctr_create(c: &Ctr, id: &str, flags: &[&str]) {
    let mut a = vec!["containers", "create", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.extend([BUSYBOX, id, "true"]);
    c.run(&a).ok();
}

/// Tasks.Create through containerd's API must fail as `expect` says.
fn api_create_fails(id: &str, expect: &Expect) {
    match api().create_task(id) {
        Ok(pid) => panic!("containerd's API created the task of {id} (pid {pid})"),
        Err(status) => expect.check_status("containerd's API", &status),
    }
}

/// Nothing of container `id` is left in containerd's namespace `c` or on the host once
/// the container record is removed: no task, no container, no shim, no mount, no bundle,
/// no cgroup.
fn assert_nothing_left(c: &Ctr, id: &str) {
    assert!(
        c.task_status(id).is_none(),
        "a task of {id} is left: {:?}",
        c.task_status(id)
    );
    c.remove(id);
    let listed = c.run(&["containers", "ls", "-q"]).ok().stdout;
    assert!(
        !listed.lines().any(|l| l.trim() == id),
        "container {id} still listed: {listed}"
    );
    let shim = format!("-id {id} ");
    assert!(
        wait_for(SHIM_EXIT, || shim_processes(&shim).is_empty()),
        "the shim of {id} still runs {SHIM_EXIT:?} later: {:?}",
        shim_processes(&shim)
    );
    assert_no_mount_bundle_or_cgroup(&c.namespace, &[id]);
}

/// No mount, bundle or cgroup of `ids` in containerd namespace `ns`.
fn assert_no_mount_bundle_or_cgroup(ns: &str, ids: &[&str]) {
    let state = cri::containerd_state_dir();
    let mounts = cri::mounts_under(&state, ids);
    assert!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:#?}",
        state.display()
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for id in ids {
        let left: Vec<&str> = info
            .lines()
            .filter(|l| l.contains(&format!("/{id}/")))
            .collect();
        assert!(left.is_empty(), "mounts of {id} left: {left:#?}");
        let bundle = state
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id);
        assert!(!bundle.exists(), "bundle {} left", bundle.display());
        let cgroups = ["memory", "pids", "freezer", "cpu", "devices"]
            .iter()
            .map(|ctl| Path::new("/sys/fs/cgroup").join(ctl).join(ns).join(id))
            .chain([Path::new("/sys/fs/cgroup").join(ns).join(id)]);
        for dir in cgroups {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
    }
}

// --- inputs ---

/// A whole spec for `ctr run --config`: containerd's default spec (`ctr oci spec`) for
/// container `id`, running busybox `true` from `rootfs` (read-only), changed by `edit`.
fn spec_file(
    c: &Ctr,
    id: &str,
    rootfs: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
) -> TempPath {
    let out = c.run(&["oci", "spec"]).ok().stdout;
    let mut spec: serde_json::Value = serde_json::from_str(&out).expect("ctr oci spec: JSON");
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "true"]);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/{}/{id}", c.namespace).into();
    edit(&mut spec);
    let file = temp_path("trenv-err-spec");
    std::fs::write(&file.0, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    file
}

/// A root filesystem holding only the host's static busybox.
fn busybox_rootfs() -> TempPath {
    let dir = temp_path("trenv-err-rootfs");
    std::fs::create_dir_all(dir.0.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a static busybox on the host (Debian's busybox-static or busybox)");
    std::fs::copy(busybox, dir.0.join("bin/busybox")).unwrap();
    dir
}

/// A spec with a hostname but no UTS namespace of its own, which the OCI spec does not
/// allow (libcontainer: "unable to set hostname without a private UTS namespace").
fn hostname_without_uts(spec: &mut serde_json::Value) {
    spec["hostname"] = "no-uts".into();
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("the default spec has namespaces");
    namespaces.retain(|n| n["type"] != "uts");
}

/// What the hostname-without-UTS spec must be answered with.
fn expect_hostname_without_uts() -> Expect {
    Expect::malformed(&["hostname", "UTS namespace"])
}

/// A capability no kernel has: containerd passes it through, the spec no runtime can
/// read.
const NO_SUCH_CAP: &str = "CAP_NO_SUCH_THING";

fn expect_no_such_cap() -> Expect {
    Expect::malformed(&[NO_SUCH_CAP])
}

/// An OCI seccomp profile (the format `ctr --seccomp-profile` and CRI's Localhost
/// profiles take) whose `mkdir` rule hands the call to a notify agent.
fn notify_profile() -> TempPath {
    let file = temp_path("trenv-err-seccomp");
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY" }],
    });
    std::fs::write(&file.0, serde_json::to_vec_pretty(&profile).unwrap()).unwrap();
    file
}

// --- ctr and containerd's API ---

#[test]
fn a_malformed_spec_is_invalid_argument_through_ctr() {
    let c = ctr();
    // Refused by libcontainer's validation in the zygote's worker.
    let rootfs = busybox_rootfs();
    let case = Container::new(&c, "uts-ctr");
    let spec = spec_file(&c, &case.id, &rootfs.0, hostname_without_uts);
    let spec_path = spec.0.to_str().unwrap();
    let r = c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--config",
        spec_path,
        &case.id,
    ]);
    expect_hostname_without_uts().check_ctr(&r);
    assert_nothing_left(&c, &case.id);

    // Refused by the shim as it reads the spec.
    let case = Container::new(&c, "cap-ctr");
    let r = ctr_run(&c, &case.id, &["--cap-add", NO_SUCH_CAP]);
    expect_no_such_cap().check_ctr(&r);
    assert_nothing_left(&c, &case.id);
}

#[test]
fn a_malformed_spec_is_invalid_argument_through_containerds_api() {
    let c = ctr();
    let rootfs = busybox_rootfs();
    let case = Container::new(&c, "uts-api");
    let spec = spec_file(&c, &case.id, &rootfs.0, hostname_without_uts);
    let spec_path = spec.0.to_str().unwrap();
    c.run(&[
        "containers",
        "create",
        "--runtime",
        RUNTIME,
        "--config",
        spec_path,
        &case.id,
    ])
    .ok();
    api_create_fails(&case.id, &expect_hostname_without_uts());
    assert_nothing_left(&c, &case.id);

    let case = Container::new(&c, "cap-api");
    ctr_create(&c, &case.id, &["--cap-add", NO_SUCH_CAP]);
    api_create_fails(&case.id, &expect_no_such_cap());
    assert_nothing_left(&c, &case.id);
}

#[test]
fn an_unenforceable_seccomp_profile_is_invalid_argument_through_ctr() {
    let c = ctr();
    let profile = notify_profile();
    let case = Container::new(&c, "seccomp-ctr");
    let r = ctr_run(
        &c,
        &case.id,
        &[
            "--seccomp",
            "--seccomp-profile",
            profile.0.to_str().unwrap(),
        ],
    );
    Expect::seccomp().check_ctr(&r);
    assert_nothing_left(&c, &case.id);
}

#[test]
fn an_unenforceable_seccomp_profile_is_invalid_argument_through_containerds_api() {
    let c = ctr();
    let profile = notify_profile();
    let case = Container::new(&c, "seccomp-api");
    ctr_create(
        &c,
        &case.id,
        &[
            "--seccomp",
            "--seccomp-profile",
            profile.0.to_str().unwrap(),
        ],
    );
    api_create_fails(&case.id, &Expect::seccomp());
    assert_nothing_left(&c, &case.id);
}

#[test]
fn a_missing_template_is_not_found_through_ctr() {
    let c = ctr();
    let name = unique_id("no-such-template");
    let annotation = format!("{TEMPLATE_ANNOTATION}={name}");
    let case = Container::new(&c, "tpl-ctr");
    let r = ctr_run(&c, &case.id, &["--annotation", &annotation]);
    Expect::missing_template(&name).check_ctr(&r);
    assert_nothing_left(&c, &case.id);
}

#[test]
fn a_missing_template_is_not_found_through_containerds_api() {
    let c = ctr();
    let name = unique_id("no-such-template");
    let annotation = format!("{TEMPLATE_ANNOTATION}={name}");
    let case = Container::new(&c, "tpl-api");
    ctr_create(&c, &case.id, &["--annotation", &annotation]);
    api_create_fails(&case.id, &Expect::missing_template(&name));
    assert_nothing_left(&c, &case.id);
}

// --- CRI ---

/// A directory removed when dropped (a pod's log directory).
fn log_dir() -> TempPath {
    let dir = temp_path("trenv-err-logs");
    std::fs::create_dir_all(&dir.0).unwrap();
    dir
}

/// A CRI client with the test images known to CRI.
fn cri_setup() -> Cri {
    Ctr::from_env()
        .with_namespace(CRI_NAMESPACE)
        .ensure_images();
    let cri = Cri::from_env();
    cri.wait_image(BUSYBOX, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    cri
}

/// Creates a container with `config` in a new trenv pod and starts it: the start must
/// fail as `expect` says (the task, where trenv comes in, is created at StartContainer),
/// and once the pod is torn down nothing of it may be left.
fn cri_start_fails(tag: &str, config: api::ContainerConfig, expect: &Expect) {
    let cri = cri_setup();
    let _turn = cri_turn();
    let logs = log_dir();
    let name = unique_id(&format!("err-{tag}"));
    let mut pod = Pod::run(
        &cri,
        pod_config(&name, &format!("uid-{name}"), &logs.0),
        HANDLER,
    );
    let id = cri
        .create_container(&pod.id, &config, &pod.config)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
    pod.containers.push(id.clone());
    match cri.start_container(&id) {
        Ok(()) => panic!("CRI started container {id}"),
        Err(status) => expect.check_status("CRI StartContainer", &status),
    }
    // No task in containerd; CRI keeps the container, exited, with the same message.
    let k8s = Ctr::from_env().with_namespace(CRI_NAMESPACE);
    assert!(
        k8s.task_status(&id).is_none(),
        "a task of {id} is left: {:?}",
        k8s.task_status(&id)
    );
    let st = cri.container_status(&id).expect("ContainerStatus");
    assert_eq!(
        st.state,
        api::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    expect.check_message("CRI ContainerStatus", &st.message);

    let sandbox = pod.id.clone();
    pod.teardown(0);
    assert_pod_gone(&cri, &sandbox, &id);
}

/// Nothing of pod `sandbox` and its container `id` is left: not in CRI, no shim, no mount,
/// no bundle, no cgroup.
fn assert_pod_gone(cri: &Cri, sandbox: &str, id: &str) {
    let pods = cri
        .list_pod_sandboxes(Some(sandbox))
        .expect("ListPodSandbox");
    assert!(pods.is_empty(), "sandbox still listed: {pods:?}");
    let all = cri.list_containers(None).expect("ListContainers");
    assert!(
        !all.iter().any(|c| c.id == id),
        "container {id} still listed"
    );
    let k8s = Ctr::from_env().with_namespace(CRI_NAMESPACE);
    let listed = k8s.run(&["containers", "ls", "-q"]).ok().stdout;
    for x in [sandbox, id] {
        assert!(
            !listed.lines().any(|l| l.trim() == x),
            "containerd still has container {x}"
        );
    }
    assert!(
        wait_for(SHIM_EXIT, || shim_processes(sandbox).is_empty()),
        "trenv shim processes of pod {sandbox} still running {SHIM_EXIT:?} after its removal: {:?}",
        shim_processes(sandbox)
    );
    assert_no_mount_bundle_or_cgroup(CRI_NAMESPACE, &[sandbox, id]);
}

fn busybox_config(name: &str) -> api::ContainerConfig {
    container_config(name, BUSYBOX, &["sleep", "100"], &format!("{name}_0.log"))
}

#[test]
fn a_malformed_spec_is_invalid_argument_through_cri() {
    // CRI builds the container's spec from a typed request, so most malformations
    // cannot be asked for; a capability that does not exist can (CRI adds "CAP_").
    let mut config = busybox_config("cap");
    let sc = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("a security context");
    sc.capabilities = Some(api::Capability {
        add_capabilities: vec![NO_SUCH_CAP.trim_start_matches("CAP_").to_string()],
        ..Default::default()
    });
    cri_start_fails("cap-cri", config, &expect_no_such_cap());
}

#[test]
fn a_malformed_pod_spec_is_invalid_argument_through_cri() {
    // A pod sysctl that no namespace isolates goes into the sandbox (pause) container's
    // spec, which libcontainer's validation in the zygote's worker refuses: RunPodSandbox
    // fails, and the pod must leave nothing behind.
    let cri = cri_setup();
    let logs = log_dir();
    let name = unique_id("err-sysctl-cri");
    let mut config = pod_config(&name, &format!("uid-{name}"), &logs.0);
    if let Some(linux) = config.linux.as_mut() {
        linux.sysctls = HashMap::from([("vm.swappiness".to_string(), "10".to_string())]);
    }
    // The sandbox's id is not in every containerd line's answer: what the failure leaves
    // is what is there afterwards and was not before (the CRI tests of this file take
    // turns, and each waits for its pod to be gone).
    let _turn = cri_turn();
    let before = CriFootprint::now();
    match cri.run_pod_sandbox(&config, HANDLER) {
        Ok(id) => {
            let _ = cri.stop_pod_sandbox(&id);
            let _ = cri.remove_pod_sandbox(&id);
            panic!("CRI ran pod {id} with sysctl vm.swappiness");
        }
        Err(status) => Expect::malformed(&["vm.swappiness", "namespace"])
            .check_status("CRI RunPodSandbox", &status),
    }
    let pods = cri.list_pod_sandboxes(None).expect("ListPodSandbox");
    let left: Vec<&String> = pods
        .iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
        .map(|p| &p.id)
        .collect();
    for id in &left {
        let _ = cri.stop_pod_sandbox(id);
        let _ = cri.remove_pod_sandbox(id);
    }
    assert!(left.is_empty(), "pod {name} left in CRI: {left:?}");
    let mut new = CriFootprint::default();
    let gone = wait_for(SHIM_EXIT, || {
        new = CriFootprint::now().minus(&before);
        new.is_empty()
    });
    assert!(gone, "the failed pod {name} left: {new:#?}");
}

/// Makes the CRI tests of this file take turns, so that one can tell what it left by
/// comparing before and after.
fn cri_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// What CRI's pods have in containerd and on the host: containers, bundles, trenv shims,
/// mounts under containerd's state directory.
#[derive(Debug, Default)]
struct CriFootprint {
    containers: Vec<String>,
    bundles: Vec<String>,
    shims: Vec<i32>,
    mounts: Vec<String>,
}

impl CriFootprint {
    fn now() -> CriFootprint {
        let k8s = Ctr::from_env().with_namespace(CRI_NAMESPACE);
        let containers = k8s.run(&["containers", "ls", "-q"]).ok().stdout;
        let state = cri::containerd_state_dir();
        let bundles = std::fs::read_dir(
            state
                .join("io.containerd.runtime.v2.task")
                .join(CRI_NAMESPACE),
        )
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
        CriFootprint {
            containers: containers.lines().map(|l| l.trim().to_string()).collect(),
            bundles,
            shims: cri::shim_servers(&format!("-namespace {CRI_NAMESPACE} ")),
            mounts: cri::mounts_under(&state, &[CRI_NAMESPACE]),
        }
    }

    /// What is in `self` and not in `before`.
    fn minus(self, before: &CriFootprint) -> CriFootprint {
        fn new<T: PartialEq>(now: Vec<T>, before: &[T]) -> Vec<T> {
            now.into_iter().filter(|x| !before.contains(x)).collect()
        }
        CriFootprint {
            containers: new(self.containers, &before.containers),
            bundles: new(self.bundles, &before.bundles),
            shims: new(self.shims, &before.shims),
            mounts: new(self.mounts, &before.mounts),
        }
    }

    fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.bundles.is_empty()
            && self.shims.is_empty()
            && self.mounts.is_empty()
    }
}

#[test]
fn an_unenforceable_seccomp_profile_is_invalid_argument_through_cri() {
    let profile = notify_profile();
    let mut config = busybox_config("seccomp");
    let sc = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("a security context");
    sc.seccomp = Some(api::SecurityProfile {
        profile_type: api::security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.0.display().to_string(),
    });
    cri_start_fails("seccomp-cri", config, &Expect::seccomp());
}

#[test]
fn a_missing_template_is_not_found_through_cri() {
    let name = unique_id("no-such-template");
    let mut config = busybox_config("tpl");
    config
        .annotations
        .insert(TEMPLATE_ANNOTATION.to_string(), name.clone());
    cri_start_fails("tpl-cri", config, &Expect::missing_template(&name));
}
