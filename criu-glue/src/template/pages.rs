//! Step 2 of a conversion: the dumped pages. Those inside a chosen VMA move into the
//! template file at their VMA's offset; the others stay in the image (a new pages file,
//! and page-map entries describing only them).
//!
//! Split in two so that the page walk can be tested without files: [`plan`] cuts every
//! page-map entry into runs of pages with one destination, and [`write`] carries the runs
//! out, one process at a time, into the one [`TemplateFile`] of the tree (each process's
//! own pages file keeps its kept pages). Pages that were never dumped (no `PE_PRESENT`)
//! need no copy: in the template file they stay holes, which read as zeros, exactly what
//! CRIU would have restored.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::layout::Layout;
use super::{PAGE, TemplateError};
use crate::generated::pagemap::Pagemap_entry;
use crate::image::ImageError;

// Page flags of pagemap entries (criu/include/pagemap.h).
pub(super) const PE_PARENT: u32 = 1 << 0;
pub(super) const PE_PRESENT: u32 = 1 << 2;

/// Where a run of pages goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    /// Into the template file, the run's first page at `offset`.
    Template { offset: u64 },
    /// Stays in the image: a page-map entry of its own (with its entry's flags, if it had
    /// any), its dumped pages copied to the new pages file.
    Kept { flags: Option<u32> },
}

/// Consecutive pages of one page-map entry with one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub addr: u64,
    pub pages: u32,
    /// Offset of the run's first page in the dumped pages file, if its pages were dumped.
    pub src: Option<u64>,
    pub dest: Dest,
}

impl Run {
    fn bytes(&self) -> u64 {
        self.pages as u64 * PAGE
    }
}

/// The page map cut into runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PagePlan {
    pub runs: Vec<Run>,
    /// Bytes of dumped pages the page map describes (the pages file must hold exactly these).
    pub mapped: u64,
}

impl PagePlan {
    /// Bytes of dumped pages moved into the template file.
    pub fn bytes_moved(&self) -> u64 {
        self.dumped_bytes(|d| matches!(d, Dest::Template { .. }))
    }

    /// Bytes of dumped pages still copied at restore.
    pub fn bytes_copied(&self) -> u64 {
        self.dumped_bytes(|d| matches!(d, Dest::Kept { .. }))
    }

    fn dumped_bytes(&self, dest: impl Fn(&Dest) -> bool) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.src.is_some() && dest(&r.dest))
            .map(Run::bytes)
            .sum()
    }

    /// The page map's entries after the conversion: one per kept run.
    pub fn kept_entries(&self) -> Vec<Pagemap_entry> {
        self.runs
            .iter()
            .filter_map(|r| {
                let Dest::Kept { flags } = r.dest else {
                    return None;
                };
                let mut k = Pagemap_entry::new();
                k.set_vaddr(r.addr);
                k.set_nr_pages(r.pages);
                if let Some(flags) = flags {
                    k.set_flags(flags);
                }
                Some(k)
            })
            .collect()
    }
}

/// Cuts the page map `entries` into runs: each entry into the longest runs of pages that
/// fall into the same chosen VMA (or into none).
pub(super) fn plan(entries: &[Pagemap_entry], layout: &Layout) -> Result<PagePlan, TemplateError> {
    let mut plan = PagePlan::default();
    for e in entries {
        if e.flags() & PE_PARENT != 0 || e.in_parent() {
            return Err(TemplateError::Incremental);
        }
        let present = e.flags() & PE_PRESENT != 0;
        let mut page = 0u32;
        while page < e.nr_pages() {
            // The longest run of pages from here with the same destination.
            let addr = e.vaddr() + page as u64 * PAGE;
            let slot = layout.slot_of(addr);
            let mut pages = 1u32;
            while page + pages < e.nr_pages() {
                let next = layout.slot_of(addr + pages as u64 * PAGE);
                if next.map(|s| s.start) != slot.map(|s| s.start) {
                    break;
                }
                pages += 1;
            }
            let dest = match slot {
                Some(s) => Dest::Template {
                    offset: s.offset + (addr - s.start),
                },
                None => Dest::Kept {
                    flags: e.has_flags().then(|| e.flags()),
                },
            };
            let run = Run {
                addr,
                pages,
                src: present.then_some(plan.mapped),
                dest,
            };
            if present {
                plan.mapped += run.bytes();
            }
            plan.runs.push(run);
            page += pages;
        }
    }
    Ok(plan)
}

