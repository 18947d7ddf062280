//! Making a template from a running container: CRIU dumps it (it keeps running), the
//! image's memory is moved into a pool file (criu-glue's rewrite), and the template is
//! published by renaming a staging directory, so it either exists complete or not at all.
//! Everything happens in the tenant's own directories of the store and the pool, whose
//! bounds are checked before the dump and again once the template's size is known.
//! The steps: [`Build::dump_and_convert`], [`Build::within_bounds`],
//! [`Build::publish_pool_file`], [`Build::manifest`], [`Build::publish`].

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use trenv_criu::template::{Conversion, MappedMemory, Policy};

use super::kernel::Backend;
use super::manifest::{
    FileSum, MANIFEST, MANIFEST_SUM, Manifest, PoolFile, security_digest, sha256_file, valid_name,
};
use super::mempool::MemPool;
use super::store::{
    STAGING_PREFIX, TemplateStore, TenantLimits, Usage, mark_verified, pool_file_name,
};
use super::tenant::Tenant;
use super::{TemplateError, io};
use crate::container::Location;
use crate::container::spec::private_netns;
use crate::snapshot::honour::SpecRecord;
use crate::snapshot::{self, CheckpointOptions, CriuConfig};
use crate::sys::FileStamp;

/// What to build: template `name` of `tenant` from the container at `at`, in `pool`,
/// within `limits`.
pub struct BuildRequest<'a> {
    pub name: &'a str,
    pub tenant: &'a Tenant,
    pub limits: TenantLimits,
    pub at: &'a Location,
    pub pool: &'a MemPool,
    pub criu: &'a CriuConfig,
    pub policy: &'a Policy,
}

impl TemplateStore {
    /// Checkpoints the running container and publishes it as a template. The container
    /// keeps running. Nothing is left behind on failure.
    pub fn create(&self, req: &BuildRequest<'_>) -> Result<Manifest, TemplateError> {
        let (name, tenant) = (req.name, req.tenant);
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.into()));
        }
        let exists = || TemplateError::Exists {
            name: name.into(),
            tenant: tenant.to_string(),
            store: self.root.clone(),
        };
        if self.dir(tenant, name).exists() {
            return Err(exists());
        }
        if crate::container::spec::user_namespaced(&req.at.spec()?) {
            return Err(TemplateError::UserNamespace {
                name: name.into(),
                action: "made from",
            });
        }
        let store_dir = self.tenant_dir(tenant);
        let pool_dir = req.pool.dir.join(tenant.dir_name());
        // Held until the template is published (or cleaned up): no removal takes the
        // tenant's directories away meanwhile.
        let _tenants = self.tenants_lock(false)?;
        for dir in [&store_dir, &pool_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        // Before anything is dumped: a tenant at its bound makes nothing.
        req.limits
            .admit(tenant, self.usage(tenant, &req.pool.dir)?, 0)?;
        let b = Build {
            store: self,
            req,
            staging: store_dir.join(format!("{STAGING_PREFIX}{name}-{}", std::process::id())),
            pool_tmp: pool_dir.join(format!(".{name}-{}.tpl.tmp", std::process::id())),
        };
        let result = b.run();
        if let Ok(m) = &result {
            b.register(m);
        }
        if result.is_err() {
            let _ = fs::remove_dir_all(&b.staging);
            let _ = fs::remove_file(&b.pool_tmp);
            // The tenant's directories stay (another build may use them): the next
            // removal of a template takes them if they are empty.
        }
        // Two builds of one name at once: the second finds the first's directory.
        result.map_err(|e| match e {
            TemplateError::Io { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
                ) =>
            {
                exists()
            }
            e => e,
        })
    }
}

/// One template being built: its staging directory in the store and its pool file's
/// temporary name.
struct Build<'a> {
    store: &'a TemplateStore,
    req: &'a BuildRequest<'a>,
    staging: PathBuf,
    pool_tmp: PathBuf,
}

/// What the dump and the rewrite produced.
struct Dumped {
    conversion: Conversion,
    criu_version: String,
}

