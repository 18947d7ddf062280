//! OOM events: the kernel's OOM kills in a container's cgroup reported as TaskOOM, always
//! before the TaskExit of the process they killed.

use std::sync::Arc;

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC;

use super::{Hook, Invocation};
use crate::container::{Container, StartPlan};
use crate::events::Events;

pub struct OomHook {
    pub events: Events,
}

impl OomHook {
    /// Publishes TaskOOM if the kernel killed something since the last report.
    fn check(&self, c: &Container) {
        check(&self.events, c)
    }

    /// Watches the container's cgroup for OOM events in a thread of its own.
    fn watch(&self, c: &Arc<Container>) {
        let Some(watcher) = c.cgroup.get().and_then(|cg| match cg.watch_oom() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("no OOM events for container {}: {e}", c.id);
                None
            }
        }) else {
            return;
        };
        let events = self.events.clone();
        let c = c.clone();
        let _ = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || {
                let dir = c.cgroup.get().and_then(|cg| cg.memory_dir());
                while watcher.wait() {
                    if dir.as_ref().is_some_and(|d| !d.exists()) {
                        break;
                    }
                    check(&events, &c);
                }
            });
    }
}

fn check(events: &Events, c: &Container) {
    let Some(kills) = c.cgroup.get().and_then(|cg| cg.oom_kills()) else {
        return;
    };
    let mut reported = c.oom_reported.lock().unwrap_or_else(|e| e.into_inner());
    if kills > *reported {
        *reported = kills;
        events.publish(
            TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            }),
        );
    }
}

impl Hook for OomHook {
    /// A restored container's cgroup exists only once Start restored it.
    fn created(&self, c: &Arc<Container>) {
        if !c.restores_at_start() {
            self.watch(c);
        }
    }

    fn started(&self, inv: &Invocation<'_>, _pid: i32) {
        if inv.is_init() && inv.container.plan != StartPlan::Cold {
            self.watch(inv.container);
        }
    }

    /// TaskOOM goes out before the TaskExit of what it killed.
    fn exiting(&self, inv: &Invocation<'_>) {
        self.check(inv.container);
    }
}
