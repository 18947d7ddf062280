//! Network reuse: a sandbox's interface and address come from the real CNI plugins
//! (`io.trenv.network=NAME` names a network of `[sandboxes] cni_conf_dir`), attached once
//! when the sandbox is made and kept across every function it runs; CNI DEL runs when the
//! sandbox is destroyed. The plugins are run as the CNI specification says (1.0: each
//! plugin of the list in turn, with the previous one's result), with the sandbox's pinned
//! network namespace as CNI_NETNS and the sandbox id as CNI_CONTAINERID. What ADD answered
//! is kept in the sandbox's directory with the list it used, so DEL does not depend on the
//! configuration still being there.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SandboxError;
use super::memory::MemoryAccount;
use super::pins::{Kind, Pins};

/// The interface a sandbox's network gets.
pub const IFNAME: &str = "eth0";
/// What ADD made, in the sandbox's directory.
const ATTACHMENT: &str = "cni.json";

/// Where CNI networks and plugins are (`[sandboxes]` in trenv's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

/// A network attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    /// The network configuration list ADD used.
    pub list: Value,
    /// ADD's final result (interfaces, addresses, routes).
    pub result: Value,
}

impl Attachment {
    /// The sandbox's addresses (CIDR notation).
    pub fn addresses(&self) -> Vec<String> {
        self.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str().map(str::to_string))
            .collect()
    }

    /// The attachment recorded in `dir` (a sandbox's directory), if there is one.
    pub fn of(dir: &Path) -> Option<Attachment> {
        serde_json::from_slice(&fs::read(dir.join(ATTACHMENT)).ok()?).ok()
    }
}

/// What a network is attached to: a network namespace, by a path the plugins open, and
/// the directory that keeps what ADD made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetTarget {
    pub dir: PathBuf,
    pub netns: PathBuf,
}

impl NetTarget {
    /// A sandbox's pinned network namespace (through this process's gate into the pin
    /// store), its records in its directory.
    pub fn sandbox(pins: &Pins) -> Result<NetTarget, SandboxError> {
        Ok(NetTarget {
            dir: pins.dir().to_path_buf(),
            netns: pins.path(Kind::Net)?,
        })
    }

    /// A client's own namespace: `dir/net` names it (a link to `/proc/PID/ns/net`, as a
    /// platform that runs CNI on a task's namespace makes), `dir` keeps the records.
    pub fn at(dir: &Path) -> NetTarget {
        NetTarget {
            dir: dir.to_path_buf(),
            netns: dir.join("net"),
        }
    }

    /// Runs `f` on a thread that joined the namespace.
    fn enter<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, SandboxError> + Send,
    ) -> Result<T, SandboxError> {
        let ns = fs::File::open(&self.netns).map_err(SandboxError::io(format!(
            "opening {}",
            self.netns.display()
        )))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    SandboxError::sys(format!("joining {}", self.netns.display())),
                )?;
                f()
            })
            .join()
            .unwrap_or(Err(SandboxError::ThreadPanicked))
        })
    }
}

/// A network name: what CNI allows in a configuration's `name`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The namespace a plugin runs for, and the memory account it runs in.
#[derive(Clone, Copy)]
struct At<'a> {
    target: &'a NetTarget,
    id: &'a str,
    account: Option<&'a MemoryAccount>,
}

impl Cni {
    /// The network list named `name` in the configuration directory (`*.conflist`, or a
    /// single-plugin `*.conf` made a list).
    pub fn find(&self, name: &str) -> Result<Value, SandboxError> {
        let no_network = || SandboxError::NoNetwork {
            name: name.to_string(),
            dir: self.conf_dir.clone(),
        };
        let mut files: Vec<PathBuf> = fs::read_dir(&self.conf_dir)
            .map_err(|_| no_network())?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        for f in files {
            let Ok(v) = fs::read(&f).map(|raw| serde_json::from_slice::<Value>(&raw)) else {
                continue;
            };
            let Ok(v) = v else { continue };
            if v["name"] != name {
                continue;
            }
            if v["plugins"].is_array() {
                return Ok(v);
            }
            let mut plugin = v.clone();
            if let Some(o) = plugin.as_object_mut() {
                o.remove("cniVersion");
                o.remove("name");
            }
            return Ok(serde_json::json!({
                "cniVersion": v["cniVersion"],
                "name": name,
                "plugins": [plugin],
            }));
        }
        Err(no_network())
    }

