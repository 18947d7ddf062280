//! Step 0 of a conversion: the dumped processes' images. Every process of the tree
//! (`pstree.img`, the root first) has its mm, page map and pages file; a zombie has none
//! (CRIU writes only its core image) and has no memory to convert. Threads share their
//! process's mm: there is nothing per thread.

use std::path::{Path, PathBuf};

use super::TemplateError;
use super::pages::DumpedPages;
use crate::generated::mm::Mm_entry;
use crate::generated::pagemap::{Pagemap_entry, Pagemap_head};
use crate::generated::pstree::Pstree_entry;
use crate::image::{ImageError, ImageFile, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC};

/// What a conversion reads from an image directory: every process of the tree, in
/// `pstree.img`'s order (the root first).
pub(super) struct Dump {
    pub procs: Vec<Process>,
}

/// One process of the tree.
pub(super) struct Process {
    pub pid: u32,
    /// None for a zombie.
    pub memory: Option<Memory>,
}

/// A process's memory images.
pub(super) struct Memory {
    pub mm_path: PathBuf,
    pub mm: Mm_entry,
    pub pagemap_path: PathBuf,
    /// The page map's head entry as it was read (it is written back unchanged).
    pub pagemap_head: Vec<u8>,
    pub pagemap: Vec<Pagemap_entry>,
    pub pages: DumpedPages,
}

impl Dump {
    pub fn read(dir: &Path) -> Result<Dump, TemplateError> {
        let pstree_path = dir.join("pstree.img");
        let pstree = ImageFile::read(&pstree_path, PSTREE_MAGIC)?;
        let pids = pids(&pstree.decode_all(0, &pstree_path)?)?;
        let procs = pids
            .into_iter()
            .map(|pid| {
                Ok(Process {
                    pid,
                    memory: Memory::read(dir, pid)?,
                })
            })
            .collect::<Result<_, TemplateError>>()?;
        Ok(Dump { procs })
    }

    /// The root process's pid.
    pub fn root(&self) -> u32 {
        self.procs[0].pid
    }
}

impl Memory {
    /// `pid`'s memory images, or None if it has no mm image (a zombie).
    fn read(dir: &Path, pid: u32) -> Result<Option<Memory>, TemplateError> {
        let mm_path = dir.join(format!("mm-{pid}.img"));
        let mm_file = match ImageFile::read(&mm_path, MM_MAGIC) {
            Ok(f) => f,
            Err(ImageError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mm = mm_file.decode(0, &mm_path)?;
        let pagemap_path = dir.join(format!("pagemap-{pid}.img"));
        let pm_file = ImageFile::read(&pagemap_path, PAGEMAP_MAGIC)?;
        let head: Pagemap_head = pm_file.decode(0, &pagemap_path)?;
        let pagemap = pm_file.decode_all(1, &pagemap_path)?;
        let pages = DumpedPages::open(dir.join(format!("pages-{}.img", head.pages_id())))?;
        Ok(Some(Memory {
            mm_path,
            mm,
            pagemap_path,
            pagemap_head: pm_file.entries[0].clone(),
            pagemap,
            pages,
        }))
    }
}

/// The pids of the tree, the root first; an empty tree is a corrupt image.
pub(super) fn pids(procs: &[Pstree_entry]) -> Result<Vec<u32>, TemplateError> {
    if procs.is_empty() {
        return Err(TemplateError::NoProcess);
    }
    Ok(procs.iter().map(Pstree_entry::pid).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(pid: u32) -> Pstree_entry {
        let mut p = Pstree_entry::new();
        p.set_pid(pid);
        p
    }

    #[test]
    fn every_process_of_the_tree_is_read_root_first() {
        assert_eq!(pids(&[proc_(7)]).unwrap(), [7]);
        assert_eq!(pids(&[proc_(7), proc_(8), proc_(9)]).unwrap(), [7, 8, 9]);
        let err = pids(&[]).unwrap_err();
        assert!(matches!(err, TemplateError::NoProcess), "{err}");
    }
}
