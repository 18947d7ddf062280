//! Turning a CRIU image into a memory template (DESIGN.md "Memory templates without a
//! kernel patch", docs/design/templates.md §4.3).
//!
//! Every anonymous private VMA that is safe to share has its dumped pages moved into one
//! sparse template file, at a page-aligned offset (pages never dumped stay holes, which
//! read as zeros), and becomes a private mapping of that file. CRIU then restores it with
//! one `mmap` instead of copying its pages: instances share the template's page cache
//! until they write (copy-on-write).
//!
//! A checkpoint of a process tree makes one template file: each process's VMAs follow the
//! previous process's, and each process maps the file through a `files.img` entry of its
//! own, so that CRIU's copy-on-write pairing of a child's VMA with its parent's (which
//! ignores the file offset) never hands a child its parent's memory (files.rs).
//!
//! [`convert`] is a chain of steps, each in its own module and testable without root:
//!
//! 0. `dump`: read every process's images (pstree, and each one's mm, page map, pages);
//!    `allocators`: a function whose allocator takes discarded memory to read as zeros
//!    gets nothing mapped (a copy template), and the conversion says why;
//! 1. `layout`: choose the VMAs (by [`Policy`]) and their offsets in the template file,
//!    process after process;
//! 2. `pages`: cut each page map into runs, move the chosen VMAs' pages into the template
//!    file and keep the others in a new pages file per process;
//! 3. `files`: add the template file's entries (one per process) to `files.img`;
//! 4. `mm`: turn each process's chosen VMAs into private mappings of its entry;
//! 5. `commit`: replace the pages files, then write the page maps, the mms and `files.img`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::image::{FILES_MAGIC, ImageFile};

mod allocators;
mod commit;
mod dump;
mod error;
mod files;
mod layout;
mod mm;
mod pages;
#[cfg(test)]
mod tests;

pub use error::TemplateError;
pub use layout::{
    Policy, VMA_ANON_PRIVATE, VMA_AREA_HEAP, VMA_AREA_REGULAR, VMA_AREA_STACK, VMA_AREA_VDSO,
    VMA_AREA_VSYSCALL, VMA_FILE_PRIVATE,
};

pub const PAGE: u64 = 4096;

/// What a conversion did. Stored in template manifests: fields added since the first
/// version default, so that older manifests still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversion {
    /// The root process of the dumped tree.
    pub pid: u32,
    /// The root process's VMAs turned into template mappings, as (start, end) (every
    /// process's are in `processes`).
    pub vmas: Vec<(u64, u64)>,
    /// Bytes of dumped pages moved into the template file, over all processes.
    pub bytes_moved: u64,
    /// Bytes of dumped pages still copied at restore, over all processes.
    pub bytes_copied: u64,
    /// Size of the template file (holes included).
    pub file_size: u64,
    /// Every process of the tree, the root first. Empty in a manifest written before trees
    /// were converted: that template holds one process, `pid`.
    #[serde(default)]
    pub processes: Vec<ProcessConversion>,
    /// Why nothing was mapped although the policy asked for it (allocators.rs), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Why this template's restores need mapped memory with anonymous semantics (the
    /// kernel backend), if they do: it was made for that backend and maps the memory of
    /// an allocator that a pool-file mapping would serve wrongly (allocators.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_anonymous: Option<String>,
}

/// What mapped memory of a restored instance reads after `MADV_DONTNEED`, which decides
/// whether allocators that take discarded memory for zeros can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappedMemory {
    /// A private mapping of the pool file (stock kernels): the template's data again.
    FileBacked,
    /// Anonymous memory with the template attached (the trenv-mmt module): zeros.
    Anonymous,
}

/// What a conversion did to one process of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessConversion {
    pub pid: u32,
    /// Its VMAs turned into template mappings, as (start, end).
    pub vmas: Vec<(u64, u64)>,
    /// Bytes of its dumped pages moved into the template file.
    pub bytes_moved: u64,
    /// Bytes of its dumped pages still copied at restore.
    pub bytes_copied: u64,
}

impl Conversion {
    /// How many processes the template holds.
    pub fn process_count(&self) -> usize {
        self.processes.len().max(1)
    }

    /// How many VMAs became template mappings, over all processes.
    pub fn vma_count(&self) -> usize {
        if self.processes.is_empty() {
            self.vmas.len()
        } else {
            self.processes.iter().map(|p| p.vmas.len()).sum()
        }
    }

    /// "N VMAs of P process(es)", for messages, and why nothing was mapped if the
    /// conversion fell back to copying.
    pub fn extent(&self) -> String {
        let n = self.process_count();
        let noun = if n == 1 { "process" } else { "processes" };
        let extent = format!("{} VMAs of {n} {noun}", self.vma_count());
        match (&self.fallback, &self.needs_anonymous) {
            (Some(why), _) => format!("{extent} (nothing mapped: {why})"),
            (None, Some(why)) => format!("{extent} (restores need the kernel backend: {why})"),
            (None, None) => extent,
        }
    }
}

