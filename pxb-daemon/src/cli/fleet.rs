//! The commands that talk to `pxb-server`: login, clusters, locations, backups, restores,
//! schedules and the fleet status. Tables by default, `--json` for scripts; `--wait` blocks until
//! an operation is final (with progress bars on a terminal) and fails when it did.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use pxb_core::api::rest::{
    self, BackupRequest, DeleteQuery, List, ListQuery, RestoreRequest, ScheduleRequest, SyncRequestBody,
    UpdateSchedule,
};
use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, ClusterSelector, ExistingResourcePolicy, RequestPhase, RestorePhase,
    RestoreRecord, ScheduleRecord,
};
use pxb_core::schedule::{Every, SchedulePolicy};
use serde::Serialize;
// The OIDC issuer's answers (device login) are not the server's API: read untyped.
use serde_json::Value;

use super::remote::{
    Conn, Context, ContextFile, Remote, cell, context_path, list_cell, ms_cell, name_cell, opt_cell, table,
};
use crate::client::{Client, ClientError};

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
    /// Prints the `az` commands that let the cluster's agent reach an Azure location with
    /// Workload Identity: a managed identity, its federated credential for the cluster's
    /// service-account issuer, and the blob data role on the location's container.
    Federation(FederationArgs),
}

/// `pxb clusters federation`.
#[derive(Debug, Args)]
pub struct FederationArgs {
    /// The cluster (its name or id).
    pub cluster: String,
    /// The location (an Azure location in federated mode).
    #[arg(long)]
    pub location: String,
    /// The managed identity's resource group (else a placeholder to replace).
    #[arg(long, short = 'g')]
    pub resource_group: Option<String>,
    /// The managed identity's name.
    #[arg(long, default_value = super::federation::DEFAULT_IDENTITY)]
    pub identity: String,
    /// The subscription of the identity and the storage account (else the current one of `az`).
    #[arg(long)]
    pub subscription: Option<String>,
    /// The storage account's resource group; with --subscription the role's scope is written
    /// out, else the commands look the account up by name.
    #[arg(long)]
    pub storage_resource_group: Option<String>,
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
    fn selector(&self) -> Result<ClusterSelector, String> {
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
        Ok(ClusterSelector {
            all: self.all,
            names: self.clusters.clone(),
            labels,
        })
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

/// What a restore does with objects that already exist (`--existing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Existing {
    /// Keep them.
    Retain,
    /// Replace them with the backup's.
    Replace,
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
        /// Objects that already exist on the target cluster: keep them (`retain`, the default)
        /// or replace them with the backup's (`replace`).
        #[arg(long, value_enum, default_value_t = Existing::Retain)]
        existing: Existing,
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

/// Prints `v` as pretty JSON with `--json`, else as `human` shows it.
fn print<T: Serialize>(conn: &Conn, v: &T, human: impl FnOnce(&T)) -> ExitCode {
    if conn.json {
        super::output::json(v)
    } else {
        human(v);
        ExitCode::SUCCESS
    }
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
    let client = match Remote::from_conn(&conn) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let who = match client.whoami().await {
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
            let name = who.name.as_deref().unwrap_or(&who.subject);
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
        match Remote::from_conn($conn) {
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

/// Every item of a list, page after page, as one list (a table or `--json` never drops what the
/// first page left out).
async fn every<T, F, Fut>(c: &Client, page: F) -> Result<List<T>, ClientError>
where
    F: FnMut(ListQuery) -> Fut,
    Fut: Future<Output = Result<List<T>, ClientError>>,
{
    let items = c.all(limit(1000), page).await?;
    Ok(List { items, next: None })
}

/// A query of one page of at most `limit` items.
fn limit(limit: u64) -> ListQuery {
    ListQuery {
        limit: Some(limit),
        ..ListQuery::default()
    }
}

/// `pxb clusters`.
pub async fn clusters(conn: Conn, cmd: ClustersCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        ClustersCommand::List => {
            let org = try_api!(c.org());
            let list = try_api!(
                every(&c, |q| {
                    let c: &Client = &c;
                    async move { c.list_clusters(org, &q).await }
                })
                .await
            );
            print(&conn, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .items
                    .iter()
                    .map(|c| {
                        vec![
                            cell(&c.name),
                            c.status.state.as_str().to_owned(),
                            opt_cell(c.status.agent_version.as_deref()),
                            opt_cell(c.status.last_seen.as_deref()),
                            opt_cell(c.status.message.as_deref()),
                        ]
                    })
                    .collect();
                table(&["NAME", "STATE", "AGENT", "LAST SEEN", "MESSAGE"], &rows);
            })
        }
        ClustersCommand::Federation(args) => {
            let org = try_api!(c.org());
            let cluster = try_api!(c.get_cluster(org, &args.cluster).await);
            let location = try_api!(c.get_location(org, &args.location).await);
            let opts = super::federation::FederationOptions {
                resource_group: args.resource_group,
                identity: Some(args.identity),
                subscription: args.subscription,
                storage_resource_group: args.storage_resource_group,
            };
            let f = try_api!(super::federation::federation(&cluster, &location, &opts));
            print(&conn, &f, |f| print!("{}", f.script))
        }
    }
}

/// `pxb locations`.
pub async fn locations(conn: Conn, cmd: LocationsCommand) -> ExitCode {
    let c = client!(&conn);
    let org = try_api!(c.org());
    match cmd {
        LocationsCommand::List => {
            let list = try_api!(
                every(&c, |q| {
                    let c: &Client = &c;
                    async move { c.list_locations(org, &q).await }
                })
                .await
            );
            print(&conn, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .items
                    .iter()
                    .map(|l| {
                        vec![
                            cell(&l.name),
                            cell(&l.provider),
                            cell(&l.container),
                            name_cell(&l.mode),
                        ]
                    })
                    .collect();
                table(&["NAME", "PROVIDER", "CONTAINER", "MODE"], &rows);
            })
        }
        LocationsCommand::Status { name } => {
            let list = try_api!(
                every(&c, |q| {
                    let (c, name): (&Client, &str) = (&c, &name);
                    async move { c.location_status(org, name, &q).await }
                })
                .await
            );
            print(&conn, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .items
                    .iter()
                    .map(|s| {
                        vec![
                            cell(&s.cluster_name),
                            cell(s.validation.phase.as_str()),
                            s.sync.as_ref().map_or("-".into(), |r| name_cell(&r.phase)),
                            s.sync
                                .as_ref()
                                .map_or("-".into(), |r| r.backups_found.to_string()),
                            s.verify.as_ref().map_or("-".into(), |r| cell(r.phase.as_str())),
                            s.verify
                                .as_ref()
                                .map_or("-".into(), |r| r.missing_objects.to_string()),
                            opt_cell(s.validation.reason.as_deref()),
                        ]
                    })
                    .collect();
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
        LocationsCommand::Validate { name } => {
            let v = try_api!(c.validate_location(org, &name).await);
            print(&conn, &v, |_| println!("validation of {name} requested"))
        }
        LocationsCommand::Verify { name } => {
            let v = try_api!(c.verify_location(org, &name).await);
            print(&conn, &v, |_| println!("verify of {name} requested"))
        }
        LocationsCommand::Sync { name, cluster, wait } => {
            let body = SyncRequestBody {
                cluster: cluster.clone(),
            };
            let mut run = try_api!(c.sync_location(org, &name, &body).await);
            if wait {
                let request = run.request;
                let query = ListQuery {
                    cluster: Some(cluster.clone()),
                    ..ListQuery::default()
                };
                let path = format!(
                    "{}?cluster={cluster}",
                    rest::LOCATION_STATUS.path_with(&[org, &name])
                );
                run = try_api!(
                    poll(
                        &path,
                        || c.location_status(org, &name, &query),
                        |list| {
                            list.items
                                .first()
                                .and_then(|s| s.sync.as_ref())
                                .filter(|r| r.request == request && !r.phase.is_active())
                                .cloned()
                        }
                    )
                    .await
                );
            }
            let failed = wait && run.phase != RequestPhase::Completed;
            let code = print(&conn, &run, |run| {
                println!(
                    "sync of {name} on {cluster}: {} (found {})",
                    name_cell(&run.phase),
                    run.backups_found
                )
            });
            if failed { ExitCode::FAILURE } else { code }
        }
    }
}

/// Calls `fetch` every 500 ms until `done` returns a value (at most an hour); `path` names what
/// is polled in the error when it never is.
async fn poll<T, U, Fut>(
    path: &str,
    mut fetch: impl FnMut() -> Fut,
    mut done: impl FnMut(&T) -> Option<U>,
) -> Result<U, String>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let v = fetch().await.map_err(|e| e.to_string())?;
        if let Some(out) = done(&v) {
            return Ok(out);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("still not final after an hour: {path}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn backup_rows(list: &[BackupRecord]) -> Vec<Vec<String>> {
    list.iter()
        .map(|b| {
            let mut phase = cell(b.phase.as_str());
            if b.missing_objects > 0 {
                phase = format!("{phase} (cloud files missing: {})", b.missing_objects);
            }
            vec![
                cell(&b.id),
                cell(&b.cluster_name),
                list_cell(&b.namespaces),
                cell(&b.location_name),
                phase,
                b.view.as_str().to_owned(),
                ms_cell(b.created_ms),
                if b.synced {
                    format!("synced from {}", opt_cell(b.origin_cluster.as_deref()))
                } else {
                    opt_cell(b.message.as_deref())
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
    c: &Remote,
    conn: &Conn,
    org: &str,
    ids: &[String],
) -> Result<Vec<BackupRecord>, String> {
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
        let path = rest::GET_BACKUP.path_with(&[org, id]);
        let b = poll(
            &path,
            || c.get_backup(org, id),
            |b: &BackupRecord| {
                if let Some(bar) = &bar {
                    bar.set_message(format!(
                        "{} {} objects, {}",
                        cell(b.phase.as_str()),
                        b.objects,
                        indicatif::HumanBytes(b.bytes)
                    ));
                }
                (!b.phase.is_active()).then(|| b.clone())
            },
        )
        .await?;
        if let Some(bar) = bar {
            bar.finish_with_message(cell(b.phase.as_str()));
        }
        out.push(b);
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
            let clusters = match selection.selector() {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let org = try_api!(c.org());
            let body = BackupRequest {
                clusters,
                namespaces,
                location,
            };
            let mut list = try_api!(c.create_backups(org, &body).await).items;
            if wait {
                let ids: Vec<String> = list.iter().map(|b| b.id.clone()).collect();
                list = try_api!(wait_backups(&c, &conn, org, &ids).await);
            }
            let bad = list
                .iter()
                .filter(|b| {
                    !matches!(
                        b.phase,
                        BackupPhase::Success
                            | BackupPhase::PartialSuccess
                            | BackupPhase::Pending
                            | BackupPhase::InProgress
                    )
                })
                .count();
            let list = List {
                items: list,
                next: None,
            };
            print(&conn, &list, |list| {
                table(BACKUP_HEADER, &backup_rows(&list.items))
            });
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
            let query = ListQuery {
                cluster,
                namespace,
                location,
                state: status,
                view,
                bracket: since,
                limit: Some(limit.into()),
                ..ListQuery::default()
            };
            let list = try_api!(c.list_backups(try_api!(c.org()), &query).await);
            print(&conn, &list, |list| {
                table(BACKUP_HEADER, &backup_rows(&list.items))
            })
        }
        BackupsCommand::Get { id } => {
            let b = try_api!(c.get_backup(try_api!(c.org()), &id).await);
            print(&conn, &b, |b| {
                table(BACKUP_HEADER, &backup_rows(std::slice::from_ref(b)))
            })
        }
        BackupsCommand::Delete { id, force, wait } => {
            let org = try_api!(c.org());
            let outcome = try_api!(c.delete_backup(org, &id, &DeleteQuery { force }).await);
            if wait && !outcome.record_removed {
                loop {
                    match c.get_backup(org, &id).await {
                        Err(e) if e.status() == Some(404) => break,
                        Err(e) => return fail(e),
                        Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
            print(&conn, &outcome, |o| {
                println!("{}", cell(&o.message));
                if wait && !o.record_removed {
                    println!("backup {id} and its data are deleted");
                }
            })
        }
    }
}

fn restore_rows(list: &[RestoreRecord]) -> Vec<Vec<String>> {
    list.iter()
        .map(|r| {
            vec![
                cell(&r.id),
                cell(&r.backup),
                cell(&r.cluster_name),
                cell(r.phase.as_str()),
                format!(
                    "{}/{} created, {} failed",
                    r.counts.created, r.counts.total, r.counts.failed
                ),
                opt_cell(r.message.as_deref()),
            ]
        })
        .collect()
}

const RESTORE_HEADER: &[&str] = &["ID", "BACKUP", "CLUSTER", "PHASE", "OBJECTS", "MESSAGE"];

/// `pxb restores`.
pub async fn restores(conn: Conn, cmd: RestoresCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        RestoresCommand::Create {
            backup,
            cluster,
            namespaces,
            mapping,
            allow_cluster_kinds,
            existing,
            wait,
        } => {
            let mut namespace_mapping = BTreeMap::new();
            for m in &mapping {
                match m.split_once('=') {
                    Some((a, b)) => {
                        namespace_mapping.insert(a.to_owned(), b.to_owned());
                    }
                    None => return fail(format!("--map {m:?} is not FROM=TO")),
                }
            }
            let org = try_api!(c.org());
            let body = RestoreRequest {
                backup,
                cluster,
                namespaces,
                namespace_mapping,
                allow_cluster_kinds,
                existing_resource_policy: match existing {
                    Existing::Retain => ExistingResourcePolicy::Retain,
                    Existing::Replace => ExistingResourcePolicy::Replace,
                },
            };
            let mut r = try_api!(c.create_restore(org, &body).await);
            if wait {
                let id = r.id.clone();
                let path = rest::GET_RESTORE.path_with(&[org, &id]);
                r = try_api!(
                    poll(
                        &path,
                        || c.get_restore(org, &id),
                        |r: &RestoreRecord| (!r.phase.is_active()).then(|| r.clone()),
                    )
                    .await
                );
            }
            let failed = r.phase == RestorePhase::Failed;
            print(&conn, &r, |r| {
                table(RESTORE_HEADER, &restore_rows(std::slice::from_ref(r)))
            });
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        RestoresCommand::List { limit: n } => {
            let list = try_api!(c.list_restores(try_api!(c.org()), &limit(n.into())).await);
            print(&conn, &list, |list| {
                table(RESTORE_HEADER, &restore_rows(&list.items))
            })
        }
        RestoresCommand::Get { id } => {
            let r = try_api!(c.get_restore(try_api!(c.org()), &id).await);
            print(&conn, &r, |r| {
                table(RESTORE_HEADER, &restore_rows(std::slice::from_ref(r)))
            })
        }
    }
}

fn split_at(v: &str, what: &str) -> Result<(String, String), String> {
    v.split_once('@')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("--{what} {v:?} is not X@HH:MM"))
}

fn schedule_rows(list: &[ScheduleRecord]) -> Vec<Vec<String>> {
    list.iter()
        .map(|s| {
            let p = &s.policy;
            let when = match &p.every {
                Every::Interval { minutes } => format!("every {minutes} min"),
                Every::Daily { at } => format!("daily {}", cell(at)),
                Every::Weekly { day, at } => format!("{} {}", cell(day), cell(at)),
                Every::Monthly { date, at } => format!("monthly on {date} {}", cell(at)),
            };
            vec![
                cell(&s.id),
                format!("{when} {}", cell(&p.time_zone)),
                p.retain.to_string(),
                cell(&s.location_name),
                ms_cell(s.next_fire_ms),
                if s.paused {
                    "paused".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect()
}

const SCHEDULE_HEADER: &[&str] = &["NAME", "WHEN", "RETAIN", "LOCATION", "NEXT", "STATE"];

/// What `pxb schedules delete --json` prints.
#[derive(Serialize)]
struct Deleted<'a> {
    deleted: &'a str,
}

/// `pxb schedules`.
pub async fn schedules(conn: Conn, cmd: SchedulesCommand) -> ExitCode {
    let c = client!(&conn);
    let one = |s: &ScheduleRecord| table(SCHEDULE_HEADER, &schedule_rows(std::slice::from_ref(s)));
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
            let every = if let Some(minutes) = every_minutes {
                Every::Interval { minutes }
            } else if let Some(at) = daily {
                Every::Daily { at }
            } else if let Some(w) = weekly {
                let (day, at) = try_api!(split_at(&w, "weekly"));
                Every::Weekly { day, at }
            } else if let Some(m) = monthly {
                let (date, at) = try_api!(split_at(&m, "monthly"));
                let date: u8 = try_api!(
                    date.parse()
                        .map_err(|_| format!("--monthly date {date:?} is not a number"))
                );
                Every::Monthly { date, at }
            } else {
                return fail(
                    "say when: --every-minutes N, --daily HH:MM, --weekly DAY@HH:MM or --monthly DATE@HH:MM",
                );
            };
            let clusters = try_api!(selection.selector());
            let body = ScheduleRequest {
                name,
                policy: SchedulePolicy {
                    every,
                    retain,
                    time_zone,
                },
                clusters,
                namespaces,
                location,
                paused: false,
            };
            let s = try_api!(c.create_schedule(try_api!(c.org()), &body).await);
            print(&conn, &s, one)
        }
        SchedulesCommand::List => {
            let org = try_api!(c.org());
            let list = try_api!(
                every(&c, |q| {
                    let c: &Client = &c;
                    async move { c.list_schedules(org, &q).await }
                })
                .await
            );
            print(&conn, &list, |list| {
                table(SCHEDULE_HEADER, &schedule_rows(&list.items))
            })
        }
        SchedulesCommand::Get { name } => {
            let s = try_api!(c.get_schedule(try_api!(c.org()), &name).await);
            print(&conn, &s, one)
        }
        SchedulesCommand::Pause { name } => {
            let body = UpdateSchedule {
                paused: Some(true),
                ..UpdateSchedule::default()
            };
            let s = try_api!(c.update_schedule(try_api!(c.org()), &name, &body).await);
            print(&conn, &s, one)
        }
        SchedulesCommand::Resume { name } => {
            let body = UpdateSchedule {
                paused: Some(false),
                ..UpdateSchedule::default()
            };
            let s = try_api!(c.update_schedule(try_api!(c.org()), &name, &body).await);
            print(&conn, &s, one)
        }
        SchedulesCommand::Delete { name } => {
            try_api!(c.delete_schedule(try_api!(c.org()), &name).await);
            print(&conn, &Deleted { deleted: &name }, |_| {
                println!("schedule {name} deleted")
            })
        }
    }
}

/// `pxb fleet`.
pub async fn fleet(conn: Conn, cmd: FleetCommand) -> ExitCode {
    let c = client!(&conn);
    match cmd {
        FleetCommand::Status { state } => {
            let query = ListQuery {
                org: conn.org.clone().or_else(|| c.org().ok().map(str::to_owned)),
                state,
                limit: Some(1000),
                ..ListQuery::default()
            };
            // Every page: the counts and time are the first page's, the items all pages'.
            let mut v = try_api!(c.fleet_status(&query).await);
            let mut next = v.next.take();
            while let Some(after) = next {
                let page = try_api!(
                    c.fleet_status(&ListQuery {
                        after: Some(after.clone()),
                        ..query.clone()
                    })
                    .await
                );
                v.items.extend(page.items);
                // A cursor that does not move would loop forever.
                next = page.next.filter(|n| *n != after);
            }
            print(&conn, &v, |v| {
                let counts = v
                    .counts
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "fleet status at {}: {counts}",
                    opt_cell(v.generated_at.as_deref())
                );
                let rows: Vec<Vec<String>> = v
                    .items
                    .iter()
                    .map(|e| {
                        vec![
                            cell(&e.org),
                            cell(&e.cluster),
                            e.state.as_str().to_owned(),
                            opt_cell(e.message.as_deref()),
                        ]
                    })
                    .collect();
                table(&["ORG", "CLUSTER", "STATE", "MESSAGE"], &rows);
            })
        }
    }
}

/// A context as `pxb context --json` shows it (the token redacted).
#[derive(Serialize)]
struct ContextRow<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<&'a str>,
    server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

/// What `pxb context --json` prints.
#[derive(Serialize)]
struct ContextsView<'a> {
    contexts: BTreeMap<&'a str, ContextRow<'a>>,
    current: &'a str,
    file: String,
}

/// Where the context file is (for `pxb context`).
pub fn show_context(conn: &Conn) -> ExitCode {
    let file = match ContextFile::load() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let v = ContextsView {
        contexts: file
            .contexts
            .iter()
            .map(|(name, c)| {
                let row = ContextRow {
                    org: c.org.as_deref(),
                    server: &c.server,
                    token: c.token.as_ref().map(|_| "(set)"),
                };
                (name.as_str(), row)
            })
            .collect(),
        current: &file.current,
        file: context_path().display().to_string(),
    };
    print(conn, &v, |v| {
        println!("context file: {}", cell(&v.file));
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
