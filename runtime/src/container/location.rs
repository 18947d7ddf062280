//! Where a container lives: containerd's bundle and libcontainer's state below it. A leaf
//! that every domain (container operations, checkpoints, templates) refers to.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::ContainerError;
use super::spec::load_spec;

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

    /// The bundle libcontainer sees: the spec as trenv hands it over (see
    /// [`super::spec::derive`]).
    pub(crate) fn derived_bundle(&self) -> PathBuf {
        self.state_root.join("bundle")
    }

    /// The spec as containerd wrote it.
    pub fn spec(&self) -> Result<Spec, ContainerError> {
        load_spec(&self.bundle.join("config.json"))
    }

    /// The spec as libcontainer got it (written at create).
    pub(crate) fn derived_spec(&self) -> Result<Spec, ContainerError> {
        load_spec(&self.derived_bundle().join("config.json"))
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Where idmapped copies of the spec's idmapped mounts are made during create (see
    /// [`super::idmap`]).
    pub(crate) fn idmap_dir(&self) -> PathBuf {
        self.state_root.join("idmapped")
    }

    /// Writes the derived spec where libcontainer reads it ([`Location::derived_bundle`]);
    /// that directory.
    pub(crate) fn save_derived(&self, derived: &Spec) -> Result<PathBuf, ContainerError> {
        let dir = self.derived_bundle();
        std::fs::create_dir_all(&dir)
            .map_err(ContainerError::io(format!("creating {}", dir.display())))?;
        derived
            .save(dir.join("config.json"))
            .map_err(ContainerError::SaveSpec)?;
        Ok(dir)
    }

    /// The container's root filesystem: the spec's root (absolute in the derived spec),
    /// else the bundle's.
    pub(crate) fn rootfs_of(&self, spec: &Spec) -> PathBuf {
        spec.root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| self.rootfs())
    }
}
