//! The real functions of integration/functions/ (images `docker.io/trenv/fn-NAME`, built
//! by integration/scripts/build-images.sh): which there are, what each must answer
//! (`check.json`), and how tests and benchmarks start them and ask them over the CNI
//! bridge, as a function platform forwards requests.
//!
//! Every function listens on :8080, answers `GET /healthz` once ready and `POST /` with a
//! JSON object `{"function", "result", "requests", "pid"}` (integration/functions/README.md).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trenv_runtime::sandbox::network::Cni;
use trenv_runtime::sandbox::network::NetTarget;

use crate::api::Containerd;
use crate::{Ctr, RUNTIME};

/// The CNI network (config/cni/20-trenv-fn.conflist) functions are reached on.
pub const NETWORK: &str = "trenv-fn";
/// containerd's runtime of the runc baseline.
pub const RUNC: &str = "io.containerd.runc.v2";
/// The port every function listens on.
pub const PORT: u16 = 8080;

/// One request of a function's `check.json` and the result it must give.
#[derive(Debug, Clone)]
pub struct Check {
    pub request: Value,
    pub result: Value,
}

/// A function of integration/functions/.
#[derive(Debug, Clone)]
pub struct Function {
    /// The directory's name (`dynamic-html`, …).
    pub name: String,
    /// Its image reference.
    pub image: String,
    pub checks: Vec<Check>,
}

/// integration/functions/.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("functions")
}

/// Every function (a directory with a `config.json`), by name.
pub fn all() -> Vec<Function> {
    let mut names: Vec<String> = fs::read_dir(dir())
        .expect("integration/functions")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.iter().map(|n| get(n)).collect()
}

