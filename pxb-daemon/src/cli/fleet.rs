//! The commands that talk to `pxb-server`: login, clusters, locations, backups, restores,
//! schedules and the fleet status. Tables by default, `--json` for scripts; `--wait` blocks until
//! an operation is final (with progress bars on a terminal) and fails when it did.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::remote::{Client, Conn, Context, ContextFile, cell, context_path, ms_cell, table};

/// `pxb login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server's API URL.
    #[arg(long)]
    pub server: String,
    /// Token flow: a bearer token from the configured OIDC issuer (or the server's development
    /// token). `-` reads it from standard input.
    #[arg(
        long,
        env = "PXB_TOKEN",
        hide_env_values = true,
        required_unless_present = "device_code"
    )]
    pub token: Option<String>,
    /// Device-code flow: sign in in a browser with a code, against `--issuer` as `--client-id`.
    #[arg(long, conflicts_with = "token", requires_all = ["issuer", "client_id", "scope"])]
    pub device_code: bool,
    /// The OIDC issuer (e.g. `https://login.microsoftonline.com/<tenant>/v2.0`).
    #[arg(long, env = "PXB_ISSUER")]
    pub issuer: Option<String>,
    /// The CLI's public client id at the issuer.
    #[arg(long, env = "PXB_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Scopes to ask for (the server's API scope, e.g. `api://pxb/.default`).
    #[arg(long, env = "PXB_SCOPE")]
    pub scope: Option<String>,
    /// A PEM bundle of extra CAs to trust for the issuer.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The org to work in.
    #[arg(long)]
    pub org: Option<String>,
    /// The context's name.
    #[arg(long, default_value = "default")]
    pub context: String,
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish()
}

/// The OAuth 2.0 device authorization grant (RFC 8628) against `issuer`: prints where to sign
/// in and with which code, polls until the user did, and returns the access token.
async fn device_login(args: &LoginArgs) -> Result<String, String> {
    let (Some(issuer), Some(client_id), Some(scope)) = (&args.issuer, &args.client_id, &args.scope) else {
        return Err("the device-code flow needs --issuer, --client-id and --scope".into());
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: not a PEM bundle: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    let http = builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let get_json = |resp: reqwest::Response| async move {
        let status = resp.status();
        let v: Value = serde_json::from_slice(&resp.bytes().await.map_err(|e| e.to_string())?)
            .map_err(|e| format!("the issuer answered {status} with no JSON: {e}"))?;
        Ok::<_, String>((status, v))
    };
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let (_, doc) = get_json(
        http.get(&discovery)
            .send()
            .await
            .map_err(|e| format!("cannot reach {discovery}: {e}"))?,
    )
    .await?;
    let (Some(device_url), Some(token_url)) = (
        doc["device_authorization_endpoint"].as_str(),
        doc["token_endpoint"].as_str(),
    ) else {
        return Err(format!(
            "{discovery} names no device_authorization_endpoint or token_endpoint"
        ));
    };
    let (status, grant) = get_json(
        http.post(device_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("client_id", client_id), ("scope", scope)]))
            .send()
            .await
            .map_err(|e| format!("cannot reach {device_url}: {e}"))?,
    )
    .await?;
    let (Some(device_code), Some(user_code)) = (grant["device_code"].as_str(), grant["user_code"].as_str())
    else {
        return Err(format!("the issuer refused the device login ({status}): {grant}"));
    };
    eprintln!(
        "To sign in, open {} and enter the code {user_code}",
        grant["verification_uri"]
            .as_str()
            .unwrap_or("the issuer's device login page")
    );
    let mut interval = Duration::from_secs(grant["interval"].as_u64().unwrap_or(5).max(1));
    let deadline =
        std::time::Instant::now() + Duration::from_secs(grant["expires_in"].as_u64().unwrap_or(900));
    loop {
        if std::time::Instant::now() > deadline {
            return Err("the device code expired before the sign-in completed".into());
        }
        tokio::time::sleep(interval).await;
        let (_, answer) = get_json(
            http.post(token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", client_id),
                    ("device_code", device_code),
                ]))
                .send()
                .await
                .map_err(|e| format!("cannot reach {token_url}: {e}"))?,
        )
        .await?;
        if let Some(token) = answer["access_token"].as_str() {
            return Ok(token.to_owned());
        }
        match answer["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            Some(e) => {
                return Err(format!(
                    "sign-in failed: {e}{}",
                    answer["error_description"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ));
            }
            None => {
                return Err(format!(
                    "the issuer answered neither a token nor an error: {answer}"
                ));
            }
        }
    }
}

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClustersCommand {
    /// The org's clusters with their state.
    List,
}

