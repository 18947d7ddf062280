//! The container lifecycle through a real containerd with `ctr`, on trenv.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::Duration;

use trenv_integration::api::{Containerd, TaskIo};
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, pids_matching, unique_id};

fn ctr() -> Ctr {
    let c = Ctr::from_env();
    c.ensure_images();
    c
}

/// `ctr run --rm` on trenv with extra flags before the image.
fn run_rm(c: &Ctr, flags: &[&str], id: &str, args: &[&str]) -> trenv_integration::Run {
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.push(BUSYBOX);
    a.push(id);
    a.extend_from_slice(args);
    c.run(&a)
}

/// Starts a detached container running `args`; removed when the guard drops.
struct Detached<'a> {
    ctr: &'a Ctr,
    id: String,
}

impl<'a> Detached<'a> {
    fn start(ctr: &'a Ctr, prefix: &str, flags: &[&str], args: &[&str]) -> Detached<'a> {
        let id = unique_id(prefix);
        let mut a = vec!["run", "-d", "--runtime", RUNTIME];
        a.extend_from_slice(flags);
        a.push(BUSYBOX);
        a.push(&id);
        a.extend_from_slice(args);
        ctr.run(&a).ok();
        assert!(
            ctr.wait_status(&id, "RUNNING", Duration::from_secs(10)),
            "container {id} did not reach RUNNING"
        );
        Detached { ctr, id }
    }

    fn init_pid(&self) -> i32 {
        let out = self.ctr.run(&["task", "ls"]).stdout;
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(self.id.as_str())).then(|| f.next()?.parse().ok())?
            })
            .expect("task listed with a pid")
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        self.ctr.remove(&self.id);
    }
}

#[test]
fn echo_prints_hi() {
    let c = ctr();
    let r = run_rm(&c, &[], &unique_id("echo"), &["echo", "hi"]).ok();
    assert_eq!(r.stdout.trim(), "hi");
}

#[test]
fn exit_codes_propagate() {
    let c = ctr();
    let r = run_rm(&c, &[], &unique_id("exit"), &["sh", "-c", "exit 3"]);
    assert_eq!(r.code, 3, "{r:#?}");
}

#[test]
fn stdin_reaches_the_process() {
    let c = ctr();
    let id = unique_id("stdin");
    let out = c
        .cmd(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            BUSYBOX,
            &id,
            "sh",
            "-c",
            "read l; echo got:$l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"ping\n")?;
            child.wait_with_output()
        })
        .expect("ctr run with stdin");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "got:ping",
        "{out:?}"
    );
}

#[test]
fn stdout_and_stderr_are_separate() {
    let c = ctr();
    let r = run_rm(
        &c,
        &[],
        &unique_id("streams"),
        &["sh", "-c", "echo out; echo err >&2"],
    )
    .ok();
    assert_eq!(r.stdout.trim(), "out");
    assert!(r.stderr.contains("err"), "{r:#?}");
}

#[test]
fn kill_with_sigterm_and_sigkill() {
    let c = ctr();
    let term = Detached::start(
        &c,
        "term",
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do sleep 0.1; done",
        ],
    );
    c.run(&["task", "kill", "-s", "SIGTERM", &term.id]).ok();
    assert!(c.wait_status(&term.id, "STOPPED", Duration::from_secs(10)));
    let del = c.run(&["task", "delete", &term.id]);
    assert!(
        del.stderr.contains("143"),
        "exit status 143 expected: {del:#?}"
    );

    let kill = Detached::start(&c, "kill", &[], &["sleep", "300"]);
    c.run(&["task", "kill", "-s", "SIGKILL", &kill.id]).ok();
    assert!(c.wait_status(&kill.id, "STOPPED", Duration::from_secs(10)));
    let del = c.run(&["task", "delete", &kill.id]);
    assert!(
        del.stderr.contains("137"),
        "exit status 137 expected: {del:#?}"
    );
}

#[test]
fn kill_all_reaches_every_process() {
    let c = ctr();
    let d = Detached::start(
        &c,
        "killall",
        &[],
        &["sh", "-c", "sleep 300 & sleep 301 & wait"],
    );
    let pids = task_pids(&c, &d.id, 3);
    assert!(pids.len() >= 3, "init and two sleeps expected: {pids:?}");
    c.run(&["task", "kill", "--all", "-s", "SIGKILL", &d.id])
        .ok();
    assert!(c.wait_status(&d.id, "STOPPED", Duration::from_secs(10)));
}

