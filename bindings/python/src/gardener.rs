//! Gardener discovery and short-lived access: `pxb.GardenerProvider`, the clusters it discovers
//! (`pxb.Cluster`, with eligibility and reason) and the credentials it issues
//! (`pxb.ClusterAccess`), over [`pxb_gardener::GardenerProvider`].
//!
//! Credentials stay in memory: the kubeconfig text is rendered from them when asked for and is
//! never written anywhere; `repr` shows the server and the expiry, never key material.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use pxb_core::cluster::{
    ClusterAccess as CoreAccess, ClusterId, ClusterInfo, ClusterProvider as _, Eligibility,
};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider as CoreProvider};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::IntoPy as _;
use crate::runtime;

/// A discovered cluster (for Gardener: a shoot) and whether pxb serves it.
#[pyclass(frozen, module = "pxb", name = "Cluster")]
#[derive(Clone)]
pub struct Cluster {
    /// Stable identity (the shoot's `status.uid`).
    #[pyo3(get)]
    pub id: String,
    /// The shoot's name.
    #[pyo3(get)]
    pub name: String,
    /// The project namespace it is listed in.
    #[pyo3(get)]
    pub namespace: String,
    /// Infrastructure provider type, e.g. `azure`.
    #[pyo3(get)]
    pub provider_type: String,
    /// Kubernetes version as reported.
    #[pyo3(get)]
    pub kubernetes_version: String,
    /// Region.
    #[pyo3(get)]
    pub region: String,
    /// Labels of the shoot.
    #[pyo3(get)]
    pub labels: BTreeMap<String, String>,
    /// Whether pxb serves it.
    #[pyo3(get)]
    pub eligible: bool,
    /// Why not (`providerType`, `kubernetesVersion`, `hibernated`, `deleting`, `notReconciled`,
    /// `malformed`); `None` when eligible.
    #[pyo3(get)]
    pub reason: Option<String>,
    /// Details for humans, e.g. `Kubernetes 1.29.8 is below the supported 1.30`; `None` when
    /// eligible.
    #[pyo3(get)]
    pub message: Option<String>,
}

impl From<ClusterInfo> for Cluster {
    fn from(c: ClusterInfo) -> Self {
        let (eligible, reason, message) = match c.eligibility {
            Eligibility::Eligible => (true, None, None),
            Eligibility::Ineligible { reason, message } => {
                (false, Some(reason.as_str().to_owned()), Some(message))
            }
        };
        Self {
            id: c.id.0,
            name: c.name,
            namespace: c.namespace,
            provider_type: c.provider_type,
            kubernetes_version: c.kubernetes_version,
            region: c.region,
            labels: c.labels,
            eligible,
            reason,
            message,
        }
    }
}

#[pymethods]
impl Cluster {
    fn __repr__(&self) -> String {
        match (&self.reason, &self.message) {
            (Some(reason), Some(message)) => format!(
                "Cluster(name={:?}, id={:?}, kubernetes_version={:?}, eligible=False, reason={reason:?}, message={message:?})",
                self.name, self.id, self.kubernetes_version
            ),
            _ => format!(
                "Cluster(name={:?}, id={:?}, kubernetes_version={:?}, eligible=True)",
                self.name, self.id, self.kubernetes_version
            ),
        }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Cluster>().is_ok_and(|o| {
            let o = o.get();
            o.id == self.id && o.name == self.name && o.eligible == self.eligible && o.reason == self.reason
        })
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.id.hash(&mut h);
        h.finish()
    }
}

/// Short-lived access to a cluster's API server (a client certificate), held in memory only.
#[pyclass(frozen, module = "pxb", name = "ClusterAccess")]
pub struct ClusterAccess {
    cluster: String,
    access: CoreAccess,
}

/// `t` as an aware `datetime` in UTC.
pub(crate) fn datetime_utc(py: Python<'_>, t: SystemTime) -> PyResult<Bound<'_, PyAny>> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let dt = py.import("datetime")?;
    let utc = dt.getattr("timezone")?.getattr("utc")?;
    dt.getattr("datetime")?.call_method1("fromtimestamp", (secs, utc))
}

