//! trenv's own configuration, in one place: where templates live, which memory pool holds
//! them, which CRIU runs, where metering records go.
//!
//! [`Config::load`] reads `TRENV_CONFIG` or `/etc/trenv/config.toml` when it exists, then
//! applies the environment (`TRENV_CRIU`, `TRENV_METER`, `TRENV_METER_DIR`,
//! `TRENV_METER_INTERVAL_US`, which win over the file); every key has a default, so no
//! file is needed on a machine that uses tmpfs (see config/trenv.toml).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Classified, ErrorKind};
use crate::function_rules::FunctionRule;

use crate::template::TenantLimits;
use crate::template::mempool::MemPoolKind;

pub const DEFAULT_PATH: &str = crate::paths::CONFIG_FILE;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading trenv's config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trenv's config {path} is invalid: {reason} (see config/trenv.toml for the format)")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    PoolKind(#[from] PoolKindError),
}

/// A `[pool]` section whose kind and node do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum PoolKindError {
    #[error("pool kind \"numa\" needs `node = N`")]
    NumaWithoutNode,
    #[error("pool kind {0:?} takes no node (only \"numa\" does)")]
    NodeWithout(String),
    #[error("unknown pool kind {0:?}: use \"tmpfs\", \"dax\" or \"numa\"")]
    Unknown(String),
}

/// A bad configuration is the node operator's to fix.
impl Classified for ConfigError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::FailedPrecondition
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub templates: TemplatesConfig,
    pub pool: PoolConfig,
    pub criu: CriuSection,
    pub meter: MeterSection,
    pub sandboxes: SandboxesConfig,
    pub shim: ShimSection,
    /// The node's function rules (`[[functions]]`, function_rules.rs), first match first.
    pub functions: Vec<FunctionRule>,
}

/// How containers are grouped into shim processes (shim/src/shared.rs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShimSection {
    /// Containers of one tenant that are not in a pod share one shim process (off by
    /// default, as runc's shim: one shim per container; `io.trenv.shim` decides per
    /// container either way).
    pub shared: bool,
    /// A shared shim without containers serves the tenant's next start for this many
    /// seconds before it exits.
    pub linger_secs: u64,
    /// A shared shim keeps this many instances of each template it restored restored
    /// ahead, stopped, for the next Create of the same function (shim/src/reserve.rs; 0:
    /// none).
    pub reserve: usize,
    /// At most this many functions (templates with the same spec) have instances in a
    /// shim's reserve: a new one's instance replaces those of the function whose newest
    /// instance is the oldest (0: no reserve).
    pub reserve_functions: usize,
    /// The most instances a container's `io.trenv.reserve` annotation may ask for.
    pub reserve_max: usize,
}

