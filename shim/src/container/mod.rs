//! A container served by this shim: its init process, its execs and its cgroup. One file
//! per verb: [`create`] (the Create path as named steps, ending in a [`StartPlan`]),
//! [`start`] (cold start or restore), [`exec`], [`signal`] (kill, pause, resume),
//! [`checkpoint`], [`delete`]; [`stdio`] sets up a process's stdio.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use containerd_shim::protos::ttrpc;
use oci_spec::runtime::LinuxResources;
use trenv_runtime::config::Config;
use trenv_runtime::container::Location;
use trenv_runtime::container::cgroup::Cgroup;
use trenv_runtime::snapshot::{CriuConfig, RestorePlan};

use crate::annotations::Annotations;
use crate::io::ChildStdio;
use crate::options::RuntimeOptions;
use crate::process::Process;

pub mod checkpoint;
pub mod create;
pub mod delete;
pub mod exec;
mod reserved;
pub mod sandbox;
pub mod signal;
pub mod start;
mod stdio;

pub use start::NEVER_STARTED;

pub struct Container {
    pub id: String,
    /// Where libcontainer keeps its state: containerd's bundle, or for a container that
    /// took a reserve's instance, the instance's directory (shim/src/reserve.rs).
    pub at: Location,
    /// containerd's bundle of the container (its log FIFO, its State).
    bundle: PathBuf,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    pub cgroup: LazyCgroup,
    mounted_rootfs: bool,
    /// The container has a PID namespace of its own (its processes die with init).
    own_pid_ns: bool,
    /// The spec's memory limit: autotuning never raises the limit above it.
    pub memory_limit: Option<u64>,
    /// OOM kills already reported to containerd.
    pub oom_reported: Mutex<u64>,
    /// What the spec's annotations ask of trenv.
    pub annotations: Annotations,
    /// The running autotuner of the init process.
    pub autotuner: Mutex<Option<trenv_runtime::metering::Autotuner>>,
    /// Which CRIU checkpoints and restores this container.
    pub criu: CriuConfig,
    /// How the init process starts.
    pub plan: StartPlan,
    /// Created from a checkpoint or template: what Start restores (taken by Start).
    pending_restore: Mutex<Option<PendingRestore>>,
    /// How long Create took in the shim (logged at Start).
    pub create_time: Mutex<Option<std::time::Duration>>,
    /// The pooled sandbox the container runs in (released at Delete).
    sandbox: Mutex<Option<sandbox::Held>>,
    /// The image, asked of containerd when the spec does not name it (metering records).
    pub image_of: Arc<crate::image_of::ImageOf>,
    /// A reserve's instance: the shim's ends of its stdio, until a container takes it
    /// (shim/src/reserve.rs).
    reserved_io: Mutex<Option<crate::io::ReservedPipes>>,
    /// A template restore the shim's reserve can keep instances of, for the next.
    pub reserve_source: Option<crate::reserve::Source>,
    /// The container took an instance from the reserve (metering records say so).
    pub from_reserve: bool,
}

/// How a container's init process starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// The image's entrypoint, created at Create and released at Start.
    Cold,
    /// Restored by CRIU from a checkpoint's images at Start.
    Checkpoint,
    /// Restored from a memory template at Create, left stopped, continued at Start.
    Template(String),
}

impl std::fmt::Display for StartPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPlan::Cold => write!(f, "cold"),
            StartPlan::Checkpoint => write!(f, "checkpoint"),
            StartPlan::Template(name) => write!(f, "template {name}"),
        }
    }
}

/// A container created from a checkpoint, waiting for Start to restore it.
struct PendingRestore {
    plan: RestorePlan,
    /// The restored process's end of its stdio pipes (none with a terminal).
    child: ChildStdio,
    /// The images are containerd's extraction of a checkpoint for this Create
    /// (`CreateTaskRequest.checkpoint`, a `ctrd-checkpoint*` temporary directory that
    /// containerd never removes, with runc.v2 as with trenv): removed after the restore.
    extracted: bool,
}

/// Where trenv's CRIU runs cache what they learnt (a tmpfs).
const CRIU_CACHE_DIR: &str = trenv_runtime::paths::RUN_DIR;

/// The CRIU to use: runc's `CriuPath` option, else trenv's configuration (`TRENV_CRIU`,
/// then the file), else `criu` on PATH.
fn criu_config(opts: &RuntimeOptions, config: &Config) -> CriuConfig {
    CriuConfig {
        binary: opts
            .criu_path
            .clone()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| config.criu.binary.clone()),
        cache_dir: Some(PathBuf::from(CRIU_CACHE_DIR)),
        restore_log_level: config.criu.restore_log_level,
    }
}

impl Container {
    pub fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The init process or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, ttrpc::Error> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs().get(exec_id).cloned().ok_or_else(|| {
            crate::errors::not_found(format!("exec {exec_id} of container {}", self.id))
        })
    }

    /// The container was created from a checkpoint or template and Start restores it.
    pub fn restores_at_start(&self) -> bool {
        self.pending_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub fn bundle(&self) -> &Path {
        &self.bundle
    }
}

