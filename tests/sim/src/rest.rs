//! The Kubernetes REST protocol over an [`ApiStore`]: discovery, get, list (paged, label and field
//! selectors), watch (resourceVersion, bookmarks, `sendInitialEvents`, 410 Gone), create, update,
//! JSON/merge/strategic-merge/apply patches, delete, and the `status` subresource.
//!
//! Approximations, stated so nobody relies on them: strategic merge patches merge lists of objects
//! by their `name` key and replace other lists; server-side apply behaves like a merge patch that
//! creates the object when it is missing (no field ownership); there is no garbage collection of
//! dependents and no admission.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use pxb_core::resources::LabelSelector;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::store::{ApiError, ApiStore, EventType, FieldSelector, Preconditions, ResourceType, Selectors};

/// Response body: whole for most answers, streamed for watches.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A whole JSON response.
pub fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The `Status` response for an error.
pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// What a request asks for, after routing (for authorization).
#[derive(Debug, Clone)]
pub struct Target {
    /// The verb: get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// The resource type.
    pub ty: ResourceType,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// Subresource from the path.
    pub subresource: Option<String>,
}

/// Decides whether a request may proceed.
pub type Authorizer<'a> = &'a (dyn Fn(&Target) -> Result<(), ApiError> + Send + Sync);

/// Version information served at `/version`.
pub fn version_info(kubernetes_version: &str) -> Value {
    let mut parts = kubernetes_version.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({"major": major, "minor": minor, "gitVersion": format!("v{kubernetes_version}"),
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
           "platform": "linux/amd64"})
}

/// Settings of the REST layer.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// Kubernetes version reported at `/version`.
    pub kubernetes_version: String,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
}

impl Default for RestOptions {
    fn default() -> Self {
        Self {
            kubernetes_version: "1.33.4".into(),
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Serves one request against `store`, after `authorize` allows it.
pub async fn handle(
    store: &Arc<ApiStore>,
    opts: &RestOptions,
    req: Request<Incoming>,
    authorize: Authorizer<'_>,
) -> Response<Body> {
    match handle_inner(store, opts, req, authorize).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn handle_inner(
    store: &Arc<ApiStore>,
    opts: &RestOptions,
    req: Request<Incoming>,
    authorize: Authorizer<'_>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    if method == Method::GET
        && let Some(r) = discovery(store, opts, &segs, &req)
    {
        return Ok(r);
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", name, sub] if matches!(*sub, "status" | "finalize") => {
            (None, "namespaces", Some(*name), Some(*sub))
        }
        ["namespaces", ns, plural, tail @ ..] => {
            (Some(*ns), *plural, tail.first().copied(), tail.get(1).copied())
        }
        ["namespaces", name] => (None, "namespaces", Some(*name), None),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let ty = store.resolve(group, version, plural).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    })?;
    let namespace = if ty.namespaced { namespace } else { None };
    if let Some(s) = sub
        && (s != "status" || !ty.status_subresource)
    {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    }
    let q = query(&req);
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, name, watching) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, None, _) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), _) => "delete",
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on {path}"),
            ));
        }
    };
    let target = Target {
        verb,
        ty: ty.clone(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
    };
    authorize(&target)?;
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if matches!(verb, "create" | "update") && content_type != "application/json" {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (the simulator does not decode {content_type})"
            ),
        ));
    }
    // kubectl asks for server-side tables (`as=Table`) to print columns.
    let table = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    let status = sub == Some("status");
    match verb {
        "get" if table => {
            let obj = store.get(&ty, namespace, name.unwrap_or(""))?;
            Ok(json_response(200, &as_table(&ty, &[obj], json!({}))))
        }
        "get" => Ok(json_response(
            200,
            &*store.get(&ty, namespace, name.unwrap_or(""))?,
        )),
        "list" => {
            let sel = selectors(&q, &ty)?;
            let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
            let page = store.list(&ty, namespace, &sel, limit, q.get("continue").map(String::as_str))?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = page.continue_token {
                meta["continue"] = c.into();
            }
            if let Some(r) = page.remaining {
                meta["remainingItemCount"] = r.into();
            }
            if table {
                return Ok(json_response(200, &as_table(&ty, &page.items, meta)));
            }
            let items: Vec<&Value> = page.items.iter().map(|a| a.as_ref()).collect();
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", ty.kind), "apiVersion": ty.api_version(),
                        "metadata": meta, "items": items}),
            ))
        }
        "watch" => watch(store.clone(), opts, ty, namespace.map(str::to_owned), &q),
        "create" => {
            let body = read_json(req).await?;
            let obj = store.create(&ty, namespace, body, dry_run)?;
            Ok(json_response(201, &obj))
        }
        "update" => {
            let body = read_json(req).await?;
            let obj = store.update_with(&ty, namespace, name.unwrap_or(""), status, dry_run, |_| Ok(body))?;
            Ok(json_response(200, &obj))
        }
        "patch" => {
            let name = name.unwrap_or("");
            let raw = read_body(req).await?;
            let patch: Value = serde_json::from_slice(&raw).map_err(|e| {
                ApiError::bad_request(format!(
                    "the patch body must be JSON ({e}); the simulator does not parse YAML bodies"
                ))
            })?;
            if content_type == "application/apply-patch+yaml" {
                let manager = q.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
                    ApiError::invalid(
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    )
                })?;
                let force = q.get("force").is_some_and(|f| f == "true");
                match store.get(&ty, namespace, name) {
                    Err(e) if e.code == 404 => {
                        let mut obj = patch.clone();
                        obj["metadata"]["name"] = name.into();
                        let fields = applied_fields(&patch);
                        set_managed(&mut obj, manager, &ty.api_version(), status, &fields);
                        let obj = store.create(&ty, namespace, obj, dry_run)?;
                        return Ok(json_response(201, &obj));
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
                let obj = store.update_with(&ty, namespace, name, status, dry_run, |current| {
                    server_side_apply(current, &patch, manager, &ty.api_version(), status, force)
                })?;
                return Ok(json_response(200, &obj));
            }
            let obj = store.update_with(&ty, namespace, name, status, dry_run, |current| {
                apply_patch(&content_type, current, &patch)
            })?;
            Ok(json_response(200, &obj))
        }
        "delete" => {
            let raw = read_body(req).await?;
            let mut pre = Preconditions::default();
            if !raw.is_empty() {
                let opts: Value = serde_json::from_slice(&raw)
                    .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
                pre.uid = opts
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                pre.resource_version = opts
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            let obj = store.delete(&ty, namespace, name.unwrap_or(""), &pre, dry_run)?;
            Ok(json_response(200, &obj))
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", "unsupported")),
    }
}

