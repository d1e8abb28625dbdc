//! One SQL dialect over two engines: embedded SQLite (rusqlite) and PostgreSQL
//! (tokio-postgres). Statements are written the PostgreSQL way (`$1` parameters) with only
//! portable types (BIGINT, TEXT); SQLite reads `$N` as `?N`. Schema text may use the tokens
//! `{id}` (an auto-numbered primary key) and `{blob}` (bytes), the only two words the
//! engines spell differently.
//!
//! Each catalog holds one connection behind an async mutex: the catalog's statements are
//! index lookups and small writes, and one connection keeps SQLite's single writer and
//! PostgreSQL's transactions simple. SQLite statements run inline on the calling task (a
//! thread hop per statement would cost more than the statement).

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::error::{Error, Result};

/// A statement parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        // Byte counts and sizes: far below 2^63.
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Self {
        Value::Int(v.timestamp_millis())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters of one statement: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::db::Value::from($v)),*] };
}
pub(crate) use params;

/// One result row; getters name the column position and fail with a clear message on a
/// type the schema does not give that column.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| Error::Corrupt(format!("row has no column {i}")))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(Error::Corrupt(format!("column {i}: expected an integer, found {other:?}"))),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| Error::Corrupt(format!("column {i} is null")))
    }

    pub fn uint(&self, i: usize) -> Result<u64> {
        u64::try_from(self.int(i)?).map_err(|_| Error::Corrupt(format!("column {i} is negative")))
    }

    pub fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.int(i)? != 0)
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(Error::Corrupt(format!("column {i}: expected text, found {other:?}"))),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or_else(|| Error::Corrupt(format!("column {i} is null")))
    }

    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            Value::Bytes(v) => Ok(Some(v.clone())),
            other => Err(Error::Corrupt(format!("column {i}: expected bytes, found {other:?}"))),
        }
    }

    pub fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>> {
        self.opt_int(i)?.map(millis_to_time).transpose()
    }

    pub fn time(&self, i: usize) -> Result<DateTime<Utc>> {
        millis_to_time(self.int(i)?)
    }

    pub fn into_values(self) -> Vec<Value> {
        self.0
    }

    /// A column holding JSON text of `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        let text = self.text(i)?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("column {i}: {e}")))
    }
}

fn millis_to_time(ms: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single().ok_or_else(|| Error::Corrupt(format!("time {ms} ms out of range")))
}

/// A query's conditions built from optional filters: `and("col = {}", v)` appends
/// ` AND col = $N` with `v` as parameter N (every `{}` of the condition is that parameter).
#[derive(Default)]
pub(crate) struct Filters {
    sql: String,
    values: Vec<Value>,
}

impl Filters {
    pub fn and(&mut self, condition: &str, value: impl Into<Value>) {
        self.values.push(value.into());
        let placeholder = format!("${}", self.values.len());
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition.replace("{}", &placeholder));
    }

    /// ` WHERE 1 = 1 AND ...` (to follow a FROM clause) and the parameters.
    pub fn into_where(self) -> (String, Vec<Value>) {
        (format!(" WHERE 1 = 1{}", self.sql), self.values)
    }
}

/// What the database engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub(crate) struct Db {
    conn: Mutex<Connection>,
}

enum Connection {
    Sqlite(rusqlite::Connection),
    Postgres(PgConnection),
}

struct PgConnection {
    url: String,
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    in_transaction: bool,
}

impl PgConnection {
    async fn connect(url: &str) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| Error::Connect(format!("PostgreSQL at {}: {}", redact_url(url), e.message())))?;
        // The connection object does the I/O; it ends when the client is dropped.
        tokio::spawn(connection);
        Ok(PgConnection { url: url.to_string(), client, statements: HashMap::new(), in_transaction: false })
    }

    async fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await.map_err(|e| sql_error(sql, e))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// An engine's error, told apart when it is a violated constraint (a name taken, a row
/// still referenced): that is the caller's conflict, not a broken database.
trait EngineError {
    fn is_constraint(&self) -> bool;
    fn message(&self) -> String;
}

impl EngineError for rusqlite::Error {
    fn is_constraint(&self) -> bool {
        self.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
    }

    fn message(&self) -> String {
        self.to_string()
    }
}

