//! Authentication to Azure Blob: Workload Identity, Shared Key and SAS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_core::credentials::{TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use azure_identity::{
    ClientAssertionCredentialOptions, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use pxb_core::{AccessToken, Error, Result, TokenSource};
use sha2::Sha256;

use crate::error;
use crate::http::HttpSettings;

/// The scope of Azure Storage tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// The public cloud's Entra ID authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Settings of a Workload Identity credential. Fields left `None` come from the standard
/// environment variables `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and
/// `AZURE_AUTHORITY_HOST`, so one process can use different client ids for different locations.
#[derive(Debug, Clone, Default)]
pub struct WorkloadIdentityOptions {
    /// The client id of the managed identity (or app registration) federated with the cluster.
    pub client_id: Option<String>,
    /// The Entra ID tenant.
    pub tenant_id: Option<String>,
    /// The projected service-account token file.
    pub token_file: Option<PathBuf>,
    /// The Entra ID authority host (https), e.g. `https://login.microsoftonline.com`.
    pub authority_host: Option<String>,
}

impl WorkloadIdentityOptions {
    /// The options from `lookup` (a variable's value by name; empty values count as unset):
    /// `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and
    /// `AZURE_AUTHORITY_HOST`, the variables Azure Workload Identity's webhook injects. What
    /// `lookup` does not set stays `None`, and is read from the process environment when the
    /// credential is built.
    ///
    /// ```
    /// use pxb_azure::WorkloadIdentityOptions;
    ///
    /// let o = WorkloadIdentityOptions::from_env_with(|name| {
    ///     (name == "AZURE_CLIENT_ID").then(|| "00000000-0000-0000-0000-000000000001".to_owned())
    /// });
    /// assert_eq!(o.client_id.as_deref(), Some("00000000-0000-0000-0000-000000000001"));
    /// assert_eq!(o.tenant_id, None);
    /// ```
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| crate::env::non_empty(&lookup, name);
        Self {
            client_id: var("AZURE_CLIENT_ID"),
            tenant_id: var("AZURE_TENANT_ID"),
            token_file: var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            authority_host: var("AZURE_AUTHORITY_HOST"),
        }
    }

    /// Sets the [`client_id`](Self::client_id) of the federated identity.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the Entra ID [`tenant_id`](Self::tenant_id).
    pub fn with_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Sets the projected service-account [`token_file`](Self::token_file).
    pub fn with_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Sets the Entra ID [`authority_host`](Self::authority_host) (https).
    pub fn with_authority_host(mut self, host: impl Into<String>) -> Self {
        self.authority_host = Some(host.into());
        self
    }

    fn resolve(self) -> Result<Resolved> {
        let from_env = |field: Option<String>, var: &str, what: &str| {
            field
                .or_else(|| std::env::var(var).ok())
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "workload identity: no {what}; set {var} or pass it explicitly"
                    ))
                })
        };
        let client_id = from_env(self.client_id, "AZURE_CLIENT_ID", "client id")?;
        let tenant_id = from_env(self.tenant_id, "AZURE_TENANT_ID", "tenant id")?;
        let token_file = PathBuf::from(from_env(
            self.token_file.map(|p| p.to_string_lossy().into_owned()),
            "AZURE_FEDERATED_TOKEN_FILE",
            "federated token file",
        )?);
        let authority_host = self
            .authority_host
            .or_else(|| std::env::var("AZURE_AUTHORITY_HOST").ok())
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
        if !authority_host.starts_with("https://") {
            return Err(Error::invalid(format!(
                "workload identity: the authority host {authority_host} must use https"
            )));
        }
        Ok(Resolved {
            client_id,
            tenant_id,
            token_file,
            authority_host,
        })
    }
}

#[derive(Debug, Clone)]
struct Resolved {
    client_id: String,
    tenant_id: String,
    token_file: PathBuf,
    authority_host: String,
}

/// What identifies one version of the token file (kubelet replaces it atomically when rotating).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Result<(FileStamp, Option<SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| {
        Error::unauthenticated(format!(
            "workload identity: cannot read the federated token file {}: {e} (is the projected \
             service-account token mounted into the pod?)",
            path.display()
        ))
    })?;
    let content = std::fs::read(path).map_err(|e| {
        Error::unauthenticated(format!("workload identity: cannot read {}: {e}", path.display()))
    })?;
    if content.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::unauthenticated(format!(
            "workload identity: the federated token file {} is empty",
            path.display()
        )));
    }
    let stamp = FileStamp {
        modified: md.modified().ok(),
        len: md.len(),
        ino: md.ino(),
    };
    Ok((stamp, jwt_expiry(&content)))
}

