//! The small function platform the benchmark acts as: for each function, its templates (made
//! once by the shim from a source container, as `io.trenv.template.create` does it) and a
//! model container per start mode; starting an instance in a mode through containerd's
//! API, finding its address on the CNI bridge, forwarding a request to it, and removing it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trenv_integration::function::{self, Function, Instance};
use trenv_integration::{BUSYBOX, Ctr, RUNTIME};
use trenv_runtime::sandbox::network::Cni;
use trenv_runtime::sandbox::network::NetTarget;

use super::STOP;
use super::containers::{Conn, Model};

/// How an instance starts: the four modes of issue 17, and (f) of issue 18.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// (a) runc.v2 cold start, CNI ADD on its network namespace before Start (as faasd).
    Runc,
    /// (c) vanilla CRIU restore: a `copy` template, in a fresh sandbox.
    Copy,
    /// (d) trenv template restore (`map`), in a fresh sandbox.
    Map,
    /// (e) trenv template restore into a sandbox repurposed from another function.
    Repurposed,
    /// (f) an instance the tenant's shared shim restored ahead (its reserve,
    /// shim/src/reserve.rs), taken by the Create: as (e) plus `io.trenv.shim=shared` and a
    /// memory limit (the reserve is for containers whose writable layer is in memory).
    Reserve,
}

/// The memory limit of mode (f)'s containers: above every function's need.
const RESERVE_MEMORY_LIMIT: &str = "2147483648";

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Runc,
        Mode::Copy,
        Mode::Map,
        Mode::Repurposed,
        Mode::Reserve,
    ];

    pub fn letter(self) -> char {
        match self {
            Mode::Runc => 'a',
            Mode::Copy => 'c',
            Mode::Map => 'd',
            Mode::Repurposed => 'e',
            Mode::Reserve => 'f',
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mode::Runc => "runc_cold",
            Mode::Copy => "copy_restore",
            Mode::Map => "map_restore",
            Mode::Repurposed => "repurposed_restore",
            Mode::Reserve => "reserve_restore",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Runc => "(a) runc.v2 cold + CNI",
            Mode::Copy => "(c) CRIU restore (copy), fresh sandbox",
            Mode::Map => "(d) template restore (map), fresh sandbox",
            Mode::Repurposed => "(e) template restore, repurposed sandbox",
            Mode::Reserve => "(f) from the shared shim's reserve (restored ahead)",
        }
    }

    pub fn from_letter(c: &str) -> Option<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| c.len() == 1 && c.starts_with(m.letter()))
    }

    /// Whether it restores from a template.
    pub fn restores(self) -> bool {
        self != Mode::Runc
    }
}

/// The two templates of one function.
pub struct Templates {
    pub copy: String,
    pub map: String,
    /// Their pool files' allocated size (the memory they hold in a tmpfs pool), KiB.
    pub copy_pool_kib: u64,
    pub map_pool_kib: u64,
    /// The map template's pool file (its mappings are the instances' shared pages).
    pub map_pool_path: String,
    /// What `trenv template inspect` says of their conversion.
    pub conversion: Value,
}

/// An instance just started, and what its start took.
pub struct Started {
    pub instance: Instance,
    /// The container record and snapshot (Containers.Create), ms.
    pub container_ms: f64,
    /// Tasks.Create (+ CNI ADD for runc) + Tasks.Start, ms.
    pub running_ms: f64,
    /// When Tasks.Create was asked for.
    pub created_at: Instant,
}

pub struct Platform {
    pub ctr: Ctr,
    pub namespace: String,
    /// Every container, template and lease of this run starts with it.
    pub prefix: String,
    pub functions: Vec<Function>,
    /// Per function (index as `functions`), if they could be made.
    pub templates: Vec<Option<Templates>>,
    models: HashMap<(usize, Mode), Model>,
    /// busybox in mode (e): the "other function" when only one function runs.
    other: Option<Model>,
    cni: Cni,
    seq: AtomicU64,
    /// `--warmup`: requests (the function's first check) each template's source serves
    /// before the shim takes the template (`io.trenv.template.warmup`); 0: none.
    pub warmup: u32,
}

