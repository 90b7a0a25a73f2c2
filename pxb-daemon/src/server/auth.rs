//! Who is calling and what they may do: bearer tokens checked by an [`Authenticator`] (Entra ID
//! through OIDC, or the development token behind an explicit flag), and per-org roles from the
//! org's [`RoleBinding`]s.
//!
//! Architecture Invariant: every `/v1/orgs/{org}/…` handler asks [`Caller::require`] before it
//! reads anything of the org, so a caller without a role in an org learns nothing of it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pxb_azure::oidc::{OidcError, OidcValidator};
use pxb_core::catalog::records::{Org, Role};

/// A checked identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject (Entra object id, or `dev`).
    pub subject: String,
    /// For humans.
    pub name: Option<String>,
    /// Token groups.
    pub groups: Vec<String>,
    /// App roles.
    pub roles: Vec<String>,
    /// Authenticated by the development token (a provider admin).
    pub dev: bool,
    /// The sign-in session: the token's `sid`, else a digest of the token itself (a new login is
    /// a new session).
    pub session: String,
}

/// A digest naming a token without revealing it.
pub fn token_fingerprint(token: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is missing, malformed, expired, forged or for someone else.
    #[error("{0}")]
    Unauthenticated(String),
    /// The issuer could not be reached to check the token.
    #[error("{0}")]
    Unavailable(String),
}

/// Checks bearer tokens.
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// The identity behind `token`.
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError>;
}

/// Entra ID (or any OIDC issuer) bearer tokens.
#[derive(Debug, Clone)]
pub struct OidcAuthenticator(pub OidcValidator);

#[async_trait]
impl Authenticator for OidcAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match self.0.validate(token).await {
            Ok(p) => Ok(Identity {
                subject: p.subject,
                name: p.name,
                groups: p.groups,
                roles: p.roles,
                dev: false,
                session: p.session.unwrap_or_else(|| token_fingerprint(token)),
            }),
            Err(OidcError::Unavailable(m)) => Err(AuthError::Unavailable(m)),
            Err(e) => Err(AuthError::Unauthenticated(e.to_string())),
        }
    }
}

/// One static token for development, granting provider administration. Only built when the
/// server is started with `--dev-token`; it logs a warning then.
pub struct DevToken {
    token: String,
}

impl fmt::Debug for DevToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevToken(<redacted>)")
    }
}

impl DevToken {
    /// Accepts exactly `token`.
    pub fn new(token: impl Into<String>) -> Self {
        DevToken { token: token.into() }
    }
}

#[async_trait]
impl Authenticator for DevToken {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let (a, b) = (token.as_bytes(), self.token.as_bytes());
        // Constant time in the length of the expected token.
        let mut diff = a.len() ^ b.len();
        for (i, x) in b.iter().enumerate() {
            diff |= (*x ^ a.get(i).copied().unwrap_or(0)) as usize;
        }
        if diff == 0 && !b.is_empty() {
            Ok(Identity {
                subject: "dev".into(),
                name: Some("development token".into()),
                groups: Vec::new(),
                roles: Vec::new(),
                dev: true,
                session: "dev".into(),
            })
        } else {
            Err(AuthError::Unauthenticated("the bearer token is not valid".into()))
        }
    }
}

/// Tries each authenticator in turn; the first acceptance wins.
#[derive(Debug, Clone, Default)]
pub struct Authenticators(pub Vec<Arc<dyn Authenticator>>);

#[async_trait]
impl Authenticator for Authenticators {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let mut last = AuthError::Unauthenticated("no login method is configured".into());
        for a in &self.0 {
            match a.authenticate(token).await {
                Ok(id) => return Ok(id),
                Err(e @ AuthError::Unavailable(_)) => last = e,
                Err(e) => {
                    if !matches!(last, AuthError::Unavailable(_)) {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }
}

/// The caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who.
    pub identity: Identity,
    /// Administers every org.
    pub provider_admin: bool,
}

impl Caller {
    /// The caller for `identity`, given the provider admin groups and app roles.
    pub fn new(identity: Identity, admin_groups: &[String], admin_roles: &[String]) -> Self {
        let provider_admin = identity.dev
            || identity.groups.iter().any(|g| admin_groups.contains(g))
            || identity.roles.iter().any(|r| admin_roles.contains(r));
        Caller {
            identity,
            provider_admin,
        }
    }

    /// The caller's role in `org`, if any (provider admins are admins everywhere).
    pub fn role_in(&self, org: &Org) -> Option<Role> {
        if self.provider_admin {
            return Some(Role::Admin);
        }
        org.access
            .iter()
            .filter(|b| {
                b.groups.iter().any(|g| self.identity.groups.contains(g))
                    || b.app_roles.iter().any(|r| self.identity.roles.contains(r))
            })
            .map(|b| b.role)
            .max()
    }

    /// Whether the caller has at least `role` in `org`.
    pub fn require(&self, org: &Org, role: Role) -> bool {
        self.role_in(org).is_some_and(|r| r >= role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pxb_core::catalog::records::{Mode, RoleBinding};

    fn org() -> Org {
        Org {
            id: "acme".into(),
            display_name: String::new(),
            mode: Mode::Federated,
            access: vec![
                RoleBinding {
                    role: Role::Viewer,
                    groups: vec!["g-view".into()],
                    app_roles: vec![],
                },
                RoleBinding {
                    role: Role::Admin,
                    groups: vec![],
                    app_roles: vec!["acme.admin".into()],
                },
            ],
            created_at: String::new(),
        }
    }

    fn id(groups: &[&str], roles: &[&str]) -> Identity {
        Identity {
            subject: "u".into(),
            name: None,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            dev: false,
            session: "s".into(),
        }
    }

    #[test]
    fn roles_come_from_groups_and_app_roles_and_the_highest_wins() {
        let o = org();
        let none: &[String] = &[];
        let viewer = Caller::new(id(&["g-view"], &[]), none, none);
        assert_eq!(viewer.role_in(&o), Some(Role::Viewer));
        assert!(viewer.require(&o, Role::Viewer) && !viewer.require(&o, Role::Operator));
        let both = Caller::new(id(&["g-view"], &["acme.admin"]), none, none);
        assert_eq!(both.role_in(&o), Some(Role::Admin));
        let stranger = Caller::new(id(&["g-other"], &["other.admin"]), none, none);
        assert_eq!(stranger.role_in(&o), None);
        // A token whose subject is "dev" is not the development token.
        let mut sneaky = id(&[], &[]);
        sneaky.subject = "dev".into();
        assert!(!Caller::new(sneaky, none, none).provider_admin);
        let admin = Caller::new(id(&["ops"], &[]), &["ops".to_string()], none);
        assert!(admin.provider_admin && admin.require(&o, Role::Admin));
    }

    #[tokio::test]
    async fn the_dev_token_accepts_only_itself() {
        let d = DevToken::new("s3cret-dev");
        assert_eq!(d.authenticate("s3cret-dev").await.expect("ok").subject, "dev");
        for bad in ["", "s3cret-de", "s3cret-dev!", "S3cret-dev"] {
            assert!(d.authenticate(bad).await.is_err(), "{bad:?} accepted");
        }
    }
}
