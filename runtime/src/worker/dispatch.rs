//! Runs one request inside a worker: the only place that maps the protocol onto the
//! domains' operations. Each domain's error leaves as a [`RemoteError`] with its kind.

use std::os::fd::OwnedFd;

use super::protocol::{Reply, Request, StdioSlots};
use crate::config::{Config, ConfigError};
use crate::container::{self, StdioFds};
use crate::error::{Classified, RemoteError};
use crate::snapshot::{self, CriuConfig};
use crate::template::build::BuildRequest;
use crate::template::ready::ReadyTemplate;
use crate::template::{MemPool, TemplateStore};

/// What a worker does once it answered, before it exits: work the answer need not wait
/// for (a restore's unmounts).
pub(super) type AfterReply = Vec<Box<dyn FnOnce()>>;

/// Runs one request. Called in a zygote worker; `after` gets what is left to do after
/// the answer.
pub(super) fn handle(
    req: Request,
    fds: Vec<OwnedFd>,
    after: &mut AfterReply,
) -> Result<Reply, RemoteError> {
    // A shared shim's zygote keeps the working directory of the shim's first container,
    // whose bundle containerd removes when it is deleted (shim/src/shared.rs); libcontainer
    // needs one it can return to.
    if std::env::current_dir().is_err() {
        let _ = nix::unistd::chdir("/");
    }
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    match req {
        Request::Create { container, stdio } => {
            let (child, stamp) = take_stdio(&mut fds, &stdio)?;
            let pid =
                container::create::create(&container, child, stamp).map_err(RemoteError::of)?;
            Ok(Reply::Pid(pid))
        }
        Request::Start { at } => done(container::lifecycle::start(&at)),
        Request::Exec { process, stdio } => {
            let (child, stamp) = take_stdio(&mut fds, &stdio)?;
            let pid = container::exec::exec(&process, child, stamp).map_err(RemoteError::of)?;
            Ok(Reply::Pid(pid))
        }
        Request::Pause { at } => done(container::lifecycle::pause(&at)),
        Request::Resume { at } => done(container::lifecycle::resume(&at)),
        Request::Delete { at, unmount_rootfs } => {
            done(container::delete::delete(&at, unmount_rootfs))
        }
        Request::Checkpoint {
            at,
            images,
            work,
            options,
            criu,
        } => done(snapshot::checkpoint(&at, &images, &work, &options, &criu)),
        Request::PrepareRestore {
            at,
            rootfs,
            sandbox,
            scratch,
        } => container::create::prepare_restore(&at, &rootfs, sandbox.as_ref(), scratch)
            .map(Reply::Prepared)
            .map_err(RemoteError::of),
        Request::Restore {
            at,
            plan,
            console_socket,
            stdio,
            criu,
        } => {
            let (child, _) = take_stdio(&mut fds, &stdio)?;
            let (pid, phases, binds) =
                snapshot::restore(&at, &plan, child, console_socket.as_deref(), &criu)
                    .map_err(RemoteError::of)?;
            after.push(Box::new(move || drop(binds)));
            Ok(Reply::Restored { pid, phases })
        }
        Request::MakeTemplate { at, template, criu } => make_template(&at, &template, criu),
    }
}

fn done<E: Classified>(r: Result<(), E>) -> Result<Reply, RemoteError> {
    r.map(|()| Reply::Done).map_err(RemoteError::of)
}

/// Makes template `t` of the container at `at`, for its tenant, in the store and pool of
/// trenv's config and within its per-tenant bounds.
fn make_template(
    at: &container::Location,
    t: &ReadyTemplate,
    criu: CriuConfig,
) -> Result<Reply, RemoteError> {
    let config = Config::load().map_err(RemoteError::of)?;
    let kind = config
        .pool_kind()
        .map_err(|e| RemoteError::of(ConfigError::from(e)))?;
    let pool = MemPool::open(&config.pool.dir, kind).map_err(RemoteError::of)?;
    let criu = CriuConfig {
        binary: criu.binary.or_else(|| config.criu.binary.clone()),
        ..criu
    };
    let req = BuildRequest {
        name: &t.name,
        tenant: &t.tenant,
        limits: config.tenant_limits(),
        at,
        pool: &pool,
        criu: &criu,
        policy: &t.policy(),
    };
    let m = TemplateStore::of_node(&config)
        .create(&req)
        .map_err(RemoteError::of)?;
    Ok(Reply::Template(format!(
        "{}, {} MiB mapped from {} ({}), {} MiB still copied",
        m.conversion.extent(),
        m.conversion.bytes_moved >> 20,
        m.pool.path.display(),
        m.pool.kind,
        m.conversion.bytes_copied >> 20
    )))
}

/// The process's stdio and exec stamp from the request's descriptors.
fn take_stdio(
    fds: &mut [Option<OwnedFd>],
    s: &StdioSlots,
) -> Result<(StdioFds, Option<OwnedFd>), RemoteError> {
    Ok((
        [
            take_fd(fds, s.stdin)?,
            take_fd(fds, s.stdout)?,
            take_fd(fds, s.stderr)?,
        ],
        take_fd(fds, s.exec_stamp)?,
    ))
}

fn take_fd(fds: &mut [Option<OwnedFd>], i: Option<usize>) -> Result<Option<OwnedFd>, RemoteError> {
    match i {
        None => Ok(None),
        Some(i) => fds
            .get_mut(i)
            .and_then(Option::take)
            .map(Some)
            .ok_or_else(|| RemoteError::of(super::WorkerError::MissingFd(i))),
    }
}
