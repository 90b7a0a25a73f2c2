//! [`SqliteCatalog`]: the embedded SQLite [`CatalogStore`], the server's default.
//!
//! One file, WAL mode, `synchronous = NORMAL`; schema migrations are numbered and recorded in
//! `PRAGMA user_version`, and a file written by a newer pxb is refused rather than guessed at.
//! Calls run on the blocking pool; one connection serves them in turn.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pxb_core::catalog::{CatalogStore, Cursor, Entry, Index, Kind, Page, Put, Query};
use pxb_core::{Error, Result};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

/// The schema migrations, in order; `user_version` is how many were applied.
const MIGRATIONS: &[&str] = &[
    // 1: the record table and the indexes lists use.
    "CREATE TABLE records (
        kind TEXT NOT NULL,
        org TEXT NOT NULL,
        id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        sort TEXT NOT NULL,
        cluster TEXT,
        location TEXT,
        status TEXT,
        time_ms INTEGER,
        doc BLOB NOT NULL,
        PRIMARY KEY (kind, org, id)
    ) WITHOUT ROWID;
    CREATE INDEX records_order ON records (kind, org, sort, id);
    CREATE INDEX records_cluster ON records (kind, org, cluster, sort, id);
    CREATE INDEX records_location ON records (kind, org, location, sort, id);
    CREATE INDEX records_status ON records (kind, org, status, sort, id);",
];

/// The catalog in an SQLite file. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct SqliteCatalog {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteCatalog").field("path", &self.path).finish()
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(ref f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Error::unavailable(format!("the catalog database is busy: {e}"))
        }
        rusqlite::Error::SqliteFailure(ref f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            Error::corrupt(format!("the catalog database is damaged: {e}"))
        }
        e => Error::other(format!("catalog database: {e}")),
    }
}

