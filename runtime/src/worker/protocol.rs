//! What the shim's side of the zygote ([`crate::Runtime`]) asks a worker, and what the
//! worker answers. Private to the runtime: the shim calls typed methods instead.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::Location;
use crate::container::create::NewContainer;
use crate::container::exec::NewProcess;
use crate::container::rootfs::Mount;
use crate::snapshot::{CheckpointOptions, CriuConfig, Phases, RestorePlan};
use crate::template::ready::ReadyTemplate;

/// Which of the request's file descriptors is the process's stdin, stdout and stderr
/// (indexes into the descriptors passed with the request). `None` means /dev/null.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StdioSlots {
    pub stdin: Option<usize>,
    pub stdout: Option<usize>,
    pub stderr: Option<usize>,
    /// A pipe into which the process writes CLOCK_MONOTONIC (nanoseconds, 8 bytes, native
    /// endian) just before it execs its program: where an invocation's metered time starts.
    pub exec_stamp: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Create {
        container: NewContainer,
        stdio: StdioSlots,
    },
    Start {
        at: Location,
    },
    Exec {
        process: NewProcess,
        stdio: StdioSlots,
    },
    Pause {
        at: Location,
    },
    Resume {
        at: Location,
    },
    Delete {
        at: Location,
        unmount_rootfs: bool,
    },
    /// Dumps the container with CRIU into `images`.
    Checkpoint {
        at: Location,
        images: PathBuf,
        work: PathBuf,
        options: CheckpointOptions,
        criu: CriuConfig,
    },
    /// Create of a container restored from a checkpoint: mounts the rootfs and records
    /// the spec; the processes come at [`Request::Restore`].
    PrepareRestore {
        at: Location,
        rootfs: Vec<Mount>,
        sandbox: Option<crate::sandbox::Joinable>,
        scratch: Option<crate::container::rootfs::Scratch>,
    },
    /// Start of such a container: CRIU restores its processes.
    Restore {
        at: Location,
        plan: RestorePlan,
        console_socket: Option<PathBuf>,
        stdio: StdioSlots,
        criu: CriuConfig,
    },
    /// Makes a template of the running container (its `io.trenv.template.create`), in
    /// the store and pool of trenv's config.
    MakeTemplate {
        at: Location,
        template: ReadyTemplate,
        criu: CriuConfig,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Pid(i32),
    Done,
    /// A restored container's Create is done (rootfs, derived spec): where it spent its
    /// time in the worker.
    Prepared(Phases),
    /// A restored init and where the restore spent its time.
    Restored {
        pid: i32,
        phases: Phases,
    },
    /// A template was made: one line on what it holds.
    Template(String),
}

impl Reply {
    /// The reply's name, for a protocol error.
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Pid(_) => "a pid",
            Reply::Done => "done",
            Reply::Prepared(_) => "a prepared restore",
            Reply::Restored { .. } => "a restore",
            Reply::Template(_) => "a template",
        }
    }
}
