//! The typed client of pxb-server's REST API: `pxb._pxb.ApiClient`, over
//! [`pxb_daemon::client::Client`].
//!
//! Each call names a method of the Rust client (`create_org`, `list_backups`, …), its path
//! parameters, and its query and body as JSON text; the body and query are decoded into the
//! method's own Rust types (so a malformed one is `pxb.Invalid` before anything is sent), the
//! method is called, and its answer comes back as JSON text. `pxb.Client` (python/pxb/client.py)
//! turns that into the dataclasses of `pxb.models`, which are generated from the same API
//! description (`docs/openapi.json`).
//!
//! A failure is the `pxb.PxbError` subclass of the API's error code (`forbidden` →
//! `PermissionDenied`, `not_found` → `NotFound`, …), with the message `pxb` prints for it, and
//! the attributes `status` (the HTTP status, or `None`) and `code` (the API's code, or `None`).

use std::time::Duration;

use pxb_core::api::rest::{
    BackupRequest, CreateDiscovery, CreateLocation, CreateOrg, DeleteQuery, ImportCluster, ListQuery,
    RestoreRequest, ScheduleRequest, SyncRequestBody, UpdateLocation, UpdateOrg, UpdatePreferences,
    UpdateSchedule,
};
use pxb_daemon::client::{Client, ClientError};
use pyo3::prelude::*;
use serde::de::DeserializeOwned;

use crate::errors;
use crate::runtime;

/// The Python exception of a failed call: the class of the API's error code, the message `pxb`
/// prints, and `status` and `code` attributes.
fn client_err(e: ClientError) -> PyErr {
    let message = e.to_string();
    let status = e.status();
    let code = e.code().map(|c| c.as_str().to_owned());
    use pxb_core::Error as E;
    let err = match pxb_core::Error::from(e) {
        E::NotFound { .. } => errors::NotFound::new_err(message),
        E::AlreadyExists { .. } => errors::AlreadyExists::new_err(message),
        E::Precondition { .. } => errors::Precondition::new_err(message),
        E::Unauthenticated { .. } => errors::Unauthenticated::new_err(message),
        E::PermissionDenied { .. } => errors::PermissionDenied::new_err(message),
        E::Throttled { .. } => errors::Throttled::new_err(message),
        E::Unavailable { .. } => errors::Unavailable::new_err(message),
        E::Invalid { .. } => errors::Invalid::new_err(message),
        E::Corrupt { .. } => errors::Corrupt::new_err(message),
        E::Io { .. } => errors::IoError::new_err(message),
        _ => errors::PxbError::new_err(message),
    };
    Python::attach(|py| {
        let value = err.value(py);
        // Attributes of a fresh exception instance: setting them cannot fail in practice, and
        // the exception is still right without them.
        let _ = value.setattr("status", status);
        let _ = value.setattr("code", code);
    });
    err
}

/// `json` (or the type's default when `None`) as `T`; `pxb.Invalid` naming `what` otherwise.
fn decode<T: DeserializeOwned>(what: &str, json: Option<&str>, default: Option<T>) -> PyResult<T> {
    match (json, default) {
        (Some(text), _) => serde_json::from_str(text)
            .map_err(|e| errors::Invalid::new_err(format!("the {what} is not valid: {e}"))),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(errors::Invalid::new_err(format!("this call needs a {what}"))),
    }
}

/// `call!(client, method, path, query, body; name[params] (query: Q)? (body: B)?, …)`: one
/// arm per method of the Rust client; decodes the query and body into its types, checks the
/// number of path parameters, calls it and encodes its answer as JSON.
macro_rules! calls {
    ($c:ident, $method:ident, $path:ident, $query:ident, $body:ident;
     $( $name:ident [$($p:ident),*] $(, query: $q:ty)? $(, body: $b:ty)? ; )*) => {
        /// The names of the methods `call` dispatches to.
        const METHODS: &[&str] = &[$(stringify!($name)),*];

        async fn dispatch($c: Client, $method: String, $path: Vec<String>, $query: Option<String>, $body: Option<String>) -> PyResult<String> {
            let _ = (&$query, &$body);
            match $method.as_str() {
                $(
                    stringify!($name) => {
                        let params: Vec<&str> = $path.iter().map(String::as_str).collect();
                        let [$($p),*] = params.as_slice() else {
                            let want: &[&str] = &[$(stringify!($p)),*];
                            return Err(errors::Invalid::new_err(format!(
                                "{} takes {} path parameters ({}), not {}",
                                stringify!($name), want.len(), want.join(", "), params.len()
                            )));
                        };
                        $( let q: $q = decode("query", $query.as_deref(), Some(<$q>::default()))?; )?
                        $( let b: $b = decode("body", $body.as_deref(), None)?; )?
                        let answer = $c.$name($($p,)* $({ let _: Option<$q> = None; &q },)? $({ let _: Option<$b> = None; &b },)?)
                            .await
                            .map_err(client_err)?;
                        serde_json::to_string(&answer)
                            .map_err(|e| errors::PxbError::new_err(format!("encoding the answer: {e}")))
                    }
                )*
                other => Err(errors::Invalid::new_err(format!("the client has no method {other:?}"))),
            }
        }
    };
}