/// Location commands.
#[derive(Debug, Subcommand)]
pub enum LocationsCommand {
    /// The org's locations.
    List,
    /// A location's validation and sync on each cluster.
    Status {
        /// The location.
        name: String,
    },
    /// Asks every assigned cluster to validate the location.
    Validate {
        /// The location.
        name: String,
    },
    /// Asks a cluster to sync the location (import the backups in it).
    Sync {
        /// The location.
        name: String,
        /// The cluster that syncs.
        #[arg(long)]
        cluster: String,
        /// Wait until the sync is final.
        #[arg(long)]
        wait: bool,
    },
    /// Asks the assigned clusters to check every backup's objects ("cloud file missing").
    Verify {
        /// The location.
        name: String,
    },
}

/// Which clusters.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// A cluster by name (repeatable).
    #[arg(long = "cluster")]
    pub clusters: Vec<String>,
    /// Clusters by label, `key=value` (repeatable; all must match).
    #[arg(long = "selector")]
    pub labels: Vec<String>,
    /// Every cluster of the org.
    #[arg(long)]
    pub all: bool,
}

impl Selection {
    fn to_json(&self) -> Result<Value, String> {
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("--selector {l:?} is not key=value"))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        if !self.all && self.clusters.is_empty() && labels.is_empty() {
            return Err("choose clusters: --cluster NAME, --selector key=value or --all".into());
        }
        Ok(json!({"all": self.all, "names": self.clusters, "labels": labels}))
    }
}

/// Backup commands.
#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Backs up namespaces: one backup per selected cluster, in parallel.
    Create {
        /// Which clusters.
        #[command(flatten)]
        selection: Selection,
        /// A namespace (repeatable).
        #[arg(long = "namespace", short = 'n', required = true)]
        namespaces: Vec<String>,
        /// The location.
        #[arg(long)]
        location: String,
        /// Wait until every backup is final.
        #[arg(long)]
        wait: bool,
    },
    /// Lists backups, newest first.
    List {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only backups covering this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Only this location.
        #[arg(long)]
        location: Option<String>,
        /// Only this phase (Success, Failed, Missed, …).
        #[arg(long)]
        status: Option<String>,
        /// `namespaces` or `vms`.
        #[arg(long)]
        view: Option<String>,
        /// Time bracket: 1h, 24h, 7d or 30d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One backup.
    Get {
        /// Its id.
        id: String,
    },
    /// Deletes a backup (its data, through its cluster's agent).
    Delete {
        /// Its id.
        id: String,
        /// Remove only the record, now; the data stays (for a cluster that is gone).
        #[arg(long)]
        force: bool,
        /// Wait until the data and the record are gone.
        #[arg(long)]
        wait: bool,
    },
}

/// Restore commands.
#[derive(Debug, Subcommand)]
pub enum RestoresCommand {
    /// Restores a backup, into its cluster or another.
    Create {
        /// The backup's id.
        backup: String,
        /// The target cluster (default: the backup's own).
        #[arg(long)]
        cluster: Option<String>,
        /// Only these namespaces of the backup (repeatable).
        #[arg(long = "namespace", short = 'n')]
        namespaces: Vec<String>,
        /// Restore namespace FROM into TO: `FROM=TO` (repeatable).
        #[arg(long = "map")]
        mapping: Vec<String>,
        /// Also create these cluster-scoped kinds as the backup holds them, e.g.
        /// `ClusterRoleBinding` (repeatable; needs the org's admin role). Without it, objects
        /// outside the restored namespaces are refused and listed.
        #[arg(long = "allow-cluster-kind")]
        allow_cluster_kinds: Vec<String>,
        /// Wait until it is final.
        #[arg(long)]
        wait: bool,
    },
    /// Lists restores, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One restore.
    Get {
        /// Its id.
        id: String,
    },
}

