//! The template store. A template belongs to a tenant (tenant.rs) and lives in that
//! tenant's directory: `<store>/@TENANT/<NAME>/` holds `images/` (the rewritten CRIU image),
//! `manifest.json` and `manifest.sha256`; its file in the pool is
//! `<pool>/@TENANT/<NAME>-<sha256 prefix>.tpl` (mode 0444). Templates are published whole by
//! [`super::build`] and never modified; here they are found, listed, counted against the
//! tenant's bounds, checked before a restore, and removed.
//!
//! Templates of the layout before tenants (`<store>/<NAME>/`, `<pool>/<NAME>-….tpl`) have
//! no owner that could be trusted: they are listed as such, never restored, and removed
//! with `trenv template rm --legacy NAME` (docs/templates.md).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::manifest::{
    MANIFEST, MANIFEST_SUM, Manifest, security_digest, sha256_file, sha256_hex, valid_name,
};
use super::tenant::Tenant;
use super::{TemplateError, io};
use crate::snapshot::honour::differences;
use crate::sys::FileStamp;

/// Directory (on a tmpfs) remembering which pool files were fully verified since boot, and
/// the digest of the manifest they were verified against.
const VERIFIED_DIR: &str = crate::paths::VERIFIED_DIR;

/// The start of a build's staging directory's name, in its tenant's directory.
pub(crate) const STAGING_PREFIX: &str = ".staging-";

/// The lock file (in the store's root) that keeps tenants' directories while builds use
/// them: a build holds it shared from before it creates its tenant's directories until it
/// has published or cleaned up; a removal takes it exclusive, without waiting, to remove the
/// tenants' directories that no template is left in (if a build holds it, they stay until
/// a later removal).
const TENANTS_LOCK: &str = ".tenants.lock";

/// A template ready to restore: its manifest and images (checked); its pool file checked.
pub struct Checked {
    pub manifest: Manifest,
    pub images: PathBuf,
    /// How its memory will be restored (kernel.rs).
    pub backend: super::kernel::Backend,
}

pub struct TemplateStore {
    pub root: PathBuf,
    /// Restores use the kernel's template module when the kernel has it (kernel.rs).
    kernel_templates: bool,
}

/// What a tenant holds: its templates (with builds in progress) and the pool memory their
/// files take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub templates: u64,
    pub bytes: u64,
}

/// How much of the pool one tenant may take (`[templates]` in trenv's config): at most
/// `max_templates` templates and `max_bytes` bytes of pool files; 0 leaves a bound off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantLimits {
    pub max_templates: u64,
    pub max_bytes: u64,
}

impl TenantLimits {
    /// Whether `tenant`, holding `used`, may add a template of `adding` bytes.
    pub fn admit(&self, tenant: &Tenant, used: Usage, adding: u64) -> Result<(), TemplateError> {
        let full = |what: String| TemplateError::TenantFull {
            tenant: tenant.to_string(),
            what,
        };
        if self.max_templates > 0 && used.templates >= self.max_templates {
            return Err(full(format!(
                "it has {} templates, the most [templates] max_per_tenant = {} allows",
                used.templates, self.max_templates
            )));
        }
        if self.max_bytes > 0 && used.bytes.saturating_add(adding) > self.max_bytes {
            return Err(full(format!(
                "its pool files take {} MiB{}, over [templates] max_bytes_per_tenant = {} MiB",
                used.bytes >> 20,
                if adding > 0 {
                    format!(" and this template {} MiB more", adding >> 20)
                } else {
                    String::new()
                },
                self.max_bytes >> 20
            )));
        }
        Ok(())
    }
}

impl TemplateStore {
    /// The node's store as trenv's config sets it up: its directory, and whether restores
    /// may use the kernel's template module. Every user of the node's templates (the shim,
    /// its worker, the CLI) takes it from here, so that they agree on the backend.
    pub fn of_node(config: &crate::config::Config) -> TemplateStore {
        TemplateStore::new(&config.templates.dir)
            .with_kernel_templates(config.pool.kernel_templates)
    }

    pub fn new(root: &Path) -> TemplateStore {
        TemplateStore {
            root: root.to_path_buf(),
            kernel_templates: true,
        }
    }

    /// Whether restores may use the kernel's template module (`[pool] kernel_templates`).
    pub fn with_kernel_templates(mut self, on: bool) -> TemplateStore {
        self.kernel_templates = on;
        self
    }

