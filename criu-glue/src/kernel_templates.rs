//! The kernel backend of memory templates: the `trenv-mmt` module
//! (kernel-patches/trenv-mmt, whose README.md is the reference for the calls).
//!
//! A pool file registered once with the module can be attached to a private anonymous
//! mapping of the calling process: page tables filled at once with the template's pages,
//! read-only, copied on write, and the mapping stays anonymous (MADV_DONTNEED reads
//! zeros afterwards, MADV_FREE works). Without the module (a stock kernel), [`Device::open`]
//! answers `None` and templates are restored as private mappings of the pool file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Where the module's device appears.
pub const DEVICE: &str = "/dev/trenv-mmt";
/// The version of the module's calls this code speaks.
pub const API_VERSION: i32 = 1;

/// `struct trenv_mmt_register` of trenv_mmt.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RegisterArg {
    fd: i32,
    flags: u32,
    pages: u64,
}

/// `struct trenv_mmt_attach` of trenv_mmt.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct AttachArg {
    fd: i32,
    flags: u32,
    offset: u64,
    addr: u64,
    length: u64,
}

/// `struct trenv_mmt_query` of trenv_mmt.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct QueryArg {
    fd: i32,
    flags: u32,
    registered: u32,
    stale: u32,
    dax: u32,
    this_retiring: u32,
    pages: u64,
    attaches: u64,
    templates: u64,
    retiring: u64,
}

const MAGIC: u8 = 0xB7;
nix::ioctl_none!(mmt_version, MAGIC, 0);
nix::ioctl_readwrite!(mmt_register, MAGIC, 1, RegisterArg);
nix::ioctl_readwrite!(mmt_unregister, MAGIC, 2, RegisterArg);
nix::ioctl_write_ptr!(mmt_attach, MAGIC, 3, AttachArg);
nix::ioctl_readwrite!(mmt_query, MAGIC, 4, QueryArg);

/// What the module knows of a pool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub registered: bool,
    /// The file changed (size, modification or change time) since it was registered.
    pub stale: bool,
    /// The pool is fsdax (persistent memory or CXL).
    pub dax: bool,
    pub pages: u64,
    /// Successful attaches of this template so far.
    pub attaches: u64,
    /// Templates registered in the module, all files.
    pub templates: u64,
    /// Unregistered DAX templates whose pages are still mapped somewhere.
    pub retiring: u64,
    /// This file's template is one of them.
    pub this_retiring: bool,
}

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Register,
    Unregister,
    Attach,
    Query,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Register => "registering",
            Call::Unregister => "unregistering",
            Call::Attach => "attaching",
            Call::Query => "querying",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelTemplateError {
    #[error("opening {DEVICE}: {0} (the device is for root only)")]
    Open(io::Error),
    #[error(
        "the trenv-mmt module speaks version {found} of its calls, trenv {API_VERSION}: \
         load the module built from this trenv's kernel-patches/trenv-mmt"
    )]
    Version { found: i32 },
    #[error(
        "{call} the kernel template {path}: it is not registered (register it first; \
         after `trenv template rm` it is gone)"
    )]
    NotRegistered { call: Call, path: PathBuf },
    #[error(
        "{call} the kernel template {path}: its pool file changed since it was registered \
         (unregister it and make the template anew)"
    )]
    Stale { call: Call, path: PathBuf },
    #[error("registering {path}: it is already registered")]
    AlreadyRegistered { path: PathBuf },
    #[error(
        "registering {path}: kernel templates need a pool file on tmpfs or on an fsdax \
         filesystem"
    )]
    UnsupportedPool { path: PathBuf },
    #[error(
        "attaching {path} at {addr:#x}+{length:#x}: the range is not inside one mapping of \
         this process"
    )]
    NotMapped {
        path: PathBuf,
        addr: u64,
        length: u64,
    },
    #[error(
        "attaching {path} at {addr:#x}: the mapping there is not private anonymous memory, \
         or the range is not page-aligned"
    )]
    NotAnonymous { path: PathBuf, addr: u64 },
    #[error("attaching {path} at {addr:#x}: part of the range already has pages")]
    Busy { path: PathBuf, addr: u64 },
    #[error("attaching {path}: bytes {offset:#x}+{length:#x} are beyond the template's end")]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        length: u64,
    },
    #[error("{call} the kernel template {path}: {source}")]
    Other {
        call: Call,
        path: PathBuf,
        source: io::Error,
    },
}

