//! Bad input, side by side with runc: each row of a table (a spec field or an annotation,
//! and a bad value) runs as one container on containerd's runc.v2 and one on trenv, through
//! `ctr run --config` with a whole spec, and for every row:
//!
//! * trenv is at least as strict as runc: what runc refuses, trenv refuses;
//! * what both run behaves the same (exit code and output);
//! * trenv's refusal names the field and the value (and for a spec field, says to fix the
//!   container's configuration; an annotation's says what it takes);
//! * nothing is left behind on either runtime: no task, container, shim, mount, bundle or
//!   cgroup (and for a cgroups path with `..`, nothing outside the cgroup hierarchies,
//!   looked for while the container runs: a runtime that escaped removes what it made
//!   when the container is deleted).
//!
//! runc ignores annotations: the `io.trenv.*` rows run there and are refused by trenv.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use trenv_integration::cri::{containerd_state_dir, mounts_under, wait_for};
use trenv_integration::{Ctr, RUNTIME, Run, pids_matching, unique_id};

const NAMESPACE: &str = "trenv-badinput";
const RUNC: &str = "io.containerd.runc.v2";
/// How long a shim may take to exit after its container is gone.
const SHIM_EXIT: Duration = Duration::from_secs(10);
const FIX: &str = "fix the container's configuration";

fn ctr() -> Ctr {
    Ctr::from_env().with_namespace(NAMESPACE)
}

/// What a row must do.
enum Want {
    /// trenv refuses, with a message saying all of these (runc may refuse or run).
    Refused(Vec<String>),
    /// Both run it, alike.
    Runs,
}

/// One input: a name, how it changes a spec that runs, what trenv must do.
struct Row {
    name: &'static str,
    edit: Box<dyn Fn(&mut Value)>,
    want: Want,
}

