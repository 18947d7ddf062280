//! Memory templates through a real containerd: `trenv template create` from a running
//! function, containers started with `--annotation io.trenv.template=NAME`.
//!
//! Templates live in trenv's default store and pool (the shim reads /etc/trenv/config.toml
//! or the defaults; integration/setup.sh mounts the tmpfs pool), so every test uses its
//! own template names and removes them.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use trenv_integration::pyfn::{LOG_ENV, field, signal_state, wait_line};
use trenv_integration::{BUSYBOX, Ctr, PYFN, RUNTIME, trenv_cli, unique_id};

const ANNOTATION: &str = "io.trenv.template";

fn ctr() -> Ctr {
    let c = Ctr::from_env();
    c.ensure_images();
    c.ensure_image(PYFN);
    c
}

/// Removes containers and templates however the test ends.
struct Cleanup<'a> {
    ctr: &'a Ctr,
    containers: Vec<String>,
    templates: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.containers {
            self.ctr.remove(id);
        }
        for t in &self.templates {
            let _ = trenv_cli()
                .args(["template", "rm", t, "-n", &self.ctr.namespace])
                .output();
        }
    }
}

/// One test's names (a source container, a template, an instance), all removed when the
/// test ends, however it ends.
struct Case<'a> {
    ctr: &'a Ctr,
    src: String,
    name: String,
    id: String,
}

impl<'a> Case<'a> {
    fn new(ctr: &'a Ctr, tag: &str) -> Case<'a> {
        Case {
            ctr,
            src: unique_id(&format!("tpl-{tag}-src")),
            name: unique_id(tag),
            id: unique_id(&format!("tpl-{tag}")),
        }
    }

    /// `trenv template create NAME --from SRC -n NAMESPACE EXTRA…`.
    fn create(&self, extra: &[&str]) -> Out {
        let mut args = vec![
            "template",
            "create",
            &self.name,
            "--from",
            &self.src,
            "-n",
            &self.ctr.namespace,
        ];
        args.extend_from_slice(extra);
        trenv(&args)
    }
}

impl Case<'_> {
    /// `ctr containers create` of the instance, annotated with the template (a function of
    /// `mb` MiB), for a client of containerd's API to start.
    fn create_instance(&self, mb: u32) {
        let annotation = format!("{ANNOTATION}={}", self.name);
        let env = function_env(mb);
        let mut args = vec!["containers", "create", "--runtime", RUNTIME, "--annotation"];
        args.push(&annotation);
        args.extend(env.iter().map(String::as_str));
        args.extend([PYFN, self.id.as_str()]);
        let r = self.ctr.run(&args);
        assert_eq!(r.code, 0, "containers create: {}", r.stderr);
    }
}

impl Drop for Case<'_> {
    fn drop(&mut self) {
        self.ctr.remove(&self.id);
        self.ctr.remove(&self.src);
        let _ = trenv_cli()
            .args(["template", "rm", &self.name, "-n", &self.ctr.namespace])
            .output();
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn trenv(args: &[&str]) -> Out {
    let o = trenv_cli()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running trenv");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn create_template(c: &Ctr, name: &str, from: &str) {
    let r = trenv(&[
        "template",
        "create",
        name,
        "--from",
        from,
        "-n",
        &c.namespace,
    ]);
    assert_eq!(
        r.code, 0,
        "template create failed: {}{}",
        r.stdout, r.stderr
    );
}

/// `trenv template inspect NAME` in `c`'s namespace (the tenant of its containers).
fn inspect(c: &Ctr, name: &str) -> serde_json::Value {
    let r = trenv(&["template", "inspect", name, "-n", &c.namespace]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).expect("manifest JSON")
}

fn run_detached(c: &Ctr, id: &str, flags: &[&str], image: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.push(image);
    a.push(id);
    a.extend_from_slice(args);
    c.run(&a).ok();
    assert!(
        c.wait_status(id, "RUNNING", Duration::from_secs(20)),
        "{id} did not start: {:?}",
        c.task_status(id)
    );
}

/// Starts the Python function with `mb` MiB of state and returns its ready checksum.
fn start_function(c: &Ctr, id: &str, mb: u32) -> String {
    let env = function_env(mb);
    run_detached(c, id, &with_env(&env, &[]), PYFN, &[]);
    field(&wait_line(c, id, "ready ", 0), "state=")
}

/// The `--env` flags of a function started by [`start_function`] with `mb` MiB: an
/// instance restored from its template has the same (a restore whose environment differs
/// is refused: a restored process keeps the template's).
fn function_env(mb: u32) -> [String; 4] {
    [
        "--env".into(),
        format!("FN_STATE_MB={mb}"),
        "--env".into(),
        LOG_ENV.into(),
    ]
}

/// `env` (from [`function_env`]) followed by `extra`, as `ctr` flags.
fn with_env<'a>(env: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    env.iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect()
}

fn init_pid(c: &Ctr, id: &str) -> i32 {
    let ls = c.run(&["task", "ls"]).ok().stdout;
    ls.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{id} not listed: {ls}"))
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Nothing of container `id` is left on the host: no shim, no mount, no cgroup.
fn assert_nothing_left(c: &Ctr, id: &str) {
    let shim = format!("-id {id} ");
    let start = Instant::now();
    while !trenv_integration::pids_matching(&shim).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the shim of {id} is still running: {:?}",
            trenv_integration::pids_matching(&shim)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.lines().any(|l| l.contains(&format!("/{id}/"))),
        "a mount of {id} was left behind"
    );
    for ctl in ["memory", "pids", "freezer", "systemd"] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join(&c.namespace)
            .join(id);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    let v2 = Path::new("/sys/fs/cgroup").join(&c.namespace).join(id);
    assert!(!v2.exists(), "cgroup {} left behind", v2.display());
}

#[test]
fn ten_instances_restored_from_one_template_are_correct_and_isolated() {
    let c = ctr();
    let src = unique_id("tpl-src");
    let name = unique_id("iso");
    let ids: Vec<String> = (0..10).map(|i| unique_id(&format!("tpl-{i}"))).collect();
    let mut all = ids.clone();
    all.push(src.clone());
    let _cleanup = Cleanup {
        ctr: &c,
        containers: all,
        templates: vec![name.clone()],
    };
    let mb = trenv_integration::pyfn::state_mb(64);
    let ready = start_function(&c, &src, mb);
    create_template(&c, &name, &src);
    // The source keeps running after the template was made, state intact.
    assert_eq!(signal_state(&c, &src, "SIGUSR1"), ready);
    c.remove(&src);

    let manifest = inspect(&c, &name);
    let pool_file = PathBuf::from(manifest["pool"]["path"].as_str().unwrap());
    let moved = manifest["conversion"]["bytes_moved"].as_u64().unwrap();
    let mapped = trenv_integration::pyfn::mapped_bytes(mb);
    assert!(
        moved >= mapped,
        "only {moved} of the function's {mapped} mapped bytes moved to the template"
    );

    // Ten instances at once.
    let annotation = format!("{ANNOTATION}={name}");
    let env = function_env(mb);
    std::thread::scope(|s| {
        for id in &ids {
            let (c, annotation, env) = (&c, &annotation, &env);
            s.spawn(move || {
                run_detached(
                    c,
                    id,
                    &with_env(env, &["--annotation", annotation]),
                    PYFN,
                    &[],
                )
            });
        }
    });
    let path_str = pool_file.display().to_string();
    // With the trenv-mmt module (the VM test bed loads it), the template's VMAs are
    // anonymous memory the module attached (VM_MIXEDMAP, `mm` in smaps); without it,
    // mappings of the pool file.
    let backend = manifest["memory_backend"].as_str().unwrap().to_string();
    // The VM test bed says which to expect (its pool's kernel_templates setting).
    if let Ok(expect) = std::env::var("TRENV_MMT_EXPECT") {
        assert_eq!(backend, expect, "{manifest:#}");
    }
    let vmas: Vec<String> = manifest["conversion"]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        // As /proc/PID/maps writes them: at least eight hex digits.
        .map(|v| {
            format!(
                "{:08x}-{:08x} ",
                v[0].as_u64().unwrap(),
                v[1].as_u64().unwrap()
            )
        })
        .collect();
    assert!(!vmas.is_empty(), "{manifest:#}");
    for id in &ids {
        assert_eq!(signal_state(&c, id, "SIGUSR1"), ready, "{id} differs");
        let pid = init_pid(&c, id);
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        match backend.as_str() {
            "pool-file" => assert!(
                maps.contains(&path_str),
                "{id} does not map the template {path_str}"
            ),
            "kernel" => {
                assert!(!maps.contains(&path_str), "{id} maps the pool file: {maps}");
                let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
                for vma in &vmas {
                    // The VMA's header line and its fields, up to the next header.
                    let is_header = |l: &str| {
                        l.split_whitespace()
                            .next()
                            .and_then(|r| r.split_once('-'))
                            .is_some_and(|(a, b)| {
                                u64::from_str_radix(a, 16).is_ok()
                                    && u64::from_str_radix(b, 16).is_ok()
                            })
                    };
                    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(vma.as_str()));
                    let block: Vec<&str> = lines
                        .next()
                        .into_iter()
                        .chain(lines.take_while(|l| !is_header(l)))
                        .collect();
                    assert!(!block.is_empty(), "{id}: no VMA {vma}in {smaps}");
                    let flags = block.iter().find(|l| l.starts_with("VmFlags:"));
                    assert!(
                        flags.is_some_and(|f| f.split_whitespace().any(|w| w == "mm")),
                        "{id}: the template's VMA {vma}is not attached by the module: {block:#?}"
                    );
                    // No file: nothing, or the kernel's own name ([heap]).
                    assert!(
                        block[0]
                            .split_whitespace()
                            .nth(5)
                            .is_none_or(|p| p.starts_with('[')),
                        "{id}: {vma}is a file mapping: {}",
                        block[0]
                    );
                }
            }
            other => panic!("unknown memory backend {other}"),
        }
    }
    // One instance writes its memory: only its own state changes.
    let written = signal_state(&c, &ids[0], "SIGUSR2");
    assert_ne!(written, ready);
    for id in &ids[1..] {
        assert_eq!(signal_state(&c, id, "SIGUSR1"), ready, "{id} saw the write");
    }
    assert_eq!(signal_state(&c, &ids[0], "SIGUSR1"), written);
    // The template's network namespace was dumped empty: the restore brought `lo` up.
    let lo = trenv_integration::exec(
        &c,
        &ids[1],
        &[
            "python3",
            "-c",
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); \
             socket.create_connection(s.getsockname()); print('loopback ok')",
        ],
    );
    assert_eq!(lo.trim(), "loopback ok");
    assert_eq!(
        sha256(&pool_file),
        manifest["pool"]["sum"]["sha256"].as_str().unwrap(),
        "the template file changed"
    );
    // CRIU read the images in place, through a read-only bind: its restore statistics
    // did not land in the template.
    let images = template_dir(&c, &name).join("images");
    assert!(
        !images.join("stats-restore.img").exists(),
        "a restore wrote into {}",
        images.display()
    );
    // Stop them all and check nothing is left.
    for id in &ids {
        c.remove(id);
        assert_nothing_left(&c, id);
    }
}

