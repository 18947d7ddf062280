//! Sandbox repurposing through a real containerd (docs/sandboxes.md): a container's
//! network, IPC and UTS namespaces go to the node's idle pool when it is deleted, and the
//! next compatible container of its tenant — another function, another image — runs in
//! them, purged.
//!
//! The leak probe: function A (the Python image) leaves behind everything a function can
//! leave — files in /, /tmp, /var and /dev/shm, SysV shared memory, a semaphore set, a
//! message queue, a POSIX message queue, its hostname, a TCP listener, an abstract unix
//! socket, a double-forked background process, an environment variable — then exits.
//! Function B (busybox) is given A's sandbox (the same network namespace) and reports what
//! it sees; the report must be the one of a cold start of B in namespaces of its own. Each
//! test works in a containerd namespace of its own: its tenant, whose sandboxes no other
//! test can take.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use trenv_integration::api::Containerd;
use trenv_integration::{BUSYBOX, Ctr, PYFN, RUNTIME, trenv_cli, unique_id};
use trenv_runtime::sandbox::{Kind, Pins};

const REPORT_SH: &str = include_str!("fixtures/sandbox-report.sh");
const LEAVE_PY: &str = include_str!("fixtures/sandbox-leave.py");
/// Both functions may set their hostname and mount an mqueue filesystem to look at it.
const CAPS: [&str; 2] = ["--cap-add", "CAP_SYS_ADMIN"];
/// Asks for a pooled sandbox (trenv's config may have turned the pool off for the rest).
const REPURPOSE: [&str; 2] = ["--annotation", "io.trenv.repurpose=true"];

/// How a test starts its tasks.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `ctr run`.
    Ctr,
    /// `ctr container create`, then containerd's API (Tasks.Create + Start), as faasd.
    Api,
}

/// A test's namespace and its /out directory; removes its containers and sandboxes.
struct Probe {
    c: Ctr,
    out: tempfile::TempDir,
    ids: std::cell::RefCell<Vec<String>>,
}

impl Probe {
    fn new() -> Probe {
        let c = Ctr::from_env().with_namespace(&unique_id("trenv-sb"));
        c.ensure_images();
        c.ensure_image(PYFN);
        let out = tempfile::tempdir().unwrap();
        fs::write(out.path().join("report.sh"), REPORT_SH).unwrap();
        fs::write(out.path().join("leave.py"), LEAVE_PY).unwrap();
        Probe {
            c,
            out,
            ids: Default::default(),
        }
    }

    fn mount(&self) -> String {
        format!(
            "type=bind,src={},dst=/out,options=rbind:rw",
            self.out.path().display()
        )
    }

    /// Runs `image` with `args` (and `flags`) to its end.
    fn run(&self, via: Via, image: &str, flags: &[&str], args: &[&str]) -> String {
        let id = unique_id("sb");
        self.ids.borrow_mut().push(id.clone());
        let mount = self.mount();
        let mut a: Vec<&str> = match via {
            Via::Ctr => vec!["run", "--rm"],
            Via::Api => vec!["container", "create"],
        };
        a.extend(["--runtime", RUNTIME, "--mount", &mount]);
        a.extend(CAPS);
        if !flags.iter().any(|f| f.starts_with("io.trenv.repurpose=")) {
            a.extend(REPURPOSE);
        }
        a.extend(flags);
        a.extend([image, id.as_str()]);
        a.extend(args);
        self.c.run(&a).ok();
        if via == Via::Api {
            let api = Containerd::from_env(&self.c.namespace).unwrap();
            api.start_task(&id).unwrap();
            assert!(
                self.c.wait_status(&id, "STOPPED", Duration::from_secs(60)),
                "{id} did not end"
            );
            self.c.run(&["task", "delete", &id]).ok();
            self.c.run(&["container", "delete", &id]).ok();
        }
        id
    }

    /// Function A: leaves everything behind; its own report.
    fn leave(&self, via: Via) -> Report {
        self.run(
            via,
            PYFN,
            &["--env", "PROBE_A=1"],
            &["python3", "/out/leave.py"],
        );
        self.report("a")
    }

    /// Function B (busybox): its report `name`.
    fn look(&self, via: Via, name: &str, flags: &[&str]) -> Report {
        self.run(via, BUSYBOX, flags, &["sh", "/out/report.sh", name]);
        self.report(name)
    }

