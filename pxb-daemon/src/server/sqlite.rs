//! [`SqliteCatalog`]: the embedded SQLite [`CatalogStore`], the server's default.
//!
//! One file, WAL mode, `synchronous = NORMAL`; schema migrations are numbered and recorded in
//! `PRAGMA user_version`, and a file written by a newer pxb is refused rather than guessed at.
//! Calls run on the blocking pool; one connection serves them in turn.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pxb_core::catalog::{CatalogStore, Cursor, Entry, Guard, Index, Kind, Page, Put, Query};
use pxb_core::{Error, Result};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

/// One schema migration.
enum Migration {
    /// SQL run as one batch.
    Sql(&'static str),
    /// A step that needs Rust (decoding documents).
    Code(fn(&rusqlite::Transaction<'_>) -> Result<()>),
}

/// The schema migrations, in order; `user_version` is how many were applied. Each runs in one
/// transaction with its `user_version` bump, so a crash leaves the file at a numbered version.
const MIGRATIONS: &[Migration] = &[
    // 1: the record table and the indexes lists use.
    Migration::Sql(
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
    ),
    // 2: index tags (`Index::tags`): a column with the record's tags (newline-separated; tags
    // hold no control characters) and a table with one row per tag, in list order.
    Migration::Sql(
        "ALTER TABLE records ADD COLUMN tags TEXT NOT NULL DEFAULT '';
    CREATE TABLE record_tags (
        kind TEXT NOT NULL,
        tag TEXT NOT NULL,
        org TEXT NOT NULL,
        sort TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (kind, tag, org, sort, id)
    ) WITHOUT ROWID;",
    ),
    // 3: tags of the backups written before there were tags.
    Migration::Code(backfill_backup_tags),
];

/// The schema version of this pxb's catalog: how many migrations it knows, the `user_version` of
/// every file it has opened. A file with a higher one (from a newer pxb) is refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Gives every stored backup the tags `BackupRecord::index` makes. A document that does not
/// decode is left without tags (reading it reports it as damaged, as before).
fn backfill_backup_tags(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    use pxb_core::catalog::Record as _;
    use pxb_core::catalog::records::BackupRecord;
    let total: i64 = tx
        .query_row("SELECT COUNT(*) FROM records WHERE kind = 'backup'", [], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    if total > 0 {
        tracing::info!(
            backups = total,
            "catalog: writing the index tags of stored backups"
        );
    }
    // In batches read to the end before anything is written, so no write moves rows under an
    // open read.
    let mut after = (String::new(), String::new());
    let mut seen = 0i64;
    let mut tagged = 0u64;
    loop {
        let batch: Vec<(String, String, String, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT org, id, sort, doc FROM records WHERE kind = 'backup' AND (org, id) > (?1, ?2)
                 ORDER BY org, id LIMIT 1000",
            )
            .and_then(|mut s| {
                s.query_map(params![after.0, after.1], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(db_err)?;
        let Some(last) = batch.last() else { break };
        after = (last.0.clone(), last.1.clone());
        for (org, id, sort, doc) in &batch {
            seen += 1;
            let Ok(b) = serde_json::from_slice::<BackupRecord>(doc) else {
                continue;
            };
            let tags = b.index().normalized_tags()?;
            tx.prepare_cached("UPDATE records SET tags = ?3 WHERE kind = 'backup' AND org = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![org, id, tags_column(&tags)]))
                .map_err(db_err)?;
            write_tags(tx, Kind::Backup, org, id, None, (sort, &tags))?;
            tagged += 1;
        }
        if seen % 100_000 < 1000 && seen < total {
            tracing::info!(
                done = seen,
                of = total,
                "catalog: writing the index tags of stored backups"
            );
        }
    }
    tracing::info!(
        backups = tagged,
        damaged = seen as u64 - tagged,
        "catalog: backup tags written"
    );
    Ok(())
}

/// The `tags` column of `tags` (newline-separated: tags hold no control characters).
fn tags_column(tags: &[String]) -> String {
    tags.join("\n")
}

/// The tags of a `tags` column.
fn tags_of_column(column: &str) -> impl Iterator<Item = &str> {
    column.split('\n').filter(|t| !t.is_empty())
}

/// Replaces the rows of `record_tags` of a record: `old` is its stored sort key and tags
/// column (when it exists), `new` its sort key and tags.
fn write_tags(
    conn: &Connection,
    kind: Kind,
    org: &str,
    id: &str,
    old: Option<(&str, &str)>,
    new: (&str, &[String]),
) -> Result<()> {
    if let Some((sort, tags)) = old {
        let mut delete = conn
            .prepare_cached(
                "DELETE FROM record_tags WHERE kind = ?1 AND tag = ?2 AND org = ?3 AND sort = ?4 AND id = ?5",
            )
            .map_err(db_err)?;
        for t in tags_of_column(tags) {
            delete
                .execute(params![kind.as_str(), t, org, sort, id])
                .map_err(db_err)?;
        }
    }
    let mut insert = conn
        .prepare_cached("INSERT INTO record_tags (kind, tag, org, sort, id) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(db_err)?;
    for t in new.1 {
        insert
            .execute(params![kind.as_str(), t, org, new.0, id])
            .map_err(db_err)?;
    }
    Ok(())
}

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

    /// Leaves the catalog at `path` (created if missing) at schema `version`, with only the first
    /// `version` migrations applied, as the pxb-server of that schema left it: for tests of
    /// upgrades. Refuses a version this pxb does not know and a file already past `version`.
    #[doc(hidden)]
    pub fn migrate_file_to(path: &Path, version: i64) -> Result<()> {
        if !(0..=SCHEMA_VERSION).contains(&version) {
            return Err(Error::invalid(format!(
                "schema version {version} is not one of 0..={SCHEMA_VERSION}"
            )));
        }
        let mut conn = Self::connect(path)?;
        migrate(&mut conn, path, version as usize)
    }

    fn open_blocking(path: &Path) -> Result<Connection> {
        let mut conn = Self::connect(path)?;
        migrate(&mut conn, path, MIGRATIONS.len())?;
        Ok(conn)
    }

    /// Opens the file in WAL mode, refusing one of a newer schema before writing anything to it.
    fn connect(path: &Path) -> Result<Connection> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let conn = Connection::open(path).map_err(|e| {
            Error::unavailable(format!(
                "cannot open the catalog database {}: {e}",
                path.display()
            ))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        // Before the journal mode, which a file of another journal mode would have written.
        schema_version(&conn, path)?;
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

/// The schema version of the file, refused when it is newer than this pxb knows.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(Error::precondition(format!(
            "the catalog database {} has schema version {version}, newer than this pxb-server knows \
             ({SCHEMA_VERSION}); run a newer pxb-server",
            path.display()
        )));
    }
    Ok(version)
}

/// Applies the migrations after the file's version, up to the first `target`.
fn migrate(conn: &mut Connection, path: &Path, target: usize) -> Result<()> {
    let version = schema_version(conn, path)?;
    if version > target as i64 {
        return Err(Error::precondition(format!(
            "the catalog database {} has schema version {version}, past {target}",
            path.display()
        )));
    }
    for (i, step) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target)
        .skip(version.max(0) as usize)
    {
        let tx = conn.transaction().map_err(db_err)?;
        match step {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(db_err)?,
            Migration::Code(f) => f(&tx)?,
        }
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
                tags: tags_of_column(&row.get::<_, String>(10)?)
                    .map(str::to_owned)
                    .collect(),
            },
            doc: row.get(9)?,
        },
    ))
}

const COLUMNS: &str =
    "r.kind, r.org, r.id, r.revision, r.sort, r.cluster, r.location, r.status, r.time_ms, r.doc, r.tags";

/// A stored record's revision, sort key and tags column.
type Current = (u64, String, String);

fn current_of(conn: &Connection, kind: Kind, org: &str, id: &str) -> Result<Option<Current>> {
    conn.prepare_cached("SELECT revision, sort, tags FROM records WHERE kind = ?1 AND org = ?2 AND id = ?3")
        .and_then(|mut s| {
            s.query_row(params![kind.as_str(), org, id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
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

/// Appends the query's filters and cursor to `sql` and their values to `args`. `key` is the
/// table alias the order columns (`org`, `sort`, `id`) are read from; the other columns are
/// read from `r` (the records table).
fn filters(query: &Query, after: Option<Cursor>, key: &str, sql: &mut String, args: &mut Vec<Value>) {
    let mut eq = |col: String, v: &Option<String>| {
        if let Some(v) = v {
            args.push(Value::Text(v.clone()));
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    };
    eq(format!("{key}.org"), &query.org);
    eq("r.cluster".into(), &query.cluster);
    eq("r.location".into(), &query.location);
    eq("r.status".into(), &query.status);
    if let Some(f) = query.time_from_ms {
        args.push(Value::Integer(f));
        sql.push_str(&format!(" AND r.time_ms >= ?{}", args.len()));
    }
    if let Some(t) = query.time_to_ms {
        args.push(Value::Integer(t));
        sql.push_str(&format!(" AND r.time_ms < ?{}", args.len()));
    }
    if let Some(m) = &query.sort_min {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND {key}.sort >= ?{}", args.len()));
    }
    if let Some(m) = &query.sort_max {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND {key}.sort <= ?{}", args.len()));
    }
    if let Some(a) = after {
        let n = args.len();
        args.extend([Value::Text(a.org), Value::Text(a.sort), Value::Text(a.id)]);
        sql.push_str(&format!(
            " AND ({key}.org, {key}.sort, {key}.id) > (?{}, ?{}, ?{})",
            n + 1,
            n + 2,
            n + 3
        ));
    }
}

/// The `FROM … WHERE …` of a list or count of `kind` (without ordering), and the alias the
/// order columns come from.
///
/// Without tags, or with a cluster (a few hundred records at most, so checking their tags is
/// cheap), the records table is read through its column indexes and each required tag is one
/// primary-key lookup in `record_tags`. Otherwise the first tag's rows in `record_tags`, which
/// are in list order, drive the scan: a tag that few records carry costs only those records.
fn selection(
    kind: Kind,
    query: &Query,
    after: Option<Cursor>,
    args: &mut Vec<Value>,
) -> (String, &'static str) {
    args.push(Value::Text(kind.as_str().to_owned()));
    let drive_by_tag = !query.tags.is_empty() && query.cluster.is_none();
    // The required tags are checked against the driving table's key columns, so that a record
    // without them is passed over before its row in `records` is read.
    let (mut sql, key, checked) = if drive_by_tag {
        args.push(Value::Text(query.tags[0].clone()));
        (
            "FROM record_tags t CROSS JOIN records r ON r.kind = t.kind AND r.org = t.org AND r.id = t.id \
             WHERE t.kind = ?1 AND t.tag = ?2"
                .to_owned(),
            "t",
            &query.tags[1..],
        )
    } else {
        (
            "FROM records r WHERE r.kind = ?1".to_owned(),
            "r",
            &query.tags[..],
        )
    };
    for tag in checked {
        args.push(Value::Text(tag.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM record_tags u WHERE u.kind = ?1 AND u.tag = ?{} \
             AND u.org = {key}.org AND u.sort = {key}.sort AND u.id = {key}.id)",
            args.len()
        ));
    }
    filters(query, after, key, &mut sql, args);
    (sql, key)
}

/// Writes `puts` in the open transaction `tx`; their new revisions.
fn put_tx(tx: &rusqlite::Transaction<'_>, puts: &[Put]) -> Result<Vec<u64>> {
    let mut revs = Vec::with_capacity(puts.len());
    for p in puts {
        let tags = p.index.normalized_tags()?;
        let joined = tags_column(&tags);
        let current = current_of(tx, p.kind, &p.org, &p.id)?;
        check(
            p.expect,
            current.as_ref().map(|c| c.0),
            &format!("{} {:?}", p.kind, p.id),
        )?;
        let rev = current.as_ref().map_or(0, |c| c.0) + 1;
        tx.prepare_cached(
            "INSERT INTO records (kind, org, id, revision, sort, cluster, location, status, time_ms, doc, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (kind, org, id) DO UPDATE SET revision = excluded.revision,
               sort = excluded.sort, cluster = excluded.cluster, location = excluded.location,
               status = excluded.status, time_ms = excluded.time_ms, doc = excluded.doc,
               tags = excluded.tags",
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
                p.doc,
                joined
            ])
        })
        .map_err(db_err)?;
        // Most writes are progress updates that keep the tags: leave their rows be.
        let unchanged = current
            .as_ref()
            .is_some_and(|(_, sort, old)| *sort == p.index.sort && *old == joined);
        if !unchanged {
            let old = current
                .as_ref()
                .map(|(_, sort, tags)| (sort.as_str(), tags.as_str()));
            write_tags(tx, p.kind, &p.org, &p.id, old, (&p.index.sort, &tags))?;
        }
        revs.push(rev);
    }
    Ok(revs)
}

/// The revision of `guard`'s record, read in `tx`, checked.
fn check_guard(tx: &rusqlite::Transaction<'_>, guard: &Guard) -> Result<()> {
    guard.check(current_of(tx, guard.kind, &guard.org, &guard.id)?.map(|c| c.0))
}

/// Deletes in the open transaction `tx`.
fn delete_tx(
    tx: &rusqlite::Transaction<'_>,
    kind: Kind,
    org: &str,
    id: &str,
    expect: Option<u64>,
) -> Result<bool> {
    let current = current_of(tx, kind, org, id)?;
    if expect.is_some() {
        check(expect, current.as_ref().map(|c| c.0), &format!("{kind} {id:?}"))?;
    }
    let Some((_, sort, tags)) = current else {
        return Ok(false);
    };
    write_tags(tx, kind, org, id, Some((&sort, &tags)), ("", &[]))?;
    tx.execute(
        "DELETE FROM records WHERE kind = ?1 AND org = ?2 AND id = ?3",
        params![kind.as_str(), org, id],
    )
    .map_err(db_err)?;
    Ok(true)
}

#[async_trait]
impl CatalogStore for SqliteCatalog {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        let (org, id) = (org.to_owned(), id.to_owned());
        self.run(move |c| {
            let sql =
                format!("SELECT {COLUMNS} FROM records r WHERE r.kind = ?1 AND r.org = ?2 AND r.id = ?3");
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
            let revs = put_tx(&tx, &puts)?;
            tx.commit().map_err(db_err)?;
            Ok(revs)
        })
        .await
    }

    async fn put_guarded(&self, guard: &Guard, puts: Vec<Put>) -> Result<Vec<u64>> {
        let guard = guard.clone();
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            check_guard(&tx, &guard)?;
            let revs = put_tx(&tx, &puts)?;
            tx.commit().map_err(db_err)?;
            Ok(revs)
        })
        .await
    }

    async fn delete_guarded(
        &self,
        guard: &Guard,
        kind: Kind,
        org: &str,
        id: &str,
        expect: Option<u64>,
    ) -> Result<bool> {
        let (guard, org, id) = (guard.clone(), org.to_owned(), id.to_owned());
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            check_guard(&tx, &guard)?;
            let deleted = delete_tx(&tx, kind, &org, &id, expect)?;
            tx.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }

    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        let (org, id) = (org.to_owned(), id.to_owned());
        self.run(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let deleted = delete_tx(&tx, kind, &org, &id, expect)?;
            tx.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        let after = query.after.as_deref().map(Cursor::decode).transpose()?;
        let limit = query.clamped_limit();
        let query = query.clone();
        self.run(move |c| {
            let mut args = Vec::new();
            let (from, key) = selection(kind, &query, after, &mut args);
            args.push(Value::Integer(limit as i64 + 1));
            let sql = format!(
                "SELECT {COLUMNS} {from} ORDER BY {key}.org, {key}.sort, {key}.id LIMIT ?{}",
                args.len()
            );
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
            let mut args = Vec::new();
            let (from, _) = selection(kind, &query, None, &mut args);
            c.prepare_cached(&format!("SELECT COUNT(*) {from}"))
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
    async fn a_version_1_file_gets_the_tags_of_its_backups() {
        use pxb_core::catalog::records::{BackupRecord, BackupView};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        {
            let conn = Connection::open(&path).expect("open raw");
            let Migration::Sql(v1) = MIGRATIONS[0] else {
                panic!("migration 1 is SQL")
            };
            conn.execute_batch(v1).expect("schema 1");
            conn.pragma_update(None, "user_version", 1).expect("version 1");
            let vm = BackupRecord {
                org: "o".into(),
                id: "vm".into(),
                namespaces: vec!["shop".into(), "db".into()],
                view: BackupView::Vms,
                created_ms: 2_000,
                ..BackupRecord::default()
            };
            let plain = BackupRecord {
                id: "plain".into(),
                namespaces: vec!["shop".into()],
                view: BackupView::Namespaces,
                created_ms: 1_000,
                ..vm.clone()
            };
            // Enough others, in two orgs, to take several batches.
            let bulk = (0..2_500).map(|i| BackupRecord {
                org: format!("bulk-{}", i % 2),
                id: format!("b{i:04}"),
                namespaces: vec!["bulk".into()],
                created_ms: 10 + i,
                ..BackupRecord::default()
            });
            conn.execute_batch("BEGIN").expect("begin");
            for b in [vm, plain].into_iter().chain(bulk) {
                let p = pxb_core::catalog::Catalog::put_of(&b, None).expect("put of");
                conn.execute(
                    "INSERT INTO records (kind, org, id, revision, sort, doc) VALUES ('backup', ?1, ?2, 1, ?3, ?4)",
                    params![p.org, p.id, p.index.sort, p.doc],
                )
                .expect("insert");
            }
            conn.execute(
                "INSERT INTO records (kind, org, id, revision, sort, doc) VALUES ('backup', 'o', 'broken', 1, 'x', x'7b')",
                [],
            )
            .expect("insert broken");
            conn.execute_batch("COMMIT").expect("commit");
        }
        let store = SqliteCatalog::open(&path).await.expect("migrate");
        let ids = |tags: &[&str]| {
            let q = Query {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Query::org("o")
            };
            let store = store.clone();
            async move { pxb_core::catalog::conformance::page_ids(&store, Kind::Backup, &q).await }
        };
        assert_eq!(ids(&["ns=shop"]).await, vec!["vm", "plain"], "newest first");
        assert_eq!(ids(&["view=vms"]).await, vec!["vm"]);
        assert_eq!(ids(&["ns=db", "view=namespaces"]).await, Vec::<String>::new());
        assert_eq!(
            store.get(Kind::Backup, "o", "vm").await.expect("get").index.tags,
            vec!["ns=db", "ns=shop", "view=vms"]
        );
        let bulk = |org: &str| Query {
            tags: vec!["ns=bulk".into(), "view=namespaces".into()],
            ..Query::org(org)
        };
        for org in ["bulk-0", "bulk-1"] {
            assert_eq!(
                store.count(Kind::Backup, &bulk(org)).await.expect("count"),
                1_250,
                "{org}"
            );
        }
        // The damaged document is still there, untagged, for the reader to report.
        assert!(
            store
                .get(Kind::Backup, "o", "broken")
                .await
                .expect("get")
                .index
                .tags
                .is_empty()
        );
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

    /// A file of a newer pxb is refused before anything is written to it: not even the journal
    /// mode (this one uses another, as a newer pxb might) changes a byte.
    #[tokio::test]
    async fn a_newer_schema_in_another_journal_mode_is_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        drop(SqliteCatalog::open(&path).await.expect("open"));
        let conn = Connection::open(&path).expect("open raw");
        let mode: String = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "delete");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        drop(conn);
        let before = std::fs::read(&path).expect("read");
        let err = SqliteCatalog::open(&path).await.expect_err("newer schema");
        assert!(err.to_string().contains("newer than this pxb-server"), "{err}");
        assert!(std::fs::read(&path).expect("read") == before, "the file changed");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["catalog.db"], "no journal or WAL left beside it");
        let err = SqliteCatalog::migrate_file_to(&path, 1).expect_err("past 1");
        assert!(err.to_string().contains("newer than this pxb-server"), "{err}");
    }

    /// An older schema is what the helper for upgrade tests leaves; opening migrates it on.
    #[tokio::test]
    async fn a_file_left_at_an_older_schema_is_migrated_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        let version = |p: &Path| -> i64 {
            Connection::open(p)
                .expect("open raw")
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .expect("version")
        };
        SqliteCatalog::migrate_file_to(&path, SCHEMA_VERSION - 1).expect("older schema");
        assert_eq!(version(&path), SCHEMA_VERSION - 1);
        SqliteCatalog::migrate_file_to(&path, SCHEMA_VERSION - 1).expect("again: nothing to do");
        assert!(SqliteCatalog::migrate_file_to(&path, SCHEMA_VERSION + 1).is_err());
        assert!(SqliteCatalog::migrate_file_to(&path, 0).is_err(), "past 0");
        drop(SqliteCatalog::open(&path).await.expect("migrates"));
        assert_eq!(version(&path), SCHEMA_VERSION);
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
