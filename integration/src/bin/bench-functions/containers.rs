//! Container records through containerd's API, as a platform on containerd's client library
//! makes them (no `ctr` process per instance): each instance is a copy of a *model*
//! container that `ctr containers create` made once per function and mode (same image,
//! runtime, options, labels and spec; only the id, the cgroups path and the snapshot are
//! its own), with a new active snapshot on the image's layers, under a lease as the client
//! library holds one. Removal undoes it: the task killed and deleted, the record and the
//! snapshot deleted.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
};
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    ListRequest as ListLeasesRequest,
};
use containerd_client::{Client, tonic};
use trenv_integration::api::Containerd;

/// What a copy needs of its model: the record (spec included) and its snapshot's parent.
#[derive(Clone)]
pub struct Model {
    pub id: String,
    record: Container,
    /// The image's top layer: the new snapshot's parent.
    parent: String,
}

/// One connection to containerd for container records, and [`Containerd`] for tasks.
pub struct Conn {
    rt: tokio::runtime::Runtime,
    client: Client,
    namespace: String,
    pub tasks: Containerd,
}

impl Conn {
    pub fn new(namespace: &str) -> Result<Conn, String> {
        let address = std::env::var("CONTAINERD_ADDRESS")
            .map_err(|_| "CONTAINERD_ADDRESS is not set".to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("creating a tokio runtime: {e}"))?;
        let client = rt
            .block_on(Client::from_path(&address))
            .map_err(|e| format!("connecting to containerd on {address}: {e:?}"))?;
        // Cold starts of ten runc functions at once on two cores take containerd longer
        // than the client's default minute.
        let tasks = Containerd::from_env(namespace)?.with_timeout(Duration::from_secs(600));
        Ok(Conn {
            rt,
            client,
            namespace: namespace.to_string(),
            tasks,
        })
    }

    fn request<T>(&self, message: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(Duration::from_secs(120));
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        if let Some(l) = lease.and_then(|l| l.parse().ok()) {
            req.metadata_mut().insert("containerd-lease", l);
        }
        req
    }

    /// The record of container `id` (made by `ctr containers create`) and its snapshot's
    /// parent, to copy from.
    pub fn model(&self, id: &str) -> Result<Model, String> {
        let client = &self.client;
        self.rt.block_on(async {
            let record = client
                .containers()
                .get(self.request(GetContainerRequest { id: id.to_string() }, None))
                .await
                .map_err(|e| format!("getting container {id}: {}", e.message()))?
                .into_inner()
                .container
                .ok_or_else(|| format!("no container record for {id}"))?;
            let info = client
                .snapshots()
                .stat(self.request(
                    StatSnapshotRequest {
                        snapshotter: record.snapshotter.clone(),
                        key: record.snapshot_key.clone(),
                    },
                    None,
                ))
                .await
                .map_err(|e| format!("the snapshot of {id}: {}", e.message()))?
                .into_inner()
                .info
                .ok_or_else(|| format!("no snapshot info for {id}"))?;
            Ok(Model {
                id: id.to_string(),
                record,
                parent: info.parent,
            })
        })
    }

