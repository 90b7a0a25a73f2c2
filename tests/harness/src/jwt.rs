//! Unsigned JWTs for tests: projected service-account tokens and fake Entra ID access tokens.
//!
//! Nothing here verifies signatures; the fake endpoints compare tokens byte for byte instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Encodes `claims` as a JWT with `alg: none`-style signature placeholder.
pub fn encode(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"pxb-test"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let sig = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    format!("{header}.{payload}.{sig}")
}

/// The claims of a JWT, if it is one.
pub fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.trim().split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// A projected service-account token of `pxb-system/pxb-agent` for the Entra token exchange, valid
/// from `lifetime_secs` ago... to `lifetime_secs` from now when positive; already expired when negative.
pub fn service_account_token(lifetime_secs: i64) -> String {
    let now = unix_now() as i64;
    encode(&serde_json::json!({
        "iss": "https://issuer.shoot.test/projects/dev/shoots/0000/issuer",
        "sub": "system:serviceaccount:pxb-system:pxb-agent",
        "aud": ["api://AzureADTokenExchange"],
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime_secs,
        "jti": format!("{:016x}", rand::random::<u64>()),
    }))
}