impl Build<'_> {
    fn images(&self) -> PathBuf {
        self.staging.join("images")
    }

    /// With the kernel backend, registers the published template's pool file with the
    /// module now, so that its first restore does not (kernel.rs). A failure here costs
    /// nothing but that: the first restore registers it, or says why it cannot.
    fn register(&self, m: &Manifest) {
        if !matches!(self.store.backend_now(), Ok(Backend::Kernel)) {
            return;
        }
        match super::kernel::prepare(&m.pool.path) {
            Ok(backend) => log::info!(
                "template {}: pool file {} ready for restores ({backend:?})",
                m.name,
                m.pool.path.display()
            ),
            Err(e) => log::warn!(
                "template {}: pool file {} not registered yet, its first restore will: {e}",
                m.name,
                m.pool.path.display()
            ),
        }
    }

    fn run(&self) -> Result<Manifest, TemplateError> {
        let dumped = self.dump_and_convert()?;
        self.within_bounds()?;
        let (pool_path, sum) = self.publish_pool_file()?;
        // From here on a failure must take the pool file with it: nothing else refers to it.
        self.manifest(dumped, &pool_path, sum)
            .and_then(|m| self.publish(m))
            .inspect_err(|_| {
                let _ = fs::remove_file(&pool_path);
            })
    }

    /// CRIU dumps the container into `staging/images`; its memory moves to the pool file's
    /// temporary name; /dev's archives are stored for CRIU to extract itself.
    fn dump_and_convert(&self) -> Result<Dumped, TemplateError> {
        let (name, criu) = (self.req.name, self.req.criu);
        let images = self.images();
        let work = self.staging.join("work");
        let criu_version = criu.criu()?.require_version(criu.cache_dir.as_deref())?;
        let opts = CheckpointOptions {
            for_template: true,
            ..Default::default()
        };
        let convert_err = |source| TemplateError::Convert {
            name: name.into(),
            source,
        };
        // A file of the source's writable layer held at the dump would make every restore
        // fail (an instance's writable layer is fresh): most often a moment's write (a log
        // opened for each line), so the dump is taken again, at most DUMPS times.
        for dump in 1..=DUMPS {
            snapshot::checkpoint(self.req.at, &images, &work, &opts, criu)?;
            let held =
                writable_layer_files(self.req.at, &images).map_err(|e| convert_err(e.into()))?;
            if held.is_empty() {
                break;
            }
            if dump == DUMPS {
                return Err(TemplateError::HeldFiles {
                    name: name.into(),
                    files: held,
                    dumps: DUMPS,
                });
            }
            log::info!(
                "template {name}: the dump held {held:?} of the writable layer; dumping again"
            );
            fs::remove_dir_all(&images).map_err(io(&images))?;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // What the restores on this node will map decides whether a function whose
        // allocator takes discarded memory for zeros can be mapped (allocators.rs).
        let memory = match self.store.backend_now()? {
            Backend::Kernel => MappedMemory::Anonymous,
            Backend::PoolFile => MappedMemory::FileBacked,
        };
        let conversion = trenv_criu::template::convert(
            &images,
            &self.pool_tmp,
            &Manifest::image_name(name),
            self.req.policy,
            memory,
        )
        .map_err(convert_err)?;
        // /dev's content restored by CRIU itself rather than by tar (criu-glue/src/tmpfs.rs).
        trenv_criu::tmpfs::store_archives(&images).map_err(|e| convert_err(e.into()))?;
        let _ = fs::remove_dir_all(&work);
        Ok(Dumped {
            conversion,
            criu_version: criu_version.to_string(),
        })
    }

    /// The tenant's pool files with this template's must stay within its bound of bytes
    /// (the pool file is written now: its size is known).
    fn within_bounds(&self) -> Result<(), TemplateError> {
        let tmp = &self.pool_tmp;
        let mine = fs::metadata(tmp).map_err(io(tmp))?.blocks() * 512;
        let used = self.store.usage(self.req.tenant, &self.req.pool.dir)?;
        let others = Usage {
            templates: 0,
            bytes: used.bytes.saturating_sub(mine),
        };
        TenantLimits {
            max_templates: 0,
            ..self.req.limits
        }
        .admit(self.req.tenant, others, mine)
    }

    /// Makes the pool file immutable and gives it its final name (with a checksum prefix).
    fn publish_pool_file(&self) -> Result<(PathBuf, FileSum), TemplateError> {
        let tmp = &self.pool_tmp;
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o444)).map_err(io(tmp))?;
        let sum = sha256_file(tmp).map_err(io(tmp))?;
        let pool_path = self
            .req
            .pool
            .dir
            .join(self.req.tenant.dir_name())
            .join(pool_file_name(self.req.name, &sum.sha256));
        fs::rename(tmp, &pool_path).map_err(io(&pool_path))?;
        Ok((pool_path, sum))
    }

    /// The manifest: every image file made read-only with its checksum and identity (taken
    /// after the chmod: nothing changes their ctime after this), the pool file, the owner,
    /// the source container's security fields and the fields a restore cannot change.
    fn manifest(
        &self,
        dumped: Dumped,
        pool_path: &Path,
        sum: FileSum,
    ) -> Result<Manifest, TemplateError> {
        let meta = fs::metadata(pool_path).map_err(io(pool_path))?;
        let images = self.images();
        let mut files = BTreeMap::new();
        let mut stamps = BTreeMap::new();
        for e in fs::read_dir(&images).map_err(io(&images))? {
            let e = e.map_err(io(&images))?;
            let fname = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io(&path))?;
            let sum = sha256_file(&path).map_err(io(&path))?;
            let meta = fs::metadata(&path).map_err(io(&path))?;
            files.insert(fname.clone(), sum);
            stamps.insert(fname, FileStamp::of(&meta));
        }
        // The spec as containerd wrote it: what a restoring container's spec is compared to.
        let spec = self.req.at.spec()?;
        Ok(Manifest {
            name: self.req.name.into(),
            tenant: self.req.tenant.clone(),
            created: now_secs(),
            source_container: self.req.at.id.clone(),
            criu_version: dumped.criu_version,
            kernel: kernel_release(),
            security: security_digest(&spec),
            made_with: Some(SpecRecord::of(&spec)),
            heap_included: self.req.policy.include_heap,
            empty_netns: private_netns(&spec),
            conversion: dumped.conversion,
            pool: PoolFile {
                kind: self.req.pool.kind,
                path: pool_path.to_path_buf(),
                sum,
                stamp: FileStamp::of(&meta),
            },
            images: files,
            image_stamps: stamps,
        })
    }

    /// Writes the manifest and its digest and moves the staging directory into the
    /// tenant's directory (renaming the directory leaves its files' ctimes alone).
    fn publish(&self, manifest: Manifest) -> Result<Manifest, TemplateError> {
        let (body, digest) = manifest.encode().map_err(|source| TemplateError::Encode {
            name: manifest.name.clone(),
            source,
        })?;
        for (file, bytes) in [
            (MANIFEST, body.as_slice()),
            (MANIFEST_SUM, digest.as_bytes()),
        ] {
            let path = self.staging.join(file);
            fs::write(&path, bytes).map_err(io(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io(&path))?;
        }
        let final_dir = self.store.dir(self.req.tenant, self.req.name);
        fs::rename(&self.staging, &final_dir).map_err(io(&final_dir))?;
        mark_verified(&manifest, &digest);
        Ok(manifest)
    }
}