/// A `meta.k8s.io/v1` Table of `items`: the name, then a CRD's printer columns (simple
/// `.a.b.c` JSON paths), or the creation time for other types.
fn as_table(ty: &ResourceType, items: &[Arc<Value>], meta: Value) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
                                  "description": "Name must be unique within a namespace."}),
    ];
    let mut paths = Vec::new();
    if ty.printer_columns.is_empty() {
        columns.push(json!({"name": "Age", "type": "date", "format": "", "priority": 0,
                            "description": "CreationTimestamp is the time the object was created."}));
        paths.push(".metadata.creationTimestamp".to_owned());
    }
    for c in &ty.printer_columns {
        columns.push(json!({"name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or_else(|| "".into()),
                            "priority": c.get("priority").cloned().unwrap_or_else(|| 0.into()),
                            "description": c.get("description").cloned().unwrap_or_else(|| "".into())}));
        paths.push(c["jsonPath"].as_str().unwrap_or("").to_owned());
    }
    let columns_for_rows = columns.clone();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            let now = std::time::SystemTime::now();
            for (p, col) in paths.iter().zip(&columns_for_rows[1..]) {
                let cell = obj.pointer(&p.replace('.', "/")).cloned().unwrap_or(Value::Null);
                // Like kube-apiserver, dates are shown as ages ("5m", "3d4h").
                let cell = match (col["type"].as_str(), cell.as_str()) {
                    (Some("date"), Some(t)) => pxb_core::clock::parse_rfc3339(t)
                        .map(|t| {
                            let secs = match now.duration_since(t) {
                                Ok(d) => d.as_secs() as i64,
                                Err(e) => -(e.duration().as_secs() as i64),
                            };
                            human_duration(secs).into()
                        })
                        .unwrap_or(cell),
                    _ => cell,
                };
                cells.push(cell);
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                              "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}

/// kube-apiserver's `HumanDuration` of `s` seconds: `45s`, `5m10s`, `3h`, `4d5h`, `2y3d`.
pub fn human_duration(s: i64) -> String {
    if s < -1 {
        return "<invalid>".into();
    }
    let s = s.max(0);
    let (m, h) = (s / 60, s / 3600);
    let (d, y) = (h / 24, h / (24 * 365));
    let pair = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => pair(m, "m", s % 60, "s"),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => pair(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => pair(d, "d", h % 24, "h"),
        _ if h < 24 * 365 * 2 => format!("{d}d"),
        _ if h < 24 * 365 * 8 => pair(y, "y", d % 365, "d"),
        _ => format!("{y}y"),
    }
}

fn selectors(q: &BTreeMap<String, String>, ty: &ResourceType) -> Result<Selectors, ApiError> {
    let labels =
        match q.get("labelSelector").filter(|s| !s.is_empty()) {
            Some(s) => Some(LabelSelector::parse(s).map_err(|e| {
                ApiError::bad_request(format!("unable to parse requirement: {}", e.message()))
            })?),
            None => None,
        };
    let fields = match q.get("fieldSelector") {
        Some(s) => FieldSelector::parse(s, ty)?,
        None => FieldSelector::default(),
    };
    Ok(Selectors { labels, fields })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("unreadable body: {e}")))
}

