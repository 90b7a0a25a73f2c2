//! The simulator's object store: one per API server (the garden, each shoot). It follows the
//! Kubernetes storage semantics that clients depend on: one monotonically increasing
//! `resourceVersion` per store, optimistic concurrency (409 on a stale version), `generation`
//! bumped on spec changes, a `status` subresource, finalizers with `deletionTimestamp`, namespaces
//! that terminate with their content, custom resources that exist once their CRD does, and an event
//! log that watches replay from (older versions are compacted and answered with 410 Gone).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use pxb_core::resources::LabelSelector;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// How many events a store keeps for watches to resume from; older versions get 410 Gone.
pub const DEFAULT_EVENT_LOG: usize = 4096;

/// A new store's resourceVersion; earlier ones count as compacted.
pub const FIRST_RESOURCE_VERSION: u64 = 100;

/// An error as the API server reports it (`Status` with a code and a reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason, e.g. `NotFound`, `Conflict`, `AlreadyExists`, `Invalid`, `Gone`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error from its parts.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }
    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// 404 NotFound for an object.
    pub fn not_found(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", ty.qualified()),
        )
    }
    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply \
                 your changes to the latest version and try again",
                ty.qualified()
            ),
        )
    }
    /// 422 Invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }
    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// A type of object a store serves (one entry per served version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural name as in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `status` is a subresource (the main resource then ignores status changes).
    pub status_subresource: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Field selectors supported besides `metadata.name` and `metadata.namespace`.
    pub field_labels: Vec<String>,
    /// Extra subresources listed in discovery, with their verbs (e.g. `adminkubeconfig`).
    pub extra_subresources: Vec<(String, Vec<&'static str>)>,
    /// A CRD's `additionalPrinterColumns` (for `Table` responses).
    pub printer_columns: Vec<Value>,
    /// Categories (`kubectl get <category>`).
    pub categories: Vec<String>,
}

impl ResourceType {
    /// A resource type with a status subresource and no short names.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            status_subresource: true,
            short_names: Vec::new(),
            field_labels: Vec::new(),
            extra_subresources: Vec::new(),
            printer_columns: Vec::new(),
            categories: Vec::new(),
        }
    }
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `plural.group` as in API messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
    fn with_short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    fn without_status(mut self) -> Self {
        self.status_subresource = false;
        self
    }
    /// Adds supported field selector paths.
    pub fn with_field_labels(mut self, labels: &[&str]) -> Self {
        self.field_labels = labels.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// The built-in types of a simulated shoot's API server.
pub fn shoot_types() -> Vec<ResourceType> {
    let r = ResourceType::new;
    vec![
        r("", "v1", "Namespace", "namespaces", false)
            .with_short(&["ns"])
            .with_field_labels(&["status.phase"]),
        r("", "v1", "ConfigMap", "configmaps", true)
            .with_short(&["cm"])
            .without_status(),
        r("", "v1", "Secret", "secrets", true)
            .without_status()
            .with_field_labels(&["type"]),
        r("", "v1", "Service", "services", true).with_short(&["svc"]),
        r("", "v1", "ServiceAccount", "serviceaccounts", true)
            .with_short(&["sa"])
            .without_status(),
        r("", "v1", "Pod", "pods", true)
            .with_short(&["po"])
            .with_field_labels(&["status.phase", "spec.nodeName"]),
        r("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true).with_short(&["pvc"]),
        r("", "v1", "PersistentVolume", "persistentvolumes", false).with_short(&["pv"]),
        r("", "v1", "Event", "events", true).without_status(),
        r("", "v1", "PodTemplate", "podtemplates", true).without_status(),
        r("", "v1", "Endpoints", "endpoints", true)
            .with_short(&["ep"])
            .without_status(),
        r("apps", "v1", "Deployment", "deployments", true).with_short(&["deploy"]),
        r("apps", "v1", "StatefulSet", "statefulsets", true).with_short(&["sts"]),
        r("apps", "v1", "DaemonSet", "daemonsets", true).with_short(&["ds"]),
        r("apps", "v1", "ReplicaSet", "replicasets", true).with_short(&["rs"]),
        r("batch", "v1", "Job", "jobs", true),
        r("batch", "v1", "CronJob", "cronjobs", true).with_short(&["cj"]),
        r("networking.k8s.io", "v1", "Ingress", "ingresses", true).with_short(&["ing"]),
        r(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        )
        .with_short(&["netpol"])
        .without_status(),
        r("rbac.authorization.k8s.io", "v1", "Role", "roles", true).without_status(),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        )
        .without_status(),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        )
        .without_status(),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        )
        .without_status(),
        r("storage.k8s.io", "v1", "StorageClass", "storageclasses", false)
            .with_short(&["sc"])
            .without_status(),
        r("coordination.k8s.io", "v1", "Lease", "leases", true).without_status(),
        r(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .with_short(&["crd", "crds"]),
    ]
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object is gone.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in a store.
#[derive(Debug)]
pub struct Event {
    /// The store's resourceVersion after this change.
    pub rv: u64,
    /// Storage key of the type (`group/plural`).
    pub res: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for Deleted: the last state, with the new resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change (for selector transitions in watches).
    pub prev: Option<Arc<Value>>,
}

/// A field selector (`a.b=c,d!=e`).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    terms: Vec<(Vec<String>, bool, String)>,
}

