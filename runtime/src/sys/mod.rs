//! Small kernel helpers every domain uses: the mount table, clocks, file identities,
//! process trees.

pub mod clock;
pub mod confined;
pub mod mountinfo;
pub mod nsops;
pub mod replace;
pub mod run;
pub mod stamp;
pub mod tree;

pub use replace::replace;
pub use stamp::{FileStamp, dir_changed};

/// Opens /dev/null for reading and writing (stdio of processes that get none).
pub fn dev_null() -> std::io::Result<std::os::fd::OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(std::os::fd::OwnedFd::from)
}
