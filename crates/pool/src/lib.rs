//! A XenServer/XCP-ng pool as xenvault talks to it: the registry of pools and their
//! secrets, login, typed records, lookups, CBT queries and our snapshots on the host.
//! Backup (engine), restore and the service share it.

pub mod config;
pub mod error;
pub mod host;
pub mod hygiene;
pub mod inventory;
pub mod records;
pub mod snapshot;

pub use error::Error;
pub use host::Host;
/// XenAPI values, for callers of [`Host::call`].
pub use xenvault_xapi_wire::Value;
