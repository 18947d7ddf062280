//! Memory pools (the memory a template lives in; not the idle pool of sandboxes): where template files live, and the check that a pool is what the
//! configuration says it is (a silently wrong pool would put "CXL" templates in DRAM).
//!
//! * tmpfs: any tmpfs directory (this machine: /run/trenv/pool);
//! * dax: a filesystem mounted with `-o dax` on PMem or CXL memory in fsdax mode;
//! * numa: a tmpfs mounted with `mpol=bind:N`, N being a (CPU-less) CXL memory node.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Classified, ErrorKind};
use crate::sys::mountinfo::MountEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemPoolKind {
    Tmpfs,
    Dax,
    NumaTmpfs { node: u32 },
}

impl std::fmt::Display for MemPoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemPoolKind::Tmpfs => write!(f, "tmpfs"),
            MemPoolKind::Dax => write!(f, "dax"),
            MemPoolKind::NumaTmpfs { node } => write!(f, "numa (tmpfs bound to node {node})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemPoolError {
    #[error("memory pool {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "memory pool {dir} is configured as {kind} but is on {fstype} mounted with \"{options}\": \
         {hint}"
    )]
    Mismatch {
        dir: PathBuf,
        kind: MemPoolKind,
        fstype: String,
        options: String,
        hint: &'static str,
    },
}

impl Classified for MemPoolError {
    fn kind(&self) -> ErrorKind {
        match self {
            MemPoolError::Mismatch { .. } => ErrorKind::FailedPrecondition,
            MemPoolError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// A checked pool directory.
#[derive(Debug, Clone)]
pub struct MemPool {
    pub dir: PathBuf,
    pub kind: MemPoolKind,
}

/// The mount a path lives on: (mount point, fs type, super options).
fn mount_of(path: &Path) -> Option<(PathBuf, String, String)> {
    // Later lines over-mount earlier ones at the same point.
    crate::sys::mountinfo::read(None)
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .fold(None, |best: Option<MountEntry>, m| match best {
            Some(b) if b.mount_point.as_os_str().len() > m.mount_point.as_os_str().len() => Some(b),
            _ => Some(m),
        })
        .map(|m| (m.mount_point, m.fstype, m.super_options))
}

impl MemPool {
    /// Checks `dir` against `kind`, creating the directory (0700) if it is missing.
    pub fn open(dir: &Path, kind: MemPoolKind) -> Result<MemPool, MemPoolError> {
        let io = |source| MemPoolError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let real = fs::canonicalize(dir).map_err(io)?;
        let (_, fstype, options) = mount_of(&real).ok_or_else(|| {
            io(std::io::Error::other(
                "not found in /proc/self/mountinfo".to_string(),
            ))
        })?;
        let opts: Vec<&str> = options.split(',').collect();
        let mismatch = |hint| MemPoolError::Mismatch {
            dir: real.clone(),
            kind,
            fstype: fstype.clone(),
            options: options.clone(),
            hint,
        };
        match kind {
            MemPoolKind::Tmpfs if fstype != "tmpfs" => {
                return Err(mismatch(
                    "mount a tmpfs there or point [pool] dir at one (e.g. /run/trenv/pool)",
                ));
            }
            MemPoolKind::Dax if !opts.iter().any(|o| *o == "dax" || *o == "dax=always") => {
                return Err(mismatch(
                    "mount the PMem/CXL filesystem with -o dax (fsdax namespace), or use \
                     kind \"tmpfs\"",
                ));
            }
            MemPoolKind::NumaTmpfs { node } => {
                let want = format!("mpol=bind:{node}");
                if fstype != "tmpfs" || !opts.contains(&want.as_str()) {
                    return Err(mismatch(
                        "mount it with `mount -t tmpfs -o mpol=bind:N tmpfs DIR` for the \
                         configured node",
                    ));
                }
            }
            _ => {}
        }
        Ok(MemPool { dir: real, kind })
    }

    /// Bytes still free in the pool.
    pub fn free_bytes(&self) -> Result<u64, MemPoolError> {
        let s = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| MemPoolError::Io {
            dir: self.dir.clone(),
            source: e.into(),
        })?;
        Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmpfs_directory_is_a_tmpfs_pool_and_not_a_dax_one() {
        // /dev/shm is a tmpfs on every Linux machine the tests run on.
        let dir = Path::new("/dev/shm").join(format!("trenv-pool-test-{}", std::process::id()));
        let pool = MemPool::open(&dir, MemPoolKind::Tmpfs).unwrap();
        assert!(pool.free_bytes().unwrap() > 0);
        let e = MemPool::open(&dir, MemPoolKind::Dax)
            .unwrap_err()
            .to_string();
        assert!(e.contains("configured as dax but is on tmpfs"), "{e}");
        let e = MemPool::open(&dir, MemPoolKind::NumaTmpfs { node: 0 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("mpol=bind:N"), "{e}");
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_disk_directory_is_not_a_tmpfs_pool() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if mount_of(dir.path()).is_some_and(|(_, t, _)| t == "tmpfs") {
            return; // the source tree itself is on tmpfs here
        }
        let e = MemPool::open(dir.path(), MemPoolKind::Tmpfs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("configured as tmpfs"), "{e}");
    }
}
