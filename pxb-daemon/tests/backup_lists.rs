//! Backup lists with the filters the index cannot answer (namespace, view): following `next`
//! yields every match exactly once, newest first, whatever the page size, through the real HTTP
//! API.

use std::sync::Arc;

use pxb_core::catalog::MemoryCatalog;
use pxb_core::catalog::records::{BackupRecord, BackupView, Org};
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};
use pxb_daemon::server::{Server, ServerDeps, api, auth};
use serde_json::Value;

const TOKEN: &str = "list-test-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_backup_lists_page_through_every_match_exactly_once() {
    let server = Server::build(
        ServerConfig::from_yaml(DEFAULT_CONFIG_YAML).expect("config"),
        ServerDeps {
            catalog: Arc::new(MemoryCatalog::new()),
            clock: Arc::new(pxb_core::SystemClock),
            authenticator: Arc::new(auth::DevToken::new(TOKEN)),
            sealer: None,
        },
    )
    .await
    .expect("server");
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
            phase: "Success".into(),
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

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/v1/orgs/acme/backups",
        listener.local_addr().expect("addr")
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(api::serve(server.clone(), listener, async {
        let _ = stopped.await;
    }));
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
        newest_first
            .iter()
            .filter(|b| f(b))
            .map(|b| b.id.clone())
            .collect()
    };
    let order_free = |mut v: Vec<String>| {
        v.sort();
        v
    };

    for limit in [7, 50, 1000] {
        let (vms, _) = follow(format!("view=vms&limit={limit}")).await;
        let want = expect(&|b| b.view == BackupView::Vms);
        assert_eq!(vms.len(), want.len(), "limit {limit}: every VM backup once");
        assert_eq!(order_free(vms.clone()), order_free(want.clone()));
        let (ns, _) = follow(format!("namespace=ns-1&limit={limit}")).await;
        assert_eq!(order_free(ns), order_free(expect(&|b| b.namespaces[0] == "ns-1")));
        let (both, _) = follow(format!("namespace=ns-2&view=namespaces&limit={limit}")).await;
        assert_eq!(
            order_free(both),
            order_free(expect(
                &|b| b.namespaces[0] == "ns-2" && b.view == BackupView::Namespaces
            ))
        );
    }
    // Newest first across pages.
    let (vms, _) = follow("view=vms&limit=13".into()).await;
    let created: Vec<i64> = vms
        .iter()
        .map(|id| all.iter().find(|b| &b.id == id).expect("known").created_ms)
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Nothing matches: empty, and done within the scan budget.
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
    let _ = stop.send(());
    serving.await.expect("join").expect("serve");
}
