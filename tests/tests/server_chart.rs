//! The server's Helm chart (`deploy/helm/pxb-server`) with the real Helm and the real
//! kube-apiserver:
//!
//! - `helm lint --strict` with the default values and each `ci/` values file; values that cannot
//!   work (classic without a secrets key, a mode or value misspelled, keys the chart owns set in
//!   `config` or as `PXB_…` variables in `extraEnv`, a disruption budget of 0, an Ingress host
//!   without TLS) fail to render with a message saying what to do;
//! - the optional Ingress: TLS for every host (plain HTTP only when asked for), the backend is the
//!   Service on its port, and the NOTES say how tenants reach the API;
//! - the rendered `config.yaml` is loaded and checked by the server's own loader
//!   ([`ServerConfig::load`], with the container's environment), so a key the chart misspells
//!   fails here; every file the configuration names is one the pod mounts, from the Secret or
//!   ConfigMap and key the values name;
//! - every rendered object passes a server-side dry run on the real API server, with the default
//!   values and each mode's values file;
//! - install, upgrade to the other mode and back, uninstall and install again on the real API
//!   server: the configuration follows the mode, the pod template rolls, and the catalog's claim
//!   stays the same object throughout (`helm.sh/resource-policy: keep`).

use std::path::PathBuf;
use std::sync::Once;

use pxb_daemon::server::config::{ServerConfig, mode_name};
use pxb_tests::helm::{Helm, chart, server_dry_run};
use pxb_tests::real::{self, RealCluster, kubectl, kubectl_output};
use serde_json::{Value, json};

/// The chart's directory.
fn chart_dir() -> PathBuf {
    chart("pxb-server")
}

/// `ci/<mode>-values.yaml` of the chart.
fn ci_values(mode: &str) -> String {
    chart_dir()
        .join("ci")
        .join(format!("{mode}-values.yaml"))
        .to_string_lossy()
        .into_owned()
}

/// The values of a `ci/` file, as the test reads them to know what the chart must render.
fn ci_values_doc(mode: &str) -> Value {
    let text = std::fs::read_to_string(ci_values(mode)).expect("ci values");
    serde_saphyr::from_str(&text).expect("ci values are YAML")
}

/// The three ways the chart is checked: default values, and each mode's values file.
const CASES: [(&str, Option<&str>); 3] = [
    ("default", None),
    ("federated", Some("federated")),
    ("classic", Some("classic")),
];

/// The values of a provider running several replicas on a PostgreSQL catalog (checked by lint,
/// the dry run and a test of its own).
const REPLICAS: (&str, Option<&str>) = ("replicas", Some("replicas"));

/// Helm's arguments for a case.
fn values_args(values: Option<&str>) -> Vec<String> {
    values
        .map(|m| vec!["-f".to_owned(), ci_values(m)])
        .unwrap_or_default()
}

/// Helm without a cluster, with a home of its own.
fn offline_helm() -> (tempfile::TempDir, Helm) {
    let dir = tempfile::tempdir().expect("tempdir");
    let helm = Helm::new(dir.path()).expect("helm");
    (dir, helm)
}

/// The objects of a multi-document YAML stream (Helm's output).
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("helm's output is YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Renders the chart as release `pxb` in `namespace` with `extra` arguments; the objects.
fn render(helm: &Helm, namespace: &str, extra: &[String]) -> Vec<Value> {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let yaml = helm
        .template("pxb", &chart_dir(), namespace, &extra)
        .unwrap_or_else(|e| panic!("rendering with {extra:?}: {e:#}"));
    objects(&yaml)
}

/// The only object of `kind`, or of `kind` named `name`.
fn one<'a>(objs: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == kind && name.is_none_or(|n| o["metadata"]["name"] == n))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name:?} among {}", kinds(objs));
    found[0]
}

/// `Kind/name` of every object, for messages.
fn kinds(objs: &[Value]) -> String {
    objs.iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's configuration: the `config.yaml` of the chart's ConfigMap.
fn config_text(objs: &[Value]) -> String {
    let cms: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["data"]["config.yaml"].is_string())
        .collect();
    assert_eq!(cms.len(), 1, "one ConfigMap with config.yaml");
    cms[0]["data"]["config.yaml"].as_str().expect("text").to_owned()
}

/// The server's container in the Deployment.
fn container(deploy: &Value) -> &Value {
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// Loads `config.yaml` as `pxb-server --config` does: the file, then the `PXB_…` variables the
/// container sets, then the server's checks.
fn load_config(text: &str, deploy: &Value) -> anyhow::Result<ServerConfig> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text)?;
    let env: Vec<(String, String)> = container(deploy)["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    Ok(ServerConfig::load(Some(&path), |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })?)
}

/// What the pod puts at `path`: the volume of the deepest mount above it, and the file's path in
/// that volume. Panics when no mount holds `path`.
fn mounted<'a>(deploy: &'a Value, path: &str) -> (&'a Value, String) {
    let mounts = container(deploy)["volumeMounts"].as_array().expect("mounts");
    let mount = mounts
        .iter()
        .filter(|m| {
            let dir = m["mountPath"].as_str().unwrap_or_default();
            path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())
        .unwrap_or_else(|| panic!("no volume is mounted where the configuration names {path}"));
    let rel = path[mount["mountPath"].as_str().expect("path").len() + 1..].to_owned();
    let volumes = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("mount {mount} has no volume"));
    (volume, rel)
}

/// The Secret or ConfigMap (`"secret"`/`"configMap"`, its name) and the key the pod puts at
/// `path`; a volume with `items` lists each file's key, one without holds every key by name.
fn mounted_key(deploy: &Value, path: &str) -> (String, String, String) {
    let (volume, rel) = mounted(deploy, path);
    let (kind, source, name) = if volume["secret"].is_object() {
        (
            "secret",
            &volume["secret"],
            volume["secret"]["secretName"].clone(),
        )
    } else if volume["configMap"].is_object() {
        (
            "configMap",
            &volume["configMap"],
            volume["configMap"]["name"].clone(),
        )
    } else {
        panic!("{path} is on volume {volume}, neither a Secret nor a ConfigMap")
    };
    let key = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == rel.as_str())
            .unwrap_or_else(|| panic!("volume {volume} puts no file at {rel} (for {path})"))["key"]
            .as_str()
            .expect("key")
            .to_owned(),
        None => rel,
    };
    (kind.to_owned(), name.as_str().expect("name").to_owned(), key)
}

