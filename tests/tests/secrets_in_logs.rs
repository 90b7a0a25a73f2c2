//! Nothing secret reaches a log line (issue 17): one full scenario through a real `pxb-server`
//! and a real agent on the simulated fleet, its logs captured through the product's own logging
//! pipeline (the `pxb_telemetry::Settings` every binary builds in `pxb_daemon::init_logging`:
//! `PXB_LOG_FORMAT=json`, the current span and the span list on every line, credentials
//! redacted) at `debug`, then every line scanned for every secret the scenario used.
//!
//! The scenario: an org created with the development token, a discovery with the garden's
//! service-account token, three backup locations on Azurite (classic with the account key,
//! classic with a SAS, federated with Workload Identity) validated by the agent, a namespace with
//! a Secret and a volume backed up into each and restored from each into a new namespace (files
//! and objects compared), user tokens of the OIDC issuer against the API (and one it refuses),
//! the secrets key sealing the classic credentials and the support channel's identity, and the
//! opt-in support channel switched on before the tenant's data exists (registration with a
//! registration token, uploads over mutual TLS with the client key, all through the backups and
//! restores) and off again through its file (then not one more byte reaches the service, also
//! past an upload interval). Each secret is shown to have been used before the scan, so the scan
//! cannot pass for want of it.
//!
//! What the support service received is scanned too: no secret, and no tenant data: none of the
//! names (tagged per run) of the namespace, ConfigMap, Secret, claim, volume, files, locations
//! and restore targets, although the log records of the data operations were sent and
//! kube-client logged the tenant's ConfigMap, names and all, at WARN while the channel was on.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service};
use kube::api::{Api, PostParams};
use opentelemetry_proto::tonic::common::v1::any_value;
use pxb_core::api::rest::{
    BackupRequest, CreateDiscovery, CreateLocation, CreateOrg, CredentialInput, ListQuery, RestoreRequest,
};
use pxb_core::catalog::records::{
    BackupRecord, ClusterSelector, Mode, RestoreRecord, Role, RoleBinding, SupportInstallation,
};
use pxb_daemon::agent::{AgentBuilder, AgentConfig};
use pxb_daemon::client::Client;
use pxb_daemon::server::ServerBuilder;
use pxb_harness::telemetry_service::{TelemetryService, TelemetryServiceOptions};
use pxb_tests::control::{ControlPlane, wait_for};
use pxb_tests::fixture::CLIENT_ID;
use pxb_tests::objects::{apply, bind, tree};
use reqwest::Method;
use serde_json::{Value, json};

const PROJECT: &str = "acme";
const SHOOT: &str = "shoot-00000";
/// The sealing context of the support channel's client identity
/// (`pxb_daemon::server::support`'s `SEAL_CONTEXT`).
const SUPPORT_SEAL_CONTEXT: &str = "pxb-support-identity";

/// Every line the process logs, as `pxb-server` and `pxb-agent` write them with
/// `PXB_LOG=debug PXB_LOG_FORMAT=json`; installed once, before anything runs.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let vars = |k: &str| match k {
            "PXB_LOG" => Some("debug".to_owned()),
            "PXB_LOG_FORMAT" => Some("json".to_owned()),
            _ => None,
        };
        let settings = pxb_telemetry::Settings::from_vars("info", vars)
            .expect("settings")
            .redact_with(pxb_core::redact::redact);
        assert_eq!(settings.format, pxb_telemetry::LogFormat::Json);
        let subscriber = settings
            .subscriber(move || pxb_tests::logs::Sink(writer.clone()))
            .expect("subscriber");
        tracing::subscriber::set_global_default(subscriber)
            .expect("the only subscriber of this test process");
        buf
    })
}

fn binding(role: Role, group: &str) -> RoleBinding {
    RoleBinding {
        role,
        groups: vec![group.to_owned()],
        app_roles: Vec::new(),
    }
}

