//! Log URIs and alias mode: what faasd, nerdctl and `ctr run --log-uri` ask of a runtime.
//!
//! containerd's clients can send, instead of FIFO paths, a `binary:///program?k=v` URI (a
//! logging program gets stdout on fd 3, stderr on fd 4 and a readiness pipe on fd 5, and
//! `CONTAINER_ID` / `CONTAINER_NAMESPACE` in its environment) or a `file:///path` URI
//! (appended to). Each test runs the same steps on containerd's runc.v2 and on trenv and
//! expects the same output in the same place: init and exec processes, attached and
//! detached, with and without a terminal (`ctr` cannot combine a terminal with a log URI,
//! so those cases go through containerd's API, as faasd's and nerdctl's client library
//! does). The logging programs must be gone once the task is deleted.
//!
//! Alias mode: trenv installed under runc's shim name (`containerd-shim-runc-v2`), the one
//! way to serve a client that never names a runtime, takes runc's options and runs the
//! task; trenv under its own name still refuses them.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trenv_integration::api::{Containerd, RawOptions, TaskIo};
use trenv_integration::{BUSYBOX, Ctr, RUNTIME, pids_matching, unique_id};

/// containerd's runc shim, the reference.
const RUNC: &str = "io.containerd.runc.v2";
const RUNTIMES: [&str; 2] = [RUNC, RUNTIME];
/// The installed trenv shim (see helper-rules / integration/test.sh).
const TRENV_SHIM: &str = "/usr/local/bin/containerd-shim-trenv-v1";

/// A logging program as containerd's `binary://` URIs run it. Its arguments are the URI's
/// query (`dir DIR`); it records them and its environment, copies fd 3 and fd 4 to files
/// and closes fd 5 once it reads. Every process of it carries DIR in its command line, so
/// the test can tell whether any is left.
const LOGGER: &str = r#"#!/bin/sh
d="$2"
printf '%s\n' "$@" >"$d/args"
printf 'CONTAINER_ID=%s\nCONTAINER_NAMESPACE=%s\n' "$CONTAINER_ID" "$CONTAINER_NAMESPACE" >"$d/env"
while IFS= read -r l; do printf '%s\n' "$l"; done <&3 >"$d/out" 4<&- 5>&- &
while IFS= read -r l; do printf '%s\n' "$l"; done <&4 >"$d/err" 3<&- 5>&- &
exec 3<&- 4<&- 5>&-
wait
"#;

fn ctr() -> Ctr {
    let c = Ctr::from_env();
    c.ensure_images();
    c
}

fn api(c: &Ctr) -> Containerd {
    Containerd::from_env(&c.namespace).unwrap_or_else(|e| panic!("{e}"))
}

