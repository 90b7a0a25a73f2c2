//! The credential seam: where an access token comes from.
//!
//! Implementations: Workload Identity (in `pxb-azure`, exchanging the projected service-account
//! token), and [`StaticToken`] here (a fixed token, for tests and for tokens handed in from outside).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Clock, Error, Result, SystemClock};

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

    /// A short description of the identity, for messages (`"workload identity <client id> (tenant <t>)"`).
    fn describe(&self) -> String;
}

/// A fixed token: the credential seam's in-memory twin, suitable for tests. Whether it has
/// expired is read from its [`Clock`] (the system clock unless [`with_clock`](Self::with_clock)
/// says otherwise).
#[derive(Debug, Clone)]
pub struct StaticToken {
    token: AccessToken,
    clock: Arc<dyn Clock>,
}

impl StaticToken {
    /// Always returns `token` (and fails once it has expired).
    pub fn new(token: AccessToken) -> Self {
        Self {
            token,
            clock: Arc::new(SystemClock),
        }
    }

    /// Decides expiry with `clock` instead of the system clock (e.g. a
    /// [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn token(&self, _scopes: &[&str]) -> Result<AccessToken> {
        if !self.token.is_valid_at(self.clock.now(), Duration::ZERO) {
            return Err(Error::unauthenticated("the static token has expired"));
        }
        Ok(self.token.clone())
    }

    fn describe(&self) -> String {
        "a static token".into()
    }
}

