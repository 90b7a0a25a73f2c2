//! Scenarios of `pxb-server` (part 1): a real server (SQLite catalog, OIDC login against a local
//! issuer, HTTP API on loopback), the simulated garden and shoots over HTTPS, real agents on the
//! shoots, and Azurite with Workload Identity.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt as _};
use pxb_daemon::crd::{BackupLocation, BackupLocationSpec};
use pxb_daemon::server::config::GardenCredential;
use pxb_tests::control::{ControlPlane, wait_for};
use pxb_tests::fixture::CLIENT_ID;
use pxb_tests::sim::Fault;
use reqwest::Method;
use serde_json::{Value, json};

const PROJECT: &str = "acme";

/// Creates org `id` whose admins are group `<id>-admins` and viewers `<id>-viewers`.
async fn create_org(cp: &ControlPlane, id: &str) {
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs",
            &cp.admin_token(),
            Some(json!({
                "id": id,
                "displayName": format!("Org {id}"),
                "access": [
                    {"role": "admin", "groups": [format!("{id}-admins")]},
                    {"role": "viewer", "groups": [format!("{id}-viewers")]},
                ],
            })),
        )
        .await
        .expect("create org");
    assert_eq!(status, 201, "{body}");
}

async fn add_discovery(cp: &ControlPlane, org: &str, token: &str) {
    let (status, body) = cp
        .call(
            Method::POST,
            &format!("/v1/orgs/{org}/discoveries"),
            token,
            Some(json!({"id": "dev", "project": PROJECT, "credential": PROJECT, "intervalSecs": 5})),
        )
        .await
        .expect("discovery");
    assert_eq!(status, 201, "{body}");
}

fn azure_location(cp: &ControlPlane, name: &str, container: &str) -> Value {
    json!({
        "name": name,
        "provider": "azure",
        "account": pxb_tests::azurite::ACCOUNT,
        "container": container,
        "endpoint": cp.azure.azurite.endpoint(),
        "clientId": CLIENT_ID,
        "clusters": {"all": true},
    })
}

/// Org `acme` (admin token returned) discovering the project, with a federated location
/// `primary` on a new container, assigned to every cluster.
async fn acme_with_primary(cp: &ControlPlane, tag: &str) -> (String, String) {
    create_org(cp, "acme").await;
    let acme = cp.token("alice", &["acme-admins"]);
    add_discovery(cp, "acme", &acme).await;
    let container = cp.azure.new_container(tag).await.expect("container");
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs/acme/locations",
            &acme,
            Some(azure_location(cp, "primary", &container)),
        )
        .await
        .expect("location");
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["mode"].as_str(), body["hasCredential"].as_bool()),
        (Some("federated"), Some(false))
    );
    (acme, container)
}

fn shoot(i: usize) -> String {
    format!("shoot-{i:05}")
}

