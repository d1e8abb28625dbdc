//! The whole catalog as data, for xenvault's own configuration backup: every table's rows
//! (web sessions aside: a restored server asks everyone to log in again) and the key that
//! seals its secrets, so that the secrets open again wherever the dump is loaded. The dump
//! is plaintext secrets' equivalent: whoever stores it encrypts it.
//!
//! Tables and columns are read from the database itself, so tables added by later
//! migrations are carried without a change here. Loading inserts by column name into a
//! catalog migrated to this build's schema (a dump of an older schema loads as long as no
//! migration removed a column it has); a dump of a newer schema is refused.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::db::{Conn, Engine, Value, params};
use crate::error::{Error, Result};
use crate::migrations::SCHEMA_VERSION;
use crate::secrets::SecretKey;
use crate::{Catalog, create_private_dir};

/// Tables left out of a dump: the schema's own bookkeeping and the web sessions.
const NOT_DUMPED: &[&str] = &["schema_version", "sessions"];

/// Everything a catalog holds, with the key of its secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogDump {
    pub schema_version: i64,
    /// The data directory's `catalog.key`, hex.
    key: String,
    /// In creation order, so a table comes after the tables its rows refer to.
    pub tables: Vec<TableDump>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDump {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<DumpValue>>,
}

/// A column value: JSON null, a number, a string, or `{"bytes": "<hex>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DumpValue {
    Null,
    Int(i64),
    Text(String),
    Bytes { bytes: String },
}

impl CatalogDump {
    /// How many rows `table` had (0 for a table the dump does not have).
    pub fn rows(&self, table: &str) -> usize {
        self.tables.iter().find(|t| t.name == table).map_or(0, |t| t.rows.len())
    }
}

impl From<Value> for DumpValue {
    fn from(value: Value) -> Self {
        match value {
            Value::Null => DumpValue::Null,
            Value::Int(v) => DumpValue::Int(v),
            Value::Text(v) => DumpValue::Text(v),
            Value::Bytes(v) => DumpValue::Bytes { bytes: hex::encode(v) },
        }
    }
}

impl DumpValue {
    fn into_value(self, table: &str) -> Result<Value> {
        Ok(match self {
            DumpValue::Null => Value::Null,
            DumpValue::Int(v) => Value::Int(v),
            DumpValue::Text(v) => Value::Text(v),
            DumpValue::Bytes { bytes } => Value::Bytes(
                hex::decode(&bytes).map_err(|_| Error::Corrupt(format!("dump of table {table}: bytes not in hex")))?,
            ),
        })
    }
}

impl Catalog {
    /// Every table's rows, read in one transaction (a consistent picture while jobs run).
    pub async fn dump(&self) -> Result<CatalogDump> {
        let engine = self.db.engine().await;
        let mut tx = self.db.begin().await?;
        let mut tables = Vec::new();
        for name in table_names(&mut tx, engine).await? {
            let columns = column_names(&mut tx, engine, &name).await?;
            let sql = format!("SELECT {} FROM {name} ORDER BY 1", quoted(&columns));
            let rows = tx.query(&sql, params![]).await?;
            let rows =
                rows.into_iter().map(|row| row.into_values().into_iter().map(DumpValue::from).collect()).collect();
            tables.push(TableDump { name, columns, rows });
        }
        tx.commit().await?;
        Ok(CatalogDump { schema_version: SCHEMA_VERSION, key: hex::encode(self.key.bytes()), tables })
    }

