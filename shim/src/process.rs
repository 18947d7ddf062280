//! One process of a container (its init, or an exec) as containerd sees it, and its
//! lifecycle: states change only along the transitions containerd's task model allows
//! ([`State::can_become`]); any other is an error naming both states.

use std::sync::{Condvar, Mutex, MutexGuard};

use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;

use crate::io::{ProcessIo, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

/// A state change the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid state transition: {from:?} => {to:?}")]
pub struct InvalidTransition {
    pub from: State,
    pub to: State,
}

impl State {
    /// Created → Running (Start) or Stopped (never started, or exited before Start
    /// answered); Running ⇄ Paused; Running or Paused → Stopped (exit). Stopped is final.
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Created, Running)
                | (Created, Stopped)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopped)
                | (Paused, Stopped)
        )
    }

    pub fn status(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped => Status::STOPPED,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

impl Exit {
    pub fn at_field(&self) -> MessageField<Timestamp> {
        MessageField::some(self.at.clone())
    }
}

pub struct Inner {
    pub pid: i32,
    pub state: State,
    pub exit: Option<Exit>,
    pub io: Option<ProcessIo>,
    /// For an exec not yet started: its OCI process as JSON.
    pub spec: Vec<u8>,
    /// The running invocation's meter.
    pub meter: Option<trenv_runtime::metering::Meter>,
    /// Where the process says when it exec'ed its program.
    pub exec_stamp: Option<crate::stamp::ExecStamp>,
    /// The init's mount namespace, held so that its teardown happens when the shim lets go
    /// of it after the exit, not inside the exiting process (where it delays the exit).
    pub mount_ns: Option<std::fs::File>,
    /// The process has been reaped: its pid is no longer its own (and may be reused), even
    /// while its exit is still held back for its output (it is Stopped only once reported).
    pub reaped: bool,
}

/// A process; its state changes under one lock and waiters are woken on exit.
pub struct Process {
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// Before the process itself was spawned (or restored): an exit reaped earlier under
    /// the same pid was another process's (task/exits.rs).
    pub since: std::time::Instant,
    inner: Mutex<Inner>,
    exited: Condvar,
}

impl Inner {
    /// Moves to `to` if the lifecycle allows it.
    pub fn transition(&mut self, to: State) -> Result<(), InvalidTransition> {
        if !self.state.can_become(to) {
            return Err(InvalidTransition {
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }

    /// Start answered with `pid`: Running, unless the process already exited (its exit
    /// may be reported before Start returns), which stays Stopped.
    pub fn started(&mut self, pid: i32) {
        self.pid = pid;
        if self.state == State::Created {
            self.state = State::Running;
        }
    }
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            since: std::time::Instant::now(),
            inner: Mutex::new(Inner {
                pid: 0,
                state: State::Created,
                exit: None,
                io: None,
                spec,
                meter: None,
                exec_stamp: None,
                mount_ns: None,
                reaped: false,
            }),
            exited: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Records the exit and wakes every waiter. A second exit of the same process (a
    /// process that never ran, then deleted) keeps the first.
    pub fn set_exited(&self, status: u32, at: Timestamp) {
        let mut g = self.lock();
        if g.transition(State::Stopped).is_err() {
            return;
        }
        g.exit = Some(Exit { status, at });
        self.exited.notify_all();
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut g = self.lock();
        while g.exit.is_none() {
            g = self.exited.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.exit.clone().unwrap_or_default()
    }
}

pub fn now() -> Timestamp {
    timestamp(std::time::SystemTime::now())
}

pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_task_models_transitions_are_allowed() {
        use State::*;
        let all = [Created, Running, Paused, Stopped];
        let allowed: Vec<(State, State)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Created, Running),
                (Created, Stopped),
                (Running, Paused),
                (Running, Stopped),
                (Paused, Running),
                (Paused, Stopped),
            ]
        );
    }

    #[test]
    fn an_invalid_transition_names_both_states() {
        let p = Process::new("", StdioPaths::default(), Vec::new());
        let e = p.lock().transition(State::Paused).unwrap_err();
        assert_eq!(e.to_string(), "invalid state transition: Created => Paused");
        p.set_exited(137, now());
        p.set_exited(0, now());
        assert_eq!(p.wait().status, 137);
        assert_eq!(
            p.lock().transition(State::Running).unwrap_err().to_string(),
            "invalid state transition: Stopped => Running"
        );
    }
}
