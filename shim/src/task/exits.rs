//! Process exits: every exit the shim reaps is matched to its process (or kept a while if
//! the process is not known yet), and reported in order with the hooks around it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use containerd_shim::monitor::{Subject, Topic, monitor_subscribe};
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::TASK_EXIT_EVENT_TOPIC;

use super::Inner;
use crate::container::Container;
use crate::hooks::{Ending, Invocation};
use crate::process::{Process, State, timestamp};

impl Inner {
    /// Finds the process with this pid.
    pub(super) fn find(&self, pid: i32) -> Option<(Arc<Container>, Arc<Process>)> {
        let live = |p: &Process| {
            let g = p.lock();
            g.pid == pid && g.state != State::Stopped && !g.reaped
        };
        for c in self.containers().values() {
            if live(&c.init) {
                return Some((c.clone(), c.init.clone()));
            }
            for p in c.execs().values() {
                if live(p) {
                    return Some((c.clone(), p.clone()));
                }
            }
        }
        None
    }

    /// Reports an exit: the hooks' `exiting` (OOM before exit, the autotuner stopped),
    /// the output drained, TaskExit, the hooks' `exited`, then Wait callers are woken and
    /// what the hooks left for afterwards runs (the metering record).
    pub(super) fn exited(self: &Arc<Self>, c: Arc<Container>, p: Arc<Process>, code: i32) {
        // From now on Kill must not signal its pid (see container/signal.rs).
        p.lock().reaped = true;
        let this = self.clone();
        // When it exited, which may be a little before now.
        let ended = self
            .exit_clock
            .as_ref()
            .and_then(|clock| clock.take(p.pid()))
            .unwrap_or_else(Instant::now);
        let ending = Ending {
            code,
            at: ended,
            at_wall: std::time::SystemTime::now() - ended.elapsed(),
        };
        let at = timestamp(ending.at_wall);
        *self
            .exits_in_flight
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += 1;
        let spawned = thread::Builder::new().name("exit".into()).spawn(move || {
            let inv = Invocation {
                container: &c,
                process: &p,
            };
            if inv.is_init() {
                // First end what holds the container's stdio open, then drain it.
                c.reap_leftovers();
            }
            this.hooks.exiting(&inv);
            if let Some(io) = p.lock().io.as_ref().map(|io| io.waiter()) {
                io.wait(Duration::from_millis(500));
            }
            this.events.publish(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: c.id.clone(),
                    id: if inv.is_init() {
                        c.id.clone()
                    } else {
                        p.exec_id.clone()
                    },
                    pid: p.pid() as u32,
                    exit_status: code as u32,
                    exited_at: MessageField::some(at.clone()),
                    ..Default::default()
                }),
            );
            let after = this.hooks.exited(&inv, &ending);
            // Let the mount namespace go before anyone is told (Delete may follow at once).
            drop(p.lock().mount_ns.take());
            p.set_exited(code as u32, at);
            after.into_iter().for_each(|f| f());
            this.exit_done();
        });
        if let Err(e) = spawned {
            log::error!("cannot spawn the exit handler: {e}");
            self.exit_done();
        }
    }

    fn exit_done(&self) {
        let (count, cv) = &self.exits_in_flight;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        cv.notify_all();
    }

    /// Waits (at most `timeout`) until no exit is being handled.
    pub(super) fn wait_exits(&self, timeout: Duration) {
        let (count, cv) = &self.exits_in_flight;
        let guard = count.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout_while(guard, timeout, |n| *n > 0);
    }

    pub(super) fn watch_exits(self: Arc<Self>) {
        let sub = match monitor_subscribe(Topic::Pid) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch process exits: {e}");
                return;
            }
        };
        thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for ev in sub.rx.iter() {
                    let Subject::Pid(pid) = ev.subject else {
                        continue;
                    };
                    let mut unclaimed = self.unclaimed();
                    match self.find(pid) {
                        Some((c, p)) => {
                            drop(unclaimed);
                            self.exited(c, p, ev.exit_code);
                        }
                        None => {
                            // A worker's child we do not know yet (an exec whose start is
                            // still returning) or one we never will: keep it for a while.
                            unclaimed.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(60));
                            unclaimed.insert(pid, (ev.exit_code, Instant::now()));
                        }
                    }
                }
            })
            .expect("spawning the exit watcher");
    }

    /// Called with a freshly learnt pid: reports its exit if that already happened.
    pub(super) fn claim(self: &Arc<Self>, c: &Arc<Container>, p: &Arc<Process>, pid: i32) {
        if let Some(clock) = &self.exit_clock {
            clock.watch(pid);
        }
        if p.exec_id.is_empty() && pid > 0 {
            p.lock().mount_ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).ok();
        }
        let kept = self.unclaimed().remove(&pid);
        if let Some(code) = its_exit(kept, p.since) {
            self.exited(c.clone(), p.clone(), code);
        } else if kept.is_some() {
            log::info!(
                "pid {pid}: an exit reaped before this process existed ignored (another process had the pid)"
            );
        }
    }

    /// A process runs as `pid`: the hooks' `started`, then its exit is watched for.
    pub(super) fn started(self: &Arc<Self>, c: &Arc<Container>, p: &Arc<Process>, pid: i32) {
        let inv = Invocation {
            container: c,
            process: p,
        };
        self.hooks.started(&inv, pid);
        self.claim(c, p, pid);
    }
}

/// The exit code of a process created at `since` from the exit `kept` under its pid (code,
/// when it was reaped), if that exit is its own. An exit reaped before the process existed
/// was another process's, whose pid the kernel has since given to this one: the shim's own
/// helpers (CNI plugins, trenv's CLI, logging programs) exit unclaimed too, and pids wrap
/// around quickly on a busy node (32768 by default).
fn its_exit(kept: Option<(i32, Instant)>, since: Instant) -> Option<i32> {
    kept.filter(|(_, reaped)| *reaped >= since)
        .map(|(code, _)| code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_reaped_before_the_process_existed_is_not_its_own() {
        let before = Instant::now();
        let since = before + Duration::from_millis(5);
        let after = since + Duration::from_millis(5);
        assert_eq!(its_exit(Some((137, before)), since), None);
        assert_eq!(its_exit(Some((3, after)), since), Some(3));
        assert_eq!(its_exit(Some((0, since)), since), Some(0));
        assert_eq!(its_exit(None, since), None);
    }
}