/// The dumped pages file (`pages-<id>.img`), read page by page.
pub(super) struct DumpedPages {
    file: fs::File,
    pub path: PathBuf,
    pub len: u64,
}

impl DumpedPages {
    pub fn open(path: PathBuf) -> Result<DumpedPages, ImageError> {
        let read_err = |source| ImageError::Read {
            path: path.clone(),
            source,
        };
        let file = fs::File::open(&path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        Ok(DumpedPages { file, path, len })
    }

    fn read_page(&self, at: u64, buf: &mut [u8]) -> Result<(), TemplateError> {
        if at + buf.len() as u64 > self.len {
            return Err(TemplateError::PageBeyondEnd {
                at,
                len: self.len,
                path: self.path.clone(),
            });
        }
        self.file.read_exact_at(buf, at).map_err(|source| {
            TemplateError::Image(ImageError::Read {
                path: self.path.clone(),
                source,
            })
        })
    }
}

/// The template file being written, in the memory pool: a full pool is its own error.
pub(super) struct TemplateFile<'a> {
    file: fs::File,
    path: &'a Path,
    size: u64,
}

impl<'a> TemplateFile<'a> {
    /// Creates the file, sparse, `size` bytes long.
    pub fn create(path: &'a Path, size: u64) -> Result<TemplateFile<'a>, TemplateError> {
        let file = fs::File::create(path).map_err(|source| TemplateError::Pool {
            path: path.to_path_buf(),
            source,
        })?;
        let t = TemplateFile { file, path, size };
        t.file.set_len(size).map_err(|e| t.error(e))?;
        Ok(t)
    }

    fn write_page(&self, buf: &[u8], at: u64) -> Result<(), TemplateError> {
        self.file.write_all_at(buf, at).map_err(|e| self.error(e))
    }

    pub fn sync(&self) -> Result<(), TemplateError> {
        self.file.sync_all().map_err(|e| self.error(e))
    }

    fn error(&self, source: std::io::Error) -> TemplateError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            TemplateError::PoolFull {
                path: self.path.to_path_buf(),
                needed: self.size,
                source,
            }
        } else {
            TemplateError::Pool {
                path: self.path.to_path_buf(),
                source,
            }
        }
    }
}

/// The pages that stay in the image, written to a new file that replaces the dumped one
/// when the conversion commits.
struct KeptPages {
    out: BufWriter<fs::File>,
    path: PathBuf,
}