    fn report(&self, name: &str) -> Report {
        let p = self.out.path().join(format!("report.{name}"));
        Report(fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    }

    /// `trenv pool list --json` of this test's tenant.
    fn pool(&self) -> Vec<serde_json::Value> {
        let out = trenv_cli()
            .args(["pool", "list", "--json", "--tenant", &self.c.namespace])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.c.run(&["task", "delete", "-f", id]);
            let _ = self.c.run(&["container", "delete", id]);
        }
        let _ = trenv_cli()
            .args(["pool", "drain", "--tenant", &self.c.namespace])
            .output();
        self.c.remove_namespace();
    }
}

/// A function's report: one "what value" line per thing.
#[derive(Debug, Clone, PartialEq)]
struct Report(String);

impl Report {
    fn get(&self, what: &str) -> &str {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(what))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {what:?} in {}", self.0))
    }

    /// Everything but the network namespace's identity.
    fn without_net(&self) -> String {
        self.0
            .lines()
            .filter(|l| !l.starts_with("net "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A's report shows that it really left each thing behind (so B's cannot pass vacuously).
fn assert_left_everything(a: &Report) {
    assert!(a.get("ls /:").contains("probe-root"), "{a:?}");
    for d in ["ls /tmp:", "ls /var:", "ls /dev/shm:"] {
        assert!(a.get(d).contains("probe"), "{d} {a:?}");
    }
    for t in ["sysv shm", "sysv sem", "sysv msg"] {
        assert_eq!(a.get(t), "1", "{t} {a:?}");
    }
    assert!(a.get("mqueues:").contains("probe"), "{a:?}");
    assert_eq!(a.get("hostname"), "probe-a");
    assert_ne!(a.get("tcp"), "0 0", "{a:?}");
    assert_ne!(a.get("abstract unix"), "0", "{a:?}");
    assert_eq!(a.get("python"), "2", "A and its background process: {a:?}");
    assert_eq!(a.get("env"), "1");
}

/// B, cold in namespaces of its own, then B in A's sandbox: the same report but for the
/// network namespace, which is A's.
fn probe(via: Via) {
    let p = Probe::new();
    let cold = p.look(via, "cold", &["--annotation", "io.trenv.repurpose=false"]);
    let a = p.leave(via);
    assert_left_everything(&a);
    let b = p.look(via, "b", &[]);
    assert_eq!(b.get("net"), a.get("net"), "B was not given A's sandbox");
    // (Not compared: cold's network namespace with A's. Cold's is gone before A's is made,
    // and the kernel reuses a freed namespace's inode number at once.)
    assert_eq!(b.without_net(), cold.without_net(), "B found traces of A");
    let pool = p.pool();
    assert_eq!(pool.len(), 1, "{pool:?}");
    assert_eq!(pool[0]["state"], "idle");
    assert_eq!(pool[0]["uses"], 2);
}

#[test]
fn a_function_finds_nothing_of_the_previous_one_in_its_repurposed_sandbox_through_ctr() {
    probe(Via::Ctr);
}

#[test]
fn a_function_finds_nothing_of_the_previous_one_in_its_repurposed_sandbox_through_the_api() {
    probe(Via::Api);
}

/// The same with B restored from a template: CRIU joins A's kept namespaces.
#[test]
fn a_function_restored_from_a_template_finds_nothing_of_the_previous_one() {
    let p = Probe::new();
    let cold = p.look(
        Via::Ctr,
        "cold",
        &["--annotation", "io.trenv.repurpose=false"],
    );
    // B's template: B waits for /out/go, then reports. One process: it waits in the
    // shell's own `read`, on a FIFO of /out.
    nix_mkfifo(&p.out.path().join("fifo"));
    let src = unique_id("sb-src");
    p.ids.borrow_mut().push(src.clone());
    let mount = p.mount();
    let wait = "while [ ! -e /out/go ]; do read -t 0.05 x <> /out/fifo; done; \
                . /out/report.sh $0";
    let mut a = vec!["run", "-d", "--runtime", RUNTIME, "--mount", &mount];
    a.extend(CAPS);
    a.extend(REPURPOSE);
    a.extend([BUSYBOX, src.as_str(), "sh", "-c", wait, "tpl"]);
    p.c.run(&a).ok();
    std::thread::sleep(Duration::from_millis(300));
    let name = format!("probe-{}", std::process::id());
    let made = trenv_cli()
        .args(["template", "create", &name, "--from", &src])
        .args(["-n", &p.c.namespace])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    p.c.remove(&src);
    let a = p.leave(Via::Ctr);
    assert_left_everything(&a);
    fs::write(p.out.path().join("go"), "").unwrap();
    let annotation = format!("io.trenv.template={name}");
    // The restoring spec is the template's source's (a restore refuses other arguments).
    p.run(
        Via::Ctr,
        BUSYBOX,
        &["--annotation", &annotation],
        &["sh", "-c", wait, "tpl"],
    );
    let b = p.report("tpl");
    let _ = trenv_cli()
        .args(["template", "rm", &name, "-n", &p.c.namespace])
        .output();
    assert_eq!(b.get("net"), a.get("net"), "B was not given A's sandbox");
    // The restored process is the template's sh (its report says so); everything else
    // must look as in a cold start.
    assert_eq!(b.without_net(), cold.without_net(), "B found traces of A");
}

fn nix_mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// A sandbox of tenant X is never given to tenant Y, however idle.
#[test]
fn a_sandbox_never_crosses_tenants() {
    let x = Probe::new();
    let y = Probe::new();
    let in_x = x.look(Via::Ctr, "x", &[]);
    let in_y = y.look(Via::Ctr, "y", &[]);
    assert_ne!(in_x.get("net"), in_y.get("net"));
    let (px, py) = (x.pool(), y.pool());
    assert_eq!((px.len(), py.len()), (1, 1), "{px:?} {py:?}");
    assert_ne!(px[0]["id"], py[0]["id"]);
    assert_eq!(px[0]["uses"], 1);
}

/// `trenv pool drain` destroys a tenant's idle sandboxes: their namespaces are unpinned,
/// their directories and memory cgroups gone. An idle sandbox's memory (what the pool's
/// memory bound counts) was measured in its own cgroup when it was purged.
#[test]
fn draining_the_pool_leaves_nothing() {
    let p = Probe::new();
    p.look(Via::Ctr, "one", &[]);
    let pool = p.pool();
    assert_eq!(pool.len(), 1);
    let id = pool[0]["id"].as_str().unwrap().to_string();
    let dir = PathBuf::from("/run/trenv/sandboxes").join(&id);
    let pins = Pins::at(&dir);
    assert!(pins.inodes().is_ok(), "the sandbox's namespaces are pinned");
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&id),
        "pinned in the node's pin store, not in the host's mount table"
    );
    let account = [
        "/sys/fs/cgroup/memory/trenv-sandboxes",
        "/sys/fs/cgroup/trenv-sandboxes",
    ]
    .iter()
    .map(|d| PathBuf::from(d).join(&id))
    .find(|d| d.is_dir())
    .expect("the sandbox's memory cgroup");
    let memory = pool[0]["memory"].as_u64().unwrap();
    assert!(
        (16 << 10..16 << 20).contains(&memory),
        "an idle sandbox's namespaces hold {memory} bytes"
    );
    let out = trenv_cli()
        .args(["pool", "drain", "--tenant", &p.c.namespace, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["destroyed"], serde_json::json!([id]));
    assert!(!dir.exists());
    assert!(!account.exists(), "{} left", account.display());
    let mounts = trenv_runtime::sandbox::store::mounts().unwrap();
    assert!(!mounts.contains(&id), "pins left mounted");
    assert!(pins.inodes().is_err(), "pins left");
    assert!(p.pool().is_empty());
}

/// With `io.trenv.network`, a sandbox gets an interface and address from the CNI plugins
/// (config/cni/20-trenv-fn.conflist) once: a function reaches a peer on the bridge, the
/// next function in the same sandbox has the same address, and draining the pool runs CNI
/// DEL (the address is free again).
#[test]
fn a_function_on_a_cni_network_reaches_a_peer_and_keeps_its_address_when_repurposed() {
    let p = Probe::new();
    fs::write(p.out.path().join("hello"), "hello from the peer\n").unwrap();
    let net = "io.trenv.network=trenv-fn";
    let peer = unique_id("sb-peer");
    p.ids.borrow_mut().push(peer.clone());
    let mount = p.mount();
    let mut a = vec!["run", "-d", "--runtime", RUNTIME, "--mount", &mount];
    a.extend([
        "--annotation",
        net,
        "--annotation",
        "io.trenv.repurpose=false",
    ]);
    a.extend([
        BUSYBOX,
        peer.as_str(),
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/out",
    ]);
    p.c.run(&a).ok();
    let peer_addr =
        trenv_integration::exec(&p.c, &peer, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    let peer_ip = peer_addr
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on the peer's eth0: {peer_addr:?}"))
        .to_string();
    let script = format!(
        "ip -4 -o addr show eth0 | awk '{{print $4}}' > /out/addr.$0; \
         printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | nc {peer_ip} 8080 | tail -n 1 > /out/got.$0"
    );
    for f in ["f1", "f2"] {
        let function = format!("io.trenv.function={f}");
        p.run(
            Via::Ctr,
            BUSYBOX,
            &["--annotation", net, "--annotation", &function],
            &["sh", "-c", &script, f],
        );
        let got = fs::read_to_string(p.out.path().join(format!("got.{f}"))).unwrap_or_default();
        assert_eq!(got, "hello from the peer\n", "{f} did not reach the peer");
    }
    let read = |f: &str| fs::read_to_string(p.out.path().join(format!("addr.{f}"))).unwrap();
    let (a1, a2) = (read("f1"), read("f2"));
    assert!(a1.starts_with("10.89."), "{a1:?}");
    assert_eq!(a1, a2, "the address did not survive repurposing");
    let pool = p.pool();
    let kept: Vec<_> = pool
        .iter()
        .filter(|r| r["network"] == "trenv-fn" && r["state"] == "idle")
        .collect();
    assert_eq!(kept.len(), 1, "{pool:?}");
    assert_eq!(kept[0]["uses"], 2);
    p.c.remove(&peer);
    let ip = a1.trim().split('/').next().unwrap().to_string();
    let lease = PathBuf::from("/var/lib/cni/networks/trenv-fn").join(&ip);
    assert!(lease.exists(), "host-local holds {ip} for the idle sandbox");
    let out = trenv_cli()
        .args(["pool", "drain", "--tenant", &p.c.namespace])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!lease.exists(), "CNI DEL did not free {ip}");
}

/// Bad sandbox annotations are INVALID_ARGUMENT errors naming the annotation, and leave
/// nothing behind; so is a network that does not exist.
#[test]
fn bad_sandbox_annotations_and_unknown_networks_are_clear_errors() {
    let p = Probe::new();
    for (annotation, says) in [
        ("io.trenv.repurpose=maybe", "expected true or false"),
        (
            "io.trenv.network=../x",
            "expected the name of a CNI network",
        ),
        (
            "io.trenv.network=no-such-net",
            "no CNI network \"no-such-net\"",
        ),
    ] {
        let id = unique_id("sb-bad");
        let mount = p.mount();
        let r = p.c.run(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &mount,
            "--annotation",
            annotation,
            BUSYBOX,
            &id,
            "true",
        ]);
        assert_ne!(r.code, 0, "{annotation} was accepted");
        assert!(r.stderr.contains(says), "{annotation}: {}", r.stderr);
        let _ = p.c.run(&["container", "delete", &id]);
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&id), "{annotation} left a mount");
    }
    assert!(p.pool().is_empty(), "{:?}", p.pool());
}

