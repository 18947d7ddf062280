//! The image of a container whose spec does not name it. CRI writes it into the spec
//! (`io.kubernetes.cri.image-name`); every other client (faasd, nerdctl, ctr) records it only
//! in containerd's container record, which a shim can read only over containerd's gRPC API.
//! The shim does not carry a gRPC client: it asks trenv's CLI (`trenv container image`),
//! once per container, after Start and off its path, and the metering records of the
//! container's processes take the answer when they are written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The lookup of one container's image.
#[derive(Default)]
pub struct ImageOf {
    state: Mutex<Lookup>,
    done: Condvar,
}

#[derive(Default)]
enum Lookup {
    #[default]
    NotAsked,
    Pending,
    /// The image, or "" if containerd could not say.
    Done(String),
}

impl ImageOf {
    /// Asks, in a thread of its own, for the image of container `id` of `namespace` from
    /// the containerd at `address`; a second call does nothing.
    pub fn look_up(self: &Arc<Self>, address: &str, namespace: &str, id: &str) {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*s, Lookup::NotAsked) {
                return;
            }
            *s = Lookup::Pending;
        }
        let this = self.clone();
        let (address, namespace, name) =
            (address.to_string(), namespace.to_string(), id.to_string());
        let spawned = std::thread::Builder::new()
            .name("image-of".into())
            .spawn(move || {
                let image = ask(&address, &namespace, &name).unwrap_or_else(|e| {
                    log::warn!("the image of container {name} is unknown: {e}");
                    String::new()
                });
                this.finish(image);
            });
        if let Err(e) = spawned {
            log::warn!("no thread to look up the image of container {id}: {e}");
            self.finish(String::new());
        }
    }

    fn finish(&self, image: String) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Lookup::Done(image);
        self.done.notify_all();
    }

    /// The image, waiting at most `patience` for a lookup under way; "" if none was asked
    /// for, it failed, or it is still under way.
    pub fn wait(&self, patience: Duration) -> String {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (s, _) = self
            .done
            .wait_timeout_while(s, patience, |s| matches!(s, Lookup::Pending))
            .unwrap_or_else(|e| e.into_inner());
        match &*s {
            Lookup::Done(image) => image.clone(),
            Lookup::NotAsked | Lookup::Pending => String::new(),
        }
    }
}

/// How long the CLI may take (connecting and one call).
const TIMEOUT: Duration = Duration::from_secs(5);

/// `trenv container image ID -n NAMESPACE --address ADDRESS`.
fn ask(address: &str, namespace: &str, id: &str) -> Result<String, String> {
    let cli = cli();
    let mut cmd = Command::new(&cli);
    cmd.args(["container", "image", id, "-n", namespace, "--address"])
        .arg(address.strip_prefix("unix://").unwrap_or(address))
        .args(["--timeout-ms", &TIMEOUT.as_millis().to_string()]);
    // Through the shim's reaper, which reaps every child of the shim (children.rs).
    let out = crate::children::run(&mut cmd, &[])
        .map_err(|e| format!("running {}: {e}", cli.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// trenv's CLI: beside the shim's binary (both are installed together), else on PATH.
fn cli() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("trenv")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| Path::new("trenv").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_is_empty_at_once_and_an_answer_is_kept() {
        let i = Arc::new(ImageOf::default());
        assert_eq!(i.wait(Duration::from_secs(10)), "");
        *i.state.lock().unwrap() = Lookup::Pending;
        let started = std::time::Instant::now();
        assert_eq!(i.wait(Duration::from_millis(50)), "");
        assert!(started.elapsed() >= Duration::from_millis(50));
        let j = i.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            j.finish("docker.io/library/busybox:latest".into());
        });
        assert_eq!(
            i.wait(Duration::from_secs(10)),
            "docker.io/library/busybox:latest"
        );
        t.join().unwrap();
        // Done: a second lookup is not started.
        i.look_up("/nonexistent.sock", "default", "x");
        assert_eq!(i.wait(Duration::ZERO), "docker.io/library/busybox:latest");
    }
}
