//! A typed async client for `pxb-server`'s REST API.
//!
//! Every method calls one endpoint of [`pxb_core::api::rest`] and returns its response type;
//! every failure is a [`ClientError`] that keeps the API's stable [`ErrorCode`] and message. The
//! `pxb` command line, `pxb demo` and the scenario tests use it; so can a provider's automation.
//!
//! ```no_run
//! use pxb_core::api::rest::ListQuery;
//! use pxb_daemon::client::Client;
//!
//! # async fn run() -> Result<(), pxb_daemon::client::ClientError> {
//! let client = Client::builder("https://pxb.example.net").token("eyJ…").build()?;
//! let c = &client;
//! for org in client.whoami().await?.orgs.keys() {
//!     // Every page of the org's clusters.
//!     let clusters = c
//!         .all(ListQuery::default(), |q| async move { c.list_clusters(org, &q).await })
//!         .await?;
//!     println!("{org}: {} clusters", clusters.len());
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use pxb_core::api::rest::{self, Endpoint, ErrorBody, ErrorCode};
use pxb_core::api::rest::{
    BackupRequest, CreateDiscovery, CreateLocation, CreateOrg, DeleteOutcome, DeleteQuery, DiscoveryView,
    FleetStatusView, ImportCluster, List, ListQuery, LocationView, OrgView, PreferencesView, RestoreRequest,
    ScheduleRequest, SyncRequestBody, UpdateLocation, UpdateOrg, UpdatePreferences, UpdateSchedule, WhoAmI,
};
use pxb_core::catalog::records::{
    BackupRecord, ClusterRecord, LocationStatus, RestoreRecord, ScheduleRecord, SyncRun,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} ({status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's stable code; `None` when the answer was not the API's error body (a proxy
        /// in between, for example).
        code: Option<ErrorCode>,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// What was called.
        url: String,
        /// Why, for humans.
        message: String,
    },
    /// The answer was not what the endpoint returns.
    #[error("{url} answered {status} with a body that is not its {expected}: {message}")]
    Decode {
        /// What was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The type expected.
        expected: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The server answered with a success status the endpoint does not return (a proxy in
    /// between, or a server of another version).
    #[error("{url} answered {status}, not the {expected} its endpoint returns")]
    UnexpectedStatus {
        /// What was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The endpoint's status.
        expected: u16,
    },
    /// The client was built or called with something invalid (a URL, a CA bundle, a name that
    /// is not one path segment).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The API's code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => *code,
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. }
            | ClientError::Decode { status, .. }
            | ClientError::UnexpectedStatus { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's message, or this error's.
    pub fn message(&self) -> String {
        match self {
            ClientError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

impl From<ClientError> for pxb_core::Error {
    /// The library's error of the same kind ([`ErrorCode::error`]); a server that cannot be
    /// reached is [`pxb_core::Error::Unavailable`].
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Api {
                code: Some(code),
                message,
                ..
            } => code.error(message),
            ClientError::Api { status, message, .. } => {
                match ErrorCode::ALL.iter().find(|c| c.status() == *status) {
                    Some(code) => code.error(message),
                    None => pxb_core::Error::other(e.to_string()),
                }
            }
            ClientError::Unreachable { .. } => pxb_core::Error::unavailable(e.to_string()),
            ClientError::Decode { .. } | ClientError::UnexpectedStatus { .. } => {
                pxb_core::Error::other(e.to_string())
            }
            ClientError::Config(_) => pxb_core::Error::invalid(e.to_string()),
        }
    }
}

/// Called after every answer with the operation and the HTTP status (errors included): for
/// metrics, logs or tests of what an automation called.
pub type ResponseHook = std::sync::Arc<dyn Fn(&rest::Operation, u16) + Send + Sync>;

/// Builds a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    ca_pem: Vec<u8>,
    timeout: Duration,
    connect_timeout: Duration,
    hook: Option<ResponseHook>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A bearer token (from the OIDC issuer, or the server's development token).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// An optional bearer token.
    pub fn maybe_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Also trust the CAs of this PEM bundle (the system's roots stay trusted).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = pem.into();
        self
    }

    /// The deadline of one call (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Calls `hook` after every answer (see [`ResponseHook`]).
    pub fn on_response(mut self, hook: ResponseHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The deadline to connect (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, ClientError> {
        let base = url::Url::parse(&self.base)
            .map_err(|e| ClientError::Config(format!("the server URL {:?} is not a URL: {e}", self.base)))?;
        if !matches!(base.scheme(), "http" | "https") || base.query().is_some() {
            return Err(ClientError::Config(format!(
                "the server URL {:?} must be http(s) without a query",
                self.base
            )));
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout);
        if !self.ca_pem.is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(&self.ca_pem)
                .map_err(|e| ClientError::Config(format!("the CA bundle is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(ClientError::Config("the CA bundle holds no certificate".into()));
            }
            http = http.tls_certs_merge(certs);
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: self.base.trim_end_matches('/').to_owned(),
            token: self.token,
            hook: self.hook,
        })
    }
}

/// A client of one server, with one identity.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    hook: Option<ResponseHook>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `Some(query)` when the method takes a query, else a typed `None`.
macro_rules! query_arg {
    ($q:ident) => {
        None::<&()>
    };
    ($q:ident, $t:ty) => {
        Some($q)
    };
}

/// `Some(body)` when the method takes a body, else `None`.
macro_rules! body_arg {
    ($b:ident) => {
        None
    };
    ($b:ident, $t:ty) => {
        Some($b)
    };
}

/// `name(path parameters; query: Q; body: B) -> Response = ENDPOINT;`: one method per endpoint.
/// The response type is checked against the endpoint's own, so it cannot differ.
macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $name:ident($($param:ident),* $(; query: $q:ty)? $(; body: $b:ty)?) -> $r:ty = $ep:ident;
    )*) => {
        impl Client {
            $(
                $(#[$doc])*
                #[doc = concat!("\n\n`", stringify!($ep), "`: see [`rest::", stringify!($ep), "`].")]
                pub async fn $name(&self $(, $param: &str)* $(, query: &$q)? $(, body: &$b)?) -> Result<$r, ClientError> {
                    self.send(&rest::$ep, &[$($param),*], query_arg!(query $(, $q)?), body_arg!(body $(, $b)?)).await
                }
            )*

            /// The operation ids of the endpoints this client has a method for.
            pub const OPERATIONS: &'static [&'static str] = &[$(rest::$ep.operation().id),*];
        }
    };
}

impl Client {
    /// A builder for the server at `base` (e.g. `https://pxb.example.net`).
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            token: None,
            ca_pem: Vec::new(),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            hook: None,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// This client with another bearer token (same connection pool).
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// Calls `endpoint` with its path parameters filled in order, an optional query and an
    /// optional body; returns its response. Every typed method is this.
    pub async fn send<B, R, Q>(
        &self,
        endpoint: &Endpoint<B, R>,
        path: &[&str],
        query: Option<&Q>,
        body: Option<&B>,
    ) -> Result<R, ClientError>
    where
        B: Serialize,
        R: DeserializeOwned,
        Q: Serialize + ?Sized,
    {
        // An empty, `.` or `..` name is not a path segment: a URL parser would drop or fold it
        // and call another endpoint than this one.
        if let Some(bad) = path.iter().find(|p| matches!(**p, "" | "." | "..")) {
            return Err(ClientError::Config(format!(
                "{bad:?} is not a name {} can take",
                endpoint.id
            )));
        }
        if path.len() != endpoint.path.matches('{').count() {
            return Err(ClientError::Config(format!(
                "{} takes {} path parameters, not {}",
                endpoint.id,
                endpoint.path.matches('{').count(),
                path.len()
            )));
        }
        let mut url = format!("{}{}", self.base, endpoint.path_with(path));
        if let Some(q) = query {
            let qs = serde_urlencoded::to_string(q)
                .map_err(|e| ClientError::Config(format!("cannot encode the query: {e}")))?;
            if !qs.is_empty() {
                url.push('?');
                url.push_str(&qs);
            }
        }
        let method = reqwest::Method::from_bytes(endpoint.method.as_str().as_bytes())
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            let json = serde_json::to_vec(b)
                .map_err(|e| ClientError::Config(format!("cannot encode the body: {e}")))?;
            req = req.header("content-type", "application/json").body(json);
        }
        // The URL is in the error already; reqwest's text would repeat it.
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: url.clone(),
            message: pxb_core::describe_chain(&e.without_url()),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        if let Some(hook) = &self.hook {
            hook(&endpoint.operation(), status);
        }
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ClientError::Api {
                    status,
                    code: ErrorCode::parse(&b.error.code),
                    message: b.error.message,
                },
                Err(_) => ClientError::Api {
                    status,
                    code: None,
                    message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                        .trim()
                        .to_owned(),
                },
            });
        }
        if !endpoint.accepts(status) {
            return Err(ClientError::UnexpectedStatus {
                url,
                status,
                expected: endpoint.status,
            });
        }
        let decoded = if bytes.is_empty() {
            serde_json::from_value(serde_json::Value::Null)
        } else {
            serde_json::from_slice(&bytes)
        };
        decoded.map_err(|e| ClientError::Decode {
            url,
            status,
            expected: std::any::type_name::<R>(),
            message: e.to_string(),
        })
    }

    /// Every item of a list, page after page from `query` (its `after` is the start).
    pub async fn all<T, F, Fut>(&self, mut query: ListQuery, mut page: F) -> Result<Vec<T>, ClientError>
    where
        F: FnMut(ListQuery) -> Fut,
        Fut: Future<Output = Result<List<T>, ClientError>>,
    {
        let mut out = Vec::new();
        loop {
            let list = page(query.clone()).await?;
            out.extend(list.items);
            match list.next {
                Some(next) if query.after.as_deref() != Some(next.as_str()) => query.after = Some(next),
                _ => return Ok(out),
            }
        }
    }
}

