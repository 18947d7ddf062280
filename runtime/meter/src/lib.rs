//! trenv's metering data, without the kernel.
//!
//! The shim measures invocations live inside a container's cgroup
//! (`trenv_runtime::metering`); everything that only *reads* or *computes with* what it
//! measured lives here, so that the `trenv` CLI and other tools can use it without linking
//! libcontainer, libcgroups or nix:
//!
//! * [`record`]: the invocation records and memory series files of a meter directory
//!   (format, writing, reading).
//! * [`pricing`]: FaaS price models as data (AWS Lambda, Google, Azure, Cloudflare…) and
//!   what one invocation costs under each.
//! * [`hull`]: memory hulls over many runs of a function, the input of live autotuning.
//! * [`recommend`]: the memory size to allocate per price model, from runs at several
//!   memory limits.
//! * [`summary`]: per-function percentiles, failures and mean cost per price model.

pub mod hull;
pub mod pricing;
pub mod recommend;
pub mod record;
pub mod summary;