impl Default for ShimSection {
    fn default() -> ShimSection {
        ShimSection {
            shared: false,
            linger_secs: 30,
            reserve: 1,
            reserve_functions: 8,
            reserve_max: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeterSection {
    /// Meter every invocation (`TRENV_METER=off` or `0` turns it off).
    pub enabled: bool,
    /// Where records and series go (`TRENV_METER_DIR`).
    pub dir: PathBuf,
    /// Memory sampling interval in microseconds; 0 records the exact peak only
    /// (`TRENV_METER_INTERVAL_US`). Otherwise 1000..=10000000 (1 ms to 10 s): a value
    /// outside is clamped with a warning (`metering::MeterConfig::from_config`).
    pub interval_us: u64,
    /// The only directory from which `io.trenv.meter.hull` files are read (the shim
    /// reads them as root; a container must not name any other host file).
    pub hull_dir: PathBuf,
}

impl Default for MeterSection {
    fn default() -> MeterSection {
        MeterSection {
            enabled: true,
            dir: PathBuf::from(crate::paths::METER_DIR),
            interval_us: 10_000,
            hull_dir: PathBuf::from(crate::paths::HULL_DIR),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    /// Where template images and manifests are kept.
    pub dir: PathBuf,
    /// At most this many templates per tenant (0: no bound).
    pub max_per_tenant: u64,
    /// At most this many bytes of pool files per tenant (0: no bound).
    pub max_bytes_per_tenant: u64,
    /// Environment variables a restoring container's spec may set otherwise than the
    /// template's source (every other difference refuses the restore: snapshot/honour.rs).
    pub env_may_differ: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// "tmpfs" (default), "dax" or "numa".
    pub kind: String,
    /// The pool's directory (a tmpfs, a DAX filesystem, or a tmpfs mounted with
    /// `mpol=bind:N`).
    pub dir: PathBuf,
    /// For "numa": the node the tmpfs must be bound to.
    pub node: Option<u32>,
    /// Restore templates through the kernel's template module (kernel-patches/trenv-mmt)
    /// when the running kernel has it loaded (default); `false` keeps the pool-file mapping.
    pub kernel_templates: bool,
}

/// Sandbox repurposing (docs/sandboxes.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxesConfig {
    /// Containers that can take part run in pooled sandboxes without asking (on by
    /// default; `io.trenv.repurpose` decides per container either way).
    pub enabled: bool,
    /// The node-wide idle pool (a tmpfs: it must not outlive a boot).
    pub dir: PathBuf,
    /// At most this many idle sandboxes on the node (0: keep none).
    pub max_idle: usize,
    /// At most this many idle sandboxes of one tenant.
    pub max_idle_per_tenant: usize,
    /// An idle sandbox is destroyed after this many seconds unused.
    pub keep_alive_secs: u64,
    /// The idle sandboxes together hold at most this many MiB (each measured in a memory
    /// cgroup of its own when it was last purged).
    pub max_idle_memory_mib: u64,
    /// Where a sandboxed container's writable rootfs layer lives: "memory" (a tmpfs
    /// sized by its memory limit) or "disk" (containerd's snapshot).
    pub scratch: ScratchKind,
    /// The CNI networks `io.trenv.network` names (configuration lists).
    pub cni_conf_dir: PathBuf,
    /// The CNI plugins.
    pub cni_bin_dir: PathBuf,
}

impl Default for SandboxesConfig {
    fn default() -> SandboxesConfig {
        SandboxesConfig {
            enabled: true,
            dir: PathBuf::from(crate::paths::SANDBOXES_DIR),
            max_idle: 64,
            max_idle_per_tenant: 16,
            keep_alive_secs: 600,
            max_idle_memory_mib: 64,
            scratch: ScratchKind::Memory,
            cni_conf_dir: PathBuf::from(crate::paths::CNI_CONF_DIR),
            cni_bin_dir: PathBuf::from(crate::paths::CNI_BIN_DIR),
        }
    }
}

/// Where a sandboxed container's writable rootfs layer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScratchKind {
    /// A tmpfs sized by the function's memory limit, charged to its memory cgroup.
    Memory,
    /// containerd's snapshot, on disk (for functions that write a lot).
    Disk,
}

impl SandboxesConfig {
    /// The node's idle pool as configured.
    pub fn pool(&self) -> crate::sandbox::IdlePool {
        crate::sandbox::IdlePool::new(
            &self.dir,
            crate::sandbox::Bounds {
                max_idle: self.max_idle,
                max_idle_per_tenant: self.max_idle_per_tenant,
                keep_alive: std::time::Duration::from_secs(self.keep_alive_secs),
                max_idle_memory: self.max_idle_memory_mib.saturating_mul(1 << 20),
            },
            crate::sandbox::network::Cni {
                conf_dir: self.cni_conf_dir.clone(),
                bin_dir: self.cni_bin_dir.clone(),
            },
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriuSection {
    /// The CRIU binary (default: `criu` on PATH or in the sbin directories).
    pub binary: Option<PathBuf>,
    /// A shim about to restore keeps a spare restorer: a worker whose CRIU was started
    /// ahead and has probed the kernel (needs trenv's CRIU; default true).
    pub start_ahead: bool,
    /// How much a restore's CRIU logs (0–4; default 2, errors and warnings).
    pub restore_log_level: crate::snapshot::criu::LogLevel,
}

impl Default for CriuSection {
    fn default() -> CriuSection {
        CriuSection {
            binary: None,
            start_ahead: true,
            restore_log_level: Default::default(),
        }
    }
}

impl Default for TemplatesConfig {
    fn default() -> TemplatesConfig {
        TemplatesConfig {
            dir: PathBuf::from(crate::paths::TEMPLATES_DIR),
            max_per_tenant: 64,
            max_bytes_per_tenant: 8 << 30,
            // containerd's CRI sets HOSTNAME per pod; the host name itself is applied.
            env_may_differ: vec!["HOSTNAME".into()],
        }
    }
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            kind: "tmpfs".into(),
            dir: PathBuf::from(crate::paths::POOL_DIR),
            node: None,
            kernel_templates: true,
        }
    }
}

/// A set, non-empty environment variable.
fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// The configuration in effect: `TRENV_CONFIG`, else the default path if it exists,
    /// else the defaults.
    pub fn load() -> Result<Config, ConfigError> {
        let mut c = match std::env::var_os("TRENV_CONFIG") {
            Some(p) if !p.is_empty() => Config::from_file(Path::new(&p))?,
            _ if Path::new(DEFAULT_PATH).exists() => Config::from_file(Path::new(DEFAULT_PATH))?,
            _ => Config::default(),
        };
        c.apply_env(env);
        Ok(c)
    }

    /// The defaults with the environment applied: what is in effect where the file cannot
    /// be read (the caller says so).
    pub fn defaults_with_env() -> Config {
        let mut c = Config::default();
        c.apply_env(env);
        c
    }

    /// The environment's settings over the file's (`get` reads one variable).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(criu) = get("TRENV_CRIU") {
            self.criu.binary = Some(PathBuf::from(criu));
        }
        if get("TRENV_METER").is_some_and(|v| v == "off" || v == "0") {
            self.meter.enabled = false;
        }
        if let Some(dir) = get("TRENV_METER_DIR") {
            self.meter.dir = PathBuf::from(dir);
        }
        if let Some(us) = get("TRENV_METER_INTERVAL_US").and_then(|v| v.parse().ok()) {
            self.meter.interval_us = us;
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let c: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        c.pool_kind().map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(reason) = c.functions.iter().find_map(FunctionRule::invalid) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason,
            });
        }
        Ok(c)
    }

    /// How much of the pool each tenant may take.
    pub fn tenant_limits(&self) -> TenantLimits {
        TenantLimits {
            max_templates: self.templates.max_per_tenant,
            max_bytes: self.templates.max_bytes_per_tenant,
        }
    }

    pub fn pool_kind(&self) -> Result<MemPoolKind, PoolKindError> {
        match (self.pool.kind.as_str(), self.pool.node) {
            ("tmpfs", None) => Ok(MemPoolKind::Tmpfs),
            ("dax", None) => Ok(MemPoolKind::Dax),
            ("numa", Some(n)) => Ok(MemPoolKind::NumaTmpfs { node: n }),
            ("numa", None) => Err(PoolKindError::NumaWithoutNode),
            (k @ ("tmpfs" | "dax"), Some(_)) => Err(PoolKindError::NodeWithout(k.to_string())),
            (other, _) => Err(PoolKindError::Unknown(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        Config::from_file(&p)
    }

    #[test]
    fn defaults_need_no_file() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.pool_kind().unwrap(), MemPoolKind::Tmpfs);
    }

    #[test]
    fn function_rules_are_read_in_order_and_checked() {
        let c = parse(
            "[[functions]]\nnamespace = \"openfaas-fn\"\ntemplate = \"auto\"\n\
             [[functions]]\ncontainer = \"job-*\"\nfunction = \"jobs\"\n",
        )
        .unwrap();
        assert_eq!(c.functions.len(), 2);
        let r = crate::function_rules::rule_for(&c.functions, "default", "job-7").unwrap();
        assert_eq!(r.function_of("job-7"), "jobs");
        let e = parse("[[functions]]\npolicy = \"all\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("policy \"all\"") && e.contains("is invalid"),
            "{e}"
        );
    }

    #[test]
    fn the_reserve_is_bounded_per_function_and_in_functions() {
        let d = Config::default().shim;
        assert_eq!((d.reserve, d.reserve_functions, d.reserve_max), (1, 8, 16));
        let c = parse("[shim]\nreserve = 2\nreserve_functions = 3\nreserve_max = 10\n").unwrap();
        assert_eq!(
            (c.shim.reserve, c.shim.reserve_functions, c.shim.reserve_max),
            (2, 3, 10)
        );
        let e = parse("[shim]\nreserve_function = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserve_function"), "{e}");
    }

    #[test]
    fn a_restore_s_criu_logs_warnings_unless_configured() {
        let d = Config::default().criu.restore_log_level;
        assert_eq!(d.get(), 2);
        let c = parse("[criu]\nrestore_log_level = 4\n").unwrap();
        assert_eq!(c.criu.restore_log_level.get(), 4);
        let e = parse("[criu]\nrestore_log_level = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("log level 5 does not exist: 0 (nothing) to 4"),
            "{e}"
        );
        let e = parse("[criu]\nrestore_log_level = \"debug\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("restore_log_level"), "{e}");
    }

    /// The shipped config/trenv.toml, with its `# key = value` lines before its examples
    /// of `[[functions]]` uncommented, is a valid config: a key renamed in the code but
    /// not in the file, or a commented value of the wrong type, fails here.
    #[test]
    fn the_shipped_config_s_commented_keys_are_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/trenv.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut uncommented = String::new();
        for line in text.lines().take_while(|l| !l.starts_with("# [[")) {
            // A key and a TOML value (not prose such as "# enabled = false only …"), but
            // not `node`: the example for a kind the file does not choose.
            let key = line.strip_prefix("# ").filter(|l| {
                l.contains(" = ") && !l.starts_with("node ") && l.parse::<toml::Table>().is_ok()
            });
            uncommented.push_str(key.unwrap_or(line));
            uncommented.push('\n');
        }
        let keys = uncommented.lines().filter(|l| l.contains(" = ")).count();
        assert!(keys > 30, "{uncommented}");
        let c = parse(&uncommented).unwrap();
        assert_eq!(
            c.criu.restore_log_level,
            Config::default().criu.restore_log_level
        );
    }

    #[test]
    fn numa_pools_name_their_node() {
        let c = parse("[pool]\nkind = \"numa\"\nnode = 1\ndir = \"/mnt/cxl\"\n").unwrap();
        assert_eq!(c.pool_kind().unwrap(), MemPoolKind::NumaTmpfs { node: 1 });
        let e = parse("[pool]\nkind = \"numa\"\n").unwrap_err().to_string();
        assert!(e.contains("needs `node = N`"), "{e}");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let mut c = parse("[meter]\ninterval_us = 5000\n[criu]\nbinary = \"/opt/criu\"\n").unwrap();
        assert_eq!(c.meter.interval_us, 5000);
        let env = [
            ("TRENV_CRIU", "/usr/local/sbin/criu"),
            ("TRENV_METER", "off"),
            ("TRENV_METER_DIR", "/tmp/m"),
            ("TRENV_METER_INTERVAL_US", "0"),
        ];
        c.apply_env(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        });
        assert_eq!(c.criu.binary, Some(PathBuf::from("/usr/local/sbin/criu")));
        assert!(!c.meter.enabled);
        assert_eq!(c.meter.dir, PathBuf::from("/tmp/m"));
        assert_eq!(c.meter.interval_us, 0);
        let mut d = Config::default();
        d.apply_env(|_| None);
        assert_eq!(d, Config::default());
        assert!(d.meter.enabled);
    }

    #[test]
    fn templates_are_bounded_per_tenant_by_default_and_by_the_file() {
        let d = Config::default().tenant_limits();
        assert!(d.max_templates > 0 && d.max_bytes > 0, "{d:?}");
        let c = parse("[templates]\nmax_per_tenant = 3\nmax_bytes_per_tenant = 0\n").unwrap();
        assert_eq!(
            c.tenant_limits(),
            TenantLimits {
                max_templates: 3,
                max_bytes: 0
            }
        );
    }

    #[test]
    fn only_hostname_may_differ_in_a_restores_environment_unless_configured() {
        assert_eq!(Config::default().templates.env_may_differ, ["HOSTNAME"]);
        let c = parse("[templates]\nenv_may_differ = [\"HOSTNAME\", \"POD_IP\"]\n").unwrap();
        assert_eq!(c.templates.env_may_differ, ["HOSTNAME", "POD_IP"]);
        assert!(
            parse("[templates]\nenv_may_differ = []\n")
                .unwrap()
                .templates
                .env_may_differ
                .is_empty()
        );
    }

    #[test]
    fn sandboxes_are_on_with_memory_scratch_by_default_and_configurable() {
        let d = Config::default().sandboxes;
        assert!(d.enabled && d.max_idle > 0 && d.scratch == ScratchKind::Memory);
        let c = parse("[sandboxes]\nmax_idle = 0\nscratch = \"disk\"\n").unwrap();
        assert_eq!(
            (c.sandboxes.max_idle, c.sandboxes.scratch),
            (0, ScratchKind::Disk)
        );
        let e = parse("[sandboxes]\nscratch = \"ram\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `ram`"), "{e}");
        assert!(parse("[sandboxes]\nmax_idle = -1\n").is_err());
        assert!(parse("[sandboxes]\nkeep_alive = 3\n").is_err());
        let m = parse("[sandboxes]\nmax_idle_memory_mib = 2\n").unwrap();
        assert_eq!(m.sandboxes.pool().bounds().max_idle_memory, 2 << 20);
        assert_eq!(d.pool().bounds().max_idle_memory, 64 << 20);
        let e = parse("[sandboxes]\nmax_idle_memory_mib = \"1G\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_idle_memory_mib"), "{e}");
    }

    #[test]
    fn unknown_kinds_and_keys_are_refused() {
        let e = parse("[pool]\nkind = \"pmem\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown pool kind \"pmem\""), "{e}");
        assert!(parse("[pool]\nsize = 3\n").is_err());
    }
}
