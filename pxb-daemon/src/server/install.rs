//! Zero-touch install: the agent's CRDs and manifests applied to a cluster that lacks the agent.
//! Off by default (`fleet.installAgent`).
//!
//! What it creates is what the agent's Helm chart (`deploy/helm/pxb-agent`) renders with its
//! default values, the image aside: `deploy/crds` and `deploy/agent` are that chart's output
//! (regenerated with `PXB_UPDATE_CHARTS=1 cargo test -p pxb-tests --test agent_chart`), embedded
//! here at build time, and that test compares [`agent_objects`] with the real Helm's rendering.

use kube::Api;
use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

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

/// Creates every object that does not exist yet; returns how many were created.
pub(crate) async fn install_agent(client: &kube::Client, image: &str) -> Result<usize, String> {
    let mut created = 0;
    for obj in agent_objects(image)? {
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind) = (s("/apiVersion"), s("/kind"));
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
        let dynamic: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| format!("a {kind} manifest: {e}"))?;
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(_) => created += 1,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(
                    super::kubeconfig::map_error(&format!("installing the agent's {kind}"), e).to_string(),
                );
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

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
