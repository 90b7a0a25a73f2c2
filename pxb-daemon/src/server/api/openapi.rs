//! The OpenAPI 3.1 document of the REST API, built from its declaration ([`pxb_core::api::rest`]) and
//! the same types the handlers use: request schemas describe what the server accepts
//! (deserialization), response schemas what it sends. `docs/openapi.json` is a committed copy; a
//! test fails when it is stale.

use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use pxb_core::api::rest::{ErrorBody, QueryParam, endpoints as ops};

/// The parameter object of `q`: its schema and description come with its declaration.
fn query_param(q: &QueryParam) -> Value {
    json!({"name": q.name, "in": "query", "required": false, "schema": q.schema.to_json(), "description": q.description})
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
        params.extend(op.query.iter().map(query_param));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each operation's query parameters are the ones it declares, each with its declared schema
    /// and description (the document cannot describe a parameter the declaration does not).
    #[test]
    fn query_parameters_come_from_the_declarations() {
        let doc = document();
        let mut described = 0;
        for op in ops() {
            let params = doc["paths"][op.path][op.method.openapi_key()]["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| panic!("{} has parameters", op.id));
            let query: Vec<&Value> = params.iter().filter(|p| p["in"] == "query").collect();
            assert_eq!(query.len(), op.query.len(), "{}", op.id);
            for (doc_param, q) in query.into_iter().zip(op.query) {
                assert_eq!(doc_param["name"], q.name, "{}", op.id);
                assert_eq!(doc_param["schema"], q.schema.to_json(), "{} {}", op.id, q.name);
                assert_eq!(doc_param["description"], q.description, "{} {}", op.id, q.name);
                described += 1;
            }
        }
        assert!(described > 0);
        let to = &doc["paths"]["/v1/orgs/{org}/backups"]["get"]["parameters"];
        let to = to
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "to"))
            .expect("listBackups takes `to`");
        assert_eq!(to["schema"]["format"], "date-time");
        assert_eq!(to["description"], "Only items created before this time.");
    }
}
