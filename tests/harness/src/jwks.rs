//! OpenID Connect key discovery and JWT signatures, as Entra ID uses them to check a federated
//! identity credential: the issuer's discovery document (`<issuer>/.well-known/openid-configuration`)
//! names a `jwks_uri`; the keys there verify the assertion's signature (ES256 or RS256).
//!
//! - [`get`] and [`get_blocking`]: an anonymous HTTPS `GET` (no client certificate, no
//!   `Authorization` header) trusting only the CA certificates given, as Entra ID fetches;
//! - [`IssuerKeys`]: a cache of issuers' keys that fetches on first use and again when a token
//!   names an unknown `kid`, recording every fetch ([`KeyFetch`]);
//! - [`verify_signature`]: the signature check, with the `jsonwebtoken` crate;
//! - [`sign_es256`] and [`generate_p256_key_pem`]: tokens signed with a key of the test's choice,
//!   for forgeries (a key the issuer does not publish) and for tokens the issuer would not mint
//!   (already expired).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The algorithms accepted on assertions (what Kubernetes service-account issuers sign with).
pub const ACCEPTED_ALGORITHMS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::RS256];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rustls client configuration trusting exactly the certificates in `ca_pem` (one or more
/// PEM certificates), presenting no client certificate.
pub fn anonymous_client_config(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("a certificate in the trusted CA PEM")?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "the trusted CA PEM holds no certificate");
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(rustls::ClientConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `GET url` over HTTPS without any credential (no client certificate, no `Authorization`
/// header), trusting `tls`'s roots; the status code and body. Times out after 10 s.
pub async fn get(url: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<(u16, String)> {
    request(url, tls, None).await
}

/// `POST url` with a form body (`application/x-www-form-urlencoded`) over HTTPS without any
/// credential, trusting `tls`'s roots; the status code and body. Times out after 10 s.
pub async fn post_form(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    form: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    request(url, tls, Some(body)).await
}

async fn request(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    form: Option<String>,
) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(FETCH_TIMEOUT, request_inner(url, tls, form))
        .await
        .with_context(|| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
        .with_context(|| url.to_owned())
}

async fn request_inner(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    form: Option<String>,
) -> anyhow::Result<(u16, String)> {
    let parsed = url::Url::parse(url)?;
    if parsed.scheme() != "https" {
        bail!("only https URLs are fetched, not {url}");
    }
    let host = parsed.host_str().context("no host")?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from(host.clone())?, tcp)
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut target = parsed.path().to_owned();
    if let Some(q) = parsed.query() {
        target.push('?');
        target.push_str(q);
    }
    let builder = hyper::Request::builder()
        .uri(target)
        .header("host", format!("{host}:{port}"))
        // The API server's JWKS answers 406 to `application/json` alone.
        .header("accept", "application/json, application/jwk-set+json");
    let request = match form {
        Some(body) => builder
            .method("POST")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))?,
        None => builder.method("GET").body(Full::new(Bytes::new()))?,
    };
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// [`get`] from synchronous code (on a thread and runtime of its own, so it may be called
/// from inside an async test too).
pub fn get_blocking(url: &str, ca_pem: &str) -> anyhow::Result<(u16, String)> {
    let tls = Arc::new(anonymous_client_config(ca_pem)?);
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(get(&url, tls))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fetching thread panicked"))?
}

/// One fetch of a discovery document or a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFetch {
    /// The URL fetched.
    pub url: String,
    /// The HTTP status, `None` when there was no answer.
    pub status: Option<u16>,
    /// The start of the body (at most 300 bytes), or the transport error.
    pub detail: String,
}

/// Why an issuer's keys could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError(pub String);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The keys of OIDC issuers, fetched anonymously over HTTPS and cached per issuer.
#[derive(Debug)]
pub struct IssuerKeys {
    tls: Arc<rustls::ClientConfig>,
    cache: Mutex<HashMap<String, JwkSet>>,
    fetches: Mutex<Vec<KeyFetch>>,
}

impl IssuerKeys {
    /// A cache trusting the certificates in `ca_pem` for the issuers' HTTPS endpoints.
    pub fn new(ca_pem: &str) -> anyhow::Result<Self> {
        Ok(Self {
            tls: Arc::new(anonymous_client_config(ca_pem)?),
            cache: Mutex::new(HashMap::new()),
            fetches: Mutex::new(Vec::new()),
        })
    }

    /// Every fetch so far, in order.
    pub fn fetches(&self) -> Vec<KeyFetch> {
        lock(&self.fetches).clone()
    }

    async fn fetch_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let answer = get(url, self.tls.clone()).await;
        let record = match &answer {
            Ok((status, body)) => KeyFetch {
                url: url.to_owned(),
                status: Some(*status),
                detail: body.chars().take(300).collect(),
            },
            Err(e) => KeyFetch {
                url: url.to_owned(),
                status: None,
                detail: format!("{e:#}"),
            },
        };
        lock(&self.fetches).push(record);
        match answer {
            Ok((200, body)) => {
                serde_json::from_str(&body).map_err(|e| FetchError(format!("GET {url}: not JSON: {e}")))
            }
            Ok((status, body)) => Err(FetchError(format!(
                "GET {url} answered {status}: {}",
                body.trim().chars().take(300).collect::<String>()
            ))),
            Err(e) => Err(FetchError(format!("{e:#}"))),
        }
    }

    /// Fetches `issuer`'s discovery document, checks it names the same issuer, fetches its JWKS
    /// and caches it (replacing what was cached).
    pub async fn refresh(&self, issuer: &str) -> Result<JwkSet, FetchError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery = self.fetch_json(&discovery_url).await?;
        let advertised = discovery["issuer"].as_str().unwrap_or_default();
        if advertised != issuer {
            return Err(FetchError(format!(
                "the discovery document at {discovery_url} names issuer '{advertised}', not '{issuer}'"
            )));
        }
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| {
                FetchError(format!(
                    "the discovery document at {discovery_url} has no jwks_uri"
                ))
            })?
            .to_owned();
        let jwks = self.fetch_json(&jwks_uri).await?;
        let set: JwkSet = serde_json::from_value(jwks)
            .map_err(|e| FetchError(format!("{jwks_uri} is not a JWK set: {e}")))?;
        lock(&self.cache).insert(issuer.to_owned(), set.clone());
        Ok(set)
    }

    /// The keys of `issuer` that may have signed a token naming `kid`: from the cache when it
    /// has that `kid`, else after fetching again (as Entra ID does on an unknown key id).
    pub async fn keys_for(&self, issuer: &str, kid: Option<&str>) -> Result<JwkSet, FetchError> {
        let cached = lock(&self.cache).get(issuer).cloned();
        if let Some(set) = cached {
            let known = match kid {
                Some(kid) => set.find(kid).is_some(),
                None => !set.keys.is_empty(),
            };
            if known {
                return Ok(set);
            }
        }
        self.refresh(issuer).await
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No published key has the token's `kid`.
    UnknownKey,
    /// The header names an algorithm other than ES256 or RS256, or one the key is not for.
    Algorithm(String),
    /// The key was found and the signature does not match.
    Mismatch(String),
}