impl SqliteCatalog {
    /// Opens (creating if needed) the catalog at `path` and applies pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || Self::open_blocking(&p))
            .await
            .map_err(|e| Error::other(format!("catalog open task: {e}")))??;
        Ok(SqliteCatalog {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_blocking(path: &Path) -> Result<Connection> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let mut conn = Connection::open(path).map_err(|e| {
            Error::unavailable(format!(
                "cannot open the catalog database {}: {e}",
                path.display()
            ))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::unavailable(format!(
                "the catalog database {} cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(db_err)?;
        migrate(&mut conn, path)?;
        Ok(conn)
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::other(format!("catalog task: {e}")))?
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::precondition(format!(
            "the catalog database {} has schema version {version}, newer than this pxb-server knows \
             ({known}); run a newer pxb-server",
            path.display()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version = i + 1, path = %path.display(), "catalog schema migrated");
    }
    Ok(())
}

fn entry_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Entry)> {
    let kind: String = row.get(0)?;
    Ok((
        kind.clone(),
        Entry {
            kind: Kind::Org, // replaced by the caller
            org: row.get(1)?,
            id: row.get(2)?,
            revision: row.get::<_, i64>(3)? as u64,
            index: Index {
                sort: row.get(4)?,
                cluster: row.get(5)?,
                location: row.get(6)?,
                status: row.get(7)?,
                time_ms: row.get(8)?,
            },
            doc: row.get(9)?,
        },
    ))
}

const COLUMNS: &str = "kind, org, id, revision, sort, cluster, location, status, time_ms, doc";

fn revision_of(conn: &Connection, kind: Kind, org: &str, id: &str) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT revision FROM records WHERE kind = ?1 AND org = ?2 AND id = ?3")
        .and_then(|mut s| {
            s.query_row(params![kind.as_str(), org, id], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|r| r.map(|v| v as u64))
        .map_err(db_err)
}

fn check(expect: Option<u64>, current: Option<u64>, what: &str) -> Result<()> {
    match (expect, current) {
        (None, _) | (Some(0), None) => Ok(()),
        (Some(0), Some(_)) => Err(Error::precondition(format!("{what} already exists"))),
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(want), have) => Err(Error::precondition(format!(
            "{what} is at revision {} (expected {want})",
            have.unwrap_or(0)
        ))),
    }
}

/// Appends the query's filters to `sql` and their values to `args`.
fn filters(query: &Query, sql: &mut String, args: &mut Vec<Value>) {
    let mut eq = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(Value::Text(v.clone()));
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    };
    eq("org", &query.org);
    eq("cluster", &query.cluster);
    eq("location", &query.location);
    eq("status", &query.status);
    if let Some(f) = query.time_from_ms {
        args.push(Value::Integer(f));
        sql.push_str(&format!(" AND time_ms >= ?{}", args.len()));
    }
    if let Some(t) = query.time_to_ms {
        args.push(Value::Integer(t));
        sql.push_str(&format!(" AND time_ms < ?{}", args.len()));
    }
    if let Some(m) = &query.sort_min {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND sort >= ?{}", args.len()));
    }
    if let Some(m) = &query.sort_max {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND sort <= ?{}", args.len()));
    }
}

#[async_trait]
impl CatalogStore for SqliteCatalog {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        let (org, id) = (org.to_owned(), id.to_owned());
        self.run(move |c| {
            let sql = format!("SELECT {COLUMNS} FROM records WHERE kind = ?1 AND org = ?2 AND id = ?3");
            let row = c
                .prepare_cached(&sql)
                .and_then(|mut s| s.query_row(params![kind.as_str(), org, id], entry_of).optional())
                .map_err(db_err)?;
            match row {
                Some((_, mut e)) => {
                    e.kind = kind;
                    Ok(e)
                }
                None => Err(Error::not_found(format!("{kind} {id:?} in org {org:?}"))),
            }
        })
        .await
    }

    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
        if puts.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let mut revs = Vec::with_capacity(puts.len());
            for p in &puts {
                let current = revision_of(&tx, p.kind, &p.org, &p.id)?;
                check(p.expect, current, &format!("{} {:?}", p.kind, p.id))?;
                let rev = current.unwrap_or(0) + 1;
                tx.prepare_cached(
                    "INSERT INTO records (kind, org, id, revision, sort, cluster, location, status, time_ms, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (kind, org, id) DO UPDATE SET revision = excluded.revision,
                       sort = excluded.sort, cluster = excluded.cluster, location = excluded.location,
                       status = excluded.status, time_ms = excluded.time_ms, doc = excluded.doc",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        p.kind.as_str(),
                        p.org,
                        p.id,
                        rev as i64,
                        p.index.sort,
                        p.index.cluster,
                        p.index.location,
                        p.index.status,
                        p.index.time_ms,
                        p.doc
                    ])
                })
                .map_err(db_err)?;
                revs.push(rev);
            }
            tx.commit().map_err(db_err)?;
            Ok(revs)
        })
        .await
    }

    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        let (org, id) = (org.to_owned(), id.to_owned());
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            if expect.is_some() {
                let current = revision_of(&tx, kind, &org, &id)?;
                check(expect, current, &format!("{kind} {id:?}"))?;
            }
            let n = tx
                .execute(
                    "DELETE FROM records WHERE kind = ?1 AND org = ?2 AND id = ?3",
                    params![kind.as_str(), org, id],
                )
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        let after = query.after.as_deref().map(Cursor::decode).transpose()?;
        let limit = query.clamped_limit();
        let query = query.clone();
        self.run(move |c| {
            let mut sql = format!("SELECT {COLUMNS} FROM records WHERE kind = ?1");
            let mut args = vec![Value::Text(kind.as_str().to_owned())];
            filters(&query, &mut sql, &mut args);
            if let Some(a) = after {
                let n = args.len();
                args.extend([Value::Text(a.org), Value::Text(a.sort), Value::Text(a.id)]);
                sql.push_str(&format!(
                    " AND (org, sort, id) > (?{}, ?{}, ?{})",
                    n + 1,
                    n + 2,
                    n + 3
                ));
            }
            args.push(Value::Integer(limit as i64 + 1));
            sql.push_str(&format!(" ORDER BY org, sort, id LIMIT ?{}", args.len()));
            let mut stmt = c.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt.query_map(params_from_iter(args), entry_of).map_err(db_err)?;
            let mut items = Vec::new();
            for row in rows {
                let (_, mut e) = row.map_err(db_err)?;
                e.kind = kind;
                items.push(e);
            }
            let more = items.len() > limit;
            items.truncate(limit);
            let next = if more {
                items.last().map(|e| Cursor::after(e).encode())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
        let query = query.clone();
        self.run(move |c| {
            let mut sql = "SELECT COUNT(*) FROM records WHERE kind = ?1".to_owned();
            let mut args = vec![Value::Text(kind.as_str().to_owned())];
            filters(&query, &mut sql, &mut args);
            c.prepare_cached(&sql)
                .and_then(|mut s| s.query_row(params_from_iter(args), |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_catalog_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteCatalog::open(dir.path().join("catalog.db"))
            .await
            .expect("open");
        pxb_core::catalog::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn records_survive_reopening_and_wal_is_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/catalog.db");
        {
            let store = SqliteCatalog::open(&path).await.expect("open");
            let put = Put {
                kind: Kind::Org,
                org: "a".into(),
                id: "a".into(),
                index: Index::default(),
                doc: b"{}".to_vec(),
                expect: Some(0),
            };
            store.put(vec![put]).await.expect("put");
        }
        let store = SqliteCatalog::open(&path).await.expect("reopen");
        assert_eq!(store.get(Kind::Org, "a", "a").await.expect("get").revision, 1);
        let conn = Connection::open(&path).expect("open raw");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        drop(SqliteCatalog::open(&path).await.expect("open"));
        let conn = Connection::open(&path).expect("open raw");
        conn.pragma_update(None, "user_version", 99).expect("bump");
        drop(conn);
        let err = SqliteCatalog::open(&path).await.expect_err("newer schema");
        assert!(err.to_string().contains("newer than this pxb-server"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::write(&path, vec![b'x'; 8192]).expect("write");
        let err = SqliteCatalog::open(&path).await.expect_err("garbage file");
        assert!(
            err.to_string().contains("damaged") || err.to_string().contains("catalog"),
            "{err}"
        );
    }
}
