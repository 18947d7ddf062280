//! Events to containerd, in order, surviving a containerd restart.
//!
//! Events go through one queue and one thread: they reach containerd in the order they
//! were raised (TaskOOM before TaskExit, TaskExit before TaskDelete). When containerd is
//! down the thread reconnects with back-off and delivers what was queued.
//!
//! The connection is dropped once no event came for [`IDLE_CONNECTION`] and made again at
//! the next one: ttrpc's synchronous client polls its socket every 10 ms for as long as it
//! is connected, 100 wake-ups a second for the life of every shim, while a container's
//! events come in bursts (Create and Start; then Exit and Delete).

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use containerd_shim::Context;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;

type Event = (&'static str, Box<dyn MessageDyn + Send>);

/// How long the connection to containerd outlives the last event.
const IDLE_CONNECTION: Duration = Duration::from_secs(1);

/// Counts events queued but not yet delivered, so that shutdown can flush them.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    cv: Condvar,
}

#[derive(Clone)]
pub struct Events {
    tx: Sender<Event>,
    pending: Arc<Pending>,
}

impl Events {
    pub fn new(publisher: RemotePublisher, address: String, namespace: String) -> Events {
        let (tx, rx) = channel();
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        thread::Builder::new()
            .name("events".into())
            .spawn(move || deliver(rx, publisher, address, namespace, p))
            .expect("spawning the events thread");
        Events { tx, pending }
    }

    pub fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn + Send>) {
        *self.pending.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        if self.tx.send((topic, event)).is_err() {
            log::error!("events thread gone; dropping {topic}");
        }
    }

    /// Waits until every queued event is delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let guard = self.pending.count.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .pending
            .cv
            .wait_timeout_while(guard, timeout, |n| *n > 0);
    }
}

fn deliver(
    rx: Receiver<Event>,
    publisher: RemotePublisher,
    address: String,
    namespace: String,
    pending: Arc<Pending>,
) {
    let mut publisher = Some(publisher);
    loop {
        let (topic, event) = match rx.recv_timeout(IDLE_CONNECTION) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                publisher = None;
                match rx.recv() {
                    Ok(e) => e,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let connected = match publisher.take() {
                Some(p) => Ok(p),
                None => RemotePublisher::new(&address),
            };
            let failed = match connected {
                Ok(p) => match p.publish(
                    Context::default(),
                    topic,
                    &namespace,
                    (&*event as &dyn MessageDyn).clone_box(),
                ) {
                    Ok(()) => {
                        publisher = Some(p);
                        break;
                    }
                    Err(e) => format!("publishing {topic} failed ({e})"),
                },
                Err(e) => format!("connecting to containerd at {address} for {topic} failed ({e})"),
            };
            log::warn!("{failed}; trying again in {} ms", backoff.as_millis());
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        let mut n = pending.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        pending.cv.notify_all();
    }
}
