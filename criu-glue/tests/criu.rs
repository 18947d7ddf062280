//! Against the real CRIU that integration/setup.sh installs.

use trenv_criu::{Criu, MIN_VERSION};

#[test]
fn the_installed_criu_answers_its_version_over_rpc() {
    let criu = Criu::locate(None).expect("CRIU is installed by integration/setup.sh");
    let v = criu.version().expect("CRIU answers VERSION");
    assert!(v >= MIN_VERSION, "{v} at {}", criu.path().display());
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(criu.require_version(Some(dir.path())).unwrap(), v);
    // Second time from the cache file.
    assert!(dir.path().join("criu-version").exists());
    assert_eq!(criu.require_version(Some(dir.path())).unwrap(), v);
}

/// A stand-in for an old CRIU that answers the VERSION request over the swrk socket (fd 3)
/// with 3.17.0: trenv must refuse it, naming both versions.
#[test]
fn an_old_criu_is_refused_naming_the_version_needed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("criu");
    // criu_resp{type: VERSION (10), success: true, version: {major 3, minor 17}}
    std::fs::write(
        &fake,
        "#!/usr/bin/env python3\n\
         import os\n\
         os.read(3, 4096)\n\
         os.write(3, bytes([0x08, 0x0a, 0x10, 0x01, 0x52, 0x04, 0x08, 0x03, 0x10, 0x11]))\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let criu = Criu::locate(Some(&fake)).unwrap();
    assert_eq!(criu.version().unwrap().to_string(), "3.17.0");
    let msg = criu.require_version(None).unwrap_err().to_string();
    assert!(msg.contains("CRIU 3.17.0"), "{msg}");
    assert!(msg.contains("too old"), "{msg}");
    assert!(msg.contains("4.1.0 or newer"), "{msg}");
}
