//! Backup jobs: select VMs of a pool, snapshot them, read their disks with the best
//! strategy the host allows (CBT + NBD, VHD delta, full read), store one restore point
//! per VM in the repository, and leave the host as tidy as it was.

pub mod config;
pub mod error;
pub mod hooks;
pub mod hygiene;
pub mod records;
pub mod report;
pub mod selection;
pub mod strategy;

pub use error::Error;
