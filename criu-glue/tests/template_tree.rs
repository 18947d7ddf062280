//! A memory template of a process tree, against the real kernel and the CRIU that
//! integration/setup.sh installs: a parent and the child it forked each have a 4 MiB
//! anonymous region at the same address with different bytes. CRIU dumps the tree, the
//! image is converted, CRIU restores it (twice) with the template file handed over by
//! `inherit_fd`, and each restored process checks that it reads its own bytes from a
//! mapping of the template and that its writes stay its own.
//!
//! CRIU's restore pairs a child's private VMA with its parent's when their bounds and, for
//! file mappings, their `files.img` entry match (criu/mem.c `check_cow_vmas`, which ignores
//! the offset), and then gives the child the parent's mapping: the conversion gives each
//! process its own entry, which this test would catch if it did not.
//!
//! Both also map a file privately (as a program maps its `.data`) and write some of its
//! pages, the parent before the fork and the child after: the conversion maps each
//! process's written runs from the template and leaves the rest of the mapping to the file,
//! so each restored process must read its own writes where it wrote and the file's bytes
//! everywhere else.
//!
//! Both also have a page mapped above every other VMA but their stack, so that the child's
//! is the last VMA of the template file; the restored child grows it with `mremap` by
//! 16 MiB, which maps the file's next bytes: they must exist and read as zeros (the holes
//! that end the file), where a file ending with the VMA would make the first touch SIGBUS.
//!
//! Needs root (CRIU dumps and restores other processes); skipped otherwise.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use trenv_criu::rpc::{Criu_cg_mode, Criu_opts, Criu_req, Criu_req_type, Inherit_fd};
use trenv_criu::template::{MappedMemory, Policy, convert};
use trenv_criu::{Criu, FdPlan, Purpose};

/// Where both processes have their region (free in a test process: far above its heap
/// and below its libraries and stacks), and its size.
const ADDR: usize = 0x5a5a_0000_0000;
const LEN: usize = 4 << 20;
const PAGE: usize = 4096;
const PAGES: usize = LEN / PAGE;
/// Where both map the file privately, and its size in pages.
const FILE_ADDR: usize = 0x5a5b_0000_0000;
const FILE_PAGES: usize = 8;
/// What both write over their region once they have checked it.
const SCRIBBLE: u8 = 0xee;
/// Where the page that the restored child grows is (free below the stack; chosen before
/// the tree is forked), and by how much it grows.
static GROW_AT: AtomicUsize = AtomicUsize::new(0);
const GROW_BY: usize = 16 << 20;
/// The byte the grown page holds (it must be dumped to be converted).
const GROW_BYTE: u8 = 0x5a;
/// How long a restored process may take to answer (a bound against hanging, not a
/// measurement).
const PATIENCE: Duration = Duration::from_secs(60);

/// The parent's byte on page `k` (never 0: pages never written read as 0).
fn parent_byte(k: usize) -> u8 {
    (k % 200) as u8 + 1
}

/// The child's: its own on every page but the last, which it left as its parent's.
fn child_byte(k: usize) -> u8 {
    if k == PAGES - 1 {
        parent_byte(k)
    } else {
        (k % 50) as u8 + 201
    }
}

/// The file's byte on page `k`.
fn file_byte(k: usize) -> u8 {
    0x30 + k as u8
}

/// What the parent reads from its private mapping of the file: its writes on pages 1 and 2.
fn parent_file_byte(k: usize) -> u8 {
    if (1..=2).contains(&k) {
        0xa0 + k as u8
    } else {
        file_byte(k)
    }
}

/// The child's: its writes on pages 2 and 5, its parent's (inherited) on page 1.
fn child_file_byte(k: usize) -> u8 {
    match k {
        2 | 5 => 0xc0 + k as u8,
        _ => parent_file_byte(k),
    }
}

/// The byte a process reads on each page of a region.
type Bytes = fn(usize) -> u8;

/// One process's control files: the test creates `go`, the process answers in `result`.
struct Role {
    ready: CString,
    go: CString,
    result: CString,
    expected: fn(usize) -> u8,
    /// What it reads from its private mapping of the file.
    file_expected: fn(usize) -> u8,
    /// Grows its page above the others once its region is checked.
    grows: bool,
}

impl Role {
    fn new(ctl: &Path, name: &str, expected: (Bytes, Bytes), grows: bool) -> Role {
        let path = |what: &str| {
            CString::new(ctl.join(format!("{what}-{name}")).to_str().unwrap()).unwrap()
        };
        Role {
            ready: path("ready"),
            go: path("go"),
            result: path("result"),
            expected: expected.0,
            file_expected: expected.1,
            grows,
        }
    }

