//! Step 5 of a conversion: the rewritten images, every one encoded before anything is
//! replaced, then written. The directory is not consistent while this runs (a pages file
//! replaced before its page map), but nothing reads it until the caller publishes it, and
//! a failure leaves it to be discarded.

use std::fs;
use std::path::{Path, PathBuf};

use super::TemplateError;
use super::dump::Memory;
use super::files::Files;
use super::pages::PagePlan;
use crate::generated::mm::Mm_entry;
use crate::image::{ImageError, ImageFile, MM_MAGIC, PAGEMAP_MAGIC};

/// One process's rewritten images, encoded, and where they go.
pub(super) struct ProcessRewrite {
    new_pages: PathBuf,
    pages_path: PathBuf,
    pagemap: ImageFile,
    pagemap_path: PathBuf,
    mm: ImageFile,
    mm_path: PathBuf,
}

impl ProcessRewrite {
    /// The images of the process `m` after its conversion: `mm` (its VMAs mapping the
    /// template), the kept runs of `plan` as its page map, `new_pages` as its pages file.
    pub fn new(
        m: &Memory,
        mm: Mm_entry,
        plan: &PagePlan,
        new_pages: PathBuf,
    ) -> Result<ProcessRewrite, ImageError> {
        Ok(ProcessRewrite {
            pagemap: pagemap_image(m.pagemap_head.clone(), plan, &m.pagemap_path)?,
            pagemap_path: m.pagemap_path.clone(),
            mm: ImageFile {
                magic: MM_MAGIC,
                entries: vec![ImageFile::encode(&mm, &m.mm_path)?],
            },
            mm_path: m.mm_path.clone(),
            new_pages,
            pages_path: m.pages.path.clone(),
        })
    }
}

/// Every process's rewrite and `files.img`.
pub(super) struct Rewrite {
    pub procs: Vec<ProcessRewrite>,
    pub files: Files,
}

impl Rewrite {
    /// The pages files first (the old page maps no longer describe them, but nothing reads
    /// the directory until the caller publishes it), then the page maps, the mms and
    /// `files.img`.
    pub fn commit(self) -> Result<(), TemplateError> {
        for p in &self.procs {
            fs::rename(&p.new_pages, &p.pages_path).map_err(|source| ImageError::Write {
                path: p.pages_path.clone(),
                source,
            })?;
        }
        for p in &self.procs {
            p.pagemap.write(&p.pagemap_path)?;
            p.mm.write(&p.mm_path)?;
        }
        self.files.write()?;
        Ok(())
    }
}

/// The page map after the conversion: its head as it was, then the kept runs' entries.
fn pagemap_image(head: Vec<u8>, plan: &PagePlan, path: &Path) -> Result<ImageFile, ImageError> {
    let mut image = ImageFile {
        magic: PAGEMAP_MAGIC,
        entries: vec![head],
    };
    for k in &plan.kept_entries() {
        image.entries.push(ImageFile::encode(k, path)?);
    }
    Ok(image)
}
