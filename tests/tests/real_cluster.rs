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