/// The module's device, open.
#[derive(Debug)]
pub struct Device {
    file: File,
}

impl Device {
    /// The device if the running kernel has the module loaded, `None` if it does not
    /// (templates then map the pool file), an error if it is there but unusable.
    pub fn open() -> Result<Option<Device>, KernelTemplateError> {
        Self::open_at(Path::new(DEVICE))
    }

    pub fn open_at(path: &Path) -> Result<Option<Device>, KernelTemplateError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KernelTemplateError::Open(e)),
        };
        // SAFETY: the call takes no argument.
        let found = unsafe { mmt_version(file.as_raw_fd()) }
            .map_err(|e| KernelTemplateError::Open(e.into()))?;
        if found != API_VERSION {
            return Err(KernelTemplateError::Version { found });
        }
        Ok(Some(Device { file }))
    }

    /// Registers the pool file `pool` (at `path`, for messages); answers its pages.
    pub fn register(&self, pool: &File, path: &Path) -> Result<u64, KernelTemplateError> {
        self.by_file(Call::Register, pool, path)
    }

    /// Unregisters the pool file; its memory is released once no process maps it.
    pub fn unregister(&self, pool: &File, path: &Path) -> Result<u64, KernelTemplateError> {
        self.by_file(Call::Unregister, pool, path)
    }

    /// REGISTER or UNREGISTER of `pool`: the two calls take the same argument.
    fn by_file(&self, call: Call, pool: &File, path: &Path) -> Result<u64, KernelTemplateError> {
        let mut arg = RegisterArg {
            fd: pool.as_raw_fd(),
            ..Default::default()
        };
        let dev = self.file.as_raw_fd();
        // SAFETY: arg is the module's struct, read and written only during the call.
        let done = unsafe {
            match call {
                Call::Register => mmt_register(dev, &mut arg),
                _ => mmt_unregister(dev, &mut arg),
            }
        };
        done.map_err(|e| error(call, path, e, None))?;
        Ok(arg.pages)
    }

    /// Fills `[addr, addr + length)` of this process (a private anonymous mapping) with
    /// the template's pages from byte `offset` of the pool file.
    ///
    /// # Safety
    /// The range's contents are replaced: nothing in this process may hold references
    /// into it that rely on its previous contents.
    pub unsafe fn attach(
        &self,
        pool: BorrowedFd<'_>,
        path: &Path,
        offset: u64,
        addr: u64,
        length: u64,
    ) -> Result<(), KernelTemplateError> {
        let arg = AttachArg {
            fd: pool.as_raw_fd(),
            flags: 0,
            offset,
            addr,
            length,
        };
        // SAFETY: the module reads arg during the call; the caller vouches for the range.
        unsafe { mmt_attach(self.file.as_raw_fd(), &arg) }.map_err(|e| {
            error(
                Call::Attach,
                path,
                e,
                Some(AttachContext {
                    offset,
                    addr,
                    length,
                }),
            )
        })?;
        Ok(())
    }

    pub fn query(&self, pool: &File, path: &Path) -> Result<Query, KernelTemplateError> {
        let mut arg = QueryArg {
            fd: pool.as_raw_fd(),
            ..Default::default()
        };
        // SAFETY: as in register.
        unsafe { mmt_query(self.file.as_raw_fd(), &mut arg) }
            .map_err(|e| error(Call::Query, path, e, None))?;
        Ok(Query {
            registered: arg.registered != 0,
            stale: arg.stale != 0,
            dax: arg.dax != 0,
            pages: arg.pages,
            attaches: arg.attaches,
            templates: arg.templates,
            retiring: arg.retiring,
            this_retiring: arg.this_retiring != 0,
        })
    }
}

