//! The OpenAPI 3.1 document of the REST API, built from its declaration ([`pxb_core::api::rest`]) and
//! the same types the handlers use: request schemas describe what the server accepts
//! (deserialization), response schemas what it sends. `docs/openapi.json` is a committed copy; a
//! test fails when it is stale.

use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use pxb_core::api::rest::{ErrorBody, endpoints as ops};

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
    let error = resp.subschema_for::<ErrorBody>().to_value();
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
            bodies.push((op.path.to_owned(), op.method.openapi_key().to_owned(), schema));
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        if let Some(m) = entry.as_object_mut() {
            m.insert(op.method.openapi_key().to_owned(), operation.take());
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
            "version": pxb_core::api::agent::VERSION,
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
    ops()
        .into_iter()
        .map(|o| (o.method.openapi_key(), o.path))
        .collect()
}
