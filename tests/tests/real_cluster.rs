//! Real Kubernetes in the loop: upstream kube-apiserver and etcd (built and cached by
//! `scripts/build-kube`, run by `scripts/install-deps`) started by pxb-harness's `RealCluster`,
//! driven with the real `kubectl`.
//!
//! - the fixture itself: readiness, client-certificate users under RBAC, TokenRequest with the
//!   Workload Identity audience and the fixture's issuer;
//! - the manifests in `deploy/` are accepted by the real server: every CRD becomes Established,
//!   the agent's manifests apply, and the schema's defaults are the ones the agent expects.

use std::path::PathBuf;

use pxb_tests::real::{kubectl, kubectl_output, start};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    pxb_harness::workspace_root()
}

#[test]
fn real_apiserver_authenticates_client_certs_enforces_rbac_and_issues_workload_identity_tokens() {
    let cluster = start();
    let admin = cluster.admin_kubeconfig();

    assert_eq!(
        kubectl(&cluster, &admin, &["get", "--raw", "/readyz"]).trim(),
        "ok"
    );
    let version: Value = serde_json::from_str(&kubectl(&cluster, &admin, &["get", "--raw", "/version"]))
        .expect("version JSON");
    assert_eq!(
        version["gitVersion"],
        pxb_harness::real_cluster::kube_version(),
        "the server is the pinned release"
    );

    // A user without bindings is authenticated (its name shows in the refusal) but not allowed.
    let alice = cluster
        .kubeconfig_for("alice", &["pxb-tenants", "pxb-readers"])
        .expect("alice");
    let out = kubectl_output(&cluster, &alice, &["get", "secrets", "-n", "default"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "alice may not list secrets");
    assert!(
        stderr.contains("Forbidden") && stderr.contains(r#"User "alice" cannot list resource "secrets""#),
        "{stderr}"
    );
    kubectl(&cluster, &admin, &["get", "secrets", "-n", "default"]);
    // The same through the fixture's own client, and the groups of the certificate are the user's.
    let identity = cluster
        .client_identity("alice", &["pxb-tenants", "pxb-readers"])
        .expect("identity");
    let (status, body) = cluster
        .request_as(&identity, "GET", "/api/v1/namespaces/default/secrets", None)
        .expect("request");
    assert_eq!(status, 403, "{body}");
    let (status, body) = cluster
        .request_as(
            &identity,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
        )
        .expect("self subject review");
    assert_eq!(status, 201, "{body}");
    let review: Value = serde_json::from_str(&body).expect("review JSON");
    let groups = review["status"]["userInfo"]["groups"].as_array().expect("groups");
    for g in ["pxb-tenants", "pxb-readers", "system:authenticated"] {
        assert!(groups.iter().any(|x| x == g), "{g} in {groups:?}");
    }
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    // Once bound, the user may. (A Role of its own: the aggregated ClusterRoles admin/edit/view are
    // empty here, as there is no controller manager to aggregate them.)
    kubectl(
        &cluster,
        &admin,
        &[
            "create",
            "role",
            "secret-reader",
            "-n",
            "default",
            "--verb=get,list",
            "--resource=secrets",
        ],
    );
    kubectl(
        &cluster,
        &admin,
        &[
            "create",
            "rolebinding",
            "readers-read-secrets",
            "-n",
            "default",
            "--role=secret-reader",
            "--group=pxb-readers",
        ],
    );
    // The authorizer sees the binding once its informer has it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !kubectl_output(&cluster, &alice, &["get", "secrets", "-n", "default"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alice may list secrets once bound"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // TokenRequest for a ServiceAccount with the Workload Identity audience.
    kubectl(&cluster, &admin, &["create", "namespace", "wi"]);
    kubectl(
        &cluster,
        &admin,
        &["create", "serviceaccount", "agent", "-n", "wi"],
    );
    let token = kubectl(
        &cluster,
        &admin,
        &[
            "create",
            "token",
            "agent",
            "-n",
            "wi",
            "--audience",
            "api://AzureADTokenExchange",
            "--duration",
            "1h",
        ],
    );
    let claims = pxb_harness::jwt::claims(token.trim()).expect("a JWT");
    assert_eq!(claims["iss"], cluster.issuer(), "{claims}");
    assert_eq!(claims["aud"], json!(["api://AzureADTokenExchange"]), "{claims}");
    assert_eq!(claims["sub"], "system:serviceaccount:wi:agent", "{claims}");
    let (status, body) = cluster
        .get("/.well-known/openid-configuration")
        .expect("discovery");
    assert_eq!(status, 200, "{body}");
    let discovery: Value = serde_json::from_str(&body).expect("discovery JSON");
    assert_eq!(discovery["issuer"], cluster.issuer());
}

#[test]
fn the_manifests_in_deploy_are_accepted_by_the_real_server() {
    let cluster = start();
    let admin = cluster.admin_kubeconfig();
    let crds = workspace().join("deploy/crds");
    let agent = workspace().join("deploy/agent");

    let out = kubectl_output(&cluster, &admin, &["apply", "-f", &crds.to_string_lossy()]);
    assert!(
        out.status.success(),
        "the real API server refused deploy/crds:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl(
        &cluster,
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "crd/backuplocations.pxb.io",
            "crd/applicationbackups.pxb.io",
            "crd/applicationrestores.pxb.io",
            "--timeout=60s",
        ],
    );
    let names = kubectl(&cluster, &admin, &["get", "crd", "-o", "name"]);
    let files = std::fs::read_dir(&crds).expect("deploy/crds").count();
    assert_eq!(names.lines().count(), files, "one CRD per file: {names}");

    // The agent's manifests (no pod runs: there is no scheduler or kubelet).
    kubectl(&cluster, &admin, &["apply", "-f", &agent.to_string_lossy()]);
    kubectl(
        &cluster,
        &admin,
        &[
            "get",
            "deployment/pxb-agent",
            "service/pxb-agent",
            "serviceaccount/pxb-agent",
            "-n",
            "pxb-system",
        ],
    );

    // The schema's defaults, applied by the real server, are those the agent's types assume: a
    // location without `auth` is a Workload Identity location.
    let location = json!({
        "apiVersion": "pxb.io/v1alpha1",
        "kind": "BackupLocation",
        "metadata": {"name": "minimal", "namespace": "pxb-system"},
        "spec": {"provider": "azure", "account": "acct", "container": "backups"},
    });
    let file = cluster.dir().join("location.json");
    std::fs::write(&file, location.to_string()).expect("write");
    kubectl(&cluster, &admin, &["create", "-f", &file.to_string_lossy()]);
    let got: Value = serde_json::from_str(&kubectl(
        &cluster,
        &admin,
        &[
            "get",
            "backuplocation",
            "minimal",
            "-n",
            "pxb-system",
            "-o",
            "json",
        ],
    ))
    .expect("JSON");
    assert_eq!(got["spec"]["auth"]["mode"], "workloadIdentity", "{got}");
    assert_eq!(got["spec"]["validateRequest"], 0, "{got}");
    // And the server refuses what the schema forbids.
    let bad = json!({
        "apiVersion": "pxb.io/v1alpha1",
        "kind": "BackupLocation",
        "metadata": {"name": "bad", "namespace": "pxb-system"},
        "spec": {"provider": "s3", "container": "backups"},
    });
    std::fs::write(&file, bad.to_string()).expect("write");
    let out = kubectl_output(&cluster, &admin, &["create", "-f", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("spec.provider") && stderr.contains("Unsupported value"),
        "{stderr}"
    );
}

/// The first case of holding the simulator to the real server: the real server refused a CRD
/// whose schema default broke its own enum (`deploy/crds` had one), and the simulator took it.
/// The same manifest now goes to both, through the real kubectl, and both refuse it naming the
/// field.
#[test]
fn a_crd_whose_default_breaks_its_schema_is_refused_by_the_real_server_and_the_simulator() {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"auth": {
                        "type": "object",
                        "default": {"mode": ""},
                        "properties": {"mode": {"type": "string", "enum": ["workloadIdentity", "secretRef"]}}
                    }}
                }}}}
            }]
        }
    });
    let good = {
        let mut c = crd.clone();
        c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["auth"]["default"]
            ["mode"] = json!("workloadIdentity");
        c
    };

    let real = start();
    let fleet = pxb_tests::sim::Fleet::start(pxb_tests::sim::FleetConfig::default()).expect("fleet");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 1).expect("shoot");
    let sim_kubeconfig = real.dir().join("sim-kubeconfig.yaml");
    std::fs::write(
        &sim_kubeconfig,
        fleet
            .admin_kubeconfig("dev", "s-00000", 3600)
            .expect("kubeconfig"),
    )
    .expect("write");
    let bad_file = real.dir().join("bad-crd.json");
    std::fs::write(&bad_file, crd.to_string()).expect("write");
    let good_file = real.dir().join("good-crd.json");
    std::fs::write(&good_file, good.to_string()).expect("write");

    for (backend, kubeconfig) in [
        ("the real server", real.admin_kubeconfig()),
        ("the simulator", sim_kubeconfig),
    ] {
        let out = kubectl_output(&real, &kubeconfig, &["create", "-f", &bad_file.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{backend} took the CRD");
        assert!(
            stderr.contains("default.mode: Unsupported value: \"\""),
            "{backend}: {stderr}"
        );
        // The same CRD with a default its enum allows is taken.
        kubectl(
            &real,
            &kubeconfig,
            &["create", "-f", &good_file.to_string_lossy()],
        );
    }
}

/// The scenarios' `kube` clients reach the real server both ways a pxb process does: with a
/// client certificate (as the server reaches a shoot) and with a ServiceAccount's token from the
/// TokenRequest API (as the agent does in its pod), and RBAC sees the ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_clients_reach_the_real_server_with_a_certificate_and_a_service_account_token() {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use kube::api::{Api, PostParams};
    let cluster = start();
    let admin = pxb_tests::real::admin_client(&cluster)
        .await
        .expect("admin client");
    let nss: Api<Namespace> = Api::all(admin.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "apps"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(admin, "apps");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "worker"}})).expect("sa"),
    )
    .await
    .expect("service account");
    let token = pxb_tests::real::service_account_token(
        &cluster,
        "apps",
        "worker",
        "https://kubernetes.default.svc",
        std::time::Duration::from_secs(600),
    )
    .expect("token");
    let worker = pxb_tests::real::token_client(&cluster, "worker", &token)
        .await
        .expect("client");
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(worker, "apps");
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message.contains("system:serviceaccount:apps:worker"),
                "{}",
                s.message
            );
        }
        other => panic!("a service account without bindings may not list config maps: {other:?}"),
    }
}

