//! trenv's container runtime layer: everything that touches the kernel on behalf of a
//! container, behind one typed door, [`Runtime`].
//!
//! * [`runtime`]: the facade the shim uses — one method per operation, typed results,
//!   [`RuntimeError`] composed of the domains' errors, each with its [`ErrorKind`].
//! * [`worker`]: libcontainer clones, chdirs and waits on its children, none of which is
//!   safe inside the multi-threaded shim. The shim forks a single-threaded zygote before it
//!   starts any thread; each operation runs in a fresh child of it. Its protocol is private.
//! * [`container`]: the operations on youki's libcontainer (create, exec, start, pause,
//!   resume, delete), the spec, the rootfs, seccomp via seccompiler, the cgroup (v1, v2).
//! * [`snapshot`]: containerd's checkpoint and restore with CRIU (trenv-criu).
//! * [`template`]: memory templates — building, storing, checking, made when a function is
//!   ready — and the memory pool their files live in ([`template::mempool`]).
//! * [`metering`]: live metering of each invocation (exact memory peak, CPU, times, memory
//!   series) and memory autotuning along a hull; the records, price models and hulls
//!   themselves are the kernel-free crate `trenv_meter`.
//! * [`node`]: host tuning and keeping trenv's processes small.
//! * [`sys`]: the mount table, clocks, file identities.
//! * [`config`]: trenv's configuration file; [`paths`]: its well-known paths;
//!   [`function_rules`]: its `[[functions]]` rules (which containers are which function).
//! * [`error`]: what the domains' errors share ([`ErrorKind`], the cause chain).
//!
//! Dependencies point one way: `sys`/`error` ← `container` ← `metering`, `snapshot` ←
//! `template` ← `worker` ← `runtime`.

pub mod config;
pub mod container;
pub mod error;
pub mod function_rules;
pub mod metering;
pub mod node;
pub mod paths;
pub mod runtime;
pub mod sandbox;
pub mod snapshot;
pub mod sys;
pub mod template;
pub mod worker;

pub use error::ErrorKind;
pub use runtime::{CheckpointRequest, ChildFds, Restored, Runtime, RuntimeError};
pub use trenv_meter::record::file_name_safe;