/// A scratch directory (removed when dropped) holding logging programs' output.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique_id(prefix));
        fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    /// A logging program writing into `<scratch>/<name>/`, and its `binary://` URI.
    fn logger(&self, name: &str) -> Logger {
        let dir = self.0.join(name);
        fs::create_dir_all(&dir).expect("creating the logger's directory");
        let program = dir.join("logger.sh");
        fs::write(&program, LOGGER).expect("writing the logger");
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        let uri = format!("binary://{}?dir={}", program.display(), dir.display());
        Logger { dir, uri }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Logger {
    dir: PathBuf,
    uri: String,
}

impl Logger {
    /// Waits until no process of this logger is left (it must not outlive its task), then
    /// answers what it wrote to `file`.
    fn finished(&self, runtime: &str, file: &str) -> String {
        self.read(runtime, file, "", true)
    }

    /// What the logger wrote to `file`, once that holds `until`, and once the logger has
    /// exited if `exits`.
    fn read(&self, runtime: &str, file: &str, until: &str, exits: bool) -> String {
        if exits {
            self.assert_gone(runtime);
        }
        let path = self.dir.join(file);
        let seen = wait_for(Duration::from_secs(10), || {
            fs::read_to_string(&path).is_ok_and(|s| s.contains(until))
        });
        assert!(seen, "{runtime}: the logger's {file} did not get {until:?}");
        fs::read_to_string(path).unwrap()
    }

    fn assert_gone(&self, runtime: &str) {
        let needle = self.dir.display().to_string();
        let gone = wait_for(Duration::from_secs(15), || {
            pids_matching(&needle).is_empty()
        });
        assert!(
            gone,
            "{runtime}: the logging program is still running after its task was deleted: {:?}",
            pids_matching(&needle)
        );
    }

    /// Waits until the logger has received `text` on stdout.
    fn wait_output(&self, runtime: &str, text: &str) {
        self.read(runtime, "out", text, false);
    }

    /// Asserts what the logger got: its arguments and its identity (once it has exited, if
    /// `exits`).
    fn assert_identity(&self, runtime: &str, id: &str, namespace: &str, exits: bool) {
        let args = format!("dir\n{}\n", self.dir.display());
        assert_eq!(
            self.read(runtime, "args", &args, exits),
            args,
            "{runtime}: the logger's arguments"
        );
        let env = format!("CONTAINER_ID={id}\nCONTAINER_NAMESPACE={namespace}\n");
        assert_eq!(
            self.read(runtime, "env", &env, exits),
            env,
            "{runtime}: the logger's environment"
        );
    }
}

impl Drop for Logger {
    /// A logger left running (a failed test; runc's terminal loggers, see
    /// [`terminal_output_of_an_init_and_an_exec_reaches_the_logger_as_on_runc`]) is
    /// stopped: the test started it, through containerd.
    fn drop(&mut self) {
        for pid in pids_matching(&self.dir.display().to_string()) {
            // SAFETY: kill only sends a signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes a container (task killed and deleted) when dropped.
struct Removing<'a>(&'a Ctr, String);

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that no shim serves container `id` any more.
fn assert_no_shim(id: &str) {
    let needle = format!("-id {id} ");
    let gone = wait_for(Duration::from_secs(10), || {
        pids_matching(&needle).is_empty()
    });
    assert!(
        gone,
        "a shim of {id} is still running: {:?}",
        pids_matching(&needle)
    );
}

#[test]
fn a_binary_log_uri_gets_the_init_output_on_fds_3_and_4_as_on_runc() {
    let c = ctr();
    for runtime in RUNTIMES {
        let s = Scratch::new("logbin");
        let logger = s.logger("init");
        let id = unique_id("logbin");
        let r = c.run(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--log-uri",
            &logger.uri,
            BUSYBOX,
            &id,
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 3",
        ]);
        assert_eq!(r.code, 3, "{runtime}: {r:#?}");
        assert_eq!(logger.finished(runtime, "out"), "to-out\n", "{runtime}");
        assert_eq!(logger.finished(runtime, "err"), "to-err\n", "{runtime}");
        logger.assert_identity(runtime, &id, &c.namespace, true);
        assert_no_shim(&id);
    }
}

#[test]
fn a_file_log_uri_appends_the_init_output_and_creates_a_missing_file_as_on_runc() {
    let c = ctr();
    for runtime in RUNTIMES {
        let s = Scratch::new("logfile");
        let existing = s.0.join("task.log");
        fs::write(&existing, "before\n").unwrap();
        let missing = s.0.join("new/dir/task.log");
        for (log, before) in [(&existing, "before\n"), (&missing, "")] {
            let id = unique_id("logfile");
            let r = c.run(&[
                "run",
                "--rm",
                "--runtime",
                runtime,
                "--log-uri",
                &format!("file://{}", log.display()),
                BUSYBOX,
                &id,
                "sh",
                "-c",
                // The pause after the last line: runc's shim may drop output written just
                // before the exit into a file:// log (seen on containerd 2's runc shim).
                "echo to-out; sleep 0.3; echo to-err >&2; sleep 0.3",
            ]);
            assert_eq!(r.code, 0, "{runtime}: {r:#?}");
            // runc's shim may still be copying when `ctr` returns.
            let want = format!("{before}to-out\nto-err\n");
            wait_for(Duration::from_secs(5), || {
                fs::read_to_string(log).is_ok_and(|s| s == want)
            });
            assert_eq!(
                fs::read_to_string(log).unwrap(),
                want,
                "{runtime}: {}",
                log.display()
            );
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                fs::metadata(log).unwrap().mode() & 0o777,
                0o644,
                "{runtime}: mode of {}",
                log.display()
            );
            assert_no_shim(&id);
        }
    }
}

#[test]
fn a_detached_task_and_its_execs_log_through_binary_and_file_uris_as_on_runc() {
    let c = ctr();
    for runtime in RUNTIMES {
        let s = Scratch::new("logexec");
        let init = s.logger("init");
        let exec = s.logger("exec");
        let exec_log = s.0.join("exec.log");
        let id = unique_id("logexec");
        let container = Removing(&c, id.clone());
        c.run(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--log-uri",
            &init.uri,
            BUSYBOX,
            &id,
            "sh",
            "-c",
            "echo init-out; echo init-err >&2; exec sleep 300",
        ])
        .ok();
        init.wait_output(runtime, "init-out");

        let r = c.run(&[
            "task",
            "exec",
            "--exec-id",
            "exec-bin",
            "--log-uri",
            &exec.uri,
            &id,
            "sh",
            "-c",
            "echo exec-out; echo exec-err >&2; exit 5",
        ]);
        assert_eq!(r.code, 5, "{runtime}: {r:#?}");
        assert_eq!(exec.finished(runtime, "out"), "exec-out\n", "{runtime}");
        assert_eq!(exec.finished(runtime, "err"), "exec-err\n", "{runtime}");
        exec.assert_identity(runtime, "exec-bin", &c.namespace, true);

        let r = c.run(&[
            "task",
            "exec",
            "--exec-id",
            "exec-file",
            "--log-uri",
            &format!("file://{}", exec_log.display()),
            &id,
            "sh",
            "-c",
            "echo exec-file-out; sleep 0.3",
        ]);
        assert_eq!(r.code, 0, "{runtime}: {r:#?}");
        wait_for(Duration::from_secs(5), || {
            fs::read_to_string(&exec_log).is_ok_and(|s| s == "exec-file-out\n")
        });
        assert_eq!(
            fs::read_to_string(&exec_log).unwrap(),
            "exec-file-out\n",
            "{runtime}"
        );

        drop(container);
        assert_eq!(init.finished(runtime, "out"), "init-out\n", "{runtime}");
        assert_eq!(init.finished(runtime, "err"), "init-err\n", "{runtime}");
        init.assert_identity(runtime, &id, &c.namespace, true);
        assert_no_shim(&id);
    }
}

