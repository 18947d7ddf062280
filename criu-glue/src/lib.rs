//! trenv's CRIU glue.
//!
//! CRIU is driven over its RPC protocol in `swrk` mode: one `criu swrk` process per
//! operation, talking over a SEQPACKET socketpair, so that descriptors (restored stdio,
//! namespaces, template files) can be handed to it with `inherit_fd` — something only swrk
//! mode allows. See docs/design/templates.md §3.
//!
//! * [`Criu`] finds the binary and checks its version (trenv needs 4.1 or newer);
//! * [`Session`] runs one request, answering CRIU's notifications through [`Notify`];
//! * [`rpc`] holds the protocol's messages, generated from CRIU 4.1.1's `rpc.proto`;
//! * [`image`] reads and writes CRIU image files, [`template`] turns an image into a
//!   memory template.

mod error;
pub mod image;
pub mod kernel_templates;
mod swrk;
pub mod template;
pub mod tmpfs;
mod version;

pub use error::{CriuError, Exit, NoAnswer, Refusal};
pub use swrk::{Ahead, Criu, FdPlan, Notify, Purpose, Session};
pub use version::{CriuVersion, MIN_VERSION};

#[allow(clippy::all, missing_docs, unused_qualifications)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/criu_proto/mod.rs"));
}

/// CRIU's RPC messages (`criu_req`, `criu_resp`, `criu_opts`, …).
pub use generated::rpc;
/// Image messages trenv reads or rewrites.
pub use generated::{fdinfo, mm, pagemap, pstree, regfile, vma};
