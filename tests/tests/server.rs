//! Scenarios of `pxb-server` (part 1): a real server (SQLite catalog, OIDC login against a local
//! issuer, HTTP API on loopback), the simulated garden and shoots over HTTPS, real agents on the
//! shoots, and Azurite with Workload Identity.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt as _};
use pxb_core::api::rest::{
    BackupRequest, CreateDiscovery, CreateLocation, CreateOrg, CredentialInput, DiscoveryState, ErrorCode,
    FleetStatusView, ImportCluster, ListQuery, SyncRequestBody, Tab, TimeBracket, UpdateLocation, UpdateOrg,
    UpdatePreferences,
};
use pxb_core::catalog::records::{
    ClusterSelector, ClusterState, Mode, RequestPhase, Role, RoleBinding, SyncRun,
};
use pxb_daemon::client::ClientError;
use pxb_daemon::crd::{BackupLocation, BackupLocationSpec};
use pxb_daemon::server::config::GardenCredential;
use pxb_tests::control::{ControlPlane, wait_for};
use pxb_tests::sim::Fault;
use reqwest::Method;
use serde_json::{Value, json};

const PROJECT: &str = "acme";

/// `role` for members of `group`.
fn binding(role: Role, group: &str) -> RoleBinding {
    RoleBinding {
        role,
        groups: vec![group.to_owned()],
        app_roles: Vec::new(),
    }
}

/// Creates org `id` whose admins are group `<id>-admins` and viewers `<id>-viewers`.
async fn create_org(cp: &ControlPlane, id: &str) {
    let org = cp
        .admin_client()
        .create_org(&CreateOrg {
            id: id.into(),
            display_name: format!("Org {id}"),
            mode: Mode::default(),
            access: vec![
                binding(Role::Admin, &format!("{id}-admins")),
                binding(Role::Viewer, &format!("{id}-viewers")),
            ],
        })
        .await
        .expect("create org");
    assert_eq!((org.id.as_str(), org.state.as_str()), (id, "Ready"), "{org:?}");
}

async fn add_discovery(cp: &ControlPlane, org: &str, token: &str) {
    let d = cp
        .client(token)
        .create_discovery(
            org,
            &CreateDiscovery {
                id: "dev".into(),
                project: PROJECT.into(),
                credential: PROJECT.into(),
                interval_secs: Some(5),
            },
        )
        .await
        .expect("discovery");
    assert_eq!(
        (d.config.id.as_str(), d.config.project.as_str()),
        ("dev", PROJECT),
        "{d:?}"
    );
}

/// Every cluster of the org.
fn all_clusters() -> ClusterSelector {
    ClusterSelector {
        all: true,
        ..ClusterSelector::default()
    }
}

/// These clusters, by name.
fn named(names: &[&str]) -> ClusterSelector {
    ClusterSelector {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..ClusterSelector::default()
    }
}

/// `location` as a raw request body.
fn raw(location: &CreateLocation) -> Value {
    serde_json::to_value(location).expect("a location is JSON")
}

/// Org `acme` (admin token returned) discovering the project, with a federated location
/// `primary` on a new container, assigned to every cluster.
async fn acme_with_primary(cp: &ControlPlane, tag: &str) -> (String, String) {
    create_org(cp, "acme").await;
    let acme = cp.token("alice", &["acme-admins"]);
    add_discovery(cp, "acme", &acme).await;
    let container = cp.azure.new_container(tag).await.expect("container");
    let loc = cp
        .client(&acme)
        .create_location("acme", &cp.azure_location("primary", &container, all_clusters()))
        .await
        .expect("location");
    assert_eq!(
        (loc.mode, loc.has_credential),
        (Mode::Federated, false),
        "{loc:?}"
    );
    (acme, container)
}

fn shoot(i: usize) -> String {
    format!("shoot-{i:05}")
}

/// A list query of one page of up to `limit` items.
fn limit(limit: u64) -> ListQuery {
    ListQuery {
        limit: Some(limit),
        ..ListQuery::default()
    }
}

/// The location's per-cluster validation phases, by cluster name.
async fn phases(
    cp: &ControlPlane,
    org: &str,
    location: &str,
    token: &str,
) -> Result<Vec<(String, String)>, String> {
    let list = cp
        .client(token)
        .location_status(org, location, &limit(1000))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .map(|s| (s.cluster_name, s.validation.phase.to_string()))
        .collect())
}

/// The fleet status (up to 1000 clusters).
async fn fleet_counts(cp: &ControlPlane, token: &str) -> Result<FleetStatusView, String> {
    cp.client(token)
        .fleet_status(&limit(1000))
        .await
        .map_err(|e| e.to_string())
}

/// The count of clusters in `state` in a fleet status.
fn count(fleet: &FleetStatusView, state: ClusterState) -> u64 {
    fleet.counts.get(state.as_str()).copied().unwrap_or(0)
}