#[test]
fn template_list_inspect_and_rm() {
    let c = ctr();
    let case = Case::new(&c, "ls");
    let (src, name) = (&case.src, &case.name);
    run_detached(&c, src, &[], BUSYBOX, &["sleep", "1000"]);
    create_template(&c, name, src);
    let list = trenv(&["template", "list"]);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(name.as_str()) && l.contains(&c.namespace)),
        "no line of {name} owned by {}: {}{}",
        c.namespace,
        list.stdout,
        list.stderr
    );
    let json = trenv(&["template", "list", "--json", "-n", &c.namespace]);
    let mine: serde_json::Value = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|m| m["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not in {}", json.stdout));
    assert_eq!(mine["tenant"], c.namespace.as_str());
    let m = inspect(&c, name);
    assert_eq!(m["name"], name.as_str());
    assert_eq!(m["source_container"], src.as_str());
    let pool_file = PathBuf::from(m["pool"]["path"].as_str().unwrap());
    assert!(pool_file.exists());
    let again = case.create(&[]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let rm = trenv(&["template", "rm", name, "-n", &c.namespace]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    assert!(!pool_file.exists(), "pool file left after rm");
    let gone = trenv(&["template", "inspect", name, "-n", &c.namespace]);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
}

#[test]
fn a_missing_or_misnamed_template_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    for (value, expect) in [
        (unique_id("nope"), "not found"),
        ("Bad/Name".to_string(), "invalid template name"),
    ] {
        let id = unique_id("tpl-missing");
        let _cleanup = Cleanup {
            ctr: &c,
            containers: vec![id.clone()],
            templates: vec![],
        };
        let annotation = format!("{ANNOTATION}={value}");
        let r = c.run(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            &annotation,
            PYFN,
            &id,
        ]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains(expect), "{r:#?}");
        assert!(c.task_status(&id).is_none());
        assert_nothing_left(&c, &id);
    }
}

#[test]
fn a_modified_template_is_refused_and_leaves_nothing() {
    let c = ctr();
    let case = Case::new(&c, "mod");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    start_function(&c, src, 8);
    create_template(&c, name, src);
    let m = inspect(&c, name);
    let pool_file = PathBuf::from(m["pool"]["path"].as_str().unwrap());
    // Same size, one byte different: CRIU itself would not notice.
    let mut bytes = fs::read(&pool_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&pool_file, &bytes).unwrap();
    let annotation = format!("{ANNOTATION}={name}");
    let r = c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        PYFN,
        id,
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("failed its checksum"), "{r:#?}");
    assert!(c.task_status(id).is_none());
    let _ = c.run(&["container", "delete", id]);
    assert_nothing_left(&c, id);
}

/// A function of two processes: the parent maps 8 MiB of private anonymous memory and
/// fills it, forks, and the child overwrites all of its copy but the last page. Once
/// `/tmp/go` exists, each writes the SHA-256 of its memory to `/tmp/sum-ROLE`.
const TREE_FN: &str = "import hashlib, mmap, os, time\n\
    N = 8 << 20\n\
    m = mmap.mmap(-1, N, flags=mmap.MAP_PRIVATE)\n\
    m.write(b'P' * N)\n\
    role = 'parent' if os.fork() else 'child'\n\
    if role == 'child':\n    m.seek(0)\n    m.write(b'C' * (N - 4096))\n\
    open('/tmp/ready-' + role, 'w').close()\n\
    while not os.path.exists('/tmp/go'):\n    time.sleep(0.02)\n\
    with open('/tmp/sum.tmp-' + role, 'w') as f:\n    f.write(hashlib.sha256(m[:]).hexdigest())\n\
    os.rename('/tmp/sum.tmp-' + role, '/tmp/sum-' + role)\n\
    while True:\n    time.sleep(60)\n";

/// Run in a container of [`TREE_FN`]: prints the parent's and the child's sums once both
/// wrote them (after creating `/tmp/go` if `go`), or fails after 30 s.
fn tree_sums(c: &Ctr, id: &str, go: bool) -> (String, String) {
    let script = format!(
        "import os, time\n\
         {}\n\
         t = time.time() + 30\n\
         while not all(os.path.exists('/tmp/sum-' + r) for r in ('parent', 'child')):\n    \
         assert time.time() < t, 'no sums'\n    time.sleep(0.02)\n\
         print(open('/tmp/sum-parent').read(), open('/tmp/sum-child').read())\n",
        if go {
            "open('/tmp/go', 'w').close()"
        } else {
            ""
        }
    );
    let out = trenv_integration::exec(c, id, &["python3", "-c", &script]);
    let mut sums = out.split_whitespace().map(str::to_string);
    match (sums.next(), sums.next()) {
        (Some(p), Some(k)) => (p, k),
        _ => panic!("{id}: no sums in {out:?}"),
    }
}

/// The host pids of `id`'s processes (`ctr task ps`).
fn task_pids(c: &Ctr, id: &str) -> Vec<i32> {
    c.run(&["task", "ps", id])
        .ok()
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// A multi-process function: every process of the tree is converted into the one pool
/// file, each through a file entry of its own (CRIU's copy-on-write pairing of a child's
/// VMA with its parent's ignores the file offset: with one shared entry the child would be
/// restored with its parent's memory), and each restored process reads its own memory.
#[test]
fn a_multi_process_function_restores_each_process_its_own_memory() {
    let c = ctr();
    let case = Case::new(&c, "tree");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    let args = ["python3", "-c", TREE_FN];
    run_detached(&c, src, &[], PYFN, &args);
    let ready =
        "import os; print(all(os.path.exists('/tmp/ready-' + r) for r in ('parent', 'child')))";
    let start = Instant::now();
    while trenv_integration::exec(&c, src, &["python3", "-c", ready]).trim() != "True" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the function never forked"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = case.create(&[]);
    assert_eq!(
        r.code, 0,
        "template create failed: {}{}",
        r.stdout, r.stderr
    );
    assert!(r.stdout.contains("of 2 processes"), "{}", r.stdout);
    // The source runs on; its sums are what every instance must answer.
    let want = tree_sums(&c, src, true);
    assert_ne!(want.0, want.1, "parent and child hold the same memory");
    c.remove(src);

    let m = inspect(&c, name);
    let procs = m["conversion"]["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 2, "{m}");
    let vmas = |p: &serde_json::Value| p["vmas"].as_array().unwrap().clone();
    let shared: Vec<_> = vmas(&procs[0])
        .into_iter()
        .filter(|v| vmas(&procs[1]).contains(v))
        .collect();
    assert!(
        !shared.is_empty(),
        "no VMA at the same address in both: {m}"
    );
    let pool_file = m["pool"]["path"].as_str().unwrap().to_string();

    let annotation = format!("{ANNOTATION}={name}");
    run_detached(&c, id, &["--annotation", &annotation], PYFN, &args);
    let pids = task_pids(&c, id);
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in &pids {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains(&pool_file), "{pid} does not map {pool_file}");
    }
    assert_eq!(tree_sums(&c, id, true), want);
    assert_eq!(
        sha256(Path::new(&pool_file)),
        m["pool"]["sum"]["sha256"].as_str().unwrap(),
        "the template file changed"
    );
    // Deleting the instance takes the child with its init (its PID namespace's): the
    // cgroup, removed only once empty, is gone.
    c.remove(id);
    assert_nothing_left(&c, id);
}

/// Nothing of template `name` in the default store or pool, at the top or in a tenant's
/// directory: no staging directory, no (temporary) pool file.
fn assert_no_staging(name: &str) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for top in ["/var/lib/trenv/templates", "/run/trenv/pool"] {
        dirs.push(PathBuf::from(top));
        for e in fs::read_dir(top).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('@') {
                dirs.push(e.path());
            }
        }
    }
    for dir in &dirs {
        let dir = dir.display();
        if let Ok(entries) = fs::read_dir(dir.to_string()) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                // Exact forms only: another test's template may be named `r{name}0`.
                let mine = n == name
                    || [
                        format!(".staging-{name}-"),
                        format!(".{name}-"),
                        format!("{name}-"),
                    ]
                    .iter()
                    .any(|p| n.starts_with(p.as_str()));
                assert!(!mine, "left behind: {dir}/{n}");
            }
        }
    }
}

