//! Every annotation trenv reads from a container's spec, in one place, parsed once at
//! Create into [`Annotations`]. A value trenv cannot use fails Create with an error naming
//! the annotation and what it accepts; nothing else reads annotations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trenv_meter::hull::{Hull, HullError};
use trenv_runtime::config::ScratchKind;
use trenv_runtime::metering::meter::{MAX_INTERVAL, MIN_INTERVAL, interval_allowed};
use trenv_runtime::sys::confined::{ConfinedError, read_beneath};
use trenv_runtime::template::manifest::valid_name;
use trenv_runtime::template::ready::{
    DEFAULT_READY_FILE, ReadyTemplate, plain_ready_file, policy_named,
};
use trenv_runtime::template::tenant::{KUBE_NAMESPACE_ANNOTATION, TENANT_ANNOTATION};
use trenv_runtime::template::warmup::{Warmup, WarmupError};
use trenv_runtime::template::{TEMPLATE_ANNOTATION, TemplateError, Tenant, TenantError};

/// The function a container runs (metering records, templates).
pub const FUNCTION: &str = "io.trenv.function";
/// The template a container is restored from.
pub const TEMPLATE: &str = TEMPLATE_ANNOTATION;
/// Make a template of this name once the function is ready.
pub const TEMPLATE_CREATE: &str = "io.trenv.template.create";
/// The file whose existence inside the container says the function is ready.
pub const TEMPLATE_READY_FILE: &str = "io.trenv.template.ready-file";
/// What the template made by the shim maps: map, heap or copy.
pub const TEMPLATE_POLICY: &str = "io.trenv.template.policy";
/// A request (`[METHOD ]URL` on the container's own loopback) the function serves before
/// the shim takes its template; its body; how many times (runtime/src/template/warmup.rs).
pub const TEMPLATE_WARMUP: &str = "io.trenv.template.warmup";
pub const TEMPLATE_WARMUP_BODY: &str = "io.trenv.template.warmup-body";
pub const TEMPLATE_WARMUP_REQUESTS: &str = "io.trenv.template.warmup-requests";
/// The memory sampling interval of the container's invocations, in microseconds.
pub const METER_INTERVAL: &str = "io.trenv.meter.interval-us";
/// A hull file (`trenv meter hull`) whose upscaling hull the memory limit follows.
pub const METER_HULL: &str = "io.trenv.meter.hull";
/// CRI's pod sandbox id: containers with the same one share a shim.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's image name, for metering records.
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// CRI's pod namespace: part of the container's tenant. containerd's CRI writes it after
/// the pod's and container's own annotations, so a pod author cannot choose it
/// (runtime/src/template/tenant.rs).
pub const KUBE_NAMESPACE: &str = KUBE_NAMESPACE_ANNOTATION;
/// Narrows the container's tenant (templates it makes and restores).
pub const TENANT: &str = TENANT_ANNOTATION;
/// `true` runs the container in a pooled sandbox, `false` in new namespaces of its own;
/// unset: as trenv's config says (`[sandboxes] enabled`).
pub const REPURPOSE: &str = "io.trenv.repurpose";
/// The CNI network (of `[sandboxes] cni_conf_dir`) the container's sandbox is attached to.
pub const NETWORK: &str = "io.trenv.network";
/// Where a sandboxed container's writable rootfs layer lives: memory or disk.
pub const SCRATCH: &str = "io.trenv.scratch";
/// `shared`: the container shares its tenant's shim process; `own`: it gets one of its
/// own; unset: as trenv's config says (`[shim] shared`). Read by `start` (shared.rs).
pub const SHIM: &str = "io.trenv.shim";
/// How many instances of the container's function its shared shim keeps restored ahead
/// (shim/src/reserve.rs), at most `[shim] reserve_max`; unset: `[shim] reserve`.
pub const RESERVE: &str = "io.trenv.reserve";

