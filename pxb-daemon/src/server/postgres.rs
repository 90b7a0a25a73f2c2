//! [`PostgresCatalog`]: the [`CatalogStore`] on PostgreSQL, for servers that outgrow one SQLite
//! file and for several `pxb-server` replicas sharing one catalog.
//!
//! One table holds every record (`pxb_records`), with the indexed columns of [`Index`] and the
//! tags as a text array; `pxb_record_tags`, kept by a trigger, holds one row per tag in list
//! order, and drives lists with a tag. Text columns use the `"C"` collation, so lists come in
//! byte order, as from the memory and SQLite stores. Schema migrations are numbered and recorded
//! in `pxb_schema`; each runs in its own transaction under an advisory lock, so replicas starting
//! together migrate once, and a database written by a newer pxb is refused before anything is
//! written to it.
//!
//! Writes are compare-and-set in SQL (`UPDATE … WHERE revision = $n`, `INSERT … ON CONFLICT`),
//! so concurrent writers from several replicas get [`Error::Precondition`], never a lost
//! update. TLS is required towards any database that is not on a loopback address or a Unix
//! socket; the password comes from a file, never from the URL (which is logged and shown).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pxb_core::catalog::{CatalogStore, Cursor, Entry, Guard, Index, Kind, Page, Put, Query};
use pxb_core::{Error, Result};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// The schema migrations, in order; `pxb_schema.version` is how many were applied.
const MIGRATIONS: &[&str] = &[
    // 1: the version table, the record table and the indexes lists use.
    r#"CREATE TABLE pxb_schema (version INTEGER NOT NULL);
    INSERT INTO pxb_schema (version) VALUES (0);
    CREATE TABLE pxb_records (
        kind TEXT COLLATE "C" NOT NULL,
        org TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        revision BIGINT NOT NULL,
        sort TEXT COLLATE "C" NOT NULL,
        cluster TEXT COLLATE "C",
        location TEXT COLLATE "C",
        status TEXT COLLATE "C",
        time_ms BIGINT,
        doc BYTEA NOT NULL,
        tags TEXT[] COLLATE "C" NOT NULL DEFAULT '{}',
        PRIMARY KEY (kind, org, id)
    );
    CREATE INDEX pxb_records_order ON pxb_records (kind, org, sort, id);
    CREATE INDEX pxb_records_cluster ON pxb_records (kind, org, cluster, sort, id);
    CREATE INDEX pxb_records_location ON pxb_records (kind, org, location, sort, id);
    CREATE INDEX pxb_records_status ON pxb_records (kind, org, status, sort, id);
    CREATE INDEX pxb_records_tags ON pxb_records USING GIN (tags);"#,
    // 2: one row per tag in list order, kept by a trigger, so that a list with a tag walks that
    // tag's rows in order and stops at the page's end (the GIN index gives every match
    // unordered: a tag on 1 in 7 of 100k backups took 55 ms a page, one nothing has 90 ms);
    // the GIN index goes.
    r#"CREATE TABLE pxb_record_tags (
        kind TEXT COLLATE "C" NOT NULL,
        tag TEXT COLLATE "C" NOT NULL,
        org TEXT COLLATE "C" NOT NULL,
        sort TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (kind, tag, org, sort, id)
    );
    INSERT INTO pxb_record_tags (kind, tag, org, sort, id)
        SELECT DISTINCT kind, unnest(tags), org, sort, id FROM pxb_records;
    CREATE FUNCTION pxb_record_tags_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.sort = NEW.sort AND OLD.tags = NEW.tags THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            DELETE FROM pxb_record_tags
                WHERE kind = OLD.kind AND tag = ANY (OLD.tags) AND org = OLD.org
                  AND sort = OLD.sort AND id = OLD.id;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO pxb_record_tags (kind, tag, org, sort, id)
                SELECT DISTINCT NEW.kind, t, NEW.org, NEW.sort, NEW.id FROM unnest(NEW.tags) AS t;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER pxb_record_tags_sync AFTER INSERT OR UPDATE OR DELETE ON pxb_records
        FOR EACH ROW EXECUTE FUNCTION pxb_record_tags_sync();
    DROP INDEX pxb_records_tags;"#,
    // 3: the status is a row in `pxb_record_tags` too, under a tag no index tag can be (a
    // control character, then the status: tags have none), so a list with a tag and a status
    // checks the status on the tag rows' key instead of reading each candidate's record (failed
    // backups in the VM view at 1M backups: p99 59 ms before).
    r#"CREATE OR REPLACE FUNCTION pxb_record_tags_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.sort = NEW.sort AND OLD.tags = NEW.tags
           AND OLD.status IS NOT DISTINCT FROM NEW.status THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            DELETE FROM pxb_record_tags
                WHERE kind = OLD.kind AND tag = ANY (OLD.tags || (chr(1) COLLATE "C" || OLD.status))
                  AND org = OLD.org AND sort = OLD.sort AND id = OLD.id;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO pxb_record_tags (kind, tag, org, sort, id)
                SELECT DISTINCT NEW.kind, t, NEW.org, NEW.sort, NEW.id
                FROM unnest(NEW.tags || (chr(1) COLLATE "C" || NEW.status)) AS t WHERE t IS NOT NULL;
        END IF;
        RETURN NULL;
    END $$;
    INSERT INTO pxb_record_tags (kind, tag, org, sort, id)
        SELECT kind, chr(1) COLLATE "C" || status, org, sort, id FROM pxb_records WHERE status IS NOT NULL;"#,
];

