//! Memory templates: a function checkpointed once, its memory moved to a pool file, restored
//! by mapping that file copy-on-write (docs/design/templates.md §5).
//!
//! A template is `<store>/<NAME>/` holding `images/` (the rewritten CRIU image) and
//! `manifest.json` (checksums, source, conversion), plus its file in the pool,
//! `<pool>/<NAME>-<sha256 prefix>.tpl` (mode 0444). It is published by renaming a staging
//! directory, so it either exists complete or not at all, and it is never modified.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trenv_criu::template::{Conversion, Policy, TemplateError as ConvertError};

use crate::checkpoint::{self, CheckpointOptions, CriuConfig};
use crate::error::RuntimeError;
use crate::pool::{Pool, PoolKind};
use crate::sandbox::Location;

/// Annotation naming the template a container is restored from.
pub const TEMPLATE_ANNOTATION: &str = "io.trenv.template";

/// Directory (on a tmpfs) remembering which pool files were fully verified since boot.
const VERIFIED_DIR: &str = "/run/trenv/verified";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "invalid template name {0:?}: use 1-63 lower-case letters, digits, '.', '_' or '-', \
         starting with a letter or digit"
    )]
    BadName(String),
    #[error(
        "template {name} already exists in {store}; remove it first (trenv template rm {name})"
    )]
    Exists { name: String, store: PathBuf },
    #[error(
        "template {name} not found in {store}; create it with `trenv template create {name} \
         --from CONTAINER`"
    )]
    NotFound { name: String, store: PathBuf },
    #[error(
        "template {name} failed its checksum ({what}); it was modified or corrupted: remove \
         and re-create it"
    )]
    Corrupt { name: String, what: String },
    #[error(
        "template {name} was made from a container with different security settings \
         ({fields}); CRIU restores credentials, capabilities and seccomp from the template, \
         so the new container's spec must match"
    )]
    SpecMismatch { name: String, fields: String },
    #[error("template {name}: {source}")]
    Convert {
        name: String,
        #[source]
        source: ConvertError,
    },
    #[error("template store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Size and SHA-256 of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub size: u64,
    pub sha256: String,
}

/// Identity of the pool file as it was published: any write or chmod changes its ctime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl Stamp {
    pub fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolFile {
    pub kind: PoolKind,
    pub path: PathBuf,
    pub sum: FileSum,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub source_container: String,
    pub criu_version: String,
    pub kernel: String,
    /// SHA-256 of the spec fields CRIU restores from the image (see [`security_digest`]).
    pub security: String,
    pub heap_included: bool,
    /// The container's own network namespace was dumped empty: restores bring up `lo`.
    #[serde(default)]
    pub empty_netns: bool,
    pub conversion: Conversion,
    pub pool: PoolFile,
    /// Every file of `images/`, by name.
    pub images: BTreeMap<String, FileSum>,
    /// Their identity (inode, size, mtime): checked on every restore, while the checksums
    /// are checked on the first restore after a boot. Not ctime: staging a restore links
    /// the files, which changes it.
    pub image_stamps: BTreeMap<String, ImageStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStamp {
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl ImageStamp {
    fn of(m: &fs::Metadata) -> ImageStamp {
        ImageStamp {
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

impl Manifest {
    /// The name under which the pool file appears in the image (and the `inherit_fd` key
    /// without its leading '/').
    pub fn image_name(name: &str) -> String {
        format!("/trenv-template/{name}")
    }
}

/// A template ready to restore: its images (checked) and its pool file (opened, checked).
pub struct Checked {
    pub manifest: Manifest,
    pub images: PathBuf,
}

pub struct TemplateStore {
    pub root: PathBuf,
}

pub(crate) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

pub fn sha256_file(path: &Path) -> Result<FileSum, std::io::Error> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileSum {
        size,
        sha256: format!("{:x}", h.finalize()),
    })
}

/// The fields of a spec that a restored process takes from the image instead: the user,
/// capabilities, no_new_privileges, LSM labels and the seccomp profile, plus masked and
/// read-only paths (part of the restored mount tree).
pub fn security_digest(spec: &Spec) -> String {
    let p = spec.process().as_ref();
    let l = spec.linux().as_ref();
    let fields = serde_json::json!({
        "user": p.map(|p| p.user()),
        "capabilities": p.and_then(|p| p.capabilities().as_ref()),
        "noNewPrivileges": p.and_then(|p| p.no_new_privileges()),
        "apparmorProfile": p.and_then(|p| p.apparmor_profile().as_ref()),
        "selinuxLabel": p.and_then(|p| p.selinux_label().as_ref()),
        "seccomp": l.and_then(|l| l.seccomp().as_ref()),
        "maskedPaths": l.and_then(|l| l.masked_paths().as_ref()),
        "readonlyPaths": l.and_then(|l| l.readonly_paths().as_ref()),
    });
    format!(
        "{:x}",
        Sha256::digest(canonical(fields).to_string().as_bytes())
    )
}

/// Sorts every array of strings (capability sets are hash sets in oci-spec: their order
/// differs from process to process); object keys are already sorted by serde_json.
fn canonical(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(canonical).collect();
            if items.iter().all(Value::is_string) {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            Value::Array(items)
        }
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, canonical(v))).collect())
        }
        other => other,
    }
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

