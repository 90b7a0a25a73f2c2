//! The REST API of `pxb-server`, network-free: every request and response type, the error body
//! and its stable codes, and one [`Endpoint`] per operation (method, path, operation id, query
//! parameters with their schemas ([`query`]), success status, and the body and response types as
//! type parameters).
//!
//! The server mounts exactly these endpoints and builds `docs/openapi.json` from them; the typed
//! client (`pxb_daemon::client`) calls them. Both name the same constants, so a path, a method or
//! a response type cannot differ between the two.
//!
//! ```
//! use pxb_core::api::rest::{self, Method};
//!
//! assert_eq!(rest::LIST_ORGS.method, Method::Get);
//! assert_eq!(rest::GET_LOCATION.path_with(&["acme", "primary"]), "/v1/orgs/acme/locations/primary");
//! assert!(rest::endpoints().iter().any(|e| e.id == "createBackups"));
//! ```

mod errors;
mod fleet;
mod locations;
mod me;
mod operations;
mod orgs;
mod paging;
pub mod query;

use std::marker::PhantomData;

use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};

use crate::catalog::records::{
    BackupRecord, ClusterRecord, LocationStatus, RestoreRecord, ScheduleRecord, SyncRun,
};

pub use errors::{ErrorBody, ErrorCode, ErrorDetail};
pub use fleet::{FleetEntry, FleetStatusView, LocationCounts, Readiness};
pub use locations::{CreateLocation, CredentialInput, LocationView, SyncRequestBody, UpdateLocation};
pub use me::{PreferencesView, Tab, TimeBracket, UpdatePreferences, WhoAmI};
pub use operations::{
    BackupRequest, DeleteOutcome, DeleteQuery, RestoreRequest, ScheduleRequest, UpdateSchedule,
};
pub use orgs::{
    CreateDiscovery, CreateOrg, DiscoveryState, DiscoveryStatus, DiscoveryView, ImportCluster, OrgHealth,
    OrgView, UpdateOrg,
};
pub use paging::{List, ListQuery};
pub use query::{QueryParam, QuerySchema};

/// An HTTP method of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

impl Method {
    /// As HTTP spells it (`GET`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }

    /// As OpenAPI spells it (`get`).
    pub fn openapi_key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Put => "put",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }
}

/// A schema of a body or response, generated on demand.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`.
fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One operation of the API, without its types.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    /// Method.
    pub method: Method,
    /// Path template; `{org}`, `{name}` and `{id}` are path parameters, filled in order.
    pub path: &'static str,
    /// OpenAPI `operationId`.
    pub id: &'static str,
    /// One line for humans.
    pub summary: &'static str,
    /// The query parameters it takes, with their schemas.
    pub query: &'static [QueryParam],
    /// The success status.
    pub status: u16,
    /// The request body's schema.
    pub body: Option<SchemaFn>,
    /// The success body's schema.
    pub response: Option<SchemaFn>,
}

impl Operation {
    /// Whether `status` is a success this operation answers with: its own, or `200` for a
    /// delete that usually answers `202` and may finish at once (a force-delete).
    pub fn accepts(&self, status: u16) -> bool {
        status == self.status || (self.method == Method::Delete && self.status == 202 && status == 200)
    }

    /// The path with its parameters filled in order from `params`, each percent-encoded as one
    /// path segment (`.` and `..` stay as they are: a caller refuses them, as the typed client
    /// does, since a URL parser folds them).
    ///
    /// # Panics
    /// When `params` has fewer or more values than the path has parameters (a programming
    /// error of the caller, not a runtime condition).
    pub fn path_with(&self, params: &[&str]) -> String {
        let mut out = String::with_capacity(self.path.len() + 32);
        let mut rest = self.path;
        let mut values = params.iter();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .expect("a closed parameter");
            out.push_str(&rest[..open]);
            let value = values
                .next()
                .unwrap_or_else(|| panic!("{} needs more path parameters", self.path));
            out.extend(
                url::form_urlencoded::byte_serialize(value.as_bytes()).map(|s| match s {
                    "+" => "%20",
                    s => s,
                }),
            );
            rest = &rest[close + 1..];
        }
        assert!(
            values.next().is_none(),
            "{} takes fewer path parameters",
            self.path
        );
        out.push_str(rest);
        out
    }
}

