//! A test OpenID Connect issuer shaped like Entra ID, over HTTPS: a discovery document and a JWKS of
//! RSA 2048 keys generated at test time, and tokens signed with them (RS256), plus the forgeries
//! a validator must refuse (`alg: none`, HS256 with a public key as secret, unknown `kid`).
//!
//! The issuer is `https://127.0.0.1:<port>/<tenant>/v2.0`; its discovery document is at
//! `<issuer>/.well-known/openid-configuration` and names the JWKS
//! `https://127.0.0.1:<port>/<tenant>/discovery/v2.0/keys`, as Entra ID does.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::azure::TENANT_ID;
use crate::jwt::unix_now;
use crate::server::BackgroundServer;
use crate::tls::TestCa;

/// One RSA signing key and its `kid`.
struct SigningKey {
    kid: String,
    pair: KeyPair,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
        Ok(Self {
            kid: format!("pxb-test-{:016x}", rand::random::<u64>()),
            pair,
        })
    }

    fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// An RS256 JWT of `claims` signed with this key, whose header names `kid`.
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let msg = signing_input(&json!({"typ": "JWT", "alg": "RS256", "kid": kid}), claims);
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg.as_bytes(),
                &mut sig,
            )
            .expect("RS256 signing with a freshly generated key");
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

struct Keys {
    current: Arc<SigningKey>,
    published: Vec<Arc<SigningKey>>,
}

struct State {
    issuer: OnceLock<String>,
    advertised_issuer: Mutex<Option<String>>,
    keys: Mutex<Keys>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    failing: AtomicBool,
    stall_ms: std::sync::atomic::AtomicU64,
    device: Mutex<Option<DeviceGrant>>,
    browser: Mutex<Option<BrowserLogin>>,
    /// Authorization codes handed out, by code.
    codes: Mutex<std::collections::HashMap<String, PendingCode>>,
    /// Refresh tokens handed out: the session (`sid`) and the user each continues.
    refresh: Mutex<std::collections::HashMap<String, (String, BrowserUser)>>,
    browser_sign_ins: AtomicUsize,
    refreshes: AtomicUsize,
}

/// Who signs in through the authorization endpoint (a browser), and for which client
/// ([`TestIssuer::set_browser_login`]).
#[derive(Debug, Clone)]
pub struct BrowserLogin {
    client_id: String,
    redirect_uri: String,
    subject: String,
    audience: String,
    groups: Vec<String>,
    roles: Vec<String>,
    lifetime_secs: i64,
    /// Further users, signed in when the authorization request's `login_hint` names them.
    others: Vec<BrowserUser>,
}

/// A further user of a [`BrowserLogin`].
#[derive(Debug, Clone)]
struct BrowserUser {
    subject: String,
    groups: Vec<String>,
    roles: Vec<String>,
}

impl BrowserLogin {
    /// `subject` signs in to the public client `client_id`, whose only redirect URI is
    /// `redirect_uri`, and gets access tokens for `audience` (no groups, no roles, an hour).
    pub fn new(client_id: &str, redirect_uri: &str, subject: &str, audience: &str) -> Self {
        BrowserLogin {
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            subject: subject.into(),
            audience: audience.into(),
            groups: Vec::new(),
            roles: Vec::new(),
            lifetime_secs: 3600,
            others: Vec::new(),
        }
    }

    /// Also signs in `subject` with `groups` and `roles`, when an authorization request's
    /// `login_hint` is `subject` or `subject@pxb.test` (as Entra ID picks the hinted account).
    pub fn also(mut self, subject: &str, groups: &[&str], roles: &[&str]) -> Self {
        self.others.push(BrowserUser {
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        });
        self
    }

    /// The user `hint` names (none: the first one); `None` when it names nobody.
    fn user(&self, hint: Option<&str>) -> Option<BrowserUser> {
        let first = BrowserUser {
            subject: self.subject.clone(),
            groups: self.groups.clone(),
            roles: self.roles.clone(),
        };
        let Some(hint) = hint.filter(|h| !h.is_empty()) else {
            return Some(first);
        };
        let name = hint.strip_suffix("@pxb.test").unwrap_or(hint);
        std::iter::once(first)
            .chain(self.others.iter().cloned())
            .find(|u| u.subject == name)
    }

    /// With these token groups.
    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    /// With these app roles.
    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    /// Access tokens live `secs`.
    pub fn lifetime(mut self, secs: i64) -> Self {
        self.lifetime_secs = secs;
        self
    }
}

