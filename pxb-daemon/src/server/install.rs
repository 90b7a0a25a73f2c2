//! Zero-touch install and upgrade: the agent's CRDs and manifests applied to a cluster that
//! lacks the agent, and brought up to date there when the agent is outdated or runs another
//! image than `fleet.agentImage` (the visit decides when: [`crate::server::reconcile::visit`]).
//! Off by default (`fleet.installAgent`).
//!
//! What it applies is what the agent's Helm chart (`deploy/helm/pxb-agent`) renders with its
//! default values, the image aside: `deploy/crds` and `deploy/agent` are that chart's output
//! (regenerated with `PXB_UPDATE_CHARTS=1 cargo test -p pxb-tests --test agent_chart`), embedded
//! here at build time, and that test compares [`agent_objects`] with the real Helm's rendering.
//! The contract that test holds is on [`agent_objects`] alone: it returns exactly the chart's
//! output. What the install adds when it applies an object — the annotation [`INSTALLED_BY`]`:
//! `[`INSTALLER`] and the field manager [`INSTALLER`] — is added here, at apply time, and must
//! never go into the manifests or [`agent_objects`]: a Helm install of the chart must not carry
//! the server's mark.
//!
//! Ownership ([`install_agent`]). A missing object is created by a server-side apply that is not
//! forced (one someone made since it was read conflicts instead of being taken over), marked. An
//! existing one is updated in place (server-side apply, forced, at the resourceVersion just read,
//! so the same object and uid) only when the install made it: marked, and managed by no Helm
//! release ([`not_ours`]). Objects installed with Helm or `kubectl apply`, and a zero-touch
//! install a Helm release has adopted since (Helm's annotation or label beside the mark), are
//! left to their manager. Objects a pxb-server installed before the mark existed carry none
//! either and are not updated.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

/// The annotation marking an object the zero-touch install created.
pub const INSTALLED_BY: &str = "pxb.io/installed-by";
/// Its value, and the field manager of the install's server-side applies.
pub const INSTALLER: &str = "pxb-server";
/// The annotation Helm puts on what a release manages.
pub const HELM_RELEASE: &str = "meta.helm.sh/release-name";
/// The label Helm puts on what a release manages (`Helm`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The chart's output, in apply order: the CRDs, then the namespace before what lives in it.
const MANIFESTS: &[&str] = &[
    include_str!("../../../deploy/crds/backuplocations.pxb.io.yaml"),
    include_str!("../../../deploy/crds/applicationbackups.pxb.io.yaml"),
    include_str!("../../../deploy/crds/applicationrestores.pxb.io.yaml"),
    include_str!("../../../deploy/agent/00-namespace.yaml"),
    include_str!("../../../deploy/agent/10-serviceaccount.yaml"),
    include_str!("../../../deploy/agent/20-rbac.yaml"),
    include_str!("../../../deploy/agent/30-deployment.yaml"),
    include_str!("../../../deploy/agent/40-service.yaml"),
];

fn plural(kind: &str) -> Option<(&'static str, bool)> {
    // (plural, namespaced)
    Some(match kind {
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "Deployment" => ("deployments", true),
        "Service" => ("services", true),
        _ => return None,
    })
}

/// Every object zero-touch install creates, in the order it creates them, with the agent
/// Deployment's image set to `image`: the objects of `helm template deploy/helm/pxb-agent --set
/// image.repository=…,image.tag=…` (tests/tests/agent_chart.rs holds them equal).
pub fn agent_objects(image: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in MANIFESTS.iter().flat_map(|m| m.split("\n---")) {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let mut v: Value = serde_saphyr::from_str(doc).map_err(|e| format!("an embedded manifest: {e}"))?;
        if v.get("kind").and_then(Value::as_str) == Some("Deployment")
            && let Some(c) = v.pointer_mut("/spec/template/spec/containers/0/image")
        {
            *c = Value::String(image.to_owned());
        }
        out.push(v);
    }
    Ok(out)
}

/// Why the install leaves an existing object alone, if it does: a Helm release manages it, or
/// the install did not make it (no [`INSTALLED_BY`] mark). `None`: it is the install's to update.
pub fn not_ours(meta: &ObjectMeta) -> Option<String> {
    let annotations = meta.annotations.as_ref();
    if let Some(release) = annotations.and_then(|a| a.get(HELM_RELEASE)) {
        // Shown in the cluster's status: cut (Helm's names have at most 53 characters) and
        // without control characters, whatever a cluster puts there.
        let release: String = release.chars().filter(|c| !c.is_control()).take(53).collect();
        return Some(format!("managed by Helm (release {release})"));
    }
    if meta
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == "Helm")
    {
        return Some(format!("managed by Helm ({MANAGED_BY_LABEL}: Helm)"));
    }
    if annotations.and_then(|a| a.get(INSTALLED_BY)).map(String::as_str) != Some(INSTALLER) {
        return Some(format!(
            "not installed by {INSTALLER} (no {INSTALLED_BY}: {INSTALLER} annotation)"
        ));
    }
    None
}

/// What an install did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Objects created.
    pub(crate) created: usize,
    /// Objects of the install changed in place.
    pub(crate) updated: usize,
    /// Existing objects left alone because they are not the install's, each with why
    /// (`Kind name: why`).
    pub(crate) left: Vec<String>,
}

