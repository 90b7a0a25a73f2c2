//! Attacks across tenants through the server's API: one org must never reach another's
//! projects, clusters or records, whatever role its users have. Each test is an attack that
//! succeeded before its fix (see `docs/security.md`).

use std::time::Duration;

use pxb_daemon::server::config::GardenCredential;
use pxb_tests::control::{ControlPlane, wait_for};
use pxb_tests::fixture::CLIENT_ID;
use reqwest::Method;
use serde_json::{Value, json};

/// The project of tenant acme; the control plane's credential `acme` reads it and is bound to
/// org `acme`.
const ACME_PROJECT: &str = "acme";
/// The project of tenant globex, read by credential `globex`, bound to org `globex`.
const GLOBEX_PROJECT: &str = "globex-prod";

/// Creates org `id` with an admin, an operator and a viewer group (`<id>-admins`, …).
async fn create_org(cp: &ControlPlane, id: &str) {
    let (status, body) = cp
        .call(
            Method::POST,
            "/v1/orgs",
            &cp.admin_token(),
            Some(json!({"id": id, "access": [
                {"role": "admin", "groups": [format!("{id}-admins")]},
                {"role": "operator", "groups": [format!("{id}-operators")]},
                {"role": "viewer", "groups": [format!("{id}-viewers")]},
            ]})),
        )
        .await
        .expect("create org");
    assert_eq!(status, 201, "{body}");
}

/// A control plane with projects `acme` (3 shoots) and `globex-prod` (2 shoots), each with a
/// credential bound to its own org, plus an unbound provider credential `provider` that reads
/// acme's project.
async fn two_tenants() -> ControlPlane {
    two_tenants_with(|_| {}).await
}

/// [`two_tenants`] with `tweak` applied to the server's configuration.
async fn two_tenants_with(
    tweak: impl FnOnce(&mut pxb_daemon::server::config::ServerConfig) + Send + 'static,
) -> ControlPlane {
    let files = tempfile::tempdir().expect("dir");
    let globex_file = files.path().join("globex.yaml");
    let provider_file = files.path().join("provider.yaml");
    let (g, p) = (globex_file.clone(), provider_file.clone());
    let cp = ControlPlane::start(ACME_PROJECT, 3, move |c| {
        c.garden_credentials.insert(
            "globex".into(),
            GardenCredential::new(g.display().to_string())
                .for_orgs(["globex"])
                .for_projects([GLOBEX_PROJECT]),
        );
        c.garden_credentials
            .insert("provider".into(), GardenCredential::new(p.display().to_string()));
        tweak(c);
    })
    .await
    .expect("control plane");
    cp.fleet.add_project(GLOBEX_PROJECT).expect("project");
    cp.fleet.add_shoots(GLOBEX_PROJECT, "globex", 2).expect("shoots");
    let token = cp
        .fleet
        .add_service_account(GLOBEX_PROJECT, "pxb", pxb_tests::sim::ProjectRole::Admin)
        .expect("sa");
    std::fs::write(&globex_file, cp.fleet.garden_kubeconfig(&token)).expect("write");
    std::fs::write(&provider_file, cp.fleet.garden_kubeconfig(&cp.garden_token)).expect("write");
    // The files are read when a discovery starts; keep them for the control plane's lifetime.
    std::mem::forget(files);
    create_org(&cp, "acme").await;
    create_org(&cp, "globex").await;
    cp
}

async fn post(cp: &ControlPlane, path: &str, token: &str, body: Value) -> (u16, Value) {
    cp.call(Method::POST, path, token, Some(body))
        .await
        .expect("call")
}

