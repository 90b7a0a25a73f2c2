//! The PostgreSQL catalog against a real PostgreSQL (Debian's, started by the harness on a
//! loopback port): the catalog conformance suite unchanged, schema versions, replicas migrating
//! and writing at once, TLS to the database, and the errors of a database that is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pxb_core::Error;
use pxb_core::catalog::{CatalogStore, Index, Kind, Put, Query};
use pxb_daemon::server::postgres::{PostgresCatalog, PostgresOptions, SCHEMA_VERSION};
use pxb_harness::postgres::{Postgres, ServerTls};
use pxb_harness::tls::TestCa;

/// A server of the test's own (a `static` one would outlive the test binary) and a catalog in
/// database `name` of it.
async fn database(name: &str) -> (Postgres, String, PostgresCatalog) {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database(name).expect("create database");
    let url = pg.url(name);
    let catalog = PostgresCatalog::connect(&PostgresOptions::new(&url))
        .await
        .expect("connect");
    (pg, url, catalog)
}

fn put(org: &str, id: &str) -> Put {
    Put {
        kind: Kind::Backup,
        org: org.into(),
        id: id.into(),
        index: Index {
            sort: id.into(),
            tags: vec!["ns=shop".into()],
            ..Index::default()
        },
        doc: br#"{"id":1}"#.to_vec(),
        expect: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_conformance_suite_passes_on_postgresql() {
    let (_pg, _, catalog) = database("conformance").await;
    pxb_core::catalog::conformance::run_all(&catalog).await;
}

/// Replicas share one catalog: several pools (one per replica) racing to create and update the
/// same records lose no update, as the conformance suite checks within one pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_on_one_database_lose_no_update() {
    let (_pg, url, first) = database("replicas").await;
    let mut replicas: Vec<Arc<PostgresCatalog>> = vec![Arc::new(first)];
    for _ in 0..2 {
        replicas.push(Arc::new(
            PostgresCatalog::connect(&PostgresOptions::new(&url))
                .await
                .expect("connect"),
        ));
    }
    let mut tasks = Vec::new();
    for (r, catalog) in replicas.iter().enumerate() {
        for w in 0..3 {
            let catalog = catalog.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0;
                while done < 20 {
                    let e = match catalog.get(Kind::Schedule, "o", "slot").await {
                        Ok(e) => Some(e),
                        Err(Error::NotFound { .. }) => None,
                        Err(e) => panic!("replica {r} writer {w}: {e}"),
                    };
                    let n: u64 = e
                        .as_ref()
                        .map_or(0, |e| String::from_utf8_lossy(&e.doc).parse().expect("doc"));
                    let p = Put {
                        kind: Kind::Schedule,
                        org: "o".into(),
                        id: "slot".into(),
                        index: Index::default(),
                        doc: (n + 1).to_string().into_bytes(),
                        expect: Some(e.map_or(0, |e| e.revision)),
                    };
                    match catalog.put(vec![p]).await {
                        Ok(_) => done += 1,
                        Err(Error::Precondition { .. }) => {}
                        Err(e) => panic!("replica {r} writer {w}: {e}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let e = replicas[2].get(Kind::Schedule, "o", "slot").await.expect("get");
    assert_eq!(String::from_utf8_lossy(&e.doc), "180", "updates were lost");
    assert_eq!(e.revision, 180);
}

/// Replicas starting at once on an empty database migrate it once; a database a newer pxb
/// wrote is refused with a clear error and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_replicas_migrate_once_and_newer_is_refused() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("schema").expect("create database");
    let url = pg.url("schema");
    let options = PostgresOptions::new(&url);
    let opened = futures::future::join_all((0..4).map(|_| PostgresCatalog::connect(&options))).await;
    for o in &opened {
        assert!(o.is_ok(), "{o:?}");
    }
    let catalog = opened.into_iter().next().expect("one").expect("connect");
    assert_eq!(catalog.schema_version().await.expect("version"), SCHEMA_VERSION);
    assert_eq!(
        pg.psql("schema", "SELECT count(*) FROM pxb_schema")
            .expect("psql")
            .trim(),
        "1",
        "one version row"
    );
    catalog.put(vec![put("o", "kept")]).await.expect("put");
    pg.psql(
        "schema",
        &format!("UPDATE pxb_schema SET version = {}", SCHEMA_VERSION + 1),
    )
    .expect("bump");
    let before = pg
        .psql(
            "schema",
            "SELECT kind, org, id, revision, doc FROM pxb_records ORDER BY 1, 2, 3",
        )
        .expect("rows");
    let err = PostgresCatalog::connect(&PostgresOptions::new(&url))
        .await
        .expect_err("newer schema");
    assert!(matches!(err, Error::Precondition { .. }), "{err:?}");
    assert!(err.to_string().contains("newer than this pxb-server"), "{err}");
    assert!(err.to_string().contains("/schema"), "names the database: {err}");
    let after = pg
        .psql(
            "schema",
            "SELECT kind, org, id, revision, doc FROM pxb_records ORDER BY 1, 2, 3",
        )
        .expect("rows");
    assert_eq!(before, after);
    assert!(
        catalog.migrate_to(1).await.is_err(),
        "a database past the target is refused"
    );
}

/// Values PostgreSQL text cannot hold are refused with a clear error, not the database's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_nul_are_refused_clearly() {
    let (_pg, _, catalog) = database("nul").await;
    let err = catalog
        .put(vec![put("o", "a\0b")])
        .await
        .expect_err("NUL in an id");
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("NUL"), "{err}");
    let err = catalog
        .list(
            Kind::Backup,
            &Query {
                tags: vec!["ns=\0".into()],
                ..Query::org("o")
            },
        )
        .await
        .expect_err("NUL in a tag");
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(
        matches!(
            catalog.get(Kind::Backup, "o\0", "x").await,
            Err(Error::Invalid { .. })
        ),
        "get"
    );
}

/// A database that is not there is `Unavailable`, named, and reported within the connect
/// timeout; one that goes away under a working catalog makes its calls `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_gone_is_unavailable_and_named() {
    let port = pxb_harness::free_port().expect("port");
    let url = format!("postgres://pxb@127.0.0.1:{port}/gone?sslmode=disable");
    let started = Instant::now();
    let err = PostgresCatalog::connect(&PostgresOptions::new(&url))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}/gone")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // A server stopped under a working catalog: calls fail as unavailable, without hanging.
    let mut own = Postgres::start().expect("start");
    own.create_database("away").expect("db");
    let catalog = PostgresCatalog::connect(&PostgresOptions::new(own.url("away")))
        .await
        .expect("connect");
    catalog.put(vec![put("o", "a")]).await.expect("put");
    own.stop();
    for _ in 0..2 {
        let err = tokio::time::timeout(Duration::from_secs(30), catalog.get(Kind::Backup, "o", "a"))
            .await
            .expect("no hang")
            .expect_err("server stopped");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    }
}

/// TLS to the database: with `sslmode=require` the server's certificate is checked against
/// `caFile`; a certificate from another CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_checks_the_certificate() {
    let ca = TestCa::generate().expect("ca");
    let pg = Postgres::start_with(Some(ServerTls {
        cert_file: ca.server_cert_file(),
        key_file: ca.server_key_file(),
    }))
    .expect("start with TLS");
    pg.create_database("tls").expect("db");
    let url = format!("postgres://pxb@localhost:{}/tls?sslmode=require", pg.port());
    let catalog = PostgresCatalog::connect(&PostgresOptions::new(&url).with_ca_file(ca.ca_file()))
        .await
        .expect("connect over TLS");
    catalog.put(vec![put("o", "a")]).await.expect("put");
    let over_tls: u32 = pg
        .psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'pxb-server' AND s.ssl",
        )
        .expect("psql")
        .trim()
        .parse()
        .expect("count");
    let plain: u32 = pg
        .psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'pxb-server' AND NOT s.ssl",
        )
        .expect("psql")
        .trim()
        .parse()
        .expect("count");
    assert!(
        over_tls >= 1 && plain == 0,
        "the catalog's connections: {over_tls} over TLS, {plain} plain"
    );
    let other = TestCa::generate().expect("other ca");
    let err = PostgresCatalog::connect(&PostgresOptions::new(&url).with_ca_file(other.ca_file()))
        .await
        .expect_err("certificate of another CA");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
}

