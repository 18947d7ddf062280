//! The template contents of the kernel-template tests (tests/kernel_templates.rs) and
//! their instance program (src/bin/mmt-instance.rs): a pool file whose words are a
//! known function of their position, and checks of a mapping against it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub const PAGE: usize = 4096;
pub const WORDS_PER_PAGE: usize = PAGE / 8;

/// The template's word at index `i` (splitmix64: no two pages alike, none zero in practice).
pub fn word(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes a pool file of `pages` pages of the pattern.
pub fn write_pool(path: &Path, pages: usize) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for i in 0..(pages * WORDS_PER_PAGE) as u64 {
        out.write_all(&word(i).to_ne_bytes())?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The checksum of words `[first, first + words.len())` as they should be.
pub fn expected_checksum(first: u64, count: usize) -> u64 {
    (first..first + count as u64).fold(0u64, |acc, i| acc.rotate_left(5) ^ word(i))
}

/// The checksum of what a mapping holds.
pub fn checksum(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |acc, w| acc.rotate_left(5) ^ w)
}

/// The word an instance writes at the start of page `page` (its own mark).
pub fn mark(instance: u32, page: usize) -> u64 {
    (u64::from(instance) << 40) | (page as u64) | (1 << 63)
}
