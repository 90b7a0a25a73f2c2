//! The real Helm, built by `scripts/build-helm` (run by `scripts/install-deps`) from the Go module
//! proxy and cached under `$HOME/.cache/pxb/helm-<HELM_VERSION>/helm`, or `$PXB_HELM`. A missing
//! binary is an error that says how to get it, never a skip.
//!
//! [`Helm`] runs it with a home of its own (no user configuration, no repositories), and, when
//! given a [`RealCluster`], against that cluster as its administrator.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

use crate::real::RealCluster;

/// `HELM_VERSION` of `scripts/kube/VERSIONS`.
pub fn helm_version() -> String {
    let versions = crate::workspace_root().join("scripts/kube/VERSIONS");
    std::fs::read_to_string(&versions)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == "HELM_VERSION")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{} has no HELM_VERSION", versions.display()))
}

/// The Helm binary: `$PXB_HELM`, else `$HOME/.cache/pxb/helm-<version>/helm`.
pub fn helm_binary() -> PathBuf {
    std::env::var_os("PXB_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache/pxb")
                .join(format!("helm-{}", helm_version()))
                .join("helm")
        })
}

/// A chart of `deploy/helm/`.
pub fn chart(name: &str) -> PathBuf {
    crate::workspace_root().join("deploy/helm").join(name)
}

/// Helm with a home of its own under `dir`.
#[derive(Debug)]
pub struct Helm {
    bin: PathBuf,
    home: PathBuf,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    /// Helm without a cluster (lint, template), its state under `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let bin = helm_binary();
        if !bin.is_file() {
            bail!(
                "{} is missing: run scripts/install-deps (it builds Helm {} with scripts/build-helm), \
                 or point PXB_HELM at a binary",
                bin.display(),
                helm_version()
            );
        }
        let home = dir.join("helm-home");
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        Ok(Self {
            bin,
            home,
            kubeconfig: None,
        })
    }

    /// Helm against `cluster` as its administrator.
    pub fn on(cluster: &RealCluster) -> anyhow::Result<Self> {
        let mut helm = Self::new(cluster.dir())?;
        helm.kubeconfig = Some(cluster.admin_kubeconfig());
        Ok(helm)
    }

    /// Runs `helm <args>`; its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"));
        if let Some(kc) = &self.kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()))
    }

    /// Runs `helm <args>` and requires success; its standard output.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "helm {args:?} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// `helm template <release> <chart> --namespace <namespace>` with `extra` arguments (values
    /// files, `--set`); the rendered YAML.
    pub fn template(
        &self,
        release: &str,
        chart: &Path,
        namespace: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let chart = chart.to_string_lossy();
        let mut args = vec!["template", release, &chart, "--namespace", namespace];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `helm lint --strict <chart>` with `extra` arguments.
    pub fn lint(&self, chart: &Path, extra: &[&str]) -> anyhow::Result<String> {
        let chart = chart.to_string_lossy();
        let mut args = vec!["lint", "--strict", &chart];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// Applies `yaml` to `cluster` with `kubectl apply --server-side --dry-run=server` as its
/// administrator: the API server validates, defaults and admits every object and stores none.
/// Its output, or an error with kubectl's.
pub fn server_dry_run(cluster: &RealCluster, yaml: &str) -> anyhow::Result<String> {
    let file = cluster
        .dir()
        .join(format!("dry-run-{}.yaml", crate::free_port()?));
    std::fs::write(&file, yaml)?;
    let out = crate::real::kubectl_output(
        cluster,
        &cluster.admin_kubeconfig(),
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=pxb-test",
            "-f",
            &file.to_string_lossy(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "the real API server refused the objects (server-side dry run): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}
