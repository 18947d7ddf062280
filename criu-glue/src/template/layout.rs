//! Step 1 of a conversion: which VMAs become template mappings, and where each one's pages
//! go in the template file.
//!
//! Anonymous private memory is converted whole: shared, special (stack, vDSO, vvar, …) and
//! locked or huge-page mappings keep CRIU's own restore. By default every other private
//! anonymous VMA that holds a dumped page is converted, `[heap]` and VMAs of one page
//! included (`Policy`); a larger `min_vma` or leaving `[heap]` out are choices of the
//! template's maker.
//!
//! Of a private, writable *file* mapping (a program's or library's `.data`) only the pages
//! the process wrote were dumped; the others read the file. Each run of dumped pages
//! becomes a slot of its own (`Policy::file_pages`, on by default): the VMA is split there (mm.rs), the run mapping the template file and the
//! rest the process's file as before. CRIU would otherwise map the file and copy every
//! dumped page over it at each restore — a copy-on-write fault on the file's page and a
//! copy of the image's, page after page (1.1–3.6 ms of a 10 ms restore of the Python
//! function: python3.11's `.data` alone is ~300 such pages). Read-only and executable
//! mappings (relocated read-only data, code) are left to CRIU: they hold a few pages, and
//! the kernel backend (criu-glue/patches/0005) attaches template pages to writable
//! mappings only, so a read-only run would be the one mapping of the pool file left in an
//! instance that must have none. After `MADV_DONTNEED` such a run reads the template's bytes (or zeros with the
//! kernel backend) where the file's would have been read: no program discards its own
//! `.data`.
//!
//! The
//! chosen VMAs are laid out one after the other: each starts at a page-aligned offset (VMA
//! bounds are page aligned), so CRIU maps it with one `mmap` of the file at that offset. A
//! VMA that spans an aligned 2 MiB range of addresses starts at an offset congruent to its
//! address modulo 2 MiB (after at most 2 MiB less a page of holes): in a pool that keeps its
//! files in 2 MiB pages (a tmpfs mounted `huge=`, an fsdax filesystem), a restored process's
//! read fault then maps a whole 2 MiB page of the template, not one page (or the 16 of
//! fault-around); smaller VMAs follow each other without holes. In a
//! process tree each process's VMAs follow the previous process's (`base`): one template
//! file holds them all, and no two processes' regions overlap, even where their VMAs have
//! the same addresses (a child forked from its parent).
//!
//! A VMA without a dumped page (a reservation made `PROT_NONE`, memory never touched)
//! stays CRIU's: mapped, it would hold only holes, which cost file size (hashed at every
//! first restore after a boot) for nothing.
//!
//! The file ends [`GROWTH_TAIL`] bytes of holes after the last VMA: a restored process that
//! grows a mapped VMA with `mremap` (glibc's `realloc` of a large chunk does) maps the
//! file's next bytes, which must exist — past the end of a file, a touch is SIGBUS.

use super::PAGE;
use super::pages::PE_PRESENT;
use crate::generated::pagemap::Pagemap_entry;
use crate::generated::vma::Vma_entry;

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

/// Which VMAs become template mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Smallest VMA mapped (smaller ones are restored by copy); default: one page.
    pub min_vma: u64,
    /// Map `[heap]` too (default). After MADV_DONTNEED a mapped region reads template
    /// data, not zeros, in `[heap]` as anywhere else: glibc's malloc never takes discarded
    /// memory for zeros (its calloc clears everything below the most the arena ever held),
    /// and allocators that do are detected (allocators.rs) and get nothing mapped.
    pub include_heap: bool,
    /// Map the runs of dumped pages of private, writable, non-executable file mappings
    /// (default).
    pub file_pages: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_vma: PAGE,
            include_heap: true,
            file_pages: true,
        }
    }
}

impl Policy {
    /// Nothing mapped: a plain CRIU restore.
    pub const COPY: Policy = Policy {
        min_vma: u64::MAX,
        include_heap: false,
        file_pages: false,
    };
}

/// The size of the pool's large pages: a VMA that spans an aligned range of this size is
/// placed at an offset congruent to its address modulo it.
pub const HUGE_PAGE: u64 = 2 << 20;

/// Holes after the last mapped VMA (see the module's documentation): a `realloc` that
/// grows the last VMA of the file by up to this much reads zeros, as anonymous memory
/// would; beyond, it would read past the end.
pub const GROWTH_TAIL: u64 = 64 << 20;

/// The template file's size for mapped VMAs ending at offset `end` (0: nothing mapped, no
/// file contents at all).
pub fn file_size(end: u64) -> u64 {
    if end == 0 { 0 } else { end + GROWTH_TAIL }
}