/// A kubeconfig (YAML) for `access`, with one cluster, context and user named `name`.
fn kubeconfig_yaml(name: &str, access: &CoreAccess) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // Names and the server URL are quoted as JSON strings, which YAML reads as they are.
    let name = serde_json::Value::String(name.to_owned()).to_string();
    let server = serde_json::Value::String(access.server.clone()).to_string();
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {name}\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\nusers:\n- name: {name}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\npreferences: {{}}\n",
        b64(&access.ca_pem),
        b64(&access.client_cert_pem),
        b64(&access.client_key_pem),
    )
}

#[pymethods]
impl ClusterAccess {
    /// The cluster's name.
    #[getter]
    fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The API server's URL.
    #[getter]
    fn server(&self) -> &str {
        &self.access.server
    }

    /// The API server's CA certificate (PEM).
    #[getter]
    fn ca_pem(&self) -> &str {
        &self.access.ca_pem
    }

    /// The client certificate (PEM).
    #[getter]
    fn client_cert_pem(&self) -> &str {
        &self.access.client_cert_pem
    }

    /// The client's private key (PEM). Secret: keep it in memory.
    #[getter]
    fn client_key_pem(&self) -> &str {
        &self.access.client_key_pem
    }

    /// A kubeconfig (YAML text) with these credentials embedded. Secret: keep it in memory.
    #[getter]
    fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&self.cluster, &self.access)
    }

    /// When it was issued (aware `datetime`, UTC).
    #[getter]
    fn issued_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_utc(py, self.access.issued_at)
    }

    /// When it stops working, as the garden reported it (aware `datetime`, UTC).
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_utc(py, self.access.expires_at)
    }

    /// Seconds until it expires (negative once expired).
    #[getter]
    fn expires_in(&self) -> f64 {
        match self.access.expires_at.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// Whether it has expired.
    #[getter]
    fn expired(&self) -> bool {
        !self.access.valid_at(SystemTime::now(), Duration::ZERO)
    }

    fn __repr__(&self) -> String {
        format!(
            "ClusterAccess(cluster={:?}, server={:?}, expires_at={}, expires_in={:.0}s, credentials=<redacted>)",
            self.cluster,
            self.access.server,
            pxb_core::clock::rfc3339(self.access.expires_at),
            self.expires_in()
        )
    }
}

/// Discovers the shoots of one Gardener project and issues short-lived access to them.
#[pyclass(frozen, module = "pxb", name = "GardenerProvider")]
pub struct GardenerProvider {
    inner: Arc<CoreProvider>,
    project: String,
}

/// The garden credentials from `kubeconfig`: an `os.PathLike`, a path, or YAML text (a string
/// with a line break).
fn garden_auth(kubeconfig: &Bound<'_, PyAny>) -> PyResult<GardenAuth> {
    if kubeconfig.is_instance_of::<PyString>() {
        let s: String = kubeconfig.extract()?;
        if s.contains('\n') {
            return Ok(GardenAuth::Kubeconfig(s));
        }
    }
    let path: PathBuf = kubeconfig.extract().map_err(|_| {
        crate::errors::Invalid::new_err("kubeconfig must be the YAML text of a kubeconfig or the path of one")
    })?;
    GardenAuth::kubeconfig_file(path).py_err()
}

/// The identity of `cluster` (a `Cluster`, an id or a name) in `provider`'s inventory, running
/// a discovery first when the inventory does not know it.
async fn resolve(provider: &CoreProvider, key: &str) -> pxb_core::Result<(ClusterId, String)> {
    let find = |inv: &[ClusterInfo]| {
        inv.iter()
            .find(|c| c.id.0 == key)
            .or_else(|| inv.iter().find(|c| c.name == key))
            .map(|c| (c.id.clone(), c.name.clone()))
    };
    if let Some(found) = find(&provider.inventory()) {
        return Ok(found);
    }
    let inv = provider.discover().await?;
    find(&inv).ok_or_else(|| {
        pxb_core::Error::not_found(format!(
            "no cluster {key} in project {}",
            provider.config().project
        ))
    })
}

