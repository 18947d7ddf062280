//! Step 3 of a conversion: the template file in `files.img`. The converted VMAs become
//! private mappings of a regular file, and CRIU finds a VMA's file through a `files.img`
//! entry (the VMA's `shmid` is the entry's id). The entry names the template file as
//! restore will hand it over (`inherit_fd` keyed by that name), read-only, owned by root.
//!
//! Every process of the tree gets an entry of its own (distinct ids, the same file): at
//! restore CRIU lets a child inherit its parent's private mapping instead of mapping its
//! own when both have the same bounds and, for file mappings, the same `shmid` — the file
//! offset is not compared (criu/mem.c `check_cow_vmas`). A child forked from its parent has
//! its converted VMAs at the parent's addresses but its pages at other offsets: with one
//! shared entry it would be restored with its parent's memory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::TemplateError;
use crate::generated::fdinfo::{Fd_types, File_entry};
use crate::generated::fown::Fown_entry;
use crate::generated::regfile::Reg_file_entry;
use crate::image::{FILES_MAGIC, ImageError, ImageFile};

/// `files.img` with the template's entries added, not yet written.
pub(super) struct Files {
    path: PathBuf,
    image: ImageFile,
    /// The ids of the template's entries, one per process.
    pub template_ids: Vec<u32>,
}

impl Files {
    /// Reads `dir`'s `files.img` and adds `count` entries (one per process) for the
    /// template file `name` of `size` bytes, under the next free ids.
    pub fn with_template(
        dir: &Path,
        name: &str,
        size: u64,
        count: usize,
    ) -> Result<Files, TemplateError> {
        let path = dir.join("files.img");
        let mut image = ImageFile::read(&path, FILES_MAGIC)?;
        let existing: Vec<File_entry> = image.decode_all(0, &path)?;
        let first = next_id(&existing);
        let template_ids: Vec<u32> = (first..).take(count).collect();
        for &id in &template_ids {
            let entry = template_entry(id, name, size);
            image.entries.push(ImageFile::encode(&entry, &path)?);
        }
        Ok(Files {
            path,
            image,
            template_ids,
        })
    }

    /// Writes the file (through a synced temporary file).
    pub fn write(&self) -> Result<(), ImageError> {
        self.image.write(&self.path)
    }
}

/// One above the largest id in use (1 for an empty table).
pub(super) fn next_id(existing: &[File_entry]) -> u32 {
    let ids: BTreeSet<u32> = existing.iter().map(|f| f.id()).collect();
    ids.last().map_or(1, |m| m + 1)
}

/// The entry of a read-only regular file `name` of `size` bytes, with id `id`.
pub(super) fn template_entry(id: u32, name: &str, size: u64) -> File_entry {
    let mut reg = Reg_file_entry::new();
    reg.set_id(id);
    reg.set_flags((libc::O_RDONLY | libc::O_LARGEFILE) as u32);
    reg.set_pos(0);
    let mut fown = Fown_entry::new();
    fown.set_uid(0);
    fown.set_euid(0);
    fown.set_signum(0);
    fown.set_pid_type(0);
    fown.set_pid(0);
    reg.fown = Some(fown).into();
    reg.set_name(name.to_string());
    reg.set_size(size);
    reg.set_mode(libc::S_IFREG | 0o444);
    let mut fe = File_entry::new();
    fe.set_type(Fd_types::REG);
    fe.set_id(id);
    fe.reg = Some(reg).into();
    fe
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    fn file(id: u32) -> File_entry {
        let mut f = File_entry::new();
        f.set_type(Fd_types::PIPE);
        f.set_id(id);
        f
    }

    #[test]
    fn the_template_takes_the_next_free_id() {
        assert_eq!(next_id(&[]), 1);
        assert_eq!(next_id(&[file(9), file(2), file(4)]), 10);
    }

    #[test]
    fn every_process_gets_its_own_entry_of_the_same_file() {
        use crate::image::ImageFile;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("files.img");
        ImageFile {
            magic: FILES_MAGIC,
            entries: vec![ImageFile::encode(&file(4), &path).unwrap()],
        }
        .write(&path)
        .unwrap();
        let files = Files::with_template(dir.path(), "/t.tpl", 8192, 3).unwrap();
        assert_eq!(files.template_ids, [5, 6, 7]);
        files.write().unwrap();
        let all: Vec<File_entry> = ImageFile::read(&path, FILES_MAGIC)
            .unwrap()
            .decode_all(0, &path)
            .unwrap();
        let entries: Vec<_> = all
            .iter()
            .map(|f| (f.id(), f.reg.as_ref().map(|r| (r.id(), r.name(), r.size()))))
            .collect();
        assert_eq!(
            entries,
            [
                (4, None),
                (5, Some((5, "/t.tpl", 8192))),
                (6, Some((6, "/t.tpl", 8192))),
                (7, Some((7, "/t.tpl", 8192))),
            ]
        );
    }

    #[test]
    fn the_template_entry_is_a_complete_read_only_regular_file() {
        let fe = template_entry(6, "/t.tpl", 1 << 30);
        assert!(fe.is_initialized(), "every required field set");
        assert_eq!((fe.type_(), fe.id()), (Fd_types::REG, 6));
        let reg = fe.reg.as_ref().unwrap();
        assert_eq!((reg.id(), reg.name(), reg.size()), (6, "/t.tpl", 1 << 30));
        assert_eq!(reg.mode(), libc::S_IFREG | 0o444);
        assert_eq!(reg.flags(), (libc::O_RDONLY | libc::O_LARGEFILE) as u32);
        assert_eq!(reg.fown.uid(), 0);
    }
}
