//! Container operations, executed inside a zygote worker with libcontainer.
//!
//! Each function here runs in a short-lived single-threaded process (see [`crate::zygote`]):
//! libcontainer may clone, chdir and wait as it likes.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointOptions, CriuConfig};
use crate::config::Config;
use crate::error::{RuntimeError, chain};
use crate::executor::TrenvExecutor;
use crate::pool::Pool;
use crate::ready_template::ReadyTemplate;
use crate::restore::{self, Phases, RestorePlan};
use crate::rootfs::{self, Mount};
use crate::seccomp;
use crate::template::TemplateStore;

/// Which of the request's file descriptors is the process's stdin, stdout and stderr
/// (indexes into the descriptors passed with the request). `None` means /dev/null.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stdio {
    pub stdin: Option<usize>,
    pub stdout: Option<usize>,
    pub stderr: Option<usize>,
    /// A pipe into which the process writes CLOCK_MONOTONIC (nanoseconds, 8 bytes, native
    /// endian) just before it execs its program: where an invocation's metered time starts.
    pub exec_stamp: Option<usize>,
}

/// Where libcontainer keeps a container's state, and the bundle it was created from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Location {
    pub id: String,
    /// The OCI bundle containerd created (holds config.json and rootfs/).
    pub bundle: PathBuf,
    /// libcontainer's state root; the container's state is `state_root/id`.
    pub state_root: PathBuf,
}

impl Location {
    pub fn new(id: &str, bundle: &Path) -> Location {
        Location {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            state_root: bundle.join(".trenv"),
        }
    }

    pub(crate) fn container_dir(&self) -> PathBuf {
        self.state_root.join(&self.id)
    }

    /// The bundle libcontainer sees: the spec as trenv hands it over (see [`derive_spec`]).
    pub(crate) fn derived_bundle(&self) -> PathBuf {
        self.state_root.join("bundle")
    }

