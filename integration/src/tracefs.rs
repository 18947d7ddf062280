//! The kernel's own view of when a process exec'ed and exited, from the scheduler's
//! tracepoints (`sched_process_exec`, `sched_process_exit`) in a private tracefs instance:
//! the truth that metering durations are checked against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TRACEFS: &str = "/sys/kernel/tracing";

/// A tracefs instance recording exec and exit of processes named `comm`; removed on drop.
pub struct ExecExitTrace {
    dir: PathBuf,
}

/// When a process exec'ed and exited, in µs on CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime {
    pub exec_us: Option<u64>,
    pub exit_us: Option<u64>,
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
        for event in ["sched_process_exec", "sched_process_exit"] {
            trace.write(
                &format!("events/sched/{event}/filter"),
                &format!("comm == \"{comm}\""),
            );
            trace.write(&format!("events/sched/{event}/enable"), "1");
        }
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
        for event in ["sched_process_exec", "sched_process_exit"] {
            let _ = std::fs::write(self.dir.join(format!("events/sched/{event}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Parses trace lines such as
/// `memphase-9060 [000] ..... 11316.542279: sched_process_exec: filename=/memphase pid=9060 old_pid=9060`
/// and `memphase-9060 [000] ..... 11317.136204: sched_process_exit: comm=memphase pid=9060 …`.
fn parse(text: &str) -> HashMap<i32, Lifetime> {
    let mut out: HashMap<i32, Lifetime> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, rest)) = line.split_once(": ") else {
            continue;
        };
        let Some((event, fields)) = rest.split_once(": ") else {
            continue;
        };
        let Some(us) = head.split_whitespace().last().and_then(seconds_to_us) else {
            continue;
        };
        let Some(pid) = fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix("pid=")?.parse::<i32>().ok())
        else {
            continue;
        };
        let life = out.entry(pid).or_default();
        match event {
            "sched_process_exec" => life.exec_us = Some(us),
            "sched_process_exit" => life.exit_us = Some(us),
            _ => {}
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
            \x20       memphase-9060    [000] ..... 11316.542279: sched_process_exec: filename=/memphase pid=9060 old_pid=9060\n\
            \x20       memphase-9061    [001] ..... 11316.600000: sched_process_exec: filename=/memphase pid=9061 old_pid=9061\n\
            \x20       memphase-9060    [000] ..... 11317.136204: sched_process_exit: comm=memphase pid=9060 prio=120 group_dead=true\n";
        let l = parse(text);
        assert_eq!(l[&9060].exec_us, Some(11_316_542_279));
        assert_eq!(l[&9060].exit_us, Some(11_317_136_204));
        assert_eq!(l[&9061].exit_us, None);
        assert_eq!(seconds_to_us("1.5"), Some(1_500_000));
    }
}
