//! How replicas and replication snapshots are marked in the pools' `other_config`.
//!
//! Replication snapshots of a source VM carry [`REPLICATION`] instead of the backup's
//! `xenvault.snapshot`, so a backup's hygiene never removes them and replication never
//! removes a backup's base.

/// On a replica (target pool): the uuid of the VM it is a replica of.
pub const REPLICA_OF: &str = "xenvault.replica_of";
/// On a replica: the replication job that keeps it.
pub const REPLICA_JOB: &str = "xenvault.replica_job";
/// On a replica: when the source snapshot it now holds was taken (RFC 3339).
pub const REPLICATED_AT: &str = "xenvault.replicated_at";
/// On a replica updated from a repository: the restore point it holds.
pub const REPLICA_RESTORE_POINT: &str = "xenvault.replica_restore_point";
/// On a replica that was failed over (RFC 3339 time): no update touches it any more.
pub const FAILED_OVER: &str = "xenvault.failed_over";
/// On a snapshot of a replica taken before an update (to revert to when it fails).
pub const REPLICA_SNAPSHOT: &str = "xenvault.replica_snapshot";
/// On a clone a replica test boots: the replica it was cloned from.
pub const REPLICA_TEST: &str = "xenvault.replica_test";
/// The tag replicas get in `tags`.
pub const REPLICA_TAG: &str = "xenvault-replica";

/// On a source VM snapshot: the replication job that took it.
pub const REPLICATION: &str = "xenvault.replication";
/// On a replication snapshot: the replica that holds its content (the next incremental's base).
pub const REPLICATION_BASE: &str = "xenvault.replication_base";

/// The reason given in `blocked_operations` (xapi returns it with `OPERATION_BLOCKED`).
pub const START_BLOCKED: &str = "xenvault replica: fail it over first (xenvault replica failover)";
/// The operations blocked on a replica.
pub const BLOCKED: [&str; 2] = ["start", "start_on"];