/// Schedule commands.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Creates a schedule.
    Create(Box<CreateSchedule>),
    /// Lists schedules.
    List,
    /// One schedule.
    Get {
        /// Its name.
        name: String,
    },
    /// Pauses a schedule.
    Pause {
        /// Its name.
        name: String,
    },
    /// Resumes a schedule (paused slots are not made up).
    Resume {
        /// Its name.
        name: String,
    },
    /// Deletes a schedule (its backups stay).
    Delete {
        /// Its name.
        name: String,
    },
}

/// `pxb schedules create`.
#[derive(Debug, Args)]
pub struct CreateSchedule {
    /// Its name.
    name: String,
    /// Every N minutes.
    #[arg(long, group = "when")]
    every_minutes: Option<u32>,
    /// Daily at HH:MM.
    #[arg(long, group = "when")]
    daily: Option<String>,
    /// Weekly, DAY@HH:MM (e.g. sun@02:00).
    #[arg(long, group = "when")]
    weekly: Option<String>,
    /// Monthly, DATE@HH:MM (e.g. 1@03:00).
    #[arg(long, group = "when")]
    monthly: Option<String>,
    /// Successful backups kept per cluster.
    #[arg(long, default_value_t = 7)]
    retain: u32,
    /// IANA time zone of the times.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// Which clusters.
    #[command(flatten)]
    selection: Selection,
    /// A namespace (repeatable).
    #[arg(long = "namespace", short = 'n', required = true)]
    namespaces: Vec<String>,
    /// The location.
    #[arg(long)]
    location: String,
}

/// Fleet commands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// The fleet-wide status: counts per state and the clusters.
    Status {
        /// Only clusters in this state.
        #[arg(long)]
        state: Option<String>,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pxb: {msg}");
    ExitCode::FAILURE
}

fn print(conn: &Conn, v: &Value, human: impl FnOnce(&Value)) -> ExitCode {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        human(v);
    }
    ExitCode::SUCCESS
}

