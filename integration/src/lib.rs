//! Helpers for trenv's end-to-end tests. They drive a real containerd, whose address and
//! `ctr` binary come from the environment that `integration/test.sh` sets up:
//!
//! * `CTR`: path of the `ctr` binary matching the running containerd;
//! * `CONTAINERD_ADDRESS`: its gRPC socket;
//! * `CONTAINERD_VERSION`: `2` or `1.7`, for messages.

pub mod api;
pub mod bench;
pub mod cri;
pub mod function;
pub mod mmt;
pub mod pyfn;
pub mod terminal;
pub mod tracefs;
use std::path::PathBuf;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
pub use terminal::InTerminal;

pub const RUNTIME: &str = "io.containerd.trenv.v1";
pub const BUSYBOX: &str = "docker.io/trenv/busybox:latest";
/// The Python function image (integration/tests/fixtures/pyfn.py).
pub const PYFN: &str = "docker.io/trenv/pyfn:latest";

/// A `ctr` bound to the containerd under test.
#[derive(Clone, Debug)]
pub struct Ctr {
    pub bin: PathBuf,
    pub address: String,
    pub namespace: String,
}

/// The output of a command, decoded.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with the full output unless the command succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
}

impl Ctr {
    /// The containerd under test, from the environment `integration/test.sh` provides.
    pub fn from_env() -> Ctr {
        let bin = std::env::var("CTR").unwrap_or_else(|_| {
            panic!(
                "CTR is not set: run the end-to-end tests through integration/test.sh, which \
                 starts containerd and exports CTR and CONTAINERD_ADDRESS"
            )
        });
        let address = std::env::var("CONTAINERD_ADDRESS")
            .unwrap_or_else(|_| panic!("CONTAINERD_ADDRESS is not set (see integration/test.sh)"));
        Ctr {
            bin: PathBuf::from(bin),
            address,
            namespace: "trenv-test".to_string(),
        }
    }

    pub fn with_namespace(&self, ns: &str) -> Ctr {
        Ctr {
            namespace: ns.to_string(),
            ..self.clone()
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        c
    }

    /// Runs ctr with `args` and waits for it.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running ctr")
            .into()
    }

    /// Runs `ctr ARGS` (one shell command line: quote as for `sh`) with a terminal as its
    /// stdio, so that `-t` works; the terminal's output is `stdout`.
    pub fn run_in_terminal(&self, args: &str) -> Run {
        self.spawn_in_terminal(args)
            .finish(Duration::from_secs(120))
    }