/// A `pxb-server` process; killed when dropped.
struct ServerProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(token: &str, env: &[(&str, &std::ffi::OsStr)]) -> ServerProcess {
    use std::io::BufRead as _;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pxb-server"));
    cmd.env("PXB_DEV_TOKEN", token)
        .env("PXB_API_LISTEN", "127.0.0.1:0")
        .env("PXB_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start pxb-server");
    let stdout = child.stdout.take().expect("stdout");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .and_then(|l| l.ok())
        .unwrap_or_default();
    let Some(url) = line.strip_prefix("READY ").map(str::to_owned) else {
        let _ = child.kill();
        panic!("pxb-server did not start: {line:?}");
    };
    ServerProcess { child, url }
}

fn migrate(from: &str, to: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxb-server"))
        .args(["catalog", "migrate", "--from", from, "--to", to])
        .output()
        .expect("run migrate");
    assert!(
        out.status.success(),
        "migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The way a provider moves: a server on its SQLite file is stopped, `pxb-server catalog
/// migrate` copies the catalog to PostgreSQL and verifies it, and the server started with
/// `catalog.url` serves the same orgs, locations and backups, and writes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_moves_from_sqlite_to_postgresql_and_serves_the_same_catalog() {
    use pxb_core::catalog::Catalog;
    use pxb_core::catalog::records::BackupRecord;
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = dir.path().join("catalog.db");
    let token = "0123456789abcdef0123456789abcdef";
    let http = reqwest::Client::new();
    let post = |url: String, body: &'static str| {
        http.post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    {
        let server = start_server(token, &[("PXB_CATALOG_PATH", sqlite.as_os_str())]);
        let r = post(
            format!("{}/v1/orgs", server.url),
            r#"{"id":"acme","displayName":"Acme"}"#,
        )
        .await
        .expect("org");
        assert_eq!(r.status(), 201);
        let r = post(
            format!("{}/v1/orgs/acme/locations", server.url),
            r#"{"name":"primary","provider":"file","container":"/var/lib/pxb/backups","clusters":{"all":true}}"#,
        )
        .await
        .expect("location");
        assert_eq!(r.status(), 201);
    }
    // Backups as the server records them, more than a page of the copy.
    {
        let store = pxb_daemon::server::sqlite::SqliteCatalog::open(&sqlite)
            .await
            .expect("open");
        let backups: Vec<Put> = (0..1_500)
            .map(|i| {
                Catalog::put_of(
                    &BackupRecord {
                        org: "acme".into(),
                        id: format!("c1-{i:05}"),
                        namespaces: vec!["shop".into()],
                        created_ms: 1_700_000_000_000 + i,
                        ..BackupRecord::default()
                    },
                    None,
                )
                .expect("put of")
            })
            .collect();
        store.put(backups).await.expect("backups");
    }

    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("moved").expect("db");
    let from = format!("sqlite:{}", sqlite.display());
    let out = migrate(&from, &pg.url("moved"));
    assert!(
        out.contains("copied 1502 records (0 were there already)"),
        "{out}"
    );
    assert!(out.contains("verified 1502 records"), "{out}");
    let again = migrate(&from, &pg.url("moved"));
    assert!(
        again.contains("copied 0 records (1502 were there already)"),
        "{again}"
    );

    let url = std::ffi::OsString::from(pg.url("moved"));
    let server = start_server(
        token,
        &[
            ("PXB_CATALOG_URL", url.as_os_str()),
            // Not used with a URL: a path that cannot be created shows it.
            ("PXB_CATALOG_PATH", std::ffi::OsStr::new("/proc/no/catalog.db")),
        ],
    );
    let get = |path: String| {
        http.get(format!("{}{path}", server.url))
            .bearer_auth(token)
            .send()
    };
    let orgs = get("/v1/orgs".into())
        .await
        .expect("orgs")
        .text()
        .await
        .expect("body");
    assert!(orgs.contains("\"acme\""), "{orgs}");
    let loc = get("/v1/orgs/acme/locations/primary".into())
        .await
        .expect("location");
    assert_eq!(loc.status(), 200);
    let backup = get("/v1/orgs/acme/backups/c1-01234".into())
        .await
        .expect("backup");
    assert_eq!(
        backup.status(),
        200,
        "{}",
        backup.text().await.unwrap_or_default()
    );
    // Writes go to PostgreSQL.
    let r = post(
        format!("{}/v1/orgs", server.url),
        r#"{"id":"globex","displayName":"Globex"}"#,
    )
    .await
    .expect("org");
    assert_eq!(r.status(), 201);
    assert_eq!(
        pg.psql(
            "moved",
            "SELECT count(*) FROM pxb_records WHERE kind = 'org' AND id = 'globex'"
        )
        .expect("psql")
        .trim(),
        "1"
    );
}

/// A database of schema 1 (tags only in the records' arrays) is migrated on connect: the tag
/// rows lists walk are written for every stored record, and kept up to date from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_database_gets_its_tag_rows_on_upgrade() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("upgrade").expect("db");
    let options = PostgresOptions::new(pg.url("upgrade"));
    let old = PostgresCatalog::connect_at(&options, 1).await.expect("schema 1");
    assert_eq!(old.schema_version().await.expect("version"), 1);
    let tagged = |i: usize| {
        let mut p = put("o", &format!("b{i:05}"));
        p.index.tags = if i.is_multiple_of(3) {
            vec!["ns=shop".into(), "view=vms".into()]
        } else {
            vec!["ns=db".into()]
        };
        p
    };
    old.put((0..1_500).map(tagged).collect()).await.expect("backups");
    drop(old);
    let catalog = PostgresCatalog::connect(&options).await.expect("upgrade");
    assert_eq!(catalog.schema_version().await.expect("version"), SCHEMA_VERSION);
    let q = |tags: &[&str]| Query {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Query::org("o")
    };
    assert_eq!(
        catalog
            .count(Kind::Backup, &q(&["ns=shop"]))
            .await
            .expect("count"),
        500
    );
    assert_eq!(
        catalog.count(Kind::Backup, &q(&["ns=db"])).await.expect("count"),
        1_000
    );
    assert_eq!(
        catalog
            .count(Kind::Backup, &q(&["view=vms", "ns=shop"]))
            .await
            .expect("count"),
        500
    );
    let page = catalog.list(Kind::Backup, &q(&["ns=shop"])).await.expect("list");
    assert_eq!(page.items.len(), 500);
    assert!(page.items.windows(2).all(|w| w[0].id < w[1].id), "in list order");
    // Retagged and deleted records leave the tag rows.
    let mut moved = tagged(0);
    moved.index.tags = vec!["ns=db".into()];
    catalog.put(vec![moved]).await.expect("retag");
    assert!(
        catalog
            .delete(Kind::Backup, "o", "b00003", None)
            .await
            .expect("delete")
    );
    assert_eq!(
        catalog
            .count(Kind::Backup, &q(&["ns=shop"]))
            .await
            .expect("count"),
        498
    );
    assert_eq!(
        catalog.count(Kind::Backup, &q(&["ns=db"])).await.expect("count"),
        1_001
    );
    assert_eq!(
        pg.psql("upgrade", "SELECT count(*) FROM pxb_record_tags")
            .expect("psql")
            .trim(),
        (498 * 2 + 1_001).to_string(),
        "one row per tag of every record, none left over"
    );
}