/// An operation with its request body type `B` and success response type `R` (`()` when there
/// is none).
pub struct Endpoint<B, R> {
    op: Operation,
    types: PhantomData<fn(B) -> R>,
}

impl<B, R> Clone for Endpoint<B, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B, R> Copy for Endpoint<B, R> {}

impl<B, R> std::fmt::Debug for Endpoint<B, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.op.fmt(f)
    }
}

impl<B, R> std::ops::Deref for Endpoint<B, R> {
    type Target = Operation;
    fn deref(&self) -> &Operation {
        &self.op
    }
}

impl<B, R> Endpoint<B, R> {
    /// The operation, without its types.
    pub const fn operation(&self) -> Operation {
        self.op
    }
}

const LIST: &[QueryParam] = &[query::LIMIT, query::AFTER];
const FILTERED: &[QueryParam] = &[
    query::LIMIT,
    query::AFTER,
    query::CLUSTER,
    query::LOCATION,
    query::STATE,
    query::FROM,
    query::TO,
];
const BACKUPS: &[QueryParam] = &[
    query::LIMIT,
    query::AFTER,
    query::CLUSTER,
    query::LOCATION,
    query::STATE,
    query::FROM,
    query::TO,
    query::BRACKET,
    query::NAMESPACE,
    query::VIEW,
];

macro_rules! type_or_unit {
    () => {
        ()
    };
    ($t:ty) => {
        $t
    };
}

macro_rules! schema_of {
    () => {
        None
    };
    ($t:ty) => {
        Some(schema::<$t> as SchemaFn)
    };
}