    /// The backend restores on this node use now (kernel.rs), without registering anything.
    pub fn backend_now(&self) -> Result<super::kernel::Backend, TemplateError> {
        Ok(super::kernel::current(self.kernel_templates)?)
    }

    /// The directory of `tenant`'s templates.
    pub fn tenant_dir(&self, tenant: &Tenant) -> PathBuf {
        self.root.join(tenant.dir_name())
    }

    pub(crate) fn dir(&self, tenant: &Tenant, name: &str) -> PathBuf {
        self.tenant_dir(tenant).join(name)
    }

    fn not_found(&self, tenant: &Tenant, name: &str) -> TemplateError {
        TemplateError::NotFound {
            name: name.into(),
            tenant: tenant.to_string(),
            store: self.root.clone(),
        }
    }

    pub fn get(&self, tenant: &Tenant, name: &str) -> Result<Manifest, TemplateError> {
        self.read(tenant, name).map(|(m, _)| m)
    }

    /// The manifest of `tenant`'s template `name` and its digest, checked against
    /// `manifest.sha256` and against the place it was found in.
    fn read(&self, tenant: &Tenant, name: &str) -> Result<(Manifest, String), TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.into()));
        }
        let dir = self.dir(tenant, name);
        let path = dir.join(MANIFEST);
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.not_found(tenant, name));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |what: String| TemplateError::Corrupt {
            name: name.into(),
            what,
        };
        let sum_path = dir.join(MANIFEST_SUM);
        let want =
            fs::read_to_string(&sum_path).map_err(|e| corrupt(format!("{MANIFEST_SUM}: {e}")))?;
        let digest = sha256_hex(&raw);
        if want.trim() != digest {
            return Err(corrupt(format!("{MANIFEST} does not match {MANIFEST_SUM}")));
        }
        let m: Manifest =
            serde_json::from_slice(&raw).map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?;
        if m.name != name || &m.tenant != tenant {
            return Err(corrupt(format!(
                "{MANIFEST} is template {} of tenant {}, found as {name} of tenant {tenant}",
                m.name, m.tenant
            )));
        }
        if let Some(bad) = m.images.keys().find(|f| !plain_file_name(f)) {
            return Err(corrupt(format!("{MANIFEST} names image file {bad:?}")));
        }
        Ok((m, digest))
    }

    /// The templates of `only` (every tenant's if `None`), and the errors of those that
    /// cannot be read (a damaged template must not hide the others), with the templates of
    /// the layout before tenants among them when every tenant is listed.
    pub fn list(
        &self,
        only: Option<&Tenant>,
    ) -> Result<(Vec<Manifest>, Vec<TemplateError>), TemplateError> {
        let mut out = Vec::new();
        let mut broken = Vec::new();
        let tenants: Vec<Tenant> = match only {
            Some(t) => vec![t.clone()],
            None => {
                let mut all = Vec::new();
                for (entry, path) in entries(&self.root)? {
                    match Tenant::from_dir_name(&entry) {
                        Some(t) => all.push(t),
                        None if path.join(MANIFEST).exists() => {
                            broken.push(TemplateError::Legacy {
                                name: entry,
                                dir: path,
                            })
                        }
                        None => {}
                    }
                }
                all
            }
        };
        for t in &tenants {
            for (name, _) in entries(&self.tenant_dir(t))? {
                match self.get(t, &name) {
                    Ok(m) => out.push(m),
                    // Removed while we were listing.
                    Err(TemplateError::NotFound { .. }) => {}
                    Err(e) => broken.push(e),
                }
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok((out, broken))
    }

    /// Removes `tenant`'s template `name` and its file in the pool (`pool_dir` is the
    /// configured pool's directory). Works whatever state the template is in: a manifest
    /// that cannot be read or fails its checks does not keep the pool file, which is found
    /// by its name. Running instances keep their mappings of the (unlinked) file.
    pub fn remove(
        &self,
        tenant: &Tenant,
        name: &str,
        pool_dir: &Path,
    ) -> Result<(), TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.into()));
        }
        let dir = self.dir(tenant, name);
        if fs::symlink_metadata(&dir).is_err() {
            return Err(self.not_found(tenant, name));
        }
        let mut files = pool_files_of(&pool_dir.join(tenant.dir_name()), name);
        // The manifest's record too, when it reads: the pool's directory may have been
        // configured elsewhere since. Only a file of this template's name and tenant.
        if let Ok((m, _)) = self.read(tenant, name) {
            let p = m.pool.path;
            let ours = p
                .file_name()
                .is_some_and(|f| is_pool_file_of(&f.to_string_lossy(), name))
                && p.parent()
                    .and_then(Path::file_name)
                    .map(|d| d.to_string_lossy())
                    == Some(tenant.dir_name().into());
            if ours && !files.contains(&p) {
                files.push(p);
            }
        }
        // Registered with the kernel's template module, a file's memory stays until it is
        // unregistered.
        for p in &files {
            super::kernel::forget(p)?;
        }
        remove_pool_files(&files)?;
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
        self.remove_empty_tenants(pool_dir);
        Ok(())
    }

    /// The tenants' lock ([`TENANTS_LOCK`]), shared for a build, exclusive (without
    /// waiting: `None` while a build holds it) for [`Self::remove_empty_tenants`].
    pub(crate) fn tenants_lock(
        &self,
        exclusive: bool,
    ) -> Result<Option<nix::fcntl::Flock<fs::File>>, TemplateError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.root.join(TENANTS_LOCK);
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let arg = if exclusive {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockShared
        };
        match Flock::lock(f, arg) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if exclusive => Ok(None),
            Err((_, e)) => Err(TemplateError::Io {
                path,
                source: e.into(),
            }),
        }
    }

    /// Removes every tenant's directory of the store and of `pool_dir` that is empty (the
    /// last template of the tenant removed; tests and sub-tenants leave many), unless a
    /// build holds the tenants' lock. Best effort: a directory that cannot go stays.
    pub fn remove_empty_tenants(&self, pool_dir: &Path) {
        let Ok(Some(_lock)) = self.tenants_lock(true) else {
            return;
        };
        for root in [self.root.as_path(), pool_dir] {
            let Ok(found) = entries(root) else { continue };
            for (name, path) in found {
                if Tenant::from_dir_name(&name).is_some() {
                    // rmdir: only an empty directory goes.
                    let _ = fs::remove_dir(&path);
                }
            }
        }
    }

    /// Removes a template of the layout before tenants, `<store>/<NAME>/`, and its pool file
    /// `<pool>/<NAME>-….tpl`, without reading its manifest.
    pub fn remove_legacy(&self, name: &str, pool_dir: &Path) -> Result<(), TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.into()));
        }
        let dir = self.root.join(name);
        if fs::symlink_metadata(&dir).is_err() {
            return Err(TemplateError::LegacyNotFound {
                name: name.into(),
                store: self.root.clone(),
            });
        }
        remove_pool_files(&pool_files_of(pool_dir, name))?;
        fs::remove_dir_all(&dir).map_err(io(&dir))
    }

    /// What `tenant` holds now: its templates and builds in progress (directories of its
    /// store directory) and the space its pool files take (allocated blocks: they are
    /// sparse).
    pub fn usage(&self, tenant: &Tenant, pool_dir: &Path) -> Result<Usage, TemplateError> {
        let templates = entries_all(&self.tenant_dir(tenant))?
            .iter()
            .filter(|(n, _)| !n.starts_with('.') || n.starts_with(STAGING_PREFIX))
            .count() as u64;
        let pool = pool_dir.join(tenant.dir_name());
        let mut bytes = 0u64;
        for (_, path) in entries(&pool)? {
            if let Ok(m) = fs::symlink_metadata(&path) {
                bytes = bytes.saturating_add(m.blocks() * 512);
            }
        }
        Ok(Usage { templates, bytes })
    }

    /// Checks `tenant`'s template `name` before a restore into a container with `spec`:
    /// the manifest against its digest, every image file and the pool file against their
    /// identities and, on the first restore after a boot (the pool may be persistent
    /// memory), against their checksums; the spec's security fields, and the fields a
    /// restore cannot change (environment variables named in `env_may_differ` aside),
    /// against the source's.
    pub fn check(
        &self,
        tenant: &Tenant,
        name: &str,
        spec: &Spec,
        env_may_differ: &[String],
    ) -> Result<Checked, TemplateError> {
        if crate::container::spec::user_namespaced(spec) {
            return Err(TemplateError::UserNamespace {
                name: name.into(),
                action: "restored into",
            });
        }
        let (m, digest) = self.read(tenant, name)?;
        let corrupt = |what: String| TemplateError::Corrupt {
            name: name.into(),
            what,
        };
        let marker = verified_path(&m.pool.path);
        let full = match fs::read_to_string(&marker) {
            Ok(d) if d == digest => false,
            Ok(_) => {
                return Err(corrupt(format!(
                    "{MANIFEST} changed after the template was verified"
                )));
            }
            Err(_) => true,
        };
        let images = self.dir(tenant, name).join("images");
        let mut seen = 0;
        for e in fs::read_dir(&images).map_err(io(&images))?.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let (Some(want), Some(stamp)) = (m.images.get(&fname), m.image_stamps.get(&fname))
            else {
                return Err(corrupt(format!("unexpected file images/{fname}")));
            };
            let meta = e.metadata().map_err(io(&e.path()))?;
            if &FileStamp::of(&meta) != stamp {
                return Err(corrupt(format!("images/{fname} was modified")));
            }
            if full && &sha256_file(&e.path()).map_err(io(&e.path()))? != want {
                return Err(corrupt(format!("images/{fname} changed")));
            }
            seen += 1;
        }
        if seen != m.images.len() || seen != m.image_stamps.len() {
            return Err(corrupt("files missing from images/".into()));
        }
        check_pool_file(&m, full)?;
        if full {
            mark_verified(&m, &digest);
        }
        let security = security_digest(spec);
        if security != m.security {
            return Err(TemplateError::SpecMismatch {
                name: name.into(),
                fields: "user, capabilities, no_new_privileges, LSM labels, seccomp, masked or \
                         read-only paths"
                    .into(),
            });
        }
        let made_with = m
            .made_with
            .as_ref()
            .ok_or_else(|| TemplateError::Outdated {
                name: name.into(),
                tenant: tenant.to_string(),
            })?;
        differences(made_with, spec, env_may_differ).map_err(|d| TemplateError::SpecDiffers {
            name: name.into(),
            difference: d,
        })?;
        let backend = if self.kernel_templates {
            super::kernel::prepare(&m.pool.path)?
        } else {
            super::kernel::forget(&m.pool.path)?;
            super::kernel::Backend::PoolFile
        };
        if let (Some(why), super::kernel::Backend::PoolFile) =
            (&m.conversion.needs_anonymous, backend)
        {
            return Err(TemplateError::NeedsKernelBackend {
                name: name.into(),
                why: why.clone(),
            });
        }
        Ok(Checked {
            manifest: m,
            images,
            backend,
        })
    }
}