/// The function `name`; panics if it does not exist or its `check.json` is malformed.
pub fn get(name: &str) -> Function {
    let path = dir().join(name).join("check.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let checks: Vec<Check> = list
        .into_iter()
        .map(|c| Check {
            request: c["request"].clone(),
            result: c["result"].clone(),
        })
        .collect();
    assert!(!checks.is_empty(), "{}: no checks", path.display());
    Function {
        name: name.to_string(),
        image: format!("docker.io/trenv/fn-{name}:latest"),
        checks,
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Value::Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.0 request to `ip`:8080 on its own connection.
pub fn request(
    ip: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let addr: SocketAddr = format!("{ip}:{PORT}")
        .parse()
        .map_err(|e| format!("{ip}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {ip}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: no status in {head:?}"))?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// `POST /` with `body`.
pub fn post(ip: &str, body: &Value) -> Result<Answer, String> {
    request(ip, "POST", "/", &body.to_string(), Duration::from_secs(60))
}

/// Waits until `GET /healthz` answers 200.
pub fn wait_healthy(ip: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match request(ip, "GET", "/healthz", "", Duration::from_secs(5)) {
            Ok(a) if a.status == 200 => return Ok(()),
            Ok(a) => last = format!("status {}", a.status),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("{ip} not healthy after {timeout:?} (last: {last})"))
}

/// Sends every check of `f` to `ip`; an error names the first wrong answer.
pub fn check(f: &Function, ip: &str) -> Result<(), String> {
    for c in &f.checks {
        let a = post(ip, &c.request)?;
        let got = a.json();
        if a.status != 200 || got["result"] != c.result || got["function"] != f.name.as_str() {
            return Err(format!(
                "{} at {ip}: for {} expected result {}, got status {} {}",
                f.name, c.request, c.result, a.status, a.body
            ));
        }
    }
    Ok(())
}

/// The IPv4 address of eth0 in the network namespace of process `pid`.
pub fn address_of(pid: i32) -> Result<String, String> {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ])
        .output()
        .map_err(|e| format!("nsenter: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "no IPv4 address on eth0 of pid {pid}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The pid of task `id`'s init.
pub fn task_pid(ctr: &Ctr, id: &str) -> Result<i32, String> {
    crate::bench::task_pid(ctr, id).ok_or_else(|| format!("task {id} is not listed"))
}

/// A running function instance and its address on the bridge.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub pid: i32,
    pub ip: String,
}

/// `ctr run -d` of `f` on trenv, on the CNI network (io.trenv.network), with `extra`
/// flags (annotations); returns once it is healthy.
pub fn run_trenv(ctr: &Ctr, f: &Function, id: &str, extra: &[&str]) -> Result<Instance, String> {
    let network = format!("io.trenv.network={NETWORK}");
    let mut a = vec!["run", "-d", "--runtime", RUNTIME, "--annotation", &network];
    a.extend(extra);
    a.extend([f.image.as_str(), id]);
    let r = ctr.run(&a);
    if r.code != 0 {
        return Err(format!("ctr run {id}: {}", r.stderr.trim()));
    }
    let pid = task_pid(ctr, id)?;
    let ip = address_of(pid)?;
    wait_healthy(&ip, Duration::from_secs(120))?;
    Ok(Instance {
        id: id.to_string(),
        pid,
        ip,
    })
}

/// The runc baseline of a function platform that sets up networking itself (as faasd
/// does): the container created, CNI ADD on its task's network namespace, then started.
/// Undo with [`remove_runc`].
pub fn run_runc(ctr: &Ctr, f: &Function, id: &str) -> Result<Instance, String> {
    run_with_client_cni(ctr, RUNC, f, id, &[])
}

/// A container of `runtime` networked as [`run_runc`] does it: the client runs CNI on the
/// task's network namespace (faasd's way); `extra`: more arguments of `ctr containers
/// create`. Undo with [`remove_runc`].
pub fn run_with_client_cni(
    ctr: &Ctr,
    runtime: &str,
    f: &Function,
    id: &str,
    extra: &[&str],
) -> Result<Instance, String> {
    let mut args = vec!["containers", "create", "--runtime", runtime];
    args.extend(extra);
    args.extend([f.image.as_str(), id]);
    let r = ctr.run(&args);
    if r.code != 0 {
        return Err(format!("creating container {id}: {}", r.stderr.trim()));
    }
    let api = Containerd::from_env(&ctr.namespace)?;
    let pid = api
        .create_task(id)
        .map_err(|e| format!("creating the task of {id}: {}", e.message()))? as i32;
    let dir = runc_netns_dir(id);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = fs::remove_file(dir.join("net"));
    std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), dir.join("net"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    cni()?
        .attach(&NetTarget::at(&dir), id, NETWORK, None)
        .map_err(|e| format!("CNI ADD for {id}: {e}"))?;
    api.start(id, "")
        .map_err(|e| format!("starting {id}: {}", e.message()))?;
    let ip = address_of(pid)?;
    wait_healthy(&ip, Duration::from_secs(120))?;
    Ok(Instance {
        id: id.to_string(),
        pid,
        ip,
    })
}

/// Removes a runc instance's (or a client-networked) container, then its CNI attachment
/// (as faasd: CNI DEL after the task is gone).
pub fn remove_runc(ctr: &Ctr, id: &str) {
    ctr.remove(id);
    let dir = runc_netns_dir(id);
    if let Ok(cni) = cni() {
        let _ = cni.detach(&NetTarget::at(&dir), id);
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Where CNI is pointed at a runc container's network namespace (a link `net` to
/// /proc/PID/ns/net, as trenv's pinned sandboxes have a `net` file).
pub fn runc_netns_dir(id: &str) -> PathBuf {
    PathBuf::from("/run/trenv/test-cni").join(id)
}

/// trenv's CNI runner, configured as the node's trenv config says.
pub fn cni() -> Result<Cni, String> {
    let config = trenv_runtime::config::Config::load().map_err(|e| e.to_string())?;
    Ok(Cni {
        conf_dir: config.sandboxes.cni_conf_dir.clone(),
        bin_dir: config.sandboxes.cni_bin_dir.clone(),
    })
}

/// The processes of the tree rooted at `pid` (`pid` first).
pub fn process_tree(pid: i32) -> Vec<i32> {
    trenv_runtime::sys::tree::process_tree(pid)
}
