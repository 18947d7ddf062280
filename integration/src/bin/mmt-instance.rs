//! One instance of a kernel template, for tests/kernel_templates.rs:
//!
//!     mmt-instance POOL PAGES ID
//!
//! Maps PAGES pages of private anonymous memory, attaches the registered template POOL
//! to it through the trenv-mmt module, and checks what a restored function relies on,
//! printing `key=value` lines: the contents (`checksum_ok`), how many faults reading all
//! of it took (`read_faults`; the same read of a private file mapping of POOL for
//! comparison: `file_read_faults`), what /proc/self/smaps says of the mapping. It then
//! writes its own mark at the start of every page, prints `ready` and waits for a line on
//! stdin (so that every instance has written before any checks), then checks that it
//! sees only its own writes (`isolated`), that MADV_DONTNEED reads zeros afterwards,
//! that MADV_FREE works, and that a forked child sees the parent's memory and its writes
//! stay its own. Ends with `done`; exits 2 on a usage or setup error, 3 if the attach
//! was refused (`attach_error=`).

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::path::Path;

use trenv_criu::kernel_templates::Device;
use trenv_integration::mmt::{PAGE, WORDS_PER_PAGE, checksum, expected_checksum, mark, word};

fn minflt() -> i64 {
    // SAFETY: rusage is plain old data; all zeros is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

fn say(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
}

fn die(code: i32, msg: &str) -> ! {
    eprintln!("mmt-instance: {msg}");
    std::process::exit(code)
}

/// The smaps block of the mapping that starts at `addr`: (pathname, Anonymous kB).
fn smaps(addr: usize) -> (String, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{addr:x}-");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&head));
    let Some(header) = lines.next() else {
        return ("<no such mapping>".into(), 0);
    };
    let path = header.split_whitespace().nth(5).unwrap_or("").to_string();
    let anon = lines
        .take_while(|l| !is_header(l))
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (path, anon)
}

/// A mapping's first smaps line ("start-end perms ..."), not one of its fields.
fn is_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        })
}

fn map_anon(bytes: usize) -> *mut u64 {
    // SAFETY: a fresh private anonymous mapping, owned by this program until it exits.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        die(2, &format!("mmap: {}", std::io::Error::last_os_error()));
    }
    p.cast()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        die(2, "usage: mmt-instance POOL PAGES ID");
    }
    let pool_path = Path::new(&args[1]);
    let pages: usize = args[2]
        .parse()
        .unwrap_or_else(|_| die(2, "PAGES: a number"));
    let id: u32 = args[3].parse().unwrap_or_else(|_| die(2, "ID: a number"));
    if pages < 64 {
        die(2, "PAGES: at least 64");
    }
    let bytes = pages * PAGE;
    let words = pages * WORDS_PER_PAGE;
    let device = match Device::open() {
        Ok(Some(d)) => d,
        Ok(None) => die(2, "no trenv-mmt device"),
        Err(e) => die(2, &e.to_string()),
    };
    let pool = File::open(pool_path).unwrap_or_else(|e| die(2, &format!("{pool_path:?}: {e}")));

    let base = map_anon(bytes);
    // SAFETY: the range was just mapped and nothing refers to it yet.
    if let Err(e) = unsafe { device.attach(pool.as_fd(), pool_path, 0, base as u64, bytes as u64) }
    {
        say("attach_error", e);
        std::process::exit(3);
    }
    // SAFETY: base is a live mapping of `words` words for the rest of the program.
    let mem = unsafe { std::slice::from_raw_parts_mut(base, words) };

    let before = minflt();
    let sum = checksum(mem);
    say("read_faults", minflt() - before);
    say("checksum_ok", sum == expected_checksum(0, words));
    {
        // The same read through a private mapping of the pool file: a fault per page
        // (fewer with the kernel's fault-around), as the stock backend takes them.
        // SAFETY: a read-only private mapping of the pool file, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&pool),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die(2, "mmap of the pool file");
        }
        // SAFETY: as above.
        let file = unsafe { std::slice::from_raw_parts(p as *const u64, words) };
        let before = minflt();
        let s = checksum(file);
        say("file_read_faults", minflt() - before);
        say("file_checksum_ok", s == expected_checksum(0, words));
        // SAFETY: p is the mapping made above, not used afterwards.
        unsafe { libc::munmap(p, bytes) };
    }
    let (path, anon) = smaps(base as usize);
    say(
        "vma_path",
        if path.is_empty() {
            "<anonymous>"
        } else {
            &path
        },
    );
    say("anonymous_kb_before_writes", anon);

    for p in 0..pages {
        mem[p * WORDS_PER_PAGE] = mark(id, p);
    }
    say("anonymous_kb_after_writes", smaps(base as usize).1);
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);

    let own = |mem: &[u64], p: usize| {
        mem[p * WORDS_PER_PAGE] == mark(id, p)
            && (1..WORDS_PER_PAGE).all(|k| {
                let i = p * WORDS_PER_PAGE + k;
                mem[i] == word(i as u64)
            })
    };
    say("isolated", (0..pages).all(|p| own(mem, p)));

    // MADV_DONTNEED on pages [0, 16): anonymous memory reads zeros afterwards.
    // SAFETY: the range lies in this program's mapping; nothing holds references into it.
    let rc = unsafe { libc::madvise(base.cast(), 16 * PAGE, libc::MADV_DONTNEED) };
    say("dontneed_rc", rc);
    say(
        "dontneed_zero",
        mem[..16 * WORDS_PER_PAGE].iter().all(|w| *w == 0),
    );

    // MADV_FREE on pages [16, 32): accepted; each page then reads as it was or as zeros,
    // and takes writes.
    // SAFETY: as above.
    let rc = unsafe {
        libc::madvise(
            base.add(16 * WORDS_PER_PAGE).cast(),
            16 * PAGE,
            libc::MADV_FREE,
        )
    };
    say("madv_free_rc", rc);
    let valid = (16..32).all(|p| {
        own(mem, p)
            || mem[p * WORDS_PER_PAGE..(p + 1) * WORDS_PER_PAGE]
                .iter()
                .all(|w| *w == 0)
    });
    say("madv_free_valid", valid);
    for p in 16..32 {
        mem[p * WORDS_PER_PAGE + 1] = mark(id, p) ^ 1;
    }
    say(
        "madv_free_writable",
        (16..32).all(|p| mem[p * WORDS_PER_PAGE + 1] == mark(id, p) ^ 1),
    );

    // fork: the child sees pages [32, 64) as the parent left them; its writes are its own.
    let _ = std::io::stdout().flush();
    // SAFETY: this program is single-threaded; the child only reads and writes memory
    // and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let ok = (32..64).all(|p| own(mem, p));
        for p in 32..64 {
            mem[p * WORDS_PER_PAGE] = mark(id + 1000, p);
        }
        // SAFETY: leaves the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    say(
        "fork_child_saw_parent",
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    );
    say("fork_isolated", (32..64).all(|p| own(mem, p)));
    println!("done");
}
