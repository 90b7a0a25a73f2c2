//! The agent's Helm chart (`deploy/helm/pxb-agent`) with the real Helm (`scripts/build-helm`) and
//! the real kube-apiserver:
//!
//! - `helm lint --strict` passes with the default values and with each `ci/*.yaml`, and the
//!   values schema refuses what the Deployment sets itself;
//! - the chart renders exactly the objects of the server's zero-touch install
//!   (`pxb_daemon::server::install::agent_objects`) for any image, and `deploy/crds` and
//!   `deploy/agent` are its output (`PXB_UPDATE_CHARTS=1` regenerates them);
//! - the values reach the objects (Workload Identity, settings, scheduling, pod metadata);
//! - on the real API server: every rendered object passes a server-side dry run, and the chart
//!   installs, upgrades (a new image, a CRD changed in place) and uninstalls, keeping the CRDs,
//!   the namespace and the custom resources in it;
//! - on a second real API server: the agent's pod is refused by Pod Security Admission at
//!   `baseline` and `restricted` and admitted in `pxb-system` as the chart labels it; Helm takes
//!   over what the zero-touch install created (`--take-ownership`, in place), and the README's
//!   commands remove a zero-touch agent, keeping the CRDs and the namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pxb_daemon::server::install::agent_objects;
use pxb_tests::helm::{Helm, chart, server_dry_run};
use pxb_tests::real::{RealCluster, kubectl};
use serde_json::{Value, json};

const RELEASE: &str = "pxb-agent";
/// Where Helm keeps the release's record: not `pxb-system`, which the chart creates itself.
const RELEASE_NAMESPACE: &str = "default";
const REGENERATE: &str = "PXB_UPDATE_CHARTS=1 cargo test -p pxb-tests --test agent_chart";

fn agent_chart() -> PathBuf {
    chart("pxb-agent")
}

