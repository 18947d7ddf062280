//! A faasd-shaped client: what faasd 0.19 does through containerd's client library, with a
//! real function of integration/functions/ and no `io.trenv.*` annotation anywhere (faasd
//! passes a function's settings as container labels, which never reach a runtime).
//!
//! Per start: the container created without naming a runtime (so it records
//! `io.containerd.runc.v2`), a task created with a `binary://` logger, CNI ADD on the
//! task's `/proc/PID/ns/net` between Create and Start, Start, requests over the bridge;
//! scale to zero by killing and deleting the task (CNI DEL) and a new task on the same
//! container later. The same client runs against runc.v2, against trenv installed as runc's
//! shim (alias mode) and against trenv named explicitly. On trenv the node's function rules
//! (`[[functions]]` in a config the shim is given, as /etc/trenv/config.toml would be) name
//! the function after its container and make its template transparently: the first start
//! is cold, every later one restores — with a process and a network namespace at Create.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use trenv_integration::api::{Containerd, TaskIo};
use trenv_integration::function::{self, Function, NETWORK, RUNC};
use trenv_integration::{Ctr, RUNTIME, meter_dir, trenv_cli, unique_id};
use trenv_runtime::sandbox::network::NetTarget;

/// The tests' containerd namespace: faasd's is `openfaas-fn`.
const NAMESPACE: &str = "trenv-faasd";

/// trenv's shim as installed (integration/setup.sh).
const TRENV_SHIM: &str = "/usr/local/bin/containerd-shim-trenv-v1";

/// The function every test runs (Python, served by the OpenFaaS-style watchdog, which
/// writes /tmp/.lock once healthy).
const FUNCTION: &str = "pyaes";

/// A logging program as faasd's: stdout on fd 3, stderr on fd 4, fd 5 closed once ready.
const LOGGER: &str = r#"#!/bin/sh
d="$2"
while IFS= read -r l; do printf '%s\n' "$l"; done <&3 >>"$d/out" 4<&- 5>&- &
while IFS= read -r l; do printf '%s\n' "$l"; done <&4 >>"$d/err" 3<&- 5>&- &
exec 3<&- 4<&- 5>&-
wait
"#;

/// How the client's tasks reach a runtime.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    /// runc.v2, the baseline.
    Runc,
    /// trenv installed as `containerd-shim-runc-v2` (config/containerd-faasd.toml).
    Alias,
    /// trenv under its own name.
    Trenv,
}

/// One test's scratch directory: the logger, the shim's config and the shim wrapper, all
/// removed with it; and the function's containers, tasks and templates.
struct Setup {
    ctr: Ctr,
    api: Containerd,
    dir: PathBuf,
    runtime: Runtime,
    /// The binary containerd runs as the shim (`None`: as the runtime's name resolves).
    shim: Option<PathBuf>,
    logger: String,
    function: Function,
    id: String,
}

