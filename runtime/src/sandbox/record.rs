//! What the idle pool knows of one sandbox, as stored beside its pinned namespaces
//! (`<pool>/<id>/sandbox.json`): whose it is, what it may be given to, and its state. The
//! state says who holds it; a holder that died (a shim killed mid-purge) is recognised by
//! its pid and start time, so a half-purged sandbox is destroyed, never handed out.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::purge::UtsNames;

/// A process that holds a sandbox: its pid and its start time (clock ticks after boot,
/// `/proc/PID/stat` field 22), which a recycled pid does not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: i32,
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        let pid = std::process::id() as i32;
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// The process still runs (not a later process that got its pid, not a zombie that
    /// nobody reaped).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// The start time of `pid`, if it runs (a zombie or dead task does not).
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields count from the
    // last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    /// Purged, waiting for the next container.
    Idle,
    /// A container runs in it.
    Busy { owner: Owner, container: String },
    /// Being purged by `owner`; never handed out.
    Purging { owner: Owner },
}

/// One sandbox of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The tenant it belongs to (never given to another).
    pub tenant: String,
    /// What a container must match to be given it ([`super::key::compat_key`]).
    pub key: String,
    #[serde(flatten)]
    pub state: State,
    /// The function that runs or last ran in it.
    pub function: String,
    /// The CNI network attached to it, if any.
    #[serde(default)]
    pub network: Option<String>,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// How many containers have run in it.
    pub uses: u64,
    /// The memory its own cgroup held when it was last purged, in bytes
    /// ([`super::memory`]; `None`: not measured, counted as zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// The hostname and domain name its UTS namespace has while idle, as its last purge
    /// set them (`None` while a container runs in it, which may change them): a take that
    /// wants these names need not set them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<UtsNames>,
}

impl Record {
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Held by a process that is gone: whatever it was doing cannot be trusted.
    pub fn abandoned(&self) -> bool {
        match &self.state {
            State::Idle => false,
            State::Busy { owner, .. } | State::Purging { owner } => !owner.alive(),
        }
    }

    /// Reads a record; `None` when it is missing or unreadable (a sandbox being made or
    /// destroyed).
    pub fn read(path: &Path) -> Option<Record> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Writes the record atomically (a reader sees the old or the new one); writers hold
    /// the pool's lock.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::sys::replace(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = Owner::me();
        assert!(me.start > 0 && me.alive());
        let other = Owner {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(
            !Owner {
                pid: i32::MAX,
                start: 1
            }
            .alive()
        );
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let owner = Owner {
            pid,
            start: start_time(pid).expect("sleep runs"),
        };
        assert!(owner.alive());
        std::thread::sleep(std::time::Duration::from_millis(400));
        // Exited, not yet reaped: a zombie with the same start time.
        assert!(!owner.alive(), "a zombie counts as alive");
        child.wait().unwrap();
    }

    #[test]
    fn records_round_trip_with_their_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sandbox.json");
        let r = Record {
            id: "sb1".into(),
            tenant: "default".into(),
            key: "k".into(),
            state: State::Busy {
                owner: Owner::me(),
                container: "c1".into(),
            },
            function: "f".into(),
            network: None,
            created_ms: 1,
            last_used_ms: 2,
            uses: 1,
            memory: Some(123 << 10),
            names: None,
        };
        r.write(&p).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"state\": \"busy\""), "{text}");
        assert_eq!(Record::read(&p).unwrap(), r);
        let idle = Record {
            state: State::Idle,
            names: Some(UtsNames {
                hostname: "node-1".into(),
                domainname: "(none)".into(),
            }),
            ..r.clone()
        };
        idle.write(&p).unwrap();
        assert_eq!(Record::read(&p).unwrap(), idle);
        // A busy record, as records written before the names were kept, has none.
        assert!(!text.contains("names"), "{text}");
        assert!(!r.abandoned() && !r.is_idle());
        let dead = Record {
            state: State::Purging {
                owner: Owner {
                    pid: i32::MAX,
                    start: 5,
                },
            },
            ..r
        };
        assert!(dead.abandoned());
    }
}
