//! xenvault-repo: a deduplicated, compressed, encrypted store for disk images.
//!
//! Disks are cut into fixed-size chunks aligned to disk offsets; chunks are identified by a
//! keyed BLAKE3 hash, compressed with zstd, encrypted with AES-256-GCM and packed into pack
//! files. A restore point (manifest) lists, per disk, the ids of content-addressed index
//! pages, so an incremental re-uses unchanged pages and every restore point stands alone.
//! Disks are named by position (a VM's VBD userdevice) and picked with [`Manifest::disk`];
//! manifests written before positions were recorded still open (see [`manifest`]).

pub mod backend;
pub mod base_damage;

pub mod cache;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod faults;
pub mod forget;
pub mod gc;
pub mod image;
pub mod index;
pub mod keyring;
pub mod keys;
mod local;
pub mod lock;
pub mod manifest;
pub mod mirror;
pub mod ordered;
pub mod pack;
pub mod prune;
pub mod reader;
pub mod repository;
pub mod retention;
mod s3_lock;
pub mod select;
pub mod source;
pub mod stats;
pub mod store;
pub mod tags;
pub mod verify;
pub mod writer;

pub use backend::{BackendOptions, ObjectStore};
pub use base_damage::BaseDamage;
pub use error::{Error, Result};
pub use keys::{Encryption, KdfParams, Secret};
pub use manifest::{DiskRecord, Manifest, SourceInfo};
pub use reader::DiskReader;
pub use repository::{InitOptions, Repository};
pub use source::{BlockSource, ImageFormat, RawFileSource, VhdFileSource, open_image};
pub use writer::{BackupSession, DiskWriter, WriteStats};

#[cfg(test)]
mod tests;