/// The `exp` claim of a JWT, if the bytes are one.
fn jwt_expiry(token: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(token).ok()?.trim();
    let payload = text.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("exp")?
        .as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

struct Current {
    stamp: FileStamp,
    assertion_expiry: Option<SystemTime>,
    credential: Arc<WorkloadIdentityCredential>,
}

/// Azure Workload Identity: exchanges the pod's projected service-account token for an Entra ID
/// access token (`azure_identity::WorkloadIdentityCredential`). No secret is stored anywhere.
///
/// Beyond the SDK credential it wraps: the token file is checked on every request, so a rotated
/// file is used at once (not after the SDK's 10-minute re-read), an expired assertion is reported
/// as such without a round trip, and errors name the step and the cause.
pub struct WorkloadIdentity {
    cfg: Resolved,
    client_options: azure_core::http::ClientOptions,
    current: Mutex<Current>,
}

impl WorkloadIdentity {
    /// Builds the credential; fails at once if settings are missing or the token file is unreadable.
    pub fn new(options: WorkloadIdentityOptions, http: &HttpSettings, ca_pem: Option<&[u8]>) -> Result<Self> {
        let cfg = options.resolve()?;
        let mut client_options = http.client_options(ca_pem)?;
        client_options.per_try_policies.push(Arc::new(EntraErrorBodies));
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = cfg.authority_host.clone();
        client_options.cloud = Some(Arc::new(azure_core::cloud::CloudConfiguration::Custom(custom)));
        let current = Self::build(&cfg, &client_options)?;
        Ok(Self {
            cfg,
            client_options,
            current: Mutex::new(current),
        })
    }

    fn build(cfg: &Resolved, client_options: &azure_core::http::ClientOptions) -> Result<Current> {
        let (stamp, assertion_expiry) = stamp(&cfg.token_file)?;
        let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: client_options.clone(),
            },
            client_id: Some(cfg.client_id.clone()),
            tenant_id: Some(cfg.tenant_id.clone()),
            token_file_path: Some(cfg.token_file.clone()),
        }))
        .map_err(|e| Error::invalid(format!("workload identity: {}", error::chain(&e))))?;
        Ok(Current {
            stamp,
            assertion_expiry,
            credential,
        })
    }

    /// The credential to use now, rebuilt if the token file changed since the last call.
    fn credential(&self) -> Result<Arc<WorkloadIdentityCredential>> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (now_stamp, _) = stamp(&self.cfg.token_file)?;
        if now_stamp != cur.stamp {
            tracing::info!(file = %self.cfg.token_file.display(), "federated token file rotated; using the new one");
            *cur = Self::build(&self.cfg, &self.client_options)?;
        }
        if let Some(exp) = cur.assertion_expiry
            && exp <= SystemTime::now()
        {
            let ago = SystemTime::now()
                .duration_since(exp)
                .unwrap_or_default()
                .as_secs();
            return Err(Error::unauthenticated(format!(
                "workload identity: the service-account token in {} expired {ago} s ago and was not \
                 refreshed (kubelet renews projected tokens; is the pod's token volume healthy?)",
                self.cfg.token_file.display()
            )));
        }
        Ok(cur.credential.clone())
    }
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenSource for WorkloadIdentity {
    async fn token(&self, scopes: &[&str]) -> Result<AccessToken> {
        let credential = self.credential()?;
        let token = credential
            .get_token(scopes, None)
            .await
            .map_err(|e| self.map_token_error(e))?;
        let expires_at =
            UNIX_EPOCH + Duration::from_secs(u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0));
        Ok(AccessToken::new(token.token.secret(), expires_at))
    }

    fn describe(&self) -> String {
        format!(
            "workload identity {} (tenant {})",
            self.cfg.client_id, self.cfg.tenant_id
        )
    }
}

impl WorkloadIdentity {
    fn map_token_error(&self, err: azure_core::Error) -> Error {
        let authority = &self.cfg.authority_host;
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<azure_core::Error>());
        match inner.map(|e| e.kind()) {
            Some(ErrorKind::HttpResponse { status, .. }) => {
                let description = inner.map(ToString::to_string).unwrap_or_default();
                let status = u16::from(*status);
                if status >= 500 || status == 429 {
                    Error::unavailable(format!(
                        "Entra ID ({authority}) failed the token exchange with {status}: {description}"
                    ))
                } else {
                    Error::unauthenticated(format!(
                        "token exchange rejected by Entra ID ({authority}, {status}) for client id {}: {description}",
                        self.cfg.client_id
                    ))
                }
            }
            Some(ErrorKind::Io | ErrorKind::Connection) => {
                error::transport(&format!("the Entra ID token endpoint {authority}"), &err)
            }
            _ => Error::unauthenticated(format!(
                "token exchange with Entra ID ({authority}) failed: {}",
                error::chain(&err)
            )),
        }
    }
}

