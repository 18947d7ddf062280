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
//! Syscall names unknown on this architecture are skipped, as libseccomp does.
//!
//! A profile lists the architectures (ABIs) it is for: containerd's default one lists
//! x86_64, x86 and x32 on amd64, and runc, through libseccomp, filters each with its own
//! syscall numbers, so a static i386 program calling `int 0x80` runs under it. trenv does
//! the same: the stack above is built per ABI (the native one, and every other one listed
//! that this kernel runs and trenv has numbers for, from build.rs), each filter letting
//! other ABIs' calls through, and a gate filter kills the calls of any ABI not filtered,
//! as libseccomp's "bad architecture" action does. x86_64 and x32 share one audit
//! architecture and are told apart by the syscall number's `__X32_SYSCALL_BIT`.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
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
    abi: Abi,
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
    // A 32-bit ABI's arguments are 32 bits wide: compare the low halves only (as
    // libseccomp does), unless a constant needs more, which then compares as the
    // zero-extended value it can only be.
    let fits = |v: u64| u32::try_from(v).is_ok();
    let len = if abi.is_32_bit() && fits(value) && fits(arg.value()) {
        SeccompCmpArgLen::Dword
    } else {
        SeccompCmpArgLen::Qword
    };
    SeccompCondition::new(index, len, op, value).map_err(|e| SeccompError::BadCondition {
        syscall: name.to_string(),
        reason: e.to_string(),
    })
}

/// A syscall ABI of this host's kernel that a profile's `architectures` can name. Each has
/// its own syscall numbers, so each gets filters of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Abi {
    X86_64,
    /// i386 (`int 0x80`, `sysenter`) on an x86_64 kernel.
    X86,
    /// x32: the x86_64 audit architecture, numbers with `__X32_SYSCALL_BIT` set.
    X32,
    Aarch64,
}

/// `AUDIT_ARCH_*` of include/uapi/linux/audit.h: what `seccomp_data.arch` holds.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

impl Abi {
    fn native() -> Result<Abi, SeccompError> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Abi::X86_64),
            "aarch64" => Ok(Abi::Aarch64),
            other => Err(SeccompError::Arch(other)),
        }
    }

    /// The ABI that an OCI architecture names, if this build can filter it on a kernel
    /// of the `native` ABI. Others (an ARM compat ABI on aarch64, whose numbers trenv has
    /// no table for, or ABIs of other machines) get no filter: the gate kills their calls.
    fn of(arch: Arch, native: Abi) -> Option<Abi> {
        let abi = match arch {
            Arch::ScmpArchNative => native,
            Arch::ScmpArchX86_64 => Abi::X86_64,
            Arch::ScmpArchX86 => Abi::X86,
            Arch::ScmpArchX32 => Abi::X32,
            Arch::ScmpArchAarch64 => Abi::Aarch64,
            _ => return None,
        };
        let runs = match native {
            Abi::X86_64 => matches!(abi, Abi::X86_64 | Abi::X86 | Abi::X32),
            Abi::Aarch64 => abi == Abi::Aarch64,
            Abi::X86 | Abi::X32 => false,
        };
        runs.then_some(abi)
    }

    fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 | Abi::X32 => AUDIT_ARCH_X86_64,
            Abi::X86 => AUDIT_ARCH_I386,
            Abi::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    fn is_32_bit(self) -> bool {
        self == Abi::X86
    }
}

/// The ABIs to filter: the native one (always, as libseccomp does) and every other one the
/// profile lists that this kernel runs.
fn abis(profile: &LinuxSeccomp, native: Abi) -> Vec<Abi> {
    let mut abis = vec![native];
    for arch in profile.architectures().iter().flatten() {
        match Abi::of(*arch, native) {
            Some(abi) => abis.push(abi),
            None => log::debug!("seccomp: architecture {arch:?} is not filtered here"),
        }
    }
    abis.sort();
    abis.dedup();
    abis
}

// Classic BPF, as include/uapi/linux/filter.h and bpf_common.h define it.
/// BPF_LD | BPF_W | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JGE | BPF_K
const BPF_JMP_JGE_K: u16 = 0x35;
/// BPF_RET | BPF_K
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// How many instructions of seccompiler's program check the architecture (load it, compare,
/// kill); what follows loads the syscall number and needs nothing before it.
const SECCOMPILER_ARCH_CHECK: usize = 3;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The filter that kills the calls of every ABI the profile does not list (libseccomp's
/// "bad architecture" action, as runc installs it). The per-ABI filters let other ABIs'
/// calls through, so that each can be judged by its own.
fn gate(abis: &[Abi], flags: libc::c_ulong) -> Filter {
    let mut arches: Vec<u32> = abis.iter().map(|a| a.audit_arch()).collect();
    arches.dedup();
    let mut program = vec![insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH)];
    for arch in arches {
        program.push(insn(BPF_JMP_JEQ_K, 0, 1, arch));
        program.push(insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    }
    program.push(insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS));
    Filter { program, flags }
}

