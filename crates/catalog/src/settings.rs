//! Server-wide settings documents (e.g. "smtp": the mail server notifications go through),
//! typed by the caller and stored as JSON, each with an optional sealed secret (the SMTP
//! password) that reads never return with the document.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::params;
use crate::error::Result;
use crate::{Catalog, now, to_json};

fn secret_context(name: &str) -> String {
    format!("setting:{name}")
}

impl Catalog {
    /// Stores the document `name`; `secret` none keeps a stored secret.
    pub async fn put_setting<T: Serialize>(&self, name: &str, value: &T, secret: Option<&str>) -> Result<()> {
        let value = to_json(value)?;
        match secret {
            Some(secret) => {
                let sealed = self.key.seal(&secret_context(name), secret)?;
                self.db
                    .execute(
                        "INSERT INTO settings (name, value, secret, updated_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value, secret = excluded.secret,
                         updated_at = excluded.updated_at",
                        params![name, value, sealed, now()],
                    )
                    .await?
            }
            None => {
                self.db
                    .execute(
                        "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                        params![name, value, now()],
                    )
                    .await?
            }
        };
        Ok(())
    }

    pub async fn setting<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let row = self.db.query_opt("SELECT value FROM settings WHERE name = $1", params![name]).await?;
        row.map(|row| row.json(0)).transpose()
    }

    /// The document's secret, opened: for using, never for showing.
    pub async fn setting_secret(&self, name: &str) -> Result<Option<String>> {
        let row = self.db.query_opt("SELECT secret FROM settings WHERE name = $1", params![name]).await?;
        let sealed = match row {
            Some(row) => row.opt_bytes(0)?,
            None => None,
        };
        sealed.map(|sealed| self.key.open(&secret_context(name), &sealed)).transpose()
    }
}
