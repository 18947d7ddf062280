//! [`convert`] on synthetic images: one process, and a tree whose child has its VMAs at
//! its parent's addresses with other contents.

use super::*;
use crate::generated::fdinfo::{Fd_types, File_entry};
use crate::generated::mm::Mm_entry;
use crate::generated::pagemap::{Pagemap_entry, Pagemap_head};
use crate::generated::vma::Vma_entry;
use crate::image::{FILES_MAGIC, ImageFile, MM_MAGIC, PAGEMAP_MAGIC};
use layout::GROWTH_TAIL;
use pages::{PE_PARENT, PE_PRESENT};

/// Restores that map the pool file (stock kernels).
const FILE: MappedMemory = MappedMemory::FileBacked;

/// The fixture's tests map its two large VMAs only (A and C), not its pages B and D.
fn large_only() -> Policy {
    Policy {
        min_vma: 1 << 20,
        include_heap: false,
        file_pages: false,
    }
}

/// Synthetic images. The root process: five VMAs (two shareable), five page-map entries
/// (one crossing out of a shareable VMA, one of absent pages), two existing files. Its
/// tree adds a child forked from it (the same VMAs, other pages dumped with other bytes)
/// and a zombie (no memory images).
mod fixture {
    use super::*;
    use crate::generated::pstree::Pstree_entry;
    use crate::image::PSTREE_MAGIC;
    use layout::vma;

