//! trenv's container runtime layer.
//!
//! Everything that touches the kernel on behalf of a container lives here:
//!
//! * [`zygote`]: libcontainer clones, chdirs and waits on its children, none of which is
//!   safe inside the multi-threaded shim. The shim forks a single-threaded zygote before it
//!   starts any thread; each container operation runs in a fresh child of the zygote.
//! * [`sandbox`]: the operations themselves (create, start, exec, pause, resume, delete),
//!   executed inside such a worker with libcontainer.
//! * [`rootfs`]: mounting the rootfs that containerd hands over.
//! * [`seccomp`]: compiling OCI seccomp profiles with seccompiler and installing them.
//! * [`cgroup`]: stats, limits, pids and OOM events of a container's cgroup (v1 and v2).
//! * [`metering`]: live metering of each invocation (exact memory peak, CPU, times, memory
//!   series) and memory autotuning along a hull; the records, price models and hulls
//!   themselves are the kernel-free crate `trenv_meter`.
//! * [`checkpoint`], [`restore`]: containerd's checkpoint/restore with CRIU (trenv-criu).
//! * [`template`], [`pool`], [`config`]: memory templates on a memory pool.

pub mod cgroup;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod error;
mod executor;
pub mod metering;
pub mod mountinfo;
pub mod node;
pub mod pool;
pub mod ready_template;
pub mod restore;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod template;
pub mod trim;
pub mod zygote;

pub use error::RuntimeError;

/// An id from a client made safe to use as (part of) a file name: anything but ASCII
/// letters, digits, `-`, `_` and `.` becomes `_`.
pub fn file_name_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
