//! OCI seccomp profiles compiled to BPF with seccompiler.
//!
//! seccompiler builds filters with one "match" and one "mismatch" action, while an OCI
//! profile gives every rule its own action. A profile therefore becomes a small stack of
//! filters, which the kernel evaluates together, taking the most restrictive result (and,
//! among equally restrictive ones, the most recently installed):
//!
//! 1. a base filter: mismatch = the profile's default action, match = allow, for every
//!    syscall the profile names in a rule whose action differs from the default;
//! 2. one filter per other action A (errno with a given value, kill, trap, log…): match = A,
//!    mismatch = allow, for the rules with that action.
//!
//! A syscall matched by an `SCMP_ACT_ERRNO(ENOSYS)` rule is allowed by (1) and gets ENOSYS
//! from (2); an unlisted syscall gets the default from (1) and allow from the others.
//! Syscall names unknown on this architecture are skipped, as libseccomp does. Filters are
//! built for the native architecture only; foreign-ABI syscalls are rejected by each
//! filter's architecture check.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "seccomp action {0:?} is not supported by trenv; use ALLOW, ERRNO, KILL*, TRAP, TRACE or LOG"
    )]
    UnsupportedAction(LinuxSeccompAction),
    #[error(
        "seccomp listenerPath is set, but trenv supports no seccomp notify agent; remove it from the profile"
    )]
    Listener,
    #[error("seccomp rule for {syscall} has an invalid argument condition: {reason}")]
    BadCondition { syscall: String, reason: String },
    #[error("this architecture ({0}) is not supported by seccompiler")]
    Arch(&'static str),
    #[error("compiling the seccomp profile: {0}")]
    Compile(String),
    #[error("the kernel refused the seccomp filter: {0}")]
    Install(std::io::Error),
}

/// One compiled filter and the flags to install it with.
#[derive(Clone, Debug)]
pub struct Filter {
    pub program: BpfProgram,
    pub flags: libc::c_ulong,
}

impl Filter {
    /// Installs the filter on the calling thread.
    pub fn install(&self) -> Result<(), SeccompError> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout.
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points to a valid program that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        other => return Err(SeccompError::UnsupportedAction(other)),
    })
}

fn flags(profile: &LinuxSeccomp) -> libc::c_ulong {
    let mut bits = 0;
    for f in profile.flags().iter().flatten() {
        bits |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            // SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV only matters with a notify listener,
            // which trenv refuses.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    bits
}

fn condition(
    name: &str,
    arg: &oci_spec::runtime::LinuxSeccompArg,
) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // OCI: value is the mask, valueTwo the expected masked value.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    let index = u8::try_from(arg.index()).map_err(|_| SeccompError::BadCondition {
        syscall: name.to_string(),
        reason: format!("argument index {} out of range", arg.index()),
    })?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| {
        SeccompError::BadCondition {
            syscall: name.to_string(),
            reason: e.to_string(),
        }
    })
}

/// Rules grouped by action: action → syscall number → rules (empty = unconditional).
type Groups = Vec<(SeccompAction, BTreeMap<i64, Option<Vec<SeccompRule>>>)>;

fn add_rule(map: &mut BTreeMap<i64, Option<Vec<SeccompRule>>>, nr: i64, rule: Option<SeccompRule>) {
    let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rule) {
        // Already unconditional: nothing narrows it.
        (None, _) => {}
        (Some(_), None) => *entry = None,
        (Some(rules), Some(r)) => rules.push(r),
    }
}

fn build(
    map: BTreeMap<i64, Option<Vec<SeccompRule>>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
    flags: libc::c_ulong,
) -> Result<Filter, SeccompError> {
    let rules = map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, matched, arch)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    Ok(Filter { program, flags })
}

/// Compiles an OCI seccomp profile into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Filter>, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError::Listener);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let flags = flags(profile);
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut base: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    let mut groups: Groups = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Some(nr) = syscall_number(arch, name) else {
                log::debug!("seccomp: syscall {name} unknown on this architecture, skipped");
                continue;
            };
            let conds = rule
                .args()
                .iter()
                .flatten()
                .map(|a| condition(name, a))
                .collect::<Result<Vec<_>, _>>()?;
            let seccomp_rule = if conds.is_empty() {
                None
            } else {
                Some(
                    SeccompRule::new(conds).map_err(|e| SeccompError::BadCondition {
                        syscall: name.to_string(),
                        reason: e.to_string(),
                    })?,
                )
            };
            add_rule(&mut base, nr, seccomp_rule.clone());
            if act != SeccompAction::Allow {
                let idx = match groups.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        groups.push((act.clone(), BTreeMap::new()));
                        groups.len() - 1
                    }
                };
                add_rule(&mut groups[idx].1, nr, seccomp_rule);
            }
        }
    }
    let mut filters = Vec::new();
    if default != SeccompAction::Allow {
        filters.push(build(base, default, SeccompAction::Allow, arch, flags)?);
    }
    for (act, map) in groups {
        filters.push(build(map, SeccompAction::Allow, act, arch, flags)?);
    }
    Ok(filters)
}

fn syscall_number(arch: TargetArch, name: &str) -> Option<i64> {
    // seccompiler keeps its syscall tables private; ours is generated from the kernel's
    // UAPI headers at build time.
    table::lookup(arch, name)
}

mod table;

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompBuilder, LinuxSyscallBuilder};

    fn profile(
        default: LinuxSeccompAction,
        rules: Vec<(Vec<&str>, LinuxSeccompAction, Option<u32>)>,
    ) -> LinuxSeccomp {
        let syscalls = rules
            .into_iter()
            .map(|(names, action, errno)| {
                let mut b = LinuxSyscallBuilder::default()
                    .names(names.into_iter().map(String::from).collect::<Vec<_>>())
                    .action(action);
                if let Some(e) = errno {
                    b = b.errno_ret(e);
                }
                b.build().unwrap()
            })
            .collect::<Vec<_>>();
        LinuxSeccompBuilder::default()
            .default_action(default)
            .syscalls(syscalls)
            .build()
            .unwrap()
    }

    #[test]
    fn denylist_profile_compiles_to_one_filter() {
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![(
                vec!["mkdir", "mkdirat"],
                LinuxSeccompAction::ScmpActErrno,
                None,
            )],
        );
        let filters = compile(&p).unwrap();
        assert_eq!(filters.len(), 1);
        assert!(!filters[0].program.is_empty());
    }

    #[test]
    fn allowlist_with_errno_rule_compiles_to_two_filters() {
        let p = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![
                (
                    vec!["read", "write", "exit_group"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                ),
                (vec!["clone3"], LinuxSeccompAction::ScmpActErrno, Some(38)),
            ],
        );
        assert_eq!(compile(&p).unwrap().len(), 2);
    }

    #[test]
    fn unknown_syscall_names_are_skipped() {
        let p = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![(
                vec!["read", "no_such_syscall_xyz"],
                LinuxSeccompAction::ScmpActAllow,
                None,
            )],
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn notify_is_refused_with_a_clear_error() {
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![(vec!["mkdir"], LinuxSeccompAction::ScmpActNotify, None)],
        );
        let err = compile(&p).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
