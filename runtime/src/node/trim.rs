//! Dropping the code a long-lived process no longer runs from its page tables.
//!
//! A shim maps its whole binary, and the kernel's fault-around maps 64 KiB of already
//! cached file pages around every fault, so after start-up and the first container nearly
//! all of the shim's 3–4 MB of code and read-only data is resident in its page tables,
//! though an idle shim runs a few pages of it. [`read_only_file_pages`] unmaps those
//! pages (`MADV_DONTNEED`); they stay in the page cache, and the ones still in use come
//! back on their next access, as minor faults.
//!
//! Only mappings where that changes nothing but residency are touched: private, not
//! writable, backed by a file, and with no anonymous (copy-on-write) page in them — which
//! excludes RELRO segments, whose relocated pages must not fall back to the file's bytes.

use std::fs;

/// How long (ms) a process stays idle before it trims.
pub const IDLE_MS: u16 = 250;

/// What a trim unmapped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub mappings: usize,
    pub rss_kb: u64,
}

/// A mapping as `/proc/self/smaps` describes it.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kb: u64,
    anonymous_kb: u64,
}

/// Unmaps the resident pages of this process's read-only private file mappings that hold
/// no anonymous page.
pub fn read_only_file_pages() -> Trimmed {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return Trimmed::default();
    };
    let mut done = Trimmed::default();
    for m in trimmable(&smaps) {
        // SAFETY: the range is a whole mapping of this process that is private, read-only,
        // file-backed and holds no anonymous page: dropping its page table entries only
        // makes the next access fault the same file pages back in.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            done.mappings += 1;
            done.rss_kb += m.rss_kb;
        }
    }
    done
}

fn trimmable(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<(Mapping, bool)> = None;
    let flush = |c: Option<(Mapping, bool)>, out: &mut Vec<Mapping>| {
        if let Some((m, eligible)) = c
            && eligible
            && m.anonymous_kb == 0
            && m.rss_kb > 0
        {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            flush(current.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let p = perms.as_bytes();
            let eligible = p.len() == 4 && p[1] == b'-' && p[3] == b'p' && path.starts_with('/');
            current = Some((
                Mapping {
                    start,
                    end,
                    rss_kb: 0,
                    // Unknown until its line is read: not trimmable without it.
                    anonymous_kb: u64::MAX,
                },
                eligible,
            ));
            continue;
        }
        let value = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        if let Some((m, _)) = current.as_mut() {
            match first {
                "Rss:" => m.rss_kb = value().unwrap_or(0),
                "Anonymous:" => m.anonymous_kb = value().unwrap_or(u64::MAX),
                _ => {}
            }
        }
    }
    flush(current.take(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 123 /usr/local/bin/containerd-shim-trenv-v1
Size:               1024 kB
Rss:                 900 kB
Anonymous:             0 kB
55d0a0100000-55d0a0400000 r-xp 00100000 fe:01 123 /usr/local/bin/containerd-shim-trenv-v1
Size:               3072 kB
Rss:                3000 kB
Anonymous:             0 kB
55d0a0400000-55d0a0410000 r--p 00400000 fe:01 123 /usr/local/bin/containerd-shim-trenv-v1
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
55d0a0410000-55d0a0412000 rw-p 00410000 fe:01 123 /usr/local/bin/containerd-shim-trenv-v1
Size:                  8 kB
Rss:                   8 kB
Anonymous:             8 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
Size:               1024 kB
Rss:                 500 kB
Anonymous:           500 kB
7f0000000000-7f0000010000 r--s 00000000 00:05 9 /dev/shm/x
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7f0000100000-7f0000102000 r-xp 00000000 00:00 0 [vdso]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fe:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_private_file_mappings_are_trimmed() {
        let t = trimmable(SMAPS);
        let starts: Vec<usize> = t.iter().map(|m| m.start).collect();
        // The rodata and text of the binary; not its RELRO (anonymous pages), data, heap,
        // a shared mapping, the vdso, or a mapping with nothing resident.
        assert_eq!(starts, vec![0x55d0a0000000, 0x55d0a0100000]);
        assert_eq!(t[1].end - t[1].start, 3 << 20);
        assert_eq!(t[1].rss_kb, 3000);
    }

    #[test]
    fn trimming_this_process_keeps_it_working() {
        let before = read_only_file_pages();
        // Code and read-only data fault back in: formatting, allocation, a syscall.
        let s = format!(
            "{:?}",
            std::fs::read_to_string("/proc/self/status").map(|s| s.len())
        );
        assert!(s.starts_with("Ok("), "{s}");
        let again = read_only_file_pages();
        assert!(
            before.mappings > 0 && again.mappings > 0,
            "{before:?} {again:?}"
        );
    }
}