/// SHA-256 of `text`, lower-case hex (Helm's `sha256sum`).
fn sha256_hex(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A rendering that must fail; Helm's message.
fn render_error(helm: &Helm, extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "pxb",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "pxb",
    ];
    args.extend_from_slice(extra);
    let out = helm.output(&args);
    assert!(!out.status.success(), "rendering with {extra:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_chart_lints_strictly_and_refuses_values_that_cannot_work() {
    let (_dir, helm) = offline_helm();
    let chart = chart_dir();
    for (case, values) in CASES.into_iter().chain([REPLICAS]) {
        let args = values_args(values);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helm
            .lint(&chart, &args)
            .unwrap_or_else(|e| panic!("helm lint --strict ({case}): {e:#}"));
        assert!(out.contains("0 chart(s) failed"), "{case}: {out}");
    }

    // Classic mode seals credentials with the secrets key: no key, no rendering, and the message
    // says how to make one and where to name it.
    let err = render_error(&helm, &["--set", "mode=classic"]);
    assert!(
        err.contains("mode: classic needs the secrets key")
            && err.contains("secretsKey.existingSecret")
            && err.contains("head -c 32 /dev/urandom | base64"),
        "{err}"
    );
    // Lint renders in lint mode, where `fail` is only logged (Helm's design: helm/helm#8973), so
    // lint passes such values; it still shows the message. `helm template` and `helm install`
    // refuse them.
    let out = helm.output(&[
        "lint",
        "--strict",
        chart.to_str().expect("path"),
        "--set",
        "mode=classic",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mode: classic needs the secrets key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "mode=clasic"],
            "value must be one of 'federated', 'classic'",
        ),
        (
            &["--set", "secretsKey.existingSecrett=x"],
            "additional properties 'existingSecrett' not allowed",
        ),
        (
            &["--set", "persistance.enabled=false"],
            "additional properties 'persistance' not allowed",
        ),
        (
            &["--set", "config.auth.issuer=https://x"],
            "config.auth is set by the chart: use the value auth",
        ),
        (
            &["--set", "config.secrets.keyFile=/k"],
            "config.secrets is set by the chart: use the value secretsKey.existingSecret",
        ),
        (
            &["--set", "config.mode=classic"],
            "config.mode is set by the chart",
        ),
        (
            &["--set", "config.gardenCredentials.a=/a"],
            "config.gardenCredentials is set by the chart",
        ),
        (
            &["--set", "config.catalog.path=/tmp/catalog.db"],
            "config.catalog.path \"/tmp/catalog.db\" must be a file under /var/lib/pxb/",
        ),
        (
            &["--set", "config.api.listen=0.0.0.0"],
            "config.api.listen \"0.0.0.0\" must be host:port",
        ),
        (
            &[
                "--set",
                "gardenCredentials[0].name=a,gardenCredentials[0].secretName=s,gardenCredentials[1].name=a,gardenCredentials[1].secretName=t",
            ],
            "gardenCredentials: the name \"a\" is used twice",
        ),
        (
            &[
                "--set",
                "gardenCredentials[0].name=Acme_Prod,gardenCredentials[0].secretName=s",
            ],
            "must be a DNS label",
        ),
        (
            &["--set", "auth.issuerCA.configMap=a,auth.issuerCA.secret=b"],
            "set configMap or secret, not both",
        ),
        // One replica: a budget that allows no disruption blocks every node drain forever.
        (
            &["--set", "podDisruptionBudget.maxUnavailable=0"],
            "podDisruptionBudget.maxUnavailable 0 would block every node drain forever",
        ),
        (
            &["--set-string", "podDisruptionBudget.maxUnavailable=0%"],
            "podDisruptionBudget.maxUnavailable 0% would block every node drain forever",
        ),
        (
            &["--set-string", "podDisruptionBudget.maxUnavailable=one"],
            "does not match pattern",
        ),
        // An Ingress without TLS would carry bearer tokens in clear: refused unless asked for,
        // host by host.
        (
            &["--set", "ingress.enabled=true,ingress.hosts[0].host=pxb.example"],
            "ingress: host \"pxb.example\" has no TLS (no ingress.tls entry lists it)",
        ),
        (
            &[
                "--set",
                "ingress.enabled=true,ingress.hosts[0].host=pxb.example,ingress.hosts[1].host=api.example,ingress.tls[0].secretName=t,ingress.tls[0].hosts[0]=pxb.example",
            ],
            "ingress: host \"api.example\" has no TLS",
        ),
        (
            &["--set", "ingress.enabled=true"],
            "ingress.enabled needs ingress.hosts",
        ),
        (
            &[
                "--set",
                "ingress.enabled=true,ingress.hosts[0].host=pxb.example,ingress.tls[0].hosts[0]=pxb.example",
            ],
            "missing property 'secretName'",
        ),
    ];
    for (args, message) in cases {
        let err = render_error(&helm, args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // The refusal of an Ingress without TLS says what to do.
    let err = render_error(
        &helm,
        &["--set", "ingress.enabled=true,ingress.hosts[0].host=pxb.example"],
    );
    assert!(
        err.contains("bearer tokens")
            && err.contains("ingress.tls")
            && err.contains("ingress.allowPlainHttp"),
        "{err}"
    );

    // Variables that would set what the chart sets from its own values (and checks, mounts or
    // derives objects from) are refused in extraEnv, each naming the value to use; the server
    // maps every key path to PXB_<PATH>, a whole section included (PXB_AUTH, PXB_API).
    let refused: &[(&str, &str)] = &[
        ("PXB_MODE", "the value mode"),
        ("PXB_AUTH", "the values auth"),
        ("PXB_AUTH_ISSUER", "the values auth"),
        ("PXB_AUTH_PROVIDER_ADMIN_GROUPS", "the values auth"),
        ("PXB_SECRETS_KEY", "the value secretsKey.existingSecret"),
        ("PXB_SECRETS_KEY_FILE", "the value secretsKey.existingSecret"),
        ("PXB_GARDEN_CREDENTIALS", "the value gardenCredentials"),
        ("PXB_GARDEN_CREDENTIALS_ACME", "the value gardenCredentials"),
        ("PXB_API", "config.api"),
        ("PXB_API_LISTEN", "config.api.listen"),
        ("PXB_CATALOG", "config.catalog.path"),
        ("PXB_CATALOG_PATH", "config.catalog.path"),
        ("PXB_TELEMETRY", "config.telemetry"),
        ("PXB_TELEMETRY_SUPPORT", "config.telemetry.support"),
        ("PXB_TELEMETRY_SUPPORT_ENDPOINT", "config.telemetry.support"),
        ("PXB_TELEMETRY_SUPPORT_CONFIG_MAP", "config.telemetry.support"),
        ("PXB_TELEMETRY_SUPPORT_ENABLED_FILE", "config.telemetry.support"),
        ("PXB_LOG", "the value log.level"),
        ("PXB_LOG_FORMAT", "the value log.format"),
        ("PXB_DEV_TOKEN", "auth.issuer"),
        ("POD_NAMESPACE", "set by the chart"),
    ];
    for (name, value) in refused {
        // Each configuration variable among them is one the server's loader reads (a value that
        // is not YAML fails there, naming it), so the list follows the server's keys.
        let loader_reads = name.starts_with("PXB_")
            && ![
                "PXB_SECRETS_KEY",
                "PXB_GARDEN_CREDENTIALS_ACME",
                "PXB_LOG",
                "PXB_LOG_FORMAT",
                "PXB_DEV_TOKEN",
            ]
            .contains(name);
        if loader_reads {
            let err = ServerConfig::load(None, |k| (k == *name).then(|| "[unclosed".to_owned()))
                .expect_err("the server reads it");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        let set = format!("extraEnv[0].name={name},extraEnv[0].value=x");
        let err = render_error(&helm, &["--set", &set]);
        assert!(
            err.contains(&format!("extraEnv[0]: {name} is set by the chart")) && err.contains(value),
            "{name}: {err}"
        );
    }
    // Whatever the entry's position, and with a valueFrom too.
    let err = render_error(
        &helm,
        &[
            "--set",
            "extraEnv[0].name=PXB_FLEET_CONCURRENCY,extraEnv[0].value=8,extraEnv[1].name=PXB_SECRETS_KEY,extraEnv[1].valueFrom.secretKeyRef.name=k,extraEnv[1].valueFrom.secretKeyRef.key=key",
        ],
    );
    assert!(
        err.contains("extraEnv[1]: PXB_SECRETS_KEY is set by the chart"),
        "{err}"
    );
    // Other server keys stay overridable, including neighbours of refused ones.
    for name in [
        "PXB_FLEET_CONCURRENCY",
        "PXB_API_MAX_REQUESTS_PER_ORG",
        "PXB_TELEMETRY_BACKUP_INFO_MAX_SERIES",
        "PXB_TELEMETRY_SUPPORT_UPLOAD_INTERVAL_SECS",
        "PXB_TELEMETRY_SUPPORT_CUSTOMERS",
    ] {
        let set = format!("extraEnv[0].name={name},extraEnv[0].value=1");
        let objs = render(&helm, "pxb", &["--set".into(), set]);
        let env = &container(one(&objs, "Deployment", None))["env"];
        assert!(
            env.as_array().expect("env").iter().any(|e| e["name"] == name),
            "{name}: {env}"
        );
    }
    // Budgets that let a drain evict the pod are taken.
    for (flag, value) in [
        ("--set", "podDisruptionBudget.maxUnavailable=1"),
        ("--set-string", "podDisruptionBudget.maxUnavailable=100%"),
    ] {
        let objs = render(&helm, "pxb", &[flag.into(), value.into()]);
        let want = value.rsplit('=').next().expect("value");
        let got = &one(&objs, "PodDisruptionBudget", None)["spec"]["maxUnavailable"];
        assert_eq!(got.to_string().trim_matches('"'), want, "{value}");
    }
}

/// The NOTES Helm prints after an install of the chart with `extra` arguments (a client-side dry
/// run: no cluster).
fn notes(helm: &Helm, extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "install",
        "pxb",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "pxb",
        "--dry-run=client",
    ];
    args.extend_from_slice(extra);
    let out = helm.run(&args).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, notes) = out
        .split_once("NOTES:\n")
        .unwrap_or_else(|| panic!("no NOTES in {out}"));
    notes.to_owned()
}

#[test]
fn tenants_reach_the_api_through_an_ingress_with_tls_and_never_in_clear_by_default() {
    let (_dir, helm) = offline_helm();
    // No Ingress unless asked for; the NOTES say how tenants reach the API then.
    let objs = render(&helm, "pxb", &[]);
    assert!(objs.iter().all(|o| o["kind"] != "Ingress"), "{}", kinds(&objs));
    let text = notes(&helm, &[]);
    assert!(
        text.contains("No Ingress is enabled")
            && text.contains("terminates TLS")
            && text.contains("ingress.enabled"),
        "{text}"
    );

    // The federated values expose the API through an Ingress with TLS for its host.
    let vals = ci_values_doc("federated");
    let want = &vals["ingress"];
    assert_eq!(want["enabled"], true, "the federated values exercise the Ingress");
    let objs = render(&helm, "pxb", &values_args(Some("federated")));
    let ingress = one(&objs, "Ingress", None);
    let service = one(&objs, "Service", None);
    assert_eq!(ingress["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(ingress["metadata"]["name"], service["metadata"]["name"]);
    assert_eq!(ingress["spec"]["ingressClassName"], want["className"]);
    for (k, v) in want["annotations"].as_object().expect("annotations") {
        assert_eq!(&ingress["metadata"]["annotations"][k], v, "annotation {k}");
    }
    let hosts: Vec<&str> = want["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host"].as_str().expect("host"))
        .collect();
    let rules = ingress["spec"]["rules"].as_array().expect("rules");
    assert_eq!(
        rules
            .iter()
            .map(|r| r["host"].as_str().expect("host"))
            .collect::<Vec<_>>(),
        hosts
    );
    for rule in rules {
        let paths = rule["http"]["paths"].as_array().expect("paths");
        assert_eq!(paths.len(), 1, "{rule}");
        assert_eq!(paths[0]["path"], "/", "the API is served at the root");
        assert_eq!(paths[0]["pathType"], "Prefix");
        // The backend is the Service, on its port.
        assert_eq!(
            paths[0]["backend"],
            json!({"service": {"name": service["metadata"]["name"], "port": {"number": service["spec"]["ports"][0]["port"]}}}),
            "{rule}"
        );
    }
    assert_eq!(ingress["spec"]["tls"], want["tls"]);
    for host in &hosts {
        assert!(
            ingress["spec"]["tls"]
                .as_array()
                .expect("tls")
                .iter()
                .any(|t| t["secretName"].is_string()
                    && t["hosts"].as_array().expect("hosts").iter().any(|h| h == host)),
            "{host} has a certificate"
        );
    }
    // The NetworkPolicy admits only the listed peers; the ingress controller's namespace is
    // among them (or the Ingress would reach nothing).
    let policy = one(&objs, "NetworkPolicy", None);
    let from = policy["spec"]["ingress"][0]["from"].as_array().expect("from");
    assert!(
        from.iter()
            .any(|p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "ingress-nginx"),
        "{policy}"
    );
    let text = notes(&helm, &["-f", &ci_values("federated")]);
    for host in &hosts {
        assert!(text.contains(&format!("https://{host}")), "{text}");
        assert!(
            text.contains(&format!("pxb login --server https://{host}")),
            "{text}"
        );
    }
    assert!(
        text.contains("networkPolicy.ingress.from") && text.contains("ingress controller"),
        "{text}"
    );
    assert!(!text.contains("WARNING: the Ingress"), "{text}");

    // A path and its type can be chosen, and the Service's port is followed.
    let objs = render(
        &helm,
        "pxb",
        &[
            "--set".into(),
            "ingress.enabled=true,ingress.hosts[0].host=a.example,ingress.hosts[0].paths[0].path=/,ingress.hosts[0].paths[0].pathType=ImplementationSpecific,ingress.tls[0].secretName=a-tls,ingress.tls[0].hosts[0]=a.example,service.port=9000".into(),
        ],
    );
    let ingress = one(&objs, "Ingress", None);
    let path = &ingress["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["pathType"], "ImplementationSpecific");
    assert_eq!(path["backend"]["service"]["port"]["number"], 9000);
    assert_eq!(one(&objs, "Service", None)["spec"]["ports"][0]["port"], 9000);
    assert!(
        ingress["spec"].get("ingressClassName").is_none(),
        "no class: the cluster's default"
    );
    // A wildcard certificate covers the hosts one label below it, no deeper.
    let objs = render(
        &helm,
        "pxb",
        &[
            "--set".into(),
            "ingress.enabled=true,ingress.hosts[0].host=pxb.example,ingress.tls[0].secretName=w,ingress.tls[0].hosts[0]=*.example".into(),
        ],
    );
    assert_eq!(
        one(&objs, "Ingress", None)["spec"]["tls"][0]["hosts"],
        json!(["*.example"])
    );
    let err = render_error(
        &helm,
        &[
            "--set",
            "ingress.enabled=true,ingress.hosts[0].host=a.pxb.example,ingress.tls[0].secretName=w,ingress.tls[0].hosts[0]=*.example",
        ],
    );
    assert!(err.contains("host \"a.pxb.example\" has no TLS"), "{err}");

    // Plain HTTP only when asked for explicitly, and the NOTES warn.
    let plain = "ingress.enabled=true,ingress.hosts[0].host=pxb.example,ingress.allowPlainHttp=true";
    let objs = render(&helm, "pxb", &["--set".into(), plain.into()]);
    let ingress = one(&objs, "Ingress", None);
    assert!(ingress["spec"].get("tls").is_none(), "{ingress}");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "pxb.example");
    let text = notes(&helm, &["--set", plain]);
    assert!(
        text.contains("WARNING: the Ingress serves pxb.example without TLS")
            && text.contains("bearer tokens"),
        "{text}"
    );
}

#[test]
fn the_charts_source_is_the_workspaces_repository() {
    let root = chart_dir().join("../../..");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let repository = cargo
        .split_once("[workspace.package]")
        .expect("[workspace.package]")
        .1
        .lines()
        .find_map(|l| l.trim().strip_prefix("repository = "))
        .expect("the workspace's repository")
        .trim_matches('"');
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml is YAML");
    assert_eq!(chart["sources"], json!([repository]), "{chart}");
    if let Some(home) = chart.get("home") {
        assert_eq!(home, repository, "{chart}");
    }
}

#[test]
fn the_rendered_configuration_is_the_servers_own_and_every_file_it_names_is_mounted() {
    let (_dir, helm) = offline_helm();
    for (case, values) in CASES {
        let objs = render(&helm, "pxb", &values_args(values));
        let vals = values.map(ci_values_doc).unwrap_or(Value::Null);
        let mode = values.unwrap_or("federated");
        let deploy = one(&objs, "Deployment", None);
        let text = config_text(&objs);
        let raw: Value = serde_saphyr::from_str(&text).expect("config.yaml is YAML");
        assert_eq!(raw["mode"], mode, "{case}: {text}");
        // The server's own loader and checks accept it (unknown keys are errors there).
        let config = load_config(&text, deploy).unwrap_or_else(|e| {
            panic!("{case}: the server refuses the chart's configuration: {e:#}\n{text}")
        });

        assert_eq!(mode_name(config.mode), mode, "{case}: the server reads the mode");

        // The pod rolls when the configuration changes.
        let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["checksum/config"],
            sha256_hex(text.trim_end_matches('\n')),
            "{case}: the checksum is the configuration's"
        );

        // The API's port, the same everywhere.
        let port: u64 = config
            .api
            .listen
            .rsplit(':')
            .next()
            .expect("port")
            .parse()
            .expect("number");
        let c = container(deploy);
        assert_eq!(
            c["ports"],
            json!([{"name": "http", "containerPort": port, "protocol": "TCP"}])
        );
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], "http", "{case}: {probe}");
        }
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        let startup = &c["startupProbe"];
        let patience = startup["periodSeconds"].as_u64().expect("period")
            * startup["failureThreshold"].as_u64().expect("threshold");
        assert!(
            patience >= 1800,
            "{case}: a migration gets at least 30 minutes, not {patience} s"
        );
        let service = one(&objs, "Service", None);
        assert_eq!(service["spec"]["type"], "ClusterIP");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(
            service["spec"]["selector"],
            deploy["spec"]["selector"]["matchLabels"]
        );
        let policy = one(&objs, "NetworkPolicy", None);
        assert_eq!(
            policy["spec"]["ingress"][0]["ports"],
            json!([{"port": port, "protocol": "TCP"}])
        );
        assert_eq!(
            policy["spec"]["ingress"].as_array().expect("rules").len(),
            1,
            "{case}: the API port only"
        );

        // One writer of the catalog, on the claim, which uninstall keeps.
        let spec = &deploy["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"], json!({"type": "Recreate"}));
        assert!(
            config.catalog.path.starts_with("/var/lib/pxb/"),
            "{}",
            config.catalog.path
        );
        let (data, _) = mounted(deploy, &config.catalog.path);
        let pvc = one(&objs, "PersistentVolumeClaim", None);
        assert_eq!(
            data["persistentVolumeClaim"]["claimName"],
            pvc["metadata"]["name"]
        );
        assert_eq!(pvc["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");

        // Non-root, read-only root, nothing extra; /tmp writable.
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(
            pod["enableServiceLinks"], false,
            "no PXB_* variables from Services"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        let (tmp, _) = mounted(deploy, "/tmp/sqlite-temp");
        assert!(tmp["emptyDir"].is_object(), "{tmp}");
        assert_eq!(c["args"], json!(["--config", "/etc/pxb/config/config.yaml"]));
        assert_eq!(
            mounted(deploy, "/etc/pxb/config/config.yaml").0["configMap"]["name"],
            objs.iter()
                .find(|o| o["kind"] == "ConfigMap" && o["data"]["config.yaml"].is_string())
                .expect("config map")["metadata"]["name"]
        );

        // Every file the configuration names comes from the Secret or ConfigMap and key the values
        // name.
        if let Some(secret) = vals["secretsKey"]["existingSecret"].as_str() {
            let key = vals["secretsKey"]["key"].as_str().unwrap_or("key");
            assert_eq!(
                mounted_key(deploy, &config.secrets.key_file),
                ("secret".to_owned(), secret.to_owned(), key.to_owned()),
                "{case}: secrets.keyFile"
            );
        } else {
            assert_eq!(config.secrets.key_file, "", "{case}");
        }
        let gardens = vals["gardenCredentials"].as_array().cloned().unwrap_or_default();
        assert_eq!(config.garden_credentials.len(), gardens.len(), "{case}");
        for g in &gardens {
            let name = g["name"].as_str().expect("name");
            let cred = &config.garden_credentials[name];
            assert_eq!(
                mounted_key(deploy, &cred.kubeconfig),
                (
                    "secret".to_owned(),
                    g["secretName"].as_str().expect("secret").to_owned(),
                    g["key"].as_str().unwrap_or("kubeconfig").to_owned()
                ),
                "{case}: gardenCredentials.{name}"
            );
            let list = |k: &str| -> Vec<String> {
                g[k].as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().expect("string").to_owned())
                    .collect()
            };
            assert_eq!(cred.orgs, list("orgs"), "{case}: {name}");
            assert_eq!(cred.projects, list("projects"), "{case}: {name}");
        }
        let auth = &vals["auth"];
        assert_eq!(
            config.auth.issuer,
            auth["issuer"].as_str().unwrap_or(""),
            "{case}"
        );
        assert_eq!(
            serde_json::to_value(&config.auth.audiences).expect("json"),
            auth.get("audiences").cloned().unwrap_or(json!([])),
            "{case}"
        );
        let ca = &auth["issuerCA"];
        if ca.is_object() {
            let (kind, name) = match ca["secret"].as_str() {
                Some(s) => ("secret", s),
                None => ("configMap", ca["configMap"].as_str().expect("a CA source")),
            };
            assert_eq!(
                mounted_key(deploy, &config.auth.issuer_ca_file),
                (
                    kind.to_owned(),
                    name.to_owned(),
                    ca["key"].as_str().unwrap_or("ca.crt").to_owned()
                ),
                "{case}: auth.issuerCaFile"
            );
        } else {
            assert_eq!(config.auth.issuer_ca_file, "", "{case}");
        }
        let support = &config.telemetry.support;
        for file in [
            &support.ca_file,
            &support.registration_token_file,
            &support.enabled_file,
        ] {
            if !file.is_empty() {
                mounted(deploy, file);
            }
        }

        // The support channel: off by default; the switch is readable by the server's identity
        // and nothing else is; the token is mounted only when the server watches the switch.
        let switch_name = support.config_map.as_str();
        let switch = one(&objs, "ConfigMap", Some(switch_name));
        assert_eq!(switch["data"], json!({"enabled": "false"}), "{case}");
        let role = one(&objs, "Role", None);
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [switch_name], "verbs": ["get", "list", "watch"]}])
        );
        let binding = one(&objs, "RoleBinding", None);
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
        let sa = one(&objs, "ServiceAccount", None);
        assert_eq!(sa["metadata"]["name"], pod["serviceAccountName"]);
        assert_eq!(sa["automountServiceAccountToken"], false);
        let watches = !support.endpoint.is_empty() && support.enabled_file.is_empty();
        assert_eq!(pod["automountServiceAccountToken"], watches, "{case}");
        assert_eq!(
            case == "federated",
            watches,
            "the federated values exercise the watch"
        );

        // The disruption budget never blocks a drain of the one pod.
        let pdb = one(&objs, "PodDisruptionBudget", None);
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            deploy["spec"]["selector"]["matchLabels"]
        );

        // Egress open by default, restricted in the classic values; a ServiceMonitor only there.
        let egress = &policy["spec"]["egress"];
        let monitors: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ServiceMonitor").collect();
        if case == "classic" {
            assert_eq!(
                egress[0]["ports"][0],
                json!({"port": 53, "protocol": "UDP"}),
                "{egress}"
            );
            assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "20.0.0.0/8", "{egress}");
            assert_eq!(monitors.len(), 1);
            let m = monitors[0];
            assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(
                m["spec"]["selector"]["matchLabels"],
                deploy["spec"]["selector"]["matchLabels"]
            );
            assert_eq!(m["spec"]["endpoints"][0]["port"], "http");
            assert_eq!(
                m["spec"]["endpoints"][0]["authorization"]["credentials"]["name"],
                "pxb-metrics-token"
            );
            assert_eq!(m["metadata"]["labels"]["release"], "prometheus");
        } else {
            assert_eq!(egress, &json!([{}]), "{case}");
            assert!(monitors.is_empty(), "{case}");
        }
    }
}