/// A tmpfs pool too small for the template: the error says the pool is full and nothing
/// is left in the pool or the store.
#[test]
fn a_full_pool_is_a_clear_error_and_leaves_no_half_template() {
    let c = ctr();
    let case = Case::new(&c, "full");
    let src = &case.src;
    start_function(&c, src, 64);
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let store = dir.path().join("store");
    fs::create_dir_all(&pool).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "trenv-test-pool"])
        .arg(&pool)
        .status()
        .unwrap();
    assert!(mounted.success());
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "[templates]\ndir = \"{}\"\n[pool]\nkind = \"tmpfs\"\ndir = \"{}\"\n",
            store.display(),
            pool.display()
        ),
    )
    .unwrap();
    let r = case.create(&["--config", config.to_str().unwrap()]);
    // Nothing in them but the tenant's (empty) directory, which stays until a removal (a
    // build may be using it), and the store's lock of those directories.
    let tenant = format!("@{}", c.namespace);
    let left = |dir: &Path| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name() == ".tenants.lock" {
                continue;
            }
            if e.file_name().to_string_lossy() == tenant.as_str() {
                out.extend(fs::read_dir(e.path()).unwrap().flatten().map(|e| e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    };
    let (pool_left, store_left) = (left(&pool), left(&store));
    let _ = std::process::Command::new("umount").arg(&pool).status();
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("memory pool is full"), "{}", r.stderr);
    assert!(pool_left.is_empty(), "left in the pool: {pool_left:?}");
    assert!(store_left.is_empty(), "left in the store: {store_left:?}");
    assert_eq!(c.task_status(src).as_deref(), Some("RUNNING"));
}

