//! What this runtime supports, as an OCI runtime states it: the "features" document of the
//! runtime spec (features.md, what `runc features` prints). containerd 2.x asks a shim for
//! it (`<shim> -info`) and its CRI decides from it, for instance, whether pods may ask for
//! recursive read-only mounts. Every entry is what trenv really does: the mount options
//! libcontainer parses (the recursive ones through mount_setattr(2) with AT_RECURSIVE), the
//! seccomp actions trenv enforces (not SCMP_ACT_NOTIFY, see [`super::seccomp`]), the
//! namespaces it creates or joins, the cgroup drivers it drives.

use serde_json::{Value, json};

/// The OCI runtime spec versions trenv accepts.
const OCI_VERSION_MIN: &str = "1.0.0";
const OCI_VERSION_MAX: &str = "1.2.0";

/// Recursive mount attributes (mount_setattr(2) with AT_RECURSIVE), as libcontainer names
/// them.
const RECURSIVE_MOUNT_OPTIONS: &[&str] = &[
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rrelatime",
    "rnorelatime",
    "rnoatime",
    "ratime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// The seccomp actions trenv's profiles enforce (see `seccomp::action`).
const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

const SECCOMP_ARCHS: &[&str] = &[
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
];

/// The namespaces trenv creates or joins. A user-namespaced container runs (with idmapped
/// mounts, see [`super::idmap`]); only templates refuse it, clearly.
const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// The features document (JSON, the runtime spec's `features.Features`).
pub fn features() -> Value {
    let mut mount_options: Vec<String> = libcontainer::syscall::linux::MountOption::known_options();
    mount_options.extend(RECURSIVE_MOUNT_OPTIONS.iter().map(|s| s.to_string()));
    mount_options.sort();
    mount_options.dedup();
    let mut capabilities: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    capabilities.sort();
    json!({
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": HOOKS,
        "mountOptions": mount_options,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capabilities,
            "cgroup": { "v1": true, "v2": true, "systemd": true, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": SECCOMP_ACTIONS,
                "operators": SECCOMP_OPERATORS,
                "archs": SECCOMP_ARCHS,
            },
            "mountExtensions": { "idmap": { "enabled": true } },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "io.trenv.version": env!("CARGO_PKG_VERSION"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_read_only_mounts_are_offered() {
        let f = features();
        let options = f["mountOptions"].as_array().unwrap();
        for o in ["rro", "ro", "rbind", "rslave", "rshared"] {
            assert!(options.iter().any(|v| v == o), "{o} missing: {options:?}");
        }
    }

    #[test]
    fn user_namespaces_and_idmapped_mounts_are_offered() {
        let f = features();
        assert_eq!(f["linux"]["mountExtensions"]["idmap"]["enabled"], true);
        let ns = f["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n == "user"), "{ns:?}");
    }

    #[test]
    fn only_enforced_seccomp_actions_are_offered() {
        let f = features();
        let actions = f["linux"]["seccomp"]["actions"].as_array().unwrap();
        assert!(!actions.iter().any(|a| a == "SCMP_ACT_NOTIFY"));
        assert!(actions.iter().any(|a| a == "SCMP_ACT_ERRNO"));
    }

    #[test]
    fn capabilities_use_the_oci_names() {
        let f = features();
        let caps = f["linux"]["capabilities"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
    }
}
