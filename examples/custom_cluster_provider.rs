//! Implements pxb's cluster-provider seams for a fixed list of clusters in a YAML file, instead
//! of Gardener: [`ClusterProvider`] (discover the clusters, hand out access to one) and
//! [`DiscoverySource`] (what `pxb-server` starts one discovery per project through).
//!
//! The file lists each cluster's name and the path of its kubeconfig; the kubeconfigs must embed
//! a client certificate and key (as Gardener's admin kubeconfigs and `kind`'s do):
//!
//! ```yaml
//! - name: prod-eu
//!   kubeconfig: /home/me/.kube/prod-eu.yaml
//!   labels: {env: prod}
//! - name: old-lab
//!   kubeconfig: /home/me/.kube/old-lab.yaml
//!   hibernated: true          # listed, but not served
//! ```
//!
//! ```text
//! cargo run -p pxb-daemon --example custom_cluster_provider -- clusters.yaml
//! # also run pxb-core's conformance suites, of the provider and of the discovery source (needs
//! # one servable and one non-servable cluster):
//! cargo run -p pxb-daemon --example custom_cluster_provider -- clusters.yaml --conformance
//! # then plug it into a pxb-server on a loopback port, in place of Gardener, until Ctrl-C:
//! cargo run -p pxb-daemon --example custom_cluster_provider -- clusters.yaml --serve
//! ```
//!
//! With `--serve`, [`ServerBuilder::cluster_provider`] gets a [`FileDiscovery`]; the server then
//! starts a discovery through it for each discovery configuration an org creates through the
//! API, exactly as it does with Gardener by default. The server tries to visit the servable
//! clusters (install the agent, read status); clusters it cannot reach are shown as such.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_trait::async_trait;
use pxb_core::catalog::MemoryCatalog;
use pxb_core::cluster::{
    ClusterAccess, ClusterDiff, ClusterId, ClusterInfo, ClusterProvider, CredentialState, Discovery,
    DiscoveryRequest, DiscoverySource, Eligibility, IneligibleReason, conformance,
};
use pxb_core::{Error, Result};
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::{GardenCredential, ServerConfig};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One cluster of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Its name, unique in the file.
    name: String,
    /// The path of its kubeconfig (client-certificate auth).
    kubeconfig: PathBuf,
    /// Listed but not served.
    #[serde(default)]
    hibernated: bool,
    /// Labels, as a cluster object's.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A [`ClusterProvider`] over a YAML file of clusters. The file is read again on every discovery,
/// so edits show up like changes of a real fleet.
#[derive(Debug)]
struct FileClusters {
    file: PathBuf,
    /// How long a handed-out kubeconfig counts as valid. A static kubeconfig shows no expiry, so
    /// the provider decides one and reads the file again after it, picking up a rotated file.
    lifetime: Duration,
    /// What was handed out: (issued, expires) per cluster.
    issued: Mutex<HashMap<ClusterId, (SystemTime, SystemTime)>>,
}

