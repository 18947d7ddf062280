//! trenv's well-known paths, in one place. Everything the operator may move is a key of
//! [`crate::config::Config`] whose default is here; the rest are trenv's own.

/// trenv's configuration file (`TRENV_CONFIG` names another).
pub const CONFIG_FILE: &str = "/etc/trenv/config.toml";
/// trenv's run-time directory (a tmpfs): CRIU's cached answers, node-tuning scratch.
pub const RUN_DIR: &str = "/run/trenv";
/// Console sockets of processes with a terminal (socket paths must stay short).
pub const CONSOLE_DIR: &str = "/run/trenv/console";
/// Which pool files were fully verified since boot.
pub const VERIFIED_DIR: &str = "/run/trenv/verified";
/// The memory pool of templates (default of `[pool] dir`).
pub const POOL_DIR: &str = "/run/trenv/pool";
/// The template store (default of `[templates] dir`).
pub const TEMPLATES_DIR: &str = "/var/lib/trenv/templates";
/// Metering records (default of `[meter] dir`; the kernel-free crate owns it).
pub const METER_DIR: &str = trenv_meter::record::DEFAULT_DIR;
/// The only directory hull files are read from (default of `[meter] hull_dir`).
pub const HULL_DIR: &str = "/var/lib/trenv/hulls";
/// The node-wide idle pool of sandboxes (default of `[sandboxes] dir`).
pub const SANDBOXES_DIR: &str = "/run/trenv/sandboxes";
/// CNI networks for `io.trenv.network` (default of `[sandboxes] cni_conf_dir`).
pub const CNI_CONF_DIR: &str = "/etc/trenv/cni";
/// CNI plugins (default of `[sandboxes] cni_bin_dir`; Debian's containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
