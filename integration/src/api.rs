//! A small blocking client of containerd's own gRPC API (the containerd-client crate): how
//! faasd, nerdctl or any program using containerd's client library starts a task, without
//! the `ctr` process in between.
//!
//! Like [`crate::cri`], every call runs on a private single-threaded tokio runtime, so tests
//! and benchmarks stay plain functions.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::{
    CheckpointTaskRequest, CreateTaskRequest, DeleteProcessRequest, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest, PluginInfoRequest,
    StartRequest, UpdateContainerRequest, WaitRequest,
};
pub use containerd_client::types::RuntimeInfo;
use containerd_client::types::RuntimeRequest;
use containerd_client::{Client, tonic};
use prost::Message;

/// How long one call may take before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one containerd, working in one namespace.
pub struct Containerd {
    rt: tokio::runtime::Runtime,
    client: Client,
    namespace: String,
    /// Each call's deadline.
    timeout: Duration,
}

/// The stdio of a task or exec: FIFO paths (empty: none) and whether it has a terminal.
#[derive(Debug, Clone, Default)]
pub struct TaskIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl TaskIo {
    /// Both output streams to one log URI, as containerd's `cio.LogURI` and `cio.BinaryIO`
    /// ask for them.
    pub fn log_uri(uri: &str, terminal: bool) -> TaskIo {
        TaskIo {
            stdout: uri.to_string(),
            stderr: uri.to_string(),
            terminal,
            ..TaskIo::default()
        }
    }
}

/// Runtime options as containerd's client library sends them: a type URL and the encoded
/// message.
#[derive(Debug, Clone)]
pub struct Options {
    pub type_url: String,
    pub value: Vec<u8>,
}

/// The name the log-URI tests use for [`Options`].
pub type RawOptions = Options;

fn any(o: &Options) -> prost_types::Any {
    prost_types::Any {
        type_url: o.type_url.clone(),
        value: o.value.clone(),
    }
}

/// What a task start through the API answers.
pub struct Started {
    /// The task's process id on the host.
    pub pid: u32,
}

