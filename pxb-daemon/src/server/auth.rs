//! Who is calling and what they may do: bearer tokens checked by an [`Authenticator`] (Entra ID
//! through OIDC, or the development token behind an explicit flag), and per-org roles from the
//! org's [`RoleBinding`]s.
//!
//! [`StaticTokens`] is the in-memory twin (static tokens naming identities), for tests;
//! `conformance` (feature `conformance`) is the suite every implementation runs.
//!
//! Architecture Invariant: every `/v1/orgs/{org}/…` handler checks the caller's role in the org
//! (the `OrgScope` extractor in `api/scope.rs`, or [`Caller::require`]) before it reads anything
//! of the org, so a caller without a role in an org learns nothing of it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pxb_azure::oidc::{OidcError, OidcValidator};
#[cfg(doc)]
use pxb_core::catalog::records::RoleBinding;
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

impl Identity {
    /// A user `subject` without groups or app roles, in no session yet (an [`Authenticator`]
    /// fills one in).
    pub fn new(subject: impl Into<String>) -> Self {
        Identity {
            subject: subject.into(),
            name: None,
            groups: Vec::new(),
            roles: Vec::new(),
            dev: false,
            session: String::new(),
        }
    }

    /// The identity of the development token: a provider admin.
    pub fn development() -> Self {
        Identity {
            subject: "dev".into(),
            name: Some("development token".into()),
            groups: Vec::new(),
            roles: Vec::new(),
            dev: true,
            session: "dev".into(),
        }
    }

    /// With the token groups `groups` (builder style).
    pub fn with_groups<S: Into<String>>(mut self, groups: impl IntoIterator<Item = S>) -> Self {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// With the app roles `roles` (builder style).
    pub fn with_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }
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

/// One static token for development, granting provider administration. Only built by
/// [`ServerBuilder::dev_token`](super::ServerBuilder::dev_token) (`--dev-token-file`,
/// `PXB_DEV_TOKEN`), which refuses it unless `api.listen` is a loopback address and the token
/// has at least 16 characters, and logs a warning.
pub struct DevToken {
    token: String,
}

impl fmt::Debug for DevToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevToken(<redacted>)")
    }
}

impl DevToken {
    /// Accepts exactly `token`. Crate-private: the builder's checks are the only way in.
    pub(crate) fn new(token: impl Into<String>) -> Self {
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
            Ok(Identity::development())
        } else {
            Err(AuthError::Unauthenticated("the bearer token is not valid".into()))
        }
    }
}

/// The in-memory twin: static tokens, each naming an identity. For tests (and suitable for
/// them only: the tokens never expire). An identity without a session gets the token's
/// fingerprint as its session, as a token without `sid` does.
#[derive(Default)]
pub struct StaticTokens {
    tokens: Mutex<BTreeMap<String, Identity>>,
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.tokens.lock().map_or(0, |t| t.len());
        write!(f, "StaticTokens({n} tokens, <redacted>)")
    }
}

impl StaticTokens {
    /// No tokens: everything is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as `identity`.
    pub fn insert(&self, token: impl Into<String>, identity: Identity) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.into(), identity);
    }

    /// Accepts `token` as `identity` (builder style).
    pub fn with(self, token: impl Into<String>, identity: Identity) -> Self {
        self.insert(token, identity);
        self
    }

    /// Forgets `token` (a revoked login).
    pub fn remove(&self, token: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let found = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        match found {
            Some(mut id) if !token.is_empty() => {
                if id.session.is_empty() {
                    id.session = token_fingerprint(token);
                }
                Ok(id)
            }
            _ => Err(AuthError::Unauthenticated("the bearer token is not valid".into())),
        }
    }
}