/// CRIU killed in the middle of making a template: a clear error, nothing half-made, and
/// the function is not left frozen (it runs on, or died with CRIU's parasite code).
#[test]
fn a_killed_criu_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    let case = Case::new(&c, "kill");
    let (src, name) = (&case.src, &case.name);
    let ready = start_function(&c, src, 200);
    let child = trenv_cli()
        .args([
            "template",
            "create",
            name,
            "--from",
            src,
            "-n",
            &c.namespace,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cli = child.id() as i32;
    let start = Instant::now();
    let mut killed = false;
    while start.elapsed() < Duration::from_secs(20) && !killed {
        for pid in trenv_integration::pids_named("criu") {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid: i32 = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid == cli {
                // Only a CRIU still running after 50 ms: the dump, not a version check.
                std::thread::sleep(Duration::from_millis(50));
                killed = nix_kill(pid).is_ok();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(killed, "never saw the CLI's CRIU");
    assert!(!out.status.success());
    assert!(stderr.contains("CRIU died"), "{stderr}");
    assert!(trenv(&["template", "inspect", name, "-n", &c.namespace]).code != 0);
    assert_no_staging(name);
    // CRIU killed after it injected its parasite code into the function may take the
    // function with it (nothing else can remove that code); what must not happen is a
    // function left frozen. Running means answering, with its state intact.
    match c.task_status(src).as_deref() {
        Some("RUNNING") => assert_eq!(signal_state(&c, src, "SIGUSR1"), ready),
        Some("STOPPED") => {}
        other => panic!("the source function is {other:?} after CRIU was killed"),
    }
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// A template restore is an ordinary start for containerd and metering: the instance exits
/// with the function's own status and leaves a metering record.
#[test]
fn a_restored_instance_exits_and_is_metered_like_a_cold_start() {
    let c = ctr();
    let case = Case::new(&c, "meter");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    start_function(&c, src, 8);
    create_template(&c, name, src);
    let annotation = format!("{ANNOTATION}={name}");
    let env = function_env(8);
    run_detached(
        &c,
        id,
        &with_env(
            &env,
            &[
                "--annotation",
                &annotation,
                "--annotation",
                "io.trenv.function=tpl-meter",
            ],
        ),
        PYFN,
        &[],
    );
    std::thread::sleep(Duration::from_millis(200));
    c.run(&["task", "kill", "-s", "SIGTERM", id]).ok();
    assert!(c.wait_status(id, "STOPPED", Duration::from_secs(10)));
    let deleted = c.run(&["task", "delete", id]).ok();
    assert!(
        !deleted.stderr.contains("non-zero exit"),
        "pyfn exits 0 on SIGTERM: {deleted:?}"
    );
    let meter = std::env::var_os("TRENV_METER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/trenv/meter"))
        .join("invocations.jsonl");
    let needle = format!("\"container_id\":\"{id}\"");
    let mut record = None;
    let start = Instant::now();
    while record.is_none() && start.elapsed() < Duration::from_secs(10) {
        record = fs::read_to_string(&meter)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(&needle))
            .map(str::to_string);
        std::thread::sleep(Duration::from_millis(100));
    }
    let record: serde_json::Value =
        serde_json::from_str(&record.expect("a metering record of the restored instance")).unwrap();
    assert_eq!(record["function"], "tpl-meter");
    assert_eq!(record["exit_status"], 0);
    assert!(
        record["memory_peak_bytes"].as_u64().unwrap_or(0) > 0,
        "{record}"
    );
}

/// The CRIU binary named in trenv's config does not exist: the error says so and which
/// version is needed; nothing is made and the function runs on.
#[test]
fn a_missing_criu_is_a_clear_error() {
    let c = ctr();
    let case = Case::new(&c, "nocriu");
    let (src, name) = (&case.src, &case.name);
    run_detached(&c, src, &[], BUSYBOX, &["sleep", "1000"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    fs::write(&config, "[criu]\nbinary = \"/nonexistent/criu\"\n").unwrap();
    let r = case.create(&["--config", config.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("CRIU not found"), "{}", r.stderr);
    assert!(r.stderr.contains("4.1.0 or newer"), "{}", r.stderr);
    assert_no_staging(name);
    assert_eq!(c.task_status(src).as_deref(), Some("RUNNING"));
}

/// A function that keeps a file of its own writable layer open cannot be templated: an
/// instance's fresh writable layer lacks the file, so every restore would fail. The dump is
/// taken again (a moment's write would be over), then refused with the file named; nothing
/// is made and the function runs on.
#[test]
fn a_function_holding_a_file_of_its_writable_layer_is_refused_with_the_file_named() {
    let c = ctr();
    let case = Case::new(&c, "held");
    let (src, name) = (&case.src, &case.name);
    run_detached(
        &c,
        src,
        &[],
        BUSYBOX,
        &["sh", "-c", "exec 3>>/tmp/held.log; exec sleep 1000"],
    );
    let r = case.create(&[]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("/tmp/held.log"), "{}", r.stderr);
    assert!(r.stderr.contains("at each of 3 dumps"), "{}", r.stderr);
    assert!(r.stderr.contains("writable layer"), "{}", r.stderr);
    assert_no_staging(name);
    assert_ne!(
        trenv(&["template", "inspect", name, "-n", &c.namespace]).code,
        0,
        "no template was made"
    );
    assert_eq!(c.task_status(src).as_deref(), Some("RUNNING"));
}

/// A pool bound to NUMA node 0 (this machine's only node; CXL memory would be a CPU-less
/// node): checked against its mount options, and the instances' template pages follow the
/// pool's policy.
#[test]
fn a_numa_bound_pool_is_checked_and_used() {
    let c = ctr();
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    fs::create_dir_all(&pool).unwrap();
    assert!(
        std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=256m,mpol=bind:0",
                "trenv-test-numa"
            ])
            .arg(&pool)
            .status()
            .unwrap()
            .success()
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(pool.clone());
    // Dropped before the pool is unmounted.
    let case = Case::new(&c, "numa");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    let ready = start_function(&c, src, 16);
    let write_config = |node: u32| {
        let path = dir.path().join(format!("numa{node}.toml"));
        fs::write(
            &path,
            format!(
                "[pool]\nkind = \"numa\"\nnode = {node}\ndir = \"{}\"\n",
                pool.display()
            ),
        )
        .unwrap();
        path
    };
    // Configured for node 1, mounted for node 0: refused before anything is written.
    let wrong = write_config(1);
    let r = case.create(&["--config", wrong.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("configured as numa"), "{}", r.stderr);
    let right = write_config(0);
    let r = case.create(&["--config", right.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = inspect(&c, name);
    assert_eq!(m["pool"]["kind"]["NumaTmpfs"]["node"], 0, "{m}");
    let pool_file = m["pool"]["path"].as_str().unwrap().to_string();
    assert!(pool_file.starts_with(&pool.canonicalize().unwrap().display().to_string()));

    let annotation = format!("{ANNOTATION}={name}");
    let env = function_env(16);
    run_detached(
        &c,
        id,
        &with_env(&env, &["--annotation", &annotation]),
        PYFN,
        &[],
    );
    assert_eq!(signal_state(&c, id, "SIGUSR1"), ready);
    let numa = fs::read_to_string(format!("/proc/{}/numa_maps", init_pid(&c, id))).unwrap();
    let line = numa
        .lines()
        .find(|l| l.contains(&pool_file))
        .unwrap_or_else(|| panic!("the instance does not map {pool_file}: {numa}"));
    assert!(line.contains("bind:0"), "{line}");
    c.remove(id);
    assert!(trenv(&["template", "rm", name, "-n", &c.namespace]).code == 0);
}

/// CRIU killed in the middle of a restore: Start fails saying so, and the instance leaves no
/// process, cgroup or mount behind.
#[test]
fn a_killed_criu_during_a_restore_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    let case = Case::new(&c, "rkill");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    start_function(&c, src, 200);
    // A copy template: its restore copies 200 MiB, long enough to be caught.
    let r = case.create(&["--copy"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.remove(src);
    let annotation = format!("{ANNOTATION}={name}");
    let mine = format!("/{id}");
    let killer = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            for pid in trenv_integration::pids_named("criu") {
                let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')')
                            .next()?
                            .split_whitespace()
                            .nth(1)?
                            .parse::<i32>()
                            .ok()
                    });
                let parent = ppid
                    .and_then(|p| fs::read_to_string(format!("/proc/{p}/comm")).ok())
                    .unwrap_or_default();
                // This container's restore: CRIU works in the restore's work directory in
                // the container's, once it has the request. (Not the bundle: the CRIU of a
                // spare restorer, started ahead by a shim started for this container, works
                // there before any request; killing it only made the restore start its own.)
                let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                if parent.trim() == "trenv-worker"
                    && cwd.to_string_lossy().contains(&mine)
                    && cwd.ends_with("criu-restore")
                    && nix_kill(pid).is_ok()
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let env = function_env(200);
    let r = c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        &env[0],
        &env[1],
        &env[2],
        &env[3],
        PYFN,
        id,
    ]);
    assert!(killer.join().unwrap(), "never caught the restoring CRIU");
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stderr.contains("CRIU died during restore"), "{r:#?}");
    assert_ne!(c.task_status(id).as_deref(), Some("RUNNING"));
    c.remove(id);
    assert_nothing_left(&c, id);
}

/// `--read-only` (Kubernetes' readOnlyRootFilesystem) holds for an instance restored from
/// a template made from a writable container, as for a cold start.
#[test]
fn a_read_only_root_holds_after_a_template_restore() {
    let c = ctr();
    let case = Case::new(&c, "ro");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    start_function(&c, src, 8);
    create_template(&c, name, src);
    c.remove(src);
    let annotation = format!("{ANNOTATION}={name}");
    let env = function_env(8);
    run_detached(
        &c,
        id,
        &with_env(&env, &["--read-only", "--annotation", &annotation]),
        PYFN,
        &[],
    );
    let r = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "probe",
        id,
        "touch",
        "/trenv-ro-probe",
    ]);
    assert_ne!(r.code, 0, "the restored root is writable: {r:#?}");
    assert!(r.stderr.contains("Read-only file system"), "{r:#?}");
    c.remove(id);
    assert_nothing_left(&c, id);
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: i32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()?
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The zygote worker that drives a restore dies while CRIU restores: whatever got restored
/// is killed by Delete, which succeeds and leaves no mount, cgroup or shim.
#[test]
fn a_worker_killed_mid_restore_leaves_nothing_and_a_deletable_task() {
    let c = ctr();
    let case = Case::new(&c, "wkill");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    start_function(&c, src, 200);
    // A copy template: its restore copies 200 MiB, long enough to be caught.
    let r = case.create(&["--copy"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.remove(src);
    let annotation = format!("{ANNOTATION}={name}");
    let mine = format!("/{id}");
    let procs = [
        format!("/sys/fs/cgroup/memory/{}/{id}/cgroup.procs", c.namespace),
        format!("/sys/fs/cgroup/{}/{id}/cgroup.procs", c.namespace),
    ];
    let killer = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            for criu in trenv_integration::pids_named("criu") {
                let Some(worker) = parent_of(criu) else {
                    continue;
                };
                let parent = fs::read_to_string(format!("/proc/{worker}/comm")).unwrap_or_default();
                let cwd = fs::read_link(format!("/proc/{criu}/cwd")).unwrap_or_default();
                if parent.trim() != "trenv-worker" || !cwd.to_string_lossy().contains(&mine) {
                    continue;
                }
                // Once CRIU has put restored tasks into the container's cgroup, the
                // worker goes: the function is restored with nobody left to adopt it.
                let restoring = procs.iter().any(|p| {
                    fs::read_to_string(p)
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse::<i32>().ok())
                        .any(|p| p != criu)
                });
                if restoring && nix_kill(worker).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let env = function_env(200);
    let r = c.run(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        &env[0],
        &env[1],
        &env[2],
        &env[3],
        PYFN,
        id,
    ]);
    assert!(killer.join().unwrap(), "never caught the restoring worker");
    assert_ne!(r.code, 0, "{r:#?}");
    assert_ne!(c.task_status(id).as_deref(), Some("RUNNING"));
    let d = c.run(&["task", "delete", "-f", id]);
    assert!(
        d.code == 0 || d.stderr.contains("not found"),
        "the task must be deletable: {d:#?}"
    );
    let d = c.run(&["containers", "rm", id]);
    assert_eq!(d.code, 0, "{d:#?}");
    assert_nothing_left(&c, id);
}

/// `io.trenv.template.create`: the shim makes the template itself once the function is
/// ready (here: its ready file, the log pyfn creates with its `ready` line, exists), while
/// the function keeps running; an instance restored from it holds the same state.
#[test]
fn a_template_is_made_by_annotation_once_the_function_is_ready() {
    let c = ctr();
    let case = Case::new(&c, "auto");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    let mb = trenv_integration::pyfn::state_mb(32);
    let state = format!("FN_STATE_MB={mb}");
    let create = format!("io.trenv.template.create={name}");
    let log_file = LOG_ENV.trim_start_matches("FN_LOG=");
    let ready_file = format!("io.trenv.template.ready-file={log_file}");
    run_detached(
        &c,
        src,
        &[
            "--env",
            &state,
            "--env",
            LOG_ENV,
            "--annotation",
            &create,
            "--annotation",
            &ready_file,
        ],
        PYFN,
        &[],
    );
    // The template first, then the function's log: reading the log execs a process in the
    // container, which would be in its freezer cgroup while CRIU dumps it (CRIU then waits
    // for that foreign process until its 10 s timeout).
    let start = Instant::now();
    let limit = Duration::from_secs(60 * trenv_integration::time_scale());
    while trenv(&["template", "inspect", name, "-n", &c.namespace]).code != 0 {
        assert!(
            start.elapsed() < limit,
            "template {name} was not made within {limit:?}; shim log in containerd's log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = field(&wait_line(&c, src, "ready ", 0), "state=");
    let m = inspect(&c, name);
    assert_eq!(m["source_container"], src.as_str());
    assert!(m["conversion"]["bytes_moved"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(
        signal_state(&c, src, "SIGUSR1"),
        ready,
        "the source changed"
    );
    let annotation = format!("{ANNOTATION}={name}");
    let env = function_env(mb);
    run_detached(
        &c,
        id,
        &with_env(&env, &["--annotation", &annotation]),
        PYFN,
        &[],
    );
    assert_eq!(
        signal_state(&c, id, "SIGUSR1"),
        ready,
        "the instance differs"
    );
}

/// Bad values of the template-making annotations are refused at Create, naming the
/// annotation and what it accepts, and leave nothing behind.
#[test]
fn bad_template_making_annotations_are_clear_errors_and_leave_nothing() {
    let c = ctr();
    for (annotations, expect) in [
        (
            vec![
                "io.trenv.template.create=f",
                "io.trenv.template.policy=fast",
            ],
            "io.trenv.template.policy=\"fast\": expected map",
        ),
        (
            vec![
                "io.trenv.template.create=f",
                "io.trenv.template.ready-file=../ready",
            ],
            "give an absolute path",
        ),
        (
            vec!["io.trenv.template.ready-file=/tmp/ready"],
            "need io.trenv.template.create=NAME",
        ),
    ] {
        let id = unique_id("tpl-badann");
        let _cleanup = Cleanup {
            ctr: &c,
            containers: vec![id.clone()],
            templates: vec![],
        };
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        for a in &annotations {
            args.extend(["--annotation", a]);
        }
        args.extend([BUSYBOX, &id, "sleep", "100"]);
        let r = c.run(&args);
        assert_ne!(r.code, 0, "{annotations:?} accepted");
        assert!(r.stderr.contains(expect), "{annotations:?}: {r:#?}");
        assert!(c.task_status(&id).is_none());
        assert_nothing_left(&c, &id);
    }
}

#[test]
fn a_template_restores_through_containerds_api_as_faasd_starts_a_task() {
    // faasd (and nerdctl, and any program on containerd's client library) starts a task
    // with Tasks.Create + Tasks.Start over containerd's gRPC API, here without stdio: the
    // restore must work there as it does through ctr, the function's output going to
    // /dev/null as for a cold start (it prints its check line to stdout too).
    let c = ctr();
    let case = Case::new(&c, "api");
    let mb = trenv_integration::pyfn::state_mb(64);
    let ready = start_function(&c, &case.src, mb);
    create_template(&c, &case.name, &case.src);
    c.remove(&case.src);

    case.create_instance(mb);
    let api = trenv_integration::api::Containerd::from_env(&c.namespace).unwrap();
    let started = api.start_task(&case.id).unwrap();
    assert_eq!(api.task_status(&case.id).unwrap(), "RUNNING");
    assert_eq!(started.pid as i32, init_pid(&c, &case.id));
    assert_eq!(signal_state(&c, &case.id, "SIGUSR1"), ready);
    c.remove(&case.id);
    assert_nothing_left(&c, &case.id);
}

/// A template restore whose rootfs cannot be mounted (its writable layer's directory is
/// not there): Create fails naming what is missing, as a failed precondition, and leaves
/// nothing behind.
#[test]
fn a_restore_whose_rootfs_cannot_be_mounted_is_a_clear_error_and_leaves_nothing() {
    let c = ctr();
    let case = Case::new(&c, "nomount");
    start_function(&c, &case.src, 8);
    create_template(&c, &case.name, &case.src);
    c.remove(&case.src);
    case.create_instance(8);
    let api = trenv_integration::api::Containerd::from_env(&c.namespace).unwrap();
    let missing = format!("/nonexistent/{}/upper", case.id);
    let mut edited = false;
    let r = api.create_task_with_rootfs(
        &case.id,
        &trenv_integration::api::TaskIo::default(),
        None,
        None,
        |mounts| {
            for o in mounts.iter_mut().flat_map(|m| m.options.iter_mut()) {
                if o.starts_with("upperdir=") {
                    *o = format!("upperdir={missing}");
                    edited = true;
                }
            }
        },
    );
    assert!(edited, "the snapshot has no writable layer to take away");
    let e = r.expect_err("a rootfs that cannot be mounted was restored into");
    assert!(
        e.message().contains("mounting overlay")
            && e.message()
                .contains(&format!("its upper directory {missing} does not exist")),
        "{}",
        e.message()
    );
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert_ne!(c.task_status(&case.id).as_deref(), Some("RUNNING"));
    c.remove(&case.id);
    assert_nothing_left(&c, &case.id);
}

/// `sleep 1000` of busybox running as `id` (Start answers once it has exec'd: before, its
/// process still mapped the shim's binary, which CRIU cannot dump).
fn run_sleeper(c: &Ctr, id: &str) {
    run_sleeper_with(c, id, &[]);
}

/// [`run_sleeper`] with more `ctr run` flags.
fn run_sleeper_with(c: &Ctr, id: &str, flags: &[&str]) {
    run_detached(c, id, flags, BUSYBOX, &["sleep", "1000"]);
}

/// Another containerd namespace than the tests' own: another tenant.
fn other_namespace(c: &Ctr) -> Ctr {
    let b = c.with_namespace("trenv-test-b");
    b.ensure_images();
    b.ensure_image(PYFN);
    b
}

/// The directory of template `name` of the tests' namespace in the default store.
fn template_dir(c: &Ctr, name: &str) -> PathBuf {
    Path::new("/var/lib/trenv/templates")
        .join(format!("@{}", c.namespace))
        .join(name)
}

/// `ctr run -d` of an instance of template `name`, expected to fail at Create with `expect`
/// and to leave nothing behind.
fn assert_restore_refused(c: &Ctr, id: &str, name: &str, expect: &str) {
    assert_restore_refused_with(c, id, name, &[], expect);
}

/// [`assert_restore_refused`] with more `ctr run` flags.
fn assert_restore_refused_with(c: &Ctr, id: &str, name: &str, flags: &[&str], expect: &str) {
    let annotation = format!("{ANNOTATION}={name}");
    let mut args = vec![
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
    ];
    args.extend_from_slice(flags);
    args.extend([BUSYBOX, id, "sleep", "1000"]);
    let r = c.run(&args);
    assert_ne!(r.code, 0, "{id} was restored from {name}");
    assert!(r.stderr.contains(expect), "{r:#?}");
    assert!(c.task_status(id).is_none());
    let _ = c.run(&["container", "delete", id]);
    assert_nothing_left(c, id);
}

/// A template belongs to the namespace that made it: a container of another namespace
/// asking for it by name gets NOT_FOUND, and does not see it listed.
#[test]
fn a_template_is_restored_only_in_the_namespace_that_made_it() {
    let c = ctr();
    let b = other_namespace(&c);
    let case = Case::new(&c, "tenant");
    let (src, name) = (&case.src, &case.name);
    let id = unique_id("tpl-tenant-b");
    let _cleanup = Cleanup {
        ctr: &b,
        containers: vec![id.clone()],
        templates: vec![],
    };
    run_sleeper(&c, src);
    create_template(&c, name, src);
    assert_restore_refused(&b, &id, name, "not found");
    assert_ne!(
        trenv(&["template", "inspect", name, "-n", &b.namespace]).code,
        0
    );
    let listed = trenv(&["template", "list", "-n", &b.namespace]).stdout;
    assert!(!listed.contains(name.as_str()), "{listed}");
    // The owner still restores it.
    let annotation = format!("{ANNOTATION}={name}");
    run_detached(
        &c,
        &case.id,
        &["--annotation", &annotation],
        BUSYBOX,
        &["sleep", "1000"],
    );
}

/// A container of namespace B annotated `io.trenv.template.create=NAME` while namespace A
/// has template NAME: B gets a template of its own, made from B's function, and A's is
/// untouched and still restores A's function's state.
#[test]
fn a_template_made_by_annotation_in_another_namespace_neither_replaces_nor_shadows_the_first() {
    let c = ctr();
    let b = other_namespace(&c);
    let case = Case::new(&c, "squat");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    let b_src = unique_id("tpl-squat-b-src");
    let _cleanup = Cleanup {
        ctr: &b,
        containers: vec![b_src.clone()],
        templates: vec![name.clone()],
    };
    let ready_a = start_function(&c, src, 8);
    create_template(&c, name, src);
    let before = inspect(&c, name);

    let state = "FN_STATE_MB=16";
    let create = format!("io.trenv.template.create={name}");
    let log_file = LOG_ENV.trim_start_matches("FN_LOG=");
    let ready_file = format!("io.trenv.template.ready-file={log_file}");
    run_detached(
        &b,
        &b_src,
        &[
            "--env",
            state,
            "--env",
            LOG_ENV,
            "--annotation",
            &create,
            "--annotation",
            &ready_file,
        ],
        PYFN,
        &[],
    );
    // The template first, then B's log (an exec during the dump would stall CRIU: see
    // a_template_is_made_by_annotation_once_the_function_is_ready).
    let start = Instant::now();
    let limit = Duration::from_secs(60 * trenv_integration::time_scale());
    while trenv(&["template", "inspect", name, "-n", &b.namespace]).code != 0 {
        assert!(
            start.elapsed() < limit,
            "namespace {} got no template {name} of its own within {limit:?}",
            b.namespace
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_b = field(&wait_line(&b, &b_src, "ready ", 0), "state=");
    assert_ne!(
        ready_a, ready_b,
        "the two functions must differ to tell them apart"
    );
    let after = inspect(&c, name);
    assert_eq!(before, after, "A's template changed");
    assert_eq!(after["source_container"], src.as_str());
    let theirs = inspect(&b, name);
    assert_eq!(theirs["source_container"], b_src.as_str());
    assert_ne!(theirs["pool"]["path"], after["pool"]["path"]);

    let annotation = format!("{ANNOTATION}={name}");
    let env = function_env(8);
    run_detached(
        &c,
        id,
        &with_env(&env, &["--annotation", &annotation]),
        PYFN,
        &[],
    );
    assert_eq!(
        signal_state(&c, id, "SIGUSR1"),
        ready_a,
        "A restored B's function"
    );
    // (B's own template is not restored here: its dump may hold B's log file open, which a
    // fresh instance's root does not have; a_template_is_made_by_annotation… covers it.)
}

/// An image file edited in place with its mtime set back (`touch -d`) once the template
/// was verified: its ctime gives it away.
#[test]
fn an_image_edited_in_place_with_its_mtime_restored_is_caught() {
    let c = ctr();
    let case = Case::new(&c, "ctime");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    run_sleeper(&c, src);
    create_template(&c, name, src);
    let images = template_dir(&c, name).join("images");
    let file = trenv_integration::core_image(&images);
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let since = mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .write_all_at(&bytes[last..], last as u64)
        .unwrap();
    let touched = std::process::Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{}.{:09}", since.as_secs(), since.subsec_nanos()))
        .arg(&file)
        .status()
        .unwrap();
    assert!(touched.success());
    assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), mtime);
    assert_restore_refused(&c, id, name, "modified or corrupted");
}

/// An image file changed between the task's Create, which checks the template, and its
/// Start, which restores it reading the images in place (through a read-only bind): the
/// restore checks them again, fails with FAILED_PRECONDITION naming the file, and leaves
/// nothing behind. (A chmod changes no byte, only the file's ctime.)
/// The state letter of process `pid` (`/proc/PID/stat`: R, S, T for stopped, …).
fn proc_state(pid: i32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

/// `containers create` of busybox's `sleep 1000` as `id`, restored from template `name`.
fn create_restoring(c: &Ctr, id: &str, name: &str) {
    let annotation = format!("{ANNOTATION}={name}");
    let created = c.run(&[
        "containers",
        "create",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        BUSYBOX,
        id,
        "sleep",
        "1000",
    ]);
    assert_eq!(created.code, 0, "{created:#?}");
}

/// A template restore happens at Create, as a cold start's init is created there: Create
/// answers with the restored process (stopped, its namespaces in place: faasd attaches its
/// network between Create and Start), and Start continues it. A task deleted before Start
/// leaves nothing; images changed after a Create do not touch the task restored from them,
/// and the next Create refuses them.
#[test]
fn a_template_restore_answers_create_with_a_stopped_process_that_start_continues() {
    let c = ctr();
    let case = Case::new(&c, "late");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    run_sleeper(&c, src);
    create_template(&c, name, src);
    let api = trenv_integration::api::Containerd::from_env(&c.namespace)
        .unwrap_or_else(|e| panic!("{e}"));

    // Deleted before Start: the stopped tree goes with it.
    let early = unique_id("tpl-early");
    let _early = Cleanup {
        ctr: &c,
        containers: vec![early.clone()],
        templates: Vec::new(),
    };
    create_restoring(&c, &early, name);
    let pid = api
        .create_task(&early)
        .unwrap_or_else(|e| panic!("Create of {early} from {name}: {e:?}")) as i32;
    assert!(pid > 0, "Create answered pid {pid}");
    assert_eq!(proc_state(pid), 'T', "{early}'s restored init before Start");
    api.delete_task(&early)
        .expect("deleting a task never started");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || proc_state(pid) == 'Z',
        "{early}'s restored init outlived its task"
    );
    c.remove(&early);
    assert_nothing_left(&c, &early);

    create_restoring(&c, id, name);
    let pid = api
        .create_task(id)
        .unwrap_or_else(|e| panic!("Create of {id} from {name}: {e:?}")) as i32;
    assert_eq!(proc_state(pid), 'T', "{id}'s restored init before Start");
    assert_eq!(api.task_status(id).unwrap(), "CREATED");
    // The binds the restore made for CRIU (its root, the template's images) are
    // unmounted by its worker once it answered, while the container lives on.
    let binds = format!("/{id}/criu-");
    let start = Instant::now();
    while fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(&binds))
    {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the restore's binds of {id} are still mounted after its Create"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let netns = fs::read_link(format!("/proc/{pid}/ns/net")).expect("its network namespace");
    let images = template_dir(&c, name).join("images");
    let core = trenv_integration::core_image(&images);
    trenv_integration::flip_mode(&core);
    assert_eq!(api.start(id, "").expect("Start") as i32, pid);
    assert_eq!(api.task_status(id).unwrap(), "RUNNING");
    // On a v1 host the restored init is in the container's `name=systemd` cgroup too, as a
    // cold start's (ctr.rs::processes_join_the_name_systemd_hierarchy_as_on_runc).
    let named = Path::new("/sys/fs/cgroup/systemd");
    if !trenv_integration::cgroup_v2_host() && named.is_dir() {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let line = cgroups
            .lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p.to_string()));
        assert_eq!(
            line,
            Some(format!("/{}/{id}", c.namespace)),
            "the restored init's cgroups: {cgroups}"
        );
    }
    assert_eq!(fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(), netns);
    let start = Instant::now();
    while proc_state(pid) == 'T' {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{id}'s init is still stopped after Start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let next = unique_id("tpl-next");
    let _next = Cleanup {
        ctr: &c,
        containers: vec![next.clone()],
        templates: Vec::new(),
    };
    create_restoring(&c, &next, name);
    let status = match api.create_task(&next) {
        Ok(pid) => panic!("{next} was restored (pid {pid}) from a template changed since"),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let file = core.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        status.message().contains(&format!("{file} was modified")),
        "{status:?}"
    );
    c.remove(&next);
    assert_nothing_left(&c, &next);
    c.remove(id);
    assert_nothing_left(&c, id);
}

/// A manifest edited after the template was made (here only its source's name, which no
/// other check covers) is refused.
#[test]
fn a_tampered_manifest_is_caught() {
    let c = ctr();
    let case = Case::new(&c, "manifest");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    run_sleeper(&c, src);
    create_template(&c, name, src);
    let path = template_dir(&c, name).join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replace(&format!("\"{src}\""), "\"someone-else\"");
    assert_ne!(edited, text);
    fs::write(&path, edited).unwrap();
    assert_restore_refused(&c, id, name, "modified or corrupted");
}

/// `trenv template rm` of a template whose manifest cannot be read removes it and its file
/// in the pool (memory, on a tmpfs pool).
#[test]
fn a_template_with_a_corrupt_manifest_is_removed_with_its_pool_file() {
    let c = ctr();
    let case = Case::new(&c, "corrupt");
    let (src, name) = (&case.src, &case.name);
    run_sleeper(&c, src);
    create_template(&c, name, src);
    let pool_file = PathBuf::from(inspect(&c, name)["pool"]["path"].as_str().unwrap());
    let dir = template_dir(&c, name);
    fs::write(dir.join("manifest.json"), "{ this is not a manifest").unwrap();
    assert_ne!(
        trenv(&["template", "inspect", name, "-n", &c.namespace]).code,
        0
    );
    let rm = trenv(&["template", "rm", name, "-n", &c.namespace]);
    assert_eq!(rm.code, 0, "{}{}", rm.stdout, rm.stderr);
    assert!(!dir.exists(), "{} left", dir.display());
    assert!(!pool_file.exists(), "{} left", pool_file.display());
}

/// `[templates] max_per_tenant` and `max_bytes_per_tenant`: a tenant at its bound makes no
/// template (RESOURCE_EXHAUSTED in the runtime; the CLI says which bound and what to do)
/// and nothing of it is left in the store or the pool.
#[test]
fn the_per_tenant_bound_refuses_a_template_and_leaves_nothing() {
    let c = ctr();
    let case = Case::new(&c, "bound");
    let src = &case.src;
    let second = unique_id("bound2");
    start_function(&c, src, 16);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // /dev/shm is a tmpfs: a pool of kind tmpfs without a mount of our own.
    let pool = PathBuf::from(format!("/dev/shm/trenv-test-bound-{}", std::process::id()));
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(pool.clone());
    let config = |bounds: &str| {
        let path = dir.path().join("config.toml");
        fs::write(
            &path,
            format!(
                "[templates]\ndir = \"{}\"\n{bounds}\n[pool]\nkind = \"tmpfs\"\ndir = \"{}\"\n",
                store.display(),
                pool.display()
            ),
        )
        .unwrap();
        path
    };
    let tenant_files = |root: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join(format!("@{}", c.namespace)))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let create = |name: &str, cfg: &Path| {
        trenv(&[
            "template",
            "create",
            name,
            "--from",
            src,
            "-n",
            &c.namespace,
            "--config",
            cfg.to_str().unwrap(),
        ])
    };

    // One template allowed: the first is made, the second refused before any dump.
    let one = config("max_per_tenant = 1\nmax_bytes_per_tenant = 0");
    let r = create(&case.name, &one);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (store_before, pool_before) = (tenant_files(&store), tenant_files(&pool));
    assert_eq!(store_before, std::slice::from_ref(&case.name));
    let r = create(&second, &one);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("cannot make another template"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("max_per_tenant = 1"), "{}", r.stderr);
    assert!(r.stderr.contains("trenv template rm NAME"), "{}", r.stderr);
    assert_eq!(tenant_files(&store), store_before);
    assert_eq!(tenant_files(&pool), pool_before);

    // 1 MiB of pool files allowed, none used: the 16 MiB function's template is refused
    // once its pool file is written, and that file removed.
    let small = config("max_per_tenant = 0\nmax_bytes_per_tenant = 1048576");
    let rm = trenv(&[
        "template",
        "rm",
        &case.name,
        "-n",
        &c.namespace,
        "--config",
        small.to_str().unwrap(),
    ]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    let r = create(&second, &small);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("and this template") && r.stderr.contains("max_bytes_per_tenant"),
        "{}",
        r.stderr
    );
    assert!(
        tenant_files(&store).is_empty(),
        "{:?}",
        tenant_files(&store)
    );
    assert!(tenant_files(&pool).is_empty(), "{:?}", tenant_files(&pool));
    assert_eq!(c.task_status(src).as_deref(), Some("RUNNING"));
}

/// `ctr task exec` of `args` in `id`, its stdout trimmed.
fn exec_out(c: &Ctr, id: &str, args: &[&str]) -> String {
    let exec_id = unique_id("probe");
    let mut a = vec!["task", "exec", "--exec-id", &exec_id, id];
    a.extend_from_slice(args);
    let r = c.run(&a);
    assert_eq!(r.code, 0, "{args:?} in {id}: {r:#?}");
    r.stdout.trim().to_string()
}

/// A restored container answers `hostname` with its own spec's name, as a cold start
/// does (CRIU restores the template's UTS namespace, name included); without one, with the
/// host's, which a cold start's fresh UTS namespace inherits.
#[test]
fn a_restore_answers_hostname_with_its_own_spec_s_name() {
    let c = ctr();
    let case = Case::new(&c, "uts");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    let plain = unique_id("tpl-uts-plain");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![plain.clone()],
        templates: vec![],
    };
    run_sleeper_with(&c, src, &["--hostname", "template-source"]);
    create_template(&c, name, src);
    assert_eq!(exec_out(&c, src, &["hostname"]), "template-source");
    c.remove(src);
    let annotation = format!("{ANNOTATION}={name}");
    run_sleeper_with(
        &c,
        id,
        &[
            "--hostname",
            "restored-instance",
            "--annotation",
            &annotation,
        ],
    );
    assert_eq!(exec_out(&c, id, &["hostname"]), "restored-instance");
    run_sleeper_with(&c, &plain, &["--annotation", &annotation]);
    let host = nix_hostname();
    assert_eq!(exec_out(&c, &plain, &["hostname"]), host);
    c.remove(id);
    c.remove(&plain);
    assert_nothing_left(&c, id);
    assert_nothing_left(&c, &plain);
}

/// This host's name.
fn nix_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// `cat FILE` run on the host inside the network and IPC namespaces of `pid`.
fn in_namespaces_of(pid: i32, file: &str) -> String {
    let o = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-i", "cat", file])
        .output()
        .expect("running nsenter");
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The soft and hard limit `limit` (as /proc/PID/limits names it) of process `pid`.
fn limits_of(pid: i32, limit: &str) -> (String, String) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(limit))
        .unwrap_or_else(|| panic!("no {limit} in {text}"));
    let mut f = line[limit.len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

/// The restoring container's sysctls, rlimits and oom_score_adj are in effect in the
/// restored function (CRIU restores the template's), as after a cold start. `ctr` has no
/// flags for them: the container's spec is edited through containerd's API before its task
/// is created.
#[test]
fn sysctls_rlimits_and_oom_score_adj_of_the_restoring_spec_hold_after_a_restore() {
    let c = ctr();
    let case = Case::new(&c, "limits");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    run_sleeper(&c, src);
    let src_pid = init_pid(&c, src);
    let before = in_namespaces_of(src_pid, "/proc/sys/net/ipv4/ip_unprivileged_port_start");
    assert_ne!(before, "81");
    assert_ne!(limits_of(src_pid, "Max open files").0, "500");
    create_template(&c, name, src);
    c.remove(src);
    let annotation = format!("{ANNOTATION}={name}");
    let r = c.run(&[
        "containers",
        "create",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        BUSYBOX,
        id,
        "sleep",
        "1000",
    ]);
    assert_eq!(r.code, 0, "containers create: {}", r.stderr);
    let api = trenv_integration::api::Containerd::from_env(&c.namespace).unwrap();
    api.edit_spec(id, |spec| {
        spec["linux"]["sysctl"] = serde_json::json!({
            "net.ipv4.ip_unprivileged_port_start": "81",
            "kernel.shmmni": "1234",
        });
        // Below containerd's default (1024): raising a hard limit above the restored
        // one's takes CAP_SYS_RESOURCE, which the test bed's root may lack.
        spec["process"]["rlimits"] = serde_json::json!([
            {"type": "RLIMIT_NOFILE", "soft": 500, "hard": 1000},
        ]);
        spec["process"]["oomScoreAdj"] = serde_json::json!(321);
    })
    .unwrap();
    let pid = api.start_task(id).unwrap().pid as i32;
    assert_eq!(
        in_namespaces_of(pid, "/proc/sys/net/ipv4/ip_unprivileged_port_start"),
        "81"
    );
    assert_eq!(in_namespaces_of(pid, "/proc/sys/kernel/shmmni"), "1234");
    assert_eq!(
        limits_of(pid, "Max open files"),
        ("500".into(), "1000".into())
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim(),
        "321"
    );
    c.remove(id);
    assert_nothing_left(&c, id);
}

/// A restored process keeps the template's environment, which nothing can change: a
/// container whose spec sets a variable otherwise is refused at Create, the variable named
/// (its values not shown), and leaves nothing behind.
#[test]
fn a_restore_whose_environment_differs_is_refused_naming_the_variable() {
    let c = ctr();
    let case = Case::new(&c, "env");
    let (src, name, id) = (&case.src, &case.name, &case.id);
    run_sleeper_with(&c, src, &["--env", "FN_MODE=template-value"]);
    create_template(&c, name, src);
    c.remove(src);
    assert_restore_refused_with(
        &c,
        id,
        name,
        &["--env", "FN_MODE=other-value"],
        "the template's environment has FN_MODE=<a different value>",
    );
    assert_restore_refused_with(&c, id, name, &[], "process.env");
    // The same environment restores.
    let annotation = format!("{ANNOTATION}={name}");
    run_sleeper_with(
        &c,
        id,
        &[
            "--env",
            "FN_MODE=template-value",
            "--annotation",
            &annotation,
        ],
    );
}

/// A function whose allocator takes memory it discarded for zeros: jemalloc (Debian's
/// libjemalloc2, `trenv_jemalloc` in integration/scripts/lib.sh), preloaded into Python.
/// It fills 32 buffers of 1 MiB and says where they are; on SIGUSR1 it frees them, has
/// jemalloc purge them (MADV_DONTNEED, after which jemalloc marks them zeroed) and
/// callocs as many again, which jemalloc hands out without clearing them: it reports how
/// many read all zeros and how many lie where the first buffers were.
const JEMALLOC_FN: &str = "import ctypes, signal, time\n\
    libc = ctypes.CDLL(None)\n\
    libc.malloc.restype = ctypes.c_void_p\n\
    libc.malloc.argtypes = [ctypes.c_size_t]\n\
    libc.calloc.restype = ctypes.c_void_p\n\
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]\n\
    libc.free.argtypes = [ctypes.c_void_p]\n\
    libc.mallctl.argtypes = [ctypes.c_char_p] + [ctypes.c_void_p] * 3 + [ctypes.c_size_t]\n\
    N, SIZE = 32, 1 << 20\n\
    def out(line):\n    with open('/tmp/fn.log', 'a') as f:\n        f.write(line + '\\n')\n\
    bufs = [libc.malloc(SIZE) for _ in range(N)]\n\
    for b in bufs:\n    ctypes.memset(b, 0xA5, SIZE)\n\
    lo, hi = min(bufs), max(bufs) + SIZE\n\
    go = []\n\
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))\n\
    out(f'ready lo={lo} hi={hi} bufs=' + ','.join(map(str, bufs)))\n\
    while not go:\n    time.sleep(0.02)\n\
    for b in bufs:\n    libc.free(b)\n\
    purge = libc.mallctl(b'arena.4096.purge', None, None, None, 0)\n\
    again = [libc.calloc(1, SIZE) for _ in range(N)]\n\
    inside = sum(lo <= a and a + SIZE <= hi for a in again)\n\
    zeroed = sum(ctypes.string_at(a, SIZE).count(0) == SIZE for a in again)\n\
    out(f'check purge={purge} zeroed={zeroed} inside={inside} of={N}')\n\
    while True:\n    time.sleep(60)\n";

/// The directory holding Debian's libjemalloc.so.2 (integration/test.sh fetches it).
fn jemalloc_dir() -> PathBuf {
    let cache = std::env::var("TRENV_CACHE").unwrap_or_else(|_| "/var/cache/trenv".into());
    let dir = Path::new(&cache).join("jemalloc");
    assert!(
        dir.join("libjemalloc.so.2").is_file(),
        "no {}/libjemalloc.so.2: run `. integration/scripts/lib.sh; trenv_jemalloc` (as \
         integration/test.sh does)",
        dir.display()
    );
    dir
}

/// A function using jemalloc restored from a template is correct with either memory
/// backend, under the default policy. With the pool-file mapping (stock kernels), a
/// mapped VMA would read the template's data again after MADV_DONTNEED, and jemalloc's
/// calloc would hand that out as zeros: the conversion sees jemalloc and maps nothing
/// (every page copied at restore). With the kernel backend (trenv-mmt, the VM test bed)
/// discarded memory reads zeros, so the template maps the function's memory like any
/// other's — jemalloc's buffers included — and says its restores need that backend.
#[test]
fn a_jemalloc_function_restored_from_a_template_is_correct_with_either_memory_backend() {
    let c = ctr();
    let case = Case::new(&c, "jemalloc");
    let mount = format!(
        "type=bind,src={},dst=/opt/jemalloc,options=rbind:ro",
        jemalloc_dir().display()
    );
    let flags = [
        "--mount",
        mount.as_str(),
        "--env",
        "LD_PRELOAD=/opt/jemalloc/libjemalloc.so.2",
        "--env",
        "MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0",
    ];
    let args = ["python3", "-c", JEMALLOC_FN];
    run_detached(&c, &case.src, &flags, PYFN, &args);
    let ready = wait_line(&c, &case.src, "ready ", 0);
    let made = case.create(&[]);
    assert_eq!(made.code, 0, "{}{}", made.stdout, made.stderr);
    c.remove(&case.src);

    let m = inspect(&c, &case.name);
    let backend = m["memory_backend"].as_str().unwrap().to_string();
    if let Ok(expect) = std::env::var("TRENV_MMT_EXPECT") {
        assert_eq!(backend, expect, "{m:#}");
    }
    let conversion = &m["conversion"];
    let vmas: Vec<(u64, u64)> = serde_json::from_value(conversion["vmas"].clone()).unwrap();
    // Every buffer inside the converted VMAs (jemalloc's extents may span several).
    let bufs: Vec<u64> = field(&ready, "bufs=")
        .split(',')
        .map(|b| b.parse().unwrap())
        .collect();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    let mut sorted = vmas.clone();
    sorted.sort();
    for (s, e) in sorted {
        match merged.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => merged.push((s, e)),
        }
    }
    let covered = bufs.len() == 32
        && bufs
            .iter()
            .all(|&b| merged.iter().any(|&(s, e)| s <= b && b + (1 << 20) <= e));
    match backend.as_str() {
        "kernel" => {
            assert!(conversion.get("fallback").is_none(), "{m:#}");
            let why = conversion["needs_anonymous"].as_str().unwrap_or_default();
            assert!(why.contains("libjemalloc.so.2: jemalloc"), "{m:#}");
            assert!(
                covered,
                "jemalloc's buffers {bufs:x?} not all mapped: {m:#}"
            );
        }
        "pool-file" => {
            let why = conversion["fallback"].as_str().unwrap_or_default();
            assert!(why.contains("libjemalloc.so.2: jemalloc"), "{m:#}");
            assert!(vmas.is_empty(), "{m:#}");
            assert!(conversion.get("needs_anonymous").is_none(), "{m:#}");
        }
        other => panic!("memory backend {other:?}: {m:#}"),
    }

    let annotation = format!("{ANNOTATION}={}", case.name);
    let mut restore_flags = flags.to_vec();
    restore_flags.extend(["--annotation", annotation.as_str()]);
    run_detached(&c, &case.id, &restore_flags, PYFN, &args);
    c.run(&["task", "kill", "-s", "SIGUSR1", &case.id]).ok();
    let check = wait_line(&c, &case.id, "check ", 0);
    assert_eq!(field(&check, "purge="), "0", "{check}");
    assert_eq!(
        field(&check, "zeroed="),
        "32",
        "calloc read old data: {check}"
    );
    // The purged buffers were the template's memory, and calloc handed it out again.
    let inside: u32 = field(&check, "inside=").parse().unwrap();
    assert!(
        inside >= 16,
        "calloc did not reuse the purged buffers: {check}"
    );
}

/// The kB of `field` (e.g. "ShmemPmdMapped") summed over the VMAs of /proc/`pid`/smaps
/// that map `file`.
fn smaps_kib_of_file(pid: i32, file: &str, field: &str) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_file = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-')
            && first
                .split_once('-')
                .is_some_and(|(a, _)| u64::from_str_radix(a, 16).is_ok())
        {
            in_file = line.split_whitespace().nth(5) == Some(file);
        } else if in_file
            && let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':'))
        {
            kib += v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib
}

#[test]
fn a_restored_instance_maps_its_template_2_mib_at_a_time_from_the_huge_page_pool() {
    let c = ctr();
    let src = unique_id("tpl-src");
    let name = unique_id("huge");
    let id = unique_id("tpl-huge");
    let _cleanup = Cleanup {
        ctr: &c,
        containers: vec![src.clone(), id.clone()],
        templates: vec![name.clone()],
    };
    let mb = trenv_integration::pyfn::state_mb(64);
    let ready = start_function(&c, &src, mb);
    create_template(&c, &name, &src);
    c.remove(&src);
    let manifest = inspect(&c, &name);
    if manifest["memory_backend"].as_str() != Some("pool-file") {
        // The kernel backend (the VM test bed) fills page tables itself.
        return;
    }
    let pool_file = manifest["pool"]["path"].as_str().unwrap().to_string();
    // integration/setup.sh mounts the pool in 2 MiB pages.
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let pool_dir = Path::new(&pool_file).parent().unwrap().parent().unwrap();
    assert!(
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && Path::new(f[1]) == pool_dir && f[3].contains("huge=")
        }),
        "the pool {} is not mounted with huge=: {mounts}",
        pool_dir.display()
    );
    let env = function_env(mb);
    let annotation = format!("{ANNOTATION}={name}");
    run_detached(
        &c,
        &id,
        &with_env(&env, &["--annotation", &annotation]),
        PYFN,
        &[],
    );
    // A request that reads every page of the state maps the template in.
    let seen = trenv_integration::pyfn::log_lines(&c, &id).len();
    c.run(&["task", "kill", "-s", "SIGHUP", &id]);
    let touched = wait_line(&c, &id, "touched ", seen);
    let pages: u64 = field(&touched, "pages=").parse().unwrap();
    assert!(pages * 4096 >= 32 << 20, "{touched}");
    let pid = init_pid(&c, &id);
    let pmd = smaps_kib_of_file(pid, &pool_file, "ShmemPmdMapped")
        + smaps_kib_of_file(pid, &pool_file, "FilePmdMapped");
    let rss = smaps_kib_of_file(pid, &pool_file, "Rss");
    // The state's mmap (2 MiB aligned, tens of MiB) is mapped by 2 MiB pages: most of
    // what the instance maps of the template.
    assert!(
        pmd >= 16 << 10 && pmd * 2 >= rss,
        "{id} maps {rss} kB of {pool_file}, only {pmd} kB of it by 2 MiB pages \
         (ShmemHugePages: {})",
        fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("ShmemHugePages"))
            .unwrap_or("?")
    );
    // Still the template's state, and its writes its own.
    assert_eq!(signal_state(&c, &id, "SIGUSR1"), ready);
    assert_ne!(signal_state(&c, &id, "SIGUSR2"), ready);
    c.remove(&id);
    assert_nothing_left(&c, &id);
}