impl TemplateStore {
    pub fn new(root: &Path) -> TemplateStore {
        TemplateStore {
            root: root.to_path_buf(),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Checkpoints the running container at `at` and publishes it as template `name`.
    /// The container keeps running. Nothing is left behind on failure.
    pub fn create(
        &self,
        name: &str,
        at: &Location,
        pool: &Pool,
        criu: &CriuConfig,
        policy: &Policy,
    ) -> Result<Manifest, RuntimeError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.into()).into());
        }
        let final_dir = self.dir(name);
        if final_dir.exists() {
            return Err(TemplateError::Exists {
                name: name.into(),
                store: self.root.clone(),
            }
            .into());
        }
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let staging = self
            .root
            .join(format!(".staging-{name}-{}", std::process::id()));
        let pool_tmp = pool
            .dir
            .join(format!(".{name}-{}.tpl.tmp", std::process::id()));
        let result = self.build(name, at, pool, criu, policy, &staging, &pool_tmp);
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
            let _ = fs::remove_file(&pool_tmp);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        name: &str,
        at: &Location,
        pool: &Pool,
        criu: &CriuConfig,
        policy: &Policy,
        staging: &Path,
        pool_tmp: &Path,
    ) -> Result<Manifest, RuntimeError> {
        let images = staging.join("images");
        let work = staging.join("work");
        let criu_bin = criu.criu()?;
        let criu_version = criu_bin.require_version(criu.cache_dir.as_deref())?;
        let opts = CheckpointOptions {
            for_template: true,
            ..Default::default()
        };
        checkpoint::checkpoint(at, &images, &work, &opts, criu)?;
        let conversion =
            trenv_criu::template::convert(&images, pool_tmp, &Manifest::image_name(name), policy)
                .map_err(|source| TemplateError::Convert {
                name: name.into(),
                source,
            })?;
        // /dev's content restored by CRIU itself rather than by tar (criu-glue/src/tmpfs.rs).
        trenv_criu::tmpfs::store_archives(&images).map_err(|e| TemplateError::Convert {
            name: name.into(),
            source: e.into(),
        })?;
        let _ = fs::remove_dir_all(&work);
        // Immutable from here on.
        fs::set_permissions(pool_tmp, fs::Permissions::from_mode(0o444)).map_err(io(pool_tmp))?;
        let sum = sha256_file(pool_tmp).map_err(io(pool_tmp))?;
        let pool_path = pool.dir.join(format!("{name}-{}.tpl", &sum.sha256[..12]));
        fs::rename(pool_tmp, &pool_path).map_err(io(&pool_path))?;
        // From here on a failure must take the pool file with it: nothing else refers to it.
        let criu_version = criu_version.to_string();
        self.finish(
            name,
            at,
            pool,
            policy,
            staging,
            &images,
            &pool_path,
            sum,
            conversion,
            criu_version,
        )
        .inspect_err(|_| {
            let _ = fs::remove_file(&pool_path);
        })
    }

    /// The manifest of a template whose pool file is in place, and the template moved from
    /// `staging` into the store.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        name: &str,
        at: &Location,
        pool: &Pool,
        policy: &Policy,
        staging: &Path,
        images: &Path,
        pool_path: &Path,
        sum: FileSum,
        conversion: Conversion,
        criu_version: String,
    ) -> Result<Manifest, RuntimeError> {
        let meta = fs::metadata(pool_path).map_err(io(pool_path))?;
        let mut files = BTreeMap::new();
        let mut stamps = BTreeMap::new();
        for e in fs::read_dir(images).map_err(io(images))? {
            let e = e.map_err(io(images))?;
            let fname = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io(&path))?;
            let sum = sha256_file(&path).map_err(io(&path))?;
            let meta = fs::metadata(&path).map_err(io(&path))?;
            files.insert(fname.clone(), sum);
            stamps.insert(fname, ImageStamp::of(&meta));
        }
        // The spec as containerd wrote it: what a restoring container's spec is compared to.
        let spec_path = at.bundle.join("config.json");
        let spec = Spec::load(&spec_path).map_err(|e| RuntimeError::InvalidSpec {
            path: spec_path.display().to_string(),
            reason: crate::error::chain(&e),
        })?;
        let manifest = Manifest {
            name: name.into(),
            created: now_secs(),
            source_container: at.id.clone(),
            criu_version,
            kernel: kernel_release(),
            security: security_digest(&spec),
            heap_included: policy.include_heap,
            empty_netns: checkpoint::private_netns(&spec),
            conversion,
            pool: PoolFile {
                kind: pool.kind,
                path: pool_path.to_path_buf(),
                sum,
                stamp: Stamp::of(&meta),
            },
            images: files,
            image_stamps: stamps,
        };
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RuntimeError::Protocol(e.to_string()))?;
        let mpath = staging.join("manifest.json");
        fs::write(&mpath, body).map_err(io(&mpath))?;
        let final_dir = self.dir(name);
        fs::rename(staging, &final_dir).map_err(io(&final_dir))?;
        mark_verified(&manifest);
        Ok(manifest)
    }

    pub fn get(&self, name: &str) -> Result<Manifest, TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.into()));
        }
        let path = self.dir(name).join("manifest.json");
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TemplateError::NotFound {
                    name: name.into(),
                    store: self.root.clone(),
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&raw).map_err(|e| TemplateError::Corrupt {
            name: name.into(),
            what: format!("manifest.json: {e}"),
        })
    }

    /// Every template, and the errors of those that cannot be read (a damaged template
    /// must not hide the others).
    pub fn list(&self) -> Result<(Vec<Manifest>, Vec<TemplateError>), TemplateError> {
        let mut out = Vec::new();
        let mut broken = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, broken)),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.get(&name) {
                Ok(m) => out.push(m),
                // Removed while we were listing.
                Err(TemplateError::NotFound { .. }) => {}
                Err(e) => broken.push(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, broken))
    }

    /// Removes a template. Running instances keep their mappings of the (unlinked) file.
    pub fn remove(&self, name: &str) -> Result<(), TemplateError> {
        let m = self.get(name)?;
        match fs::remove_file(&m.pool.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&m.pool.path)(e)),
        }
        let _ = fs::remove_file(verified_path(&m));
        let dir = self.dir(name);
        fs::remove_dir_all(&dir).map_err(io(&dir))
    }

    /// Checks a template before a restore into a container with `spec`: every image file
    /// and the pool file against their stamps and, on the first restore after a boot (the
    /// pool may be persistent memory), against their checksums; the spec's security fields
    /// against the source's.
    pub fn check(&self, name: &str, spec: &Spec) -> Result<Checked, TemplateError> {
        let m = self.get(name)?;
        let corrupt = |what: String| TemplateError::Corrupt {
            name: name.into(),
            what,
        };
        let images = self.dir(name).join("images");
        let full = !verified_path(&m).exists();
        let mut seen = 0;
        for e in fs::read_dir(&images).map_err(io(&images))?.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let (Some(want), Some(stamp)) = (m.images.get(&fname), m.image_stamps.get(&fname))
            else {
                return Err(corrupt(format!("unexpected file images/{fname}")));
            };
            let meta = e.metadata().map_err(io(&e.path()))?;
            if &ImageStamp::of(&meta) != stamp {
                return Err(corrupt(format!("images/{fname} was modified")));
            }
            if full && &sha256_file(&e.path()).map_err(io(&e.path()))? != want {
                return Err(corrupt(format!("images/{fname} changed")));
            }
            seen += 1;
        }
        if seen != m.images.len() {
            return Err(corrupt("files missing from images/".into()));
        }
        check_pool_file(&m).map_err(corrupt)?;
        let digest = security_digest(spec);
        if digest != m.security {
            return Err(TemplateError::SpecMismatch {
                name: name.into(),
                fields: "user, capabilities, no_new_privileges, LSM labels, seccomp, masked or \
                         read-only paths"
                    .into(),
            });
        }
        Ok(Checked {
            manifest: m,
            images,
        })
    }
}