impl FieldSelector {
    /// Parses a selector, checking its fields against what `ty` supports.
    pub fn parse(s: &str, ty: &ResourceType) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !ty.field_labels.iter().any(|l| l == field)
            {
                let mut known = vec![
                    "\"metadata.name\"".to_owned(),
                    "\"metadata.namespace\"".to_owned(),
                ];
                known.extend(ty.field_labels.iter().map(|l| format!("\"{l}\"")));
                return Err(ApiError::bad_request(format!(
                    "\"{field}\" is not a known field selector: only {}",
                    known.join(", ")
                )));
            }
            terms.push((
                field.split('.').map(str::to_owned).collect(),
                eq,
                value.trim().to_owned(),
            ));
        }
        Ok(Self { terms })
    }

    /// Whether `obj` matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(path, eq, want)| {
            let mut v = Some(obj);
            for seg in path {
                v = v.and_then(Value::as_object).and_then(|m| {
                    m.get(seg.as_str()).or_else(|| {
                        m.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(seg))
                            .map(|(_, v)| v)
                    })
                });
            }
            let got = match v {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

/// Label and field selectors of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// Label selector.
    pub labels: Option<LabelSelector>,
    /// Field selector.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether `obj` matches both.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels_ok = self.labels.as_ref().is_none_or(|sel| {
            sel.matches_with(|k| {
                obj.pointer("/metadata/labels")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
            })
        });
        labels_ok && self.fields.matches(obj)
    }
}

/// Preconditions of a delete.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// Required uid.
    pub uid: Option<String>,
    /// Required resourceVersion.
    pub resource_version: Option<String>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The objects.
    pub items: Vec<Arc<Value>>,
    /// The store's resourceVersion at the time of the list.
    pub resource_version: u64,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Objects after this page.
    pub remaining: Option<u64>,
}

type Key = (String, String, String);

/// The start of a watch: the backlog from the log, a receiver for later events, and the store's
/// resourceVersion when it started.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>, u64);

#[derive(Debug)]
struct Inner {
    rv: u64,
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Arc<Value>>,
    log: VecDeque<Arc<Event>>,
    log_cap: usize,
    /// Events with rv <= this are no longer in the log.
    compacted: u64,
}

/// A function that may amend every object the store is about to store (created, updated or
/// status-updated), for simulated controllers such as a simulated agent.
#[derive(Clone)]
pub struct WriteHook(pub Arc<WriteFn>);

/// The function of a [`WriteHook`].
pub type WriteFn = dyn Fn(&ResourceType, &mut Value) + Send + Sync;

impl std::fmt::Debug for WriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHook")
    }
}

/// A versioned object store with watch (see the module docs).
#[derive(Debug)]
pub struct ApiStore {
    hook: std::sync::OnceLock<WriteHook>,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
    interrupts: tokio::sync::watch::Sender<u64>,
    expired: std::sync::atomic::AtomicU64,
    watches_down: std::sync::atomic::AtomicBool,
}

/// Current UTC time as the API formats it (seconds precision).
pub fn now_rfc3339() -> String {
    pxb_core::clock::rfc3339(std::time::SystemTime::now())
}

/// `t` formatted as the API does (`2026-01-01T10:10:00Z`).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    pxb_core::clock::rfc3339(t.into())
}

