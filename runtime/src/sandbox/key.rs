//! Which containers take part in repurposing, and which sandboxes a container may be given.
//!
//! A container takes part when its spec asks for new network, IPC, UTS, mount and PID
//! namespaces (as `ctr` and containerd's clients such as faasd and nerdctl write them) and
//! no user namespace, and when it cannot change its network namespace behind trenv's back
//! (no CAP_NET_ADMIN: interfaces, routes, firewall rules and network sysctls are what it
//! would change, which the purge does not replay): the purge then restores everything it
//! could change (with CAP_SYS_ADMIN: the hostname and the IPC sysctls, reset by the purge). A CRI container joins its pod's namespaces by path and never takes part: the pod
//! owns them (docs/sandboxes.md).
//!
//! Two containers are compatible when they are of the same tenant and their spec's security
//! fields (the template's notion, [`security_digest`]), namespaced sysctls and network
//! agree: the sandbox carries no trace of one into the other's domain.

use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};
use sha2::{Digest, Sha256};

use crate::template::manifest::security_digest;

/// Why a container runs in fresh namespaces of its own instead of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    #[error("its spec joins an existing {0} namespace or has none of its own")]
    Namespace(&'static str),
    #[error("it has a user namespace")]
    UserNamespace,
    #[error("it may reconfigure its network namespace ({0})")]
    Capability(&'static str),
}

/// The namespaces a sandbox keeps, with a new one of each other kind per container.
const OWN: [(LinuxNamespaceType, &str); 5] = [
    (LinuxNamespaceType::Network, "network"),
    (LinuxNamespaceType::Ipc, "ipc"),
    (LinuxNamespaceType::Uts, "uts"),
    (LinuxNamespaceType::Mount, "mount"),
    (LinuxNamespaceType::Pid, "pid"),
];

/// Whether the container may run in a (possibly repurposed) sandbox.
pub fn eligible(spec: &Spec) -> Result<(), Ineligible> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (kind, name) in OWN {
        if !namespaces
            .iter()
            .any(|n| n.typ() == kind && n.path().is_none())
        {
            return Err(Ineligible::Namespace(name));
        }
    }
    if namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        return Err(Ineligible::UserNamespace);
    }
    let caps = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone());
    if let Some(caps) = caps {
        let held = [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.ambient(),
        ]
        .into_iter()
        .any(|set| {
            set.as_ref()
                .is_some_and(|s| s.contains(&Capability::NetAdmin))
        });
        if held {
            return Err(Ineligible::Capability("CAP_NET_ADMIN"));
        }
    }
    Ok(())
}

/// What a container must share with a sandbox's previous ones to be given it.
pub fn compat_key(tenant: &str, spec: &Spec, network: Option<&str>) -> String {
    let sysctl: std::collections::BTreeMap<_, _> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let fields = serde_json::json!({
        "tenant": tenant,
        "security": security_digest(spec),
        "sysctl": sysctl,
        "network": network,
    });
    format!("{:x}", Sha256::digest(fields.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const CTR: &str = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},
        "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"]}},
        "linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},
        {"type":"network"}]}}"#;

    #[test]
    fn a_ctr_container_takes_part() {
        assert_eq!(eligible(&spec(CTR)), Ok(()));
    }

    #[test]
    fn pod_containers_user_namespaces_and_network_admins_do_not() {
        let sys_admin = CTR.replace("\"CAP_KILL\"", "\"CAP_SYS_ADMIN\"");
        assert_eq!(eligible(&spec(&sys_admin)), Ok(()));
        let pod = CTR.replace(
            r#"{"type":"network"}"#,
            r#"{"type":"network","path":"/var/run/netns/cni-1"}"#,
        );
        assert_eq!(eligible(&spec(&pod)), Err(Ineligible::Namespace("network")));
        let no_ipc = CTR.replace(r#"{"type":"ipc"},"#, "");
        assert_eq!(eligible(&spec(&no_ipc)), Err(Ineligible::Namespace("ipc")));
        let userns = CTR.replace(r#"{"type":"pid"}"#, r#"{"type":"pid"},{"type":"user"}"#);
        assert_eq!(eligible(&spec(&userns)), Err(Ineligible::UserNamespace));
        let admin = CTR.replace("\"CAP_KILL\"", "\"CAP_NET_ADMIN\"");
        assert_eq!(
            eligible(&spec(&admin)),
            Err(Ineligible::Capability("CAP_NET_ADMIN"))
        );
    }

    #[test]
    fn keys_differ_by_tenant_security_sysctl_and_network() {
        let s = spec(CTR);
        let k = compat_key("default", &s, None);
        assert_eq!(k, compat_key("default", &spec(CTR), None));
        assert_ne!(k, compat_key("other", &s, None));
        assert_ne!(k, compat_key("default", &s, Some("trenv-net")));
        let uid = CTR.replace(r#""uid":0"#, r#""uid":1000"#);
        assert_ne!(k, compat_key("default", &spec(&uid), None));
        let sysctl = CTR.replace(
            r#""linux":{"#,
            r#""linux":{"sysctl":{"net.ipv4.ip_forward":"1"},"#,
        );
        assert_ne!(k, compat_key("default", &spec(&sysctl), None));
    }
}
