//! Zero-touch install and upgrade of the agent (`fleet.installAgent`) on the real kube-apiserver:
//! a server visit ([`reconcile::visit`]) installs the chart's objects marked as its own, brings
//! them up to date in place when the agent is outdated or runs another image than
//! `fleet.agentImage` (or is missing again), waits while a backup runs, and never touches
//! objects it did not install — in particular not those a Helm release manages, even when they
//! carry its mark (a release that adopted a zero-touch install).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use pxb_core::catalog::records::{ClusterRecord, ClusterState};
use pxb_daemon::crd::{AGENT_NAMESPACE, ApplicationBackup};
use pxb_daemon::server::install::agent_objects;
use pxb_daemon::server::reconcile::{self, VisitInput, VisitOutput};
use pxb_harness::real_cluster::RealCluster;
use serde_json::{Value, json};

/// The mark zero-touch install puts on what it creates.
const MARK: (&str, &str) = ("pxb.io/installed-by", "pxb-server");
const OLD: &str = "registry.example/pxb-agent:0.0.9";
const NEW: &str = "registry.example/pxb-agent:0.1.0";
const NEWER: &str = "registry.example/pxb-agent:0.1.1";
const NEWEST: &str = "registry.example/pxb-agent:0.2.0";

async fn admin(cluster: &RealCluster) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(cluster.admin_kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// One visit as the server makes it with `fleet.installAgent` on and `fleet.agentImage` `image`.
async fn visit(client: &kube::Client, image: &str) -> VisitOutput {
    let input = VisitInput {
        cluster: ClusterRecord {
            org: "acme".into(),
            id: "uid-real".into(),
            name: "real".into(),
            ..ClusterRecord::default()
        },
        desired: Vec::new(),
        statuses: BTreeMap::new(),
        now: SystemTime::now(),
        lease: Duration::from_secs(120),
        min_agent_version: semver::Version::parse(pxb_core::api::agent::VERSION).expect("version"),
        install_agent: Some(image.to_owned()),
    };
    reconcile::visit(client, input).await.expect("the visit")
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The agent's Deployment: uid, resourceVersion, image and version label.
async fn deployment(client: &kube::Client) -> (String, String, String, String) {
    let d = Api::<Deployment>::namespaced(client.clone(), AGENT_NAMESPACE)
        .get("pxb-agent")
        .await
        .expect("the agent Deployment");
    (
        d.uid().unwrap_or_default(),
        d.resource_version().unwrap_or_default(),
        image_of(&d),
        d.labels().get("pxb.io/version").cloned().unwrap_or_default(),
    )
}

/// A merge patch of `name` (a Deployment in the agent's namespace, or a ClusterRole) by another
/// field manager, as a person or another tool would make it.
async fn patch_by_hand(client: &kube::Client, kind: &str, name: &str, patch: Value) {
    let pp = PatchParams {
        field_manager: Some("someone-else".into()),
        ..PatchParams::default()
    };
    match kind {
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), AGENT_NAMESPACE)
            .patch(name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
        _ => Api::<ClusterRole>::all(client.clone())
            .patch(name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
    }
    .expect("patch by hand");
}

/// The backup ClusterRole of the manifests.
const ROLE: &str = "pxb-agent-backup";

async fn rules_of(client: &kube::Client, name: &str) -> Value {
    let r = Api::<ClusterRole>::all(client.clone())
        .get(name)
        .await
        .expect("ClusterRole");
    serde_json::to_value(r.rules.unwrap_or_default()).expect("rules")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_touch_upgrades_only_what_it_installed_and_not_while_a_backup_runs() {
    let cluster = RealCluster::start().expect("the real cluster");
    let client = admin(&cluster).await;

    // 1. Installed where missing: every object of the chart, marked, applied by field manager
    // pxb-server.
    let out = visit(&client, OLD).await;
    assert_eq!(out.status.state, ClusterState::AgentMissing, "{:?}", out.status);
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("installed")),
        "{:?}",
        out.status
    );
    for o in agent_objects(OLD).expect("objects") {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let path = match kind {
            "CustomResourceDefinition" => {
                format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            }
            "Namespace" => format!("/api/v1/namespaces/{name}"),
            "ServiceAccount" => format!("/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts/{name}"),
            "Service" => format!("/api/v1/namespaces/{AGENT_NAMESPACE}/services/{name}"),
            "Deployment" => format!("/apis/apps/v1/namespaces/{AGENT_NAMESPACE}/deployments/{name}"),
            "ClusterRole" => format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
            "ClusterRoleBinding" => format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"),
            "Role" => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/roles/{name}"),
            "RoleBinding" => {
                format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/rolebindings/{name}")
            }
            k => panic!("a {k} in the manifests: add it here"),
        };
        let (status, body) = cluster.get(&path).expect("GET");
        assert_eq!(status, 200, "{kind} {name}: {body}");
        let got: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            got["metadata"]["annotations"][MARK.0], MARK.1,
            "{kind} {name} is marked: {got}"
        );
        let managers = got["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            managers
                .iter()
                .any(|m| m["manager"] == "pxb-server" && m["operation"] == "Apply"),
            "{kind} {name} applied by pxb-server: {managers:?}"
        );
    }
    let (uid, _, image, version) = deployment(&client).await;
    assert_eq!(
        (image.as_str(), version.as_str()),
        (OLD, pxb_core::api::agent::VERSION)
    );

    // 2. Another fleet.agentImage: the Deployment is updated in place (same uid), and RBAC that
    // drifted is put back.
    assert!(
        agent_objects(NEW)
            .expect("objects")
            .iter()
            .any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == ROLE),
        "the manifests have {ROLE}"
    );
    let role = ROLE;
    let rules = rules_of(&client, role).await;
    patch_by_hand(
        &client,
        "ClusterRole",
        role,
        json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
    )
    .await;
    assert_ne!(rules_of(&client, role).await, rules);
    let out = visit(&client, NEW).await;
    let (uid2, _, image, _) = deployment(&client).await;
    assert_eq!(
        (uid2.as_str(), image.as_str()),
        (uid.as_str(), NEW),
        "{:?}",
        out.status
    );
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("upgraded") && m.contains(NEW)),
        "{:?}",
        out.status
    );
    assert_eq!(rules_of(&client, role).await, rules);
    // Up to date: the next visit changes nothing.
    let (_, rv, _, _) = deployment(&client).await;
    let out = visit(&client, NEW).await;
    assert_eq!(out.status.state, ClusterState::Ready, "{:?}", out.status);
    assert_eq!(
        deployment(&client).await.1,
        rv,
        "an up-to-date agent is not applied again"
    );

    // 3. An outdated agent (an older version label) with the same image: upgraded too.
    patch_by_hand(
        &client,
        "Deployment",
        "pxb-agent",
        json!({"metadata": {"labels": {"pxb.io/version": "0.0.1"}}}),
    )
    .await;
    let out = visit(&client, NEW).await;
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("upgraded")),
        "{:?}",
        out.status
    );
    let (uid3, _, _, version) = deployment(&client).await;
    assert_eq!(
        (uid3.as_str(), version.as_str()),
        (uid.as_str(), pxb_core::api::agent::VERSION)
    );

    // 4. Not while a backup runs (a heartbeat within the lease); once it is over, it is.
    let backups: Api<ApplicationBackup> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let ab: ApplicationBackup = serde_json::from_value(json!({
        "apiVersion": "pxb.io/v1alpha1", "kind": "ApplicationBackup",
        "metadata": {"name": "nightly-1", "namespace": AGENT_NAMESPACE},
        "spec": {"location": "primary", "namespaces": ["shop"]}
    }))
    .expect("backup");
    backups
        .create(&PostParams::default(), &ab)
        .await
        .expect("backup created");
    let running = |phase: &str, heartbeat: SystemTime| json!({"status": {"phase": phase, "heartbeat": pxb_core::clock::rfc3339(heartbeat)}});
    backups
        .patch_status(
            "nightly-1",
            &PatchParams::default(),
            &Patch::Merge(running("InProgress", SystemTime::now())),
        )
        .await
        .expect("status");
    let (_, rv, _, _) = deployment(&client).await;
    let out = visit(&client, NEWER).await;
    assert_eq!(
        deployment(&client).await.1,
        rv,
        "upgraded while a backup runs: {:?}",
        out.status
    );
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("nightly-1") && m.contains(NEWER)),
        "{:?}",
        out.status
    );
    // A heartbeat older than the lease is no running backup (an agent that is gone).
    backups
        .patch_status(
            "nightly-1",
            &PatchParams::default(),
            &Patch::Merge(running(
                "InProgress",
                SystemTime::now() - Duration::from_secs(600),
            )),
        )
        .await
        .expect("status");
    // Meanwhile the backup ClusterRole came under a Helm release: the upgrade leaves it alone
    // (drifted as it is) and updates the rest.
    patch_by_hand(
        &client,
        "ClusterRole",
        role,
        json!({"metadata": {"annotations": {"meta.helm.sh/release-name": "rbac", "meta.helm.sh/release-namespace": "kube-system"}},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
    )
    .await;
    let helm_rules = rules_of(&client, role).await;
    let out = visit(&client, NEWER).await;
    let (uid4, _, image, _) = deployment(&client).await;
    assert_eq!(
        (uid4.as_str(), image.as_str()),
        (uid.as_str(), NEWER),
        "{:?}",
        out.status
    );
    assert_eq!(
        rules_of(&client, role).await,
        helm_rules,
        "a Helm-managed object was applied"
    );

    // 4b. The Deployment deleted (the agent missing): installed again, and what the install made
    // that drifted meanwhile is put back too.
    let restore_role = "pxb-agent-restore";
    let restore_rules = rules_of(&client, restore_role).await;
    patch_by_hand(
        &client,
        "ClusterRole",
        restore_role,
        json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]}),
    )
    .await;
    Api::<Deployment>::namespaced(client.clone(), AGENT_NAMESPACE)
        .delete("pxb-agent", &Default::default())
        .await
        .expect("delete the Deployment");
    let out = visit(&client, NEWER).await;
    assert_eq!(out.status.state, ClusterState::AgentMissing, "{:?}", out.status);
    let (new_uid, _, image, _) = deployment(&client).await;
    assert!(new_uid != uid && image == NEWER, "{new_uid} {image}");
    assert_eq!(rules_of(&client, restore_role).await, restore_rules);
    assert_eq!(
        rules_of(&client, role).await,
        helm_rules,
        "a Helm-managed object was applied"
    );
    let uid = new_uid;

    // 5. A Deployment that is not the server's (its mark removed, as after `kubectl apply` of
    // deploy/agent over it): left alone, and the status says why.
    patch_by_hand(
        &client,
        "Deployment",
        "pxb-agent",
        json!({"metadata": {"annotations": {MARK.0: null}, "labels": {"pxb.io/version": "0.0.1"}}}),
    )
    .await;
    let (_, rv, _, _) = deployment(&client).await;
    let out = visit(&client, NEWEST).await;
    assert_eq!(deployment(&client).await.1, rv, "{:?}", out.status);
    assert_eq!(out.status.state, ClusterState::AgentOutdated, "{:?}", out.status);
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("not installed by pxb-server")),
        "{:?}",
        out.status
    );

    // 6. The attack: a Helm release adopted the zero-touch install (Helm's annotations and label
    // on objects that still carry the server's mark). Helm owns it now: the server must not
    // overwrite it.
    patch_by_hand(
        &client,
        "Deployment",
        "pxb-agent",
        json!({"metadata": {
            "annotations": {MARK.0: MARK.1, "meta.helm.sh/release-name": "pxb-agent", "meta.helm.sh/release-namespace": AGENT_NAMESPACE},
            "labels": {"app.kubernetes.io/managed-by": "Helm"}}}),
    )
    .await;
    let (_, rv, image, _) = deployment(&client).await;
    let out = visit(&client, NEWEST).await;
    let (uid6, rv6, image6, version6) = deployment(&client).await;
    assert_eq!(
        (uid6.as_str(), rv6.as_str(), image6.as_str(), version6.as_str()),
        (uid.as_str(), rv.as_str(), image.as_str(), "0.0.1"),
        "a Helm-managed agent was overwritten: {:?}",
        out.status
    );
    assert_eq!(out.status.state, ClusterState::AgentOutdated, "{:?}", out.status);
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Helm") && m.contains("pxb-agent")),
        "{:?}",
        out.status
    );
}
