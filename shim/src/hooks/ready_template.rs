//! The template a container asks for with `io.trenv.template.create=NAME`
//! (runtime/src/template/ready.rs), or that a `template = "auto"` rule of the node asks for
//! it (runtime/src/function_rules.rs): once its init started, a thread waits for the ready
//! file to appear inside the container, sends the warm-up requests it asks for
//! (runtime/src/template/warmup.rs), then a zygote worker checkpoints the running function (it keeps running)
//! into template NAME, exactly as `trenv template create` does. A dump CRIU refuses (a
//! connection open at that moment) is tried again a few times while the function runs.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;
use trenv_runtime::template::ready::ReadyTemplate;

use super::{Hook, Invocation};
use crate::container::Container;
use crate::process::State;

/// How often the ready file is looked for.
const POLL: Duration = Duration::from_millis(10);
/// How long a function may take to get ready.
const PATIENCE: Duration = Duration::from_secs(600);
/// How many times a template is tried, and the pause before the second try (doubled each
/// time after).
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How long a function may keep its ready file open after creating it.
const SETTLE: Duration = Duration::from_secs(2);

pub struct ReadyTemplateHook;

impl Hook for ReadyTemplateHook {
    fn started(&self, inv: &Invocation<'_>, pid: i32) {
        if inv.is_init() {
            watch(inv.container, pid);
        }
    }
}

/// Starts watching container `c`, whose init runs as `pid`, if it asks for a template.
fn watch(c: &Arc<Container>, pid: i32) {
    let Some(t) = c.annotations.make_template.clone() else {
        return;
    };
    let (id, name) = (c.id.clone(), t.name.clone());
    let c = c.clone();
    let spawned = std::thread::Builder::new()
        .name("ready-template".into())
        .spawn(move || make_when_ready(&c, pid, &t));
    if let Err(e) = spawned {
        log::error!("container {id}: no thread to wait for template {name}: {e}");
    }
}

fn make_when_ready(c: &Container, pid: i32, t: &ReadyTemplate) {
    let began = Instant::now();
    let ready = t.ready_file.display();
    // The container's root as its init sees it; the ready file is resolved inside it
    // (RESOLVE_IN_ROOT), so no symbolic link in the container leads out of it.
    let root = match open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        // SAFETY: open just returned this descriptor to us.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(e) => {
            log::warn!(
                "container {}: its root is gone ({e}): no template {}",
                c.id,
                t.name
            );
            return;
        }
    };
    let rel = t.ready_file.strip_prefix("/").unwrap_or(&t.ready_file);
    loop {
        if c.init.state() == State::Stopped {
            log::warn!(
                "container {} exited before {ready} appeared in it: no template {}",
                c.id,
                t.name
            );
            return;
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        if let Ok(fd) = openat2(std::os::fd::AsRawFd::as_raw_fd(&root), rel, how) {
            // SAFETY: openat2 just returned this descriptor to us.
            let file = unsafe { OwnedFd::from_raw_fd(fd) };
            settle(c, pid, &file);
            break;
        }
        if began.elapsed() > PATIENCE {
            log::warn!(
                "container {}: {ready} did not appear within {} s: no template {}",
                c.id,
                PATIENCE.as_secs(),
                t.name
            );
            return;
        }
        std::thread::sleep(POLL);
    }
    log::info!(
        "container {} is ready ({ready} after {:.2} s): making template {}",
        c.id,
        began.elapsed().as_secs_f64(),
        t.name
    );
    if let Some(w) = &t.warmup {
        match w.send(pid) {
            Ok(took) => log::info!(
                "container {}: {} warm-up request(s) {} answered in {:.1} ms",
                c.id,
                w.requests,
                w.target(),
                took.as_secs_f64() * 1e3
            ),
            Err(e) => {
                log::error!(
                    "container {}: its warm-up failed: {e}; no template {}",
                    c.id,
                    t.name
                );
                return;
            }
        }
    }
    let mut retry_in = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let made = Instant::now();
        match crate::runtime().make_template(&c.at, t, &c.criu) {
            Ok(summary) => {
                log::info!(
                    "template {} made from container {} in {:.2} s: {summary}",
                    t.name,
                    c.id,
                    made.elapsed().as_secs_f64()
                );
                return;
            }
            // Several instances of one function may all ask for its template: the first
            // makes it.
            Err(e) if e.kind() == trenv_runtime::ErrorKind::AlreadyExists => {
                log::info!("template {} not made from container {}: {e}", t.name, c.id);
                return;
            }
            // CRIU refuses a moment that passes: a request's connection open while the
            // function serves (a health check, the platform's first call).
            Err(e)
                if e.kind() == trenv_runtime::ErrorKind::Internal
                    && attempt < ATTEMPTS
                    && c.init.state() != State::Stopped =>
            {
                log::warn!(
                    "template {} from container {}: attempt {attempt} of {ATTEMPTS} failed \
                     ({e}); trying again in {} ms",
                    t.name,
                    c.id,
                    retry_in.as_millis()
                );
                std::thread::sleep(retry_in);
                retry_in *= 2;
            }
            Err(e) => {
                log::error!(
                    "template {} could not be made from container {}: {e}",
                    t.name,
                    c.id
                );
                return;
            }
        }
    }
}

/// Waits (up to [`SETTLE`]) until no process of the container's tree (rooted at `pid`)
/// holds the ready file `file` open. A function creates the file with open + close (as
/// OpenFaaS's watchdogs do); a dump between the two would record the open file, and every
/// restore would fail to reopen it in its fresh /tmp ("Can't open file tmp/.lock").
fn settle(c: &Container, pid: i32, file: &OwnedFd) {
    let Ok(st) = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(file)) else {
        return;
    };
    let began = Instant::now();
    while held_open(pid, st.st_dev, st.st_ino) {
        if began.elapsed() > SETTLE {
            log::warn!(
                "container {}: its ready file is still open after {} s; making the template \
                 anyway",
                c.id,
                SETTLE.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a process of the tree rooted at `root` has the file (`dev`, `ino`) open.
fn held_open(root: i32, dev: u64, ino: u64) -> bool {
    trenv_runtime::sys::tree::process_tree(root)
        .into_iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .flat_map(|fds| fds.filter_map(Result::ok))
        .any(|fd| {
            nix::sys::stat::stat(&fd.path()).is_ok_and(|s| s.st_dev == dev && s.st_ino == ino)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Rooted at a child of its own, not at the test process: the other tests of this
    /// binary fork children that hold copies of this process's descriptors for a moment.
    #[test]
    fn a_file_a_process_tree_holds_open_is_found_and_one_it_does_not_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        std::fs::write(&path, "").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let holder = |input: std::process::Stdio| {
            std::process::Command::new("sleep")
                .arg("10")
                .stdin(input)
                .spawn()
                .unwrap()
        };
        let mut holding = holder(std::fs::File::open(&path).unwrap().into());
        let mut not = holder(std::process::Stdio::null());
        let found = held_open(holding.id() as i32, m.dev(), m.ino());
        let not_found = held_open(not.id() as i32, m.dev(), m.ino());
        for c in [&mut holding, &mut not] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(found && !not_found, "found {found}, not found {not_found}");
    }
}
