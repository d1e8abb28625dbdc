//! Backup jobs: select VMs of a pool, snapshot them, read their disks with the best
//! strategy the host allows (CBT + NBD, VHD delta, full read), store one restore point
//! per VM in the repository, and leave the host as tidy as it was. The pool side
//! (registry, login, records, our snapshots) is `xenvault-pool`.

pub mod body;
pub mod error;
pub mod hooks;
pub mod job;
pub mod nbd_pool;
pub mod pool_metadata;
pub mod report;
pub mod selection;
pub mod store;
pub mod strategy;
pub mod throttle;
pub mod transfer;
pub mod vm_lock;
pub mod xva;

pub use error::Error;
/// XenAPI values, for callers of [`xenvault_pool::Host::call`].
pub use xenvault_pool::Value;
