//! Turning a CRIU image into a memory template (DESIGN.md "Memory templates without a
//! kernel patch", docs/design/templates.md §4.3).
//!
//! Every anonymous private VMA that is safe to share has its dumped pages moved into one
//! sparse template file, at a page-aligned offset (pages never dumped stay holes, which
//! read as zeros), and becomes a private mapping of that file. CRIU then restores it with
//! one `mmap` instead of copying its pages: instances share the template's page cache
//! until they write (copy-on-write).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::generated::fdinfo::{Fd_types, File_entry};
use crate::generated::fown::Fown_entry;
use crate::generated::mm::Mm_entry;
use crate::generated::pagemap::{Pagemap_entry, Pagemap_head};
use crate::generated::pstree::Pstree_entry;
use crate::generated::regfile::Reg_file_entry;
use crate::generated::vma::Vma_entry;
use crate::image::{
    FILES_MAGIC, ImageError, ImageFile, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC, write_atomic,
};

pub const PAGE: u64 = 4096;

// VMA status bits (criu/include/image.h).
pub const VMA_AREA_REGULAR: u32 = 1 << 0;
pub const VMA_AREA_STACK: u32 = 1 << 1;
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
pub const VMA_AREA_VDSO: u32 = 1 << 3;
pub const VMA_AREA_HEAP: u32 = 1 << 5;
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
const VMA_NOT_SHAREABLE: u32 = VMA_AREA_STACK
    | VMA_AREA_VSYSCALL
    | VMA_AREA_VDSO
    | (1 << 7)  // VMA_FILE_SHARED
    | (1 << 8)  // VMA_ANON_SHARED
    | (1 << 10) // SYSVIPC
    | (1 << 11) // SOCKET
    | (1 << 12) // VVAR
    | (1 << 13) // AIORING
    | (1 << 14) // MEMFD
    | (1 << 15) // SHSTK
    | (1 << 31); // UNSUPP

// Page flags of pagemap entries (criu/include/pagemap.h).
const PE_PARENT: u32 = 1 << 0;
const PE_PRESENT: u32 = 1 << 2;

