//! Scale-out: several backup nodes share one catalog (PostgreSQL) and one repository (an
//! S3 bucket). The server plans a run into one task per VM in the catalog's queue
//! ([`planner`]); each node ([`worker`]) takes tasks up to its concurrency and within its
//! affinity, backs the VMs up with the same code as the server's own runs, and records
//! their results; a lost node's tasks go back to the queue when its lease expires, and the
//! next taker cleans what it left on the pool ([`cleanup`]). See docs/scale-out.md.

pub mod cleanup;
pub mod connect;
pub mod planner;
pub mod record;
pub mod worker;
