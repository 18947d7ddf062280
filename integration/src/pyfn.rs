//! Talking to the Python test function (integration/tests/fixtures/pyfn.py) in a container
//! started with `FN_LOG=/tmp/fn.log`: its output is read from that file with `ctr task
//! exec`, because a restored task's stdout may have no reader.

use std::time::{Duration, Instant};

use crate::{Ctr, exec};

/// Where the tests make the function log its lines (`--env FN_LOG=...`).
pub const LOG_ENV: &str = "FN_LOG=/tmp/fn.log";

/// Every line the function logged so far.
pub fn log_lines(c: &Ctr, id: &str) -> Vec<String> {
    exec(c, id, &["sh", "-c", "cat /tmp/fn.log 2>/dev/null || true"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (at most a minute) for a line starting with `prefix` after the first `skip` lines.
pub fn wait_line(c: &Ctr, id: &str, prefix: &str, skip: usize) -> String {
    let start = Instant::now();
    loop {
        let lines = if c.task_status(id).as_deref() == Some("RUNNING") {
            log_lines(c, id)
        } else {
            Vec::new()
        };
        if let Some(l) = lines.iter().skip(skip).find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id} printed no {prefix:?} line: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `key` (e.g. "state=") in a line.
pub fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

/// Signals the function and returns the state checksum it reports: SIGUSR1 = check,
/// SIGUSR2 = write a marker, then check.
pub fn signal_state(c: &Ctr, id: &str, signal: &str) -> String {
    let prefix = match signal {
        "SIGUSR1" => "check ",
        "SIGUSR2" => "wrote ",
        other => panic!("pyfn reports no state on {other}"),
    };
    let seen = log_lines(c, id).len();
    c.run(&["task", "kill", "-s", signal, id]).ok();
    field(&wait_line(c, id, prefix, seen), "state=")
}

/// The state size (MiB) a test gives the function: `default`, unless `TRENV_TEST_FN_MB`
/// names another (the VM test bed sets a smaller one: its emulated CPUs hash slowly).
pub fn state_mb(default: u32) -> u32 {
    match std::env::var("TRENV_TEST_FN_MB") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("TRENV_TEST_FN_MB={v:?} is not a number of MiB")),
        Err(_) => default,
    }
}

/// The bytes of the function's one big anonymous mapping for `mb` MiB of state (all but
/// about 8 MiB, at most half, see pyfn.py): what a template moves into its pool file.
pub fn mapped_bytes(mb: u32) -> u64 {
    u64::from(mb - (mb / 2).min(8)) << 20
}
