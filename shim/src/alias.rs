//! Alias mode: trenv installed under the name of runc's shim.
//!
//! A client that never names a runtime (faasd, anything built on containerd's Go client with
//! its defaults) gets `io.containerd.runc.v2`, which containerd resolves to the binary
//! `containerd-shim-runc-v2` on its PATH. On a containerd dedicated to such a client, the one
//! way to run its containers on trenv without a fork is to install trenv under that name
//! (config/containerd-faasd.toml shows the setup). trenv then receives runc's options
//! (`containerd.runc.v1.Options`): it honours what it can (`SystemdCgroup`, `CriuPath`,
//! `CriuImagePath`, `CriuWorkPath`) and knowingly ignores the rest, saying so in the shim's
//! log, where trenv named as itself refuses them.
//!
//! The mode is chosen deliberately, never guessed from the options: by the name containerd
//! ran the binary under (argv[0], a copy or a symlink named `containerd-shim-runc-v2`), or by
//! `TRENV_RUNC_ALIAS=1` in the shim's environment. `start` passes it on to the server it
//! spawns, whose own argv[0] is the resolved binary.

use std::sync::OnceLock;

/// The binary name containerd resolves for `io.containerd.runc.v2`.
pub const RUNC_SHIM: &str = "containerd-shim-runc-v2";

/// Set to `1` in the environment of a shim in alias mode.
pub const ENV: &str = "TRENV_RUNC_ALIAS";

/// Whether this shim runs in alias mode.
pub fn active() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        decide(
            std::env::args_os().next().as_deref(),
            std::env::var_os(ENV).as_deref(),
        )
    })
}

fn decide(argv0: Option<&std::ffi::OsStr>, env: Option<&std::ffi::OsStr>) -> bool {
    let named = argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == RUNC_SHIM);
    named || env.is_some_and(|v| v == "1")
}

/// Why trenv ignores a runc option in alias mode (for the log line).
pub fn why_ignored(option: &str) -> &'static str {
    match option {
        "Root" => "trenv keeps its own state, it is not runc",
        "BinaryName" => "trenv is not runc and runs no runtime binary",
        "NoPivotRoot" => "trenv sets up the container's root itself",
        "NoNewKeyring" => "trenv sets up the container's session keyring itself",
        "ShimCgroup" => "trenv's shim stays in the cgroup containerd started it in",
        "IoUid" | "IoGid" => "trenv's stdio pipes belong to the shim's user",
        "TaskApiAddress" | "TaskApiVersion" => "trenv serves the task API itself",
        _ => "trenv does not know this option",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn runc_shim_name_or_environment_selects_alias_mode() {
        let runc = Some(OsStr::new(
            "/usr/local/lib/trenv/alias/containerd-shim-runc-v2",
        ));
        let trenv = Some(OsStr::new("/usr/local/bin/containerd-shim-trenv-v1"));
        assert!(decide(runc, None));
        assert!(!decide(trenv, None));
        assert!(decide(trenv, Some(OsStr::new("1"))));
        assert!(!decide(trenv, Some(OsStr::new("0"))));
    }
}
