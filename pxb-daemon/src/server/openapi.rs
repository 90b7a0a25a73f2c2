//! The OpenAPI 3.1 document of the REST API, built from the same types the handlers use: request
//! schemas describe what the server accepts (deserialization), response schemas what it sends.
//! `docs/openapi.json` is a committed copy; a test fails when it is stale.

use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::api::{
    CreateDiscovery, CreateLocation, CreateOrg, DiscoveryView, ErrorBody, FleetStatusView, ImportCluster,
    List, LocationView, OrgView, PreferencesView, SyncRequestBody, UpdateLocation, UpdateOrg,
    UpdatePreferences, UpdateSchedule, WhoAmI,
};
use super::backups::{BackupRequest, DeleteOutcome, RestoreRequest, ScheduleRequest};
use pxb_core::catalog::records::{
    BackupRecord, ClusterRecord, LocationStatus, RestoreRecord, ScheduleRecord, SyncRun,
};

type Gen = fn(&mut SchemaGenerator) -> Schema;

struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
    body: Option<Gen>,
    status: u16,
    response: Option<Gen>,
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
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

fn ops() -> Vec<Op> {
    let op = |method, path, id, summary, query, body, status, response| Op {
        method,
        path,
        id,
        summary,
        query,
        body,
        status,
        response,
    };
    vec![
        op(
            "get",
            "/v1/whoami",
            "whoami",
            "The caller and their role per org.",
            &[],
            None,
            200,
            Some(s::<WhoAmI> as Gen),
        ),
        op(
            "get",
            "/v1/me/preferences",
            "getPreferences",
            "The caller's preferences: the namespace/VM tab (kept per user) and the time bracket (kept per sign-in session).",
            &[],
            None,
            200,
            Some(s::<PreferencesView>),
        ),
        op(
            "put",
            "/v1/me/preferences",
            "updatePreferences",
            "Changes the caller's preferences.",
            &[],
            Some(s::<UpdatePreferences>),
            200,
            Some(s::<PreferencesView>),
        ),
        op(
            "get",
            "/v1/fleet/status",
            "fleetStatus",
            "The fleet-wide status snapshot: every visible cluster, ordered by org, name and id.",
            &["limit", "after", "org", "state"],
            None,
            200,
            Some(s::<FleetStatusView>),
        ),
        op(
            "get",
            "/v1/orgs",
            "listOrgs",
            "Orgs the caller can see.",
            LIST,
            None,
            200,
            Some(s::<List<OrgView>>),
        ),
        op(
            "post",
            "/v1/orgs",
            "createOrg",
            "Creates an org (provider admins).",
            &[],
            Some(s::<CreateOrg> as Gen),
            201,
            Some(s::<OrgView>),
        ),
        op(
            "get",
            "/v1/orgs/{org}",
            "getOrg",
            "One org.",
            &[],
            None,
            200,
            Some(s::<OrgView>),
        ),
        op(
            "put",
            "/v1/orgs/{org}",
            "updateOrg",
            "Changes an org's display name, default mode or role bindings (provider admins).",
            &[],
            Some(s::<UpdateOrg>),
            200,
            Some(s::<OrgView>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/discoveries",
            "listDiscoveries",
            "The org's discovery configurations.",
            LIST,
            None,
            200,
            Some(s::<List<DiscoveryView>>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/discoveries",
            "createDiscovery",
            "Adds a Gardener project to discover.",
            &[],
            Some(s::<CreateDiscovery>),
            201,
            Some(s::<DiscoveryView>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/discoveries/{name}",
            "getDiscovery",
            "One discovery configuration.",
            &[],
            None,
            200,
            Some(s::<DiscoveryView>),
        ),
        op(
            "delete",
            "/v1/orgs/{org}/discoveries/{name}",
            "deleteDiscovery",
            "Stops a discovery; its clusters are retired.",
            &[],
            None,
            204,
            None,
        ),
        op(
            "get",
            "/v1/orgs/{org}/clusters",
            "listClusters",
            "The org's clusters with their status (filter by state).",
            &["limit", "after", "state"],
            None,
            200,
            Some(s::<List<ClusterRecord>>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/clusters",
            "importCluster",
            "Imports a cluster by its kubeconfig (classic mode; the kubeconfig is stored sealed).",
            &[],
            Some(s::<ImportCluster>),
            201,
            Some(s::<ClusterRecord>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/clusters/{name}",
            "getCluster",
            "One cluster, by name or id.",
            &[],
            None,
            200,
            Some(s::<ClusterRecord>),
        ),
        op(
            "delete",
            "/v1/orgs/{org}/clusters/{name}",
            "removeCluster",
            "Removes an imported cluster (its record stays, retired, for its backups).",
            &[],
            None,
            204,
            None,
        ),
        op(
            "get",
            "/v1/orgs/{org}/locations",
            "listLocations",
            "The org's backup locations.",
            LIST,
            None,
            200,
            Some(s::<List<LocationView>>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/locations",
            "createLocation",
            "Creates a backup location and assigns it to clusters.",
            &[],
            Some(s::<CreateLocation>),
            201,
            Some(s::<LocationView>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/locations/{name}",
            "getLocation",
            "One location.",
            &[],
            None,
            200,
            Some(s::<LocationView>),
        ),
        op(
            "put",
            "/v1/orgs/{org}/locations/{name}",
            "updateLocation",
            "Changes a location's assignment, identities or classic credential; clusters follow on their next visit.",
            &[],
            Some(s::<UpdateLocation>),
            200,
            Some(s::<LocationView>),
        ),
        op(
            "delete",
            "/v1/orgs/{org}/locations/{name}",
            "deleteLocation",
            "Deletes a location; its CRs leave every cluster on the next visit.",
            &[],
            None,
            204,
            None,
        ),
        op(
            "get",
            "/v1/orgs/{org}/locations/{name}/status",
            "locationStatus",
            "The location's validation and sync per cluster (filter by cluster and validation phase).",
            &["limit", "after", "cluster", "state"],
            None,
            200,
            Some(s::<List<LocationStatus>>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/locations/{name}/validate",
            "validateLocation",
            "Asks every assigned cluster to validate the location now.",
            &[],
            None,
            202,
            Some(s::<LocationView>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/locations/{name}/sync",
            "syncLocation",
            "Asks one cluster to sync the location; refused while a sync there holds its lease.",
            &[],
            Some(s::<SyncRequestBody>),
            202,
            Some(s::<SyncRun>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/backups",
            "listBackups",
            "The org's backups, newest first; filter by cluster (name or id), location, phase, namespace, \
             view and time bracket.",
            BACKUPS,
            None,
            200,
            Some(s::<List<BackupRecord>>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/restores",
            "listRestores",
            "The org's restores, newest first.",
            FILTERED,
            None,
            200,
            Some(s::<List<RestoreRecord>>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/backups",
            "createBackups",
            "Backs up namespaces on the selected clusters: one backup per cluster; clusters that cannot \
             take it now get a Missed backup with the reason.",
            &[],
            Some(s::<BackupRequest>),
            202,
            Some(s::<List<BackupRecord>>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/backups/{id}",
            "getBackup",
            "One backup, with its live progress.",
            &[],
            None,
            200,
            Some(s::<BackupRecord>),
        ),
        op(
            "delete",
            "/v1/orgs/{org}/backups/{id}",
            "deleteBackup",
            "Deletes a backup's data through its cluster's agent, then the record (202); with force=true \
             removes only the record at once and leaves the data (200).",
            &["force"],
            None,
            202,
            Some(s::<DeleteOutcome>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/restores",
            "createRestore",
            "Restores a backup into its cluster or another one, with namespace mapping.",
            &[],
            Some(s::<RestoreRequest>),
            202,
            Some(s::<RestoreRecord>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/restores/{id}",
            "getRestore",
            "One restore.",
            &[],
            None,
            200,
            Some(s::<RestoreRecord>),
        ),
        op(
            "post",
            "/v1/orgs/{org}/schedules",
            "createSchedule",
            "Creates a schedule: a policy bound to clusters, namespaces and a location.",
            &[],
            Some(s::<ScheduleRequest>),
            201,
            Some(s::<ScheduleRecord>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/schedules/{name}",
            "getSchedule",
            "One schedule, with its next slot and last run.",
            &[],
            None,
            200,
            Some(s::<ScheduleRecord>),
        ),
        op(
            "put",
            "/v1/orgs/{org}/schedules/{name}",
            "updateSchedule",
            "Pauses or resumes a schedule.",
            &[],
            Some(s::<UpdateSchedule>),
            200,
            Some(s::<ScheduleRecord>),
        ),
        op(
            "delete",
            "/v1/orgs/{org}/schedules/{name}",
            "deleteSchedule",
            "Deletes a schedule; its backups stay.",
            &[],
            None,
            204,
            None,
        ),
        op(
            "post",
            "/v1/orgs/{org}/locations/{name}/verify",
            "verifyLocation",
            "Asks the location's clusters to check every backup's objects (\"cloud file missing\").",
            &[],
            None,
            202,
            Some(s::<LocationView>),
        ),
        op(
            "get",
            "/v1/orgs/{org}/schedules",
            "listSchedules",
            "The org's schedules.",
            FILTERED,
            None,
            200,
            Some(s::<List<ScheduleRecord>>),
        ),
    ]
}

fn query_param(name: &str) -> Value {
    let (schema, description) = match name {
        "limit" => (
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
            "Page size (default 100; larger values are clamped to 1000).",
        ),
        "after" => (
            json!({"type": "string", "maxLength": 4096}),
            "The `next` cursor of the previous page.",
        ),
        "cluster" => (
            json!({"type": "string", "maxLength": 256}),
            "Only items of this cluster.",
        ),
        "location" => (
            json!({"type": "string", "maxLength": 256}),
            "Only items of this location (name).",
        ),
        "state" => (
            json!({"type": "string", "maxLength": 64}),
            "Only items in this state or phase.",
        ),
        "org" => (
            json!({"type": "string", "maxLength": 128}),
            "Only clusters of this org.",
        ),
        "from" => (
            json!({"type": "string", "format": "date-time"}),
            "Only items created at or after this time.",
        ),
        "bracket" => (
            json!({"type": "string", "enum": ["1h", "24h", "7d", "30d", "session"]}),
            "Only items created in this last span; `session` uses the caller's time bracket.",
        ),
        "namespace" => (
            json!({"type": "string", "maxLength": 63}),
            "Only backups covering this namespace.",
        ),
        "view" => (
            json!({"type": "string", "enum": ["namespaces", "vms", "session"]}),
            "Namespace backups, or backups holding virtual machines; `session` uses the caller's tab.",
        ),
        "force" => (
            json!({"type": "boolean"}),
            "Remove the record now and leave the data.",
        ),
        _ => (
            json!({"type": "string", "format": "date-time"}),
            "Only items created before this time.",
        ),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn path_params(path: &str) -> Vec<Value> {
    ["org", "name", "id"]
        .iter()
        .filter(|p| path.contains(&format!("{{{p}}}")))
        .map(|p| {
            json!({"name": p, "in": "path", "required": true,
                   "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]*$", "maxLength": 128}})
        })
        .collect()
}

fn rewrite_refs(v: &mut Value, renames: &Map<String, Value>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
                && let Some(Value::String(new)) = renames.get(name)
            {
                *r = format!("#/components/schemas/{new}");
            }
            for x in m.values_mut() {
                rewrite_refs(x, renames);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, renames)),
        _ => {}
    }
}

fn generator(contract: Contract) -> SchemaGenerator {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.contract = contract;
    settings.into_generator()
}

/// The document.
pub fn document() -> Value {
    let mut req = generator(Contract::Deserialize);
    let mut resp = generator(Contract::Serialize);
    let error = s::<ErrorBody>(&mut resp).to_value();
    let mut paths: Map<String, Value> = Map::new();
    let mut bodies: Vec<(String, String, Value)> = Vec::new();
    for op in ops() {
        let mut params: Vec<Value> = path_params(op.path);
        params.extend(op.query.iter().map(|q| query_param(q)));
        let mut responses = Map::new();
        let ok = match op.response {
            Some(g) => {
                json!({"description": "OK", "content": {"application/json": {"schema": g(&mut resp).to_value()}}})
            }
            None => json!({"description": "Done"}),
        };
        responses.insert(op.status.to_string(), ok);
        for (code, what) in [
            ("400", "Bad request"),
            ("401", "Not authenticated"),
            ("403", "Not allowed"),
            ("404", "Not found"),
            ("409", "Conflict"),
            ("503", "Unavailable (issuer unreachable, or the org is degraded)"),
        ] {
            responses.insert(
                code.into(),
                json!({"description": what, "content": {"application/json": {"schema": error.clone()}}}),
            );
        }
        if op.body.is_some() {
            responses.insert("413".into(), json!({"description": "Body too large", "content": {"application/json": {"schema": error.clone()}}}));
            responses.insert("415".into(), json!({"description": "Not JSON", "content": {"application/json": {"schema": error.clone()}}}));
        }
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "parameters": params,
            "responses": responses,
            "security": [{"bearer": []}],
        });
        if let Some(g) = op.body {
            let schema = g(&mut req).to_value();
            bodies.push((op.path.to_owned(), op.method.to_owned(), schema));
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        if let Some(m) = entry.as_object_mut() {
            m.insert(op.method.to_owned(), operation.take());
        }
    }
    let mut schemas = resp.take_definitions(true);
    let mut renames = Map::new();
    let req_defs = req.take_definitions(true);
    for (name, def) in &req_defs {
        match schemas.get(name) {
            Some(existing) if existing != def => {
                renames.insert(name.clone(), Value::String(format!("{name}Input")));
            }
            _ => {}
        }
    }
    for (name, mut def) in req_defs {
        rewrite_refs(&mut def, &renames);
        let target = renames
            .get(&name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or(name);
        schemas.insert(target, def);
    }
    for (path, method, mut schema) in bodies {
        rewrite_refs(&mut schema, &renames);
        if let Some(op) = paths
            .get_mut(&path)
            .and_then(|p| p.get_mut(&method))
            .and_then(Value::as_object_mut)
        {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema}}}),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pxb-server",
            "version": crate::agent::api::VERSION,
            "description": "The pxb control plane: orgs, cluster inventory, backup locations and the fleet status. \
                            Authenticate with an Entra ID bearer token."
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        }
    })
}

/// The documented (method, path) pairs, for tests that check every one is served.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    ops().into_iter().map(|o| (o.method, o.path)).collect()
}