/// The shim's line on how it restored container `id` (containerd's log): its phases, the
/// first of which says whether CRIU was started ahead ("criu ahead") or not ("criu spawn").
fn restore_line(id: &str) -> String {
    let log = std::env::var("CONTAINERD_LOG").expect("CONTAINERD_LOG (containerd.sh env)");
    let needle = format!("restored {id} (pid");
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().rev().find(|l| l.contains(&needle)) {
            return l.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {needle:?} line in {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The spare restorers of shim `shim` (worker/spare.rs: `trenv-spare` children of its
/// zygote), each with its CRIU once started.
fn spares_of(shim: i32) -> Vec<(i32, Option<i32>)> {
    let comm = |p: i32| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    trenv_integration::pids_named("trenv-spare")
        .into_iter()
        .filter(|&s| parent_of(s).and_then(parent_of) == Some(shim))
        .map(|s| {
            let criu = trenv_integration::pids_named("criu")
                .into_iter()
                .find(|&c| parent_of(c) == Some(s) && comm(c).trim() == "criu");
            (s, criu)
        })
        .collect()
}

/// Waits (at most 10 s) for a spare of `shim` whose CRIU runs, other than `not`, then
/// long enough for that CRIU to be ready (it takes ~2 ms); answers (spare, CRIU).
fn ready_spare(shim: i32, not: &[i32]) -> (i32, i32) {
    let start = Instant::now();
    loop {
        if let Some((s, Some(criu))) = spares_of(shim).into_iter().find(|(s, _)| !not.contains(s)) {
            std::thread::sleep(Duration::from_millis(500));
            return (s, criu);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "shim {shim} keeps no spare restorer: {:?}",
            spares_of(shim)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(pid: i32, signal: &str) {
    let st = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -s {signal} {pid}");
}

fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

fn wait_gone(pid: i32, what: &str) {
    let start = Instant::now();
    while !gone(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} (pid {pid}) still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spare restorers (worker/spare.rs): a shared shim keeps a worker whose CRIU was started
/// ahead; a restore takes it ("criu ahead") and the shim makes another. One whose CRIU was
/// stopped is not used (the restore starts its own CRIU and the stopped one is removed),
/// one whose CRIU died is replaced; each instance is correct; and a killed shim takes its
/// spare and its CRIU with it.
#[test]
fn a_shared_shim_restores_with_a_spare_restorer_and_never_with_a_stopped_or_dead_one() {
    let c = ctr();
    let case = Case::new(&c, "spare");
    let ready = start_function(&c, &case.src, 64);
    let r = case.create(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.remove(&case.src);
    let env = function_env(64);
    let annotation = format!("{ANNOTATION}={}", case.name);
    let flags = with_env(
        &env,
        &[
            "--annotation",
            &annotation,
            "--annotation",
            "io.trenv.shim=shared",
        ],
    );
    let mut cleanup = Cleanup {
        ctr: &c,
        containers: Vec::new(),
        templates: Vec::new(),
    };
    let mut restore = |n: usize| {
        let id = format!("{}-{n}", case.id);
        cleanup.containers.push(id.clone());
        run_detached(&c, &id, &flags, PYFN, &[]);
        assert_eq!(signal_state(&c, &id, "SIGUSR1"), ready, "instance {id}");
        (id.clone(), restore_line(&id))
    };

    let (first, _) = restore(1);
    let shim = parent_of(init_pid(&c, &first)).expect("the shared shim");
    let (spare, _) = ready_spare(shim, &[]);
    let (_, line) = restore(2);
    assert!(line.contains("criu ahead"), "{line}");
    wait_gone(spare, "the spare the restore took, once it served");

    // Stopped: not used, and removed.
    let (spare, criu) = ready_spare(shim, &[spare]);
    send_signal(criu, "STOP");
    let (_, line) = restore(3);
    assert!(line.contains("criu spawn"), "{line}");
    wait_gone(criu, "the stopped CRIU of a spare");

    // Dead: the spare goes, another comes, restores go on.
    let (spare, criu) = ready_spare(shim, &[spare]);
    send_signal(criu, "KILL");
    wait_gone(spare, "a spare whose CRIU died");
    restore(4);

    // The shim killed: its spare and that spare's CRIU go with it.
    let (spare, criu) = ready_spare(shim, &[spare]);
    drop(cleanup);
    send_signal(shim, "KILL");
    wait_gone(spare, "the spare of a killed shim");
    wait_gone(criu, "the CRIU of a killed shim's spare");
}
