//! Replication of VMs to an SR of the same pool or of another pool, for disaster recovery.
//!
//! - **Full**: the source VM is snapshotted (the engine's snapshot hygiene: intents, tags,
//!   removal on failure), and a new halted VM with the same record and a copy of every
//!   disk is made on the target SR: the *replica*, named after the VM, the job and the
//!   date, tagged, carrying the source VM's uuid and the job in `other_config`, with
//!   `start` blocked so that nobody boots it by mistake.
//! - **Incremental**: later runs snapshot the source again, ask CBT what changed since the
//!   previous replication snapshot (kept metadata-only, as backups keep their base), read
//!   only that over NBD and write only those sectors onto the replica's disks (a VHD with
//!   partial sector bitmaps, the restore crate's differential upload). The replica is
//!   snapshotted before each update and reverted to that snapshot when the update fails.
//! - **From a repository**: the replica is brought to the newest restore point of the VM
//!   (a differential restore onto each of its disks) instead of reading the pool.
//! - **Failover and test** ([`replica`]): unblock, map networks, start, and stop further
//!   updates; or boot a clone on an isolated network and remove it again.

mod copy;
mod error;
pub mod from_repo;
mod nbd_disk;
pub mod replica;
pub mod replicate;
pub mod report;
pub mod tags;

pub use error::Error;
pub use replicate::{Mode, ReplicateOptions, replicate};
pub use report::{DiskReplication, Method, ReplicationReport, Status, VmReplication};