/// Terminal output, `\r\n` as a terminal writes it, without the carriage returns.
fn lines(s: &str) -> String {
    s.replace('\r', "")
}

/// With a terminal, runc's shim hands its logger a stderr pipe whose write end it drops
/// without closing (the Go runtime closes it whenever it collects it), so runc's terminal
/// loggers can outlive their tasks; trenv closes it at once, and its loggers exit when the
/// terminal's output ends. The test waits for runc's loggers' output only.
#[test]
fn terminal_output_of_an_init_and_an_exec_reaches_the_logger_as_on_runc() {
    let c = ctr();
    let api = api(&c);
    for runtime in RUNTIMES {
        let exits = runtime != RUNC;
        let s = Scratch::new("logtty");
        let init = s.logger("init");
        let exec = s.logger("exec");
        let id = unique_id("logtty");
        let container = Removing(&c, id.clone());
        c.run(&[
            "container",
            "create",
            "-t",
            "--runtime",
            runtime,
            BUSYBOX,
            &id,
            "sh",
            "-c",
            "tty; echo init-tty-out; read -t 30 x || true",
        ])
        .ok();
        api.create_task_with(&id, &TaskIo::log_uri(&init.uri, true), None, None)
            .unwrap_or_else(|e| panic!("{runtime}: creating the task: {e:?}"));
        api.start(&id, "").expect("starting the task");
        init.wait_output(runtime, "init-tty-out");

        let io = TaskIo::log_uri(&exec.uri, true);
        api.exec_args(
            &id,
            "exec-tty",
            &["sh", "-c", "tty; echo exec-tty-out"],
            &io,
        )
        .expect("exec");
        api.start(&id, "exec-tty").expect("starting the exec");
        assert_eq!(api.wait(&id, "exec-tty").expect("waiting for the exec"), 0);
        api.delete_process(&id, "exec-tty")
            .expect("deleting the exec");
        let out = lines(&exec.read(runtime, "out", "exec-tty-out", exits));
        assert!(out.starts_with("/dev/pts/"), "{runtime}: {out:?}");
        assert!(out.ends_with("\nexec-tty-out\n"), "{runtime}: {out:?}");
        assert_eq!(
            exec.read(runtime, "err", "", exits),
            "",
            "{runtime}: a terminal has no stderr"
        );
        exec.assert_identity(runtime, "exec-tty", &c.namespace, exits);

        drop(container);
        let out = lines(&init.read(runtime, "out", "init-tty-out", exits));
        assert!(out.starts_with("/dev/pts/"), "{runtime}: {out:?}");
        assert!(out.contains("\ninit-tty-out\n"), "{runtime}: {out:?}");
        init.assert_identity(runtime, &id, &c.namespace, exits);
        assert_no_shim(&id);
    }
}