/// Adapts any [`TokenSource`] to the SDK's `TokenCredential`, keeping pxb's error inside the SDK
/// error so the store can report it unchanged.
#[derive(Debug)]
pub(crate) struct SourceCredential(pub Arc<dyn TokenSource>);

#[async_trait]
impl TokenCredential for SourceCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let token = self
            .0
            .token(scopes)
            .await
            .map_err(|e| azure_core::Error::new(ErrorKind::Credential, e))?;
        let secs = token
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let expires_on =
            azure_core::time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
                .unwrap_or(azure_core::time::OffsetDateTime::UNIX_EPOCH);
        Ok(azure_core::credentials::AccessToken::new(
            token.secret().to_owned(),
            expires_on,
        ))
    }
}

/// Rewrites Entra ID's error answers so that `azure_identity` can read them.
///
/// `azure_identity` 1.0 reads `error_description` as a borrowed `&str`, which serde can only do
/// for a JSON string without escapes; Entra ID ends every description with
/// `\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …`. Unrewritten, every refusal
/// became serde's "expected a borrowed string", losing Entra's status and error code (so an
/// Entra outage was reported as a refused identity). The description is rewritten to one line
/// without characters JSON must escape; everything else, success answers included, passes
/// through unchanged.
#[derive(Debug)]
pub(crate) struct EntraErrorBodies;

/// The description of an Entra ID error on one line, with nothing JSON must escape: line
/// breaks and control characters become spaces (runs collapsed), `"` becomes `'` and `\`
/// becomes `/`.
pub(crate) fn plain_description(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        };
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out.trim().to_owned()
}

/// `body` with its `error_description` made [`plain_description`]; `None` when there is nothing
/// to change (not JSON, no description, already plain).
pub(crate) fn plain_error_body(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let description = v.get("error_description")?.as_str()?;
    let plain = plain_description(description);
    if plain == description {
        return None;
    }
    v["error_description"] = serde_json::Value::String(plain);
    serde_json::to_vec(&v).ok()
}

#[async_trait]
impl Policy for EntraErrorBodies {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let response = next[0].send(ctx, request, &next[1..]).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (status, mut headers, body) = response.deconstruct();
        let body = body.collect().await?;
        let body = match plain_error_body(&body) {
            Some(plain) => {
                // The length of the body the server sent, not of this one.
                headers.remove(azure_core::http::headers::CONTENT_LENGTH);
                bytes::Bytes::from(plain)
            }
            None => body,
        };
        Ok(azure_core::http::AsyncRawResponse::from_bytes(
            status, headers, body,
        ))
    }
}

/// Signs every try of a request with the storage account key (Shared Key authorization).
pub(crate) struct SharedKeyPolicy {
    account: String,
    key: Vec<u8>,
}

impl SharedKeyPolicy {
    /// `key` is the base64 account key as shown by the portal.
    pub(crate) fn new(account: &str, key: &str) -> Result<Self> {
        let key = STANDARD
            .decode(key.trim())
            .map_err(|_| Error::invalid("the storage account key is not valid base64 (AZURE_STORAGE_KEY)"))?;
        Ok(Self {
            account: account.to_owned(),
            key,
        })
    }

    fn string_to_sign(&self, request: &Request) -> String {
        let headers = request.headers();
        let h = |name: &'static str| {
            headers
                .get_optional_str(&azure_core::http::headers::HeaderName::from_static(name))
                .unwrap_or("")
                .to_owned()
        };
        let len = match request.body().len() {
            Some(0) | None => String::new(),
            Some(n) => n.to_string(),
        };
        let mut ms: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
            .map(|(k, v)| (k.as_str().to_owned(), v.as_str().trim().to_owned()))
            .collect();
        ms.sort();
        let canonical_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let url = request.url();
        let mut resource = format!("/{}{}", self.account, url.path());
        let mut params: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (k, v) in url.query_pairs() {
            params.entry(k.to_lowercase()).or_default().push(v.into_owned());
        }
        for (k, mut vs) in params {
            vs.sort();
            resource.push_str(&format!("\n{k}:{}", vs.join(",")));
        }
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n{}{}",
            request.method().as_str(),
            h("content-encoding"),
            h("content-language"),
            len,
            h("content-md5"),
            h("content-type"),
            h("if-modified-since"),
            h("if-match"),
            h("if-none-match"),
            h("if-unmodified-since"),
            h("range"),
            canonical_headers,
            resource
        )
    }
}

