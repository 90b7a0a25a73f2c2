//! What every controller of the agent shares: the controller loop, status writes, heartbeats
//! while an operation runs, and the reconcile error.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

/// `v` with an explicit `null` for each of `keys` it lacks, so a merge patch clears old values.
pub(crate) fn with_nulls(v: impl serde::Serialize, keys: &[&str]) -> Value {
    let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.entry(*k).or_insert(Value::Null);
        }
    }
    v
}

/// `value` (from an object's spec) as a span field: itself when it is a plain name (at most 253
/// letters, digits, `.`, `-`, `_` or `:`), else `"(invalid)"`, so a hostile spec cannot forge or
/// break a log line. The controllers' reconciles run in spans named by their objects' names and
/// these (`location`, `backup`, `restore`).
pub(crate) fn span_field(value: &str) -> &str {
    let plain = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if plain { value } else { "(invalid)" }
}

/// Runs `op`, calling `beat` every `every` until it finishes.
pub(crate) async fn with_heartbeat<T, B: Future<Output = ()>>(
    op: impl Future<Output = T>,
    every: Duration,
    beat: impl Fn() -> B,
) -> T {
    tokio::pin!(op);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut op => return r,
            _ = tick.tick() => beat().await,
        }
    }
}

/// Runs a controller over `api` with `reconcile`, retrying a failed reconcile after 10 s (with a
/// warning naming `what`), until the returned task is aborted.
pub(crate) fn spawn_controller<K, C, F>(
    what: &'static str,
    api: kube::Api<K>,
    reconcile: impl FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> F + Send + 'static,
    ctx: std::sync::Arc<C>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    C: Send + Sync + 'static,
    F: Future<Output = Result<kube::runtime::controller::Action, ReconcileError>> + Send + 'static,
{
    spawn_controller_with_store(what, api, reconcile, ctx).0
}

/// [`spawn_controller`], also returning the controller's cache of the objects it watches (the
/// controller does not reconcile an object once it is deleted: the cache says it is gone).
pub(crate) fn spawn_controller_with_store<K, C, F>(
    what: &'static str,
    api: kube::Api<K>,
    reconcile: impl FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> F + Send + 'static,
    ctx: std::sync::Arc<C>,
) -> (tokio::task::JoinHandle<()>, kube::runtime::reflector::Store<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    C: Send + Sync + 'static,
    F: Future<Output = Result<kube::runtime::controller::Action, ReconcileError>> + Send + 'static,
{
    use futures::StreamExt as _;
    use kube::ResourceExt as _;
    let error_policy = move |obj: std::sync::Arc<K>, err: &ReconcileError, _: std::sync::Arc<C>| {
        tracing::warn!(object = %obj.name_any(), error = %err, "{what} reconcile failed; retrying in 10 s");
        kube::runtime::controller::Action::requeue(Duration::from_secs(10))
    };
    let controller = kube::runtime::Controller::new(api, kube::runtime::watcher::Config::default());
    let store = controller.store();
    // In the caller's span (the agent's): every reconcile's span is inside it.
    let running = async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "{what} controller");
                }
            })
            .await;
    };
    let task = tokio::spawn(tracing::Instrument::in_current_span(running));
    (task, store)
}

/// Merges `status` into the status subresource of `name` in the agent's namespace.
pub(crate) async fn merge_status<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    status: Value,
) -> Result<(), ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), namespace);
    let patch = kube::api::Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(name, &kube::api::PatchParams::default(), &patch)
        .await
        .map(|_| ())
        .map_err(|e| ReconcileError::new(format!("writing the status of {} {name}: {e}", K::kind(&()))))
}

/// Errors of a reconcile (status writes that failed); retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReconcileError(pub(crate) String);

impl ReconcileError {
    /// An error with this message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
