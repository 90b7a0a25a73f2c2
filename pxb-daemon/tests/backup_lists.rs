//! Backup lists filtered by namespace and view (index tags) alone and with other filters, on the
//! embedded SQLite catalog through the real HTTP API: following `next` yields every match exactly
//! once, newest first, whatever the page size.

use std::sync::Arc;

use pxb_core::catalog::records::{BackupRecord, BackupView, Org};
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};
use serde_json::Value;

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
    let url = format!("http://{}/v1/orgs/acme/backups", daemon.addr);
    let http = reqwest::Client::new();
    let follow = |query: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut ids = Vec::new();
            let mut after: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut q = query.clone();
                if let Some(a) = &after {
                    q.push_str(&format!("&after={a}"));
                }
                let r = http
                    .get(format!("{url}?{q}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("get");
                assert_eq!(r.status(), 200, "{q}");
                let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
                ids.extend(
                    v["items"]
                        .as_array()
                        .expect("items")
                        .iter()
                        .map(|b| b["id"].as_str().expect("id").to_owned()),
                );
                pages += 1;
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_owned()),
                    None => return (ids, pages),
                }
            }
        }
    };
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
        let (vms, pages) = follow(format!("view=vms&limit={limit}")).await;
        let want = expect(&|b| b.view == BackupView::Vms);
        assert_eq!(vms, want, "limit {limit}: every VM backup once, newest first");
        assert_eq!(pages, want.len().div_ceil(limit).max(1), "full pages");
        let (ns, _) = follow(format!("namespace=ns-1&limit={limit}")).await;
        assert_eq!(ns, expect(&|b| b.namespaces[0] == "ns-1"));
        let (both, _) = follow(format!("namespace=ns-2&view=namespaces&limit={limit}")).await;
        assert_eq!(
            both,
            expect(&|b| b.namespaces[0] == "ns-2" && b.view == BackupView::Namespaces)
        );
        // With a cluster, the records are read by cluster and their tags checked.
        let (on_c1, _) = follow(format!("namespace=ns-0&view=vms&cluster=c1&limit={limit}")).await;
        assert_eq!(
            on_c1,
            expect(&|b| b.namespaces[0] == "ns-0" && b.view == BackupView::Vms && b.cluster == "c1")
        );
        let (recent, _) = follow(format!("view=vms&from={from}&limit={limit}")).await;
        assert_eq!(
            recent,
            expect(&|b| b.view == BackupView::Vms && b.created_ms >= now - 600_000)
        );
    }
    // Nothing matches: one empty page.
    let (none, pages) = follow("namespace=absent&limit=100".into()).await;
    assert!(none.is_empty());
    assert_eq!(pages, 1);
    // A bad view is a clear 400.
    let r = http
        .get(format!("{url}?view=tables"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    daemon.shutdown().await;
}