/// Reads a JSON request body.
pub async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let raw = read_body(req).await?;
    serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Applies a patch of `content_type` to `current`.
pub fn apply_patch(content_type: &str, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match content_type {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &p)
                .map_err(|e| ApiError::invalid(format!("the JSON patch failed: {e}")))?;
        }
        "application/merge-patch+json" | "application/apply-patch+yaml" => json_patch::merge(&mut doc, patch),
        "application/strategic-merge-patch+json" => strategic_merge(&mut doc, patch),
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"
                ),
            ));
        }
    }
    Ok(doc)
}

/// A field path of server-side apply: map keys from the root (lists are owned whole).
type FieldPath = Vec<String>;

/// The fields an applied configuration sets: its leaves (values that are not maps, and empty
/// maps), without the identity fields every configuration carries.
fn applied_fields(config: &Value) -> Vec<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut Vec<FieldPath>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, sub) in m {
                    path.push(k.clone());
                    walk(sub, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }
    let mut out = Vec::new();
    walk(config, &mut Vec::new(), &mut out);
    out.retain(|p| {
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        !matches!(
            p.as_slice(),
            ["apiVersion"]
                | ["kind"]
                | ["metadata"]
                | [
                    "metadata",
                    "name"
                        | "namespace"
                        | "resourceVersion"
                        | "uid"
                        | "generation"
                        | "creationTimestamp"
                        | "managedFields",
                    ..
                ]
        )
    });
    out
}

/// `fieldsV1` of a set of paths (`{"f:data": {"f:a": {}}}`).
fn fields_v1(fields: &[FieldPath]) -> Value {
    let mut root = json!({});
    for p in fields {
        let mut node = &mut root;
        for k in p {
            node = node
                .as_object_mut()
                .expect("fieldsV1 nodes are objects")
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}));
        }
    }
    root
}

/// The leaf paths of a `fieldsV1` (the inverse of [`fields_v1`]; `.` markers are skipped).
fn parse_fields_v1(v: &Value) -> Vec<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut Vec<FieldPath>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.push(path.clone());
            }
            return;
        }
        for (k, sub) in children {
            path.push(k[2..].to_owned());
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k.as_str()))
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = v;
    for k in parents {
        match node.get_mut(k.as_str()) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(m) = node.as_object_mut() {
        m.remove(last);
    }
}

/// Whether one path is the other or contains it.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The managers of `obj` (`metadata.managedFields`) for the main resource or its status, as
/// (manager, operation, fields).
fn managers(obj: &Value, status: bool) -> Vec<(String, String, Vec<FieldPath>)> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| (e.get("subresource").and_then(Value::as_str) == Some("status")) == status)
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or("").to_owned(),
                e["operation"].as_str().unwrap_or("").to_owned(),
                parse_fields_v1(&e["fieldsV1"]),
            )
        })
        .collect()
}