impl fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

fn hmac_b64(key: &[u8], data: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let date = azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::now_utc());
        request.insert_header(azure_core::http::headers::MS_DATE, date);
        let signature = hmac_b64(&self.key, &self.string_to_sign(request));
        request.insert_header(
            azure_core::http::headers::AUTHORIZATION,
            format!("SharedKey {}:{signature}", self.account),
        );
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Signs an account SAS for the blob service (read, write, delete, list, add, create on service,
/// containers and objects) valid until `expiry`. Classic mode uses it to hand an agent a
/// time-limited credential instead of the account key.
pub fn account_sas(account: &str, key: &str, expiry: SystemTime) -> Result<String> {
    let key = STANDARD
        .decode(key.trim())
        .map_err(|_| Error::invalid("the storage account key is not valid base64"))?;
    // `2026-01-01T10:10:00Z`: the SAS expiry format is RFC 3339 in UTC with whole seconds.
    let se = pxb_core::clock::rfc3339(expiry.max(UNIX_EPOCH));
    if pxb_core::clock::unix_secs(expiry) > 253_402_300_799 {
        // After 9999-12-31T23:59:59Z, which RFC 3339 cannot write.
        return Err(Error::invalid("SAS expiry out of range"));
    }
    let (sp, ss, srt, spr, sv) = ("rwdlac", "b", "sco", "https,http", "2021-08-06");
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n\n");
    let sig = hmac_b64(&key, &to_sign);
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", sv)
        .append_pair("ss", ss)
        .append_pair("srt", srt)
        .append_pair("sp", sp)
        .append_pair("se", &se)
        .append_pair("spr", spr)
        .append_pair("sig", &sig)
        .finish();
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_error_descriptions_are_made_readable_for_the_sdk() {
        // What Entra ID answers: the description ends with escaped line breaks.
        let body = br#"{"error":"invalid_client","error_description":"AADSTS700016: Application with identifier 'x' was not found.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026-01-01 00:00:00Z","error_codes":[700016]}"#;
        let plain = plain_error_body(body).expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&plain).expect("JSON");
        assert_eq!(
            v["error_description"],
            "AADSTS700016: Application with identifier 'x' was not found. Trace ID: t Correlation ID: c Timestamp: 2026-01-01 00:00:00Z"
        );
        assert_eq!(v["error_codes"][0], 700016);
        // The SDK's own shape of the error (a borrowed str) reads the rewritten body, not the
        // original.
        #[derive(serde::Deserialize)]
        struct Borrowed<'a> {
            #[serde(borrow)]
            error_description: &'a str,
        }
        assert!(serde_json::from_slice::<Borrowed<'_>>(body).is_err());
        let read: Borrowed<'_> = serde_json::from_slice(&plain).expect("borrowed");
        assert!(read.error_description.starts_with("AADSTS700016"));
        assert_eq!(plain_description(r#"a "b" \ c"#), "a 'b' / c");
        // Nothing to do: not JSON, no description, or already plain.
        assert_eq!(plain_error_body(b"<html>"), None);
        assert_eq!(plain_error_body(br#"{"error":"x"}"#), None);
        assert_eq!(
            plain_error_body(br#"{"error_description":"AADSTS1: fine"}"#),
            None
        );
    }

    #[test]
    fn jwt_expiry_reads_exp() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000,"sub":"x"}"#);
        let jwt = format!("e30.{payload}.sig\n");
        assert_eq!(
            jwt_expiry(jwt.as_bytes()),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(jwt_expiry(b"not a jwt"), None);
    }

    #[test]
    fn authority_host_must_be_https() {
        let opts = WorkloadIdentityOptions {
            client_id: Some("c".into()),
            tenant_id: Some("t".into()),
            token_file: Some("/nonexistent/token".into()),
            authority_host: Some("http://insecure".into()),
        };
        let e = WorkloadIdentity::new(opts, &HttpSettings::default(), None).expect_err("http authority");
        assert!(e.to_string().contains("must use https"), "{e}");
    }

    #[test]
    fn sas_has_the_expected_fields() {
        let key = STANDARD.encode(b"0123456789abcdef");
        let sas = account_sas("acct", &key, UNIX_EPOCH + Duration::from_secs(1_900_000_000)).expect("sas");
        for field in [
            "sv=2021-08-06",
            "ss=b",
            "srt=sco",
            "sp=rwdlac",
            "se=2030-03-17T17%3A46%3A40Z",
            "sig=",
        ] {
            assert!(sas.contains(field), "{sas} lacks {field}");
        }
        assert!(account_sas("acct", "not base64!", UNIX_EPOCH).is_err());
    }
}
