//! Talking to `pxb-server`: the context file (like a kubeconfig), the typed API client it
//! configures ([`crate::client::Client`]), and tables.
//!
//! The context file is `$PXB_CONFIG`, else `$XDG_CONFIG_HOME/pxb/config.yaml`, else
//! `~/.config/pxb/config.yaml`. It holds named contexts (server URL, org, bearer token) and the
//! current one; `pxb login` writes it with mode 0600. `--server`, `--org` and `--token` (or
//! `PXB_SERVER`, `PXB_ORG`, `PXB_TOKEN`) override it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::client::Client;

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

/// The typed client of the server `conn` names, and the org commands work in.
#[derive(Debug, Clone)]
pub struct Remote {
    client: Client,
    org: Option<String>,
}

impl Remote {
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
        let client = Client::builder(server)
            .maybe_token(conn.token.clone().or(ctx.token))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Remote {
            client,
            org: conn.org.clone().or(ctx.org),
        })
    }

    /// The org, or an error saying how to choose one.
    pub fn org(&self) -> Result<&str, String> {
        self.org
            .as_deref()
            .ok_or_else(|| "no org: pass --org or log in with `pxb login --org ORG`".to_owned())
    }
}

impl std::ops::Deref for Remote {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
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

/// A text as a table cell: `-` when empty.
pub fn cell(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_owned() }
}

/// An optional text as a table cell: `-` when absent or empty.
pub fn opt_cell(s: Option<&str>) -> String {
    cell(s.unwrap_or_default())
}

/// A list as a table cell: its items, comma-separated.
pub fn list_cell(items: &[String]) -> String {
    items.iter().map(|s| cell(s)).collect::<Vec<_>>().join(",")
}

/// A value of a unit enum as the API spells it (`federated`, `InProgress`).
pub fn name_cell<T: Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(s) => cell(s.trim_matches('"')),
        Err(_) => "-".into(),
    }
}

/// An epoch-milliseconds time as RFC 3339 (whole seconds); `-` outside years 0000 to 9999.
pub fn ms_cell(ms: i64) -> String {
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const SECS: std::ops::RangeInclusive<i64> = -62_167_219_200..=253_402_300_799;
    let secs = ms / 1000;
    if !SECS.contains(&secs) {
        return "-".into();
    }
    let delta = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH + delta
    } else {
        UNIX_EPOCH - delta
    };
    pxb_core::clock::rfc3339(t)
}
