//! A Kubernetes API server façade over an [`InMemoryCluster`], for tests of code that talks to a
//! cluster through the real kube client: discovery (`/api`, `/apis`, group-version resource lists),
//! list (with `limit`, `continue` and `labelSelector`), get, create and delete, with the API's
//! `Status` errors. Plain HTTP on a loopback port; the fleet simulator grows from this.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use pxb_core::Error;
use pxb_core::resources::{ApiResource, InMemoryCluster, ResourceObject, ResourceSink, ResourceSource};
use serde_json::{Value, json};

use crate::server::BackgroundServer;

/// A running façade; stopped when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    server: BackgroundServer,
}

impl FakeApiServer {
    /// Serves `cluster` on a loopback port, on its own thread and runtime.
    pub fn start(cluster: Arc<InMemoryCluster>) -> anyhow::Result<Self> {
        let server = BackgroundServer::start(None, move |req| {
            let cluster = cluster.clone();
            async move { handle(&cluster, req).await }
        })?;
        Ok(Self { server })
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    /// A kube client for this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn from_error(e: &Error) -> Response<Full<Bytes>> {
    match e {
        Error::NotFound { .. } => status(StatusCode::NOT_FOUND, "NotFound", e.message()),
        Error::AlreadyExists { .. } => status(StatusCode::CONFLICT, "AlreadyExists", e.message()),
        Error::Invalid { .. } => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.message()),
        _ => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string()),
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn handle(cluster: &InMemoryCluster, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let resources = match ResourceSource::api_resources(cluster).await {
        Ok(r) => r,
        Err(e) => return from_error(&e),
    };
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    // Discovery.
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["api"]) => {
            return reply(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        (Method::GET, ["apis"]) => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for r in resources.iter().filter(|r| !r.group.is_empty()) {
                let v = groups.entry(&r.group).or_default();
                if !v.contains(&r.version.as_str()) {
                    v.push(&r.version);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            return reply(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        (Method::GET, ["api", v]) => return resource_list(&resources, "", v),
        (Method::GET, ["apis", g, v]) => return resource_list(&resources, g, v),
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return status(StatusCode::NOT_FOUND, "NotFound", &format!("no route {path}")),
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural, name @ ..] => (Some(*ns), *plural, name.first().copied()),
        [plural, name @ ..] => (None, *plural, name.first().copied()),
        [] => return status(StatusCode::NOT_FOUND, "NotFound", "no resource"),
    };
    let Some(resource) = resources
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource {path}"),
        );
    };
    let ns = if resource.namespaced { namespace } else { None };
    match (method, name) {
        (Method::GET, None) => {
            let q = query(&req);
            let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
            let page = ResourceSource::list(
                cluster,
                resource,
                ns,
                q.get("labelSelector").map(String::as_str),
                q.get("continue").map(String::as_str),
                limit,
            )
            .await;
            match page {
                Err(e) => from_error(&e),
                Ok(page) => {
                    let items: Vec<&Value> = page.items.iter().map(ResourceObject::as_value).collect();
                    let mut meta = json!({"resourceVersion": "1"});
                    if let Some(c) = page.continue_token {
                        meta["continue"] = c.into();
                    }
                    reply(
                        StatusCode::OK,
                        &json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version(), "metadata": meta, "items": items}),
                    )
                }
            }
        }
        (Method::GET, Some(name)) => match ResourceSource::get(cluster, resource, ns, name).await {
            Ok(Some(o)) => reply(StatusCode::OK, o.as_value()),
            Ok(None) => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", resource.plural),
            ),
            Err(e) => from_error(&e),
        },
        (Method::POST, None) => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body"),
            };
            let obj = match serde_json::from_slice::<Value>(&body)
                .map_err(|e| Error::invalid(e.to_string()))
                .and_then(ResourceObject::new)
            {
                Ok(o) => o,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            match ResourceSink::create(cluster, resource, &obj).await {
                Ok(o) => reply(StatusCode::CREATED, o.as_value()),
                Err(e) => from_error(&e),
            }
        }
        (Method::DELETE, Some(name)) => match ResourceSink::delete(cluster, resource, ns, name).await {
            Ok(()) => reply(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
            ),
            Err(e) => from_error(&e),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the façade",
        ),
    }
}

fn resource_list(resources: &[ApiResource], group: &str, version: &str) -> Response<Full<Bytes>> {
    let list: Vec<Value> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({"name": r.plural, "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
                   "verbs": ["create", "delete", "get", "list"]})
        })
        .collect();
    if list.is_empty() {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such group version");
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    reply(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}
