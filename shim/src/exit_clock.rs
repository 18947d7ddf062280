//! When each container process exited, to the microsecond, even on a loaded machine.
//!
//! containerd-shim's reaper learns of exits through SIGCHLD, a signal thread and a channel:
//! three wake-ups at normal priority, which on a busy machine add milliseconds to an
//! invocation's metered duration and to the exit time containerd is told. This clock
//! watches every process through a pidfd in one thread at real-time priority (when the
//! host allows it), which stamps the exit as soon as the kernel reports it; the reaper's
//! exit handling then takes the stamp.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Stamps are kept this long for a process whose exit nobody takes.
const KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Shared {
    watched: HashMap<i32, OwnedFd>,
    exited: HashMap<i32, Instant>,
}

pub struct ExitClock {
    epoll: Epoll,
    shared: Mutex<Shared>,
    stamped: Condvar,
}

impl ExitClock {
    /// Starts the clock's thread; `None` (exits are then stamped when handled) if the
    /// kernel offers no epoll.
    pub fn start() -> Option<Arc<ExitClock>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .inspect_err(|e| log::warn!("exit clock off: epoll: {e}"))
            .ok()?;
        let clock = Arc::new(ExitClock {
            epoll,
            shared: Mutex::new(Shared::default()),
            stamped: Condvar::new(),
        });
        let c = clock.clone();
        std::thread::Builder::new()
            .name("exit-clock".into())
            .spawn(move || c.run())
            .inspect_err(|e| log::warn!("exit clock off: {e}"))
            .ok()?;
        Some(clock)
    }

    /// Watches `pid` (a process of ours that has not been reaped yet).
    pub fn watch(&self, pid: i32) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            log::debug!(
                "exit clock: no pidfd for {pid}: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut s = self.lock();
        let event = EpollEvent::new(EpollFlags::EPOLLIN, pid as u64);
        if let Err(e) = self.epoll.add(fd.as_fd(), event) {
            log::debug!("exit clock: cannot watch {pid}: {e}");
            return;
        }
        s.watched.insert(pid, fd);
    }

    /// When `pid` exited: waits for the stamp briefly if the process is watched but its
    /// stamp is not in yet (the reaper can be first); `None` if it is not watched.
    pub fn take(&self, pid: i32) -> Option<Instant> {
        let s = self.lock();
        let (mut s, _) = self
            .stamped
            .wait_timeout_while(s, Duration::from_millis(100), |s| {
                !s.exited.contains_key(&pid) && s.watched.contains_key(&pid)
            })
            .unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = s.watched.remove(&pid) {
            let _ = self.epoll.delete(fd.as_fd());
        }
        s.exited.remove(&pid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        realtime();
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("exit clock stopped: {e}");
                    return;
                }
            };
            let now = Instant::now();
            let mut s = self.lock();
            for ev in &events[..n] {
                let pid = ev.data() as i32;
                if let Some(fd) = s.watched.remove(&pid) {
                    let _ = self.epoll.delete(fd.as_fd());
                    s.exited.insert(pid, now);
                }
            }
            s.exited.retain(|_, t| now.duration_since(*t) < KEEP);
            drop(s);
            self.stamped.notify_all();
        }
    }
}

/// Real-time priority for the calling thread, so that its wake-up on an exit does not
/// wait behind busy normal-priority work. Best effort: some hosts do not allow it.
fn realtime() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        log::debug!(
            "exit clock at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_exit_is_stamped_when_it_happens() {
        let clock = ExitClock::start().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        clock.watch(pid);
        let started = Instant::now();
        // Reap late: the stamp is when it exited, not when it was reaped.
        std::thread::sleep(Duration::from_millis(600));
        child.wait().unwrap();
        let at = clock.take(pid).expect("stamped");
        let after = at.duration_since(started);
        assert!(
            after >= Duration::from_millis(150) && after < Duration::from_millis(500),
            "stamped {after:?} after the start"
        );
        assert!(clock.take(pid).is_none(), "a stamp is taken once");
        assert!(clock.take(1).is_none(), "an unwatched pid has no stamp");
    }
}
