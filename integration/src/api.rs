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
    CreateTaskRequest, GetContainerRequest, GetRequest, StartRequest,
};
use containerd_client::{Client, tonic};

/// How long one call may take before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one containerd, working in one namespace.
pub struct Containerd {
    rt: tokio::runtime::Runtime,
    client: Client,
    namespace: String,
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
        })
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
        req.set_timeout(CALL_TIMEOUT);
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
            let created = client
                .tasks()
                .create(self.request(CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
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
}