impl EngineError for tokio_postgres::Error {
    fn is_constraint(&self) -> bool {
        // SQLSTATE class 23: integrity constraint violation.
        self.code().is_some_and(|c| c.code().starts_with("23"))
    }

    /// The server's message (the error's own Display says only "db error").
    fn message(&self) -> String {
        match self.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => format!("{}: {detail}", db.message()),
                None => db.message().to_string(),
            },
            None => self.to_string(),
        }
    }
}

fn sql_error(sql: &str, e: impl EngineError) -> Error {
    if e.is_constraint() {
        return Error::Conflict(e.message());
    }
    let first_line = sql.trim().lines().next().unwrap_or_default();
    Error::Database(format!("{} (in: {first_line})", e.message()))
}

/// `$N` → `?N`: SQLite's numbered parameters.
fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Expands the schema tokens for `engine`.
pub(crate) fn schema_sql(engine: Engine, sql: &str) -> String {
    let (id, blob) = match engine {
        Engine::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        Engine::Postgres => ("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "BYTEA"),
    };
    sql.replace("{id}", id).replace("{blob}", blob)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Checked here, since `accepts` lets every value through: a value bound to a
        // parameter of another type would otherwise be sent as wrong bytes.
        let refused = || format!("cannot bind {self:?} to a parameter of type {ty}").into();
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if <i64 as ToSql>::accepts(ty) => v.to_sql(ty, out),
            Value::Text(v) if <String as ToSql>::accepts(ty) => v.to_sql(ty, out),
            Value::Bytes(v) if <Vec<u8> as ToSql>::accepts(ty) => v.to_sql(ty, out),
            _ => Err(refused()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn sqlite_row(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
            ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
            ValueRef::Real(v) => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    i,
                    rusqlite::types::Type::Real,
                    format!("unexpected real {v}").into(),
                ));
            }
        });
    }
    Ok(Row(values))
}

fn pg_row(row: &tokio_postgres::Row) -> Result<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(Value::Bytes))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            row.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text))
        } else {
            return Err(Error::Database(format!("column {} has unsupported type {ty}", column.name())));
        };
        values.push(value.map_err(|e| Error::Database(e.to_string()))?.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl Db {
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Self> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| Error::Connect(format!("SQLite database {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(|e| sql_error("busy_timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| sql_error("journal_mode", e))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| sql_error("foreign_keys", e))?;
        // WAL makes NORMAL durable against process crashes; the catalog is not the backup data.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| sql_error("synchronous", e))?;
        Ok(Db { conn: Mutex::new(Connection::Sqlite(conn)) })
    }

    pub async fn open_postgres(url: &str) -> Result<Self> {
        Ok(Db { conn: Mutex::new(Connection::Postgres(PgConnection::connect(url).await?)) })
    }

    pub async fn engine(&self) -> Engine {
        match &*self.conn.lock().await {
            Connection::Sqlite(_) => Engine::Sqlite,
            Connection::Postgres(_) => Engine::Postgres,
        }
    }

    /// The connection, outside any transaction: one a dropped (cancelled or failed)
    /// transaction left open is rolled back first (SQLite's are already, by `Conn`'s
    /// drop), and a lost PostgreSQL connection is opened again.
    pub async fn conn(&self) -> Result<Conn<'_>> {
        let mut guard = self.conn.lock().await;
        match &mut *guard {
            Connection::Sqlite(conn) => {
                if !conn.is_autocommit() {
                    conn.execute_batch("ROLLBACK").map_err(|e| sql_error("ROLLBACK", e))?;
                }
            }
            Connection::Postgres(pg) => {
                if pg.client.is_closed() {
                    *pg = PgConnection::connect(&pg.url.clone()).await?;
                } else if pg.in_transaction {
                    pg.client.batch_execute("ROLLBACK").await.map_err(|e| sql_error("ROLLBACK", e))?;
                    pg.in_transaction = false;
                }
            }
        }
        Ok(Conn { guard })
    }

    /// A transaction: committed by [`Conn::commit`], rolled back if dropped before.
    pub async fn begin(&self) -> Result<Conn<'_>> {
        let mut conn = self.conn().await?;
        match &mut *conn.guard {
            // IMMEDIATE takes the write lock now: no deadlock between two read-then-write
            // transactions of other processes on the same file.
            Connection::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE").map_err(|e| sql_error("BEGIN", e))?,
            Connection::Postgres(pg) => {
                pg.client.batch_execute("BEGIN").await.map_err(|e| sql_error("BEGIN", e))?;
                pg.in_transaction = true;
            }
        }
        Ok(conn)
    }

    pub async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64> {
        self.conn().await?.execute(sql, params).await
    }

    pub async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.conn().await?.query(sql, params).await
    }

    pub async fn query_opt(&self, sql: &str, params: Vec<Value>) -> Result<Option<Row>> {
        self.conn().await?.query_opt(sql, params).await
    }

    pub async fn query_one(&self, sql: &str, params: Vec<Value>) -> Result<Row> {
        self.conn().await?.query_one(sql, params).await
    }
}

