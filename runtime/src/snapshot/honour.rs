//! A template restore honours the restoring container's spec, as a cold start would: what
//! CRIU restores from the image instead of the spec is either applied after CRIU
//! ([`apply`]) or, when a restore cannot change it, compared with what the template was
//! made from and refused if it differs ([`differences`]).
//!
//! * Applied to the restored tree (a cold start applies them to its init; CRIU restores
//!   the image's values): the host and domain name of the container's own UTS namespace,
//!   `linux.sysctl` (namespaced ones only), `process.rlimits`, `process.oomScoreAdj`,
//!   `process.ioPriority`, `process.execCPUAffinity`.
//! * Refused when they differ from the template's source (a running process's arguments,
//!   working directory, environment, mount tree, scheduling policy, personality and memory
//!   policy are its own; nothing outside it can change them): `process.args`,
//!   `process.cwd`, `process.env`, `mounts` (destination, type, options; a bind's source
//!   may differ, it is re-bound), `process.scheduler`, `linux.personality`,
//!   `linux.memoryPolicy`, and a sysctl the source set that the spec leaves out.
//!
//! The template records these fields in its manifest ([`SpecRecord`]); the environment
//! only as a SHA-256 of each value, since it may hold secrets. The security fields (user,
//! capabilities, seccomp, …) are compared by template/manifest.rs's `security_digest`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimit, PosixRlimitType, Spec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SnapshotError;

/// What a template was made from, of the spec fields a restore cannot change or applies
/// only where they differ (rlimits and oom_score_adj: a restored process keeps the limits
/// it set itself, e.g. Go raising its soft RLIMIT_NOFILE, when the spec asks for nothing
/// else).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub args: Vec<String>,
    pub cwd: String,
    /// Variable name → SHA-256 (hex) of its value.
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<MountRecord>,
    pub sysctl: BTreeMap<String, String>,
    pub rlimits: Vec<PosixRlimit>,
    pub oom_score_adj: Option<i32>,
    /// `process.scheduler`, `linux.personality`, `linux.memoryPolicy` as JSON.
    pub scheduler: Option<serde_json::Value>,
    pub personality: Option<serde_json::Value>,
    pub memory_policy: Option<serde_json::Value>,
}

/// A mount as a restore must find it: its source is left out (binds are re-bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub destination: String,
    #[serde(rename = "type")]
    pub typ: Option<String>,
    pub options: Vec<String>,
}

/// A field of the restoring spec that differs from the template's and that a restore
/// cannot change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}; {why}")]
pub struct Difference {
    /// The spec's field, as the OCI runtime spec names it.
    pub field: &'static str,
    pub detail: String,
    pub why: &'static str,
}

impl SpecRecord {
    /// The record of `spec`.
    pub fn of(spec: &Spec) -> SpecRecord {
        let p = spec.process().as_ref();
        let l = spec.linux().as_ref();
        let json = |v: Option<serde_json::Value>| v.filter(|v| !v.is_null());
        SpecRecord {
            args: p.and_then(|p| p.args().clone()).unwrap_or_default(),
            cwd: p.map(|p| p.cwd().display().to_string()).unwrap_or_default(),
            env: env_of(spec)
                .into_iter()
                .map(|(k, v)| (k, sha256(&v)))
                .collect(),
            mounts: mounts_of(spec),
            sysctl: l
                .and_then(|l| l.sysctl().as_ref())
                .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            rlimits: p.and_then(|p| p.rlimits().clone()).unwrap_or_default(),
            oom_score_adj: p.and_then(|p| p.oom_score_adj()),
            scheduler: json(p.and_then(|p| serde_json::to_value(p.scheduler()).ok())),
            personality: json(l.and_then(|l| serde_json::to_value(l.personality()).ok())),
            memory_policy: json(l.and_then(|l| serde_json::to_value(l.memory_policy()).ok())),
        }
    }
}

