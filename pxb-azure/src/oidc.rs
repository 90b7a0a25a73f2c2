//! Entra ID (OpenID Connect) bearer-token validation, for the pxb-server REST API.
//!
//! An [`OidcValidator`] checks access tokens issued by one issuer for one or more audiences:
//! - the issuer's signing keys come from its discovery document
//!   (`{issuer}/.well-known/openid-configuration`) and the JWKS it names, fetched over HTTPS;
//! - keys are cached by `kid` and refreshed when older than [`OidcConfig::jwks_max_age`], or when a
//!   token names an unknown `kid`, at most once per [`OidcConfig::jwks_min_refresh`], so a flood of
//!   bogus tokens cannot hammer the issuer; concurrent validations share one refresh;
//! - only RS256 is accepted, checked before any key is looked up (no `none`, no HMAC, so a public
//!   key can never be used as an HMAC secret); `kid` is required; key hints in the token (`jku`,
//!   `x5u`, `jwk`) are ignored; tokens with critical header extensions (`crit`) are refused;
//! - then the signature, `iss` (exact match with the issuer's discovery document), `aud` (one of the
//!   configured audiences, a string or an array), `exp` (required) and `nbf` with leeway, against
//!   the validator's [`Clock`] (the system clock unless [`OidcValidator::with_clock`] says
//!   otherwise).
//!
//! When the issuer cannot be reached, cached keys keep being used; without a usable key the error
//! is [`OidcError::Unavailable`], which the API answers with 503. Error messages never contain the
//! token.
//!
//! Entra ID leaves out `groups` when a user is in too many groups (the "overage" claim
//! `_claim_names` then points to Microsoft Graph); such a principal has no groups here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pxb_core::{Clock, SystemClock};
use serde_json::{Map, Value};

/// The longest token accepted (Entra ID tokens with many groups stay well below).
const MAX_TOKEN_LEN: usize = 64 * 1024;
/// The largest discovery document or JWKS read.
const MAX_DOCUMENT_LEN: usize = 1 << 20;
/// The largest clock-skew allowance accepted in the settings.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Settings of an [`OidcValidator`].
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The issuer, e.g. `https://login.microsoftonline.com/{tenant}/v2.0`; must be `https`.
    pub issuer: String,
    /// Accepted audiences (the API's application id URI and/or client id); at least one.
    pub audiences: Vec<String>,
    /// Allowed clock skew for `exp` and `nbf` (default 60 s, at most 1 h).
    pub leeway: Duration,
    /// A token with an unknown `kid` triggers at most one JWKS refetch per this interval
    /// (default 30 s). Also the shortest interval between two attempts when the issuer fails.
    pub jwks_min_refresh: Duration,
    /// Cached keys older than this are refetched (default 1 h).
    pub jwks_max_age: Duration,
    /// PEM certificates to trust in addition to the system roots (for tests and private issuers).
    pub extra_ca_pem: Option<String>,
    /// Timeout of one request to the issuer (default 10 s).
    pub timeout: Duration,
}