/// An authorization code waiting for its exchange.
struct PendingCode {
    challenge: String,
    redirect_uri: String,
    nonce: Option<String>,
    sid: String,
    user: BrowserUser,
    /// The scope asked for `offline_access`: a refresh token comes with the tokens.
    offline: bool,
    issued: std::time::Instant,
}

/// What the device-code flow answers: `pending` polls get `authorization_pending`, then the
/// token of `claims` (or `access_denied` when `claims` is `None`).
struct DeviceGrant {
    claims: Option<Value>,
    pending: u32,
}

/// The device code the test issuer hands out.
pub const DEVICE_CODE: &str = "device-code-for-tests";
/// The user code the test issuer hands out.
pub const USER_CODE: &str = "PXBT-EST1";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running test issuer; stopped when dropped.
pub struct TestIssuer {
    server: BackgroundServer,
    state: Arc<State>,
    ca_pem: String,
}

impl fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issuer", &self.issuer())
            .field("kid", &self.current_kid())
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    /// Starts the issuer on a loopback port with one fresh key, serving a certificate of `ca`.
    pub fn start(ca: &TestCa) -> anyhow::Result<Self> {
        let key = Arc::new(SigningKey::generate()?);
        let state = Arc::new(State {
            issuer: OnceLock::new(),
            advertised_issuer: Mutex::new(None),
            keys: Mutex::new(Keys {
                current: key.clone(),
                published: vec![key],
            }),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            stall_ms: std::sync::atomic::AtomicU64::new(0),
            device: Mutex::new(None),
            browser: Mutex::new(None),
            codes: Mutex::new(Default::default()),
            refresh: Mutex::new(Default::default()),
            browser_sign_ins: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
        });
        let handler_state = state.clone();
        let server = BackgroundServer::start(Some(ca.rustls_server_config()?), move |req| {
            let state = handler_state.clone();
            async move { state.serve(req).await }
        })?;
        let issuer = format!("https://127.0.0.1:{}/{TENANT_ID}/v2.0", server.port());
        let _ = state.issuer.set(issuer);
        Ok(Self {
            server,
            state,
            ca_pem: ca.ca_pem.clone(),
        })
    }

    /// The issuer URL, as tokens' `iss` and the discovery document name it.
    pub fn issuer(&self) -> String {
        self.state.issuer.get().cloned().unwrap_or_default()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The PEM of the CA its certificate chains to.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Entra-like claims: `iss` this issuer, `sub` and `oid` `subject`, `tid` the test tenant,
    /// `preferred_username` `<subject>@pxb.test`, `aud`, `groups`, `roles`, `iat` and `nbf` five minutes
    /// before now (or before `exp` if that is earlier), and `exp` `lifetime_secs` from now (in the
    /// past when negative).
    pub fn claims_for(
        &self,
        subject: &str,
        audience: &str,
        groups: &[&str],
        roles: &[&str],
        lifetime_secs: i64,
    ) -> Value {
        let now = unix_now() as i64;
        let exp = now + lifetime_secs;
        let iat = now.min(exp) - 300;
        json!({
            "iss": self.issuer(),
            "aud": audience,
            "sub": subject,
            "oid": subject,
            "tid": TENANT_ID,
            "preferred_username": format!("{subject}@pxb.test"),
            "groups": groups,
            "roles": roles,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "ver": "2.0",
        })
    }

    /// `claims` as an RS256 token signed with the current key, naming its `kid`.
    pub fn token(&self, claims: Value) -> String {
        let key = self.current();
        key.sign(&key.kid, &claims)
    }

    /// The `kid` of the current key.
    pub fn current_kid(&self) -> String {
        self.current().kid.clone()
    }

    /// Makes a fresh key the current one. The JWKS then publishes only the new key, or, with
    /// `keep_old`, the new one besides those published before.
    pub fn rotate(&self, keep_old: bool) -> anyhow::Result<()> {
        let key = Arc::new(SigningKey::generate()?);
        let mut keys = lock(&self.state.keys);
        if !keep_old {
            keys.published.clear();
        }
        keys.published.push(key.clone());
        keys.current = key;
        Ok(())
    }

    /// `claims` signed with the current key, but with a random `kid` the JWKS does not publish
    /// (the signature would verify with the current key: a validator must not try every key).
    pub fn token_with_unknown_kid(&self, claims: Value) -> String {
        self.current()
            .sign(&format!("bogus-{:016x}", rand::random::<u64>()), &claims)
    }

    /// `claims` as an HS256 token with HMAC key `secret`, naming the current `kid` (the
    /// algorithm-confusion forgery when `secret` is the public key).
    pub fn hs256_token(&self, claims: Value, secret: &[u8]) -> String {
        let msg = signing_input(
            &json!({"typ": "JWT", "alg": "HS256", "kid": self.current_kid()}),
            &claims,
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let tag = aws_lc_rs::hmac::sign(&key, msg.as_bytes());
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// `claims` as an unsigned token (`alg: none`, empty signature), naming the current `kid`.
    pub fn none_token(&self, claims: Value) -> String {
        let msg = signing_input(
            &json!({"typ": "JWT", "alg": "none", "kid": self.current_kid()}),
            &claims,
        );
        format!("{msg}.")
    }

    /// The current public key as PEM (SubjectPublicKeyInfo, `BEGIN PUBLIC KEY`).
    pub fn public_key_pem(&self) -> String {
        let der = self
            .current()
            .pair
            .public_key()
            .as_der()
            .expect("encoding a public key");
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The current public key as PKCS#1 `RSAPublicKey` DER.
    pub fn public_key_pkcs1_der(&self) -> Vec<u8> {
        self.current().pair.public_key().as_ref().to_vec()
    }

    /// The current key's modulus `n`, big-endian.
    pub fn modulus(&self) -> Vec<u8> {
        self.current()
            .pair
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec()
    }

    /// How many JWKS requests it has answered (failed ones included).
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many discovery requests it has answered (failed ones included).
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Discovery and JWKS requests are answered only after `stall` (a hanging issuer).
    pub fn set_stall(&self, stall: std::time::Duration) {
        let ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        self.state.stall_ms.store(ms, Ordering::SeqCst);
    }

    /// While `failing`, discovery and JWKS requests are answered with 503.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes the discovery document name `issuer` (`None`: the real one), as a misconfigured
    /// or impostor issuer would.
    pub fn set_advertised_issuer(&self, issuer: Option<&str>) {
        *lock(&self.state.advertised_issuer) = issuer.map(str::to_owned);
    }

    /// The device-code flow signs in with `claims` after `pending` polls that answer
    /// `authorization_pending`; `None` denies the sign-in.
    pub fn set_device_login(&self, claims: Option<Value>, pending: u32) {
        *lock(&self.state.device) = Some(DeviceGrant { claims, pending });
    }

    /// The authorization code flow with PKCE (S256) signs `login`'s user in at once (no login
    /// page: the browser is sent straight back with a code). Every sign-in is a new session
    /// (`sid`); a refresh token continues its session.
    pub fn set_browser_login(&self, login: BrowserLogin) {
        *lock(&self.state.browser) = Some(login);
    }

    /// How many authorization codes were exchanged for tokens.
    pub fn browser_sign_ins(&self) -> usize {
        self.state.browser_sign_ins.load(Ordering::SeqCst)
    }

    /// How many refresh-token grants were answered with tokens.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    fn current(&self) -> Arc<SigningKey> {
        lock(&self.state.keys).current.clone()
    }
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = hyper::header::HeaderValue::from_str(to) {
        r.headers_mut().insert("location", v);
    }
    r
}

fn query_of(req: &Request<Incoming>) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

/// Lets a page of any origin read the answer (as Entra ID's discovery document and its token
/// endpoint for single-page applications do).
fn cors(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(
        "access-control-allow-origin",
        hyper::header::HeaderValue::from_static("*"),
    );
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

impl State {
    async fn serve(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        use http_body_util::BodyExt as _;
        let issuer = self.issuer.get().cloned().unwrap_or_default();
        let origin = issuer
            .split(&format!("/{TENANT_ID}/"))
            .next()
            .unwrap_or_default()
            .to_owned();
        let path = req.uri().path().to_owned();
        if path == format!("/{TENANT_ID}/oauth2/v2.0/authorize") {
            return self.authorize(&req);
        }
        if path == format!("/{TENANT_ID}/oauth2/v2.0/logout") {
            let q = query_of(&req);
            let allowed = lock(&self.browser).as_ref().map(|b| b.redirect_uri.clone());
            return match q.get("post_logout_redirect_uri") {
                Some(to) if Some(to) == allowed.as_ref() => redirect(to),
                _ => json_response(StatusCode::OK, &json!({"signed_out": true})),
            };
        }
        let is_device = path == format!("/{TENANT_ID}/oauth2/v2.0/devicecode");
        let is_token = path == format!("/{TENANT_ID}/oauth2/v2.0/token");
        if !(is_device || is_token) {
            let stall = self.stall_ms.load(Ordering::SeqCst);
            if stall > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
            }
            return self.handle(&req);
        }
        if req.method() != hyper::Method::POST {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed"}),
            );
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_request"})),
        };
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        if form.get("client_id").is_none_or(|c| c.is_empty()) {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_client"}));
        }
        if is_device {
            return json_response(
                StatusCode::OK,
                &json!({
                    "device_code": DEVICE_CODE,
                    "user_code": USER_CODE,
                    "verification_uri": format!("{origin}/devicelogin"),
                    "expires_in": 900,
                    "interval": 1,
                    "message": format!("To sign in, open {origin}/devicelogin and enter the code {USER_CODE}."),
                }),
            );
        }
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => return cors(self.code_grant(&form)),
            Some("refresh_token") => return cors(self.refresh_grant(&form)),
            _ => {}
        }
        if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:device_code")
            || form.get("device_code").map(String::as_str) != Some(DEVICE_CODE)
        {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_grant"}));
        }
        let mut grant = lock(&self.device);
        let Some(g) = grant.as_mut() else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "authorization_pending"}),
            );
        };
        if g.pending > 0 {
            g.pending -= 1;
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "authorization_pending"}),
            );
        }
        match &g.claims {
            None => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "access_denied", "error_description": "the user declined"}),
            ),
            Some(claims) => {
                let key = lock(&self.keys).current.clone();
                json_response(
                    StatusCode::OK,
                    &json!({"access_token": key.sign(&key.kid, claims), "token_type": "Bearer", "expires_in": 3600}),
                )
            }
        }
    }

    /// `GET …/authorize`: checks the client, the redirect URI and the PKCE challenge, and sends
    /// the browser back with a code (errors go back to a registered redirect URI only).
    fn authorize(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let q = query_of(req);
        let browser = lock(&self.browser);
        let Some(b) = browser.as_ref() else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "no browser sign-in set up"}),
            );
        };
        if q.get("client_id") != Some(&b.client_id) {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": "unauthorized_client"}));
        }
        if q.get("redirect_uri") != Some(&b.redirect_uri) {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": "redirect_uri is not registered"}),
            );
        }
        let back = |params: &[(&str, &str)]| {
            let mut u = url::Url::parse(&b.redirect_uri).expect("registered redirect URI");
            {
                let mut pairs = u.query_pairs_mut();
                for (k, v) in params {
                    pairs.append_pair(k, v);
                }
                if let Some(st) = q.get("state") {
                    pairs.append_pair("state", st);
                }
            }
            redirect(u.as_str())
        };
        let challenge = q.get("code_challenge").cloned().unwrap_or_default();
        if q.get("response_type").map(String::as_str) != Some("code")
            || q.get("code_challenge_method").map(String::as_str) != Some("S256")
            || challenge.len() < 43
        {
            return back(&[
                ("error", "invalid_request"),
                ("error_description", "code with PKCE S256 only"),
            ]);
        }
        let Some(user) = b.user(q.get("login_hint").map(String::as_str)) else {
            return back(&[
                ("error", "login_required"),
                ("error_description", "no such account here"),
            ]);
        };
        let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        lock(&self.codes).insert(
            code.clone(),
            PendingCode {
                challenge,
                redirect_uri: b.redirect_uri.clone(),
                nonce: q.get("nonce").cloned(),
                sid: format!("sid-{:016x}", rand::random::<u64>()),
                user,
                offline: q
                    .get("scope")
                    .is_some_and(|s| s.split(' ').any(|x| x == "offline_access")),
                issued: std::time::Instant::now(),
            },
        );
        back(&[("code", &code)])
    }

    /// The access, id and refresh tokens of `u`'s session `sid`.
    fn tokens(&self, sid: &str, u: &BrowserUser, nonce: Option<&str>, offline: bool) -> Option<Value> {
        let browser = lock(&self.browser);
        let b = browser.as_ref()?;
        let issuer = self.issuer.get().cloned().unwrap_or_default();
        let now = unix_now() as i64;
        let key = lock(&self.keys).current.clone();
        let access = json!({
            "iss": issuer, "aud": b.audience, "sub": u.subject, "oid": u.subject, "tid": TENANT_ID,
            "preferred_username": format!("{}@pxb.test", u.subject), "name": u.subject,
            "groups": u.groups, "roles": u.roles, "sid": sid,
            "uti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>()),
            "iat": now - 5, "nbf": now - 5, "exp": now + b.lifetime_secs, "ver": "2.0",
        });
        let mut id = json!({
            "iss": issuer, "aud": b.client_id, "sub": u.subject, "oid": u.subject, "tid": TENANT_ID,
            "preferred_username": format!("{}@pxb.test", u.subject), "sid": sid,
            "iat": now - 5, "nbf": now - 5, "exp": now + 3600, "ver": "2.0",
        });
        if let Some(n) = nonce {
            id["nonce"] = json!(n);
        }
        let mut answer = json!({
            "token_type": "Bearer",
            "access_token": key.sign(&key.kid, &access),
            "id_token": key.sign(&key.kid, &id),
            "expires_in": b.lifetime_secs,
            "scope": format!("{}/.default openid profile", b.audience),
        });
        // Refresh tokens only for `offline_access`, as Entra ID hands them out.
        if offline {
            let refresh = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            lock(&self.refresh).insert(refresh.clone(), (sid.to_owned(), u.clone()));
            answer["refresh_token"] = json!(refresh);
            answer["scope"] = json!(format!("{}/.default openid profile offline_access", b.audience));
        }
        Some(answer)
    }

    fn code_grant(&self, form: &std::collections::HashMap<String, String>) -> Response<Full<Bytes>> {
        let invalid = |why: &str| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_grant", "error_description": why}),
            )
        };
        let client_ok = lock(&self.browser)
            .as_ref()
            .is_some_and(|b| form.get("client_id") == Some(&b.client_id));
        if !client_ok {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_client"}));
        }
        // A code works once, whatever happens next.
        let Some(p) = form.get("code").and_then(|c| lock(&self.codes).remove(c)) else {
            return invalid("the code is unknown or used");
        };
        if p.issued.elapsed() > std::time::Duration::from_secs(300) {
            return invalid("the code expired");
        }
        if form.get("redirect_uri") != Some(&p.redirect_uri) {
            return invalid("redirect_uri differs from the authorization request");
        }
        match form.get("code_verifier") {
            Some(v) if s256(v) == p.challenge => {}
            _ => return invalid("the code_verifier does not match the code_challenge"),
        }
        match self.tokens(&p.sid, &p.user, p.nonce.as_deref(), p.offline) {
            Some(t) => {
                self.browser_sign_ins.fetch_add(1, Ordering::SeqCst);
                json_response(StatusCode::OK, &t)
            }
            None => invalid("no browser sign-in set up"),
        }
    }

    fn refresh_grant(&self, form: &std::collections::HashMap<String, String>) -> Response<Full<Bytes>> {
        let client_ok = lock(&self.browser)
            .as_ref()
            .is_some_and(|b| form.get("client_id") == Some(&b.client_id));
        if !client_ok {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_client"}));
        }
        // Refresh tokens rotate: the one presented is spent.
        let sid = form
            .get("refresh_token")
            .and_then(|r| lock(&self.refresh).remove(r));
        match sid.and_then(|(sid, user)| self.tokens(&sid, &user, None, true)) {
            Some(t) => {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
                json_response(StatusCode::OK, &t)
            }
            None => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_grant", "error_description": "the refresh token is unknown or used"}),
            ),
        }
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let issuer = self.issuer.get().cloned().unwrap_or_default();
        let origin = issuer.split(&format!("/{TENANT_ID}/")).next().unwrap_or_default();
        let discovery = format!("/{TENANT_ID}/v2.0/.well-known/openid-configuration");
        let jwks = format!("/{TENANT_ID}/discovery/v2.0/keys");
        let path = req.uri().path();
        let counter = if path == discovery {
            &self.discovery_fetches
        } else if path == jwks {
            &self.jwks_fetches
        } else {
            return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
        };
        counter.fetch_add(1, Ordering::SeqCst);
        if req.method() != hyper::Method::GET {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed"}),
            );
        }
        if self.failing.load(Ordering::SeqCst) {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "temporarily_unavailable"}),
            );
        }
        if path == discovery {
            let advertised = lock(&self.advertised_issuer).clone().unwrap_or(issuer.clone());
            return cors(json_response(
                StatusCode::OK,
                &json!({
                    "issuer": advertised,
                    "jwks_uri": format!("{origin}{jwks}"),
                    "authorization_endpoint": format!("{origin}/{TENANT_ID}/oauth2/v2.0/authorize"),
                    "token_endpoint": format!("{origin}/{TENANT_ID}/oauth2/v2.0/token"),
                    "device_authorization_endpoint": format!("{origin}/{TENANT_ID}/oauth2/v2.0/devicecode"),
                    "end_session_endpoint": format!("{origin}/{TENANT_ID}/oauth2/v2.0/logout"),
                    "code_challenge_methods_supported": ["S256"],
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }),
            ));
        }
        let keys: Vec<Value> = lock(&self.keys).published.iter().map(|k| k.jwk()).collect();
        json_response(StatusCode::OK, &json!({"keys": keys}))
    }
}