impl FileClusters {
    fn new(file: impl Into<PathBuf>, lifetime: Duration) -> Self {
        Self {
            file: file.into(),
            lifetime,
            issued: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> Result<Vec<Entry>> {
        let text = std::fs::read_to_string(&self.file)
            .map_err(|e| Error::io(format!("reading the cluster list {}", self.file.display()), e))?;
        serde_saphyr::from_str(&text)
            .map_err(|e| Error::invalid(format!("the cluster list {}: {e}", self.file.display())))
    }

    fn id(name: &str) -> ClusterId {
        ClusterId(format!("file/{name}"))
    }

    /// An entry as a discovered cluster: served unless hibernated or its kubeconfig is unreadable.
    fn info(&self, e: &Entry) -> ClusterInfo {
        let eligibility = if e.hibernated {
            Eligibility::Ineligible {
                reason: IneligibleReason::Hibernated,
                message: "marked hibernated in the cluster list".into(),
            }
        } else if let Err(err) = std::fs::metadata(&e.kubeconfig) {
            Eligibility::Ineligible {
                reason: IneligibleReason::Malformed,
                message: format!("kubeconfig {}: {err}", e.kubeconfig.display()),
            }
        } else {
            Eligibility::Eligible
        };
        ClusterInfo::new(Self::id(&e.name), e.name.clone(), self.file.display().to_string())
            .with_provider_type("static")
            .with_labels(e.labels.clone())
            .with_eligibility(eligibility)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterId, (SystemTime, SystemTime)>> {
        self.issued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ClusterProvider for FileClusters {
    async fn discover(&self) -> Result<Vec<ClusterInfo>> {
        let mut clusters: Vec<ClusterInfo> = self.entries()?.iter().map(|e| self.info(e)).collect();
        clusters.sort_by(|a, b| a.id.cmp(&b.id));
        clusters.dedup_by(|a, b| a.id == b.id);
        // Forget what was handed out for clusters that left the list.
        self.lock().retain(|id, _| clusters.iter().any(|c| &c.id == id));
        Ok(clusters)
    }

    async fn access(&self, id: &ClusterId) -> Result<ClusterAccess> {
        let entries = self.entries()?;
        let entry = entries
            .iter()
            .find(|e| &Self::id(&e.name) == id)
            .ok_or_else(|| Error::not_found(format!("no cluster {id} in {}", self.file.display())))?;
        if let Eligibility::Ineligible { message, .. } = self.info(entry).eligibility {
            return Err(Error::precondition(format!(
                "cluster {} is not served: {message}",
                entry.name
            )));
        }
        let yaml = std::fs::read_to_string(&entry.kubeconfig)
            .map_err(|e| Error::io(format!("reading {}", entry.kubeconfig.display()), e))?;
        let now = SystemTime::now();
        let access = pxb_gardener::parse_access(&yaml, now, now + self.lifetime)
            .map_err(|e| e.context(format!("cluster {}", entry.name)))?;
        self.lock()
            .insert(id.clone(), (access.issued_at, access.expires_at));
        Ok(access)
    }

    fn credential_state(&self, id: &ClusterId) -> CredentialState {
        match self.lock().get(id) {
            None => CredentialState::Missing,
            Some(&(_, expires_at)) if expires_at > SystemTime::now() => CredentialState::Fresh {
                expires_at,
                renew_at: expires_at,
            },
            Some(&(_, since)) => CredentialState::Expired { since },
        }
    }
}

/// A [`DiscoverySource`] serving each registered YAML file as a project (any credential name is
/// accepted: the files need none). A discovery sends every cluster of its file at start, then
/// what changed, polling the file once per `request.interval`.
#[derive(Debug, Default)]
struct FileDiscovery {
    projects: BTreeMap<String, PathBuf>,
}

impl FileDiscovery {
    fn with_project(mut self, project: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        self.projects.insert(project.into(), file.into());
        self
    }
}

/// A running [`FileDiscovery`]; its polling stops when dropped.
#[derive(Debug)]
struct FileRunning {
    provider: Arc<FileClusters>,
    tracked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileRunning {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for FileRunning {
    fn provider(&self) -> Arc<dyn ClusterProvider> {
        self.provider.clone()
    }

    fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl DiscoverySource for FileDiscovery {
    /// `file`: what the server records as the `source` of the clusters it finds.
    fn name(&self) -> &str {
        "file"
    }

    async fn start(
        &self,
        request: &DiscoveryRequest,
        diffs: mpsc::UnboundedSender<ClusterDiff>,
    ) -> Result<Box<dyn Discovery>> {
        let file = self
            .projects
            .get(&request.project)
            .ok_or_else(|| Error::not_found(format!("no project {}", request.project)))?;
        let provider = Arc::new(FileClusters::new(file, request.access_lifetime));
        let by_id = |v: Vec<ClusterInfo>| -> BTreeMap<ClusterId, ClusterInfo> {
            v.into_iter().map(|c| (c.id.clone(), c)).collect()
        };
        // Proves the project (the file) before anything runs.
        let mut known = by_id(provider.discover().await?);
        let tracked = Arc::new(AtomicUsize::new(known.len()));
        let first = ClusterDiff::between(&BTreeMap::new(), &known);
        if !first.is_empty() {
            let _ = diffs.send(first);
        }
        let (poll, count, every) = (provider.clone(), tracked.clone(), request.interval);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Ok(now) = poll.discover().await else { continue };
                let now = by_id(now);
                let diff = ClusterDiff::between(&known, &now);
                count.store(now.len(), Ordering::Relaxed);
                known = now;
                if !diff.is_empty() && diffs.send(diff).is_err() {
                    return;
                }
            }
        });
        Ok(Box::new(FileRunning {
            provider,
            tracked,
            task,
        }))
    }
}

/// A request for `project` and one for a project no file serves, for
/// [`conformance::run_discovery`].
fn conformance_requests(project: &str) -> (DiscoveryRequest, DiscoveryRequest) {
    let mut known = DiscoveryRequest::new("none", project);
    known.interval = Duration::from_millis(50);
    (
        known,
        DiscoveryRequest::new("none", format!("{project}-not-listed")),
    )
}

/// A project name for `file`: its stem as a DNS label (what the server's API accepts).
fn project_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let label: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "clusters".into()
    } else {
        label.into()
    }
}

/// One call to the server's REST API with the bearer `token`; the JSON answer, or an error with
/// the status and body.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&b)?);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "{url}: {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Runs a `pxb-server` that discovers the clusters of `file` through [`FileDiscovery`] instead of
/// Gardener, until Ctrl-C.
async fn serve(file: &Path, project: &str) -> anyhow::Result<()> {
    let mut config = ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    // A discovery configuration names a credential of the server's configuration, which decides
    // the orgs and projects it may serve. The file provider needs no secret: the credential
    // `files` is only that binding (unbound to any org: provider admins only).
    config
        .garden_credentials
        .insert("files".into(), GardenCredential::new(file.display().to_string()));
    // A development login (a provider admin) on loopback, in place of Entra ID.
    let token = format!("example-{:032x}", rand::random::<u128>());
    let daemon = ServerBuilder::new(config)
        .cluster_provider(Arc::new(FileDiscovery::default().with_project(project, file)))
        .catalog(Arc::new(MemoryCatalog::new()))
        .dev_token(&token)
        .build()
        .await?
        .spawn()?;
    let base = format!("http://{}", daemon.addr);

    // What an operator does through the API: an org, and a discovery of the project in it.
    let http = reqwest::Client::new();
    let post = reqwest::Method::POST;
    call(
        &http,
        post.clone(),
        &format!("{base}/v1/orgs"),
        &token,
        Some(json!({"id": "example"})),
    )
    .await?;
    let discovery = json!({"id": "files", "project": project, "credential": "files", "intervalSecs": 30});
    call(
        &http,
        post,
        &format!("{base}/v1/orgs/example/discoveries"),
        &token,
        Some(discovery),
    )
    .await?;

    // The server now discovers through the file provider; its clusters appear in the org.
    let url = format!("{base}/v1/orgs/example/clusters");
    let mut items = Vec::new();
    for _ in 0..50 {
        let page = call(&http, reqwest::Method::GET, &url, &token, None).await?;
        items = page["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "pxb-server on {base} sees {} cluster(s) in org example:",
        items.len()
    );
    for c in &items {
        let name = c["name"].as_str().unwrap_or("?");
        match c["ineligible"].as_str() {
            Some(why) => println!("  {name:<20} not served: {why}"),
            None => println!(
                "  {name:<20} {}",
                c["status"]["state"].as_str().unwrap_or("discovered")
            ),
        }
    }
    println!("try: curl -H 'Authorization: Bearer {token}' {url}\nCtrl-C stops the server");
    tokio::signal::ctrl_c().await?;
    daemon.shutdown().await;
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(
        args.next()
            .context("usage: custom_cluster_provider <clusters.yaml> [--conformance]")?,
    );
    let flags: Vec<String> = args.collect();
    let run_conformance = flags.iter().any(|a| a == "--conformance");
    let run_server = flags.iter().any(|a| a == "--serve");

    // 1. The provider on its own: discover, then access every servable cluster.
    let provider = FileClusters::new(&file, Duration::from_secs(3600));
    let clusters = provider.discover().await?;
    println!("{} cluster(s) in {}", clusters.len(), file.display());
    for c in &clusters {
        if let Eligibility::Ineligible { reason, message } = &c.eligibility {
            println!("  {:<20} not served: {} ({message})", c.name, reason.as_str());
            continue;
        }
        let access = provider.access(&c.id).await?;
        // A kube client from the access, as the server builds one for each visit.
        let reach = match pxb_gardener::kube_client(&access) {
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await {
                    Ok(Ok(v)) => format!("Kubernetes {}", v.git_version),
                    Ok(Err(e)) => format!("unreachable: {e}"),
                    Err(_) => "unreachable: no answer within 5 s".into(),
                }
            }
            Err(e) => format!("no client: {e}"),
        };
        let expiry = match provider.credential_state(&c.id) {
            CredentialState::Fresh { expires_at, .. } => {
                let left = expires_at.duration_since(SystemTime::now()).unwrap_or_default();
                format!("fresh for {}s", left.as_secs())
            }
            other => format!("{other:?}"),
        };
        println!(
            "  {:<20} {} ({reach}); credential {expiry}",
            c.name, access.server
        );
    }
    if run_conformance {
        conformance::run_all(&provider).await?;
        println!("the provider passes pxb-core's ClusterProvider conformance suite");
    }

    // 2. The provider behind the discovery seam, as `pxb-server` starts it for a project.
    let project = project_name(&file);
    let source = FileDiscovery::default().with_project(&project, &file);
    if run_conformance {
        let (known, unknown) = conformance_requests(&project);
        conformance::run_discovery(&source, &known, &unknown, true).await?;
        println!("the discovery source passes pxb-core's DiscoverySource conformance suite");
    }
    let (tx, mut changes) = mpsc::unbounded_channel();
    let running = source.start(&DiscoveryRequest::new("none", &project), tx).await?;
    if let Some(first) = changes.recv().await {
        println!(
            "discovery of project {project}: {} cluster(s) added, {} tracked",
            first.added.len(),
            running.tracked()
        );
    }
    drop(running); // stops the polling

    // 3. Plugged into pxb-server in place of Gardener.
    if run_server {
        serve(&file, &project).await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Logging to stderr (PXB_LOG, default info) with credentials redacted, a multi-thread
    // runtime, and the error's chain on stderr with exit code 1.
    pxb_daemon::run_main("custom_cluster_provider", run())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// A kubeconfig with a client certificate (the PEM blocks are placeholders: nothing here
    /// connects to the cluster).
    fn kubeconfig() -> String {
        let b64 = |what: &str| {
            base64::engine::general_purpose::STANDARD
                .encode(format!("-----BEGIN {what}-----\nAAAA\n-----END {what}-----\n"))
        };
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    \
             certificate-authority-data: {}\n\
             users:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n",
            b64("CERTIFICATE"),
            b64("CERTIFICATE"),
            b64("PRIVATE KEY")
        )
    }

    /// A cluster list with one servable and one hibernated cluster.
    fn cluster_list(dir: &Path) -> PathBuf {
        let kc = dir.join("prod.yaml");
        std::fs::write(&kc, kubeconfig()).expect("kubeconfig");
        let list = dir.join("clusters.yaml");
        std::fs::write(
            &list,
            format!(
                "- name: prod-eu\n  kubeconfig: {}\n  labels: {{env: prod}}\n\
                 - name: old-lab\n  kubeconfig: {}\n  hibernated: true\n",
                kc.display(),
                kc.display()
            ),
        )
        .expect("cluster list");
        list
    }

    #[tokio::test]
    async fn the_file_provider_passes_the_cluster_provider_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let provider = FileClusters::new(cluster_list(dir.path()), Duration::from_secs(3600));
        conformance::run_all(&provider).await.expect("conforms");
    }

    #[tokio::test]
    async fn the_file_discovery_passes_the_discovery_source_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = cluster_list(dir.path());
        let project = project_name(&file);
        assert_eq!(project, "clusters");
        let source = FileDiscovery::default().with_project(&project, &file);
        let (known, unknown) = conformance_requests(&project);
        conformance::run_discovery(&source, &known, &unknown, true)
            .await
            .expect("conforms");
    }
}
