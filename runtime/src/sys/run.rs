//! Running helper programs (CNI plugins, iproute2) from any trenv process. In the shim,
//! containerd's shim library reaps every child on SIGCHLD, so a plain wait would find no
//! child (ECHILD) and the program's exit status would be lost: the shim installs a runner
//! that learns the status from that reaper ([`set_runner`]). Elsewhere (the CLI, tests) the
//! standard wait serves.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

/// How this process runs a program: `stdin` is written to it; its output and status come
/// back.
pub type Runner = fn(&mut Command, &[u8]) -> io::Result<Output>;

static RUNNER: OnceLock<Runner> = OnceLock::new();

/// Sets how this process runs programs (once, at start-up).
pub fn set_runner(r: Runner) {
    let _ = RUNNER.set(r);
}

/// Runs `cmd` with `stdin`, as this process runs programs.
pub fn output(cmd: &mut Command, stdin: &[u8]) -> io::Result<Output> {
    RUNNER.get().copied().unwrap_or(plain)(cmd, stdin)
}

/// Runs `cmd` and waits for it the standard way.
pub fn plain(cmd: &mut Command, stdin: &[u8]) -> io::Result<Output> {
    collect(cmd, stdin, Child::wait)
}

/// Spawns `cmd` with piped stdio, writes `stdin`, reads its output to the end, and gets
/// its status from `wait`.
pub fn collect(
    cmd: &mut Command,
    stdin: &[u8],
    wait: impl FnOnce(&mut Child) -> io::Result<ExitStatus>,
) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        // A program that does not read its input closes the pipe: not an error here.
        let _ = input.write_all(stdin);
    }
    let err = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf);
            buf
        })
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let status = wait(&mut child)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_gets_its_input_and_gives_its_output_and_status() {
        let out = plain(
            Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]),
            b"in",
        )
        .unwrap();
        assert_eq!(out.stdout, b"in");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }
}
