//! The fleet simulator for testing automation without Gardener: `pxb._pxb.SimFleet`, a
//! [`pxb_sim::Fleet`] (a Gardener garden and one Kubernetes API server per shoot, over HTTPS on
//! loopback) with one project and a service account of it. `pxb.testing.Fleet` wraps it as a
//! context manager.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pxb_sim::{Fault, Fleet, FleetConfig, ProjectRole, ShootSpec};
use pyo3::prelude::*;

use crate::errors::{Invalid, NotFound, PxbError};

/// A running simulated fleet. Stops with `close()` or when it is garbage collected.
#[pyclass(frozen, module = "pxb._pxb", name = "SimFleet")]
pub struct SimFleet {
    fleet: Mutex<Option<Fleet>>,
    project: String,
    kubeconfig: String,
    garden_url: String,
    garden_ca_pem: String,
}

/// The simulator's error as a Python exception: `NotFound` for an unknown project or shoot,
/// `PxbError` otherwise.
fn sim_err(e: anyhow::Error) -> PyErr {
    let message = format!("{e:#}");
    if message.starts_with("no shoot ") || message.starts_with("no project ") {
        NotFound::new_err(message)
    } else {
        PxbError::new_err(message)
    }
}

fn role(role: &str) -> PyResult<ProjectRole> {
    match role {
        "admin" => Ok(ProjectRole::Admin),
        "viewer" => Ok(ProjectRole::Viewer),
        other => Err(Invalid::new_err(format!("role {other:?} is not admin or viewer"))),
    }
}

fn seconds(what: &str, s: Option<f64>) -> PyResult<Duration> {
    match s {
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(Invalid::new_err(format!(
            "fault {what} needs seconds= (a non-negative number)"
        ))),
    }
}

impl SimFleet {
    fn fleet(&self) -> PyResult<MutexGuard<'_, Option<Fleet>>> {
        let guard = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(PxbError::new_err("the simulated fleet is closed"));
        }
        Ok(guard)
    }

    /// Runs `f` on the fleet without holding the interpreter.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Fleet) -> anyhow::Result<T> + Send,
    ) -> PyResult<T> {
        let guard = self.fleet()?;
        let fleet = guard
            .as_ref()
            .ok_or_else(|| PxbError::new_err("the simulated fleet is closed"))?;
        py.detach(|| f(fleet)).map_err(sim_err)
    }

    fn project_or<'a>(&'a self, project: Option<&'a str>) -> &'a str {
        project.unwrap_or(&self.project)
    }
}

#[pymethods]
impl SimFleet {
    /// Starts a garden with project `project` holding `shoots` ready shoots named
    /// `<prefix>-00000`, `<prefix>-00001`, …, and an admin service account of the project whose
    /// kubeconfig is `kubeconfig`. `kubeconfig_min_seconds` is the shortest kubeconfig lifetime
    /// the garden grants (Gardener: 600).
    #[new]
    #[pyo3(signature = (project = "acme", shoots = 0, *, prefix = "shoot", kubeconfig_min_seconds = 600))]
    fn new(
        py: Python<'_>,
        project: &str,
        shoots: usize,
        prefix: &str,
        kubeconfig_min_seconds: u64,
    ) -> PyResult<Self> {
        let (p, prefix) = (project.to_owned(), prefix.to_owned());
        let (fleet, token) = py
            .detach(move || -> anyhow::Result<(Fleet, String)> {
                let fleet = Fleet::start(FleetConfig {
                    kubeconfig_min_seconds,
                    ..FleetConfig::default()
                })?;
                fleet.add_project(&p)?;
                fleet.add_shoots(&p, &prefix, shoots)?;
                let token = fleet.add_service_account(&p, "automation", ProjectRole::Admin)?;
                Ok((fleet, token))
            })
            .map_err(sim_err)?;
        Ok(Self {
            kubeconfig: fleet.garden_kubeconfig(&token),
            garden_url: fleet.garden_url(),
            garden_ca_pem: fleet.garden_ca_pem().to_owned(),
            fleet: Mutex::new(Some(fleet)),
            project: project.to_owned(),
        })
    }

    /// The project the fleet was started with.
    #[getter]
    fn project(&self) -> &str {
        &self.project
    }

    /// A garden kubeconfig (YAML text) of an admin service account of `project`.
    #[getter]
    fn kubeconfig(&self) -> &str {
        &self.kubeconfig
    }

    /// The garden API's URL.
    #[getter]
    fn garden_url(&self) -> &str {
        &self.garden_url
    }

    /// The garden's CA certificate (PEM).
    #[getter]
    fn garden_ca_pem(&self) -> &str {
        &self.garden_ca_pem
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Number of shoots (every phase but deleted), across projects.
    #[getter]
    fn shoot_count(&self) -> PyResult<usize> {
        Ok(self.fleet()?.as_ref().map_or(0, Fleet::shoot_count))
    }

    /// Adds a project (namespace `garden-<name>`); returns its namespace.
    fn add_project(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |f| f.add_project(name))
    }

    /// A garden kubeconfig of a new service account `name` of `project` (default: the fleet's)
    /// with `role` `admin` or `viewer` (a viewer may not request admin kubeconfigs).
    #[pyo3(signature = (name = "automation", *, role = "admin", project = None))]
    fn service_account_kubeconfig(
        &self,
        py: Python<'_>,
        name: &str,
        role: &str,
        project: Option<&str>,
    ) -> PyResult<String> {
        let r = self::role(role)?;
        let project = self.project_or(project);
        self.with(py, |f| {
            let token = f.add_service_account(project, name, r)?;
            Ok(f.garden_kubeconfig(&token))
        })
    }

