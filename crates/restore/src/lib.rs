//! xenvault-restore: getting data back out of restore points without restoring the VM:
//! file-level access (list, find, extract) to the file systems of a stored disk, and
//! instant access to a stored disk over NBD, and exports as raw, VHD or qcow2; whole VMs
//! and disks back into a pool, and health checks of restore points (boot and no-boot).

pub mod diff;
pub mod differential;
pub mod disk;
mod error;
pub mod export;
pub mod files;
pub mod health;
pub mod mount;
pub mod nbd;
pub mod qcow2;
mod source;
pub mod vm;
pub mod xva;

pub use error::{Error, Result};
pub use source::RepoDisk;
