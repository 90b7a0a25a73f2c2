//! [`KubeCluster`]: the resource seams (`ResourceSource`, `ResourceSink`) over a real Kubernetes
//! API server, through the kube client: dynamic discovery, paged lists, get, create, delete.
//!
//! Its continue tokens carry the last object handed out beside the server's token, so a list
//! whose token expired (410, after etcd's compaction) goes on after that object instead of
//! failing; deletes propagate in the background, as kubectl's do.

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

/// Where a paged list goes on: the API server's continue token, and the key of the last object
/// handed out, to go on after it when the token has expired.
struct Continue {
    server: String,
    after: Option<(String, String)>,
}

impl Continue {
    /// The token is the server's, then (after a newline, which a server token never holds) the
    /// namespace and name of the last object. A token without one is the server's alone.
    fn parse(token: &str) -> Self {
        match token.split_once('\n') {
            Some((server, key)) => Continue {
                server: server.to_owned(),
                after: key
                    .split_once('/')
                    .map(|(ns, name)| (ns.to_owned(), name.to_owned())),
            },
            None => Continue {
                server: token.to_owned(),
                after: None,
            },
        }
    }

    fn encode(&self) -> String {
        match &self.after {
            Some((ns, name)) => format!("{}\n{ns}/{name}", self.server),
            None => self.server.clone(),
        }
    }
}

/// An object's place in a list: namespace (empty when cluster-scoped), then name, compared as
/// bytes, as etcd orders its keys.
fn key_of(o: &DynamicObject) -> (String, String) {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// Maps a kube client error onto pxb's variants ([`crate::kube_error`], the crate's one mapping).
fn map_err(e: kube::Error, what: &str) -> Error {
    crate::kube_error::map_kube_error(what, e)
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
        let api = self.api(resource, namespace);
        let what = format!("list {}", resource.resource_name());
        let (server_token, after) = match continue_token.map(Continue::parse) {
            Some(c) => (Some(c.server), c.after),
            None => (None, None),
        };
        let list_page = |token: Option<String>| {
            let lp = ListParams {
                label_selector: label_selector.map(str::to_owned),
                limit: (limit > 0).then_some(limit),
                continue_token: token,
                ..ListParams::default()
            };
            let api = api.clone();
            async move { api.list(&lp).await }
        };
        let (items, next) = match list_page(server_token).await {
            Ok(list) => (list.items, list.metadata.continue_),
            Err(kube::Error::Api(e)) if e.code == 410 && after.is_some() => {
                // The token outlived etcd's compaction (every 5 minutes by default): list again
                // from the start and go on after the last object already handed out. (Objects
                // are listed in key order, namespace then name, so nothing is handed out twice;
                // like the server's own inconsistent continuation, what changed meanwhile shows
                // as it is now.)
                tracing::info!(resource = %resource.resource_name(), "continue token expired; listing again after the last object");
                let after = after.clone().unwrap_or_default();
                let mut token = None;
                loop {
                    let list = list_page(token).await.map_err(|e| map_err(e, &what))?;
                    let kept: Vec<DynamicObject> =
                        list.items.into_iter().filter(|o| key_of(o) > after).collect();
                    let cont = list.metadata.continue_.filter(|c| !c.is_empty());
                    if !kept.is_empty() || cont.is_none() {
                        break (kept, cont);
                    }
                    token = cont;
                }
            }
            Err(e) => return Err(map_err(e, &what)),
        };
        let next = next.filter(|c| !c.is_empty());
        let last = items.last().map(key_of).or(after);
        let continue_token = next.map(|server| Continue { server, after: last }.encode());
        let items = items
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