    fn path(c: &CString) -> PathBuf {
        PathBuf::from(c.to_str().unwrap())
    }
}

/// Processes of this test, killed and reaped however it ends (the root first: its
/// orphaned child is then this process's, a child subreaper).
struct Tree {
    pids: Vec<i32>,
}

impl Tree {
    fn end(&mut self) {
        for &pid in &self.pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for pid in self.pids.drain(..) {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.end();
    }
}

#[test]
fn a_template_of_a_process_tree_restores_each_process_its_own_memory() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: CRIU needs root to dump and restore processes");
        return;
    }
    let criu = Criu::locate(None).expect("CRIU is installed by integration/setup.sh");
    // SAFETY: prctl with constant arguments; orphans of this test come back to it.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let tmp = tempfile::tempdir().unwrap();
    let (images, ctl) = (tmp.path().join("images"), tmp.path().join("ctl"));
    fs::create_dir(&images).unwrap();
    fs::create_dir(&ctl).unwrap();
    let parent = Role::new(&ctl, "parent", (parent_byte, parent_file_byte), false);
    let child = Role::new(&ctl, "child", (child_byte, child_file_byte), true);
    GROW_AT.store(free_below_stack(), Ordering::SeqCst);
    let data = tmp.path().join("data");
    let bytes: Vec<u8> = (0..FILE_PAGES * PAGE)
        .map(|i| file_byte(i / PAGE))
        .collect();
    fs::write(&data, bytes).unwrap();
    let data_fd = fs::File::open(&data).unwrap();

    let root = spawn_tree(&parent, &child, &data_fd);
    drop(data_fd);
    let mut tree = Tree { pids: vec![root] };
    wait_for(&Role::path(&parent.ready));
    wait_for(&Role::path(&child.ready));

    // CRIU dumps the tree and kills it.
    dump(&criu, &images, root);
    let kid = tree_pids(&images)[1];
    tree.pids.push(kid);
    tree.end();

    // The conversion: both regions (and any other large anonymous VMA) into one file.
    let template = tmp.path().join("t.tpl");
    let name = format!("/trenv-test/tree-{}.tpl", std::process::id());
    let conv = convert(
        &images,
        &template,
        &name,
        &Policy::default(),
        MappedMemory::FileBacked,
    )
    .unwrap();
    assert_eq!(conv.pid, root as u32);
    let pids: Vec<u32> = conv.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [root as u32, kid as u32]);
    let region = (ADDR as u64, (ADDR + LEN) as u64);
    for p in &conv.processes {
        assert!(
            p.vmas.contains(&region),
            "{} kept its region: {conv:?}",
            p.pid
        );
    }
    // The runs each process wrote of its mapping of the file, and nothing else of it.
    let file_page = |k: usize| (FILE_ADDR + k * PAGE) as u64;
    let file_runs = |p: &trenv_criu::template::ProcessConversion| -> Vec<(u64, u64)> {
        p.vmas
            .iter()
            .copied()
            .filter(|&(a, _)| (file_page(0)..file_page(FILE_PAGES)).contains(&a))
            .collect()
    };
    assert_eq!(
        file_runs(&conv.processes[0]),
        [(file_page(1), file_page(3))],
        "{conv:?}"
    );
    assert_eq!(
        file_runs(&conv.processes[1]),
        [(file_page(1), file_page(3)), (file_page(5), file_page(6))],
        "{conv:?}"
    );
    let grow = GROW_AT.load(Ordering::SeqCst) as u64;
    assert_eq!(
        conv.processes[1].vmas.last(),
        Some(&(grow, grow + PAGE as u64)),
        "the child's page above the others is the file's last VMA: {conv:?}"
    );
    fs::set_permissions(&template, fs::Permissions::from_mode(0o444)).unwrap();
    let pristine = fs::read(&template).unwrap();

    // Two instances in turn: the second sees nothing of what the first wrote.
    for round in 0..2 {
        for role in [&parent, &child] {
            let _ = fs::remove_file(Role::path(&role.go));
            let _ = fs::remove_file(Role::path(&role.result));
        }
        // The second by a CRIU started ahead, its descriptors sent with the request.
        let restored = restore(&criu, &images, &template, &name[1..], round == 1);
        tree.pids = vec![restored, kid];
        assert_eq!(restored, root, "round {round}");
        let offsets = [root, kid].map(|pid| template_offset(pid, &template));
        assert_ne!(offsets[0], offsets[1], "both map the same part of the file");
        for pid in [root, kid] {
            let line = maps_line(pid, file_page(3));
            assert!(
                line.ends_with("/data"),
                "{pid}: not the file at page 3: {line}"
            );
            let line = maps_line(pid, file_page(1));
            assert!(line.ends_with(template.to_str().unwrap()), "{pid}: {line}");
        }
        // The parent checks and scribbles first: the child must still read its own.
        for (role, who) in [(&parent, "parent"), (&child, "child")] {
            fs::write(Role::path(&role.go), b"").unwrap();
            let result = Role::path(&role.result);
            wait_for(&result);
            let r = fs::read(&result).unwrap();
            assert_eq!(r[0], 0, "round {round}: the {who} {}", explain(&r));
        }
        tree.end();
        assert!(
            fs::read(&template).unwrap() == pristine,
            "the template changed"
        );
    }
}