/// A `binary://` URI naming no program fails Create on both runtimes, naming the program,
/// and leaves nothing behind; trenv answers INVALID_ARGUMENT (the client's URI is wrong),
/// where runc's shim answers UNKNOWN.
#[test]
fn a_logging_program_that_does_not_exist_fails_create_and_leaves_nothing() {
    let c = ctr();
    let api = api(&c);
    for runtime in RUNTIMES {
        let s = Scratch::new("lognone");
        let program = s.0.join("no-such-logger");
        let id = unique_id("lognone");
        c.run(&[
            "container",
            "create",
            "--runtime",
            runtime,
            BUSYBOX,
            &id,
            "true",
        ])
        .ok();
        let uri = format!("binary://{}", program.display());
        let created = api.create_task_with(&id, &TaskIo::log_uri(&uri, false), None, None);
        c.remove(&id);
        let e = created.expect_err("a missing logging program was accepted");
        assert!(
            e.message().contains("no-such-logger"),
            "{runtime}: the error names the program: {e:?}"
        );
        let want = if runtime == RUNC {
            tonic::Code::Unknown
        } else {
            tonic::Code::InvalidArgument
        };
        assert_eq!(e.code(), want, "{runtime}: {e:?}");
        assert_no_shim(&id);
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&format!("/{id}/")),
            "{runtime}: a mount of {id} is left"
        );
    }
}

/// Terminal output to a `file://` URI: trenv appends it to the file. runc's shim opens
/// the URI as a FIFO path when there is a terminal and fails the task's Create.
#[test]
fn terminal_output_goes_to_a_file_uri_where_runc_fails() {
    let c = ctr();
    let api = api(&c);
    for runtime in RUNTIMES {
        let s = Scratch::new("logttyfile");
        let log = s.0.join("tty.log");
        let id = unique_id("logttyfile");
        c.run(&[
            "container",
            "create",
            "-t",
            "--runtime",
            runtime,
            BUSYBOX,
            &id,
            "sh",
            "-c",
            "echo tty-file-out",
        ])
        .ok();
        let container = Removing(&c, id.clone());
        let uri = format!("file://{}", log.display());
        let created = api.create_task_with(&id, &TaskIo::log_uri(&uri, true), None, None);
        if runtime == RUNC {
            drop(container);
            let e = created.expect_err("runc's shim took a terminal with a file:// URI");
            assert!(e.message().contains("tty.log"), "{e:?}");
            assert_no_shim(&id);
            continue;
        }
        created.unwrap_or_else(|e| panic!("{runtime}: {e:?}"));
        api.start(&id, "").expect("starting the task");
        assert_eq!(api.wait(&id, "").expect("waiting"), 0);
        api.delete_task(&id).expect("deleting the task");
        drop(container);
        assert_eq!(lines(&fs::read_to_string(&log).unwrap()), "tty-file-out\n");
        assert_no_shim(&id);
    }
}

