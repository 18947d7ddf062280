//! Step 0b of a conversion: runtimes a template mapping cannot serve safely.
//!
//! A converted VMA is a private mapping of the template file. After `MADV_DONTNEED` its
//! pages read the template's data again, not zeros as anonymous memory would (and
//! `MADV_FREE` fails with EINVAL). glibc's malloc, CPython's allocator and V8 never read
//! memory they discarded before writing it, so they are served correctly (the real
//! functions' tests prove it for Python and Node.js). Some allocators instead record purged
//! memory as zeroed and hand it out for `calloc` without clearing it: jemalloc (its
//! "purge forced" pages are marked zeroed on Linux), and, conservatively, tcmalloc,
//! mimalloc and snmalloc, which also decommit with madvise. A function that maps one of
//! them gets a template with nothing mapped (a plain CRIU restore of the same image, as
//! the `copy` policy makes), and the conversion says why.

use crate::generated::fdinfo::{Fd_types, File_entry};
use crate::generated::mm::Mm_entry;

use super::layout::{VMA_AREA_REGULAR, VMA_FILE_PRIVATE};

/// VMA_FILE_SHARED (criu/include/image.h).
const VMA_FILE_SHARED: u32 = 1 << 7;

/// Library file names (their start) and the allocator each one is.
const ZEROING_ALLOCATORS: &[(&str, &str)] = &[
    ("libjemalloc.so", "jemalloc"),
    ("libtcmalloc", "tcmalloc"),
    ("libmimalloc.so", "mimalloc"),
    ("libsnmalloc", "snmalloc"),
];

/// Why the processes `mms` (pid, mm) with the open and mapped files `files` cannot be
/// served by template mappings, if they cannot: the first process that maps a library of
/// an allocator that takes discarded memory to read as zeros.
pub(super) fn unsafe_allocator(files: &[File_entry], mms: &[(u32, &Mm_entry)]) -> Option<String> {
    for (pid, mm) in mms {
        for v in &mm.vmas {
            let file_mapping = v.status() & VMA_AREA_REGULAR != 0
                && v.status() & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0;
            if !file_mapping {
                continue;
            }
            let Some(path) = regular_file(files, v.shmid()) else {
                continue;
            };
            let base = path.rsplit('/').next().unwrap_or(path);
            if let Some((_, name)) = ZEROING_ALLOCATORS.iter().find(|(p, _)| base.starts_with(p)) {
                return Some(format!(
                    "process {pid} maps {path}: {name} takes memory it discarded with \
                     madvise to read as zeros, which a pool-file mapping does not (it reads \
                     the template's data again)"
                ));
            }
        }
    }
    None
}

/// The path of regular file entry `id` of `files.img`.
fn regular_file(files: &[File_entry], id: u64) -> Option<&str> {
    files
        .iter()
        .find(|f| f.type_() == Fd_types::REG && u64::from(f.id()) == id)
        .and_then(|f| f.reg.as_ref())
        .map(|r| r.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::regfile::Reg_file_entry;
    use crate::template::layout::{VMA_ANON_PRIVATE, vma};

    fn reg(id: u32, name: &str) -> File_entry {
        let mut r = Reg_file_entry::new();
        r.set_id(id);
        r.set_name(name.to_string());
        let mut f = File_entry::new();
        f.set_type(Fd_types::REG);
        f.set_id(id);
        f.reg = Some(r).into();
        f
    }

    fn mapping(shmid: u64, status: u32) -> crate::generated::vma::Vma_entry {
        let mut v = vma(0x10_0000, 0x20_0000, status, libc::MAP_PRIVATE as u32);
        v.set_shmid(shmid);
        v
    }

    fn mm(vmas: Vec<crate::generated::vma::Vma_entry>) -> Mm_entry {
        let mut m = Mm_entry::new();
        m.vmas = vmas;
        m
    }

    #[test]
    fn a_process_mapping_jemalloc_is_named_with_the_library() {
        let files = [
            reg(3, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            reg(4, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ];
        let root = mm(vec![mapping(3, VMA_AREA_REGULAR | VMA_FILE_PRIVATE)]);
        let child = mm(vec![
            mapping(3, VMA_AREA_REGULAR | VMA_FILE_PRIVATE),
            mapping(4, VMA_AREA_REGULAR | VMA_FILE_PRIVATE),
        ]);
        let why = unsafe_allocator(&files, &[(1, &root), (2, &child)]).unwrap();
        assert!(
            why.starts_with("process 2 maps /usr/lib/x86_64-linux-gnu/libjemalloc.so.2: jemalloc"),
            "{why}"
        );
    }

    #[test]
    fn glibc_python_and_node_are_served() {
        let files = [
            reg(3, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            reg(5, "/usr/bin/python3.11"),
            reg(6, "/usr/lib/x86_64-linux-gnu/libnode.so.108"),
            // Open, or the id of an anonymous VMA's shmid, but never file-mapped.
            reg(7, "/opt/libtcmalloc.so.4"),
        ];
        let p = mm(vec![
            mapping(3, VMA_AREA_REGULAR | VMA_FILE_PRIVATE),
            mapping(5, VMA_AREA_REGULAR | VMA_FILE_PRIVATE),
            mapping(6, VMA_AREA_REGULAR | VMA_FILE_PRIVATE),
            mapping(7, VMA_AREA_REGULAR | VMA_ANON_PRIVATE),
        ]);
        assert_eq!(unsafe_allocator(&files, &[(1, &p)]), None);
    }
}
