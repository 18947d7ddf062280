//! Signals to a container's processes: Kill (one process, or all of them), Pause and
//! Resume (the cgroup freezer), and the clean-up of an init's leftovers.

use containerd_shim::protos::ttrpc;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Container;
use crate::errors::{internal, invalid, precondition, rt};
use crate::process::State;

impl Container {
    pub fn pause(&self) -> Result<(), ttrpc::Error> {
        if self.init.state() != State::Running {
            return Err(precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        crate::runtime().pause(&self.at).map_err(rt)?;
        self.init
            .lock()
            .transition(State::Paused)
            .map_err(precondition)
    }

    pub fn resume(&self) -> Result<(), ttrpc::Error> {
        if self.init.state() != State::Paused {
            return Err(precondition(format!("container {} is not paused", self.id)));
        }
        crate::runtime().resume(&self.at).map_err(rt)?;
        self.init
            .lock()
            .transition(State::Running)
            .map_err(precondition)
    }

    /// Signals one process, or with `all` every process of the container.
    pub fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), ttrpc::Error> {
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| invalid(format!("invalid signal {signal}")))?;
        let p = self.process(exec_id)?;
        if all && exec_id.is_empty() {
            self.signal_all(sig);
            // A paused container only dies once thawed.
            if self.init.state() == State::Paused && sig == Signal::SIGKILL {
                let _ = self.resume();
            }
            return Ok(());
        }
        let (pid, state, reaped) = {
            let g = p.lock();
            (g.pid, g.state, g.reaped)
        };
        let finished = || {
            crate::errors::not_found(format!(
                "process {} of container {} (already finished)",
                if exec_id.is_empty() { "init" } else { exec_id },
                self.id
            ))
        };
        // A reaped process whose exit is still held back for its output is finished too
        // (its pid may already be another process's), as runc's shim answers.
        if state == State::Stopped || pid == 0 || reaped {
            return Err(finished());
        }
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) => {}
            // Exited between the check and the signal, not yet reaped.
            Err(nix::errno::Errno::ESRCH) => return Err(finished()),
            Err(e) => return Err(internal(format!("sending {sig} to pid {pid}: {e}"))),
        }
        // A frozen process only dies once thawed (runc resumes a paused container on
        // SIGKILL too).
        if exec_id.is_empty() && sig == Signal::SIGKILL && self.init.state() == State::Paused {
            let _ = self.resume();
        }
        Ok(())
    }

    /// After init exited: without a PID namespace of its own nothing else ends the
    /// container's other processes; kill them like runc's shim does.
    pub fn reap_leftovers(&self) {
        if !self.own_pid_ns {
            self.signal_all(Signal::SIGKILL);
        }
    }

    /// Sends `sig` to every process in the container's cgroup.
    fn signal_all(&self, sig: Signal) {
        if let Some(cg) = self.cgroup.get()
            && let Ok(pids) = cg.pids()
        {
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
    }
}
