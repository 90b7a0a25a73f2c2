//! The web console as `pxb-server` serves it, and the two ways into it, over HTTP against a real
//! server and the test issuer: the files with their Content-Security-Policy and caching, the
//! OpenID Connect authorization code flow with PKCE (what the console does in a browser; the
//! Playwright suite in `console/tests` does it in Chromium), and sessions from one-time codes.
//! Attacks first: a code used twice, a forged session token, an Entra ID user minting codes, a
//! wrong PKCE verifier, an unregistered redirect URI, files outside the bundle.

use std::io::Write as _;

use pxb_harness::oidc::{BrowserLogin, TestIssuer};
use pxb_tests::control::{AUDIENCE, ControlPlane, PROVIDER_ADMINS};
use serde_json::{Value, json};

const CLIENT: &str = "pxb-console-test";

async fn plane() -> ControlPlane {
    ControlPlane::start("acme", 0, |c| {
        c.auth.console_client_id = CLIENT.into();
    })
    .await
    .expect("control plane")
}

/// A client that trusts the test CA and does not follow redirects (as we read them).
fn browser(issuer: &TestIssuer) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(issuer.ca_pem().as_bytes()).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn challenge(verifier: &str) -> String {
    base64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn query_value(url: &str, key: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Runs the authorization request as a browser would and returns where the issuer sent it.
async fn authorize(
    cp: &ControlPlane,
    http: &reqwest::Client,
    redirect: &str,
    verifier: &str,
) -> (u16, String) {
    let discovery = json_of(
        http.get(format!("{}/.well-known/openid-configuration", cp.issuer.issuer()))
            .send()
            .await
            .expect("discovery"),
    )
    .await;
    let mut url =
        url::Url::parse(discovery["authorization_endpoint"].as_str().expect("endpoint")).expect("url");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "openid profile offline_access api://pxb-test/.default")
        .append_pair("state", "s-1")
        .append_pair("nonce", "n-1")
        .append_pair("code_challenge", &challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    let resp = http.get(url).send().await.expect("authorize");
    let to = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (resp.status().as_u16(), to)
}

async fn token_grant(cp: &ControlPlane, http: &reqwest::Client, form: &[(&str, &str)]) -> (u16, Value) {
    let endpoint = format!(
        "{}/oauth2/v2.0/token",
        cp.issuer.issuer().trim_end_matches("/v2.0")
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = http
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("token");
    let status = resp.status().as_u16();
    (status, json_of(resp).await)
}

/// Signs in through the authorization code flow with PKCE; the token answer.
async fn sign_in(cp: &ControlPlane, http: &reqwest::Client, redirect: &str) -> Value {
    let verifier = base64url(&rand::random::<[u8; 32]>());
    let (status, to) = authorize(cp, http, redirect, &verifier).await;
    assert_eq!(status, 302, "{to}");
    assert_eq!(query_value(&to, "state").as_deref(), Some("s-1"));
    let code = query_value(&to, "code").expect("a code");
    let (status, tokens) = token_grant(
        cp,
        http,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT),
            ("code", &code),
            ("redirect_uri", redirect),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

/// The JSON body of `resp` (`Null` when it has none).
async fn json_of(resp: reqwest::Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.expect("body")).unwrap_or(Value::Null)
}

/// `bytes` decompressed by Debian's `gzip`.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("gzip");
    assert!(out.status.success(), "not gzip");
    out.stdout
}

async fn bracket(cp: &ControlPlane, token: &str) -> String {
    let p = cp.get_ok("/v1/me/preferences", token).await.expect("preferences");
    p["timeBracket"]["kind"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy_and_cached_by_content() {
    let cp = plane().await;
    // reqwest here has no gzip support: it hands the compressed bytes over as they came.
    let http = reqwest::Client::new();
    let resp = http.get(format!("{}/", cp.url)).send().await.expect("GET /");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(h["content-type"].to_str().expect("text").starts_with("text/html"));
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().expect("text").to_owned();
    let origin = cp
        .issuer
        .issuer()
        .split("/")
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        &format!("connect-src 'self' {origin}"),
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = resp.text().await.expect("html");
    // No inline code the policy would have to allow.
    assert!(!html.contains("style="), "{html}");
    let assets: Vec<String> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/assets/"))
        .map(str::to_owned)
        .collect();
    assert!(
        assets.iter().any(|a| a.ends_with(".js")),
        "index.html loads no script from /assets: {html}"
    );
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script type=\"module\" src=\"/assets/").count()
            + html.matches("<script src=\"/assets/").count(),
        "every script is a file of the bundle: {html}"
    );
    let mut gzipped = html.len();
    for a in &assets {
        let plain = http.get(format!("{}{a}", cp.url)).send().await.expect("asset");
        assert_eq!(plain.status(), 200, "{a}");
        assert_eq!(
            plain.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{a}"
        );
        assert!(plain.headers().get("content-encoding").is_none());
        let plain = plain.bytes().await.expect("bytes");
        let gz = http
            .get(format!("{}{a}", cp.url))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("asset");
        assert_eq!(gz.headers()["content-encoding"], "gzip", "{a}");
        let gz = gz.bytes().await.expect("bytes");
        let unzipped = gunzip(&gz);
        assert_eq!(unzipped, plain.to_vec(), "{a}: the .gz is the same file");
        gzipped += gz.len();
    }
    assert!(gzipped < 300 * 1024, "first load is {gzipped} bytes compressed");
    for bad in [
        "/assets/../index.html",
        "/assets/%2e%2e/index.html",
        "/assets/nope.js",
    ] {
        let r = http.get(format!("{}{bad}", cp.url)).send().await.expect("GET");
        assert_eq!(r.status(), 404, "{bad}");
    }
    if let Some(js) = assets.iter().find(|a| a.ends_with(".js")) {
        let r = http.get(format!("{}{js}.gz", cp.url)).send().await.expect("GET");
        assert_eq!(r.status(), 404, "the .gz files are not addressable");
    }
    let config = json_of(
        http.get(format!("{}/console/config.json", cp.url))
            .send()
            .await
            .expect("config"),
    )
    .await;
    assert_eq!(
        config,
        json!({
            "issuer": cp.issuer.issuer(),
            "clientId": CLIENT,
            "scopes": ["openid", "profile", "offline_access", format!("{AUDIENCE}/.default")],
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_sign_in_renews_within_the_session_and_a_new_sign_in_starts_a_new_one() {
    let cp = plane().await;
    let redirect = format!("{}/", cp.url);
    cp.issuer.set_browser_login(
        BrowserLogin::new(CLIENT, &redirect, "operator", AUDIENCE).groups(&[PROVIDER_ADMINS]),
    );
    let http = browser(&cp.issuer);

    // Attacks on the flow first.
    let verifier = base64url(&rand::random::<[u8; 32]>());
    let (status, to) = authorize(&cp, &http, "https://evil.example/", &verifier).await;
    assert_eq!(status, 400, "an unregistered redirect URI gets no redirect: {to}");
    assert!(to.is_empty());
    let (status, to) = authorize(&cp, &http, &redirect, &verifier).await;
    assert_eq!(status, 302);
    let code = query_value(&to, "code").expect("code");
    let wrong = base64url(&rand::random::<[u8; 32]>());
    let exchange = |code: String, verifier: String| {
        let (cp, http, redirect) = (&cp, &http, &redirect);
        async move {
            token_grant(
                cp,
                http,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", CLIENT),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    let (status, body) = exchange(code.clone(), wrong).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = exchange(code, verifier).await;
    assert_eq!(
        status, 400,
        "a code is spent by its first exchange, even a failed one: {body}"
    );

    // A sign-in, as the console does it.
    let first = sign_in(&cp, &http, &redirect).await;
    let access = first["access_token"].as_str().expect("access token").to_owned();
    let who = cp.get_ok("/v1/whoami", &access).await.expect("whoami");
    assert_eq!(who["subject"], "operator");
    assert_eq!(who["providerAdmin"], true);
    assert_eq!(bracket(&cp, &access).await, "24h", "the default bracket");
    let (status, _) = cp
        .call(
            reqwest::Method::PUT,
            "/v1/me/preferences",
            &access,
            Some(json!({"timeBracket": {"kind": "7d"}})),
        )
        .await
        .expect("put");
    assert_eq!(status, 200);

    // Silent renewal: a new access token of the same session keeps the bracket.
    let refresh = first["refresh_token"].as_str().expect("refresh token").to_owned();
    let (status, renewed) = token_grant(
        &cp,
        &http,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    let access2 = renewed["access_token"].as_str().expect("access").to_owned();
    assert_ne!(access2, access);
    assert_eq!(bracket(&cp, &access2).await, "7d", "renewal keeps the session");
    let (status, _) = token_grant(
        &cp,
        &http,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_eq!(status, 400, "a refresh token works once");

    // Signing in again is a new session: back to the default.
    let second = sign_in(&cp, &http, &redirect).await;
    let access3 = second["access_token"].as_str().expect("access").to_owned();
    assert_eq!(bracket(&cp, &access3).await, "24h", "a new sign-in starts at 24h");
    assert_eq!(cp.issuer.browser_sign_ins(), 2);
    assert_eq!(cp.issuer.refreshes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_codes_open_sessions_that_end_and_only_the_development_token_mints_them() {
    let cp = plane().await;
    let http = reqwest::Client::new();
    let exchange = |code: String| {
        let http = http.clone();
        let url = cp.url.clone();
        async move {
            let r = http
                .post(format!("{url}/console/session"))
                .header("content-type", "application/json")
                .body(json!({"code": code}).to_string())
                .send()
                .await
                .expect("exchange");
            let status = r.status().as_u16();
            assert_eq!(r.headers()["cache-control"], "no-store");
            (status, json_of(r).await)
        }
    };
    let server = cp.daemon.as_ref().expect("daemon").server.clone();
    let code = server.console_sign_in_code(
        pxb_daemon::server::auth::Identity::new("alice").with_groups([PROVIDER_ADMINS]),
    );
    let (status, session) = exchange(code.clone()).await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["subject"], "alice");
    let token = session["token"].as_str().expect("token").to_owned();
    assert!(!token.contains(&code));
    let who = cp.get_ok("/v1/whoami", &token).await.expect("whoami");
    assert_eq!(
        (who["subject"].as_str(), who["providerAdmin"].as_bool()),
        (Some("alice"), Some(true))
    );

    // The attacks: the same code again, a guessed code, a forged session token.
    let (status, body) = exchange(code).await;
    assert_eq!(status, 401, "a code works once: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("used or expired")
    );
    let (status, _) = exchange(base64url(&rand::random::<[u8; 32]>())).await;
    assert_eq!(status, 401);
    let forged = format!("pxbc_{}", base64url(&rand::random::<[u8; 32]>()));
    let (status, _) = cp
        .call(reqwest::Method::GET, "/v1/whoami", &forged, None)
        .await
        .expect("call");
    assert_eq!(status, 401);

    // Each session has its own time bracket.
    let (status, _) = cp
        .call(
            reqwest::Method::PUT,
            "/v1/me/preferences",
            &token,
            Some(json!({"timeBracket": {"kind": "1h"}, "tab": "vms"})),
        )
        .await
        .expect("put");
    assert_eq!(status, 200);
    let code2 = server.console_sign_in_code(
        pxb_daemon::server::auth::Identity::new("alice").with_groups([PROVIDER_ADMINS]),
    );
    let (_, session2) = exchange(code2).await;
    let token2 = session2["token"].as_str().expect("token").to_owned();
    let p = cp.get_ok("/v1/me/preferences", &token2).await.expect("prefs");
    assert_eq!(p["timeBracket"]["kind"], "24h", "a new session starts at 24h");
    assert_eq!(p["tab"], "vms", "the tab is the user's");

    // Sign-out ends exactly that session.
    let r = http
        .delete(format!("{}/console/session", cp.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let (status, body) = cp
        .call(reqwest::Method::GET, "/v1/whoami", &token, None)
        .await
        .expect("call");
    assert_eq!(status, 401, "{body}");
    cp.get_ok("/v1/whoami", &token2)
        .await
        .expect("the other session goes on");

    // Minting codes over HTTP is for the development token only.
    let user = cp.admin_token();
    let r = http
        .post(format!("{}/console/code", cp.url))
        .bearer_auth(&user)
        .send()
        .await
        .expect("code");
    assert_eq!(
        r.status(),
        403,
        "an Entra ID user, even a provider admin, mints no codes"
    );
    let r = http
        .post(format!("{}/console/code", cp.url))
        .send()
        .await
        .expect("code");
    assert_eq!(r.status(), 401);
    // Not even a session of the development token's: codes never chain into longer sessions.
    let (status, dev) =
        exchange(server.console_sign_in_code(pxb_daemon::server::auth::Identity::development())).await;
    assert_eq!(status, 201);
    let dev_session = dev["token"].as_str().expect("token").to_owned();
    let who = cp.get_ok("/v1/whoami", &dev_session).await.expect("whoami");
    assert_eq!(who["providerAdmin"], true);
    let r = http
        .post(format!("{}/console/code", cp.url))
        .bearer_auth(&dev_session)
        .send()
        .await
        .expect("code");
    assert_eq!(r.status(), 403, "a console session mints no codes");
}