/// `endpoints! { CONST: METHOD "path" operationId, query [...], body [Type?], status
/// [Response?], "summary"; … }`
macro_rules! endpoints {
    ($(
        $(#[$doc:meta])*
        $name:ident: $method:ident $path:literal $id:ident,
        query $query:expr, body [$($body:ty)?], $status:literal [$($response:ty)?],
        $summary:expr;
    )*) => {
        $(
            $(#[$doc])*
            #[doc = concat!("`", stringify!($method), " ", $path, "`: ", $summary)]
            pub const $name: Endpoint<type_or_unit!($($body)?), type_or_unit!($($response)?)> = Endpoint {
                op: Operation {
                    method: Method::$method,
                    path: $path,
                    id: stringify!($id),
                    summary: $summary,
                    query: $query,
                    status: $status,
                    body: schema_of!($($body)?),
                    response: schema_of!($($response)?),
                },
                types: PhantomData,
            };
        )*

        /// Every operation, in the order the OpenAPI document lists them.
        pub fn endpoints() -> Vec<Operation> {
            vec![$($name.op),*]
        }
    };
}

endpoints! {
    WHOAMI: Get "/v1/whoami" whoami,
        query &[], body [], 200 [WhoAmI],
        "The caller and their role per org.";
    GET_PREFERENCES: Get "/v1/me/preferences" getPreferences,
        query &[], body [], 200 [PreferencesView],
        "The caller's preferences: the namespace/VM tab (kept per user) and the time bracket (kept per sign-in session).";
    UPDATE_PREFERENCES: Put "/v1/me/preferences" updatePreferences,
        query &[], body [UpdatePreferences], 200 [PreferencesView],
        "Changes the caller's preferences.";
    FLEET_STATUS: Get "/v1/fleet/status" fleetStatus,
        query &[query::LIMIT, query::AFTER, query::ORG, query::STATE], body [], 200 [FleetStatusView],
        "The fleet-wide status snapshot: every visible cluster, ordered by org, name and id.";
    LIST_ORGS: Get "/v1/orgs" listOrgs,
        query LIST, body [], 200 [List<OrgView>],
        "Orgs the caller can see.";
    CREATE_ORG: Post "/v1/orgs" createOrg,
        query &[], body [CreateOrg], 201 [OrgView],
        "Creates an org (provider admins).";
    GET_ORG: Get "/v1/orgs/{org}" getOrg,
        query &[], body [], 200 [OrgView],
        "One org.";
    UPDATE_ORG: Put "/v1/orgs/{org}" updateOrg,
        query &[], body [UpdateOrg], 200 [OrgView],
        "Changes an org's display name, default mode or role bindings (provider admins).";
    LIST_DISCOVERIES: Get "/v1/orgs/{org}/discoveries" listDiscoveries,
        query LIST, body [], 200 [List<DiscoveryView>],
        "The org's discovery configurations.";
    CREATE_DISCOVERY: Post "/v1/orgs/{org}/discoveries" createDiscovery,
        query &[], body [CreateDiscovery], 201 [DiscoveryView],
        "Adds a Gardener project to discover.";
    GET_DISCOVERY: Get "/v1/orgs/{org}/discoveries/{name}" getDiscovery,
        query &[], body [], 200 [DiscoveryView],
        "One discovery configuration.";
    DELETE_DISCOVERY: Delete "/v1/orgs/{org}/discoveries/{name}" deleteDiscovery,
        query &[], body [], 204 [],
        "Stops a discovery; its clusters are retired.";
    LIST_CLUSTERS: Get "/v1/orgs/{org}/clusters" listClusters,
        query &[query::LIMIT, query::AFTER, query::STATE], body [], 200 [List<ClusterRecord>],
        "The org's clusters with their status (filter by state).";
    IMPORT_CLUSTER: Post "/v1/orgs/{org}/clusters" importCluster,
        query &[], body [ImportCluster], 201 [ClusterRecord],
        "Imports a cluster by its kubeconfig (classic mode; the kubeconfig is stored sealed).";
    GET_CLUSTER: Get "/v1/orgs/{org}/clusters/{name}" getCluster,
        query &[], body [], 200 [ClusterRecord],
        "One cluster, by name or id.";
    REMOVE_CLUSTER: Delete "/v1/orgs/{org}/clusters/{name}" removeCluster,
        query &[], body [], 204 [],
        "Removes an imported cluster (its record stays, retired, for its backups).";
    LIST_LOCATIONS: Get "/v1/orgs/{org}/locations" listLocations,
        query LIST, body [], 200 [List<LocationView>],
        "The org's backup locations.";
    CREATE_LOCATION: Post "/v1/orgs/{org}/locations" createLocation,
        query &[], body [CreateLocation], 201 [LocationView],
        "Creates a backup location and assigns it to clusters.";
    GET_LOCATION: Get "/v1/orgs/{org}/locations/{name}" getLocation,
        query &[], body [], 200 [LocationView],
        "One location.";
    UPDATE_LOCATION: Put "/v1/orgs/{org}/locations/{name}" updateLocation,
        query &[], body [UpdateLocation], 200 [LocationView],
        "Changes a location's assignment, identities or classic credential; clusters follow on their next visit.";
    DELETE_LOCATION: Delete "/v1/orgs/{org}/locations/{name}" deleteLocation,
        query &[], body [], 204 [],
        "Deletes a location; its CRs leave every cluster on the next visit.";
    LOCATION_STATUS: Get "/v1/orgs/{org}/locations/{name}/status" locationStatus,
        query &[query::LIMIT, query::AFTER, query::CLUSTER, query::STATE], body [], 200 [List<LocationStatus>],
        "The location's validation and sync per cluster (filter by cluster and validation phase).";
    VALIDATE_LOCATION: Post "/v1/orgs/{org}/locations/{name}/validate" validateLocation,
        query &[], body [], 202 [LocationView],
        "Asks every assigned cluster to validate the location now.";
    SYNC_LOCATION: Post "/v1/orgs/{org}/locations/{name}/sync" syncLocation,
        query &[], body [SyncRequestBody], 202 [SyncRun],
        "Asks one cluster to sync the location; refused while a sync there holds its lease.";
    LIST_BACKUPS: Get "/v1/orgs/{org}/backups" listBackups,
        query BACKUPS, body [], 200 [List<BackupRecord>],
        "The org's backups, newest first; filter by cluster (name or id), location, phase, namespace, \
         view and time bracket.";
    LIST_RESTORES: Get "/v1/orgs/{org}/restores" listRestores,
        query FILTERED, body [], 200 [List<RestoreRecord>],
        "The org's restores, newest first.";
    CREATE_BACKUPS: Post "/v1/orgs/{org}/backups" createBackups,
        query &[], body [BackupRequest], 202 [List<BackupRecord>],
        "Backs up namespaces on the selected clusters: one backup per cluster; clusters that cannot \
         take it now get a Missed backup with the reason.";
    GET_BACKUP: Get "/v1/orgs/{org}/backups/{id}" getBackup,
        query &[], body [], 200 [BackupRecord],
        "One backup, with its live progress.";
    DELETE_BACKUP: Delete "/v1/orgs/{org}/backups/{id}" deleteBackup,
        query &[query::FORCE], body [], 202 [DeleteOutcome],
        "Deletes a backup's data through its cluster's agent, then the record (202); with force=true \
         removes only the record at once and leaves the data (200).";
    CREATE_RESTORE: Post "/v1/orgs/{org}/restores" createRestore,
        query &[], body [RestoreRequest], 202 [RestoreRecord],
        "Restores a backup into its cluster or another one, with namespace mapping.";
    GET_RESTORE: Get "/v1/orgs/{org}/restores/{id}" getRestore,
        query &[], body [], 200 [RestoreRecord],
        "One restore.";
    CREATE_SCHEDULE: Post "/v1/orgs/{org}/schedules" createSchedule,
        query &[], body [ScheduleRequest], 201 [ScheduleRecord],
        "Creates a schedule: a policy bound to clusters, namespaces and a location.";
    GET_SCHEDULE: Get "/v1/orgs/{org}/schedules/{name}" getSchedule,
        query &[], body [], 200 [ScheduleRecord],
        "One schedule, with its next slot and last run.";
    UPDATE_SCHEDULE: Put "/v1/orgs/{org}/schedules/{name}" updateSchedule,
        query &[], body [UpdateSchedule], 200 [ScheduleRecord],
        "Pauses or resumes a schedule.";
    DELETE_SCHEDULE: Delete "/v1/orgs/{org}/schedules/{name}" deleteSchedule,
        query &[], body [], 204 [],
        "Deletes a schedule; its backups stay.";
    VERIFY_LOCATION: Post "/v1/orgs/{org}/locations/{name}/verify" verifyLocation,
        query &[], body [], 202 [LocationView],
        "Asks the location's clusters to check every backup's objects (\"cloud file missing\").";
    LIST_SCHEDULES: Get "/v1/orgs/{org}/schedules" listSchedules,
        query FILTERED, body [], 200 [List<ScheduleRecord>],
        "The org's schedules.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique() {
        let ops = endpoints();
        let mut seen = std::collections::BTreeSet::new();
        for op in &ops {
            assert!(
                seen.insert((op.path, op.method)),
                "{} {}",
                op.method.as_str(),
                op.path
            );
        }
        let ids: std::collections::BTreeSet<_> = ops.iter().map(|o| o.id).collect();
        assert_eq!(ids.len(), ops.len());
    }

    /// The `required` properties of every object schema in `v`, by where they are.
    fn required_sets(
        v: &serde_json::Value,
        at: String,
        out: &mut std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(req) = m.get("required").and_then(|r| r.as_array()) {
                    out.insert(
                        at.clone(),
                        req.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect(),
                    );
                }
                for (k, x) in m {
                    required_sets(x, format!("{at}/{k}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    required_sets(x, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// What the server writes, a client can read: no response field the server may leave out
    /// (`skip_serializing_if`) is one a reader requires (no `default`).
    #[test]
    fn every_response_reads_back_what_the_server_writes() {
        use schemars::generate::{Contract, SchemaSettings};
        let schemas = |contract: Contract| {
            let mut settings = SchemaSettings::draft2020_12();
            settings.contract = contract;
            let mut g = settings.into_generator();
            let mut out = std::collections::BTreeMap::new();
            for op in endpoints() {
                if let Some(response) = op.response {
                    let s = response(&mut g).to_value();
                    required_sets(&s, op.id.to_owned(), &mut out);
                }
            }
            let defs = serde_json::to_value(g.take_definitions(true)).expect("definitions");
            required_sets(&defs, "$defs".into(), &mut out);
            out
        };
        let written = schemas(Contract::Serialize);
        let read = schemas(Contract::Deserialize);
        let mut bad = Vec::new();
        for (at, needed) in &read {
            let always = written.get(at).cloned().unwrap_or_default();
            for field in needed.difference(&always) {
                bad.push(format!("{at}: {field}"));
            }
        }
        assert!(
            bad.is_empty(),
            "a reader requires fields the server may omit:\n{}",
            bad.join("\n")
        );
        assert!(
            read.keys().any(|k| k.contains("LocationView")),
            "{:?}",
            read.keys()
        );
    }

    /// Every query parameter an operation declares is a field of the query type the server reads
    /// (both refuse unknown fields), of the type its schema says; the list operations read
    /// [`ListQuery`], the delete of a backup [`DeleteQuery`].
    #[test]
    fn declared_query_parameters_are_what_the_server_reads() {
        let properties = |schema: Schema| -> std::collections::BTreeMap<String, serde_json::Value> {
            let v = schema.to_value();
            serde_json::from_value(v["properties"].clone()).expect("properties")
        };
        let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let list = properties(g.root_schema_for::<ListQuery>());
        let delete = properties(g.root_schema_for::<DeleteQuery>());
        let mut used = std::collections::BTreeSet::new();
        for op in endpoints() {
            let reads = if op.id == DELETE_BACKUP.id { &delete } else { &list };
            for q in op.query {
                let field = reads
                    .get(q.name)
                    .unwrap_or_else(|| panic!("{}: no query field {:?}", op.id, q.name));
                let types = match &field["type"] {
                    serde_json::Value::Array(a) => a.iter().filter_map(|t| t.as_str()).collect(),
                    t => vec![t.as_str().unwrap_or_default()],
                };
                assert!(
                    types.contains(&q.schema.json_type()),
                    "{}: {} is documented as {} but read as {types:?}",
                    op.id,
                    q.name,
                    q.schema.json_type()
                );
                used.insert(q.name);
            }
            let names: std::collections::BTreeSet<_> = op.query.iter().map(|q| q.name).collect();
            assert_eq!(names.len(), op.query.len(), "{}: a parameter twice", op.id);
        }
        // Every field of the query types is documented by some operation.
        let fields: std::collections::BTreeSet<&str> =
            list.keys().chain(delete.keys()).map(String::as_str).collect();
        assert_eq!(fields, used);
    }

    #[test]
    fn path_parameters_are_escaped_as_one_segment() {
        assert_eq!(
            GET_BACKUP.path_with(&["a/b", "x y?#%"]),
            "/v1/orgs/a%2Fb/backups/x%20y%3F%23%25"
        );
        assert_eq!(LIST_ORGS.path_with(&[]), "/v1/orgs");
    }

    #[test]
    #[should_panic(expected = "needs more path parameters")]
    fn a_missing_path_parameter_is_a_programming_error() {
        GET_BACKUP.path_with(&["acme"]);
    }
}