/// Which VMAs become template mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Smallest VMA worth mapping (smaller ones are restored by copy).
    pub min_vma: u64,
    /// Also map `[heap]`. Safe only for runtimes that never rely on MADV_DONTNEED zeroing
    /// brk memory (after it, a template region reads template data, not zeros).
    pub include_heap: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_vma: 1 << 20,
            include_heap: false,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversion {
    /// The process whose memory was converted.
    pub pid: u32,
    /// VMAs turned into template mappings, as (start, end).
    pub vmas: Vec<(u64, u64)>,
    /// Bytes of dumped pages moved into the template file.
    pub bytes_moved: u64,
    /// Bytes of dumped pages still copied at restore.
    pub bytes_copied: u64,
    /// Size of the template file (holes included).
    pub file_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "the checkpoint holds {count} processes (pids {pids}): memory templates support \
         single-process functions; restore this one with plain checkpoint/restore"
    )]
    MultiProcess { count: usize, pids: String },
    #[error("the checkpoint is incremental (pages in a parent image): templates need a full dump")]
    Incremental,
    #[error("the checkpoint's page map does not match its pages file ({0}); the image is corrupt")]
    Inconsistent(String),
    #[error(
        "the memory pool is full: writing {needed} bytes of template to {path} failed ({source}); \
         free space in the pool or remove templates (trenv template rm)"
    )]
    PoolFull {
        path: PathBuf,
        needed: u64,
        source: std::io::Error,
    },
    #[error("writing the template file {path}: {source}")]
    Pool {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A VMA chosen for conversion and where its pages go in the template file.
struct Slot {
    start: u64,
    end: u64,
    offset: u64,
}

/// Rewrites the CRIU images in `dir` in place: qualifying VMAs of the (single) dumped
/// process map `template` (created here, `file_size` bytes, sparse) which CRIU will see
/// under the name `image_name` (an absolute path; restore hands the file over with
/// `inherit_fd` keyed by that name without its leading `/`).
pub fn convert(
    dir: &Path,
    template: &Path,
    image_name: &str,
    policy: &Policy,
) -> Result<Conversion, TemplateError> {
    let pstree_path = dir.join("pstree.img");
    let pstree = ImageFile::read(&pstree_path, PSTREE_MAGIC)?;
    let procs: Vec<Pstree_entry> = pstree.decode_all(0, &pstree_path)?;
    let [proc_] = procs.as_slice() else {
        return Err(TemplateError::MultiProcess {
            count: procs.len(),
            pids: procs
                .iter()
                .map(|p| p.pid().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let pid = proc_.pid();

    let mm_path = dir.join(format!("mm-{pid}.img"));
    let mm_file = ImageFile::read(&mm_path, MM_MAGIC)?;
    let mut mm: Mm_entry = mm_file.decode(0, &mm_path)?;

    let pm_path = dir.join(format!("pagemap-{pid}.img"));
    let pm_file = ImageFile::read(&pm_path, PAGEMAP_MAGIC)?;
    let head: Pagemap_head = pm_file.decode(0, &pm_path)?;
    let entries: Vec<Pagemap_entry> = pm_file.decode_all(1, &pm_path)?;
    let pages_path = dir.join(format!("pages-{}.img", head.pages_id()));
    let pages = fs::File::open(&pages_path).map_err(|source| ImageError::Read {
        path: pages_path.clone(),
        source,
    })?;
    let pages_len = pages
        .metadata()
        .map_err(|source| ImageError::Read {
            path: pages_path.clone(),
            source,
        })?
        .len();

    // Choose the VMAs and lay them out in the template file.
    let mut slots: Vec<Slot> = Vec::new();
    let mut file_size = 0u64;
    for v in &mm.vmas {
        if shareable(v, policy) {
            slots.push(Slot {
                start: v.start(),
                end: v.end(),
                offset: file_size,
            });
            file_size += v.end() - v.start();
        }
    }
    let slot_of = |addr: u64| -> Option<&Slot> {
        let i = slots.partition_point(|s| s.end <= addr);
        slots.get(i).filter(|s| s.start <= addr)
    };

    let out = fs::File::create(template).map_err(|source| TemplateError::Pool {
        path: template.to_path_buf(),
        source,
    })?;
    let pool_err = |source: std::io::Error, needed: u64| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            TemplateError::PoolFull {
                path: template.to_path_buf(),
                needed,
                source,
            }
        } else {
            TemplateError::Pool {
                path: template.to_path_buf(),
                source,
            }
        }
    };
    out.set_len(file_size).map_err(|e| pool_err(e, file_size))?;

    // Walk the page map: pages inside a chosen VMA go to the template, the rest stay.
    let new_pages_path = pages_path.with_extension("img.trenv-new");
    let mut kept =
        BufWriter::new(
            fs::File::create(&new_pages_path).map_err(|source| ImageError::Write {
                path: new_pages_path.clone(),
                source,
            })?,
        );
    let mut kept_entries: Vec<Pagemap_entry> = Vec::new();
    let mut conv = Conversion {
        pid,
        file_size,
        ..Default::default()
    };
    let mut in_off = 0u64;
    let mut buf = vec![0u8; PAGE as usize];
    for e in &entries {
        if e.flags() & PE_PARENT != 0 || e.in_parent() {
            return Err(TemplateError::Incremental);
        }
        let present = e.flags() & PE_PRESENT != 0;
        let mut page = 0u32;
        while page < e.nr_pages() {
            // The longest run of pages from here with the same destination.
            let addr = e.vaddr() + page as u64 * PAGE;
            let dest = slot_of(addr);
            let mut run = 1u32;
            while page + run < e.nr_pages() {
                let next = slot_of(addr + run as u64 * PAGE);
                if next.map(|s| s.start) != dest.map(|s| s.start) {
                    break;
                }
                run += 1;
            }
            let bytes = run as u64 * PAGE;
            match dest {
                Some(slot) => {
                    if present {
                        let at = slot.offset + (addr - slot.start);
                        for k in 0..run as u64 {
                            read_page(&pages, in_off + k * PAGE, &mut buf, &pages_path, pages_len)?;
                            out.write_all_at(&buf, at + k * PAGE)
                                .map_err(|e| pool_err(e, file_size))?;
                        }
                        conv.bytes_moved += bytes;
                    }
                }
                None => {
                    let mut k = Pagemap_entry::new();
                    k.set_vaddr(addr);
                    k.set_nr_pages(run);
                    if e.has_flags() {
                        k.set_flags(e.flags());
                    }
                    if present {
                        for j in 0..run as u64 {
                            read_page(&pages, in_off + j * PAGE, &mut buf, &pages_path, pages_len)?;
                            kept.write_all(&buf).map_err(|source| ImageError::Write {
                                path: new_pages_path.clone(),
                                source,
                            })?;
                        }
                        conv.bytes_copied += bytes;
                    }
                    kept_entries.push(k);
                }
            }
            if present {
                in_off += bytes;
            }
            page += run;
        }
    }
    if in_off != pages_len {
        return Err(TemplateError::Inconsistent(format!(
            "{in_off} bytes mapped, {pages_len} in {}",
            pages_path.display()
        )));
    }
    out.sync_all().map_err(|e| pool_err(e, file_size))?;
    kept.into_inner()
        .map_err(|e| ImageError::Write {
            path: new_pages_path.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| ImageError::Write {
            path: new_pages_path.clone(),
            source,
        })?;

    // The new file in files.img.
    let files_path = dir.join("files.img");
    let mut files = ImageFile::read(&files_path, FILES_MAGIC)?;
    let existing: Vec<File_entry> = files.decode_all(0, &files_path)?;
    let ids: BTreeSet<u32> = existing.iter().map(|f| f.id()).collect();
    let file_id = ids.last().map_or(1, |m| m + 1);
    let mut reg = Reg_file_entry::new();
    reg.set_id(file_id);
    reg.set_flags((libc::O_RDONLY | libc::O_LARGEFILE) as u32);
    reg.set_pos(0);
    let mut fown = Fown_entry::new();
    fown.set_uid(0);
    fown.set_euid(0);
    fown.set_signum(0);
    fown.set_pid_type(0);
    fown.set_pid(0);
    reg.fown = Some(fown).into();
    reg.set_name(image_name.to_string());
    reg.set_size(file_size);
    reg.set_mode(libc::S_IFREG | 0o444);
    let mut fe = File_entry::new();
    fe.set_type(Fd_types::REG);
    fe.set_id(file_id);
    fe.reg = Some(reg).into();
    files.entries.push(ImageFile::encode(&fe, &files_path)?);

    for v in mm.vmas.iter_mut() {
        if let Some(slot) = slots.iter().find(|s| s.start == v.start()) {
            v.set_status((v.status() & !VMA_ANON_PRIVATE & !VMA_AREA_HEAP) | VMA_FILE_PRIVATE);
            v.set_flags(v.flags() & !(libc::MAP_ANONYMOUS as u32));
            v.set_shmid(file_id as u64);
            v.set_pgoff(slot.offset);
            v.set_fdflags(libc::O_RDONLY as u32);
            conv.vmas.push((slot.start, slot.end));
        }
    }

    let mut pm_new = ImageFile {
        magic: PAGEMAP_MAGIC,
        entries: vec![pm_file.entries[0].clone()],
    };
    for k in &kept_entries {
        pm_new.entries.push(ImageFile::encode(k, &pm_path)?);
    }
    let mm_new = ImageFile {
        magic: MM_MAGIC,
        entries: vec![ImageFile::encode(&mm, &mm_path)?],
    };
    // Commit: the pages file first (the old page map no longer describes it, but nothing
    // reads the directory until the caller publishes it).
    fs::rename(&new_pages_path, &pages_path).map_err(|source| ImageError::Write {
        path: pages_path.clone(),
        source,
    })?;
    pm_new.write(&pm_path)?;
    mm_new.write(&mm_path)?;
    write_atomic(&files_path, &files.to_bytes())?;
    Ok(conv)
}

fn shareable(v: &Vma_entry, policy: &Policy) -> bool {
    let status = v.status();
    let flags = v.flags();
    let heap_ok = policy.include_heap || status & VMA_AREA_HEAP == 0;
    status & VMA_AREA_REGULAR != 0
        && status & VMA_ANON_PRIVATE != 0
        && status & VMA_NOT_SHAREABLE == 0
        && heap_ok
        && flags & (libc::MAP_GROWSDOWN | libc::MAP_HUGETLB | libc::MAP_LOCKED) as u32 == 0
        && v.end() - v.start() >= policy.min_vma
}

fn read_page(
    f: &fs::File,
    at: u64,
    buf: &mut [u8],
    path: &Path,
    len: u64,
) -> Result<(), TemplateError> {
    if at + buf.len() as u64 > len {
        return Err(TemplateError::Inconsistent(format!(
            "page at {at} beyond the {len} bytes of {}",
            path.display()
        )));
    }
    f.read_exact_at(buf, at).map_err(|source| {
        TemplateError::Image(ImageError::Read {
            path: path.to_path_buf(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, status: u32, flags: u32) -> Vma_entry {
        let mut v = Vma_entry::new();
        v.set_start(start);
        v.set_end(end);
        v.set_status(status);
        v.set_flags(flags);
        v
    }

    #[test]
    fn only_large_private_anonymous_vmas_are_shared() {
        let p = Policy::default();
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        assert!(shareable(&vma(0, 2 << 20, anon, pa), &p));
        assert!(!shareable(&vma(0, 4096, anon, pa), &p), "too small");
        assert!(
            !shareable(&vma(0, 2 << 20, anon | VMA_AREA_STACK, pa), &p),
            "stack"
        );
        assert!(
            !shareable(&vma(0, 2 << 20, anon | VMA_AREA_HEAP, pa), &p),
            "heap without the policy"
        );
        let heap = Policy {
            include_heap: true,
            ..p
        };
        assert!(shareable(&vma(0, 2 << 20, anon | VMA_AREA_HEAP, pa), &heap));
        assert!(
            !shareable(&vma(0, 2 << 20, anon, pa | libc::MAP_GROWSDOWN as u32), &p),
            "grows down"
        );
        assert!(
            !shareable(&vma(0, 2 << 20, VMA_AREA_REGULAR | VMA_FILE_PRIVATE, 2), &p),
            "file mapping"
        );
    }

    /// A synthetic single-process image: five VMAs (two shareable), five page-map entries
    /// (one crossing out of a shareable VMA, one of absent pages), two existing files.
    mod fixture {
        use super::*;
        use crate::image::ImageFile;

        pub const PID: u32 = 7;
        pub const PA: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        pub const ANON: u32 = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        pub const A: (u64, u64) = (0x10_0000, 0x30_0000);
        pub const D: (u64, u64) = (0x30_0000, 0x30_1000);
        pub const B: (u64, u64) = (0x40_0000, 0x40_1000);
        pub const C: (u64, u64) = (0x60_0000, 0x70_0000);
        pub const F: (u64, u64) = (0x80_0000, 0xa0_0000);
        /// (vaddr, pages, flags); pages of present entries hold bytes 1, 2, … in order.
        pub const PAGEMAP: [(u64, u32, u32); 5] = [
            (A.0, 3, PE_PRESENT),
            (A.1 - PAGE, 2, PE_PRESENT),
            (B.0, 1, PE_PRESENT),
            (C.0, 4, 1 << 1),
            (C.1 - PAGE, 1, PE_PRESENT),
        ];

        pub fn vmas() -> Vec<Vma_entry> {
            let mut v = vec![
                vma(A.0, A.1, ANON, PA),
                vma(D.0, D.1, ANON, PA),
                vma(B.0, B.1, ANON, PA),
                vma(C.0, C.1, ANON, PA),
                vma(
                    F.0,
                    F.1,
                    VMA_AREA_REGULAR | VMA_FILE_PRIVATE,
                    libc::MAP_PRIVATE as u32,
                ),
            ];
            for x in &mut v {
                x.set_prot((libc::PROT_READ | libc::PROT_WRITE) as u32);
                x.set_pgoff(0);
                x.set_shmid(0);
                x.set_fd(-1);
            }
            v
        }

        fn write<M: protobuf::Message>(dir: &Path, name: &str, magic: u32, ms: &[M]) {
            let p = dir.join(name);
            ImageFile {
                magic,
                entries: ms
                    .iter()
                    .map(|m| ImageFile::encode(m, &p).unwrap())
                    .collect(),
            }
            .write(&p)
            .unwrap();
        }

        pub fn pstree(dir: &Path, pids: &[u32]) {
            let procs: Vec<Pstree_entry> = pids
                .iter()
                .map(|&pid| {
                    let mut p = Pstree_entry::new();
                    p.set_pid(pid);
                    p.set_ppid(0);
                    p.set_pgid(pid);
                    p.set_sid(pid);
                    p
                })
                .collect();
            write(dir, "pstree.img", PSTREE_MAGIC, &procs);
        }

        pub fn pagemap(dir: &Path, entries: &[(u64, u32, u32)]) {
            let p = dir.join(format!("pagemap-{PID}.img"));
            let mut head = Pagemap_head::new();
            head.set_pages_id(1);
            let mut img = ImageFile {
                magic: PAGEMAP_MAGIC,
                entries: vec![ImageFile::encode(&head, &p).unwrap()],
            };
            for &(vaddr, nr, flags) in entries {
                let mut e = Pagemap_entry::new();
                e.set_vaddr(vaddr);
                e.set_nr_pages(nr);
                e.set_flags(flags);
                img.entries.push(ImageFile::encode(&e, &p).unwrap());
            }
            img.write(&p).unwrap();
        }

        pub fn build(dir: &Path) {
            pstree(dir, &[PID]);
            let mut mm = Mm_entry::new();
            mm.set_mm_start_code(0);
            mm.set_mm_end_code(0);
            mm.set_mm_start_data(0);
            mm.set_mm_end_data(0);
            mm.set_mm_start_stack(0);
            mm.set_mm_start_brk(0);
            mm.set_mm_brk(0);
            mm.set_mm_arg_start(0);
            mm.set_mm_arg_end(0);
            mm.set_mm_env_start(0);
            mm.set_mm_env_end(0);
            mm.set_exe_file_id(1);
            mm.vmas = vmas();
            write(dir, &format!("mm-{PID}.img"), MM_MAGIC, &[mm]);
            pagemap(dir, &PAGEMAP);
            let present: u32 = PAGEMAP
                .iter()
                .filter(|e| e.2 & PE_PRESENT != 0)
                .map(|e| e.1)
                .sum();
            let pages: Vec<u8> = (1..=present as u8)
                .flat_map(|b| [b; PAGE as usize])
                .collect();
            fs::write(dir.join("pages-1.img"), pages).unwrap();
            let files: Vec<File_entry> = [3u32, 5]
                .iter()
                .map(|&id| {
                    let mut f = File_entry::new();
                    f.set_type(Fd_types::PIPE);
                    f.set_id(id);
                    f
                })
                .collect();
            write(dir, "files.img", FILES_MAGIC, &files);
        }
    }

    fn page_of(bytes: &[u8], at: u64) -> &[u8] {
        &bytes[at as usize..(at + PAGE) as usize]
    }

    #[test]
    fn a_conversion_moves_shareable_pages_and_rewrites_every_image() {
        use fixture::*;
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let tpl = dir.path().join("t.tpl");
        let conv = convert(dir.path(), &tpl, "/t.tpl", &Policy::default()).unwrap();
        let size = (A.1 - A.0) + (C.1 - C.0);
        assert_eq!(
            conv,
            Conversion {
                pid: PID,
                vmas: vec![A, C],
                bytes_moved: 5 * PAGE,
                bytes_copied: 2 * PAGE,
                file_size: size,
            }
        );

        // The template file: A's pages at offset 0, C's after A, holes elsewhere.
        let t = fs::read(&tpl).unwrap();
        assert_eq!(t.len() as u64, size);
        for (k, byte) in [(0, 1u8), (1, 2), (2, 3)] {
            assert!(page_of(&t, k * PAGE).iter().all(|&b| b == byte), "page {k}");
        }
        assert!(page_of(&t, 3 * PAGE).iter().all(|&b| b == 0), "hole");
        assert!(page_of(&t, A.1 - A.0 - PAGE).iter().all(|&b| b == 4));
        assert!(page_of(&t, size - PAGE).iter().all(|&b| b == 7));

        // What stays to be copied: the page after A (5) and B's page (6).
        let kept = fs::read(dir.path().join("pages-1.img")).unwrap();
        assert_eq!(kept.len() as u64, 2 * PAGE);
        assert!(page_of(&kept, 0).iter().all(|&b| b == 5));
        assert!(page_of(&kept, PAGE).iter().all(|&b| b == 6));
        let pm_path = dir.path().join(format!("pagemap-{PID}.img"));
        let pm = ImageFile::read(&pm_path, PAGEMAP_MAGIC).unwrap();
        let head: Pagemap_head = pm.decode(0, &pm_path).unwrap();
        assert_eq!(head.pages_id(), 1);
        let entries: Vec<Pagemap_entry> = pm.decode_all(1, &pm_path).unwrap();
        let entries: Vec<_> = entries
            .iter()
            .map(|e| (e.vaddr(), e.nr_pages(), e.flags()))
            .collect();
        assert_eq!(entries, [(D.0, 1, PE_PRESENT), (B.0, 1, PE_PRESENT)]);
        assert!(!dir.path().join("pages-1.img.trenv-new").exists());

        // files.img names the template under the next free id.
        let files_path = dir.path().join("files.img");
        let files: Vec<File_entry> = ImageFile::read(&files_path, FILES_MAGIC)
            .unwrap()
            .decode_all(0, &files_path)
            .unwrap();
        assert_eq!(files.len(), 3);
        let fe = &files[2];
        assert_eq!((fe.type_(), fe.id()), (Fd_types::REG, 6));
        let reg = fe.reg.as_ref().unwrap();
        assert_eq!(reg.id(), 6);
        assert_eq!(reg.name(), "/t.tpl");
        assert_eq!(reg.size(), size);
        assert_eq!(reg.mode(), libc::S_IFREG | 0o444);
        assert_eq!(reg.flags(), (libc::O_RDONLY | libc::O_LARGEFILE) as u32);
        assert_eq!(reg.pos(), 0);

        // The mm: A and C map the template at their offsets, the rest is untouched.
        let mm_path = dir.path().join(format!("mm-{PID}.img"));
        let mm: Mm_entry = ImageFile::read(&mm_path, MM_MAGIC)
            .unwrap()
            .decode(0, &mm_path)
            .unwrap();
        let before = vmas();
        for (i, v) in mm.vmas.iter().enumerate() {
            let pgoff = match (v.start(), v.end()) {
                x if x == A => Some(0),
                x if x == C => Some(A.1 - A.0),
                _ => None,
            };
            match pgoff {
                Some(pgoff) => {
                    assert_eq!(v.status(), VMA_AREA_REGULAR | VMA_FILE_PRIVATE, "{i}");
                    assert_eq!(v.flags(), libc::MAP_PRIVATE as u32, "{i}");
                    assert_eq!(v.shmid(), 6, "{i}");
                    assert_eq!(v.pgoff(), pgoff, "{i}");
                    assert_eq!(v.fdflags(), libc::O_RDONLY as u32, "{i}");
                    assert_eq!(v.prot(), before[i].prot(), "{i}");
                }
                None => assert_eq!(v, &before[i], "{i}"),
            }
        }
    }

    #[test]
    fn a_multi_process_checkpoint_is_refused_naming_its_pids() {
        let dir = tempfile::tempdir().unwrap();
        fixture::build(dir.path());
        fixture::pstree(dir.path(), &[7, 9]);
        let tpl = dir.path().join("t.tpl");
        let err = convert(dir.path(), &tpl, "/t.tpl", &Policy::default()).unwrap_err();
        assert!(
            matches!(err, TemplateError::MultiProcess { count: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("pids 7, 9"), "{err}");
    }

    #[test]
    fn an_incremental_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fixture::build(dir.path());
        fixture::pagemap(dir.path(), &[(fixture::A.0, 1, PE_PARENT)]);
        let tpl = dir.path().join("t.tpl");
        let err = convert(dir.path(), &tpl, "/t.tpl", &Policy::default()).unwrap_err();
        assert!(matches!(err, TemplateError::Incremental), "{err}");
    }

    #[test]
    fn a_pages_file_of_the_wrong_length_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        fixture::build(dir.path());
        let tpl = dir.path().join("t.tpl");
        let pages = dir.path().join("pages-1.img");
        let full = fs::read(&pages).unwrap();
        fs::write(&pages, [&full[..], &[0u8; PAGE as usize]].concat()).unwrap();
        let err = convert(dir.path(), &tpl, "/t.tpl", &Policy::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("page map does not match its pages file"),
            "{err}"
        );
        assert!(err.contains("28672 bytes mapped, 32768 in"), "{err}");
        fs::write(&pages, &full[..full.len() - PAGE as usize]).unwrap();
        let err = convert(dir.path(), &tpl, "/t.tpl", &Policy::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("page map does not match its pages file"),
            "{err}"
        );
        assert!(
            err.contains("page at 24576 beyond the 24576 bytes of"),
            "{err}"
        );
    }
}