/// A VMA chosen for conversion and where its pages go in the template file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub start: u64,
    pub end: u64,
    /// Offset of `start`'s page in the template file.
    pub offset: u64,
}

/// One process's part of the template file: its chosen VMAs in address order, one after
/// the other from the offset it was planned from ([`Layout::plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Layout {
    pub slots: Vec<Slot>,
    /// Offset just past the last slot (that offset plus the chosen VMAs' sizes and the
    /// holes that align them): the template file's size if this is the last process.
    pub end: u64,
}

impl Layout {
    /// Lays out, from offset `base` (page aligned), the VMAs of `vmas` (CRIU dumps them in
    /// address order) that `policy` shares and that hold a dumped page of `pagemap` (in
    /// address order too).
    pub fn plan(
        vmas: &[Vma_entry],
        pagemap: &[Pagemap_entry],
        policy: &Policy,
        base: u64,
    ) -> Layout {
        let mut layout = Layout {
            slots: Vec::new(),
            end: base,
        };
        for v in vmas {
            if shareable(v, policy) && holds_pages(pagemap, v.start(), v.end()) {
                layout.push(v.start(), v.end());
            } else if policy.file_pages && file_pieces(v) {
                for (start, end) in dumped_runs(pagemap, v.start(), v.end()) {
                    layout.push(start, end);
                }
            }
        }
        layout
    }

    /// Adds a slot for `[start, end)`, after the previous ones.
    fn push(&mut self, start: u64, end: u64) {
        let offset = slot_offset(start, end, self.end);
        self.slots.push(Slot { start, end, offset });
        self.end = offset + (end - start);
    }

    /// The slot whose VMA contains `addr`.
    pub fn slot_of(&self, addr: u64) -> Option<&Slot> {
        let i = self.slots.partition_point(|s| s.end <= addr);
        self.slots.get(i).filter(|s| s.start <= addr)
    }
}

/// Where the VMA `[start, end)` goes in a file whose next free offset is `next` (both page
/// aligned): `next`, or, if the VMA spans an aligned [`HUGE_PAGE`] of addresses, the first
/// offset from `next` on that is congruent to `start` modulo [`HUGE_PAGE`].
fn slot_offset(start: u64, end: u64, next: u64) -> u64 {
    let first_huge = start.next_multiple_of(HUGE_PAGE);
    if first_huge + HUGE_PAGE > end {
        return next;
    }
    let want = start % HUGE_PAGE;
    let base = next - next % HUGE_PAGE;
    let at = base + want;
    if at >= next { at } else { at + HUGE_PAGE }
}

/// Whether a dumped page of `pagemap` (sorted by address) lies in `[start, end)`.
fn holds_pages(pagemap: &[Pagemap_entry], start: u64, end: u64) -> bool {
    let i = pagemap.partition_point(|e| e.vaddr() + e.nr_pages() as u64 * PAGE <= start);
    pagemap[i..]
        .iter()
        .take_while(|e| e.vaddr() < end)
        .any(|e| e.flags() & PE_PRESENT != 0)
}

/// The runs of dumped pages of `pagemap` (sorted by address) inside `[start, end)`, as
/// `(start, end)` in address order; page-map entries that touch are one run.
fn dumped_runs(pagemap: &[Pagemap_entry], start: u64, end: u64) -> Vec<(u64, u64)> {
    let i = pagemap.partition_point(|e| e.vaddr() + e.nr_pages() as u64 * PAGE <= start);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let present = pagemap[i..]
        .iter()
        .take_while(|e| e.vaddr() < end)
        .filter(|e| e.flags() & PE_PRESENT != 0);
    for e in present {
        let a = e.vaddr().max(start);
        let b = (e.vaddr() + e.nr_pages() as u64 * PAGE).min(end);
        match runs.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => runs.push((a, b)),
        }
    }
    runs
}

/// Whether the runs of dumped pages of file mapping `v` may map the template: a private,
/// writable, non-executable mapping of a regular file, neither special nor locked.
pub(super) fn file_pieces(v: &Vma_entry) -> bool {
    let status = v.status();
    status & VMA_AREA_REGULAR != 0
        && status & VMA_FILE_PRIVATE != 0
        && status & VMA_NOT_SHAREABLE == 0
        && v.prot() & libc::PROT_WRITE as u32 != 0
        && v.prot() & libc::PROT_EXEC as u32 == 0
        && v.flags() & (libc::MAP_GROWSDOWN | libc::MAP_HUGETLB | libc::MAP_LOCKED) as u32 == 0
}