/// The state of the first cluster of a fleet status.
fn first_state(fleet: &FleetStatusView) -> Option<ClusterState> {
    fleet.items.first().map(|e| e.state)
}

/// Asserts that `result` is the API's error `code` with its HTTP status (`what` says why it
/// should be); returns the error.
#[track_caller]
fn assert_api_error<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    code: ErrorCode,
    what: &str,
) -> ClientError {
    let e = result.expect_err(what);
    assert_eq!(
        (e.code(), e.status()),
        (Some(code), Some(code.status())),
        "{what}: {e}"
    );
    e
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
        let unreachable = count(&fleet, ClusterState::Unreachable);
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
        let ready = count(&fleet, ClusterState::Ready);
        if valid == 45 && ready == 45 && unreachable == 5 {
            Ok(Some(()))
        } else {
            Err(format!("valid {valid}, fleet counts {:?}", fleet.counts))
        }
    })
    .await
    .expect("validation pass");
    let fleet = fleet_counts(&cp, &acme).await.expect("fleet");
    let items = &fleet.items;
    assert_eq!(items.len(), 50);
    let names: Vec<&str> = items.iter().map(|e| e.cluster.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "the fleet status is ordered");
    for e in items {
        if blackholed.contains(&e.cluster) {
            assert_eq!(e.state, ClusterState::Unreachable, "{e:?}");
        } else {
            assert_eq!(e.state, ClusterState::Ready, "{e:?}");
            assert_eq!(e.agent_version.as_deref(), Some(pxb_daemon::agent::api::VERSION));
            assert!(e.staleness_secs.is_some_and(|s| s < 60), "{e:?}");
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
            Some(raw(&cp.azure_location("evil", &container, all_clusters()))),
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
    let globex_fleet = cp
        .client(&globex)
        .fleet_status(&ListQuery::default())
        .await
        .expect("fleet");
    assert_eq!(globex_fleet.items.len(), 0, "{globex_fleet:?}");
    let globex_orgs = cp
        .client(&globex)
        .list_orgs(&ListQuery::default())
        .await
        .expect("orgs");
    let visible: Vec<&str> = globex_orgs.items.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(visible, vec!["globex"]);
    // Role bindings change through the API (provider admins only): victor becomes an operator.
    let refused = cp
        .client(&acme)
        .update_org(
            "acme",
            &UpdateOrg {
                access: Some(Vec::new()),
                ..UpdateOrg::default()
            },
        )
        .await;
    assert_api_error(
        refused,
        ErrorCode::Forbidden,
        "an org admin cannot change the org's bindings",
    );
    let bindings = |viewers: Role| UpdateOrg {
        access: Some(vec![
            binding(Role::Admin, "acme-admins"),
            binding(viewers, "acme-viewers"),
        ]),
        ..UpdateOrg::default()
    };
    let org = cp
        .admin_client()
        .update_org("acme", &bindings(Role::Operator))
        .await
        .expect("update org");
    assert_eq!(org.access, bindings(Role::Operator).access.expect("access"));
    let who = cp.client(&acme_viewer).whoami().await.expect("whoami");
    assert_eq!(who.orgs.get("acme"), Some(&Role::Operator), "{who:?}");
    cp.admin_client()
        .update_org("acme", &bindings(Role::Viewer))
        .await
        .expect("restore bindings");
    // A viewer reads but cannot change; no token or a forged one gets 401.
    cp.client(&acme_viewer)
        .get_location("acme", "primary")
        .await
        .expect("viewer reads");
    let refused = cp.client(&acme_viewer).validate_location("acme", "primary").await;
    assert_api_error(refused, ErrorCode::Forbidden, "a viewer cannot validate");
    let forged = cp.issuer.none_token(cp.issuer.claims_for(
        "mallory",
        pxb_tests::control::AUDIENCE,
        &[pxb_tests::control::PROVIDER_ADMINS],
        &[],
        3600,
    ));
    let refused = cp.client(&forged).list_orgs(&ListQuery::default()).await;
    assert_api_error(refused, ErrorCode::Unauthenticated, "a forged token");

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
    let mut secondary = cp.azure_location("secondary", &container, all_clusters());
    secondary.cluster_client_ids = [(shoot(3), "00000000-0000-4000-8000-00000000dead".to_owned())].into();
    let loc = cp
        .client(&acme)
        .create_location("acme", &secondary)
        .await
        .expect("secondary");
    assert_eq!(loc.cluster_client_ids, secondary.cluster_client_ids);
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
        .client(&acme)
        .location_status(
            "acme",
            "secondary",
            &ListQuery {
                cluster: Some(shoot(3)),
                ..ListQuery::default()
            },
        )
        .await
        .expect("status");
    assert_eq!(
        st.items.first().and_then(|s| s.validation.failed_step.as_deref()),
        Some("authenticate"),
        "{st:?}"
    );
    wait_for("Degraded", Duration::from_secs(60), || async {
        let s = cluster_state(&cp, "acme", &shoot(3), &acme).await?;
        if s == "Degraded" { Ok(Some(())) } else { Err(s) }
    })
    .await
    .expect("the cluster with the invalid location is Degraded");
    cp.client(&acme)
        .delete_location("acme", "secondary")
        .await
        .expect("delete");

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
    cp.client(&acme)
        .delete_location("acme", "primary")
        .await
        .expect("delete");
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
        let list = cp
            .client(&acme)
            .location_status("acme", "primary", &ListQuery::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Option<SyncRun>, String>(list.items.into_iter().next().and_then(|s| s.sync))
    };
    let phase_of = |s: &Option<SyncRun>| s.as_ref().map(|s| s.phase);
    let sync_body = SyncRequestBody { cluster: shoot(0) };
    let request_sync = || async {
        cp.client(&acme)
            .sync_location("acme", "primary", &sync_body)
            .await
    };

    // The storage hangs, so the sync stays in progress; then the cluster drops off the network.
    cp.azure.azurite.pause().expect("pause");
    let run = request_sync().await.expect("sync");
    assert_eq!((run.request, run.phase), (1, RequestPhase::Pending), "{run:?}");
    let refused = assert_api_error(
        request_sync().await,
        ErrorCode::Conflict,
        "a second trigger while one runs is refused",
    );
    assert!(
        refused.message().contains("Pending") && refused.message().contains("lease"),
        "a second trigger while one runs is refused: {refused}"
    );
    wait_for("the sync runs", Duration::from_secs(60), || async {
        let s = sync_status().await?;
        if phase_of(&s) == Some(RequestPhase::InProgress) {
            Ok(Some(()))
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await
    .expect("in progress");
    cp.fleet
        .set_fault(PROJECT, &shoot(0), Fault::Offline)
        .expect("blackhole");
    let cut = Instant::now();
    let stalled = wait_for("the sync stalls", Duration::from_secs(60), || async {
        match sync_status().await? {
            Some(s) if s.phase == RequestPhase::Stalled => Ok(Some(s)),
            s => Err(format!("{s:?}")),
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
        stalled
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no heartbeat")),
        "{stalled:?}"
    );
    // The fleet status still answers, and names the cluster Unreachable.
    wait_for("Unreachable", Duration::from_secs(30), || async {
        let f = fleet_counts(&cp, &acme).await?;
        Ok((first_state(&f) == Some(ClusterState::Unreachable)).then_some(()))
    })
    .await
    .expect("unreachable");

    // A new sync is accepted and supersedes the stalled one; it cannot be delivered yet.
    let run = request_sync().await.expect("new sync");
    assert_eq!(run.request, 2);
    assert!(
        run.message
            .as_deref()
            .is_some_and(|m| m.contains("supersedes stalled request 1")),
        "{run:?}"
    );

    // The cluster and the storage come back: the agent finishes and reports the new request.
    cp.fleet.set_fault(PROJECT, &shoot(0), Fault::None).expect("lift");
    cp.azure.azurite.resume().expect("resume");
    let done = wait_for("the new sync completes", Duration::from_secs(120), || async {
        match sync_status().await? {
            Some(s) if s.phase == RequestPhase::Completed && s.request == 2 => Ok(Some(s)),
            s => Err(format!("{s:?}")),
        }
    })
    .await
    .expect("completed");
    assert_eq!(done.backups_found, 0, "{done:?}");
    let run = request_sync()
        .await
        .expect("once done, a sync may be requested again");
    assert_eq!(run.request, 3, "{run:?}");
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
    cp.config.mode = Mode::Classic;
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
    let mut loc = cp.azure_location("classic", &container, all_clusters());
    loc.mode = Some(Mode::Classic);
    loc.client_id = None;
    loc.credential = Some(CredentialInput {
        account_key: Some(pxb_tests::azurite::ACCOUNT_KEY.into()),
        sas_token: None,
    });
    loc.sync = true;
    // Raw, to check the very bytes the server answers with (a typed answer drops unknown fields).
    let (status, body) = cp
        .call(Method::POST, "/v1/orgs/acme/locations", &acme, Some(raw(&loc)))
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
        let list = cp
            .client(&acme)
            .location_status("acme", "classic", &ListQuery::default())
            .await
            .map_err(|e| e.to_string())?;
        match list.items.into_iter().next().and_then(|s| s.sync) {
            Some(sync) if sync.phase == RequestPhase::Completed => Ok(Some(sync)),
            sync => Err(format!("{sync:?}")),
        }
    })
    .await
    .expect("first sync on assignment");
    assert_eq!(first_sync.request, 0, "{first_sync:?}");
    // Unassigned, the location's CR, Secret and status leave the cluster; assigned again, it is
    // validated again.
    let assign = |clusters: ClusterSelector| {
        let client = cp.client(&acme);
        async move {
            client
                .update_location(
                    "acme",
                    "classic",
                    &UpdateLocation {
                        clusters: Some(clusters),
                        ..UpdateLocation::default()
                    },
                )
                .await
        }
    };
    let view = assign(named(&[])).await.expect("unassign");
    assert_eq!(view.clusters, named(&[]), "{view:?}");
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
    let (status, body) = cp
        .call(
            Method::PUT,
            "/v1/orgs/acme/locations/classic",
            &acme,
            Some(json!({"clusters": {"all": true}, "bogus": 1})),
        )
        .await
        .expect("call");
    assert_eq!(status, 400, "{body}");
    let view = assign(all_clusters()).await.expect("reassign");
    assert_eq!(view.clusters, all_clusters(), "{view:?}");
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
    let plain = CreateLocation {
        account: None,
        container: "c".into(),
        endpoint: Some("http://127.0.0.1:1/acct".into()),
        client_id: None,
        ..cp.azure_location("plain", "c", all_clusters())
    };
    let refused = cp.client(&acme).create_location("acme", &plain).await;
    assert_api_error(refused, ErrorCode::BadRequest, "a plain-http endpoint is refused");
    let relative = CreateLocation {
        provider: "file".into(),
        account: None,
        container: "backups".into(),
        endpoint: None,
        client_id: None,
        ..cp.azure_location("rel", "backups", all_clusters())
    };
    let refused = cp.client(&acme).create_location("acme", &relative).await;
    assert_api_error(refused, ErrorCode::BadRequest, "a relative directory is refused");
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
    cp.client(&acme)
        .list_backups("acme", &limit(5000))
        .await
        .expect("huge page sizes are clamped");

    // Preferences: the tab is kept per user across logins; the time bracket per sign-in session.
    let login = |sid: &str| {
        let mut c = cp
            .issuer
            .claims_for("alice", pxb_tests::control::AUDIENCE, &["acme-admins"], &[], 3600);
        c["sid"] = json!(sid);
        cp.issuer.token(c)
    };
    let first = cp.client(&login("session-1"));
    let prefs = first.preferences().await.expect("prefs");
    assert_eq!(
        (prefs.tab, prefs.time_bracket.kind.as_str()),
        (Tab::Namespaces, "24h")
    );
    let bracket = |kind: &str, from: Option<&str>, to: Option<&str>| TimeBracket {
        kind: kind.into(),
        from: from.map(str::to_owned),
        to: to.map(str::to_owned),
    };
    let prefs = first
        .update_preferences(&UpdatePreferences {
            tab: Some(Tab::Vms),
            time_bracket: Some(bracket("7d", None, None)),
        })
        .await
        .expect("put prefs");
    assert_eq!((prefs.tab, prefs.time_bracket.kind.as_str()), (Tab::Vms, "7d"));
    let prefs = first.preferences().await.expect("prefs");
    assert_eq!((prefs.tab, prefs.time_bracket.kind.as_str()), (Tab::Vms, "7d"));
    for bad in [
        bracket(
            "custom",
            Some("2026-01-02T00:00:00Z"),
            Some("2026-01-01T00:00:00Z"),
        ),
        bracket("fortnight", None, None),
    ] {
        let refused = first
            .update_preferences(&UpdatePreferences {
                tab: None,
                time_bracket: Some(bad),
            })
            .await;
        assert_api_error(refused, ErrorCode::BadRequest, "a bad preference");
    }
    // A tab the API does not know cannot be typed: raw.
    let (status, body) = cp
        .call(
            Method::PUT,
            "/v1/me/preferences",
            &login("session-1"),
            Some(json!({"tab": "cards"})),
        )
        .await
        .expect("call");
    assert_eq!(status, 400, "{body}");
    let second = login("session-2");
    let prefs = cp.client(&second).preferences().await.expect("prefs");
    assert_eq!(
        (prefs.tab, prefs.time_bracket.kind.as_str()),
        (Tab::Vms, "24h"),
        "a new login keeps the tab and starts with the last 24 hours"
    );

    // initech gets a classic location too; then, while the server is down, initech's sealed
    // credential and globex's org record are damaged on disk.
    let initech = cp.token("ivan", &["initech-admins"]);
    loc.name = "vault".into();
    let vault = cp
        .client(&initech)
        .create_location("initech", &loc)
        .await
        .expect("loc");
    assert_eq!((vault.name.as_str(), vault.has_credential), ("vault", true));
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
    let admin = cp.client(&admin);
    assert_api_error(
        admin.get_org("globex").await,
        ErrorCode::OrgDegraded,
        "a degraded org",
    );
    let orgs = admin.list_orgs(&ListQuery::default()).await.expect("orgs");
    let states: Vec<(String, String)> = orgs
        .items
        .into_iter()
        .map(|o| (o.id, o.state.to_string()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("acme".into(), "Ready".into()),
            ("globex".into(), "Degraded".into()),
            ("initech".into(), "Degraded".into())
        ]
    );
    let prefs = cp.client(&second).preferences().await.expect("prefs");
    assert_eq!(prefs.tab, Tab::Vms, "the tab survives a restart");
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
        .client(token)
        .get_cluster(org, name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(c.status.state.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_install_imported_clusters_and_retired_shoots() {
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("secrets.key");
    std::fs::write(&key_file, base64_key(3)).expect("key");
    let mut cp = ControlPlane::start(PROJECT, 3, |c| {
        // Imports by kubeconfig are classic mode's.
        c.mode = Mode::Classic;
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
    let d = cp
        .client(&globex)
        .create_discovery(
            "globex",
            &CreateDiscovery {
                id: "broken".into(),
                project: "globex-prod".into(),
                credential: "broken".into(),
                interval_secs: None,
            },
        )
        .await
        .expect("discovery");
    assert_eq!(d.config.id, "broken", "{d:?}");
    wait_for("Failing with the reason", Duration::from_secs(30), || async {
        let d = cp
            .client(&globex)
            .get_discovery("globex", "broken")
            .await
            .map_err(|e| e.to_string())?;
        let ok = d.status.state == DiscoveryState::Failing
            && d.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("reading the garden credential"));
        if ok { Ok(Some(())) } else { Err(format!("{d:?}")) }
    })
    .await
    .expect("failing discovery");
    wait_for("Running", Duration::from_secs(30), || async {
        let d = cp
            .client(&acme)
            .get_discovery("acme", "dev")
            .await
            .map_err(|e| e.to_string())?;
        if d.status.state == DiscoveryState::Running && d.status.shoots == 3 {
            Ok(Some(()))
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await
    .expect("running discovery");
    cp.client(&globex)
        .delete_discovery("globex", "broken")
        .await
        .expect("delete discovery");

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
    let import = |kubeconfig: &str| ImportCluster {
        name: "edge".into(),
        kubeconfig: kubeconfig.into(),
    };
    let refused = cp
        .client(&globex)
        .import_cluster("globex", &import("{not a kubeconfig"))
        .await;
    assert_api_error(refused, ErrorCode::BadRequest, "a bad import");
    // The typed record has the sealed kubeconfig's field: it is not in the answer.
    let edge = cp
        .client(&globex)
        .import_cluster("globex", &import(&kubeconfig))
        .await
        .expect("import");
    assert_eq!((edge.name.as_str(), edge.source.as_str()), ("edge", "imported"));
    assert!(edge.sealed_kubeconfig.is_none(), "{edge:?}");
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
        let c = cp
            .client(&globex)
            .get_cluster("globex", "edge")
            .await
            .map_err(|e| e.to_string())?;
        if c.status.state == ClusterState::Ready && c.status.last_seen.is_some() {
            Ok(Some(()))
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .expect("imported after restart");

    // An agent older than the minimum that the server installed is upgraded in place (zero-touch
    // install is on); one it did not install is AgentOutdated; a hibernated shoot is Hibernated.
    let uid = deployments
        .get("pxb-agent")
        .await
        .expect("deployment")
        .metadata
        .uid;
    let old = |mark: Option<&str>| {
        json!({"metadata": {"labels": {"pxb.io/version": "0.0.1"},
                            "annotations": {"pxb.io/installed-by": mark}}})
    };
    deployments
        .patch(
            "pxb-agent",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&old(Some("pxb-server"))),
        )
        .await
        .expect("label an old version");
    wait_for("upgraded in place", Duration::from_secs(60), || async {
        let d = deployments.get("pxb-agent").await.map_err(|e| e.to_string())?;
        let version = d
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pxb.io/version"))
            .cloned();
        if version.as_deref() == Some(pxb_core::api::agent::VERSION) && d.metadata.uid == uid {
            Ok(Some(()))
        } else {
            Err(format!("{version:?} {:?}", d.metadata.uid))
        }
    })
    .await
    .expect("upgraded agent");
    deployments
        .patch(
            "pxb-agent",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&old(None)),
        )
        .await
        .expect("an old version the server did not install");
    wait_for("AgentOutdated", Duration::from_secs(60), || async {
        let c = cp
            .client(&acme)
            .get_cluster("acme", &shoot(0))
            .await
            .map_err(|e| e.to_string())?;
        let ok = c.status.state == ClusterState::AgentOutdated
            && c.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("0.0.1") && m.contains("not installed by pxb-server"));
        if ok {
            Ok(Some(()))
        } else {
            Err(format!("{:?}", c.status))
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
    let list = cp
        .client(&acme)
        .list_clusters("acme", &ListQuery::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), 3, "{list:?}");
    let refused = cp.client(&acme).remove_cluster("acme", &shoot(0)).await;
    assert_api_error(
        refused,
        ErrorCode::Conflict,
        "a discovered cluster is not removed by hand",
    );
    cp.client(&globex)
        .remove_cluster("globex", "edge")
        .await
        .expect("remove the import");
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
    use pxb_daemon::crd::ApplicationBackup;

    let mut cp = ControlPlane::start(PROJECT, 1, |_| {})
        .await
        .expect("control plane");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    let (acme, container) = acme_with_primary(&cp, "forced").await;
    let client = valid_with_shop(&cp, &acme).await;

    let id = back_up_shop(&cp, &acme).await;
    let done = wait_for("the backup succeeds", Duration::from_secs(120), || async {
        let b = cp
            .client(&acme)
            .get_backup("acme", &id)
            .await
            .map_err(|e| e.to_string())?;
        match b.phase.as_str() {
            "Success" => Ok(Some(b)),
            "Pending" | "InProgress" => Err(format!("{b:?}")),
            _ => panic!("the backup did not succeed: {b:?}"),
        }
    })
    .await
    .expect("success");
    let data_id = done.backup_id.clone().expect("data id");
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
        Ok((first_state(&f) == Some(ClusterState::Unreachable)).then_some(()))
    })
    .await
    .expect("unreachable");
    // Raw: a force-delete answers 200 (the record is gone now), not the 202 of a delete.
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
    let gone = cp.client(&acme).get_backup("acme", &id).await;
    assert_api_error(
        gone,
        ErrorCode::NotFound,
        "the record stays gone after the restart",
    );

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

/// Waits until `primary` is Valid on the one shoot, and seeds the shop there; its client.
async fn valid_with_shop(cp: &ControlPlane, acme: &str) -> kube::Client {
    wait_for("Valid", Duration::from_secs(90), || async {
        let p = phases(cp, "acme", "primary", acme).await?;
        Ok((p.len() == 1 && p[0].1 == "Valid").then_some(()))
    })
    .await
    .expect("valid");
    let client = cp.shoot_client(PROJECT, &shoot(0)).await.expect("client");
    pxb_tests::control::seed_shop(&client).await.expect("shop");
    client
}

/// Asks for a backup of namespace `shop` of the first shoot into `primary`; its id.
async fn back_up_shop(cp: &ControlPlane, acme: &str) -> String {
    let made = cp
        .client(acme)
        .create_backups(
            "acme",
            &BackupRequest {
                clusters: named(&[&shoot(0)]),
                namespaces: vec!["shop".into()],
                location: "primary".into(),
            },
        )
        .await
        .expect("backup");
    made.items.first().expect("one backup").id.clone()
}

/// The `pxb_server_backup_info` lines of the server's Prometheus text as the provider admin
/// sees it, sorted.
async fn backup_info_lines(cp: &ControlPlane) -> Vec<String> {
    backup_info_lines_as(cp, Some(&day_long_admin_token(cp))).await
}

/// A provider admin's token valid for a day: still valid when a test has moved the server's
/// clock (which token expiry follows) by hours.
fn day_long_admin_token(cp: &ControlPlane) -> String {
    cp.issuer.token(cp.issuer.claims_for(
        "provider-admin",
        pxb_tests::control::AUDIENCE,
        &[pxb_tests::control::PROVIDER_ADMINS],
        &[],
        24 * 3600,
    ))
}

/// The `pxb_server_backup_info` lines of the Prometheus text `token` (none: anonymously) gets,
/// sorted.
async fn backup_info_lines_as(cp: &ControlPlane, token: Option<&str>) -> Vec<String> {
    cp.backup_info_lines(token).await.expect("metrics")
}

/// The info line of backup `id` with `status` (and `previous_status`, for `Some`).
fn info_line(id: &str, status: &str, previous: Option<&str>) -> String {
    scheduled_info_line(id, "", status, previous)
}

/// The info line of backup `id` of schedule `schedule` (empty: none) with `status` (and
/// `previous_status`, for `Some`).
fn scheduled_info_line(id: &str, schedule: &str, status: &str, previous: Option<&str>) -> String {
    format!(
        "pxb_server_backup_info{{org=\"acme\",cluster=\"{}\",backup=\"{id}\",location=\"primary\",\
         schedule=\"{schedule}\",view=\"namespaces\",status=\"{status}\"{}}} 1",
        shoot(0),
        previous
            .map(|p| format!(",previous_status=\"{p}\""))
            .unwrap_or_default()
    )
}

/// The whole Prometheus text (0.0.4, as promtool reads it) the provider admin gets.
async fn admin_exposition(cp: &ControlPlane) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", cp.url))
        .bearer_auth(day_long_admin_token(cp))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

/// Runs `promtool check metrics` on the admin's whole exposition, which must hold `line`, after
/// showing that promtool does read that line: the same text with `line`'s `previous_status`
/// label misspelt fails the check.
async fn promtool_checks_the_exposition_with(cp: &ControlPlane, line: &str) {
    let text = admin_exposition(cp).await;
    assert!(
        text.lines().any(|l| l == line),
        "{line} not in the exposition:\n{text}"
    );
    assert!(text.contains("# TYPE pxb_server_backup_info gauge"), "{text}");
    let broken = text.replace(line, &line.replace("previous_status=", "previous-status="));
    assert_ne!(broken, text, "{line} has a previous_status");
    let refused = pxb_tests::promtool_check_metrics(&broken);
    assert!(
        refused.is_err(),
        "promtool accepts an info line with a misspelt label: it does not read the series"
    );
    pxb_tests::promtool_check_metrics(&text)
        .unwrap_or_else(|e| panic!("promtool on the exposition with {line}: {e:#}\n{text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_backups_info_series_outlives_it_for_the_window_and_survives_a_restart() {
    let mut cp = ControlPlane::start(PROJECT, 1, |c| {
        c.telemetry.backup_info_retention_hours = 2;
    })
    .await
    .expect("control plane");
    let clock = Arc::new(pxb_core::clock::SkewedClock::new());
    cp.use_clock(clock.clone())
        .await
        .expect("the server on a clock the test moves");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    let (acme, _container) = acme_with_primary(&cp, "backup-info").await;
    valid_with_shop(&cp, &acme).await;
    assert_eq!(
        backup_info_lines(&cp).await,
        Vec::<String>::new(),
        "no backup yet"
    );

    // Created: a series with its phase.
    let id = back_up_shop(&cp, &acme).await;
    let created = backup_info_lines(&cp).await;
    assert!(
        created == [info_line(&id, "Pending", None)] || created == [info_line(&id, "InProgress", None)],
        "{created:#?}"
    );

    // Complete: the same series, now Success.
    wait_for("Success", Duration::from_secs(120), || async {
        let lines = backup_info_lines(&cp).await;
        if lines == [info_line(&id, "Success", None)] {
            Ok(Some(()))
        } else {
            Err(format!("{lines:#?}"))
        }
    })
    .await
    .expect("the series says Success");
    // The series names the org, cluster, location and backup: an org's member sees it, nobody
    // else who reaches the port does.
    assert_eq!(
        backup_info_lines_as(&cp, Some(&acme)).await,
        [info_line(&id, "Success", None)],
        "to acme's admin"
    );
    assert_eq!(
        backup_info_lines_as(&cp, None).await,
        Vec::<String>::new(),
        "anonymously"
    );
    let other = cp.token("globex-admin", &["globex-admins"]);
    assert_eq!(
        backup_info_lines_as(&cp, Some(&other)).await,
        Vec::<String>::new(),
        "to a member of another org"
    );

    // Deleted through the agent: Deleting (with the phase before), then Deleted once the record
    // is gone, with the phase it had.
    cp.client(&acme)
        .delete_backup("acme", &id, &Default::default())
        .await
        .expect("delete");
    let deleting = backup_info_lines(&cp).await;
    assert!(
        deleting == [info_line(&id, "Deleting", Some("Success"))]
            || deleting == [info_line(&id, "Deleted", Some("Success"))],
        "{deleting:#?}"
    );
    wait_for("the record is gone", Duration::from_secs(120), || async {
        match cp.client(&acme).get_backup("acme", &id).await {
            Err(ClientError::Api { status: 404, .. }) => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("deleted");
    let deleted = backup_info_lines(&cp).await;
    assert_eq!(deleted, [info_line(&id, "Deleted", Some("Success"))]);
    promtool_checks_the_exposition_with(&cp, &info_line(&id, "Deleted", Some("Success"))).await;

    // A restart rebuilds the same series from the catalog.
    cp.restart_server().await.expect("restart");
    assert_eq!(
        backup_info_lines(&cp).await,
        deleted,
        "the series after a restart"
    );

    // The window passes: the series goes by itself, and a restart neither brings it back nor
    // keeps the deleted backup's record. (The clock also runs: the test moves it in steps far
    // larger than the test takes.)
    clock.advance(Duration::from_secs(2 * 3600 - 600));
    assert_eq!(
        backup_info_lines(&cp).await,
        deleted,
        "ten minutes before the window ends"
    );
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        backup_info_lines(&cp).await,
        Vec::<String>::new(),
        "after the window"
    );
    cp.restart_server().await.expect("restart");
    assert_eq!(
        backup_info_lines(&cp).await,
        Vec::<String>::new(),
        "after a restart"
    );
    let kept = cp
        .server()
        .catalog()
        .store()
        .count(
            pxb_core::catalog::Kind::DeletedBackup,
            &pxb_core::catalog::Query::org("acme"),
        )
        .await
        .expect("count");
    assert_eq!(kept, 0, "the deleted backup's record goes with the window");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_deleted_by_retention_keeps_its_info_series_as_deleted() {
    use pxb_core::api::rest::ScheduleRequest;
    use pxb_core::schedule::{Every, SchedulePolicy};

    let mut cp = ControlPlane::start(PROJECT, 1, |_| {})
        .await
        .expect("control plane");
    let clock = Arc::new(pxb_core::clock::SkewedClock::new());
    cp.use_clock(clock.clone())
        .await
        .expect("the server on a clock the test moves");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    let (acme, _container) = acme_with_primary(&cp, "retention-info").await;
    valid_with_shop(&cp, &acme).await;

    // A schedule every minute that keeps one successful backup.
    const SCHEDULE: &str = "keep-one";
    let made = cp
        .client(&acme)
        .create_schedule(
            "acme",
            &ScheduleRequest {
                name: SCHEDULE.into(),
                policy: SchedulePolicy {
                    every: Every::Interval { minutes: 1 },
                    retain: 1,
                    time_zone: "UTC".into(),
                },
                clusters: named(&[&shoot(0)]),
                namespaces: vec!["shop".into()],
                location: "primary".into(),
                paused: false,
            },
        )
        .await
        .expect("schedule");
    assert_eq!(made.policy.retain, 1);
    assert_eq!(
        backup_info_lines(&cp).await,
        Vec::<String>::new(),
        "no backup yet"
    );

    // The schedule's backups, oldest first, with their phases.
    let scheduled = || async {
        let mut list: Vec<(i64, String, String)> = cp
            .client(&acme)
            .list_backups("acme", &limit(1000))
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|b| b.schedule.as_deref() == Some(SCHEDULE))
            .map(|b| (b.created_ms, b.id, b.phase.as_str().to_owned()))
            .collect();
        list.sort();
        Ok::<_, String>(
            list.into_iter()
                .map(|(_, id, phase)| (id, phase))
                .collect::<Vec<_>>(),
        )
    };

    // The first run: one backup, Success, kept.
    clock.advance(Duration::from_secs(61));
    let first = wait_for("the first run succeeds", Duration::from_secs(120), || async {
        match scheduled().await?.as_slice() {
            [(id, phase)] if phase == "Success" => Ok(Some(id.clone())),
            [(_, phase)] if ["Pending", "InProgress"].contains(&phase.as_str()) => Err(phase.clone()),
            [] => Err("not fired yet".into()),
            other => panic!("one backup that succeeds expected: {other:?}"),
        }
    })
    .await
    .expect("the first backup");
    wait_for("its series says Success", Duration::from_secs(30), || async {
        let lines = backup_info_lines(&cp).await;
        if lines == [scheduled_info_line(&first, SCHEDULE, "Success", None)] {
            Ok(Some(()))
        } else {
            Err(format!("{lines:#?}"))
        }
    })
    .await
    .expect("the first series");

    // The second run: once it succeeds, retention deletes the first (through the agent), whose
    // series stays, Deleted, with the status it had.
    clock.advance(Duration::from_secs(60));
    let second = wait_for("the second run succeeds", Duration::from_secs(120), || async {
        let list = scheduled().await?;
        match list.iter().find(|(id, _)| *id != first) {
            Some((id, phase)) if phase == "Success" => Ok(Some(id.clone())),
            Some((_, phase)) => Err(phase.clone()),
            None => Err(format!("not fired yet: {list:?}")),
        }
    })
    .await
    .expect("the second backup");
    wait_for(
        "retention removes the first backup's record",
        Duration::from_secs(120),
        || async {
            let list = scheduled().await?;
            if list.iter().any(|(id, _)| *id == first) {
                Err(format!("{list:?}"))
            } else {
                Ok(Some(list))
            }
        },
    )
    .await
    .expect("retention");
    assert_eq!(
        scheduled().await.expect("list"),
        [(second.clone(), "Success".to_owned())],
        "one backup kept"
    );
    let expected = {
        let mut v = vec![
            scheduled_info_line(&first, SCHEDULE, "Deleted", Some("Success")),
            scheduled_info_line(&second, SCHEDULE, "Success", None),
        ];
        v.sort();
        v
    };
    assert_eq!(backup_info_lines(&cp).await, expected);
    promtool_checks_the_exposition_with(
        &cp,
        &scheduled_info_line(&first, SCHEDULE, "Deleted", Some("Success")),
    )
    .await;

    // A restart rebuilds both from the catalog (the deletion time was kept).
    cp.restart_server().await.expect("restart");
    assert_eq!(backup_info_lines(&cp).await, expected, "after a restart");
    cp.shutdown().await;
}
