//! Step 4 of a conversion: the mm rewrite. Each converted VMA turns from anonymous private
//! memory into a private mapping of the template file (`files.img` entry `shmid`, at
//! offset `pgoff`), opened read-only; CRIU then restores it with one `mmap` and copies no
//! page. A converted `[heap]` loses its heap status: CRIU would otherwise restore it with
//! brk, which cannot map a file. Each process's VMAs map its own entry (files.rs says why).

use super::layout::{Layout, Slot, VMA_ANON_PRIVATE, VMA_AREA_HEAP, VMA_FILE_PRIVATE};
use crate::generated::vma::Vma_entry;

/// Maps every VMA of `vmas` that `layout` chose onto the template file whose `files.img`
/// entry is `file_id`; answers the converted VMAs as (start, end), in address order.
pub(super) fn map_template(
    vmas: &mut [Vma_entry],
    layout: &Layout,
    file_id: u32,
) -> Vec<(u64, u64)> {
    let mut converted = Vec::new();
    for v in vmas.iter_mut() {
        if let Some(slot) = layout.slot_starting_at(v.start()) {
            map_vma(v, slot, file_id);
            converted.push((slot.start, slot.end));
        }
    }
    converted
}

fn map_vma(v: &mut Vma_entry, slot: &Slot, file_id: u32) {
    v.set_status((v.status() & !VMA_ANON_PRIVATE & !VMA_AREA_HEAP) | VMA_FILE_PRIVATE);
    v.set_flags(v.flags() & !(libc::MAP_ANONYMOUS as u32));
    v.set_shmid(file_id as u64);
    v.set_pgoff(slot.offset);
    v.set_fdflags(libc::O_RDONLY as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Policy;
    use crate::template::layout::{VMA_AREA_REGULAR, dumped, vma};

    #[test]
    fn chosen_vmas_become_private_read_only_mappings_of_the_template() {
        let anon = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
        let pa = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let mut vmas = vec![
            vma(0x10_0000, 0x20_0000, anon | VMA_AREA_HEAP, pa),
            vma(0x20_0000, 0x20_1000, anon, pa),
            vma(0x40_0000, 0x60_0000, anon, pa),
        ];
        let policy = Policy {
            min_vma: 1 << 20,
            include_heap: true,
        };
        let all = dumped(&[(0x10_0000, 0x20_1000), (0x40_0000, 0x60_0000)]);
        let layout = Layout::plan(&vmas, &all, &policy, 0);
        let small = vmas[1].clone();
        let converted = map_template(&mut vmas, &layout, 42);
        assert_eq!(converted, [(0x10_0000, 0x20_0000), (0x40_0000, 0x60_0000)]);
        // The third is an aligned 2 MiB: at the next offset that is a multiple of 2 MiB.
        for (v, pgoff) in [(&vmas[0], 0), (&vmas[2], 0x20_0000)] {
            assert_eq!(v.status(), VMA_AREA_REGULAR | VMA_FILE_PRIVATE);
            assert_eq!(v.flags(), libc::MAP_PRIVATE as u32);
            assert_eq!((v.shmid(), v.pgoff()), (42, pgoff));
            assert_eq!(v.fdflags(), libc::O_RDONLY as u32);
        }
        assert_eq!(vmas[1], small, "not chosen: untouched");
    }
}