/// A value trenv cannot use.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation {METER_HULL}: {0}")]
    Hull(#[source] HullError),
    #[error(
        "annotation {METER_HULL}={value:?}: {source}; hull files are read only from {} \
         (trenv's [meter] hull_dir): write one there with `trenv meter hull --out {}/NAME.json`",
        .dir.display(),
        .dir.display()
    )]
    HullFile {
        value: String,
        dir: PathBuf,
        #[source]
        source: ConfinedError,
    },
    #[error(
        "annotation {METER_INTERVAL}={0:?}: expected a whole number of microseconds (e.g. 10000 \
         for 10 ms, 0 to sample nothing)"
    )]
    Interval(String),
    #[error(
        "annotation {METER_INTERVAL}={0}: out of range: use 0 (the exact peak only, no series) \
         or {min} to {max} microseconds (1 ms to 10 s)",
        min = MIN_INTERVAL.as_micros(),
        max = MAX_INTERVAL.as_micros()
    )]
    IntervalRange(u64),
    #[error("annotation {TEMPLATE_CREATE}: {0}")]
    TemplateName(#[source] TemplateError),
    #[error(
        "annotation {TEMPLATE_READY_FILE}={0:?}: give an absolute path inside the container \
         without `..` (e.g. /tmp/.lock)"
    )]
    ReadyFile(String),
    #[error(
        "annotation {TEMPLATE_POLICY}={0:?}: expected map (default: all private \
         anonymous memory), no-heap (all but [heap]) or copy (map nothing)"
    )]
    Policy(String),
    #[error(
        "annotations {TEMPLATE_READY_FILE}, {TEMPLATE_POLICY} and {TEMPLATE_WARMUP}(-body, \
         -requests) need {TEMPLATE_CREATE}=NAME"
    )]
    Orphan,
    #[error("annotation {TEMPLATE_WARMUP} (or -body, -requests): {0}")]
    Warmup(#[source] WarmupError),
    #[error(
        "annotation {REPURPOSE}={0:?}: expected true or false (unset: [sandboxes] enabled in \
         trenv's config)"
    )]
    Repurpose(String),
    #[error(
        "annotation {NETWORK}={0:?}: expected the name of a CNI network (letters, digits, \
         '-', '_' and '.')"
    )]
    Network(String),
    #[error("annotation {SCRATCH}={0:?}: expected memory (a tmpfs) or disk")]
    Scratch(String),
    #[error(
        "annotation {RESERVE}={0:?}: expected a whole number of instances to keep restored \
         ahead (0 for none; unset: [shim] reserve in trenv's config)"
    )]
    Reserve(String),
    #[error(
        "annotation {RESERVE}={value}: more than this node allows ({max}, [shim] reserve_max \
         in trenv's config): ask for at most {max}"
    )]
    ReserveAbove { value: usize, max: usize },
    #[error(transparent)]
    Tenant(#[from] TenantError),
}

/// What a container's annotations ask of trenv.
#[derive(Debug, Clone)]
pub struct Annotations {
    /// `io.trenv.function` (empty: unnamed).
    pub function: String,
    /// CRI's pod sandbox id (empty outside a pod).
    pub sandbox_id: String,
    /// CRI's image name (empty outside CRI).
    pub image: String,
    /// Whose templates the container restores and makes: its containerd namespace,
    /// narrowed by CRI's pod namespace and `io.trenv.tenant`.
    pub tenant: Tenant,
    /// The template to restore from.
    pub template: Option<String>,
    /// The template to make once the function is ready.
    pub make_template: Option<ReadyTemplate>,
    /// The memory hull to follow live.
    pub hull: Option<Hull>,
    /// The memory sampling interval, overriding the shim's default.
    pub meter_interval: Option<Duration>,
    /// Whether the container runs in a pooled sandbox (`io.trenv.repurpose`; `None`: as
    /// trenv's config says).
    pub repurpose: Option<bool>,
    /// The CNI network its sandbox is attached to (`io.trenv.network`).
    pub network: Option<String>,
    /// Where its writable rootfs layer lives (`io.trenv.scratch`; `None`: as configured).
    pub scratch: Option<ScratchKind>,
    /// Instances of its function kept restored ahead (`io.trenv.reserve`; `None`: as
    /// configured). Bounded by [`Annotations::check_reserve`].
    pub reserve: Option<usize>,
}

