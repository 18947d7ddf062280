//! Who a template belongs to. trenv runs as root for every containerd client and every
//! Kubernetes namespace on the node, so a template made by one of them must not be
//! restorable, replaceable or squattable by another: each template belongs to a
//! [`Tenant`], and is found, listed, counted against a bound and removed only there.
//!
//! A tenant is `NAMESPACE[/K8S-NAMESPACE][/SUB]`, and each part comes from something the
//! container's author cannot choose for another tenant:
//!
//! * `NAMESPACE`: the containerd namespace the shim serves (containerd starts a shim per
//!   namespace and passes it `-namespace`; a client can only act in namespaces it talks to);
//! * `K8S-NAMESPACE`: for a CRI pod, the annotation `io.kubernetes.cri.sandbox-namespace`.
//!   containerd's CRI sets it on every container it creates (`DefaultCRIAnnotations` in
//!   containerd's `internal/cri/annotations`, `pkg/cri/annotations` in 1.7) *after* it
//!   copied the allow-listed pod and container annotations into the spec, so a pod author's
//!   own `io.kubernetes.cri.sandbox-namespace` is overwritten even where an operator
//!   allow-lists it (trenv's configs allow-list only `io.trenv.*`). Outside CRI the
//!   annotation is whatever the containerd client wrote, which only divides that client's
//!   own namespace;
//! * `SUB`: `io.trenv.tenant`, which a pod author may set: it only narrows the tenant
//!   given by the first two parts, never names another.
//!
//! Every part is checked to a file-name-safe alphabet without `/` and `+`, so
//! [`Tenant::dir_name`] (`@NAMESPACE[+K8S][+SUB]`, `@NAMESPACE++SUB` without a Kubernetes
//! namespace) is one path component, cannot be `.` or `..`, and cannot be confused with a
//! template of the old flat layout (template names never start with `@`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Classified, ErrorKind};

/// The annotation CRI sets to the pod's Kubernetes namespace.
pub const KUBE_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";
/// The annotation that narrows a container's tenant (a sub-tenant).
pub const TENANT_ANNOTATION: &str = "io.trenv.tenant";

/// The tenant of the CLI when none is given: containerd's and ctr's default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A template's owner. Built only through [`Tenant::new`] (or parsing), so every value is
/// valid and its [`Tenant::dir_name`] is safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant {
    namespace: String,
    kube_namespace: Option<String>,
    sub: Option<String>,
}

/// Which part of a tenant was invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error(
        "invalid containerd namespace {0:?} for a template's tenant: use 1-76 letters, digits, \
         '.', '_' or '-', starting and ending with a letter or digit"
    )]
    Namespace(String),
    #[error(
        "annotation {KUBE_NAMESPACE_ANNOTATION}={0:?} is not a Kubernetes namespace: use 1-63 \
         lower-case letters, digits or '-', starting and ending with a letter or digit"
    )]
    KubeNamespace(String),
    #[error(
        "annotation {TENANT_ANNOTATION}={0:?}: use 1-63 lower-case letters, digits, '.', '_' or \
         '-', starting with a letter or digit"
    )]
    Sub(String),
    #[error(
        "invalid tenant {0:?}: write NAMESPACE, NAMESPACE/K8S-NAMESPACE, \
         NAMESPACE/K8S-NAMESPACE/SUB or NAMESPACE//SUB"
    )]
    Form(String),
}

impl Classified for TenantError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl Tenant {
    /// The tenant `namespace[/kube_namespace][/sub]`; empty optional parts are absent.
    pub fn new(namespace: &str, kube_namespace: &str, sub: &str) -> Result<Tenant, TenantError> {
        if !valid_namespace(namespace) {
            return Err(TenantError::Namespace(namespace.into()));
        }
        if !kube_namespace.is_empty() && !valid_kube_namespace(kube_namespace) {
            return Err(TenantError::KubeNamespace(kube_namespace.into()));
        }
        if !sub.is_empty() && !super::manifest::valid_name(sub) {
            return Err(TenantError::Sub(sub.into()));
        }
        Ok(Tenant {
            namespace: namespace.into(),
            kube_namespace: Some(kube_namespace.to_string()).filter(|k| !k.is_empty()),
            sub: Some(sub.to_string()).filter(|s| !s.is_empty()),
        })
    }

    /// The tenant of a container of containerd namespace `namespace` with these spec
    /// annotations (`get` reads one; see the module's documentation for why each part
    /// cannot be forged).
    pub fn of_container<'a>(
        namespace: &str,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Tenant, TenantError> {
        Tenant::new(
            namespace,
            get(KUBE_NAMESPACE_ANNOTATION).unwrap_or(""),
            get(TENANT_ANNOTATION).unwrap_or(""),
        )
    }

    /// The whole containerd namespace.
    pub fn namespace(namespace: &str) -> Result<Tenant, TenantError> {
        Tenant::new(namespace, "", "")
    }

    /// The one directory (in the store, in the pool) that holds this tenant's templates.
    pub fn dir_name(&self) -> String {
        let mut s = format!("@{}", self.namespace);
        if self.kube_namespace.is_some() || self.sub.is_some() {
            s.push('+');
            s.push_str(self.kube_namespace.as_deref().unwrap_or(""));
        }
        if let Some(sub) = &self.sub {
            s.push('+');
            s.push_str(sub);
        }
        s
    }

    /// The tenant whose directory is `dir` (an entry of the store or the pool), if it is one.
    pub fn from_dir_name(dir: &str) -> Option<Tenant> {
        let rest = dir.strip_prefix('@')?;
        let mut parts = rest.split('+');
        let ns = parts.next()?;
        let kube = parts.next().unwrap_or("");
        let sub = parts.next().unwrap_or("");
        if parts.next().is_some() || (rest.contains('+') && kube.is_empty() && sub.is_empty()) {
            return None;
        }
        let t = Tenant::new(ns, kube, sub).ok()?;
        (t.dir_name() == dir).then_some(t)
    }