impl OidcConfig {
    /// Settings with defaults for `issuer` and `audiences`.
    pub fn new(issuer: impl Into<String>, audiences: impl IntoIterator<Item: Into<String>>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: audiences.into_iter().map(Into::into).collect(),
            leeway: Duration::from_secs(60),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(3600),
            extra_ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Where the discovery document is: `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    /// The object id (`oid`) if present, else the subject (`sub`).
    pub subject: String,
    /// A display name: `preferred_username`, else `name`, else `upn`.
    pub name: Option<String>,
    /// The tenant (`tid`).
    pub tenant: Option<String>,
    /// Group object ids (`groups`); empty when absent (also on Entra's group overage).
    pub groups: Vec<String>,
    /// App roles (`roles`).
    pub roles: Vec<String>,
    /// When the token expires (`exp`).
    pub expires_at: SystemTime,
    /// The sign-in session (`sid`), when the token names one.
    pub session: Option<String>,
}

/// Why a token was refused, or why it could not be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The token is not a well-formed signed JWT.
    #[error("malformed bearer token: {0}")]
    Malformed(String),
    /// The token's algorithm is not RS256.
    #[error("bearer token algorithm {0} is not accepted (only RS256)")]
    Algorithm(String),
    /// The token's `kid` names no key the issuer publishes.
    #[error("the bearer token's signing key {0} is not published by the issuer")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the bearer token's signature is not valid")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("the bearer token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the bearer token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `iss` is missing or not the issuer.
    #[error("the bearer token's issuer is wrong: {0}")]
    Issuer(String),
    /// `aud` is missing or names none of the configured audiences.
    #[error("the bearer token is not meant for this API (audience)")]
    Audience,
    /// The issuer's keys could not be fetched and none is cached for this token.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The settings are invalid, or the issuer's discovery document does not match them.
    #[error("invalid OpenID Connect settings: {0}")]
    Config(String),
}

impl OidcError {
    /// The HTTP status an API answers with: 503 for [`OidcError::Unavailable`], 500 for
    /// [`OidcError::Config`], 401 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            OidcError::Unavailable(_) => 503,
            OidcError::Config(_) => 500,
            _ => 401,
        }
    }
}

/// Validates bearer tokens of one issuer; cheap to clone (the key cache is shared).
#[derive(Clone)]
pub struct OidcValidator {
    inner: Arc<Inner>,
    /// What `exp` and `nbf` are compared with.
    clock: Arc<dyn Clock>,
}

struct Inner {
    config: OidcConfig,
    discovery_url: String,
    http: reqwest::Client,
    /// What validations read; replaced as a whole on refresh.
    keys: RwLock<Arc<KeySet>>,
    /// Held while deciding on and doing a refresh: one refresh at a time.
    refresh: tokio::sync::Mutex<RefreshState>,
}

/// The issuer's keys as last fetched.
struct KeySet {
    /// The issuer as its discovery document names it; tokens' `iss` must equal it.
    issuer: String,
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    validation: Validation,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// The error of the last attempt, if it failed.
    last_error: Option<OidcError>,
}

impl fmt::Debug for OidcValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.inner.snapshot().keys.len();
        f.debug_struct("OidcValidator")
            .field("issuer", &self.inner.config.issuer)
            .field("audiences", &self.inner.config.audiences)
            .field("cached_keys", &keys)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl OidcValidator {
    /// Checks the settings and builds the HTTP client; fetches nothing yet.
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let issuer = url::Url::parse(&config.issuer)
            .map_err(|e| OidcError::Config(format!("the issuer {:?} is not a URL: {e}", config.issuer)))?;
        if issuer.scheme() != "https" {
            return Err(OidcError::Config(format!(
                "the issuer {:?} must be an https URL",
                config.issuer
            )));
        }
        if issuer.query().is_some() || issuer.fragment().is_some() {
            return Err(OidcError::Config(format!(
                "the issuer {:?} must not have a query or fragment",
                config.issuer
            )));
        }
        if config.audiences.is_empty() || config.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(OidcError::Config(
                "at least one audience is needed, and none may be empty".into(),
            ));
        }
        if config.leeway > MAX_LEEWAY {
            return Err(OidcError::Config(format!(
                "the leeway of {:?} is more than the {MAX_LEEWAY:?} allowed",
                config.leeway
            )));
        }
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout);
        if let Some(pem) = &config.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| OidcError::Config(format!("the extra CA is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(OidcError::Config("the extra CA PEM holds no certificate".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| OidcError::Config(format!("cannot build the HTTP client: {}", chain(&e))))?;
        let empty = KeySet {
            issuer: config.issuer.clone(),
            keys: HashMap::new(),
            fetched_at: None,
            validation: validation(&config, &config.issuer),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                discovery_url: config.discovery_url(),
                config,
                http,
                keys: RwLock::new(Arc::new(empty)),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
            }),
            clock: Arc::new(SystemClock),
        })
    }

    /// Compares `exp` and `nbf` with `clock` instead of the system clock (e.g. a
    /// [`pxb_core::ManualClock`] in tests). The key cache stays shared with the clones made before;
    /// clones made after use `clock` too.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings in use.
    pub fn config(&self) -> &OidcConfig {
        &self.inner.config
    }

    /// Validates `bearer_token` (the token itself, without `Bearer `) and says whom it speaks for.
    pub async fn validate(&self, bearer_token: &str) -> Result<Principal, OidcError> {
        let token = bearer_token.trim();
        let kid = check_header(token)?;
        let (key, keys) = self.inner.key_for(&kid).await?;
        verify(token, &key, &keys.validation, &keys.issuer, self.clock.now())
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn is_fresh(&self, keys: &KeySet) -> bool {
        keys.fetched_at
            .is_some_and(|t| t.elapsed() < self.config.jwks_max_age)
    }

    /// The key for `kid`, refreshing the cache when it is stale or does not know `kid`.
    async fn key_for(&self, kid: &str) -> Result<(DecodingKey, Arc<KeySet>), OidcError> {
        let keys = self.snapshot();
        if self.is_fresh(&keys)
            && let Some(key) = keys.keys.get(kid)
        {
            return Ok((key.clone(), keys.clone()));
        }
        // The whole refresh, waiting for another one included, has one deadline: a hanging
        // issuer never holds a validation longer than that.
        let until = Instant::now() + self.config.timeout;
        let mut state = match self.refresh.try_lock() {
            Ok(state) => state,
            Err(_) => {
                // A refresh is under way; a key known from before stays good meanwhile.
                if let Some(key) = keys.keys.get(kid) {
                    return Ok((key.clone(), keys.clone()));
                }
                tokio::time::timeout_at(until.into(), self.refresh.lock())
                    .await
                    .map_err(|_| {
                        OidcError::Unavailable(format!(
                            "the issuer's signing keys are being fetched and did not arrive within {:?}",
                            self.config.timeout
                        ))
                    })?
            }
        };
        // Whoever held the lock before may have refreshed already.
        let keys = self.snapshot();
        let known = keys.keys.get(kid).cloned();
        if let Some(key) = &known
            && self.is_fresh(&keys)
        {
            return Ok((key.clone(), keys));
        }
        let may_fetch = state
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.config.jwks_min_refresh);
        if may_fetch {
            let fetched = tokio::time::timeout_at(until.into(), self.fetch())
                .await
                .unwrap_or_else(|_| {
                    Err(OidcError::Unavailable(format!(
                        "the issuer {} did not answer within {:?}",
                        self.config.issuer, self.config.timeout
                    )))
                });
            // Set only once the attempt is over: a validation dropped mid-fetch (its client went
            // away) must not hold back the next one for a whole interval.
            state.last_attempt = Some(Instant::now());
            match fetched {
                Ok(fresh) => {
                    state.last_error = None;
                    let fresh = Arc::new(fresh);
                    *self.keys.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                    return match fresh.keys.get(kid) {
                        Some(key) => Ok((key.clone(), fresh)),
                        None => Err(OidcError::UnknownKey(clip(kid))),
                    };
                }
                Err(e) => {
                    tracing::warn!(
                        issuer = %self.config.issuer,
                        error = %e,
                        "cannot refresh the issuer's signing keys"
                    );
                    state.last_error = Some(e);
                }
            }
        }
        match (known, &state.last_error) {
            // Stale, but the issuer cannot be asked now: the last known keys stay good.
            (Some(key), _) => Ok((key, keys)),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(OidcError::UnknownKey(clip(kid))),
        }
    }

    /// Fetches the discovery document, then the JWKS it names.
    async fn fetch(&self) -> Result<KeySet, OidcError> {
        let doc = self
            .get_json(&self.discovery_url, "the OpenID configuration")
            .await?;
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                OidcError::Unavailable(format!(
                    "the OpenID configuration at {} has no issuer",
                    self.discovery_url
                ))
            })?
            .to_owned();
        if issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            return Err(OidcError::Config(format!(
                "the OpenID configuration at {} names the issuer {}, not the configured {:?}",
                self.discovery_url,
                clip(&issuer),
                self.config.issuer
            )));
        }
        let jwks_uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| {
            OidcError::Unavailable(format!(
                "the OpenID configuration at {} has no jwks_uri",
                self.discovery_url
            ))
        })?;
        if !url::Url::parse(jwks_uri).is_ok_and(|u| u.scheme() == "https") {
            return Err(OidcError::Config(format!(
                "the OpenID configuration at {} names the JWKS {}, which is not an https URL",
                self.discovery_url,
                clip(jwks_uri)
            )));
        }
        let jwks = self.get_json(jwks_uri, "the JWKS").await?;
        let keys = parse_jwks(&jwks);
        if keys.is_empty() {
            return Err(OidcError::Unavailable(format!(
                "the JWKS at {jwks_uri} holds no RS256 signing key"
            )));
        }
        tracing::debug!(issuer = %issuer, keys = keys.len(), "fetched the issuer's signing keys");
        Ok(KeySet {
            validation: validation(&self.config, &issuer),
            issuer,
            keys,
            fetched_at: Some(Instant::now()),
        })
    }

    async fn get_json(&self, url: &str, what: &str) -> Result<Value, OidcError> {
        let unavailable = |detail: String| OidcError::Unavailable(format!("{what} at {url}: {detail}"));
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(OidcError::Config(format!(
                "{what} at {url} does not exist (404): check the issuer"
            )));
        }
        if !status.is_success() {
            return Err(unavailable(format!("the server answered {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unavailable(chain(&e)))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_LEN {
                return Err(unavailable(format!(
                    "the document is larger than {MAX_DOCUMENT_LEN} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| unavailable(format!("not a JSON document: {e}")))?;
        if !value.is_object() {
            return Err(unavailable("not a JSON object".into()));
        }
        Ok(value)
    }
}

/// The library's checks: RS256 only, signature, `exp` (required), `iss`, `aud` (required, one of
/// `config.audiences`). The library reads the system clock, so `exp` and `nbf` are compared with
/// the validator's clock by [`check_times`] instead, with `leeway` kept here.
fn validation(config: &OidcConfig, issuer: &str) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = config.leeway.as_secs();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = true;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&config.audiences);
    v
}

/// The RSA signing keys of a JWKS, by `kid`; keys of other types or uses are skipped.
fn parse_jwks(jwks: &Value) -> HashMap<String, DecodingKey> {
    let mut out = HashMap::new();
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return out;
    };
    for key in keys {
        let field = |name: &str| key.get(name).and_then(Value::as_str);
        let usable = field("kty") == Some("RSA")
            && field("use").is_none_or(|u| u == "sig")
            && field("alg").is_none_or(|a| a == "RS256");
        let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else {
            continue;
        };
        if !usable || kid.is_empty() {
            continue;
        }
        match DecodingKey::from_rsa_components(n, e) {
            Ok(k) => {
                out.insert(kid.to_owned(), k);
            }
            Err(err) => tracing::warn!(kid = %clip(kid), error = %err, "skipping an unreadable JWKS key"),
        }
    }
    out
}

/// Checks the header before any key lookup: a compact JWS, `alg` exactly RS256, no `crit`, and a
/// `kid`, which is returned.
fn check_header(token: &str) -> Result<String, OidcError> {
    let malformed = |m: &str| OidcError::Malformed(m.to_owned());
    if token.is_empty() {
        return Err(malformed("the token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(OidcError::Malformed(format!(
            "the token is longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(malformed("encrypted tokens (JWE) are not accepted")),
        _ => return Err(malformed("not a JWT (three base64url parts separated by dots)")),
    }
    let header = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| malformed("the header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(malformed("the header's alg is not a string")),
        None => return Err(malformed("the header has no alg")),
    };
    if alg != "RS256" {
        return Err(OidcError::Algorithm(clip(alg)));
    }
    if header.contains_key("crit") {
        return Err(malformed("critical header extensions (crit) are not supported"));
    }
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid.clone()),
        _ => Err(malformed("the header has no kid")),
    }
}

/// Verifies `token` with `key` and maps its claims; `issuer` is the exact `iss` expected and `now`
/// what `exp` and `nbf` are compared with.
///
/// The checks and their order are the library's (signature, required claims, times, `iss`, `aud`);
/// only the times are checked here, against `now`.
fn verify(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    issuer: &str,
    now: SystemTime,
) -> Result<Principal, OidcError> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let data = match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
        Ok(data) => data,
        Err(e) => {
            if matches!(e.kind(), ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience) {
                // The library checks these after the times, so the signature verified and the
                // required claims are there: a time error comes first, as it always did.
                let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                    .map_err(|e| map_jwt_error(&e, issuer))?;
                check_times(&claims, now, validation.leeway)?;
            }
            return Err(map_jwt_error(&e, issuer));
        }
    };
    check_times(&data.claims, now, validation.leeway)?;
    principal(&data.claims, issuer)
}

/// A NumericDate claim as the library reads it: absent, unreadable, or whole seconds (a
/// non-negative fraction is rounded).
enum NumericDate {
    Absent,
    Invalid,
    Seconds(u64),
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> NumericDate {
    let Some(v) = claims.get(name) else {
        return NumericDate::Absent;
    };
    if let Some(secs) = v.as_u64() {
        return NumericDate::Seconds(secs);
    }
    match v.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => NumericDate::Seconds(f.round() as u64),
        _ => NumericDate::Invalid,
    }
}

/// `exp` and `nbf` against `now` (Unix seconds) with `leeway` seconds, as the library checks them
/// against the system clock: `nbf`, when present, must be a number; a token is expired when
/// `exp < now - leeway` and not valid yet when `nbf > now + leeway`. (`exp` is a required claim,
/// so the library has made sure it is a number.)
fn check_times(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<(), OidcError> {
    let nbf = numeric_date(claims, "nbf");
    if matches!(nbf, NumericDate::Invalid) {
        return Err(OidcError::Malformed("the nbf claim is not valid".into()));
    }
    if let NumericDate::Seconds(exp) = numeric_date(claims, "exp")
        && exp < now.saturating_sub(leeway)
    {
        return Err(OidcError::Expired);
    }
    if let NumericDate::Seconds(nbf) = nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(OidcError::NotYetValid);
    }
    Ok(())
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error, issuer: &str) -> OidcError {
    match e.kind() {
        ErrorKind::InvalidSignature => OidcError::Signature,
        ErrorKind::ExpiredSignature => OidcError::Expired,
        ErrorKind::ImmatureSignature => OidcError::NotYetValid,
        ErrorKind::InvalidIssuer => OidcError::Issuer(format!("it is not {issuer:?}")),
        ErrorKind::InvalidAudience => OidcError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => OidcError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => OidcError::Issuer("the token has no iss".into()),
        ErrorKind::MissingRequiredClaim(c) => OidcError::Malformed(format!("the token has no {c} claim")),
        ErrorKind::InvalidClaimFormat(c) => OidcError::Malformed(format!("the {c} claim is not valid")),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            OidcError::Algorithm("of the token does not match its key".into())
        }
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => OidcError::Signature,
        _ => OidcError::Malformed("the token is not a well-formed JWT".into()),
    }
}

/// The principal of verified claims; `iss` must be exactly `issuer` (not an array holding it).
fn principal(claims: &Map<String, Value>, issuer: &str) -> Result<Principal, OidcError> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(OidcError::Issuer(format!("it is not {issuer:?}")));
    }
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let subject = text("oid")
        .or_else(|| text("sub"))
        .ok_or_else(|| OidcError::Malformed("the token has neither oid nor sub".into()))?;
    let exp = claims
        .get("exp")
        .and_then(|v| match v.as_u64() {
            Some(secs) => Some(Duration::from_secs(secs)),
            None => Duration::try_from_secs_f64(v.as_f64()?).ok(),
        })
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or_else(|| OidcError::Malformed("the exp claim is not valid".into()))?;
    Ok(Principal {
        subject,
        name: text("preferred_username")
            .or_else(|| text("name"))
            .or_else(|| text("upn")),
        tenant: text("tid"),
        groups: strings(claims.get("groups")),
        roles: strings(claims.get("roles")),
        expires_at: exp,
        session: text("sid"),
    })
}

/// A claim that is a string or an array of strings, as a list.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// A value from a token, quoted and cut short, for error messages.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

/// An error with its sources, for messages.
fn chain(e: &dyn std::error::Error) -> String {
    pxb_core::describe_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
    use serde_json::json;

    const ISSUER: &str = "https://login.example.test/tenant/v2.0";
    const AUD: &str = "api://pxb";

    struct Signer {
        pair: KeyPair,
    }

    impl Signer {
        fn new() -> Self {
            Self {
                pair: KeyPair::generate(KeySize::Rsa2048).expect("RSA key"),
            }
        }

        fn decoding_key(&self) -> DecodingKey {
            let public = self.pair.public_key();
            DecodingKey::from_rsa_raw_components(
                public.modulus().big_endian_without_leading_zero(),
                public.exponent().big_endian_without_leading_zero(),
            )
        }

        fn sign(&self, claims: &Value) -> String {
            let header =
                URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}).to_string());
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            let msg = format!("{header}.{payload}");
            let mut sig = vec![0; self.pair.public_modulus_len()];
            self.pair
                .sign(
                    &RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    msg.as_bytes(),
                    &mut sig,
                )
                .expect("signing");
            format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
        }
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }

    fn claims(aud: Value) -> Value {
        let now = now();
        json!({"iss": ISSUER, "aud": aud, "sub": "s-1", "exp": now + 600, "nbf": now - 10, "iat": now - 10})
    }

    fn check(signer: &Signer, claims: &Value) -> Result<Principal, OidcError> {
        let config = OidcConfig::new(ISSUER, [AUD, "00000000-aaaa"]);
        verify(
            &signer.sign(claims),
            &signer.decoding_key(),
            &validation(&config, ISSUER),
            ISSUER,
            SystemTime::now(),
        )
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        if let Some(m) = base.as_object_mut() {
            if value.is_null() {
                m.remove(key);
            } else {
                m.insert(key.to_owned(), value);
            }
        }
        base
    }

    fn token_with_header(header: Value) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(b"{\"sub\":\"secret-subject\"}"),
            URL_SAFE_NO_PAD.encode(b"sig")
        )
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        let s = Signer::new();
        assert_eq!(
            check(&s, &claims(json!(AUD))).map(|p| p.subject),
            Ok("s-1".into())
        );
        assert!(check(&s, &claims(json!(["other", AUD]))).is_ok());
        assert!(check(&s, &claims(json!(["00000000-aaaa"]))).is_ok());
        assert_eq!(check(&s, &claims(json!("other"))), Err(OidcError::Audience));
        assert_eq!(
            check(&s, &claims(json!(["other", "more"]))),
            Err(OidcError::Audience)
        );
        assert_eq!(check(&s, &claims(json!([]))), Err(OidcError::Audience));
        assert_eq!(
            check(&s, &with(claims(json!(AUD)), "aud", Value::Null)),
            Err(OidcError::Audience)
        );
    }

    #[test]
    fn issuer_must_match_exactly() {
        let s = Signer::new();
        let base = claims(json!(AUD));
        for iss in [
            json!(format!("{ISSUER}/")),
            json!([ISSUER]),
            json!("https://evil.test"),
        ] {
            assert!(
                matches!(
                    check(&s, &with(base.clone(), "iss", iss.clone())),
                    Err(OidcError::Issuer(_))
                ),
                "{iss}"
            );
        }
        assert!(matches!(
            check(&s, &with(base, "iss", Value::Null)),
            Err(OidcError::Issuer(_))
        ));
    }

    #[test]
    fn exp_and_nbf_with_leeway() {
        let s = Signer::new();
        let base = claims(json!(AUD));
        let now = now();
        assert!(check(&s, &with(base.clone(), "exp", json!(now - 30))).is_ok());
        assert_eq!(
            check(&s, &with(base.clone(), "exp", json!(now - 120))),
            Err(OidcError::Expired)
        );
        assert!(check(&s, &with(base.clone(), "nbf", json!(now + 30))).is_ok());
        assert_eq!(
            check(&s, &with(base.clone(), "nbf", json!(now + 120))),
            Err(OidcError::NotYetValid)
        );
        assert!(matches!(
            check(&s, &with(base.clone(), "exp", Value::Null)),
            Err(OidcError::Malformed(_))
        ));
        assert!(matches!(
            check(&s, &with(base.clone(), "exp", json!("tomorrow"))),
            Err(OidcError::Malformed(_))
        ));
        // Fractions are rounded, as the library does; anything but a number is refused.
        assert!(check(&s, &with(base.clone(), "exp", json!(now as f64 - 29.6))).is_ok());
        assert_eq!(
            check(&s, &with(base.clone(), "exp", json!(now as f64 - 120.5))),
            Err(OidcError::Expired)
        );
        for nbf in [json!(null), json!("now"), json!(-5)] {
            let mut c = base.clone();
            c["nbf"] = nbf.clone();
            assert_eq!(
                check(&s, &c),
                Err(OidcError::Malformed("the nbf claim is not valid".into())),
                "{nbf}"
            );
        }
        assert!(
            check(&s, &with(base.clone(), "nbf", Value::Null)).is_ok(),
            "nbf is optional"
        );
        // The times are checked before the issuer and the audience.
        let expired = with(base, "exp", json!(now - 120));
        assert_eq!(
            check(&s, &with(expired.clone(), "aud", json!("other"))),
            Err(OidcError::Expired)
        );
        assert_eq!(
            check(&s, &with(expired, "iss", json!("https://evil.test"))),
            Err(OidcError::Expired)
        );
    }

    /// The times are checked here rather than by the library (which reads the system clock);
    /// with the system clock, both decide alike.
    #[test]
    fn time_checks_agree_with_the_library() {
        let s = Signer::new();
        let config = OidcConfig::new(ISSUER, [AUD]);
        let mut library = validation(&config, ISSUER);
        library.validate_exp = true;
        library.validate_nbf = true;
        let now = now();
        let times = [
            json!(now - 120),
            json!(now - 30),
            json!(now + 30),
            json!(now + 120),
            json!(now as f64 + 0.4),
            json!(null),
            json!("soon"),
            json!(-1),
            json!(1.0e30),
            json!([1]),
            json!({"at": 1}),
        ];
        let mut cases = Vec::new();
        for t in &times {
            for (claim, aud) in [("exp", AUD), ("nbf", AUD), ("exp", "other"), ("nbf", "other")] {
                let mut c = claims(json!(aud));
                c[claim] = t.clone();
                cases.push(c);
            }
        }
        cases.push(with(claims(json!(AUD)), "nbf", Value::Null));
        for c in cases {
            let token = s.sign(&c);
            let theirs = jsonwebtoken::decode::<Map<String, Value>>(&token, &s.decoding_key(), &library)
                .map_err(|e| map_jwt_error(&e, ISSUER))
                .and_then(|d| principal(&d.claims, ISSUER));
            let ours = verify(
                &token,
                &s.decoding_key(),
                &validation(&config, ISSUER),
                ISSUER,
                SystemTime::now(),
            );
            assert_eq!(ours, theirs, "{c}");
        }
    }

    /// A validator whose cache already holds `signer`'s key as `k1`, so nothing is fetched.
    fn validator_with_key(signer: &Signer, config: OidcConfig) -> OidcValidator {
        let v = OidcValidator::new(config).expect("settings");
        *v.inner.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(KeySet {
            issuer: ISSUER.into(),
            keys: HashMap::from([("k1".to_owned(), signer.decoding_key())]),
            fetched_at: Some(Instant::now()),
            validation: validation(&v.inner.config, ISSUER),
        });
        v
    }

    #[tokio::test]
    async fn times_follow_the_injected_clock() {
        let s = Signer::new();
        let start = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let clock = pxb_core::ManualClock::new(start);
        let v = validator_with_key(&s, OidcConfig::new(ISSUER, [AUD])).with_clock(Arc::new(clock.clone()));
        let t0 = 2_000_000_000u64;
        // Valid from t0 + 100 for 600 s, far from the system clock's now.
        let token =
            s.sign(&json!({"iss": ISSUER, "aud": AUD, "sub": "s-1", "nbf": t0 + 100, "exp": t0 + 700}));

        // Not valid yet, even with the 60 s leeway…
        assert_eq!(v.validate(&token).await, Err(OidcError::NotYetValid));
        // …until the clock reaches nbf - leeway.
        clock.advance(Duration::from_secs(40));
        assert_eq!(v.validate(&token).await.map(|p| p.subject), Ok("s-1".into()));
        // Still accepted at exp + leeway (exp < now - leeway is what expires a token)…
        clock.set(start + Duration::from_secs(700 + 60));
        assert!(v.validate(&token).await.is_ok());
        // …and refused one second later, without any waiting.
        clock.advance(Duration::from_secs(1));
        assert_eq!(v.validate(&token).await, Err(OidcError::Expired));
        // Clones share the clock; a clock that goes back makes the token good again.
        let clone = v.clone();
        clock.set(start + Duration::from_secs(300));
        assert!(clone.validate(&token).await.is_ok());

        // The default is the system clock: the same token is far in the future.
        let system = validator_with_key(&s, OidcConfig::new(ISSUER, [AUD]));
        assert_eq!(system.validate(&token).await, Err(OidcError::NotYetValid));
    }

    #[test]
    fn another_key_fails_the_signature() {
        let (a, b) = (Signer::new(), Signer::new());
        let config = OidcConfig::new(ISSUER, [AUD]);
        let token = a.sign(&claims(json!(AUD)));
        assert_eq!(
            verify(
                &token,
                &b.decoding_key(),
                &validation(&config, ISSUER),
                ISSUER,
                SystemTime::now()
            ),
            Err(OidcError::Signature)
        );
    }

    #[test]
    fn claims_map_onto_the_principal() {
        let s = Signer::new();
        let base = claims(json!(AUD));
        let exp = base["exp"].as_u64().unwrap_or_default();
        let full = json!({
            "oid": "o-1", "tid": "t-1", "name": "Ann", "upn": "ann@upn",
            "groups": ["g1", "g2"], "roles": "Admin",
        });
        let mut c = base.clone();
        for (k, v) in full.as_object().into_iter().flatten() {
            c = with(c, k, v.clone());
        }
        let p = check(&s, &c).expect("valid");
        assert_eq!(
            p,
            Principal {
                subject: "o-1".into(),
                name: Some("Ann".into()),
                tenant: Some("t-1".into()),
                groups: vec!["g1".into(), "g2".into()],
                roles: vec!["Admin".into()],
                expires_at: UNIX_EPOCH + Duration::from_secs(exp),
                session: None,
            }
        );
        let p = check(&s, &with(c.clone(), "preferred_username", json!("ann@pref"))).expect("valid");
        assert_eq!(p.name.as_deref(), Some("ann@pref"));
        let p = check(&s, &with(with(c, "name", Value::Null), "oid", Value::Null)).expect("valid");
        assert_eq!((p.subject.as_str(), p.name.as_deref()), ("s-1", Some("ann@upn")));
        let p = check(&s, &base).expect("valid");
        assert_eq!(
            (p.name, p.tenant, p.groups.len(), p.roles.len()),
            (None, None, 0, 0)
        );
        assert!(matches!(
            check(&s, &with(base, "sub", Value::Null)),
            Err(OidcError::Malformed(_))
        ));
    }

    #[test]
    fn header_checks_come_first() {
        let alg = |a: &str| check_header(&token_with_header(json!({"alg": a, "kid": "k1"})));
        assert_eq!(alg("none"), Err(OidcError::Algorithm("\"none\"".into())));
        assert_eq!(alg("HS256"), Err(OidcError::Algorithm("\"HS256\"".into())));
        assert_eq!(alg("rs256"), Err(OidcError::Algorithm("\"rs256\"".into())));
        assert_eq!(alg("PS256"), Err(OidcError::Algorithm("\"PS256\"".into())));
        assert_eq!(alg("RS256"), Ok("k1".into()));
        for header in [
            json!({"alg": "RS256"}),
            json!({"alg": "RS256", "kid": ""}),
            json!({"alg": "RS256", "kid": 7}),
            json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
            json!({"kid": "k1"}),
            json!(["RS256"]),
        ] {
            assert!(
                matches!(
                    check_header(&token_with_header(header.clone())),
                    Err(OidcError::Malformed(_))
                ),
                "{header}"
            );
        }
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            "!!.e30.sig",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(matches!(check_header(token), Err(OidcError::Malformed(_))));
        }
        let long = "x".repeat(500);
        let Err(OidcError::Algorithm(shown)) = alg(&long) else {
            panic!("a long alg must be refused");
        };
        assert!(shown.len() < 80, "{shown}");
    }

    #[test]
    fn messages_do_not_echo_the_token() {
        let token = token_with_header(json!({"alg": "HS256", "kid": "k1"}));
        let payload = token.split('.').nth(1).unwrap_or_default().to_owned();
        let errors = [
            check_header(&token).err(),
            check_header(&token.replace('.', "")).err(),
            Some(map_jwt_error(&ErrorKind::InvalidToken.into(), ISSUER)),
        ];
        for e in errors.into_iter().flatten() {
            let text = e.to_string();
            assert!(
                !text.contains(&payload) && !text.contains("secret-subject"),
                "{text}"
            );
        }
    }

    #[test]
    fn settings_are_checked() {
        let ok = OidcConfig::new(ISSUER, [AUD]);
        assert!(OidcValidator::new(ok.clone()).is_ok());
        for bad in [
            OidcConfig::new("http://login.example.test/t/v2.0", [AUD]),
            OidcConfig::new("not a url", [AUD]),
            OidcConfig::new(ISSUER, Vec::<String>::new()),
            OidcConfig::new(ISSUER, [""]),
            OidcConfig {
                leeway: Duration::from_secs(86400),
                ..ok.clone()
            },
            OidcConfig {
                extra_ca_pem: Some("no PEM here".into()),
                ..ok.clone()
            },
        ] {
            assert!(matches!(OidcValidator::new(bad), Err(OidcError::Config(_))));
        }
    }

    #[test]
    fn discovery_url_ignores_a_trailing_slash() {
        let want = format!("{ISSUER}/.well-known/openid-configuration");
        assert_eq!(OidcConfig::new(ISSUER, [AUD]).discovery_url(), want);
        assert_eq!(OidcConfig::new(format!("{ISSUER}/"), [AUD]).discovery_url(), want);
    }

    #[test]
    fn jwks_keeps_only_rsa_signing_keys() {
        let s = Signer::new();
        let public = s.pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": n, "e": e, "use": "sig"},
            {"kty": "RSA", "kid": "b", "n": n, "e": e, "alg": "RS256"},
            {"kty": "RSA", "kid": "enc", "n": n, "e": e, "use": "enc"},
            {"kty": "RSA", "kid": "ps", "n": n, "e": e, "alg": "PS256"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": n, "e": e},
            {"kty": "RSA", "kid": "bad", "n": "!!", "e": e},
        ]});
        let mut kids: Vec<String> = parse_jwks(&jwks).into_keys().collect();
        kids.sort();
        assert_eq!(kids, ["a", "b"]);
        assert!(parse_jwks(&json!({"nokeys": 1})).is_empty());
    }

    #[test]
    fn status_codes() {
        assert_eq!(OidcError::Unavailable("x".into()).http_status(), 503);
        assert_eq!(OidcError::Config("x".into()).http_status(), 500);
        assert_eq!(OidcError::Expired.http_status(), 401);
        assert_eq!(OidcError::Signature.http_status(), 401);
    }
}