/// The credential seam's conformance suite: what every [`TokenSource`] does. Behind the feature
/// `conformance`. A working source runs [`run_all`](conformance::run_all); a source that
/// cannot get a token (refused, unreachable, misconfigured) runs
/// [`fails_as_documented`](conformance::fails_as_documented).
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    use super::*;

    /// How many callers ask at once in [`concurrent_callers_all_succeed`].
    pub const CONCURRENT_CALLERS: usize = 8;
    /// How many times one caller asks in a row in [`repeated_calls_stay_valid`].
    pub const REPEATED_CALLS: usize = 5;

    /// Runs every check of a working source: `source` gives tokens for `scopes` that `clock`
    /// (the clock the source is meant to be judged by) says are valid for at least
    /// `min_lifetime`. Panics with the property that failed.
    pub async fn run_all(
        source: &dyn TokenSource,
        scopes: &[&str],
        clock: &dyn Clock,
        min_lifetime: Duration,
    ) {
        describes_itself(source);
        let token = issues_a_valid_token_at(source, scopes, clock, min_lifetime).await;
        keeps_the_secret_out_of_messages(source, &token);
        repeated_calls_stay_valid(source, scopes, clock, min_lifetime).await;
        concurrent_callers_all_succeed(source, scopes, clock, min_lifetime).await;
    }

    /// A token is returned, non-empty, and valid for at least `min_lifetime` from now (by the
    /// system clock).
    pub async fn issues_a_valid_token(source: &dyn TokenSource, scopes: &[&str], min_lifetime: Duration) {
        issues_a_valid_token_at(source, scopes, &SystemClock, min_lifetime).await;
    }

    /// A token is returned, non-empty, valid for at least `min_lifetime` from `clock`'s now, and
    /// its `Debug` does not print the secret.
    pub async fn issues_a_valid_token_at(
        source: &dyn TokenSource,
        scopes: &[&str],
        clock: &dyn Clock,
        min_lifetime: Duration,
    ) -> AccessToken {
        let token = source
            .token(scopes)
            .await
            .unwrap_or_else(|e| panic!("{}: no token: {e}", source.describe()));
        usable(source, &token, clock, min_lifetime, "the first token");
        token
    }

    /// `describe` names the identity: not empty, one line.
    pub fn describes_itself(source: &dyn TokenSource) {
        let d = source.describe();
        assert!(!d.trim().is_empty(), "describe() is empty ({source:?})");
        assert!(!d.contains('\n'), "describe() is one line: {d:?}");
    }

    /// Neither `describe` nor the source's `Debug` prints the secret of `token`, one of its
    /// tokens.
    pub fn keeps_the_secret_out_of_messages(source: &dyn TokenSource, token: &AccessToken) {
        assert!(
            !source.describe().contains(token.secret()),
            "describe() prints the token"
        );
        assert!(
            !format!("{source:?}").contains(token.secret()),
            "{}: the source's Debug prints the token",
            source.describe()
        );
    }

    /// Asking again and again while the token is valid succeeds every time, each token as
    /// usable as the first.
    pub async fn repeated_calls_stay_valid(
        source: &dyn TokenSource,
        scopes: &[&str],
        clock: &dyn Clock,
        min_lifetime: Duration,
    ) {
        for i in 0..REPEATED_CALLS {
            let token = source.token(scopes).await.unwrap_or_else(|e| {
                panic!(
                    "{}: call {} of {REPEATED_CALLS} failed: {e}",
                    source.describe(),
                    i + 1
                )
            });
            usable(source, &token, clock, min_lifetime, &format!("call {}", i + 1));
        }
    }

    /// [`CONCURRENT_CALLERS`] callers asking at once all get a usable token (a source that caches
    /// must not fail, block for ever or hand out a broken token to the callers that wait for a
    /// renewal in flight).
    pub async fn concurrent_callers_all_succeed(
        source: &dyn TokenSource,
        scopes: &[&str],
        clock: &dyn Clock,
        min_lifetime: Duration,
    ) {
        let answers = futures::future::join_all((0..CONCURRENT_CALLERS).map(|_| source.token(scopes))).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let token = answer.unwrap_or_else(|e| {
                panic!(
                    "{}: concurrent caller {} of {CONCURRENT_CALLERS} failed: {e}",
                    source.describe(),
                    i + 1
                )
            });
            usable(
                source,
                &token,
                clock,
                min_lifetime,
                &format!("concurrent caller {}", i + 1),
            );
        }
    }

    /// A source that cannot give a token (its identity refused, its provider unreachable, bad
    /// settings) fails with one of the documented errors: `Unauthenticated`, `Unavailable` or
    /// `Invalid`, with a message. Returns the error for the caller's own checks.
    pub async fn fails_as_documented(source: &dyn TokenSource, scopes: &[&str]) -> Error {
        let err = match source.token(scopes).await {
            Ok(t) => panic!(
                "{}: a token was given (expires {:?}) where a failure was expected",
                source.describe(),
                t.expires_at
            ),
            Err(e) => e,
        };
        assert!(
            matches!(
                err,
                Error::Unauthenticated { .. } | Error::Unavailable { .. } | Error::Invalid { .. }
            ),
            "{}: a failure is unauthenticated, unavailable or invalid, not {}: {err}",
            source.describe(),
            err.kind()
        );
        assert!(
            err.to_string().len() > err.kind().len() + 4,
            "{}: the failure says why: {err}",
            source.describe()
        );
        err
    }

    /// `token` is non-empty, valid at `clock`'s now for `min_lifetime`, and its `Debug` is
    /// redacted.
    fn usable(
        source: &dyn TokenSource,
        token: &AccessToken,
        clock: &dyn Clock,
        min_lifetime: Duration,
        what: &str,
    ) {
        assert!(
            !token.secret().is_empty(),
            "{}: {what}: empty token",
            source.describe()
        );
        let now = clock.now();
        assert!(
            token.is_valid_at(now, min_lifetime),
            "{}: {what}: the token expires too soon ({:?}, now {now:?}, wanted {min_lifetime:?} more)",
            source.describe(),
            token.expires_at
        );
        assert!(
            !format!("{token:?}").contains(token.secret()),
            "{}: {what}: Debug leaks the secret",
            source.describe()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[tokio::test]
    async fn static_token_conforms_and_expires() {
        let t = AccessToken::new("abc", SystemTime::now() + Duration::from_secs(3600));
        conformance::run_all(
            &StaticToken::new(t),
            &["s"],
            &SystemClock,
            Duration::from_secs(60),
        )
        .await;
        let old = AccessToken::new("abc", SystemTime::now() - Duration::from_secs(1));
        let err = conformance::fails_as_documented(&StaticToken::new(old), &["s"]).await;
        assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    }

    /// The twin judges expiry by its clock, and the suite by the clock it is given: a token that
    /// expired long ago by the wall clock conforms at a time before its expiry, and is refused
    /// once the manual clock passes it.
    #[tokio::test]
    async fn static_token_expires_by_its_clock() {
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let source = StaticToken::new(AccessToken::new("abc", expires)).with_clock(Arc::new(clock.clone()));
        conformance::run_all(&source, &["s"], &clock, Duration::from_secs(60)).await;
        clock.set(expires);
        let err = conformance::fails_as_documented(&source, &["s"]).await;
        assert!(err.to_string().contains("expired"), "{err}");
        clock.set(expires - Duration::from_secs(1));
        assert_eq!(
            source.token(&["s"]).await.expect("valid again").expires_at,
            expires
        );
    }

    /// The suite catches what it promises to: a token that is too short-lived by the given
    /// clock, or a source whose `Debug` prints its secret.
    #[tokio::test]
    async fn the_suite_catches_violations() {
        use futures::FutureExt as _;
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let short = StaticToken::new(AccessToken::new(
            "abc",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_030),
        ))
        .with_clock(Arc::new(clock.clone()));
        let failed = std::panic::AssertUnwindSafe(conformance::run_all(
            &short,
            &["s"],
            &clock,
            Duration::from_secs(60),
        ))
        .catch_unwind()
        .await;
        assert!(failed.is_err(), "a token valid 30 s passes a 60 s minimum");

        #[derive(Debug)]
        struct Leaky(String);
        #[async_trait]
        impl TokenSource for Leaky {
            async fn token(&self, _scopes: &[&str]) -> Result<AccessToken> {
                Ok(AccessToken::new(
                    self.0.clone(),
                    SystemTime::now() + Duration::from_secs(3600),
                ))
            }
            fn describe(&self) -> String {
                "a leaky source".into()
            }
        }
        let failed = std::panic::AssertUnwindSafe(conformance::run_all(
            &Leaky("s3cret-token".into()),
            &["s"],
            &SystemClock,
            Duration::from_secs(60),
        ))
        .catch_unwind()
        .await;
        assert!(failed.is_err(), "a source whose Debug prints the token passes");
    }
}