/// A sandboxed container's writable layer is a tmpfs of its own, sized by its memory
/// limit, whose pages its metering record's peak counts; `io.trenv.scratch=disk` keeps
/// containerd's snapshot. Neither leaves a mount behind, and the record says where the
/// container started.
#[test]
fn the_writable_layer_is_in_memory_counted_in_the_peak_and_gone_after() {
    let p = Probe::new();
    // Writes 48 MiB, says where its root is and how big, and waits to be looked at.
    let script = "dd if=/dev/zero of=/big bs=1M count=48 2>/dev/null; \
                  grep ' / / ' /proc/self/mountinfo > /out/root.$0; \
                  df -k / | tail -n 1 | awk '{print $2}' > /out/size.$0; \
                  touch /out/done.$0; exec sleep 60";
    let read = |f: &str| fs::read_to_string(p.out.path().join(f)).unwrap_or_default();
    // The container's shared memory (tmpfs pages) as its cgroup counts it.
    let shmem = |id: &str| {
        let ns = &p.c.namespace;
        let stat = [
            format!("/sys/fs/cgroup/memory/{ns}/{id}/memory.stat"),
            format!("/sys/fs/cgroup/{ns}/{id}/memory.stat"),
        ]
        .iter()
        .find_map(|f| fs::read_to_string(f).ok())
        .unwrap_or_default();
        stat.lines()
            .find_map(|l| l.strip_prefix("shmem "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no shmem in {id}'s memory.stat: {stat}"))
    };
    let mut ids = Vec::new();
    for (name, extra) in [
        ("mem", Some("--memory-limit=268435456")),
        ("disk", Some("io.trenv.scratch=disk")),
        ("nolimit", None),
    ] {
        let id = unique_id("sb-scratch");
        p.ids.borrow_mut().push(id.clone());
        let mount = p.mount();
        let mut a = vec!["run", "-d", "--runtime", RUNTIME, "--mount", &mount];
        a.extend(REPURPOSE);
        match extra {
            Some(limit) if limit.starts_with("--") => a.push(limit),
            Some(annotation) => a.extend(["--memory-limit=268435456", "--annotation", annotation]),
            None => {}
        }
        a.extend([BUSYBOX, id.as_str(), "sh", "-c", script, name]);
        p.c.run(&a).ok();
        let start = std::time::Instant::now();
        while !p.out.path().join(format!("done.{name}")).exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} never wrote"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let charged = shmem(&id);
        p.c.remove(&id);
        ids.push((name, id, charged));
    }
    let (mem, disk) = (&ids[0], &ids[1]);
    // Without a memory limit nothing bounds a tmpfs: the snapshot on disk is kept.
    assert!(!read("root.nolimit").contains("/scratch/upper"));
    assert!(ids[2].2 < 8 << 20, "{}", ids[2].2);
    // The file's pages are shared memory charged to the function (on disk they are page
    // cache instead, which the kernel may reclaim).
    assert!(mem.2 >= 48 << 20, "tmpfs pages not charged: {}", mem.2);
    assert!(disk.2 < 8 << 20, "{}", disk.2);
    let root = read("root.mem");
    assert!(
        root.contains("/scratch/upper"),
        "upper layer not in scratch: {root}"
    );
    assert_eq!(
        read("size.mem").trim(),
        "262144",
        "tmpfs sized by the memory limit"
    );
    assert!(!read("root.disk").contains("/scratch/upper"));
    let dir = trenv_integration::meter_dir();
    let m = trenv_integration::record_in(&dir, &mem.1, "");
    let d = trenv_integration::record_in(&dir, &disk.1, "");
    let peak = m["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak >= 48 << 20, "the peak misses the written file: {m}");
    assert_eq!(
        (m["start"].as_str(), m["sandbox"].as_str()),
        (Some("cold"), Some("new"))
    );
    assert_eq!(d["sandbox"], "repurposed");
    let previous = d["previous_function"].as_str().unwrap_or_default();
    assert!(previous.starts_with("process:"), "{d}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for (_, id, _) in &ids {
        let left = format!("{id}/.trenv/scratch");
        assert!(!mounts.contains(&left), "a scratch tmpfs is left: {mounts}");
    }
}

/// The network namespace of a sandbox, from its pinned file, and that file held open. While
/// it is held the namespace, and so its inode number, stays allocated: the kernel reuses a
/// freed namespace's number at once, so a namespace made after this one was destroyed
/// could otherwise show the same `net:[…]` (a test that compared them failed once so).
fn sandbox_net(id: &str) -> (String, fs::File) {
    let p = Pins::at(&PathBuf::from("/run/trenv/sandboxes").join(id))
        .path(Kind::Net)
        .unwrap();
    let pin = fs::File::open(&p).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&pin.metadata().unwrap());
    (format!("net:[{ino}]"), pin)
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill takes a pid and a signal number.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signalling {pid}");
}

/// The shim server of container `id`.
fn shim_of(id: &str) -> i32 {
    let servers = trenv_integration::cri::shim_servers(&format!("-id {id} "));
    assert_eq!(servers.len(), 1, "the shim of {id}: {servers:?}");
    servers[0]
}

/// A shim killed while its container runs leaves its sandbox held by a process that is
/// gone: it is never handed out, and the next container's take destroys it.
#[test]
fn a_sandbox_whose_shim_was_killed_is_destroyed_not_handed_out() {
    let p = Probe::new();
    let a = unique_id("sb-killed");
    p.ids.borrow_mut().push(a.clone());
    p.c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        REPURPOSE[0],
        REPURPOSE[1],
        BUSYBOX,
        &a,
        "sleep",
        "3600",
    ])
    .ok();
    let pool = p.pool();
    assert_eq!(pool.len(), 1, "{pool:?}");
    let sb = pool[0]["id"].as_str().unwrap().to_string();
    let (held, _held_ns) = sandbox_net(&sb);
    signal(shim_of(&a), libc::SIGKILL);
    let _ = p.c.run(&["task", "delete", "-f", &a]);
    let _ = p.c.run(&["container", "delete", &a]);
    let b = p.look(Via::Ctr, "after-kill", &[]);
    assert_ne!(
        b.get("net"),
        held,
        "the killed shim's sandbox was handed out"
    );
    assert!(
        !PathBuf::from("/run/trenv/sandboxes").join(&sb).exists(),
        "the abandoned sandbox was not destroyed"
    );
}

