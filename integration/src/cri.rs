//! A small blocking CRI client: the tests stand in for the kubelet and drive containerd's CRI
//! plugin (served on containerd's own gRPC socket) through the `runtime.v1` API.
//!
//! Every call runs on a private single-threaded tokio runtime, so the tests stay plain
//! `#[test]` functions. Calls answer `Result<_, tonic::Status>`: tests decide what an error
//! means, and clean-up code can ignore them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// The CRI runtime handler that containerd's config maps to `io.containerd.trenv.v1`.
pub const HANDLER: &str = "trenv";

/// The containerd namespace in which CRI keeps its pods, containers and images.
pub const NAMESPACE: &str = "k8s.io";

/// How long one CRI call may take before it fails (containerd answers in well under a second
/// when healthy; RunPodSandbox includes CNI set-up).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A CRI client connected to one containerd.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI service on containerd's gRPC socket at `socket` (a path).
    pub fn connect(socket: &Path) -> Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("creating a tokio runtime: {e}"))?;
        let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(|e| format!("CRI endpoint for {}: {e}", socket.display()))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(CALL_TIMEOUT);
        let channel = rt
            .block_on(endpoint.connect())
            .map_err(|e| format!("connecting to CRI on {}: {e:?}", socket.display()))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The containerd under test (`CONTAINERD_ADDRESS`, as for [`crate::Ctr::from_env`]).
    pub fn from_env() -> Cri {
        let address = std::env::var("CONTAINERD_ADDRESS").unwrap_or_else(|_| {
            panic!(
                "CONTAINERD_ADDRESS is not set: eval \"$(integration/scripts/containerd.sh env 2)\" \
                 or run the tests through integration/test.sh"
            )
        });
        let socket = address.strip_prefix("unix://").unwrap_or(&address);
        Cri::connect(Path::new(socket)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rs(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    fn is(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    pub fn version(&self) -> Result<api::VersionResponse, Status> {
        let req = api::VersionRequest {
            version: "v1".to_string(),
        };
        self.rt
            .block_on(self.rs().version(req))
            .map(|r| r.into_inner())
    }

    /// The features CRI reports for each runtime handler (what the kubelet reads before it
    /// admits a pod asking for them).
    pub fn runtime_handlers(&self) -> Result<Vec<api::RuntimeHandler>, Status> {
        let req = api::StatusRequest { verbose: false };
        self.rt
            .block_on(self.rs().status(req))
            .map(|r| r.into_inner().runtime_handlers)
    }

    // --- pod sandboxes ---

    /// Runs a pod sandbox with `config` under runtime handler `handler`; answers its id.
    pub fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        self.rt
            .block_on(self.rs().run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.rt
            .block_on(self.rs().stop_pod_sandbox(req))
            .map(|_| ())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.rt
            .block_on(self.rs().remove_pod_sandbox(req))
            .map(|_| ())
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus, Status> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        self.rt
            .block_on(self.rs().pod_sandbox_status(req))
            .and_then(|r| {
                r.into_inner()
                    .status
                    .ok_or_else(|| Status::internal("PodSandboxStatus without a status"))
            })
    }

    /// Pod sandboxes; with `id`, only that one (if it exists).
    pub fn list_pod_sandboxes(&self, id: Option<&str>) -> Result<Vec<api::PodSandbox>, Status> {
        let req = api::ListPodSandboxRequest {
            filter: id.map(|id| api::PodSandboxFilter {
                id: id.to_string(),
                ..Default::default()
            }),
        };
        self.rt
            .block_on(self.rs().list_pod_sandbox(req))
            .map(|r| r.into_inner().items)
    }

    // --- containers ---

    /// Creates a container in pod `sandbox_id` (whose config was `sandbox`); answers its id.
    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        self.rt
            .block_on(self.rs().create_container(req))
            .map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let req = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.rt.block_on(self.rs().start_container(req)).map(|_| ())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout` seconds (0: at once).
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let req = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        };
        self.rt.block_on(self.rs().stop_container(req)).map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), Status> {
        let req = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.rt
            .block_on(self.rs().remove_container(req))
            .map(|_| ())
    }

    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Status> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.rt
            .block_on(self.rs().container_status(req))
            .and_then(|r| {
                r.into_inner()
                    .status
                    .ok_or_else(|| Status::internal("ContainerStatus without a status"))
            })
    }

    /// Containers; with `sandbox_id`, only those of that pod.
    pub fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<api::Container>, Status> {
        let req = api::ListContainersRequest {
            filter: sandbox_id.map(|id| api::ContainerFilter {
                pod_sandbox_id: id.to_string(),
                ..Default::default()
            }),
        };
        self.rt
            .block_on(self.rs().list_containers(req))
            .map(|r| r.into_inner().containers)
    }

    /// Runs `cmd` in a container and waits for it (at most `timeout` seconds, 0: no limit).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<api::ExecSyncResponse, Status> {
        let req = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.rt
            .block_on(self.rs().exec_sync(req))
            .map(|r| r.into_inner())
    }

    /// UpdateContainerResources with a new memory limit (bytes).
    pub fn update_memory_limit(&self, id: &str, limit: i64) -> Result<(), Status> {
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(api::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.rt
            .block_on(self.rs().update_container_resources(req))
            .map(|_| ())
    }

    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats, Status> {
        let req = api::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.rt
            .block_on(self.rs().container_stats(req))
            .and_then(|r| {
                r.into_inner()
                    .stats
                    .ok_or_else(|| Status::internal("ContainerStats without stats"))
            })
    }

    // --- images ---

    /// The image CRI knows under `image`, if any.
    pub fn image_status(&self, image: &str) -> Result<Option<api::Image>, Status> {
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.rt
            .block_on(self.is().image_status(req))
            .map(|r| r.into_inner().image)
    }

    /// Waits until CRI knows `image` (an image imported with ctr reaches CRI's image store
    /// through an event), at most `timeout`.
    pub fn wait_image(&self, image: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            match self.image_status(image) {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(None) => {
                    return Err(format!(
                        "CRI does not know image {image} (namespace {NAMESPACE}): run \
                         integration/scripts/build-images.sh import"
                    ));
                }
                Err(e) => return Err(format!("ImageStatus {image}: {e}")),
            }
        }
    }
}

/// The namespaces the kubelet asks for: network and IPC shared by the pod; a PID namespace
/// per container, or one for the whole pod with `shareProcessNamespace: true` (`shared_pid`).
pub fn namespace_options(shared_pid: bool) -> api::NamespaceOption {
    let pid = if shared_pid {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod sandbox config as the kubelet would send it, with `name` and `uid` as metadata, no
/// cgroup parent (containerd picks the runtime's default), its logs in `log_directory` and a
/// PID namespace per container (see [`namespace_options`]; [`share_pid_namespace`] changes it).
pub fn pod_config(name: &str, uid: &str, log_directory: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_directory.display().to_string(),
        labels: HashMap::from([("trenv-test".to_string(), "cri".to_string())]),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(false)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Makes a pod and a container config share one PID namespace, as the kubelet does for a pod
/// with `shareProcessNamespace: true`.
pub fn share_pid_namespace(pod: &mut api::PodSandboxConfig, container: &mut api::ContainerConfig) {
    let shared = Some(namespace_options(true));
    if let Some(sc) = pod.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.namespace_options = shared.clone();
    }
    if let Some(sc) = container
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.namespace_options = shared;
    }
}

/// A container config: `image` running `command`, logging to `log_path` (relative to the pod's
/// log directory), in its own PID namespace (as the kubelet asks by default).
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    log_path: &str,
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.to_string(),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(false)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One line of a CRI container log: `<RFC 3339 time> <stdout|stderr> <P|F> <text>`.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// `F` for a full line, `P` for a partial one.
    pub tag: String,
    pub text: String,
}

impl LogLine {
    /// Parses one line of the CRI log format; `None` if it does not follow it.
    pub fn parse(line: &str) -> Option<LogLine> {
        let mut f = line.splitn(4, ' ');
        let (time, stream, tag) = (f.next()?, f.next()?, f.next()?);
        let text = f.next().unwrap_or_default();
        let time_ok = time.len() >= 20 && time.as_bytes()[4] == b'-' && time.contains('T');
        let stream_ok = stream == "stdout" || stream == "stderr";
        let tag_ok = tag.split(':').next().is_some_and(|t| t == "F" || t == "P");
        (time_ok && stream_ok && tag_ok).then(|| LogLine {
            time: time.to_string(),
            stream: stream.to_string(),
            tag: tag.to_string(),
            text: text.to_string(),
        })
    }
}

/// The lines of a CRI container log, each checked against the format (`Err` names the first
/// line that does not follow it).
pub fn read_log(path: &Path) -> Result<Vec<LogLine>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| LogLine::parse(l).ok_or_else(|| format!("not a CRI log line: {l:?}")))
        .collect()
}

/// containerd's state directory (`CONTAINERD_STATE`, else `state` beside its socket, as
/// integration/scripts/containerd.sh lays it out).
pub fn containerd_state_dir() -> PathBuf {
    if let Ok(s) = std::env::var("CONTAINERD_STATE") {
        return PathBuf::from(s);
    }
    let address = std::env::var("CONTAINERD_ADDRESS").unwrap_or_default();
    let socket = address.strip_prefix("unix://").unwrap_or(&address);
    Path::new(socket)
        .parent()
        .map(|d| d.join("state"))
        .unwrap_or_default()
}

/// Mount points (from this process's mountinfo) under `dir` whose path contains one of `ids`.
pub fn mounts_under(dir: &Path, ids: &[&str]) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir) && ids.iter().any(|id| m.contains(id)))
        .map(|m| m.to_string())
        .collect()
}

/// `containerd-shim-trenv-v1` processes of any kind whose command line contains `needle`.
pub fn shim_processes(needle: &str) -> Vec<i32> {
    crate::pids_matching("containerd-shim-trenv-v1")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// Shim *server* processes (`containerd-shim-trenv-v1` not run as `start` or `delete`, and
/// not forked by another such process: the runtime zygote and container processes before
/// their exec carry the server's command line too) whose command line contains `needle`.
pub fn shim_servers(needle: &str) -> Vec<i32> {
    let shims: Vec<(i32, i32, String)> = crate::pids_matching("containerd-shim-trenv-v1")
        .into_iter()
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-trenv-v1"));
            let action = args.last().map(String::as_str);
            if !is_shim || matches!(action, Some("start" | "delete")) {
                return None;
            }
            Some((pid, parent_of(pid)?, args.join(" ")))
        })
        .collect();
    shims
        .iter()
        .filter(|(_, ppid, cmd)| {
            cmd.contains(needle) && !shims.iter().any(|(pid, _, _)| pid == ppid)
        })
        .map(|(pid, _, _)| *pid)
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields after it follow the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; answers whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pod for a test: removes its containers and itself when dropped, so that a failing test
/// leaves nothing behind. [`Pod::teardown`] does the same with every step checked.
pub struct Pod<'a> {
    pub cri: &'a Cri,
    pub id: String,
    pub config: api::PodSandboxConfig,
    pub containers: Vec<String>,
    torn_down: bool,
}

impl<'a> Pod<'a> {
    /// Runs a pod sandbox with `config` under runtime handler `handler`.
    pub fn run(cri: &'a Cri, config: api::PodSandboxConfig, handler: &str) -> Pod<'a> {
        let id = cri
            .run_pod_sandbox(&config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox (handler {handler}): {e}"));
        Pod {
            cri,
            id,
            config,
            containers: Vec::new(),
            torn_down: false,
        }
    }

    /// Creates and starts a container; answers its id.
    pub fn start(&mut self, config: &api::ContainerConfig) -> String {
        self.try_start(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates and starts a container in the pod; says which call failed and why (a
    /// created container is torn down with the pod either way).
    pub fn try_start(&mut self, config: &api::ContainerConfig) -> Result<String, String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        let id = self
            .cri
            .create_container(&self.id, config, &self.config)
            .map_err(|e| format!("CreateContainer {name} in pod {}: {e}", self.id))?;
        self.containers.push(id.clone());
        self.cri
            .start_container(&id)
            .map_err(|e| format!("StartContainer {name} ({id}): {e}"))?;
        Ok(id)
    }

    /// Stops and removes every container (stop signal, SIGKILL after `stop_timeout` s), then
    /// stops and removes the sandbox; panics on the first error.
    pub fn teardown(&mut self, stop_timeout: i64) {
        for c in &self.containers {
            self.cri
                .stop_container(c, stop_timeout)
                .unwrap_or_else(|e| panic!("StopContainer {c}: {e}"));
            self.cri
                .remove_container(c)
                .unwrap_or_else(|e| panic!("RemoveContainer {c}: {e}"));
        }
        self.cri
            .stop_pod_sandbox(&self.id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", self.id));
        self.cri
            .remove_pod_sandbox(&self.id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", self.id));
        // Only now: after a failed step, dropping the pod tries the clean-up again.
        self.torn_down = true;
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        for c in &self.containers {
            let _ = self.cri.stop_container(c, 0);
            let _ = self.cri.remove_container(c);
        }
        let _ = self.cri.stop_pod_sandbox(&self.id);
        let _ = self.cri.remove_pod_sandbox(&self.id);
    }
}