fn random_hex(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

fn url_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The forms a secret could take in a log line: as is, URL-encoded and -decoded, JSON-escaped;
/// a PEM key's base64 lines one by one; a JWT's payload and signature; with `parts`, the first
/// and last 24 characters of anything else (a cut-off secret is still a leak; not for a SAS,
/// whose parameters other than the signature are no secret).
fn forms(secret: &str, parts: bool) -> Vec<String> {
    let s = secret.trim();
    let mut out = vec![s.to_owned()];
    out.push(url::form_urlencoded::byte_serialize(s.as_bytes()).collect());
    out.push(url_decode(s));
    out.push(
        serde_json::to_string(s)
            .expect("json")
            .trim_matches('"')
            .to_owned(),
    );
    if s.starts_with("-----BEGIN") {
        let body: Vec<&str> = s.lines().filter(|l| !l.starts_with("-----")).collect();
        out.extend(body.iter().map(|l| l.to_string()));
        out.push(body.concat());
    } else if s.starts_with("eyJ") && s.matches('.').count() == 2 {
        out.extend(s.split('.').skip(1).map(str::to_owned));
    } else if parts && s.len() > 32 {
        out.push(s[..24].to_owned());
        out.push(s[s.len() - 24..].to_owned());
    }
    out.retain(|f| f.len() >= 16);
    out.sort();
    out.dedup();
    out
}

/// The strings of a JSON value, decoded, at any depth (span fields included).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out)
        }),
        _ => out.push(v.to_string()),
    }
}

/// A finished backup (`Success` expected by the caller).
async fn backup_done(api: &Client, id: &str) -> BackupRecord {
    wait_for(
        &format!("backup {id} finishes"),
        Duration::from_secs(180),
        || async {
            let b = api.get_backup("acme", id).await.map_err(|e| e.to_string())?;
            if ["Pending", "InProgress"].contains(&b.phase.as_str()) {
                Err(format!("{} {:?}", b.phase.as_str(), b.message))
            } else {
                Ok(Some(b))
            }
        },
    )
    .await
    .expect("backup finishes")
}