/// What precedes a filter's rules for `abi`: calls of any other ABI are allowed (judged by
/// that ABI's filters and the gate). x86_64 and x32 share an audit architecture and are
/// told apart by `__X32_SYSCALL_BIT`; an x32 call where the profile does not list x32 is
/// killed, as libseccomp does.
fn abi_prefix(abi: Abi, abis: &[Abi]) -> Vec<sock_filter> {
    let allow = insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW);
    let mut p = vec![
        insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        insn(BPF_JMP_JEQ_K, 1, 0, abi.audit_arch()),
        allow.clone(),
    ];
    match abi {
        Abi::X86_64 => {
            let x32 = if abis.contains(&Abi::X32) {
                libc::SECCOMP_RET_ALLOW
            } else {
                libc::SECCOMP_RET_KILL_PROCESS
            };
            p.push(insn(BPF_LD_W_ABS, 0, 0, DATA_NR));
            p.push(insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT));
            p.push(insn(BPF_RET_K, 0, 0, x32));
        }
        Abi::X32 => {
            p.push(insn(BPF_LD_W_ABS, 0, 0, DATA_NR));
            p.push(insn(BPF_JMP_JGE_K, 1, 0, X32_SYSCALL_BIT));
            p.push(allow);
        }
        Abi::X86 | Abi::Aarch64 => {}
    }
    p
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

/// What [`build`] needs besides the rules.
struct Target<'a> {
    abi: Abi,
    abis: &'a [Abi],
    flags: libc::c_ulong,
}

fn build(
    map: BTreeMap<i64, Option<Vec<SeccompRule>>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    target: &Target,
) -> Result<Filter, SeccompError> {
    let rules = map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    // seccompiler knows only 64-bit architectures: its program is built for any of them
    // and its architecture check replaced by this ABI's (the rest of the program only
    // jumps forward, within itself).
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let compiled: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    let check = compiled.get(..SECCOMPILER_ARCH_CHECK);
    if check.is_none_or(|c| c[0].k != DATA_ARCH || c[1].k != AUDIT_ARCH_X86_64) {
        return Err(SeccompError::Compile(
            "seccompiler's program does not start with its architecture check".into(),
        ));
    }
    let mut program = abi_prefix(target.abi, target.abis);
    program.extend_from_slice(&compiled[SECCOMPILER_ARCH_CHECK..]);
    if program.len() > BPF_MAXINSNS {
        return Err(SeccompError::Compile(format!(
            "the filter for {:?} has {} instructions, more than the kernel's {BPF_MAXINSNS}",
            target.abi,
            program.len()
        )));
    }
    Ok(Filter {
        program,
        flags: target.flags,
    })
}

/// `BPF_MAXINSNS`: the longest program the kernel loads.
const BPF_MAXINSNS: usize = 4096;

/// Compiles an OCI seccomp profile into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Filter>, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError::Listener);
    }
    let abis = abis(profile, Abi::native()?);
    let flags = flags(profile);
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut filters = vec![gate(&abis, flags)];
    for &abi in &abis {
        let target = Target {
            abi,
            abis: &abis,
            flags,
        };
        filters.extend(compile_abi(profile, &default, &target)?);
    }
    Ok(filters)
}