/// With the catalog in PostgreSQL every pod is a replica: as many as asked for, rolling one at a
/// time, each named after its pod and advertising its pod IP, the database's password and CA
/// mounted where the configuration names them, no claim, and the replicas admitted to each other
/// by the NetworkPolicy. Values that cannot work are refused with what to do.
#[test]
fn several_replicas_on_a_postgresql_catalog_render_as_one_fleet() {
    let (_dir, helm) = offline_helm();
    let (_, values) = REPLICAS;
    let objs = render(&helm, "pxb", &values_args(values));
    let deploy = one(&objs, "Deployment", None);
    let text = config_text(&objs);
    let config = load_config(&text, deploy)
        .unwrap_or_else(|e| panic!("the server refuses the chart's configuration: {e:#}\n{text}"));
    assert_eq!(
        config.catalog.url,
        "postgres://pxb@pxb-catalog.db.svc:5432/pxb?sslmode=require"
    );
    assert_eq!(
        mounted_key(deploy, &config.catalog.password_file),
        ("secret".into(), "pxb-catalog-db".into(), "password".into())
    );
    assert_eq!(
        mounted_key(deploy, &config.catalog.ca_file),
        ("configMap".into(), "pxb-catalog-ca".into(), "ca.pem".into())
    );
    assert!(config.replicas.enabled);
    assert_eq!(config.replicas.lease_secs, 20, "the provider's lease time");
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let env = container(deploy)["env"].as_array().expect("env").clone();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {env:?}"))
            .clone()
    };
    assert_eq!(
        var("PXB_REPLICAS_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        var("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(var("PXB_REPLICAS_ADVERTISE")["value"], "http://$(POD_IP):8080");
    let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
    let pod_ip = names.iter().position(|n| *n == "POD_IP");
    let advertise = names.iter().position(|n| *n == "PXB_REPLICAS_ADVERTISE");
    assert!(
        pod_ip < advertise,
        "$(POD_IP) is defined before its use: {names:?}"
    );
    // Nothing on disk: no claim, the data directory is an emptyDir.
    assert!(
        !objs.iter().any(|o| o["kind"] == "PersistentVolumeClaim"),
        "{}",
        kinds(&objs)
    );
    let (data, _) = mounted(deploy, "/var/lib/pxb/catalog.db");
    assert!(data["emptyDir"].is_object(), "{data}");
    // Standbys reach the active replica's API; nothing else is opened.
    let policy = one(&objs, "NetworkPolicy", None);
    let selector = &spec["selector"]["matchLabels"];
    let from = policy["spec"]["ingress"][0]["from"].as_array().expect("from");
    assert_eq!(from.len(), 2, "{from:?}");
    assert_eq!(from[1]["podSelector"]["matchLabels"], *selector);
    let egress = policy["spec"]["egress"].as_array().expect("egress");
    assert!(
        egress
            .iter()
            .any(|r| r["to"][0]["podSelector"]["matchLabels"] == *selector
                && r["ports"] == json!([{"port": 8080, "protocol": "TCP"}])),
        "{egress:?}"
    );
    assert!(
        !egress.iter().any(|r| r == &json!({})),
        "egress stays restricted: {egress:?}"
    );

    // Values that cannot work.
    let refused: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=2"], "replicaCount 2 needs postgres.url"),
        (
            &["--set", "postgres.url=postgres://pxb:hunter2@db:5432/pxb"],
            "postgres.url holds a password",
        ),
        (
            &["--set", "config.catalog.url=postgres://pxb@db/pxb"],
            "config.catalog.url is set by the chart",
        ),
        (
            &[
                "--set",
                "postgres.url=postgres://pxb@db/pxb",
                "--set",
                "config.replicas.advertise=http://x",
            ],
            "config.replicas.advertise is set by the chart",
        ),
        (
            &[
                "--set",
                "extraEnv[0].name=PXB_REPLICAS_NAME",
                "--set",
                "extraEnv[0].value=x",
            ],
            "PXB_REPLICAS_NAME is set by the chart",
        ),
        (
            &[
                "--set",
                "postgres.url=postgres://pxb@db/pxb",
                "--set",
                "postgres.ca.configMap=a",
                "--set",
                "postgres.ca.secret=b",
            ],
            "postgres.ca: set configMap or secret, not both",
        ),
    ];
    for (args, message) in refused {
        let err = render_error(&helm, args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn a_misspelled_server_key_in_the_charts_configuration_fails_the_servers_check() {
    let (_dir, helm) = offline_helm();
    // Helm renders whatever `config` holds; the server's loader is what refuses a typo, naming it.
    let objs = render(
        &helm,
        "pxb",
        &["--set".into(), "config.fleet.concurency=8".into()],
    );
    let deploy = one(&objs, "Deployment", None);
    let err = load_config(&config_text(&objs), deploy).expect_err("a misspelled key");
    assert!(format!("{err:#}").contains("concurency"), "{err:#}");
    // Spelled right, it is taken.
    let objs = render(
        &helm,
        "pxb",
        &["--set".into(), "config.fleet.concurrency=8".into()],
    );
    let config = load_config(&config_text(&objs), one(&objs, "Deployment", None)).expect("loads");
    assert_eq!(config.fleet.concurrency, 8);
    // A variable the container sets overrides the file, as in the pod.
    let objs = render(&helm, "pxb", &values_args(Some("classic")));
    let config = load_config(&config_text(&objs), one(&objs, "Deployment", None)).expect("loads");
    assert_eq!(
        config.fleet.call_timeout_ms, 8000,
        "PXB_FLEET_CALL_TIMEOUT_MS of extraEnv"
    );
    assert_eq!(config.api.max_requests_per_org, 64);
    // The chart's refusal of classic without a key is the server's own rule: the classic
    // configuration without its key file is refused by the server too.
    let mut raw: Value = serde_saphyr::from_str(&config_text(&objs)).expect("yaml");
    raw.as_object_mut().expect("map").remove("secrets");
    let err = load_config(&raw.to_string(), one(&objs, "Deployment", None)).expect_err("no key");
    assert!(
        format!("{err:#}").contains("mode: classic needs a secrets key"),
        "{err:#}"
    );
    // Without persistence the catalog is on an emptyDir and no claim is rendered; with an
    // existing claim, that one is mounted and none is created.
    let objs = render(
        &helm,
        "pxb",
        &["--set".into(), "persistence.enabled=false".into()],
    );
    assert!(
        objs.iter().all(|o| o["kind"] != "PersistentVolumeClaim"),
        "{}",
        kinds(&objs)
    );
    let deploy = one(&objs, "Deployment", None);
    assert!(mounted(deploy, "/var/lib/pxb/catalog.db").0["emptyDir"].is_object());
    let objs = render(
        &helm,
        "pxb",
        &["--set".into(), "persistence.existingClaim=catalog-2024".into()],
    );
    assert!(
        objs.iter().all(|o| o["kind"] != "PersistentVolumeClaim"),
        "{}",
        kinds(&objs)
    );
    let deploy = one(&objs, "Deployment", None);
    assert_eq!(
        mounted(deploy, "/var/lib/pxb/catalog.db").0["persistentVolumeClaim"]["claimName"],
        "catalog-2024"
    );
    // storageClass "-" is an explicit empty class.
    let objs = render(
        &helm,
        "pxb",
        &["--set".into(), "persistence.storageClass=-".into()],
    );
    assert_eq!(
        one(&objs, "PersistentVolumeClaim", None)["spec"]["storageClassName"],
        ""
    );
}

/// The shared real cluster, with a ServiceMonitor CRD (a small structural schema; the Prometheus
/// Operator's own is far larger) established once.
fn cluster() -> &'static RealCluster {
    static CRD: Once = Once::new();
    let cluster = real::shared();
    CRD.call_once(|| {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors", "singular": "servicemonitor"},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {
                            "type": "object",
                            "required": ["selector", "endpoints"],
                            "properties": {
                                "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                "namespaceSelector": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                "endpoints": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                            }
                        }}
                    }}
                }]
            }
        });
        apply(cluster, "servicemonitor-crd", &crd);
        kubectl(
            cluster,
            &cluster.admin_kubeconfig(),
            &["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s"],
        );
    });
    cluster
}