impl Row {
    fn refused(name: &'static str, edit: impl Fn(&mut Value) + 'static, says: &[&str]) -> Row {
        Row {
            name,
            edit: Box::new(edit),
            want: Want::Refused(says.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn runs(name: &'static str, edit: impl Fn(&mut Value) + 'static) -> Row {
        Row {
            name,
            edit: Box::new(edit),
            want: Want::Runs,
        }
    }
}

/// A file or directory removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A root filesystem holding only the host's static busybox.
fn busybox_rootfs() -> TempPath {
    let dir = TempPath(std::env::temp_dir().join(unique_id("trenv-bad-rootfs")));
    std::fs::create_dir_all(dir.0.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a static busybox on the host (Debian's busybox-static or busybox)");
    std::fs::copy(busybox, dir.0.join("bin/busybox")).unwrap();
    dir
}

/// containerd's default spec (`ctr oci spec`) for container `id`, running busybox `args`
/// from `rootfs` (read-only), changed by `edit`; written to a file.
fn spec_file(
    c: &Ctr,
    id: &str,
    rootfs: &Path,
    args: &[&str],
    edit: &dyn Fn(&mut Value),
) -> TempPath {
    let out = c.run(&["oci", "spec"]).ok().stdout;
    let mut spec: Value = serde_json::from_str(&out).expect("ctr oci spec: JSON");
    spec["root"] = json!({ "path": rootfs, "readonly": true });
    let mut argv = vec!["/bin/busybox"];
    argv.extend_from_slice(args);
    spec["process"]["args"] = json!(argv);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/{}/{id}", c.namespace).into();
    edit(&mut spec);
    let file = TempPath(std::env::temp_dir().join(unique_id("trenv-bad-spec")));
    std::fs::write(&file.0, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    file
}

/// What one runtime did with one row.
struct Outcome {
    runtime: &'static str,
    run: Run,
}

impl Outcome {
    fn refused(&self) -> bool {
        self.run.code != 0
    }
}

/// Runs `args` in busybox with the row's spec on `runtime`, attached and removed
/// afterwards; then checks that nothing of it is left.
fn run_row(c: &Ctr, row: &Row, runtime: &'static str, args: &[&str]) -> Outcome {
    let id = unique_id(&format!(
        "bad-{}",
        if runtime == RUNC { "runc" } else { "trenv" }
    ));
    let rootfs = busybox_rootfs();
    let spec = spec_file(c, &id, &rootfs.0, args, &row.edit);
    let run = c.run(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--config",
        spec.0.to_str().unwrap(),
        &id,
    ]);
    assert_nothing_left(c, &id, runtime, row.name);
    Outcome { runtime, run }
}

/// The checks of every row, on both runtimes.
fn check_rows(rows: Vec<Row>, args: &[&str]) {
    let c = ctr();
    for row in rows {
        let runc = run_row(&c, &row, RUNC, args);
        let trenv = run_row(&c, &row, RUNTIME, args);
        let both = format!(
            "row {:?}:\n  runc: {:?}\n  trenv: {:?}",
            row.name, runc.run, trenv.run
        );
        if runc.refused() {
            assert!(
                trenv.refused(),
                "{}: runc refuses, trenv runs it\n{both}",
                trenv.runtime
            );
        }
        match &row.want {
            Want::Refused(says) => {
                assert!(trenv.refused(), "trenv ran it\n{both}");
                let err = trenv.run.stderr.to_lowercase();
                for s in says {
                    assert!(
                        err.contains(&s.to_lowercase()),
                        "trenv's message does not say {s:?}\n{both}"
                    );
                }
            }
            Want::Runs => {
                assert!(
                    !runc.refused() && !trenv.refused(),
                    "{} refused it\n{both}",
                    runc.runtime
                );
                assert_eq!(
                    trenv.run.stdout, runc.run.stdout,
                    "different output\n{both}"
                );
            }
        }
    }
}

/// `containerd-shim-runc-v2` or `containerd-shim-trenv-v1` processes of container `id`.
fn shims_of(runtime: &str, id: &str) -> Vec<i32> {
    let shim = if runtime == RUNC {
        "containerd-shim-runc-v2"
    } else {
        "containerd-shim-trenv-v1"
    };
    let needle = format!("-id {id} ");
    pids_matching(shim)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(&needle)
            })
        })
        .collect()
}

/// No task, container, shim, mount, bundle or cgroup of `id`.
fn assert_nothing_left(c: &Ctr, id: &str, runtime: &str, row: &str) {
    let at = format!("row {row:?} on {runtime}");
    c.remove(id);
    assert!(c.task_status(id).is_none(), "{at}: a task of {id} is left");
    let listed = c.run(&["containers", "ls", "-q"]).ok().stdout;
    assert!(
        !listed.lines().any(|l| l.trim() == id),
        "{at}: container {id} still listed"
    );
    assert!(
        wait_for(SHIM_EXIT, || shims_of(runtime, id).is_empty()),
        "{at}: the shim of {id} still runs {SHIM_EXIT:?} later"
    );
    let state = containerd_state_dir();
    let mounts = mounts_under(&state, &[id]);
    assert!(mounts.is_empty(), "{at}: mounts left: {mounts:#?}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left: Vec<&str> = info.lines().filter(|l| l.contains(id)).collect();
    assert!(left.is_empty(), "{at}: mounts of {id} left: {left:#?}");
    let bundle = state
        .join("io.containerd.runtime.v2.task")
        .join(&c.namespace)
        .join(id);
    assert!(!bundle.exists(), "{at}: bundle {} left", bundle.display());
    for root in cgroup_roots() {
        let dir = root.join(&c.namespace).join(id);
        assert!(!dir.exists(), "{at}: cgroup {} left", dir.display());
    }
}

/// Mount points of the cgroup hierarchies (v1 controllers, the v2 tree).
fn cgroup_roots() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mount_point = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// `path` joined to `base` and `..` resolved lexically, as a runtime that does not clean it
/// would reach it.
fn lexical_join(base: &Path, path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in base.join(path.trim_start_matches('/')).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// A user id no user has: (uid_t)-1.
const NO_ID: u32 = u32::MAX;

#[test]
fn bad_process_fields_are_refused_at_least_as_strictly_as_runc() {
    let netns = format!("/var/run/netns/{}", unique_id("trenv-no-such-netns"));
    let netns_row = netns.clone();
    check_rows(
        vec![
            Row::refused(
                "process.args []",
                |s| s["process"]["args"] = json!([]),
                &["process.args", "empty", FIX],
            ),
            Row::refused(
                "rlimit soft > hard",
                |s| {
                    s["process"]["rlimits"] =
                        json!([{ "type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024 }])
                },
                &["process.rlimits", "RLIMIT_NOFILE", "2048", "1024", FIX],
            ),
            Row::refused(
                "oomScoreAdj 5000",
                |s| s["process"]["oomScoreAdj"] = 5000.into(),
                &["process.oomScoreAdj", "5000", FIX],
            ),
            Row::refused(
                "uid 4294967295",
                |s| s["process"]["user"]["uid"] = NO_ID.into(),
                &["process.user.uid", "4294967295", FIX],
            ),
            Row::refused(
                "missing netns path",
                move |s| {
                    let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
                    ns.retain(|n| n["type"] != "network");
                    ns.push(json!({ "type": "network", "path": netns_row }));
                },
                &["linux.namespaces", &netns, "does not exist", FIX],
            ),
            Row::runs("no PATH, program named by its path", |s| {
                s["process"]["env"] = json!(["HOME=/"]);
            }),
            Row::refused(
                "unknown seccomp action",
                |s| {
                    s["linux"]["seccomp"] = json!({
                        "defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{ "names": ["mkdir"], "action": "SCMP_ACT_BOGUS" }],
                    })
                },
                &["seccomp", "SCMP_ACT_BOGUS", FIX],
            ),
        ],
        &["echo", "ran"],
    );
}

#[test]
fn a_missing_working_directory_is_created_as_runc_does() {
    check_rows(
        vec![Row::runs("missing cwd", |s| {
            s["process"]["cwd"] = "/work/not/there".into()
        })],
        &["pwd"],
    );
}

#[test]
fn bad_trenv_annotations_are_refused_naming_the_annotation_and_the_value() {
    fn annotate(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&mut Value) {
        move |s| {
            for (k, v) in pairs {
                s["annotations"][*k] = (*v).into();
            }
        }
    }
    check_rows(
        vec![
            Row::refused(
                "meter interval abc",
                annotate(&[("io.trenv.meter.interval-us", "abc")]),
                &["io.trenv.meter.interval-us", "abc"],
            ),
            Row::refused(
                "template policy bogus",
                annotate(&[
                    ("io.trenv.template.create", "badinput-never-made"),
                    ("io.trenv.template.policy", "bogus"),
                ]),
                &["io.trenv.template.policy", "bogus"],
            ),
            Row::refused(
                "template ready-file relative",
                annotate(&[
                    ("io.trenv.template.create", "badinput-never-made"),
                    ("io.trenv.template.ready-file", "relative"),
                ]),
                &["io.trenv.template.ready-file", "relative"],
            ),
            // Read by root, sent by the shim: only to the container's own loopback (here a
            // cloud metadata address, the usual target of a forged request).
            Row::refused(
                "template warm-up to another host",
                annotate(&[
                    ("io.trenv.template.create", "badinput-never-made"),
                    (
                        "io.trenv.template.warmup",
                        "http://169.254.169.254/latest/meta-data",
                    ),
                ]),
                &[
                    "io.trenv.template.warmup",
                    "http://169.254.169.254/latest/meta-data",
                    "own loopback",
                ],
            ),
            Row::refused(
                "reserve many",
                annotate(&[("io.trenv.reserve", "many")]),
                &["io.trenv.reserve", "many"],
            ),
            // Each instance holds node memory: no more than the node's [shim] reserve_max
            // (16 by default).
            Row::refused(
                "reserve above the node's bound",
                annotate(&[("io.trenv.reserve", "100000")]),
                &["io.trenv.reserve=100000", "reserve_max"],
            ),
        ],
        &["echo", "ran"],
    );
}

/// Starts busybox `sleep` with cgroupsPath `path` on `runtime`, and while it runs, checks
/// that nothing exists where `path` would lead out of any cgroup hierarchy; then removes it.
fn cgroups_path_stays_inside(c: &Ctr, runtime: &'static str, path: &str, id: &str) {
    let rootfs = busybox_rootfs();
    let raw = path.to_string();
    let edit = move |s: &mut Value| s["linux"]["cgroupsPath"] = raw.clone().into();
    let spec = spec_file(c, id, &rootfs.0, &["sleep", "30"], &edit);
    let roots = cgroup_roots();
    let outside: Vec<PathBuf> = roots
        .iter()
        .map(|root| lexical_join(root, path))
        .filter(|p| !roots.iter().any(|r| p.starts_with(r)))
        .collect();
    assert!(
        !outside.is_empty(),
        "{path} does not climb out of any hierarchy"
    );
    let r = c.run(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        "--config",
        spec.0.to_str().unwrap(),
        id,
    ]);
    let running = r.code == 0 && c.wait_status(id, "RUNNING", Duration::from_secs(10));
    let escaped: Vec<&PathBuf> = outside.iter().filter(|p| p.exists()).collect();
    c.remove(id);
    for p in &escaped {
        let _ = std::fs::remove_dir(p);
    }
    assert!(running, "{runtime}: cgroupsPath {path} did not run: {r:?}");
    assert!(
        escaped.is_empty(),
        "{runtime}: cgroupsPath {path} made {escaped:?} outside the cgroup hierarchies"
    );
    assert_nothing_left(c, id, runtime, path);
}

#[test]
fn a_cgroups_path_with_dot_dot_runs_and_creates_nothing_outside_the_hierarchy() {
    let c = ctr();
    for runtime in [RUNC, RUNTIME] {
        let id = unique_id("bad-cg-abs");
        cgroups_path_stays_inside(&c, runtime, &format!("/../../../tmp/escape-{id}"), &id);
        let id = unique_id("bad-cg-rel");
        cgroups_path_stays_inside(&c, runtime, &format!("a/../../escape-{id}"), &id);
    }
}
