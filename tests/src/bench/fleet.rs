//! Fleet benchmark: discovery and first kubeconfig issuance over N simulated shoots, and the
//! renewal rate over time. The simulator runs as its own process (`pxb-sim serve`), so the peak
//! RSS reported for pxb is the provider's alone; the simulator's is reported beside it.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use serde_json::{Value, json};

use super::{current_rss, peak_rss, reset_peak_rss};

/// A `pxb-sim serve` child process, killed (by its pid) when dropped.
#[derive(Debug)]
pub struct SimProcess {
    child: Child,
    /// The garden kubeconfig it wrote.
    pub garden_kubeconfig: String,
    /// Seconds from spawn to `READY`.
    pub startup_seconds: f64,
    _dir: tempfile::TempDir,
}

impl SimProcess {
    /// Starts `pxb-sim serve` (next to this executable) with `shoots` shoots in project `bench`.
    pub fn start(shoots: usize, min_seconds: u64) -> anyhow::Result<Self> {
        Self::start_with(shoots, min_seconds, &[])
    }

    /// Like [`SimProcess::start`], with extra `pxb-sim serve` arguments.
    pub fn start_with(shoots: usize, min_seconds: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("pxb-sim");
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("garden.yaml");
        let started = Instant::now();
        let mut child = Command::new(&exe)
            .args(["serve", "--project", "bench", "--shoots", &shoots.to_string()])
            .args(["--kubeconfig-min-seconds", &min_seconds.to_string()])
            .args(extra)
            .arg("--garden-kubeconfig-out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} (build it with --release first)", exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with("READY ") {
            let _ = child.kill();
            anyhow::bail!("pxb-sim did not become ready: {line:?}");
        }
        Ok(Self {
            startup_seconds: started.elapsed().as_secs_f64(),
            garden_kubeconfig: std::fs::read_to_string(&out)?,
            child,
            _dir: dir,
        })
    }

    /// Peak RSS of the simulator process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Discovery plus first kubeconfig issuance for `shoots` shoots.
pub async fn discovery(shoots: usize) -> anyhow::Result<Value> {
    let sim = SimProcess::start(shoots, 600)?;
    reset_peak_rss();
    let rss_before = current_rss();
    let started = Instant::now();
    let mut config = GardenerConfig::new(GardenAuth::Kubeconfig(sim.garden_kubeconfig.clone()), "bench");
    config.eager = false;
    let provider = GardenerProvider::connect(config).await?;
    let (clusters, _) = provider.discover_diff().await?;
    let discovered = started.elapsed();
    let (ok, failed) = provider.ensure_all().await;
    let total = started.elapsed();
    let rss_after = current_rss();
    anyhow::ensure!(
        clusters.len() == shoots,
        "discovered {} of {shoots}",
        clusters.len()
    );
    anyhow::ensure!(
        failed.is_empty() && ok == shoots,
        "{} issuances failed",
        failed.len()
    );
    Ok(json!({
        "benchmark": "fleet discovery + first kubeconfig issuance",
        "shoots": shoots,
        "discovery_seconds": discovered.as_secs_f64(),
        "issuance_seconds": (total - discovered).as_secs_f64(),
        "total_seconds": total.as_secs_f64(),
        "kubeconfigs_per_second": shoots as f64 / (total - discovered).as_secs_f64(),
        "provider_peak_rss_mib": peak_rss() as f64 / MIB,
        "provider_rss_growth_mib": rss_after.saturating_sub(rss_before) as f64 / MIB,
        "memory_per_tracked_shoot_kib": rss_after.saturating_sub(rss_before) as f64 / 1024.0 / shoots as f64,
        "simulator_startup_seconds": sim.startup_seconds,
        "simulator_peak_rss_mib": sim.peak_rss() as f64 / MIB,
    }))
}

/// Kubeconfig renewals over `observe` seconds, with kubeconfigs living `lifetime` seconds and
/// renewed at 80 % ± `jitter` of it; reports the largest number of issuances in one second
/// (first issuance and renewals separately).
pub async fn renewal(shoots: usize, lifetime: u64, jitter: f64, observe: u64) -> anyhow::Result<Value> {
    let sim = SimProcess::start(shoots, lifetime.min(600))?;
    let mut config = GardenerConfig::new(GardenAuth::Kubeconfig(sim.garden_kubeconfig.clone()), "bench");
    config.expiration = Duration::from_secs(lifetime);
    config.renew_jitter = jitter;
    let provider = GardenerProvider::connect(config).await?;
    provider.discover_diff().await?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let _running = provider.spawn(tx);
    let first_done = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if provider.stats().issued >= shoots as u64 {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(observe),
            "first issuance did not finish"
        );
    };
    let first_end = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(observe).saturating_sub(started.elapsed())).await;
    let hist = provider.issued_per_second();
    let boundary = first_end
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (first, renewals): (BTreeMap<u64, u32>, BTreeMap<u64, u32>) =
        hist.into_iter().partition(|(s, _)| *s <= boundary);
    let renewed: u32 = renewals.values().sum();
    let stats = provider.stats();
    Ok(json!({
        "benchmark": "kubeconfig renewal rate",
        "shoots": shoots,
        "lifetime_seconds": lifetime,
        "renew_fraction": 0.8,
        "renew_jitter": jitter,
        "observed_seconds": observe,
        "first_issuance_seconds": first_done.as_secs_f64(),
        "first_issuance_peak_per_second": first.values().max().copied().unwrap_or(0),
        "renewals": renewed,
        "renewal_peak_per_second": renewals.values().max().copied().unwrap_or(0),
        "renewal_seconds_with_activity": renewals.len(),
        "failed": stats.failed,
        "simulator_peak_rss_mib": sim.peak_rss() as f64 / MIB,
    }))
}