fn helm_here() -> (tempfile::TempDir, Helm) {
    let dir = tempfile::tempdir().expect("tempdir");
    let helm = Helm::new(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    (dir, helm)
}

fn render(helm: &Helm, extra: &[&str]) -> String {
    helm.template(RELEASE, &agent_chart(), RELEASE_NAMESPACE, extra)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The example values files of the chart's `ci/` (Helm's convention for values to test with).
fn ci_values() -> Vec<PathBuf> {
    let dir = agent_chart().join("ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no values files", dir.display());
    files
}

/// Helm's output as `(template path in the chart, its documents)`, in Helm's order. Each document
/// of `helm template` is `---`, `# Source: <chart>/<path>`, then the template's text.
fn by_template(rendered: &str) -> Vec<(String, Vec<String>)> {
    let mut docs: Vec<(String, String)> = Vec::new();
    for line in rendered.lines() {
        if line == "---" {
            docs.push((String::new(), String::new()));
            continue;
        }
        let Some((source, text)) = docs.last_mut() else {
            assert!(line.trim().is_empty(), "Helm's output starts with {line:?}");
            continue;
        };
        if source.is_empty() && text.is_empty() {
            let path = line
                .strip_prefix("# Source: pxb-agent/")
                .unwrap_or_else(|| panic!("a document of Helm's output starts with {line:?}"));
            *source = path.to_owned();
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (source, text) in docs {
        let text = format!("{}\n", text.trim_end());
        match out.iter_mut().find(|(s, _)| *s == source) {
            Some((_, texts)) => texts.push(text),
            None => out.push((source, vec![text])),
        }
    }
    out
}

/// The YAML documents of a file, parsed (comment-only documents skipped).
fn parse_docs(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.iter()
        .filter(|d| {
            !d.lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// `kind namespace/name` of an object.
fn key(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Where `a` and `b` differ, as JSON pointers with both values.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                diff(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}/{i}"), u, v, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

/// Requires the objects Helm rendered to equal zero-touch install's, whatever their order.
fn assert_same_objects(helm: &[Value], install: &[Value], what: &str) {
    let index = |objs: &[Value]| -> BTreeMap<String, Value> {
        let map: BTreeMap<String, Value> = objs.iter().map(|o| (key(o), o.clone())).collect();
        assert_eq!(map.len(), objs.len(), "{what}: objects named twice: {map:?}");
        map
    };
    let (h, i) = (index(helm), index(install));
    let mut problems = Vec::new();
    for (k, o) in &h {
        match i.get(k) {
            None => problems.push(format!(
                "{k}: rendered by the chart, not created by zero-touch install"
            )),
            Some(p) => {
                let mut d = Vec::new();
                diff("", o, p, &mut d);
                problems.extend(d.iter().map(|d| format!("{k}: {d} (chart != install)")));
            }
        }
    }
    problems.extend(
        i.keys()
            .filter(|k| !h.contains_key(*k))
            .map(|k| format!("{k}: created by zero-touch install, not rendered by the chart")),
    );
    assert!(
        problems.is_empty(),
        "{what}: the chart and zero-touch install differ:\n{}\n(deploy/crds and deploy/agent are \
         the chart's output, embedded by pxb-daemon/src/server/install.rs at build time: \
         regenerate them with {REGENERATE}, and run the tests again)",
        problems.join("\n")
    );
}

/// The generated file of a template: `deploy/crds/<name>` for `templates/crds/<name>`,
/// `deploy/agent/<name>` for `templates/<name>`.
fn generated_path(template: &str) -> PathBuf {
    let root = pxb_tests::workspace_root().join("deploy");
    if let Some(name) = template.strip_prefix("templates/crds/") {
        root.join("crds").join(name)
    } else if let Some(name) = template.strip_prefix("templates/") {
        assert!(!name.contains('/'), "{template}: no generated file for it");
        root.join("agent").join(name)
    } else {
        panic!("{template}: no generated file for it")
    }
}

/// `deploy/crds` and `deploy/agent` as the chart renders them with its default values: one file
/// per template, its documents in Helm's order, under a header that says where it comes from.
fn generated_files(rendered: &str) -> BTreeMap<PathBuf, String> {
    by_template(rendered)
        .into_iter()
        .map(|(template, docs)| {
            let header = format!(
                "# Generated from the pxb-agent chart (deploy/helm/pxb-agent/{template}) by\n\
                 # `helm template` with its default values; do not edit. Regenerate with\n\
                 # {REGENERATE}\n"
            );
            (
                generated_path(&template),
                format!("{header}{}", docs.join("---\n")),
            )
        })
        .collect()
}

#[test]
fn the_chart_lints_strictly_and_its_schema_refuses_what_the_deployment_sets() {
    let (_dir, helm) = helm_here();
    let chart = agent_chart();
    let out = helm.lint(&chart, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("1 chart(s) linted, 0 chart(s) failed"), "{out}");
    for values in ci_values() {
        let out = helm
            .lint(&chart, &["-f", &values.to_string_lossy()])
            .unwrap_or_else(|e| panic!("{}: {e:#}", values.display()));
        assert!(out.contains("0 chart(s) failed"), "{}: {out}", values.display());
    }
    // The schema: the Deployment's own variables cannot be set, settings are strings, and a
    // misspelt value is an error rather than ignored.
    for (set, says) in [
        ("config.PXB_LISTEN=0.0.0.0:9090", "/config"),
        ("config.PXB_CLUSTER_NAME=1", "want string"),
        ("image.tga=1.0", "tga"),
    ] {
        let err = helm
            .lint(&chart, &["--set", set])
            .expect_err(&format!("--set {set} must fail the lint"));
        assert!(format!("{err:#}").contains(says), "--set {set}: {err:#}");
    }
}

#[test]
fn the_chart_renders_the_objects_of_zero_touch_install() {
    let (_dir, helm) = helm_here();
    let version = env!("CARGO_PKG_VERSION");

    let rendered = render(&helm, &[]);
    let install = agent_objects(&format!("pxb-agent:{version}")).expect("agent_objects");
    assert_same_objects(&parse_docs(&rendered), &install, "default values");
    let kinds: Vec<&str> = install.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "CustomResourceDefinition").count(),
        3,
        "{kinds:?}"
    );
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }

    let custom = render(
        &helm,
        &["--set", "image.repository=reg.example/pxb-agent,image.tag=9.9.9"],
    );
    let install = agent_objects("reg.example/pxb-agent:9.9.9").expect("agent_objects");
    assert_same_objects(&parse_docs(&custom), &install, "another image");
    let deployment = install
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "reg.example/pxb-agent:9.9.9"
    );
}

#[test]
fn deploy_crds_and_deploy_agent_are_the_charts_output() {
    let (_dir, helm) = helm_here();
    let expected = generated_files(&render(&helm, &[]));
    let deploy = pxb_tests::workspace_root().join("deploy");
    let committed = |dir: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    };
    if std::env::var_os("PXB_UPDATE_CHARTS").is_some() {
        for dir in ["crds", "agent"] {
            std::fs::create_dir_all(deploy.join(dir)).expect("mkdir");
            for stray in committed(&deploy.join(dir))
                .iter()
                .filter(|f| !expected.contains_key(*f))
            {
                std::fs::remove_file(stray).expect("remove a stray file");
            }
        }
        for (path, text) in &expected {
            std::fs::write(path, text).expect("write");
        }
    }
    let mut stale = Vec::new();
    for (path, text) in &expected {
        if std::fs::read_to_string(path).ok().as_ref() != Some(text) {
            stale.push(format!("{} (differs or is missing)", path.display()));
        }
    }
    for dir in ["crds", "agent"] {
        for file in committed(&deploy.join(dir)) {
            if !expected.contains_key(&file) {
                stale.push(format!("{} (the chart renders no such template)", file.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/ is not the agent chart's output:\n{}\nregenerate with {REGENERATE}",
        stale.join("\n")
    );
    // The expected files hold every template the chart renders with default values.
    let files: Vec<String> = expected
        .keys()
        .map(|p| {
            p.strip_prefix(&deploy)
                .expect("under deploy")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        files,
        [
            "agent/00-namespace.yaml",
            "agent/10-serviceaccount.yaml",
            "agent/20-rbac.yaml",
            "agent/30-deployment.yaml",
            "agent/40-service.yaml",
            "crds/applicationbackups.pxb.io.yaml",
            "crds/applicationrestores.pxb.io.yaml",
            "crds/backuplocations.pxb.io.yaml",
        ]
    );
    // The documentation the templates carry is in the generated files.
    let rbac = &expected[&deploy.join("agent/20-rbac.yaml")];
    assert!(rbac.contains("# Not granted, on purpose:"), "{rbac}");
    assert_eq!(rbac.matches("\n---\n").count(), 5, "six RBAC objects: {rbac}");
}

#[test]
fn values_reach_the_objects() {
    let (_dir, helm) = helm_here();
    let values = agent_chart().join("ci/workload-identity-values.yaml");
    let objs = parse_docs(&render(&helm, &["-f", &values.to_string_lossy()]));
    let find = |kind: &str| -> &Value {
        objs.iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let client = "11111111-2222-3333-4444-555555555555";
    let tenant = "66666666-7777-8888-9999-000000000000";
    let cm = find("ConfigMap");
    assert_eq!(cm["metadata"]["name"], "pxb-agent");
    assert_eq!(cm["metadata"]["namespace"], "pxb-system");
    assert_eq!(
        cm["data"],
        json!({"AZURE_CLIENT_ID": client, "AZURE_TENANT_ID": tenant,
               "PXB_CLUSTER_NAME": "prod-eu-1", "PXB_VALIDATE_INTERVAL_SECONDS": "300"})
    );
    let sa = find("ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"],
        json!({"azure.workload.identity/client-id": client, "azure.workload.identity/tenant-id": tenant})
    );
    assert_eq!(sa["metadata"]["labels"]["azure.workload.identity/use"], "true");
    let d = find("Deployment");
    let pod = &d["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example/pxb/pxb-agent:0.1.0-patch1");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["envFrom"][0]["configMapRef"]["name"], cm["metadata"]["name"]);
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}})
    );
    assert_eq!(
        pod["spec"]["nodeSelector"],
        json!({"kubernetes.io/hostname": "node-1"})
    );
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({"example.com/scrape": "false"})
    );
    // Extra pod labels come on top of the chart's own, which they cannot replace (the selector's
    // among them).
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app.kubernetes.io/name": "pxb-agent", "app.kubernetes.io/part-of": "pxb",
               "pxb.io/version": env!("CARGO_PKG_VERSION"), "azure.workload.identity/use": "true",
               "team": "platform"})
    );
    // The agent's version label is the chart's appVersion, whatever the image.
    assert_eq!(
        d["metadata"]["labels"]["pxb.io/version"],
        env!("CARGO_PKG_VERSION")
    );

    // Without values: no ConfigMap (it is the operator's) and no Workload Identity annotation.
    let defaults = parse_docs(&render(&helm, &[]));
    assert!(defaults.iter().all(|o| o["kind"] != "ConfigMap"), "{defaults:?}");
    let sa = defaults
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .expect("SA");
    assert!(sa["metadata"].get("annotations").is_none(), "{sa}");
    // Only the settings: a ConfigMap without Workload Identity.
    let only = parse_docs(&render(&helm, &["--set", "config.PXB_CLUSTER_NAME=c1"]));
    let cm = only.iter().find(|o| o["kind"] == "ConfigMap").expect("ConfigMap");
    assert_eq!(cm["data"], json!({"PXB_CLUSTER_NAME": "c1"}));
}