#[test]
fn exec_without_tty() {
    let c = ctr();
    let d = Detached::start(&c, "exec", &[], &["sleep", "300"]);
    let r = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &d.id,
        "sh",
        "-c",
        "echo exec-out; exit 5",
    ]);
    assert_eq!(r.code, 5, "{r:#?}");
    assert_eq!(r.stdout.trim(), "exec-out");
    // The same exec id can be used again once the first one is gone.
    let r = c.run(&["task", "exec", "--exec-id", "e1", &d.id, "true"]);
    assert_eq!(r.code, 0, "{r:#?}");
}

/// `ctr container create` of busybox's `sleep 300` on trenv as `id` (no task yet).
fn create_sleeper(c: &Ctr, id: &str) {
    c.run(&[
        "container",
        "create",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        id,
        "sleep",
        "300",
    ])
    .ok();
}

#[test]
fn create_then_start_then_force_delete() {
    let c = ctr();
    let id = unique_id("create");
    create_sleeper(&c, &id);
    c.run(&["task", "start", "-d", &id]).ok();
    assert!(c.wait_status(&id, "RUNNING", Duration::from_secs(10)));
    let del = c.run(&["task", "delete", "--force", &id]);
    assert_eq!(del.code, 0, "{del:#?}");
    assert_eq!(c.task_status(&id), None);
    c.run(&["container", "delete", &id]).ok();
    assert_nothing_left(&c, &id);
}

#[test]
fn exec_with_stdin_and_exec_kill() {
    let c = ctr();
    let d = Detached::start(&c, "execio", &[], &["sleep", "300"]);
    let out = c
        .cmd(&["task", "exec", "--exec-id", "cat", &d.id, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"to-exec\n")?;
            child.wait_with_output()
        })
        .expect("ctr task exec with stdin");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "to-exec",
        "{out:?}"
    );

    let mut sleeper = c
        .cmd(&[
            "task",
            "exec",
            "--exec-id",
            "sleeper",
            &d.id,
            "sleep",
            "100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr task exec sleep");
    let mut killed = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if c.run(&[
            "task",
            "kill",
            "--exec-id",
            "sleeper",
            "-s",
            "SIGKILL",
            &d.id,
        ])
        .code
            == 0
        {
            killed = true;
            break;
        }
    }
    assert!(killed, "could not signal the exec process");
    let st = sleeper.wait().expect("waiting for ctr task exec");
    assert_eq!(st.code(), Some(137));
    // The container itself is untouched.
    assert_eq!(c.task_status(&d.id).as_deref(), Some("RUNNING"));
}

#[test]
fn run_with_tty() {
    let c = ctr();
    let id = unique_id("tty");
    let r = c.run_in_terminal(&format!(
        "run --rm -t --runtime {RUNTIME} {BUSYBOX} {id} sh -c 'tty; echo tty-ok; exit 4'"
    ));
    assert_eq!(r.code, 4, "{r:#?}");
    assert!(r.stdout.contains("/dev/pts/"), "{r:#?}");
    assert!(r.stdout.contains("tty-ok"), "{r:#?}");
}

#[test]
fn exec_with_tty() {
    let c = ctr();
    let d = Detached::start(&c, "exectty", &[], &["sleep", "300"]);
    let r = c.run_in_terminal(&format!(
        "task exec -t --exec-id t1 {} sh -c 'tty; echo exectty-ok'",
        d.id
    ));
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("/dev/pts/"), "{r:#?}");
    assert!(r.stdout.contains("exectty-ok"), "{r:#?}");
}

#[test]
fn pause_and_resume() {
    let c = ctr();
    let d = Detached::start(&c, "pause", &[], &["sleep", "300"]);
    c.run(&["task", "pause", &d.id]).ok();
    assert_eq!(c.task_status(&d.id).as_deref(), Some("PAUSED"));
    let state = fs::read_to_string(format!("/proc/{}/status", d.init_pid())).expect("proc status");
    assert!(
        state.contains("State:\tS") || state.contains("State:\tD"),
        "{state}"
    );
    c.run(&["task", "resume", &d.id]).ok();
    assert_eq!(c.task_status(&d.id).as_deref(), Some("RUNNING"));
}