/// How many times a dump is taken while it holds files of the writable layer.
const DUMPS: u32 = 3;

/// The regular files of the container's writable layer that the dump in `images` holds
/// open or mapped: files on its rootfs mount that exist in the overlay's upper directory
/// (made or changed by the function), which an instance's fresh writable layer lacks or
/// has otherwise. None for a rootfs that is not an overlay.
fn writable_layer_files(
    at: &Location,
    images: &Path,
) -> Result<Vec<String>, trenv_criu::image::ImageError> {
    let Some(pid) = snapshot::checkpoint::init_pid(at) else {
        return Ok(Vec::new());
    };
    let mounts = crate::sys::mountinfo::read(Some(pid));
    let Some(root) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == Path::new("/"))
    else {
        return Ok(Vec::new());
    };
    let Some(upper) = root
        .super_options
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
    else {
        return Ok(Vec::new());
    };
    let files = trenv_criu::image::regular_files(images)?;
    Ok(in_upper(&files, root.id, Path::new(upper)))
}

/// Of `files`, those on mount `root_id` that are regular files in `upper`.
fn in_upper(files: &[trenv_criu::image::RegularFile], root_id: i32, upper: &Path) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| f.mnt_id == root_id)
        .filter(|f| {
            let rel = f.name.trim_start_matches('/');
            // Regular files only: a directory in the upper layer is one of the image's that
            // got a changed child (a held working directory is still there in an instance),
            // and a whiteout is a deleted file, which CRIU keeps as a ghost.
            !rel.is_empty()
                && upper
                    .join(rel)
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_file())
        })
        .map(|f| format!("/{}", f.name.trim_start_matches('/')))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trenv_criu::image::RegularFile;

    fn file(name: &str, mnt_id: i32) -> RegularFile {
        RegularFile {
            name: name.into(),
            mnt_id,
        }
    }

    #[test]
    fn only_files_of_the_rootfs_mount_that_the_upper_layer_has_are_held() {
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir_all(upper.path().join("tmp")).unwrap();
        fs::write(upper.path().join("tmp/fn.log"), b"x").unwrap();
        let files = [
            // Open in the writable layer: held (CRIU names it with or without the '/').
            file("/tmp/fn.log", 7),
            file("tmp/fn.log", 7),
            // The image's own file (a library): an instance has it.
            file("/usr/lib/libc.so.6", 7),
            // A working directory whose child changed: the image has it too.
            file("/tmp", 7),
            // The same name on another mount (a volume): not the rootfs's.
            file("/tmp/fn.log", 8),
            file("/", 7),
        ];
        assert_eq!(in_upper(&files, 7, upper.path()), vec!["/tmp/fn.log"]);
        assert!(in_upper(&files, 9, upper.path()).is_empty());
    }
}