fn admin_kubectl(cluster: &RealCluster, args: &[&str]) -> String {
    kubectl(cluster, &cluster.admin_kubeconfig(), args)
}

/// Those of `names` (`kind/name`, kinds as Kubernetes spells them in lower case, looked up in
/// `pxb-system` when namespaced) that exist, by name; one kubectl call.
fn get_all(cluster: &RealCluster, names: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec![
        "get",
        "--namespace",
        "pxb-system",
        "--ignore-not-found",
        "-o",
        "json",
    ];
    args.extend_from_slice(names);
    let out = admin_kubectl(cluster, &args);
    if out.trim().is_empty() {
        return BTreeMap::new();
    }
    let v: Value = serde_json::from_str(&out).expect("kubectl JSON");
    let items = match v["kind"].as_str() {
        Some("List") => v["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![v],
    };
    items
        .into_iter()
        .map(|o| {
            let name = format!(
                "{}/{}",
                o["kind"].as_str().expect("kind").to_lowercase(),
                o["metadata"]["name"].as_str().expect("name")
            );
            (name, o)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

const CRDS: [&str; 3] = [
    "customresourcedefinition/backuplocations.pxb.io",
    "customresourcedefinition/applicationbackups.pxb.io",
    "customresourcedefinition/applicationrestores.pxb.io",
];
const NAMESPACE: &str = "namespace/pxb-system";
/// What the chart installs besides the CRDs and the namespace, which an uninstall deletes.
const DELETED_ON_UNINSTALL: [&str; 10] = [
    "serviceaccount/pxb-agent",
    "clusterrole/pxb-agent-backup",
    "clusterrole/pxb-agent-restore",
    "clusterrolebinding/pxb-agent-backup",
    "clusterrolebinding/pxb-agent-restore",
    "role/pxb-agent",
    "rolebinding/pxb-agent",
    "service/pxb-agent",
    "deployment/pxb-agent",
    "configmap/pxb-agent",
];
const DEPLOYMENT: &str = "deployment/pxb-agent";

fn image(deployment: &Value) -> &str {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image")
}

/// One real API server for both parts, in this order: the chart's lifecycle needs `pxb-system`
/// absent (the chart creates it), the dry runs need it present (namespaced objects are checked
/// against an existing namespace; a dry-run Namespace is not stored), and the uninstall keeps it.
#[test]
fn on_the_real_api_server_the_chart_installs_upgrades_uninstalls_and_every_object_passes_a_dry_run() {
    let cluster = pxb_tests::real::start();
    let helm = Helm::on(&cluster).unwrap_or_else(|e| panic!("{e:#}"));
    let chart_dir = agent_chart();
    let version = env!("CARGO_PKG_VERSION");
    let mut every: Vec<&str> = vec![NAMESPACE];
    every.extend_from_slice(&CRDS);
    every.extend_from_slice(&DELETED_ON_UNINSTALL);

    // Install, with a Workload Identity: every object is created (pods never run here: no
    // kubelet, so no --wait).
    let out = helm
        .run(&[
            "install",
            RELEASE,
            &chart_dir.to_string_lossy(),
            "--namespace",
            RELEASE_NAMESPACE,
            "--set",
            "workloadIdentity.clientId=11111111-2222-3333-4444-555555555555",
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("helm.sh/resource-policy: keep"),
        "the notes say what stays: {out}"
    );
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    wait.extend_from_slice(&CRDS);
    admin_kubectl(&cluster, &wait);
    let installed = get_all(&cluster, &every);
    for name in &every {
        let o = installed
            .get(*name)
            .unwrap_or_else(|| panic!("{name} was not installed: {:?}", installed.keys()));
        assert_eq!(
            o["metadata"]["annotations"]["meta.helm.sh/release-name"], RELEASE,
            "{name}"
        );
    }
    assert_eq!(image(&installed[DEPLOYMENT]), format!("pxb-agent:{version}"));

    // A backup's record, as the server would create it.
    create_location(&cluster);

    // Upgrade to a later chart whose BackupLocation CRD has another printer column and whose
    // default pull policy changed, and a new image, with the README's --reset-then-reuse-values:
    // the Deployment and the CRD are changed in place, the custom resource stays, the value set
    // at install is kept and the later chart's new default applies (--reuse-values would keep
    // the old chart's).
    let later = cluster.dir().join("pxb-agent-later");
    copy_dir(&chart_dir, &later);
    let later_values = later.join("values.yaml");
    let text = std::fs::read_to_string(&later_values).expect("values.yaml");
    let policy = "  pullPolicy: IfNotPresent\n";
    assert!(text.contains(policy), "{text}");
    std::fs::write(&later_values, text.replacen(policy, "  pullPolicy: Always\n", 1)).expect("write");
    let crd_template = later.join("templates/crds/backuplocations.pxb.io.yaml");
    let text = std::fs::read_to_string(&crd_template).expect("CRD template");
    let columns = "  - additionalPrinterColumns:\n";
    assert!(text.contains(columns), "{text}");
    std::fs::write(
        &crd_template,
        text.replacen(
            columns,
            &format!("{columns}    - jsonPath: .spec.container\n      name: Container\n      type: string\n"),
            1,
        ),
    )
    .expect("write");
    let out = helm
        .run(&[
            "upgrade",
            RELEASE,
            &later.to_string_lossy(),
            "--namespace",
            RELEASE_NAMESPACE,
            "--reset-then-reuse-values",
            "--set",
            "image.repository=reg.example/pxb-agent,image.tag=9.9.9",
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("REVISION: 2"), "{out}");
    let upgraded = get_all(&cluster, &[DEPLOYMENT, CRDS[0], "configmap/pxb-agent"]);
    let d = &upgraded[DEPLOYMENT];
    assert_eq!(image(d), "reg.example/pxb-agent:9.9.9");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always",
        "the later chart's default"
    );
    assert_eq!(
        upgraded["configmap/pxb-agent"]["data"]["AZURE_CLIENT_ID"], "11111111-2222-3333-4444-555555555555",
        "the value set at install"
    );
    assert_eq!(
        d["metadata"]["uid"], installed[DEPLOYMENT]["metadata"]["uid"],
        "the Deployment is updated in place"
    );
    let crd = &upgraded[CRDS[0]];
    assert_eq!(
        crd["metadata"]["uid"], installed[CRDS[0]]["metadata"]["uid"],
        "the CRD is updated in place"
    );
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns.first(), Some(&"Container"), "{columns:?}");
    let table = admin_kubectl(&cluster, &["get", "backuplocations", "-n", "pxb-system"]);
    assert!(
        table.lines().next().unwrap_or("").contains("CONTAINER") && table.contains("tenant-a"),
        "the custom resource stays, shown with the new column: {table}"
    );

    // Uninstall: the CRDs and the namespace stay, and with them the custom resource; the rest goes.
    let out = helm
        .run(&["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("uninstalled"), "{out}");
    let mut after: Vec<&str> = every.clone();
    after.push("backuplocation/tenant-a");
    let remaining = get_all(&cluster, &after);
    let mut kept: Vec<&str> = vec![NAMESPACE, "backuplocation/tenant-a"];
    kept.extend_from_slice(&CRDS);
    kept.sort_unstable();
    assert_eq!(remaining.keys().collect::<Vec<_>>(), kept);
    assert!(
        remaining[NAMESPACE]["metadata"]
            .get("deletionTimestamp")
            .is_none(),
        "{}",
        remaining[NAMESPACE]
    );
    assert_eq!(
        remaining["backuplocation/tenant-a"]["spec"]["container"],
        "backups"
    );
    let releases = helm
        .run(&["list", "--all-namespaces", "--short"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(releases.trim().is_empty(), "{releases}");

    // Installed again (same release), the chart takes the kept objects back and finds the
    // records as they were; uninstalled again, it keeps them again.
    helm.run(&[
        "install",
        RELEASE,
        &chart_dir.to_string_lossy(),
        "--namespace",
        RELEASE_NAMESPACE,
    ])
    .unwrap_or_else(|e| panic!("installing again: {e:#}"));
    let again = get_all(&cluster, &after);
    assert_eq!(
        again.len(),
        after.len() - 1,
        "all but the ConfigMap: {:?}",
        again.keys()
    );
    assert_eq!(
        again[CRDS[0]]["metadata"]["uid"], installed[CRDS[0]]["metadata"]["uid"],
        "the kept CRD, taken back"
    );
    assert_eq!(
        again["backuplocation/tenant-a"]["metadata"]["uid"],
        remaining["backuplocation/tenant-a"]["metadata"]["uid"]
    );
    helm.run(&["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(get_all(&cluster, &after).keys().collect::<Vec<_>>(), kept);

    // The CRDs go only when deleted by hand, and every custom resource with them; the dry runs
    // below then check them as new.
    let mut delete = vec!["delete", "--timeout=60s"];
    delete.extend_from_slice(&CRDS);
    admin_kubectl(&cluster, &delete);
    assert!(get_all(&cluster, &CRDS).is_empty());

    // Server-side dry runs of every object rendered with the default values and with each ci
    // values file, against the namespace the uninstall kept: the API server validates, defaults
    // and admits each object, and stores none.
    let (_dir, local) = helm_here();
    let mut renders = vec![("default values".to_owned(), render(&local, &[]))];
    for values in ci_values() {
        renders.push((
            values.display().to_string(),
            render(&local, &["-f", &values.to_string_lossy()]),
        ));
    }
    for (what, yaml) in renders {
        let objects = parse_docs(&yaml);
        let out = server_dry_run(&cluster, &yaml).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        for o in &objects {
            let kind = o["kind"].as_str().expect("kind").to_lowercase();
            let name = o["metadata"]["name"].as_str().expect("name");
            assert!(
                out.lines().any(|l| (l.starts_with(&format!("{kind}/"))
                    || l.starts_with(&format!("{kind}.")))
                    && l.contains(&format!("/{name} "))
                    && l.ends_with("(server dry run)")),
                "{what}: {kind} {name} not in kubectl's output:\n{out}"
            );
        }
    }
    // The dry runs stored nothing.
    assert_eq!(get_all(&cluster, &every).keys().collect::<Vec<_>>(), [NAMESPACE]);
}

/// The agent's pod as its Deployment makes it: the pod template of the Deployment the chart
/// renders with its default values, as the Pod `pxb-system/pxb-agent`.
fn agent_pod() -> Value {
    let (_dir, helm) = helm_here();
    let objects = parse_docs(&render(&helm, &[]));
    let d = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let template = &d["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": d["metadata"]["name"],
            "namespace": "pxb-system",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    })
}

/// Creates `pod` with a server-side dry run (admission runs, PodSecurity among it; nothing is
/// stored): kubectl's output when the API server admits it, its refusal otherwise.
fn pod_dry_run(cluster: &RealCluster, pod: &Value) -> Result<String, String> {
    let file = cluster.dir().join("agent-pod.json");
    std::fs::write(&file, serde_json::to_vec_pretty(pod).expect("JSON")).expect("write");
    let out = pxb_tests::real::kubectl_output(
        cluster,
        &cluster.admin_kubeconfig(),
        &["create", "--dry-run=server", "-f", &file.to_string_lossy()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(text) } else { Err(text) }
}

/// Creates what the server's zero-touch install creates (`agent_objects(image)`), as it does: one
/// create per object, in its order, leaving an object that exists already as it is (409).
fn zero_touch_install(cluster: &RealCluster, image: &str) {
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": agent_objects(image).expect("agent_objects"),
    });
    let file = cluster.dir().join("zero-touch.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&list).expect("JSON")).expect("write");
    let out = pxb_tests::real::kubectl_output(
        cluster,
        &cluster.admin_kubeconfig(),
        &["create", "-f", &file.to_string_lossy()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            || stderr
                .lines()
                .all(|l| l.trim().is_empty() || l.starts_with("Warning: ") || l.contains("(AlreadyExists)")),
        "zero-touch install: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    wait.extend_from_slice(&CRDS);
    admin_kubectl(cluster, &wait);
}

/// Creates the BackupLocation `pxb-system/tenant-a`, a backup's record as the server writes it.
fn create_location(cluster: &RealCluster) {
    let location = cluster.dir().join("location.yaml");
    std::fs::write(
        &location,
        "apiVersion: pxb.io/v1alpha1\nkind: BackupLocation\nmetadata:\n  name: tenant-a\n  \
         namespace: pxb-system\nspec:\n  provider: azure\n  container: backups\n",
    )
    .expect("write");
    admin_kubectl(cluster, &["create", "-f", &location.to_string_lossy()]);
}

fn namespace_label(cluster: &RealCluster, label: &str) -> Value {
    get_all(cluster, &[NAMESPACE])[NAMESPACE]["metadata"]["labels"][label].clone()
}

/// The kubectl commands of the first `sh` block under `heading` in the chart's README, each as
/// its arguments (lines continued with `\` joined, comment lines skipped).
fn readme_kubectl_commands(heading: &str) -> Vec<Vec<String>> {
    let path = agent_chart().join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README");
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{}: no heading {heading:?}", path.display()))
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("{}: no sh block under {heading:?}", path.display()))
        .0;
    let joined = block.replace("\\\n", " ");
    let commands: Vec<Vec<String>> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            assert_eq!(words[0], "kubectl", "{heading}: {l}");
            words[1..].to_vec()
        })
        .collect();
    assert!(!commands.is_empty(), "{heading}: no commands");
    commands
}

/// An agent the server's zero-touch install created is taken over by Helm (`--take-ownership`:
/// the objects are updated in place, the custom resources stay), and its pods pass Pod Security
/// Admission in the namespace the chart makes, which a baseline or restricted label would not
/// let them into. Finally, the README's commands remove an agent the server installed, with
/// nothing to uninstall it, keeping the CRDs and the namespace.
#[test]
fn on_the_real_api_server_helm_takes_over_a_zero_touch_agent_whose_pods_pass_pod_security() {
    let cluster = pxb_tests::real::start();
    let helm = Helm::on(&cluster).unwrap_or_else(|e| panic!("{e:#}"));
    let chart_dir = agent_chart();
    let version = env!("CARGO_PKG_VERSION");
    let installed_by_default: Vec<&str> = [NAMESPACE]
        .into_iter()
        .chain(CRDS)
        .chain(
            DELETED_ON_UNINSTALL
                .into_iter()
                .filter(|n| *n != "configmap/pxb-agent"),
        )
        .collect();

    // The server's zero-touch install, and a backup's record.
    zero_touch_install(&cluster, &format!("pxb-agent:{version}"));
    create_location(&cluster);
    let mut watched = installed_by_default.clone();
    watched.push("backuplocation/tenant-a");
    let before = get_all(&cluster, &watched);
    assert_eq!(before.len(), watched.len(), "{:?}", before.keys());
    for o in before.values() {
        assert!(
            o["metadata"]["annotations"]
                .get("meta.helm.sh/release-name")
                .is_none(),
            "{o}"
        );
    }

    // Pod Security Admission. The agent's pod (uid 0, a hostPath volume, added capabilities) is
    // refused where the baseline or the restricted standard is enforced, as a cluster-wide
    // default or a label on pxb-system would have it.
    let pod = agent_pod();
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            namespace_label(&cluster, &format!("pod-security.kubernetes.io/{mode}")),
            "privileged",
            "{mode}: pxb-system as the chart (and so the zero-touch install) makes it"
        );
    }
    let admitted = pod_dry_run(&cluster, &pod).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        admitted.contains("pod/pxb-agent created (server dry run)"),
        "{admitted}"
    );
    let mut refusals = BTreeMap::new();
    for (level, violations) in [
        (
            "restricted",
            &[
                "hostPath",
                "runAsNonRoot",
                "runAsUser=0",
                "CHOWN",
                "DAC_READ_SEARCH",
            ][..],
        ),
        ("baseline", &["hostPath", "DAC_READ_SEARCH"][..]),
    ] {
        admin_kubectl(
            &cluster,
            &[
                "label",
                "--overwrite",
                NAMESPACE,
                &format!("pod-security.kubernetes.io/enforce={level}"),
            ],
        );
        let refusal =
            pod_dry_run(&cluster, &pod).expect_err(&format!("the agent's pod must be refused at {level}"));
        assert!(
            refusal.contains(&format!("violates PodSecurity \"{level}:")),
            "{level}: {refusal}"
        );
        for v in violations {
            assert!(refusal.contains(v), "{level}: {v} not named: {refusal}");
        }
        refusals.insert(level, refusal);
    }
    // Baseline refuses only the hostPath volume and DAC_READ_SEARCH: CHOWN, DAC_OVERRIDE and
    // FOWNER are among the capabilities it allows, and it does not look at the user.
    for allowed in ["CHOWN", "FOWNER", "DAC_OVERRIDE", "runAsNonRoot", "runAsUser"] {
        assert!(
            !refusals["baseline"].contains(allowed),
            "{allowed}: {}",
            refusals["baseline"]
        );
    }

    // Helm takes the agent over. Plain `helm install` refuses objects it did not create; with
    // --take-ownership it updates them in place, with a new image: same uids, the custom
    // resource kept, and the namespace labelled as the chart makes it again, where the agent's
    // pod is admitted.
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            RELEASE,
            chart_dir.to_str().expect("UTF-8 path"),
            "--namespace",
            RELEASE_NAMESPACE,
            "--set",
            "image.repository=reg.example/pxb-agent,image.tag=9.9.9",
        ];
        args.extend_from_slice(extra);
        helm.run(&args)
    };
    let refused = install(&[]).expect_err("plain helm install over the zero-touch objects");
    assert!(
        format!("{refused:#}").contains("exists and cannot be imported into the current release"),
        "{refused:#}"
    );
    assert_eq!(
        image(&get_all(&cluster, &[DEPLOYMENT])[DEPLOYMENT]),
        format!("pxb-agent:{version}"),
        "the refused install changed nothing"
    );
    let out = install(&["--take-ownership", "--server-side=false"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("STATUS: deployed"), "{out}");
    let after = get_all(&cluster, &watched);
    for name in &watched {
        let o = after
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is gone: {:?}", after.keys()));
        assert_eq!(
            o["metadata"]["uid"], before[*name]["metadata"]["uid"],
            "{name} is updated in place"
        );
        if *name != "backuplocation/tenant-a" {
            assert_eq!(
                o["metadata"]["annotations"]["meta.helm.sh/release-name"], RELEASE,
                "{name} is the release's"
            );
        }
    }
    assert_eq!(image(&after[DEPLOYMENT]), "reg.example/pxb-agent:9.9.9");
    assert_eq!(after["backuplocation/tenant-a"]["spec"]["container"], "backups");
    assert_eq!(
        namespace_label(&cluster, "pod-security.kubernetes.io/enforce"),
        "privileged"
    );
    let admitted = pod_dry_run(&cluster, &pod)
        .unwrap_or_else(|e| panic!("the agent's pod in pxb-system as the chart makes it: {e}"));
    assert!(
        admitted.contains("pod/pxb-agent created (server dry run)"),
        "{admitted}"
    );
    assert!(!admitted.contains("PodSecurity"), "no warning: {admitted}");

    // From now on it upgrades as any release (the README's command), keeping the values set.
    let out = helm
        .run(&[
            "upgrade",
            RELEASE,
            chart_dir.to_str().expect("UTF-8 path"),
            "--namespace",
            RELEASE_NAMESPACE,
            "--reset-then-reuse-values",
            "--set",
            "image.pullPolicy=Always,resources.limits.memory=2Gi",
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("REVISION: 2"), "{out}");
    let upgraded = &get_all(&cluster, &[DEPLOYMENT])[DEPLOYMENT];
    assert_eq!(image(upgraded), "reg.example/pxb-agent:9.9.9");
    let container = &upgraded["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(
        upgraded["metadata"]["uid"], before[DEPLOYMENT]["metadata"]["uid"],
        "{upgraded}"
    );

    // An agent the server installed, with the server gone: nothing uninstalls it. The README's
    // commands delete what the zero-touch install created (and the Secrets the agent and the
    // server wrote), and keep the CRDs, the namespace and the records in it.
    helm.run(&["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE])
        .unwrap_or_else(|e| panic!("{e:#}"));
    zero_touch_install(&cluster, &format!("pxb-agent:{version}"));
    assert_eq!(
        get_all(&cluster, &watched).len(),
        watched.len(),
        "zero-touch install again"
    );
    // What else pxb-system holds then: the agent's API token Secret (made on its first start), a
    // location's credential Secret written by a classic server, a hand-written ConfigMap.
    let leftovers = cluster.dir().join("leftovers.json");
    let leftover = |kind: &str, name: &str, labels: Value, data: Value| {
        json!({"apiVersion": "v1", "kind": kind, "data": data, "metadata": {
            "name": name, "namespace": "pxb-system", "labels": labels}})
    };
    let items = vec![
        leftover(
            "Secret",
            "pxb-agent-api",
            json!({}),
            json!({"token": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}),
        ),
        leftover(
            "Secret",
            "pxb-location-tenant-a",
            json!({"pxb.io/managed-by": "pxb-server"}),
            json!({"sas": "c3Y9MjA5OSZzaWc9c2VjcmV0"}),
        ),
        leftover(
            "ConfigMap",
            "pxb-agent",
            json!({}),
            json!({"PXB_CLUSTER_NAME": "c1"}),
        ),
    ];
    std::fs::write(
        &leftovers,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items})).expect("JSON"),
    )
    .expect("write");
    admin_kubectl(&cluster, &["create", "-f", &leftovers.to_string_lossy()]);
    for command in readme_kubectl_commands("## Removing an agent the server installed") {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        admin_kubectl(&cluster, &args);
    }
    let mut all = watched.clone();
    all.extend([
        "secret/pxb-agent-api",
        "secret/pxb-location-tenant-a",
        "configmap/pxb-agent",
    ]);
    let mut kept: Vec<&str> = vec![NAMESPACE, "backuplocation/tenant-a"];
    kept.extend_from_slice(&CRDS);
    kept.sort_unstable();
    assert_eq!(get_all(&cluster, &all).keys().collect::<Vec<_>>(), kept);
    // Every object the zero-touch install creates was among those looked at.
    for o in agent_objects("x").expect("agent_objects") {
        let name = format!(
            "{}/{}",
            o["kind"].as_str().expect("kind").to_lowercase(),
            o["metadata"]["name"].as_str().expect("name")
        );
        assert!(watched.contains(&name.as_str()), "{name}");
    }
}