impl Annotations {
    /// Parses the annotations of a spec of containerd namespace `namespace`; hull files
    /// are read from `hull_dir` only.
    pub fn parse(
        map: Option<&HashMap<String, String>>,
        namespace: &str,
        hull_dir: &Path,
    ) -> Result<Annotations, AnnotationError> {
        let get = |k: &str| map.and_then(|m| m.get(k)).cloned().unwrap_or_default();
        let tenant = Tenant::new(namespace, &get(KUBE_NAMESPACE), &get(TENANT))?;
        let hull = match get(METER_HULL) {
            p if p.is_empty() => None,
            p => Some(load_hull(hull_dir, p)?),
        };
        let meter_interval = match get(METER_INTERVAL) {
            v if v.is_empty() => None,
            v => {
                let us = v.parse::<u64>().map_err(|_| AnnotationError::Interval(v))?;
                let interval = Duration::from_micros(us);
                if !interval_allowed(interval) {
                    return Err(AnnotationError::IntervalRange(us));
                }
                Some(interval)
            }
        };
        let repurpose = match get(REPURPOSE).as_str() {
            "" => None,
            "true" => Some(true),
            "false" => Some(false),
            other => return Err(AnnotationError::Repurpose(other.into())),
        };
        let network = match get(NETWORK) {
            n if n.is_empty() => None,
            n if trenv_runtime::sandbox::network::valid_name(&n) => Some(n),
            n => return Err(AnnotationError::Network(n)),
        };
        let scratch = match get(SCRATCH).as_str() {
            "" => None,
            "memory" => Some(ScratchKind::Memory),
            "disk" => Some(ScratchKind::Disk),
            other => return Err(AnnotationError::Scratch(other.into())),
        };
        let reserve = match get(RESERVE) {
            v if v.is_empty() => None,
            v => Some(
                v.parse::<usize>()
                    .map_err(|_| AnnotationError::Reserve(v))?,
            ),
        };
        Ok(Annotations {
            reserve,
            repurpose,
            network,
            scratch,
            function: get(FUNCTION),
            sandbox_id: get(SANDBOX_ID),
            image: get(IMAGE_NAME),
            template: Some(get(TEMPLATE)).filter(|t| !t.is_empty()),
            make_template: ready_template(
                &get(TEMPLATE_CREATE),
                &get(TEMPLATE_READY_FILE),
                &get(TEMPLATE_POLICY),
                [
                    &get(TEMPLATE_WARMUP),
                    &get(TEMPLATE_WARMUP_BODY),
                    &get(TEMPLATE_WARMUP_REQUESTS),
                ],
                &tenant,
            )?,
            tenant,
            hull,
            meter_interval,
        })
    }
}

impl Annotations {
    /// Refuses an `io.trenv.reserve` above the node's `max` (`[shim] reserve_max`): each
    /// instance holds memory and a sandbox of the node's, so a pod author may not ask for
    /// any number.
    pub fn check_reserve(&self, max: usize) -> Result<(), AnnotationError> {
        match self.reserve {
            Some(value) if value > max => Err(AnnotationError::ReserveAbove { value, max }),
            _ => Ok(()),
        }
    }

    /// Instances of the container's function to keep ahead: its annotation's, or
    /// `configured` (`[shim] reserve`).
    pub fn reserve_or(&self, configured: usize) -> usize {
        self.reserve.unwrap_or(configured)
    }
}

/// Most bytes a hull file may have (an hour in 100 ms bins is ~0.5 MB of JSON).
const MAX_HULL_BYTES: u64 = 4 << 20;