pub(super) fn shareable(v: &Vma_entry, policy: &Policy) -> bool {
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

#[cfg(test)]
pub(super) fn vma(start: u64, end: u64, status: u32, flags: u32) -> Vma_entry {
    let mut v = Vma_entry::new();
    v.set_start(start);
    v.set_end(end);
    v.set_status(status);
    v.set_flags(flags);
    v
}

/// Page-map entries saying that `ranges` were dumped.
#[cfg(test)]
pub(super) fn dumped(ranges: &[(u64, u64)]) -> Vec<Pagemap_entry> {
    ranges
        .iter()
        .map(|&(start, end)| {
            let mut e = Pagemap_entry::new();
            e.set_vaddr(start);
            e.set_nr_pages(((end - start) / PAGE) as u32);
            e.set_flags(PE_PRESENT);
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_private_anonymous_vmas_are_shared() {
        let p = Policy {
            min_vma: 1 << 20,
            include_heap: false,
            file_pages: false,
        };
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        assert!(shareable(&vma(0, 2 << 20, anon, pa), &p));
        assert!(!shareable(&vma(0, 4096, anon, pa), &p), "too small");
        let default = Policy::default();
        assert!(shareable(&vma(0, 4096, anon, pa), &default), "a page");
        assert!(shareable(&vma(0, 4096, anon | VMA_AREA_HEAP, pa), &default));
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

    #[test]
    fn chosen_vmas_are_laid_out_back_to_back_and_found_by_address() {
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let vmas = [
            vma(0x10_0000, 0x30_0000, anon, pa),
            vma(0x30_0000, 0x30_1000, anon, pa),
            vma(0x60_0000, 0x70_0000, anon, pa),
        ];
        let big = Policy {
            min_vma: 1 << 20,
            ..Policy::default()
        };
        let all = dumped(&[(0x10_0000, 0x30_1000), (0x60_0000, 0x70_0000)]);
        let layout = Layout::plan(&vmas, &all, &big, 0);
        let a = Slot {
            start: 0x10_0000,
            end: 0x30_0000,
            offset: 0,
        };
        let c = Slot {
            start: 0x60_0000,
            end: 0x70_0000,
            offset: 0x20_0000,
        };
        assert_eq!(layout.slots, [a, c]);
        assert_eq!(layout.end, 0x30_0000);
        assert_eq!(layout.slot_of(0x10_0000), Some(&a));
        assert_eq!(layout.slot_of(0x2f_f000), Some(&a));
        assert_eq!(layout.slot_of(0x30_0000), None, "the small VMA after it");
        assert_eq!(layout.slot_of(0x0f_f000), None);
        assert_eq!(layout.slot_of(0x6f_f000), Some(&c));
        assert_eq!(layout.slot_of(0x70_0000), None);
        assert_eq!(
            Layout::plan(&[], &[], &Policy::default(), 0),
            Layout::default()
        );
        let every = Layout::plan(&vmas, &all, &Policy::default(), 0);
        assert_eq!(every.slots.len(), 3, "by default every VMA, a page too");
        assert_eq!(every.end, 0x30_1000);
        // Pages dumped only of the first page of the first VMA and of the small one.
        let few = dumped(&[(0x10_0000, 0x10_1000), (0x30_0000, 0x30_1000)]);
        let some = Layout::plan(&vmas, &few, &Policy::default(), 0);
        assert_eq!(some.slots.len(), 2, "not the VMA without a dumped page");
        assert_eq!(some.end, 0x20_1000);
        // A page-map entry that is not of dumped pages (a zero page) does not count.
        let mut zero = dumped(&[(0x60_0000, 0x60_1000)]);
        zero[0].set_flags(0);
        assert!(
            Layout::plan(&vmas, &zero, &Policy::default(), 0)
                .slots
                .is_empty()
        );
    }

    #[test]
    fn each_run_of_written_pages_of_a_private_file_mapping_is_a_slot() {
        let file = VMA_AREA_REGULAR | VMA_FILE_PRIVATE;
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let p = libc::MAP_PRIVATE as u32;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let with_prot = |mut v: Vma_entry, prot: u32| {
            v.set_prot(prot);
            v
        };
        let vmas = [
            // .data of a program: pages 1-3 and 6 written (two touching entries).
            with_prot(vma(0x40_0000, 0x40_8000, file, p), rw),
            with_prot(vma(0x40_8000, 0x40_9000, anon, pa), rw),
            // Code: written (a breakpoint), left to CRIU.
            with_prot(
                vma(0x50_0000, 0x50_2000, file, p),
                (libc::PROT_READ | libc::PROT_EXEC) as u32,
            ),
            // Relocated read-only data, all written: left to CRIU too.
            with_prot(vma(0x60_0000, 0x60_2000, file, p), libc::PROT_READ as u32),
            // A shared mapping of a file is the file.
            with_prot(
                vma(0x70_0000, 0x70_1000, VMA_AREA_REGULAR | (1 << 7), 1),
                rw,
            ),
        ];
        let pagemap = dumped(&[
            (0x40_1000, 0x40_3000),
            (0x40_3000, 0x40_4000),
            (0x40_6000, 0x40_7000),
            (0x40_8000, 0x40_9000),
            (0x50_0000, 0x50_1000),
            (0x60_0000, 0x60_2000),
            (0x70_0000, 0x70_1000),
        ]);
        let layout = Layout::plan(&vmas, &pagemap, &Policy::default(), 0);
        let slots: Vec<(u64, u64, u64)> = layout
            .slots
            .iter()
            .map(|s| (s.start, s.end, s.offset))
            .collect();
        assert_eq!(
            slots,
            [
                (0x40_1000, 0x40_4000, 0),
                (0x40_6000, 0x40_7000, 0x3000),
                (0x40_8000, 0x40_9000, 0x4000),
            ]
        );
        assert_eq!(layout.end, 0x5000);
        assert_eq!(layout.slot_of(0x40_4000), None, "a page the file holds");
        let anon_only = Policy {
            file_pages: false,
            ..Policy::default()
        };
        let layout = Layout::plan(&vmas, &pagemap, &anon_only, 0);
        assert_eq!(layout.slots.len(), 1, "{layout:?}");
        assert!(
            Layout::plan(&vmas, &pagemap, &Policy::COPY, 0)
                .slots
                .is_empty()
        );
    }

    #[test]
    fn a_vma_spanning_an_aligned_2_mib_range_is_placed_congruent_to_its_address() {
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let vmas = [
            vma(0x40_0000, 0x40_5000, anon, pa), // five pages
            vma(0x20_3000 + (1 << 40), 0x80_0000 + (1 << 40), anon, pa), // spans 4-6 MiB
            vma(0x100_0000 + (1 << 40), 0x100_2000 + (1 << 40), anon, pa), // two pages
            vma(0x140_0000 + (1 << 40), 0x180_0000 + (1 << 40), anon, pa), // 2 MiB aligned, 4 MiB
        ];
        let all = dumped(
            &vmas
                .iter()
                .map(|v| (v.start(), v.end()))
                .collect::<Vec<_>>(),
        );
        let layout = Layout::plan(&vmas, &all, &Policy::default(), 0);
        let offsets: Vec<u64> = layout.slots.iter().map(|s| s.offset).collect();
        // The small ones follow what precedes them; the large ones skip to the next offset
        // congruent to their address (holes of less than 2 MiB).
        assert_eq!(offsets, [0, 0x20_3000, 0x80_0000, 0xa0_0000]);
        assert_eq!(layout.end, 0xe0_0000);
        for s in &layout.slots {
            let spans = s.start.next_multiple_of(HUGE_PAGE) + HUGE_PAGE <= s.end;
            if spans {
                assert_eq!((s.start - s.offset) % HUGE_PAGE, 0, "{s:?}");
            }
        }
        // Already congruent: no hole.
        assert_eq!(slot_offset(0x20_0000, 0x60_0000, 0x40_0000), 0x40_0000);
        assert_eq!(slot_offset(0x20_1000, 0x60_0000, 0x40_1000), 0x40_1000);
        // Ends one page short of spanning an aligned range: packed.
        assert_eq!(slot_offset(0x20_1000, 0x60_0000 - 0x1000, 0x7000), 0x7000);
        // Every hole is shorter than a large page.
        for next in (0..0x40_0000u64).step_by(0x1000) {
            let at = slot_offset(0x7f00_1234_5000, 0x7f00_1274_5000, next);
            assert!(at >= next && at - next < HUGE_PAGE, "{next:#x} -> {at:#x}");
            assert_eq!((0x7f00_1234_5000 - at) % HUGE_PAGE, 0);
        }
    }

    #[test]
    fn the_file_ends_with_room_for_the_last_vma_to_grow() {
        assert_eq!(file_size(0), 0, "nothing mapped");
        assert_eq!(file_size(0x30_0000), 0x30_0000 + GROWTH_TAIL);
    }

    #[test]
    fn a_later_process_is_laid_out_after_the_previous_one() {
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        // The same VMA as its parent's, which took the file's first 3 MiB.
        const A: (u64, u64) = (0x10_0000, 0x30_0000);
        let vmas = [vma(A.0, A.1, anon, pa)];
        let layout = Layout::plan(&vmas, &dumped(&[A]), &Policy::default(), 0x30_0000);
        assert_eq!(
            layout.slots,
            [Slot {
                start: 0x10_0000,
                end: 0x30_0000,
                offset: 0x30_0000,
            }]
        );
        assert_eq!(layout.end, 0x50_0000);
        let none = Layout::plan(&[], &[], &Policy::default(), 0x50_0000);
        assert_eq!((none.slots.len(), none.end), (0, 0x50_0000));
    }
}