/// The filters of one ABI (see the module's documentation).
fn compile_abi(
    profile: &LinuxSeccomp,
    default: &SeccompAction,
    target: &Target,
) -> Result<Vec<Filter>, SeccompError> {
    let abi = target.abi;
    let mut base: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    let mut groups: Groups = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == *default {
            continue;
        }
        for name in rule.names() {
            let Some(nr) = table::lookup(abi, name) else {
                log::debug!("seccomp: syscall {name} unknown in ABI {abi:?}, skipped");
                continue;
            };
            let conds = rule
                .args()
                .iter()
                .flatten()
                .map(|a| condition(name, a, abi))
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
    if *default != SeccompAction::Allow {
        filters.push(build(base, default.clone(), SeccompAction::Allow, target)?);
    }
    for (act, map) in groups {
        filters.push(build(map, SeccompAction::Allow, act, target)?);
    }
    Ok(filters)
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
    fn a_deny_list_profile_compiles_to_the_gate_and_one_filter() {
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![(
                vec!["mkdir", "mkdirat"],
                LinuxSeccompAction::ScmpActErrno,
                None,
            )],
        );
        let filters = compile(&p).unwrap();
        // The gate, then the errno rule's filter.
        assert_eq!(filters.len(), 2);
        assert!(!filters[1].program.is_empty());
    }

    #[test]
    fn an_allow_list_with_an_errno_rule_compiles_to_the_gate_and_two_filters() {
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
        assert_eq!(compile(&p).unwrap().len(), 3);
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
        assert_eq!(compile(&p).unwrap().len(), 2);
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

    /// Runs `filters` as the kernel does for one call and answers the action it takes: the
    /// most restrictive result (lowest as a signed action) of all of them.
    fn judge(filters: &[Filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        filters
            .iter()
            .map(|f| run_bpf(&f.program, &data))
            .min_by_key(|r| (r & libc::SECCOMP_RET_ACTION_FULL) as i32)
            .expect("at least one filter")
    }

    /// A classic-BPF interpreter for the instructions seccompiler and this module emit.
    fn run_bpf(program: &[sock_filter], data: &[u8; 64]) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &program[pc];
            pc += 1;
            match i.code {
                0x20 => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                0x54 => acc &= i.k,         // ALU AND K
                0x05 => pc += i.k as usize, // JA
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => acc == i.k,
                        0x25 => acc > i.k,
                        0x35 => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("instruction {other:#x} not interpreted"),
            }
        }
    }

    /// The shape of containerd's default profile: errno by default, an allow list (with
    /// an argument rule, as for personality), clone3 answered ENOSYS.
    #[cfg(target_arch = "x86_64")]
    fn containerd_like(architectures: &[&str]) -> LinuxSeccomp {
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": architectures,
            "syscalls": [
                { "names": ["getpid", "exit", "exit_group", "write"], "action": "SCMP_ACT_ALLOW" },
                { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
                  "args": [{ "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
                { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            ],
        }))
        .unwrap()
    }

    #[cfg(target_arch = "x86_64")]
    const ALL_X86: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

    #[cfg(target_arch = "x86_64")]
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | 1;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_listed_x86_abi_is_filtered_with_its_own_numbers() {
        let filters = compile(&containerd_like(ALL_X86)).unwrap();
        let allow = libc::SECCOMP_RET_ALLOW;
        let x32 = |nr: u32| X32_SYSCALL_BIT + nr;
        // getpid: 39 on x86_64, 20 on i386, 39 | x32 bit.
        assert_eq!(judge(&filters, AUDIT_ARCH_X86_64, 39, [0; 6]), allow);
        assert_eq!(judge(&filters, AUDIT_ARCH_I386, 20, [0; 6]), allow);
        assert_eq!(judge(&filters, AUDIT_ARCH_X86_64, x32(39), [0; 6]), allow);
        // Not allowed: mkdir (83 on x86_64, 39 on i386: i386's 39 must not pass as getpid).
        assert_eq!(judge(&filters, AUDIT_ARCH_X86_64, 83, [0; 6]), EPERM);
        assert_eq!(judge(&filters, AUDIT_ARCH_I386, 39, [0; 6]), EPERM);
        assert_eq!(judge(&filters, AUDIT_ARCH_X86_64, x32(83), [0; 6]), EPERM);
        // clone3 (435 on every ABI) gets its own errno.
        let enosys = libc::SECCOMP_RET_ERRNO | 38;
        assert_eq!(judge(&filters, AUDIT_ARCH_X86_64, 435, [0; 6]), enosys);
        assert_eq!(judge(&filters, AUDIT_ARCH_I386, 435, [0; 6]), enosys);
        // Argument rules hold on i386 too (personality is 136 there, 135 on x86_64).
        assert_eq!(
            judge(&filters, AUDIT_ARCH_I386, 136, [8, 0, 0, 0, 0, 0]),
            allow
        );
        assert_eq!(judge(&filters, AUDIT_ARCH_I386, 136, [0; 6]), EPERM);
        assert_eq!(
            judge(&filters, AUDIT_ARCH_X86_64, 135, [8, 0, 0, 0, 0, 0]),
            allow
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn abis_the_profile_does_not_list_are_killed() {
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        let filters = compile(&containerd_like(&[])).unwrap();
        assert_eq!(
            judge(&filters, AUDIT_ARCH_X86_64, 39, [0; 6]),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(judge(&filters, AUDIT_ARCH_I386, 20, [0; 6]), kill);
        assert_eq!(
            judge(&filters, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT + 39, [0; 6]),
            kill
        );
        assert_eq!(judge(&filters, AUDIT_ARCH_AARCH64, 172, [0; 6]), kill);
        let filters = compile(&containerd_like(ALL_X86)).unwrap();
        assert_eq!(judge(&filters, AUDIT_ARCH_AARCH64, 172, [0; 6]), kill);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_deny_list_holds_on_the_i386_abi() {
        let p: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{ "names": ["mkdir"], "action": "SCMP_ACT_ERRNO" }],
        }))
        .unwrap();
        let filters = compile(&p).unwrap();
        assert_eq!(judge(&filters, AUDIT_ARCH_I386, 39, [0; 6]), EPERM);
        assert_eq!(
            judge(&filters, AUDIT_ARCH_I386, 20, [0; 6]),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(judge(&filters, AUDIT_ARCH_X86_64, 83, [0; 6]), EPERM);
    }
}
