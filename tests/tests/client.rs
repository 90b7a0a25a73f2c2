//! The typed client of the REST API (`pxb_daemon::client`) against a real `pxb-server`: every
//! method of `Client` is called at least once and its typed answer checked, and the client's
//! errors keep the API's codes (and map onto the library's error kinds).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use pxb_core::api::rest::{
    BackupRequest, CreateDiscovery, CreateOrg, DeleteQuery, DiscoveryState, ErrorCode, ImportCluster, List,
    ListQuery, RestoreRequest, ScheduleRequest, SyncRequestBody, Tab, TimeBracket, UpdateLocation, UpdateOrg,
    UpdatePreferences, UpdateSchedule,
};
use pxb_core::catalog::records::{
    BackupRecord, ClusterSelector, ClusterState, ExistingResourcePolicy, Mode, RequestPhase, Role,
    RoleBinding,
};
use pxb_core::schedule::{Every, SchedulePolicy};
use pxb_daemon::client::{Client, ClientError};
use pxb_tests::control::{ControlPlane, wait_for};
use pxb_tests::fixture::CLIENT_ID;

const PROJECT: &str = "acme";

fn shoot(i: usize) -> String {
    format!("shoot-{i:05}")
}

/// `role` for members of `group`.
fn binding(role: Role, group: &str) -> RoleBinding {
    RoleBinding {
        role,
        groups: vec![group.to_owned()],
        app_roles: Vec::new(),
    }
}

/// Org `id` whose admins are group `<id>-admins` and viewers `<id>-viewers`.
fn org(id: &str) -> CreateOrg {
    CreateOrg {
        id: id.into(),
        display_name: format!("Org {id}"),
        mode: Mode::Federated,
        access: vec![
            binding(Role::Admin, &format!("{id}-admins")),
            binding(Role::Viewer, &format!("{id}-viewers")),
        ],
    }
}

/// These clusters, by name.
fn named(names: &[&str]) -> ClusterSelector {
    ClusterSelector {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..ClusterSelector::default()
    }
}

/// A list query of pages of `limit` items.
fn limit(limit: u64) -> ListQuery {
    ListQuery {
        limit: Some(limit),
        ..ListQuery::default()
    }
}

/// A list query of one cluster's items.
fn of_cluster(cluster: &str) -> ListQuery {
    ListQuery {
        cluster: Some(cluster.to_owned()),
        ..ListQuery::default()
    }
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
        "{what}: {e:?}"
    );
    assert!(
        matches!(e, ClientError::Api { .. }),
        "{what}: an API error: {e:?}"
    );
    e
}

