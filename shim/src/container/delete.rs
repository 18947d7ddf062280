//! Delete of a container: its processes released, stdio closed, and the runtime removes
//! its state, cgroup and rootfs mount.

use containerd_shim::protos::ttrpc;

use super::{Container, NEVER_STARTED};
use crate::errors::rt;
use crate::process::State;

impl Container {
    /// Removes the container: processes, cgroup, state, rootfs mount.
    pub fn destroy(&self) -> Result<(), ttrpc::Error> {
        // Processes that never ran (a failed start, a task deleted before Start) will never
        // exit: release whoever waits for them, or containerd's Wait calls hang forever
        // and with them the shim's shutdown.
        for p in std::iter::once(&self.init).chain(self.execs().values()) {
            if p.state() == State::Created {
                p.set_exited(NEVER_STARTED, crate::process::now());
            }
        }
        for p in std::iter::once(&self.init).chain(self.execs().values()) {
            if let Some(io) = p.lock().io.as_mut() {
                io.close();
            }
        }
        let deleted = crate::runtime()
            .delete(&self.at, self.mounted_rootfs)
            .map_err(rt);
        // Purged and kept only if nothing of the container is left in it (the purge
        // checks); destroyed otherwise.
        self.release_sandbox();
        // A container that took a reserve's instance lived in the instance's directory.
        if deleted.is_ok() {
            crate::reserve::remove_bundle(&self.at.bundle);
        }
        deleted
    }
}
