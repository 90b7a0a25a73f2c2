//! The real Kubernetes API server ([`RealCluster`]: upstream kube-apiserver and etcd, built by
//! `scripts/build-kube`) as scenarios use it: `kube` clients for its users and service accounts,
//! the real `kubectl`, and pxb's manifests from `deploy/` applied to it.
//!
//! A test that needs its own control plane calls [`start`]; tests that can share one (isolated by
//! namespace) call [`shared`], which starts one per test process. Either fails the test when the
//! server cannot start: nothing here skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
pub use pxb_harness::real_cluster::{API_AUDIENCES, ClientIdentity, RealCluster};

/// The audience Azure Workload Identity tokens are issued for.
pub const WORKLOAD_IDENTITY_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Starts a real cluster of the test's own; panics with both logs' tails when it cannot.
pub fn start() -> RealCluster {
    RealCluster::start().unwrap_or_else(|e| panic!("the real cluster did not start: {e:#}"))
}

/// One real cluster for the whole test process, started on first use. Tests that share it keep
/// to namespaces of their own. (A static is never dropped: the fixture's watcher process stops
/// etcd and kube-apiserver when the test process exits.)
pub fn shared() -> &'static RealCluster {
    static CLUSTER: OnceLock<RealCluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

/// A `kube` client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A `kube` client for the cluster's administrator (`system:masters`).
pub async fn admin_client(cluster: &RealCluster) -> anyhow::Result<kube::Client> {
    client(&cluster.admin_kubeconfig()).await
}

/// Writes a kubeconfig that authenticates with a bearer `token` (a ServiceAccount's, as a pod
/// has it) and returns its path.
pub fn token_kubeconfig(cluster: &RealCluster, name: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = cluster.dir().join(format!("{name}.token.kubeconfig"));
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": {
            "server": cluster.server_url(),
            "certificate-authority": cluster.ca_file(),
        }}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "real", "user": name}}],
        "current-context": name,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}

/// A `kube` client that authenticates with a bearer `token`.
pub async fn token_client(cluster: &RealCluster, name: &str, token: &str) -> anyhow::Result<kube::Client> {
    client(&token_kubeconfig(cluster, name, token)?).await
}

/// Runs `kubectl --kubeconfig <kubeconfig> <args>` (`$PXB_KUBECTL` or `kubectl` on PATH); its
/// output whatever the exit status. A missing kubectl panics: `scripts/install-deps` installs it.
pub fn kubectl_output(cluster: &RealCluster, kubeconfig: &Path, args: &[&str]) -> Output {
    let kubectl = std::env::var("PXB_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let home = cluster.dir().join("kubectl-home");
    std::fs::create_dir_all(&home).expect("kubectl home");
    Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| {
            panic!("{kubectl} must be installed and on PATH for this test (scripts/install-deps installs it): {e}")
        })
}

/// Runs kubectl and requires success; its standard output.
pub fn kubectl(cluster: &RealCluster, kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl_output(cluster, kubeconfig, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Applies `deploy/crds` and `deploy/agent` with kubectl as the administrator and waits until
/// every CRD is Established. Idempotent (`kubectl apply`), so tests sharing a cluster may all call
/// it.
pub fn install_pxb(cluster: &RealCluster) -> anyhow::Result<()> {
    let admin = cluster.admin_kubeconfig();
    let root = crate::workspace_root();
    for dir in ["deploy/crds", "deploy/agent"] {
        let out = kubectl_output(
            cluster,
            &admin,
            &["apply", "-f", &root.join(dir).to_string_lossy()],
        );
        if !out.status.success() {
            bail!(
                "the real API server refused {dir}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = kubectl_output(
        cluster,
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "crd/backuplocations.pxb.io",
            "crd/applicationbackups.pxb.io",
            "crd/applicationrestores.pxb.io",
            "--timeout=60s",
        ],
    );
    if !out.status.success() {
        bail!(
            "the CRDs did not become Established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A token for ServiceAccount `namespace/name` from the real TokenRequest API (as the kubelet
/// projects it into a pod), for `audience`, valid `ttl`.
pub fn service_account_token(
    cluster: &RealCluster,
    namespace: &str,
    name: &str,
    audience: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": ttl.as_secs()},
    });
    let (status, answer) = cluster.request_as(cluster.admin_identity(), "POST", &path, Some(&body))?;
    if status != 201 {
        bail!("TokenRequest for {namespace}/{name} answered {status}: {answer}");
    }
    let review: serde_json::Value = serde_json::from_str(&answer)?;
    review["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .context("TokenRequest answered without a token")
}

/// Waits until `probe` holds (RBAC bindings reach the authorizer a moment after they are
/// written); an error naming `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !probe() {
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
