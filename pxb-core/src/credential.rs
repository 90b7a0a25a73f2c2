//! The credential seam: where an access token comes from.
//!
//! Implementations: Workload Identity (in `pxb-azure`, exchanging the projected service-account
//! token), and [`StaticToken`] here (a fixed token, for tests and for tokens handed in from outside).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Error, Result};

/// A bearer token and when it stops being valid. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    secret: String,
    /// When the token expires.
    pub expires_at: SystemTime,
}

impl AccessToken {
    /// A token with its expiry.
    pub fn new(secret: impl Into<String>, expires_at: SystemTime) -> Self {
        Self {
            secret: secret.into(),
            expires_at,
        }
    }

    /// The token itself, for an `Authorization: Bearer` header.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether the token is still valid at `now` with `margin` to spare.
    pub fn is_valid_at(&self, now: SystemTime, margin: Duration) -> bool {
        now.checked_add(margin).is_some_and(|t| t < self.expires_at)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A source of access tokens for a set of scopes.
///
/// Errors: [`Error::Unauthenticated`] when the identity provider rejects the request (with its
/// reason), [`Error::Unavailable`] when it cannot be reached, [`Error::Invalid`] for bad settings.
#[async_trait]
pub trait TokenSource: fmt::Debug + Send + Sync {
    /// A token valid for `scopes`; implementations cache and renew as they see fit.
    async fn token(&self, scopes: &[&str]) -> Result<AccessToken>;

    /// A short description of the identity, for messages ("workload identity <client id> in tenant <t>").
    fn describe(&self) -> String;
}

/// A fixed token: the credential seam's in-memory twin, suitable for tests.
#[derive(Debug, Clone)]
pub struct StaticToken {
    token: AccessToken,
}

impl StaticToken {
    /// Always returns `token` (and fails once it has expired).
    pub fn new(token: AccessToken) -> Self {
        Self { token }
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn token(&self, _scopes: &[&str]) -> Result<AccessToken> {
        if !self.token.is_valid_at(SystemTime::now(), Duration::ZERO) {
            return Err(Error::unauthenticated("the static token has expired"));
        }
        Ok(self.token.clone())
    }

    fn describe(&self) -> String {
        "a static token".into()
    }
}

/// Conformance checks for [`TokenSource`] implementations.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    use super::*;

    /// A token is returned, non-empty, and valid for at least `min_lifetime` from now.
    pub async fn issues_a_valid_token(source: &dyn TokenSource, scopes: &[&str], min_lifetime: Duration) {
        let token = source.token(scopes).await.expect("token");
        assert!(!token.secret().is_empty(), "{}: empty token", source.describe());
        assert!(
            token.is_valid_at(SystemTime::now(), min_lifetime),
            "{}: token expires too soon ({:?})",
            source.describe(),
            token.expires_at
        );
        assert!(
            !format!("{token:?}").contains(token.secret()),
            "Debug leaks the secret"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_token_conforms_and_expires() {
        let t = AccessToken::new("abc", SystemTime::now() + Duration::from_secs(3600));
        conformance::issues_a_valid_token(&StaticToken::new(t), &["s"], Duration::from_secs(60)).await;
        let old = AccessToken::new("abc", SystemTime::now() - Duration::from_secs(1));
        let err = StaticToken::new(old).token(&["s"]).await.expect_err("expired");
        assert!(matches!(err, Error::Unauthenticated { .. }));
    }
}
