//! Checkpoint: containerd's Checkpoint of a running or paused container, with CRIU.

use std::fs;
use std::path::PathBuf;

use containerd_shim::protos::ttrpc;
use trenv_runtime::CheckpointRequest;
use trenv_runtime::snapshot::CheckpointOptions;

use super::Container;
use crate::errors::precondition;
use crate::process::State;

impl Container {
    /// Dumps the container with CRIU into `images`.
    pub fn checkpoint(
        &self,
        images: PathBuf,
        work: Option<PathBuf>,
        options: CheckpointOptions,
    ) -> Result<(), ttrpc::Error> {
        let state = self.init.state();
        if !matches!(state, State::Running | State::Paused) {
            return Err(precondition(format!(
                "container {} is {state:?}: only a running or paused container can be \
                 checkpointed",
                self.id
            )));
        }
        let own_work = work.is_none();
        let work = work.unwrap_or_else(|| self.at.bundle.join("work").join("criu-work"));
        let result = crate::runtime()
            .checkpoint(
                &self.at,
                CheckpointRequest {
                    images: &images,
                    work: &work,
                    options,
                    criu: self.criu.clone(),
                },
            )
            .map_err(|e| precondition(e.to_string()));
        if own_work {
            let _ = fs::remove_dir_all(&work);
        }
        result
    }
}