/// Replaces `manager`'s Apply entry in `obj`'s managedFields with `fields`.
fn set_managed(obj: &mut Value, manager: &str, api_version: &str, status: bool, fields: &[FieldPath]) {
    let mut entries: Vec<Value> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sub = |e: &Value| (e.get("subresource").and_then(Value::as_str) == Some("status")) == status;
    entries.retain(|e| !(sub(e) && e["manager"] == manager && e["operation"] == "Apply"));
    let mut entry = json!({"manager": manager, "operation": "Apply", "apiVersion": api_version,
                           "time": super::store::now_rfc3339(), "fieldsType": "FieldsV1",
                           "fieldsV1": fields_v1(fields)});
    if status {
        entry["subresource"] = "status".into();
    }
    entries.push(entry);
    obj["metadata"]["managedFields"] = entries.into();
}

/// Server-side apply of `config` by `manager` to `current`: a field another manager owns with a
/// different value is a 409 conflict unless `force` (which takes it over); fields the manager
/// applied before and no longer applies are removed unless someone else owns them. Lists are
/// owned whole (no `listType=map` merging).
fn server_side_apply(
    current: &Value,
    config: &Value,
    manager: &str,
    api_version: &str,
    status: bool,
    force: bool,
) -> Result<Value, ApiError> {
    let fields = applied_fields(config);
    let mut others: Vec<(String, String, Vec<FieldPath>)> = Vec::new();
    let mut mine: Vec<FieldPath> = Vec::new();
    for (m, op, f) in managers(current, status) {
        if m == manager && op == "Apply" {
            mine = f;
        } else {
            others.push((m, op, f));
        }
    }
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for (m, _, owned) in &mut others {
        let mut taken = Vec::new();
        for p in &fields {
            for o in owned.iter() {
                if overlaps(p, o) && at(config, p) != at(current, p) {
                    conflicts.push((m.clone(), format!(".{}", o.join("."))));
                    taken.push(o.clone());
                }
            }
        }
        owned.retain(|o| !taken.contains(o));
    }
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let message = if n == 1 {
            format!(
                "Apply failed with 1 conflict: conflict with \"{}\": {}",
                conflicts[0].0, conflicts[0].1
            )
        } else {
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
                .collect();
            format!("Apply failed with {n} conflicts: {}", list.join(", "))
        };
        return Err(ApiError::new(409, "Conflict", message));
    }
    let mut doc = current.clone();
    // What this manager no longer applies goes, unless someone else still owns it.
    for old in mine.iter().filter(|o| !fields.iter().any(|p| overlaps(p, o))) {
        if !others.iter().any(|(_, _, f)| f.iter().any(|o| overlaps(o, old))) {
            remove_at(&mut doc, old);
        }
    }
    let mut patch = config.clone();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    merge_applied(&mut doc, &patch);
    // Rewrite managedFields: the others (after forced takeovers), then this manager.
    let mut entries: Vec<Value> = current
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for e in &mut entries {
        let sub = (e.get("subresource").and_then(Value::as_str) == Some("status")) == status;
        if let Some((_, _, f)) = others
            .iter()
            .find(|(m, op, _)| sub && e["manager"] == m.as_str() && e["operation"] == op.as_str())
        {
            e["fieldsV1"] = fields_v1(f);
        }
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_none_or(|m| !m.is_empty()));
    doc["metadata"]["managedFields"] = entries.into();
    set_managed(&mut doc, manager, api_version, status, &fields);
    Ok(doc)
}

