//! Redaction of credentials in text that leaves the process: error messages, statuses written to
//! clusters and the catalog, API responses and logs.
//!
//! Credentials reach such text by accident: an HTTP client names the request URL in its errors,
//! and a SAS is part of every request URL; a server echoes a header; a library prints a form body.
//! [`redact`] removes what has a recognisable shape wherever it appears:
//! - the signature of a SAS (`sig=…` in a URL query),
//! - bearer tokens (`Bearer …`) and JWTs (`eyJ….….…`),
//! - Shared Key signatures (`SharedKey account:…`) and account keys in connection strings
//!   (`AccountKey=…`),
//! - form and JSON fields that carry tokens (`client_assertion`, `access_token`, `refresh_token`,
//!   `client_secret`, `password`).
//!
//! A `key=value` is also recognised with the value in double quotes (`password="…"`, as tracing
//! writes a string field) or in escaped ones (`password=\"…\"` inside a quoted field), and a
//! JSON field also as JSON inside a quoted string (`body="{\"access_token\":\"…\"}"`).
//!
//! [`Redactor`] also removes known secret values (an account key, a whole SAS token) in any
//! encoding they are likely to appear in, for the components that hold one.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// A value in double quotes as tracing's `Debug` of a string writes it (`"a\"b"`).
const QUOTED: &str = r#""(?:[^"\\]|\\.)*"#;
/// A value in escaped double quotes, inside a quoted string (`\"a\"`, `\\\"a\\\"`): up to the
/// next escaped quote.
const ESCAPED_QUOTED: &str = r#"\\+"(?:[^"\\]|\\+[^"\\])*"#;

static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let p = |re: &str, with: &'static str| (Regex::new(re).expect("a valid built-in pattern"), with);
    // `key=value` where `key` (a regex ending at the `=`, its own group 1) is followed by an
    // unquoted value (`unquoted`, a character class repeated, the first character not a
    // backslash), a double-quoted one or one in escaped double quotes; the quotes are kept.
    let kv = |key: &str, unquoted: &str| {
        let quoted = |value: &str| {
            let (open, rest) = value.split_at(value.find('"').expect("a quote") + 1);
            p(&format!("({key}{open}){rest}"), "${1}[redacted]")
        };
        [
            quoted(QUOTED),
            quoted(ESCAPED_QUOTED),
            // Not starting with a backslash: that is an escaped quote's (the pattern above).
            p(
                &format!("({key}){}{unquoted}*", unquoted.replacen("[^", r"[^\\", 1)),
                "${1}[redacted]",
            ),
        ]
    };
    let mut patterns = vec![
        // JWTs first, so that a bearer token that is one is removed whole.
        p(
            r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
            REDACTED,
        ),
        p(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{16,}=*", "${1}[redacted]"),
        p(
            r"(?i)(\bsharedkey(?:lite)?\s+[^\s:]+:)[A-Za-z0-9+/=%]{8,}",
            "${1}[redacted]",
        ),
    ];
    patterns.extend(kv(
        r"(?i)(?:^|[?&;,\s\x22'(]|\\u0026|%26|%3F)sig(?:=|%3D)",
        r"[A-Za-z0-9%+/=_.~-]",
    ));
    patterns.extend(kv(r"(?i)\baccountkey=", r"[^;\s'`\x22)\]}]"));
    patterns.extend(kv(
        r"(?i)\b(?:client_assertion|client_secret|access_token|refresh_token|password)=",
        r"[^&\s'`\x22)\]}]",
    ));
    // JSON fields, also as JSON inside a quoted string (`{\"access_token\":\"…\"}`).
    patterns.push(p(
        r#"(?i)(\\*"(?:client_assertion|client_secret|access_token|refresh_token|password|accountKey|sasToken|sig)\\*"\s*:\s*\\*")(?:[^"\\]|\\+[^"\\])*"#,
        "${1}[redacted]",
    ));
    patterns
});

/// `text` with every credential of a recognisable shape replaced by [`REDACTED`]; borrowed
/// when there was nothing to remove.
///
/// ```
/// use pxb_core::redact::redact;
/// let e = "error sending request for url (https://a.blob.core.windows.net/c?sv=2021-08-06&sig=AbC%2Bd)";
/// assert_eq!(
///     redact(e),
///     "error sending request for url (https://a.blob.core.windows.net/c?sv=2021-08-06&sig=[redacted])"
/// );
/// assert_eq!(redact("Authorization: Bearer abcdefghij0123456789"), "Authorization: Bearer [redacted]");
/// ```
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (re, with) in PATTERNS.iter() {
        if re.is_match(&out) {
            out = Cow::Owned(re.replace_all(&out, *with).into_owned());
        }
    }
    out
}

