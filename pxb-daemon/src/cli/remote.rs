//! Talking to `pxb-server`: the context file (like a kubeconfig), the API client, and tables.
//!
//! The context file is `$PXB_CONFIG`, else `$XDG_CONFIG_HOME/pxb/config.yaml`, else
//! `~/.config/pxb/config.yaml`. It holds named contexts (server URL, org, bearer token) and the
//! current one; `pxb login` writes it with mode 0600. `--server`, `--org` and `--token` (or
//! `PXB_SERVER`, `PXB_ORG`, `PXB_TOKEN`) override it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Connection options every server command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Conn {
    /// The context to use (default: the current one).
    #[arg(long, global = true, env = "PXB_CONTEXT")]
    pub context: Option<String>,
    /// The server's API URL (overrides the context).
    #[arg(long, global = true, env = "PXB_SERVER")]
    pub server: Option<String>,
    /// The org (overrides the context).
    #[arg(long, global = true, env = "PXB_ORG")]
    pub org: Option<String>,
    /// A bearer token (overrides the context).
    #[arg(long, global = true, env = "PXB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// One named context.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// The API URL.
    pub server: String,
    /// The org commands work in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The context file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContextFile {
    /// The current context's name.
    #[serde(default)]
    pub current: String,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the context file is.
pub fn context_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PXB_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("pxb").join("config.yaml")
}

impl ContextFile {
    /// Reads the file; a missing file is empty.
    pub fn load() -> Result<Self, String> {
        let path = context_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the file (mode 0600: it holds tokens).
    pub fn save(&self) -> Result<PathBuf, String> {
        let path = context_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_saphyr::to_string(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("yaml.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        use std::io::Write as _;
        opts.open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

/// An API client for one server, org and token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    org: Option<String>,
}

/// An API error as the CLI shows it.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// HTTP status (0: not reached).
    pub status: u16,
    /// For humans.
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} ({})", self.message, self.status)
        }
    }
}

impl Client {
    /// The client for `conn`, from the context file and the overrides.
    pub fn from_conn(conn: &Conn) -> Result<Self, String> {
        let file = ContextFile::load()?;
        let name = conn.context.clone().unwrap_or_else(|| file.current.clone());
        let ctx = file.contexts.get(&name).cloned().unwrap_or_default();
        let server = conn.server.clone().unwrap_or(ctx.server);
        if server.is_empty() {
            return Err(format!(
                "no server: run `pxb login --server URL --token TOKEN`, or pass --server (context file {})",
                context_path().display()
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Client {
            http,
            base: server.trim_end_matches('/').to_owned(),
            token: conn.token.clone().or(ctx.token),
            org: conn.org.clone().or(ctx.org),
        })
    }

    /// The org, or an error saying how to choose one.
    pub fn org(&self) -> Result<String, ApiFailure> {
        self.org.clone().ok_or_else(|| ApiFailure {
            status: 0,
            message: "no org: pass --org or log in with `pxb login --org ORG`".into(),
        })
    }

    /// `/v1/orgs/{org}` + `rest`.
    pub fn org_path(&self, rest: &str) -> Result<String, ApiFailure> {
        Ok(format!("/v1/orgs/{}{rest}", self.org()?))
    }

    /// Calls the API; a non-2xx answer is an error with the server's message.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ApiFailure> {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| ApiFailure {
            status: 0,
            message: e.to_string(),
        })?;
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| ApiFailure {
            status: 0,
            message: format!("cannot reach {}: {e}", self.base),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ApiFailure {
            status,
            message: format!("reading the answer: {e}"),
        })?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            Err(ApiFailure { status, message })
        }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Value, ApiFailure> {
        self.call("GET", path, None).await
    }
}

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// An epoch-milliseconds value as RFC 3339 (seconds).
pub fn ms_cell(v: &Value) -> String {
    v.as_i64()
        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}