/// A finished restore.
async fn restore_done(api: &Client, id: &str) -> RestoreRecord {
    wait_for(
        &format!("restore {id} finishes"),
        Duration::from_secs(180),
        || async {
            let r = api.get_restore("acme", id).await.map_err(|e| e.to_string())?;
            if ["Pending", "InProgress"].contains(&r.phase.as_str()) {
                Err(format!("{} {:?}", r.phase.as_str(), r.message))
            } else {
                Ok(Some(r))
            }
        },
    )
    .await
    .expect("restore finishes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_scenario_logs_no_secret() {
    let logs = captured().clone();
    let own = tempfile::tempdir().expect("dir");

    // The server's secrets key, the development token, the support service and its
    // registration token.
    let secrets_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let key_file = own.path().join("secrets.key");
    std::fs::write(&key_file, &secrets_key).expect("key");
    let dev_token = random_hex("dev");
    let registration_token = random_hex("reg");
    let service = TelemetryService::start_with(TelemetryServiceOptions {
        registration_token: Some(registration_token.clone()),
        ..TelemetryServiceOptions::default()
    })
    .await;
    let service_ca = own.path().join("telemetry-ca.pem");
    std::fs::write(&service_ca, service.ca_pem()).expect("ca");
    let token_file = own.path().join("telemetry-token");
    std::fs::write(&token_file, format!("{registration_token}\n")).expect("token");
    let support_switch = own.path().join("support-enabled");
    std::fs::write(&support_switch, "false\n").expect("switch");
    let (endpoint, kf, ca, tf, sw) = (
        service.endpoint(),
        key_file.display().to_string(),
        service_ca.display().to_string(),
        token_file.display().to_string(),
        support_switch.display().to_string(),
    );
    let mut cp = ControlPlane::start(PROJECT, 1, move |c| {
        c.mode = Mode::Classic;
        c.secrets.key_file = kf;
        c.telemetry.support.endpoint = endpoint;
        c.telemetry.support.ca_file = ca;
        c.telemetry.support.registration_token_file = tf;
        c.telemetry.support.enabled_file = sw;
        c.telemetry.support.upload_interval_secs = 10;
        c.telemetry
            .support
            .customers
            .insert("acme".into(), "customer-4711".into());
    })
    .await
    .expect("control plane");
    // The same server with the development token as well (as `--dev-token-file` starts it).
    if let Some(d) = cp.daemon.take() {
        d.shutdown().await;
    }
    let daemon = ServerBuilder::new(cp.config.clone())
        .dev_token(dev_token.clone())
        .build()
        .await
        .expect("server")
        .spawn()
        .expect("spawn");
    cp.url = format!("http://{}", daemon.addr);
    cp.daemon = Some(daemon);
    let api = Client::builder(&cp.url)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    // The agent, with a kubeconfig of its own (its client key is a secret of the scenario) and
    // a restore root for volumes.
    let agent_kubeconfig = cp
        .fleet
        .admin_kubeconfig(PROJECT, SHOOT, 3600)
        .expect("kubeconfig");
    let now = SystemTime::now();
    let agent_access =
        pxb_gardener::parse_access(&agent_kubeconfig, now, now + Duration::from_secs(3600)).expect("access");
    let agent_key_data = agent_kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("client-key-data");
    let shoot = pxb_gardener::kube_client(&agent_access).expect("client");
    pxb_tests::shoots::install_pxb(&shoot).await.expect("install");
    let root = pxb_tests::workspace_root().join("deploy/agent");
    let deployment: Deployment =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("30-deployment.yaml")).expect("yaml"))
            .expect("deployment");
    Api::<Deployment>::namespaced(shoot.clone(), "pxb-system")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("deployment");
    let svc: Service =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("40-service.yaml")).expect("yaml"))
            .expect("service");
    Api::<Service>::namespaced(shoot.clone(), "pxb-system")
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    let restore_root = own.path().join("restores");
    let mut agent_config = AgentConfig::default();
    agent_config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    agent_config.cluster_name = Some(SHOOT.into());
    agent_config.restore_root = restore_root.clone();
    agent_config.workload_identity = cp.azure.wi_options(CLIENT_ID);
    agent_config.ca_file = Some(cp.azure.ca.ca_file());
    agent_config.heartbeat_interval = Duration::from_secs(1);
    let agent = AgentBuilder::new(agent_config)
        .kube_client(shoot.clone())
        .spawn()
        .await
        .expect("agent");
    cp.fleet
        .shoot(PROJECT, SHOOT)
        .expect("shoot")
        .register_service_backend("pxb-system", "pxb-agent", "http", agent.api_addr);
    cp.agents.insert(SHOOT.into(), agent);

    // The support channel, switched on through its file before anything of the tenant exists:
    // it registers (with the registration token) and uploads over mutual TLS (with its client
    // key), every 10 s, all through the backups and restores below.
    std::fs::write(&support_switch, "true\n").expect("switch");
    assert!(
        service.wait_for_uploads(1, Duration::from_secs(90)).await,
        "the support channel uploads once switched on"
    );

    // The application: a ConfigMap, a Secret and a claim on a local-path volume with files, all
    // named with this run's tag, so that finding a name in what the support service received
    // cannot be a coincidence.
    let tag = format!("{:08x}", rand::random::<u32>());
    let ns = format!("quokka-shop-{tag}");
    let cm_name = format!("quokka-orders-{tag}");
    let secret_name = format!("quokka-db-{tag}");
    let pvc_name = format!("quokka-data-{tag}");
    let pv_name = format!("quokka-pv-{tag}");
    let sub_dir = format!("quokka-sub-{tag}");
    let blob_name = format!("quokka-blob-{tag}.bin");
    let row_name = |i: usize| format!("quokka-row-{i}-{tag}.txt");
    let tenant_secret = random_hex("tenant-password");
    let data = own.path().join("volume");
    std::fs::create_dir_all(data.join(&sub_dir)).expect("mkdir");
    for i in 0..10 {
        std::fs::write(data.join(row_name(i)), format!("row {i}\n").repeat(40)).expect("write");
    }
    let noise: Vec<u8> = (0..16_384)
        .flat_map(|_| rand::random::<u64>().to_le_bytes())
        .collect();
    std::fs::write(data.join(&sub_dir).join(&blob_name), &noise).expect("write");
    let password = base64::engine::general_purpose::STANDARD.encode(&tenant_secret);
    for obj in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "local-path"},
               "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm_name, "namespace": ns},
               "data": {"currency": "EUR"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name, "namespace": ns},
               "type": "Opaque", "data": {"password": password}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                        "hostPath": {"path": data.to_string_lossy()},
                        "claimRef": {"namespace": ns, "name": pvc_name}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc_name, "namespace": ns},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path", "volumeName": pv_name,
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        apply(&shoot, obj).await;
    }
    bind(&shoot, &ns, &pvc_name).await;

    // The org, with the development token; its admins log in with the OIDC issuer's tokens.
    let dev = api.with_token(&dev_token);
    dev.create_org(&CreateOrg {
        id: "acme".into(),
        display_name: "Acme".into(),
        mode: Mode::default(),
        access: vec![binding(Role::Admin, "acme-admins")],
    })
    .await
    .expect("the development token creates the org");
    let alice_token = cp.token("alice", &["acme-admins"]);
    let alice = api.with_token(&alice_token);
    alice
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
        .expect("alice's token creates the discovery");
    // A token the server refuses (another audience) is a secret too.
    let foreign_token =
        cp.issuer.token(
            cp.issuer
                .claims_for("eve", "api://another-service", &["acme-admins"], &[], 3600),
        );
    let (status, body) = cp
        .call(Method::GET, "/v1/orgs/acme/locations", &foreign_token, None)
        .await
        .expect("call");
    assert_eq!(status, 401, "a token for another audience: {body}");

    // Three locations: classic with the account key, classic with a SAS, federated.
    let (sas, sig) = pxb_tests::azurite::dev_sas().expect("sas");
    let every = ClusterSelector {
        all: true,
        ..ClusterSelector::default()
    };
    let classic = |name: &str, container: &str, credential: CredentialInput| {
        let mut loc: CreateLocation = cp.azure_location(name, container, every.clone());
        loc.mode = Some(Mode::Classic);
        loc.client_id = None;
        loc.credential = Some(credential);
        loc
    };
    let (keyed, signed, federated) = (
        format!("quokka-keyed-{tag}"),
        format!("quokka-signed-{tag}"),
        format!("quokka-federated-{tag}"),
    );
    let locations = [
        classic(
            &keyed,
            &cp.azure.new_container("keyed").await.expect("container"),
            CredentialInput {
                account_key: Some(pxb_tests::azurite::ACCOUNT_KEY.into()),
                sas_token: None,
            },
        ),
        classic(
            &signed,
            &cp.azure.new_container("signed").await.expect("container"),
            CredentialInput {
                account_key: None,
                sas_token: Some(sas.clone()),
            },
        ),
        cp.azure_location(
            &federated,
            &cp.azure.new_container("federated").await.expect("container"),
            every.clone(),
        ),
    ];
    for loc in &locations {
        let made = alice.create_location("acme", loc).await.expect("location");
        let classic = loc.credential.is_some();
        assert_eq!(
            (made.mode, made.has_credential),
            (if classic { Mode::Classic } else { Mode::Federated }, classic),
            "{made:?}"
        );
    }
    for loc in &locations {
        wait_for(
            &format!("{} Valid", loc.name),
            Duration::from_secs(120),
            || async {
                let st = alice
                    .location_status("acme", &loc.name, &ListQuery::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let phases: Vec<&str> = st.items.iter().map(|s| s.validation.phase.as_str()).collect();
                if phases == ["Valid"] {
                    Ok(Some(()))
                } else {
                    Err(format!("{phases:?}"))
                }
            },
        )
        .await
        .expect("the agent validates the location with its credential");
    }

    // A backup into each location, then a restore from each into a namespace of its own.
    let mut restored = Vec::new();
    for loc in &locations {
        let made = alice
            .create_backups(
                "acme",
                &BackupRequest {
                    clusters: ClusterSelector {
                        names: vec![SHOOT.into()],
                        ..ClusterSelector::default()
                    },
                    namespaces: vec![ns.clone()],
                    location: loc.name.clone(),
                },
            )
            .await
            .expect("backup");
        let id = made.items.first().expect("one backup").id.clone();
        let b = backup_done(&alice, &id).await;
        assert_eq!(
            b.phase.as_str(),
            "Success",
            "{} with its credential: {b:?}",
            loc.name
        );
        assert!(
            b.stored_bytes >= noise.len() as u64 && b.objects >= 3,
            "the volume's data and the objects went into {}: {b:?}",
            loc.name
        );
        let target = format!("quokka-restored-{}-{tag}", restored.len());
        let r = alice
            .create_restore(
                "acme",
                &RestoreRequest {
                    backup: id.clone(),
                    namespace_mapping: [(ns.clone(), target.clone())].into(),
                    ..RestoreRequest::default()
                },
            )
            .await
            .expect("restore");
        let r = restore_done(&alice, &r.id).await;
        assert_eq!(
            r.phase.as_str(),
            "Success",
            "{} with its credential: {r:?}",
            loc.name
        );
        assert_eq!(r.counts.failed, 0, "{r:?}");
        restored.push(target);
    }
    // The objects and the files came back.
    for ns in &restored {
        let cm = Api::<ConfigMap>::namespaced(shoot.clone(), ns)
            .get(&cm_name)
            .await
            .expect("restored ConfigMap");
        assert_eq!(
            cm.data.and_then(|d| d.get("currency").cloned()).as_deref(),
            Some("EUR")
        );
        let secret = Api::<Secret>::namespaced(shoot.clone(), ns)
            .get(&secret_name)
            .await
            .expect("restored Secret");
        let value = secret
            .data
            .and_then(|d| d.get("password").cloned())
            .expect("password");
        assert_eq!(value.0, tenant_secret.as_bytes(), "{ns}");
        let claim = Api::<PersistentVolumeClaim>::namespaced(shoot.clone(), ns)
            .get(&pvc_name)
            .await
            .expect("restored claim");
        let volume = claim.spec.and_then(|s| s.volume_name).expect("bound");
        let pv = Api::<PersistentVolume>::all(shoot.clone())
            .get(&volume)
            .await
            .expect("new volume");
        let dir = pv
            .spec
            .and_then(|s| s.host_path)
            .map(|h| h.path)
            .expect("hostPath");
        assert!(dir.starts_with(&*restore_root.to_string_lossy()), "{dir}");
        assert_eq!(tree(std::path::Path::new(&dir)), tree(&data), "the files of {ns}");
    }

    // A library's warning while the channel is on: kube-client logs at WARN the whole answer it
    // cannot parse (target `kube_client::client`, message `<body>, <error>`), here the tenant's
    // ConfigMap read as a Secret. pxb's filter keeps that module below ERROR out
    // (`pxb_telemetry::logs::QUIET_BODIES`), so neither the process' log nor the channel gets
    // the body; other libraries' records reach the channel withheld (unit-tested in
    // `pxb_telemetry::support::logbuf`).
    let misread = shoot
        .request::<Secret>(
            http::Request::get(format!("/api/v1/namespaces/{ns}/configmaps/{cm_name}"))
                .body(Vec::new())
                .expect("request"),
        )
        .await;
    assert!(matches!(misread, Err(kube::Error::SerdeError(_))), "{misread:?}");

    // The support channel sends a batch collected after the last restore (the second metrics
    // upload from now: the first may have been collected before), so the log records of the
    // data operations have been sent; then it is switched off through its file. Once it says it
    // is off, not one more byte or connection reaches the service, also past an upload
    // interval.
    let metrics_uploads = service.metrics().len();
    wait_for(
        "two more uploads after the restores",
        Duration::from_secs(90),
        || async {
            let n = service.metrics().len();
            if n >= metrics_uploads + 2 {
                Ok(Some(()))
            } else {
                Err(format!("{n} metrics uploads"))
            }
        },
    )
    .await
    .expect("the channel uploads all through the data operations");
    let support_status = || {
        cp.daemon
            .as_ref()
            .and_then(|d| d.support.as_ref())
            .expect("the support channel exists")
            .status()
    };
    assert!(
        support_status().enabled && support_status().uploads >= 2,
        "{:?}",
        support_status()
    );
    std::fs::write(&support_switch, "false\n").expect("switch");
    wait_for("the channel is off", Duration::from_secs(30), || async {
        Ok((!support_status().enabled).then_some(()))
    })
    .await
    .expect("off");
    let (bytes, connections) = (service.bytes_received(), service.connections());
    tokio::time::sleep(Duration::from_secs(10 + 3)).await;
    assert_eq!(
        (service.bytes_received(), service.connections()),
        (bytes, connections),
        "nothing reaches the service once the file switched the channel off"
    );
    assert!(!support_status().enabled, "{:?}", support_status());
    let registrations = service.registrations();
    assert!(
        !registrations.is_empty(),
        "registered with the registration token"
    );
    let installation = cp
        .server()
        .catalog()
        .find::<SupportInstallation>("", SupportInstallation::ID)
        .await
        .expect("catalog")
        .expect("the installation record")
        .value;
    let sealed = installation
        .identity
        .expect("the identity is sealed in the catalog");
    let sealer = pxb_daemon::server::seal::Sealer::from_base64(&secrets_key).expect("key");
    let identity: pxb_telemetry::support::ClientIdentity = serde_json::from_slice(
        &sealer
            .open(&sealed, SUPPORT_SEAL_CONTEXT)
            .expect("sealed with the secrets key"),
    )
    .expect("identity");
    assert_eq!(identity.installation_id, installation.installation_id);
    assert!(
        service
            .metrics()
            .iter()
            .any(|u| u.client_cn == identity.installation_id),
        "uploads arrived under the client certificate"
    );

    // Read the orgs and the metrics as the provider admin (a refused token would get 401 from
    // both), the fleet as alice.
    let admin_token = cp.admin_token();
    let orgs = api
        .with_token(&admin_token)
        .list_orgs(&ListQuery::default())
        .await
        .expect("the provider admin's token lists the orgs");
    assert_eq!(
        orgs.items.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ["acme"]
    );
    let (status, _) = cp
        .call(Method::GET, "/metrics", &admin_token, None)
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let fleet = alice.fleet_status(&ListQuery::default()).await.expect("fleet");
    assert_eq!(
        fleet
            .items
            .iter()
            .map(|e| (e.cluster.as_str(), e.state.as_str()))
            .collect::<Vec<_>>(),
        [(SHOOT, "Ready")],
        "the server discovered the shoot with the garden token and visits it with its kubeconfig"
    );

    // What the server holds for the shoot: the kubeconfig it got from the garden.
    let server = cp.server().clone();
    let providers = server.providers();
    assert_eq!(providers.len(), 1);
    let info = providers[0].inventory().into_iter().next().expect("the shoot");
    let server_access = pxb_core::cluster::ClusterProvider::access(providers[0].as_ref(), &info.id)
        .await
        .expect("access");

    // The secrets, each used above.
    let projected = std::fs::read_to_string(cp.azure.token_file()).expect("token file");
    assert!(
        cp.azure
            .entra
            .exchanges()
            .iter()
            .any(|e| e.granted && e.assertion.trim() == projected.trim()),
        "the agent exchanged the projected token"
    );
    let whole = ["the SAS"];
    let secrets: Vec<(&str, String)> = vec![
        ("the account key", pxb_tests::azurite::ACCOUNT_KEY.to_owned()),
        ("the SAS", sas.clone()),
        ("the SAS signature", sig.clone()),
        ("the projected service-account token", projected.clone()),
        ("alice's bearer token", alice_token.clone()),
        ("the provider admin's bearer token", admin_token.clone()),
        ("a refused bearer token", foreign_token.clone()),
        ("the development token", dev_token.clone()),
        ("the secrets key", secrets_key.clone()),
        ("the garden token", cp.garden_token.clone()),
        (
            "the server's kubeconfig client key",
            server_access.client_key_pem.clone(),
        ),
        (
            "the agent's kubeconfig client key",
            agent_access.client_key_pem.clone(),
        ),
        ("the agent's kubeconfig client-key-data", agent_key_data.clone()),
        ("the support channel's client key", identity.key_pem.clone()),
        ("the support registration token", registration_token.clone()),
        ("the tenant's Secret", tenant_secret.clone()),
        ("the tenant's Secret, base64", password.clone()),
    ];
    // Everything stops (its last lines are scanned too).
    cp.stop().await;

    // The scan: every line is JSON; every secret, in every form, in no line (raw or decoded).
    let text = String::from_utf8(logs.lock().unwrap_or_else(|e| e.into_inner()).clone()).expect("utf-8 logs");
    let mut lines = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let mut decoded = Vec::new();
        strings(&v, &mut decoded);
        lines.push((line, v, decoded));
    }
    assert!(
        lines.len() > 1000,
        "the scenario's logs were captured: {} lines",
        lines.len()
    );
    // The capture has what the scan is for: the server's requests and the agent's data
    // operations, with their span fields.
    let in_span = |field: &str, value: Option<&str>| {
        lines.iter().any(|(_, v, _)| {
            v["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| match value {
                    Some(want) => s[field].as_str() == Some(want),
                    None => s.get(field).is_some(),
                })
            })
        })
    };
    for (field, value) in [
        ("request_id", None),
        ("org", Some("acme")),
        ("cluster", Some(SHOOT)),
        ("location", Some(keyed.as_str())),
        ("location", Some(signed.as_str())),
        ("location", Some(federated.as_str())),
        ("backup", None),
        ("restore", None),
    ] {
        assert!(in_span(field, value), "no line in a span with {field} {value:?}");
    }
    for (what, secret) in &secrets {
        assert!(secret.trim().len() >= 16, "{what} is long enough to scan for");
        for form in forms(secret, !whole.contains(what)) {
            for (line, _, decoded) in &lines {
                assert!(
                    !line.contains(&form) && !decoded.iter().any(|s| s.contains(&form)),
                    "{what} ({form:?}) in a log line: {line}"
                );
            }
        }
    }
    // Nothing shaped like a credential either: tokens this test cannot know (the access tokens
    // Entra issued to the agent, kubeconfigs renewed meanwhile) have these shapes.
    let shapes: [(&str, Shape); 3] = [
        ("a JWT", looks_like_jwt),
        ("a private key", |s| s.contains("PRIVATE KEY-----")),
        ("an account key in a connection string", |s| {
            s.match_indices("AccountKey=").any(|(at, m)| {
                let value = s[at + m.len()..].trim_start_matches(['"', '\\']);
                !value.starts_with(pxb_core::redact::REDACTED)
            })
        }),
    ];
    for (line, _, decoded) in &lines {
        for (what, hit) in &shapes {
            assert!(
                !hit(line) && !decoded.iter().any(|s| hit(s)),
                "{what} in a log line: {line}"
            );
        }
    }
    // The log records the support channel sent are lines of the same logs: none holds a secret
    // either.
    let sent = service.all_strings();
    assert!(!sent.is_empty(), "the support service received metrics and logs");
    for (what, secret) in &secrets {
        for form in forms(secret, !whole.contains(what)) {
            assert!(
                !sent.iter().any(|s| s.contains(&form)),
                "{what} ({form:?}) sent to the support service"
            );
        }
    }
    // No tenant data either: none of the names of the tenant's namespace, objects, files,
    // locations or restore targets is in any string the service received, although the channel
    // was on all through the backups and restores that handled them, their log records were
    // sent, and kube-client logged the tenant's ConfigMap with its names.
    let sent_logs: Vec<(String, String)> = service
        .logs()
        .iter()
        .flat_map(|l| &l.request.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .map(|r| {
            let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            let target = r
                .attributes
                .iter()
                .find(|kv| kv.key == "pxb.log.target")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            (target, body)
        })
        .collect();
    for (n, sent_by_data_operations) in [
        (3, "backup finished"),
        (3, "restore finished"),
        (3, "volume backed up"),
        (3, "volume restored"),
        (3, "resources backed up"),
        (3, "resources restored"),
    ] {
        assert!(
            sent_logs
                .iter()
                .filter(|(_, body)| body.starts_with(sent_by_data_operations))
                .count()
                >= n,
            "{n} records \"{sent_by_data_operations} …\" were sent: {sent_logs:#?}"
        );
    }
    assert!(
        !lines.iter().any(|(_, v, _)| v["target"] == "kube_client::client"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&cm_name) || m.contains(&ns))),
        "kube-client's body of the ConfigMap it could not parse stays out of the log"
    );
    assert!(
        !sent_logs
            .iter()
            .any(|(target, _)| target == "kube_client::client"),
        "nor is it sent: {sent_logs:#?}"
    );
    let mut tenant: Vec<(&str, String)> = vec![
        ("the namespace", ns.clone()),
        ("the claim", pvc_name.clone()),
        ("the location with the account key", keyed.clone()),
        ("the location with the SAS", signed.clone()),
        ("the federated location", federated.clone()),
    ];
    tenant.extend(restored.iter().map(|t| ("a restore target", t.clone())));
    // The process' own logs name each of these (so the support channel's capture saw them go
    // by). The files, the ConfigMap, the Secret and the volume are named nowhere in the logs
    // (the Kubernetes client's lines that named them, its request paths at DEBUG and its body
    // of the misread ConfigMap, are kept out by `QUIET_BODIES`); they are compared after the
    // loop.
    for (what, name) in &tenant {
        assert!(
            lines.iter().any(|(line, _, _)| line.contains(name.as_str())),
            "{what} {name} is in no log line"
        );
    }
    tenant.push(("the ConfigMap", cm_name.clone()));
    tenant.push(("the Secret", secret_name.clone()));
    tenant.push(("the volume", pv_name.clone()));
    tenant.push(("a directory of the volume", sub_dir.clone()));
    tenant.push(("a file of the volume", blob_name.clone()));
    tenant.extend((0..10).map(|i| ("a file of the volume", row_name(i))));
    // Any string with this run's tag is a tenant name, whole or cut.
    let leaks: Vec<String> = sent
        .iter()
        .filter(|s| s.contains(tag.as_str()))
        .map(|s| {
            let named: Vec<&str> = tenant
                .iter()
                .filter(|(_, name)| s.contains(name.as_str()))
                .map(|(what, _)| *what)
                .collect();
            format!("{named:?} in {s}")
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "tenant names sent to the support service:\n{}",
        leaks.join("\n")
    );
    println!(
        "{} log records sent to the support service, none with the {} tenant names",
        sent_logs.len(),
        tenant.len()
    );
    println!(
        "scanned {} log lines ({} bytes) for {} secrets",
        lines.len(),
        text.len(),
        secrets.len()
    );
}

/// A test of a text for a credential's shape.
type Shape = fn(&str) -> bool;

/// Whether `s` holds `eyJ….….…` with parts of base64url of some length.
fn looks_like_jwt(s: &str) -> bool {
    s.match_indices("eyJ").any(|(at, _)| {
        let rest = &s[at..];
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() >= 3 && parts[0].len() >= 10 && parts[1].len() >= 10
    })
}