/// The tag row that stands for a record's status (migration 3).
fn status_tag(status: &str) -> String {
    format!("\u{1}{status}")
}

/// The schema version of this pxb's PostgreSQL catalog. A database with a higher one (from a
/// newer pxb) is refused.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock migrations take (any constant: it names pxb's migration among the
/// database's users).
const MIGRATION_LOCK: i64 = 0x7078_625f_6d69_6772; // "pxb_migr"

/// How to reach the database.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// `postgres://user@host:port/database?sslmode=require` (libpq's URL form, without a
    /// password).
    pub url: String,
    /// A file with the password, if the database wants one.
    pub password_file: Option<PathBuf>,
    /// A PEM file with the CA certificates to trust for the database's TLS certificate; the
    /// system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool (16 when 0).
    pub max_connections: usize,
}

impl PostgresOptions {
    /// Options for `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            ..PostgresOptions::default()
        }
    }

    /// With the password read from `file`.
    pub fn with_password_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.password_file = Some(file.into());
        self
    }

    /// With the database's certificate checked against the CA certificates in `file` (PEM).
    pub fn with_ca_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(file.into());
        self
    }

    /// With at most `n` connections in the pool.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
}

/// The catalog in a PostgreSQL database. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresCatalog {
    pool: Pool,
    /// What is shown of the database: its hosts and name, never a password.
    shown: Arc<str>,
}

impl std::fmt::Debug for PostgresCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCatalog")
            .field("database", &self.shown)
            .finish()
    }
}

/// Whether `host` is this machine: a Unix socket or a loopback address.
fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

fn shown(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or_default())
}