/// A random RFC 4122 version-4 uid.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    let v = format!("4{}", &h(6..8)[1..]);
    let var = format!("{:x}{}", (b[8] & 0x3) | 0x8, &h(8..10)[1..]);
    format!("{}-{}-{v}-{var}-{}", h(0..4), h(4..6), h(10..16))
}

/// A DNS-1123 label part: lower-case alphanumerics and `-`, starting and ending alphanumeric.
fn dns_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// apimachinery's `IsDNS1123Subdomain`: at most 253, DNS labels joined by `.`.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label_chars)
}

/// apimachinery's `IsDNS1123Label`: at most 63, no dots.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && dns_label_chars(s)
}

/// apimachinery's `IsDNS1035Label` (Service names): a DNS-1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, the shape of label values and of the name part of
/// qualified names.
fn qualified_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

const QUALIFIED_NAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
     and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation \
     is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

const SUBDOMAIN_FMT: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
     or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// apimachinery's `IsQualifiedName` (label and annotation keys): the errors, empty when valid.
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if name.contains('/') {
        errs.push(format!("a qualified name {QUALIFIED_NAME_FMT} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
        return errs;
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".into());
        } else if p.len() > 253 {
            errs.push("prefix part must be no more than 253 characters".into());
        } else if !is_dns1123_subdomain(p) {
            errs.push(format!("prefix part {SUBDOMAIN_FMT}"));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 bytes".into());
    }
    if !name.is_empty() && !qualified_chars(name) {
        errs.push(QUALIFIED_NAME_FMT.into());
    }
    errs
}

/// A label key's errors: [`qualified_name_errors`], except that a key that is not of the
/// qualified-name shape is reported as kube-apiserver 1.37 does ("a valid label key ...").
pub fn label_key_errors(key: &str) -> Vec<String> {
    qualified_name_errors(key)
        .into_iter()
        .map(|e| match e.strip_prefix("a qualified name name part ") {
            Some(rest) => format!("a valid label key {rest}"),
            None => e,
        })
        .collect()
}

/// apimachinery's `IsValidLabelValue`: the errors, empty when valid.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 bytes".into());
    }
    if !value.is_empty() && !qualified_chars(value) {
        errs.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used \
             for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                .into(),
        );
    }
    errs
}

/// Whether `name` is valid for objects of `ty`: a DNS-1123 label for namespaces, a DNS-1035
/// label for services, a DNS-1123 subdomain otherwise.
fn name_error(ty: &ResourceType, name: &str) -> Option<String> {
    let core = ty.group.is_empty();
    if core && ty.kind == "Namespace" {
        // kube-apiserver 1.37's wording for a dotted namespace name.
        if name.contains('.') {
            return Some("must not contain dots".into());
        }
        return (!is_dns1123_label(name)).then(|| {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start \
             and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .to_owned()
        });
    }
    if core && ty.kind == "Service" {
        return (!is_dns1035_label(name)).then(|| {
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic \
             character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for \
             validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .to_owned()
        });
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    (!is_dns1123_subdomain(name)).then(|| SUBDOMAIN_FMT.to_owned())
}

/// The largest total size of an object's annotations (keys and values), as kube-apiserver checks.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// What kube-apiserver's `ValidateObjectMeta` refuses in `metadata.name` (when `check_name`),
/// `metadata.labels` and `metadata.annotations`: 422 Invalid, with apimachinery's messages.
fn validate_meta(ty: &ResourceType, obj: &Value, check_name: bool) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or_default();
    let mut errs: Vec<String> = Vec::new();
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    if check_name && let Some(e) = name_error(ty, name) {
        errs.push(format!("metadata.name: Invalid value: {}: {e}", q(name)));
    }
    let m = obj.get("metadata");
    match m.and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                for e in label_key_errors(k) {
                    errs.push(format!("metadata.labels: Invalid value: {}: {e}", q(k)));
                }
                match v.as_str() {
                    Some(v) => {
                        for e in label_value_errors(v) {
                            errs.push(format!("metadata.labels: Invalid value: {}: {e}", q(v)));
                        }
                    }
                    None => errs.push(format!("metadata.labels[{k}]: Invalid value: must be a string")),
                }
            }
        }
        Some(_) => errs.push("metadata.labels: Invalid value: must be an object".into()),
    }
    match m.and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(annotations)) => {
            let mut total = 0;
            for (k, v) in annotations {
                for e in qualified_name_errors(&k.to_ascii_lowercase()) {
                    errs.push(format!("metadata.annotations: Invalid value: {}: {e}", q(k)));
                }
                total += k.len() + v.as_str().map_or(0, str::len);
            }
            if total > MAX_ANNOTATIONS_BYTES {
                errs.push(format!(
                    "metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"
                ));
            }
        }
        Some(_) => errs.push("metadata.annotations: Invalid value: must be an object".into()),
    }
    if errs.is_empty() {
        return Ok(());
    }
    let kind = if ty.group.is_empty() {
        ty.kind.clone()
    } else {
        format!("{}.{}", ty.kind, ty.group)
    };
    let list = if errs.len() == 1 {
        errs.remove(0)
    } else {
        format!("[{}]", errs.join(", "))
    };
    Err(ApiError::invalid(format!(
        "{kind} {} is invalid: {list}",
        q(name)
    )))
}

fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

fn finalizers(obj: &Value) -> usize {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Everything except metadata and status, for generation bumps.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl ApiStore {
    /// A store serving `types`, keeping the default number of events.
    pub fn new(types: Vec<ResourceType>) -> Self {
        Self::with_event_log(types, DEFAULT_EVENT_LOG)
    }

    /// A store keeping `log_cap` events for watches.
    pub fn with_event_log(types: Vec<ResourceType>, log_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            hook: std::sync::OnceLock::new(),
            // Like a long-running API server, a store's history before it started is compacted:
            // a watch or a continue token from an earlier resourceVersion (e.g. 1) is 410 Gone.
            inner: Mutex::new(Inner {
                rv: FIRST_RESOURCE_VERSION,
                types,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                log_cap,
                compacted: FIRST_RESOURCE_VERSION,
            }),
            tx,
            interrupts: tokio::sync::watch::channel(0).0,
            expired: std::sync::atomic::AtomicU64::new(0),
            watches_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the write hook (once; later calls are ignored).
    pub fn set_write_hook(&self, hook: WriteHook) {
        let _ = self.hook.set(hook);
    }

    /// The served types (for discovery).
    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    /// The type served at `group/version/plural`.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the whole event log, so every watch from an older version gets 410 Gone.
    pub fn compact(&self) {
        let mut g = self.lock();
        g.log.clear();
        g.compacted = g.rv;
    }

    fn record(
        &self,
        g: &mut Inner,
        res: &str,
        ns: &str,
        kind: EventType,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        g.rv += 1;
        meta(&mut obj).insert("resourceVersion".into(), g.rv.to_string().into());
        let obj = Arc::new(obj);
        let ev = Arc::new(Event {
            rv: g.rv,
            res: res.to_owned(),
            namespace: ns.to_owned(),
            kind,
            object: obj.clone(),
            prev,
        });
        g.log.push_back(ev.clone());
        while g.log.len() > g.log_cap {
            if let Some(old) = g.log.pop_front() {
                g.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
        obj
    }

    /// Gets one object.
    pub fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Arc<Value>, ApiError> {
        let key = (ty.storage_key(), ns.unwrap_or("").to_owned(), name.to_owned());
        self.lock()
            .objects
            .get(&key)
            .map(|o| with_api_version(o, ty))
            .ok_or_else(|| ApiError::not_found(ty, name))
    }

    /// Lists objects of `ty` (in `ns`, or all namespaces), in key order, paged.
    pub fn list(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        sel: &Selectors,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let g = self.lock();
        let res = ty.storage_key();
        let (start, list_rv) = match continue_token.filter(|c| !c.is_empty()) {
            Some(c) => {
                let (rv, key) = decode_continue(c)?;
                if rv < g.compacted {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You \
                         can start a new list without the continue parameter.",
                    ));
                }
                (Some(key), rv)
            }
            None => (None, g.rv),
        };
        let lower = match (&start, ns) {
            (Some((sns, sname)), _) => (res.clone(), sns.clone(), sname.clone()),
            (None, Some(ns)) => (res.clone(), ns.to_owned(), String::new()),
            (None, None) => (res.clone(), String::new(), String::new()),
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0u64;
        for ((r, ons, name), obj) in g.objects.range(lower..) {
            if *r != res || ns.is_some_and(|n| n != ons) {
                break;
            }
            if start
                .as_ref()
                .is_some_and(|(sns, sname)| sns == ons && sname == name)
            {
                continue;
            }
            if !sel.matches(obj) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                if next.is_none() {
                    let (lns, lname) = items
                        .last()
                        .map(|o: &Arc<Value>| {
                            (
                                meta_str(o, "namespace").unwrap_or("").to_owned(),
                                meta_str(o, "name").unwrap_or("").to_owned(),
                            )
                        })
                        .unwrap_or_default();
                    next = Some(encode_continue(list_rv, &lns, &lname));
                }
                remaining += 1;
                continue;
            }
            items.push(with_api_version(obj, ty));
        }
        Ok(ListPage {
            items,
            resource_version: g.rv,
            continue_token: next,
            remaining: (remaining > 0).then_some(remaining),
        })
    }

    /// Creates an object. `dry_run` validates without storing.
    pub fn create(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_kind(ty, &obj)?;
        let ns = if ty.namespaced {
            let body_ns = meta_str(&obj, "namespace");
            match (ns, body_ns) {
                (Some(p), Some(b)) if p != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(p), _) => p.to_owned(),
                (None, Some(b)) => b.to_owned(),
                (None, None) => return Err(ApiError::bad_request("a namespace is required")),
            }
        } else {
            String::new()
        };
        let mut g = self.lock();
        {
            let m = meta(&mut obj);
            if m.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                match m.get("generateName").and_then(Value::as_str) {
                    Some(prefix) => {
                        let suffix: String = (0..5)
                            .map(|_| {
                                let c = b"bcdfghjklmnpqrstvwxz2456789";
                                c[rand::random_range(0..c.len())] as char
                            })
                            .collect();
                        m.insert("name".into(), format!("{prefix}{suffix}").into());
                    }
                    None => {
                        return Err(ApiError::invalid(
                            "metadata.name: Required value: name or generateName is required",
                        ));
                    }
                }
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
        validate_meta(ty, &obj, true)?;
        if ty.namespaced {
            let ns_type = ResourceType::new("", "v1", "Namespace", "namespaces", false);
            match g.objects.get(&(ns_type.storage_key(), String::new(), ns.clone())) {
                None => {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("namespaces \"{ns}\" not found"),
                    ));
                }
                Some(n) if meta_str(n, "deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is \
                             being terminated",
                            ty.qualified()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let key = (ty.storage_key(), ns.clone(), name.clone());
        if g.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", ty.qualified()),
            ));
        }
        if ty.is_crd() {
            validate_crd(&obj)?;
        }
        {
            let m = meta(&mut obj);
            m.insert("uid".into(), new_uid().into());
            m.insert("creationTimestamp".into(), now_rfc3339().into());
            m.insert("generation".into(), 1.into());
            if ty.namespaced {
                m.insert("namespace".into(), ns.clone().into());
            } else {
                m.remove("namespace");
            }
            m.remove("deletionTimestamp");
            m.remove("resourceVersion");
        }
        obj["apiVersion"] = ty.api_version().into();
        obj["kind"] = ty.kind.clone().into();
        if ty.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if ty.kind == "Namespace" && ty.group.is_empty() {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.clone().into();
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        if ty.is_crd() {
            let names = obj.pointer("/spec/names").cloned().unwrap_or(Value::Null);
            let stored: Vec<Value> = crd_versions(&obj)
                .into_iter()
                .filter(|(_, _, storage)| *storage)
                .map(|(v, _, _)| v.into())
                .collect();
            let now = now_rfc3339();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": stored,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
                ]
            });
        }
        if dry_run {
            return Ok(Arc::new(obj));
        }
        Ok(self.store(&mut g, ty, key, EventType::Added, obj, None))
    }

    /// Replaces an object (PUT), or its status when `status` is set. `mutate` may instead derive the
    /// new object from the current one (for patches); it runs under the store's lock, so patches
    /// are atomic.
    pub fn update_with(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        status: bool,
        dry_run: bool,
        mutate: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let ns = if ty.namespaced { ns.unwrap_or("") } else { "" };
        let key = (ty.storage_key(), ns.to_owned(), name.to_owned());
        let mut g = self.lock();
        let current = g
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(ty, name))?;
        let mut new = mutate(&with_api_version(&current, ty))?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_kind(ty, &new)?;
        if let Some(body_name) = meta_str(&new, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|r| !r.is_empty())
            && Some(rv) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::conflict(ty, name));
        }
        // Immutable and server-owned metadata.
        let cur_meta = current.get("metadata").cloned().unwrap_or_else(|| json!({}));
        {
            let m = meta(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "generation",
            ] {
                match cur_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
        if status {
            // Only status changes through the status subresource.
            let mut base = (*current).clone();
            base["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if base["status"].is_null()
                && let Some(m) = base.as_object_mut()
            {
                m.remove("status");
            }
            new = base;
        } else if ty.status_subresource {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if spec_part(&new) != spec_part(&current) {
            let generation = cur_meta.get("generation").and_then(Value::as_i64).unwrap_or(1) + 1;
            meta(&mut new).insert("generation".into(), generation.into());
        }
        new["apiVersion"] = ty.api_version().into();
        new["kind"] = ty.kind.clone().into();
        validate_meta(ty, &new, false)?;
        if ty.is_crd() {
            validate_crd(&new)?;
        }
        // No-op updates keep the version and send no event.
        let mut cmp = new.clone();
        meta(&mut cmp).insert(
            "resourceVersion".into(),
            cur_meta.get("resourceVersion").cloned().unwrap_or(Value::Null),
        );
        if cmp == *current || dry_run {
            return Ok(Arc::new(if dry_run { new } else { (*current).clone() }));
        }
        let terminating = cur_meta.get("deletionTimestamp").is_some();
        if terminating {
            let names = |o: &Value| -> Vec<String> {
                o.pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default()
            };
            let old = names(&current);
            let added: Vec<String> = names(&new).into_iter().filter(|f| !old.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(format!(
                    "{} \"{name}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the \
                     object is being deleted, found new finalizers {added:?}",
                    ty.kind
                )));
            }
        }
        if terminating && finalizers(&new) == 0 {
            let obj = self.remove(&mut g, &key, new);
            return Ok(obj);
        }
        Ok(self.store(&mut g, ty, key, EventType::Modified, new, Some(current)))
    }

    /// Stores a created or updated object (registering a CRD's types) and records the event.
    fn store(
        &self,
        g: &mut Inner,
        ty: &ResourceType,
        key: Key,
        kind: EventType,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        if ty.is_crd() {
            register_crd(g, &obj);
        }
        if let Some(h) = self.hook.get() {
            (h.0)(ty, &mut obj);
        }
        let stored = self.record(g, &key.0, &key.1, kind, obj, prev);
        g.objects.insert(key, stored.clone());
        stored
    }

    /// Deletes an object: with finalizers it is only marked (`deletionTimestamp`); a namespace
    /// terminates its content first.
    pub fn delete(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let ns = if ty.namespaced { ns.unwrap_or("") } else { "" };
        let key = (ty.storage_key(), ns.to_owned(), name.to_owned());
        let mut g = self.lock();
        let current = g
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(ty, name))?;
        let precondition = |what: &str, want: &str, have: &str| {
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the {what} in the precondition ({want}) does not \
                     match the {what} in record ({have}). The object might have been modified",
                    ty.kind
                ),
            )
        };
        let have = |k: &str| meta_str(&current, k).unwrap_or("").to_owned();
        if let Some(u) = pre.uid.as_deref().filter(|u| *u != have("uid")) {
            return Err(precondition("UID", u, &have("uid")));
        }
        if let Some(r) = pre
            .resource_version
            .as_deref()
            .filter(|r| *r != have("resourceVersion"))
        {
            return Err(precondition("ResourceVersion", r, &have("resourceVersion")));
        }
        if dry_run {
            return Ok(with_api_version(&current, ty));
        }
        Ok(self.delete_key(&mut g, &key, current))
    }

    fn delete_key(&self, g: &mut Inner, key: &Key, current: Arc<Value>) -> Arc<Value> {
        let is_ns = key.0 == "/namespaces";
        let pending = finalizers(&current) > 0 || is_ns;
        if !pending {
            return self.remove(g, key, (*current).clone());
        }
        if meta_str(&current, "deletionTimestamp").is_some() {
            return current;
        }
        let mut marked = (*current).clone();
        meta(&mut marked).insert("deletionTimestamp".into(), now_rfc3339().into());
        meta(&mut marked).insert("deletionGracePeriodSeconds".into(), 0.into());
        if is_ns {
            marked["status"] = json!({"phase": "Terminating"});
        }
        let stored = self.record(g, &key.0, &key.1, EventType::Modified, marked, Some(current));
        g.objects.insert(key.clone(), stored.clone());
        if is_ns {
            let ns = key.2.clone();
            let content: Vec<(Key, Arc<Value>)> = g
                .objects
                .iter()
                .filter(|((_, ons, _), _)| *ons == ns)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in content {
                self.delete_key(g, &k, v);
            }
            self.finish_namespace(g, &ns);
        }
        g.objects.get(key).cloned().unwrap_or(stored)
    }

    fn finish_namespace(&self, g: &mut Inner, ns: &str) {
        let key = ("/namespaces".to_owned(), String::new(), ns.to_owned());
        let Some(nsobj) = g.objects.get(&key).cloned() else {
            return;
        };
        if meta_str(&nsobj, "deletionTimestamp").is_none() || g.objects.keys().any(|(_, ons, _)| ons == ns) {
            return;
        }
        let mut last = (*nsobj).clone();
        last["spec"]["finalizers"] = json!([]);
        self.remove(g, &key, last);
    }

    fn remove(&self, g: &mut Inner, key: &Key, last: Value) -> Arc<Value> {
        let prev = g.objects.remove(key);
        if key.0 == "apiextensions.k8s.io/customresourcedefinitions" {
            unregister_crd(g, &last);
            // The CRD's objects go with it.
            if let (Some(group), Some(plural)) = (
                last.pointer("/spec/group").and_then(Value::as_str),
                last.pointer("/spec/names/plural").and_then(Value::as_str),
            ) {
                let res = format!("{group}/{plural}");
                let gone: Vec<(Key, Arc<Value>)> = g
                    .objects
                    .iter()
                    .filter(|((r, _, _), _)| *r == res)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in gone {
                    g.objects.remove(&k);
                    self.record(g, &k.0, &k.1, EventType::Deleted, (*v).clone(), Some(v));
                }
            }
        }
        let obj = self.record(g, &key.0, &key.1, EventType::Deleted, last, prev);
        if !key.1.is_empty() {
            self.finish_namespace(g, &key.1.clone());
        }
        obj
    }

    /// Starts a watch of `ty`: the events after `rv` still in the log, and a receiver for later
    /// ones. `None` when `rv` is older than the log (the caller answers 410 Gone).
    pub fn watch_from(&self, ty: &ResourceType, rv: u64) -> Option<WatchStart> {
        let g = self.lock();
        if rv < g.compacted {
            self.expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        let rx = self.tx.subscribe();
        let res = ty.storage_key();
        let backlog = g
            .log
            .iter()
            .filter(|e| e.rv > rv && e.res == res)
            .cloned()
            .collect();
        Some((backlog, rx, g.rv))
    }

    /// Ends every open watch (as an API server restart does); clients reconnect from their last
    /// resourceVersion.
    pub fn interrupt_watches(&self) {
        self.interrupts.send_modify(|n| *n += 1);
    }

    /// A receiver that changes when [`ApiStore::interrupt_watches`] is called.
    pub fn watch_interrupts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.interrupts.subscribe()
    }

    /// While `down`, open watches end and new ones are refused with 503 (lists still work): lets
    /// a test make changes and compact the log while a client cannot follow.
    pub fn set_watches_down(&self, down: bool) {
        self.watches_down
            .store(down, std::sync::atomic::Ordering::Relaxed);
        if down {
            self.interrupt_watches();
        }
    }

    /// Whether watches are refused (see [`ApiStore::set_watches_down`]).
    pub fn watches_down(&self) -> bool {
        self.watches_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many watches were answered 410 Gone.
    pub fn expired_watches(&self) -> u64 {
        self.expired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The oldest resourceVersion a watch can resume from.
    pub fn compacted(&self) -> u64 {
        self.lock().compacted
    }
}

impl ResourceType {
    fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }
}

