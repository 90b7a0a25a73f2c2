//! Backup lists filtered by namespace and view (index tags) alone and with other filters, on the
//! embedded SQLite catalog through the real HTTP API and the typed client: following `next`
//! yields every match exactly once, newest first, whatever the page size.

use std::sync::Arc;

use pxb_core::api::rest::{ErrorCode, ListQuery};
use pxb_core::catalog::records::{BackupRecord, BackupView, Org};
use pxb_daemon::client::Client;
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};

const TOKEN: &str = "list-test-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_backup_lists_page_through_every_match_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::from_yaml(DEFAULT_CONFIG_YAML).expect("config");
    config.api.listen = "127.0.0.1:0".into();
    let built = ServerBuilder::new(config)
        .catalog(Arc::new(
            pxb_daemon::server::sqlite::SqliteCatalog::open(dir.path().join("catalog.db"))
                .await
                .expect("catalog"),
        ))
        .clock(Arc::new(pxb_core::SystemClock))
        .dev_token(TOKEN)
        .build()
        .await
        .expect("server");
    let server = built.server().clone();
    server
        .create_org(Org {
            id: "acme".into(),
            ..Org::default()
        })
        .await
        .expect("org");
    let now = 1_790_000_000_000i64;
    let all: Vec<BackupRecord> = (0..2500i64)
        .map(|i| BackupRecord {
            org: "acme".into(),
            id: format!("b{i:05}"),
            cluster: format!("c{}", i % 4),
            location: "loc".into(),
            namespaces: vec![format!("ns-{}", i % 3)],
            phase: pxb_core::catalog::records::BackupPhase::Success,
            // Some share a creation time: the id breaks the tie.
            created_ms: now - (i / 2) * 1000,
            view: if i % 7 == 0 {
                BackupView::Vms
            } else {
                BackupView::Namespaces
            },
            ..BackupRecord::default()
        })
        .collect();
    server.catalog().put_all(&all).await.expect("fill");

    let daemon = built.spawn().expect("spawn");
    let client = Client::builder(format!("http://{}", daemon.addr))
        .token(TOKEN)
        .build()
        .expect("client");
    // Every page of `query`, following `next`: the ids in the order served, and how many pages.
    let follow = |query: ListQuery| {
        let client = &client;
        async move {
            let mut pages = 0;
            let backups = client
                .all(query.clone(), |q| {
                    pages += 1;
                    async move { client.list_backups("acme", &q).await }
                })
                .await
                .unwrap_or_else(|e| panic!("{query:?}: {e}"));
            let ids: Vec<String> = backups.into_iter().map(|b| b.id).collect();
            (ids, pages)
        }
    };
    let query = |limit: usize| ListQuery {
        limit: Some(limit as u64),
        ..ListQuery::default()
    };
    let view = |v: &str| Some(v.to_owned());
    let mut newest_first = all.clone();
    newest_first.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
    let expect = |f: &dyn Fn(&BackupRecord) -> bool| -> Vec<String> {
        let want: Vec<String> = newest_first
            .iter()
            .filter(|b| f(b))
            .map(|b| b.id.clone())
            .collect();
        assert!(!want.is_empty(), "every checked filter matches some backups");
        want
    };
    let from = pxb_core::clock::rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis((now - 600_000) as u64),
    );
    for limit in [7, 50, 1000] {
        let (vms, pages) = follow(ListQuery {
            view: view("vms"),
            ..query(limit)
        })
        .await;
        let want = expect(&|b| b.view == BackupView::Vms);
        assert_eq!(vms, want, "limit {limit}: every VM backup once, newest first");
        assert_eq!(pages, want.len().div_ceil(limit).max(1), "full pages");
        let (ns, _) = follow(ListQuery {
            namespace: Some("ns-1".into()),
            ..query(limit)
        })
        .await;
        assert_eq!(ns, expect(&|b| b.namespaces[0] == "ns-1"));
        let (both, _) = follow(ListQuery {
            namespace: Some("ns-2".into()),
            view: view("namespaces"),
            ..query(limit)
        })
        .await;
        assert_eq!(
            both,
            expect(&|b| b.namespaces[0] == "ns-2" && b.view == BackupView::Namespaces)
        );
        // With a cluster, the records are read by cluster and their tags checked.
        let (on_c1, _) = follow(ListQuery {
            namespace: Some("ns-0".into()),
            view: view("vms"),
            cluster: Some("c1".into()),
            ..query(limit)
        })
        .await;
        assert_eq!(
            on_c1,
            expect(&|b| b.namespaces[0] == "ns-0" && b.view == BackupView::Vms && b.cluster == "c1")
        );
        let (recent, _) = follow(ListQuery {
            view: view("vms"),
            from: Some(from.clone()),
            ..query(limit)
        })
        .await;
        assert_eq!(
            recent,
            expect(&|b| b.view == BackupView::Vms && b.created_ms >= now - 600_000)
        );
    }
    // Nothing matches: one empty page.
    let (none, pages) = follow(ListQuery {
        namespace: Some("absent".into()),
        ..query(100)
    })
    .await;
    assert!(none.is_empty());
    assert_eq!(pages, 1);
    // A bad view is a clear 400.
    let err = client
        .list_backups(
            "acme",
            &ListQuery {
                view: view("tables"),
                ..ListQuery::default()
            },
        )
        .await
        .expect_err("a bad view is refused");
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some(ErrorCode::BadRequest)),
        "{err}"
    );
    assert!(err.message().contains("\"tables\""), "{err}");
    daemon.shutdown().await;
}
