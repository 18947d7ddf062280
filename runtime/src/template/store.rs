//! The template store: `<store>/<NAME>/` holding `images/` (the rewritten CRIU image) and
//! `manifest.json`, plus the template's file in the pool, `<pool>/<NAME>-<sha256
//! prefix>.tpl` (mode 0444). Templates are published whole by [`super::build`] and never
//! modified; here they are found, listed, checked before a restore, and removed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::manifest::{ImageStamp, Manifest, security_digest, sha256_file, valid_name};
use super::{TemplateError, io};
use crate::sys::FileStamp;

/// Directory (on a tmpfs) remembering which pool files were fully verified since boot.
const VERIFIED_DIR: &str = "/run/trenv/verified";

/// A template ready to restore: its images (checked) and its pool file (opened, checked).
pub struct Checked {
    pub manifest: Manifest,
    pub images: PathBuf,
}

pub struct TemplateStore {
    pub root: PathBuf,
}

impl TemplateStore {
    pub fn new(root: &Path) -> TemplateStore {
        TemplateStore {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
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
        check_pool_file(&m)?;
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

pub(crate) fn mark_verified(m: &Manifest) {
    if fs::create_dir_all(VERIFIED_DIR).is_ok() {
        let _ = fs::write(verified_path(m), b"");
    }
}

/// The pool file is what was published: same inode and ctime (any write or chmod changes
/// ctime), and — once per boot, since the pool may be persistent memory — same content.
fn check_pool_file(m: &Manifest) -> Result<(), TemplateError> {
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
    if !verified_path(m).exists() {
        let sum =
            sha256_file(path).map_err(|e| corrupt(format!("pool file {}: {e}", path.display())))?;
        if sum != m.pool.sum {
            return Err(corrupt(format!(
                "pool file {} has different content",
                path.display()
            )));
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