/// The held connection (maybe inside a transaction).
pub(crate) struct Conn<'a> {
    guard: MutexGuard<'a, Connection>,
}

/// A SQLite transaction dropped before its commit (an early return, an error) is rolled
/// back now: left open until this catalog's next statement, it would keep the file's
/// write lock, and another process's writers would wait for it and fail with "database
/// is locked". (A PostgreSQL one cannot be ended without waiting: [`Db::conn`] does it.)
impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // Should the rollback fail, the next `Db::conn` tries again.
        if let Connection::Sqlite(c) = &mut *self.guard
            && !c.is_autocommit()
        {
            let _ = c.execute_batch("ROLLBACK");
        }
    }
}

impl Conn<'_> {
    /// Statements without parameters, separated by `;` (schema changes).
    pub async fn batch(&mut self, sql: &str) -> Result<()> {
        match &mut *self.guard {
            Connection::Sqlite(c) => c.execute_batch(sql).map_err(|e| sql_error(sql, e)),
            Connection::Postgres(pg) => pg.client.batch_execute(sql).await.map_err(|e| sql_error(sql, e)),
        }
    }

    pub async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        match &mut *self.guard {
            Connection::Sqlite(c) => {
                let mut statement = c.prepare_cached(&sqlite_sql(sql)).map_err(|e| sql_error(sql, e))?;
                let changed =
                    statement.execute(rusqlite::params_from_iter(params.iter())).map_err(|e| sql_error(sql, e))?;
                Ok(changed as u64)
            }
            Connection::Postgres(pg) => {
                let statement = pg.statement(sql).await?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                pg.client.execute(&statement, &refs).await.map_err(|e| sql_error(sql, e))
            }
        }
    }

    pub async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        match &mut *self.guard {
            Connection::Sqlite(c) => {
                let mut statement = c.prepare_cached(&sqlite_sql(sql)).map_err(|e| sql_error(sql, e))?;
                let columns = statement.column_count();
                let rows = statement
                    .query_map(rusqlite::params_from_iter(params.iter()), |row| sqlite_row(row, columns))
                    .map_err(|e| sql_error(sql, e))?;
                rows.collect::<rusqlite::Result<Vec<Row>>>().map_err(|e| sql_error(sql, e))
            }
            Connection::Postgres(pg) => {
                let statement = pg.statement(sql).await?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                let rows = pg.client.query(&statement, &refs).await.map_err(|e| sql_error(sql, e))?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    pub async fn query_opt(&mut self, sql: &str, params: Vec<Value>) -> Result<Option<Row>> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(Error::Database(format!("expected at most one row, got {n} (in: {sql})"))),
        }
    }

    pub async fn query_one(&mut self, sql: &str, params: Vec<Value>) -> Result<Row> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| Error::Database(format!("expected one row, got none (in: {sql})")))
    }

    pub async fn commit(mut self) -> Result<()> {
        match &mut *self.guard {
            Connection::Sqlite(c) => c.execute_batch("COMMIT").map_err(|e| sql_error("COMMIT", e)),
            Connection::Postgres(pg) => {
                pg.client.batch_execute("COMMIT").await.map_err(|e| sql_error("COMMIT", e))?;
                pg.in_transaction = false;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_sqlite_ones() {
        assert_eq!(
            sqlite_sql("SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '$'"),
            "SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '$'"
        );
    }
}
