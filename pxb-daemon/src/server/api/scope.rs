//! Who may call what: [`OrgScope`], the extractor every `/v1/orgs/{org}/…` handler takes, checks
//! the caller's role in the org of the path before the handler reads anything of it; the markers
//! [`Viewer`], [`Operator`] and [`Admin`] name the least role an operation needs, and [`Signed`]
//! and [`ProviderAdmin`] the operations outside an org. The routes table
//! ([`super::routes`]) declares one of these per operation, and a handler whose first extractor
//! (after the state) does not match its declaration does not compile.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use pxb_core::catalog::records::{Org, Role};

use super::errors::ErrorCode;
use super::errors::{ApiError, ApiResult};
use super::extract::Segments;
use crate::server::auth::Caller;
use crate::server::state::{OrgState, Server};

/// `org` for `caller`, who needs at least `role` in it. A caller without any role in the org
/// learns nothing of it (`403`, whether it exists or not); a provider admin learns that it does
/// not exist (`404`) or is degraded (`503`).
pub(crate) fn authorize(server: &Server, caller: &Caller, org: &str, role: Role) -> ApiResult<Org> {
    let denied = || ApiError::forbidden(format!("you have no access to org {org}"));
    match server.orgs().get(org) {
        Some(OrgState::Ready(o)) => {
            if caller.require(o, role) {
                Ok(o.clone())
            } else if caller.role_in(o).is_some() {
                Err(role_needed(role, org))
            } else {
                Err(denied())
            }
        }
        Some(OrgState::Degraded { reason }) if caller.provider_admin => Err(ApiError::new(
            ErrorCode::OrgDegraded,
            format!("org {org} is degraded and not served: {reason}"),
        )),
        None if caller.provider_admin => Err(ApiError::not_found(format!("org {org}"))),
        _ => Err(denied()),
    }
}

fn role_needed(role: Role, org: &str) -> ApiError {
    ApiError::forbidden(format!("this needs the {role:?} role in org {org}"))
}

/// Who may call an operation, as the routes table declares it. `Extractor` is what its handler
/// takes first after the state.
pub(crate) trait Access {
    /// The extractor that enforces it.
    type Extractor;
}

/// The least role an operation needs in the org of its path.
pub(crate) trait OrgRole: Send + Sync + 'static {
    /// The role.
    const ROLE: Role;
}

/// Any role in the org.
pub(crate) struct Viewer;
/// The operator role (backups, restores, schedules, requests to locations).
pub(crate) struct Operator;
/// The org's admin role (discoveries, clusters, locations).
pub(crate) struct Admin;

impl OrgRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl OrgRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl OrgRole for Admin {
    const ROLE: Role = Role::Admin;
}
impl Access for Viewer {
    type Extractor = OrgScope<Viewer>;
}
impl Access for Operator {
    type Extractor = OrgScope<Operator>;
}
impl Access for Admin {
    type Extractor = OrgScope<Admin>;
}

/// Any authenticated caller; what they see is filtered by their roles.
pub(crate) struct Signed;
impl Access for Signed {
    type Extractor = Caller;
}

/// Provider admins only; the handler takes the [`Caller`] and refuses everyone else with its own
/// message.
pub(crate) struct ProviderAdmin;
impl Access for ProviderAdmin {
    type Extractor = Caller;
}

/// The org of the path (`{org}`) and the caller, who has at least the role `R` in it; and the
/// item of the path (`{name}` or `{id}`), if the route has one.
///
/// Extraction authenticates the caller (`401`/`503`), checks the path's segments (`400`), then
/// the role ([`authorize`]: `403`, or `404`/`503` for provider admins).
pub(crate) struct OrgScope<R> {
    /// The org.
    pub(crate) org: Org,
    /// The caller.
    pub(crate) caller: Caller,
    item: String,
    _role: PhantomData<fn() -> R>,
}

impl<R> OrgScope<R> {
    /// The org's id.
    pub(crate) fn id(&self) -> &str {
        &self.org.id
    }

    /// The path's item (`{name}` or `{id}`); empty when the route has none.
    pub(crate) fn item(&self) -> &str {
        &self.item
    }

    /// Whether the caller has at least `role` in the org.
    pub(crate) fn has(&self, role: Role) -> bool {
        self.caller.require(&self.org, role)
    }

    /// `403` unless the caller has at least `role` in the org (for operations whose role depends
    /// on the request).
    pub(crate) fn require(&self, role: Role) -> ApiResult<()> {
        if self.has(role) {
            Ok(())
        } else {
            Err(role_needed(role, &self.org.id))
        }
    }
}

impl<R: OrgRole> FromRequestParts<Server> for OrgScope<R> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, server).await?;
        let Segments(seg) = Segments::from_request_parts(parts, server).await?;
        if seg.is_empty() {
            return Err(ApiError::new(ErrorCode::Internal, "the route has no org"));
        }
        let org = authorize(server, &caller, &seg[0], R::ROLE)?;
        let item = seg.into_iter().nth(1).unwrap_or_default();
        Ok(OrgScope {
            org,
            caller,
            item,
            _role: PhantomData,
        })
    }
}

/// Holds for a handler's extractor tuple (axum's `Handler<T, _>`) whose first extractor after
/// the state is `E`.
pub(crate) trait FirstExtractor<E> {}
impl<M, E> FirstExtractor<E> for (M, State<Server>, E) {}
impl<M, E, A> FirstExtractor<E> for (M, State<Server>, E, A) {}
impl<M, E, A, B> FirstExtractor<E> for (M, State<Server>, E, A, B) {}
impl<M, E, A, B, C> FirstExtractor<E> for (M, State<Server>, E, A, B, C) {}
