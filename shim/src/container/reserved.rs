//! A container that takes an instance from the shim's reserve (shim/src/reserve.rs) instead
//! of restoring its template: the instance's processes move into the container's cgroup
//! (made and limited as for a restore), its libcontainer state is given that cgroup, its
//! stdio pipes are connected to the container's, and its sandbox becomes the container's.
//! Start continues it as any template restore. A step that fails removes the instance and
//! the container's cgroup: the caller then restores the template as usual.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use trenv_runtime::container::cgroup::{Cgroup, NamedSystemd, join_prepared};
use trenv_runtime::container::spec::has_own_namespace;
use trenv_runtime::snapshot::CriuConfig;
use trenv_runtime::snapshot::restore::retarget;
use trenv_runtime::sys::tree::process_tree;

use super::{Container, LazyCgroup};
use crate::annotations::Annotations;
use crate::io::{ReservedPipes, StdioPaths};
use crate::process::Process;
use crate::reserve::Instance;

/// What the taking container brings: its id, bundle, spec, stdio and cgroup driver.
pub(super) struct Taking<'a> {
    pub id: &'a str,
    /// containerd's bundle of the container.
    pub bundle: PathBuf,
    pub spec: &'a Spec,
    pub paths: StdioPaths,
    pub systemd: bool,
}

