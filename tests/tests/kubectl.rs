//! The honesty check of the simulator: the real `kubectl` on this machine drives a simulated
//! shoot with the kubeconfig the simulated garden issued. `PXB_KUBECTL` names another kubectl
//! binary (e.g. an older release) to run the same checks with.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use pxb_tests::sim::{Fleet, FleetConfig, ProjectRole, ShootSpec};
use serde_json::{Value, json};

fn kubectl(dir: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let kubectl = std::env::var("PXB_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .env("HOME", dir)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("{kubectl} must be installed and on PATH for this test (scripts/install-deps installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?} failed: {stdout}{stderr}");
    stdout
}

#[tokio::test]
async fn kubectl_drives_a_simulated_shoot() {
    let fleet = Fleet::start(FleetConfig::default()).expect("simulator");
    fleet.add_project("dev").expect("project");
    fleet.add_shoot("dev", ShootSpec::new("s1")).expect("shoot");
    let token = fleet
        .add_service_account("dev", "pxb", ProjectRole::Admin)
        .expect("sa");

    // The kubeconfig comes from the garden's adminkubeconfig subresource.
    let kc = kube::config::Kubeconfig::from_yaml(&fleet.garden_kubeconfig(&token)).expect("kubeconfig");
    let garden = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config"),
    )
    .expect("client");
    let req = http::Request::post(
        "/apis/core.gardener.cloud/v1beta1/namespaces/garden-dev/shoots/s1/adminkubeconfig",
    )
    .header("content-type", "application/json")
    .body(
        json!({"apiVersion": "authentication.gardener.cloud/v1alpha1", "kind": "AdminKubeconfigRequest",
                   "spec": {"expirationSeconds": 600}})
        .to_string()
        .into_bytes(),
    )
    .expect("request");
    let resp: Value = garden.request(req).await.expect("adminkubeconfig");
    let yaml = base64::engine::general_purpose::STANDARD
        .decode(resp["status"]["kubeconfig"].as_str().expect("kubeconfig"))
        .expect("base64");

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("shoot.yaml");
    std::fs::write(&kubeconfig, yaml).expect("write");
    let d = dir.path();

    let version = kubectl(d, &kubeconfig, &["version", "-o", "json"]);
    let version: Value = serde_json::from_str(&version).expect("json");
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.33.4");
    let nss = kubectl(d, &kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(
        nss.contains("namespace/default") && nss.contains("namespace/kube-system"),
        "{nss}"
    );

    std::fs::write(
        d.join("crd.yaml"),
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.pxb.io
spec:
  group: example.pxb.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#,
    )
    .expect("write");
    let cr = |size: u32| {
        format!(
            "apiVersion: example.pxb.io/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: default\n  labels: {{app: demo}}\nspec:\n  size: {size}\n"
        )
    };
    let out = kubectl(
        d,
        &kubeconfig,
        &["apply", "-f", &d.join("crd.yaml").to_string_lossy()],
    );
    assert!(out.contains("created"), "{out}");
    std::fs::write(d.join("cr.yaml"), cr(3)).expect("write");
    let out = kubectl(
        d,
        &kubeconfig,
        &["apply", "-f", &d.join("cr.yaml").to_string_lossy()],
    );
    assert!(out.contains("widget.example.pxb.io/w1 created"), "{out}");
    let size = kubectl(
        d,
        &kubeconfig,
        &["get", "wg", "w1", "-n", "default", "-o", "jsonpath={.spec.size}"],
    );
    assert_eq!(size, "3");
    std::fs::write(d.join("cr.yaml"), cr(5)).expect("write");
    let out = kubectl(
        d,
        &kubeconfig,
        &["apply", "-f", &d.join("cr.yaml").to_string_lossy()],
    );
    assert!(out.contains("configured"), "{out}");
    let out = kubectl(
        d,
        &kubeconfig,
        &["apply", "-f", &d.join("cr.yaml").to_string_lossy()],
    );
    assert!(out.contains("unchanged"), "{out}");
    let got = kubectl(
        d,
        &kubeconfig,
        &[
            "get",
            "widgets",
            "-l",
            "app=demo",
            "-A",
            "-o",
            "jsonpath={.items[0].spec.size} {.items[0].metadata.generation}",
        ],
    );
    assert_eq!(got, "5 2");

    // A built-in type through apply, and label selection.
    std::fs::write(
        d.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: default\n  labels: {app: demo}\ndata:\n  a: b\n",
    )
    .expect("write");
    kubectl(
        d,
        &kubeconfig,
        &["apply", "-f", &d.join("cm.yaml").to_string_lossy()],
    );
    let cms = kubectl(
        d,
        &kubeconfig,
        &[
            "get",
            "configmaps",
            "-n",
            "default",
            "-l",
            "app=demo",
            "-o",
            "name",
        ],
    );
    assert_eq!(cms.trim(), "configmap/c1");

    let out = kubectl(
        d,
        &kubeconfig,
        &["delete", "-f", &d.join("cr.yaml").to_string_lossy()],
    );
    assert!(out.contains("deleted"), "{out}");
    let left = kubectl(d, &kubeconfig, &["get", "widgets", "-A", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
    kubectl(d, &kubeconfig, &["delete", "configmap", "c1", "-n", "default"]);
    let out = kubectl(
        d,
        &kubeconfig,
        &["delete", "-f", &d.join("crd.yaml").to_string_lossy()],
    );
    assert!(out.contains("deleted"), "{out}");
    let crds = kubectl(d, &kubeconfig, &["get", "crd", "-o", "name"]);
    assert!(crds.trim().is_empty(), "{crds}");

    // pxb's own CRDs: installed from deploy/crds, and their printer columns show.
    let crds = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let out = kubectl(d, &kubeconfig, &["apply", "-f", &crds.to_string_lossy()]);
    assert_eq!(out.matches("created").count(), 3, "{out}");
    std::fs::write(
        d.join("loc.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: pxb-system\n---\n\
         apiVersion: pxb.io/v1alpha1\nkind: BackupLocation\nmetadata:\n  name: loc1\n  namespace: pxb-system\n\
         spec:\n  provider: azure\n  container: backups\n",
    )
    .expect("write");
    kubectl(
        d,
        &kubeconfig,
        &["apply", "-f", &d.join("loc.yaml").to_string_lossy()],
    );
    let table = kubectl(d, &kubeconfig, &["get", "pbl", "-n", "pxb-system"]);
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "PROVIDER", "PHASE", "AGE"], "{table}");
    assert!(table.contains("loc1") && table.contains("azure"), "{table}");
    // The agent's manifests apply as they are.
    let agent = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent");
    kubectl(d, &kubeconfig, &["apply", "-f", &agent.to_string_lossy()]);
    let label = kubectl(
        d,
        &kubeconfig,
        &[
            "get",
            "deployment",
            "pxb-agent",
            "-n",
            "pxb-system",
            "-o",
            "jsonpath={.metadata.labels.pxb\\.io/version}",
        ],
    );
    assert_eq!(label, pxb_daemon::agent::api::VERSION);
    let all = kubectl(d, &kubeconfig, &["get", "pxb", "-A", "-o", "name"]);
    assert_eq!(
        all.trim(),
        "backuplocation.pxb.io/loc1",
        "the pxb category lists pxb's objects"
    );
}