/// Forks the parent, which forks the child; answers the parent's pid. Between the forks
/// and the end of this test the processes run only async-signal-safe code (this test
/// process has other threads): no allocation, only system calls.
fn spawn_tree(parent: &Role, child: &Role, data: &fs::File) -> i32 {
    let null = fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    // SAFETY: the child runs `process` only, which calls no allocator and takes no lock.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: async-signal-safe calls on descriptors and memory of this process.
            unsafe {
                libc::setsid();
                for fd in 0..3 {
                    libc::dup2(null.as_raw_fd(), fd);
                }
                map_file_or_exit(data.as_raw_fd(), 13);
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                libc::chdir(c"/".as_ptr());
                fork_and_run(parent, child)
            }
        }
        pid => pid,
    }
}

/// In the parent: maps and fills the region, forks the child (which writes its own bytes
/// over all of it but the last page), then both run their role.
///
/// # Safety
/// Only in the freshly forked parent.
unsafe fn fork_and_run(parent: &Role, child: &Role) -> ! {
    // SAFETY: the mapping was made by spawn_tree, FILE_PAGES pages, readable and writable.
    let file = unsafe { std::slice::from_raw_parts_mut(FILE_ADDR as *mut u8, FILE_PAGES * PAGE) };
    write_file_pages(file, &[1, 2], parent_file_byte);
    map_or_exit(ADDR, LEN, 10);
    // SAFETY: the region was just mapped, LEN bytes, readable and writable.
    let mem = unsafe { std::slice::from_raw_parts_mut(ADDR as *mut u8, LEN) };
    fill(mem, parent_byte);
    let grow = GROW_AT.load(Ordering::SeqCst);
    map_or_exit(grow, PAGE, 12);
    // SAFETY: the page was just mapped, readable and writable.
    unsafe { std::ptr::write_bytes(grow as *mut u8, GROW_BYTE, PAGE) };
    // SAFETY: as for the parent: the child runs `run` only.
    match unsafe { libc::fork() } {
        // SAFETY: as above.
        -1 => unsafe { libc::_exit(11) },
        0 => {
            fill(&mut mem[..LEN - PAGE], child_byte);
            write_file_pages(file, &[2, 5], child_file_byte);
            // SAFETY: only in this process.
            unsafe { run(child, mem) }
        }
        // SAFETY: only in this process.
        _ => unsafe { run(parent, mem) },
    }
}

/// An address below the stack with room for the page and its growth, where nothing is
/// mapped: the kernel keeps a gap of at least 128 MiB between the stack and the highest
/// mapping it chooses.
fn free_below_stack() -> usize {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let range = |l: &str| {
        let r = l.split_whitespace().next().unwrap();
        let (a, b) = r.split_once('-').unwrap();
        (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        )
    };
    let stack = maps
        .lines()
        .find(|l| l.ends_with("[stack]"))
        .expect("a [stack] in /proc/self/maps");
    let at = (range(stack).0 - (96 << 20)) & !((2 << 20) - 1);
    let end = at + PAGE + GROW_BY;
    for l in maps.lines() {
        let (a, b) = range(l);
        assert!(b <= at || a >= end, "{at:#x}..{end:#x} is not free: {l}");
    }
    at
}

/// Maps `len` bytes of private anonymous memory at `addr`, where nothing may be mapped
/// (MAP_FIXED_NOREPLACE), or exits with `status` (without running the destructors of this
/// process, a fork of the test). Async-signal-safe.
fn map_or_exit(addr: usize, len: usize, status: i32) {
    // SAFETY: a fixed mapping where nothing is (NOREPLACE fails otherwise).
    let at = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if at as usize != addr {
        // SAFETY: exiting a forked process without the test's destructors.
        unsafe { libc::_exit(status) };
    }
}

