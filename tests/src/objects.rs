//! Kubernetes objects and files for scenarios: create an object from JSON, bind a claim as the
//! control plane would, read a restored tree.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// Creates the object `obj` (JSON with `apiVersion`, `kind` and `metadata`) through `client`.
pub async fn apply(client: &kube::Client, obj: serde_json::Value) {
    let obj: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
    let tm = obj.types.clone().expect("types");
    let (group, version) = tm.api_version.rsplit_once('/').unwrap_or(("", &tm.api_version));
    let plural = match tm.kind.as_str() {
        "PersistentVolumeClaim" => "persistentvolumeclaims".to_owned(),
        "PersistentVolume" => "persistentvolumes".to_owned(),
        "StorageClass" => "storageclasses".to_owned(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ar = kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: tm.api_version.clone(),
        kind: tm.kind.clone(),
        plural,
    };
    let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create object");
}

/// Does what the PersistentVolume controller does when a claim binds (the simulator has none):
/// the volume named by the claim's `spec.volumeName` gets the claim's uid in its `claimRef`, and
/// the claim's phase becomes `Bound`.
pub async fn bind(client: &kube::Client, namespace: &str, claim: &str) {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    let pvc = claims.get(claim).await.expect("claim");
    let volume = pvc.spec.and_then(|s| s.volume_name).expect("volumeName");
    Api::<PersistentVolume>::all(client.clone())
        .patch(
            &volume,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"claimRef": {"uid": pvc.metadata.uid}}})),
        )
        .await
        .expect("bind the volume");
    claims
        .patch_status(
            claim,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await
        .expect("bind the claim");
}

/// Every file under `dir` with its contents, by relative path.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}