/// Why an instance could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("the container's cgroup could not be made")]
    NoCgroup,
    #[error("moving the instance's process {pid} into the container's cgroup: {source}")]
    Join {
        pid: i32,
        #[source]
        source: trenv_runtime::container::cgroup::CgroupError,
    },
    #[error("giving the instance's state the container's cgroup: {0}")]
    Retarget(#[from] trenv_runtime::snapshot::SnapshotError),
    #[error("connecting the instance's stdio: {0}")]
    Stdio(#[from] crate::io::StdioError),
}

impl Container {
    /// The shim's ends of a reserve instance's stdio (taken once, by the reserve).
    pub(crate) fn take_reserved_io(&self) -> Option<ReservedPipes> {
        self.reserved_io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The container `t` made of reserve instance `inst`.
    pub(super) fn from_reserved(
        inst: Instance,
        t: &Taking<'_>,
        annotations: Annotations,
        criu: CriuConfig,
    ) -> Result<Container, TakeError> {
        // Before anything is checked: an exit reaped from now on is this process's.
        let init = Arc::new(Process::new("", t.paths.clone(), Vec::new()));
        let resources = t.spec.linux().as_ref().and_then(|l| l.resources().clone());
        let cgroups_path = t
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone());
        let pid = inst.container.init.pid();
        // The instance's cgroup becomes the container's (its limits are the spec's, its
        // memory charged to it from the restore on); else the processes move.
        let target = Cgroup::path_of(cgroups_path.as_deref(), t.id);
        let renamed = inst.container.cgroup.prepared().is_some_and(|procs| {
            // And the `name=systemd` one the restore put the processes in, if any.
            let named = NamedSystemd::of(Some(&inst.cgroup_path), &inst.container.id)
                .map(|n| n.path().to_path_buf())
                .filter(|p| p.is_dir());
            let dirs: Vec<PathBuf> = procs
                .iter()
                .filter_map(|p| p.parent().map(PathBuf::from))
                .chain(named)
                .collect();
            rename_cgroup(&dirs, &inst.cgroup_path, &target)
        });
        let cgroup = LazyCgroup::open(
            cgroups_path.clone(),
            t.id,
            t.systemd,
            (!renamed).then(|| resources.clone()),
        );
        let moved = if renamed {
            Ok(())
        } else {
            move_tree(&cgroup, pid, resources.as_ref())
        };
        let moved = moved.and_then(|()| {
            retarget(&inst.container.at, cgroups_path.as_deref(), pid, t.systemd)?;
            Ok(())
        });
        if let Err(e) = moved {
            if renamed {
                // Delete finds it by the container's state: the container's path now.
                if let Some(cg) = cgroup.get() {
                    cg.kill_all(std::time::Duration::from_secs(2));
                    let _ = cg.remove();
                }
            }
            cgroup.undo_prepared();
            inst.destroy();
            return Err(e);
        }
        if !renamed {
            // The instance's own cgroups are empty now.
            match inst.container.cgroup.prepared() {
                Some(_) => inst.container.cgroup.undo_prepared(),
                None => {
                    if let Some(Err(e)) = inst.container.cgroup.get().map(Cgroup::remove) {
                        log::warn!(
                            "removing reserve instance {}'s cgroup: {e}",
                            inst.container.id
                        );
                    }
                }
            }
            if let Some(old) = NamedSystemd::of(Some(&inst.cgroup_path), &inst.container.id) {
                if let Some(new) = NamedSystemd::of(cgroups_path.as_deref(), t.id) {
                    for p in process_tree(pid) {
                        if let Err(e) = new.join(p) {
                            log::debug!("{}: {e}", new.path().display());
                        }
                    }
                }
                old.remove();
            }
        }
        let Instance {
            container: old,
            pipes,
            ..
        } = inst;
        let io = match pipes.connect(t.paths.clone()) {
            Ok(io) => io,
            Err(e) => {
                let _ = old.destroy();
                crate::reserve::remove_bundle(&old.at.bundle);
                cgroup.undo_prepared();
                return Err(e.into());
            }
        };
        {
            let mut g = init.lock();
            g.pid = pid;
            g.io = Some(io);
        }
        let sandbox = old.sandbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(Container {
            id: t.id.to_string(),
            at: old.at.clone(),
            bundle: t.bundle.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
            cgroup,
            mounted_rootfs: true,
            own_pid_ns: has_own_namespace(t.spec, LinuxNamespaceType::Pid),
            memory_limit: old.memory_limit,
            oom_reported: Mutex::new(0),
            annotations,
            autotuner: Mutex::new(None),
            criu,
            plan: old.plan.clone(),
            pending_restore: Mutex::new(None),
            create_time: Mutex::new(None),
            sandbox: Mutex::new(sandbox),
            image_of: Arc::default(),
            reserved_io: Mutex::new(None),
            reserve_source: None,
            from_reserve: true,
        })
    }
}

/// Renames the cgroup at `from` to `to` in each v1 hierarchy (its directories `dirs`), when
/// both have the same parent (cgroup v1 renames within a parent only); false, with nothing
/// renamed, otherwise.
fn rename_cgroup(dirs: &[PathBuf], from: &std::path::Path, to: &std::path::Path) -> bool {
    let Some(name) = to.file_name() else {
        return false;
    };
    if from.parent() != to.parent() {
        return false;
    }
    let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
    for dir in dirs {
        let renamed = dir.with_file_name(name);
        match std::fs::rename(dir, &renamed) {
            Ok(()) => done.push((dir.to_path_buf(), renamed)),
            Err(e) => {
                log::debug!(
                    "renaming {} to {}: {e}; the processes move instead",
                    dir.display(),
                    renamed.display()
                );
                for (old, new) in done.into_iter().rev() {
                    let _ = std::fs::rename(new, old);
                }
                return false;
            }
        }
    }
    true
}

/// Moves every process of the tree at `pid` into `cgroup`: by the `cgroup.procs` files the
/// shim prepared (v1, the spec's limits already applied), else through the opened cgroup
/// (the limits applied first). The memory the restore copied stays charged where it was
/// (cgroup v2 never moves charges; v1's `memory.move_charge_at_immigrate` is gone from
/// recent kernels): a fallback when the instance's cgroup cannot be renamed.
fn move_tree(
    cgroup: &LazyCgroup,
    pid: i32,
    resources: Option<&oci_spec::runtime::LinuxResources>,
) -> Result<(), TakeError> {
    let tree = process_tree(pid);
    if let Some(procs) = cgroup.prepared() {
        for p in tree {
            join_prepared(&procs, p).map_err(|source| TakeError::Join { pid: p, source })?;
        }
        return Ok(());
    }
    let cg: &Cgroup = cgroup.get().ok_or(TakeError::NoCgroup)?;
    // Joining first makes the cgroup with its controllers enabled (libcgroups on v2); the
    // processes are stopped, so the limits apply before any of them runs again.
    for p in tree {
        cg.add_task(p)
            .map_err(|source| TakeError::Join { pid: p, source })?;
    }
    if let Some(r) = resources {
        cg.update(r)
            .map_err(|source| TakeError::Join { pid, source })?;
    }
    Ok(())
}
