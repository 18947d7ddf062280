//! The container's sandbox (runtime/src/sandbox, docs/sandboxes.md): taken from the node's
//! idle pool at Create — a compatible idle one of its tenant, else a new one — and
//! released at Delete, purged, for the next container. Containers take part when they ask
//! (`io.trenv.repurpose=true`) or when the node's config says so (`[sandboxes] enabled`,
//! on by default); one that cannot (its spec joins namespaces, a user namespace, network
//! admin rights, a checkpoint restore) or does not ask gets new namespaces as before; so does one whose sandbox cannot be had (the pool's directory unusable),
//! with a warning: the pool speeds starts up, it never fails them.

use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};
use trenv_runtime::config::Config;
use trenv_runtime::sandbox::{self, IdlePool, Joinable, Lease, Released, Take, Want};

use super::{Container, StartPlan};
use crate::annotations::Annotations;
use crate::errors::{invalid, rt};
use containerd_shim::protos::ttrpc;

/// A sandbox held by a container.
pub struct Held {
    pool: IdlePool,
    pub lease: Lease,
    /// Its namespaces' paths, for the container's spec (through this shim's gate into the
    /// node's pin store: valid while the shim lives).
    pub joinable: Joinable,
    /// Back to the pool at release (else destroyed: `io.trenv.repurpose=false`).
    keep: bool,
}

impl Held {
    /// Hands the sandbox back (purged and idle, or destroyed).
    pub fn release(self, container: &str) {
        if !self.keep {
            self.pool.destroy(&self.lease.id);
            log::debug!("container {container}: sandbox {} destroyed", self.lease.id);
            return;
        }
        match self.pool.release(&self.lease) {
            Released::Idle(p) => log::debug!(
                "container {container}: sandbox {} purged and idle ({} SysV objects, {} \
                 message queues, links {:?} removed)",
                self.lease.id,
                p.sysv_objects,
                p.mqueues,
                p.links
            ),
            Released::Destroyed(None) => {
                log::debug!("container {container}: sandbox {} destroyed", self.lease.id)
            }
            Released::Destroyed(Some(e)) => log::warn!(
                "container {container}: sandbox {} destroyed, not kept: {e}",
                self.lease.id
            ),
        }
    }
}

/// Sweeps the node's idle pool every so often (a quarter of the keep-alive, between 1 s
/// and a minute) for as long as this shim runs, so that idle sandboxes go when their
/// keep-alive ends, not at the pool's next use. The config is read again each time.
pub fn sweep_periodically() {
    let spawned = std::thread::Builder::new()
        .name("pool-sweep".into())
        .spawn(|| {
            loop {
                let config = Config::load().unwrap_or_default();
                let secs = (config.sandboxes.keep_alive_secs / 4).clamp(1, 60);
                std::thread::sleep(std::time::Duration::from_secs(secs));
                if let Some(reserve) = crate::reserve::existing() {
                    reserve.expire(
                        std::time::Duration::from_secs(config.sandboxes.keep_alive_secs),
                        config.shim.reserve_functions,
                    );
                }
                match config.sandboxes.pool().sweep() {
                    Ok(gone) if !gone.is_empty() => {
                        log::debug!("pool sweep: destroyed sandboxes {gone:?}")
                    }
                    Ok(_) => {}
                    Err(e) => log::debug!("pool sweep: {e}"),
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no pool sweeper thread: {e}");
    }
}

/// The function a container runs, for the pool's policy and the metering record:
/// `io.trenv.function`, else its template, else CRI's image name, else what its process
/// is (its arguments and environment, i.e. its image's entrypoint and config).
pub fn function_of(annotations: &Annotations, spec: &Spec) -> String {
    if !annotations.function.is_empty() {
        return annotations.function.clone();
    }
    if let Some(t) = &annotations.template {
        return format!("template:{t}");
    }
    if !annotations.image.is_empty() {
        return annotations.image.clone();
    }
    let p = spec.process().as_ref();
    let what = serde_json::json!({
        "args": p.and_then(|p| p.args().clone()),
        "env": p.and_then(|p| p.env().clone()),
    });
    let digest = format!("{:x}", Sha256::digest(what.to_string().as_bytes()));
    format!("process:{}", &digest[..12])
}

/// Takes a sandbox for container `id`, if it takes part. A container that names a
/// network (`io.trenv.network`) must have a sandbox: it gets one of its own, destroyed at
/// its Delete, if it opted out of repurposing, and an error if it cannot have one.
pub fn take(
    id: &str,
    spec: &Spec,
    annotations: &Annotations,
    config: &Config,
    plan: &StartPlan,
) -> Result<Option<Held>, ttrpc::Error> {
    let network = annotations.network.as_deref();
    // Asked for by annotation, or by the node's config; a network needs a sandbox.
    let wanted = annotations.repurpose.unwrap_or(config.sandboxes.enabled);
    if !wanted && network.is_none() {
        return Ok(None);
    }
    let excluded = if *plan == StartPlan::Checkpoint {
        // A checkpoint's images bring their own network namespace's configuration.
        Some("it is restored from a checkpoint".to_string())
    } else {
        sandbox::eligible(spec).err().map(|e| e.to_string())
    };
    if let Some(why) = excluded {
        if let Some(n) = network {
            return Err(invalid(format!(
                "annotation {}={n}: the container cannot run in a sandbox: {why}",
                crate::annotations::NETWORK
            )));
        }
        log::debug!("container {id} runs in new namespaces: {why}");
        return Ok(None);
    }
    let tenant = annotations.tenant.to_string();
    let mut key = sandbox::compat_key(&tenant, spec, network);
    if !wanted {
        // A sandbox of its own: no idle one has this key.
        key = format!("{key}/{id}");
    }
    let function = function_of(annotations, spec);
    let pool = config.sandboxes.pool();
    let t = Take {
        want: Want {
            tenant: &tenant,
            key: &key,
            function: &function,
        },
        container: id,
        hostname: spec.hostname().as_deref(),
        domainname: spec.domainname().as_deref(),
        network,
    };
    let taken = pool.take(&t).and_then(|lease| match lease.pins.joinable() {
        Ok(j) => Ok((lease, j)),
        Err(e) => {
            pool.destroy(&lease.id);
            Err(e)
        }
    });
    match taken {
        Ok((lease, joinable)) => {
            log::debug!(
                "container {id} ({function}) runs in sandbox {} ({})",
                lease.id,
                match &lease.previous {
                    Some(p) => format!("repurposed; last ran {p}"),
                    None => "new".into(),
                }
            );
            Ok(Some(Held {
                pool,
                lease,
                joinable,
                keep: wanted,
            }))
        }
        Err(e) if network.is_some() => Err(rt(e)),
        Err(e) => {
            log::warn!("container {id} runs in new namespaces: no sandbox from the pool: {e}");
            Ok(None)
        }
    }
}

impl Container {
    /// How the container's sandbox came to it: "" (none), "new" or "repurposed", and the
    /// function that ran in it before.
    pub fn sandbox_origin(&self) -> (&'static str, String) {
        match self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            None => ("", String::new()),
            Some(h) => match &h.lease.previous {
                None => ("new", String::new()),
                Some(p) => ("repurposed", p.clone()),
            },
        }
    }

    /// Releases the container's sandbox (its processes are gone); once.
    pub fn release_sandbox(&self) {
        let held = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = held {
            h.release(&self.id);
        }
    }
}