/// The entries of `dir` that are not hidden, by name; none if it does not exist.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, TemplateError> {
    Ok(entries_all(dir)?
        .into_iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .collect())
}

fn entries_all(dir: &Path) -> Result<Vec<(String, PathBuf)>, TemplateError> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// A file name without a directory part.
fn plain_file_name(f: &str) -> bool {
    !f.is_empty() && f != "." && f != ".." && !f.contains('/')
}

/// The pool file name of template `name` whose content has SHA-256 `sum`.
pub(crate) fn pool_file_name(name: &str, sum: &str) -> String {
    format!("{name}-{}.tpl", &sum[..12])
}

/// Whether `file` is the name of a pool file of template `name`: `NAME-` twelve hex digits
/// `.tpl`, which no other template's file matches (the digits end the name).
fn is_pool_file_of(file: &str, name: &str) -> bool {
    file.strip_prefix(name)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".tpl"))
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Template `name`'s files in pool directory `dir`.
fn pool_files_of(dir: &Path, name: &str) -> Vec<PathBuf> {
    entries_all(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(f, _)| is_pool_file_of(f, name))
        .map(|(_, p)| p)
        .collect()
}

fn remove_pool_files(files: &[PathBuf]) -> Result<(), TemplateError> {
    for p in files {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(p)(e)),
        }
        let _ = fs::remove_file(verified_path(p));
    }
    Ok(())
}

