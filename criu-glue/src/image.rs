//! CRIU image files: framing and the few typed files trenv rewrites.
//!
//! A protobuf image is `u32 IMG_COMMON_MAGIC`, `u32 <type magic>`, then entries, each a
//! `u32` length and a message, to the end of the file (all little-endian; criu/protobuf.c).
//! `pages-<id>.img` files are raw page contents (docs/design/templates.md §4.1).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message;

pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
pub const MM_MAGIC: u32 = 0x5749_2820;
pub const FILES_MAGIC: u32 = 0x5630_3138;

/// Largest single entry accepted (an `mm` entry of a process with very many VMAs is a few
/// hundred KB).
const MAX_ENTRY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a CRIU image of the expected kind ({what}); the image is corrupt")]
    Corrupt { path: PathBuf, what: Corruption },
    #[error("decoding an entry of {path}: {source}; the image is corrupt")]
    Decode {
        path: PathBuf,
        source: protobuf::Error,
    },
    #[error("encoding an entry for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: protobuf::Error,
    },
}

/// How an image file is broken.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("no CRIU image magic")]
    NoMagic,
    #[error("type magic {found:#x}, expected {expected:#x}")]
    TypeMagic { found: u32, expected: u32 },
    #[error("truncated entry length")]
    TruncatedLength,
    #[error("entry of {0} bytes")]
    Oversized(usize),
    #[error("truncated entry")]
    TruncatedEntry,
    #[error("entry {0} missing")]
    MissingEntry(usize),
    /// A tmpfs archive (`tmpfs-*.tar.gz.img`) that does not gunzip.
    #[error("a gzip'ed tmpfs archive ({0})")]
    Archive(std::io::Error),
}

/// The raw entries of one protobuf image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub magic: u32,
    pub entries: Vec<Vec<u8>>,
}

impl ImageFile {
    pub fn read(path: &Path, magic: u32) -> Result<ImageFile, ImageError> {
        let bytes = fs::read(path).map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |what: Corruption| ImageError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        if word(0) != Some(IMG_COMMON_MAGIC) {
            return Err(corrupt(Corruption::NoMagic));
        }
        if word(4) != Some(magic) {
            return Err(corrupt(Corruption::TypeMagic {
                found: word(4).unwrap_or(0),
                expected: magic,
            }));
        }
        let mut entries = Vec::new();
        let mut at = 8;
        while at < bytes.len() {
            let len = word(at).ok_or_else(|| corrupt(Corruption::TruncatedLength))? as usize;
            if len > MAX_ENTRY {
                return Err(corrupt(Corruption::Oversized(len)));
            }
            let body = bytes
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| corrupt(Corruption::TruncatedEntry))?;
            entries.push(body.to_vec());
            at += 4 + len;
        }
        Ok(ImageFile { magic, entries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + self.entries.iter().map(|e| 4 + e.len()).sum::<usize>());
        out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.magic.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    /// Writes the file (to a temporary name, synced, then renamed over `path`).
    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        write_atomic(path, &self.to_bytes())
    }

    /// Decodes entry `i` as `M`.
    pub fn decode<M: Message>(&self, i: usize, path: &Path) -> Result<M, ImageError> {
        let raw = self.entries.get(i).ok_or_else(|| ImageError::Corrupt {
            path: path.to_path_buf(),
            what: Corruption::MissingEntry(i),
        })?;
        M::parse_from_bytes(raw).map_err(|source| ImageError::Decode {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Decodes every entry from `from` on as `M`.
    pub fn decode_all<M: Message>(&self, from: usize, path: &Path) -> Result<Vec<M>, ImageError> {
        (from..self.entries.len())
            .map(|i| self.decode(i, path))
            .collect()
    }

    pub fn encode<M: Message>(m: &M, path: &Path) -> Result<Vec<u8>, ImageError> {
        m.write_to_bytes().map_err(|source| ImageError::Encode {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file that is synced and renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("trenv-tmp");
    let err = |source| ImageError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// A regular file a dumped process held open or mapped (a `files.img` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegularFile {
    /// Its path as CRIU recorded it, relative to the mount `mnt_id` is the id of.
    pub name: String,
    /// The id of its mount at the dump (the first field of /proc/PID/mountinfo).
    pub mnt_id: i32,
}

/// Every regular file of the image directory `dir`'s `files.img`.
pub fn regular_files(dir: &Path) -> Result<Vec<RegularFile>, ImageError> {
    use crate::generated::fdinfo::{Fd_types, File_entry};
    let path = dir.join("files.img");
    let files: Vec<File_entry> = ImageFile::read(&path, FILES_MAGIC)?.decode_all(0, &path)?;
    Ok(files
        .iter()
        .filter(|f| f.type_() == Fd_types::REG)
        .filter_map(|f| f.reg.as_ref())
        .map(|r| RegularFile {
            name: r.name().to_string(),
            mnt_id: r.mnt_id(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        let img = ImageFile {
            magic: MM_MAGIC,
            entries: vec![vec![1, 2, 3], vec![], vec![9; 300]],
        };
        img.write(&p).unwrap();
        let back = ImageFile::read(&p, MM_MAGIC).unwrap();
        assert_eq!(back, img);
        assert_eq!(fs::read(&p).unwrap(), img.to_bytes());
    }

    #[test]
    fn wrong_or_truncated_files_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        let img = ImageFile {
            magic: MM_MAGIC,
            entries: vec![vec![7; 10]],
        };
        img.write(&p).unwrap();
        let e = ImageFile::read(&p, PAGEMAP_MAGIC).unwrap_err().to_string();
        assert!(e.contains("type magic"), "{e}");
        let mut bytes = img.to_bytes();
        bytes.truncate(bytes.len() - 3);
        fs::write(&p, &bytes).unwrap();
        let e = ImageFile::read(&p, MM_MAGIC).unwrap_err().to_string();
        assert!(e.contains("truncated entry"), "{e}");
        fs::write(&p, b"garbage!").unwrap();
        let e = ImageFile::read(&p, MM_MAGIC).unwrap_err().to_string();
        assert!(e.contains("no CRIU image magic"), "{e}");
    }
}