    pub const PID: u32 = 7;
    pub const CHILD: u32 = 9;
    pub const ZOMBIE: u32 = 11;
    pub const PA: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    pub const ANON: u32 = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
    pub const A: (u64, u64) = (0x10_0000, 0x30_0000);
    pub const D: (u64, u64) = (0x30_0000, 0x30_1000);
    pub const B: (u64, u64) = (0x40_0000, 0x40_1000);
    pub const C: (u64, u64) = (0x60_0000, 0x70_0000);
    pub const F: (u64, u64) = (0x80_0000, 0xa0_0000);
    /// The template file's bytes of one process (A and C).
    pub const PART: u64 = (A.1 - A.0) + (C.1 - C.0);
    /// (vaddr, pages, flags); pages of present entries hold bytes 1, 2, … in order.
    pub const PAGEMAP: [(u64, u32, u32); 5] = [
        (A.0, 3, PE_PRESENT),
        (A.1 - PAGE, 2, PE_PRESENT),
        (B.0, 1, PE_PRESENT),
        (C.0, 4, 1 << 1),
        (C.1 - PAGE, 1, PE_PRESENT),
    ];
    /// The child's, at its parent's addresses; its pages hold bytes 101, 102, … in order.
    pub const CHILD_PAGEMAP: [(u64, u32, u32); 3] = [
        (A.0, 2, PE_PRESENT),
        (B.0, 1, PE_PRESENT),
        (C.0 + PAGE, 1, PE_PRESENT),
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

    /// `pstree.img` of (pid, ppid).
    pub fn pstree(dir: &Path, procs: &[(u32, u32)]) {
        let procs: Vec<Pstree_entry> = procs
            .iter()
            .map(|&(pid, ppid)| {
                let mut p = Pstree_entry::new();
                p.set_pid(pid);
                p.set_ppid(ppid);
                p.set_pgid(PID);
                p.set_sid(PID);
                p
            })
            .collect();
        write(dir, "pstree.img", PSTREE_MAGIC, &procs);
    }

    pub fn pagemap(dir: &Path, pid: u32, pages_id: u32, entries: &[(u64, u32, u32)]) {
        let p = dir.join(format!("pagemap-{pid}.img"));
        let mut head = Pagemap_head::new();
        head.set_pages_id(pages_id);
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

    /// Process `pid`'s mm ([`vmas`]), page map and pages (`pages-<pages_id>.img`, its
    /// present pages filled with `first`, `first + 1`, …).
    fn process(dir: &Path, pid: u32, pages_id: u32, entries: &[(u64, u32, u32)], first: u8) {
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
        write(dir, &format!("mm-{pid}.img"), MM_MAGIC, &[mm]);
        pagemap(dir, pid, pages_id, entries);
        let present: u32 = entries
            .iter()
            .filter(|e| e.2 & PE_PRESENT != 0)
            .map(|e| e.1)
            .sum();
        let pages: Vec<u8> = (0..present as u8)
            .flat_map(|k| [first + k; PAGE as usize])
            .collect();
        fs::write(dir.join(format!("pages-{pages_id}.img")), pages).unwrap();
    }

    /// The root process alone.
    pub fn build(dir: &Path) {
        pstree(dir, &[(PID, 0)]);
        process(dir, PID, 1, &PAGEMAP, 1);
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

    /// The root, its child and a zombie child.
    pub fn build_tree(dir: &Path) {
        build(dir);
        pstree(dir, &[(PID, 0), (CHILD, PID), (ZOMBIE, PID)]);
        process(dir, CHILD, 2, &CHILD_PAGEMAP, 101);
    }
}

fn page_of(bytes: &[u8], at: u64) -> &[u8] {
    &bytes[at as usize..(at + PAGE) as usize]
}

/// Asserts that the page at `at` of `bytes` is all `byte`.
fn assert_page(bytes: &[u8], at: u64, byte: u8) {
    assert!(
        page_of(bytes, at).iter().all(|&b| b == byte),
        "page at {at:#x}: expected {byte}, found {}",
        page_of(bytes, at)[0]
    );
}

/// The page map of `pid` as (vaddr, pages, flags), after its head (checked: `pages_id`).
fn pagemap_of(dir: &Path, pid: u32, pages_id: u32) -> Vec<(u64, u32, u32)> {
    let pm_path = dir.join(format!("pagemap-{pid}.img"));
    let pm = ImageFile::read(&pm_path, PAGEMAP_MAGIC).unwrap();
    let head: Pagemap_head = pm.decode(0, &pm_path).unwrap();
    assert_eq!(head.pages_id(), pages_id);
    let entries: Vec<Pagemap_entry> = pm.decode_all(1, &pm_path).unwrap();
    entries
        .iter()
        .map(|e| (e.vaddr(), e.nr_pages(), e.flags()))
        .collect()
}

/// The regular-file entries of files.img (the template's), after checking the others.
fn template_entries(dir: &Path, size: u64) -> Vec<u32> {
    let files_path = dir.join("files.img");
    let files: Vec<File_entry> = ImageFile::read(&files_path, FILES_MAGIC)
        .unwrap()
        .decode_all(0, &files_path)
        .unwrap();
    let (others, tpl): (Vec<_>, Vec<_>) = files.iter().partition(|f| f.reg.is_none());
    assert_eq!(others.iter().map(|f| f.id()).collect::<Vec<_>>(), [3, 5]);
    tpl.iter()
        .map(|fe| {
            assert_eq!(fe.type_(), Fd_types::REG);
            let reg = fe.reg.as_ref().unwrap();
            assert_eq!(reg.id(), fe.id());
            assert_eq!(reg.name(), "/t.tpl");
            assert_eq!(reg.size(), size);
            assert_eq!(reg.mode(), libc::S_IFREG | 0o444);
            assert_eq!(reg.flags(), (libc::O_RDONLY | libc::O_LARGEFILE) as u32);
            assert_eq!(reg.pos(), 0);
            fe.id()
        })
        .collect()
}

/// `pid`'s mm: A and C map entry `file_id` at `base` and after, the rest is untouched.
fn assert_mm_maps(dir: &Path, pid: u32, file_id: u32, base: u64) {
    use fixture::*;
    let mm_path = dir.join(format!("mm-{pid}.img"));
    let mm: Mm_entry = ImageFile::read(&mm_path, MM_MAGIC)
        .unwrap()
        .decode(0, &mm_path)
        .unwrap();
    let before = vmas();
    assert_eq!(mm.vmas.len(), before.len());
    for (i, v) in mm.vmas.iter().enumerate() {
        let pgoff = match (v.start(), v.end()) {
            x if x == A => Some(base),
            x if x == C => Some(base + A.1 - A.0),
            _ => None,
        };
        match pgoff {
            Some(pgoff) => {
                assert_eq!(v.status(), VMA_AREA_REGULAR | VMA_FILE_PRIVATE, "{pid} {i}");
                assert_eq!(v.flags(), libc::MAP_PRIVATE as u32, "{pid} {i}");
                assert_eq!(v.shmid(), file_id as u64, "{pid} {i}");
                assert_eq!(v.pgoff(), pgoff, "{pid} {i}");
                assert_eq!(v.fdflags(), libc::O_RDONLY as u32, "{pid} {i}");
                assert_eq!(v.prot(), before[i].prot(), "{pid} {i}");
            }
            None => assert_eq!(v, &before[i], "{pid} {i}"),
        }
    }
}

/// No `pages-*.img.trenv-new` left in `dir`.
fn assert_no_new_pages(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".trenv-new"), "{name} left behind");
    }
}

