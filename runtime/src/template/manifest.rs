//! What a template is: its manifest (owner, source, conversion, pool file, every image file
//! with its checksum and identity), and the checks that tie it to a restoring container
//! (its name, the security fields of its spec, and the fields a restore cannot change:
//! [`Manifest::made_with`]).
//!
//! The manifest is stored as `manifest.json` beside `manifest.sha256`, its SHA-256, which
//! every read checks ([`MANIFEST_SUM`]); the pool's verification record holds the same
//! digest (store.rs), so a manifest rewritten together with its sum after the template was
//! verified is caught too.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trenv_criu::template::Conversion;

use super::mempool::MemPoolKind;
use super::tenant::Tenant;
use crate::snapshot::honour::SpecRecord;
use crate::sys::FileStamp;

/// The manifest's file in a template's directory.
pub const MANIFEST: &str = "manifest.json";
/// The file holding the SHA-256 (hex) of [`MANIFEST`].
pub const MANIFEST_SUM: &str = "manifest.sha256";

/// Size and SHA-256 of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolFile {
    pub kind: MemPoolKind,
    pub path: PathBuf,
    pub sum: FileSum,
    pub stamp: FileStamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Who made it: the only tenant that sees, restores and removes it.
    pub tenant: Tenant,
    /// Seconds since the epoch.
    pub created: u64,
    pub source_container: String,
    pub criu_version: String,
    pub kernel: String,
    /// SHA-256 of the spec fields CRIU restores from the image (see [`security_digest`]).
    pub security: String,
    /// The source's spec fields a restore cannot change (args, cwd, the environment as
    /// digests, mounts, …) or applies where they differ (snapshot/honour.rs). None in a
    /// manifest written before trenv recorded them: such a template is not restored.
    #[serde(default)]
    pub made_with: Option<SpecRecord>,
    pub heap_included: bool,
    /// The container's own network namespace was dumped empty: restores bring up `lo`.
    #[serde(default)]
    pub empty_netns: bool,
    pub conversion: Conversion,
    pub pool: PoolFile,
    /// Every file of `images/`, by name.
    pub images: BTreeMap<String, FileSum>,
    /// Their identity (device, inode, size, ctime): checked on every restore, on the
    /// descriptor the restore copies from, while the checksums are checked on the first
    /// restore after a boot. ctime, not mtime: any write, `touch -d`, chmod or link changes
    /// ctime, and no system call sets it back, so a file edited in place with its mtime
    /// restored is caught. (A restore reads the images in place through a read-only bind
    /// and checks them again after CRIU has read them: snapshot/restore.rs.)
    pub image_stamps: BTreeMap<String, FileStamp>,
}

impl Manifest {
    /// The manifest as stored, and its SHA-256.
    pub fn encode(&self) -> Result<(Vec<u8>, String), serde_json::Error> {
        let body = serde_json::to_vec_pretty(self)?;
        let sum = sha256_hex(&body);
        Ok((body, sum))
    }

    /// The name under which the pool file appears in the image (and the `inherit_fd` key
    /// without its leading '/').
    pub fn image_name(name: &str) -> String {
        format!("/trenv-template/{name}")
    }
}

/// A template name: 1-63 lower-case letters, digits, '.', '_' or '-', starting with a
/// letter or digit.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;
    use trenv_criu::template::ProcessConversion;

    fn manifest(conversion: Conversion) -> Manifest {
        let stamp = FileStamp {
            dev: 1,
            ino: 2,
            size: 3,
            ctime: 4,
            ctime_nsec: 5,
        };
        Manifest {
            name: "pyfn".into(),
            tenant: Tenant::namespace("default").unwrap(),
            created: 0,
            source_container: "src".into(),
            criu_version: "4.1.1".into(),
            kernel: "test".into(),
            security: "digest".into(),
            made_with: None,
            heap_included: false,
            empty_netns: false,
            conversion,
            pool: PoolFile {
                kind: MemPoolKind::Tmpfs,
                path: "/run/trenv/pool/@default/pyfn-0.tpl".into(),
                sum: FileSum {
                    size: 3,
                    sha256: "00".into(),
                },
                stamp,
            },
            images: BTreeMap::new(),
            image_stamps: BTreeMap::new(),
        }
    }

    /// A template made before process trees were converted has no `conversion.processes`:
    /// it still reads, as the one process it holds.
    #[test]
    fn a_manifest_without_the_processes_of_its_conversion_still_reads() {
        let one = ProcessConversion {
            pid: 1,
            vmas: vec![(0x10_0000, 0x30_0000)],
            bytes_moved: 8192,
            bytes_copied: 4096,
        };
        let m = manifest(Conversion {
            pid: 1,
            vmas: one.vmas.clone(),
            bytes_moved: 8192,
            bytes_copied: 4096,
            file_size: 0x20_0000,
            processes: vec![one],
            fallback: None,
            needs_anonymous: None,
        });
        let (body, _) = m.encode().unwrap();
        let mut old: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let conversion = old["conversion"].as_object_mut().unwrap();
        assert!(conversion.remove("processes").is_some());
        let read: Manifest = serde_json::from_value(old).unwrap();
        assert!(read.conversion.processes.is_empty());
        assert_eq!(read.conversion.pid, 1);
        assert_eq!(read.conversion.vmas, m.conversion.vmas);
        assert_eq!(
            (read.conversion.process_count(), read.conversion.vma_count()),
            (1, 1)
        );
        // Today's round-trips with its processes.
        let again: Manifest = serde_json::from_slice(&body).unwrap();
        assert_eq!(again.conversion, m.conversion);
    }
}
