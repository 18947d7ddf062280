//! Metering: each invocation (an init or an exec) is metered from just before it runs to
//! its exit; its record is written once Wait callers have their answer.

use trenv_meter::record::Identity;
use trenv_runtime::metering::{Meter, MeterConfig};

use super::{AfterExit, Ending, Hook, Invocation};

pub struct MeterHook {
    /// `None`: metering is off.
    pub config: Option<MeterConfig>,
    /// The containerd namespace of this shim's containers.
    pub namespace: String,
    /// containerd's gRPC socket (the shim's `-address`), asked for the image of containers
    /// whose spec does not name it; empty: not asked.
    pub containerd: String,
}

/// How long a record waits for its container's image to be looked up (image_of.rs).
const IMAGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl MeterHook {
    fn start(&self, inv: &Invocation<'_>) -> Option<Meter> {
        let c = inv.container;
        let mut config = self.config.clone()?;
        if let Some(interval) = c.annotations.meter_interval {
            config.interval = interval;
        }
        let cg = c.cgroup.get()?;
        let (sandbox, previous_function) = c.sandbox_origin();
        let identity = Identity {
            start: match &c.plan {
                crate::container::StartPlan::Cold => "cold",
                crate::container::StartPlan::Checkpoint => "checkpoint",
                crate::container::StartPlan::Template(_) => "template",
            }
            .into(),
            sandbox: sandbox.into(),
            previous_function,
            reserve: c.from_reserve,
            container_id: c.id.clone(),
            sandbox_id: c.annotations.sandbox_id.clone(),
            image: c.annotations.image.clone(),
            function: c.annotations.function.clone(),
            namespace: self.namespace.clone(),
            exec_id: inv.process.exec_id.clone(),
        };
        match Meter::start(identity, cg, &config) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!("no metering for {}: {e}", c.id);
                None
            }
        }
    }
}

impl Hook for MeterHook {
    /// The meter is in place before the process runs: it may exit at once.
    fn before_start(
        &self,
        inv: &Invocation<'_>,
    ) -> Result<(), containerd_shim::protos::ttrpc::Error> {
        inv.process.lock().meter = self.start(inv);
        Ok(())
    }

    fn start_failed(&self, inv: &Invocation<'_>) {
        inv.process.lock().meter = None;
    }

    /// Reads the counters while the cgroup exists; the record is written afterwards.
    fn exited(&self, inv: &Invocation<'_>, ending: &Ending) -> Option<AfterExit> {
        let (meter, stamp) = {
            let mut g = inv.process.lock();
            (g.meter.take(), g.exec_stamp.take())
        };
        let execed = stamp.and_then(|s| s.read());
        let measured = meter?.finish(
            inv.process.pid(),
            ending.code as u32,
            execed,
            ending.at,
            ending.at_wall,
        );
        let id = inv.container.id.clone();
        let image_of = inv.container.image_of.clone();
        let mut measured = measured;
        Some(Box::new(move || {
            if measured.record.identity.image.is_empty() {
                measured.record.identity.image = image_of.wait(IMAGE_PATIENCE);
            }
            match measured.write() {
                Ok(w) => {
                    if let Some(e) = w.series_lost {
                        log::warn!("metering series of {id}: {e}");
                    }
                }
                Err(e) => log::error!("metering record of {id} lost: {e}"),
            }
        }))
    }

    /// The image of a container whose spec does not name it is asked of containerd now,
    /// off the start path; the records take it when they are written.
    fn started(&self, inv: &Invocation<'_>, _pid: i32) {
        let c = inv.container;
        if inv.is_init()
            && self.config.is_some()
            && c.annotations.image.is_empty()
            && !self.containerd.is_empty()
        {
            c.image_of.look_up(&self.containerd, &self.namespace, &c.id);
        }
    }
}