/// Verifies `token`'s signature with the key of `keys` its header names (`kid`; every key when
/// it names none). Only ES256 and RS256 are accepted. Claims are not checked here.
pub fn verify_signature(token: &str, keys: &JwkSet) -> Result<(), SignatureError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| SignatureError::Mismatch(e.to_string()))?;
    if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
        return Err(SignatureError::Algorithm(format!("{:?}", header.alg)));
    }
    let candidates: Vec<&Jwk> = match &header.kid {
        Some(kid) => keys.find(kid).into_iter().collect(),
        None => keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(SignatureError::UnknownKey);
    }
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let mut last = SignatureError::UnknownKey;
    for jwk in candidates {
        if let Some(key_alg) = jwk.common.key_algorithm
            && format!("{key_alg:?}") != format!("{:?}", header.alg)
        {
            last = SignatureError::Algorithm(format!(
                "the token says {:?}, the key is for {key_alg:?}",
                header.alg
            ));
            continue;
        }
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(k) => k,
            Err(e) => {
                last = SignatureError::Mismatch(format!("unusable key: {e}"));
                continue;
            }
        };
        if key.family() != header.alg.family() {
            last = SignatureError::Algorithm(format!(
                "the token says {:?}, the key is a {:?} key",
                header.alg,
                key.family()
            ));
            continue;
        }
        match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
            Ok(_) => return Ok(()),
            Err(e) => last = SignatureError::Mismatch(e.to_string()),
        }
    }
    Err(last)
}

/// A fresh ECDSA P-256 private key, PKCS#8 PEM.
pub fn generate_p256_key_pem() -> anyhow::Result<String> {
    Ok(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem())
}

/// An ES256 JWT of `claims` signed with the P-256 private key `key_pem` (PKCS#8 PEM, as the
/// real cluster's `sa.key`), its header naming `kid`.
pub fn sign_es256(key_pem: &str, kid: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
    let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("a PKCS#8 PEM private key")?;
    let key = EncodingKey::from_ec_der(der.secret_der());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// The `kid` a JWT's header names, if any.
pub fn kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks_of(key_pem: &str, kid: &str) -> JwkSet {
        let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("pem");
        let key = EncodingKey::from_ec_der(der.secret_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        JwkSet { keys: vec![jwk] }
    }

    #[test]
    fn es256_signatures_verify_and_forgeries_do_not() {
        let key = generate_p256_key_pem().expect("key");
        let other = generate_p256_key_pem().expect("key");
        let keys = jwks_of(&key, "k1");
        let claims = serde_json::json!({"sub": "a", "exp": 1});
        let good = sign_es256(&key, "k1", &claims).expect("sign");
        assert_eq!(verify_signature(&good, &keys), Ok(()));
        // Another key under the published kid: the signature does not match.
        let forged = sign_es256(&other, "k1", &claims).expect("sign");
        assert!(matches!(
            verify_signature(&forged, &keys),
            Err(SignatureError::Mismatch(_))
        ));
        // An unpublished kid.
        let unknown = sign_es256(&other, "k2", &claims).expect("sign");
        assert_eq!(verify_signature(&unknown, &keys), Err(SignatureError::UnknownKey));
        // The payload edited, the signature kept.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"sub":"b","exp":1}"#,
        );
        let edited = parts.join(".");
        assert!(matches!(
            verify_signature(&edited, &keys),
            Err(SignatureError::Mismatch(_))
        ));
        // HS256 with the public key's bytes as a secret is refused by algorithm.
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some("k1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &claims,
            &EncodingKey::from_secret(b"x"),
        )
        .expect("hs256");
        assert!(matches!(
            verify_signature(&hs, &keys),
            Err(SignatureError::Algorithm(_))
        ));
    }
}