    /// Adds `n` ready shoots named `<prefix>-00000`, … to `project` (default: the fleet's).
    #[pyo3(signature = (n, *, prefix = "shoot", project = None))]
    fn add_shoots(&self, py: Python<'_>, n: usize, prefix: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.add_shoots(project, prefix, n))
    }

    /// Adds one shoot to `project` (default: the fleet's). A shoot on Kubernetes below 1.30,
    /// on another provider than `azure`, hibernated, still being created or without a status is
    /// discovered as ineligible. Returns its API server's URL.
    #[pyo3(signature = (
        name, *, project = None, kubernetes_version = "1.33.4", provider_type = "azure",
        region = "westeurope", labels = None, hibernated = false, creating = false,
        without_status = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn add_shoot(
        &self,
        py: Python<'_>,
        name: &str,
        project: Option<&str>,
        kubernetes_version: &str,
        provider_type: &str,
        region: &str,
        labels: Option<BTreeMap<String, String>>,
        hibernated: bool,
        creating: bool,
        without_status: bool,
    ) -> PyResult<String> {
        let project = self.project_or(project);
        let mut spec = ShootSpec::new(name)
            .version(kubernetes_version)
            .provider(provider_type);
        spec.region = region.to_owned();
        spec.labels = labels.unwrap_or_default();
        spec.hibernated = hibernated;
        spec.creating = creating;
        spec.without_status = without_status;
        self.with(py, |f| Ok(f.add_shoot(project, spec)?.url()))
    }

    /// The URL of a shoot's API server.
    #[pyo3(signature = (name, *, project = None))]
    fn shoot_url(&self, py: Python<'_>, name: &str, project: Option<&str>) -> PyResult<String> {
        let project = self.project_or(project);
        self.with(py, |f| Ok(f.shoot(project, name)?.url()))
    }

    /// Hibernates a shoot: its API goes down and its status says hibernated.
    #[pyo3(signature = (name, *, project = None))]
    fn hibernate(&self, py: Python<'_>, name: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.hibernate(project, name))
    }

    /// Wakes a hibernated shoot.
    #[pyo3(signature = (name, *, project = None))]
    fn wake(&self, py: Python<'_>, name: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.wake(project, name))
    }

    /// Changes a shoot's Kubernetes version.
    #[pyo3(signature = (name, version, *, project = None))]
    fn set_version(&self, py: Python<'_>, name: &str, version: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.set_version(project, name, version))
    }

    /// Finishes creating a shoot added with `creating=True`.
    #[pyo3(signature = (name, *, project = None))]
    fn finish_creation(&self, py: Python<'_>, name: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.finish_creation(project, name))
    }

    /// Starts deleting a shoot (it is listed as being deleted until `delete_shoot`).
    #[pyo3(signature = (name, *, project = None))]
    fn begin_deletion(&self, py: Python<'_>, name: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.begin_deletion(project, name))
    }

    /// Deletes a shoot: its API server stops and it disappears from the garden.
    #[pyo3(signature = (name, *, project = None))]
    fn delete_shoot(&self, py: Python<'_>, name: &str, project: Option<&str>) -> PyResult<()> {
        let project = self.project_or(project);
        self.with(py, |f| f.delete_shoot(project, name))
    }

    /// Injects a fault into a shoot's API server: `none`, `offline` (connections hang),
    /// `refused` (the port is closed), `latency` (every answer `seconds` late), `flapping`
    /// (healthy and refused in turn, `seconds` each) or `http_error` (every request answered
    /// with `status`).
    #[pyo3(signature = (name, fault, *, seconds = None, status = None, project = None))]
    fn set_fault(
        &self,
        py: Python<'_>,
        name: &str,
        fault: &str,
        seconds: Option<f64>,
        status: Option<u16>,
        project: Option<&str>,
    ) -> PyResult<()> {
        let fault = match fault {
            "none" => Fault::None,
            "offline" => Fault::Offline,
            "refused" => Fault::Refused,
            "latency" => Fault::Latency(self::seconds("latency", seconds)?),
            "flapping" => Fault::Flapping(self::seconds("flapping", seconds)?),
            "http_error" => Fault::HttpError(
                status.ok_or_else(|| Invalid::new_err("fault http_error needs status= (an HTTP status)"))?,
            ),
            other => {
                return Err(Invalid::new_err(format!(
                    "fault {other:?} is not none, offline, refused, latency, flapping or http_error"
                )));
            }
        };
        let project = self.project_or(project);
        self.with(py, |f| f.set_fault(project, name, fault))
    }

    /// An admin kubeconfig of a shoot valid for `seconds`, issued directly (as the project's
    /// owner would), without going through the garden API.
    #[pyo3(signature = (name, *, seconds = 3600, project = None))]
    fn admin_kubeconfig(
        &self,
        py: Python<'_>,
        name: &str,
        seconds: u64,
        project: Option<&str>,
    ) -> PyResult<String> {
        let project = self.project_or(project);
        self.with(py, |f| f.admin_kubeconfig(project, name, seconds))
    }

    /// Stops the garden and every shoot (idempotent).
    fn close(&self, py: Python<'_>) {
        let fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(fleet) = fleet {
            py.detach(move || drop(fleet));
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "SimFleet(project={:?}, garden_url={:?}, closed={})",
            self.project,
            self.garden_url,
            self.closed()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SimFleet>()?;
    Ok(())
}