/// Rewrites the CRIU images in `dir` in place: qualifying VMAs of every dumped process map
/// `template` (created here, `file_size` bytes, sparse) which CRIU will see under the name
/// `image_name` (an absolute path; restore hands the file over with `inherit_fd` keyed by
/// that name without its leading `/`). On failure the new pages files made so far are
/// removed; `template` and the images may be half-written (the caller discards both).
/// `memory` is what the restores will map: with [`MappedMemory::Anonymous`], a function
/// whose allocator takes discarded memory for zeros is mapped as any other, and the
/// conversion records that its restores need that backend.
pub fn convert(
    dir: &Path,
    template: &Path,
    image_name: &str,
    policy: &Policy,
    memory: MappedMemory,
) -> Result<Conversion, TemplateError> {
    let mut new_pages = Vec::new();
    let result = convert_tree(dir, template, image_name, policy, memory, &mut new_pages);
    if result.is_err() {
        for p in &new_pages {
            let _ = fs::remove_file(p);
        }
    }
    result
}

/// [`convert`]'s steps; `new_pages` collects the new pages files as they are written.
fn convert_tree(
    dir: &Path,
    template: &Path,
    image_name: &str,
    policy: &Policy,
    memory: MappedMemory,
    new_pages: &mut Vec<PathBuf>,
) -> Result<Conversion, TemplateError> {
    let dump = dump::Dump::read(dir)?;
    let (fallback, needs_anonymous) = match (zeroing_allocator(dir, &dump)?, memory) {
        (Some(why), MappedMemory::Anonymous) => (None, Some(why)),
        (why, _) => (why, None),
    };
    let policy = if fallback.is_some() {
        &Policy::COPY
    } else {
        policy
    };
    // Step 1, process after process; zombies have no memory.
    let mut file_size = 0;
    let mut procs = Vec::new();
    for p in &dump.procs {
        if let Some(m) = &p.memory {
            let layout = layout::Layout::plan(&m.mm.vmas, &m.pagemap, policy, file_size);
            file_size = layout.end;
            procs.push((p.pid, m, layout));
        }
    }
    // Step 2: every process's page map cut (an incremental image is refused before
    // anything is written), then its pages written into the one template file.
    let plans = procs
        .iter()
        .map(|(_, m, layout)| pages::plan(&m.pagemap, layout))
        .collect::<Result<Vec<_>, _>>()?;
    let file_size = layout::file_size(file_size);
    let out = pages::TemplateFile::create(template, file_size)?;
    for ((_, m, _), plan) in procs.iter().zip(&plans) {
        new_pages.push(pages::write(plan, &m.pages, &out)?);
    }
    out.sync()?;
    // Steps 3 and 4: an entry of the file per process, its VMAs mapping it.
    let files = files::Files::with_template(dir, image_name, file_size, procs.len())?;
    let mut rewrites = Vec::new();
    let mut done = Vec::new();
    for (i, (pid, m, layout)) in procs.iter().enumerate() {
        let plan = &plans[i];
        let mut mm = m.mm.clone();
        let vmas = mm::map_template(&mut mm.vmas, layout, files.template_ids[i]);
        rewrites.push(commit::ProcessRewrite::new(
            m,
            mm,
            plan,
            new_pages[i].clone(),
        )?);
        done.push(ProcessConversion {
            pid: *pid,
            vmas,
            bytes_moved: plan.bytes_moved(),
            bytes_copied: plan.bytes_copied(),
        });
    }
    commit::Rewrite {
        procs: rewrites,
        files,
    }
    .commit()?;
    Ok(Conversion {
        fallback,
        needs_anonymous,
        ..conversion(&dump, done, file_size)
    })
}

/// Step 0b: why the dumped processes cannot be served by template mappings, if so.
fn zeroing_allocator(dir: &Path, dump: &dump::Dump) -> Result<Option<String>, TemplateError> {
    let path = dir.join("files.img");
    let files = ImageFile::read(&path, FILES_MAGIC)?.decode_all(0, &path)?;
    let mms: Vec<(u32, &crate::generated::mm::Mm_entry)> = dump
        .procs
        .iter()
        .filter_map(|p| p.memory.as_ref().map(|m| (p.pid, &m.mm)))
        .collect();
    Ok(allocators::unsafe_allocator(&files, &mms))
}

/// The conversion's report from `done` (the processes that have memory, in the tree's
/// order): every process of the tree (a zombie with nothing converted), and the totals.
fn conversion(dump: &dump::Dump, done: Vec<ProcessConversion>, file_size: u64) -> Conversion {
    let mut done = done.into_iter();
    let processes: Vec<ProcessConversion> = dump
        .procs
        .iter()
        .map(|p| {
            let converted = p.memory.as_ref().and_then(|_| done.next());
            converted.unwrap_or_else(|| ProcessConversion {
                pid: p.pid,
                ..Default::default()
            })
        })
        .collect();
    Conversion {
        pid: dump.root(),
        vmas: processes[0].vmas.clone(),
        bytes_moved: processes.iter().map(|p| p.bytes_moved).sum(),
        bytes_copied: processes.iter().map(|p| p.bytes_copied).sum(),
        file_size,
        processes,
        fallback: None,
        needs_anonymous: None,
    }
}