/// The container's cgroup, opened in the background from Create on: libcgroups reads the
/// mount table once per v1 controller (1–1.6 ms here, more on hosts with many mounts) and
/// nothing in Create needs it. Its first user (Start's meter) waits for it. For a template
/// restore the same thread then makes the cgroup and applies the spec's limits
/// ([`Cgroup::prepare_join`]), while the rest of Create runs, so that the restore's CRIU
/// only has to join it.
pub struct LazyCgroup {
    cell: OnceLock<Opened>,
    opening: Mutex<Option<std::thread::JoinHandle<Opened>>>,
}

/// What the background thread made of the cgroup.
#[derive(Default)]
struct Opened {
    cgroup: Option<Cgroup>,
    /// Its `cgroup.procs` files, when it was prepared for a restore to join.
    procs: Option<Vec<PathBuf>>,
}

impl LazyCgroup {
    /// Opens the cgroup in the background; prepares it for a restore to join if
    /// `prepare` (with the spec's resources).
    fn open(
        path: Option<PathBuf>,
        id: &str,
        systemd: bool,
        prepare: Option<Option<LinuxResources>>,
    ) -> LazyCgroup {
        let id = id.to_string();
        let open = move || match Cgroup::open(path.as_deref(), &id, systemd) {
            Ok(cg) => {
                let procs = prepare.and_then(|r| match cg.prepare_join(r.as_ref()) {
                    Ok(procs) => procs,
                    // The worker opens it and applies the limits itself: an error the
                    // user must see is reported from there.
                    Err(e) => {
                        log::debug!("container {id}: cgroup not prepared for the restore: {e}");
                        None
                    }
                });
                Opened {
                    cgroup: Some(cg),
                    procs,
                }
            }
            Err(e) => {
                log::warn!("container {id}: no cgroup for stats, metering and OOM events: {e}");
                Opened::default()
            }
        };
        let lazy = LazyCgroup {
            cell: OnceLock::new(),
            opening: Mutex::new(None),
        };
        match std::thread::Builder::new()
            .name("cgroup-open".into())
            .spawn(open.clone())
        {
            Ok(handle) => *lazy.opening.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle),
            Err(_) => {
                let _ = lazy.cell.set(open());
            }
        }
        lazy
    }

    fn opened(&self) -> &Opened {
        self.cell.get_or_init(|| {
            let handle = self
                .opening
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            handle.and_then(|h| h.join().ok()).unwrap_or_default()
        })
    }

    /// The cgroup, once opened; `None` if it could not be.
    pub fn get(&self) -> Option<&Cgroup> {
        self.opened().cgroup.as_ref()
    }

    /// The `cgroup.procs` files of the cgroup prepared for a restore, once it is.
    pub fn prepared(&self) -> Option<Vec<PathBuf>> {
        self.opened().procs.clone()
    }

    /// Removes the cgroup made for a restore whose Create failed before anything ran in
    /// it (nothing else would: the container's Delete never comes). A restore that did
    /// run removed its own (the worker's cleanup, or Delete).
    pub fn undo_prepared(&self) {
        if let Some(procs) = &self.opened().procs {
            trenv_runtime::container::cgroup::unprepare(procs);
        }
    }
}

#[cfg(test)]
pub mod test_support {
    use super::*;
    use crate::io::StdioPaths;

    /// A container record with no kernel objects behind it (no cgroup, nothing mounted).
    pub fn container(id: &str) -> Arc<Container> {
        Arc::new(Container {
            id: id.into(),
            at: Location::new(id, Path::new("/nonexistent/bundle")),
            bundle: PathBuf::from("/nonexistent/bundle"),
            init: Arc::new(Process::new("", StdioPaths::default(), Vec::new())),
            execs: Mutex::new(HashMap::new()),
            cgroup: LazyCgroup {
                cell: OnceLock::from(Opened::default()),
                opening: Mutex::new(None),
            },
            mounted_rootfs: false,
            own_pid_ns: true,
            memory_limit: None,
            oom_reported: Mutex::new(0),
            annotations: Annotations::parse(None, "default", Path::new("/nonexistent"))
                .expect("no annotations parse"),
            autotuner: Mutex::new(None),
            criu: CriuConfig::default(),
            plan: StartPlan::Cold,
            pending_restore: Mutex::new(None),
            create_time: Mutex::new(None),
            sandbox: Mutex::new(None),
            image_of: Arc::default(),
            reserved_io: Mutex::new(None),
            reserve_source: None,
            from_reserve: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_s_criu_path_wins_and_the_restore_log_level_is_the_config_s() {
        let mut config = Config::default();
        config.criu.binary = Some(PathBuf::from("/opt/criu"));
        config.criu.restore_log_level = 4.try_into().unwrap();
        let c = criu_config(&RuntimeOptions::default(), &config);
        assert_eq!(c.binary, Some(PathBuf::from("/opt/criu")));
        assert_eq!(c.restore_log_level.get(), 4);
        let opts = RuntimeOptions {
            criu_path: Some("/usr/local/sbin/criu".into()),
            ..RuntimeOptions::default()
        };
        let c = criu_config(&opts, &config);
        assert_eq!(c.binary, Some(PathBuf::from("/usr/local/sbin/criu")));
        assert_eq!(c.cache_dir, Some(PathBuf::from(CRIU_CACHE_DIR)));
    }
}