/// Where the verification of pool file `pool` is recorded: named by a digest of its path
/// (a tenant's directory and a template's name may be long together).
fn verified_path(pool: &Path) -> PathBuf {
    let key = sha256_hex(pool.as_os_str().as_encoded_bytes());
    Path::new(VERIFIED_DIR).join(&key[..32])
}

/// Records that `m`'s files were verified against the manifest of digest `digest`.
pub(crate) fn mark_verified(m: &Manifest, digest: &str) {
    if fs::create_dir_all(VERIFIED_DIR).is_ok() {
        let _ = fs::write(verified_path(&m.pool.path), digest);
    }
}

/// The pool file is what was published: same inode and ctime (any write or chmod changes
/// ctime), and — when `full`, once per boot, since the pool may be persistent memory —
/// same content.
fn check_pool_file(m: &Manifest, full: bool) -> Result<(), TemplateError> {
    let corrupt = |what: String| TemplateError::Corrupt {
        name: m.name.clone(),
        what,
    };
    let path = &m.pool.path;
    let meta =
        fs::metadata(path).map_err(|e| corrupt(format!("pool file {}: {e}", path.display())))?;
    if FileStamp::of(&meta) != m.pool.stamp {
        return Err(corrupt(format!(
            "pool file {} was modified after the template was made",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o222 != 0 {
        return Err(corrupt(format!("pool file {} is writable", path.display())));
    }
    if full {
        let sum =
            sha256_file(path).map_err(|e| corrupt(format!("pool file {}: {e}", path.display())))?;
        if sum != m.pool.sum {
            return Err(corrupt(format!(
                "pool file {} has different content",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::honour::SpecRecord;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("pyfn"));
        assert!(valid_name("py-fn.v2_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Py"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn a_missing_template_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        let t = Tenant::namespace("default").unwrap();
        let e = store.get(&t, "nope").unwrap_err().to_string();
        assert!(
            e.contains("trenv template create nope --from CONTAINER"),
            "{e}"
        );
        assert!(store.list(None).unwrap().0.is_empty());
    }

    use crate::error::{Classified, ErrorKind};
    use crate::template::mempool::MemPoolKind;
    use crate::template::{FileSum, PoolFile};
    use std::collections::BTreeMap;

    fn spec() -> Spec {
        serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/"}}"#,
        )
        .unwrap()
    }

    /// A store and a pool in a temporary directory.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: TemplateStore,
        pool: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let pool = dir.path().join("pool");
            Fixture {
                store: TemplateStore::new(&dir.path().join("store")),
                pool,
                _dir: dir,
            }
        }

        /// Publishes template `name` of `tenant` as build.rs does, without CRIU: two image
        /// files and a pool file, read-only, with their sums and identities.
        fn publish(&self, tenant: &Tenant, name: &str) -> Manifest {
            self.publish_converted(tenant, name, Default::default())
        }

        /// [`Fixture::publish`] with what the conversion said.
        fn publish_converted(
            &self,
            tenant: &Tenant,
            name: &str,
            conversion: trenv_criu::template::Conversion,
        ) -> Manifest {
            let dir = self.store.dir(tenant, name);
            let images = dir.join("images");
            fs::create_dir_all(&images).unwrap();
            let mut files = BTreeMap::new();
            let mut stamps = BTreeMap::new();
            for (f, body) in [
                ("core-1.img", &b"core of the process"[..]),
                ("pages-1.img", &[7u8; 8192][..]),
            ] {
                let p = images.join(f);
                fs::write(&p, body).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
                files.insert(f.to_string(), sha256_file(&p).unwrap());
                stamps.insert(f.to_string(), FileStamp::of(&fs::metadata(&p).unwrap()));
            }
            let pool_dir = self.pool.join(tenant.dir_name());
            fs::create_dir_all(&pool_dir).unwrap();
            let body = format!("memory of {tenant} {name}");
            let sum = FileSum {
                size: body.len() as u64,
                sha256: sha256_hex(body.as_bytes()),
            };
            let pool_path = pool_dir.join(pool_file_name(name, &sum.sha256));
            fs::write(&pool_path, &body).unwrap();
            fs::set_permissions(&pool_path, fs::Permissions::from_mode(0o444)).unwrap();
            let m = Manifest {
                name: name.into(),
                tenant: tenant.clone(),
                created: 0,
                source_container: "src".into(),
                criu_version: "4.1.1".into(),
                kernel: "test".into(),
                security: security_digest(&spec()),
                made_with: Some(SpecRecord::of(&spec())),
                heap_included: false,
                empty_netns: false,
                conversion,
                pool: PoolFile {
                    kind: MemPoolKind::Tmpfs,
                    stamp: FileStamp::of(&fs::metadata(&pool_path).unwrap()),
                    path: pool_path,
                    sum,
                },
                images: files,
                image_stamps: stamps,
            };
            let (body, digest) = m.encode().unwrap();
            fs::write(dir.join(MANIFEST), body).unwrap();
            fs::write(dir.join(MANIFEST_SUM), &digest).unwrap();
            mark_verified(&m, &digest);
            m
        }
    }

    fn tenant(s: &str) -> Tenant {
        s.parse().unwrap()
    }

    #[test]
    fn another_tenants_template_is_not_found_and_not_listed_for_it() {
        let f = Fixture::new();
        let (a, b) = (tenant("ns-a"), tenant("k8s.io/team-b"));
        f.publish(&a, "fn");
        assert!(f.store.check(&a, "fn", &spec(), &[]).is_ok());
        for e in [
            f.store.get(&b, "fn").unwrap_err(),
            f.store.check(&b, "fn", &spec(), &[]).err().unwrap(),
        ] {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains("tenant k8s.io/team-b"), "{e}");
        }
        assert!(f.store.list(Some(&b)).unwrap().0.is_empty());
        // B's own template of the same name is another template.
        f.publish(&b, "fn");
        let (all, broken) = f.store.list(None).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        let owners: Vec<String> = all
            .iter()
            .map(|m| format!("{}:{}", m.tenant, m.name))
            .collect();
        assert_eq!(owners, ["k8s.io/team-b:fn", "ns-a:fn"]);
        assert_ne!(all[0].pool.path, all[1].pool.path);
        // A template moved into another tenant's directory is not that tenant's.
        let stolen = f.store.dir(&tenant("ns-c"), "fn");
        fs::create_dir_all(stolen.parent().unwrap()).unwrap();
        std::process::Command::new("cp")
            .arg("-a")
            .arg(f.store.dir(&a, "fn"))
            .arg(&stolen)
            .status()
            .unwrap();
        let e = f
            .store
            .check(&tenant("ns-c"), "fn", &spec(), &[])
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("of tenant ns-a, found as fn of tenant ns-c"),
            "{e}"
        );
    }

    #[test]
    fn a_template_made_for_the_kernel_backend_is_refused_where_restores_map_the_pool_file() {
        let f = Fixture::new();
        let t = tenant("default");
        let why = "process 1 maps /usr/lib/x86_64-linux-gnu/libjemalloc.so.2: jemalloc takes \
                   memory it discarded with madvise to read as zeros";
        let conversion = trenv_criu::template::Conversion {
            needs_anonymous: Some(why.into()),
            ..Default::default()
        };
        f.publish_converted(&t, "fn", conversion);
        f.publish(&t, "plain");
        let store = TemplateStore::new(&f.store.root).with_kernel_templates(false);
        let e = store.check(&t, "fn", &spec(), &[]).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        let e = e.to_string();
        assert!(e.contains("made for the kernel backend (trenv-mmt)"), "{e}");
        assert!(e.contains("libjemalloc.so.2"), "{e}");
        assert!(e.contains("make it again"), "{e}");
        // A template that needs nothing more restores with either backend.
        let plain = store.check(&t, "plain", &spec(), &[]).ok().unwrap();
        assert_eq!(plain.backend, crate::template::kernel::Backend::PoolFile);
    }

    #[test]
    fn an_image_edited_in_place_with_its_mtime_restored_is_caught() {
        let f = Fixture::new();
        let t = tenant("default");
        f.publish(&t, "fn");
        let p = f.store.dir(&t, "fn").join("images/pages-1.img");
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut bytes = fs::read(&p).unwrap();
        bytes[100] ^= 0xff;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, &bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
        fs::File::open(&p)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(mtime))
            .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        let e = f.store.check(&t, "fn", &spec(), &[]).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("modified or corrupted"), "{e}");
        assert!(
            e.to_string().contains("images/pages-1.img was modified"),
            "{e}"
        );
    }

    #[test]
    fn a_restore_whose_environment_differs_is_refused_naming_the_variable() {
        let f = Fixture::new();
        let t = tenant("default");
        f.publish(&t, "fn");
        let mut other: Spec = spec();
        if let Some(p) = other.process_mut() {
            p.set_env(Some(vec!["API_KEY=other".into()]));
        }
        let e = f.store.check(&t, "fn", &other, &[]).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        let msg = e.to_string();
        assert!(msg.contains("process.env"), "{msg}");
        assert!(msg.contains("this spec sets API_KEY"), "{msg}");
        assert!(!msg.contains("other"), "{msg}");
        // Named as one that may differ, it restores.
        assert!(f.store.check(&t, "fn", &other, &["API_KEY".into()]).is_ok());
    }

    #[test]
    fn a_manifest_from_before_the_recorded_fields_is_refused_saying_to_re_create_it() {
        let f = Fixture::new();
        let t = tenant("default");
        let mut m = f.publish(&t, "fn");
        m.made_with = None;
        let dir = f.store.dir(&t, "fn");
        let (body, digest) = m.encode().unwrap();
        // As written before: no such field at all.
        let body = String::from_utf8(body)
            .unwrap()
            .replace("\"made_with\": null,", "");
        let digest_of = sha256_hex(body.as_bytes());
        assert_ne!(digest, digest_of);
        fs::write(dir.join(MANIFEST), &body).unwrap();
        fs::write(dir.join(MANIFEST_SUM), &digest_of).unwrap();
        mark_verified(&m, &digest_of);
        let e = f.store.check(&t, "fn", &spec(), &[]).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("re-create it"), "{e}");
    }

    #[test]
    fn a_tampered_manifest_is_caught() {
        let f = Fixture::new();
        let t = tenant("default");
        f.publish(&t, "fn");
        let dir = f.store.dir(&t, "fn");
        let original = fs::read_to_string(dir.join(MANIFEST)).unwrap();
        let edited = original.replace("\"src\"", "\"evil\"");
        assert_ne!(edited, original);
        fs::write(dir.join(MANIFEST), &edited).unwrap();
        let e = f.store.check(&t, "fn", &spec(), &[]).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(
            e.to_string()
                .contains("manifest.json does not match manifest.sha256"),
            "{e}"
        );
        // Rewritten with its sum after it was verified: the verification record catches it.
        fs::write(dir.join(MANIFEST_SUM), sha256_hex(edited.as_bytes())).unwrap();
        let e = f.store.check(&t, "fn", &spec(), &[]).err().unwrap();
        assert!(
            e.to_string()
                .contains("changed after the template was verified"),
            "{e}"
        );
    }

    #[test]
    fn a_template_with_a_corrupt_manifest_is_removed_with_its_pool_file_only() {
        let f = Fixture::new();
        let t = tenant("default");
        let m = f.publish(&t, "a");
        let other = f.publish(&t, "a-b");
        let elsewhere = f.publish(&tenant("ns-b"), "a");
        fs::write(f.store.dir(&t, "a").join(MANIFEST), "{ not json").unwrap();
        assert!(f.store.get(&t, "a").is_err());
        f.store.remove(&t, "a", &f.pool).unwrap();
        assert!(!f.store.dir(&t, "a").exists());
        assert!(!m.pool.path.exists(), "pool file of a left");
        assert!(other.pool.path.exists() && elsewhere.pool.path.exists());
        assert!(f.store.check(&t, "a-b", &spec(), &[]).is_ok());
        let e = f.store.remove(&t, "a", &f.pool).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        // A manifest pointing elsewhere does not make rm remove that file.
        let victim = f._dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let dir = f.store.dir(&t, "a-b");
        let raw = fs::read_to_string(dir.join(MANIFEST)).unwrap();
        let raw = raw.replace(
            &other.pool.path.display().to_string(),
            &victim.display().to_string(),
        );
        fs::write(dir.join(MANIFEST_SUM), sha256_hex(raw.as_bytes())).unwrap();
        fs::write(dir.join(MANIFEST), raw).unwrap();
        f.store.remove(&t, "a-b", &f.pool).unwrap();
        assert!(victim.exists() && !other.pool.path.exists());
    }

    #[test]
    fn a_tenant_s_last_template_removed_takes_its_empty_directories_unless_a_build_holds_them() {
        let f = Fixture::new();
        let (a, b) = (tenant("ns-a"), tenant("ns-b"));
        f.publish(&a, "one");
        f.publish(&a, "two");
        f.publish(&b, "one");
        // An empty tenant directory an older trenv left (store and pool), and a file that is
        // not a tenant's.
        let old = tenant("ns-old");
        fs::create_dir_all(f.store.tenant_dir(&old)).unwrap();
        fs::create_dir_all(f.pool.join(old.dir_name())).unwrap();
        fs::create_dir_all(f.store.root.join("not-a-tenant")).unwrap();
        f.store.remove(&a, "one", &f.pool).unwrap();
        assert!(f.store.tenant_dir(&a).is_dir(), "a still has a template");
        assert!(!f.store.tenant_dir(&old).exists() && !f.pool.join(old.dir_name()).exists());
        assert!(f.store.root.join("not-a-tenant").is_dir());
        // While a build holds the lock (shared), the directories stay.
        let build = f.store.tenants_lock(false).unwrap();
        f.store.remove(&a, "two", &f.pool).unwrap();
        assert!(f.store.tenant_dir(&a).is_dir() && f.pool.join(a.dir_name()).is_dir());
        drop(build);
        f.store.remove(&b, "one", &f.pool).unwrap();
        for t in [&a, &b] {
            assert!(!f.store.tenant_dir(t).exists(), "{t}");
            assert!(!f.pool.join(t.dir_name()).exists(), "{t}");
        }
        assert_eq!(f.store.list(None).unwrap().0.len(), 0);
    }

    #[test]
    fn pool_files_are_found_by_their_exact_name() {
        assert!(is_pool_file_of("fn-0123456789ab.tpl", "fn"));
        assert!(!is_pool_file_of("fn-b-0123456789ab.tpl", "fn"));
        assert!(!is_pool_file_of("fn-0123456789ab.tpl.tmp", "fn"));
        assert!(!is_pool_file_of(".fn-12.tpl.tmp", "fn"));
        assert!(!is_pool_file_of("fn-0123456789a.tpl", "fn"));
        assert_eq!(
            pool_file_name("fn", &"ab".repeat(32)),
            "fn-abababababab.tpl"
        );
    }

    #[test]
    fn a_tenant_at_its_bound_is_refused_with_what_to_do() {
        let f = Fixture::new();
        let t = tenant("ns-a");
        assert_eq!(f.store.usage(&t, &f.pool).unwrap(), Usage::default());
        f.publish(&t, "one");
        f.publish(&tenant("ns-b"), "two");
        let used = f.store.usage(&t, &f.pool).unwrap();
        assert_eq!(used.templates, 1);
        assert!(used.bytes > 0);
        let count = TenantLimits {
            max_templates: 1,
            max_bytes: 0,
        };
        let e = count.admit(&t, used, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        let msg = e.to_string();
        assert!(msg.contains("max_per_tenant = 1"), "{msg}");
        assert!(
            msg.contains("trenv template rm NAME --tenant ns-a"),
            "{msg}"
        );
        let bytes = TenantLimits {
            max_templates: 0,
            max_bytes: used.bytes + 10,
        };
        assert!(bytes.admit(&t, used, 10).is_ok());
        let e = bytes.admit(&t, used, 11 << 20).unwrap_err();
        assert!(e.to_string().contains("this template 11 MiB more"), "{e}");
        assert!(TenantLimits::default().admit(&t, used, u64::MAX).is_ok());
    }

    #[test]
    fn templates_of_the_layout_before_tenants_are_named_and_removable() {
        let f = Fixture::new();
        let old = f.store.root.join("oldfn");
        fs::create_dir_all(old.join("images")).unwrap();
        fs::write(old.join(MANIFEST), "{}").unwrap();
        fs::create_dir_all(&f.pool).unwrap();
        let pool_file = f.pool.join("oldfn-0123456789ab.tpl");
        fs::write(&pool_file, "x").unwrap();
        let (all, broken) = f.store.list(None).unwrap();
        assert!(all.is_empty());
        assert!(matches!(&broken[..], [TemplateError::Legacy { name, .. }] if name == "oldfn"));
        assert!(
            broken[0]
                .to_string()
                .contains("trenv template rm --legacy oldfn")
        );
        // No tenant finds it.
        assert_eq!(
            f.store.get(&tenant("default"), "oldfn").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        f.store.remove_legacy("oldfn", &f.pool).unwrap();
        assert!(!old.exists() && !pool_file.exists());
    }

    #[test]
    fn security_digest_follows_the_user_and_seccomp() {
        let a: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/"}}"#,
        )
        .unwrap();
        let b: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":1000,"gid":0},"cwd":"/"}}"#,
        )
        .unwrap();
        let a2: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/tmp","args":["x"]}}"#,
        )
        .unwrap();
        assert_ne!(security_digest(&a), security_digest(&b));
        assert_eq!(security_digest(&a), security_digest(&a2));
        let caps = |order: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","process":{{"user":{{"uid":0,"gid":0}},"cwd":"/",
                   "capabilities":{{"bounding":[{order}]}}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            security_digest(&caps(r#""CAP_KILL","CAP_CHOWN""#)),
            security_digest(&caps(r#""CAP_CHOWN","CAP_KILL""#))
        );
    }
}
