//! `trenv pool` on a pool directory with known records.

use std::process::Command;

use trenv_runtime::sandbox::{Record, State};

/// A record of an idle sandbox last used `idle_s` seconds ago, in `pool/<id>/`.
fn idle(pool: &std::path::Path, id: &str, idle_s: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let r = Record {
        id: id.into(),
        tenant: "default".into(),
        key: "k".into(),
        state: State::Idle,
        function: "fn-a".into(),
        network: None,
        created_ms: now - idle_s * 1000,
        last_used_ms: now - idle_s * 1000,
        uses: 1,
        memory: None,
        names: None,
    };
    std::fs::create_dir_all(pool.join(id)).unwrap();
    r.write(&pool.join(id).join("sandbox.json")).unwrap();
}

/// `trenv pool ARGS --config` a config whose pool is `pool`, keep-alive 60 s.
fn trenv(dir: &std::path::Path, pool: &std::path::Path, args: &[&str]) -> (bool, String) {
    let config = dir.join("trenv.toml");
    std::fs::write(
        &config,
        format!(
            "[sandboxes]\ndir = {:?}\nkeep_alive_secs = 60\n",
            pool.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trenv"))
        .arg("pool")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("running trenv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// On a node where no shim runs any more, nothing else sweeps the pool: listing it
/// removes what is past its keep-alive, as every use of the pool does.
#[test]
fn list_sweeps_what_is_past_its_keep_alive_first() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the pool is root's");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    idle(&pool, "sb-old", 3600);
    idle(&pool, "sb-new", 5);
    let (ok, out) = trenv(dir.path(), &pool, &["list"]);
    assert!(ok, "{out}");
    assert!(out.contains("sb-new"), "{out}");
    assert!(!out.contains("sb-old"), "{out}");
    assert!(
        !pool.join("sb-old").exists(),
        "the expired sandbox is destroyed"
    );
    let (ok, out) = trenv(dir.path(), &pool, &["inspect", "sb-old"]);
    assert!(!ok, "{out}");
}
