//! Helpers shared by the benchmark binaries (`src/bin/bench-*.rs`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Ctr;

/// The trenv shim's binary name.
pub const TRENV_SHIM: &str = "containerd-shim-trenv-v1";

pub fn containerd_version(ctr: &Ctr) -> String {
    let out = ctr.run(&["version"]).stdout;
    let mut in_server = false;
    for l in out.lines() {
        let t = l.trim();
        if t.starts_with("Server:") {
            in_server = true;
        } else if in_server && let Some(v) = t.strip_prefix("Version:") {
            return v.trim().to_string();
        }
    }
    "unknown".to_string()
}

/// Whether an ELF file has a `.debug_info` section (the release profile strips it).
pub fn elf_has_debug_info(path: &Path) -> Option<bool> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut hdr = [0u8; 64];
    f.read_exact(&mut hdr).ok()?;
    if &hdr[..4] != b"\x7fELF" || hdr[4] != 2 || hdr[5] != 1 {
        return None; // only 64-bit little endian
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let shoff = u64_at(&hdr, 0x28);
    let shentsize = u16_at(&hdr, 0x3a);
    let shnum = u16_at(&hdr, 0x3c);
    let shstrndx = u16_at(&hdr, 0x3e);
    if shentsize < 64 || shstrndx >= shnum {
        return None;
    }
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(shoff)).ok()?;
    let mut sh = vec![0u8; shentsize * shnum];
    f.read_exact(&mut sh).ok()?;
    let strtab = &sh[shstrndx * shentsize..];
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20) as usize);
    f.seek(SeekFrom::Start(str_off)).ok()?;
    let mut names = vec![0u8; str_size];
    f.read_exact(&mut names).ok()?;
    Some((0..shnum).any(|i| {
        let name_off = u32::from_le_bytes(sh[i * shentsize..][..4].try_into().unwrap()) as usize;
        names
            .get(name_off..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .is_some_and(|n| n == b".debug_info")
    }))
}

pub fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The trenv shim binary containerd runs for `runtime`: the path itself if it is absolute,
/// else containerd-shim-trenv-v1 in containerd's PATH.
pub fn find_trenv_shim(runtime: &str) -> PathBuf {
    if Path::new(runtime).is_absolute() {
        return PathBuf::from(runtime);
    }
    let path = std::env::var("CONTAINERD_PATH")
        .or_else(|_| std::env::var("PATH"))
        .unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(TRENV_SHIM))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(format!("/usr/local/bin/{TRENV_SHIM}")))
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ppid(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Removes every container whose id starts with `prefix`.
pub fn remove_with_prefix(ctr: &Ctr, prefix: &str) {
    let ids: Vec<String> = ctr
        .run(&["containers", "ls", "-q"])
        .stdout
        .lines()
        .map(str::trim)
        .filter(|id| id.starts_with(prefix))
        .map(str::to_string)
        .collect();
    for id in ids {
        eprintln!("[bench] removing container {id}");
        ctr.remove(&id);
    }
}

/// PID of the task of container `id`, from `ctr task ls`.
pub fn task_pid(ctr: &Ctr, id: &str) -> Option<i32> {
    ctr.run(&["task", "ls"])
        .stdout
        .lines()
        .skip(1)
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
}

/// The containerd the benchmark `name` runs against (CTR and CONTAINERD_ADDRESS from its
/// wrapper script), in `namespace`; exits with a clear message when it is not there.
pub fn connect(name: &str, wrapper: &str, namespace: &str) -> Ctr {
    if std::env::var_os("CTR").is_none() || std::env::var_os("CONTAINERD_ADDRESS").is_none() {
        eprintln!("{name}: CTR and CONTAINERD_ADDRESS must be set; run it through {wrapper}");
        std::process::exit(2);
    }
    let ctr = Ctr::from_env().with_namespace(namespace);
    let v = ctr.run(&["version"]);
    if v.code != 0 {
        eprintln!(
            "{name}: containerd at {} does not answer: {}",
            ctr.address,
            v.stderr.trim()
        );
        std::process::exit(1);
    }
    ctr
}

/// The node's reserve instances that are ready now (`ready` in their directory) and whose
/// spec (the container they were restored for, `config.json`) satisfies `matching`. Read from
/// the instances' directories, not from the shim's log: a shared shim's log follows its
/// newest container, and a refill after that container is gone reaches no one.
pub fn ready_reserve_instances(matching: impl Fn(&serde_json::Value) -> bool) -> usize {
    std::fs::read_dir("/run/trenv/reserve")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|owner| {
            std::fs::read_dir(owner.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.path().join("ready").exists())
        .filter(|e| {
            std::fs::read(e.path().join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|spec| matching(&spec))
        })
        .count()
}

/// The pid of the process that serves the unix socket `socket` (the peer credentials of a
/// connection to it), e.g. containerd from its address.
pub fn server_pid(socket: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the call; the descriptor is open.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time (user + system) used so far by process `pid` and its children it waited for
/// (containerd's `shim start` commands), ms.
pub fn process_cpu_ms(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) in parentheses; utime is field 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.len() == 4).then(|| f.iter().sum::<f64>() * 1e3 / clock_ticks())
}

/// CPU time (as [`process_cpu_ms`]) of every process running the executable named `name`
/// (e.g. the trenv shim: its servers, zygotes and workers, with what they reaped), ms. Two
/// sums bracket what such processes used between them, those that started or were reaped
/// meanwhile included.
pub fn cpu_of_exe_ms(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| exe(pid).is_some_and(|p| p.file_name().is_some_and(|n| n == name)))
        .filter_map(process_cpu_ms)
        .sum()
}

/// CPU time the machine's CPUs have been busy so far (all but idle and I/O wait), ms.
pub fn machine_busy_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0.0);
    let guest = cpu.get(8).unwrap_or(&0.0) + cpu.get(9).unwrap_or(&0.0);
    Some((cpu.iter().sum::<f64>() - guest - idle) * 1e3 / clock_ticks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_and_a_socket_names_its_server() {
        let me = std::process::id() as i32;
        let (p0, m0) = (process_cpu_ms(me).unwrap(), machine_busy_ms().unwrap());
        // Spin until this process has used 100 ms of CPU, however busy the machine is.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu_ms(me).unwrap() - p0 < 100.0 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "no CPU time counted"
            );
        }
        let (p1, m1) = (process_cpu_ms(me).unwrap(), machine_busy_ms().unwrap());
        // The machine was busy at least while this process ran (ticks: 10 ms of slack each).
        assert!(
            m1 - m0 >= p1 - p0 - 20.0,
            "machine {} ms, process {} ms",
            m1 - m0,
            p1 - p0
        );
        let dir = std::env::temp_dir().join(format!("trenv-peer-{me}"));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        assert_eq!(server_pid(&dir), Some(me));
        drop(listener);
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(server_pid(&dir), None);
    }
}
