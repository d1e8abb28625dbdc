//! Catalogs to test against: SQLite in a temporary directory, or a fresh database in a
//! private PostgreSQL 15 cluster (Debian's `postgresql` package) that the first PostgreSQL
//! test of this process starts on a free loopback port and that stops when the process
//! ends. `both_backends!` runs every test against each.
//!
//! A cluster that cannot start fails the test with its log: CI installs PostgreSQL
//! (scripts/setup.sh), so a missing one is a broken setup, not a reason to skip.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use xenvault_catalog::Catalog;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Starts the cluster (as the `postgres` user when we are root: PostgreSQL refuses to run
/// as root), says "ready", then waits for its stdin to close (this process ending) to
/// stop it and remove its directory.
const PG_SUPERVISOR: &str = r#"dir=$1 port=$2 bin=$3
as_owner() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
as_owner "$bin/initdb -D $dir/data -U xenvault --auth=trust -E UTF8 --no-sync" >"$dir/initdb.log" 2>&1 </dev/null ||
  { echo "initdb failed:"; cat "$dir/initdb.log"; exit 1; }
as_owner "$bin/pg_ctl -D $dir/data -l $dir/server.log -w -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off' start" \
  >/dev/null 2>&1 </dev/null || { echo "pg_ctl start failed:"; cat "$dir/server.log"; exit 1; }
echo ready
read -r _
as_owner "$bin/pg_ctl -D $dir/data -m immediate stop" >/dev/null 2>&1 </dev/null
rm -rf "$dir""#;

struct Cluster {
    port: u16,
    /// The supervisor's stdin, held open for the life of the process: its closing stops
    /// the cluster (statics are never dropped; the process's end closes it).
    _guard: Mutex<(Child, ChildStdin)>,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start_cluster)
}

fn start_cluster() -> Cluster {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
        .port();
    let dir = tempfile::Builder::new()
        .prefix("xenvault-pg-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a directory for PostgreSQL: {e}"))
        .keep();
    let mut child = Command::new("bash")
        .args(["-c", PG_SUPERVISOR, "bash"])
        .arg(&dir)
        .arg(port.to_string())
        .arg(PG_BIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run bash to start PostgreSQL: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut said = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if line == "ready" {
            let stdin = child.stdin.take().expect("piped stdin");
            return Cluster { port, _guard: Mutex::new((child, stdin)) };
        }
        said.push_str(&line);
        said.push('\n');
    }
    let status = child.wait();
    panic!(
        "PostgreSQL ({PG_BIN}) did not start in {dir:?} ({status:?}); install Debian's postgresql \
         (scripts/setup.sh):\n{said}"
    );
}

/// Where a test catalog lives.
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A catalog of one test, with its data directory (the key file) and its location.
pub struct TestCatalog {
    pub catalog: Catalog,
    pub data_dir: tempfile::TempDir,
    pub location: Location,
}

impl Deref for TestCatalog {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        &self.catalog
    }
}

impl TestCatalog {
    /// The `database` argument of [`Catalog::open`] for this catalog.
    pub fn database(&self) -> Option<String> {
        match &self.location {
            Location::Sqlite(_) => None,
            Location::Postgres(url) => Some(url.clone()),
        }
    }

    /// Opens the same database again (as a restarted server would).
    pub async fn reopen(&self) -> Result<Catalog, xenvault_catalog::Error> {
        Catalog::open(self.data_dir.path(), self.database().as_deref()).await
    }

    /// Runs SQL on the database behind the catalog's back (to look at what it stored, or
    /// to damage it) and returns every value of the result as text.
    pub async fn raw(&self, sql: &str) -> Vec<Vec<String>> {
        match &self.location {
            Location::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).expect("open the SQLite file");
                let mut statement = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let columns = statement.column_count();
                let rows = statement
                    .query_map([], |row| {
                        (0..columns)
                            .map(|i| {
                                Ok(match row.get_ref(i)? {
                                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                                    rusqlite::types::ValueRef::Text(v) | rusqlite::types::ValueRef::Blob(v) => {
                                        String::from_utf8_lossy(v).into_owned()
                                    }
                                })
                            })
                            .collect::<rusqlite::Result<Vec<String>>>()
                    })
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.collect::<rusqlite::Result<_>>().unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Location::Postgres(url) => {
                let client = pg_client(url).await;
                // The simple query protocol returns every value as text.
                let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            Some((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect::<Vec<_>>())
                        }
                        _ => None,
                    })
                    .collect()
            }
        }
    }
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

pub async fn sqlite() -> TestCatalog {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let catalog = Catalog::open(data_dir.path(), None).await.unwrap_or_else(|e| panic!("open SQLite catalog: {e}"));
    let path = data_dir.path().join(xenvault_catalog::SQLITE_FILE);
    TestCatalog { catalog, data_dir, location: Location::Sqlite(path) }
}

/// A fresh database in the shared cluster.
pub async fn postgres() -> TestCatalog {
    let port = tokio::task::spawn_blocking(|| cluster().port).await.expect("start PostgreSQL");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    pg_client(&format!("postgres://xenvault@127.0.0.1:{port}/postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    let url = format!("postgres://xenvault@127.0.0.1:{port}/{name}");
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let catalog =
        Catalog::open(data_dir.path(), Some(&url)).await.unwrap_or_else(|e| panic!("open PostgreSQL catalog: {e}"));
    TestCatalog { catalog, data_dir, location: Location::Postgres(url) }
}

/// For each `async fn name(catalog: TestCatalog)` listed, a test `sqlite::name` and a test
/// `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::common::sqlite().await).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::common::postgres().await).await
            })*
        }
    };
}