    /// A new container `id` like `model`: a lease, a new active snapshot on the image, the
    /// record with the model's spec (its cgroups path made `id`'s), the lease released.
    pub fn create_like(&self, model: &Model, id: &str) -> Result<(), String> {
        let client = &self.client;
        let mut record = model.record.clone();
        record.id = id.to_string();
        record.snapshot_key = id.to_string();
        record.created_at = None;
        record.updated_at = None;
        if let Some(spec) = record.spec.as_mut() {
            let mut v: serde_json::Value = serde_json::from_slice(&spec.value)
                .map_err(|e| format!("the spec of {}: {e}", model.id))?;
            if let Some(path) = v["linux"]["cgroupsPath"].as_str()
                && let Some(base) = path.strip_suffix(model.id.as_str())
            {
                v["linux"]["cgroupsPath"] = format!("{base}{id}").into();
            }
            spec.value = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
        }
        let lease = format!("{id}-lease");
        self.rt.block_on(async {
            let mut labels = HashMap::new();
            labels.insert(
                "containerd.io/gc.expire".to_string(),
                rfc3339(SystemTime::now() + Duration::from_secs(300)),
            );
            client
                .leases()
                .create(self.request(
                    CreateLeaseRequest {
                        id: lease.clone(),
                        labels,
                    },
                    None,
                ))
                .await
                .map_err(|e| format!("a lease for {id}: {}", e.message()))?;
            let made = async {
                client
                    .snapshots()
                    .prepare(self.request(
                        PrepareSnapshotRequest {
                            snapshotter: record.snapshotter.clone(),
                            key: id.to_string(),
                            parent: model.parent.clone(),
                            labels: HashMap::new(),
                        },
                        Some(&lease),
                    ))
                    .await
                    .map_err(|e| format!("the snapshot of {id}: {}", e.message()))?;
                client
                    .containers()
                    .create(self.request(
                        CreateContainerRequest {
                            container: Some(record),
                        },
                        Some(&lease),
                    ))
                    .await
                    .map_err(|e| format!("creating container {id}: {}", e.message()))?;
                Ok::<(), String>(())
            }
            .await;
            let _ = client
                .leases()
                .delete(self.request(
                    DeleteLeaseRequest {
                        id: lease.clone(),
                        sync: false,
                    },
                    None,
                ))
                .await;
            made
        })
    }

    /// Removes container `id`: its task killed (all processes), waited for and deleted, its
    /// record and its snapshot deleted. Errors are reported, and what can be removed is.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        let mut first_error = None;
        match self.tasks.kill(id, "", libc::SIGKILL as u32, true) {
            Ok(()) => {
                let _ = self.tasks.wait(id, "");
            }
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => first_error = Some(format!("killing {id}: {}", e.message())),
        }
        // The exit may be a moment behind the wait (the shim reports it once the output is
        // drained).
        for attempt in 0..100 {
            match self.tasks.delete_task(id) {
                Ok(()) => break,
                Err(e) if e.code() == tonic::Code::NotFound => break,
                Err(e) if attempt == 99 => {
                    first_error
                        .get_or_insert(format!("deleting the task of {id}: {}", e.message()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let client = &self.client;
        let snapshotter = self.rt.block_on(async {
            let record = client
                .containers()
                .get(self.request(GetContainerRequest { id: id.to_string() }, None))
                .await
                .ok()?
                .into_inner()
                .container?;
            Some((record.snapshotter, record.snapshot_key))
        });
        let deleted = self.rt.block_on(
            client
                .containers()
                .delete(self.request(DeleteContainerRequest { id: id.to_string() }, None)),
        );
        if let Err(e) = deleted
            && e.code() != tonic::Code::NotFound
        {
            first_error.get_or_insert(format!("deleting container {id}: {}", e.message()));
        }
        if let Some((snapshotter, key)) = snapshotter
            && !key.is_empty()
        {
            let _ = self.rt.block_on(
                client
                    .snapshots()
                    .remove(self.request(RemoveSnapshotRequest { snapshotter, key }, None)),
            );
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes the leases whose id starts with `prefix` (what an interrupted copy left).
    pub fn drop_leases(&self, prefix: &str) {
        let client = &self.client;
        self.rt.block_on(async {
            let Ok(list) = client
                .leases()
                .list(self.request(ListLeasesRequest { filters: vec![] }, None))
                .await
            else {
                return;
            };
            for l in list.into_inner().leases {
                if l.id.starts_with(prefix) {
                    let _ = client
                        .leases()
                        .delete(self.request(
                            DeleteLeaseRequest {
                                id: l.id,
                                sync: false,
                            },
                            None,
                        ))
                        .await;
                }
            }
        });
    }
}

/// `t` as RFC 3339 in UTC (containerd's `gc.expire` label).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_443_008);
        assert_eq!(rfc3339(t), "2026-12-05T03:56:48Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