    /// Starts `ctr ARGS` with a terminal (see [`Ctr::run_in_terminal`]) and leaves it
    /// running (an attached `ctr`).
    pub fn spawn_in_terminal(&self, args: &str) -> InTerminal {
        let cmdline = format!(
            "exec {} --address {} --namespace {} {args}",
            self.bin.display(),
            self.address,
            self.namespace
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &cmdline]);
        InTerminal::spawn(cmd).expect("starting ctr on a new terminal")
    }

    /// Makes sure the busybox test image is in this namespace (imported from the default
    /// one), once per test binary.
    pub fn ensure_images(&self) {
        self.ensure_image(BUSYBOX);
    }

    /// Makes sure `image` (built by integration/scripts/build-images.sh into the default
    /// namespace) is in this namespace as it is there, once per test binary: an image
    /// rebuilt since this namespace copied it is copied again.
    pub fn ensure_image(&self, image: &str) {
        static DONE: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.namespace.clone(), image.to_string());
        if done.contains(&key) {
            return;
        }
        self.import_image(image);
        done.push(key);
    }

    fn import_image(&self, image: &str) {
        let src = self.with_namespace("default");
        let ours = self.image_digest(image);
        if ours.is_some() && ours == src.image_digest(image) {
            return;
        }
        if ours.is_some() {
            self.run(&["images", "rm", "--sync", image]).ok();
        }
        let tar = std::env::temp_dir().join(format!(
            "trenv-image-{}-{}.tar",
            std::process::id(),
            file_name_part(image)
        ));
        let tar_s = tar.to_str().expect("utf-8 temp path");
        // Tried again on failure: in the VM test bed (TCG, an overlay over 9p), an import
        // once read a blob of the freshly written archive as empty ("short read: expected
        // 407 bytes but got 0"), which no other run showed.
        let mut attempt = 1;
        loop {
            let export = src.run(&["images", "export", tar_s, image]);
            let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
            let r = self.run(&["images", "import", tar_s]);
            let _ = std::fs::remove_file(&tar);
            if r.code == 0 {
                return;
            }
            assert!(
                attempt < 5,
                "importing {image} failed {attempt} times: {r:#?} (the export before it: \
                 {export:?}, {size} bytes)"
            );
            std::thread::sleep(Duration::from_millis(500));
            eprintln!(
                "importing {image} into {} failed, again: {r:?}",
                self.namespace
            );
            attempt += 1;
        }
    }

    /// The digest of `image` in this namespace, if it is there.
    pub fn image_digest(&self, image: &str) -> Option<String> {
        let out = self
            .run(&["images", "ls", &format!("name=={image}")])
            .stdout;
        out.lines().skip(1).find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == image).then_some(())?;
            f.nth(1).map(str::to_string)
        })
    }

    /// `ctr run -d` of busybox on trenv as container `id` running `args`; panics unless
    /// it started.
    pub fn run_busybox_detached(&self, id: &str, args: &[&str]) {
        let mut a = vec!["run", "-d", "--runtime", RUNTIME, BUSYBOX, id];
        a.extend_from_slice(args);
        self.run(&a).ok();
    }

    /// Task status as `ctr task ls` shows it, if the task exists.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.run(&["task", "ls"]).stdout;
        out.lines().skip(1).find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.nth(1).unwrap_or_default().to_string())
        })
    }

    /// Waits until `cond` holds for the task status, at most `timeout`.
    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.task_status(id).as_deref() == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Removes this `Ctr`'s namespace with its images (and so, after containerd's garbage
    /// collection, their snapshots), ignoring errors (test cleanup: a namespace of its own
    /// per test would otherwise keep ~130 MB of unpacked images each).
    pub fn remove_namespace(&self) {
        let images = self.run(&["images", "ls", "-q"]).stdout;
        for image in images.lines().filter(|l| !l.trim().is_empty()) {
            let _ = self.run(&["images", "rm", "--sync", image.trim()]);
        }
        let _ = self.run(&["namespace", "remove", &self.namespace]);
    }

    /// Kills and removes a container, ignoring errors (test cleanup).
    pub fn remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..50 {
            let r = self.run(&["task", "delete", id]);
            if r.code == 0 || r.stderr.contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.run(&["container", "delete", id]);
    }
}

/// The `ctr` of containerd 2.x that integration/scripts/install-deps.sh unpacks (it also
/// talks to containerd 1.7, and unlike 1.7's sends checkpoint options to any runtime).
pub fn ctr2_binary() -> PathBuf {
    let cache = std::env::var("TRENV_CACHE").unwrap_or_else(|_| "/var/cache/trenv".into());
    PathBuf::from(cache).join("containerd-2/usr/bin/ctr")
}

