//! Callers: bearer tokens checked by the authenticator seam, preferences stored per user, and
//! values kept per sign-in session (in memory, bounded).

use std::collections::BTreeMap;

use pxb_core::Result;
use pxb_core::catalog::records::Preferences;

use super::auth::{AuthError, Caller, Identity};
use super::state::Server;

/// Sessions whose preferences are kept at most (the least recently used go first).
const MAX_SESSIONS: usize = 10_000;

impl Server {
    /// A user's stored preferences (they survive new logins and restarts).
    pub async fn user_preferences(&self, user: &str) -> Result<Preferences> {
        Ok(self
            .inner
            .catalog
            .find::<Preferences>("", user)
            .await?
            .map(|v| v.value)
            .unwrap_or_else(|| Preferences {
                user: user.to_owned(),
                values: BTreeMap::new(),
            }))
    }

    /// Stores a user's preferences.
    pub async fn set_user_preferences(&self, prefs: &Preferences) -> Result<()> {
        self.inner.catalog.put(prefs, None).await.map(|_| ())
    }

    /// A value kept for one sign-in session only.
    pub fn session_value(&self, user: &str, session: &str) -> Option<serde_json::Value> {
        let mut m = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.inner.clock.now();
        m.get_mut(&(user.to_owned(), session.to_owned()))
            .map(|(used, v)| {
                *used = now;
                v.clone()
            })
    }

    /// Keeps a value for one sign-in session; the least recently used sessions are forgotten
    /// beyond a bound.
    pub fn set_session_value(&self, user: &str, session: &str, value: serde_json::Value) {
        let mut m = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_SESSIONS
            && let Some(oldest) = m
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(
            (user.to_owned(), session.to_owned()),
            (self.inner.clock.now(), value),
        );
    }

    /// A one-time code that signs `identity` in to the web console: the console at
    /// `/#/signin?code=<code>` exchanges it for a session of its own (once, within
    /// [`console::CODE_LIFETIME`](super::console::CODE_LIFETIME)). For a process that already
    /// knows who its user is, such as `pxb demo`; anyone holding the code until then signs in as
    /// `identity`.
    pub fn console_sign_in_code(&self, identity: Identity) -> String {
        self.inner.console.code(identity, self.inner.clock.now())
    }

    /// Checks a bearer token: a console session's, else through the authenticator.
    pub async fn authenticate(&self, token: &str) -> std::result::Result<Caller, AuthError> {
        let id = if token.starts_with(super::console::TOKEN_PREFIX) {
            self.inner
                .console
                .identity(token, self.inner.clock.now())
                .ok_or_else(|| {
                    AuthError::Unauthenticated("the console session has ended; sign in again".into())
                })?
        } else {
            self.inner.authenticator.authenticate(token).await?
        };
        let a = &self.inner.config.auth;
        Ok(Caller::new(id, &a.provider_admin_groups, &a.provider_admin_roles))
    }
}
