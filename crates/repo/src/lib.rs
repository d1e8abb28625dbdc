//! xenvault-repo: a deduplicated, compressed, encrypted store for disk images.
//!
//! Disks are cut into fixed-size chunks aligned to disk offsets; chunks are identified by a
//! keyed BLAKE3 hash, compressed with zstd, encrypted with AES-256-GCM and packed into pack
//! files. A restore point (manifest) lists, per disk, the ids of content-addressed index
//! pages, so an incremental re-uses unchanged pages and every restore point stands alone.
//! Disks are named by position (a VM's VBD userdevice) and picked with [`Manifest::disk`];
//! manifests written before positions were recorded still open (see [`manifest`]).
//!
//! # Many writers, no global lock
//!
//! Any number of processes (scale-out nodes, CLI backups, copies) write into one
//! repository at once, also on S3, without a repository-wide lock. What makes it safe:
//! - **Nothing shared is rewritten.** Packs have random 128-bit names, and each pack's
//!   index is an object of its own (`index/<pack>`) written by the pack's writer only;
//!   index pages are content-addressed; a restore point is one new manifest object. Two
//!   writers never write the same object except with the same content.
//! - **Data before index before manifest.** A pack's data is stored before its index is
//!   published, and every pack a restore point needs is stored before its manifest: an
//!   object only ever points at objects already there. A writer that dies leaves
//!   unreferenced packs, never a half restore point; gc collects them later.
//! - **Duplicates are harmless.** Two writers may store the same chunk in two packs;
//!   either copy serves reads, and gc drops the one no manifest references.
//! - **gc coexists with writers** by the two-phase rule of [`gc`]: each writer holds its
//!   own lock object (`locks/<id>`, refreshed), never deduplicates against a condemned
//!   pack, and checks its lock is still held right before it commits its manifest.

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
mod nfs;
pub mod ordered;
pub mod pack;
pub mod prune;
pub mod reader;
mod remote;
pub mod repository;
pub mod retention;
mod s3_lock;
pub mod select;
mod smb;
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