async fn access(provider: Arc<CoreProvider>, key: String) -> PyResult<ClusterAccess> {
    let (id, name) = resolve(&provider, &key).await.py_err()?;
    let access = provider.access(&id).await.py_err()?;
    Ok(ClusterAccess {
        cluster: name,
        access,
    })
}

async fn discover(provider: Arc<CoreProvider>) -> PyResult<Vec<Cluster>> {
    let mut list = provider.discover().await.py_err()?;
    list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(list.into_iter().map(Cluster::from).collect())
}

fn cluster_key(cluster: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(c) = cluster.cast::<Cluster>() {
        return Ok(c.get().id.clone());
    }
    cluster.extract::<String>().map_err(|_| {
        crate::errors::Invalid::new_err("cluster must be a pxb.Cluster, a cluster id or a shoot name")
    })
}

#[pymethods]
impl GardenerProvider {
    /// Connects to the garden with `kubeconfig` (the path of a kubeconfig, an `os.PathLike`, or
    /// the YAML text itself: a string with a line break is text) for `project`. No request is
    /// made yet. `expiration_seconds` is the lifetime of the kubeconfigs `access` asks for
    /// (Gardener grants 600 s at least); `request_timeout` the deadline of each garden request.
    #[new]
    #[pyo3(signature = (kubeconfig, project, *, expiration_seconds = 3600, request_timeout = 15.0))]
    fn new(
        py: Python<'_>,
        kubeconfig: &Bound<'_, PyAny>,
        project: String,
        expiration_seconds: u64,
        request_timeout: f64,
    ) -> PyResult<Self> {
        if !(request_timeout.is_finite() && request_timeout > 0.0) {
            return Err(crate::errors::Invalid::new_err(
                "request_timeout must be a positive number of seconds",
            ));
        }
        let config = GardenerConfig::new(garden_auth(kubeconfig)?, project.clone())
            .with_expiration(Duration::from_secs(expiration_seconds))
            .with_request_timeout(Duration::from_secs_f64(request_timeout))
            .with_eager(false);
        let inner = runtime::block(py, async move { CoreProvider::connect(config).await.py_err() })?;
        Ok(Self { inner, project })
    }

    /// The Gardener project.
    #[getter]
    fn project(&self) -> &str {
        &self.project
    }

    /// Every shoot of the project, classified (eligible, or the reason it is not), by name.
    fn discover(&self, py: Python<'_>) -> PyResult<Vec<Cluster>> {
        runtime::block(py, discover(self.inner.clone()))
    }

    /// `discover()` as a coroutine.
    async fn discover_async(&self) -> PyResult<Vec<Cluster>> {
        runtime::spawned(discover(self.inner.clone())).await
    }

    /// Short-lived access to an eligible cluster (a `Cluster`, its id, or its shoot name): a
    /// cached credential while it is fresh, else a new one from the garden. `NotFound` for an
    /// unknown cluster, `Precondition` for an ineligible one.
    fn access(&self, py: Python<'_>, cluster: &Bound<'_, PyAny>) -> PyResult<ClusterAccess> {
        let key = cluster_key(cluster)?;
        runtime::block(py, access(self.inner.clone(), key))
    }

    /// `access(cluster)` as a coroutine.
    async fn access_async(&self, cluster: Py<PyAny>) -> PyResult<ClusterAccess> {
        let key = Python::attach(|py| cluster_key(cluster.bind(py)))?;
        runtime::spawned(access(self.inner.clone(), key)).await
    }

    fn __repr__(&self) -> String {
        format!("GardenerProvider(project={:?})", self.project)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<GardenerProvider>()?;
    m.add_class::<Cluster>()?;
    m.add_class::<ClusterAccess>()?;
    Ok(())
}