/// The database configuration from `options`: the URL checked (no password in it; TLS unless
/// the database is local) and the password read from its file.
fn pg_config(options: &PostgresOptions) -> Result<tokio_postgres::Config> {
    let bad = |why: String| Error::invalid(format!("catalog.url: {why}"));
    if !(options.url.starts_with("postgres://") || options.url.starts_with("postgresql://")) {
        return Err(bad(
            "give a URL of the form postgres://user@host:5432/database?sslmode=require".into(),
        ));
    }
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
    if config.get_password().is_some() {
        return Err(bad(
            "holds a password; put it in catalog.passwordFile instead (the URL is logged and shown)".into(),
        ));
    }
    if config.get_hosts().is_empty() {
        return Err(bad("names no host".into()));
    }
    if config.get_dbname().is_none_or(str::is_empty) {
        return Err(bad("names no database".into()));
    }
    if config.get_user().is_none_or(str::is_empty) {
        return Err(bad("names no user".into()));
    }
    if config.get_ssl_mode() != SslMode::Require && !config.get_hosts().iter().all(is_local) {
        return Err(bad(format!(
            "{} is not on this machine: add sslmode=require (TLS, with the server's certificate \
             checked against catalog.caFile or the system's roots)",
            shown(&config)
        )));
    }
    if let Some(file) = &options.password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| Error::io(format!("reading catalog.passwordFile {}", file.display()), e))?;
        config.password(password.trim_end_matches(['\n', '\r']));
    }
    // Lists are built per query and cheap to plan; a generic plan of a prepared list (taken
    // after five runs) can pick a scan that suits no parameters (seconds, where the custom plan
    // takes milliseconds).
    config.options("-c plan_cache_mode=force_custom_plan");
    config
        .application_name("pxb-server")
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// The TLS client configuration: the server's certificate checked against `ca_file`, or the
/// system's roots, and its name against the host.
fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .and_then(Iterator::collect)
                .map_err(|e| {
                    Error::invalid(format!(
                        "catalog.caFile {}: not PEM certificates: {e}",
                        file.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(Error::invalid(format!(
                    "catalog.caFile {} holds no certificate",
                    file.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| Error::invalid(format!("catalog.caFile {}: {e}", file.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::other(format!("TLS for the catalog database: {e}")))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The error of a database call.
fn db_err(e: tokio_postgres::Error) -> Error {
    let code = e.code().cloned();
    match code {
        Some(c) if c == SqlState::T_R_SERIALIZATION_FAILURE || c == SqlState::T_R_DEADLOCK_DETECTED => {
            Error::unavailable(format!("the catalog database is busy: {e}"))
        }
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57") || c.code().starts_with("53") => {
            Error::unavailable(format!("the catalog database is unavailable: {}", detail(&e)))
        }
        // Class 28: the login was refused (a wrong password, an unknown role): configuration.
        Some(c) if c.code().starts_with("28") => Error::invalid(format!(
            "the catalog database refused the login ({}); check the user in catalog.url and the password in catalog.passwordFile",
            detail(&e)
        )),
        Some(c) if c == SqlState::DATA_CORRUPTED || c == SqlState::INDEX_CORRUPTED => {
            Error::corrupt(format!("the catalog database is damaged: {}", detail(&e)))
        }
        Some(_) => Error::other(format!("catalog database: {}", detail(&e))),
        // No SQL state: the connection (closed, refused, TLS, timeout).
        None => Error::unavailable(format!("the catalog database is unreachable: {}", detail(&e))),
    }
}

/// The error with its sources (tokio-postgres keeps the server's message and the I/O cause
/// there).
fn detail(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        e => Error::unavailable(format!("the catalog database is unavailable: {e}")),
    }
}

/// PostgreSQL text holds no NUL character; a key or index value with one is refused here with
/// a clear error rather than by the database.
fn no_nul<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for v in values {
        if v.contains('\0') {
            return Err(Error::invalid(format!(
                "{:?} contains a NUL character, which the catalog does not store",
                v.replace('\0', "\\0")
            )));
        }
    }
    Ok(())
}

fn check_put(p: &Put) -> Result<()> {
    let i = &p.index;
    no_nul(
        [p.org.as_str(), &p.id, &i.sort]
            .into_iter()
            .chain(i.cluster.as_deref())
            .chain(i.location.as_deref())
            .chain(i.status.as_deref()),
    )
}

fn check_query(q: &Query) -> Result<()> {
    no_nul(
        [
            &q.org,
            &q.cluster,
            &q.location,
            &q.status,
            &q.sort_min,
            &q.sort_max,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(q.tags.iter().map(String::as_str)),
    )
}

impl PostgresCatalog {
    /// Connects to the database of `options` and applies pending migrations. Fails with
    /// [`Error::Invalid`] for a URL that is refused (see [`PostgresOptions::url`]),
    /// [`Error::Unavailable`] when the database cannot be reached, and
    /// [`Error::Precondition`] when it was written by a newer pxb.
    pub async fn connect(options: &PostgresOptions) -> Result<Self> {
        Self::connect_at(options, MIGRATIONS.len()).await
    }

    /// As [`PostgresCatalog::connect`], with only the first `target` migrations applied, as the
    /// pxb-server of that schema left the database: for tests of upgrades.
    #[doc(hidden)]
    pub async fn connect_at(options: &PostgresOptions, target: usize) -> Result<Self> {
        let config = pg_config(options)?;
        let shown: Arc<str> = shown(&config).into();
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(options.ca_file.as_ref())?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let max = if options.max_connections == 0 {
            16
        } else {
            options.max_connections
        };
        let pool = Pool::builder(manager)
            .max_size(max)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::other(format!("catalog database pool: {e}")))?;
        let catalog = PostgresCatalog { pool, shown };
        catalog.migrate(target).await.map_err(|e| match e {
            Error::Unavailable { message, .. } => {
                Error::unavailable(format!("{message} ({})", catalog.shown))
            }
            Error::Invalid { message, .. } => Error::invalid(format!("{message} ({})", catalog.shown)),
            e => e,
        })?;
        Ok(catalog)
    }

    /// Where the catalog is (hosts and database, never a password).
    pub fn database(&self) -> &str {
        &self.shown
    }

    /// Refreshes the planner's statistics of pxb's tables (`ANALYZE`): after a bulk load such as
    /// `pxb-server catalog migrate`, before autovacuum gets to it, lists would otherwise be
    /// planned as if the tables were empty (a full scan and sort per page).
    pub async fn analyze(&self) -> Result<()> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .batch_execute("ANALYZE pxb_records; ANALYZE pxb_record_tags;")
            .await
            .map_err(db_err)
    }

    /// The database's schema version (0 for an empty database).
    pub async fn schema_version(&self) -> Result<i32> {
        let client = self.pool.get().await.map_err(pool_err)?;
        read_version(&client).await
    }

    /// Applies the first `target` migrations that are not applied yet: for tests of upgrades
    /// ([`PostgresCatalog::connect`] applies them all). Refuses a database past `target`.
    #[doc(hidden)]
    pub async fn migrate_to(&self, target: usize) -> Result<()> {
        self.migrate(target).await
    }

    async fn migrate(&self, target: usize) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        loop {
            let tx = client.transaction().await.map_err(db_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(db_err)?;
            let version = read_version(&tx).await?;
            if version > SCHEMA_VERSION {
                return Err(Error::precondition(format!(
                    "the catalog database {} has schema version {version}, newer than this \
                     pxb-server knows ({SCHEMA_VERSION}); run a newer pxb-server",
                    self.shown
                )));
            }
            if version as usize > target {
                return Err(Error::precondition(format!(
                    "the catalog database {} has schema version {version}, past {target}",
                    self.shown
                )));
            }
            let Some(step) = MIGRATIONS
                .get(version as usize)
                .filter(|_| (version as usize) < target)
            else {
                return Ok(());
            };
            tx.batch_execute(step).await.map_err(db_err)?;
            tx.execute("UPDATE pxb_schema SET version = $1", &[&(version + 1)])
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            tracing::info!(version = version + 1, database = %self.shown, "catalog schema migrated");
        }
    }
}

/// The schema version recorded in the database, 0 when pxb never wrote to it.
async fn read_version(client: &impl deadpool_postgres::GenericClient) -> Result<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass('pxb_schema') IS NOT NULL", &[])
        .await
        .map_err(db_err)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_opt("SELECT version FROM pxb_schema", &[])
        .await
        .map_err(db_err)?;
    Ok(row.map_or(0, |r| r.get(0)))
}

const COLUMNS: &str =
    "r.org, r.id, r.revision, r.sort, r.cluster, r.location, r.status, r.time_ms, r.doc, r.tags";

fn entry_of(kind: Kind, row: &tokio_postgres::Row) -> Result<Entry> {
    let revision: i64 = row.try_get(2).map_err(db_err)?;
    Ok(Entry {
        kind,
        org: row.try_get(0).map_err(db_err)?,
        id: row.try_get(1).map_err(db_err)?,
        revision: revision as u64,
        index: Index {
            sort: row.try_get(3).map_err(db_err)?,
            cluster: row.try_get(4).map_err(db_err)?,
            location: row.try_get(5).map_err(db_err)?,
            status: row.try_get(6).map_err(db_err)?,
            time_ms: row.try_get(7).map_err(db_err)?,
            tags: row.try_get(9).map_err(db_err)?,
        },
        doc: row.try_get(8).map_err(db_err)?,
    })
}

/// Query arguments, numbered `$1…` in the order they are pushed.
#[derive(Default)]
struct Args(Vec<Box<dyn ToSql + Sync + Send>>);

impl Args {
    /// Adds `v` and returns its placeholder.
    fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// The `FROM … WHERE …` of a list or count of `kind` matching `query`, after `after`, and the
/// alias the order columns (`org`, `sort`, `id`) come from.
///
/// Without tags, or with a cluster (a few hundred records at most), the records table is read
/// through its column indexes, the tags checked on its array. Otherwise the first tag's rows in
/// `pxb_record_tags`, which are in list order, drive the scan, so a page costs the page.
fn selection(kind: Kind, query: &Query, after: Option<Cursor>, args: &mut Args) -> (String, &'static str) {
    let k = args.push(kind.as_str().to_owned());
    let by_tag = !query.tags.is_empty() && query.cluster.is_none();
    let (mut sql, key) = if by_tag {
        let t = args.push(query.tags[0].clone());
        (
            format!(
                "FROM pxb_record_tags t JOIN pxb_records r ON r.kind = t.kind AND r.org = t.org \
                 AND r.id = t.id WHERE t.kind = {k} AND t.tag = {t}"
            ),
            "t",
        )
    } else {
        (format!("FROM pxb_records r WHERE r.kind = {k}"), "r")
    };
    let mut eq = |col: String, v: &Option<String>, sql: &mut String| {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = {}", args.push(v.clone())));
        }
    };
    eq(format!("{key}.org"), &query.org, &mut sql);
    eq("r.cluster".into(), &query.cluster, &mut sql);
    eq("r.location".into(), &query.location, &mut sql);
    if !by_tag {
        eq("r.status".into(), &query.status, &mut sql);
    }
    if let Some(f) = query.time_from_ms {
        sql.push_str(&format!(" AND r.time_ms >= {}", args.push(f)));
    }
    if let Some(t) = query.time_to_ms {
        sql.push_str(&format!(" AND r.time_ms < {}", args.push(t)));
    }
    if let Some(m) = &query.sort_min {
        sql.push_str(&format!(" AND {key}.sort >= {}", args.push(m.clone())));
    }
    if let Some(m) = &query.sort_max {
        sql.push_str(&format!(" AND {key}.sort <= {}", args.push(m.clone())));
    }
    if by_tag {
        // The other tags, and the status, are looked up in the tag rows (their key only), so a
        // candidate without them is passed over before its record is read.
        let status = query.status.as_deref().map(status_tag);
        for tag in query.tags[1..].iter().chain(status.as_ref()) {
            let u = args.push(tag.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM pxb_record_tags u WHERE u.kind = t.kind AND u.tag = {u} \
                 AND u.org = t.org AND u.sort = t.sort AND u.id = t.id)"
            ));
        }
    } else if !query.tags.is_empty() {
        sql.push_str(&format!(
            " AND r.tags @> {}::text[]",
            args.push(query.tags.clone())
        ));
    }
    if let Some(a) = after {
        let (o, s, i) = (args.push(a.org), args.push(a.sort), args.push(a.id));
        sql.push_str(&format!(
            " AND ({key}.org, {key}.sort, {key}.id) > ({o}, {s}, {i})"
        ));
    }
    (sql, key)
}

/// A put's outcome inside its transaction: the new revision, or why the expectation failed.
async fn put_one(tx: &deadpool_postgres::Transaction<'_>, p: &Put) -> Result<u64> {
    let tags = p.index.normalized_tags()?;
    let what = format!("{} {:?}", p.kind, p.id);
    let i = &p.index;
    let params: [&(dyn ToSql + Sync); 10] = [
        &p.kind.as_str(),
        &p.org,
        &p.id,
        &i.sort,
        &i.cluster,
        &i.location,
        &i.status,
        &i.time_ms,
        &p.doc,
        &tags,
    ];
    const INSERT: &str = "INSERT INTO pxb_records AS r
        (kind, org, id, revision, sort, cluster, location, status, time_ms, doc, tags)
        VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10)";
    const SET: &str =
        "sort = $4, cluster = $5, location = $6, status = $7, time_ms = $8, doc = $9, tags = $10";
    let row = match p.expect {
        None => {
            let sql = format!(
                "{INSERT} ON CONFLICT (kind, org, id) DO UPDATE SET revision = r.revision + 1, {SET}
                 RETURNING r.revision"
            );
            Some(
                tx.query_one(&tx.prepare_cached(&sql).await.map_err(db_err)?, &params)
                    .await
                    .map_err(db_err)?,
            )
        }
        Some(0) => {
            let sql = format!("{INSERT} ON CONFLICT (kind, org, id) DO NOTHING RETURNING r.revision");
            let row = tx
                .query_opt(&tx.prepare_cached(&sql).await.map_err(db_err)?, &params)
                .await
                .map_err(db_err)?;
            if row.is_none() {
                return Err(Error::precondition(format!("{what} already exists")));
            }
            row
        }
        Some(want) => {
            let sql = format!(
                "UPDATE pxb_records AS r SET revision = r.revision + 1, {SET}
                 WHERE r.kind = $1 AND r.org = $2 AND r.id = $3 AND r.revision = $11
                 RETURNING r.revision"
            );
            let want = want as i64;
            let mut with_want: Vec<&(dyn ToSql + Sync)> = params.to_vec();
            with_want.push(&want);
            tx.query_opt(&tx.prepare_cached(&sql).await.map_err(db_err)?, &with_want)
                .await
                .map_err(db_err)?
        }
    };
    match row {
        Some(row) => Ok(row.get::<_, i64>(0) as u64),
        None => {
            let have = current_revision(tx, p.kind, &p.org, &p.id).await?.unwrap_or(0);
            Err(Error::precondition(format!(
                "{what} is at revision {have} (expected {})",
                p.expect.unwrap_or(0)
            )))
        }
    }
}

