#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job definition that cannot run as written (bad cron line, unknown zone, missing pool).
    #[error("invalid job: {0}")]
    InvalidJob(String),
}