    /// The spec as libcontainer got it (written at create).
    pub(crate) fn derived_spec(&self) -> Result<Spec, RuntimeError> {
        let path = self.derived_bundle().join("config.json");
        Spec::load(&path).map_err(|e| RuntimeError::InvalidSpec {
            path: path.display().to_string(),
            reason: chain(&e),
        })
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Create {
        at: Location,
        /// Rootfs mounts handed over by containerd; empty when the bundle's rootfs is ready.
        rootfs: Vec<Mount>,
        systemd_cgroup: bool,
        console_socket: Option<PathBuf>,
        stdio: Stdio,
    },
    Start {
        at: Location,
    },
    Exec {
        at: Location,
        /// A file holding the exec process as OCI JSON.
        process: PathBuf,
        console_socket: Option<PathBuf>,
        stdio: Stdio,
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
    },
    /// Start of such a container: CRIU restores its processes.
    Restore {
        at: Location,
        plan: RestorePlan,
        console_socket: Option<PathBuf>,
        stdio: Stdio,
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
pub enum Reply {
    Pid(i32),
    Done,
    /// A restored init and where the restore spent its time.
    Restored {
        pid: i32,
        phases: Phases,
    },
    /// A template was made: one line on what it holds.
    Template(String),
}

/// Runs one request. Called in a zygote worker.
pub fn handle(req: Request, fds: Vec<OwnedFd>) -> Result<Reply, RuntimeError> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    match req {
        Request::Create {
            at,
            rootfs,
            systemd_cgroup,
            console_socket,
            stdio,
        } => create(
            &at,
            &rootfs,
            systemd_cgroup,
            console_socket,
            take_stdio(&mut fds, &stdio)?,
            take_fd(&mut fds, stdio.exec_stamp)?,
        ),
        Request::Start { at } => {
            load(&at)?.start().map_err(lc("starting the container"))?;
            Ok(Reply::Done)
        }
        Request::Exec {
            at,
            process,
            console_socket,
            stdio,
        } => exec(
            &at,
            &process,
            console_socket,
            take_stdio(&mut fds, &stdio)?,
            take_fd(&mut fds, stdio.exec_stamp)?,
        ),
        Request::Pause { at } => {
            load(&at)?.pause().map_err(lc("pausing the container"))?;
            Ok(Reply::Done)
        }
        Request::Resume { at } => {
            load(&at)?.resume().map_err(lc("resuming the container"))?;
            Ok(Reply::Done)
        }
        Request::Delete { at, unmount_rootfs } => {
            delete(&at, unmount_rootfs)?;
            Ok(Reply::Done)
        }
        Request::Checkpoint {
            at,
            images,
            work,
            options,
            criu,
        } => {
            checkpoint::checkpoint(&at, &images, &work, &options, &criu)?;
            Ok(Reply::Done)
        }
        Request::PrepareRestore { at, rootfs } => {
            prepare_restore(&at, &rootfs)?;
            Ok(Reply::Done)
        }
        Request::Restore {
            at,
            plan,
            console_socket,
            stdio,
            criu,
        } => {
            let stdio = take_stdio(&mut fds, &stdio)?;
            let (pid, phases) =
                restore::restore(&at, &plan, stdio, console_socket.as_deref(), &criu)?;
            Ok(Reply::Restored { pid, phases })
        }
        Request::MakeTemplate { at, template, criu } => make_template(&at, &template, criu),
    }
}

fn make_template(
    at: &Location,
    t: &ReadyTemplate,
    criu: CriuConfig,
) -> Result<Reply, RuntimeError> {
    let config = Config::load().map_err(|e| RuntimeError::Worker(e.to_string()))?;
    let kind = config.pool_kind().map_err(RuntimeError::Worker)?;
    let pool =
        Pool::open(&config.pool.dir, kind).map_err(|e| RuntimeError::Worker(e.to_string()))?;
    let criu = CriuConfig {
        binary: criu.binary.or_else(|| config.criu.binary.clone()),
        ..criu
    };
    let m =
        TemplateStore::new(&config.templates.dir).create(&t.name, at, &pool, &criu, &t.policy())?;
    Ok(Reply::Template(format!(
        "{} VMAs, {} MiB mapped from {} ({}), {} MiB still copied",
        m.conversion.vmas.len(),
        m.conversion.bytes_moved >> 20,
        m.pool.path.display(),
        m.pool.kind,
        m.conversion.bytes_copied >> 20
    )))
}

type StdioFds = [Option<OwnedFd>; 3];

fn take_stdio(fds: &mut [Option<OwnedFd>], stdio: &Stdio) -> Result<StdioFds, RuntimeError> {
    Ok([
        take_fd(fds, stdio.stdin)?,
        take_fd(fds, stdio.stdout)?,
        take_fd(fds, stdio.stderr)?,
    ])
}

fn take_fd(fds: &mut [Option<OwnedFd>], i: Option<usize>) -> Result<Option<OwnedFd>, RuntimeError> {
    match i {
        None => Ok(None),
        Some(i) => fds
            .get_mut(i)
            .and_then(Option::take)
            .map(Some)
            .ok_or_else(|| RuntimeError::Protocol(format!("descriptor {i} missing"))),
    }
}

fn lc(
    context: &'static str,
) -> impl FnOnce(libcontainer::error::LibcontainerError) -> RuntimeError {
    move |e| RuntimeError::Worker(format!("{context}: {}", chain(&e)))
}

fn load(at: &Location) -> Result<Container, RuntimeError> {
    Container::load(at.container_dir()).map_err(lc("loading the container's state"))
}

fn builder(
    at: &Location,
    executor: TrenvExecutor,
    console_socket: Option<PathBuf>,
    stdio: StdioFds,
) -> Result<ContainerBuilder, RuntimeError> {
    let [stdin, stdout, stderr] = stdio;
    let devnull = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(RuntimeError::io("opening /dev/null"))
    };
    // With a console socket the process gets the pty as stdio; the descriptors set here
    // are replaced by it.
    Ok(ContainerBuilder::new(at.id.clone(), SyscallType::Linux)
        .with_root_path(at.state_root.clone())
        .map_err(lc("preparing the state directory"))?
        .with_executor(executor)
        .with_console_socket(console_socket)
        .with_stdin(stdin.map_or_else(devnull, Ok)?)
        .with_stdout(stdout.map_or_else(devnull, Ok)?)
        .with_stderr(stderr.map_or_else(devnull, Ok)?))
}

fn create(
    at: &Location,
    mounts: &[Mount],
    systemd_cgroup: bool,
    console_socket: Option<PathBuf>,
    stdio: StdioFds,
    exec_stamp: Option<OwnedFd>,
) -> Result<Reply, RuntimeError> {
    let spec_path = at.bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| RuntimeError::InvalidSpec {
        path: spec_path.display().to_string(),
        reason: chain(&e),
    })?;
    let mounted = !mounts.is_empty();
    if mounted {
        rootfs::mount_all(mounts, &at.rootfs())?;
    }
    let result = (|| {
        let (derived, mut executor) = derive_spec(spec, &at.bundle)?;
        executor.exec_stamp = exec_stamp.map(Arc::new);
        let dir = at.derived_bundle();
        fs::create_dir_all(&dir)
            .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        derived.save(dir.join("config.json")).map_err(|e| {
            RuntimeError::Worker(format!("writing the derived spec: {}", chain(&e)))
        })?;
        let container = builder(at, executor, console_socket, stdio)?
            .validate_id()
            .map_err(lc("checking the container id"))?
            .as_init(&dir)
            .with_systemd(systemd_cgroup)
            .with_detach(true)
            .build()
            .map_err(lc("creating the container"))?;
        let pid = container
            .pid()
            .ok_or_else(|| RuntimeError::Worker("libcontainer returned no init pid".into()))?;
        Ok(Reply::Pid(pid.as_raw()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&at.state_root);
        if mounted {
            let _ = rootfs::unmount(&at.rootfs());
        }
    }
    result
}

fn prepare_restore(at: &Location, mounts: &[Mount]) -> Result<(), RuntimeError> {
    let spec_path = at.bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| RuntimeError::InvalidSpec {
        path: spec_path.display().to_string(),
        reason: chain(&e),
    })?;
    if !mounts.is_empty() {
        rootfs::mount_all(mounts, &at.rootfs())?;
    }
    let result = (|| {
        // The seccomp filters and capabilities of a restored process come from the image;
        // the derived spec is what exec and delete read later.
        let (derived, _) = derive_spec(spec, &at.bundle)?;
        let dir = at.derived_bundle();
        fs::create_dir_all(&dir)
            .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        derived
            .save(dir.join("config.json"))
            .map_err(|e| RuntimeError::Worker(format!("writing the derived spec: {}", chain(&e))))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&at.state_root);
        if !mounts.is_empty() {
            let _ = rootfs::unmount(&at.rootfs());
        }
    }
    result
}

/// Adapts containerd's spec for libcontainer:
/// * the rootfs path becomes absolute (libcontainer sees a different bundle directory);
/// * the seccomp profile is compiled here and installed by trenv's executor just before
///   exec (libcontainer without libseccomp would silently skip it);
/// * when there is a profile, dropping capabilities is deferred to the executor so that the
///   profile can be installed while CAP_SYS_ADMIN is still held (needed without
///   no_new_privileges), exactly as runc orders it.
fn derive_spec(mut spec: Spec, bundle: &Path) -> Result<(Spec, TrenvExecutor), RuntimeError> {
    if let Some(root) = spec.root().clone() {
        let mut root = root;
        if root.path().is_relative() {
            root.set_path(bundle.join(root.path()));
        }
        spec.set_root(Some(root));
    }
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut executor = TrenvExecutor::default();
    if let Some(profile) = profile {
        executor.filters = seccomp::compile(&profile)?;
        if let Some(mut linux) = spec.linux().clone() {
            linux.set_seccomp(None);
            spec.set_linux(Some(linux));
        }
        if let Some(mut process) = spec.process().clone() {
            executor.deferred_caps = process.capabilities().clone();
            process.set_capabilities(None);
            spec.set_process(Some(process));
        }
    }
    Ok((spec, executor))
}

fn exec(
    at: &Location,
    process_path: &Path,
    console_socket: Option<PathBuf>,
    stdio: StdioFds,
    exec_stamp: Option<OwnedFd>,
) -> Result<Reply, RuntimeError> {
    let spec_path = at.bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| RuntimeError::InvalidSpec {
        path: spec_path.display().to_string(),
        reason: chain(&e),
    })?;
    let raw = fs::read(process_path).map_err(RuntimeError::io(format!(
        "reading {}",
        process_path.display()
    )))?;
    let mut process: Process =
        serde_json::from_slice(&raw).map_err(|e| RuntimeError::InvalidSpec {
            path: process_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let mut executor = TrenvExecutor {
        exec_stamp: exec_stamp.map(Arc::new),
        ..TrenvExecutor::default()
    };
    if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        executor.filters = seccomp::compile(profile)?;
        executor.deferred_caps = process.capabilities().clone();
        process.set_capabilities(None);
    }
    let adapted = process_path.with_extension("trenv.json");
    fs::write(
        &adapted,
        serde_json::to_vec(&process).map_err(|e| RuntimeError::Protocol(e.to_string()))?,
    )
    .map_err(RuntimeError::io(format!("writing {}", adapted.display())))?;
    let pid = builder(at, executor, console_socket, stdio)?
        .as_tenant()
        .with_process(Some(&adapted))
        .with_detach(true)
        .build()
        .map_err(lc("starting the exec process"));
    let _ = fs::remove_file(&adapted);
    Ok(Reply::Pid(pid?.as_raw()))
}

fn delete(at: &Location, unmount_rootfs: bool) -> Result<(), RuntimeError> {
    let mut first_err = None;
    if at.container_dir().exists() {
        match Container::load(at.container_dir()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    first_err = Some(lc("deleting the container")(e));
                }
            }
            Err(e) => first_err = Some(lc("loading the container's state")(e)),
        }
    }
    if unmount_rootfs && let Err(e) = rootfs::unmount(&at.rootfs()) {
        first_err.get_or_insert(e.into());
    }
    if let Err(e) = fs::remove_dir_all(&at.state_root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        first_err.get_or_insert(RuntimeError::Io {
            context: format!("removing {}", at.state_root.display()),
            source: e,
        });
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
