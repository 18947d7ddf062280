//! The identity of a file that must not change: any write or chmod changes its ctime, and
//! a user cannot set a ctime back (unlike an mtime).

use std::fs;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// Device, inode, size and ctime of a file, as it was when it was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl FileStamp {
    pub fn of(m: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// The first way in which directory `dir` is not exactly the files of `stamps` with their
/// identities (a file missing, added or changed), if any.
pub fn dir_changed(
    dir: &std::path::Path,
    stamps: &std::collections::BTreeMap<String, FileStamp>,
) -> Option<String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    };
    let mut seen = 0;
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(e) => return Some(format!("{}: {e}", dir.display())),
        };
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(want) = stamps.get(&name) else {
            return Some(format!("{name} was added"));
        };
        match e.metadata() {
            Ok(m) if &FileStamp::of(&m) == want => seen += 1,
            Ok(_) => return Some(format!("{name} was modified")),
            Err(err) => return Some(format!("{name}: {err}")),
        }
    }
    (seen != stamps.len()).then(|| "files were removed".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn stamps(dir: &std::path::Path) -> BTreeMap<String, FileStamp> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                (e.file_name().into_string().unwrap(), FileStamp::of(&m))
            })
            .collect()
    }

    #[test]
    fn a_directory_is_unchanged_until_a_file_is_edited_added_or_removed() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.img"), b"a").unwrap();
        fs::write(d.path().join("b.img"), b"b").unwrap();
        let s = stamps(d.path());
        assert_eq!(dir_changed(d.path(), &s), None);
        // A chmod changes nothing in the content, but the ctime: caught.
        fs::set_permissions(d.path().join("a.img"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            dir_changed(d.path(), &s).as_deref(),
            Some("a.img was modified")
        );
        let s = stamps(d.path());
        fs::write(d.path().join("stats-restore.img"), b"x").unwrap();
        assert_eq!(
            dir_changed(d.path(), &s).as_deref(),
            Some("stats-restore.img was added")
        );
        fs::remove_file(d.path().join("stats-restore.img")).unwrap();
        fs::remove_file(d.path().join("b.img")).unwrap();
        assert_eq!(
            dir_changed(d.path(), &s).as_deref(),
            Some("files were removed")
        );
        assert!(dir_changed(&d.path().join("gone"), &s).is_some());
    }
}