impl Containerd {
    /// Connects to containerd's gRPC socket at `socket` (a path), for `namespace`.
    pub fn connect(socket: &Path, namespace: &str) -> Result<Containerd, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("creating a tokio runtime: {e}"))?;
        let client = rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, Client::from_path(socket)).await })
            .map_err(|_| format!("connecting to containerd on {} timed out", socket.display()))?
            .map_err(|e| format!("connecting to containerd on {}: {e:?}", socket.display()))?;
        Ok(Containerd {
            rt,
            client,
            namespace: namespace.to_string(),
            timeout: CALL_TIMEOUT,
        })
    }

    /// The same client with another deadline for each call (a burst of cold starts on two
    /// cores takes containerd longer than a test's minute).
    pub fn with_timeout(mut self, timeout: Duration) -> Containerd {
        self.timeout = timeout;
        self
    }

    /// The containerd under test (`CONTAINERD_ADDRESS`, as for [`crate::Ctr::from_env`]).
    pub fn from_env(namespace: &str) -> Result<Containerd, String> {
        let address = std::env::var("CONTAINERD_ADDRESS").map_err(|_| {
            "CONTAINERD_ADDRESS is not set: eval \"$(integration/scripts/containerd.sh env 2)\" \
             first"
                .to_string()
        })?;
        Containerd::connect(Path::new(&address), namespace)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.timeout);
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    /// Creates and starts the task of container `id` (which must exist, with its
    /// snapshot), as containerd's client library does for `NewTask` + `Start`: the
    /// container record, its snapshot's mounts, Tasks.Create with those as the rootfs,
    /// Tasks.Start. No stdio (a function's platform reads its answers elsewhere).
    pub fn start_task(&self, id: &str) -> Result<Started, String> {
        self.create_task(id)
            .map_err(|e| format!("creating the task of {id}: {}", e.message()))?;
        let client = &self.client;
        self.rt.block_on(async {
            let started = client
                .tasks()
                .start(self.request(StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                }))
                .await
                .map_err(|e| format!("starting the task of {id}: {}", e.message()))?
                .into_inner();
            Ok(Started { pid: started.pid })
        })
    }

    /// Tasks.Create for container `id` (which must exist): the container record, its
    /// snapshot's mounts as the rootfs (none for a container without a snapshot, whose
    /// spec names its root directory), no stdio. Answers the task's pid, or containerd's
    /// status as it came, so that tests can check its gRPC code.
    pub fn create_task(&self, id: &str) -> Result<u32, tonic::Status> {
        self.create_task_with(id, &TaskIo::default(), None, None)
    }

    /// Tasks.Create as [`Containerd::create_task`] does, with `io` as the task's stdio,
    /// `options` as the task's runtime options (what `WithShimCgroup`, `WithUIDOwner`… set)
    /// and a `runtime_path` (the shim binary containerd runs instead of the one the
    /// container's runtime name resolves to).
    pub fn create_task_with(
        &self,
        id: &str,
        io: &TaskIo,
        options: Option<&Options>,
        runtime_path: Option<&str>,
    ) -> Result<u32, tonic::Status> {
        self.create_task_with_rootfs(id, io, options, runtime_path, |_| {})
    }

    /// Tasks.Create as [`Containerd::create_task_with`] does, with the snapshot's mounts
    /// changed by `edit` before they are sent (a rootfs that cannot be mounted).
    pub fn create_task_with_rootfs(
        &self,
        id: &str,
        io: &TaskIo,
        options: Option<&Options>,
        runtime_path: Option<&str>,
        edit: impl FnOnce(&mut Vec<containerd_client::types::Mount>),
    ) -> Result<u32, tonic::Status> {
        let client = &self.client;
        self.rt.block_on(async {
            let container = client
                .containers()
                .get(self.request(GetContainerRequest { id: id.to_string() }))
                .await?
                .into_inner()
                .container
                .ok_or_else(|| tonic::Status::internal(format!("no container record for {id}")))?;
            let mounts = if container.snapshot_key.is_empty() {
                Vec::new()
            } else {
                client
                    .snapshots()
                    .mounts(self.request(MountsRequest {
                        snapshotter: container.snapshotter.clone(),
                        key: container.snapshot_key.clone(),
                    }))
                    .await?
                    .into_inner()
                    .mounts
            };
            let mut mounts = mounts;
            edit(&mut mounts);
            let created = client
                .tasks()
                .create(self.request(CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
                    stdin: io.stdin.clone(),
                    stdout: io.stdout.clone(),
                    stderr: io.stderr.clone(),
                    terminal: io.terminal,
                    options: options.map(any),
                    runtime_path: runtime_path.unwrap_or_default().to_string(),
                    ..Default::default()
                }))
                .await?
                .into_inner();
            Ok(created.pid)
        })
    }

    /// The status of container `id`'s task as containerd reports it (`RUNNING`, `STOPPED`…).
    pub fn task_status(&self, id: &str) -> Result<String, String> {
        let client = &self.client;
        self.rt.block_on(async {
            let process = client
                .tasks()
                .get(self.request(GetRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                }))
                .await
                .map_err(|e| format!("getting the task of {id}: {}", e.message()))?
                .into_inner()
                .process
                .ok_or_else(|| format!("containerd answered no task for {id}"))?;
            Ok(process.status().as_str_name().to_string())
        })
    }

    /// Rewrites the OCI spec of container `id` (before its task exists) with `edit`: how a
    /// test gives a container spec fields that `ctr run` has no flag for (sysctls,
    /// rlimits). The whole record is written back as read (an empty update mask).
    pub fn edit_spec(
        &self,
        id: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<(), String> {
        let client = &self.client;
        self.rt.block_on(async {
            let mut container = client
                .containers()
                .get(self.request(GetContainerRequest { id: id.to_string() }))
                .await
                .map_err(|e| format!("getting container {id}: {}", e.message()))?
                .into_inner()
                .container
                .ok_or_else(|| format!("no container record for {id}"))?;
            let any = container
                .spec
                .as_mut()
                .ok_or_else(|| format!("container {id} has no spec"))?;
            let mut spec: serde_json::Value = serde_json::from_slice(&any.value)
                .map_err(|e| format!("container {id}'s spec: {e}"))?;
            edit(&mut spec);
            any.value = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
            client
                .containers()
                .update(self.request(UpdateContainerRequest {
                    container: Some(container),
                    update_mask: None,
                }))
                .await
                .map_err(|e| format!("updating container {id}: {}", e.message()))?;
            Ok(())
        })
    }

    /// Tasks.Start of the task's init (`exec_id` empty) or of an exec; its pid.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        let req = self.request(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let mut tasks = self.client.tasks();
        self.rt
            .block_on(tasks.start(req))
            .map(|r| r.into_inner().pid)
    }

    /// Tasks.Exec: adds process `exec_id` (its OCI process as JSON) to the task of `id`, as
    /// containerd's client library does for `task.Exec` (the process spec under the runtime
    /// spec's type URL, the terminal asked for in the request).
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        io: &TaskIo,
    ) -> Result<(), tonic::Status> {
        let spec = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(process).expect("a process spec encodes"),
        };
        let req = self.request(ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            spec: Some(spec),
        });
        let mut tasks = self.client.tasks();
        self.rt.block_on(tasks.exec(req)).map(|_| ())
    }

    /// Tasks.Exec of `args` with the container's own process settings (a terminal if `io`
    /// asks for one) and stdio `io`.
    pub fn exec_args(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        io: &TaskIo,
    ) -> Result<(), tonic::Status> {
        let client = &self.client;
        let container = self
            .rt
            .block_on(
                client
                    .containers()
                    .get(self.request(GetContainerRequest { id: id.to_string() })),
            )?
            .into_inner()
            .container
            .ok_or_else(|| tonic::Status::internal(format!("no container record for {id}")))?;
        let spec = container
            .spec
            .ok_or_else(|| tonic::Status::internal(format!("no spec for {id}")))?;
        let spec: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| tonic::Status::internal(format!("the spec of {id}: {e}")))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(io.terminal);
        self.exec(id, exec_id, &process, io)
    }

    /// Tasks.Kill of one process (`exec_id` empty: the init) or, with `all`, of them all.
    pub fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), tonic::Status> {
        let req = self.request(KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
        });
        let mut tasks = self.client.tasks();
        self.rt.block_on(tasks.kill(req)).map(|_| ())
    }

    /// Tasks.Wait: the exit status of the init or of an exec.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        let req = self.request(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let mut tasks = self.client.tasks();
        self.rt
            .block_on(tasks.wait(req))
            .map(|r| r.into_inner().exit_status)
    }

    /// Tasks.DeleteProcess of an exec.
    pub fn delete_process(&self, id: &str, exec_id: &str) -> Result<(), tonic::Status> {
        let req = self.request(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let mut tasks = self.client.tasks();
        self.rt.block_on(tasks.delete_process(req)).map(|_| ())
    }

    /// Tasks.Checkpoint of the task of `id` with `options` (checkpoint options as the
    /// client library's `WithCheckpointImagePath` sets them).
    pub fn checkpoint(&self, id: &str, options: &Options) -> Result<(), tonic::Status> {
        let req = self.request(CheckpointTaskRequest {
            container_id: id.to_string(),
            options: Some(any(options)),
            ..Default::default()
        });
        let mut tasks = self.client.tasks();
        self.rt.block_on(tasks.checkpoint(req)).map(|_| ())
    }

    /// Tasks.Delete of the task of `id`.
    pub fn delete_task(&self, id: &str) -> Result<(), tonic::Status> {
        let req = self.request(DeleteTaskRequest {
            container_id: id.to_string(),
        });
        let mut tasks = self.client.tasks();
        self.rt.block_on(tasks.delete(req)).map(|_| ())
    }

    /// What containerd 2.x's introspection answers about a runtime (`ctr plugins
    /// inspect-runtime`, CRI's runtime handler features): the shim's `-info`, decoded.
    pub fn runtime_info(
        &self,
        runtime: &str,
        options: Option<&Options>,
    ) -> Result<RuntimeInfo, tonic::Status> {
        let request = RuntimeRequest {
            runtime_path: runtime.to_string(),
            options: options.map(any),
        };
        let req = self.request(PluginInfoRequest {
            r#type: "io.containerd.runtime.v2".into(),
            id: "task".into(),
            options: Some(prost_types::Any {
                type_url: "containerd.types.RuntimeRequest".into(),
                value: request.encode_to_vec(),
            }),
        });
        let mut introspection = self.client.introspection();
        let answer = self
            .rt
            .block_on(introspection.plugin_info(req))?
            .into_inner();
        let extra = answer
            .extra
            .ok_or_else(|| tonic::Status::internal("PluginInfo answered no runtime info"))?;
        RuntimeInfo::decode(extra.value.as_slice())
            .map_err(|e| tonic::Status::internal(format!("decoding RuntimeInfo: {e}")))
    }
}
