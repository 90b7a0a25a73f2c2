//! The custom resources and manifests: the agent chart's CRD templates
//! (`deploy/helm/pxb-agent/templates/crds/`, and so `deploy/crds/`, the chart's output) match the
//! Rust types, they install on a simulated shoot, the typed API works against them, and the
//! agent's manifests in `deploy/agent/` carry this version.

use std::path::PathBuf;

use kube::api::{Api, Patch, PatchParams, PostParams};
use pxb_daemon::crd::{
    ApplicationBackup, ApplicationBackupSpec, BackupLocation, BackupLocationSpec, BackupLocationStatus,
    ValidationStatus, crds_yaml,
};
use serde_json::{Value, json};

/// The agent chart's CRD templates, generated here from the Rust types.
fn chart_crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/pxb-agent/templates/crds")
}

/// `deploy/crds`: the chart's rendering of those templates (tests/tests/agent_chart.rs writes it).
fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

/// The chart's template of a generated CRD: its YAML with `helm.sh/resource-policy: keep`, so that
/// uninstalling the chart never deletes a CRD, and with it every custom resource of its kind.
fn chart_template(name: &str, yaml: &str) -> String {
    let anchor = format!("\nmetadata:\n  name: {}\n", name.trim_end_matches(".yaml"));
    let at = yaml
        .find(&anchor)
        .unwrap_or_else(|| panic!("{name}: no {anchor:?} in {yaml}"))
        + anchor.len();
    assert!(
        !yaml.contains("{{"),
        "{name}: Helm would execute the {{{{ of a CRD template; escape it"
    );
    format!(
        "{}  annotations:\n    # Kept when the pxb-agent chart is uninstalled, with every custom resource of this kind.\n    \
         helm.sh/resource-policy: keep\n{}",
        &yaml[..at],
        &yaml[at..]
    )
}

fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn committed_crds_match_the_types() {
    let generated: Vec<(&str, String)> = crds_yaml()
        .expect("generate")
        .into_iter()
        .map(|(name, yaml)| (name, chart_template(name, &yaml)))
        .collect();
    if std::env::var_os("PXB_UPDATE_CRDS").is_some() {
        std::fs::create_dir_all(chart_crd_dir()).expect("mkdir");
        for (name, yaml) in &generated {
            std::fs::write(chart_crd_dir().join(name), yaml).expect("write");
        }
    }
    let mut stale = Vec::new();
    for (name, yaml) in &generated {
        match std::fs::read_to_string(chart_crd_dir().join(name)) {
            Ok(committed) if committed == *yaml => {}
            _ => stale.push(*name),
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/helm/pxb-agent/templates/crds/ is stale for {stale:?}; regenerate with \
         PXB_UPDATE_CRDS=1 cargo test -p pxb-daemon --test crds, then deploy/crds with \
         PXB_UPDATE_CHARTS=1 cargo test -p pxb-tests --test agent_chart"
    );
    let mut names: Vec<String> = generated.iter().map(|(n, _)| (*n).to_owned()).collect();
    names.sort();
    assert_eq!(
        file_names(&chart_crd_dir()),
        names,
        "no stray files in the chart's templates/crds"
    );

    // deploy/crds is what Helm renders of those templates: the same objects (the text, with
    // Helm's header, is compared with Helm's output by tests/tests/agent_chart.rs).
    let mut stale = Vec::new();
    for ((name, yaml), (_, rust)) in generated.iter().zip(crds_yaml().expect("generate")) {
        let template: Value = serde_saphyr::from_str(yaml).expect("template YAML");
        let mut bare = template.clone();
        let annotations = bare["metadata"]
            .as_object_mut()
            .and_then(|m| m.remove("annotations"));
        assert_eq!(
            annotations,
            Some(json!({"helm.sh/resource-policy": "keep"})),
            "{name}"
        );
        assert_eq!(
            bare,
            serde_saphyr::from_str::<Value>(&rust).expect("YAML"),
            "{name}: the template is the Rust CRD"
        );
        let committed = std::fs::read_to_string(crd_dir().join(name))
            .ok()
            .and_then(|y| serde_saphyr::from_str::<Value>(&y).ok());
        if committed.as_ref() != Some(&template) {
            stale.push(*name);
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds/ is stale for {stale:?}; regenerate with \
         PXB_UPDATE_CHARTS=1 cargo test -p pxb-tests --test agent_chart"
    );
    assert_eq!(file_names(&crd_dir()), names, "no stray files in deploy/crds");
}

#[test]
fn schemas_constrain_values_and_columns_show_phase_and_age() {
    for (name, yaml) in crds_yaml().expect("generate") {
        let crd: Value = serde_saphyr::from_str(&yaml).expect("valid YAML");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{name}");
        assert!(
            version["subresources"]["status"].is_object(),
            "{name} has a status subresource"
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert!(
            columns.contains(&"Phase") && columns.contains(&"Age"),
            "{name}: {columns:?}"
        );
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["group"], "pxb.io");
    }
    let yaml = &crds_yaml().expect("generate")[0].1;
    let crd: Value = serde_saphyr::from_str(yaml).expect("yaml");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["provider"]["enum"], json!(["azure", "file"]));
    assert_eq!(
        spec["properties"]["auth"]["properties"]["mode"]["enum"],
        json!(["workloadIdentity", "secretRef"])
    );
    assert!(
        spec["required"]
            .as_array()
            .expect("required")
            .iter()
            .any(|r| r == "container")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_install_on_a_shoot_and_serve_typed_objects() {
    let shoots = pxb_daemon::sim::ShootFixture::start(1)
        .await
        .expect("simulated shoot");
    let client = shoots.client(0).await.expect("client");

    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    for (_, yaml) in crds_yaml().expect("generate") {
        let crd = serde_saphyr::from_str(&yaml).expect("yaml");
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("install CRD");
    }
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "pxb-system"}})).expect("ns"),
    )
    .await
    .expect("namespace");

    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
    let mut loc = BackupLocation::new(
        "tenant-a",
        BackupLocationSpec {
            provider: "azure".into(),
            account: Some("tenantastorage".into()),
            container: "backups".into(),
            sync: true,
            ..BackupLocationSpec::default()
        },
    );
    loc.spec.auth.mode = "workloadIdentity".into();
    loc.spec.auth.client_id = Some("11111111-2222-3333-4444-555555555555".into());
    let created = locations
        .create(&PostParams::default(), &loc)
        .await
        .expect("create");
    assert_eq!(created.spec, loc.spec);
    // The agent acknowledges a request through the status subresource.
    let status = BackupLocationStatus {
        validation: Some(ValidationStatus {
            phase: "Valid".into(),
            last_checked: Some("2026-11-22T00:00:00Z".into()),
            ..ValidationStatus::default()
        }),
        observed_validate_request: 0,
        observed_generation: 1,
        ..BackupLocationStatus::default()
    };
    let patched = locations
        .patch_status(
            "tenant-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .expect("status");
    assert_eq!(patched.status, Some(status));

    // Defaults apply to what the server sends back without them.
    let backups: Api<ApplicationBackup> = Api::namespaced(client, "pxb-system");
    let raw = json!({"apiVersion": "pxb.io/v1alpha1", "kind": "ApplicationBackup", "metadata": {"name": "b1"},
                     "spec": {"location": "tenant-a", "namespaces": ["shop"]}});
    let b: ApplicationBackup = serde_json::from_value(raw).expect("minimal backup");
    let b = backups.create(&PostParams::default(), &b).await.expect("create");
    assert_eq!(
        b.spec,
        ApplicationBackupSpec {
            location: "tenant-a".into(),
            namespaces: vec!["shop".into()],
            include_volumes: true,
            reclaim_policy: "Delete".into(),
            ..ApplicationBackupSpec::default()
        }
    );
}

#[test]
fn agent_manifests_carry_this_version_and_workload_identity() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent");
    let yaml = std::fs::read_to_string(dir.join("30-deployment.yaml")).expect("deployment");
    let d: Value = serde_saphyr::from_str(&yaml).expect("yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        d["metadata"]["labels"]["pxb.io/version"], version,
        "Deployment label"
    );
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["pxb.io/version"], version, "pod label");
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        format!("pxb-agent:{version}")
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "pxb-agent");
    let token = &pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "api://AzureADTokenExchange");
    let env: Vec<&str> = pod["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        env.contains(&"AZURE_FEDERATED_TOKEN_FILE") && env.contains(&"PXB_LISTEN"),
        "{env:?}"
    );
    let svc: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("40-service.yaml")).expect("service"))
            .expect("yaml");
    assert_eq!(svc["metadata"]["name"], "pxb-agent");
    assert_eq!(svc["spec"]["ports"][0]["name"], "http");
}
