//! Start of a container's init: a cold start releases the process created at Create; a
//! template's restore continues the tree restored (stopped) at Create; a containerd
//! checkpoint is restored now by CRIU, as runc's shim does.

use std::fs;
use std::path::PathBuf;

use containerd_shim::protos::ttrpc;
use trenv_runtime::ChildFds;
use trenv_runtime::snapshot::RestorePlan;
use trenv_runtime::snapshot::restore::continue_tree;

use super::create::RESTORE_WORK;
use super::stdio::finish_io;
use super::{Container, PendingRestore, StartPlan};
use crate::errors::{precondition, rt, stdio};
use crate::io::ConsoleSocket;
use crate::process::State;
use crate::stamp::{EXEC_WITHIN, wait_for_exec};

/// Exit status reported for a process that never started (as runc's shim does for a task
/// deleted before Start: killed).
pub const NEVER_STARTED: u32 = 128 + libc::SIGKILL as u32;

impl Container {
    /// Starts the init process; its pid.
    pub fn start_init(&self) -> Result<i32, ttrpc::Error> {
        let state = self.init.state();
        if state != State::Created {
            return Err(precondition(format!(
                "container {} cannot be started: it is {state:?}",
                self.id
            )));
        }
        let pending = self
            .pending_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(pending) = pending {
            // containerd's checkpoint: restored now, as runc's shim does.
            let pid = self.restore_init(pending)?;
            self.init.lock().started(pid);
            return Ok(pid);
        }
        if let StartPlan::Template(_) = self.plan {
            // Restored at Create and left stopped there (`restore_at_create`).
            let pid = self.init.pid();
            continue_tree(pid).map_err(rt)?;
            self.init.lock().started(pid);
            return Ok(pid);
        }
        let watcher = self.init.lock().exec_stamp.as_ref().map(|s| s.watcher());
        crate::runtime().start(&self.at).map_err(rt)?;
        // Answered once the program runs, not while the init is still the shim's fork.
        if let Some(Ok(w)) = watcher
            && !wait_for_exec(&w, EXEC_WITHIN)
        {
            log::warn!(
                "container {}: its init did not exec its program within {EXEC_WITHIN:?} of Start",
                self.id
            );
        }
        let mut g = self.init.lock();
        let pid = g.pid;
        g.started(pid);
        Ok(pid)
    }

    /// A template's restore, at Create: the restored tree is left stopped until Start
    /// continues it, so that Create answers with a real process whose namespaces a client
    /// can use before Start (faasd attaches its network to `/proc/PID/ns/net` between the
    /// two), as for a cold start. A failure leaves nothing behind.
    pub(super) fn restore_at_create(&self) -> Result<(), ttrpc::Error> {
        let pending = self
            .pending_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut pending) = pending else {
            return Ok(());
        };
        pending.plan.stopped = true;
        pending.plan.cgroup_procs = self.cgroup.prepared();
        self.restore_init(pending).map(|_| ()).inspect_err(|_| {
            let _ = self.destroy();
        })
    }

    /// CRIU restores the processes of a container created from a checkpoint or template;
    /// the restored init's pid (recorded; the caller marks it started).
    fn restore_init(&self, pending: PendingRestore) -> Result<i32, ttrpc::Error> {
        let paths = self.init.stdio.clone();
        let (console, child) = if paths.terminal {
            (
                Some(ConsoleSocket::new().map_err(stdio)?),
                [None, None, None],
            )
        } else {
            (None, pending.child)
        };
        let console_socket = console.as_ref().map(|c| c.path().to_path_buf());
        let watchdog = SlowRestore::watch(&self.id, pending.plan.work.join("restore.log"));
        let restored = crate::runtime().restore(
            &self.at,
            &pending.plan,
            console_socket,
            ChildFds::stdio(&child),
            &self.criu,
        );
        drop((child, watchdog));
        let restored = restored.map_err(rt)?;
        let pid = restored.pid;
        log::info!("restored {} (pid {pid}): {}", self.id, restored.phases);
        remove_leftovers(&pending.plan, pending.extracted);
        let io = match console {
            Some(c) => finish_io(&paths, None, Some(c))?,
            None => None,
        };
        let mut g = self.init.lock();
        g.pid = pid;
        if let Some(io) = io {
            g.io = Some(io);
        }
        Ok(pid)
    }
}

/// CRIU's work directory, and containerd's extraction of the checkpoint (`extracted`), are
/// of no more use; removing them need not delay Start's answer.
fn remove_leftovers(plan: &RestorePlan, extracted: bool) {
    let leftovers: Vec<PathBuf> = [(&plan.work, RESTORE_WORK)]
        .into_iter()
        .filter(|(dir, name)| dir.ends_with(name))
        .map(|(dir, _)| dir.clone())
        .chain(extracted.then(|| plan.images.clone()))
        .collect();
    if leftovers.is_empty() {
        return;
    }
    let remove = move || {
        for dir in &leftovers {
            let _ = fs::remove_dir_all(dir);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("restore-cleanup".into())
        .spawn(remove.clone())
    {
        log::debug!("no clean-up thread ({e}): removing restore leftovers now");
        remove();
    }
}

/// Says in the log when a restore takes far longer than restores do (a few hundred ms at
/// most), with the end of CRIU's log, so a stuck CRIU can be told from a slow one.
struct SlowRestore {
    /// Dropped when the restore answered: the watcher ends.
    _done: Option<std::sync::mpsc::Sender<()>>,
}

impl SlowRestore {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(5);

    fn watch(id: &str, log: PathBuf) -> SlowRestore {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let id = id.to_string();
        let spawned = std::thread::Builder::new()
            .name("slow-restore".into())
            .spawn(move || {
                let mut waited = std::time::Duration::ZERO;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Self::AFTER)
                {
                    waited += Self::AFTER;
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    log::warn!(
                        "restoring {id} has taken {} s so far; the end of CRIU's log {} \
                         (CRIU logs each step with [criu] restore_log_level = 3 or 4):\n{}",
                        waited.as_secs(),
                        log.display(),
                        lines[lines.len().saturating_sub(8)..].join("\n")
                    );
                }
            });
        SlowRestore {
            _done: spawned.is_ok().then_some(done),
        }
    }
}
