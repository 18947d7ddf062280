//! Step 4 of a conversion: the mm rewrite. Each converted VMA turns from anonymous private
//! memory into a private mapping of the template file (`files.img` entry `shmid`, at
//! offset `pgoff`), opened read-only; CRIU then restores it with one `mmap` and copies no
//! page. A converted `[heap]` loses its heap status: CRIU would otherwise restore it with
//! brk, which cannot map a file. Each process's VMAs map its own entry (files.rs says why).
//!
//! A private file mapping with slots (its runs of dumped pages, layout.rs) is split: each
//! run becomes a mapping of the template file, each part between runs stays a mapping of
//! its file at the offset it had there (the entry's `pgoff` plus its distance from the
//! VMA's start).

use super::PAGE;
use super::layout::{Layout, Slot, VMA_ANON_PRIVATE, VMA_AREA_HEAP, VMA_FILE_PRIVATE};
use crate::generated::vma::Vma_entry;

/// Maps every VMA of `vmas` that `layout` chose, or the chosen runs of a file mapping,
/// onto the template file whose `files.img` entry is `file_id`; answers the converted
/// ranges as (start, end), in address order.
pub(super) fn map_template(
    vmas: &mut Vec<Vma_entry>,
    layout: &Layout,
    file_id: u32,
) -> Vec<(u64, u64)> {
    let mut converted = Vec::new();
    let mut out = Vec::with_capacity(vmas.len());
    for v in vmas.drain(..) {
        let first = layout.slots.partition_point(|s| s.end <= v.start());
        let inside: Vec<&Slot> = layout.slots[first..]
            .iter()
            .take_while(|s| s.start < v.end())
            .collect();
        if inside.is_empty() {
            out.push(v);
            continue;
        }
        // Its slots from the template, the rest (only a file mapping has any) from its file.
        let mut at = v.start();
        for slot in inside {
            if slot.start > at {
                out.push(part_of(&v, at, slot.start));
            }
            let mut run = part_of(&v, slot.start, slot.end);
            map_vma(&mut run, slot, file_id);
            out.push(run);
            converted.push((slot.start, slot.end));
            at = slot.end;
        }
        if at < v.end() {
            out.push(part_of(&v, at, v.end()));
        }
    }
    *vmas = out;
    converted
}

/// The part `[start, end)` of mapping `v`, at its file's matching offset.
fn part_of(v: &Vma_entry, start: u64, end: u64) -> Vma_entry {
    debug_assert!(v.start() <= start && end <= v.end() && start.is_multiple_of(PAGE));
    let mut part = v.clone();
    part.set_start(start);
    part.set_end(end);
    part.set_pgoff(v.pgoff() + (start - v.start()));
    part
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
            ..Policy::default()
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

    #[test]
    fn a_file_mapping_is_split_around_its_runs_of_written_pages() {
        let file = VMA_AREA_REGULAR | VMA_FILE_PRIVATE;
        let p = libc::MAP_PRIVATE as u32;
        let mut data = vma(0x40_0000, 0x40_8000, file, p);
        data.set_prot((libc::PROT_READ | libc::PROT_WRITE) as u32);
        data.set_shmid(7);
        data.set_pgoff(0x10_0000);
        let mut other = vma(0x50_0000, 0x50_1000, file, p);
        other.set_shmid(8);
        let mut vmas = vec![data.clone(), other.clone()];
        let written = dumped(&[(0x40_0000, 0x40_2000), (0x40_5000, 0x40_6000)]);
        let layout = Layout::plan(&vmas, &written, &Policy::default(), 0x3000);
        let converted = map_template(&mut vmas, &layout, 42);
        assert_eq!(converted, [(0x40_0000, 0x40_2000), (0x40_5000, 0x40_6000)]);
        let parts: Vec<(u64, u64, u64, u64)> = vmas
            .iter()
            .map(|v| (v.start(), v.end(), v.shmid(), v.pgoff()))
            .collect();
        assert_eq!(
            parts,
            [
                (0x40_0000, 0x40_2000, 42, 0x3000),
                (0x40_2000, 0x40_5000, 7, 0x10_2000),
                (0x40_5000, 0x40_6000, 42, 0x5000),
                (0x40_6000, 0x40_8000, 7, 0x10_6000),
                (0x50_0000, 0x50_1000, 8, 0),
            ]
        );
        for v in &vmas[..4] {
            assert_eq!(v.status(), file);
            assert_eq!(v.prot(), data.prot(), "{v:?}");
            assert_eq!(v.flags(), p);
        }
        assert_eq!(vmas[0].fdflags(), libc::O_RDONLY as u32);
        assert_eq!(vmas[4], other, "nothing written: untouched");
    }
}