/// Polls `probe` (a typed call) every 200 ms until `done` holds of its answer; returns it.
async fn until<T, F, Fut>(what: &str, secs: u64, mut probe: F, done: impl Fn(&T) -> bool) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    wait_for(what, Duration::from_secs(secs), || {
        let answer = probe();
        let done = &done;
        async move {
            match answer.await {
                Ok(v) if done(&v) => Ok(Some(v)),
                Ok(v) => Err(format!("{v:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
    .expect(what)
}

/// The ids of the items of a list, in order.
fn ids<T>(list: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    list.iter().map(|t| id(t).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_the_client_against_a_real_server() {
    use base64::Engine as _;
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("secrets.key");
    std::fs::write(
        &key_file,
        base64::engine::general_purpose::STANDARD.encode([5u8; 32]),
    )
    .expect("key");
    // Two shoots: shoot-00000 runs an agent; shoot-00001 is imported by hand into another org.
    let mut cp = ControlPlane::start(PROJECT, 2, |c| {
        // Imports by kubeconfig are classic mode's.
        c.mode = Mode::Classic;
        c.secrets.key_file = key_file.display().to_string();
    })
    .await
    .expect("control plane");
    cp.start_agent(PROJECT, &shoot(0)).await.expect("agent");
    let admin = cp.admin_client();
    let alice = cp.client(&cp.token("alice", &["acme-admins"]));
    let victor = cp.client(&cp.token("victor", &["acme-viewers"]));
    let gina = cp.client(&cp.token("gina", &["globex-admins"]));
    let everything = ListQuery::default();
    let on_shoot0 = of_cluster(&shoot(0));

    // --- Errors keep the API's codes. ---
    // No token: unauthenticated.
    let e = assert_api_error(
        cp.anonymous_client().whoami().await,
        ErrorCode::Unauthenticated,
        "no token",
    );
    assert!(matches!(
        pxb_core::Error::from(e),
        pxb_core::Error::Unauthenticated { .. }
    ));
    // A server that is not there: unreachable, without a status or a code.
    let port = pxb_tests::free_port().expect("port");
    let nowhere = Client::builder(format!("http://127.0.0.1:{port}"))
        .token("t")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let e = nowhere.whoami().await.expect_err("nothing listens");
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    assert_eq!((e.code(), e.status()), (None, None), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(matches!(
        pxb_core::Error::from(e),
        pxb_core::Error::Unavailable { .. }
    ));

    // --- Orgs (provider admins create and change them). ---
    let mut created = Vec::new();
    for id in ["acme", "globex", "initech"] {
        let o = admin.create_org(&org(id)).await.expect("create org");
        assert_eq!(
            (o.id.as_str(), o.display_name.as_str(), o.mode, o.state.as_str()),
            (id, format!("Org {id}").as_str(), Mode::Federated, "Ready"),
            "{o:?}"
        );
        assert_eq!(o.access, org(id).access, "{o:?}");
        created.push(o.id);
    }
    // The same org again is the org (a retried create); another one of that id is refused.
    let again = admin.create_org(&org("acme")).await.expect("the same org");
    assert_eq!(again.display_name, "Org acme");
    assert_api_error(
        admin
            .create_org(&CreateOrg {
                display_name: "Another acme".into(),
                ..org("acme")
            })
            .await,
        ErrorCode::AlreadyExists,
        "an org of that id exists",
    );
    assert_api_error(
        alice.create_org(&org("mine")).await,
        ErrorCode::Forbidden,
        "only provider admins create orgs",
    );
    let acme = admin.get_org("acme").await.expect("get org");
    assert_eq!((acme.id.as_str(), acme.state.as_str()), ("acme", "Ready"));
    let renamed = admin
        .update_org(
            "initech",
            &UpdateOrg {
                display_name: Some("Initech Corp".into()),
                ..UpdateOrg::default()
            },
        )
        .await
        .expect("update org");
    assert_eq!(renamed.display_name, "Initech Corp");
    assert_eq!(
        admin.get_org("initech").await.expect("get org").display_name,
        "Initech Corp"
    );
    let one_page = admin.list_orgs(&ListQuery::default()).await.expect("orgs");
    assert_eq!(ids(&one_page.items, |o| &o.id), created);
    assert!(one_page.next.is_none());
    // Pages of one org: a cursor after each but the last, and `Client::all` follows them.
    let first = admin.list_orgs(&limit(1)).await.expect("page");
    assert_eq!(
        (ids(&first.items, |o| &o.id), first.next.is_some()),
        (vec!["acme".to_owned()], true)
    );
    let walked = admin
        .all(limit(1), |q| {
            let admin = &admin;
            async move { admin.list_orgs(&q).await }
        })
        .await
        .expect("every page");
    assert_eq!(ids(&walked, |o| &o.id), created);
    let as_viewer = victor.get_org("acme").await.expect("a viewer reads its org");
    assert_eq!(as_viewer.display_name, "Org acme");
    assert!(
        as_viewer.access.is_empty(),
        "bindings are shown to admins only: {as_viewer:?}"
    );
    let seen = alice.list_orgs(&ListQuery::default()).await.expect("orgs");
    assert_eq!(ids(&seen.items, |o| &o.id), vec!["acme".to_owned()]);

    // --- Who am I, and my preferences. ---
    let me = admin.whoami().await.expect("whoami");
    assert!(me.provider_admin, "{me:?}");
    assert_eq!(me.subject, "provider-admin");
    let me = alice.whoami().await.expect("whoami");
    assert_eq!(
        (me.subject.as_str(), me.provider_admin, me.orgs.clone()),
        ("alice", false, [("acme".to_owned(), Role::Admin)].into()),
        "{me:?}"
    );
    let viewer = victor.whoami().await.expect("whoami");
    assert_eq!(viewer.orgs.get("acme"), Some(&Role::Viewer), "{viewer:?}");
    let prefs = alice.preferences().await.expect("preferences");
    assert_eq!(
        (prefs.tab, prefs.time_bracket.kind.as_str()),
        (Tab::Namespaces, "24h")
    );
    let prefs = alice
        .update_preferences(&UpdatePreferences {
            tab: Some(Tab::Vms),
            time_bracket: Some(TimeBracket {
                kind: "30d".into(),
                from: None,
                to: None,
            }),
        })
        .await
        .expect("update preferences");
    assert_eq!((prefs.tab, prefs.time_bracket.kind.as_str()), (Tab::Vms, "30d"));
    let prefs = alice.preferences().await.expect("preferences");
    assert_eq!((prefs.tab, prefs.time_bracket.kind.as_str()), (Tab::Vms, "30d"));
    assert_api_error(
        alice
            .update_preferences(&UpdatePreferences {
                tab: None,
                time_bracket: Some(TimeBracket {
                    kind: "fortnight".into(),
                    from: None,
                    to: None,
                }),
            })
            .await,
        ErrorCode::BadRequest,
        "a bracket the API does not know",
    );

    // --- Not found, and path parameters that are not names. ---
    let e = assert_api_error(admin.get_org("nope").await, ErrorCode::NotFound, "no such org");
    assert!(e.message().contains("nope"), "{e}");
    assert!(matches!(
        pxb_core::Error::from(e),
        pxb_core::Error::NotFound { .. }
    ));
    let e = assert_api_error(
        alice.get_backup("acme", "nope").await,
        ErrorCode::NotFound,
        "no such backup",
    );
    assert!(e.message().contains("nope"), "{e}");
    assert!(matches!(
        pxb_core::Error::from(e),
        pxb_core::Error::NotFound { .. }
    ));
    // `/`, a space and `%` in a path parameter are escaped: the server gets one segment, decodes
    // it, and names all of it (names are checked before anything is looked up, hence 400 rather
    // than 404; an unescaped `/` would reach another route, or none).
    for odd in ["a/b c%", "x%2Fy", "../acme", "%"] {
        let e = assert_api_error(
            alice.get_backup("acme", odd).await,
            ErrorCode::BadRequest,
            "an item that is not a name",
        );
        assert!(
            e.message().contains(&format!("id {odd:?} is not a valid name")),
            "{odd}: {e}"
        );
        let e = assert_api_error(
            admin.get_location(odd, "primary").await,
            ErrorCode::BadRequest,
            "an org that is not a name",
        );
        assert!(
            e.message().contains(&format!("org {odd:?} is not a valid name")),
            "{odd}: {e}"
        );
    }

    // --- Discoveries. ---
    let d = alice
        .create_discovery(
            "acme",
            &CreateDiscovery {
                id: "dev".into(),
                project: PROJECT.into(),
                credential: PROJECT.into(),
                interval_secs: Some(5),
            },
        )
        .await
        .expect("create discovery");
    assert_eq!(
        (
            d.config.org.as_str(),
            d.config.id.as_str(),
            d.config.project.as_str(),
            d.config.credential.as_str(),
            d.config.interval_secs
        ),
        ("acme", "dev", PROJECT, PROJECT, 5),
        "{d:?}"
    );
    assert_api_error(
        victor
            .create_discovery(
                "acme",
                &CreateDiscovery {
                    id: "mine".into(),
                    project: PROJECT.into(),
                    credential: PROJECT.into(),
                    interval_secs: None,
                },
            )
            .await,
        ErrorCode::Forbidden,
        "a viewer cannot add a discovery",
    );
    let list = alice
        .list_discoveries("acme", &ListQuery::default())
        .await
        .expect("discoveries");
    assert_eq!(ids(&list.items, |d| &d.config.id), vec!["dev".to_owned()]);
    let running = until(
        "the discovery runs",
        60,
        || alice.get_discovery("acme", "dev"),
        |d| d.status.state == DiscoveryState::Running && d.status.shoots == 2,
    )
    .await;
    assert_eq!(running.config.project, PROJECT);

    // --- Clusters: discovered, and imported by kubeconfig. ---
    let ready = until(
        "shoot-00000 is Ready",
        90,
        || alice.get_cluster("acme", "shoot-00000"),
        |c| c.status.state == ClusterState::Ready,
    )
    .await;
    assert_eq!(
        (ready.org.as_str(), ready.discovery.as_deref()),
        ("acme", Some("dev"))
    );
    assert_eq!(
        ready.status.agent_version.as_deref(),
        Some(pxb_daemon::agent::api::VERSION)
    );
    let by_id = alice
        .get_cluster("acme", &ready.id)
        .await
        .expect("a cluster by id");
    assert_eq!(by_id.name, "shoot-00000");
    let clusters = alice
        .list_clusters("acme", &ListQuery::default())
        .await
        .expect("clusters");
    assert_eq!(ids(&clusters.items, |c| &c.name), vec![shoot(0), shoot(1)]);
    let walked = alice
        .all(limit(1), |q| {
            let alice = &alice;
            async move { alice.list_clusters("acme", &q).await }
        })
        .await
        .expect("every page");
    assert_eq!(ids(&walked, |c| &c.name), vec![shoot(0), shoot(1)]);
    let ready_only = alice
        .list_clusters(
            "acme",
            &ListQuery {
                state: Some("Ready".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("clusters");
    assert_eq!(ids(&ready_only.items, |c| &c.name), vec![shoot(0)]);
    let kubeconfig = cp
        .fleet
        .admin_kubeconfig(PROJECT, &shoot(1), 3600)
        .expect("kubeconfig");
    assert_api_error(
        gina.import_cluster(
            "globex",
            &ImportCluster {
                name: "edge".into(),
                kubeconfig: "{not a kubeconfig".into(),
            },
        )
        .await,
        ErrorCode::BadRequest,
        "a kubeconfig that is not one",
    );
    let edge = gina
        .import_cluster(
            "globex",
            &ImportCluster {
                name: "edge".into(),
                kubeconfig: kubeconfig.clone(),
            },
        )
        .await
        .expect("import");
    assert_eq!(
        (
            edge.org.as_str(),
            edge.name.as_str(),
            edge.id.as_str(),
            edge.source.as_str()
        ),
        ("globex", "edge", "imported-edge", "imported")
    );
    assert!(edge.sealed_kubeconfig.is_none(), "never shown: {edge:?}");
    assert_api_error(
        gina.import_cluster(
            "globex",
            &ImportCluster {
                name: "edge".into(),
                kubeconfig,
            },
        )
        .await,
        ErrorCode::AlreadyExists,
        "a second import of the name",
    );
    let got = gina.get_cluster("globex", "edge").await.expect("get");
    assert_eq!(
        (got.id.as_str(), got.source.as_str()),
        ("imported-edge", "imported")
    );
    assert_api_error(
        alice.remove_cluster("acme", &shoot(0)).await,
        ErrorCode::Conflict,
        "a discovered cluster is not removed by hand",
    );
    gina.remove_cluster("globex", "edge")
        .await
        .expect("remove the import");
    let retired = gina.get_cluster("globex", "edge").await.expect("get");
    assert_eq!(retired.status.state, ClusterState::Retired, "{retired:?}");
    assert!(retired.retired_at.is_some(), "{retired:?}");
    assert_api_error(
        gina.remove_cluster("globex", "edge").await,
        ErrorCode::NotFound,
        "a removed import is gone",
    );

    // --- Fleet status: pages of one cluster, filtered by org. ---
    let fleet = alice.fleet_status(&ListQuery::default()).await.expect("fleet");
    assert_eq!(
        fleet
            .items
            .iter()
            .map(|e| (e.org.as_str(), e.cluster.as_str()))
            .collect::<Vec<_>>(),
        vec![("acme", "shoot-00000"), ("acme", "shoot-00001")]
    );
    assert_eq!(fleet.counts.values().sum::<u64>(), 2, "{fleet:?}");
    assert_eq!(fleet.counts.get("Ready"), Some(&1), "{fleet:?}");
    let mut query = ListQuery {
        org: Some("acme".into()),
        ..limit(1)
    };
    let mut pages = Vec::new();
    loop {
        let page = admin.fleet_status(&query).await.expect("fleet page");
        assert!(page.items.len() <= 1, "{page:?}");
        pages.extend(page.items.into_iter().map(|e| e.cluster));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, vec![shoot(0), shoot(1)]);

    // --- Locations. ---
    let container = cp.azure.new_container("client").await.expect("container");
    let primary = alice
        .create_location(
            "acme",
            &cp.azure_location("primary", &container, named(&[&shoot(0)])),
        )
        .await
        .expect("create location");
    assert_eq!(
        (
            primary.name.as_str(),
            primary.provider.as_str(),
            primary.container.as_str(),
            primary.mode,
            primary.client_id.as_deref(),
            primary.has_credential
        ),
        (
            "primary",
            "azure",
            container.as_str(),
            Mode::Federated,
            Some(CLIENT_ID),
            false
        )
    );
    assert_eq!(primary.clusters, named(&[&shoot(0)]));
    let spare = alice
        .create_location("acme", &cp.azure_location("spare", &container, named(&[])))
        .await
        .expect("create location");
    assert_api_error(
        victor
            .create_location("acme", &cp.azure_location("evil", &container, named(&[])))
            .await,
        ErrorCode::Forbidden,
        "a viewer cannot create a location",
    );
    let got = victor
        .get_location("acme", "primary")
        .await
        .expect("a viewer reads");
    assert_eq!(
        (got.id.as_str(), got.name.as_str()),
        (primary.id.as_str(), "primary")
    );
    let list = alice
        .list_locations("acme", &ListQuery::default())
        .await
        .expect("locations");
    assert_eq!(
        ids(&list.items, |l| &l.name),
        vec!["primary".to_owned(), "spare".to_owned()]
    );
    let walked = alice
        .all(limit(1), |q| {
            let alice = &alice;
            async move { alice.list_locations("acme", &q).await }
        })
        .await
        .expect("every page");
    assert_eq!(
        ids(&walked, |l| &l.name),
        vec!["primary".to_owned(), "spare".to_owned()]
    );
    let updated = alice
        .update_location(
            "acme",
            "spare",
            &UpdateLocation {
                client_id: Some("00000000-0000-4000-8000-0000000000aa".into()),
                cluster_client_ids: Some([(shoot(1), CLIENT_ID.to_owned())].into()),
                ..UpdateLocation::default()
            },
        )
        .await
        .expect("update location");
    assert_eq!(
        (
            updated.id.as_str(),
            updated.client_id.as_deref(),
            updated.cluster_client_ids.get(&shoot(1)).map(String::as_str)
        ),
        (
            spare.id.as_str(),
            Some("00000000-0000-4000-8000-0000000000aa"),
            Some(CLIENT_ID)
        )
    );
    alice
        .delete_location("acme", "spare")
        .await
        .expect("delete location");
    assert_api_error(
        alice.get_location("acme", "spare").await,
        ErrorCode::NotFound,
        "a deleted location",
    );
    assert_api_error(
        alice.delete_location("acme", "spare").await,
        ErrorCode::NotFound,
        "a deleted location, again",
    );
    let status = until(
        "primary is Valid on shoot-00000",
        90,
        || alice.location_status("acme", "primary", &everything),
        |l| l.items.len() == 1 && l.items[0].validation.phase == "Valid",
    )
    .await;
    assert_eq!(
        (
            status.items[0].cluster_name.as_str(),
            status.items[0].location.as_str()
        ),
        ("shoot-00000", primary.id.as_str())
    );
    let validated = alice
        .validate_location("acme", "primary")
        .await
        .expect("validate");
    assert_eq!(validated.id, primary.id);
    until(
        "the validation asked for is done",
        60,
        || alice.location_status("acme", "primary", &on_shoot0),
        |l| {
            l.items
                .first()
                .is_some_and(|s| s.validation.request == 1 && s.validation.phase == "Valid")
        },
    )
    .await;
    let none = alice
        .location_status(
            "acme",
            "primary",
            &ListQuery {
                state: Some("Invalid".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("status");
    assert!(none.items.is_empty(), "{none:?}");

    // --- Backups, a restore, a sync and a verify. ---
    let kube = cp.shoot_client(PROJECT, &shoot(0)).await.expect("kube");
    pxb_tests::control::seed_shop(&kube).await.expect("shop");
    let request = BackupRequest {
        clusters: named(&[&shoot(0)]),
        namespaces: vec!["shop".into()],
        location: "primary".into(),
    };
    assert_api_error(
        victor.create_backups("acme", &request).await,
        ErrorCode::Forbidden,
        "a viewer cannot back up",
    );
    let mut made = Vec::new();
    for _ in 0..2 {
        let list: List<BackupRecord> = alice
            .create_backups("acme", &request)
            .await
            .expect("create backups");
        assert_eq!(list.items.len(), 1, "one per cluster: {list:?}");
        let b = &list.items[0];
        assert_eq!(
            (
                b.org.as_str(),
                b.cluster_name.as_str(),
                b.location_name.as_str(),
                b.namespaces.clone()
            ),
            ("acme", "shoot-00000", "primary", vec!["shop".to_owned()])
        );
        let done = until(
            "the backup finishes",
            120,
            || alice.get_backup("acme", &list.items[0].id),
            |b| !matches!(b.phase.as_str(), "Pending" | "InProgress"),
        )
        .await;
        assert_eq!(done.phase, "Success", "{done:?}");
        assert!(done.backup_id.is_some() && done.objects > 0, "{done:?}");
        made.push(done);
    }
    let backups = alice
        .list_backups("acme", &ListQuery::default())
        .await
        .expect("backups");
    assert_eq!(
        ids(&backups.items, |b| &b.id),
        vec![made[1].id.clone(), made[0].id.clone()],
        "newest first"
    );
    let walked = alice
        .all(limit(1), |q| {
            let alice = &alice;
            async move { alice.list_backups("acme", &q).await }
        })
        .await
        .expect("every page");
    assert_eq!(ids(&walked, |b| &b.id), ids(&backups.items, |b| &b.id));
    let filtered = alice
        .list_backups(
            "acme",
            &ListQuery {
                cluster: Some(shoot(0)),
                namespace: Some("shop".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("backups");
    assert_eq!(filtered.items.len(), 2, "{filtered:?}");
    let elsewhere = alice
        .list_backups(
            "acme",
            &ListQuery {
                namespace: Some("absent".into()),
                ..ListQuery::default()
            },
        )
        .await
        .expect("backups");
    assert!(elsewhere.items.is_empty(), "{elsewhere:?}");

    let restore = alice
        .create_restore(
            "acme",
            &RestoreRequest {
                backup: made[0].id.clone(),
                namespace_mapping: [("shop".to_owned(), "shop-copy".to_owned())].into(),
                ..RestoreRequest::default()
            },
        )
        .await
        .expect("create restore");
    assert_eq!(
        (
            restore.backup.as_str(),
            restore.cluster_name.as_str(),
            restore.location_name.as_str(),
            restore.namespaces.clone(),
            restore.namespace_mapping.get("shop").map(String::as_str)
        ),
        (
            made[0].id.as_str(),
            "shoot-00000",
            "primary",
            vec!["shop".to_owned()],
            Some("shop-copy")
        )
    );
    assert_api_error(
        victor
            .create_restore(
                "acme",
                &RestoreRequest {
                    backup: made[0].id.clone(),
                    ..RestoreRequest::default()
                },
            )
            .await,
        ErrorCode::Forbidden,
        "a viewer cannot restore",
    );
    let restored = until(
        "the restore finishes",
        120,
        || alice.get_restore("acme", &restore.id),
        |r| !matches!(r.phase.as_str(), "Pending" | "InProgress"),
    )
    .await;
    assert_eq!(restored.phase, "Success", "{restored:?}");
    assert_eq!(restored.counts.failed, 0, "{restored:?}");
    let copy = Api::<ConfigMap>::namespaced(kube.clone(), "shop-copy")
        .get("orders")
        .await
        .expect("the restored object");
    let original = Api::<ConfigMap>::namespaced(kube.clone(), "shop")
        .get("orders")
        .await
        .expect("the original object");
    assert_eq!(copy.data, original.data);

    // Objects that exist: kept by default, replaced when the restore says so.
    let copies = Api::<ConfigMap>::namespaced(kube.clone(), "shop-copy");
    let mut changed = copy.clone();
    changed.data = Some([("changed".to_owned(), "locally".to_owned())].into());
    changed.metadata.managed_fields = None;
    copies
        .replace("orders", &Default::default(), &changed)
        .await
        .expect("change the restored object");
    let again = |policy: ExistingResourcePolicy| {
        let alice = &alice;
        let backup = made[0].id.clone();
        async move {
            let r = alice
                .create_restore(
                    "acme",
                    &RestoreRequest {
                        backup,
                        namespace_mapping: [("shop".to_owned(), "shop-copy".to_owned())].into(),
                        existing_resource_policy: policy,
                        ..RestoreRequest::default()
                    },
                )
                .await
                .expect("create restore");
            assert_eq!(r.existing_resource_policy, policy);
            until(
                "the restore finishes",
                120,
                || alice.get_restore("acme", &r.id),
                |r| !matches!(r.phase.as_str(), "Pending" | "InProgress"),
            )
            .await
        }
    };
    let kept = again(ExistingResourcePolicy::Retain).await;
    assert_eq!(
        (kept.phase.as_str(), kept.counts.replaced),
        ("Success", 0),
        "{kept:?}"
    );
    assert!(kept.counts.skipped >= 1, "{kept:?}");
    let now = copies.get("orders").await.expect("the copy");
    assert_eq!(now.data, changed.data, "retain keeps the changed object");
    let replaced = again(ExistingResourcePolicy::Replace).await;
    assert_eq!(replaced.phase, "Success", "{replaced:?}");
    assert!(replaced.counts.replaced >= 1, "{replaced:?}");
    let now = copies.get("orders").await.expect("the copy");
    assert_eq!(now.data, original.data, "replace puts the backup's object back");

    let restores = alice
        .list_restores("acme", &ListQuery::default())
        .await
        .expect("restores");
    assert_eq!(restores.items.len(), 3, "{restores:?}");
    assert_eq!(
        restores.items.last().map(|r| r.id.clone()),
        Some(restore.id.clone()),
        "newest first"
    );
    assert_api_error(
        alice.get_restore("acme", "nope").await,
        ErrorCode::NotFound,
        "no such restore",
    );

    let run = alice
        .sync_location("acme", "primary", &SyncRequestBody { cluster: shoot(0) })
        .await
        .expect("sync");
    assert_eq!((run.request, run.phase), (1, RequestPhase::Pending), "{run:?}");
    let synced = until(
        "the sync completes",
        120,
        || alice.location_status("acme", "primary", &on_shoot0),
        |l| {
            l.items
                .first()
                .and_then(|s| s.sync.as_ref())
                .is_some_and(|s| s.request == 1 && s.phase == RequestPhase::Completed)
        },
    )
    .await;
    let sync = synced.items[0].sync.clone().expect("sync");
    assert!(
        sync.backups_found >= 2,
        "both backups are in the location: {sync:?}"
    );
    assert!(sync.backups_imported <= sync.backups_found, "{sync:?}");
    assert_api_error(
        alice
            .sync_location(
                "acme",
                "primary",
                &SyncRequestBody {
                    cluster: "nope".into(),
                },
            )
            .await,
        ErrorCode::NotFound,
        "a sync on a cluster the org does not have",
    );
    let verifying = alice.verify_location("acme", "primary").await.expect("verify");
    assert_eq!(verifying.id, primary.id);
    let verified = until(
        "the verify completes",
        120,
        || alice.location_status("acme", "primary", &on_shoot0),
        |l| {
            l.items
                .first()
                .and_then(|s| s.verify.as_ref())
                .is_some_and(|v| v.request == 1 && v.phase == "Completed")
        },
    )
    .await;
    let verify = verified.items[0].verify.clone().expect("verify");
    assert!(verify.backups_checked >= 2, "{verify:?}");
    assert_eq!(verify.missing_objects, 0, "{verify:?}");

    // --- Schedules. ---
    let schedule = ScheduleRequest {
        name: "nightly".into(),
        policy: SchedulePolicy {
            every: Every::Daily { at: "02:00".into() },
            retain: 3,
            time_zone: "Europe/Berlin".into(),
        },
        clusters: named(&[&shoot(0)]),
        namespaces: vec!["shop".into()],
        location: "primary".into(),
        paused: false,
    };
    let s = alice
        .create_schedule("acme", &schedule)
        .await
        .expect("create schedule");
    assert_eq!(
        (
            s.id.as_str(),
            s.location_name.as_str(),
            s.paused,
            s.namespaces.clone()
        ),
        ("nightly", "primary", false, vec!["shop".to_owned()])
    );
    assert_eq!(s.policy, schedule.policy);
    assert!(s.next_fire_ms > s.created_ms, "{s:?}");
    assert_api_error(
        alice.create_schedule("acme", &schedule).await,
        ErrorCode::AlreadyExists,
        "a schedule of that name exists",
    );
    let got = victor
        .get_schedule("acme", "nightly")
        .await
        .expect("get schedule");
    assert_eq!((got.id.as_str(), got.next_fire_ms), ("nightly", s.next_fire_ms));
    let list = alice
        .list_schedules("acme", &ListQuery::default())
        .await
        .expect("schedules");
    assert_eq!(ids(&list.items, |s| &s.id), vec!["nightly".to_owned()]);
    let paused = alice
        .update_schedule(
            "acme",
            "nightly",
            &UpdateSchedule {
                paused: Some(true),
                ..UpdateSchedule::default()
            },
        )
        .await
        .expect("pause");
    assert!(paused.paused, "{paused:?}");
    assert!(alice.get_schedule("acme", "nightly").await.expect("get").paused);
    let resumed = alice
        .update_schedule(
            "acme",
            "nightly",
            &UpdateSchedule {
                paused: Some(false),
                ..UpdateSchedule::default()
            },
        )
        .await
        .expect("resume");
    assert!(!resumed.paused, "{resumed:?}");
    // A new policy: kept, and the next slot follows it; a policy that cannot work is refused and
    // changes nothing.
    let hourly = SchedulePolicy {
        every: Every::Interval { minutes: 60 },
        retain: 3,
        time_zone: "UTC".into(),
    };
    let changed = alice
        .update_schedule(
            "acme",
            "nightly",
            &UpdateSchedule {
                policy: Some(hourly.clone()),
                ..UpdateSchedule::default()
            },
        )
        .await
        .expect("new policy");
    assert_eq!((changed.policy.clone(), changed.paused), (hourly.clone(), false));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    assert!(
        changed.next_fire_ms > now_ms - 5_000 && changed.next_fire_ms <= now_ms + 3_600_000 + 5_000,
        "the next slot is within the new hour: {changed:?}"
    );
    assert_api_error(
        alice
            .update_schedule(
                "acme",
                "nightly",
                &UpdateSchedule {
                    policy: Some(SchedulePolicy {
                        retain: 0,
                        ..hourly.clone()
                    }),
                    ..UpdateSchedule::default()
                },
            )
            .await,
        ErrorCode::BadRequest,
        "retain 0",
    );
    assert_api_error(
        victor
            .update_schedule(
                "acme",
                "nightly",
                &UpdateSchedule {
                    policy: Some(hourly.clone()),
                    ..UpdateSchedule::default()
                },
            )
            .await,
        ErrorCode::Forbidden,
        "a viewer cannot change a schedule",
    );
    assert_eq!(
        alice.get_schedule("acme", "nightly").await.expect("get").policy,
        hourly
    );
    alice
        .delete_schedule("acme", "nightly")
        .await
        .expect("delete schedule");
    assert_api_error(
        alice.get_schedule("acme", "nightly").await,
        ErrorCode::NotFound,
        "a deleted schedule",
    );
    let list = alice
        .list_schedules("acme", &ListQuery::default())
        .await
        .expect("schedules");
    assert!(list.items.is_empty(), "{list:?}");

    // --- Deleting backups: through the agent, and the record only (force). ---
    assert_api_error(
        victor
            .delete_backup("acme", &made[0].id, &DeleteQuery::default())
            .await,
        ErrorCode::Forbidden,
        "a viewer cannot delete",
    );
    let out = alice
        .delete_backup("acme", &made[0].id, &DeleteQuery::default())
        .await
        .expect("delete");
    assert_eq!(
        (
            out.backup.id.as_str(),
            out.backup.phase.as_str(),
            out.record_removed,
            out.data_remains
        ),
        (made[0].id.as_str(), "Deleting", false, false),
        "{out:?}"
    );
    let gone = wait_for("the backup is deleted", Duration::from_secs(120), || async {
        match alice.get_backup("acme", &made[0].id).await {
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(Some(e)),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("deleted");
    assert_eq!(gone.status(), Some(404));
    let out = alice
        .delete_backup("acme", &made[1].id, &DeleteQuery { force: true })
        .await
        .expect("force-delete");
    assert_eq!(
        (out.backup.id.as_str(), out.record_removed, out.data_remains),
        (made[1].id.as_str(), true, true),
        "{out:?}"
    );
    assert_api_error(
        alice.get_backup("acme", &made[1].id).await,
        ErrorCode::NotFound,
        "a force-deleted backup",
    );
    let backups = alice
        .list_backups("acme", &ListQuery::default())
        .await
        .expect("backups");
    assert!(backups.items.is_empty(), "{backups:?}");

    // --- The discovery goes; its clusters are retired. ---
    alice
        .delete_discovery("acme", "dev")
        .await
        .expect("delete discovery");
    assert_api_error(
        alice.get_discovery("acme", "dev").await,
        ErrorCode::NotFound,
        "a deleted discovery",
    );
    let list = alice
        .list_discoveries("acme", &ListQuery::default())
        .await
        .expect("discoveries");
    assert!(list.items.is_empty(), "{list:?}");
    until(
        "the discovered clusters are retired",
        60,
        || alice.list_clusters("acme", &everything),
        |l| l.items.len() == 2 && l.items.iter().all(|c| c.status.state == ClusterState::Retired),
    )
    .await;

    // Every endpoint of the API was called above and answered.
    let called = cp.called.lock().expect("called").clone();
    let missing: Vec<_> = pxb_core::api::rest::endpoints()
        .iter()
        .map(|e| e.id)
        .filter(|id| !called.contains(id))
        .collect();
    assert!(missing.is_empty(), "never called: {missing:?}");
    cp.shutdown().await;
}
