//! The kernel side of memory templates (kernel-patches/trenv-mmt) on the running kernel:
//! templates registered from tmpfs and DAX pools, attached to instances as anonymous
//! memory with page tables filled at once.
//!
//! The VM test bed loads the module and sets `TRENV_MMT_REQUIRED=1`: there every test runs
//! and a missing module fails them. A host without the module (this machine kind's kernel
//! has no headers to build it for) runs the first test, which checks that such a kernel is
//! seen as one without kernel templates; the others say why they do not apply and return.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trenv_criu::kernel_templates::{Device, KernelTemplateError, Query};
use trenv_integration::mmt::{PAGE, WORDS_PER_PAGE, checksum, expected_checksum, write_pool};

fn required() -> bool {
    std::env::var("TRENV_MMT_REQUIRED").as_deref() == Ok("1")
}

/// The module's device, or None (and why) where the module is not loaded.
fn device(test: &str) -> Option<Device> {
    match Device::open() {
        Ok(Some(d)) => Some(d),
        Ok(None) => {
            assert!(
                !required(),
                "TRENV_MMT_REQUIRED=1 but there is no /dev/trenv-mmt: the module did not load"
            );
            eprintln!("{test}: not run: the trenv-mmt module is not loaded on this kernel");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Pages of the templates these tests make (TRENV_TEST_MMT_PAGES; 8 MiB by default).
fn pages() -> usize {
    std::env::var("TRENV_TEST_MMT_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

/// A directory for pool files: a tmpfs of its own, or a directory on the DAX pool.
struct Pool {
    dir: PathBuf,
    mounted: bool,
}

impl Pool {
    fn tmpfs() -> Pool {
        let dir = tempfile::Builder::new()
            .prefix("trenv-mmt-test-")
            .tempdir()
            .unwrap()
            .keep();
        let c = |s: &Path| std::ffi::CString::new(s.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c(&dir).as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Pool { dir, mounted: true }
    }

    /// A directory on the fsdax filesystem at /mnt/pmem (the VM test bed's), if any.
    fn dax() -> Option<Pool> {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let dax = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[1] == "/mnt/pmem"
                && f[3].split(',').any(|o| o == "dax" || o == "dax=always")
        });
        if !dax {
            assert!(!required(), "the VM test bed mounts /mnt/pmem with -o dax");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("trenv-mmt-test-")
            .tempdir_in("/mnt/pmem")
            .unwrap()
            .keep();
        Some(Pool {
            dir,
            mounted: false,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        write_pool(&path, pages()).unwrap();
        path
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.mounted {
            let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2(2) with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running mmt-instance.
struct Instance {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    lines: Vec<String>,
}

impl Instance {
    fn spawn(pool: &Path, id: u32) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mmt-instance"))
            .arg(pool)
            .arg(pages().to_string())
            .arg(id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Instance {
            child,
            out,
            lines: Vec::new(),
        }
    }

    /// Reads lines until `last` (or the end); true if `last` came.
    fn read_until(&mut self, last: &str) -> bool {
        loop {
            let mut line = String::new();
            if self.out.read_line(&mut line).unwrap() == 0 {
                return false;
            }
            let line = line.trim_end().to_string();
            let done = line == last;
            self.lines.push(line);
            if done {
                return true;
            }
        }
    }

    fn go(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
    }

    fn finish(mut self) -> (Vec<String>, i32) {
        self.read_until("done");
        drop(self.child.stdin.take());
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (self.lines, code)
    }

    fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in {lines:#?}"))
    }
}

fn checksum_of_file(path: &Path) -> u64 {
    let mut bytes = Vec::new();
    File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    checksum(&words)
}

#[test]
fn a_kernel_without_the_module_is_seen_as_such_and_one_with_it_answers() {
    // A kernel built without module support has no /proc/modules.
    let loaded = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("trenv_mmt "));
    match Device::open() {
        Ok(Some(_)) => assert!(loaded, "a /dev/trenv-mmt without the module"),
        Ok(None) => {
            assert!(
                !loaded,
                "the module is loaded but /dev/trenv-mmt is missing"
            );
            assert!(
                !required(),
                "TRENV_MMT_REQUIRED=1 but the module is not loaded"
            );
        }
        Err(e) => panic!("{e}"),
    }
}

fn ten_instances(pool: Pool, kind: &str) {
    let Some(dev) = device(&format!("ten_instances_{kind}")) else {
        return;
    };
    let path = pool.file("template");
    let file = File::open(&path).unwrap();
    let n = pages();
    assert_eq!(dev.register(&file, &path).unwrap(), n as u64);
    let q = dev.query(&file, &path).unwrap();
    assert!(q.registered && !q.stale, "{q:?}");
    assert_eq!(q.dax, kind == "dax", "{q:?}");

    let mut instances: Vec<Instance> = (0..10).map(|i| Instance::spawn(&path, i)).collect();
    for (i, inst) in instances.iter_mut().enumerate() {
        assert!(inst.read_until("ready"), "instance {i}: {:#?}", inst.lines);
    }
    // Every instance has written its marks before any checks them.
    for inst in &mut instances {
        inst.go();
    }
    for (i, inst) in instances.into_iter().enumerate() {
        let (lines, code) = inst.finish();
        assert_eq!(code, 0, "instance {i}: {lines:#?}");
        let v = |k| Instance::value(&lines, k);
        for key in [
            "checksum_ok",
            "file_checksum_ok",
            "isolated",
            "dontneed_zero",
            "madv_free_valid",
            "madv_free_writable",
            "fork_child_saw_parent",
            "fork_isolated",
        ] {
            assert_eq!(v(key), "true", "instance {i}, {key}: {lines:#?}");
        }
        assert_eq!(v("dontneed_rc"), "0", "{lines:#?}");
        assert_eq!(v("madv_free_rc"), "0", "MADV_FREE refused: {lines:#?}");
        assert_eq!(v("vma_path"), "<anonymous>", "{lines:#?}");
        assert_eq!(v("anonymous_kb_before_writes"), "0", "{lines:#?}");
        let anon: usize = v("anonymous_kb_after_writes").parse().unwrap();
        assert!(
            anon >= n * PAGE / 1024,
            "writes copied {anon} kB: {lines:#?}"
        );
        // Page tables filled at attach: reading everything takes (almost) no fault; the
        // same read of a private file mapping takes one per fault-around window at least.
        let faults: i64 = v("read_faults").parse().unwrap();
        let file_faults: i64 = v("file_read_faults").parse().unwrap();
        assert!(
            faults <= 8 && file_faults >= (n / 16) as i64,
            "faults reading the attached template: {faults}, the pool file mapped: \
             {file_faults}: {lines:#?}"
        );
    }
    let q = dev.query(&file, &path).unwrap();
    assert!(q.attaches >= 10, "{q:?}");
    // The instances' writes are their own: the pool file is as it was made.
    assert_eq!(
        checksum_of_file(&path),
        expected_checksum(0, n * WORDS_PER_PAGE)
    );
    dev.unregister(&file, &path).unwrap();
    assert!(!dev.query(&file, &path).unwrap().registered);
}

#[test]
fn ten_instances_from_one_kernel_template_on_tmpfs_are_correct_and_isolated() {
    ten_instances(Pool::tmpfs(), "tmpfs");
}

#[test]
fn ten_instances_from_one_kernel_template_on_the_dax_pool_are_correct_and_isolated() {
    if let Some(pool) = Pool::dax() {
        ten_instances(pool, "dax");
    } else {
        eprintln!("not run: no fsdax filesystem at /mnt/pmem");
    }
}

/// A DAX page is the filesystem's block: an unregistered DAX template whose pages are
/// still mapped keeps its pool file (and so its blocks) until they are unmapped, then is
/// released.
#[test]
fn a_dax_template_unregistered_while_mapped_is_kept_until_its_pages_are_unmapped() {
    let Some(pool) = Pool::dax() else {
        eprintln!("not run: no fsdax filesystem at /mnt/pmem");
        return;
    };
    unregistered_while_mapped(pool, "retiring");
}

/// A tmpfs page is the file's page cache: removing the file of an unregistered template
/// whose pages an instance still maps must not take them out of the page cache (the
/// kernel's "Bad page cache" report, and for 4 KiB pages a page freed while mapped): the
/// template keeps its file until the pages are unmapped, then is released.
#[test]
fn a_tmpfs_template_unregistered_while_mapped_is_kept_until_its_pages_are_unmapped() {
    unregistered_while_mapped(Pool::tmpfs(), "retiring-tmpfs");
}

/// The kernel's taint flag for a page found in a bad state (`TAINT_BAD_PAGE`).
const TAINT_BAD_PAGE: u64 = 1 << 5;

fn tainted() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/tainted")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn unregistered_while_mapped(pool: Pool, name: &str) {
    let Some(dev) = device(name) else {
        return;
    };
    let bad_before = tainted() & TAINT_BAD_PAGE;
    let path = pool.file(name);
    let file = File::open(&path).unwrap();
    dev.register(&file, &path).unwrap();
    let len = pages() * PAGE;
    let mut mapped = Mapping::anon(len);
    mapped.attach(&dev, &file, &path, 0).unwrap();
    assert_eq!(checksum(mapped.words()), expected_checksum(0, len / 8));

    dev.unregister(&file, &path).unwrap();
    let q = dev.query(&file, &path).unwrap();
    assert!(!q.registered && q.this_retiring && q.retiring >= 1, "{q:?}");
    // Removing the file now frees none of its pages: the mapping still reads them. (The
    // descriptor kept open only names the file to QUERY; it holds no page.)
    std::fs::remove_file(&path).unwrap();
    let _other = pool.file(&format!("{name}-other"));
    assert_eq!(checksum(mapped.words()), expected_checksum(0, len / 8));

    // Released soon after the unmap (checked every second by the module; emulated CPUs
    // under load are slow). Other tests' templates may be retiring meanwhile: this one's
    // own state is what counts.
    drop(mapped);
    let q = query_until(&dev, &file, &path, Duration::from_secs(60), |q| {
        !q.this_retiring
    });
    assert!(!q.this_retiring, "still retiring: {q:?}");
    if bad_before == 0 {
        assert_eq!(
            tainted() & TAINT_BAD_PAGE,
            0,
            "the kernel found a bad page (dmesg says which)"
        );
    }
}

/// Queries the module about `file` until `done` holds of the answer or `timeout` passed;
/// returns the last answer.
fn query_until(
    dev: &Device,
    file: &File,
    path: &Path,
    timeout: Duration,
    done: impl Fn(&Query) -> bool,
) -> Query {
    let deadline = Instant::now() + timeout;
    loop {
        let q = dev.query(file, path).unwrap();
        if done(&q) || Instant::now() >= deadline {
            return q;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_changed_or_replaced_pool_file_is_a_clear_error_and_leaves_nothing_registered() {
    let Some(dev) = device("changed") else {
        return;
    };
    let pool = Pool::tmpfs();
    // Changed after registration: attaches are refused, naming the change.
    let path = pool.file("changed");
    let file = File::open(&path).unwrap();
    dev.register(&file, &path).unwrap();
    // Timestamps have a clock tick's granularity: make the change visible.
    std::thread::sleep(Duration::from_millis(20));
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let q = dev.query(&file, &path).unwrap();
    assert!(q.registered && q.stale, "{q:?}");
    let (lines, code) = Instance::spawn(&path, 1).finish();
    assert_eq!(code, 3, "{lines:#?}");
    assert!(
        Instance::value(&lines, "attach_error").contains("changed since it was registered"),
        "{lines:#?}"
    );
    dev.unregister(&file, &path).unwrap();
    assert!(!dev.query(&file, &path).unwrap().registered);

    // Removed and replaced by another file of the same name: that one is not the template.
    let path = pool.file("replaced");
    let old = File::open(&path).unwrap();
    dev.register(&old, &path).unwrap();
    std::fs::remove_file(&path).unwrap();
    write_pool(&path, pages()).unwrap();
    let (lines, code) = Instance::spawn(&path, 2).finish();
    assert_eq!(code, 3, "{lines:#?}");
    assert!(
        Instance::value(&lines, "attach_error").contains("not registered"),
        "{lines:#?}"
    );
    // The removed file's template is unregistered through a descriptor still open.
    dev.unregister(&old, &path).unwrap();
    assert!(!dev.query(&old, &path).unwrap().registered);
}

#[test]
fn attaching_where_a_template_cannot_go_is_refused_with_the_reason() {
    let Some(dev) = device("refused") else {
        return;
    };
    let pool = Pool::tmpfs();
    let path = pool.file("refused");
    let file = File::open(&path).unwrap();
    let len = 64 * PAGE;

    // Not registered yet.
    let mut anon = Mapping::anon(len);
    let e = anon.attach(&dev, &file, &path, 0).unwrap_err();
    assert!(
        matches!(e, KernelTemplateError::NotRegistered { .. }),
        "{e}"
    );

    dev.register(&file, &path).unwrap();
    let e = dev.register(&file, &path).unwrap_err();
    assert!(
        matches!(e, KernelTemplateError::AlreadyRegistered { .. }),
        "{e}"
    );

    // A file mapping is not anonymous memory.
    let filemap = Mapping::file(&file, len);
    let e = filemap.attach(&dev, &file, &path, 0).unwrap_err();
    assert!(matches!(e, KernelTemplateError::NotAnonymous { .. }), "{e}");

    // Nothing mapped there.
    let gone = Mapping::anon(len);
    let addr = gone.addr();
    drop(gone);
    // SAFETY: nothing is mapped at addr: the module must refuse it.
    let e = unsafe { dev.attach(file.as_fd(), &path, 0, addr, len as u64) }.unwrap_err();
    assert!(matches!(e, KernelTemplateError::NotMapped { .. }), "{e}");

    // Beyond the template's end.
    let e = anon
        .attach(&dev, &file, &path, (pages() * PAGE) as u64)
        .unwrap_err();
    assert!(matches!(e, KernelTemplateError::OutOfRange { .. }), "{e}");

    // Attached once; a second attach onto the same pages finds them taken.
    anon.attach(&dev, &file, &path, 0).unwrap();
    assert_eq!(checksum(anon.words()), expected_checksum(0, len / 8));
    let e = anon.attach(&dev, &file, &path, 0).unwrap_err();
    assert!(matches!(e, KernelTemplateError::Busy { .. }), "{e}");
    drop(anon);
    dev.unregister(&file, &path).unwrap();

    // A pool file on a filesystem that is neither tmpfs nor fsdax.
    let here = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    write_pool(here.path(), 4).unwrap();
    let other = File::open(here.path()).unwrap();
    let e = dev.register(&other, here.path()).unwrap_err();
    assert!(
        matches!(e, KernelTemplateError::UnsupportedPool { .. }),
        "{e}"
    );
}

/// A mapping of this test process, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn anon(len: usize) -> Mapping {
        Self::map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    fn file(file: &File, len: usize) -> Mapping {
        Self::map(
            len,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(file),
        )
    }

    fn map(len: usize, flags: i32, fd: i32) -> Mapping {
        // SAFETY: a fresh mapping, owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mapping { ptr, len }
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Attaches `path`'s template from `offset` over all of this mapping.
    fn attach(
        &self,
        dev: &Device,
        file: &File,
        path: &Path,
        offset: u64,
    ) -> Result<(), KernelTemplateError> {
        // SAFETY: the mapping is this test's own, and nothing holds references into it
        // (words() borrows it only after).
        unsafe { dev.attach(file.as_fd(), path, offset, self.addr(), self.len as u64) }
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: the mapping lives as long as self, which the slice borrows.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map, not used after this.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The parts of a pool file that were never written (holes) read as zeros and take no
/// memory from the pool: the template holds the zero page for them.
#[test]
fn holes_in_a_tmpfs_pool_file_read_as_zeros_and_cost_the_pool_nothing() {
    use std::os::unix::fs::MetadataExt;
    let Some(dev) = device("holes") else {
        return;
    };
    let pool = Pool::tmpfs();
    let path = pool.dir.join("sparse");
    let half = 32;
    write_pool(&path, half).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len((2 * half * PAGE) as u64)
        .unwrap();
    let blocks = std::fs::metadata(&path).unwrap().blocks();
    let file = File::open(&path).unwrap();
    assert_eq!(dev.register(&file, &path).unwrap(), (2 * half) as u64);
    assert_eq!(
        std::fs::metadata(&path).unwrap().blocks(),
        blocks,
        "registering filled the holes"
    );
    let len = 2 * half * PAGE;
    let mut m = Mapping::anon(len);
    m.attach(&dev, &file, &path, 0).unwrap();
    let (written, hole) = m.words().split_at_mut(half * WORDS_PER_PAGE);
    assert_eq!(
        checksum(written),
        expected_checksum(0, half * WORDS_PER_PAGE)
    );
    assert!(
        hole.iter().all(|w| *w == 0),
        "a hole does not read as zeros"
    );
    // A write into a hole is the instance's own.
    hole[5] = 0xfeed;
    assert_eq!(hole[5], 0xfeed);
    assert_eq!(std::fs::metadata(&path).unwrap().blocks(), blocks);
    drop(m);
    dev.unregister(&file, &path).unwrap();
}

/// A DAX pool file with a hole over aligned 2 MiB (a template's pool file always has one:
/// the growth tail after its last VMA) reads as zeros there, and once unregistered and
/// unmapped the template is released: the hole is held as the small zero page, not as
/// subpages of the huge zero page (whose references are the whole system's and kept the
/// template retiring for ever, its blocks allocated).
#[test]
fn a_dax_template_with_a_huge_hole_reads_zeros_there_and_is_released_once_unmapped() {
    let Some(pool) = Pool::dax() else {
        eprintln!("not run: no fsdax filesystem at /mnt/pmem");
        return;
    };
    let Some(dev) = device("dax-hole") else {
        return;
    };
    // 2 MiB written, 4 MiB of hole (2 MiB-aligned), 2 MiB written.
    let mib2 = (2 << 20) / PAGE;
    let path = pool.dir.join("sparse");
    write_pool(&path, mib2).unwrap();
    let tail = pool.dir.join("tail");
    write_pool(&tail, mib2).unwrap();
    {
        use std::io::{Seek, SeekFrom};
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start((3 * mib2 * PAGE) as u64)).unwrap();
        f.write_all(&std::fs::read(&tail).unwrap()).unwrap();
        f.sync_all().unwrap();
    }
    let file = File::open(&path).unwrap();
    assert_eq!(dev.register(&file, &path).unwrap(), (4 * mib2) as u64);
    let len = 4 * mib2 * PAGE;
    let mut m = Mapping::anon(len);
    m.attach(&dev, &file, &path, 0).unwrap();
    let words = m.words();
    let (head, rest) = words.split_at_mut(mib2 * WORDS_PER_PAGE);
    let (hole, end) = rest.split_at_mut(2 * mib2 * WORDS_PER_PAGE);
    let expected = expected_checksum(0, mib2 * WORDS_PER_PAGE);
    assert_eq!(checksum(head), expected);
    assert_eq!(checksum(end), expected);
    assert!(
        hole.iter().all(|w| *w == 0),
        "the hole does not read as zeros"
    );
    hole[7] = 0xfeed;
    assert_eq!(hole[7], 0xfeed);
    dev.unregister(&file, &path).unwrap();
    drop(m);
    let q = query_until(&dev, &file, &path, Duration::from_secs(60), |q| {
        !q.this_retiring
    });
    assert!(!q.this_retiring, "still retiring once unmapped: {q:?}");
}

/// The processes whose memory has VMAs the module attached pages to (`mm`, VM_MIXEDMAP,
/// in smaps' VmFlags), as "pid (command): N VMAs".
fn processes_with_attached_memory() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(smaps) = std::fs::read_to_string(e.path().join("smaps")) else {
            continue;
        };
        let n = smaps
            .lines()
            .filter_map(|l| l.strip_prefix("VmFlags:"))
            .filter(|f| f.split_whitespace().any(|x| x == "mm"))
            .count();
        if n > 0 {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            found.push(format!("{name} ({}): {n} VMAs", comm.trim()));
        }
    }
    found
}

/// Run after other tests in the VM test bed (`--ignored`: it speaks for every test before
/// it, e.g. as the last line of a plan): once every container and instance is gone, no DAX
/// template unregistered while mapped is still retiring — none keeps its pool blocks for
/// ever. Fails naming the processes that still have attached memory, if any.
///
/// Not in integration/vm/plan yet: it failed there before the huge zero page fix
/// (2026-12-05), and passed after it in a shorter plan (the module's tests, a restore
/// through containerd on the DAX pool); it joins the plan once a whole plan run passes.
#[test]
#[ignore = "run after other tests of the VM test bed: see the comment"]
fn nothing_is_left_retiring_once_every_instance_is_gone() {
    let Some(dev) = device("final") else {
        return;
    };
    let pool = Pool::tmpfs();
    let path = pool.file("probe");
    let file = File::open(&path).unwrap();
    let q = query_until(&dev, &file, &path, Duration::from_secs(30), |q| {
        q.retiring == 0
    });
    assert_eq!(
        q.retiring,
        0,
        "templates still retiring after 30 s ({q:?}); processes with attached memory: {:?}",
        processes_with_attached_memory()
    );
    eprintln!("registered templates left: {}", q.templates);
}