/// Objects are stored version-agnostic; answer with the version that was asked for.
fn with_api_version(obj: &Arc<Value>, ty: &ResourceType) -> Arc<Value> {
    if obj.get("apiVersion").and_then(Value::as_str) == Some(ty.api_version().as_str()) {
        return obj.clone();
    }
    let mut o = (**obj).clone();
    o["apiVersion"] = ty.api_version().into();
    Arc::new(o)
}

fn check_kind(ty: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != ty.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the resource ({})",
            ty.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        let group = av.rsplit_once('/').map_or("", |(g, _)| g);
        if group != ty.group {
            return Err(ApiError::bad_request(format!(
                "the API version of the object ({av}) does not match the resource ({})",
                ty.api_version()
            )));
        }
    }
    Ok(())
}

fn crd_versions(crd: &Value) -> Vec<(String, bool, bool)> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| {
                    Some((
                        v.get("name")?.as_str()?.to_owned(),
                        v.get("served").and_then(Value::as_bool).unwrap_or(true),
                        v.get("storage").and_then(Value::as_bool).unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn validate_crd(crd: &Value) -> Result<(), ApiError> {
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or("");
    let (group, plural, kind, scope) = (
        s("/spec/group"),
        s("/spec/names/plural"),
        s("/spec/names/kind"),
        s("/spec/scope"),
    );
    let name = s("/metadata/name");
    let mut problems = Vec::new();
    if group.is_empty() {
        problems.push("spec.group: Required value".to_owned());
    }
    if plural.is_empty() {
        problems.push("spec.names.plural: Required value".to_owned());
    }
    if kind.is_empty() {
        problems.push("spec.names.kind: Required value".to_owned());
    }
    if scope != "Namespaced" && scope != "Cluster" {
        problems.push(format!(
            "spec.scope: Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""
        ));
    }
    let versions = crd_versions(crd);
    if versions.iter().filter(|v| v.2).count() != 1 {
        problems.push(
            "spec.versions: Invalid value: must have exactly one version marked as storage version".into(),
        );
    }
    // Like kube-apiserver, a schema's defaults must satisfy the schema (enums, nested).
    for (i, v) in crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
            defaults_follow_schema(
                schema,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                &mut problems,
            );
        }
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        problems.push(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: {}",
            problems.join(", ")
        )))
    }
}