/// The conformance suite of [`Authenticator`]s: what every implementation must do with a valid
/// token, malformed ones and altered ones. Behind the feature `conformance`.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    use pxb_core::{Error, Result};

    use super::{AuthError, Authenticator, Identity};

    fn check(cond: bool, what: impl std::fmt::Display) -> Result<()> {
        if cond {
            Ok(())
        } else {
            Err(Error::other(format!("conformance: {what}")))
        }
    }

    /// Runs every check; `valid` is a token `auth` accepts as `subject`.
    pub async fn run_all(auth: &dyn Authenticator, valid: &str, subject: &str) -> Result<()> {
        accepts(auth, valid, subject).await?;
        refuses_malformed(auth).await?;
        refuses_altered(auth, valid).await?;
        Ok(())
    }

    /// `valid` is accepted as `subject`, with a session, and twice as the same identity.
    pub async fn accepts(auth: &dyn Authenticator, valid: &str, subject: &str) -> Result<Identity> {
        let id = auth
            .authenticate(valid)
            .await
            .map_err(|e| Error::other(format!("conformance: a valid token is refused: {e}")))?;
        check(
            id.subject == subject,
            format!("the subject is {subject:?}, got {:?}", id.subject),
        )?;
        check(!id.session.is_empty(), "an identity names its sign-in session")?;
        let again = auth.authenticate(valid).await.map_err(|e| {
            Error::other(format!(
                "conformance: a valid token is refused the second time: {e}"
            ))
        })?;
        check(again == id, "the same token is the same identity")?;
        Ok(id)
    }

    /// Empty, blank, non-token and oversized input is `Unauthenticated` (never accepted, never
    /// `Unavailable`).
    pub async fn refuses_malformed(auth: &dyn Authenticator) -> Result<()> {
        let huge = "x".repeat(64 * 1024);
        for bad in ["", " ", "not-a-token", "Bearer abc", "a.b.c", "..", huge.as_str()] {
            refused(auth, bad, "a malformed token").await?;
        }
        Ok(())
    }

    /// `valid` with its last character changed, cut short or extended is `Unauthenticated`.
    pub async fn refuses_altered(auth: &dyn Authenticator, valid: &str) -> Result<()> {
        let mut flipped: Vec<char> = valid.chars().collect();
        if let Some(last) = flipped.last_mut() {
            *last = if *last == 'A' { 'B' } else { 'A' };
        }
        let flipped: String = flipped.into_iter().collect();
        let mut short = valid.to_owned();
        short.pop();
        for bad in [flipped, short, format!("{valid}A")] {
            refused(auth, &bad, "an altered token").await?;
        }
        Ok(())
    }

    async fn refused(auth: &dyn Authenticator, token: &str, what: &str) -> Result<()> {
        let shown: String = token.chars().take(24).collect();
        match auth.authenticate(token).await {
            Err(AuthError::Unauthenticated(message)) => {
                // The refusal does not echo the token (or a part of it worth stealing).
                let echoes = token
                    .split('.')
                    .filter(|p| p.len() > 8)
                    .any(|p| message.contains(p));
                check(!echoes, format!("the refusal of {what} echoes it: {message}"))
            }
            Err(e) => check(
                false,
                format!("{what} ({shown:?}…) is Unauthenticated, got {e:?}"),
            ),
            Ok(id) => check(
                false,
                format!("{what} ({shown:?}…) is accepted as {:?}", id.subject),
            ),
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
    async fn the_twin_and_the_dev_token_conform() {
        let twin = StaticTokens::new().with("token-of-alice-0123456789", id(&["g"], &[]));
        conformance::run_all(&twin, "token-of-alice-0123456789", "u")
            .await
            .expect("the twin conforms");
        let dev = DevToken::new("s3cret-dev-token-0123");
        conformance::run_all(&dev, "s3cret-dev-token-0123", "dev")
            .await
            .expect("the development token conforms");
        let both = Authenticators(vec![Arc::new(twin), Arc::new(dev)]);
        conformance::run_all(&both, "token-of-alice-0123456789", "u")
            .await
            .expect("a chain conforms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_oidc_authenticator_conforms() {
        use pxb_azure::oidc::OidcConfig;
        use pxb_harness::oidc::TestIssuer;
        use pxb_harness::tls::TestCa;
        const AUD: &str = "api://pxb-server";
        let ca = TestCa::generate().expect("test CA");
        let issuer = TestIssuer::start(&ca).expect("test issuer");
        let config = OidcConfig {
            extra_ca_pem: Some(issuer.ca_pem()),
            ..OidcConfig::new(issuer.issuer(), [AUD])
        };
        let auth = OidcAuthenticator(OidcValidator::new(config).expect("settings"));
        let token = issuer.token(issuer.claims_for("oid-1", AUD, &["g-1"], &[], 600));
        conformance::run_all(&auth, &token, "oid-1")
            .await
            .expect("the OIDC authenticator conforms");
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