methods! {
    /// The caller and their role per org.
    whoami() -> WhoAmI = WHOAMI;
    /// The caller's preferences.
    preferences() -> PreferencesView = GET_PREFERENCES;
    /// Changes the caller's preferences.
    update_preferences(; body: UpdatePreferences) -> PreferencesView = UPDATE_PREFERENCES;
    /// The fleet-wide status (`org`, `state`, `limit`, `after` of the query apply).
    fleet_status(; query: ListQuery) -> FleetStatusView = FLEET_STATUS;
    /// Orgs the caller can see.
    list_orgs(; query: ListQuery) -> List<OrgView> = LIST_ORGS;
    /// Creates an org (provider admins).
    create_org(; body: CreateOrg) -> OrgView = CREATE_ORG;
    /// One org.
    get_org(org) -> OrgView = GET_ORG;
    /// Changes an org (provider admins).
    update_org(org; body: UpdateOrg) -> OrgView = UPDATE_ORG;
    /// The org's discovery configurations.
    list_discoveries(org; query: ListQuery) -> List<DiscoveryView> = LIST_DISCOVERIES;
    /// Adds a Gardener project to discover.
    create_discovery(org; body: CreateDiscovery) -> DiscoveryView = CREATE_DISCOVERY;
    /// One discovery configuration.
    get_discovery(org, name) -> DiscoveryView = GET_DISCOVERY;
    /// Stops a discovery.
    delete_discovery(org, name) -> () = DELETE_DISCOVERY;
    /// The org's clusters.
    list_clusters(org; query: ListQuery) -> List<ClusterRecord> = LIST_CLUSTERS;
    /// Imports a cluster by its kubeconfig (classic mode).
    import_cluster(org; body: ImportCluster) -> ClusterRecord = IMPORT_CLUSTER;
    /// One cluster, by name or id.
    get_cluster(org, name) -> ClusterRecord = GET_CLUSTER;
    /// Removes an imported cluster.
    remove_cluster(org, name) -> () = REMOVE_CLUSTER;
    /// The org's backup locations.
    list_locations(org; query: ListQuery) -> List<LocationView> = LIST_LOCATIONS;
    /// Creates a backup location.
    create_location(org; body: CreateLocation) -> LocationView = CREATE_LOCATION;
    /// One location.
    get_location(org, name) -> LocationView = GET_LOCATION;
    /// Changes a location.
    update_location(org, name; body: UpdateLocation) -> LocationView = UPDATE_LOCATION;
    /// Deletes a location.
    delete_location(org, name) -> () = DELETE_LOCATION;
    /// A location's validation and sync per cluster.
    location_status(org, name; query: ListQuery) -> List<LocationStatus> = LOCATION_STATUS;
    /// Asks every assigned cluster to validate a location now.
    validate_location(org, name) -> LocationView = VALIDATE_LOCATION;
    /// Asks one cluster to sync a location.
    sync_location(org, name; body: SyncRequestBody) -> SyncRun = SYNC_LOCATION;
    /// Asks a location's clusters to check every backup's objects.
    verify_location(org, name) -> LocationView = VERIFY_LOCATION;
    /// The org's backups, newest first.
    list_backups(org; query: ListQuery) -> List<BackupRecord> = LIST_BACKUPS;
    /// Backs up namespaces on the selected clusters: one backup per cluster.
    create_backups(org; body: BackupRequest) -> List<BackupRecord> = CREATE_BACKUPS;
    /// One backup, with its live progress.
    get_backup(org, id) -> BackupRecord = GET_BACKUP;
    /// Deletes a backup (`force`: only the record, leaving the data).
    delete_backup(org, id; query: DeleteQuery) -> DeleteOutcome = DELETE_BACKUP;
    /// The org's restores, newest first.
    list_restores(org; query: ListQuery) -> List<RestoreRecord> = LIST_RESTORES;
    /// Restores a backup.
    create_restore(org; body: RestoreRequest) -> RestoreRecord = CREATE_RESTORE;
    /// One restore.
    get_restore(org, id) -> RestoreRecord = GET_RESTORE;
    /// The org's schedules.
    list_schedules(org; query: ListQuery) -> List<ScheduleRecord> = LIST_SCHEDULES;
    /// Creates a schedule.
    create_schedule(org; body: ScheduleRequest) -> ScheduleRecord = CREATE_SCHEDULE;
    /// One schedule.
    get_schedule(org, name) -> ScheduleRecord = GET_SCHEDULE;
    /// Pauses or resumes a schedule.
    update_schedule(org, name; body: UpdateSchedule) -> ScheduleRecord = UPDATE_SCHEDULE;
    /// Deletes a schedule; its backups stay.
    delete_schedule(org, name) -> () = DELETE_SCHEDULE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_has_a_method_for_every_endpoint_and_no_other() {
        let mut ours: Vec<_> = Client::OPERATIONS.to_vec();
        let mut all: Vec<_> = rest::endpoints().iter().map(|e| e.id).collect();
        ours.sort_unstable();
        all.sort_unstable();
        assert_eq!(ours, all);
    }

    #[test]
    fn a_bad_server_url_is_a_clear_error() {
        let e = Client::builder("pxb.example.net").build().expect_err("refused");
        assert!(e.to_string().contains("is not a URL"), "{e}");
        let e = Client::builder("ftp://pxb.example.net")
            .build()
            .expect_err("refused");
        assert!(e.to_string().contains("must be http(s)"), "{e}");
        let e = Client::builder("https://x")
            .ca_pem("junk")
            .build()
            .expect_err("refused");
        assert!(matches!(e, ClientError::Config(_)), "{e}");
    }

    #[tokio::test]
    async fn all_walks_every_page_and_stops_on_a_cursor_that_does_not_move() {
        let client = Client::builder("http://127.0.0.1:9").build().expect("client");
        let pages = |q: ListQuery| async move {
            let start: usize = q.after.as_deref().map_or(0, |a| a.parse().expect("cursor"));
            let end = (start + 2).min(5);
            Ok(List {
                items: (start..end).collect(),
                next: (end < 5).then(|| end.to_string()),
            })
        };
        let all = client.all(ListQuery::default(), pages).await.expect("all");
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        let stuck = |_q: ListQuery| async move {
            Ok(List {
                items: vec![1],
                next: Some("same".to_owned()),
            })
        };
        let all = client.all(ListQuery::default(), stuck).await.expect("all");
        assert_eq!(
            all,
            vec![1, 1],
            "the second page repeats the cursor and ends the walk"
        );
    }

    #[tokio::test]
    async fn names_that_are_not_one_path_segment_are_refused_before_any_request() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let client = Client::builder("http://127.0.0.1:9")
            .on_response(std::sync::Arc::new(move |_, _| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }))
            .build()
            .expect("client");
        for bad in ["", ".", ".."] {
            let e = client.get_backup("acme", bad).await.expect_err("refused");
            assert!(matches!(e, ClientError::Config(_)), "{e}");
            let e = client
                .list_clusters(bad, &ListQuery::default())
                .await
                .expect_err("refused");
            assert!(e.to_string().contains("is not a name"), "{e}");
        }
        let e = client
            .send(&rest::GET_BACKUP, &["acme"], None::<&()>, None)
            .await
            .expect_err("one parameter short");
        assert!(e.to_string().contains("takes 2 path parameters"), "{e}");
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing was sent"
        );
    }

    #[test]
    fn the_builder_does_not_show_the_token() {
        let b = Client::builder("https://x").token("secret-token-value");
        assert!(!format!("{b:?}").contains("secret-token-value"));
        let c = b.build().expect("client");
        assert!(!format!("{c:?}").contains("secret-token-value"));
    }

    #[test]
    fn a_delete_that_answers_202_may_also_answer_200() {
        assert!(rest::DELETE_BACKUP.accepts(202) && rest::DELETE_BACKUP.accepts(200));
        assert!(!rest::DELETE_BACKUP.accepts(204));
        assert!(rest::CREATE_ORG.accepts(201) && !rest::CREATE_ORG.accepts(200));
    }

    #[test]
    fn api_errors_map_onto_the_library_kinds() {
        let e = ClientError::Api {
            status: 404,
            code: Some(ErrorCode::NotFound),
            message: "backup b1".into(),
        };
        assert!(matches!(
            pxb_core::Error::from(e),
            pxb_core::Error::NotFound { .. }
        ));
        let e = ClientError::Api {
            status: 403,
            code: None,
            message: "<html>".into(),
        };
        assert!(matches!(
            pxb_core::Error::from(e),
            pxb_core::Error::PermissionDenied { .. }
        ));
    }
}
