//! One process of a container (its init, or an exec) as containerd sees it.

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

impl State {
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
}

/// A process; its state changes under one lock and waiters are woken on exit.
pub struct Process {
    pub exec_id: String,
    pub stdio: StdioPaths,
    inner: Mutex<Inner>,
    exited: Condvar,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            inner: Mutex::new(Inner {
                pid: 0,
                state: State::Created,
                exit: None,
                io: None,
                spec,
                meter: None,
                exec_stamp: None,
                mount_ns: None,
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

    /// Records the exit and wakes every waiter.
    pub fn set_exited(&self, status: u32, at: Timestamp) {
        let mut g = self.lock();
        g.state = State::Stopped;
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