#[test]
fn a_conversion_moves_shareable_pages_and_rewrites_every_image() {
    use fixture::*;
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let tpl = dir.path().join("t.tpl");
    let conv = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap();
    let root = ProcessConversion {
        pid: PID,
        vmas: vec![A, C],
        bytes_moved: 5 * PAGE,
        bytes_copied: 2 * PAGE,
    };
    assert_eq!(
        conv,
        Conversion {
            pid: PID,
            vmas: vec![A, C],
            bytes_moved: 5 * PAGE,
            bytes_copied: 2 * PAGE,
            file_size: PART + GROWTH_TAIL,
            processes: vec![root],
            fallback: None,
            needs_anonymous: None,
        }
    );
    assert_eq!((conv.process_count(), conv.vma_count()), (1, 2));
    assert_eq!(conv.extent(), "2 VMAs of 1 process");

    // The template file: A's pages at offset 0, C's after A, holes elsewhere.
    let t = fs::read(&tpl).unwrap();
    assert_eq!(t.len() as u64, PART + GROWTH_TAIL);
    for (k, byte) in [(0, 1u8), (1, 2), (2, 3)] {
        assert_page(&t, k * PAGE, byte);
    }
    assert_page(&t, 3 * PAGE, 0);
    assert_page(&t, A.1 - A.0 - PAGE, 4);
    assert_page(&t, PART - PAGE, 7);

    // What stays to be copied: the page after A (5) and B's page (6).
    let kept = fs::read(dir.path().join("pages-1.img")).unwrap();
    assert_eq!(kept.len() as u64, 2 * PAGE);
    assert_page(&kept, 0, 5);
    assert_page(&kept, PAGE, 6);
    assert_eq!(
        pagemap_of(dir.path(), PID, 1),
        [(D.0, 1, PE_PRESENT), (B.0, 1, PE_PRESENT)]
    );
    assert_no_new_pages(dir.path());

    // files.img names the template under the next free id; the mm maps it.
    assert_eq!(template_entries(dir.path(), PART + GROWTH_TAIL), [6]);
    assert_mm_maps(dir.path(), PID, 6, 0);
}

/// The case CRIU's restore gets wrong if parent and child share an entry: their VMAs have
/// the same bounds, so `check_cow_vmas` pairs them unless their `shmid`s differ, and the
/// child would inherit its parent's mapping (and data).
#[test]
fn a_process_tree_maps_each_process_onto_its_own_part_through_its_own_entry() {
    use fixture::*;
    let dir = tempfile::tempdir().unwrap();
    build_tree(dir.path());
    let tpl = dir.path().join("t.tpl");
    let conv = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap();
    let processes = vec![
        ProcessConversion {
            pid: PID,
            vmas: vec![A, C],
            bytes_moved: 5 * PAGE,
            bytes_copied: 2 * PAGE,
        },
        ProcessConversion {
            pid: CHILD,
            vmas: vec![A, C],
            bytes_moved: 3 * PAGE,
            bytes_copied: PAGE,
        },
        ProcessConversion {
            pid: ZOMBIE,
            ..Default::default()
        },
    ];
    assert_eq!(
        conv,
        Conversion {
            pid: PID,
            vmas: vec![A, C],
            bytes_moved: 8 * PAGE,
            bytes_copied: 3 * PAGE,
            file_size: 2 * PART + GROWTH_TAIL,
            processes,
            fallback: None,
            needs_anonymous: None,
        }
    );
    assert_eq!((conv.process_count(), conv.vma_count()), (3, 4));
    assert_eq!(conv.extent(), "4 VMAs of 3 processes");

    // The root's part as for a single process, the child's after it.
    let t = fs::read(&tpl).unwrap();
    assert_eq!(t.len() as u64, 2 * PART + GROWTH_TAIL);
    assert_page(&t, 0, 1);
    assert_page(&t, 2 * PAGE, 3);
    assert_page(&t, PART - PAGE, 7);
    assert_page(&t, PART, 101);
    assert_page(&t, PART + PAGE, 102);
    assert_page(&t, PART + 2 * PAGE, 0);
    assert_page(&t, PART + (A.1 - A.0), 0);
    assert_page(&t, PART + (A.1 - A.0) + PAGE, 104);
    assert_page(&t, 2 * PART - PAGE, 0);

    // Kept pages stay with their process: the root's 5 and 6, the child's B page (103).
    let kept = fs::read(dir.path().join("pages-1.img")).unwrap();
    assert_eq!(kept.len() as u64, 2 * PAGE);
    assert_page(&kept, 0, 5);
    assert_page(&kept, PAGE, 6);
    assert_eq!(
        pagemap_of(dir.path(), PID, 1),
        [(D.0, 1, PE_PRESENT), (B.0, 1, PE_PRESENT)]
    );
    let kept = fs::read(dir.path().join("pages-2.img")).unwrap();
    assert_eq!(kept.len() as u64, PAGE);
    assert_page(&kept, 0, 103);
    assert_eq!(pagemap_of(dir.path(), CHILD, 2), [(B.0, 1, PE_PRESENT)]);
    assert_no_new_pages(dir.path());

    // One entry per process with memory (none for the zombie), distinct ids, one file.
    assert_eq!(template_entries(dir.path(), 2 * PART + GROWTH_TAIL), [6, 7]);
    assert_mm_maps(dir.path(), PID, 6, 0);
    assert_mm_maps(dir.path(), CHILD, 7, PART);
    assert!(!dir.path().join(format!("mm-{ZOMBIE}.img")).exists());
}

