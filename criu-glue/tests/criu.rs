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
