//! The web console: its files, embedded in the binary at build time (`build.rs` bundles
//! `console/`), and its sign-in sessions made from one-time codes.
//!
//! The console signs users in with OpenID Connect (authorization code with PKCE, a public client,
//! against `auth.issuer`) and calls the API with the issuer's tokens, which any replica checks.
//! For a process that already knows who the user is (`pxb demo`), [`Server::console_sign_in_code`]
//! mints a one-time code that the console exchanges (`POST /console/session`) for a session
//! token of its own: the URL carries only the code, used once, for minutes; the token stays in
//! the console's memory. Sessions live in this process's memory, bounded; each one is a new
//! sign-in session for the per-session preferences.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

use super::auth::Identity;

/// A file of the built console.
pub(crate) struct Asset {
    /// Its path under `/` (`index.html`, `assets/app-<hash>.js`, …).
    pub(crate) path: &'static str,
    /// Its bytes.
    pub(crate) bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The built console's file at `path`, if any.
pub(crate) fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// How long a one-time sign-in code may wait to be exchanged.
pub const CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How long a console session lasts after its code was exchanged.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The prefix of a console session's bearer token (an Entra ID token never starts with it).
pub(crate) const TOKEN_PREFIX: &str = "pxbc_";
/// The prefix of a console session's sign-in session id (`Identity::session`).
pub(crate) const SESSION_PREFIX: &str = "console-";
/// Codes and sessions kept at most each (the oldest go first).
const MAX_ENTRIES: usize = 10_000;

/// One-time codes and the sessions made from them, by the SHA-256 of the secret.
#[derive(Default)]
pub(crate) struct ConsoleSessions {
    codes: Mutex<HashMap<String, (SystemTime, Identity)>>,
    sessions: Mutex<HashMap<String, (SystemTime, Identity)>>,
}

fn digest(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

fn random_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Inserts `(expires, identity)` under `key`, dropping expired entries and, beyond the bound, the
/// one that expires first.
fn insert_bounded(
    m: &mut HashMap<String, (SystemTime, Identity)>,
    key: String,
    expires: SystemTime,
    identity: Identity,
    now: SystemTime,
) {
    if m.len() >= MAX_ENTRIES {
        m.retain(|_, (e, _)| *e > now);
    }
    if m.len() >= MAX_ENTRIES
        && let Some(first) = m.iter().min_by_key(|(_, (e, _))| *e).map(|(k, _)| k.clone())
    {
        m.remove(&first);
    }
    m.insert(key, (expires, identity));
}

impl ConsoleSessions {
    /// A new one-time code for `identity`, valid for [`CODE_LIFETIME`] from `now`.
    pub(crate) fn code(&self, identity: Identity, now: SystemTime) -> String {
        let code = random_secret();
        let mut m = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        insert_bounded(&mut m, digest(&code), now + CODE_LIFETIME, identity, now);
        code
    }

    /// Exchanges `code` (once) for a session token; its identity gets a new sign-in session.
    pub(crate) fn exchange(&self, code: &str, now: SystemTime) -> Option<(String, SystemTime, Identity)> {
        let (expires, mut identity) = {
            let mut m = self.codes.lock().unwrap_or_else(|e| e.into_inner());
            m.remove(&digest(code))?
        };
        if expires <= now {
            return None;
        }
        let token = format!("{TOKEN_PREFIX}{}", random_secret());
        identity.session = format!("{SESSION_PREFIX}{}", &digest(&token)[..16]);
        let until = now + SESSION_LIFETIME;
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        insert_bounded(&mut m, digest(&token), until, identity.clone(), now);
        Some((token, until, identity))
    }

    /// The identity of a live session token.
    pub(crate) fn identity(&self, token: &str, now: SystemTime) -> Option<Identity> {
        let m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&digest(token))
            .filter(|(until, _)| *until > now)
            .map(|(_, id)| id.clone())
    }

    /// Ends the session of `token`; whether there was one.
    pub(crate) fn end(&self, token: &str) -> bool {
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&digest(token)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Identity {
        Identity::new("alice")
    }

    #[test]
    fn a_code_is_exchanged_once_and_each_exchange_is_a_new_session() {
        let s = ConsoleSessions::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let code = s.code(who(), now);
        let (token, until, id) = s.exchange(&code, now).expect("first exchange");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(until, now + SESSION_LIFETIME);
        assert_eq!(id.subject, "alice");
        assert!(s.exchange(&code, now).is_none(), "a code works once");
        assert_eq!(s.identity(&token, now).map(|i| i.subject), Some("alice".into()));
        let (token2, _, id2) = s.exchange(&s.code(who(), now), now).expect("second code");
        assert_ne!(id.session, id2.session, "every sign-in is a new session");
        assert!(s.end(&token));
        assert!(s.identity(&token, now).is_none(), "ended");
        assert!(s.identity(&token2, now).is_some(), "the other session goes on");
    }

    #[test]
    fn codes_and_sessions_expire() {
        let s = ConsoleSessions::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let late = s.code(who(), now);
        assert!(
            s.exchange(&late, now + CODE_LIFETIME).is_none(),
            "an expired code"
        );
        let (token, _, _) = s.exchange(&s.code(who(), now), now).expect("exchange");
        assert!(
            s.identity(&token, now + SESSION_LIFETIME - Duration::from_secs(1))
                .is_some()
        );
        assert!(
            s.identity(&token, now + SESSION_LIFETIME).is_none(),
            "an expired session"
        );
        assert!(s.exchange("not-a-code", now).is_none());
    }

    #[test]
    fn the_stores_stay_bounded() {
        let s = ConsoleSessions::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..(MAX_ENTRIES + 50) {
            s.code(who(), now + Duration::from_millis(i as u64));
        }
        assert_eq!(s.codes.lock().expect("lock").len(), MAX_ENTRIES);
    }
}