#[test]
fn stats_report_memory_and_cpu() {
    let c = ctr();
    let d = Detached::start(
        &c,
        "stats",
        &["--memory-limit", "67108864"],
        &[
            "sh",
            "-c",
            "x=$(head -c 8000000 /dev/zero | tr '\\0' a); sleep 300",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    // The Metrics type follows the host: v1 files on v1 hosts, v2's on v2 hosts.
    let (usage, limit) = if trenv_integration::cgroup_v2_host() {
        ("memory.usage", "memory.usage_limit")
    } else {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    };
    let r = c.run(&["task", "metrics", &d.id]).ok();
    let value = |name: &str| -> Option<u64> {
        r.stdout.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
    };
    assert!(
        value(usage).is_some_and(|u| u > 0),
        "{usage} expected: {r:#?}"
    );
    assert_eq!(
        value(limit),
        Some(67108864),
        "limit from the spec expected: {r:#?}"
    );
    let r = c.run(&["task", "metrics", "--format", "json", &d.id]).ok();
    let m: serde_json::Value = serde_json::from_str(&r.stdout).expect("metrics JSON");
    assert!(m.get("cpu").is_some(), "{m:#}");
    // The peak: v2 Metrics carry memory.peak as max_usage, v1 max_usage_in_bytes.
    let peak = if trenv_integration::cgroup_v2_host() {
        m["memory"]["max_usage"].as_u64()
    } else {
        m["memory"]["usage"]["max"].as_u64()
    };
    assert!(
        peak.is_some_and(|p| (8_000_000..=67108864).contains(&p)),
        "a peak of at least the 8 MB the shell built expected: {m:#}"
    );
}

/// The pids `ctr task ps` lists, once there are `want` of them (the container's shell may
/// not have forked its children yet when the task is first RUNNING).
fn task_pids(c: &Ctr, id: &str, want: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    for _ in 0..100 {
        let r = c.run(&["task", "ps", id]).ok();
        pids = r
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        if pids.len() >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    pids
}

/// The program a process runs now (its `/proc/PID/exe`).
fn exe_of(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// When Start (of an init, of an exec) returns, the process runs its program: not the
/// shim's fork of itself on its way to the exec, which a checkpoint right after Start
/// caught (CRIU found the shim's binary mapped in the container). Through containerd's
/// API, to look at the process as soon as Start answers.
#[test]
fn a_started_task_or_exec_already_runs_its_program() {
    let c = ctr();
    let api = Containerd::from_env(&c.namespace).unwrap_or_else(|e| panic!("{e}"));
    // The window between Start's answer and the exec is a few milliseconds: without the
    // wait, CI's parallel load (and busy CPUs by hand) caught the init as the shim; an
    // idle machine rarely does.
    for round in 0..30 {
        let id = unique_id("execd");
        create_sleeper(&c, &id);
        let pid = api
            .create_task(&id)
            .and_then(|_| api.start(&id, ""))
            .unwrap_or_else(|e| panic!("{e}"));
        let exe = exe_of(pid as i32);
        let exec_id = format!("e{round}");
        let exec = api
            .exec_args(&id, &exec_id, &["sleep", "301"], &TaskIo::default())
            .and_then(|()| api.start(&id, &exec_id))
            .map(|pid| exe_of(pid as i32));
        c.remove(&id);
        assert!(
            !exe.contains("containerd-shim-trenv"),
            "round {round}: the init right after Start is {exe}"
        );
        let exec = exec.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !exec.contains("containerd-shim-trenv"),
            "round {round}: the exec right after Start is {exec}"
        );
    }
}

#[test]
fn pids_lists_the_container_processes() {
    let c = ctr();
    let d = Detached::start(&c, "pids", &[], &["sh", "-c", "sleep 300 & wait"]);
    let pids = task_pids(&c, &d.id, 2);
    assert!(pids.contains(&d.init_pid()), "{pids:?}");
    assert_eq!(pids.len(), 2, "{pids:?}");
}

#[test]
fn seccomp_profile_denies_mkdir() {
    let c = ctr();
    let dir = tempfile_dir();
    let profile = format!("{dir}/nomkdir.json");
    fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let r = run_rm(
        &c,
        &["--seccomp", "--seccomp-profile", &profile],
        &unique_id("seccomp"),
        &["sh", "-c", "mkdir /tmp/x"],
    );
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stderr.contains("Operation not permitted"), "{r:#?}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn default_seccomp_profile_loads_and_is_enforced() {
    let c = ctr();
    let r = run_rm(
        &c,
        &["--seccomp"],
        &unique_id("defseccomp"),
        &["sh", "-c", "grep Seccomp: /proc/self/status; mkdir /tmp/ok && echo mkdir-ok; unshare -U true; echo unshare=$?"],
    )
    .ok();
    assert!(
        r.stdout.contains("Seccomp:\t2"),
        "filter mode expected: {r:#?}"
    );
    assert!(r.stdout.contains("mkdir-ok"), "{r:#?}");
    // The default profile forbids unshare without CAP_SYS_ADMIN.
    assert!(r.stdout.contains("unshare=1"), "{r:#?}");
}

/// A static i386 program, hand-assembled (no 32-bit toolchain needed): getpid through
/// `int 0x80`, the answer's last digit and a newline written to stdout (`write`, also
/// `int 0x80`), then `exit(0)`. In a pid namespace of its own it prints "1".
fn getpid32_elf() -> Vec<u8> {
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xB8, 20, 0, 0, 0,          // mov eax, 20 (getpid)
        0xCD, 0x80,                 // int 0x80
        0x83, 0xC0, 0x30,           // add eax, '0'
        0x0D, 0x00, 0x0A, 0, 0,     // or eax, '\n' << 8
        0x50,                       // push eax: the digit and newline on the stack
        0xB8, 4, 0, 0, 0,           // mov eax, 4 (write)
        0xBB, 1, 0, 0, 0,           // mov ebx, 1 (stdout)
        0x89, 0xE1,                 // mov ecx, esp
        0xBA, 2, 0, 0, 0,           // mov edx, 2
        0xCD, 0x80,                 // int 0x80
        0xB8, 1, 0, 0, 0,           // mov eax, 1 (exit)
        0x31, 0xDB,                 // xor ebx, ebx
        0xCD, 0x80,                 // int 0x80
    ];
    const BASE: u32 = 0x0804_8000;
    const HEADERS: u32 = 52 + 32;
    let size = HEADERS + code.len() as u32;
    let mut elf = Vec::new();
    // ELF header: 32-bit, little-endian, version 1, an executable for EM_386.
    elf.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    for half in [2u16, 3] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // e_version, e_entry, e_phoff, e_shoff, e_flags
    for word in [1u32, BASE + HEADERS, 52, 0, 0] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    for half in [52u16, 32, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // One PT_LOAD of the whole file, readable and executable.
    for word in [1u32, 0, BASE, BASE, size, size, 5, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

#[test]
fn a_32_bit_program_gets_its_pid_under_the_default_seccomp_profile_as_under_runc() {
    let c = ctr();
    let dir = tempfile_dir();
    let prog = format!("{dir}/getpid32");
    fs::write(&prog, getpid32_elf()).unwrap();
    fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mount = format!("type=bind,src={prog},dst=/getpid32,options=rbind:ro");
    let run = |runtime: &str| {
        let id = unique_id("getpid32");
        let r = c.run(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--seccomp",
            "--mount",
            &mount,
            BUSYBOX,
            &id,
            "/getpid32",
        ]);
        c.remove(&id);
        r
    };
    // containerd's default profile lists SCMP_ARCH_X86 (and X32) beside X86_64.
    let runc = run("io.containerd.runc.v2");
    assert_eq!(
        (runc.code, runc.stdout.as_str()),
        (0, "1\n"),
        "runc: {runc:#?}"
    );
    let trenv = run(RUNTIME);
    assert_eq!(
        (trenv.code, trenv.stdout.as_str()),
        (0, "1\n"),
        "trenv (a SIGSYS kill exits 159): {trenv:#?}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn read_only_rootfs_denies_writes() {
    let c = ctr();
    let r = run_rm(
        &c,
        &["--read-only"],
        &unique_id("ro"),
        &["sh", "-c", "touch /x"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Read-only file system"), "{r:#?}");
}

#[test]
fn masked_and_read_only_paths() {
    let c = ctr();
    let r = run_rm(
        &c,
        &[],
        &unique_id("masked"),
        &[
            "sh",
            "-c",
            "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/domainname; echo sys=$?; ls /dev",
        ],
    );
    let mut lines = r.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("0"),
        "/proc/kcore must be masked: {r:#?}"
    );
    assert!(
        r.stdout.contains("sys=1"),
        "/proc/sys must be read-only: {r:#?}"
    );
    // Only the spec's devices exist.
    assert!(
        r.stdout.contains("null") && !r.stdout.contains("sda") && !r.stdout.contains("vda"),
        "{r:#?}"
    );
}

/// The bounding capability set a container run with `flags` gets.
fn bounding_caps(c: &Ctr, flags: &[&str]) -> u64 {
    let r = run_rm(
        c,
        flags,
        &unique_id("caps"),
        &["grep", "CapBnd", "/proc/self/status"],
    )
    .ok();
    let hex = r.stdout.split_whitespace().nth(1).expect("CapBnd value");
    u64::from_str_radix(hex, 16).expect("hex capability set")
}

#[test]
fn capabilities_follow_the_spec() {
    let c = ctr();
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    // containerd's default set has no CAP_SYS_ADMIN; --privileged has all.
    let default = bounding_caps(&c, &[]);
    assert_ne!(default, 0);
    assert_eq!(default & CAP_SYS_ADMIN, 0, "{default:x}");
    let privileged = bounding_caps(&c, &["--privileged"]);
    assert_ne!(privileged & CAP_SYS_ADMIN, 0, "{privileged:x}");
}

#[test]
fn user_from_the_spec() {
    let c = ctr();
    let r = run_rm(
        &c,
        &["--user", "65534:65534"],
        &unique_id("user"),
        &["id", "-u"],
    )
    .ok();
    assert_eq!(r.stdout.trim(), "65534");
}

#[test]
fn pod_group_shares_one_shim() {
    let c = ctr();
    let pod = format!("io.kubernetes.cri.sandbox-id={}", unique_id("pod"));
    let a = Detached::start(&c, "poda", &["--annotation", &pod], &["sleep", "300"]);
    let b = Detached::start(&c, "podb", &["--annotation", &pod], &["sleep", "300"]);
    let ppid = |pid: i32| -> i32 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let (sa, sb) = (ppid(a.init_pid()), ppid(b.init_pid()));
    assert_eq!(sa, sb, "both containers must be children of one shim");
    let cmd = fs::read_to_string(format!("/proc/{sa}/cmdline")).unwrap();
    assert!(cmd.contains("containerd-shim-trenv-v1"), "{cmd}");
    // A container outside the pod gets its own shim.
    let other = Detached::start(&c, "nopod", &[], &["sleep", "300"]);
    assert_ne!(ppid(other.init_pid()), sa);
}

#[test]
fn missing_binary_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    let id = unique_id("nobin");
    let r = run_rm(&c, &[], &id, &["/no/such/binary"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("/no/such/binary") && r.stderr.contains("not found"),
        "{r:#?}"
    );
    assert_nothing_left(&c, &id);
}

#[test]
fn malformed_spec_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    let id = unique_id("badspec");
    let spec = c.run(&["oci", "spec"]).ok().stdout;
    let mut spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "bogus"}));
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{}/{id}", c.namespace));
    let dir = tempfile_dir();
    let path = format!("{dir}/config.json");
    fs::write(&path, spec.to_string()).unwrap();
    let r = c.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        "--config",
        &path,
        &id,
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("invalid OCI spec") && r.stderr.contains("bogus"),
        "{r:#?}"
    );
    assert_nothing_left(&c, &id);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn unreadable_runtime_config_is_a_clear_error() {
    let c = ctr();
    let id = unique_id("badopt");
    let r = run_rm(
        &c,
        &["--runtime-config-path", "/nonexistent/trenv.toml"],
        &id,
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("/nonexistent/trenv.toml"), "{r:#?}");
    assert_nothing_left(&c, &id);
}

#[test]
fn a_systemd_style_cgroups_path_without_systemd_cgroup_is_a_cgroupfs_path() {
    // Only SystemdCgroup asks for the systemd driver (as for runc); "slice:prefix:name"
    // alone names a cgroup like any other path (see conformance.rs for CRI).
    let c = ctr();
    let id = unique_id("sdcg");
    let r = run_rm(&c, &["--cgroup", "trenv.slice:trenv:test"], &id, &["true"]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_nothing_left(&c, &id);
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/pids/trenv.slice:trenv:test").exists()
            && !std::path::Path::new("/sys/fs/cgroup/trenv.slice:trenv:test").exists(),
        "its cgroup is left"
    );
}

#[test]
fn oom_kill_is_reported_before_exit() {
    let c = ctr();
    let id = unique_id("oom");
    let mut events = subscribe(&c);
    let r = run_rm(
        &c,
        &["--memory-limit", "33554432"],
        &id,
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    assert_eq!(r.code, 137, "OOM kill expected: {r:#?}");
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let out = events.wait_with_output().expect("events output");
    let text = String::from_utf8_lossy(&out.stdout);
    let mine: Vec<&str> = text.lines().filter(|l| l.contains(&id)).collect();
    let oom = mine.iter().position(|l| l.contains("/tasks/oom"));
    let exit = mine.iter().position(|l| l.contains("/tasks/exit"));
    assert!(
        oom.is_some() && exit.is_some(),
        "TaskOOM and TaskExit expected: {mine:#?}"
    );
    assert!(oom < exit, "TaskOOM must precede TaskExit: {mine:#?}");
}

#[test]
fn lifecycle_events_are_published() {
    let c = ctr();
    let mut events = subscribe(&c);
    {
        let d = Detached::start(&c, "ev", &[], &["sleep", "300"]);
        c.run(&["task", "pause", &d.id]).ok();
        c.run(&["task", "resume", &d.id]).ok();
        c.run(&["task", "exec", "--exec-id", "x1", &d.id, "true"])
            .ok();
        std::thread::sleep(Duration::from_millis(300));
        let _ = events.kill();
        let out = events.wait_with_output().expect("events output");
        let text = String::from_utf8_lossy(&out.stdout);
        for topic in [
            "/tasks/create",
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
        ] {
            assert!(
                text.lines().any(|l| l.contains(topic) && l.contains(&d.id)),
                "{topic} missing for {}:\n{text}",
                d.id
            );
        }
    }
}

/// An idle shim keeps no connection to containerd open that polls: the events thread
/// drops it a second after the last event (ttrpc's synchronous client waits in `poll(2)`
/// with a 10 ms timeout for as long as it is connected, 100 wake-ups a second), and an
/// event raised after that still arrives.
#[test]
fn an_idle_shim_does_not_poll_containerd_and_its_later_events_arrive() {
    let c = ctr();
    let mut events = subscribe(&c);
    let d = Detached::start(&c, "idle", &[], &["sleep", "300"]);
    let stat = fs::read_to_string(format!("/proc/{}/stat", d.init_pid())).unwrap();
    let shim: i32 = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("the init's parent");
    // Threads of the shim found in poll(2) (x86-64: 7) with a 10 ms timeout (its third
    // argument) — other threads of the shim may wake when other tests' ctr asks every
    // shim for its tasks, but none polls.
    let polling = || -> usize {
        fs::read_dir(format!("/proc/{shim}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("syscall")).ok())
            .filter(|s| {
                let f: Vec<&str> = s.split_whitespace().collect();
                f.first() == Some(&"7") && f.get(3) == Some(&"0xa")
            })
            .count()
    };
    std::thread::sleep(Duration::from_millis(1500));
    let mut seen = 0;
    for _ in 0..20 {
        seen += polling();
        std::thread::sleep(Duration::from_millis(50));
    }
    c.run(&["task", "kill", "-s", "KILL", &d.id]).ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let out = events.stdout.as_mut().unwrap();
    set_nonblocking(out.as_raw_fd());
    while std::time::Instant::now() < deadline
        && !text
            .lines()
            .any(|l| l.contains("/tasks/exit") && l.contains(&d.id))
    {
        match out.read(&mut buf) {
            Ok(n) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(
        seen, 0,
        "a thread of the idle shim was found polling with a 10 ms timeout (ttrpc's client)"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("/tasks/exit") && l.contains(&d.id)),
        "TaskExit of {} missing after the shim was idle:\n{text}",
        d.id
    );
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// `ctr events`, its output piped, once it had time to subscribe.
fn subscribe(c: &Ctr) -> std::process::Child {
    let events = c
        .cmd(&["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");
    std::thread::sleep(Duration::from_millis(300));
    events
}

/// Nothing of container `id` may remain: no container, no shim, no mount, no cgroup.
fn assert_nothing_left(c: &Ctr, id: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let list = c.run(&["container", "ls", "-q"]).stdout;
    assert!(!list.lines().any(|l| l == id), "container {id} left behind");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&format!("/{id}/")),
        "mount of {id} left behind"
    );
    for ctl in ["memory", "pids", "cpu"] {
        let p = format!("/sys/fs/cgroup/{ctl}/{}/{id}", c.namespace);
        assert!(!std::path::Path::new(&p).exists(), "cgroup {p} left behind");
    }
    assert!(
        pids_matching(&format!("-id {id} ")).is_empty(),
        "a shim for {id} is still running"
    );
}

fn tempfile_dir() -> String {
    let d = std::env::temp_dir().join(unique_id("trenv-test"));
    fs::create_dir_all(&d).unwrap();
    d.to_string_lossy().into_owned()
}

/// A process that never ran (here an exec refused because the task is paused; a failed
/// restore in tests/templates.rs) must not keep containerd's Wait calls, and so the shim,
/// alive.
#[test]
fn processes_that_never_ran_do_not_keep_the_shim_alive() {
    let c = ctr();
    {
        let d = Detached::start(&c, "neverran", &[], &["sleep", "1000"]);
        c.run(&["task", "pause", &d.id]).ok();
        let r = c.run(&["task", "exec", "--exec-id", "x1", &d.id, "true"]);
        assert_ne!(r.code, 0, "exec into a paused task: {r:#?}");
        c.run(&["task", "resume", &d.id]).ok();
        let shim = format!("-id {} ", d.id);
        // A zygote worker that has just answered (the Resume's) may still be exiting: it
        // carries the shim's command line too, under its own name.
        let long_lived: Vec<i32> = pids_matching(&shim)
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() != "trenv-worker")
            })
            .collect();
        assert_eq!(
            long_lived.len(),
            2,
            "shim server and zygote: {long_lived:?}"
        );
        drop(d);
        let start = std::time::Instant::now();
        while !pids_matching(&shim).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the shim outlived its container: {:?}",
                pids_matching(&shim)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `name=systemd` line of `/proc/PID/cgroup`-style text.
fn named_systemd_line(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p.to_string()))
}

/// On a cgroup v1 host a container's processes, its init and its execs, are also in the
/// `name=systemd` hierarchy at the container's cgroups path, where runc puts them; the
/// cgroup goes with the container. (A v2-only host has no such hierarchy.)
#[test]
fn processes_join_the_name_systemd_hierarchy_as_on_runc() {
    let mount = std::path::Path::new("/sys/fs/cgroup/systemd");
    if trenv_integration::cgroup_v2_host() {
        eprintln!("a cgroup v2 host has no name=systemd hierarchy: nothing to check");
        return;
    }
    assert!(
        mount.is_dir(),
        "this v1 host has no name=systemd hierarchy at {mount:?}"
    );
    let c = ctr();
    for runtime in ["io.containerd.runc.v2", RUNTIME] {
        let d = Detached {
            ctr: &c,
            id: unique_id("namedsd"),
        };
        c.run(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            BUSYBOX,
            &d.id,
            "sleep",
            "300",
        ])
        .ok();
        let want = format!("/{}/{}", c.namespace, d.id);
        let init = fs::read_to_string(format!("/proc/{}/cgroup", d.init_pid())).unwrap();
        assert_eq!(
            named_systemd_line(&init).as_deref(),
            Some(want.as_str()),
            "{runtime}: the init's cgroups: {init}"
        );
        let exec = trenv_integration::exec(&c, &d.id, &["cat", "/proc/self/cgroup"]);
        assert_eq!(
            named_systemd_line(&exec).as_deref(),
            Some(want.as_str()),
            "{runtime}: the exec's cgroups: {exec}"
        );
        let dir = mount.join(want.trim_start_matches('/'));
        assert!(dir.is_dir(), "{runtime}: {dir:?} missing");
        drop(d);
        assert!(!dir.exists(), "{runtime}: {dir:?} left behind");
    }
}
