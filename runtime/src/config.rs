//! trenv's own configuration: where templates live and which memory pool holds them.
//!
//! Read from `TRENV_CONFIG` or `/etc/trenv/config.toml` when it exists; every key has a
//! default, so no file is needed on a machine that uses tmpfs (see config/trenv.toml).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Classified, ErrorKind};

use crate::template::mempool::MemPoolKind;

pub const DEFAULT_PATH: &str = "/etc/trenv/config.toml";

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
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    /// Where template images and manifests are kept.
    pub dir: PathBuf,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CriuSection {
    /// The CRIU binary (default: `criu` on PATH or in the sbin directories).
    pub binary: Option<PathBuf>,
}

impl Default for TemplatesConfig {
    fn default() -> TemplatesConfig {
        TemplatesConfig {
            dir: PathBuf::from("/var/lib/trenv/templates"),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            kind: "tmpfs".into(),
            dir: PathBuf::from("/run/trenv/pool"),
            node: None,
        }
    }
}

impl Config {
    /// The configuration in effect: `TRENV_CONFIG`, else the default path if it exists,
    /// else the defaults.
    pub fn load() -> Result<Config, ConfigError> {
        match std::env::var_os("TRENV_CONFIG") {
            Some(p) if !p.is_empty() => Config::from_file(Path::new(&p)),
            _ if Path::new(DEFAULT_PATH).exists() => Config::from_file(Path::new(DEFAULT_PATH)),
            _ => Ok(Config::default()),
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
        Ok(c)
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
    fn numa_pools_name_their_node() {
        let c = parse("[pool]\nkind = \"numa\"\nnode = 1\ndir = \"/mnt/cxl\"\n").unwrap();
        assert_eq!(c.pool_kind().unwrap(), MemPoolKind::NumaTmpfs { node: 1 });
        let e = parse("[pool]\nkind = \"numa\"\n").unwrap_err().to_string();
        assert!(e.contains("needs `node = N`"), "{e}");
    }

    #[test]
    fn unknown_kinds_and_keys_are_refused() {
        let e = parse("[pool]\nkind = \"pmem\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown pool kind \"pmem\""), "{e}");
        assert!(parse("[pool]\nsize = 3\n").is_err());
    }
}