fn file_name_part(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Runs `args` in container `id` with `ctr task exec` and returns its output (panics if it
/// fails).
pub fn exec(c: &Ctr, id: &str, args: &[&str]) -> String {
    let exec_id = unique_id("x");
    let mut a = vec!["task", "exec", "--exec-id", &exec_id, id];
    a.extend_from_slice(args);
    c.run(&a).ok().stdout
}

/// The `trenv` CLI built by integration/test.sh (exported as TRENV_CLI), pointed at the
/// containerd under test.
pub fn trenv_cli() -> Command {
    let bin = std::env::var("TRENV_CLI").unwrap_or_else(|_| {
        panic!("TRENV_CLI is not set: run the end-to-end tests through integration/test.sh")
    });
    let mut c = Command::new(bin);
    let ctr = Ctr::from_env();
    c.env("CTR", &ctr.bin)
        .env("CONTAINERD_ADDRESS", &ctr.address);
    c
}

/// A `core-*.img` of a template's image directory `images` (one process's CRIU core image).
pub fn core_image(images: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(images)
        .unwrap_or_else(|e| panic!("{}: {e}", images.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("core-"))
        })
        .unwrap_or_else(|| panic!("no core image in {}", images.display()))
}

/// Changes a file's mode (group read flipped): its ctime changes, its contents do not —
/// the least a template's check must catch.
pub fn flip_mode(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode();
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode((mode ^ 0o040) & 0o7777),
    )
    .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A container id unique within this test run.
pub fn unique_id(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The processes whose command name (`/proc/PID/comm`) is `name`. For CRIU, unlike its
/// command line: `criu swrk` retitles itself (e.g. "criu: dump --rpc …") once it has a
/// request, a few milliseconds after its exec.
pub fn pids_named(name: &str) -> Vec<i32> {
    pids_where(|proc| std::fs::read_to_string(proc.join("comm")).is_ok_and(|c| c.trim() == name))
}

/// Pids of running processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<i32> {
    pids_where(|proc| {
        std::fs::read(proc.join("cmdline")).is_ok_and(|cmd| {
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        })
    })
}

/// Pids of the processes whose `/proc/PID` directory satisfies `keep`.
fn pids_where(keep: impl Fn(&std::path::Path) -> bool) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            keep(&e.path()).then_some(pid)
        })
        .collect()
}

/// How much coarser than this machine's the test environment's timing is: 1, unless
/// `TRENV_TEST_TIME_SCALE` says otherwise (the VM test bed runs under TCG emulation and sets
/// 10). Tests that check a time to the millisecond multiply their bound by it.
pub fn time_scale() -> u64 {
    match std::env::var("TRENV_TEST_TIME_SCALE") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("TRENV_TEST_TIME_SCALE={v:?} is not a whole number")),
        Err(_) => 1,
    }
}

/// Builds the static test program `tests/fixtures/memphase.c` (once per process) and
/// returns its path; tests bind-mount it into busybox.
pub fn memphase() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::env::temp_dir().join(format!("trenv-memphase-{}", std::process::id()));
            // The source is compiled in, not found by the path this crate was built at: a
            // target directory shared between checkouts would otherwise name a path that
            // is gone.
            let src = out.with_extension("c");
            std::fs::write(&src, include_str!("../tests/fixtures/memphase.c"))
                .expect("writing memphase.c to the temporary directory");
            let st = Command::new("gcc")
                .args(["-O2", "-static", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("running gcc (installed by integration/scripts/install-deps.sh)");
            assert!(st.success(), "building memphase failed");
            out
        })
        .clone()
}

/// Whether this host has the unified cgroup v2 hierarchy only (as current distributions
/// and the VM test bed do), rather than cgroup v1 or a hybrid of both.
pub fn cgroup_v2_host() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Where the shims write metering records (`TRENV_METER_DIR`, else trenv's default).
pub fn meter_dir() -> PathBuf {
    std::env::var_os("TRENV_METER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/trenv/meter"))
}

/// The metering record of container `id`'s process `exec_id` ("" for its init) in `dir`,
/// waiting up to 5 s for it; panics if there is none.
pub fn record_in(dir: &std::path::Path, id: &str, exec_id: &str) -> serde_json::Value {
    let path = dir.join("invocations.jsonl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(r) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|r| r["container_id"] == id && r["exec_id"] == exec_id)
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no metering record for {id}/{exec_id} in {}",
        path.display()
    );
}