/// The `trenv` CLI ($TRENV_CLI or `trenv` on PATH).
pub fn trenv_cli() -> Command {
    Command::new(std::env::var("TRENV_CLI").unwrap_or_else(|_| "trenv".into()))
}

impl Platform {
    pub fn new(
        ctr: Ctr,
        namespace: &str,
        prefix: &str,
        functions: Vec<Function>,
    ) -> Result<Platform, String> {
        let cni = function::cni()?;
        cni.find(function::NETWORK).map_err(|e| e.to_string())?;
        let n = functions.len();
        Ok(Platform {
            ctr,
            namespace: namespace.to_string(),
            prefix: prefix.to_string(),
            functions,
            templates: (0..n).map(|_| None).collect(),
            models: HashMap::new(),
            other: None,
            cni,
            seq: AtomicU64::new(0),
            warmup: 0,
        })
    }

    /// A container id of this run, unique: `PREFIX-TAG-N`.
    pub fn new_id(&self, tag: &str) -> String {
        format!(
            "{}-{tag}-{}",
            self.prefix,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Whether function `f` can start in `mode`.
    pub fn can(&self, f: usize, mode: Mode) -> bool {
        self.models.contains_key(&(f, mode))
    }

    /// The templates of every function, made by the shim: per function, two source
    /// containers (one annotated `io.trenv.template.policy=copy`) started at once on the
    /// network, each annotated `io.trenv.template.create=NAME`; the shim makes the template once the
    /// function created /tmp/.lock. No request goes to a source (CRIU may be dumping it);
    /// it is removed once `trenv template inspect` finds the template. A function whose
    /// templates cannot be made is reported and runs in mode (a) only.
    pub fn make_templates(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for f in 0..self.functions.len() {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            let name = self.functions[f].name.clone();
            let started = Instant::now();
            match self.make_templates_of(f) {
                Ok(t) => {
                    eprintln!(
                        "[bench] templates of {name} made in {:.1} s (map: {} MiB in the pool)",
                        started.elapsed().as_secs_f64(),
                        t.map_pool_kib >> 10
                    );
                    self.templates[f] = Some(t);
                }
                Err(e) => {
                    eprintln!("[bench] no templates of {name}: {e}");
                    problems.push(format!("{name}: {e}"));
                }
            }
        }
        problems
    }

    fn make_templates_of(&self, f: usize) -> Result<Templates, String> {
        let func = &self.functions[f];
        let copy = format!("{}-{}-copy", self.prefix, func.name);
        let map = format!("{}-{}-map", self.prefix, func.name);
        let mut sources = Vec::new();
        let log = ShimLog::here();
        let result = (|| {
            for (template, policy) in [(&copy, Some("copy")), (&map, None)] {
                let src = self.new_id(&format!("src-{}", func.name));
                sources.push(src.clone());
                let create = format!("io.trenv.template.create={template}");
                let policy = policy.map(|p| format!("io.trenv.template.policy={p}"));
                // On the network as its instances will be: a sandbox without one has `lo`
                // down, and a function that checks itself over 127.0.0.1 (chameleon's
                // gunicorn) would never get ready.
                let network = format!("io.trenv.network={}", function::NETWORK);
                let mut a = vec!["run", "-d", "--runtime", RUNTIME, "--annotation", &create];
                a.extend(["--annotation", network.as_str()]);
                if let Some(p) = &policy {
                    a.extend(["--annotation", p.as_str()]);
                }
                let warmup = [
                    "io.trenv.template.warmup=POST http://127.0.0.1:8080/".to_string(),
                    format!("io.trenv.template.warmup-body={}", func.checks[0].request),
                    format!("io.trenv.template.warmup-requests={}", self.warmup),
                ];
                if self.warmup > 0 {
                    for w in &warmup {
                        a.extend(["--annotation", w.as_str()]);
                    }
                }
                a.extend([func.image.as_str(), src.as_str()]);
                let r = self.ctr.run(&a);
                if r.code != 0 {
                    return Err(format!("source {src}: {}", r.stderr.trim()));
                }
            }
            let copy_info = self.wait_template(&copy, &sources[0], &log)?;
            let map_info = self.wait_template(&map, &sources[1], &log)?;
            let pool = |info: &Value| info["pool"]["path"].as_str().unwrap_or("").to_string();
            Ok(Templates {
                copy_pool_kib: allocated_kib(&pool(&copy_info)),
                map_pool_kib: allocated_kib(&pool(&map_info)),
                map_pool_path: pool(&map_info),
                conversion: json!({
                    "copy": copy_info["conversion"],
                    "map": map_info["conversion"],
                }),
                copy: copy.clone(),
                map: map.clone(),
            })
        })();
        for s in &sources {
            self.ctr.remove(s);
        }
        if result.is_err() {
            for t in [&copy, &map] {
                let _ = trenv_cli()
                    .args(["template", "rm", t, "-n", &self.namespace])
                    .output();
            }
        }
        result
    }

    /// Waits (at most three minutes) until template `name` exists; its manifest.
    fn wait_template(&self, name: &str, source: &str, log: &ShimLog) -> Result<Value, String> {
        let start = Instant::now();
        let mut checked = Instant::now();
        loop {
            if let Some(why) = log.template_failure(name) {
                return Err(why);
            }
            let out = trenv_cli()
                .args(["template", "inspect", name, "-n", &self.namespace])
                .output()
                .map_err(|e| format!("running trenv: {e}"))?;
            if out.status.success() {
                return serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("trenv template inspect {name}: {e}"));
            }
            if STOP.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            if checked.elapsed() > Duration::from_secs(5) {
                checked = Instant::now();
                if self.ctr.task_status(source).as_deref() != Some("RUNNING") {
                    return Err(format!(
                        "its source {source} stopped before template {name} was made (the \
                         shim's log, in containerd's, says why)"
                    ));
                }
            }
            if start.elapsed() > Duration::from_secs(180) {
                return Err(format!(
                    "template {name} not made within 180 s (the shim's log, in containerd's, \
                     says why)"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The model containers (`ctr containers create`, never started) that instances are
    /// copied from: per function and mode, and busybox for (e)'s "other function" when
    /// there is a single function.
    pub fn make_models(&mut self, conn: &Conn, modes: &[Mode]) -> Result<(), String> {
        let network = format!("io.trenv.network={}", function::NETWORK);
        for f in 0..self.functions.len() {
            for &mode in modes {
                let Some(flags) = self.flags(f, mode, &network) else {
                    continue;
                };
                let id = format!(
                    "{}-model-{}-{}",
                    self.prefix,
                    self.functions[f].name,
                    mode.letter()
                );
                let mut a = vec!["containers", "create"];
                a.extend(flags.iter().map(String::as_str));
                a.extend([self.functions[f].image.as_str(), id.as_str()]);
                let r = self.ctr.run(&a);
                if r.code != 0 {
                    return Err(format!("creating model {id}: {}", r.stderr.trim()));
                }
                self.models.insert((f, mode), conn.model(&id)?);
            }
        }
        if modes.contains(&Mode::Repurposed) {
            let id = format!("{}-model-other", self.prefix);
            let r = self.ctr.run(&[
                "containers",
                "create",
                "--runtime",
                RUNTIME,
                "--annotation",
                &network,
                "--annotation",
                "io.trenv.repurpose=true",
                "--annotation",
                "io.trenv.function=other",
                BUSYBOX,
                &id,
                "sleep",
                "1000",
            ]);
            if r.code != 0 {
                return Err(format!("creating model {id}: {}", r.stderr.trim()));
            }
            self.other = Some(conn.model(&id)?);
        }
        Ok(())
    }

    /// `ctr containers create` flags of function `f` in `mode`; None if it has no template.
    fn flags(&self, f: usize, mode: Mode, network: &str) -> Option<Vec<String>> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let restore = |template: &str, repurpose: &str| {
            s(&[
                "--runtime",
                RUNTIME,
                "--annotation",
                &format!("io.trenv.template={template}"),
                "--annotation",
                network,
                "--annotation",
                &format!("io.trenv.repurpose={repurpose}"),
            ])
        };
        let t = self.templates[f].as_ref();
        match mode {
            Mode::Runc => Some(s(&["--runtime", function::RUNC])),
            Mode::Copy => t.map(|t| restore(&t.copy, "false")),
            Mode::Map => t.map(|t| restore(&t.map, "false")),
            Mode::Repurposed => t.map(|t| restore(&t.map, "true")),
            Mode::Reserve => t.map(|t| {
                let mut a = restore(&t.map, "true");
                a.extend(s(&[
                    "--annotation",
                    "io.trenv.shim=shared",
                    "--memory-limit",
                    RESERVE_MEMORY_LIMIT,
                ]));
                a
            }),
        }
    }

    /// Starts an instance of function `f` in `mode` as container `id`: the container copied
    /// from the model, then its task created and started through containerd's API (for
    /// runc, CNI ADD on the task's network namespace in between, as faasd does); returns
    /// once the task runs, with its address on the bridge.
    pub fn start(&self, conn: &Conn, f: usize, mode: Mode, id: &str) -> Result<Started, String> {
        let model = self.models.get(&(f, mode)).ok_or_else(|| {
            format!(
                "{} cannot start in mode ({})",
                self.functions[f].name,
                mode.letter()
            )
        })?;
        self.start_model(conn, model, mode, id)
    }

    fn start_model(
        &self,
        conn: &Conn,
        model: &Model,
        mode: Mode,
        id: &str,
    ) -> Result<Started, String> {
        let t0 = Instant::now();
        conn.create_like(model, id)?;
        let container_ms = ms(t0.elapsed());
        let created_at = Instant::now();
        let (pid, ip) = if mode == Mode::Runc {
            let pid = conn
                .tasks
                .create_task(id)
                .map_err(|e| format!("creating the task of {id}: {}", e.message()))?;
            let dir = function::runc_netns_dir(id);
            fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let _ = fs::remove_file(dir.join("net"));
            std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), dir.join("net"))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let attachment = self
                .cni
                .attach(&NetTarget::at(&dir), id, function::NETWORK, None)
                .map_err(|e| format!("CNI ADD for {id}: {e}"))?;
            conn.tasks
                .start(id, "")
                .map_err(|e| format!("starting {id}: {}", e.message()))?;
            let ip = attachment
                .addresses()
                .first()
                .and_then(|a| a.split('/').next())
                .map(str::to_string)
                .ok_or_else(|| format!("CNI gave {id} no address"))?;
            (pid as i32, ip)
        } else {
            let pid = conn.tasks.start_task(id)?.pid as i32;
            (pid, address_of(pid)?)
        };
        let running_ms = ms(created_at.elapsed());
        Ok(Started {
            instance: Instance {
                id: id.to_string(),
                pid,
                ip,
            },
            container_ms,
            running_ms,
            created_at,
        })
    }

    /// Forwards check `check` of function `f` to instance `i` until it is answered
    /// correctly: a cold function that does not listen yet refuses the connection and is
    /// asked again every 2 ms, for up to two minutes; a restored one listens already and
    /// gets ten seconds. Err names the last wrong answer, or says the instance is gone.
    pub fn forward(&self, f: usize, check: usize, i: &Instance, mode: Mode) -> Result<(), String> {
        let func = &self.functions[f];
        let c = &func.checks[check % func.checks.len()];
        let body = c.request.to_string();
        let patience = Duration::from_secs(if mode.restores() { 10 } else { 120 });
        let start = Instant::now();
        loop {
            let last = match function::request(&i.ip, "POST", "/", &body, Duration::from_secs(60)) {
                Ok(a) => {
                    let got = a.json();
                    if a.status == 200
                        && got["result"] == c.result
                        && got["function"] == func.name.as_str()
                    {
                        return Ok(());
                    }
                    format!(
                        "status {}: {}",
                        a.status,
                        a.body.chars().take(200).collect::<String>()
                    )
                }
                Err(e) => e,
            };
            if !alive(i.pid) {
                return Err(format!(
                    "{} at {} ({}): its process {} is gone (last answer: {last})",
                    func.name, i.ip, i.id, i.pid
                ));
            }
            if start.elapsed() > patience || STOP.load(Ordering::SeqCst) {
                return Err(format!(
                    "{} at {} ({}) never answered correctly (last: {last})",
                    func.name, i.ip, i.id
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes an instance: container, task and snapshot; for runc its CNI attachment.
    pub fn remove(&self, conn: &Conn, id: &str, mode: Mode) {
        if let Err(e) = conn.remove(id) {
            eprintln!("[bench] removing {id} through the API: {e}; with ctr");
            self.ctr.remove(id);
        }
        if mode == Mode::Runc {
            let dir = function::runc_netns_dir(id);
            let _ = self.cni.detach(&NetTarget::at(&dir), id);
            let _ = fs::remove_dir_all(&dir);
        }
    }

    /// Leaves the tenant's pool with exactly one idle sandbox, last used by a function other
    /// than `f`: the pool drained, then an instance of the next function (busybox if `f` is
    /// the only one) started in mode (e) and removed. Not timed.
    pub fn idle_sandbox_from_other(&self, conn: &Conn, f: usize) -> Result<(), String> {
        self.drain_pool()?;
        let n = self.functions.len();
        let other = (1..n)
            .map(|k| (f + k) % n)
            .find_map(|g| self.models.get(&(g, Mode::Repurposed)))
            .or(self.other.as_ref())
            .ok_or("no other function to leave a sandbox")?;
        let id = self.new_id("other");
        let started = self.start_model(conn, other, Mode::Repurposed, &id);
        self.remove(conn, &id, Mode::Repurposed);
        started.map(|_| ())
    }

    /// Leaves `n` idle sandboxes in the tenant's pool, last used by the functions in turn
    /// (mode (e)'s steady state before a workload): `n` instances started, then removed.
    pub fn prewarm_sandboxes(&self, conn: &Conn, n: usize) -> Result<(), String> {
        self.drain_pool()?;
        let ids: Vec<(String, usize)> = (0..n)
            .map(|i| (self.new_id("warm"), i % self.functions.len()))
            .collect();
        let mut result = Ok(());
        for (id, f) in &ids {
            if self.can(*f, Mode::Repurposed)
                && let Err(e) = self.start(conn, *f, Mode::Repurposed, id)
            {
                result = Err(e);
                break;
            }
        }
        for (id, _) in &ids {
            self.remove(conn, id, Mode::Repurposed);
        }
        result
    }

    /// Destroys the tenant's idle sandboxes.
    pub fn drain_pool(&self) -> Result<(), String> {
        let out = trenv_cli()
            .args(["pool", "drain", "--tenant", &self.namespace])
            .output()
            .map_err(|e| format!("running trenv pool drain: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "trenv pool drain: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Whether container `id` runs in a sandbox that ran something before it (`trenv pool
    /// list`: the sandbox it holds has more than one use); None if it holds none.
    pub fn repurposed(&self, id: &str) -> Option<bool> {
        let out = trenv_cli()
            .args(["pool", "list", "--json", "--tenant", &self.namespace])
            .output()
            .ok()?;
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .iter()
            .find(|r| r["container"] == id)
            .map(|r| r["uses"].as_u64().unwrap_or(0) > 1)
    }

    /// The resident size of the templates that `mode` restores from, all functions, KiB.
    pub fn templates_kib(&self, mode: Mode) -> u64 {
        self.templates
            .iter()
            .flatten()
            .map(|t| match mode {
                Mode::Runc => 0,
                Mode::Copy => t.copy_pool_kib,
                Mode::Map | Mode::Repurposed | Mode::Reserve => t.map_pool_kib,
            })
            .sum()
    }
}

/// containerd's log (`CONTAINERD_LOG`, which `containerd.sh env` exports), read from where
/// it ended when this was made: the shim logs why a template could not be made there.
pub struct ShimLog {
    path: Option<String>,
    from: u64,
}

impl ShimLog {
    pub fn here() -> ShimLog {
        let path = std::env::var("CONTAINERD_LOG").ok();
        let from = path
            .as_ref()
            .and_then(|p| fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        ShimLog { path, from }
    }

    /// The log's lines since this was made (at most 64 MiB of them).
    fn since(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Some(mut file) = self.path.as_ref().and_then(|p| fs::File::open(p).ok()) else {
            return String::new();
        };
        if file.seek(SeekFrom::Start(self.from)).is_err() {
            return String::new();
        }
        let mut raw = Vec::new();
        let _ = file.take(64 << 20).read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Whether the shim logged since that container `id` started from an instance of its
    /// reserve (mode (f): its `started` line says so).
    pub fn started_from_reserve(&self, id: &str) -> bool {
        let needle = format!("started {id} (");
        self.since()
            .lines()
            .any(|l| l.contains(&needle) && l.contains("from the reserve"))
    }

    /// The shim's message, if it logged since that template `name` will not be made.
    fn template_failure(&self, name: &str) -> Option<String> {
        self.path.as_ref()?;
        let text = self.since();
        let failed = format!("template {name} could not be made");
        let none = format!("no template {name}");
        let line = text.lines().find(|l| {
            l.contains(&failed)
                || l.match_indices(&none).any(|(i, m)| {
                    !l[i + m.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
                })
        })?;
        let msg = line.split("msg=\"").nth(1).unwrap_or(line);
        Some(msg.chars().take(600).collect())
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Allocated size of a file (a tmpfs pool file's resident memory), KiB; 0 if none.
pub fn allocated_kib(path: &str) -> u64 {
    if path.is_empty() {
        return 0;
    }
    fs::metadata(path).map_or(0, |m| m.blocks() * 512 / 1024)
}

/// The IPv4 address of process `pid`'s network namespace outside the loopback, from
/// /proc/PID/net/fib_trie (no process started, unlike `nsenter … ip addr`); falls back to
/// [`function::address_of`].
pub fn address_of(pid: i32) -> Result<String, String> {
    let trie = fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).unwrap_or_default();
    if let Some(ip) = local_address(&trie) {
        return Ok(ip);
    }
    function::address_of(pid)
}

/// The first host-scope LOCAL address of a fib_trie listing outside 127/8.
fn local_address(trie: &str) -> Option<String> {
    let mut last = None;
    for line in trie.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = Some(addr.trim().to_string());
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last.as_ref().filter(|a| !a.starts_with("127."))
        {
            return Some(a.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_of_a_fib_trie() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                    +-- 10.89.0.0/16 2 0 2\n        |-- 10.89.0.0\n           /16 link UNICAST\n        \
                    |-- 10.89.0.7\n           /32 host LOCAL\n  +-- 127.0.0.0/8 2 0 2\n     \
                    |-- 127.0.0.1\n        /32 host LOCAL\n";
        assert_eq!(local_address(trie).as_deref(), Some("10.89.0.7"));
        assert_eq!(
            local_address("Local:\n |-- 127.0.0.1\n /32 host LOCAL\n"),
            None
        );
    }

    #[test]
    fn modes_by_letter() {
        assert_eq!(Mode::from_letter("e"), Some(Mode::Repurposed));
        assert_eq!(Mode::from_letter("f"), Some(Mode::Reserve));
        assert_eq!(Mode::from_letter("b"), None);
        assert_eq!(Mode::from_letter("ab"), None);
    }
}