    /// The containerd namespace this tenant is part of.
    pub fn containerd_namespace(&self) -> &str {
        &self.namespace
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.namespace)?;
        if self.kube_namespace.is_some() || self.sub.is_some() {
            write!(f, "/{}", self.kube_namespace.as_deref().unwrap_or(""))?;
        }
        if let Some(sub) = &self.sub {
            write!(f, "/{sub}")?;
        }
        Ok(())
    }
}

impl FromStr for Tenant {
    type Err = TenantError;

    /// The form [`Tenant`] displays: `ns`, `ns/kube`, `ns/kube/sub`, `ns//sub`.
    fn from_str(s: &str) -> Result<Tenant, TenantError> {
        let parts: Vec<&str> = s.split('/').collect();
        let t = match parts.as_slice() {
            [ns] => Tenant::new(ns, "", "")?,
            [ns, kube] if !kube.is_empty() => Tenant::new(ns, kube, "")?,
            [ns, kube, sub] if !sub.is_empty() => Tenant::new(ns, kube, sub)?,
            _ => return Err(TenantError::Form(s.into())),
        };
        Ok(t)
    }
}

impl TryFrom<String> for Tenant {
    type Error = TenantError;
    fn try_from(s: String) -> Result<Tenant, TenantError> {
        s.parse()
    }
}

impl From<Tenant> for String {
    fn from(t: Tenant) -> String {
        t.to_string()
    }
}

/// containerd's rule for namespaces (`identifiers.Validate`): letters, digits and single
/// '.', '_' or '-' between them, at most 76 characters.
fn valid_namespace(s: &str) -> bool {
    let b = s.as_bytes();
    let sep = |c: &u8| matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && b.len() <= 76
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || sep(c))
        && !b.windows(2).any(|w| sep(&w[0]) && sep(&w[1]))
}

/// A Kubernetes namespace: an RFC 1123 label.
fn valid_kube_namespace(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_its_namespace_narrowed_by_kubernetes_and_the_annotation() {
        let ns = Tenant::namespace("default").unwrap();
        assert_eq!(ns.to_string(), "default");
        assert_eq!(ns.dir_name(), "@default");
        let pod = Tenant::new("k8s.io", "team-a", "").unwrap();
        assert_eq!(pod.to_string(), "k8s.io/team-a");
        assert_eq!(pod.dir_name(), "@k8s.io+team-a");
        let sub = Tenant::new("k8s.io", "team-a", "blue").unwrap();
        assert_eq!(sub.to_string(), "k8s.io/team-a/blue");
        assert_eq!(sub.dir_name(), "@k8s.io+team-a+blue");
        let bare = Tenant::new("default", "", "blue").unwrap();
        assert_eq!(bare.to_string(), "default//blue");
        assert_eq!(bare.dir_name(), "@default++blue");
        for t in [&ns, &pod, &sub, &bare] {
            assert_eq!(&t.to_string().parse::<Tenant>().unwrap(), t);
            assert_eq!(Tenant::from_dir_name(&t.dir_name()).as_ref(), Some(t));
        }
        // A sub-tenant without a Kubernetes namespace is not the pod tenant of that name.
        assert_ne!(bare, Tenant::new("default", "blue", "").unwrap());
    }

    #[test]
    fn the_tenant_of_a_container_comes_from_its_namespace_and_annotations() {
        let ann = [
            (KUBE_NAMESPACE_ANNOTATION, "team-a"),
            (TENANT_ANNOTATION, "blue"),
        ];
        let get = |k: &str| ann.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let t = Tenant::of_container("k8s.io", get).unwrap();
        assert_eq!(t.to_string(), "k8s.io/team-a/blue");
        assert_eq!(t.containerd_namespace(), "k8s.io");
        let none = Tenant::of_container("default", |_| None).unwrap();
        assert_eq!(none, Tenant::namespace("default").unwrap());
    }

    #[test]
    fn parts_that_could_escape_or_widen_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "a+b",
            "@x",
            "-a",
            "a-",
            "a..b",
            &"a".repeat(77),
        ] {
            assert!(
                matches!(Tenant::new(bad, "", ""), Err(TenantError::Namespace(_))),
                "{bad:?}"
            );
        }
        for bad in ["..", "Team", "a/b", "a+b", "-a", "a_b", &"a".repeat(64)] {
            assert!(
                matches!(
                    Tenant::new("k8s.io", bad, ""),
                    Err(TenantError::KubeNamespace(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["..", "a/b", "a+b", "Blue", "../x", &"a".repeat(64)] {
            let e = Tenant::new("k8s.io", "", bad).unwrap_err();
            assert!(matches!(e, TenantError::Sub(_)), "{bad:?}");
            assert!(e.to_string().contains(TENANT_ANNOTATION), "{e}");
        }
        for bad in ["a/", "a//", "a/b/c/d", "/a", "a/b/"] {
            assert!(bad.parse::<Tenant>().is_err(), "{bad:?}");
        }
        for dir in ["default", "@", "@a+", "@a++", "@a+b+c+d", "@a+B", "@.."] {
            assert_eq!(Tenant::from_dir_name(dir), None, "{dir:?}");
        }
        // The longest tenant is still one file name.
        let long = Tenant::new(&"n".repeat(76), &"k".repeat(63), &"s".repeat(63)).unwrap();
        assert!(long.dir_name().len() < 255);
    }
}