struct AttachContext {
    offset: u64,
    addr: u64,
    length: u64,
}

/// The module's answer as an error that says what was wrong (trenv_mmt.c's errnos).
fn error(
    call: Call,
    path: &Path,
    errno: nix::errno::Errno,
    attach: Option<AttachContext>,
) -> KernelTemplateError {
    use nix::errno::Errno;
    let path = path.to_path_buf();
    match (errno, attach) {
        (Errno::ENOENT, _) => KernelTemplateError::NotRegistered { call, path },
        (Errno::ESTALE, _) => KernelTemplateError::Stale { call, path },
        (Errno::EEXIST, None) if call == Call::Register => {
            KernelTemplateError::AlreadyRegistered { path }
        }
        (Errno::EOPNOTSUPP, None) if call == Call::Register => {
            KernelTemplateError::UnsupportedPool { path }
        }
        (Errno::EFAULT, Some(a)) => KernelTemplateError::NotMapped {
            path,
            addr: a.addr,
            length: a.length,
        },
        (Errno::EINVAL, Some(a)) => KernelTemplateError::NotAnonymous { path, addr: a.addr },
        (Errno::EBUSY, Some(a)) => KernelTemplateError::Busy { path, addr: a.addr },
        (Errno::ERANGE, Some(a)) => KernelTemplateError::OutOfRange {
            path,
            offset: a.offset,
            length: a.length,
        },
        (e, _) => KernelTemplateError::Other {
            call,
            path,
            source: e.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The layouts of trenv_mmt.h's structs, which the ioctl numbers encode.
    #[test]
    fn the_argument_structs_have_the_module_s_layout() {
        assert_eq!(std::mem::size_of::<RegisterArg>(), 16);
        assert_eq!(std::mem::size_of::<AttachArg>(), 32);
        assert_eq!(std::mem::size_of::<QueryArg>(), 56);
        assert_eq!(std::mem::offset_of!(AttachArg, addr), 16);
        assert_eq!(std::mem::offset_of!(QueryArg, pages), 24);
    }

    #[test]
    fn ioctl_numbers_match_the_header() {
        // _IOWR(0xB7, 1, 16 bytes), _IOW(0xB7, 3, 32 bytes), _IO(0xB7, 0) on x86-64.
        assert_eq!(nix::request_code_readwrite!(MAGIC, 1, 16), 0xC010_B701);
        assert_eq!(nix::request_code_write!(MAGIC, 3, 32), 0x4020_B703);
        assert_eq!(nix::request_code_none!(MAGIC, 0), 0xB700);
    }

    #[test]
    fn a_missing_device_means_the_stock_backend() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Device::open_at(&dir.path().join("trenv-mmt"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_device_that_is_not_the_module_is_an_error() {
        // /dev/null answers every ioctl with ENOTTY.
        let err = Device::open_at(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, KernelTemplateError::Open(_)), "{err}");
    }

    #[test]
    fn errnos_become_errors_that_say_what_to_do() {
        use nix::errno::Errno;
        let p = Path::new("/pool/t");
        let e = error(Call::Attach, p, Errno::ESTALE, None);
        assert!(
            e.to_string().contains("changed since it was registered"),
            "{e}"
        );
        let e = error(Call::Register, p, Errno::EOPNOTSUPP, None);
        assert!(e.to_string().contains("tmpfs or on an fsdax"), "{e}");
        let ctx = || {
            Some(AttachContext {
                offset: 0,
                addr: 0x1000,
                length: 0x2000,
            })
        };
        assert!(matches!(
            error(Call::Attach, p, Errno::EFAULT, ctx()),
            KernelTemplateError::NotMapped { .. }
        ));
        assert!(matches!(
            error(Call::Attach, p, Errno::EINVAL, ctx()),
            KernelTemplateError::NotAnonymous { .. }
        ));
        assert!(matches!(
            error(Call::Register, p, Errno::EIO, None),
            KernelTemplateError::Other { .. }
        ));
    }
}
