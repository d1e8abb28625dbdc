//! Backup jobs as a service: the job model (what the catalog stores and the API serves),
//! the cron scheduler behind a controllable clock, the runner that turns a run into engine
//! work and a task tree, retention after successful runs, and notifications. Besides
//! backups: mirror jobs (repository to repository) and pool-metadata jobs (the pool's
//! database) and config-backup jobs (the server's own configuration).

pub mod config_backup;
pub mod cron;
pub mod error;
pub mod mirror;
pub mod model;
pub mod offline;
mod pool_metadata;
pub mod runner;
pub mod scheduler;
pub mod selection;
pub mod snapshot_only;

pub use error::Error;