    /// Attaches network `name` to `target`, the namespace of sandbox (or container) `id` (ADD through every
    /// plugin, each run in the sandbox's memory `account` if given, so that what they make
    /// is charged to it), brings up its `lo`, and records what was made. On failure,
    /// whatever was added is deleted again.
    pub fn attach(
        &self,
        target: &NetTarget,
        id: &str,
        name: &str,
        account: Option<&MemoryAccount>,
    ) -> Result<Attachment, SandboxError> {
        let list = self.find(name)?;
        let mut prev: Option<Value> = None;
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        let at = At {
            target,
            id,
            account,
        };
        for plugin in &plugins {
            match self.call("ADD", &at, &list, plugin, prev.as_ref()) {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    let _ = self.delete(target, id, &list, prev.as_ref());
                    return Err(e);
                }
            }
        }
        let att = Attachment {
            network: name.to_string(),
            list,
            result: prev.unwrap_or(Value::Null),
        };
        let p = target.dir.join(ATTACHMENT);
        let saved = serde_json::to_vec(&att)
            .map_err(|e| SandboxError::io("encoding the CNI result")(e.into()))
            .and_then(|body| {
                fs::write(&p, body).map_err(SandboxError::io(format!("writing {}", p.display())))
            })
            .and_then(|_| target.enter(|| super::purge::set_up("lo", true)));
        if let Err(e) = saved {
            let _ = self.delete(target, id, &att.list, Some(&att.result));
            let _ = fs::remove_file(&p);
            return Err(e);
        }
        Ok(att)
    }

    /// CNI DEL of the sandbox's network, if it has one (every plugin, last first; each is
    /// tried even if another fails).
    pub fn detach(&self, target: &NetTarget, id: &str) -> Result<(), SandboxError> {
        let Some(att) = Attachment::of(&target.dir) else {
            return Ok(());
        };
        self.delete(target, id, &att.list, Some(&att.result))?;
        let _ = fs::remove_file(target.dir.join(ATTACHMENT));
        Ok(())
    }

    fn delete(
        &self,
        target: &NetTarget,
        id: &str,
        list: &Value,
        result: Option<&Value>,
    ) -> Result<(), SandboxError> {
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        let mut first_err = None;
        for plugin in plugins.iter().rev() {
            let at = At {
                target,
                id,
                account: None,
            };
            if let Err(e) = self.call("DEL", &at, list, plugin, result) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Runs one plugin for `command` on the sandbox `at`; its result.
    fn call(
        &self,
        command: &str,
        at: &At<'_>,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
    ) -> Result<Value, SandboxError> {
        let At {
            target,
            id,
            account,
        } = *at;
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let failed = |reason: String| SandboxError::Cni {
            command: command.to_string(),
            plugin: kind.clone(),
            reason,
        };
        if kind.is_empty() || kind.contains('/') {
            return Err(failed("the plugin's type is not a plugin name".into()));
        }
        let mut conf = plugin.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let netns = &target.netns;
        let bin = self.bin_dir.join(&kind);
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if let Some(j) = account.map(MemoryAccount::joiner) {
            // SAFETY: the closure only makes system calls on a path made before the fork.
            unsafe {
                cmd.pre_exec(move || j.join());
            }
        }
        let out = crate::sys::run::output(&mut cmd, conf.to_string().as_bytes())
            .map_err(|e| failed(format!("running {}: {e}", bin.display())))?;
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = answer["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(failed(msg));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_are_checked() {
        assert!(valid_name("trenv-fn"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
    }

    #[test]
    fn lists_and_single_configurations_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"ptp"}"#,
        )
        .unwrap();
        let cni = Cni {
            conf_dir: dir.path().into(),
            bin_dir: "/usr/lib/cni".into(),
        };
        assert_eq!(cni.find("a").unwrap()["plugins"][0]["type"], "bridge");
        let b = cni.find("b").unwrap();
        assert_eq!(b["plugins"][0]["type"], "ptp");
        assert_eq!(b["cniVersion"], "0.4.0");
        assert!(b["plugins"][0].get("name").is_none());
        let e = cni.find("c").unwrap_err().to_string();
        assert!(e.contains("no CNI network \"c\""), "{e}");
    }

    #[test]
    fn addresses_come_from_the_result() {
        let att = Attachment {
            network: "n".into(),
            list: Value::Null,
            result: serde_json::json!({"ips":[{"address":"10.89.0.5/16"}]}),
        };
        assert_eq!(att.addresses(), vec!["10.89.0.5/16"]);
    }
}