impl KeptPages {
    fn create(path: PathBuf) -> Result<KeptPages, ImageError> {
        let file = fs::File::create(&path).map_err(|source| ImageError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(KeptPages {
            out: BufWriter::new(file),
            path,
        })
    }

    fn write_page(&mut self, buf: &[u8]) -> Result<(), ImageError> {
        self.out.write_all(buf).map_err(|source| ImageError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes and syncs the file; answers its path.
    fn finish(self) -> Result<PathBuf, ImageError> {
        let path = self.path;
        let write_err = |source| ImageError::Write {
            path: path.clone(),
            source,
        };
        self.out
            .into_inner()
            .map_err(|e| write_err(e.into_error()))?
            .sync_all()
            .map_err(write_err)?;
        Ok(path)
    }
}

/// Carries out one process's `plan`: writes its moved pages into the template file `out`
/// (which the caller syncs once every process's are in), and its kept pages to a new
/// pages file next to the dumped one, synced. Answers the new pages file's path
/// (`pages-<id>.img.trenv-new`); removes it on failure.
pub(super) fn write(
    plan: &PagePlan,
    dumped: &DumpedPages,
    out: &TemplateFile<'_>,
) -> Result<PathBuf, TemplateError> {
    let path = dumped.path.with_extension("img.trenv-new");
    let kept = KeptPages::create(path.clone())?;
    copy_runs(plan, dumped, out, kept).inspect_err(|_| {
        let _ = fs::remove_file(&path);
    })
}

fn copy_runs(
    plan: &PagePlan,
    dumped: &DumpedPages,
    out: &TemplateFile<'_>,
    mut kept: KeptPages,
) -> Result<PathBuf, TemplateError> {
    let mut buf = vec![0u8; PAGE as usize];
    for run in &plan.runs {
        let Some(src) = run.src else {
            continue;
        };
        for k in 0..run.pages as u64 {
            dumped.read_page(src + k * PAGE, &mut buf)?;
            match run.dest {
                Dest::Template { offset } => out.write_page(&buf, offset + k * PAGE)?,
                Dest::Kept { .. } => kept.write_page(&buf)?,
            }
        }
    }
    if plan.mapped != dumped.len {
        return Err(TemplateError::PagesLength {
            mapped: plan.mapped,
            len: dumped.len,
            path: dumped.path.clone(),
        });
    }
    Ok(kept.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::layout::{Slot, VMA_ANON_PRIVATE, VMA_AREA_REGULAR, dumped, vma};
    use crate::template::{Policy, layout::Layout};

    fn entry(vaddr: u64, nr_pages: u32, flags: Option<u32>) -> Pagemap_entry {
        let mut e = Pagemap_entry::new();
        e.set_vaddr(vaddr);
        e.set_nr_pages(nr_pages);
        if let Some(f) = flags {
            e.set_flags(f);
        }
        e
    }

    /// One chosen VMA, [1 MiB, 3 MiB), at offset 0.
    fn layout() -> Layout {
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let l = Layout::plan(
            &[vma(0x10_0000, 0x30_0000, anon, pa)],
            &dumped(&[(0x10_0000, 0x10_1000)]),
            &Policy::default(),
            0,
        );
        assert_eq!(
            l.slots,
            [Slot {
                start: 0x10_0000,
                end: 0x30_0000,
                offset: 0
            }]
        );
        l
    }

    #[test]
    fn entries_are_cut_where_their_destination_changes() {
        let plan = plan(
            &[
                entry(0x0f_f000, 3, Some(PE_PRESENT)),
                entry(0x2f_f000, 1, None),
                entry(0x40_0000, 2, Some(PE_PRESENT)),
            ],
            &layout(),
        )
        .unwrap();
        let kept = |flags| Dest::Kept { flags };
        assert_eq!(
            plan.runs,
            [
                Run {
                    addr: 0x0f_f000,
                    pages: 1,
                    src: Some(0),
                    dest: kept(Some(PE_PRESENT))
                },
                Run {
                    addr: 0x10_0000,
                    pages: 2,
                    src: Some(PAGE),
                    dest: Dest::Template { offset: 0 }
                },
                Run {
                    addr: 0x2f_f000,
                    pages: 1,
                    src: None,
                    dest: Dest::Template { offset: 0x1f_f000 }
                },
                Run {
                    addr: 0x40_0000,
                    pages: 2,
                    src: Some(3 * PAGE),
                    dest: kept(Some(PE_PRESENT))
                },
            ]
        );
        assert_eq!(plan.mapped, 5 * PAGE);
        assert_eq!(plan.bytes_moved(), 2 * PAGE);
        assert_eq!(plan.bytes_copied(), 3 * PAGE);
        let kept: Vec<_> = plan
            .kept_entries()
            .iter()
            .map(|e| (e.vaddr(), e.nr_pages(), e.has_flags()))
            .collect();
        assert_eq!(kept, [(0x0f_f000, 1, true), (0x40_0000, 2, true)]);
    }

    #[test]
    fn kept_entries_without_flags_stay_without_flags() {
        let plan = plan(&[entry(0x40_0000, 1, None)], &layout()).unwrap();
        assert_eq!(plan.mapped, 0);
        assert_eq!(plan.bytes_copied(), 0);
        assert!(!plan.kept_entries()[0].has_flags());
    }

    #[test]
    fn pages_in_a_parent_image_are_refused() {
        for e in [entry(0x10_0000, 1, Some(PE_PARENT)), {
            let mut e = entry(0x10_0000, 1, None);
            e.set_in_parent(true);
            e
        }] {
            let err = plan(&[e], &layout()).unwrap_err();
            assert!(matches!(err, TemplateError::Incremental), "{err}");
        }
    }

    #[test]
    fn a_full_pool_says_so_with_the_size_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tpl");
        let t = TemplateFile {
            file: fs::File::create(&path).unwrap(),
            path: &path,
            size: 12345,
        };
        let full = t.error(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(
            matches!(full, TemplateError::PoolFull { needed: 12345, .. }),
            "{full}"
        );
        assert!(full.to_string().contains("memory pool is full"), "{full}");
        let other = t.error(std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, TemplateError::Pool { .. }), "{other}");
    }
}