async fn current_revision(
    client: &(impl deadpool_postgres::GenericClient + ?Sized),
    kind: Kind,
    org: &str,
    id: &str,
) -> Result<Option<u64>> {
    let row = client
        .query_opt(
            "SELECT revision FROM pxb_records WHERE kind = $1 AND org = $2 AND id = $3",
            &[&kind.as_str(), &org, &id],
        )
        .await
        .map_err(db_err)?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// Whether `e` is worth running the transaction again for (a deadlock or serialisation failure
/// between replicas writing the same records).
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { message, .. } if message.starts_with("the catalog database is busy"))
}

/// Checks `guard` in `tx`, holding its row (`FOR SHARE`) until the transaction ends, so that a
/// write that moves the guard (a takeover) waits for this transaction and cannot pass it.
async fn check_guard(tx: &deadpool_postgres::Transaction<'_>, guard: &Guard) -> Result<()> {
    let row = tx
        .query_opt(
            "SELECT revision FROM pxb_records WHERE kind = $1 AND org = $2 AND id = $3 FOR SHARE",
            &[&guard.kind.as_str(), &guard.org, &guard.id],
        )
        .await
        .map_err(db_err)?;
    guard.check(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// Deletes the record (at `expect`, when given) through `client`.
async fn delete_in(
    client: &(impl deadpool_postgres::GenericClient + ?Sized),
    kind: Kind,
    org: &str,
    id: &str,
    expect: Option<u64>,
) -> Result<bool> {
    let want = expect.map(|e| e as i64);
    let deleted = client
        .query_opt(
            "DELETE FROM pxb_records WHERE kind = $1 AND org = $2 AND id = $3
             AND ($4::BIGINT IS NULL OR revision = $4) RETURNING revision",
            &[&kind.as_str(), &org, &id, &want],
        )
        .await
        .map_err(db_err)?;
    if deleted.is_some() {
        return Ok(true);
    }
    let Some(want) = expect else {
        return Ok(false);
    };
    let what = format!("{kind} {id:?}");
    match (want, current_revision(client, kind, org, id).await?) {
        (_, None) if want == 0 => Ok(false),
        (0, Some(_)) => Err(Error::precondition(format!("{what} already exists"))),
        (want, have) => Err(Error::precondition(format!(
            "{what} is at revision {} (expected {want})",
            have.unwrap_or(0)
        ))),
    }
}

impl PostgresCatalog {
    /// Writes `puts` in one transaction, after checking `guard` in it; retried on a deadlock or
    /// serialisation failure.
    async fn put_checked(&self, guard: Option<&Guard>, puts: Vec<Put>) -> Result<Vec<u64>> {
        if puts.is_empty() && guard.is_none() {
            return Ok(Vec::new());
        }
        for p in &puts {
            check_put(p)?;
            p.index.normalized_tags()?;
        }
        if let Some(g) = guard {
            no_nul([g.org.as_str(), g.id.as_str()])?;
        }
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let tx = client.transaction().await.map_err(db_err)?;
                if let Some(g) = guard {
                    check_guard(&tx, g).await?;
                }
                let mut revs = Vec::with_capacity(puts.len());
                for p in &puts {
                    revs.push(put_one(&tx, p).await?);
                }
                tx.commit().await.map_err(db_err)?;
                Ok(revs)
            }
            .await;
            match result {
                Err(e) if attempt < 4 && retryable(&e) => {
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                }
                r => return r,
            }
        }
    }
}

