//! Memory autotuning: a container annotated with a hull has its memory limit follow the
//! hull's upscaling hull from its init's start to its exit.

use std::time::Instant;

use containerd_shim::protos::ttrpc;
use trenv_runtime::metering::Autotuner;

use super::{Hook, Invocation};
use crate::errors::precondition;

pub struct AutotuneHook;

impl Hook for AutotuneHook {
    /// In place before the init runs: it sets the hull's first limit.
    fn before_start(&self, inv: &Invocation<'_>) -> Result<(), ttrpc::Error> {
        let c = inv.container;
        if !inv.is_init() {
            return Ok(());
        }
        if let (Some(hull), Some(cg)) = (&c.annotations.hull, c.cgroup.get()) {
            let tuner = Autotuner::start(cg, hull.clone(), Instant::now(), c.memory_limit)
                .map_err(|e| precondition(format!("memory autotuning: {e}")))?;
            *c.autotuner.lock().unwrap_or_else(|e| e.into_inner()) = Some(tuner);
        }
        Ok(())
    }

    fn start_failed(&self, inv: &Invocation<'_>) {
        if inv.is_init()
            && let Some(t) = inv
                .container
                .autotuner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        {
            t.stop();
        }
    }

    fn exiting(&self, inv: &Invocation<'_>) {
        let c = inv.container;
        if !inv.is_init() {
            return;
        }
        if let Some(t) = c.autotuner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let report = t.stop();
            log::info!(
                "container {}: memory limit followed the hull with {} changes ({} refused)",
                c.id,
                report.changes.len(),
                report.refused
            );
        }
    }
}