/// Names of the clusters org `org` holds.
async fn cluster_names(cp: &ControlPlane, org: &str) -> Vec<String> {
    let list = cp
        .get_ok(&format!("/v1/orgs/{org}/clusters"), &cp.admin_token())
        .await
        .expect("clusters");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_cannot_onboard_another_tenants_project() {
    let cp = two_tenants().await;
    let acme = cp.token("alice", &["acme-admins"]);
    let globex = cp.token("gina", &["globex-admins"]);

    // Attack 1: globex's admin names acme's credential. Before credentials were bound this was
    // 201, and acme's shoots were onboarded into globex with admin kubeconfigs.
    let (status, body) = post(
        &cp,
        "/v1/orgs/globex/discoveries",
        &globex,
        json!({"id": "steal", "project": ACME_PROJECT, "credential": ACME_PROJECT}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("not bound to org globex"), "{body}");

    // Attack 2: globex's own credential, acme's project.
    let (status, body) = post(
        &cp,
        "/v1/orgs/globex/discoveries",
        &globex,
        json!({"id": "steal", "project": ACME_PROJECT, "credential": "globex"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("may not discover project acme")),
        "{body}"
    );

    // Attack 3: the provider's unbound credential is for provider admins only.
    let (status, body) = post(
        &cp,
        "/v1/orgs/globex/discoveries",
        &globex,
        json!({"id": "steal", "project": ACME_PROJECT, "credential": "provider"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("only a provider admin")),
        "{body}"
    );

    // The owners onboard their own projects.
    for (org, token, project, cred) in [
        ("acme", &acme, ACME_PROJECT, ACME_PROJECT),
        ("globex", &globex, GLOBEX_PROJECT, "globex"),
    ] {
        let (status, body) = post(
            &cp,
            &format!("/v1/orgs/{org}/discoveries"),
            token,
            json!({"id": "main", "project": project, "credential": cred, "intervalSecs": 5}),
        )
        .await;
        assert_eq!(status, 201, "{org}: {body}");
    }

    // Attack 4 (also a provider's mistake): a second org on an onboarded project, even by a
    // provider admin with the unbound credential. Two orgs on one project would delete each
    // other's BackupLocation objects on every visit.
    let (status, body) = post(
        &cp,
        "/v1/orgs/globex/discoveries",
        &cp.admin_token(),
        json!({"id": "second", "project": ACME_PROJECT, "credential": "provider"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("already onboarded into another org"), "{body}");
    assert!(
        !msg.contains("acme\""),
        "the refusal does not name the owner: {body}"
    );
    // A second discovery of the same project in the same org is refused too.
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/discoveries",
        &acme,
        json!({"id": "again", "project": ACME_PROJECT, "credential": ACME_PROJECT}),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // Each org holds exactly its own shoots, and keeps them.
    wait_for("both discoveries ran", Duration::from_secs(60), || async {
        let (a, g) = (
            cluster_names(&cp, "acme").await,
            cluster_names(&cp, "globex").await,
        );
        if a.len() == 3 && g.len() == 2 {
            Ok(Some(()))
        } else {
            Err(format!("{a:?} {g:?}"))
        }
    })
    .await
    .expect("discovered");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (a, g) = (
        cluster_names(&cp, "acme").await,
        cluster_names(&cp, "globex").await,
    );
    assert!(a.iter().all(|n| n.starts_with("shoot-")), "{a:?}");
    assert!(g.iter().all(|n| n.starts_with("globex-")), "{g:?}");
    assert_eq!((a.len(), g.len()), (3, 2));
    cp.shutdown().await;
}

/// A valid body for each operation that takes one, so that only authorization can refuse it.
fn body_for(method: &Method, template: &str, cp: &ControlPlane) -> Option<Value> {
    let shop = json!(["shop"]);
    let b = match (method.as_str(), template) {
        ("PUT", "/v1/orgs/{org}") => json!({"displayName": "mine"}),
        ("POST", "/v1/orgs/{org}/discoveries") => {
            json!({"id": "x", "project": GLOBEX_PROJECT, "credential": "globex"})
        }
        ("POST", "/v1/orgs/{org}/clusters") => {
            json!({"name": "evil", "kubeconfig": "apiVersion: v1\nkind: Config\n"})
        }
        ("POST", "/v1/orgs/{org}/locations") => json!({
            "name": "evil", "provider": "azure", "account": pxb_tests::azurite::ACCOUNT,
            "container": "evil", "endpoint": cp.azure.azurite.endpoint(), "clientId": CLIENT_ID,
            "clusters": {"all": true},
        }),
        ("PUT", "/v1/orgs/{org}/locations/{name}") => json!({"clusters": {"all": false}}),
        ("POST", "/v1/orgs/{org}/locations/{name}/sync") => json!({"cluster": "shoot-00000"}),
        ("POST", "/v1/orgs/{org}/locations/{name}/validate" | "/v1/orgs/{org}/locations/{name}/verify") => {
            return None;
        }
        ("POST", "/v1/orgs/{org}/backups") => {
            json!({"clusters": {"all": true}, "namespaces": shop, "location": "primary"})
        }
        ("POST", "/v1/orgs/{org}/restores") => json!({"backup": "whatever"}),
        ("POST", "/v1/orgs/{org}/schedules") => json!({
            "name": "evil", "policy": {"kind": "daily", "at": "02:00", "retain": 1, "timeZone": "UTC"},
            "clusters": {"all": true}, "namespaces": shop, "location": "primary",
        }),
        ("PUT", "/v1/orgs/{org}/schedules/{name}") => json!({"paused": true}),
        ("GET" | "DELETE", _) => return None,
        _ => panic!("no attack body for {method} {template}: add one to body_for"),
    };
    Some(b)
}

/// Acme's state as its admin sees it, without what changes on its own (status, times).
async fn acme_state(cp: &ControlPlane, acme: &str) -> Value {
    let mut out = serde_json::Map::new();
    let org = cp.get_ok("/v1/orgs/acme", acme).await.expect("org");
    out.insert("org".into(), json!([org["displayName"], org["access"]]));
    for kind in [
        "discoveries",
        "clusters",
        "locations",
        "backups",
        "restores",
        "schedules",
    ] {
        let list = cp
            .get_ok(&format!("/v1/orgs/acme/{kind}?limit=1000"), acme)
            .await
            .expect("list");
        let items: Vec<Value> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                json!([
                    i["id"],
                    i["name"],
                    i["clusters"],
                    i["paused"],
                    i["location"],
                    i["project"],
                    i["credential"],
                    i["retiredAt"],
                ])
            })
            .collect();
        out.insert(kind.into(), Value::Array(items));
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_of_another_org_reaches_anything_of_an_org_through_any_endpoint() {
    let cp = two_tenants().await;
    let acme = cp.token("alice", &["acme-admins"]);
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/discoveries",
        &acme,
        json!({"id": "dev", "project": ACME_PROJECT, "credential": ACME_PROJECT, "intervalSecs": 5}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_for("acme's clusters", Duration::from_secs(60), || async {
        let n = cluster_names(&cp, "acme").await;
        if n.len() == 3 {
            Ok(Some(()))
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await
    .expect("clusters");
    let location = body_for(&Method::POST, "/v1/orgs/{org}/locations", &cp)
        .map(|mut l| {
            l["name"] = json!("primary");
            l["container"] = json!("acme-primary");
            l
        })
        .expect("location body");
    let (status, body) = post(&cp, "/v1/orgs/acme/locations", &acme, location).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/backups",
        &acme,
        json!({"clusters": {"all": true}, "namespaces": ["shop"], "location": "primary"}),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let backups = cp.get_ok("/v1/orgs/acme/backups", &acme).await.expect("backups");
    let backup_id = backups["items"][0]["id"]
        .as_str()
        .expect("a backup record")
        .to_owned();
    let schedule = body_for(&Method::POST, "/v1/orgs/{org}/schedules", &cp).map(|mut s| {
        s["name"] = json!("nightly");
        s
    });
    let (status, body) = post(&cp, "/v1/orgs/acme/schedules", &acme, schedule.expect("schedule")).await;
    assert_eq!(status, 201, "{body}");
    let before = acme_state(&cp, &acme).await;
    let secrets_of_acme = ["shoot-0", "acme-primary", backup_id.as_str(), "nightly"];

    // Every operation of the published API that is scoped to an org, with every role of globex.
    let doc = pxb_daemon::server::openapi::document();
    let paths = doc["paths"].as_object().expect("paths");
    let mut tried = 0;
    for role in ["admins", "operators", "viewers"] {
        let token = cp.token(&format!("globex-{role}"), &[&format!("globex-{role}")]);
        for (template, ops) in paths {
            if !template.contains("{org}") {
                continue;
            }
            for method in ops.as_object().expect("ops").keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let name = if template.contains("/clusters/") {
                    "shoot-00000"
                } else if template.contains("/schedules/") {
                    "nightly"
                } else if template.contains("/discoveries/") {
                    "dev"
                } else {
                    "primary"
                };
                let path = template
                    .replace("{org}", "acme")
                    .replace("{name}", name)
                    .replace("{id}", &backup_id);
                let body = body_for(&method, template, &cp);
                let (status, resp) = cp.call(method.clone(), &path, &token, body).await.expect("call");
                tried += 1;
                assert_eq!(status, 403, "globex {role} on {method} {path}: {resp}");
                assert_eq!(resp["error"]["code"], "forbidden", "{resp}");
                let text = resp.to_string();
                for s in secrets_of_acme {
                    assert!(
                        !text.contains(s),
                        "globex {role} on {method} {path} leaks {s}: {text}"
                    );
                }
            }
        }
        // The org-free endpoints show nothing of acme.
        for path in ["/v1/orgs", "/v1/fleet/status", "/v1/whoami", "/v1/me/preferences"] {
            let v = cp.get_ok(path, &token).await.expect(path);
            let text = v.to_string();
            for s in secrets_of_acme.iter().chain(&["\"acme\""]) {
                assert!(!text.contains(s), "globex {role} on {path} sees {s}: {text}");
            }
        }
        let (status, _) = cp
            .call(Method::GET, "/v1/fleet/status?org=acme", &token, None)
            .await
            .expect("call");
        assert_eq!(status, 403);
    }
    assert!(tried >= 3 * 30, "every operation was tried: {tried}");
    assert_eq!(acme_state(&cp, &acme).await, before, "acme is unchanged");
    cp.shutdown().await;
}

/// A SAS, an account key and a workload-identity bearer token each meet failures (a refused
/// connection, a rejected credential) through a real agent and the server; none of them shows
/// up in the BackupLocation status on the cluster, the catalog, the API or the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_statuses_the_catalog_the_api_or_logs() {
    use base64::Engine;
    pxb_tests::logs::captured();
    let keys = tempfile::tempdir().expect("dir");
    let key_file = keys.path().join("secrets.key");
    std::fs::write(
        &key_file,
        base64::engine::general_purpose::STANDARD.encode([4u8; 32]),
    )
    .expect("key");
    let kf = key_file.display().to_string();
    let mut cp = ControlPlane::start(ACME_PROJECT, 1, move |c| {
        c.mode = pxb_core::catalog::records::Mode::Classic;
        c.secrets.key_file = kf;
    })
    .await
    .expect("control plane");
    cp.start_agent(ACME_PROJECT, "shoot-00000").await.expect("agent");
    let admin = cp.admin_token();
    let (status, body) = post(
        &cp,
        "/v1/orgs",
        &admin,
        json!({"id": "acme", "mode": "classic", "access": [
        {"role": "admin", "groups": ["acme-admins"]}]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let acme = cp.token("alice", &["acme-admins"]);
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/discoveries",
        &acme,
        json!({"id": "dev", "project": ACME_PROJECT, "credential": ACME_PROJECT, "intervalSecs": 5}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let (sas, sig) = pxb_tests::azurite::dev_sas().expect("sas");
    let wrong_key = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let closed = format!(
        "https://127.0.0.1:{}/{}",
        pxb_tests::free_port().expect("port"),
        pxb_tests::azurite::ACCOUNT
    );
    let base = |name: &str| {
        json!({
            "name": name, "provider": "azure", "account": pxb_tests::azurite::ACCOUNT,
            "container": format!("c-{name}"), "endpoint": cp.azure.azurite.endpoint(),
            "clusters": {"all": true},
        })
    };
    let mut sas_closed = base("sas-refused");
    sas_closed["mode"] = json!("classic");
    sas_closed["endpoint"] = json!(closed);
    sas_closed["credential"] = json!({"sasToken": sas});
    let mut key_wrong = base("key-rejected");
    key_wrong["mode"] = json!("classic");
    key_wrong["credential"] = json!({"accountKey": wrong_key});
    let mut key_closed = base("key-refused");
    key_closed["mode"] = json!("classic");
    key_closed["endpoint"] = json!(closed);
    key_closed["credential"] = json!({"accountKey": pxb_tests::azurite::ACCOUNT_KEY});
    let mut wi_closed = base("wi-refused");
    wi_closed["mode"] = json!("federated");
    wi_closed["clientId"] = json!(CLIENT_ID);
    wi_closed["endpoint"] = json!(closed);
    let names = ["sas-refused", "key-rejected", "key-refused", "wi-refused"];
    for loc in [sas_closed, key_wrong, key_closed, wi_closed] {
        let (status, body) = post(&cp, "/v1/orgs/acme/locations", &acme, loc).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut api_text = String::new();
    for name in names {
        let status = wait_for(&format!("{name} Invalid"), Duration::from_secs(120), || async {
            let body = cp
                .get_ok(&format!("/v1/orgs/acme/locations/{name}/status"), &acme)
                .await
                .map_err(|e| e.to_string())?;
            let v = &body["items"][0]["validation"];
            if v["phase"] == "Invalid" && v["reason"].is_string() {
                Ok(Some(body))
            } else {
                Err(body.to_string())
            }
        })
        .await
        .expect("invalid with a reason");
        api_text += &status.to_string();
        api_text += &cp
            .get_ok(&format!("/v1/orgs/acme/locations/{name}"), &acme)
            .await
            .expect("location")
            .to_string();
    }
    // The agent's bearer token (the Workload Identity access token Entra issued) and the token
    // file it exchanged.
    let wi_assertion = std::fs::read_to_string(cp.azure.token_file()).expect("token file");
    let secrets: Vec<(&str, String)> = vec![
        ("the SAS signature", sig.clone()),
        ("the SAS signature, decoded", url_decode(&sig)),
        ("the account key", pxb_tests::azurite::ACCOUNT_KEY.to_owned()),
        ("the wrong account key", wrong_key.clone()),
        ("the federated token", wi_assertion.trim().to_owned()),
    ];
    let client = cp
        .shoot_client(ACME_PROJECT, "shoot-00000")
        .await
        .expect("client");
    let crs: kube::Api<pxb_daemon::crd::BackupLocation> = kube::Api::namespaced(client, "pxb-system");
    let mut cr_text = String::new();
    for name in names {
        let cr = crs.get(name).await.expect("cr");
        cr_text += &serde_json::to_string(&cr.status).expect("json");
    }
    assert!(
        cr_text.contains("Invalid") || cr_text.contains("Failed"),
        "{cr_text}"
    );
    let db = std::fs::read(&cp.config.catalog.path).expect("db");
    let wal = std::fs::read(format!("{}-wal", cp.config.catalog.path)).unwrap_or_default();
    let log_text = pxb_tests::logs::text();
    assert!(log_text.len() > 1000, "the logs were captured");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is long enough to scan for");
        let needle = secret.as_bytes();
        assert!(
            !api_text.contains(secret.as_str()),
            "{what} in an API response: {api_text}"
        );
        assert!(
            !cr_text.contains(secret.as_str()),
            "{what} in a cluster status: {cr_text}"
        );
        for (file, bytes) in [("catalog", &db), ("catalog WAL", &wal)] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{what} in the {file}"
            );
        }
        if let Some(at) = log_text.find(secret.as_str()) {
            let line = log_text[..at].rsplit('\n').next().unwrap_or_default();
            panic!("{what} in the logs: {line}…");
        }
    }
    cp.shutdown().await;
}

fn url_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Creating cluster-scoped objects from a backup (`allowClusterKinds`) is for an org's admins:
/// an operator may restore, but not widen what a restore creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_org_admin_may_allow_cluster_kinds_in_a_restore() {
    let cp = two_tenants().await;
    let operator = cp.token("oscar", &["acme-operators"]);
    let admin = cp.token("alice", &["acme-admins"]);
    // The route admits viewers to its handler, which requires an operator: a viewer of the org
    // itself restores nothing.
    let viewer = cp.token("victor", &["acme-viewers"]);
    let (status, body) = post(&cp, "/v1/orgs/acme/restores", &viewer, json!({"backup": "b1"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Operator")),
        "{body}"
    );
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/restores",
        &operator,
        json!({"backup": "b1", "allowClusterKinds": ["ClusterRoleBinding"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Admin")),
        "{body}"
    );
    // Without the allowance the operator's request is judged on its merits (no such backup).
    let (status, body) = post(&cp, "/v1/orgs/acme/restores", &operator, json!({"backup": "b1"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/restores",
        &admin,
        json!({"backup": "b1", "allowClusterKinds": ["ClusterRoleBinding"]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &cp,
        "/v1/orgs/acme/restores",
        &admin,
        json!({"backup": "b1", "allowClusterKinds": ["../../etc"]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    cp.shutdown().await;
}

/// A request whose body never finishes: it holds whatever the server gave it until dropped.
async fn stalled_post(cp: &ControlPlane, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let addr = cp.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\": "
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// One org's flood of requests takes its own share of the API (`api.maxRequestsPerOrg`), not the
/// others': its requests past the share get `429` at once, another org's are served, and
/// requests of callers outside the org (which it refuses) never use up its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orgs_flood_of_requests_takes_only_its_own_share() {
    let cp = two_tenants_with(|c| c.api.max_requests_per_org = 4).await;
    let acme = cp.token("alice", &["acme-admins"]);
    let globex = cp.token("gina", &["globex-admins"]);
    let get = |path: &'static str, token: String| {
        let cp = &cp;
        async move { cp.call(Method::GET, path, &token, None).await.expect("call").0 }
    };
    // Globex holds ten requests open on acme's paths: refused there, they take nothing of acme's.
    let mut foreign = Vec::new();
    for _ in 0..10 {
        foreign.push(stalled_post(&cp, "/v1/orgs/acme/locations", &globex).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get("/v1/orgs/acme/clusters", acme.clone()).await, 200);
    // Acme floods: four held requests fill its share, the next is throttled...
    let mut own = Vec::new();
    for _ in 0..4 {
        own.push(stalled_post(&cp, "/v1/orgs/acme/locations", &acme).await);
    }
    wait_for("acme throttled", Duration::from_secs(10), || async {
        let status = get("/v1/orgs/acme/clusters", acme.clone()).await;
        if status == 429 {
            Ok(Some(()))
        } else {
            Err(status.to_string())
        }
    })
    .await
    .expect("the flood is throttled");
    let (status, body) = cp
        .call(Method::GET, "/v1/orgs/acme/backups", &acme, None)
        .await
        .expect("call");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "throttled", "{body}");
    // The org spelled with percent-escapes is the same org to the router, and to the limit.
    for spelled in ["/v1/orgs/ac%6De/clusters", "/v1/orgs/%61%63%6d%65/backups"] {
        let (status, body) = cp.call(Method::GET, spelled, &acme, None).await.expect("call");
        assert_eq!(status, 429, "{spelled} went past the limit: {body}");
    }
    // ...while globex is served as usual.
    for _ in 0..20 {
        assert_eq!(get("/v1/orgs/globex/clusters", globex.clone()).await, 200);
    }
    // The held requests end; acme is served again.
    drop(own);
    wait_for("acme served again", Duration::from_secs(10), || async {
        let status = get("/v1/orgs/acme/clusters", acme.clone()).await;
        if status == 200 {
            Ok(Some(()))
        } else {
            Err(status.to_string())
        }
    })
    .await
    .expect("acme again");
    drop(foreign);
    cp.shutdown().await;
}
