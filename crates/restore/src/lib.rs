//! xenvault-restore: getting data back out of restore points without restoring the VM:
//! file-level access (list, find, extract) to the file systems of a stored disk, and
//! instant access to a stored disk over NBD.

mod error;
pub mod files;
pub mod nbd;
mod source;

pub use error::{Error, Result};
pub use source::RepoDisk;
