//! The location controller: one `BackupLocation` → one object store, validated on request
//! (`spec.validateRequest` ≠ `status.observedValidateRequest`), when its spec changes, and every
//! `validate_interval`; the result goes to `status.validation`.
//!
//! A location that cannot even be built (unknown provider, missing container, missing Secret) is
//! `Invalid` at the `configure` step with the reason, and is looked at again only when it changes
//! or the interval passes: no crash loop, no hot retry loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig, HttpSettings, STORAGE_SCOPE};
use pxb_core::{CheckOptions, LocalFileSystem, ObjectStore, TokenSource, check_location};
use serde_json::json;

use super::{AgentConfig, now_rfc3339, parse_rfc3339};
use crate::crd::{BackupLocation, BackupLocationSpec, ValidationStatus};

/// What the location controller shares between reconciles.
pub struct Context {
    /// The cluster's API.
    pub client: kube::Client,
    /// The agent's settings.
    pub config: AgentConfig,
    validations: AtomicU64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client` and `config`.
    pub fn new(client: kube::Client, config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            config,
            validations: AtomicU64::new(0),
        })
    }

    /// Validations run so far (each one talks to the location).
    pub fn validations(&self) -> u64 {
        self.validations.load(Ordering::Relaxed)
    }
}

/// A location's store, ready to use.
#[derive(Debug, Clone)]
pub struct OpenedLocation {
    /// `azblob://container/prefix` or `file:///path`, for messages.
    pub display: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The credential, when the store uses one (for an explicit authentication step).
    pub token: Option<Arc<dyn TokenSource>>,
}

/// Builds the store a `BackupLocation` describes. The error is the reason, for humans.
pub async fn open(spec: &BackupLocationSpec, ctx: &Context) -> Result<OpenedLocation, String> {
    let container = spec.container.trim();
    if container.is_empty() {
        return Err(
            "spec.container is empty: name the Azure container, or the directory for provider file".into(),
        );
    }
    let prefix = spec.prefix.as_deref().unwrap_or("").trim_matches('/').to_owned();
    match spec.provider.as_str() {
        "file" => {
            if !container.starts_with('/') {
                return Err(format!(
                    "spec.container {container:?} must be an absolute directory for provider file"
                ));
            }
            let dir = std::path::Path::new(container).join(&prefix);
            let store = LocalFileSystem::new(&dir).map_err(|e| e.to_string())?;
            Ok(OpenedLocation {
                display: format!("file://{}", dir.display()),
                store: Arc::new(store),
                token: None,
            })
        }
        "azure" => {
            let account = spec
                .account
                .clone()
                .filter(|a| !a.trim().is_empty())
                .or_else(|| spec.endpoint.as_deref().and_then(crate::location::infer_account))
                .ok_or("spec.account is empty and cannot be taken from spec.endpoint")?;
            let auth = match spec.auth.mode.as_str() {
                "workloadIdentity" => {
                    let mut wi = ctx.config.workload_identity.clone();
                    if let Some(id) = spec.auth.client_id.clone().filter(|c| !c.trim().is_empty()) {
                        wi.client_id = Some(id);
                    }
                    if let Some(t) = spec.auth.tenant_id.clone().filter(|t| !t.trim().is_empty()) {
                        wi.tenant_id = Some(t);
                    }
                    AzureAuth::WorkloadIdentity(wi)
                }
                "secretRef" => secret_auth(spec, ctx).await?,
                other => {
                    return Err(format!(
                        "spec.auth.mode {other:?} is not supported; use workloadIdentity or secretRef"
                    ));
                }
            };
            let mut config = AzureConfig::new(account, container, auth);
            config.endpoint = spec.endpoint.clone().filter(|e| !e.trim().is_empty());
            config.prefix = prefix.clone();
            config.ca_file = ctx.config.ca_file.clone();
            config.http = HttpSettings {
                max_retries: ctx.config.max_retries,
                ..HttpSettings::default()
            };
            let store = AzureBlobStore::new(config).map_err(|e| e.to_string())?;
            let token = store.token_source();
            let display = if prefix.is_empty() {
                format!("azblob://{container}")
            } else {
                format!("azblob://{container}/{prefix}")
            };
            Ok(OpenedLocation {
                display,
                store: Arc::new(store),
                token,
            })
        }
        other => Err(format!("unknown provider {other:?}; expected azure or file")),
    }
}