#[test]
fn a_failed_conversion_of_a_tree_leaves_no_new_pages_file() {
    let dir = tempfile::tempdir().unwrap();
    fixture::build_tree(dir.path());
    // The child's pages file one page short: the root's new pages file is already written.
    let root_pages = fs::read(dir.path().join("pages-1.img")).unwrap();
    let pages = dir.path().join("pages-2.img");
    let full = fs::read(&pages).unwrap();
    fs::write(&pages, &full[..full.len() - PAGE as usize]).unwrap();
    let tpl = dir.path().join("t.tpl");
    let err = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap_err();
    assert!(matches!(err, TemplateError::PageBeyondEnd { .. }), "{err}");
    assert!(err.to_string().contains("pages-2.img"), "{err}");
    assert_no_new_pages(dir.path());
    // The images are as they were.
    assert_eq!(
        fs::read(dir.path().join("pages-1.img")).unwrap(),
        root_pages
    );
}

#[test]
fn by_default_every_private_anonymous_vma_with_dumped_pages_is_mapped() {
    use fixture::*;
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let tpl = dir.path().join("t.tpl");
    let conv = convert(dir.path(), &tpl, "/t.tpl", &Policy::default(), FILE).unwrap();
    assert_eq!(conv.vmas, [A, D, B, C]);
    assert_eq!((conv.bytes_moved, conv.bytes_copied), (7 * PAGE, 0));
    let size = PART + (D.1 - D.0) + (B.1 - B.0);
    assert_eq!(conv.file_size, size + GROWTH_TAIL);
    // D's page (5) after A, B's (6) after D, C's after B.
    let t = fs::read(&tpl).unwrap();
    assert_page(&t, A.1 - A.0, 5);
    assert_page(&t, (A.1 - A.0) + (D.1 - D.0), 6);
    assert_page(&t, size - PAGE, 7);
    assert!(
        t[size as usize..].iter().all(|&b| b == 0),
        "the tail is holes"
    );
}

#[test]
fn a_manifest_from_before_process_trees_still_reads() {
    let old = r#"{"pid":7,"vmas":[[1048576,3145728]],"bytes_moved":20480,
                  "bytes_copied":8192,"file_size":3145728}"#;
    let conv: Conversion = serde_json::from_str(old).unwrap();
    assert_eq!(conv.pid, 7);
    assert!(conv.processes.is_empty());
    assert_eq!((conv.process_count(), conv.vma_count()), (1, 1));
    // And a new one round-trips.
    let new = Conversion {
        processes: vec![ProcessConversion {
            pid: 7,
            vmas: conv.vmas.clone(),
            bytes_moved: 20480,
            bytes_copied: 8192,
        }],
        ..conv
    };
    let json = serde_json::to_string(&new).unwrap();
    assert_eq!(serde_json::from_str::<Conversion>(&json).unwrap(), new);
}

#[test]
fn an_empty_process_tree_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    fixture::build(dir.path());
    fixture::pstree(dir.path(), &[]);
    let tpl = dir.path().join("t.tpl");
    let err = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap_err();
    assert!(matches!(err, TemplateError::NoProcess), "{err}");
}

