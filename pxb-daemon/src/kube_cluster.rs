//! [`KubeCluster`]: the resource seams (`ResourceSource`, `ResourceSink`) over a real Kubernetes
//! API server, through the kube client: dynamic discovery, paged lists, get, create, delete.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use pxb_core::resources::{ApiResource, ResourceObject, ResourcePage, ResourceSink, ResourceSource};
use pxb_core::{Error, Result};

/// How long [`ResourceSink::delete`] waits for an object with finalizers to go away.
pub const DELETE_WAIT: Duration = Duration::from_secs(60);

/// A Kubernetes cluster reached through a kube client.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// The cluster behind `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        let gvk = kube::api::GroupVersionKind::gvk(&resource.group, &resource.version, &resource.kind);
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &resource.plural);
        match namespace {
            Some(ns) if resource.namespaced => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    async fn discover(&self) -> Result<Vec<ApiResource>> {
        let discovery = Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(|e| map_err(e, "discovering the API"))?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if !caps.supports_operation(verbs::LIST) {
                    continue;
                }
                out.push(ApiResource::new(
                    &ar.group,
                    &ar.version,
                    &ar.kind,
                    &ar.plural,
                    caps.scope == Scope::Namespaced,
                ));
            }
        }
        Ok(out)
    }

    async fn get_object(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ResourceObject>> {
        let what = format!("get {} {name}", resource.resource_name());
        match self
            .api(resource, namespace)
            .get_opt(name)
            .await
            .map_err(|e| map_err(e, &what))?
        {
            None => Ok(None),
            Some(obj) => to_object(resource, obj).map(Some),
        }
    }
}

/// Maps a kube client error onto pxb's variants (one mapping for the workspace).
fn map_err(e: kube::Error, what: &str) -> Error {
    pxb_gardener::map_kube_error(what, e)
}

/// A dynamic object as pxb's object, with `apiVersion` and `kind` filled in (list items omit them).
fn to_object(resource: &ApiResource, obj: DynamicObject) -> Result<ResourceObject> {
    let mut value =
        serde_json::to_value(obj).map_err(|e| Error::other("encoding an object").with_source(e))?;
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| resource.api_version().into());
        map.entry("kind").or_insert_with(|| resource.kind.clone().into());
    }
    ResourceObject::new(value)
}

#[async_trait]
impl ResourceSource for KubeCluster {
    async fn api_resources(&self) -> Result<Vec<ApiResource>> {
        self.discover().await
    }

    async fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        continue_token: Option<&str>,
        limit: u32,
    ) -> Result<ResourcePage> {
        let lp = ListParams {
            label_selector: label_selector.map(str::to_owned),
            limit: (limit > 0).then_some(limit),
            continue_token: continue_token.map(str::to_owned),
            ..ListParams::default()
        };
        let what = format!("list {}", resource.resource_name());
        let list = self
            .api(resource, namespace)
            .list(&lp)
            .await
            .map_err(|e| map_err(e, &what))?;
        let continue_token = list.metadata.continue_.filter(|c| !c.is_empty());
        let items = list
            .items
            .into_iter()
            .map(|o| to_object(resource, o))
            .collect::<Result<Vec<_>>>()?;
        Ok(ResourcePage {
            items,
            continue_token,
        })
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ResourceObject>> {
        self.get_object(resource, namespace, name).await
    }
}

#[async_trait]
impl ResourceSink for KubeCluster {
    async fn create(&self, resource: &ApiResource, object: &ResourceObject) -> Result<ResourceObject> {
        let obj: DynamicObject = serde_json::from_value(object.as_value().clone())
            .map_err(|e| Error::invalid(format!("{}: not a Kubernetes object: {e}", object.name())))?;
        let what = format!("create {} {}", resource.resource_name(), object.name());
        let created = self
            .api(resource, object.namespace())
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| map_err(e, &what))?;
        to_object(resource, created)
    }

    async fn delete(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> Result<()> {
        let api = self.api(resource, namespace);
        let what = format!("delete {} {name}", resource.resource_name());
        // Background propagation, as kubectl does: the object goes at once and its dependents
        // after it. (The server's default for some kinds, batch/v1 Jobs among them, orphans them:
        // a replaced Job would leave the old Job's pods running beside the new one's.)
        api.delete(name, &DeleteParams::background())
            .await
            .map_err(|e| map_err(e, &what))?;
        // Objects with finalizers linger: wait until they are gone, so a create can follow.
        let start = Instant::now();
        while api.get_opt(name).await.map_err(|e| map_err(e, &what))?.is_some() {
            if start.elapsed() > DELETE_WAIT {
                return Err(Error::unavailable(format!(
                    "{what}: still there after {} s (finalizers?)",
                    DELETE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }
}