/// Maps the file open at `fd` privately at [`FILE_ADDR`] (its descriptor is closed right
/// after: the mapping is what is dumped), or exits with `status`. Async-signal-safe.
fn map_file_or_exit(fd: i32, status: i32) {
    // SAFETY: a fixed mapping where nothing is (NOREPLACE fails otherwise).
    let at = unsafe {
        libc::mmap(
            FILE_ADDR as *mut libc::c_void,
            FILE_PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
            fd,
            0,
        )
    };
    if at as usize != FILE_ADDR {
        // SAFETY: exiting a forked process without the test's destructors.
        unsafe { libc::_exit(status) };
    }
}

/// Writes `byte(k)` over pages `pages` of the private mapping of the file.
fn write_file_pages(file: &mut [u8], pages: &[usize], byte: fn(usize) -> u8) {
    for &k in pages {
        file[k * PAGE..(k + 1) * PAGE].fill(byte(k));
    }
}

fn fill(mem: &mut [u8], byte: fn(usize) -> u8) {
    for (k, page) in mem.chunks_mut(PAGE).enumerate() {
        page.fill(byte(k));
    }
}

/// Says it is ready, waits for `go` (across the dump and the restore), checks its region,
/// scribbles over it, checks that it reads its own writes, answers, and waits to be killed.
/// The answer: a status (0 all good, 1 wrong bytes, 2 its writes not read back), the page,
/// the byte found and the byte expected.
///
/// # Safety
/// Only in a process of the tree.
unsafe fn run(role: &Role, mem: &mut [u8]) -> ! {
    // SAFETY: system calls on C strings and a stack buffer.
    unsafe {
        touch(&role.ready, &[]);
        while libc::access(role.go.as_ptr(), libc::F_OK) != 0 {
            libc::usleep(10_000);
        }
        let mut answer = first_difference(mem, role.expected, 1);
        let file = std::slice::from_raw_parts_mut(FILE_ADDR as *mut u8, FILE_PAGES * PAGE);
        if answer[0] == 0 {
            answer = first_difference(file, role.file_expected, 7);
        }
        if answer[0] == 0 {
            file.fill(SCRIBBLE);
            answer = first_difference(file, |_| SCRIBBLE, 8);
        }
        if answer[0] == 0 {
            mem.fill(SCRIBBLE);
            answer = first_difference(mem, |_| SCRIBBLE, 2);
        }
        if answer[0] == 0 && role.grows {
            answer = grow();
        }
        touch(&role.result, &answer);
        loop {
            libc::pause();
        }
    }
}

/// Grows the page at [`GROW_AT`] in place by [`GROW_BY`] and checks it: its own byte kept
/// (status 3), the new part reads zeros (status 5; pages counted from the new part's
/// first) and keeps what is written (status 6); a failed mremap is status 4 (errno).
///
/// # Safety
/// Only in the child, whose page is the template file's last VMA.
unsafe fn grow() -> [u8; 7] {
    let at = GROW_AT.load(Ordering::SeqCst);
    // SAFETY: the page is this process's; nothing is mapped above it (free_below_stack).
    let p = unsafe { libc::mremap(at as *mut libc::c_void, PAGE, PAGE + GROW_BY, 0) };
    if p == libc::MAP_FAILED {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return [4, 0, 0, 0, 0, errno as u8, 0];
    }
    // SAFETY: the grown mapping, PAGE + GROW_BY bytes, readable and writable.
    let mem = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, PAGE + GROW_BY) };
    let answer = first_difference(&mem[..PAGE], |_| GROW_BYTE, 3);
    if answer[0] != 0 {
        return answer;
    }
    let new = &mut mem[PAGE..];
    let answer = first_difference(new, |_| 0, 5);
    if answer[0] != 0 {
        return answer;
    }
    new.fill(SCRIBBLE);
    first_difference(new, |_| SCRIBBLE, 6)
}

/// The answer for the first page of `mem` that is not all `byte(k)`, with `status`.
fn first_difference(mem: &[u8], byte: impl Fn(usize) -> u8, status: u8) -> [u8; 7] {
    for (k, page) in mem.chunks(PAGE).enumerate() {
        let want = byte(k);
        if let Some(&found) = page.iter().find(|&&b| b != want) {
            let k = (k as u32).to_le_bytes();
            return [status, k[0], k[1], k[2], k[3], found, want];
        }
    }
    [0; 7]
}