fn verified_path(m: &Manifest) -> PathBuf {
    Path::new(VERIFIED_DIR).join(format!("{}-{}", m.name, &m.pool.sum.sha256[..16]))
}

fn mark_verified(m: &Manifest) {
    if fs::create_dir_all(VERIFIED_DIR).is_ok() {
        let _ = fs::write(verified_path(m), b"");
    }
}

/// The pool file is what was published: same inode and ctime (any write or chmod changes
/// ctime), and — once per boot, since the pool may be persistent memory — same content.
pub fn check_pool_file(m: &Manifest) -> Result<(), String> {
    let meta = fs::metadata(&m.pool.path)
        .map_err(|e| format!("pool file {}: {e}", m.pool.path.display()))?;
    if Stamp::of(&meta) != m.pool.stamp {
        return Err(format!(
            "pool file {} was modified after the template was made",
            m.pool.path.display()
        ));
    }
    if meta.permissions().mode() & 0o222 != 0 {
        return Err(format!("pool file {} is writable", m.pool.path.display()));
    }
    if !verified_path(m).exists() {
        let sum = sha256_file(&m.pool.path)
            .map_err(|e| format!("pool file {}: {e}", m.pool.path.display()))?;
        if sum != m.pool.sum {
            return Err(format!(
                "pool file {} has different content",
                m.pool.path.display()
            ));
        }
        mark_verified(m);
    }
    Ok(())
}

/// Makes a per-restore image directory of hard links to the template's files (copies when
/// they are on another filesystem), so that what CRIU writes during a restore (its
/// statistics) never lands in the template. Not symbolic links: CRIU reads some images
/// from inside the restored mount namespace, where the template's path does not exist.
pub fn stage_images(images: &Path, dest: &Path) -> Result<(), TemplateError> {
    fs::create_dir_all(dest).map_err(io(dest))?;
    for e in fs::read_dir(images).map_err(io(images))?.flatten() {
        let target = dest.join(e.file_name());
        let _ = fs::remove_file(&target);
        if fs::hard_link(e.path(), &target).is_err() {
            fs::copy(e.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = store.get("nope").unwrap_err().to_string();
        assert!(
            e.contains("trenv template create nope --from CONTAINER"),
            "{e}"
        );
        assert!(store.list().unwrap().0.is_empty());
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
