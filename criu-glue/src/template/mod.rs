//! Turning a CRIU image into a memory template (DESIGN.md "Memory templates without a
//! kernel patch", docs/design/templates.md §4.3).
//!
//! Every anonymous private VMA that is safe to share has its dumped pages moved into one
//! sparse template file, at a page-aligned offset (pages never dumped stay holes, which
//! read as zeros), and becomes a private mapping of that file. CRIU then restores it with
//! one `mmap` instead of copying its pages: instances share the template's page cache
//! until they write (copy-on-write).
//!
//! [`convert`] is a chain of steps, each in its own module and testable without root:
//!
//! 0. `dump`: read the single process's images (pstree, mm, page map, pages file);
//! 1. `layout`: choose the VMAs (by [`Policy`]) and their offsets in the template file;
//! 2. `pages`: cut the page map into runs, move the chosen VMAs' pages into the template
//!    file and keep the others in a new pages file;
//! 3. `files`: add the template file's entry to `files.img`;
//! 4. `mm`: turn the chosen VMAs into private mappings of that entry;
//! 5. commit: replace the pages file, then write the page map, the mm and `files.img`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::image::{ImageError, ImageFile, MM_MAGIC, PAGEMAP_MAGIC};

mod dump;
mod error;
mod files;
mod layout;
mod mm;
mod pages;

pub use error::TemplateError;
pub use layout::{
    Policy, VMA_ANON_PRIVATE, VMA_AREA_HEAP, VMA_AREA_REGULAR, VMA_AREA_STACK, VMA_AREA_VDSO,
    VMA_AREA_VSYSCALL, VMA_FILE_PRIVATE,
};

pub const PAGE: u64 = 4096;

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
    let dump = dump::Dump::read(dir)?;
    let layout = layout::Layout::plan(&dump.mm.vmas, policy);
    let plan = pages::plan(&dump.pagemap, &layout)?;
    let new_pages = pages::write(&plan, &dump.pages, template, layout.file_size)?;
    let files = files::Files::with_template(dir, image_name, layout.file_size)?;
    let mut mm = dump.mm;
    let vmas = mm::map_template(&mut mm.vmas, &layout, files.template_id);
    Rewrite {
        pagemap: pagemap_image(dump.pagemap_head, &plan, &dump.pagemap_path)?,
        pagemap_path: dump.pagemap_path,
        mm: ImageFile {
            magic: MM_MAGIC,
            entries: vec![ImageFile::encode(&mm, &dump.mm_path)?],
        },
        mm_path: dump.mm_path,
        new_pages,
        pages_path: dump.pages.path,
        files,
    }
    .commit()?;
    Ok(Conversion {
        pid: dump.pid,
        vmas,
        bytes_moved: plan.bytes_moved(),
        bytes_copied: plan.bytes_copied(),
        file_size: layout.file_size,
    })
}

/// The page map after the conversion: its head as it was, then the kept runs' entries.
fn pagemap_image(
    head: Vec<u8>,
    plan: &pages::PagePlan,
    path: &Path,
) -> Result<ImageFile, ImageError> {
    let mut image = ImageFile {
        magic: PAGEMAP_MAGIC,
        entries: vec![head],
    };
    for k in &plan.kept_entries() {
        image.entries.push(ImageFile::encode(k, path)?);
    }
    Ok(image)
}

/// Step 5: the rewritten images, encoded, and where they go.
struct Rewrite {
    new_pages: PathBuf,
    pages_path: PathBuf,
    pagemap: ImageFile,
    pagemap_path: PathBuf,
    mm: ImageFile,
    mm_path: PathBuf,
    files: files::Files,
}

impl Rewrite {
    /// The pages file first (the old page map no longer describes it, but nothing reads
    /// the directory until the caller publishes it).
    fn commit(self) -> Result<(), TemplateError> {
        fs::rename(&self.new_pages, &self.pages_path).map_err(|source| ImageError::Write {
            path: self.pages_path.clone(),
            source,
        })?;
        self.pagemap.write(&self.pagemap_path)?;
        self.mm.write(&self.mm_path)?;
        self.files.write()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::fdinfo::{Fd_types, File_entry};
    use crate::generated::mm::Mm_entry;
    use crate::generated::pagemap::{Pagemap_entry, Pagemap_head};
    use crate::generated::pstree::Pstree_entry;
    use crate::generated::vma::Vma_entry;
    use crate::image::{FILES_MAGIC, ImageFile, MM_MAGIC, PAGEMAP_MAGIC, PSTREE_MAGIC};
    use layout::vma;
    use pages::{PE_PARENT, PE_PRESENT};
    use std::fs;

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

        files_img_names_the_template(dir.path(), size);
        the_mm_maps_the_template(dir.path());
    }

    /// files.img names the template under the next free id.
    fn files_img_names_the_template(dir: &Path, size: u64) {
        let files_path = dir.join("files.img");
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
    }

    /// The mm: A and C map the template at their offsets, the rest is untouched.
    fn the_mm_maps_the_template(dir: &Path) {
        use fixture::*;
        let mm_path = dir.join(format!("mm-{PID}.img"));
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
