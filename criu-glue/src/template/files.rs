//! Step 3 of a conversion: the template file in `files.img`. The converted VMAs become
//! private mappings of a regular file, and CRIU finds a VMA's file through a `files.img`
//! entry (the VMA's `shmid` is the entry's id). The entry names the template file as
//! restore will hand it over (`inherit_fd` keyed by that name), read-only, owned by root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::TemplateError;
use crate::generated::fdinfo::{Fd_types, File_entry};
use crate::generated::fown::Fown_entry;
use crate::generated::regfile::Reg_file_entry;
use crate::image::{FILES_MAGIC, ImageError, ImageFile};

/// `files.img` with the template's entry added, not yet written.
pub(super) struct Files {
    path: PathBuf,
    image: ImageFile,
    /// The id of the template's entry.
    pub template_id: u32,
}

impl Files {
    /// Reads `dir`'s `files.img` and adds an entry for the template file `name` of `size`
    /// bytes, under the next free id.
    pub fn with_template(dir: &Path, name: &str, size: u64) -> Result<Files, TemplateError> {
        let path = dir.join("files.img");
        let mut image = ImageFile::read(&path, FILES_MAGIC)?;
        let existing: Vec<File_entry> = image.decode_all(0, &path)?;
        let template_id = next_id(&existing);
        let entry = template_entry(template_id, name, size);
        image.entries.push(ImageFile::encode(&entry, &path)?);
        Ok(Files {
            path,
            image,
            template_id,
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