/// Merges an applied configuration: maps merge, everything else (lists included) replaces.
fn merge_applied(doc: &mut Value, config: &Value) {
    match (doc.as_object_mut(), config.as_object()) {
        (Some(d), Some(c)) => {
            for (k, v) in c {
                if v.is_object() && d.get(k).is_some_and(Value::is_object) {
                    merge_applied(d.get_mut(k).expect("checked"), v);
                } else {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *doc = config.clone(),
    }
}

/// A strategic merge patch, approximated: maps merge, `null` deletes, lists of objects that all
/// carry a `name` merge by name (ordered by `$setElementOrder` when given), other lists are
/// replaced, and `$` directives are dropped.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = json!({});
    }
    let Some(d) = doc.as_object_mut() else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                d.remove(k);
            }
            Value::Array(items) => {
                let order = p.get(&format!("$setElementOrder/{k}")).and_then(Value::as_array);
                let named = |a: &[Value]| a.iter().all(|e| e.get("name").and_then(Value::as_str).is_some());
                match d.get_mut(k) {
                    Some(Value::Array(existing)) if named(existing) && named(items) && !items.is_empty() => {
                        for item in items {
                            let name = item.get("name");
                            if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                                existing.retain(|e| e.get("name") != name);
                                continue;
                            }
                            match existing.iter_mut().find(|e| e.get("name") == name) {
                                Some(e) => strategic_merge(e, item),
                                None => {
                                    let mut fresh = json!({});
                                    strategic_merge(&mut fresh, item);
                                    existing.push(fresh);
                                }
                            }
                        }
                        if let Some(order) = order {
                            let pos = |e: &Value| order.iter().position(|o| o.get("name") == e.get("name"));
                            existing.sort_by_key(|e| pos(e).unwrap_or(usize::MAX));
                        }
                    }
                    _ => {
                        let cleaned: Vec<Value> = items
                            .iter()
                            .map(|i| {
                                let mut c = json!({});
                                if i.is_object() {
                                    strategic_merge(&mut c, i);
                                    c
                                } else {
                                    i.clone()
                                }
                            })
                            .collect();
                        d.insert(k.clone(), Value::Array(cleaned));
                    }
                }
            }
            Value::Object(_) => {
                let entry = d.entry(k.clone()).or_insert_with(|| json!({}));
                strategic_merge(entry, v);
            }
            other => {
                d.insert(k.clone(), other.clone());
            }
        }
    }
}

fn discovery(
    store: &ApiStore,
    opts: &RestOptions,
    segs: &[&str],
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let types = store.types();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if segs == ["openapi", "v2"] && accept.contains("protobuf") && !accept.contains("json") {
        // An empty protobuf message is a valid, empty OpenAPI v2 document.
        let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/octet-stream"),
        );
        return Some(r);
    }
    let body = match segs {
        ["version"] => version_info(&opts.kubernetes_version),
        ["api"] => json!({"kind": "APIVersions", "versions": ["v1"],
                          "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ["apis"] => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for t in types.iter().filter(|t| !t.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
                    Some(_) => {}
                    None => groups.push((t.group.clone(), vec![t.version.clone()])),
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
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        ["openapi", "v3"] => openapi_root(&types),
        // Older kubectl validates against OpenAPI v2; an empty document means "no schema known",
        // and kubectl then leaves validation to the server.
        ["openapi", "v2"] => {
            json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": format!("v{}", opts.kubernetes_version)},
                                   "paths": {}, "definitions": {}})
        }
        ["openapi", "v3", "api", v] => openapi_doc(&types, "", v)?,
        ["openapi", "v3", "apis", g, v] => openapi_doc(&types, g, v)?,
        ["api", v] => resource_list(&types, "", v)?,
        ["apis", g, v] => resource_list(&types, g, v)?,
        ["apis", g] => {
            let versions: Vec<Value> = types
                .iter()
                .filter(|t| t.group == *g)
                .map(|t| t.version.clone())
                .fold(Vec::<String>::new(), |mut acc, v| {
                    if !acc.contains(&v) {
                        acc.push(v);
                    }
                    acc
                })
                .into_iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            if versions.is_empty() {
                return None;
            }
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions,
                   "preferredVersion": versions[0]})
        }
        _ => return None,
    };
    Some(json_response(200, &body))
}

fn group_versions(types: &[ResourceType]) -> Vec<(String, String)> {
    let mut gvs: Vec<(String, String)> = Vec::new();
    for t in types {
        let gv = (t.group.clone(), t.version.clone());
        if !gvs.contains(&gv) {
            gvs.push(gv);
        }
    }
    gvs
}

/// `/openapi/v3`: one document per group version. The documents are minimal: they describe each
/// type's PATCH operation and its `fieldValidation` parameter (what kubectl checks before it leaves
/// validation to the server), not the schemas.
fn openapi_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in group_versions(types) {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let hash = blake3::hash(
            format!(
                "{:?}",
                types
                    .iter()
                    .filter(|t| t.group == g && t.version == v)
                    .collect::<Vec<_>>()
            )
            .as_bytes(),
        )
        .to_hex()
        .to_string();
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", &hash[..32])}),
        );
    }
    json!({"paths": paths})
}

