//! The node: host settings trenv's start path depends on ([`tune`]), and keeping
//! long-lived trenv processes small ([`trim`]).

pub mod trim;
pub mod tune;

pub use tune::*;