async fn secret_auth(spec: &BackupLocationSpec, ctx: &Context) -> Result<AzureAuth, String> {
    let name = spec
        .auth
        .secret_ref
        .as_ref()
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty())
        .ok_or("spec.auth.secretRef.name is required for auth mode secretRef")?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let secret = secrets
        .get(&name)
        .await
        .map_err(|e| format!("reading Secret {}/{name}: {e}", ctx.config.namespace))?;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(key) = text("accountKey") {
        Ok(AzureAuth::SharedKey { key })
    } else if let Some(token) = text("sasToken") {
        Ok(AzureAuth::Sas { token })
    } else {
        Err(format!(
            "Secret {}/{name} has neither accountKey nor sasToken",
            ctx.config.namespace
        ))
    }
}

/// Validates a location: builds it, then runs the location check (authenticate, list, write,
/// read back, delete), each step with the configured deadline.
pub async fn validate(spec: &BackupLocationSpec, ctx: &Context) -> ValidationStatus {
    ctx.validations.fetch_add(1, Ordering::Relaxed);
    let invalid = |step: &str, reason: String| ValidationStatus {
        phase: "Invalid".into(),
        failed_step: Some(step.into()),
        reason: Some(reason),
        last_checked: Some(now_rfc3339()),
    };
    let loc = match open(spec, ctx).await {
        Ok(l) => l,
        Err(reason) => return invalid("configure", reason),
    };
    let opts = CheckOptions {
        step_timeout: ctx.config.step_timeout,
        scopes: vec![STORAGE_SCOPE.into()],
    };
    let report = check_location(&loc.display, loc.store.as_ref(), loc.token.as_deref(), &opts).await;
    match report.first_failure() {
        None if report.passed => ValidationStatus {
            phase: "Valid".into(),
            failed_step: None,
            reason: None,
            last_checked: Some(now_rfc3339()),
        },
        None => invalid("check", "the check did not pass".into()),
        Some(step) => invalid(step.step.name(), step.detail.clone()),
    }
}

/// Errors of a reconcile (status writes that failed); retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(String);

async fn reconcile(loc: Arc<BackupLocation>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let interval = ctx.config.validate_interval;
    let status = loc.status.clone().unwrap_or_default();
    let generation = loc.meta().generation.unwrap_or(0);
    let last = status
        .validation
        .as_ref()
        .and_then(|v| v.last_checked.as_deref())
        .and_then(parse_rfc3339);
    let now = time::OffsetDateTime::now_utc();
    let next = last.map(|t| t + interval);
    let due = loc.spec.validate_request != status.observed_validate_request
        || status.observed_generation != generation
        || next.is_none_or(|n| n <= now);
    if !due {
        let wait = next.map_or(interval, |n| Duration::try_from(n - now).unwrap_or(interval));
        return Ok(Action::requeue(wait.max(Duration::from_secs(1))));
    }
    let validation = validate(&loc.spec, &ctx).await;
    tracing::info!(location = %loc.name_any(), phase = %validation.phase,
                   step = ?validation.failed_step, reason = ?validation.reason, "location validated");
    let api: Api<BackupLocation> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let patch = json!({"status": {
        "validation": validation,
        "observedValidateRequest": loc.spec.validate_request,
        "observedGeneration": generation,
    }});
    api.patch_status(&loc.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| ReconcileError(format!("writing the status of location {}: {e}", loc.name_any())))?;
    Ok(Action::requeue(interval))
}

fn error_policy(loc: Arc<BackupLocation>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(location = %loc.name_any(), error = %err, "location reconcile failed; retrying in 10 s");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the location controller until the returned task is aborted.
pub fn spawn(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    let api: Api<BackupLocation> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    tokio::spawn(async move {
        Controller::new(api, watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "location controller");
                }
            })
            .await;
    })
}
