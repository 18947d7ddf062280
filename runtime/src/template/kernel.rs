//! Which memory backend a template's restore uses: the kernel's (the trenv-mmt module,
//! kernel-patches/trenv-mmt) when the running kernel has it, else the pool-file mapping.
//!
//! With the module, a template's pool file is registered once (at its first restore after
//! the module appeared, e.g. after a boot) and CRIU (criu-glue/patches/0005) attaches it
//! to each instance as anonymous memory with page tables filled at once; without it, CRIU
//! maps the pool file privately. Nothing else differs for the user.

use std::fs::File;
use std::path::Path;

use serde::Serialize;
use trenv_criu::kernel_templates::{Device, KernelTemplateError};

/// The backend a restore of a template uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Anonymous memory with the template attached by the trenv-mmt module.
    Kernel,
    /// A private mapping of the pool file (stock kernels).
    PoolFile,
}

impl Backend {
    pub fn describe(self) -> &'static str {
        match self {
            Backend::Kernel => {
                "kernel templates (trenv-mmt): anonymous memory, page tables filled at restore"
            }
            Backend::PoolFile => {
                "pool-file mapping (no trenv-mmt module on this kernel, or kernel_templates = false)"
            }
        }
    }
}

/// Makes sure the pool file `pool` is registered with the module, if the kernel has it,
/// and says which backend a restore will use. A registration of a file that changed since
/// (the module calls it stale) is made anew: the caller has checked the file against the
/// template's manifest.
pub fn prepare(pool: &Path) -> Result<Backend, KernelTemplateError> {
    let Some(dev) = Device::open()? else {
        return Ok(Backend::PoolFile);
    };
    let file = open(pool)?;
    // A template with nothing mapped (a copy template, or an allocator fallback) has an
    // empty pool file: there is nothing to attach.
    if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
        return Ok(Backend::PoolFile);
    }
    let q = dev.query(&file, pool)?;
    if q.registered && !q.stale {
        return Ok(Backend::Kernel);
    }
    if q.registered {
        dev.unregister(&file, pool)?;
    }
    match dev.register(&file, pool) {
        // Registered meanwhile by a concurrent restore.
        Ok(_) | Err(KernelTemplateError::AlreadyRegistered { .. }) => Ok(Backend::Kernel),
        Err(e) => Err(e),
    }
}

/// What a restore would use now (`enabled`: `[pool] kernel_templates`), without
/// registering anything.
pub fn current(enabled: bool) -> Result<Backend, KernelTemplateError> {
    if !enabled {
        return Ok(Backend::PoolFile);
    }
    Ok(match Device::open()? {
        Some(_) => Backend::Kernel,
        None => Backend::PoolFile,
    })
}

/// Unregisters `pool` before it is removed. Nothing to do without the module or if it
/// was never registered.
pub fn forget(pool: &Path) -> Result<(), KernelTemplateError> {
    let Some(dev) = Device::open()? else {
        return Ok(());
    };
    let Ok(file) = File::open(pool) else {
        return Ok(());
    };
    match dev.unregister(&file, pool) {
        Ok(_) | Err(KernelTemplateError::NotRegistered { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn open(pool: &Path) -> Result<File, KernelTemplateError> {
    File::open(pool).map_err(|source| KernelTemplateError::Other {
        call: trenv_criu::kernel_templates::Call::Register,
        path: pool.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turned_off_is_the_pool_file_mapping_whatever_the_kernel() {
        assert_eq!(current(false).unwrap(), Backend::PoolFile);
    }

    #[test]
    fn without_the_module_restores_map_the_pool_file_and_removal_has_nothing_to_undo() {
        if Path::new(trenv_criu::kernel_templates::DEVICE).exists() {
            // A kernel with the module: integration/tests/kernel_templates.rs covers it.
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("t.tpl");
        std::fs::write(&pool, [0u8; 4096]).unwrap();
        assert_eq!(prepare(&pool).unwrap(), Backend::PoolFile);
        assert_eq!(current(true).unwrap(), Backend::PoolFile);
        forget(&pool).unwrap();
    }

    #[test]
    fn backends_are_named_as_inspect_shows_them() {
        assert_eq!(
            serde_json::to_value(Backend::PoolFile).unwrap(),
            serde_json::json!("pool-file")
        );
        assert_eq!(
            serde_json::to_value(Backend::Kernel).unwrap(),
            serde_json::json!("kernel")
        );
    }
}
