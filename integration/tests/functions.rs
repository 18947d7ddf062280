//! The real functions (integration/functions/: HTTP functions in Python and Node.js, one
//! served by a watchdog parent, one by a gunicorn master and worker) answer correctly in
//! every way trenv starts them, compared with the same requests on runc.v2: cold, restored
//! from a template the shim made once the function was ready (`/tmp/.lock`), and restored
//! into a sandbox that last ran a different function. Requests go over the CNI bridge
//! (network `trenv-fn`), as a function platform forwards them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use trenv_integration::function::{self, Function, Instance};
use trenv_integration::{Ctr, trenv_cli, unique_id};

/// The tests' own tenant: their idle sandboxes and templates are theirs alone.
const NAMESPACE: &str = "trenv-functions";

/// Containers, runc CNI attachments and templates, removed however a test ends.
struct Scope {
    ctr: Ctr,
    trenv: Mutex<Vec<String>>,
    runc: Mutex<Vec<String>>,
    templates: Mutex<Vec<String>>,
    /// `io.trenv.tenant` of every trenv container of the scope, if it has a tenant of its
    /// own within [`NAMESPACE`]'s.
    sub: Option<String>,
}

impl Scope {
    fn new() -> Scope {
        let ctr = Ctr::from_env().with_namespace(NAMESPACE);
        ctr.ensure_images();
        for f in function::all() {
            ctr.ensure_image(&f.image);
        }
        Scope {
            ctr,
            trenv: Mutex::default(),
            runc: Mutex::default(),
            templates: Mutex::default(),
            sub: None,
        }
    }

    /// A scope whose trenv containers (and so their templates and idle sandboxes) are of a
    /// tenant of their own (`io.trenv.tenant`): for a test that counts on which sandbox a
    /// container gets, which the other tests of this file, running at the same time in
    /// [`NAMESPACE`], would otherwise take from the pool.
    fn in_own_tenant(name: &str) -> Scope {
        let mut s = Scope::new();
        s.sub = Some(unique_id(name));
        s
    }

    /// The arguments of `ctr run` / `ctr containers create` that give a container the
    /// scope's tenant.
    fn tenant_annotation(&self) -> Vec<String> {
        match &self.sub {
            Some(sub) => vec!["--annotation".into(), format!("io.trenv.tenant={sub}")],
            None => Vec::new(),
        }
    }

    /// The arguments of `trenv template` and `trenv pool` that name the scope's tenant.
    fn tenant_arg(&self) -> [String; 2] {
        match &self.sub {
            Some(sub) => ["--tenant".into(), format!("{NAMESPACE}//{sub}")],
            None => ["-n".into(), NAMESPACE.into()],
        }
    }

    /// Destroys the idle sandboxes of the scope's tenant.
    fn drain_pool(&self) {
        let [flag, tenant] = match &self.sub {
            Some(sub) => ["--tenant".to_string(), format!("{NAMESPACE}//{sub}")],
            None => ["--tenant".to_string(), NAMESPACE.to_string()],
        };
        let drained = trenv_cli()
            .args(["pool", "drain", &flag, &tenant])
            .output()
            .unwrap();
        assert!(drained.status.success(), "{drained:?}");
    }

    fn trenv(&self, f: &Function, tag: &str, extra: &[&str]) -> Instance {
        let id = unique_id(&format!("fn-{}-{tag}", f.name));
        self.trenv.lock().unwrap().push(id.clone());
        let tenant = self.tenant_annotation();
        let mut args: Vec<&str> = tenant.iter().map(String::as_str).collect();
        args.extend(extra);
        function::run_trenv(&self.ctr, f, &id, &args)
            .unwrap_or_else(|e| panic!("{} on trenv ({tag}): {e}", f.name))
    }

    fn runc(&self, f: &Function) -> Instance {
        let id = unique_id(&format!("fn-{}-runc", f.name));
        self.runc.lock().unwrap().push(id.clone());
        function::run_runc(&self.ctr, f, &id)
            .unwrap_or_else(|e| panic!("{} on runc.v2: {e}", f.name))
    }

    fn remove(&self, i: &Instance) {
        self.ctr.remove(&i.id);
    }

    /// The template of `f`, made by the shim from a container annotated
    /// `io.trenv.template.create` once the function created /tmp/.lock; the source is
    /// removed once the template exists.
    fn template(&self, f: &Function) -> String {
        self.template_with(f, &[])
    }

