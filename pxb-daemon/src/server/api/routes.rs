//! Every operation of the API, declared once: method, path, operation id, least access, handler,
//! query parameters, body, success status, response and summary. The router mounts these
//! ([`super::router`]) and the OpenAPI document describes them ([`super::openapi`]), so the two
//! cannot drift; and a handler whose first extractor (after the state) is not the one its access
//! calls for ([`Access::Extractor`]) does not compile.

use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use pxb_core::catalog::records::{
    BackupRecord, ClusterRecord, LocationStatus, RestoreRecord, ScheduleRecord, SyncRun,
};
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};

use super::clusters::ImportCluster;
use super::discoveries::{CreateDiscovery, DiscoveryView};
use super::fleet::FleetStatusView;
use super::locations::{CreateLocation, LocationView, SyncRequestBody, UpdateLocation};
use super::me::{PreferencesView, UpdatePreferences, WhoAmI};
use super::orgs::{CreateOrg, OrgView, UpdateOrg};
use super::paging::List;
use super::schedules::UpdateSchedule;
use super::scope::{Access, Admin, FirstExtractor, Operator, ProviderAdmin, Signed, Viewer};
use super::{backups, clusters, discoveries, fleet, locations, me, orgs, restores, schedules};
use crate::server::backups::{BackupRequest, DeleteOutcome, RestoreRequest, ScheduleRequest};
use crate::server::state::Server;