/// A role that must give a password: the wrong one (from `catalog.passwordFile`) is refused with
/// an error that says so, names the database and never the password; the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_database_password_is_refused_clearly_and_never_shown() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("locked").expect("db");
    pg.psql(
        "locked",
        "CREATE ROLE app LOGIN PASSWORD 'right-horse-battery'; \
         GRANT ALL ON DATABASE locked TO app; GRANT ALL ON SCHEMA public TO app;",
    )
    .expect("role");
    // Role `app` authenticates with SCRAM (the harness's own superuser keeps `trust`).
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}")).expect("pg_hba.conf");
    pg.psql("locked", "SELECT pg_reload_conf()").expect("reload");
    let url = format!("postgres://app@127.0.0.1:{}/locked?sslmode=disable", pg.port());
    let dir = tempfile::tempdir().expect("dir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong-staple\n").expect("file");
    let started = Instant::now();
    let err = PostgresCatalog::connect(&PostgresOptions::new(&url).with_password_file(&wrong))
        .await
        .expect_err("a wrong password");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Invalid { .. }),
        "a configuration error, not a retry: {err:?}"
    );
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        text.contains("catalog.passwordFile"),
        "says what to check: {text}"
    );
    assert!(text.contains("/locked"), "names the database: {text}");
    assert!(!text.contains("wrong-staple"), "shows the password: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let right = dir.path().join("right");
    std::fs::write(&right, "right-horse-battery\n").expect("file");
    let catalog = PostgresCatalog::connect(&PostgresOptions::new(&url).with_password_file(&right))
        .await
        .expect("the right password");
    catalog.put(vec![put("o", "a")]).await.expect("put");
}