/// The location's per-cluster validation phases, by cluster name.
async fn phases(
    cp: &ControlPlane,
    org: &str,
    location: &str,
    token: &str,
) -> Result<Vec<(String, String)>, String> {
    let body = cp
        .get_ok(
            &format!("/v1/orgs/{org}/locations/{location}/status?limit=1000"),
            token,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(body["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["clusterName"].as_str().unwrap_or_default().to_owned(),
                        s["validation"]["phase"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

async fn fleet_counts(cp: &ControlPlane, token: &str) -> Result<Value, String> {
    let body = cp
        .get_ok("/v1/fleet/status?limit=1000", token)
        .await
        .map_err(|e| e.to_string())?;
    Ok(body)
}

async fn managed_crs(cp: &ControlPlane, name: &str) -> anyhow::Result<Vec<String>> {
    let client = cp.shoot_client(PROJECT, name).await?;
    let api: Api<BackupLocation> = Api::namespaced(client, "pxb-system");
    Ok(api
        .list(&ListParams::default().labels("pxb.io/managed-by=pxb-server"))
        .await?
        .items
        .iter()
        .map(|l| l.name_any())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_federated_fleet_of_fifty_shoots() {
    let logs = pxb_tests::logs::captured().clone();
    let mut cp = ControlPlane::start(PROJECT, 50, |_| {})
        .await
        .expect("control plane");
    for i in 0..50 {
        cp.start_agent(PROJECT, &shoot(i)).await.expect("agent");
    }
    let blackholed: Vec<String> = (45..50).map(shoot).collect();
    for s in &blackholed {
        cp.fleet.set_fault(PROJECT, s, Fault::Offline).expect("fault");
    }
    let (acme, container) = acme_with_primary(&cp, "fleet50").await;
    create_org(&cp, "globex").await;
    let acme_viewer = cp.token("victor", &["acme-viewers"]);
    let globex = cp.token("gina", &["globex-admins"]);

    // 45 clusters validate the location; the 5 blackholed ones turn Unreachable. The fleet status
    // answers all along.
    let started = Instant::now();
    // (slowest fleet-status read, reads, when all 5 were Unreachable)
    let stats: Mutex<(Duration, u32, Option<Duration>)> = Mutex::new((Duration::ZERO, 0, None));
    wait_for("45 Valid and 5 Unreachable", Duration::from_secs(180), || async {
        let t = Instant::now();
        let fleet = fleet_counts(&cp, &acme).await?;
        let unreachable = fleet["counts"]["Unreachable"].as_u64().unwrap_or(0);
        {
            let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
            st.0 = st.0.max(t.elapsed());
            st.1 += 1;
            if unreachable == 5 && st.2.is_none() {
                st.2 = Some(started.elapsed());
            }
        }
        let p = phases(&cp, "acme", "primary", &acme).await?;
        let valid = p.iter().filter(|(_, ph)| ph == "Valid").count();
        let ready = fleet["counts"]["Ready"].as_u64().unwrap_or(0);
        if valid == 45 && ready == 45 && unreachable == 5 {
            Ok(Some(()))
        } else {
            Err(format!("valid {valid}, fleet counts {}", fleet["counts"]))
        }
    })
    .await
    .expect("validation pass");
    let fleet = fleet_counts(&cp, &acme).await.expect("fleet");
    let items = fleet["items"].as_array().expect("items");
    assert_eq!(items.len(), 50);
    let names: Vec<&str> = items.iter().filter_map(|e| e["cluster"].as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "the fleet status is ordered");
    for e in items {
        let name = e["cluster"].as_str().unwrap_or_default();
        if blackholed.iter().any(|b| b == name) {
            assert_eq!(e["state"], "Unreachable", "{e}");
        } else {
            assert_eq!(e["state"], "Ready", "{e}");
            assert_eq!(e["agentVersion"], pxb_daemon::agent::api::VERSION);
            assert!(e["stalenessSecs"].as_u64().is_some_and(|s| s < 60), "{e}");
        }
    }
    let (slowest_read, reads, unreachable_after) = *stats.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "fleet of 50: 45 Valid after {:?}; 5 Unreachable after {unreachable_after:?}; {reads} fleet-status reads, \
         slowest {slowest_read:?}",
        started.elapsed(),
    );
    assert!(
        unreachable_after.is_some_and(|d| d < Duration::from_secs(60)),
        "blackholed clusters turn Unreachable within a minute: {unreachable_after:?}"
    );

    // Cross-org access is refused on every endpoint family, and lists show nothing of acme.
    let foreign: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/v1/orgs/acme", None),
        (Method::PUT, "/v1/orgs/acme", Some(json!({"displayName": "mine"}))),
        (Method::GET, "/v1/orgs/acme/discoveries", None),
        (
            Method::POST,
            "/v1/orgs/acme/discoveries",
            Some(json!({"id": "x", "project": PROJECT, "credential": PROJECT})),
        ),
        (Method::GET, "/v1/orgs/acme/discoveries/dev", None),
        (Method::DELETE, "/v1/orgs/acme/discoveries/dev", None),
        (Method::GET, "/v1/orgs/acme/clusters", None),
        (Method::GET, "/v1/orgs/acme/clusters/shoot-00000", None),
        (Method::GET, "/v1/orgs/acme/locations", None),
        (
            Method::POST,
            "/v1/orgs/acme/locations",
            Some(azure_location(&cp, "evil", &container)),
        ),
        (Method::GET, "/v1/orgs/acme/locations/primary", None),
        (
            Method::PUT,
            "/v1/orgs/acme/locations/primary",
            Some(json!({"clusters": {"all": false}})),
        ),
        (Method::DELETE, "/v1/orgs/acme/locations/primary", None),
        (Method::GET, "/v1/orgs/acme/locations/primary/status", None),
        (Method::POST, "/v1/orgs/acme/locations/primary/validate", None),
        (
            Method::POST,
            "/v1/orgs/acme/locations/primary/sync",
            Some(json!({"cluster": "shoot-00000"})),
        ),
        (Method::GET, "/v1/orgs/acme/backups", None),
        (Method::GET, "/v1/orgs/acme/restores", None),
        (Method::GET, "/v1/orgs/acme/schedules", None),
        (Method::GET, "/v1/fleet/status?org=acme", None),
    ];
    for (method, path, body) in &foreign {
        let (status, resp) = cp
            .call(method.clone(), path, &globex, body.clone())
            .await
            .expect("call");
        assert_eq!(status, 403, "globex on {method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "forbidden", "{resp}");
        assert!(
            !resp.to_string().contains("shoot-0"),
            "a refusal leaks acme's data: {resp}"
        );
    }
    let globex_fleet = cp.get_ok("/v1/fleet/status", &globex).await.expect("fleet");
    assert_eq!(
        globex_fleet["items"].as_array().map(Vec::len),
        Some(0),
        "{globex_fleet}"
    );
    let globex_orgs = cp.get_ok("/v1/orgs", &globex).await.expect("orgs");
    let visible: Vec<&str> = globex_orgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(visible, vec!["globex"]);
    // Role bindings change through the API (provider admins only): victor becomes an operator.
    let (status, _) = cp
        .call(Method::PUT, "/v1/orgs/acme", &acme, Some(json!({"access": []})))
        .await
        .expect("call");
    assert_eq!(status, 403, "an org admin cannot change the org's bindings");
    let (status, body) = cp
        .call(
            Method::PUT,
            "/v1/orgs/acme",
            &cp.admin_token(),
            Some(json!({"access": [
                {"role": "admin", "groups": ["acme-admins"]},
                {"role": "operator", "groups": ["acme-viewers"]},
            ]})),
        )
        .await
        .expect("update org");
    assert_eq!(status, 200, "{body}");
    let who = cp.get_ok("/v1/whoami", &acme_viewer).await.expect("whoami");
    assert_eq!(who["orgs"]["acme"], "operator", "{who}");
    cp.call(
        Method::PUT,
        "/v1/orgs/acme",
        &cp.admin_token(),
        Some(json!({"access": [
            {"role": "admin", "groups": ["acme-admins"]},
            {"role": "viewer", "groups": ["acme-viewers"]},
        ]})),
    )
    .await
    .expect("restore bindings");
    // A viewer reads but cannot change; no token or a forged one gets 401.
    cp.get_ok("/v1/orgs/acme/locations/primary", &acme_viewer)
        .await
        .expect("viewer reads");
    let (status, _) = cp
        .call(
            Method::POST,
            "/v1/orgs/acme/locations/primary/validate",
            &acme_viewer,
            None,
        )
        .await
        .expect("call");
    assert_eq!(status, 403);
    let forged = cp.issuer.none_token(cp.issuer.claims_for(
        "mallory",
        pxb_tests::control::AUDIENCE,
        &[pxb_tests::control::PROVIDER_ADMINS],
        &[],
        3600,
    ));
    let (status, body) = cp
        .call(Method::GET, "/v1/orgs", &forged, None)
        .await
        .expect("call");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");

    // The blackholed clusters come back and validate too.
    for s in &blackholed {
        cp.fleet.set_fault(PROJECT, s, Fault::None).expect("lift");
    }
    wait_for("all 50 Valid", Duration::from_secs(120), || async {
        let p = phases(&cp, "acme", "primary", &acme).await?;
        let valid = p.iter().filter(|(_, ph)| ph == "Valid").count();
        (valid == 50)
            .then_some(())
            .ok_or(format!("{valid} valid"))
            .map(Some)
    })
    .await
    .expect("recovery");

    // A location can be Valid on one cluster and Invalid on another: one cluster uses an identity
    // Entra does not know.
    let mut secondary = azure_location(&cp, "secondary", &container);
    secondary["clusterClientIds"] = json!({shoot(3): "00000000-0000-4000-8000-00000000dead"});
    let (status, body) = cp
        .call(Method::POST, "/v1/orgs/acme/locations", &acme, Some(secondary))
        .await
        .expect("secondary");
    assert_eq!(status, 201, "{body}");
    wait_for("49 Valid and 1 Invalid", Duration::from_secs(120), || async {
        let p = phases(&cp, "acme", "secondary", &acme).await?;
        let valid = p.iter().filter(|(_, ph)| ph == "Valid").count();
        let invalid: Vec<&String> = p
            .iter()
            .filter(|(_, ph)| ph == "Invalid")
            .map(|(c, _)| c)
            .collect();
        if valid == 49 && invalid == vec![&shoot(3)] {
            Ok(Some(()))
        } else {
            Err(format!("{valid} valid, invalid {invalid:?}"))
        }
    })
    .await
    .expect("per-cluster results");
    let st = cp
        .get_ok(
            &format!("/v1/orgs/acme/locations/secondary/status?cluster={}", shoot(3)),
            &acme,
        )
        .await
        .expect("status");
    assert_eq!(st["items"][0]["validation"]["failedStep"], "authenticate", "{st}");
    wait_for("Degraded", Duration::from_secs(60), || async {
        let s = cluster_state(&cp, "acme", &shoot(3), &acme).await?;
        if s == "Degraded" { Ok(Some(())) } else { Err(s) }
    })
    .await
    .expect("the cluster with the invalid location is Degraded");
    let (status, _) = cp
        .call(Method::DELETE, "/v1/orgs/acme/locations/secondary", &acme, None)
        .await
        .expect("delete");
    assert_eq!(status, 204);

    // A CR the server no longer wants (another org's, e.g. from a cluster registered before under
    // another identity) is deleted on the next visit.
    let c0 = cp.shoot_client(PROJECT, &shoot(0)).await.expect("client");
    let api: Api<BackupLocation> = Api::namespaced(c0.clone(), "pxb-system");
    let mut stale = BackupLocation::new(
        "stale",
        BackupLocationSpec {
            provider: "file".into(),
            container: "/nonexistent".into(),
            ..BackupLocationSpec::default()
        },
    );
    stale.metadata.labels = Some(
        [
            ("pxb.io/managed-by", "pxb-server"),
            ("pxb.io/org", "globex"),
            ("pxb.io/uid", "0000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    api.create(&PostParams::default(), &stale)
        .await
        .expect("stale CR");
    wait_for("the stale CR is deleted", Duration::from_secs(60), || async {
        let names = managed_crs(&cp, &shoot(0)).await.map_err(|e| e.to_string())?;
        (!names.contains(&"stale".to_string()))
            .then_some(())
            .ok_or(format!("{names:?}"))
            .map(Some)
    })
    .await
    .expect("orphan of another org");

    // The location is deleted while 10 clusters are offline: the 40 others lose its CR at once,
    // the 10 when they return.
    let offline: Vec<String> = (40..50).map(shoot).collect();
    for s in &offline {
        cp.fleet.set_fault(PROJECT, s, Fault::Offline).expect("fault");
    }
    let (status, body) = cp
        .call(Method::DELETE, "/v1/orgs/acme/locations/primary", &acme, None)
        .await
        .expect("delete");
    assert_eq!(status, 204, "{body}");
    wait_for(
        "no CR on the 40 online clusters",
        Duration::from_secs(120),
        || async {
            for i in 0..40 {
                let names = managed_crs(&cp, &shoot(i)).await.map_err(|e| e.to_string())?;
                if !names.is_empty() {
                    return Err(format!("{} still has {names:?}", shoot(i)));
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .expect("online clusters cleaned");
    for s in &offline {
        cp.fleet.set_fault(PROJECT, s, Fault::None).expect("lift");
    }
    wait_for("no CR left anywhere", Duration::from_secs(120), || async {
        for i in 0..50 {
            let names = managed_crs(&cp, &shoot(i)).await.map_err(|e| e.to_string())?;
            if !names.is_empty() {
                return Err(format!("{} still has {names:?}", shoot(i)));
            }
        }
        Ok(Some(()))
    })
    .await
    .expect("returning clusters cleaned");

    // Metrics pass promtool.
    let metrics = reqwest::get(format!("{}/metrics", cp.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("pxb_server_clusters{state=\"Ready\"}"),
        "{metrics}"
    );
    pxb_tests::promtool_check_metrics(&metrics).expect("promtool");

    // The secret scan: nothing the server held or saw in federated mode is in its database, its
    // logs or its environment.
    let mut secrets: Vec<(String, String)> = vec![
        (
            "the Azurite account key".into(),
            pxb_tests::azurite::ACCOUNT_KEY.into(),
        ),
        ("the garden service-account token".into(), cp.garden_token.clone()),
        (
            "the projected service-account token".into(),
            std::fs::read_to_string(cp.azure.token_file()).expect("token file"),
        ),
    ];
    let server = cp.server().clone();
    let providers = server.providers();
    assert_eq!(providers.len(), 1);
    for info in providers[0].inventory().iter().take(10) {
        let access = pxb_core::cluster::ClusterProvider::access(providers[0].as_ref(), &info.id)
            .await
            .expect("access");
        let key_body: String = access
            .client_key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        secrets.push((format!("the client key of {}", info.name), key_body));
    }
    cp.stop().await;
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(
        std::path::Path::new(&server.config().catalog.path)
            .parent()
            .expect("dir"),
    )
    .expect("dir")
    {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("catalog.db"))
        {
            haystacks.push((path.display().to_string(), std::fs::read(&path).expect("read")));
        }
    }
    assert!(
        haystacks.len() >= 2,
        "the catalog and its WAL: {:?}",
        haystacks.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    let log_bytes = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        log_bytes.len() > 10_000,
        "the logs were captured ({} bytes)",
        log_bytes.len()
    );
    haystacks.push(("the logs".into(), log_bytes));
    let env: String = std::env::vars().map(|(k, v)| format!("{k}={v}\n")).collect();
    haystacks.push(("the environment".into(), env.into_bytes()));
    assert!(
        haystacks
            .iter()
            .any(|(_, b)| b.windows(11).any(|w| w == b"shoot-00000")),
        "the scan reads the real catalog"
    );
    for (what, secret) in &secrets {
        let needle = secret.trim();
        assert!(needle.len() >= 20, "{what} is long enough to scan for");
        for probe in [needle.to_owned(), needle[..needle.len().min(40)].to_owned()] {
            for (where_, bytes) in &haystacks {
                let found = bytes.windows(probe.len()).any(|w| w == probe.as_bytes());
                assert!(!found, "{what} found in {where_}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_cut_off_midway_stalls_and_a_new_one_supersedes_it() {
    let mut cp = ControlPlane::start(PROJECT, 1, |c| c.fleet.lease_secs = 4)
        .await
        .expect("control plane");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    let (acme, _) = acme_with_primary(&cp, "stall").await;
    wait_for("Valid", Duration::from_secs(90), || async {
        let p = phases(&cp, "acme", "primary", &acme).await?;
        Ok((p.len() == 1 && p[0].1 == "Valid").then_some(()))
    })
    .await
    .expect("valid");

    let sync_status = || async {
        let body = cp
            .get_ok("/v1/orgs/acme/locations/primary/status", &acme)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Value, String>(body["items"][0]["sync"].clone())
    };
    let request_sync = || {
        cp.call(
            Method::POST,
            "/v1/orgs/acme/locations/primary/sync",
            &acme,
            Some(json!({"cluster": shoot(0)})),
        )
    };

    // The storage hangs, so the sync stays in progress; then the cluster drops off the network.
    cp.azure.azurite.pause().expect("pause");
    let (status, body) = request_sync().await.expect("sync");
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["request"].as_i64(), body["phase"].as_str()),
        (Some(1), Some("Pending"))
    );
    let (status, body) = request_sync().await.expect("second sync");
    assert_eq!(status, 409, "a second trigger while one runs is refused: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Pending") && m.contains("lease")),
        "{body}"
    );
    wait_for("the sync runs", Duration::from_secs(60), || async {
        let s = sync_status().await?;
        if s["phase"] == "InProgress" {
            Ok(Some(()))
        } else {
            Err(format!("{s}"))
        }
    })
    .await
    .expect("in progress");
    cp.fleet
        .set_fault(PROJECT, &shoot(0), Fault::Offline)
        .expect("blackhole");
    let cut = Instant::now();
    let stalled = wait_for("the sync stalls", Duration::from_secs(60), || async {
        let s = sync_status().await?;
        if s["phase"] == "Stalled" {
            Ok(Some(s))
        } else {
            Err(format!("{s}"))
        }
    })
    .await
    .expect("stalled");
    let took = cut.elapsed();
    assert!(
        took < Duration::from_secs(4 + 10),
        "Stalled within the 4 s lease (plus a visit): {took:?}"
    );
    assert!(
        stalled["message"]
            .as_str()
            .is_some_and(|m| m.contains("no heartbeat")),
        "{stalled}"
    );
    // The fleet status still answers, and names the cluster Unreachable.
    wait_for("Unreachable", Duration::from_secs(30), || async {
        let f = fleet_counts(&cp, &acme).await?;
        Ok((f["items"][0]["state"] == "Unreachable").then_some(()))
    })
    .await
    .expect("unreachable");

    // A new sync is accepted and supersedes the stalled one; it cannot be delivered yet.
    let (status, body) = request_sync().await.expect("new sync");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["request"], 2);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("supersedes stalled request 1")),
        "{body}"
    );

    // The cluster and the storage come back: the agent finishes and reports the new request.
    cp.fleet.set_fault(PROJECT, &shoot(0), Fault::None).expect("lift");
    cp.azure.azurite.resume().expect("resume");
    let done = wait_for("the new sync completes", Duration::from_secs(120), || async {
        let s = sync_status().await?;
        if s["phase"] == "Completed" && s["request"] == 2 {
            Ok(Some(s))
        } else {
            Err(format!("{s}"))
        }
    })
    .await
    .expect("completed");
    assert_eq!(done["backupsFound"], 0, "{done}");
    let (status, body) = request_sync().await.expect("third sync");
    assert_eq!(status, 202, "once done, a sync may be requested again: {body}");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_orgs_are_degraded_and_classic_secrets_are_sealed() {
    let key_a = base64_key(1);
    let mut cp = ControlPlane::start(PROJECT, 1, |_| {})
        .await
        .expect("control plane");
    let key_file = cp.dir.path().join("secrets.key");
    std::fs::write(&key_file, &key_a).expect("key");
    cp.config.secrets.key_file = key_file.display().to_string();
    cp.restart_server().await.expect("restart with a key");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    for org in ["acme", "globex", "initech"] {
        create_org(&cp, org).await;
    }
    let admin = cp.admin_token();

    // Every documented operation is routed (401 without a token, never 404 or 405).
    for (method, path) in pxb_daemon::server::openapi::operations() {
        let path = path.replace("{org}", "acme").replace("{name}", "x");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let (status, body) = cp.call(m, &path, "", None).await.expect("call");
        assert_eq!(status, 401, "{method} {path}: {body}");
    }

    // Classic: the credential is sealed in the catalog, delivered as a labelled Secret, and the
    // agent validates with it.
    let acme = cp.token("alice", &["acme-admins"]);
    add_discovery(&cp, "acme", &acme).await;
    let container = cp.azure.new_container("classic").await.expect("container");
    let mut loc = azure_location(&cp, "classic", &container);
    loc["mode"] = json!("classic");
    loc["clientId"] = Value::Null;
    loc["credential"] = json!({"accountKey": pxb_tests::azurite::ACCOUNT_KEY});
    loc["sync"] = json!(true);
    let (status, body) = cp
        .call(Method::POST, "/v1/orgs/acme/locations", &acme, Some(loc.clone()))
        .await
        .expect("loc");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["hasCredential"], true);
    assert!(
        !body.to_string().contains(pxb_tests::azurite::ACCOUNT_KEY),
        "the credential is never shown"
    );
    wait_for("classic Valid", Duration::from_secs(90), || async {
        let p = phases(&cp, "acme", "classic", &acme).await?;
        Ok((p.len() == 1 && p[0].1 == "Valid").then_some(()))
    })
    .await
    .expect("classic location valid");
    // `sync: true`: the first sync runs when the location is assigned, and is tracked.
    let first_sync = wait_for("the first sync", Duration::from_secs(60), || async {
        let body = cp
            .get_ok("/v1/orgs/acme/locations/classic/status", &acme)
            .await
            .map_err(|e| e.to_string())?;
        let sync = body["items"][0]["sync"].clone();
        if sync["phase"] == "Completed" {
            Ok(Some(sync))
        } else {
            Err(sync.to_string())
        }
    })
    .await
    .expect("first sync on assignment");
    assert_eq!(first_sync["request"], 0, "{first_sync}");
    // Unassigned, the location's CR, Secret and status leave the cluster; assigned again, it is
    // validated again.
    let put = |body: Value| cp.call(Method::PUT, "/v1/orgs/acme/locations/classic", &acme, Some(body));
    let (status, body) = put(json!({"clusters": {"names": []}})).await.expect("unassign");
    assert_eq!(status, 200, "{body}");
    let client0 = cp.shoot_client(PROJECT, &shoot(0)).await.expect("client");
    let crs: Api<BackupLocation> = Api::namespaced(client0.clone(), "pxb-system");
    let secrets0: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client0, "pxb-system");
    wait_for("unassigned", Duration::from_secs(60), || async {
        let cr = crs.get_opt("classic").await.map_err(|e| e.to_string())?;
        let secret = secrets0
            .get_opt("pxb-location-classic")
            .await
            .map_err(|e| e.to_string())?;
        let st = phases(&cp, "acme", "classic", &acme).await?;
        if cr.is_none() && secret.is_none() && st.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!(
                "cr {}, secret {}, status {st:?}",
                cr.is_some(),
                secret.is_some()
            ))
        }
    })
    .await
    .expect("the location leaves the cluster");
    let (status, body) = put(json!({"clusters": {"all": true}, "bogus": 1}))
        .await
        .expect("call");
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(json!({"clusters": {"all": true}})).await.expect("reassign");
    assert_eq!(status, 200, "{body}");
    wait_for("classic Valid again", Duration::from_secs(90), || async {
        let p = phases(&cp, "acme", "classic", &acme).await?;
        if p.len() == 1 && p[0].1 == "Valid" {
            Ok(Some(()))
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await
    .expect("valid again");
    let client = cp.shoot_client(PROJECT, &shoot(0)).await.expect("client");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "pxb-system");
    let secret = secrets
        .get("pxb-location-classic")
        .await
        .expect("secret delivered");
    assert_eq!(
        secret.labels().get("pxb.io/managed-by").map(String::as_str),
        Some("pxb-server")
    );
    assert_eq!(
        secret.labels().get("pxb.io/org").map(String::as_str),
        Some("acme")
    );
    let db = std::fs::read(&cp.config.catalog.path).expect("db");
    let wal = std::fs::read(format!("{}-wal", cp.config.catalog.path)).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(20)
                .any(|w| w == &pxb_tests::azurite::ACCOUNT_KEY.as_bytes()[..20]),
            "the account key is stored in clear"
        );
    }
    // Hostile and malformed requests get a 4xx with a JSON error.
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs/acme/locations",
            &acme,
            Some(json!({"name": "x", "bogus": 1})),
        )
        .await
        .expect("call");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, _) = cp
        .call(Method::GET, "/v1/orgs/..%2F..%2Fetc/locations", &acme, None)
        .await
        .expect("call");
    assert_eq!(status, 400);
    let (status, body) = cp
        .call(
            Method::GET,
            "/v1/orgs/acme/backups?limit=99999999999999999999",
            &acme,
            None,
        )
        .await
        .expect("call");
    assert_eq!(status, 400, "{body}");
    let plain = json!({"name": "plain", "provider": "azure", "container": "c", "endpoint": "http://127.0.0.1:1/acct",
                       "clusters": {"all": true}});
    let (status, body) = cp
        .call(Method::POST, "/v1/orgs/acme/locations", &acme, Some(plain))
        .await
        .expect("call");
    assert_eq!(status, 400, "a plain-http endpoint is refused: {body}");
    let relative =
        json!({"name": "rel", "provider": "file", "container": "backups", "clusters": {"all": true}});
    let (status, body) = cp
        .call(Method::POST, "/v1/orgs/acme/locations", &acme, Some(relative))
        .await
        .expect("call");
    assert_eq!(status, 400, "a relative directory is refused: {body}");
    // The server answers an oversized body with 413 and closes the connection without reading
    // the rest, so this request gets a client (and connection) of its own.
    let big = json!({"name": "x".repeat(2 << 20)});
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/orgs/acme/locations", cp.url))
        .bearer_auth(&acme)
        .header("content-type", "application/json")
        .body(big.to_string())
        .send()
        .await
        .expect("oversized body");
    assert_eq!(resp.status(), 413);
    let body: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    let (status, body) = cp
        .call(Method::GET, "/v1/orgs/acme/backups?limit=5000", &acme, None)
        .await
        .expect("call");
    assert_eq!(status, 200, "huge page sizes are clamped: {body}");

    // Preferences: the tab is kept per user across logins; the time bracket per sign-in session.
    let login = |sid: &str| {
        let mut c = cp
            .issuer
            .claims_for("alice", pxb_tests::control::AUDIENCE, &["acme-admins"], &[], 3600);
        c["sid"] = json!(sid);
        cp.issuer.token(c)
    };
    let first = login("session-1");
    let prefs = cp.get_ok("/v1/me/preferences", &first).await.expect("prefs");
    assert_eq!(
        (prefs["tab"].as_str(), prefs["timeBracket"]["kind"].as_str()),
        (Some("namespaces"), Some("24h"))
    );
    let (status, body) = cp
        .call(
            Method::PUT,
            "/v1/me/preferences",
            &first,
            Some(json!({"tab": "vms", "timeBracket": {"kind": "7d"}})),
        )
        .await
        .expect("put prefs");
    assert_eq!(status, 200, "{body}");
    let prefs = cp.get_ok("/v1/me/preferences", &first).await.expect("prefs");
    assert_eq!(
        (prefs["tab"].as_str(), prefs["timeBracket"]["kind"].as_str()),
        (Some("vms"), Some("7d"))
    );
    for bad in [
        json!({"timeBracket": {"kind": "custom", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}}),
        json!({"timeBracket": {"kind": "fortnight"}}),
        json!({"tab": "cards"}),
    ] {
        let (status, body) = cp
            .call(Method::PUT, "/v1/me/preferences", &first, Some(bad))
            .await
            .expect("call");
        assert_eq!(status, 400, "{body}");
    }
    let second = login("session-2");
    let prefs = cp.get_ok("/v1/me/preferences", &second).await.expect("prefs");
    assert_eq!(
        (prefs["tab"].as_str(), prefs["timeBracket"]["kind"].as_str()),
        (Some("vms"), Some("24h")),
        "a new login keeps the tab and starts with the last 24 hours"
    );

    // initech gets a classic location too; then, while the server is down, initech's sealed
    // credential and globex's org record are damaged on disk.
    let initech = cp.token("ivan", &["initech-admins"]);
    loc["name"] = json!("vault");
    let (status, body) = cp
        .call(Method::POST, "/v1/orgs/initech/locations", &initech, Some(loc))
        .await
        .expect("loc");
    assert_eq!(status, 201, "{body}");
    if let Some(d) = cp.daemon.take() {
        d.shutdown().await;
    }
    let conn = rusqlite::Connection::open(&cp.config.catalog.path).expect("open");
    let n = conn
        .execute(
            "UPDATE records SET doc = CAST(json_set(CAST(doc AS TEXT), '$.credential.sealed.ciphertext', \
             'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA') AS BLOB) WHERE kind = 'location' AND org = 'initech'",
            [],
        )
        .expect("damage the sealed credential");
    assert_eq!(n, 1);
    let n = conn
        .execute(
            "UPDATE records SET doc = x'7b6e6f742d6a736f6e' WHERE kind = 'org' AND org = 'globex'",
            [],
        )
        .expect("corrupt");
    assert_eq!(n, 1);
    drop(conn);
    cp.restart_server().await.expect("restart");

    // Anonymous probes learn only how many orgs are degraded; a provider admin learns which.
    let ready = reqwest::get(format!("{}/readyz", cp.url)).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let anonymous = ready.text().await.expect("body");
    assert!(
        !anonymous.contains("globex") && !anonymous.contains("initech") && !anonymous.contains("decode"),
        "{anonymous}"
    );
    let anonymous: Value = serde_json::from_str(&anonymous).expect("json");
    assert_eq!(anonymous["degradedOrgCount"], 2, "{anonymous}");
    let viewer = cp.token("victor", &["acme-viewers"]);
    let (_, as_viewer) = cp
        .call(Method::GET, "/readyz", &viewer, None)
        .await
        .expect("readyz");
    assert!(as_viewer.get("degradedOrgs").is_none(), "{as_viewer}");
    let (status, ready) = cp
        .call(Method::GET, "/readyz", &cp.admin_token(), None)
        .await
        .expect("readyz");
    assert_eq!(status, 200);
    let degraded = ready["degradedOrgs"].as_object().expect("degradedOrgs");
    let keys: Vec<&str> = degraded.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["globex", "initech"], "{ready}");
    assert!(
        degraded["globex"]
            .as_str()
            .is_some_and(|r| r.contains("does not decode")),
        "{ready}"
    );
    assert!(
        degraded["initech"]
            .as_str()
            .is_some_and(|r| r.contains("does not decrypt")),
        "{ready}"
    );
    let (status, body) = cp
        .call(Method::GET, "/v1/orgs/globex", &admin, None)
        .await
        .expect("call");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("org_degraded")),
        "{body}"
    );
    let orgs = cp.get_ok("/v1/orgs", &admin).await.expect("orgs");
    let states: Vec<(String, String)> = orgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap_or_default().into(),
                o["state"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("acme".into(), "Ready".into()),
            ("globex".into(), "Degraded".into()),
            ("initech".into(), "Degraded".into())
        ]
    );
    let prefs = cp.get_ok("/v1/me/preferences", &second).await.expect("prefs");
    assert_eq!(prefs["tab"], "vms", "the tab survives a restart");
    // acme is served as before.
    wait_for("acme still served and valid", Duration::from_secs(60), || async {
        let p = phases(&cp, "acme", "classic", &acme).await?;
        Ok((p.len() == 1 && p[0].1 == "Valid").then_some(()))
    })
    .await
    .expect("acme served");
    cp.shutdown().await;
}

fn base64_key(seed: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

/// The state of the org's cluster `name` in the API.
async fn cluster_state(cp: &ControlPlane, org: &str, name: &str, token: &str) -> Result<String, String> {
    let c = cp
        .get_ok(&format!("/v1/orgs/{org}/clusters/{name}"), token)
        .await
        .map_err(|e| e.to_string())?;
    Ok(c["status"]["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_install_imported_clusters_and_retired_shoots() {
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("secrets.key");
    std::fs::write(&key_file, base64_key(3)).expect("key");
    let mut cp = ControlPlane::start(PROJECT, 3, |c| {
        c.secrets.key_file = key_file.display().to_string();
        c.garden_credentials.insert(
            "broken".into(),
            GardenCredential::new("/nonexistent/garden.yaml").for_orgs(["globex"]),
        );
    })
    .await
    .expect("control plane");
    create_org(&cp, "acme").await;
    create_org(&cp, "globex").await;
    let acme = cp.token("alice", &["acme-admins"]);
    let globex = cp.token("gina", &["globex-admins"]);
    add_discovery(&cp, "acme", &acme).await;

    // A discovery whose garden credential cannot be read says so, and keeps retrying; the good
    // one runs and counts the project's shoots.
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs/globex/discoveries",
            &globex,
            Some(json!({"id": "broken", "project": "globex-prod", "credential": "broken"})),
        )
        .await
        .expect("discovery");
    assert_eq!(status, 201, "{body}");
    wait_for("Failing with the reason", Duration::from_secs(30), || async {
        let d = cp
            .get_ok("/v1/orgs/globex/discoveries/broken", &globex)
            .await
            .map_err(|e| e.to_string())?;
        let ok = d["status"]["state"] == "Failing"
            && d["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("reading the garden credential"));
        if ok { Ok(Some(())) } else { Err(d.to_string()) }
    })
    .await
    .expect("failing discovery");
    wait_for("Running", Duration::from_secs(30), || async {
        let d = cp
            .get_ok("/v1/orgs/acme/discoveries/dev", &acme)
            .await
            .map_err(|e| e.to_string())?;
        if d["status"]["state"] == "Running" && d["status"]["shoots"] == 3 {
            Ok(Some(()))
        } else {
            Err(d.to_string())
        }
    })
    .await
    .expect("running discovery");
    let (status, _) = cp
        .call(
            Method::DELETE,
            "/v1/orgs/globex/discoveries/broken",
            &globex,
            None,
        )
        .await
        .expect("call");
    assert_eq!(status, 204);

    // Without an agent, and with zero-touch install off (the default), clusters say so.
    for i in 0..3 {
        let state = wait_for("AgentMissing", Duration::from_secs(60), || async {
            let s = cluster_state(&cp, "acme", &shoot(i), &acme).await?;
            if s == "AgentMissing" { Ok(Some(s)) } else { Err(s) }
        })
        .await
        .expect("agent missing");
        assert_eq!(state, "AgentMissing");
    }
    let client = cp.shoot_client(PROJECT, &shoot(0)).await.expect("client");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "pxb-system");
    assert!(
        deployments.get_opt("pxb-agent").await.is_err()
            || deployments.get_opt("pxb-agent").await.ok().flatten().is_none()
    );

    // Zero-touch install on: the agent's CRDs and manifests are applied with the configured image.
    cp.config.fleet.install_agent = true;
    cp.config.fleet.agent_image = "registry.test/pxb-agent:0.1.0".into();
    cp.restart_server().await.expect("restart");
    for i in 0..3 {
        wait_for("Ready after install", Duration::from_secs(60), || async {
            let s = cluster_state(&cp, "acme", &shoot(i), &acme).await?;
            if s == "Ready" { Ok(Some(())) } else { Err(s) }
        })
        .await
        .expect("installed");
    }
    let d = deployments.get("pxb-agent").await.expect("deployment installed");
    let image = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(image.as_deref(), Some("registry.test/pxb-agent:0.1.0"));
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    crds.get("backuplocations.pxb.io").await.expect("CRD installed");

    // Classic import: globex imports a cluster by kubeconfig; it is visited, and the kubeconfig
    // is stored sealed and never shown.
    let kubeconfig = cp
        .fleet
        .admin_kubeconfig(PROJECT, &shoot(2), 3600)
        .expect("kubeconfig");
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs/globex/clusters",
            &globex,
            Some(json!({"name": "edge", "kubeconfig": "{not a kubeconfig"})),
        )
        .await
        .expect("bad import");
    assert_eq!(status, 400, "{body}");
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs/globex/clusters",
            &globex,
            Some(json!({"name": "edge", "kubeconfig": kubeconfig})),
        )
        .await
        .expect("import");
    assert_eq!(status, 201, "{body}");
    assert!(body.get("sealedKubeconfig").is_none(), "{body}");
    wait_for(
        "the imported cluster is visited",
        Duration::from_secs(60),
        || async {
            let s = cluster_state(&cp, "globex", "edge", &globex).await?;
            if s == "Ready" { Ok(Some(())) } else { Err(s) }
        },
    )
    .await
    .expect("imported visited");
    let key_pem: String = kubeconfig
        .lines()
        .find(|l| l.trim_start().starts_with("client-key-data:"))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("client key in the kubeconfig");
    let db = std::fs::read(&cp.config.catalog.path).expect("db");
    let wal = std::fs::read(format!("{}-wal", cp.config.catalog.path)).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(40).any(|w| w == &key_pem.as_bytes()[..40]),
            "the imported key is stored in clear"
        );
    }
    // The imported cluster survives a restart (opened from its sealed kubeconfig).
    cp.restart_server().await.expect("restart");
    wait_for("visited after restart", Duration::from_secs(60), || async {
        let body = cp
            .get_ok("/v1/orgs/globex/clusters/edge", &globex)
            .await
            .map_err(|e| e.to_string())?;
        let seen = body["status"]["lastSeen"].as_str().map(str::to_owned);
        if body["status"]["state"] == "Ready" && seen.is_some() {
            Ok(Some(()))
        } else {
            Err(body.to_string())
        }
    })
    .await
    .expect("imported after restart");

    // An agent older than the minimum is AgentOutdated; a hibernated shoot is Hibernated.
    let patch = json!({"metadata": {"labels": {"pxb.io/version": "0.0.1"}}});
    deployments
        .patch(
            "pxb-agent",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("label an old version");
    wait_for("AgentOutdated", Duration::from_secs(60), || async {
        let body = cp
            .get_ok(&format!("/v1/orgs/acme/clusters/{}", shoot(0)), &acme)
            .await
            .map_err(|e| e.to_string())?;
        let ok = body["status"]["state"] == "AgentOutdated"
            && body["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("0.0.1"));
        if ok {
            Ok(Some(()))
        } else {
            Err(body["status"].to_string())
        }
    })
    .await
    .expect("outdated agent");
    cp.fleet.hibernate(PROJECT, &shoot(0)).expect("hibernate");
    wait_for("Hibernated", Duration::from_secs(60), || async {
        let s = cluster_state(&cp, "acme", &shoot(0), &acme).await?;
        if s == "Hibernated" { Ok(Some(())) } else { Err(s) }
    })
    .await
    .expect("hibernated");

    // A deleted shoot is retired and stays listed; a removed import too.
    cp.fleet.delete_shoot(PROJECT, &shoot(1)).expect("delete shoot");
    wait_for("Retired", Duration::from_secs(60), || async {
        let s = cluster_state(&cp, "acme", &shoot(1), &acme).await?;
        if s == "Retired" { Ok(Some(())) } else { Err(s) }
    })
    .await
    .expect("retired");
    let list = cp.get_ok("/v1/orgs/acme/clusters", &acme).await.expect("list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3), "{list}");
    let (status, body) = cp
        .call(
            Method::DELETE,
            &format!("/v1/orgs/acme/clusters/{}", shoot(0)),
            &acme,
            None,
        )
        .await
        .expect("call");
    assert_eq!(status, 409, "a discovered cluster is not removed by hand: {body}");
    let (status, _) = cp
        .call(Method::DELETE, "/v1/orgs/globex/clusters/edge", &globex, None)
        .await
        .expect("call");
    assert_eq!(status, 204);
    assert_eq!(
        cluster_state(&cp, "globex", "edge", &globex)
            .await
            .expect("state"),
        "Retired"
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_delete_while_the_cluster_is_away_survives_a_restart_and_keeps_the_data() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use pxb_daemon::crd::ApplicationBackup;

    let mut cp = ControlPlane::start(PROJECT, 1, |_| {})
        .await
        .expect("control plane");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    let (acme, container) = acme_with_primary(&cp, "forced").await;
    wait_for("Valid", Duration::from_secs(90), || async {
        let p = phases(&cp, "acme", "primary", &acme).await?;
        Ok((p.len() == 1 && p[0].1 == "Valid").then_some(()))
    })
    .await
    .expect("valid");
    let client = cp.shoot_client(PROJECT, &shoot(0)).await.expect("client");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "orders", "namespace": "shop"}, "data": {"a": "1"}}),
    )
    .expect("configmap");
    Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &cm)
        .await
        .expect("configmap");

    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs/acme/backups",
            &acme,
            Some(json!({"clusters": {"names": [shoot(0)]}, "namespaces": ["shop"], "location": "primary"})),
        )
        .await
        .expect("backup");
    assert_eq!(status, 202, "{body}");
    let id = body["items"][0]["id"].as_str().expect("id").to_owned();
    let done = wait_for("the backup succeeds", Duration::from_secs(120), || async {
        let b = cp
            .get_ok(&format!("/v1/orgs/acme/backups/{id}"), &acme)
            .await
            .map_err(|e| e.to_string())?;
        match b["phase"].as_str() {
            Some("Success") => Ok(Some(b)),
            Some("Pending" | "InProgress") => Err(format!("{b}")),
            _ => panic!("the backup did not succeed: {b}"),
        }
    })
    .await
    .expect("success");
    let data_id = done["backupId"].as_str().expect("data id").to_owned();
    let crs: Api<ApplicationBackup> = Api::namespaced(client.clone(), "pxb-system");
    assert!(
        crs.get_opt(&id).await.expect("get").is_some(),
        "the cluster holds the object"
    );

    // The cluster drops off; the record is force-deleted and the server restarts before the
    // cluster is back.
    cp.fleet
        .set_fault(PROJECT, &shoot(0), Fault::Offline)
        .expect("offline");
    wait_for("Unreachable", Duration::from_secs(30), || async {
        let f = fleet_counts(&cp, &acme).await?;
        Ok((f["items"][0]["state"] == "Unreachable").then_some(()))
    })
    .await
    .expect("unreachable");
    let (status, body) = cp
        .call(
            Method::DELETE,
            &format!("/v1/orgs/acme/backups/{id}?force=true"),
            &acme,
            None,
        )
        .await
        .expect("force-delete");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["recordRemoved"].as_bool(), body["dataRemains"].as_bool()),
        (Some(true), Some(true))
    );
    cp.restart_server().await.expect("restart");
    let (status, _) = cp
        .call(Method::GET, &format!("/v1/orgs/acme/backups/{id}"), &acme, None)
        .await
        .expect("get");
    assert_eq!(status, 404, "the record stays gone after the restart");

    // Back online: the restarted server removes the object, and the data stays.
    cp.fleet
        .set_fault(PROJECT, &shoot(0), Fault::None)
        .expect("online");
    wait_for("the object is removed", Duration::from_secs(90), || async {
        match crs.get_opt(&id).await {
            Ok(None) => Ok(Some(())),
            Ok(Some(cr)) => Err(format!("still there: {:?}", cr.metadata.annotations)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("object removed");
    let store = Arc::new(pxb_azure::AzureBlobStore::new(cp.azure.key_config(&container)).expect("store"));
    let kept = pxb_core::backup::Repository::new(store)
        .list()
        .await
        .expect("list the location");
    assert!(
        kept.iter().any(|s| s.id.to_string() == data_id),
        "the data of {data_id} remains: {kept:?}"
    );
    // Nothing is left to clean up: the marker went with the object.
    wait_for("the marker is dropped", Duration::from_secs(30), || async {
        let n = cp
            .server()
            .catalog()
            .store()
            .count(
                pxb_core::catalog::Kind::ForcedDelete,
                &pxb_core::catalog::Query::org("acme"),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((n == 0).then_some(()))
    })
    .await
    .expect("marker dropped");
    cp.shutdown().await;
}
