//! The per-invocation work attached to a process's lifecycle: metering ([`meter`]),
//! memory autotuning along a hull ([`autotune`]), OOM events ([`oom`]) and templates made
//! when a function is ready ([`ready_template`]). The task service calls the one
//! [`Hooks`] list at each step of a process's life; new work (returning a sandbox to the
//! idle pool) is one more [`Hook`].
//!
//! The steps, in order: [`Hook::created`] (a container's Create answered),
//! [`Hook::before_start`] (may refuse the start), then either [`Hook::start_failed`] or
//! [`Hook::started`]; at the exit [`Hook::exiting`] (before its output is drained and
//! TaskExit published) and [`Hook::exited`] (after TaskExit, before Wait callers are
//! woken; what it returns runs after they were).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use containerd_shim::protos::ttrpc;

use crate::container::Container;
use crate::process::Process;

pub mod autotune;
pub mod meter;
pub mod oom;
pub mod ready_template;

/// One process's invocation: the container and the process (its init or an exec).
pub struct Invocation<'a> {
    pub container: &'a Arc<Container>,
    pub process: &'a Arc<Process>,
}

impl Invocation<'_> {
    /// The container's init process (not an exec).
    pub fn is_init(&self) -> bool {
        self.process.exec_id.is_empty()
    }
}

/// How a process ended.
pub struct Ending {
    pub code: i32,
    /// When it exited (possibly a little before it was reported).
    pub at: Instant,
    pub at_wall: SystemTime,
}

/// Work to do after Wait callers were woken (e.g. writing a metering record).
pub type AfterExit = Box<dyn FnOnce() + Send>;

/// Work attached to the lifecycle of a container's processes.
pub trait Hook: Send + Sync {
    /// The container was created (its init exists unless a containerd checkpoint is
    /// restored at Start).
    fn created(&self, _c: &Arc<Container>) {}
    /// The process is about to start; an error refuses the start.
    fn before_start(&self, _inv: &Invocation<'_>) -> Result<(), ttrpc::Error> {
        Ok(())
    }
    /// The start failed after `before_start` succeeded: undo it.
    fn start_failed(&self, _inv: &Invocation<'_>) {}
    /// The process runs as `pid`.
    fn started(&self, _inv: &Invocation<'_>, _pid: i32) {}
    /// The process exited; its output is not drained yet.
    fn exiting(&self, _inv: &Invocation<'_>) {}
    /// TaskExit is published; the process is not yet marked exited.
    fn exited(&self, _inv: &Invocation<'_>, _ending: &Ending) -> Option<AfterExit> {
        None
    }
}

/// The hooks, called in order.
pub struct Hooks(Vec<Box<dyn Hook>>);

impl Hooks {
    pub fn new(hooks: Vec<Box<dyn Hook>>) -> Hooks {
        Hooks(hooks)
    }

    pub fn created(&self, c: &Arc<Container>) {
        self.0.iter().for_each(|h| h.created(c));
    }

    /// Every hook's `before_start`; if one refuses, those before it are undone.
    pub fn before_start(&self, inv: &Invocation<'_>) -> Result<(), ttrpc::Error> {
        for (i, h) in self.0.iter().enumerate() {
            if let Err(e) = h.before_start(inv) {
                self.0[..i].iter().for_each(|h| h.start_failed(inv));
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn start_failed(&self, inv: &Invocation<'_>) {
        self.0.iter().for_each(|h| h.start_failed(inv));
    }

    pub fn started(&self, inv: &Invocation<'_>, pid: i32) {
        self.0.iter().for_each(|h| h.started(inv, pid));
    }

    pub fn exiting(&self, inv: &Invocation<'_>) {
        self.0.iter().for_each(|h| h.exiting(inv));
    }

    pub fn exited(&self, inv: &Invocation<'_>, ending: &Ending) -> Vec<AfterExit> {
        self.0
            .iter()
            .filter_map(|h| h.exited(inv, ending))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Log(&'static str, Arc<Mutex<Vec<String>>>, bool);

    impl Hook for Log {
        fn before_start(&self, _inv: &Invocation<'_>) -> Result<(), ttrpc::Error> {
            self.1.lock().unwrap().push(format!("{} before", self.0));
            if self.2 {
                return Err(crate::errors::precondition("refused"));
            }
            Ok(())
        }
        fn start_failed(&self, _inv: &Invocation<'_>) {
            self.1.lock().unwrap().push(format!("{} undone", self.0));
        }
    }

    #[test]
    fn a_refused_start_undoes_the_hooks_before_it_only() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let hooks = Hooks::new(vec![
            Box::new(Log("a", log.clone(), false)),
            Box::new(Log("b", log.clone(), true)),
            Box::new(Log("c", log.clone(), false)),
        ]);
        let c = crate::container::test_support::container("c1");
        let inv = Invocation {
            container: &c,
            process: &c.init,
        };
        assert!(inv.is_init());
        assert!(hooks.before_start(&inv).is_err());
        assert_eq!(
            *log.lock().unwrap(),
            vec!["a before", "b before", "a undone"]
        );
    }
}