#[async_trait]
impl CatalogStore for PostgresCatalog {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        no_nul([org, id])?;
        let client = self.pool.get().await.map_err(pool_err)?;
        let sql =
            format!("SELECT {COLUMNS} FROM pxb_records r WHERE r.kind = $1 AND r.org = $2 AND r.id = $3");
        let stmt = client.prepare_cached(&sql).await.map_err(db_err)?;
        match client
            .query_opt(&stmt, &[&kind.as_str(), &org, &id])
            .await
            .map_err(db_err)?
        {
            Some(row) => entry_of(kind, &row),
            None => Err(Error::not_found(format!("{kind} {id:?} in org {org:?}"))),
        }
    }

    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
        self.put_checked(None, puts).await
    }

    async fn put_guarded(&self, guard: &Guard, puts: Vec<Put>) -> Result<Vec<u64>> {
        self.put_checked(Some(guard), puts).await
    }

    async fn delete_guarded(
        &self,
        guard: &Guard,
        kind: Kind,
        org: &str,
        id: &str,
        expect: Option<u64>,
    ) -> Result<bool> {
        no_nul([org, id, guard.org.as_str(), guard.id.as_str()])?;
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        check_guard(&tx, guard).await?;
        let deleted = delete_in(&tx, kind, org, id, expect).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(deleted)
    }

    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        no_nul([org, id])?;
        let client = self.pool.get().await.map_err(pool_err)?;
        delete_in(&client, kind, org, id, expect).await
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        check_query(query)?;
        let after = query.after.as_deref().map(Cursor::decode).transpose()?;
        let limit = query.clamped_limit();
        let mut args = Args::default();
        let (from, key) = selection(kind, query, after, &mut args);
        let lim = args.push(limit as i64 + 1);
        let sql = format!("SELECT {COLUMNS} {from} ORDER BY {key}.org, {key}.sort, {key}.id LIMIT {lim}");
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client.prepare_cached(&sql).await.map_err(db_err)?;
        let rows = client.query(&stmt, &args.refs()).await.map_err(db_err)?;
        let mut items = rows
            .iter()
            .map(|r| entry_of(kind, r))
            .collect::<Result<Vec<_>>>()?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more {
            items.last().map(|e| Cursor::after(e).encode())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
        check_query(query)?;
        let mut args = Args::default();
        let (from, _) = selection(kind, query, None, &mut args);
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client
            .prepare_cached(&format!("SELECT COUNT(*) {from}"))
            .await
            .map_err(db_err)?;
        let n: i64 = client
            .query_one(&stmt, &args.refs())
            .await
            .map_err(db_err)?
            .get(0);
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        pg_config(&PostgresOptions::new(url)).expect_err(url).to_string()
    }

    #[test]
    fn urls_that_would_leak_or_go_without_tls_are_refused() {
        assert!(
            refused("postgres://pxb:secret@db.example:5432/pxb?sslmode=require").contains("passwordFile")
        );
        let no_tls = refused("postgres://pxb@db.example:5432/pxb");
        assert!(no_tls.contains("sslmode=require"), "{no_tls}");
        assert!(refused("postgres://pxb@10.0.0.1/pxb?sslmode=prefer").contains("sslmode=require"));
        assert!(refused("host=db user=pxb").contains("postgres://"));
        assert!(refused("postgres://pxb@db.example:5432/?sslmode=require").contains("no database"));
        assert!(refused("postgres://db.example:5432/pxb?sslmode=require").contains("no user"));
        // Local databases may go without TLS; remote ones with it are fine.
        for ok in [
            "postgres://pxb@127.0.0.1:5432/pxb",
            "postgres://pxb@localhost/pxb?sslmode=disable",
            "postgres://pxb@[::1]:5433/pxb",
            "postgres://pxb@db.example:5432/pxb?sslmode=require",
        ] {
            pg_config(&PostgresOptions::new(ok)).expect(ok);
        }
    }

    #[test]
    fn the_password_comes_from_its_file_without_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").expect("write");
        let config = pg_config(&PostgresOptions {
            password_file: Some(file),
            ..PostgresOptions::new("postgres://pxb@127.0.0.1/pxb")
        })
        .expect("config");
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        let missing = pg_config(&PostgresOptions {
            password_file: Some(dir.path().join("nope")),
            ..PostgresOptions::new("postgres://pxb@127.0.0.1/pxb")
        })
        .expect_err("missing file");
        assert!(missing.to_string().contains("passwordFile"), "{missing}");
    }
}