/// Installs the agent of `image`, or brings its install up to date: creates the objects that are
/// missing, marked, and updates in place those the install made ([`not_ours`] is `None`); leaves
/// the others alone and says which. Updating the Deployment restarts the agent (its strategy is
/// `Recreate`). Unchanged objects are not written (an apply that changes nothing is no update).
pub(crate) async fn install_agent(client: &kube::Client, image: &str) -> Result<Applied, String> {
    let mut done = Applied::default();
    for mut obj in agent_objects(image)? {
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind, name) = (s("/apiVersion"), s("/kind"), s("/metadata/name"));
        let Some((plural, namespaced)) = plural(&kind) else {
            return Err(format!(
                "the manifests hold a {kind}, which zero-touch install does not know"
            ));
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &kind), plural);
        let api: Api<DynamicObject> = if namespaced {
            let ns = s("/metadata/namespace");
            Api::namespaced_with(
                client.clone(),
                if ns.is_empty() {
                    crate::crd::AGENT_NAMESPACE
                } else {
                    &ns
                },
                &ar,
            )
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let failed = |what: &str, e: kube::Error| {
            super::kubeconfig::map_error(&format!("{what} the agent's {kind} {name}"), e).to_string()
        };
        // The mark, added here and only here (see the module's documentation).
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("the agent's {kind} manifest has no metadata"))?;
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(INSTALLED_BY.into(), INSTALLER.into());
        }
        let existing = api.get_opt(&name).await.map_err(|e| failed("reading", e))?;
        match existing {
            None => {
                // Not forced: an object someone made since the read conflicts instead of being
                // taken over.
                match api
                    .patch(&name, &PatchParams::apply(INSTALLER), &Patch::Apply(&obj))
                    .await
                {
                    Ok(_) => done.created += 1,
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        done.left
                            .push(format!("{kind} {name}: made by someone else meanwhile"));
                    }
                    Err(e) => return Err(failed("installing", e)),
                }
            }
            Some(current) => {
                if let Some(why) = not_ours(&current.metadata) {
                    done.left.push(format!("{kind} {name}: {why}"));
                    continue;
                }
                // At the version read: a change since (a Helm release adopting it) conflicts.
                let read = current.metadata.resource_version.clone();
                if let (Some(rv), Some(meta)) =
                    (&read, obj.get_mut("metadata").and_then(Value::as_object_mut))
                {
                    meta.insert("resourceVersion".into(), Value::String(rv.clone()));
                }
                match api
                    .patch(&name, &PatchParams::apply(INSTALLER).force(), &Patch::Apply(&obj))
                    .await
                {
                    Ok(after) => {
                        if after.metadata.resource_version != read {
                            done.updated += 1;
                        }
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        done.left.push(format!(
                            "{kind} {name}: changed meanwhile; the next visit looks again"
                        ));
                    }
                    Err(e) => return Err(failed("upgrading", e)),
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_objects_no_helm_release_manages_are_the_installs() {
        let meta = |annotations: &[(&str, &str)], labels: &[(&str, &str)]| ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            labels: Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
            ..ObjectMeta::default()
        };
        let mark = (INSTALLED_BY, INSTALLER);
        assert_eq!(not_ours(&meta(&[mark], &[])), None);
        for (m, why) in [
            (meta(&[], &[]), "not installed by pxb-server"),
            (
                meta(&[(INSTALLED_BY, "someone")], &[]),
                "not installed by pxb-server",
            ),
            (
                meta(&[mark, (HELM_RELEASE, "agents")], &[]),
                "managed by Helm (release agents)",
            ),
            (meta(&[mark], &[(MANAGED_BY_LABEL, "Helm")]), "managed by Helm"),
            (
                meta(
                    &[(HELM_RELEASE, &format!("a\u{1b}[2J{}", "b".repeat(10_000)))],
                    &[],
                ),
                &format!("(release a[2J{})", "b".repeat(49)),
            ),
        ] {
            let got = not_ours(&m);
            assert!(got.as_deref().is_some_and(|g| g.contains(why)), "{why}: {got:?}");
        }
        // The mark is added when applying, never in the manifests (the chart's output).
        for o in agent_objects("x").expect("objects") {
            assert!(
                o.pointer(&format!(
                    "/metadata/annotations/{}",
                    INSTALLED_BY.replace('/', "~1")
                ))
                .is_none(),
                "{o}"
            );
        }
    }

    #[test]
    fn the_embedded_manifests_are_complete_and_take_the_image() {
        let objs = agent_objects("registry.example/pxb-agent:9.9.9").expect("objects");
        let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
        for k in [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "Deployment",
            "Service",
        ] {
            assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
        }
        assert!(kinds.iter().all(|k| plural(k).is_some()), "{kinds:?}");
        // Created before what lives in them: the CRDs and the namespace come first.
        assert_eq!(
            kinds[..4],
            [
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "Namespace"
            ]
        );
        // Helm's uninstall of the chart keeps them, with every backup's record in them.
        for o in &objs[..4] {
            assert_eq!(
                o["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                "{o}"
            );
        }
        let d = objs
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("deployment");
        assert_eq!(
            d.pointer("/spec/template/spec/containers/0/image")
                .and_then(Value::as_str),
            Some("registry.example/pxb-agent:9.9.9")
        );
    }
}