/// The README's example objects, taken from the README itself, are accepted by the real server
/// with no field pruned (every field sent comes back with the value sent), and a fully populated
/// status of each kind, written through the status subresource as the agent writes it, reads
/// back unchanged: a field the CRD schema lacked would be dropped by the real server's pruning
/// (the simulator does not prune).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_objects_and_full_agent_statuses_survive_the_real_schema() {
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    use pxb_daemon::crd::{
        ApplicationBackupStatus, ApplicationRestoreStatus, BackupLocationStatus, ObjectFailure, Progress,
        RestoreCounts, Sizes, SyncStatus, ValidationStatus, VerifyStatus, VolumeResult,
    };
    let cluster = start();
    pxb_tests::real::install_pxb(&cluster).expect("install pxb");
    let admin = pxb_tests::real::admin_client(&cluster).await.expect("admin");

    // The README's YAML block with the three kinds.
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README");
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap_or_default())
        .find(|b| b.contains("kind: BackupLocation") && b.contains("kind: ApplicationRestore"))
        .expect("the README's example objects");
    let examples: Vec<Value> = block
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).expect("an example parses"))
        .collect();
    assert_eq!(examples.len(), 3, "{block}");

    let now = "2026-12-03T10:00:00Z".to_string();
    let volume = VolumeResult {
        namespace: "shop".into(),
        claim: "data".into(),
        phase: "Success".into(),
        files: 12,
        bytes: 3456,
        message: Some("12 files".into()),
    };
    let statuses: Vec<(&str, Value)> = vec![
        (
            "BackupLocation",
            serde_json::to_value(BackupLocationStatus {
                validation: Some(ValidationStatus {
                    phase: "Invalid".into(),
                    failed_step: Some("write".into()),
                    reason: Some("403 on write".into()),
                    last_checked: Some(now.clone()),
                }),
                sync: Some(SyncStatus {
                    phase: "Completed".into(),
                    request: 3,
                    started: Some(now.clone()),
                    heartbeat: Some(now.clone()),
                    backups_found: 7,
                    backups_imported: 2,
                    marker: Some("20261203T000000Z-abc".into()),
                    message: Some("imported 2".into()),
                }),
                verify: Some(VerifyStatus {
                    phase: "Completed".into(),
                    heartbeat: Some(now.clone()),
                    completed: Some(now.clone()),
                    backups_checked: 9,
                    damaged_backups: vec!["b1".into()],
                    missing_objects: 4,
                    missing_by_backup: [("b1".to_string(), 4)].into(),
                    message: Some("1 damaged".into()),
                }),
                observed_validate_request: 1,
                observed_sync_request: 3,
                observed_verify_request: 2,
                observed_generation: 5,
                observed_connection: Some("azure/tenantastorage/backups".into()),
            })
            .expect("status"),
        ),
        (
            "ApplicationBackup",
            serde_json::to_value(ApplicationBackupStatus {
                phase: "PartialSuccess".into(),
                stage: Some("Committing".into()),
                message: Some("1 volume failed".into()),
                progress: Progress {
                    objects: 40,
                    bytes: 1 << 20,
                    bytes_per_second: 4096,
                },
                heartbeat: Some(now.clone()),
                volumes: vec![volume.clone()],
                backup_id: Some("20261203T100000Z-152e3f84".into()),
                sizes: Sizes {
                    resource_bytes: 100,
                    volume_bytes: 200,
                    stored_bytes: 150,
                },
                start_timestamp: Some(now.clone()),
                completion_timestamp: Some(now.clone()),
                observed_generation: 2,
                attempts: 1,
                virtual_machines: 1,
            })
            .expect("status"),
        ),
        (
            "ApplicationRestore",
            serde_json::to_value(ApplicationRestoreStatus {
                phase: "PartialSuccess".into(),
                message: Some("1 object failed".into()),
                heartbeat: Some(now.clone()),
                counts: RestoreCounts {
                    total: 10,
                    created: 7,
                    replaced: 1,
                    skipped: 1,
                    failed: 1,
                },
                failures: vec![ObjectFailure {
                    kind: "Role".into(),
                    namespace: Some("shop-copy".into()),
                    name: "reader".into(),
                    reason: "forbidden".into(),
                }],
                start_timestamp: Some(now.clone()),
                completion_timestamp: Some(now.clone()),
                volumes: vec![volume],
                attempts: 2,
            })
            .expect("status"),
        ),
    ];

    for example in examples {
        let kind = example["kind"].as_str().expect("kind").to_owned();
        let plural = format!("{}s", kind.to_lowercase());
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("pxb.io", "v1alpha1", &kind),
            &plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "pxb-system", &ar);
        let object: DynamicObject = serde_json::from_value(example.clone()).expect("object");
        let created = api
            .create(&Default::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("the real server refused the README's {kind}: {e}"));
        let back = serde_json::to_value(&created).expect("json");
        let mut pruned = Vec::new();
        sent_fields_kept("spec", &example["spec"], &back["spec"], &mut pruned);
        assert!(
            pruned.is_empty(),
            "the real server changed the README's {kind}: {pruned:?}"
        );

        let status = &statuses.iter().find(|(k, _)| *k == kind).expect("a status").1;
        let name = created.metadata.name.clone().expect("name");
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap_or_else(|e| panic!("{kind} status: {e}"));
        let read = serde_json::to_value(api.get(&name).await.expect("get")).expect("json");
        assert_eq!(
            &read["status"], status,
            "{kind}: the status read back differs from the one written"
        );
    }
}

/// Every field of `sent` is in `got` with the same value (`got` may hold more: defaults).
fn sent_fields_kept(path: &str, sent: &Value, got: &Value, out: &mut Vec<String>) {
    match (sent, got) {
        (Value::Object(s), Value::Object(g)) => {
            for (k, v) in s {
                match g.get(k) {
                    Some(gv) => sent_fields_kept(&format!("{path}.{k}"), v, gv, out),
                    None => out.push(format!("{path}.{k} was dropped")),
                }
            }
        }
        _ if sent == got => {}
        _ => out.push(format!("{path}: sent {sent}, got {got}")),
    }
}
