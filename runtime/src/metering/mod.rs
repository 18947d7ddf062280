//! Metering, the live side: what the shim does to an invocation's cgroup while it runs.
//!
//! * [`meter`]: samples memory and reads the exact peak, CPU time and OOM kills of one
//!   invocation, then writes its record ([`Meter`] → [`Measured`] → record).
//! * [`autotune`]: follows a function's memory hull by rewriting the cgroup's memory limit
//!   as the invocation runs ([`Autotuner`]).
//!
//! Both need a cgroup, so they live in the runtime; what they produce and consume (records,
//! hulls) and what is computed from it (prices, recommendations) is the kernel-free crate
//! `trenv_meter`, which the CLI uses without linking the runtime.

pub mod autotune;
pub mod meter;

pub use autotune::{AutotuneError, AutotuneReport, Autotuner};
pub use meter::{Measured, Meter, MeterConfig, MeterError};
