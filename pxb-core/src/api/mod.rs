//! The API contract between pxb's parts, network-free (serde and schemars types, no client):
//!
//! - [`crd`]: the custom resources through which the server instructs an agent, and the
//!   generated CRDs (`deploy/crds/`);
//! - [`rest`]: the REST API of `pxb-server`: its request and response types, error codes and
//!   one declaration per operation;
//! - [`agent`]: the agent's read API as the server calls it (its header, its token's Secret, its
//!   version) and the labels and annotations both daemons put on cluster objects.

pub mod agent;
pub mod crd;
pub mod rest;