    /// [`Scope::template`] of a source container run with `extra` arguments of `ctr run`.
    fn template_with(&self, f: &Function, extra: &[&str]) -> String {
        let name = unique_id(&format!("fn-{}", f.name));
        let src = self.run_source(f, &name, extra);
        let start = Instant::now();
        let limit = Duration::from_secs(180 * trenv_integration::time_scale());
        loop {
            let out = trenv_cli()
                .args(["template", "inspect", &name])
                .args(self.tenant_arg())
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < limit,
                "template {name} of {} was not made within {limit:?}; shim log in containerd's log",
                f.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ctr.remove(&src);
        name
    }

    /// Runs a source of `f` annotated to become template `name` once ready (with `extra`
    /// arguments of `ctr run`), on the bridge; returns its id. Both are removed with the
    /// scope.
    fn run_source(&self, f: &Function, name: &str, extra: &[&str]) -> String {
        self.templates.lock().unwrap().push(name.to_string());
        let src = unique_id(&format!("fn-{}-src", f.name));
        self.trenv.lock().unwrap().push(src.clone());
        let create = format!("io.trenv.template.create={name}");
        let network = format!("io.trenv.network={}", function::NETWORK);
        // Not through run_trenv: its health check would open a connection while CRIU
        // may be dumping the function (a template holds no connection).
        let mut args = vec![
            "run",
            "-d",
            "--runtime",
            trenv_integration::RUNTIME,
            "--annotation",
            &create,
            // On the bridge as its instances are (a network namespace of its own has
            // only a loopback that is down; gunicorn's readiness check needs one).
            "--annotation",
            &network,
        ];
        let tenant = self.tenant_annotation();
        args.extend(tenant.iter().map(String::as_str));
        args.extend(extra);
        args.extend([f.image.as_str(), &src]);
        let r = self.ctr.run(&args);
        assert_eq!(r.code, 0, "{}: {r:#?}", f.name);
        src
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for id in self.trenv.lock().unwrap().iter() {
            self.ctr.remove(id);
        }
        for id in self.runc.lock().unwrap().iter() {
            function::remove_runc(&self.ctr, id);
        }
        for t in self.templates.lock().unwrap().iter() {
            let _ = trenv_cli()
                .args(["template", "rm", t])
                .args(self.tenant_arg())
                .output();
        }
        if self.sub.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drain_pool()));
        }
    }
}

/// `n` requests to `i`, `f`'s checks in turn, each answered correctly.
fn answers_checks(f: &Function, i: &Instance, n: usize) {
    for k in 0..n {
        let c = &f.checks[k % f.checks.len()];
        let a = function::post(&i.ip, &c.request).unwrap();
        assert_eq!(
            (a.status, a.json()["result"].clone()),
            (200, c.result.clone()),
            "{}: request {k}: {}",
            f.name,
            a.body
        );
    }
}

