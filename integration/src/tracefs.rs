//! The kernel's own view of when a process exec'ed its program and exited: the entry of
//! its `execve` system call (`syscalls:sys_enter_execve`) and the end of its exit — the
//! `SIGCHLD` it sends its parent from `exit_notify` (`signal:signal_generate`, sent by the
//! exiting task), when it has become a zombie and a waiter can learn of it — recorded in a
//! private tracefs instance. The truth that metering durations are checked against.
//!
//! Not the scheduler's `sched_process_exit`: in recent kernels (6.18 here) it fires early in
//! `do_exit`, before the process's memory is torn down (`exit_mm`), which runs in the
//! exiting task (its CPU time) and takes milliseconds for hundreds of MB; a metered end, which
//! the shim takes when the kernel reports the exit, is later than it by that teardown (up
//! to 3 ms seen on a loaded machine for a 200 MB program). Its time is kept as
//! `exit_begin_us`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TRACEFS: &str = "/sys/kernel/tracing";

/// A tracefs instance recording every `execve` and the exits of processes named `comm`;
/// removed on drop.
pub struct ExecExitTrace {
    dir: PathBuf,
}

/// When a process called `execve` (the last time) and exited, in µs on CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime {
    pub exec_us: Option<u64>,
    /// The end of its exit (the SIGCHLD to its parent).
    pub exit_us: Option<u64>,
    /// The start of its exit (`sched_process_exit`; before its memory is torn down).
    pub exit_begin_us: Option<u64>,
}

impl ExecExitTrace {
    /// Starts recording (mounts tracefs if nothing has yet).
    pub fn start(name: &str, comm: &str) -> ExecExitTrace {
        let root = Path::new(TRACEFS);
        if !root.join("instances").exists() {
            let st = std::process::Command::new("mount")
                .args(["-t", "tracefs", "tracefs", TRACEFS])
                .status()
                .expect("running mount");
            assert!(st.success(), "cannot mount tracefs on {TRACEFS}");
        }
        let dir = root.join("instances").join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating tracefs instance {}: {e}", dir.display()));
        let trace = ExecExitTrace { dir };
        trace.write("trace_clock", "mono");
        // Before the exec the process still has its old name: execve is not filtered.
        trace.write("events/syscalls/sys_enter_execve/enable", "1");
        trace.write(
            "events/sched/sched_process_exit/filter",
            &format!("comm == \"{comm}\""),
        );
        trace.write("events/sched/sched_process_exit/enable", "1");
        trace.write("events/signal/signal_generate/filter", "sig == 17");
        trace.write("events/signal/signal_generate/enable", "1");
        trace.write("tracing_on", "1");
        trace
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", path.display()));
    }

    /// Exec and exit times of every traced process, by (host) pid.
    pub fn lifetimes(&self) -> HashMap<i32, Lifetime> {
        let path = self.dir.join("trace");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        parse(&text)
    }
}

impl Drop for ExecExitTrace {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        for event in [
            "syscalls/sys_enter_execve",
            "sched/sched_process_exit",
            "signal/signal_generate",
        ] {
            let _ = std::fs::write(self.dir.join(format!("events/{event}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The wall clock minus CLOCK_MONOTONIC, in µs: turns a trace's times into wall-clock times.
pub fn wall_minus_monotonic_us() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    wall - mono
}

/// Parses trace lines such as
/// `youki:[2:INIT]-9060 [000] ..... 11316.542074: sys_execve(filename: 0x55de…, argv: …)`
/// , `memphase-9060 [000] ..... 11317.136204: sched_process_exit: comm=memphase pid=9060 …`
/// and `memphase-9060 [000] d..2. 11317.139000: signal_generate: sig=17 errno=0 code=1
/// comm=containerd-shim pid=9000 grp=1 res=0` (sent by the exiting task: the header's PID)
/// (the task's name, which may hold spaces, then `-PID`, then the CPU in brackets).
fn parse(text: &str) -> HashMap<i32, Lifetime> {
    let mut out: HashMap<i32, Lifetime> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((task, rest)) = line.split_once(" [") else {
            continue;
        };
        let Some(pid) = task
            .trim()
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((head, event)) = rest.split_once(": ") else {
            continue;
        };
        let Some(us) = head.split_whitespace().last().and_then(seconds_to_us) else {
            continue;
        };
        let life = out.entry(pid).or_default();
        if event.starts_with("sys_execve(") {
            life.exec_us = Some(us);
        } else if event.starts_with("sched_process_exit:") {
            life.exit_begin_us = Some(us);
        } else if event.starts_with("signal_generate: sig=17 ") && life.exit_begin_us.is_some() {
            // A process's SIGCHLD after its exit began: its parent told of its end (not a
            // SIGCHLD it sent earlier, e.g. by `kill`).
            life.exit_us = Some(us);
        }
    }
    out
}

/// `11316.542279` (seconds, µs decimals) → µs.
fn seconds_to_us(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.')?;
    let frac = format!("{frac:0<6}");
    Some(secs.parse::<u64>().ok()? * 1_000_000 + frac.get(..6)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_give_exec_and_exit_per_pid() {
        let text = "# tracer: nop\n\
            #\n\
            \x20 youki:[2:INIT]-9060    [000] ..... 11316.542074: sys_execve(filename: 0x55dec21dcf30, argv: 0x55dec21e3ae0, envp: 0x55dec21d8ca0)\n\
            \x20   a name-with -9061    [001] ..... 11316.600000: sys_execve(filename: 0x1, argv: 0x2, envp: 0x3)\n\
            \x20       memphase-9061    [001] d..2. 11317.000000: signal_generate: sig=17 errno=0 code=0 comm=sh pid=1 grp=1 res=0\n\
            \x20       memphase-9060    [000] ..... 11317.136204: sched_process_exit: comm=memphase pid=9060 prio=120 group_dead=true\n\
            \x20       memphase-9060    [000] d..2. 11317.139300: signal_generate: sig=17 errno=0 code=1 comm=containerd-shim pid=9000 grp=1 res=0\n";
        let l = parse(text);
        assert_eq!(l[&9060].exec_us, Some(11_316_542_074));
        assert_eq!(l[&9061].exec_us, Some(11_316_600_000));
        assert_eq!(l[&9060].exit_begin_us, Some(11_317_136_204));
        assert_eq!(l[&9060].exit_us, Some(11_317_139_300));
        // A SIGCHLD before any exit of the sender is not its end.
        assert_eq!(l[&9061].exit_us, None);
        assert_eq!(seconds_to_us("1.5"), Some(1_500_000));
    }
}
