//! The content of a checkpointed tmpfs (a container's /dev: directories, device nodes and
//! symbolic links) as CRIU stores it: `tmpfs-dev-*.tar.gz.img`, a gzip'ed tar archive that
//! CRIU extracts at restore by running `tar` and `gzip` — two fork+execs, about 6 ms of a
//! template restore on this machine. [`store_archives`] rewrites a template's archives as
//! *stored* gzip (deflate blocks without compression); CRIU with trenv's patch 0003 then
//! extracts the simple ones itself, and any CRIU still restores them with tar, since they
//! stay valid `.tar.gz` files.

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::image::{Corruption, ImageError};

/// Archives larger than this (uncompressed) are left alone; CRIU's own extraction has the
/// same limit (patch 0003).
pub const MAX_STORED: usize = 1 << 20;

/// Rewrites every non-empty tmpfs archive in the image directory `dir` as stored gzip of
/// the same tar; answers how many were rewritten.
pub fn store_archives(dir: &Path) -> Result<usize, ImageError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Read { path, source }
    };
    let mut rewritten = 0;
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let path = entry.map_err(read_err(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !(name.starts_with("tmpfs-") && name.ends_with(".tar.gz.img")) {
            continue;
        }
        let packed = fs::read(&path).map_err(read_err(&path))?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .take(MAX_STORED as u64 + 1)
            .read_to_end(&mut tar)
            .map_err(|e| ImageError::Corrupt {
                path: path.clone(),
                what: Corruption::Archive(e),
            })?;
        // An empty archive is restored without tar already (patch 0002).
        if tar.len() > MAX_STORED || tar.iter().all(|&b| b == 0) {
            continue;
        }
        let stored = stored_gzip(&tar);
        let tmp = path.with_extension("stored");
        fs::write(&tmp, &stored).map_err(|source| ImageError::Write {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| ImageError::Write {
            path: path.clone(),
            source,
        })?;
        rewritten += 1;
    }
    Ok(rewritten)
}

/// `data` as a gzip member whose deflate stream is stored blocks only (RFC 1951 §3.2.4):
/// each block header sits alone in its byte, so a reader needs no bit-level decoder.
fn stored_gzip(data: &[u8]) -> Vec<u8> {
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unix
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = block.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn stored_gzip_is_valid_gzip_of_the_same_bytes() {
        for len in [0usize, 1, 512, 0xffff, 0x10000, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let stored = stored_gzip(&data);
            assert_eq!(gunzip(&stored), data, "{len} bytes");
            // Stored: the payload is there verbatim, in blocks of at most 65535 bytes.
            assert_eq!(
                stored.len(),
                10 + 8 + data.len() + 5 * len.div_ceil(0xffff).max(1)
            );
        }
    }

    #[test]
    fn tmpfs_archives_are_rewritten_and_others_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let tar: Vec<u8> = (0..3072).map(|i| (i % 13) as u8 + 1).collect();
        fs::write(dir.path().join("tmpfs-dev-47.tar.gz.img"), gzip(&tar)).unwrap();
        let empty = gzip(&[0u8; 1024]);
        fs::write(dir.path().join("tmpfs-dev-49.tar.gz.img"), &empty).unwrap();
        fs::write(dir.path().join("pages-1.img"), b"not an archive").unwrap();
        assert_eq!(store_archives(dir.path()).unwrap(), 1);
        let rewritten = fs::read(dir.path().join("tmpfs-dev-47.tar.gz.img")).unwrap();
        assert_eq!(gunzip(&rewritten), tar);
        assert_eq!(rewritten, stored_gzip(&tar));
        assert_eq!(
            fs::read(dir.path().join("tmpfs-dev-49.tar.gz.img")).unwrap(),
            empty
        );
        assert_eq!(
            fs::read(dir.path().join("pages-1.img")).unwrap(),
            b"not an archive"
        );
        // A corrupt archive is an error naming it.
        fs::write(dir.path().join("tmpfs-dev-50.tar.gz.img"), b"junk").unwrap();
        let err = store_archives(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tmpfs-dev-50.tar.gz.img"), "{err}");
    }
}