/// Every check of `f` answered correctly by `i`, then a malformed request refused.
fn assert_correct(f: &Function, i: &Instance, how: &str) {
    if let Err(e) = function::check(f, &i.ip) {
        panic!("{how}: {e}");
    }
    let bad = function::request(&i.ip, "POST", "/", "{not json", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{how}: {e}"));
    assert_eq!(bad.status, 400, "{how}: {} answered {bad:?}", f.name);
}

/// The `requests` count `i` reports for one more request.
fn count(f: &Function, i: &Instance) -> u64 {
    let a = function::post(&i.ip, &f.checks[0].request).unwrap();
    a.json()["requests"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no request count in {}", f.name, a.body))
}

#[test]
fn every_function_answers_correctly_cold_on_runc_and_on_trenv() {
    let s = Scope::new();
    for f in function::all() {
        let runc = s.runc(&f);
        assert_correct(&f, &runc, "runc.v2 cold");
        let cold = s.trenv(&f, "cold", &["--annotation", "io.trenv.repurpose=false"]);
        assert_correct(&f, &cold, "trenv cold");
        let n = count(&f, &cold);
        assert_eq!(count(&f, &cold), n + 1, "{}: the count is not kept", f.name);
        s.remove(&runc);
        s.remove(&cold);
    }
}

/// Each function's template (made by the shim from a source on the bridge), then an
/// instance of each restored from it into a sandbox another function left (the template
/// sources' and the previous instances': the metering record names that function).
#[test]
fn every_function_answers_correctly_restored_and_in_a_sandbox_repurposed_from_another() {
    let s = Scope::in_own_tenant("repurposed");
    let functions = function::all();
    let templates: Vec<String> = functions.iter().map(|f| s.template(f)).collect();
    for (f, t) in functions.iter().zip(&templates) {
        let annotation = format!("io.trenv.template={t}");
        let i = s.trenv(f, "restored", &["--annotation", &annotation]);
        assert_correct(f, &i, "restored from its template");
        s.remove(&i);
        let record = trenv_integration::record_in(&trenv_integration::meter_dir(), &i.id, "");
        assert_eq!(record["start"], "template", "{record}");
        // Every sandbox in the tenant's pool was last used by another function: the
        // template sources (their own functions) and the previous instances.
        assert_eq!(record["sandbox"], "repurposed", "{record}");
        let previous = record["previous_function"].as_str().unwrap_or_default();
        assert!(
            !previous.is_empty() && previous != format!("template:{t}"),
            "{}: not a sandbox of another function: {record}",
            f.name
        );
    }
}

/// Ten instances of one template at once: each answers correctly and counts only its own
/// requests (one instance's writes are invisible to the others).
#[test]
fn ten_restored_instances_of_each_function_answer_independently() {
    let s = Scope::new();
    for f in function::all() {
        let t = s.template(&f);
        let annotation = format!("io.trenv.template={t}");
        let instances: Vec<Instance> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..10)
                .map(|k| {
                    let (s, f, a) = (&s, &f, &annotation);
                    sc.spawn(move || s.trenv(f, &format!("x{k}"), &["--annotation", a]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let first = count(&f, &instances[0]);
        for _ in 0..3 {
            count(&f, &instances[0]);
        }
        for i in &instances[1..] {
            assert_eq!(
                count(&f, i),
                first,
                "{}: {} saw another instance's requests",
                f.name,
                i.id
            );
            assert_correct(&f, i, "one of ten restored instances");
        }
        assert_eq!(count(&f, &instances[0]), first + 4, "{}", f.name);
        for i in &instances {
            s.remove(i);
        }
    }
}

/// The multi-process functions come back with their process tree: the watchdog parent and
/// its function child, the gunicorn master and its worker, alive and talking over the
/// pipes and socket they had, for many requests.
#[test]
fn multi_process_functions_restore_with_their_process_tree() {
    let s = Scope::new();
    for (name, processes) in [("dynamic-html", 2), ("chameleon", 2)] {
        let f = function::get(name);
        let t = s.template(&f);
        let annotation = format!("io.trenv.template={t}");
        let i = s.trenv(&f, "tree", &["--annotation", &annotation]);
        let tree = function::process_tree(i.pid);
        assert_eq!(tree.len(), processes, "{name}: processes {tree:?}");
        let mut served_by = Vec::new();
        for _ in 0..100 {
            let c = &f.checks[0];
            let a = function::post(&i.ip, &c.request).unwrap();
            assert_eq!(a.json()["result"], c.result, "{name}: {}", a.body);
            served_by.push(a.json()["pid"].clone());
        }
        served_by.dedup();
        assert_eq!(served_by.len(), 1, "{name}: served by {served_by:?}");
        assert_correct(&f, &i, "a restored process tree");
        assert_eq!(
            function::process_tree(i.pid),
            tree,
            "{name}: the tree changed"
        );
        s.remove(&i);
    }
}

/// Node.js frees and reuses memory with madvise between requests (V8's GC); a restored
/// instance gives correct results for 1,000 requests that allocate and free tens of MB.
#[test]
fn a_node_function_that_allocates_and_frees_heavily_is_correct_for_1000_requests_restored() {
    let s = Scope::new();
    let f = function::get("node-json-serde");
    let t = s.template(&f);
    let annotation = format!("io.trenv.template={t}");
    let i = s.trenv(&f, "madvise", &["--annotation", &annotation]);
    answers_checks(&f, &i, 1000);
    s.remove(&i);
}

/// Priming (`io.trenv.template.warmup`): the shim sends the function three requests from
/// inside its network namespace before it takes the template; an instance restored from it
/// has served them (its request count goes on from 3: what its first request did once per
/// process, V8 compiling the handler, is in the template) and answers correctly. A warm-up
/// that fails (a 4xx answer) makes no template.
#[test]
fn a_template_primed_with_warm_up_requests_holds_what_they_did() {
    let s = Scope::new();
    let f = function::get("node-crypto");
    let body = f.checks[0].request.to_string();
    let warmup_body = format!("io.trenv.template.warmup-body={body}");
    let t = s.template_with(
        &f,
        &[
            "--annotation",
            "io.trenv.template.warmup=POST http://127.0.0.1:8080/",
            "--annotation",
            &warmup_body,
            "--annotation",
            "io.trenv.template.warmup-requests=3",
        ],
    );
    let annotation = format!("io.trenv.template={t}");
    let i = s.trenv(&f, "primed", &["--annotation", &annotation]);
    assert_eq!(
        count(&f, &i),
        4,
        "the warm-up requests are not in the template"
    );
    assert_correct(&f, &i, "restored from a primed template");
    s.remove(&i);

    // A request the function refuses (its handler answers 400 to a body that is not
    // JSON): no template, the source keeps running.
    let name = unique_id("primed-bad");
    let log = std::env::var("CONTAINERD_LOG").expect("CONTAINERD_LOG (containerd.sh env)");
    let before = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let src = s.run_source(
        &f,
        &name,
        &[
            "--annotation",
            "io.trenv.template.warmup=POST http://127.0.0.1:8080/",
            "--annotation",
            "io.trenv.template.warmup-body=not json",
        ],
    );
    let start = Instant::now();
    let said = format!("container {src}: its warm-up failed");
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        let new = String::from_utf8_lossy(&text[before.min(text.len())..]).to_string();
        if let Some(line) = new.lines().find(|l| l.contains(&said)) {
            assert!(line.contains("answered 400"), "{line}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60 * trenv_integration::time_scale()),
            "no warm-up failure logged for {src}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let inspected = trenv_cli()
        .args(["template", "inspect", &name, "-n", NAMESPACE])
        .output()
        .unwrap();
    assert!(
        !inspected.status.success(),
        "a template was made after a failed warm-up"
    );
    assert_eq!(s.ctr.task_status(&src).as_deref(), Some("RUNNING"));
}

/// jemalloc, in Debian's fnbase image, preloaded into a Python function.
const JEMALLOC: &str = "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// An allocator that takes purged memory for zeros (jemalloc: a page it purged with
/// MADV_DONTNEED would read the template's bytes): the function's template maps nothing
/// and says why, and instances restored from it answer correctly, request after request.
#[test]
fn a_function_on_jemalloc_gets_a_template_that_maps_nothing_and_restores_correctly() {
    let s = Scope::new();
    let f = function::get("json-serde");
    let env = ["--env", JEMALLOC];
    let t = s.template_with(&f, &env);
    let out = trenv_cli()
        .args(["template", "inspect", &t])
        .args(s.tenant_arg())
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conv = &m["conversion"];
    let why = conv["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("jemalloc"), "no fallback for jemalloc: {conv}");
    assert_eq!(conv["bytes_moved"], 0, "{conv}");
    let annotation = format!("io.trenv.template={t}");
    let i = s.trenv(
        &f,
        "jemalloc",
        &["--env", JEMALLOC, "--annotation", &annotation],
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", i.pid)).unwrap();
    assert!(
        maps.contains("libjemalloc"),
        "jemalloc is not loaded:\n{maps}"
    );
    answers_checks(&f, &i, 300);
    s.remove(&i);
}

/// A client that networks its tasks itself, as faasd does (CNI ADD on the task's network
/// namespace between Create and Start, CNI DEL after Delete), on trenv with repurposing on:
/// the second function is given the first one's sandbox and its client's CNI ADD works
/// there as in a fresh network namespace (no interface left from the first), and the
/// function is reached over the bridge.
#[test]
fn a_client_that_runs_cni_itself_gets_a_clean_network_in_a_repurposed_sandbox() {
    let s = Scope::in_own_tenant("client-cni");
    let mut netns = Vec::new();
    for (k, name) in ["pyaes", "node-crypto"].iter().enumerate() {
        let f = function::get(name);
        let id = unique_id(&format!("fn-{name}-client-cni"));
        s.runc.lock().unwrap().push(id.clone());
        let tenant = s.tenant_annotation();
        let tenant: Vec<&str> = tenant.iter().map(String::as_str).collect();
        let i = function::run_with_client_cni(&s.ctr, trenv_integration::RUNTIME, &f, &id, &tenant)
            .unwrap_or_else(|e| panic!("{name} with the client's CNI: {e}"));
        let links = std::process::Command::new("nsenter")
            .args(["-t", &i.pid.to_string(), "-n", "ip", "-o", "link"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert_eq!(
            links.lines().count(),
            2,
            "{name}: lo and the client's eth0: {links}"
        );
        netns.push(std::fs::read_link(format!("/proc/{}/ns/net", i.pid)).unwrap());
        assert_correct(&f, &i, "networked by its client");
        function::remove_runc(&s.ctr, &id);
        let record = trenv_integration::record_in(&trenv_integration::meter_dir(), &id, "");
        if k == 1 {
            assert_eq!(record["sandbox"], "repurposed", "{record}");
        }
    }
    assert_eq!(
        netns[0], netns[1],
        "the second function was not given the first's sandbox"
    );
}
