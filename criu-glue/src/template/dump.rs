//! Step 0 of a conversion: the dumped process's images. Templates hold one process (its
//! mm, page map and pages); a checkpoint of several is refused before anything is written.

use std::path::{Path, PathBuf};

use super::TemplateError;
use super::pages::DumpedPages;
use crate::generated::mm::Mm_entry;
use crate::generated::pagemap::{Pagemap_entry, Pagemap_head};
use crate::generated::pstree::Pstree_entry;
use crate::image::{ImageFile, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC};

/// What a conversion reads from an image directory.
pub(super) struct Dump {
    pub pid: u32,
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
        let pid = single_process(&pstree.decode_all(0, &pstree_path)?)?;

        let mm_path = dir.join(format!("mm-{pid}.img"));
        let mm = ImageFile::read(&mm_path, MM_MAGIC)?.decode(0, &mm_path)?;

        let pagemap_path = dir.join(format!("pagemap-{pid}.img"));
        let pm_file = ImageFile::read(&pagemap_path, PAGEMAP_MAGIC)?;
        let head: Pagemap_head = pm_file.decode(0, &pagemap_path)?;
        let pagemap = pm_file.decode_all(1, &pagemap_path)?;
        let pages = DumpedPages::open(dir.join(format!("pages-{}.img", head.pages_id())))?;
        Ok(Dump {
            pid,
            mm_path,
            mm,
            pagemap_path,
            pagemap_head: pm_file.entries[0].clone(),
            pagemap,
            pages,
        })
    }
}

/// The pid of the one process in the tree.
pub(super) fn single_process(procs: &[Pstree_entry]) -> Result<u32, TemplateError> {
    match procs {
        [one] => Ok(one.pid()),
        _ => Err(TemplateError::MultiProcess {
            count: procs.len(),
            pids: procs
                .iter()
                .map(|p| p.pid().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
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
    fn only_a_single_process_tree_is_converted() {
        assert_eq!(single_process(&[proc_(7)]).unwrap(), 7);
        let err = single_process(&[proc_(7), proc_(8), proc_(9)]).unwrap_err();
        assert!(
            matches!(&err, TemplateError::MultiProcess { count: 3, pids } if pids == "7, 8, 9"),
            "{err}"
        );
        let err = single_process(&[]).unwrap_err();
        assert!(
            matches!(err, TemplateError::MultiProcess { count: 0, .. }),
            "{err}"
        );
    }
}
