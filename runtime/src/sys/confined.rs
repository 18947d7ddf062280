//! Reading a file that a container's annotations name, as root, without letting the name
//! reach anything else on the host: the file is opened beneath a directory the node
//! operator chose (`openat2` with `RESOLVE_BENEATH`, no magic links), without blocking
//! (a FIFO or a device never stalls Create), must be a regular file, and is read up to a
//! bound (so `/dev/zero`-like files cannot grow the shim).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

/// Why a confined file cannot be read. None of these carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    #[error(
        "{} is not inside {}: only files there are read",
        .path.display(),
        .dir.display()
    )]
    Outside { path: PathBuf, dir: PathBuf },
    #[error("{} cannot be opened: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{} is not a regular file", .path.display())]
    NotRegular { path: PathBuf },
    #[error("{} is larger than {max} bytes", .path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `name` as a path below `dir`: a relative name without `..`, or an absolute path that
/// lies lexically inside `dir`. Nothing is opened.
pub fn beneath(dir: &Path, name: &str) -> Result<PathBuf, ConfinedError> {
    let path = Path::new(name);
    let outside = || ConfinedError::Outside {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
    };
    let rel = if path.is_absolute() {
        path.strip_prefix(dir).map_err(|_| outside())?
    } else {
        path
    };
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(outside());
    }
    Ok(rel.to_path_buf())
}

/// Reads file `name` (see [`beneath`]) from `dir`: a regular file of at most `max` bytes.
pub fn read_beneath(dir: &Path, name: &str, max: u64) -> Result<Vec<u8>, ConfinedError> {
    let rel = beneath(dir, name)?;
    let path = dir.join(&rel);
    let open_err = |source| ConfinedError::Open {
        path: path.clone(),
        source,
    };
    let root = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(open_err)?;
    // SAFETY: open just returned this descriptor to us.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), &rel, how).map_err(open_err)?;
    // SAFETY: openat2 just returned this descriptor to us.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata().map_err(|source| ConfinedError::Read {
        path: path.clone(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(ConfinedError::NotRegular { path });
    }
    if meta.len() > max {
        return Err(ConfinedError::TooLarge { path, max });
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|source| ConfinedError::Read {
            path: path.clone(),
            source,
        })?;
    if out.len() as u64 > max {
        return Err(ConfinedError::TooLarge { path, max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_inside_the_directory_are_taken() {
        let dir = Path::new("/var/lib/trenv/hulls");
        assert_eq!(beneath(dir, "fn.json").unwrap(), PathBuf::from("fn.json"));
        assert_eq!(
            beneath(dir, "/var/lib/trenv/hulls/a/fn.json").unwrap(),
            PathBuf::from("a/fn.json")
        );
        for bad in [
            "/etc/shadow",
            "../../etc/shadow",
            "/var/lib/trenv/hulls/../x",
            "/var/lib/trenv/hullsx/f",
            "",
            "/var/lib/trenv/hulls",
            "./fn.json",
        ] {
            assert!(
                matches!(beneath(dir, bad), Err(ConfinedError::Outside { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn fifos_devices_links_out_and_large_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ok.json"), b"{}").unwrap();
        assert_eq!(read_beneath(d, "ok.json", 10).unwrap(), b"{}");
        std::fs::write(d.join("big"), vec![b'x'; 11]).unwrap();
        assert!(matches!(
            read_beneath(d, "big", 10),
            Err(ConfinedError::TooLarge { .. })
        ));
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let began = std::time::Instant::now();
        assert!(matches!(
            read_beneath(d, "fifo", 10),
            Err(ConfinedError::NotRegular { .. })
        ));
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        assert!(matches!(
            read_beneath(d, "link", 1 << 20),
            Err(ConfinedError::Open { .. })
        ));
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        assert!(read_beneath(d, "zero", 1 << 20).is_err());
    }
}
