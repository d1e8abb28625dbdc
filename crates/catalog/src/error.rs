use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot open the catalog: {0}")]
    Connect(String),
    #[error("catalog database: {0}")]
    Database(String),
    #[error("catalog data damaged: {0}")]
    Corrupt(String),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("catalog key {path}: {message}")]
    Key { path: String, message: String },
    #[error("the catalog has schema version {found}, newer than this xenvault knows ({known}): upgrade xenvault")]
    SchemaTooNew { found: i64, known: i64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