calls! { c, method, path, query, body;
    whoami[];
    preferences[];
    update_preferences[], body: UpdatePreferences;
    fleet_status[], query: ListQuery;
    list_orgs[], query: ListQuery;
    create_org[], body: CreateOrg;
    get_org[org];
    update_org[org], body: UpdateOrg;
    list_discoveries[org], query: ListQuery;
    create_discovery[org], body: CreateDiscovery;
    get_discovery[org, name];
    delete_discovery[org, name];
    list_clusters[org], query: ListQuery;
    import_cluster[org], body: ImportCluster;
    get_cluster[org, name];
    remove_cluster[org, name];
    list_locations[org], query: ListQuery;
    create_location[org], body: CreateLocation;
    get_location[org, name];
    update_location[org, name], body: UpdateLocation;
    delete_location[org, name];
    location_status[org, name], query: ListQuery;
    validate_location[org, name];
    sync_location[org, name], body: SyncRequestBody;
    verify_location[org, name];
    list_backups[org], query: ListQuery;
    create_backups[org], body: BackupRequest;
    get_backup[org, id];
    delete_backup[org, id], query: DeleteQuery;
    list_restores[org], query: ListQuery;
    create_restore[org], body: RestoreRequest;
    get_restore[org, id];
    list_schedules[org], query: ListQuery;
    create_schedule[org], body: ScheduleRequest;
    get_schedule[org, name];
    update_schedule[org, name], body: UpdateSchedule;
    delete_schedule[org, name];
}

/// A client of one pxb-server with one identity (the native half of `pxb.Client`).
#[pyclass(frozen, module = "pxb._pxb", name = "ApiClient")]
pub struct ApiClient {
    client: Client,
}

#[pymethods]
impl ApiClient {
    /// A client of the server at `server` (e.g. `https://pxb.example.net`) with the bearer
    /// `token`, also trusting the CAs of `ca_pem` (a PEM bundle), with a deadline of `timeout`
    /// seconds per call. Nothing is sent yet.
    #[new]
    #[pyo3(signature = (server, *, token = None, ca_pem = None, timeout = 60.0))]
    fn new(server: String, token: Option<String>, ca_pem: Option<String>, timeout: f64) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(errors::Invalid::new_err(
                "timeout must be a positive number of seconds",
            ));
        }
        let mut b = Client::builder(server)
            .maybe_token(token)
            .timeout(Duration::from_secs_f64(timeout));
        if let Some(pem) = ca_pem {
            b = b.ca_pem(pem);
        }
        // Building the HTTP client needs no runtime, but its connection pool belongs to the
        // shared one.
        let _guard = runtime::runtime().enter();
        let client = b.build().map_err(client_err)?;
        Ok(Self { client })
    }

    /// The server's base URL.
    #[getter]
    fn server(&self) -> &str {
        self.client.base()
    }

    /// The names of the methods `call` knows (every endpoint of the API).
    #[staticmethod]
    fn methods() -> Vec<&'static str> {
        METHODS.to_vec()
    }

    /// This client with another bearer token (same connections).
    fn with_token(&self, token: String) -> Self {
        Self {
            client: self.client.with_token(token),
        }
    }

    /// Calls `method` with its path parameters, query (JSON object text) and body (JSON
    /// text); returns the answer as JSON text.
    #[pyo3(signature = (method, path, query = None, body = None))]
    fn call(
        &self,
        py: Python<'_>,
        method: String,
        path: Vec<String>,
        query: Option<String>,
        body: Option<String>,
    ) -> PyResult<String> {
        runtime::block(py, dispatch(self.client.clone(), method, path, query, body))
    }

    /// `call` as a coroutine.
    #[pyo3(signature = (method, path, query = None, body = None))]
    async fn call_async(
        &self,
        method: String,
        path: Vec<String>,
        query: Option<String>,
        body: Option<String>,
    ) -> PyResult<String> {
        runtime::spawned(dispatch(self.client.clone(), method, path, query, body)).await
    }

    fn __repr__(&self) -> String {
        format!("ApiClient(server={:?})", self.client.base())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ApiClient>()?;
    Ok(())
}