#[test]
fn an_incremental_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fixture::build(dir.path());
    fixture::pagemap(dir.path(), fixture::PID, 1, &[(fixture::A.0, 1, PE_PARENT)]);
    let tpl = dir.path().join("t.tpl");
    let err = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap_err();
    assert!(matches!(err, TemplateError::Incremental), "{err}");
    // In any process of a tree, before anything is written.
    fixture::build_tree(dir.path());
    fixture::pagemap(
        dir.path(),
        fixture::CHILD,
        2,
        &[(fixture::B.0, 1, PE_PARENT)],
    );
    let err = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap_err();
    assert!(matches!(err, TemplateError::Incremental), "{err}");
    assert!(!tpl.exists());
    assert_no_new_pages(dir.path());
}

#[test]
fn a_pages_file_of_the_wrong_length_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    fixture::build(dir.path());
    let tpl = dir.path().join("t.tpl");
    let pages = dir.path().join("pages-1.img");
    let full = fs::read(&pages).unwrap();
    fs::write(&pages, [&full[..], &[0u8; PAGE as usize]].concat()).unwrap();
    let err = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("page map does not match its pages file"),
        "{err}"
    );
    assert!(err.contains("28672 bytes mapped, 32768 in"), "{err}");
    fs::write(&pages, &full[..full.len() - PAGE as usize]).unwrap();
    let err = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE)
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
    assert_no_new_pages(dir.path());
}

/// The fixture's images in `dir`, its root's file mapping (F) made jemalloc's.
fn fixture_with_jemalloc(dir: &Path) {
    fixture::build(dir);
    // The root's file mapping (F) is jemalloc.
    let mm_path = dir.join(format!("mm-{}.img", fixture::PID));
    let mut mm: Mm_entry = ImageFile::read(&mm_path, MM_MAGIC)
        .unwrap()
        .decode(0, &mm_path)
        .unwrap();
    mm.vmas[4].set_shmid(9);
    ImageFile {
        magic: MM_MAGIC,
        entries: vec![ImageFile::encode(&mm, &mm_path).unwrap()],
    }
    .write(&mm_path)
    .unwrap();
    let files_path = dir.join("files.img");
    let mut files = ImageFile::read(&files_path, FILES_MAGIC).unwrap();
    // A complete regular-file entry (as the template's own are).
    let fe = files::template_entry(9, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", 1 << 20);
    files
        .entries
        .push(ImageFile::encode(&fe, &files_path).unwrap());
    files.write(&files_path).unwrap();
}

#[test]
fn a_function_that_maps_jemalloc_gets_nothing_mapped_and_is_told_why() {
    let dir = tempfile::tempdir().unwrap();
    fixture_with_jemalloc(dir.path());
    let tpl = dir.path().join("t.tpl");
    let conv = convert(dir.path(), &tpl, "/t.tpl", &large_only(), FILE).unwrap();
    assert_eq!((conv.vma_count(), conv.bytes_moved), (0, 0), "{conv:?}");
    assert_eq!(
        conv.bytes_copied,
        7 * PAGE,
        "every dumped page still copied"
    );
    let why = conv.fallback.as_deref().unwrap();
    assert!(why.contains("libjemalloc.so.2: jemalloc"), "{why}");
    assert!(
        conv.extent().contains("nothing mapped: process 7 maps"),
        "{}",
        conv.extent()
    );
}

#[test]
fn for_anonymous_mapped_memory_a_jemalloc_function_is_mapped_and_its_restores_need_that() {
    let dir = tempfile::tempdir().unwrap();
    fixture_with_jemalloc(dir.path());
    let tpl = dir.path().join("t.tpl");
    let anonymous = MappedMemory::Anonymous;
    let conv = convert(dir.path(), &tpl, "/t.tpl", &large_only(), anonymous).unwrap();
    assert_eq!(conv.fallback, None);
    assert_eq!(conv.vma_count(), 2, "{conv:?}");
    assert!(conv.bytes_moved > 0, "{conv:?}");
    let why = conv.needs_anonymous.as_deref().unwrap();
    assert!(why.contains("libjemalloc.so.2: jemalloc"), "{why}");
    assert!(
        conv.extent()
            .contains("restores need the kernel backend: process 7 maps"),
        "{}",
        conv.extent()
    );
}

#[test]
fn for_anonymous_mapped_memory_other_functions_need_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    fixture::build(dir.path());
    let tpl = dir.path().join("t.tpl");
    let anonymous = MappedMemory::Anonymous;
    let conv = convert(dir.path(), &tpl, "/t.tpl", &large_only(), anonymous).unwrap();
    assert_eq!((conv.fallback, conv.needs_anonymous), (None, None));
}
