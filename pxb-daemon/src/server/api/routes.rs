//! Every operation of the API with its least access and its handler. What an operation is
//! (method, path, operation id, query parameters, body, success status, response, summary) is
//! declared once, network-free, in [`pxb_core::api::rest`]; the router mounts these
//! ([`super::router`]), the OpenAPI document describes them ([`super::openapi`]) and the typed
//! client calls them, so none of the three can drift. A handler whose first extractor (after the
//! state) is not the one its access calls for ([`Access::Extractor`]) does not compile.

use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use pxb_core::api::rest::{self, Method};

use super::scope::{Access, Admin, FirstExtractor, Operator, ProviderAdmin, Signed, Viewer};
use super::{backups, clusters, discoveries, fleet, locations, me, orgs, restores, schedules};
use crate::server::state::Server;

fn filter(method: Method) -> MethodFilter {
    match method {
        Method::Get => MethodFilter::GET,
        Method::Put => MethodFilter::PUT,
        Method::Post => MethodFilter::POST,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// One operation as the server mounts it.
pub(crate) struct Operation {
    /// What it is ([`pxb_core::api::rest`]).
    pub(crate) op: rest::Operation,
    /// Its route.
    pub(crate) route: fn() -> MethodRouter<Server>,
}

/// `handler` for `method`, taking the extractor `A` calls for first after the state.
fn route<A: Access, H, T>(method: Method, handler: H) -> MethodRouter<Server>
where
    H: Handler<T, Server>,
    T: FirstExtractor<A::Extractor> + 'static,
{
    axum::routing::on(filter(method), handler)
}

/// `operations! { ENDPOINT: Access => handler; … }`
macro_rules! operations {
    ($($(#[$doc:meta])* $endpoint:ident : $access:ident => $handler:path;)*) => {
        /// Every operation the server mounts, in the order of [`rest::endpoints`].
        pub(crate) fn operations() -> Vec<Operation> {
            vec![$(
                Operation {
                    op: rest::$endpoint.operation(),
                    route: || route::<$access, _, _>(rest::$endpoint.method, $handler),
                },
            )*]
        }

        /// (path, access) of every operation.
        #[cfg(test)]
        fn accesses() -> Vec<(&'static str, &'static str)> {
            vec![$((rest::$endpoint.path, stringify!($access))),*]
        }
    };
}

operations! {
    WHOAMI: Signed => me::whoami;
    GET_PREFERENCES: Signed => me::get_preferences;
    UPDATE_PREFERENCES: Signed => me::put_preferences;
    FLEET_STATUS: Signed => fleet::fleet_status;
    LIST_ORGS: Signed => orgs::list_orgs;
    CREATE_ORG: ProviderAdmin => orgs::create_org;
    GET_ORG: Viewer => orgs::get_org;
    UPDATE_ORG: ProviderAdmin => orgs::update_org;
    LIST_DISCOVERIES: Viewer => discoveries::list_discoveries;
    CREATE_DISCOVERY: Admin => discoveries::create_discovery;
    GET_DISCOVERY: Viewer => discoveries::get_discovery;
    DELETE_DISCOVERY: Admin => discoveries::delete_discovery;
    LIST_CLUSTERS: Viewer => clusters::list_clusters;
    IMPORT_CLUSTER: Admin => clusters::import_cluster;
    GET_CLUSTER: Viewer => clusters::get_cluster;
    REMOVE_CLUSTER: Admin => clusters::remove_cluster;
    LIST_LOCATIONS: Viewer => locations::list_locations;
    CREATE_LOCATION: Admin => locations::create_location;
    GET_LOCATION: Viewer => locations::get_location;
    UPDATE_LOCATION: Admin => locations::update_location;
    DELETE_LOCATION: Admin => locations::delete_location;
    LOCATION_STATUS: Viewer => locations::location_status;
    VALIDATE_LOCATION: Operator => locations::validate_location;
    SYNC_LOCATION: Operator => locations::sync_location;
    LIST_BACKUPS: Viewer => backups::list_backups;
    LIST_RESTORES: Viewer => restores::list_restores;
    CREATE_BACKUPS: Operator => backups::create_backups;
    GET_BACKUP: Viewer => backups::get_backup;
    DELETE_BACKUP: Operator => backups::delete_backup;
    // The role depends on the body (an admin to allow cluster-scoped kinds): the handler checks
    // it after any member got past the extractor.
    CREATE_RESTORE: Viewer => restores::create_restore;
    GET_RESTORE: Viewer => restores::get_restore;
    CREATE_SCHEDULE: Operator => schedules::create_schedule;
    GET_SCHEDULE: Viewer => schedules::get_schedule;
    UPDATE_SCHEDULE: Operator => schedules::update_schedule;
    DELETE_SCHEDULE: Operator => schedules::delete_schedule;
    VERIFY_LOCATION: Operator => locations::verify_location;
    LIST_SCHEDULES: Viewer => schedules::list_schedules;
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
    fn every_endpoint_of_the_contract_is_mounted_once_in_its_order() {
        let mounted: Vec<_> = operations()
            .iter()
            .map(|o| (o.op.method, o.op.path, o.op.id))
            .collect();
        let declared: Vec<_> = rest::endpoints()
            .iter()
            .map(|o| (o.method, o.path, o.id))
            .collect();
        assert_eq!(mounted, declared);
    }
}