/// A schema of a body or response, generated on demand.
pub(crate) type Gen = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`.
pub(crate) fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// An HTTP method of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
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
    /// As OpenAPI spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Put => "put",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Put => MethodFilter::PUT,
            Method::Post => MethodFilter::POST,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// One operation.
pub(crate) struct Operation {
    /// Method.
    pub(crate) method: Method,
    /// Path template (`{org}`, `{name}`, `{id}`).
    pub(crate) path: &'static str,
    /// OpenAPI `operationId`.
    pub(crate) id: &'static str,
    /// One line for humans.
    pub(crate) summary: &'static str,
    /// Query parameters.
    pub(crate) query: &'static [&'static str],
    /// The request body.
    pub(crate) body: Option<Gen>,
    /// The success status.
    pub(crate) status: u16,
    /// The success body.
    pub(crate) response: Option<Gen>,
    /// Its route.
    pub(crate) route: fn() -> MethodRouter<Server>,
}

/// `handler` for `method`, taking the extractor `A` calls for first after the state.
fn route<A: Access, H, T>(method: Method, handler: H) -> MethodRouter<Server>
where
    H: Handler<T, Server>,
    T: FirstExtractor<A::Extractor> + 'static,
{
    axum::routing::on(method.filter(), handler)
}

const LIST: &[&str] = &["limit", "after"];
const FILTERED: &[&str] = &["limit", "after", "cluster", "location", "state", "from", "to"];
const BACKUPS: &[&str] = &[
    "limit",
    "after",
    "cluster",
    "location",
    "state",
    "from",
    "to",
    "bracket",
    "namespace",
    "view",
];

macro_rules! schema_of {
    () => {
        None
    };
    ($t:ty) => {
        Some(schema::<$t> as Gen)
    };
}

/// `operations! { METHOD "path" operationId: Access => handler, query [...], body [Type?],
/// status [Response?], "summary"; … }`
macro_rules! operations {
    ($(
        $method:ident $path:literal $id:ident : $access:ident => $handler:path,
        query $query:expr, body [$($body:ty)?], $status:literal [$($response:ty)?],
        $summary:expr;
    )*) => {
        /// Every operation, in the order the OpenAPI document lists them.
        pub(crate) fn operations() -> Vec<Operation> {
            vec![$(
                Operation {
                    method: Method::$method,
                    path: $path,
                    id: stringify!($id),
                    summary: $summary,
                    query: $query,
                    body: schema_of!($($body)?),
                    status: $status,
                    response: schema_of!($($response)?),
                    route: || route::<$access, _, _>(Method::$method, $handler),
                },
            )*]
        }

        /// (path, access) of every operation.
        #[cfg(test)]
        fn accesses() -> Vec<(&'static str, &'static str)> {
            vec![$(($path, stringify!($access))),*]
        }
    };
}

operations! {
    Get "/v1/whoami" whoami: Signed => me::whoami,
        query &[], body [], 200 [WhoAmI],
        "The caller and their role per org.";
    Get "/v1/me/preferences" getPreferences: Signed => me::get_preferences,
        query &[], body [], 200 [PreferencesView],
        "The caller's preferences: the namespace/VM tab (kept per user) and the time bracket (kept per sign-in session).";
    Put "/v1/me/preferences" updatePreferences: Signed => me::put_preferences,
        query &[], body [UpdatePreferences], 200 [PreferencesView],
        "Changes the caller's preferences.";
    Get "/v1/fleet/status" fleetStatus: Signed => fleet::fleet_status,
        query &["limit", "after", "org", "state"], body [], 200 [FleetStatusView],
        "The fleet-wide status snapshot: every visible cluster, ordered by org, name and id.";
    Get "/v1/orgs" listOrgs: Signed => orgs::list_orgs,
        query LIST, body [], 200 [List<OrgView>],
        "Orgs the caller can see.";
    Post "/v1/orgs" createOrg: ProviderAdmin => orgs::create_org,
        query &[], body [CreateOrg], 201 [OrgView],
        "Creates an org (provider admins).";
    Get "/v1/orgs/{org}" getOrg: Viewer => orgs::get_org,
        query &[], body [], 200 [OrgView],
        "One org.";
    Put "/v1/orgs/{org}" updateOrg: ProviderAdmin => orgs::update_org,
        query &[], body [UpdateOrg], 200 [OrgView],
        "Changes an org's display name, default mode or role bindings (provider admins).";
    Get "/v1/orgs/{org}/discoveries" listDiscoveries: Viewer => discoveries::list_discoveries,
        query LIST, body [], 200 [List<DiscoveryView>],
        "The org's discovery configurations.";
    Post "/v1/orgs/{org}/discoveries" createDiscovery: Admin => discoveries::create_discovery,
        query &[], body [CreateDiscovery], 201 [DiscoveryView],
        "Adds a Gardener project to discover.";
    Get "/v1/orgs/{org}/discoveries/{name}" getDiscovery: Viewer => discoveries::get_discovery,
        query &[], body [], 200 [DiscoveryView],
        "One discovery configuration.";
    Delete "/v1/orgs/{org}/discoveries/{name}" deleteDiscovery: Admin => discoveries::delete_discovery,
        query &[], body [], 204 [],
        "Stops a discovery; its clusters are retired.";
    Get "/v1/orgs/{org}/clusters" listClusters: Viewer => clusters::list_clusters,
        query &["limit", "after", "state"], body [], 200 [List<ClusterRecord>],
        "The org's clusters with their status (filter by state).";
    Post "/v1/orgs/{org}/clusters" importCluster: Admin => clusters::import_cluster,
        query &[], body [ImportCluster], 201 [ClusterRecord],
        "Imports a cluster by its kubeconfig (classic mode; the kubeconfig is stored sealed).";
    Get "/v1/orgs/{org}/clusters/{name}" getCluster: Viewer => clusters::get_cluster,
        query &[], body [], 200 [ClusterRecord],
        "One cluster, by name or id.";
    Delete "/v1/orgs/{org}/clusters/{name}" removeCluster: Admin => clusters::remove_cluster,
        query &[], body [], 204 [],
        "Removes an imported cluster (its record stays, retired, for its backups).";
    Get "/v1/orgs/{org}/locations" listLocations: Viewer => locations::list_locations,
        query LIST, body [], 200 [List<LocationView>],
        "The org's backup locations.";
    Post "/v1/orgs/{org}/locations" createLocation: Admin => locations::create_location,
        query &[], body [CreateLocation], 201 [LocationView],
        "Creates a backup location and assigns it to clusters.";
    Get "/v1/orgs/{org}/locations/{name}" getLocation: Viewer => locations::get_location,
        query &[], body [], 200 [LocationView],
        "One location.";
    Put "/v1/orgs/{org}/locations/{name}" updateLocation: Admin => locations::update_location,
        query &[], body [UpdateLocation], 200 [LocationView],
        "Changes a location's assignment, identities or classic credential; clusters follow on their next visit.";
    Delete "/v1/orgs/{org}/locations/{name}" deleteLocation: Admin => locations::delete_location,
        query &[], body [], 204 [],
        "Deletes a location; its CRs leave every cluster on the next visit.";
    Get "/v1/orgs/{org}/locations/{name}/status" locationStatus: Viewer => locations::location_status,
        query &["limit", "after", "cluster", "state"], body [], 200 [List<LocationStatus>],
        "The location's validation and sync per cluster (filter by cluster and validation phase).";
    Post "/v1/orgs/{org}/locations/{name}/validate" validateLocation: Operator => locations::validate_location,
        query &[], body [], 202 [LocationView],
        "Asks every assigned cluster to validate the location now.";
    Post "/v1/orgs/{org}/locations/{name}/sync" syncLocation: Operator => locations::sync_location,
        query &[], body [SyncRequestBody], 202 [SyncRun],
        "Asks one cluster to sync the location; refused while a sync there holds its lease.";
    Get "/v1/orgs/{org}/backups" listBackups: Viewer => backups::list_backups,
        query BACKUPS, body [], 200 [List<BackupRecord>],
        "The org's backups, newest first; filter by cluster (name or id), location, phase, namespace, \
         view and time bracket.";
    Get "/v1/orgs/{org}/restores" listRestores: Viewer => restores::list_restores,
        query FILTERED, body [], 200 [List<RestoreRecord>],
        "The org's restores, newest first.";
    Post "/v1/orgs/{org}/backups" createBackups: Operator => backups::create_backups,
        query &[], body [BackupRequest], 202 [List<BackupRecord>],
        "Backs up namespaces on the selected clusters: one backup per cluster; clusters that cannot \
         take it now get a Missed backup with the reason.";
    Get "/v1/orgs/{org}/backups/{id}" getBackup: Viewer => backups::get_backup,
        query &[], body [], 200 [BackupRecord],
        "One backup, with its live progress.";
    Delete "/v1/orgs/{org}/backups/{id}" deleteBackup: Operator => backups::delete_backup,
        query &["force"], body [], 202 [DeleteOutcome],
        "Deletes a backup's data through its cluster's agent, then the record (202); with force=true \
         removes only the record at once and leaves the data (200).";
    // The role depends on the body (an admin to allow cluster-scoped kinds): the handler checks
    // it after any member got past the extractor.
    Post "/v1/orgs/{org}/restores" createRestore: Viewer => restores::create_restore,
        query &[], body [RestoreRequest], 202 [RestoreRecord],
        "Restores a backup into its cluster or another one, with namespace mapping.";
    Get "/v1/orgs/{org}/restores/{id}" getRestore: Viewer => restores::get_restore,
        query &[], body [], 200 [RestoreRecord],
        "One restore.";
    Post "/v1/orgs/{org}/schedules" createSchedule: Operator => schedules::create_schedule,
        query &[], body [ScheduleRequest], 201 [ScheduleRecord],
        "Creates a schedule: a policy bound to clusters, namespaces and a location.";
    Get "/v1/orgs/{org}/schedules/{name}" getSchedule: Viewer => schedules::get_schedule,
        query &[], body [], 200 [ScheduleRecord],
        "One schedule, with its next slot and last run.";
    Put "/v1/orgs/{org}/schedules/{name}" updateSchedule: Operator => schedules::update_schedule,
        query &[], body [UpdateSchedule], 200 [ScheduleRecord],
        "Pauses or resumes a schedule.";
    Delete "/v1/orgs/{org}/schedules/{name}" deleteSchedule: Operator => schedules::delete_schedule,
        query &[], body [], 204 [],
        "Deletes a schedule; its backups stay.";
    Post "/v1/orgs/{org}/locations/{name}/verify" verifyLocation: Operator => locations::verify_location,
        query &[], body [], 202 [LocationView],
        "Asks the location's clusters to check every backup's objects (\"cloud file missing\").";
    Get "/v1/orgs/{org}/schedules" listSchedules: Viewer => schedules::list_schedules,
        query FILTERED, body [], 200 [List<ScheduleRecord>],
        "The org's schedules.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_of_an_org_declares_a_role_in_it() {
        for (path, access) in accesses() {
            let org_scoped = path.starts_with("/v1/orgs/{org}");
            let declared = matches!(access, "Viewer" | "Operator" | "Admin");
            // Changing an org is for provider admins; the handler checks membership first.
            let exception = path == "/v1/orgs/{org}" && access == "ProviderAdmin";
            assert!(org_scoped == declared || exception, "{path} declares {access}");
        }
    }

    #[test]
    fn operations_are_unique() {
        let ops = operations();
        let mut seen = std::collections::BTreeSet::new();
        for op in &ops {
            assert!(
                seen.insert((op.path, op.method.as_str())),
                "{} {}",
                op.method.as_str(),
                op.path
            );
        }
        let ids: std::collections::BTreeSet<_> = ops.iter().map(|o| o.id).collect();
        assert_eq!(ids.len(), ops.len());
    }
}
