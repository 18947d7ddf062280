//! Programs the shim runs itself (CNI plugins, iproute2, for sandboxes): containerd's shim
//! library reaps every child of the shim on SIGCHLD and publishes its exit, so their status
//! comes from that publication (runtime/src/sys/run.rs explains why).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use containerd_shim::monitor::{Subject, Topic, monitor_subscribe};

/// How long a program may run before it is killed.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` with `stdin`; its status as the shim's reaper saw it.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> io::Result<Output> {
    // Subscribed before the program exists, so its exit cannot be missed.
    let sub = monitor_subscribe(Topic::All).map_err(io::Error::other)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = trenv_runtime::sys::run::collect(cmd, stdin, |child| {
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            // A child the reaper has not seen yet may be waited for here; either way the
            // status is known once.
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{program} ran longer than {LIMIT:?}"),
                ));
            }
            match sub.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(e) if matches!(e.subject, Subject::Pid(p) if p == pid) => {
                    return Ok(status_of(e.exit_code));
                }
                _ => {}
            }
        }
    });
    // Dropping the subscription unsubscribes.
    drop(sub);
    out
}

/// The exit status the reaper's code stands for (128 + N: killed by signal N).
fn status_of(code: i32) -> ExitStatus {
    if code > 128 && code < 128 + 65 {
        ExitStatus::from_raw(code - 128)
    } else {
        ExitStatus::from_raw((code & 0xff) << 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaper_codes_become_statuses() {
        assert_eq!(status_of(0).code(), Some(0));
        assert_eq!(status_of(3).code(), Some(3));
        assert_eq!(status_of(137).signal(), Some(9));
    }
}