/// The first field of `spec` that a restore from a template made from `template` cannot
/// honour, if any. Variables named in `env_may_differ` may differ or be missing on either
/// side (containerd's CRI sets HOSTNAME per pod; the host name itself is applied).
pub fn differences(
    template: &SpecRecord,
    spec: &Spec,
    env_may_differ: &[String],
) -> Result<(), Difference> {
    let now = SpecRecord::of(spec);
    let own = |field, detail: String| Difference {
        field,
        detail,
        why: "a restore cannot change a restored process's own state: re-create the template \
              from a container with this spec, or start cold",
    };
    if now.args != template.args {
        return Err(own(
            "process.args",
            format!(
                "the template runs {:?}, this spec {:?}",
                template.args, now.args
            ),
        ));
    }
    if now.cwd != template.cwd {
        return Err(own(
            "process.cwd",
            format!(
                "the template's working directory is {}, this spec's {}",
                template.cwd, now.cwd
            ),
        ));
    }
    let may_differ = |k: &str| env_may_differ.iter().any(|e| e == k);
    for (k, sum) in &template.env {
        if may_differ(k) {
            continue;
        }
        match now.env.get(k) {
            None => {
                return Err(own(
                    "process.env",
                    format!("the template's environment has {k}, this spec does not set it"),
                ));
            }
            Some(s) if s != sum => {
                return Err(own(
                    "process.env",
                    format!("the template's environment has {k}=<a different value>"),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(k) = now
        .env
        .keys()
        .find(|k| !may_differ(k) && !template.env.contains_key(*k))
    {
        return Err(own(
            "process.env",
            format!("this spec sets {k}, which the template's environment does not have"),
        ));
    }
    if let Some(detail) = mount_difference(&template.mounts, &now.mounts) {
        return Err(own("mounts", detail));
    }
    for (field, a, b) in [
        ("process.scheduler", &template.scheduler, &now.scheduler),
        ("linux.personality", &template.personality, &now.personality),
        (
            "linux.memoryPolicy",
            &template.memory_policy,
            &now.memory_policy,
        ),
    ] {
        if a != b {
            return Err(own(
                field,
                format!(
                    "the template's is {}, this spec's {}",
                    shown(a.as_ref()),
                    shown(b.as_ref())
                ),
            ));
        }
    }
    if let Some((k, v)) = template
        .sysctl
        .iter()
        .find(|(k, _)| !now.sysctl.contains_key(*k))
    {
        return Err(Difference {
            field: "linux.sysctl",
            detail: format!("the template's source set {k}={v}, this spec does not set {k}"),
            why: "the restored namespace keeps the template's value, where a cold start would \
                  have the kernel's default: set it in this spec, or re-create the template",
        });
    }
    if let Some(k) = now.sysctl.keys().find(|k| !namespaced(k)) {
        return Err(Difference {
            field: "linux.sysctl",
            detail: format!("{k} is not a namespaced sysctl"),
            why: "only the container's own namespaces' sysctls (net.*, kernel.shm*, \
                  kernel.msg*, kernel.sem, fs.mqueue.*, kernel.hostname, kernel.domainname) \
                  may be set",
        });
    }
    Ok(())
}

fn shown(v: Option<&serde_json::Value>) -> String {
    v.map_or_else(|| "unset".into(), serde_json::Value::to_string)
}

/// How the mount lists differ, by destination, if they do.
fn mount_difference(template: &[MountRecord], now: &[MountRecord]) -> Option<String> {
    let describe = |m: &MountRecord| {
        format!(
            "a {} mount at {} ({})",
            m.typ.as_deref().unwrap_or("untyped"),
            m.destination,
            m.options.join(",")
        )
    };
    for (i, m) in template.iter().enumerate() {
        match now.iter().position(|n| n.destination == m.destination) {
            None => {
                return Some(format!(
                    "the template has {}, this spec has no mount there",
                    describe(m)
                ));
            }
            Some(j) if now[j] != *m => {
                return Some(format!(
                    "the template has {}, this spec {}",
                    describe(m),
                    describe(&now[j])
                ));
            }
            Some(j) if j != i => {
                return Some(format!(
                    "the mount at {} comes in another order than in the template",
                    m.destination
                ));
            }
            Some(_) => {}
        }
    }
    now.iter()
        .find(|n| !template.iter().any(|m| m.destination == n.destination))
        .map(|n| {
            format!(
                "this spec has {}, which the template does not have",
                describe(n)
            )
        })
}

/// Whether sysctl `key` belongs to a namespace of the container (runc's list).
fn namespaced(key: &str) -> bool {
    let k = key.replace('/', ".");
    matches!(
        k.as_str(),
        "kernel.sem" | "kernel.hostname" | "kernel.domainname"
    ) || k.starts_with("kernel.shm")
        || k.starts_with("kernel.msg")
        || k.starts_with("fs.mqueue.")
        || k.starts_with("net.")
}

/// The spec's environment by name (the last of a name wins, as for execve's readers).
fn env_of(spec: &Spec) -> BTreeMap<String, String> {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .into_iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

fn mounts_of(spec: &Spec) -> Vec<MountRecord> {
    spec.mounts()
        .as_ref()
        .into_iter()
        .flatten()
        .map(|m| MountRecord {
            destination: m.destination().display().to_string(),
            typ: m.typ().clone(),
            options: m.options().clone().unwrap_or_default(),
        })
        .collect()
}

fn sha256(v: &str) -> String {
    format!("{:x}", Sha256::digest(v.as_bytes()))
}

/// Applies to the tree restored at `pid` what a cold start of `spec` would have that CRIU
/// restored from the image made from `template`: the host and domain name, the sysctls,
/// rlimits, oom_score_adj, I/O priority and CPU affinity. This worker is single-threaded
/// and exits afterwards: it moves itself into the restored UTS, IPC and network
/// namespaces (sysctl files resolve the opener's namespaces).
pub fn apply(pid: i32, spec: &Spec, template: &SpecRecord) -> Result<(), SnapshotError> {
    let now = SpecRecord::of(spec);
    let p = spec.process().as_ref();
    for proc_pid in crate::sys::tree::process_tree(pid) {
        rlimits(proc_pid, &template.rlimits, &now.rlimits)?;
        if template.oom_score_adj != now.oom_score_adj {
            let v = match now.oom_score_adj {
                Some(v) => v.to_string(),
                None => fs::read_to_string("/proc/self/oom_score_adj")
                    .map_err(apply_err("process.oomScoreAdj"))?
                    .trim()
                    .to_string(),
            };
            write_file(&format!("/proc/{proc_pid}/oom_score_adj"), &v)
                .map_err(apply_err("process.oomScoreAdj"))?;
        }
        for tid in crate::sys::tree::threads(proc_pid) {
            if let Some(io) = p.and_then(|p| p.io_priority().as_ref()) {
                io_priority(tid, io)?;
            }
            let affinity = p.and_then(|p| p.exec_cpu_affinity().as_ref());
            if let Some(cpus) =
                affinity.and_then(|a| a.cpu_affinity_final().as_ref().or(a.initial().as_ref()))
            {
                libcontainer::process::cpu_affinity::set_cpuset_affinity_from_string(
                    nix::unistd::Pid::from_raw(tid),
                    cpus,
                )
                .map_err(|e| SnapshotError::Apply {
                    field: "process.execCPUAffinity",
                    source: std::io::Error::other(e.to_string()),
                })?;
            }
        }
    }
    namespaces(pid, spec, &now.sysctl)
}

/// The host and domain name (the container's own UTS namespace only, as libcontainer:
/// the spec's, or the host's that a cold start's fresh namespace inherits), then the
/// sysctls, from inside the restored namespaces.
fn namespaces(
    pid: i32,
    spec: &Spec,
    sysctl: &BTreeMap<String, String>,
) -> Result<(), SnapshotError> {
    let own_uts = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Uts && n.path().is_none())
        // A sandbox's UTS namespace is the container's own too (CRIU wrote the template's
        // names into it).
        || crate::container::spec::sandboxed(spec);
    if !own_uts && sysctl.is_empty() {
        return Ok(());
    }
    // The host's names, before this worker leaves its UTS namespace.
    let host = nix::sys::utsname::uname().map_err(SnapshotError::sys("reading the host name"))?;
    let mut names = Vec::new();
    for (ns, flag) in [
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("net", CloneFlags::CLONE_NEWNET),
    ] {
        let f = fs::File::open(format!("/proc/{pid}/ns/{ns}")).map_err(SnapshotError::io(
            format!("opening the restored {ns} namespace"),
        ))?;
        names.push((ns, f, flag));
    }
    for (ns, f, flag) in &names {
        nix::sched::setns(f, *flag).map_err(SnapshotError::sys(format!(
            "entering the restored {ns} namespace"
        )))?;
    }
    if own_uts {
        let hostname = spec
            .hostname()
            .clone()
            .unwrap_or_else(|| host.nodename().to_string_lossy().into_owned());
        crate::sys::nsops::set_hostname(&hostname).map_err(|source| SnapshotError::Apply {
            field: "hostname",
            source,
        })?;
        let domain = spec
            .domainname()
            .clone()
            .unwrap_or_else(|| host.domainname().to_string_lossy().into_owned());
        crate::sys::nsops::set_domainname(&domain).map_err(|source| SnapshotError::Apply {
            field: "domainname",
            source,
        })?;
    }
    for (k, v) in sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        write_file(&path, v).map_err(|source| SnapshotError::Sysctl {
            key: k.clone(),
            value: v.clone(),
            source,
        })?;
    }
    Ok(())
}

fn write_file(path: &str, v: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(v.as_bytes())
}

fn apply_err(field: &'static str) -> impl Fn(std::io::Error) -> SnapshotError {
    move |source| SnapshotError::Apply { field, source }
}

/// Sets on process `pid` every rlimit whose spec value differs from the template's: the
/// spec's, or this worker's own (what a cold start inherits) where the spec has none.
fn rlimits(pid: i32, template: &[PosixRlimit], now: &[PosixRlimit]) -> Result<(), SnapshotError> {
    let find = |l: &[PosixRlimit], t: PosixRlimitType| l.iter().find(|r| r.typ() == t).cloned();
    let mut types: Vec<PosixRlimitType> = Vec::new();
    for t in template.iter().chain(now).map(|r| r.typ()) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    for t in types {
        let want = find(now, t);
        if find(template, t) == want {
            continue;
        }
        let res = resource(t);
        let mut lim = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        match want {
            Some(w) => {
                lim.rlim_cur = w.soft();
                lim.rlim_max = w.hard();
            }
            // SAFETY: prlimit64 with pid 0 reads this process's limit into `lim`.
            None => unsafe {
                if libc::prlimit64(0, res, std::ptr::null(), &mut lim) != 0 {
                    continue;
                }
            },
        }
        // SAFETY: `lim` is a valid rlimit64 read by the call; no old value is asked for.
        let rc = unsafe { libc::prlimit64(pid, res, &lim, std::ptr::null_mut()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // A process that exited meanwhile needs no limit.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(SnapshotError::Apply {
                    field: "process.rlimits",
                    source: e,
                });
            }
        }
    }
    Ok(())
}

fn resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// ioprio_set(IOPRIO_WHO_PROCESS, tid, …): the I/O priority is a thread's.
fn io_priority(tid: i32, io: &oci_spec::runtime::LinuxIOPriority) -> Result<(), SnapshotError> {
    use oci_spec::runtime::IOPriorityClass as C;
    let class: libc::c_long = match io.class() {
        C::IoprioClassRt => 1,
        C::IoprioClassBe => 2,
        C::IoprioClassIdle => 3,
    };
    let value = (class << 13) | io.priority();
    // SAFETY: ioprio_set takes three integers and touches no memory of this process.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, tid as libc::c_long, value) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(SnapshotError::Apply {
                field: "process.ioPriority",
                source: e,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(process: serde_json::Value, extra: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": process,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/a/hosts",
                 "options": ["rbind", "ro"]}
            ]
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn process(env: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "args": ["python3", "fn.py"], "cwd": "/app", "env": env,
            "user": {"uid": 0, "gid": 0}
        })
    }

    fn base() -> Spec {
        spec(
            process(&["PATH=/bin", "HOSTNAME=pod-a"]),
            serde_json::json!({}),
        )
    }

    fn differs(now: &Spec) -> Difference {
        differences(&SpecRecord::of(&base()), now, &["HOSTNAME".into()]).unwrap_err()
    }

    #[test]
    fn the_same_spec_and_a_different_hostname_variable_may_restore() {
        let other_pod = spec(
            process(&["PATH=/bin", "HOSTNAME=pod-b"]),
            serde_json::json!({}),
        );
        differences(&SpecRecord::of(&base()), &other_pod, &["HOSTNAME".into()]).unwrap();
        // Not listed as one that may differ, HOSTNAME is refused like any variable.
        let e = differences(&SpecRecord::of(&base()), &other_pod, &[]).unwrap_err();
        assert_eq!(e.field, "process.env");
        assert!(e.detail.contains("HOSTNAME=<a different value>"), "{e}");
    }

    #[test]
    fn an_environment_variable_differing_is_named_without_its_value() {
        let e = differs(&spec(
            process(&["PATH=/usr/bin", "HOSTNAME=pod-a"]),
            serde_json::json!({}),
        ));
        assert_eq!(e.field, "process.env");
        assert!(e.to_string().contains("PATH=<a different value>"), "{e}");
        assert!(!e.to_string().contains("/usr/bin"), "{e}");
        assert!(e.to_string().contains("re-create the template"), "{e}");
        let e = differs(&spec(process(&["HOSTNAME=pod-a"]), serde_json::json!({})));
        assert!(
            e.detail.contains("has PATH, this spec does not set it"),
            "{e}"
        );
        let e = differs(&spec(
            process(&["PATH=/bin", "SECRET=x"]),
            serde_json::json!({}),
        ));
        assert!(e.detail.contains("this spec sets SECRET"), "{e}");
    }

    #[test]
    fn the_record_keeps_no_environment_value() {
        let r = serde_json::to_string(&SpecRecord::of(&spec(
            process(&["TOKEN=hunter2"]),
            serde_json::json!({}),
        )))
        .unwrap();
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains(&sha256("hunter2")), "{r}");
    }

    #[test]
    fn args_cwd_and_mounts_differing_are_named() {
        let mut p = process(&["PATH=/bin"]);
        p["args"] = serde_json::json!(["sh"]);
        assert_eq!(
            differs(&spec(p, serde_json::json!({}))).field,
            "process.args"
        );
        let mut p = process(&["PATH=/bin", "HOSTNAME=x"]);
        p["cwd"] = serde_json::json!("/");
        assert_eq!(
            differs(&spec(p, serde_json::json!({}))).field,
            "process.cwd"
        );
        let p = process(&["PATH=/bin", "HOSTNAME=x"]);
        let e = differs(&spec(
            p.clone(),
            serde_json::json!({"mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/b/hosts",
                 "options": ["rbind", "rw"]}
            ]}),
        ));
        assert_eq!(e.field, "mounts");
        assert!(e.detail.contains("/etc/hosts"), "{e}");
        // Another bind source, same destination and options: re-bound, restorable.
        let other_source = spec(
            p,
            serde_json::json!({"mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/b/hosts",
                 "options": ["rbind", "ro"]}
            ]}),
        );
        differences(
            &SpecRecord::of(&base()),
            &other_source,
            &["HOSTNAME".into()],
        )
        .unwrap();
    }

    #[test]
    fn sysctls_are_applied_unless_left_out_or_not_namespaced() {
        let p = || process(&["PATH=/bin", "HOSTNAME=pod-a"]);
        let with = |s: serde_json::Value| spec(p(), serde_json::json!({"linux": {"sysctl": s}}));
        let t = SpecRecord::of(&with(serde_json::json!({"kernel.shmmax": "1000"})));
        let hn = ["HOSTNAME".to_string()];
        differences(&t, &with(serde_json::json!({"kernel.shmmax": "2000"})), &hn).unwrap();
        let e = differences(&t, &base(), &hn).unwrap_err();
        assert_eq!(e.field, "linux.sysctl");
        assert!(e.detail.contains("kernel.shmmax=1000"), "{e}");
        let e = differences(
            &t,
            &with(serde_json::json!({"kernel.shmmax": "1", "vm.swappiness": "1"})),
            &hn,
        )
        .unwrap_err();
        assert!(
            e.detail.contains("vm.swappiness is not a namespaced"),
            "{e}"
        );
    }

    #[test]
    fn a_different_scheduler_is_refused_and_rlimits_are_not() {
        let mut p = process(&["PATH=/bin", "HOSTNAME=pod-a"]);
        p["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 9, "soft": 9}]);
        p["oomScoreAdj"] = serde_json::json!(500);
        differences(
            &SpecRecord::of(&base()),
            &spec(p.clone(), serde_json::json!({})),
            &["HOSTNAME".into()],
        )
        .unwrap();
        p["scheduler"] = serde_json::json!({"policy": "SCHED_BATCH"});
        let e = differs(&spec(p, serde_json::json!({})));
        assert_eq!(e.field, "process.scheduler");
        assert!(e.detail.contains("SCHED_BATCH"), "{e}");
    }
}
