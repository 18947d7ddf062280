//! The shim's code pages, unmapped once it falls idle after serving requests (see
//! `trenv_runtime::node::trim`): a shim mostly waits for its container, running a few pages.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use trenv_runtime::node::trim;

pub struct IdleTrim {
    last_request: Mutex<Option<Instant>>,
    poked: Condvar,
}

impl IdleTrim {
    pub fn start() -> Arc<IdleTrim> {
        let t = Arc::new(IdleTrim {
            last_request: Mutex::new(None),
            poked: Condvar::new(),
        });
        let me = t.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("idle-trim".into())
            .spawn(move || me.run())
        {
            log::debug!("no idle trimming: {e}");
        }
        t
    }

    /// A request was served: trim once the shim has been idle for a while after it.
    pub fn poke(&self) {
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.poked.notify_one();
    }

    fn run(&self) {
        let idle = Duration::from_millis(trim::IDLE_MS.into());
        let mut last = self.last_request.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *last {
                None => {
                    last = self.poked.wait(last).unwrap_or_else(|e| e.into_inner());
                }
                Some(at) if at.elapsed() < idle => {
                    let wait = idle - at.elapsed();
                    last = self
                        .poked
                        .wait_timeout(last, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                Some(_) => {
                    *last = None;
                    drop(last);
                    let t = trim::read_only_file_pages();
                    log::debug!(
                        "idle: unmapped {} kB of code in {} mappings",
                        t.rss_kb,
                        t.mappings
                    );
                    last = self.last_request.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}
