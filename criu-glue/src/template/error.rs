//! What can go wrong while turning an image into a template, each saying what to do.

use std::path::PathBuf;

use crate::image::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the checkpoint's process tree (pstree.img) holds no process; the image is corrupt")]
    NoProcess,
    #[error("the checkpoint is incremental (pages in a parent image): templates need a full dump")]
    Incremental,
    #[error(
        "the checkpoint's page map does not match its pages file ({mapped} bytes mapped, \
         {len} in {path}); the image is corrupt"
    )]
    PagesLength {
        mapped: u64,
        len: u64,
        path: PathBuf,
    },
    #[error(
        "the checkpoint's page map does not match its pages file (page at {at} beyond the \
         {len} bytes of {path}); the image is corrupt"
    )]
    PageBeyondEnd { at: u64, len: u64, path: PathBuf },
    #[error(
        "the memory pool is full: writing {needed} bytes of template to {path} failed ({source}); \
         free space in the pool or remove templates (trenv template rm)"
    )]
    PoolFull {
        path: PathBuf,
        needed: u64,
        source: std::io::Error,
    },
    #[error("writing the template file {path}: {source}")]
    Pool {
        path: PathBuf,
        source: std::io::Error,
    },
}