/// A shim killed in the middle of a purge: the sandbox is never handed out half-purged.
/// Function A leaves thousands of SysV objects so that the purge takes a while; the test
/// stops the shim as soon as the sandbox's record says "purging", checks that it still
/// does, and kills the shim. (If the purge was over before the shim was stopped, the
/// scenario is run again; it must be caught within five tries.)
#[test]
fn a_shim_killed_mid_purge_never_hands_out_a_half_purged_sandbox() {
    let p = Probe::new();
    let leave = "import ctypes\n\
                 libc = ctypes.CDLL(None)\n\
                 for k in range(3000):\n    libc.shmget(0x6000 + k, 4096, 0o1600)\n\
                 for k in range(3000):\n    libc.msgget(0x9000 + k, 0o1600)\n\
                 open('/out/left', 'w').write('ok')\n";
    fs::write(p.out.path().join("many.py"), leave).unwrap();
    for attempt in 0..5 {
        let a = unique_id("sb-midpurge");
        p.ids.borrow_mut().push(a.clone());
        let _ = fs::remove_file(p.out.path().join("left"));
        let mount = p.mount();
        let mut args = vec!["run", "-d", "--runtime", RUNTIME, "--mount", &mount];
        args.extend(CAPS);
        args.extend(REPURPOSE);
        args.extend([
            PYFN,
            a.as_str(),
            "sh",
            "-c",
            "python3 /out/many.py && sleep 3600",
        ]);
        p.c.run(&args).ok();
        let start = std::time::Instant::now();
        while !p.out.path().join("left").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "A never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sb = p
            .pool()
            .into_iter()
            .find(|r| r["container"] == a.as_str())
            .and_then(|r| r["id"].as_str().map(str::to_string))
            .expect("A's sandbox");
        let record = PathBuf::from("/run/trenv/sandboxes")
            .join(&sb)
            .join("sandbox.json");
        let shim = shim_of(&a);
        p.c.run(&["task", "kill", "-s", "SIGKILL", &a]).ok();
        assert!(p.c.wait_status(&a, "STOPPED", Duration::from_secs(30)));
        let mut rm = p.c.cmd(&["task", "delete", &a]).spawn().unwrap();
        let start = std::time::Instant::now();
        let mut caught = false;
        while start.elapsed() < Duration::from_secs(10) {
            let state = fs::read_to_string(&record).unwrap_or_default();
            if state.contains("\"purging\"") {
                signal(shim, libc::SIGSTOP);
                caught = fs::read_to_string(&record)
                    .unwrap_or_default()
                    .contains("\"purging\"");
                signal(shim, libc::SIGKILL);
                break;
            }
            if state.contains("\"idle\"") || state.is_empty() {
                break;
            }
        }
        let _ = rm.wait();
        let _ = p.c.run(&["task", "delete", "-f", &a]);
        let _ = p.c.run(&["container", "delete", &a]);
        if !caught {
            eprintln!("attempt {attempt}: the purge ended before the shim was stopped");
            continue;
        }
        let (half, _half_ns) = sandbox_net(&sb);
        let b = p.look(Via::Ctr, "after-midpurge", &[]);
        assert_ne!(b.get("net"), half, "a half-purged sandbox was handed out");
        assert_eq!(b.get("sysv shm"), "0");
        assert!(
            !PathBuf::from("/run/trenv/sandboxes").join(&sb).exists(),
            "the half-purged sandbox was not destroyed"
        );
        return;
    }
    panic!("the purge was never caught in progress in five tries");
}