/// The hull file `value` names, read confined to `dir` without blocking.
fn load_hull(dir: &Path, value: String) -> Result<Hull, AnnotationError> {
    match read_beneath(dir, &value, MAX_HULL_BYTES) {
        Ok(bytes) => Hull::parse(&bytes, &dir.join(&value).display().to_string())
            .map_err(AnnotationError::Hull),
        Err(source) => Err(AnnotationError::HullFile {
            value,
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// The template to make when ready, from `io.trenv.template.create`, `…ready-file` and
/// `…policy` ("" for a missing one), for the container's `tenant`; `None` when none is
/// asked for.
fn ready_template(
    name: &str,
    file: &str,
    policy: &str,
    [warmup, body, requests]: [&str; 3],
    tenant: &Tenant,
) -> Result<Option<ReadyTemplate>, AnnotationError> {
    if name.is_empty() {
        let unset = [file, policy, warmup, body, requests];
        return if unset.iter().all(|v| v.is_empty()) {
            Ok(None)
        } else {
            Err(AnnotationError::Orphan)
        };
    }
    if !valid_name(name) {
        return Err(AnnotationError::TemplateName(TemplateError::BadName(
            name.into(),
        )));
    }
    let ready_file = if file.is_empty() {
        PathBuf::from(DEFAULT_READY_FILE)
    } else {
        plain_ready_file(file).ok_or_else(|| AnnotationError::ReadyFile(file.into()))?
    };
    let policy = policy_named(policy).ok_or_else(|| AnnotationError::Policy(policy.into()))?;
    let warmup = Warmup::parse(warmup, body, requests).map_err(AnnotationError::Warmup)?;
    Ok(Some(ReadyTemplate {
        name: name.into(),
        tenant: tenant.clone(),
        ready_file,
        min_vma: policy.min_vma,
        include_heap: policy.include_heap,
        file_pages: policy.file_pages,
        warmup,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trenv_criu::template::Policy;

    fn parse(pairs: &[(&str, &str)]) -> Result<Annotations, AnnotationError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Annotations::parse(Some(&m), "default", Path::new("/nonexistent/hulls"))
    }

    fn ready(pairs: &[(&str, &str)]) -> Result<Option<ReadyTemplate>, AnnotationError> {
        parse(pairs).map(|a| a.make_template)
    }

    #[test]
    fn no_annotation_no_template() {
        let a = Annotations::parse(None, "default", Path::new("/nonexistent")).unwrap();
        assert!(a.make_template.is_none() && a.template.is_none() && a.hull.is_none());
    }

    #[test]
    fn defaults_follow_the_openfaas_watchdog_and_the_cli() {
        let t = ready(&[(TEMPLATE_CREATE, "fn-a")]).unwrap().unwrap();
        assert_eq!(t.ready_file, PathBuf::from("/tmp/.lock"));
        assert_eq!(t.policy(), Policy::default());
    }

    #[test]
    fn policies() {
        let with = |p| {
            ready(&[(TEMPLATE_CREATE, "f"), (TEMPLATE_POLICY, p)])
                .unwrap()
                .unwrap()
        };
        assert!(!with("no-heap").include_heap);
        assert!(with("map").include_heap);
        assert_eq!(with("copy").min_vma, u64::MAX);
        assert_eq!(with("map").policy(), Policy::default());
        assert!(matches!(
            ready(&[(TEMPLATE_CREATE, "f"), (TEMPLATE_POLICY, "mapp")]),
            Err(AnnotationError::Policy(p)) if p == "mapp"
        ));
    }

    #[test]
    fn a_warm_up_is_asked_for_with_its_template_and_checked() {
        let t = ready(&[
            (TEMPLATE_CREATE, "f"),
            (TEMPLATE_WARMUP, "POST http://127.0.0.1:8080/"),
            (TEMPLATE_WARMUP_BODY, "{}"),
            (TEMPLATE_WARMUP_REQUESTS, "3"),
        ])
        .unwrap()
        .unwrap();
        let w = t.warmup.unwrap();
        assert_eq!((w.addr.port(), w.requests), (8080, 3));
        assert!(
            ready(&[(TEMPLATE_CREATE, "f")])
                .unwrap()
                .unwrap()
                .warmup
                .is_none()
        );
        let e = ready(&[
            (TEMPLATE_CREATE, "f"),
            (TEMPLATE_WARMUP, "http://10.1.1.1/"),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Warmup(_)), "{e:?}");
        assert!(e.to_string().contains("container's own loopback"), "{e}");
        assert!(matches!(
            ready(&[(TEMPLATE_WARMUP, "http://127.0.0.1/")]),
            Err(AnnotationError::Orphan)
        ));
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        for file in ["tmp/ready", "/tmp/../../etc/passwd", "/", "../x"] {
            let e = ready(&[(TEMPLATE_CREATE, "f"), (TEMPLATE_READY_FILE, file)]);
            assert!(
                matches!(&e, Err(AnnotationError::ReadyFile(f)) if f == file),
                "{file}: {e:?}"
            );
        }
        let e = ready(&[(TEMPLATE_CREATE, "Bad Name")]).unwrap_err();
        assert!(e.to_string().contains("invalid template name"), "{e}");
        assert!(matches!(
            ready(&[(TEMPLATE_READY_FILE, "/tmp/x")]),
            Err(AnnotationError::Orphan)
        ));
        let e = parse(&[(METER_INTERVAL, "10ms")]).unwrap_err().to_string();
        assert!(e.contains("expected a whole number of microseconds"), "{e}");
    }

    #[test]
    fn hull_files_come_only_from_the_hull_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ok = serde_json::json!({"format": 1, "bin_ms": 100, "lookahead_bins": 2, "runs": 1,
            "max_hull_bytes": [1], "upscaling_hull_bytes": [1], "peak_bytes": 1});
        std::fs::write(dir.path().join("fn.json"), ok.to_string()).unwrap();
        let with = |v: &str| {
            let m: HashMap<String, String> = [(METER_HULL.to_string(), v.to_string())].into();
            Annotations::parse(Some(&m), "default", dir.path())
        };
        assert!(with("fn.json").unwrap().hull.is_some());
        let abs = dir.path().join("fn.json").display().to_string();
        assert!(with(&abs).unwrap().hull.is_some());
        for bad in ["/etc/shadow", "/dev/zero", "../fn.json", "/etc/passwd"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("hull files are read only from"), "{bad}: {e}");
            assert!(!e.contains("root:"), "{bad}: {e}");
        }
    }

    #[test]
    fn intervals_outside_the_bounds_are_refused_naming_the_range() {
        for bad in ["1", "999", "10000001", "3600000000", &u64::MAX.to_string()] {
            let e = parse(&[(METER_INTERVAL, bad)]).unwrap_err();
            assert!(
                matches!(e, AnnotationError::IntervalRange(_)),
                "{bad}: {e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(METER_INTERVAL) && msg.contains("1000 to 10000000 microseconds"),
                "{msg}"
            );
        }
        for (ok, want) in [("0", 0), ("1000", 1_000), ("10000000", 10_000_000)] {
            let a = parse(&[(METER_INTERVAL, ok)]).unwrap();
            assert_eq!(a.meter_interval, Some(Duration::from_micros(want)));
        }
    }

    #[test]
    fn identity_comes_from_trenv_and_cri_annotations() {
        let a = parse(&[
            (FUNCTION, "fn"),
            (SANDBOX_ID, "pod1"),
            (IMAGE_NAME, "img"),
            (TEMPLATE, "tpl"),
        ])
        .unwrap();
        assert_eq!(
            (a.function.as_str(), a.sandbox_id.as_str(), a.image.as_str()),
            ("fn", "pod1", "img")
        );
        assert_eq!(a.template.as_deref(), Some("tpl"));
    }

    #[test]
    fn the_tenant_is_the_namespace_narrowed_by_cri_and_io_trenv_tenant() {
        let m = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = Annotations::parse(
            Some(&m(&[
                (KUBE_NAMESPACE, "team-a"),
                (TENANT, "blue"),
                (TEMPLATE_CREATE, "f"),
            ])),
            "k8s.io",
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(a.tenant.to_string(), "k8s.io/team-a/blue");
        // The template a container makes is its own tenant's.
        assert_eq!(a.make_template.unwrap().tenant, a.tenant);
        let plain = Annotations::parse(None, "ns-b", Path::new("/nonexistent")).unwrap();
        assert_eq!(plain.reserve_or(1), 1);
        assert_eq!(plain.tenant.to_string(), "ns-b");
        // io.trenv.tenant cannot climb out: no separators, no `..`.
        for bad in ["../x", "a/b", "a+b", ".."] {
            let e = Annotations::parse(
                Some(&m(&[(TENANT, bad)])),
                "ns-b",
                Path::new("/nonexistent"),
            )
            .unwrap_err();
            assert!(e.to_string().contains("annotation io.trenv.tenant"), "{e}");
        }
    }

    #[test]
    fn a_reserve_is_a_number_of_instances_within_the_node_s_bound() {
        let ten = parse(&[(RESERVE, "10")]).unwrap();
        assert_eq!(ten.reserve_or(1), 10);
        assert!(ten.check_reserve(16).is_ok());
        let e = ten.check_reserve(4).unwrap_err().to_string();
        assert!(
            e.contains("io.trenv.reserve=10") && e.contains("reserve_max"),
            "{e}"
        );
        assert_eq!(parse(&[(RESERVE, "0")]).unwrap().reserve_or(1), 0);
        for bad in ["-1", "two", "1.5", " 3"] {
            let e = parse(&[(RESERVE, bad)]).unwrap_err().to_string();
            assert!(e.contains("annotation io.trenv.reserve"), "{bad}: {e}");
        }
    }
}
