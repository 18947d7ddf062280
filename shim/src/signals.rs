//! The shim's SIGPIPE, kept out of the shim framework's signal loop.
//!
//! containerd-shim's signal thread logs every SIGPIPE at debug level, and its logger
//! writes to the `log` FIFO of a bundle. When nobody reads that FIFO any more (a shared
//! shim lingering after its last container was deleted, containerd restarting), the log
//! write fails with EPIPE and raises SIGPIPE, which the thread logs again: with containerd
//! at debug level, the shim spun a CPU at 100 % until it exited. Here SIGPIPE gets a
//! handler that does nothing: writes to a closed pipe still fail with EPIPE, and no
//! signal reaches the loop. A handler (unlike SIG_IGN) is not inherited across execve, so
//! the processes the shim starts get the default disposition, as before.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

extern "C" fn ignore(_: libc::c_int) {}

/// Replaces whatever handles SIGPIPE (the framework's) with a handler that does nothing;
/// run after the framework registered its signals.
pub fn quiet_sigpipe() {
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    if let Err(e) = unsafe { sigaction(Signal::SIGPIPE, &action) } {
        log::warn!("SIGPIPE stays with the shim framework: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A write to a pipe nobody reads raises SIGPIPE, which the framework's loop (a
    /// signal-hook iterator, as here) receives, until the handler is replaced.
    #[test]
    fn a_write_to_a_closed_pipe_fails_and_no_longer_reaches_the_signal_loop() {
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGPIPE]).unwrap();
        let broken = || {
            let (r, w) = nix::unistd::pipe().unwrap();
            drop(r);
            let mut w = std::fs::File::from(w);
            w.write(b"x").unwrap_err().raw_os_error()
        };
        let received = |s: &mut signal_hook::iterator::Signals| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            s.pending().any(|sig| sig == libc::SIGPIPE)
        };
        assert_eq!(broken(), Some(libc::EPIPE));
        assert!(received(&mut signals), "the loop receives SIGPIPE");
        quiet_sigpipe();
        assert_eq!(broken(), Some(libc::EPIPE));
        assert!(
            !received(&mut signals),
            "the loop no longer receives SIGPIPE"
        );
    }
}