/// Every `default` under `schema` (at `path`) checked against the schema node it belongs to.
fn defaults_follow_schema(schema: &Value, path: &str, problems: &mut Vec<String>) {
    if let Some(d) = schema.get("default") {
        value_follows_schema(schema, d, &format!("{path}.default"), problems);
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            defaults_follow_schema(sub, &format!("{path}.properties[{k}]"), problems);
        }
    }
    if let Some(items) = schema.get("items") {
        defaults_follow_schema(items, &format!("{path}.items"), problems);
    }
}

/// `value` checked against `schema`'s enums, property by property (what the real server
/// reports as `Unsupported value` for a default).
fn value_follows_schema(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
        problems.push(format!(
            "{path}: Unsupported value: {value}: supported values: {}",
            supported.join(", ")
        ));
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (k, v) in obj {
            if let Some(sub) = props.get(k) {
                value_follows_schema(sub, v, &format!("{path}.{k}"), problems);
            }
        }
    }
}

fn register_crd(g: &mut Inner, crd: &Value) {
    unregister_crd(g, crd);
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
    let group = s("/spec/group");
    for (version, served, _) in crd_versions(crd) {
        if !served {
            continue;
        }
        let vdef = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("name").and_then(Value::as_str) == Some(&version))
            });
        let status = vdef.and_then(|v| v.pointer("/subresources/status")).is_some();
        let strings = |p: &str| -> Vec<String> {
            crd.pointer(p)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let short = strings("/spec/names/shortNames");
        let singular = match s("/spec/names/singular") {
            x if x.is_empty() => s("/spec/names/kind").to_lowercase(),
            x => x,
        };
        g.types.push(ResourceType {
            group: group.clone(),
            version,
            kind: s("/spec/names/kind"),
            plural: s("/spec/names/plural"),
            singular,
            namespaced: s("/spec/scope") == "Namespaced",
            status_subresource: status,
            short_names: short,
            field_labels: Vec::new(),
            extra_subresources: Vec::new(),
            printer_columns: vdef
                .and_then(|v| v.get("additionalPrinterColumns"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            categories: strings("/spec/names/categories"),
        });
    }
}

fn unregister_crd(g: &mut Inner, crd: &Value) {
    let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    g.types.retain(|t| !(t.group == group && t.plural == plural));
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": ns, "name": name}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid continue token: continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = v.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
    let name = v.get("name").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, (ns.to_owned(), name.to_owned())))
}