/// `pxb login`: checks the token against the server and stores the context.
pub async fn login(args: LoginArgs) -> ExitCode {
    let token = match args.token.as_deref() {
        _ if args.device_code => match device_login(&args).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        },
        Some("-") => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut s) {
                return fail(format!("reading the token: {e}"));
            }
            s.trim().to_owned()
        }
        Some(t) => t.to_owned(),
        None => return fail("pass --token TOKEN (or -), or --device-code"),
    };
    let conn = Conn {
        server: Some(args.server.clone()),
        token: Some(token.clone()),
        org: args.org.clone(),
        context: Some(args.context.clone()),
        json: false,
    };
    let client = match Client::from_conn(&conn) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let who = match client.get("/v1/whoami").await {
        Ok(w) => w,
        Err(e) => return fail(format!("login failed: {e}")),
    };
    let mut file = match ContextFile::load() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    file.contexts.insert(
        args.context.clone(),
        Context {
            server: args.server,
            org: args.org,
            token: Some(token),
        },
    );
    file.current = args.context.clone();
    match file.save() {
        Ok(path) => {
            let name = who["name"].as_str().or(who["subject"].as_str()).unwrap_or("?");
            println!(
                "logged in as {name} (context {} in {})",
                args.context,
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

macro_rules! client {
    ($conn:expr) => {
        match Client::from_conn($conn) {
            Ok(c) => c,
            Err(e) => return fail(e),
        }
    };
}

macro_rules! try_api {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return fail(e),
        }
    };
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let s = q.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

/// `pxb clusters`.
pub async fn clusters(conn: Conn, cmd: ClustersCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        ClustersCommand::List => {
            let path = try_api!(c.org_path("/clusters?limit=1000"));
            let v = try_api!(c.get(&path).await);
            print(&conn, &v, |v| {
                let rows = rows_of(
                    &items(v),
                    &[
                        "/name",
                        "/status/state",
                        "/status/agentVersion",
                        "/status/lastSeen",
                        "/status/message",
                    ],
                );
                table(&["NAME", "STATE", "AGENT", "LAST SEEN", "MESSAGE"], &rows);
            })
        }
    }
}

/// Table rows: one cell per JSON pointer of each item.
fn rows_of(list: &[Value], pointers: &[&str]) -> Vec<Vec<String>> {
    list.iter()
        .map(|i| {
            pointers
                .iter()
                .map(|p| cell(i.pointer(p).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect()
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `pxb locations`.
pub async fn locations(conn: Conn, cmd: LocationsCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        LocationsCommand::List => {
            let v = try_api!(c.get(&try_api!(c.org_path("/locations?limit=1000"))).await);
            print(&conn, &v, |v| {
                let rows = rows_of(&items(v), &["/name", "/provider", "/container", "/mode"]);
                table(&["NAME", "PROVIDER", "CONTAINER", "MODE"], &rows);
            })
        }
        LocationsCommand::Status { name } => {
            let v = try_api!(
                c.get(&try_api!(
                    c.org_path(&format!("/locations/{name}/status?limit=1000"))
                ))
                .await
            );
            print(&conn, &v, |v| {
                let rows = rows_of(
                    &items(v),
                    &[
                        "/clusterName",
                        "/validation/phase",
                        "/sync/phase",
                        "/sync/backupsFound",
                        "/verify/phase",
                        "/verify/missingObjects",
                        "/validation/reason",
                    ],
                );
                table(
                    &[
                        "CLUSTER",
                        "VALIDATION",
                        "SYNC",
                        "FOUND",
                        "VERIFY",
                        "MISSING",
                        "REASON",
                    ],
                    &rows,
                );
            })
        }
        LocationsCommand::Validate { name } => request(&c, &conn, &name, "validate", "validation").await,
        LocationsCommand::Verify { name } => request(&c, &conn, &name, "verify", "verify").await,
        LocationsCommand::Sync { name, cluster, wait } => {
            let path = try_api!(c.org_path(&format!("/locations/{name}/sync")));
            let mut v = try_api!(c.call("POST", &path, Some(&json!({"cluster": cluster}))).await);
            if wait {
                let status = try_api!(c.org_path(&format!("/locations/{name}/status?cluster={cluster}")));
                let request = v["request"].as_i64();
                v = try_api!(
                    poll(&c, &status, |s| {
                        let run = &items(s).first().cloned().unwrap_or_default()["sync"];
                        let phase = run["phase"].as_str().unwrap_or("");
                        (run["request"].as_i64() == request && !matches!(phase, "Pending" | "InProgress"))
                            .then(|| run.clone())
                    })
                    .await
                );
            }
            let failed = wait && v["phase"] != "Completed";
            let code = print(&conn, &v, |v| {
                println!(
                    "sync of {name} on {cluster}: {} (found {})",
                    cell(&v["phase"]),
                    cell(&v["backupsFound"])
                )
            });
            if failed { ExitCode::FAILURE } else { code }
        }
    }
}

/// Asks for a location request (`validate`, `verify`) and says so.
async fn request(c: &Client, conn: &Conn, name: &str, verb: &str, what: &str) -> ExitCode {
    let path = try_api!(c.org_path(&format!("/locations/{name}/{verb}")));
    let v = try_api!(c.call("POST", &path, None).await);
    print(conn, &v, |_| println!("{what} of {name} requested"))
}

/// Polls `path` every 500 ms until `done` returns a value (at most an hour).
async fn poll(
    c: &Client,
    path: &str,
    mut done: impl FnMut(&Value) -> Option<Value>,
) -> Result<Value, super::remote::ApiFailure> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let v = c.get(path).await?;
        if let Some(out) = done(&v) {
            return Ok(out);
        }
        if std::time::Instant::now() > deadline {
            return Err(super::remote::ApiFailure {
                status: 0,
                message: format!("still not final after an hour: {path}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const ACTIVE: &[&str] = &["Pending", "InProgress", "Deleting"];

fn backup_rows(list: &[Value]) -> Vec<Vec<String>> {
    list.iter()
        .map(|b| {
            let mut phase = cell(&b["phase"]);
            if b["missingObjects"].as_u64().unwrap_or(0) > 0 {
                phase = format!("{phase} (cloud files missing: {})", b["missingObjects"]);
            }
            vec![
                cell(&b["id"]),
                cell(&b["clusterName"]),
                cell(&b["namespaces"]),
                cell(&b["locationName"]),
                phase,
                cell(&b["view"]),
                ms_cell(&b["createdMs"]),
                if b["synced"].as_bool() == Some(true) {
                    format!("synced from {}", cell(&b["originCluster"]))
                } else {
                    cell(&b["message"])
                },
            ]
        })
        .collect()
}

const BACKUP_HEADER: &[&str] = &[
    "ID",
    "CLUSTER",
    "NAMESPACES",
    "LOCATION",
    "PHASE",
    "VIEW",
    "CREATED",
    "NOTE",
];

/// Waits for backups (by id) to be final, with a progress bar per backup on a terminal.
async fn wait_backups(
    c: &Client,
    conn: &Conn,
    ids: &[String],
) -> Result<Vec<Value>, super::remote::ApiFailure> {
    let bars = (!conn.json && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:40} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let mut out = Vec::new();
    for id in ids {
        let bar = bars.as_ref().map(|m| {
            let b = m.add(indicatif::ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(id.clone());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let path = c.org_path(&format!("/backups/{id}"))?;
        let v = poll(c, &path, |b| {
            if let Some(bar) = &bar {
                bar.set_message(format!(
                    "{} {} objects, {}",
                    cell(&b["phase"]),
                    b["objects"].as_u64().unwrap_or(0),
                    indicatif::HumanBytes(b["bytes"].as_u64().unwrap_or(0))
                ));
            }
            (!ACTIVE.contains(&b["phase"].as_str().unwrap_or(""))).then(|| b.clone())
        })
        .await?;
        if let Some(bar) = bar {
            bar.finish_with_message(cell(&v["phase"]));
        }
        out.push(v);
    }
    Ok(out)
}

/// `pxb backups`.
pub async fn backups(conn: Conn, cmd: BackupsCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        BackupsCommand::Create {
            selection,
            namespaces,
            location,
            wait,
        } => {
            let sel = match selection.to_json() {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let body = json!({"clusters": sel, "namespaces": namespaces, "location": location});
            let v = try_api!(
                c.call("POST", &try_api!(c.org_path("/backups")), Some(&body))
                    .await
            );
            let mut list = items(&v);
            if wait {
                let ids: Vec<String> = list.iter().map(|b| cell(&b["id"])).collect();
                list = try_api!(wait_backups(&c, &conn, &ids).await);
            }
            let bad = list
                .iter()
                .filter(|b| {
                    !matches!(
                        b["phase"].as_str(),
                        Some("Success" | "PartialSuccess" | "Pending" | "InProgress")
                    )
                })
                .count();
            let v = json!({"items": list});
            print(&conn, &v, |v| table(BACKUP_HEADER, &backup_rows(&items(v))));
            if bad > 0 {
                eprintln!("pxb: {bad} backup(s) failed or were missed");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        BackupsCommand::List {
            cluster,
            namespace,
            location,
            status,
            view,
            since,
            limit,
        } => {
            let q = query(&[
                ("cluster", cluster),
                ("namespace", namespace),
                ("location", location),
                ("state", status),
                ("view", view),
                ("bracket", since),
                ("limit", Some(limit.to_string())),
            ]);
            let v = try_api!(c.get(&try_api!(c.org_path(&format!("/backups{q}")))).await);
            print(&conn, &v, |v| table(BACKUP_HEADER, &backup_rows(&items(v))))
        }
        BackupsCommand::Get { id } => {
            let v = try_api!(c.get(&try_api!(c.org_path(&format!("/backups/{id}")))).await);
            print(&conn, &v, |v| {
                table(BACKUP_HEADER, &backup_rows(std::slice::from_ref(v)))
            })
        }
        BackupsCommand::Delete { id, force, wait } => {
            let path = try_api!(c.org_path(&format!(
                "/backups/{id}{}",
                if force { "?force=true" } else { "" }
            )));
            let v = try_api!(c.call("DELETE", &path, None).await);
            if wait && v["recordRemoved"] != true {
                let get = try_api!(c.org_path(&format!("/backups/{id}")));
                loop {
                    match c.get(&get).await {
                        Err(e) if e.status == 404 => break,
                        Err(e) => return fail(e),
                        Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
            print(&conn, &v, |v| {
                println!("{}", cell(&v["message"]));
                if wait && v["recordRemoved"] != true {
                    println!("backup {id} and its data are deleted");
                }
            })
        }
    }
}

/// `pxb restores`.
pub async fn restores(conn: Conn, cmd: RestoresCommand) -> ExitCode {
    let c = client!(&conn);
    let rows = |list: &[Value]| -> Vec<Vec<String>> {
        list.iter()
            .map(|r| {
                vec![
                    cell(&r["id"]),
                    cell(&r["backup"]),
                    cell(&r["clusterName"]),
                    cell(&r["phase"]),
                    format!(
                        "{}/{} created, {} failed",
                        r["counts"]["created"].as_u64().unwrap_or(0),
                        r["counts"]["total"].as_u64().unwrap_or(0),
                        r["counts"]["failed"].as_u64().unwrap_or(0)
                    ),
                    cell(&r["message"]),
                ]
            })
            .collect()
    };
    let header = &["ID", "BACKUP", "CLUSTER", "PHASE", "OBJECTS", "MESSAGE"];
    match cmd {
        RestoresCommand::Create {
            backup,
            cluster,
            namespaces,
            mapping,
            allow_cluster_kinds,
            wait,
        } => {
            let mut map = BTreeMap::new();
            for m in &mapping {
                match m.split_once('=') {
                    Some((a, b)) => {
                        map.insert(a.to_owned(), b.to_owned());
                    }
                    None => return fail(format!("--map {m:?} is not FROM=TO")),
                }
            }
            let body = json!({"backup": backup, "cluster": cluster, "namespaces": namespaces,
                "namespaceMapping": map, "allowClusterKinds": allow_cluster_kinds});
            let mut v = try_api!(
                c.call("POST", &try_api!(c.org_path("/restores")), Some(&body))
                    .await
            );
            if wait {
                let path = try_api!(c.org_path(&format!("/restores/{}", cell(&v["id"]))));
                v = try_api!(
                    poll(&c, &path, |r| {
                        (!ACTIVE.contains(&r["phase"].as_str().unwrap_or(""))).then(|| r.clone())
                    })
                    .await
                );
            }
            let failed = v["phase"] == "Failed";
            print(&conn, &v, |v| table(header, &rows(std::slice::from_ref(v))));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        RestoresCommand::List { limit } => {
            let v = try_api!(
                c.get(&try_api!(c.org_path(&format!("/restores?limit={limit}"))))
                    .await
            );
            print(&conn, &v, |v| table(header, &rows(&items(v))))
        }
        RestoresCommand::Get { id } => {
            let v = try_api!(c.get(&try_api!(c.org_path(&format!("/restores/{id}")))).await);
            print(&conn, &v, |v| table(header, &rows(std::slice::from_ref(v))))
        }
    }
}

fn split_at(v: &str, what: &str) -> Result<(String, String), String> {
    v.split_once('@')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("--{what} {v:?} is not X@HH:MM"))
}

/// `pxb schedules`.
pub async fn schedules(conn: Conn, cmd: SchedulesCommand) -> ExitCode {
    let c = client!(&conn);
    let rows = |list: &[Value]| -> Vec<Vec<String>> {
        list.iter()
            .map(|s| {
                let p = &s["policy"];
                let when = match p["kind"].as_str() {
                    Some("interval") => format!("every {} min", cell(&p["minutes"])),
                    Some("daily") => format!("daily {}", cell(&p["at"])),
                    Some("weekly") => format!("{} {}", cell(&p["day"]), cell(&p["at"])),
                    Some("monthly") => format!("monthly on {} {}", cell(&p["date"]), cell(&p["at"])),
                    _ => cell(p),
                };
                vec![
                    cell(&s["id"]),
                    format!("{when} {}", cell(&p["timeZone"])),
                    cell(&p["retain"]),
                    cell(&s["locationName"]),
                    ms_cell(&s["nextFireMs"]),
                    if s["paused"] == true {
                        "paused".into()
                    } else {
                        "active".into()
                    },
                ]
            })
            .collect()
    };
    let header = &["NAME", "WHEN", "RETAIN", "LOCATION", "NEXT", "STATE"];
    match cmd {
        SchedulesCommand::Create(create) => {
            let CreateSchedule {
                name,
                every_minutes,
                daily,
                weekly,
                monthly,
                retain,
                time_zone,
                selection,
                namespaces,
                location,
            } = *create;
            let every = if let Some(m) = every_minutes {
                json!({"kind": "interval", "minutes": m})
            } else if let Some(at) = daily {
                json!({"kind": "daily", "at": at})
            } else if let Some(w) = weekly {
                let (day, at) = try_api!(split_at(&w, "weekly"));
                json!({"kind": "weekly", "day": day, "at": at})
            } else if let Some(m) = monthly {
                let (date, at) = try_api!(split_at(&m, "monthly"));
                let date: u8 = try_api!(
                    date.parse()
                        .map_err(|_| format!("--monthly date {date:?} is not a number"))
                );
                json!({"kind": "monthly", "date": date, "at": at})
            } else {
                return fail(
                    "say when: --every-minutes N, --daily HH:MM, --weekly DAY@HH:MM or --monthly DATE@HH:MM",
                );
            };
            let mut policy = every;
            policy["retain"] = json!(retain);
            policy["timeZone"] = json!(time_zone);
            let sel = try_api!(selection.to_json());
            let body = json!({"name": name, "policy": policy, "clusters": sel, "namespaces": namespaces, "location": location});
            let v = try_api!(
                c.call("POST", &try_api!(c.org_path("/schedules")), Some(&body))
                    .await
            );
            print(&conn, &v, |v| table(header, &rows(std::slice::from_ref(v))))
        }
        SchedulesCommand::List => {
            let v = try_api!(c.get(&try_api!(c.org_path("/schedules?limit=1000"))).await);
            print(&conn, &v, |v| table(header, &rows(&items(v))))
        }
        SchedulesCommand::Get { name } => {
            let v = try_api!(c.get(&try_api!(c.org_path(&format!("/schedules/{name}")))).await);
            print(&conn, &v, |v| table(header, &rows(std::slice::from_ref(v))))
        }
        SchedulesCommand::Pause { name } => pause(&c, &conn, &name, true, header, rows).await,
        SchedulesCommand::Resume { name } => pause(&c, &conn, &name, false, header, rows).await,
        SchedulesCommand::Delete { name } => {
            try_api!(
                c.call(
                    "DELETE",
                    &try_api!(c.org_path(&format!("/schedules/{name}"))),
                    None
                )
                .await
            );
            print(&conn, &json!({"deleted": name}), |_| {
                println!("schedule {name} deleted")
            })
        }
    }
}

async fn pause(
    c: &Client,
    conn: &Conn,
    name: &str,
    paused: bool,
    header: &[&str],
    rows: impl Fn(&[Value]) -> Vec<Vec<String>>,
) -> ExitCode {
    let path = try_api!(c.org_path(&format!("/schedules/{name}")));
    let v = try_api!(c.call("PUT", &path, Some(&json!({"paused": paused}))).await);
    print(conn, &v, |v| table(header, &rows(std::slice::from_ref(v))))
}

/// `pxb fleet`.
pub async fn fleet(conn: Conn, cmd: FleetCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        FleetCommand::Status { state } => {
            let q = query(&[
                ("org", conn.org.clone().or_else(|| c.org().ok())),
                ("state", state),
                ("limit", Some("1000".into())),
            ]);
            let v = try_api!(c.get(&format!("/v1/fleet/status{q}")).await);
            print(&conn, &v, |v| {
                let counts = v["counts"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, n)| format!("{k}={n}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                println!("fleet status at {}: {counts}", cell(&v["generatedAt"]));
                let rows = rows_of(&items(v), &["/org", "/cluster", "/state", "/message"]);
                table(&["ORG", "CLUSTER", "STATE", "MESSAGE"], &rows);
            })
        }
    }
}

/// Where the context file is (for `pxb context`).
pub fn show_context(conn: &Conn) -> ExitCode {
    let file = match ContextFile::load() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut redacted = file.clone();
    for c in redacted.contexts.values_mut() {
        if c.token.is_some() {
            c.token = Some("(set)".into());
        }
    }
    let v = json!({"file": context_path().display().to_string(), "current": redacted.current,
                   "contexts": redacted.contexts});
    print(conn, &v, |v| {
        println!("context file: {}", cell(&v["file"]));
        let rows: Vec<Vec<String>> = file
            .contexts
            .iter()
            .map(|(name, c)| {
                vec![
                    if *name == file.current {
                        format!("* {name}")
                    } else {
                        format!("  {name}")
                    },
                    c.server.clone(),
                    c.org.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(&["CONTEXT", "SERVER", "ORG"], &rows);
    })
}