/// `kubectl apply` of one object as the administrator.
fn apply(cluster: &RealCluster, name: &str, object: &Value) {
    let file = cluster.dir().join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec(object).expect("json")).expect("write");
    kubectl(
        cluster,
        &cluster.admin_kubeconfig(),
        &["apply", "-f", &file.to_string_lossy()],
    );
}

fn create_namespace(cluster: &RealCluster, ns: &str) {
    apply(
        cluster,
        &format!("ns-{ns}"),
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    );
}

#[test]
fn every_rendered_object_passes_a_server_side_dry_run_in_both_modes() {
    let cluster = cluster();
    let helm = Helm::on(cluster).expect("helm");
    for (case, values) in CASES.into_iter().chain([REPLICAS]) {
        let ns = format!("chart-dry-run-{case}");
        create_namespace(cluster, &ns);
        let args = values_args(values);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let yaml = helm.template("pxb", &chart_dir(), &ns, &args).expect("render");
        let objs = objects(&yaml);
        // The Ingress (a built-in API) is validated too: the federated values enable it.
        assert_eq!(
            objs.iter().any(|o| o["kind"] == "Ingress"),
            case == "federated",
            "{case}: {}",
            kinds(&objs)
        );
        let out = server_dry_run(cluster, &yaml).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        let applied: Vec<&str> = out
            .lines()
            .filter(|l| l.ends_with("serverside-applied (server dry run)"))
            .collect();
        assert_eq!(
            applied.len(),
            objs.len(),
            "{case}: every object: {out}\n{}",
            kinds(&objs)
        );
        for o in &objs {
            let name = o["metadata"]["name"].as_str().expect("name");
            let kind = o["kind"].as_str().expect("kind").to_lowercase();
            assert!(
                applied
                    .iter()
                    .any(|l| l.starts_with(&kind) && l.contains(&format!("/{name} "))),
                "{case}: {kind}/{name} in {out}"
            );
        }
        // Nothing was stored.
        let out = kubectl(
            cluster,
            &cluster.admin_kubeconfig(),
            &["get", "deployments,configmaps,pvc", "-n", &ns, "-o", "name"],
        );
        assert!(!out.contains("pxb-server"), "{case}: a dry run stored {out}");
    }

    // The dry run is the API server's validation, not a formality: a Deployment that asks for a
    // rolling update's settings with the Recreate strategy is refused.
    let ns = "chart-dry-run-default";
    let yaml = helm.template("pxb", &chart_dir(), ns, &[]).expect("render");
    let mut deploy = one(&objects(&yaml), "Deployment", None).clone();
    deploy["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 1});
    let err = server_dry_run(cluster, &serde_json::to_string(&deploy).expect("json")).expect_err("refused");
    assert!(format!("{err:#}").contains("rollingUpdate"), "{err:#}");
}

/// An object's field through kubectl as JSON.
fn get(cluster: &RealCluster, ns: &str, what: &str) -> Value {
    let out = kubectl(
        cluster,
        &cluster.admin_kubeconfig(),
        &["get", what, "-n", ns, "-o", "json"],
    );
    serde_json::from_str(&out).expect("kubectl JSON")
}

/// Whether `what` exists in `ns`.
fn exists(cluster: &RealCluster, ns: &str, what: &str) -> bool {
    let out = kubectl_output(
        cluster,
        &cluster.admin_kubeconfig(),
        &["get", what, "-n", ns, "-o", "name"],
    );
    if out.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound"), "kubectl get {what}: {err}");
    false
}

/// The installed configuration's mode and the pod template's checksum of it.
fn installed(cluster: &RealCluster, ns: &str) -> (String, String) {
    let cm = get(cluster, ns, "configmap/pxb-pxb-server");
    let config: Value =
        serde_saphyr::from_str(cm["data"]["config.yaml"].as_str().expect("config")).expect("yaml");
    let deploy = get(cluster, ns, "deployment/pxb-pxb-server");
    (
        config["mode"].as_str().expect("mode").to_owned(),
        deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum")
            .to_owned(),
    )
}

#[test]
fn upgrading_between_modes_keeps_the_catalogs_claim_and_uninstall_leaves_it() {
    let cluster = cluster();
    let helm = Helm::on(cluster).expect("helm");
    let ns = "chart-upgrade";
    create_namespace(cluster, ns);
    let chart = chart_dir();
    let chart = chart.to_str().expect("path");
    let pvc = "pvc/pxb-pxb-server-catalog";
    let helm_run = |args: &[&str]| helm.run(args).unwrap_or_else(|e| panic!("{e:#}"));

    helm_run(&["install", "pxb", chart, "-n", ns, "-f", &ci_values("federated")]);
    let claim = get(cluster, ns, pvc);
    let uid = claim["metadata"]["uid"].as_str().expect("uid").to_owned();
    assert_eq!(
        claim["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let (mode, federated_sum) = installed(cluster, ns);
    assert_eq!(mode, "federated");
    assert!(!exists(cluster, ns, "servicemonitor/pxb-pxb-server"));
    let ingress = get(cluster, ns, "ingress/pxb-pxb-server");
    assert_eq!(
        ingress["spec"]["tls"][0]["secretName"],
        ci_values_doc("federated")["ingress"]["tls"][0]["secretName"]
    );

    // To classic: the configuration says so, the pod template changed (the pod would roll; the
    // new one migrates the catalog before it is ready), the claim is the same object.
    helm_run(&["upgrade", "pxb", chart, "-n", ns, "-f", &ci_values("classic")]);
    let (mode, classic_sum) = installed(cluster, ns);
    assert_eq!(mode, "classic");
    assert_ne!(
        classic_sum, federated_sum,
        "the pod template carries the new configuration's checksum"
    );
    let deploy = get(cluster, ns, "deployment/pxb-pxb-server");
    let volumes = deploy["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains("\"secretName\":\"pxb-secrets-key\""),
        "{volumes}"
    );
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        get(cluster, ns, pvc)["metadata"]["uid"],
        uid.as_str(),
        "the same claim"
    );
    assert!(exists(cluster, ns, "servicemonitor/pxb-pxb-server"));
    assert!(
        !exists(cluster, ns, "ingress/pxb-pxb-server"),
        "the classic values enable no Ingress"
    );

    // And back to federated.
    helm_run(&["upgrade", "pxb", chart, "-n", ns, "-f", &ci_values("federated")]);
    let (mode, sum) = installed(cluster, ns);
    assert_eq!(
        (mode.as_str(), sum.as_str()),
        ("federated", federated_sum.as_str())
    );
    assert_eq!(
        get(cluster, ns, pvc)["metadata"]["uid"],
        uid.as_str(),
        "the same claim"
    );
    assert!(!exists(cluster, ns, "servicemonitor/pxb-pxb-server"));
    let history = helm_run(&["history", "pxb", "-n", ns]);
    assert_eq!(
        history.lines().filter(|l| l.contains("pxb-server-0.1.0")).count(),
        3,
        "{history}"
    );

    // Uninstall removes the server and keeps the catalog.
    let out = helm_run(&["uninstall", "pxb", "-n", ns]);
    assert!(
        out.contains("pxb-pxb-server-catalog"),
        "helm names what it kept: {out}"
    );
    for gone in [
        "deployment/pxb-pxb-server",
        "configmap/pxb-pxb-server",
        "service/pxb-pxb-server",
        "configmap/pxb-telemetry-config",
    ] {
        assert!(!exists(cluster, ns, gone), "{gone} after uninstall");
    }
    assert_eq!(
        get(cluster, ns, pvc)["metadata"]["uid"],
        uid.as_str(),
        "kept by uninstall"
    );

    // Installing the release again takes the kept claim over: the catalog comes back.
    helm_run(&["install", "pxb", chart, "-n", ns, "-f", &ci_values("classic")]);
    assert_eq!(
        get(cluster, ns, pvc)["metadata"]["uid"],
        uid.as_str(),
        "the kept claim"
    );
    assert_eq!(installed(cluster, ns).0, "classic");
    let deploy = get(cluster, ns, "deployment/pxb-pxb-server");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "data")
            .expect("data")["persistentVolumeClaim"]["claimName"],
        "pxb-pxb-server-catalog"
    );
}
