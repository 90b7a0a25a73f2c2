//! The query parameters of the operations, each with its schema and description. An operation
//! lists these constants ([`Operation::query`](super::Operation::query)), so it cannot take a
//! parameter the OpenAPI document does not describe: an unknown name does not compile.

use serde_json::{Value, json};

use crate::catalog::MAX_PAGE;

/// A query parameter: its name, the schema of its value and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryParam {
    /// Its name in the query string: a field of the query type the operation reads
    /// ([`ListQuery`](super::ListQuery) or [`DeleteQuery`](super::DeleteQuery)).
    pub name: &'static str,
    /// The schema of its value.
    pub schema: QuerySchema,
    /// One line for humans.
    pub description: &'static str,
}

/// The schema of a query parameter's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuerySchema {
    /// An integer from `minimum` to `maximum`.
    Integer {
        /// The smallest value.
        minimum: u64,
        /// The largest value.
        maximum: u64,
    },
    /// A string of at most `max_length` characters.
    String {
        /// The longest value.
        max_length: u32,
    },
    /// An RFC 3339 date-time.
    DateTime,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// `true` or `false`.
    Boolean,
}

impl QuerySchema {
    /// As JSON Schema.
    pub fn to_json(self) -> Value {
        match self {
            QuerySchema::Integer { minimum, maximum } => {
                json!({"type": "integer", "minimum": minimum, "maximum": maximum})
            }
            QuerySchema::String { max_length } => json!({"type": "string", "maxLength": max_length}),
            QuerySchema::DateTime => json!({"type": "string", "format": "date-time"}),
            QuerySchema::OneOf(values) => json!({"type": "string", "enum": values}),
            QuerySchema::Boolean => json!({"type": "boolean"}),
        }
    }

    /// The JSON type of its values (`integer`, `string` or `boolean`).
    pub fn json_type(self) -> &'static str {
        match self {
            QuerySchema::Integer { .. } => "integer",
            QuerySchema::String { .. } | QuerySchema::DateTime | QuerySchema::OneOf(_) => "string",
            QuerySchema::Boolean => "boolean",
        }
    }
}

/// `limit`: the page size.
pub const LIMIT: QueryParam = QueryParam {
    name: "limit",
    schema: QuerySchema::Integer {
        minimum: 1,
        maximum: MAX_PAGE as u64,
    },
    description: "Page size (default 100; larger values are clamped to 1000).",
};

/// `after`: the cursor of the previous page.
pub const AFTER: QueryParam = QueryParam {
    name: "after",
    schema: QuerySchema::String { max_length: 4096 },
    description: "The `next` cursor of the previous page.",
};

/// `cluster`: only items of this cluster.
pub const CLUSTER: QueryParam = QueryParam {
    name: "cluster",
    schema: QuerySchema::String { max_length: 256 },
    description: "Only items of this cluster.",
};

/// `location`: only items of this location.
pub const LOCATION: QueryParam = QueryParam {
    name: "location",
    schema: QuerySchema::String { max_length: 256 },
    description: "Only items of this location (name).",
};

/// `state`: only items in this state or phase.
pub const STATE: QueryParam = QueryParam {
    name: "state",
    schema: QuerySchema::String { max_length: 64 },
    description: "Only items in this state or phase.",
};

/// `org`: only clusters of this org (fleet status).
pub const ORG: QueryParam = QueryParam {
    name: "org",
    schema: QuerySchema::String { max_length: 128 },
    description: "Only clusters of this org.",
};

/// `from`: only items created at or after this time.
pub const FROM: QueryParam = QueryParam {
    name: "from",
    schema: QuerySchema::DateTime,
    description: "Only items created at or after this time.",
};

/// `to`: only items created before this time.
pub const TO: QueryParam = QueryParam {
    name: "to",
    schema: QuerySchema::DateTime,
    description: "Only items created before this time.",
};

/// `bracket`: only items created in this last span.
pub const BRACKET: QueryParam = QueryParam {
    name: "bracket",
    schema: QuerySchema::OneOf(&["1h", "24h", "7d", "30d", "session"]),
    description: "Only items created in this last span; `session` uses the caller's time bracket.",
};

/// `namespace`: only backups covering this namespace.
pub const NAMESPACE: QueryParam = QueryParam {
    name: "namespace",
    schema: QuerySchema::String { max_length: 63 },
    description: "Only backups covering this namespace.",
};

/// `view`: namespace backups, or backups holding virtual machines.
pub const VIEW: QueryParam = QueryParam {
    name: "view",
    schema: QuerySchema::OneOf(&["namespaces", "vms", "session"]),
    description: "Namespace backups, or backups holding virtual machines; `session` uses the caller's tab.",
};

/// `force`: remove the record now and leave the data.
pub const FORCE: QueryParam = QueryParam {
    name: "force",
    schema: QuerySchema::Boolean,
    description: "Remove the record now and leave the data.",
};