    /// Opens the catalog of `data_dir`/`database` (as [`Catalog::open`]) with `dump` loaded
    /// into it: its key becomes the data directory's, its rows the catalog's. A catalog
    /// that holds any row of the dumped tables, or a data directory with another key, is
    /// refused unless `replace`, which empties the tables first. The rows go in in one
    /// transaction: on an error nothing is loaded.
    pub async fn restore_dump(
        data_dir: &Path,
        database: Option<&str>,
        dump: CatalogDump,
        replace: bool,
    ) -> Result<Catalog> {
        if dump.schema_version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew { found: dump.schema_version, known: SCHEMA_VERSION });
        }
        let key = hex::decode(&dump.key).map_err(|_| Error::Corrupt("the dump's catalog key is not hex".into()))?;
        create_private_dir(data_dir)?;
        SecretKey::install(data_dir, &key, replace)?;
        let catalog = Catalog::open(data_dir, database).await?;
        catalog.load(dump.tables, replace).await?;
        Ok(catalog)
    }

    async fn load(&self, tables: Vec<TableDump>, replace: bool) -> Result<()> {
        let engine = self.db.engine().await;
        let mut tx = self.db.begin().await?;
        let present = table_names(&mut tx, engine).await?;
        for table in &tables {
            if !present.contains(&table.name) || NOT_DUMPED.contains(&table.name.as_str()) {
                return Err(Error::Corrupt(format!("the dump has a table {:?} this catalog does not", table.name)));
            }
            let columns = column_names(&mut tx, engine, &table.name).await?;
            if let Some(unknown) = table.columns.iter().find(|c| !columns.contains(c)) {
                return Err(Error::Corrupt(format!(
                    "the dump's table {} has a column {unknown:?} it lacks",
                    table.name
                )));
            }
        }
        if replace {
            // Referring tables first; sessions too, since their users go.
            for name in present.iter().rev() {
                if name != "schema_version" {
                    tx.execute(&format!("DELETE FROM {name}"), params![]).await?;
                }
            }
        } else {
            for table in &tables {
                let count = tx.query_one(&format!("SELECT COUNT(*) FROM {}", table.name), params![]).await?.int(0)?;
                if count > 0 {
                    return Err(Error::Conflict(format!(
                        "the catalog is not empty (table {} has {count} rows): restore into a new one, or replace it",
                        table.name
                    )));
                }
            }
        }
        for table in tables {
            let placeholders: Vec<String> = (1..=table.columns.len()).map(|i| format!("${i}")).collect();
            let sql =
                format!("INSERT INTO {} ({}) VALUES ({})", table.name, quoted(&table.columns), placeholders.join(", "));
            for row in table.rows {
                if row.len() != table.columns.len() {
                    return Err(Error::Corrupt(format!(
                        "a row of table {} has the wrong number of values",
                        table.name
                    )));
                }
                let values = row.into_iter().map(|v| v.into_value(&table.name)).collect::<Result<Vec<_>>>()?;
                tx.execute(&sql, values).await?;
            }
        }
        if engine == Engine::Postgres {
            restart_identities(&mut tx).await?;
        }
        tx.commit().await
    }
}

/// The catalog's tables in creation order (a referenced table before its referrers).
async fn table_names(tx: &mut Conn<'_>, engine: Engine) -> Result<Vec<String>> {
    let sql = match engine {
        Engine::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        }
        Engine::Postgres => {
            "SELECT c.relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY c.oid"
        }
    };
    let rows = tx.query(sql, params![]).await?;
    let names = rows.iter().map(|row| row.text(0)).collect::<Result<Vec<_>>>()?;
    Ok(names.into_iter().filter(|name| !NOT_DUMPED.contains(&name.as_str())).collect())
}

async fn column_names(tx: &mut Conn<'_>, engine: Engine, table: &str) -> Result<Vec<String>> {
    let (sql, position) = match engine {
        Engine::Sqlite => ("SELECT name FROM pragma_table_info($1) ORDER BY cid", 0),
        Engine::Postgres => (
            "SELECT column_name::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name::TEXT = $1 ORDER BY ordinal_position",
            0,
        ),
    };
    let rows = tx.query(sql, params![table]).await?;
    rows.iter().map(|row| row.text(position)).collect()
}

/// Column names quoted for SQL (a column may be named like a keyword).
fn quoted(columns: &[String]) -> String {
    columns.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect::<Vec<_>>().join(", ")
}

/// PostgreSQL's identity columns count on from the loaded rows' highest value, so the next
/// task or log line does not collide with a loaded one.
async fn restart_identities(tx: &mut Conn<'_>) -> Result<()> {
    let identities = tx
        .query(
            "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
            params![],
        )
        .await?;
    for row in identities {
        let (table, column) = (row.text(0)?, row.text(1)?);
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX(\"{column}\"), 0) + 1, false) \
             FROM {table}"
        );
        tx.query(&sql, params![]).await?;
    }
    Ok(())
}
