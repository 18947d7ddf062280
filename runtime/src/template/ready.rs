//! Templates made by the shim itself: a container annotated `io.trenv.template.create=NAME`
//! becomes template NAME once the function in it is ready — the same template
//! `trenv template create NAME --from CONTAINER` makes, without anyone watching for the
//! moment.
//!
//! Ready means: a file exists in the container. By default `/tmp/.lock`, the file
//! OpenFaaS's watchdogs create once the function is healthy; any other absolute path with
//! `io.trenv.template.ready-file`; `io.trenv.template.warmup` asks for requests to be
//! served first (warmup.rs). `io.trenv.template.policy` chooses what is mapped: `map`
//! (default: every private anonymous VMA, `[heap]` included), `no-heap` (all but
//! `[heap]`) or `copy` (nothing: a plain CRIU restore), as the CLI's `--no-heap`/`--copy`. The annotations are
//! parsed by the shim (shim/src/annotations.rs); this is what they ask for. The template
//! belongs to the container's tenant (tenant.rs), which the shim derives from its
//! containerd namespace and CRI's annotations: a container can make templates only for
//! itself, never replace or shadow another tenant's.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use trenv_criu::template::Policy;

use super::tenant::Tenant;
use super::warmup::Warmup;

/// The file OpenFaaS's classic and of-watchdog create when the function is ready.
pub const DEFAULT_READY_FILE: &str = "/tmp/.lock";

/// `path` as a ready file: an absolute path without `..` (or `.`) below the root; `None`
/// otherwise.
pub fn plain_ready_file(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    let plain = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && p.components().count() > 1;
    plain.then_some(p)
}

/// The mapping policy named `name` (`""` or "map": the default, every private anonymous
/// VMA; "no-heap": all but `[heap]`; "copy": nothing); `None` for another name.
pub fn policy_named(name: &str) -> Option<Policy> {
    let default = Policy::default();
    match name {
        "" | "map" => Some(default),
        "no-heap" => Some(Policy {
            include_heap: false,
            ..default
        }),
        "copy" => Some(Policy::COPY),
        _ => None,
    }
}

fn mapped() -> bool {
    true
}

/// What to make, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyTemplate {
    pub name: String,
    /// Whose it is: the container's own tenant.
    pub tenant: Tenant,
    /// Absolute, inside the container.
    pub ready_file: PathBuf,
    pub min_vma: u64,
    pub include_heap: bool,
    /// Whether the written pages of file mappings are mapped (true unless `copy`; absent
    /// from what an older shim wrote: true).
    #[serde(default = "mapped")]
    pub file_pages: bool,
    /// Requests the function serves before the template is taken (warmup.rs).
    #[serde(default)]
    pub warmup: Option<Warmup>,
}

impl ReadyTemplate {
    pub fn policy(&self) -> Policy {
        Policy {
            min_vma: self.min_vma,
            include_heap: self.include_heap,
            file_pages: self.file_pages,
        }
    }

    /// The ready file as the host sees it inside process `pid`'s root.
    pub fn ready_file_of(&self, pid: i32) -> PathBuf {
        let rel = self
            .ready_file
            .strip_prefix("/")
            .unwrap_or(Path::new(&self.ready_file));
        PathBuf::from(format!("/proc/{pid}/root")).join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template of the default policy, made when `/tmp/.lock` appears.
    fn sample() -> ReadyTemplate {
        ReadyTemplate {
            name: "fn-a".into(),
            tenant: Tenant::namespace("default").unwrap(),
            ready_file: PathBuf::from(DEFAULT_READY_FILE),
            min_vma: Policy::default().min_vma,
            include_heap: true,
            file_pages: true,
            warmup: None,
        }
    }

    #[test]
    fn the_ready_file_is_seen_through_the_process_root() {
        let t = sample();
        assert_eq!(t.policy(), Policy::default());
        assert_eq!(
            t.ready_file_of(42),
            PathBuf::from("/proc/42/root/tmp/.lock")
        );
    }

    #[test]
    fn what_an_older_shim_wrote_reads_with_file_pages_mapped_and_copy_maps_nothing() {
        let t = sample();
        let mut old = serde_json::to_value(&t).unwrap();
        old.as_object_mut().unwrap().remove("file_pages");
        let read: ReadyTemplate = serde_json::from_value(old).unwrap();
        assert_eq!(read, t);
        assert_eq!(policy_named("copy"), Some(Policy::COPY));
        assert!(policy_named("no-heap").unwrap().file_pages);
    }
}