fn openapi_doc(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for t in types.iter().filter(|t| t.group == group && t.version == version) {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let param =
            |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.4"},
                "paths": paths, "components": {"schemas": {}}}),
    )
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for t in types.iter().filter(|t| t.group == group && t.version == version) {
        list.push(
            json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                         "kind": t.kind, "shortNames": t.short_names, "categories": t.categories,
                         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}),
        );
        if t.status_subresource {
            list.push(
                json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                             "kind": t.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
        for (sub, verbs) in &t.extra_subresources {
            list.push(
                json!({"name": format!("{}/{sub}", t.plural), "singularName": "", "namespaced": t.namespaced,
                             "kind": t.kind, "verbs": verbs}),
            );
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn gone(rv: &str, oldest: u64) -> Bytes {
    event_line(
        "ERROR",
        &ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {rv} ({oldest})"),
        )
        .status(),
    )
}

fn watch(
    store: Arc<ApiStore>,
    opts: &RestOptions,
    ty: ResourceType,
    ns: Option<String>,
    q: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    if store.watches_down() {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "watches are unavailable (injected)",
        ));
    }
    let sel = selectors(q, &ty)?;
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = q.get("sendInitialEvents").is_some_and(|s| s == "true");
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|s| s == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut initial = Vec::new();
    let start_rv = if rv_param.is_empty() || rv_param == "0" || send_initial {
        let page = store.list(&ty, ns.as_deref(), &sel, 0, None)?;
        initial = page.items;
        page.resource_version
    } else {
        rv_param
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?
    };
    let started = store.watch_from(&ty, start_rv);
    let interval = opts.bookmark_interval;
    let oldest = store.compacted();
    let mut interrupted = store.watch_interrupts();
    tokio::spawn(async move {
        let Some((backlog, mut live, _)) = started else {
            let _ = tx.send(gone(&rv_param, oldest)).await;
            return;
        };
        for obj in &initial {
            if tx.send(event_line("ADDED", obj)).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                &json!({"kind": ty.kind, "apiVersion": ty.api_version(), "metadata": meta}),
            )
        };
        if send_initial && tx.send(bookmark(start_rv, true)).await.is_err() {
            return;
        }
        let res = format!("{}/{}", ty.group, ty.plural);
        let api_version = ty.api_version();
        let mut last_rv = start_rv;
        let deliver = |e: &super::store::Event| -> Option<Bytes> {
            if e.rv <= start_rv || e.res != res || ns.as_deref().is_some_and(|n| n != e.namespace) {
                return None;
            }
            let now = sel.matches(&e.object);
            let before = e.prev.as_deref().is_some_and(|p| sel.matches(p));
            let kind = match (e.kind, before, now) {
                (EventType::Deleted, true, _) => "DELETED",
                (EventType::Deleted, false, _) => return None,
                (EventType::Added, _, true) => "ADDED",
                (EventType::Modified, true, true) => "MODIFIED",
                (EventType::Modified, false, true) => "ADDED",
                (EventType::Modified, true, false) => "DELETED",
                _ => return None,
            };
            let mut obj = (*e.object).clone();
            obj["apiVersion"] = api_version.clone().into();
            Some(event_line(kind, &obj))
        };
        for e in &backlog {
            last_rv = last_rv.max(e.rv);
            if let Some(line) = deliver(e)
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            // Biased: once watches are interrupted, no event recorded after the interrupt is
            // delivered on this stream (the cut is a point in time, as on a real server).
            tokio::select! {
                biased;
                _ = interrupted.changed() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() { return; }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= last_rv { continue; }
                        last_rv = e.rv;
                        if let Some(line) = deliver(&e)
                            && tx.send(line).await.is_err() { return; }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(gone(&last_rv.to_string(), last_rv + 1)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let d = human_duration;
        assert_eq!(d(-5), "<invalid>");
        assert_eq!(d(0), "0s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(310), "5m10s");
        assert_eq!(d(600), "10m");
        assert_eq!(d(3 * 3600 + 5 * 60), "3h5m");
        assert_eq!(d(30 * 3600), "30h");
        assert_eq!(d(4 * 86_400 + 5 * 3600), "4d5h");
        assert_eq!(d(400 * 86_400), "400d");
        assert_eq!(d(3 * 365 * 86_400 + 10 * 86_400), "3y10d");
    }
}
