//! Backup jobs: select VMs of a pool, snapshot them, read their disks with the best
//! strategy the host allows (CBT + NBD, VHD delta, full read), store one restore point
//! per VM in the repository, and leave the host as tidy as it was.

pub mod config;
pub mod error;
pub mod hooks;
pub mod host;
pub mod hygiene;
pub mod inventory;
pub mod job;
pub mod nbd_pool;
pub mod records;
pub mod report;
pub mod selection;
pub mod snapshot;
pub mod store;
pub mod strategy;
pub mod transfer;
pub mod vm_lock;
pub mod xva;

pub use error::Error;
/// XenAPI values, for callers of [`host::Host::call`].
pub use xenvault_xapi_wire::Value;