/// `containerd.runc.v1.Options` as runc's clients send it, encoded by hand: string fields
/// `(number, value)` and bool fields set to true.
fn runc_options(strings: &[(u32, &str)], bools: &[u32]) -> RawOptions {
    let mut value = Vec::new();
    for (number, s) in strings {
        assert!(s.len() < 128, "one-byte lengths only");
        value.push((number << 3 | 2) as u8);
        value.push(s.len() as u8);
        value.extend_from_slice(s.as_bytes());
    }
    for number in bools {
        value.push((number << 3) as u8);
        value.push(1);
    }
    RawOptions {
        type_url: "containerd.runc.v1.Options".into(),
        value,
    }
}

/// What a client that never names a runtime sends: its container says io.containerd.runc.v2,
/// and runc's options come with the task (`Root`, `BinaryName`, `NoNewKeyring`).
fn runc_style_options() -> RawOptions {
    runc_options(&[(7, "/run/containerd/runc"), (6, "runc")], &[2])
}

#[test]
fn trenv_installed_as_runc_shim_runs_a_runc_client_task_and_logs_the_options_it_ignores() {
    let c = ctr();
    let api = api(&c);
    let s = Scratch::new("alias");
    // How a node operator installs trenv for such clients: under runc's shim name (here a
    // symlink, given to containerd as the task's runtime path).
    let alias = s.0.join("containerd-shim-runc-v2");
    symlink(TRENV_SHIM, &alias).expect("linking the alias");
    let logger = s.logger("init");
    let id = unique_id("alias");
    let container = Removing(&c, id.clone());
    c.run(&[
        "container",
        "create",
        "--runtime",
        RUNC,
        BUSYBOX,
        &id,
        "sh",
        "-c",
        "echo alias-out; echo alias-err >&2",
    ])
    .ok();
    let io = TaskIo::log_uri(&logger.uri, false);
    let created = api.create_task_with(
        &id,
        &io,
        Some(&runc_style_options()),
        Some(alias.to_str().unwrap()),
    );
    if let Err(e) = created {
        panic!("creating the task with runc's options in alias mode: {e:?}");
    }
    // trenv serves it, not runc: the shim process is trenv's binary.
    let shims = pids_matching(&format!("-id {id} "));
    assert!(
        shims
            .iter()
            .any(|p| fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e == Path::new(TRENV_SHIM))),
        "no trenv shim serves {id}: {shims:?}"
    );
    api.start(&id, "").expect("starting the task");
    assert_eq!(api.wait(&id, "").expect("waiting"), 0);
    api.delete_task(&id).expect("deleting the task");
    drop(container);
    assert_eq!(logger.finished("alias", "out"), "alias-out\n");
    assert_eq!(logger.finished("alias", "err"), "alias-err\n");
    logger.assert_identity("alias", &id, &c.namespace, true);
    assert_no_shim(&id);

    // The shim said which options it ignored, and why.
    let log_file = std::env::var("CONTAINERD_LOG").expect("CONTAINERD_LOG (containerd.sh env)");
    let log = fs::read_to_string(&log_file).expect("reading containerd's log");
    for option in ["Root", "BinaryName", "NoNewKeyring"] {
        let line = format!("{id}: runc option {option} ignored (alias mode");
        assert!(log.contains(&line), "containerd's log lacks {line:?}");
    }

    // Alias mode is the name's doing, not the options': trenv under its own name (the same
    // binary) still refuses runc's options.
    let id = unique_id("noalias");
    c.run(&[
        "container",
        "create",
        "--runtime",
        RUNC,
        BUSYBOX,
        &id,
        "true",
    ])
    .ok();
    let created = api.create_task_with(
        &id,
        &TaskIo::default(),
        Some(&runc_style_options()),
        Some(TRENV_SHIM),
    );
    c.remove(&id);
    let e = created.expect_err("trenv named as itself accepted runc's Root option");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("Root"), "{e:?}");
    assert_no_shim(&id);
}