impl Setup {
    fn new(runtime: Runtime) -> Setup {
        let ctr = Ctr::from_env().with_namespace(NAMESPACE);
        ctr.ensure_images();
        let function = function::get(FUNCTION);
        ctr.ensure_image(&function.image);
        let api = Containerd::from_env(NAMESPACE).unwrap_or_else(|e| panic!("{e}"));
        let id = unique_id(&format!("faasd-{}", format!("{runtime:?}").to_lowercase()));
        let dir = std::env::temp_dir().join(&id);
        fs::create_dir_all(&dir).unwrap();
        let logger = dir.join("logger.sh");
        fs::write(&logger, LOGGER).unwrap();
        fs::set_permissions(&logger, fs::Permissions::from_mode(0o755)).unwrap();
        let logger = format!("binary://{}?dir={}", logger.display(), dir.display());
        // The node's policy: every container of the namespace is a function named after
        // it, templated transparently. The shim is given it through a wrapper (the shim
        // reads /etc/trenv/config.toml otherwise, which the other tests share).
        // And CRIU through a wrapper that dies once, at its next run, when asked to
        // (`fail_next_criu`): with no CRIU started ahead, whose death before its request
        // would only mean a restore without it (tests/templates.rs tests that).
        let criu = dir.join("criu");
        let real_criu = ["/usr/local/sbin/criu", "/usr/sbin/criu"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("CRIU is installed (integration/setup.sh)");
        let flag = dir.join("fail-next-criu");
        fs::write(
            &criu,
            format!(
                "#!/bin/sh\nif [ \"$1\" = swrk ] && [ -e {f} ]; then rm -f {f}; exit 1; fi\n\
                 exec {real_criu} \"$@\"\n",
                f = flag.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&criu, fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "[criu]\nbinary = \"{}\"\nstart_ahead = false\n\n[[functions]]\n\
                 namespace = \"{NAMESPACE}\"\ntemplate = \"auto\"\n",
                criu.display()
            ),
        )
        .unwrap();
        let shim = match runtime {
            Runtime::Runc => None,
            Runtime::Alias | Runtime::Trenv => {
                let (name, alias) = match runtime {
                    Runtime::Alias => ("containerd-shim-runc-v2", "TRENV_RUNC_ALIAS=1 "),
                    _ => ("containerd-shim-trenv-v1", ""),
                };
                let wrapper = dir.join(name);
                fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh\n{alias}TRENV_CONFIG={} exec {} \"$@\"\n",
                        config.display(),
                        TRENV_SHIM
                    ),
                )
                .unwrap();
                fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
                Some(wrapper)
            }
        };
        Setup {
            ctr,
            api,
            dir,
            runtime,
            shim,
            logger,
            function,
            id,
        }
    }

    /// The container, as faasd creates it: the image, no runtime named (trenv named
    /// explicitly is the exception), no annotation.
    fn create_container(&self) {
        let runtime = match self.runtime {
            Runtime::Trenv => RUNTIME,
            Runtime::Runc | Runtime::Alias => RUNC,
        };
        let r = self.ctr.run(&[
            "containers",
            "create",
            "--runtime",
            runtime,
            &self.function.image,
            &self.id,
        ]);
        assert_eq!(r.code, 0, "creating container {}: {r:#?}", self.id);
    }

    /// A task of the container, networked by the client between Create and Start and
    /// answering requests: its pid and address.
    fn start_task(&self) -> (i32, String) {
        let shim = self.shim.as_ref().map(|p| p.display().to_string());
        let io = TaskIo::log_uri(&self.logger, false);
        let pid = self
            .api
            .create_task_with(&self.id, &io, None, shim.as_deref())
            .unwrap_or_else(|e| panic!("{:?}: Create of {}: {e:?}", self.runtime, self.id))
            as i32;
        assert!(pid > 0, "{:?}: Create answered pid {pid}", self.runtime);
        let netns = self.netns_dir();
        fs::create_dir_all(&netns).unwrap();
        let _ = fs::remove_file(netns.join("net"));
        std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), netns.join("net")).unwrap();
        function::cni()
            .and_then(|cni| {
                cni.attach(&NetTarget::at(&netns), &self.id, NETWORK, None)
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| panic!("{:?}: CNI ADD for {}: {e}", self.runtime, self.id));
        let started = self
            .api
            .start(&self.id, "")
            .unwrap_or_else(|e| panic!("{:?}: Start of {}: {e:?}", self.runtime, self.id));
        assert_eq!(started as i32, pid, "{:?}: Start's pid", self.runtime);
        let ip = function::address_of(pid).unwrap_or_else(|e| panic!("{e}"));
        function::wait_healthy(&ip, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.runtime));
        (pid, ip)
    }

    /// Scale to zero: the task killed, waited for and deleted, then CNI DEL.
    fn stop_task(&self) {
        let _ = self.api.kill(&self.id, "", libc::SIGKILL as u32, true);
        let _ = self.api.wait(&self.id, "");
        let _ = self.api.delete_task(&self.id);
        if let Ok(cni) = function::cni() {
            let _ = cni.detach(&NetTarget::at(&self.netns_dir()), &self.id);
        }
        let _ = fs::remove_dir_all(self.netns_dir());
    }

    /// CRIU's next run (the next restore or dump through this setup's shims) dies at once.
    fn fail_next_criu(&self) {
        fs::write(self.dir.join("fail-next-criu"), "").unwrap();
    }

    fn criu_failed(&self) -> bool {
        !self.dir.join("fail-next-criu").exists()
    }

    /// How many times the shims said they made the function's template (containerd's log).
    fn templates_made(&self) -> usize {
        let log = std::env::var("CONTAINERD_LOG").expect("CONTAINERD_LOG (containerd.sh env)");
        let text = fs::read_to_string(log).unwrap_or_default();
        let line = format!("{}-", self.id);
        text.lines()
            .filter(|l| {
                l.contains("template ")
                    && l.contains(&line)
                    && l.contains(&format!(" made from container {} in ", self.id))
            })
            .count()
    }

    /// Waits until the function's template was made `n` times.
    fn wait_made(&self, n: usize) {
        let start = Instant::now();
        let limit = Duration::from_secs(120 * trenv_integration::time_scale());
        while self.templates_made() < n {
            assert!(
                start.elapsed() < limit,
                "{:?}: template of {} made {} times, not {n}, within {limit:?}",
                self.runtime,
                self.id,
                self.templates_made()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn netns_dir(&self) -> PathBuf {
        function::runc_netns_dir(&self.id)
    }

    /// The templates of the function (named after it) in the namespace.
    fn templates(&self) -> Vec<String> {
        let out = trenv_cli()
            .args(["template", "list", "-n", NAMESPACE])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.id)))
            .map(str::to_string)
            .collect()
    }

    /// The metering records of the container's tasks, oldest first.
    fn records(&self) -> Vec<serde_json::Value> {
        let path = meter_dir().join("invocations.jsonl");
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["container_id"] == self.id.as_str() && r["exec_id"] == "")
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop_task();
        self.ctr.remove(&self.id);
        for t in self.templates() {
            let _ = trenv_cli()
                .args(["template", "rm", &t, "-n", NAMESPACE])
                .output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Every check of the function answered correctly by the instance at `ip`.
fn assert_answers(s: &Setup, ip: &str, how: &str) {
    if let Err(e) = function::check(&s.function, ip) {
        panic!("{:?}, {how}: {e}", s.runtime);
    }
}

/// Waits until `n` records of the container exist; they are read as the shim writes them
/// at each task's exit.
fn wait_records(s: &Setup, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let records = s.records();
        if records.len() >= n || start.elapsed() > Duration::from_secs(10) {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start, answer, scale to zero, start again on the same container, answer: what faasd
/// does for a function that is invoked, idles and is invoked again.
fn invoked_twice(runtime: Runtime) -> Setup {
    let s = Setup::new(runtime);
    s.create_container();
    let (_, ip) = s.start_task();
    assert_answers(&s, &ip, "first start");
    if runtime != Runtime::Runc {
        // The template is made once the function is ready, while it serves.
        let start = Instant::now();
        let limit = Duration::from_secs(180 * trenv_integration::time_scale());
        while s.templates().is_empty() {
            assert!(
                start.elapsed() < limit,
                "{runtime:?}: no template of {} within {limit:?}; shim log in containerd's log",
                s.id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.stop_task();
    let (pid, ip) = s.start_task();
    assert_answers(&s, &ip, "second start");
    let links = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(
        links.lines().count(),
        2,
        "{runtime:?}: lo and the client's eth0 only: {links}"
    );
    s.stop_task();
    // The function's output reached faasd's logger, from both starts.
    let out = fs::read_to_string(s.dir.join("out")).unwrap_or_default()
        + &fs::read_to_string(s.dir.join("err")).unwrap_or_default();
    assert!(!out.is_empty(), "{runtime:?}: the logger got nothing");
    s
}

#[test]
fn a_faasd_shaped_client_runs_a_function_on_runc() {
    invoked_twice(Runtime::Runc);
}

/// On trenv, both ways: the second start restored from the template the first made, the
/// records naming the function and its image.
fn on_trenv(runtime: Runtime) {
    let s = invoked_twice(runtime);
    let records = wait_records(&s, 2);
    let starts: Vec<&str> = records.iter().filter_map(|r| r["start"].as_str()).collect();
    assert_eq!(starts, ["cold", "template"], "{runtime:?}: {records:#?}");
    for r in &records {
        assert_eq!(r["function"], s.id.as_str(), "{runtime:?}: {r}");
        // Not in the spec (only CRI writes it there): asked of containerd by the shim.
        assert_eq!(r["image"], s.function.image.as_str(), "{runtime:?}: {r}");
    }
    assert_eq!(s.templates().len(), 1, "{runtime:?}: {:?}", s.templates());
}

#[test]
fn a_faasd_shaped_client_gets_a_transparent_template_from_trenv_installed_as_runc() {
    on_trenv(Runtime::Alias);
}

#[test]
fn a_faasd_shaped_client_gets_a_transparent_template_from_trenv_named_explicitly() {
    on_trenv(Runtime::Trenv);
}

/// A function's automatic template that cannot be used is replaced, and the start it fails
/// is cold instead of failed: CRIU dying during the restore at Create, and a template found
/// modified at Create, each give a cold start (recorded as such) that makes the template
/// anew; the start after them restores again.
#[test]
fn a_broken_automatic_template_gives_a_cold_start_and_is_made_anew() {
    let s = Setup::new(Runtime::Trenv);
    s.create_container();
    let (_, ip) = s.start_task();
    assert_answers(&s, &ip, "first start");
    s.wait_made(1);
    s.stop_task();

    s.fail_next_criu();
    let (_, ip) = s.start_task();
    assert!(s.criu_failed(), "the start did not run CRIU");
    assert_answers(&s, &ip, "after a failed restore");
    s.wait_made(2);
    s.stop_task();

    let names = s.templates();
    assert_eq!(names.len(), 1, "{names:?}");
    let images = std::path::Path::new("/var/lib/trenv/templates")
        .join(format!("@{NAMESPACE}"))
        .join(&names[0])
        .join("images");
    let core = trenv_integration::core_image(&images);
    trenv_integration::flip_mode(&core);
    let (_, ip) = s.start_task();
    assert_answers(&s, &ip, "after a modified template");
    s.wait_made(3);
    s.stop_task();

    let (_, ip) = s.start_task();
    assert_answers(&s, &ip, "restored from the template made anew");
    s.stop_task();
    let records = wait_records(&s, 4);
    let starts: Vec<&str> = records.iter().filter_map(|r| r["start"].as_str()).collect();
    assert_eq!(starts, ["cold", "cold", "cold", "template"], "{records:#?}");
    assert_eq!(s.templates(), names);
}