/// Removes known secret values (and what [`redact`] recognises) from text.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for `secrets`; each is also removed percent-encoded and, for a SAS token, by
    /// its signature alone. Values shorter than 8 bytes are ignored (they would match too much).
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut all: Vec<String> = Vec::new();
        for s in secrets {
            let s = s.as_ref().trim().trim_start_matches('?');
            let mut forms = vec![
                s.to_owned(),
                url::form_urlencoded::byte_serialize(s.as_bytes()).collect(),
            ];
            if let Ok(decoded) = percent_decode(s) {
                forms.push(decoded);
            }
            for kv in s.split('&') {
                if let Some(sig) = kv.strip_prefix("sig=") {
                    forms.push(sig.to_owned());
                    if let Ok(d) = percent_decode(sig) {
                        forms.push(d);
                    }
                }
            }
            all.extend(forms.into_iter().filter(|f| f.len() >= 8));
        }
        // Longest first, so that a value containing another is removed whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Redactor { secrets: all }
    }

    /// `text` without the known secrets and without what [`redact`] recognises.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = redact(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        out
    }
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let decoded: String = url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or(())?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_removed_wherever_they_appear() {
        let cases = [
            (
                "cannot reach https://acct.blob.core.windows.net/c?restype=container&comp=list&sv=2021-08-06&ss=b&sig=Zm9v%2Bbar%3D: refused",
                "cannot reach https://acct.blob.core.windows.net/c?restype=container&comp=list&sv=2021-08-06&ss=b&sig=[redacted]: refused",
            ),
            ("url (https://x/c?sig=abc)", "url (https://x/c?sig=[redacted])"),
            ("SIG=abc&x=1 ?Sig=q", "SIG=[redacted]&x=1 ?Sig=[redacted]"),
            (
                r"u=https://a/c?sv=1\u0026sig=abc%2B",
                r"u=https://a/c?sv=1\u0026sig=[redacted]",
            ),
            (
                "u=https%3A%2F%2Fa%2Fc%3Fsv%3D1%26sig%3Dabc%252B",
                "u=https%3A%2F%2Fa%2Fc%3Fsv%3D1%26sig%3D[redacted]",
            ),
            ("sv=1,sig=abc", "sv=1,sig=[redacted]"),
            (r#"{"sig":"abc","sv":"1"}"#, r#"{"sig":"[redacted]","sv":"1"}"#),
            (
                "authorization: bearer abcdef0123456789xyz",
                "authorization: bearer [redacted]",
            ),
            (
                "send a bearer token in the Authorization header",
                "send a bearer token in the Authorization header",
            ),
            (
                "Authorization: SharedKey devstoreaccount1:Zm9vYmFy=",
                "Authorization: SharedKey devstoreaccount1:[redacted]",
            ),
            (
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9v+Ymar==;EndpointSuffix=x",
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=[redacted];EndpointSuffix=x",
            ),
            (
                "body client_assertion=abc.def&client_id=1",
                "body client_assertion=[redacted]&client_id=1",
            ),
            (
                r#"{"access_token":"xyz","token_type":"Bearer"}"#,
                r#"{"access_token":"[redacted]","token_type":"Bearer"}"#,
            ),
            ("token eyJhbGciOi.eyJzdWIi.c2ln end", "token [redacted] end"),
            (
                "nothing secret: sign=1 design=2",
                "nothing secret: sign=1 design=2",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
        assert!(matches!(redact("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn quoted_values_as_tracing_and_the_log_capture_format_them() {
        let cases = [
            (r#"password="hunter2hunter2""#, r#"password="[redacted]""#),
            (
                r#"login failed client_secret="s3cr3t~value.x" user="ops""#,
                r#"login failed client_secret="[redacted]" user="ops""#,
            ),
            (
                r#"token refresh_token="a b\"c d" next=1"#,
                r#"token refresh_token="[redacted]" next=1"#,
            ),
            (
                r#"body="{\"access_token\":\"ya29.a0AfH6SMBx\",\"token_type\":\"Bearer\"}""#,
                r#"body="{\"access_token\":\"[redacted]\",\"token_type\":\"Bearer\"}""#,
            ),
            (
                r#"body="{\"refresh_token\" : \"abc\\/def\"}""#,
                r#"body="{\"refresh_token\" : \"[redacted]\"}""#,
            ),
            (
                r#"message="retry with password=\"hunter2hunter2\" failed""#,
                r#"message="retry with password=\"[redacted]\" failed""#,
            ),
            (r#"sig="AbC%2Bd" sv=1"#, r#"sig="[redacted]" sv=1"#),
            (
                r#"conn="AccountName=a;AccountKey=Zm9v+Ymar==" cs AccountKey="Zm9v""#,
                r#"conn="AccountName=a;AccountKey=[redacted]" cs AccountKey="[redacted]""#,
            ),
            (
                r#"client_assertion="" empty"#,
                r#"client_assertion="[redacted]" empty"#,
            ),
            (r#"user="ops" passwords=2"#, r#"user="ops" passwords=2"#),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn known_values_go_in_every_encoding() {
        let sas =
            "sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&spr=https,http&sig=AbCd%2BeFgH%3D";
        let key = "Zm9vYmFyYmF6cXV4cXV1eA==";
        let r = Redactor::new([sas, key]);
        for leak in [
            format!("query {sas}"),
            "sig AbCd+eFgH= decoded".to_owned(),
            format!("key {key}"),
            format!(
                "encoded key {}",
                url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
            ),
        ] {
            let out = r.redact(&leak);
            assert!(
                !out.contains("AbCd") && !out.contains("Zm9vYmFy"),
                "{leak} -> {out}"
            );
            assert!(out.contains(REDACTED), "{out}");
        }
        assert!(!format!("{r:?}").contains("Zm9v"));
    }
}