/// Writes `bytes` to a new file `path` (created whole under another name, then renamed).
///
/// # Safety
/// Async-signal-safe; `path` is a valid C string.
unsafe fn touch(path: &CString, bytes: &[u8]) {
    let mut tmp = [0u8; 4096];
    let p = path.as_bytes();
    tmp[..p.len()].copy_from_slice(p);
    tmp[p.len()..p.len() + 4].copy_from_slice(b".tmp");
    // SAFETY: NUL-terminated paths (tmp is zeroed past them), a buffer of bytes.len().
    unsafe {
        let fd = libc::open(
            tmp.as_ptr().cast(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            libc::close(fd);
            libc::rename(tmp.as_ptr().cast(), path.as_ptr());
        }
    }
}

fn explain(r: &[u8]) -> String {
    let page = u32::from_le_bytes([r[1], r[2], r[3], r[4]]);
    let what = match r[0] {
        1 => "read wrong bytes",
        2 => "did not read back its own writes",
        3 => "lost the bytes of its page above the others",
        4 => return format!("could not grow its page above the others: errno {}", r[5]),
        5 => "read wrong bytes in the part its page grew by",
        6 => "did not read back its writes in the part its page grew by",
        7 => "read wrong bytes from its private mapping of the file",
        8 => "did not read back its writes to its private mapping of the file",
        _ => "answered something unknown",
    };
    format!("{what}: page {page} holds {} instead of {}", r[5], r[6])
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pids of the dumped tree, from its pstree.img.
fn tree_pids(images: &Path) -> Vec<i32> {
    use trenv_criu::image::{ImageFile, PSTREE_MAGIC};
    use trenv_criu::pstree::Pstree_entry;
    let path = images.join("pstree.img");
    let procs: Vec<Pstree_entry> = ImageFile::read(&path, PSTREE_MAGIC)
        .unwrap()
        .decode_all(0, &path)
        .unwrap();
    procs.iter().map(|p| p.pid() as i32).collect()
}

fn open_dir(dir: &Path) -> OwnedFd {
    fs::File::open(dir).unwrap().into()
}

fn dump(criu: &Criu, images: &Path, pid: i32) {
    let dir = open_dir(images);
    let mut o = Criu_opts::new();
    o.set_images_dir_fd(dir.as_raw_fd());
    o.set_pid(pid);
    o.set_leave_running(false);
    o.set_log_file("dump.log".into());
    o.set_log_level(4);
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::DUMP);
    req.opts = Some(o).into();
    let log = images.join("dump.log");
    criu.start(FdPlan::default(), Purpose::Other)
        .unwrap()
        .call(req, "dump", Some(log.clone()), &mut ())
        .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(&log).unwrap_or_default()));
}

/// Restores the tree with the template handed over as `key`, by a CRIU started `ahead`
/// or on demand; answers the root's pid.
fn restore(criu: &Criu, images: &Path, template: &Path, key: &str, ahead: bool) -> i32 {
    let dir = open_dir(images);
    let mut plan = FdPlan::default();
    let mut inherit = Inherit_fd::new();
    inherit.set_key(key.into());
    inherit.set_fd(plan.add(fs::File::open(template).unwrap().into()));
    let mut o = Criu_opts::new();
    o.set_images_dir_fd(dir.as_raw_fd());
    o.inherit_fd.push(inherit);
    o.set_rst_sibling(true);
    o.set_manage_cgroups(true);
    o.set_manage_cgroups_mode(Criu_cg_mode::IGNORE);
    o.set_log_file("restore.log".into());
    o.set_log_level(4);
    let mut req = Criu_req::new();
    req.set_type(Criu_req_type::RESTORE);
    req.opts = Some(o).into();
    let log = images.join("restore.log");
    let session = if ahead {
        let mut a = criu.ahead().unwrap();
        a.ready(Duration::from_secs(5)).unwrap();
        a.session(plan).unwrap()
    } else {
        criu.start(plan, Purpose::Restore).unwrap()
    };
    let resp = session
        .call(req, "restore", Some(log.clone()), &mut ())
        .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(&log).unwrap_or_default()));
    resp.restore.as_ref().map_or(0, |r| r.pid())
}

/// The line of /proc/`pid`/maps of the mapping that holds `addr`.
fn maps_line(pid: i32, addr: u64) -> String {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find(|l| {
            let (a, b) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            (a..b).contains(&addr)
        })
        .unwrap_or_else(|| panic!("{pid} maps nothing at {addr:#x}:\n{maps}"))
        .to_string()
}

/// The offset in `template` at which `pid` maps its region (from /proc/PID/maps).
fn template_offset(pid: i32, template: &Path) -> u64 {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let start = format!("{ADDR:x}-{:x} ", ADDR + LEN);
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("{pid} has no region at {ADDR:#x}:\n{maps}"));
    assert!(
        line.ends_with(template.to_str().unwrap()),
        "{pid} does not map the template there: {line}"
    );
    u64::from_str_radix(line.split_whitespace().nth(2).unwrap(), 16).unwrap()
}
