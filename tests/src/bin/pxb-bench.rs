//! `pxb-bench`: the benchmarks reported in `BENCHMARKS.md`. Build with `--release`.
//!
//! - `pxb-bench volume [--mib 2048] [--set large|small] [--work DIR]`: first and 5%-incremental
//!   backup and restore, pxb vs restic and borg, and the machine's limit for the same data;
//! - `pxb-bench restore [--mib 1024] [--set small|large] [--rounds 3] [--concurrency N]`: pxb's
//!   restores alone;
//! - `pxb-bench backup [--mib 1024] [--set small|large] [--rounds 3] [--incremental]`: pxb's first
//!   backups alone, or (`--incremental`) one first backup, then incrementals after changing 5 % each;
//! - `pxb-bench files [--files 10000000] [--restore]`: a tree of that many tiny files, first and
//!   0.1%-incremental backup (with `--restore`, then a verify and a restore of the incremental),
//!   time and peak RSS (the tree is kept under `--work` for the next run);
//! - `pxb-bench sync [--backups 100000] [--azurite] [--format 2|1] [--no-baseline] [--repeat N]`: sync
//!   of a location of that format (2: compacted into packs every 5,000 commits, as the agent does;
//!   1: listing metadata only) vs the store's bare listing of the markers and, in format 1, one
//!   GET per backup (`PXB_AZURITE_IN_MEMORY=1`: Azurite without its
//!   on-disk database, so 100,000 manifests are written in minutes);
//! - `pxb-bench gc [--chunks 10000000] [--backups 100]`: GC time and peak RSS;
//! - `pxb-bench fleet [--shoots 1000]`: discovery + first kubeconfig issuance (wall time, RSS);
//! - `pxb-bench renewal [--shoots 10000] [--lifetime 120] [--jitter 0.1] [--observe 150]`:
//!   kubeconfig renewals per second over time;
//! - `pxb-bench api [--backups 1000000] [--clusters 2000] [--rounds 200] [--catalog sqlite|postgres]`:
//!   list and filter latency through the HTTP API over a catalog of that many backups;
//! - `pxb-bench failover [--rounds 5] [--lease-secs 15]`: three `pxb-server` replicas (the release
//!   binary beside this one) on PostgreSQL; the active one killed, the takeover timed;
//! - `pxb-bench metrics [--backups 1000000] [--max-series 10000] [--rounds 50]`: `/metrics`
//!   scrape time, size and memory over a catalog of that many backups.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use pxb_azure::AzureBlobStore;
use pxb_core::LocalFileSystem;
use pxb_tests::bench;
use pxb_tests::fixture::AzureFixture;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .context("missing value")?
            .parse()
            .map_err(|_| anyhow::anyhow!("bad value for {name}")),
    }
}

async fn main_async(args: Vec<String>) -> anyhow::Result<serde_json::Value> {
    let work: PathBuf = arg(&args, "--work", std::env::temp_dir().join("pxb-bench"))?;
    match args.first().map(String::as_str) {
        Some("volume") => {
            let set = arg(&args, "--set", bench::volume::DataSet::Large)?;
            bench::volume::run(&work.join("volume"), arg(&args, "--mib", 2048u64)? << 20, set).await
        }
        Some("restore") => {
            let set = arg(&args, "--set", bench::volume::DataSet::Small)?;
            let mib = arg(&args, "--mib", 1024u64)?;
            let concurrency = match arg(&args, "--concurrency", 0usize)? {
                0 => None,
                n => Some(n),
            };
            let rounds = arg(&args, "--rounds", 3u32)?;
            bench::volume::restores(&work.join("restore"), mib << 20, set, rounds, concurrency).await
        }
        Some("backup") => {
            let set = arg(&args, "--set", bench::volume::DataSet::Small)?;
            let mib = arg(&args, "--mib", 1024u64)?;
            let rounds = arg(&args, "--rounds", 3u32)?;
            if args.iter().any(|a| a == "--incremental") {
                bench::volume::incrementals(&work.join("backup"), mib << 20, set, rounds).await
            } else {
                bench::volume::backups(&work.join("backup"), mib << 20, set, rounds).await
            }
        }
        Some("files") => {
            let restore = args.iter().any(|a| a == "--restore");
            bench::files::run(
                &work.join("files"),
                arg(&args, "--files", 10_000_000u64)?,
                restore,
            )
            .await
        }
        Some("sync") => {
            let n = arg(&args, "--backups", 100_000u64)?;
            let with_baseline = !args.iter().any(|a| a == "--no-baseline");
            let repeat = arg(&args, "--repeat", 1u32)?;
            let format = arg(&args, "--format", 2u32)?;
            anyhow::ensure!((1..=2).contains(&format), "--format is 1 or 2");
            if args.iter().any(|a| a == "--azurite") {
                let fx = AzureFixture::start(3600)?;
                let store = AzureBlobStore::new(fx.wi_config("sync-bench"))?;
                store.create_container().await?;
                let label = if pxb_harness::azurite::in_memory() {
                    "azurite (https, workload identity, in-memory metadata)"
                } else {
                    "azurite (https, workload identity)"
                };
                bench::sync::run(Arc::new(store), n, label, with_baseline, repeat, format).await
            } else {
                let dir = work.join("sync");
                let _ = std::fs::remove_dir_all(&dir);
                bench::sync::run(
                    Arc::new(LocalFileSystem::new(&dir)?),
                    n,
                    "local filesystem",
                    with_baseline,
                    repeat,
                    format,
                )
                .await
            }
        }
        Some("gc") => {
            bench::gc::run(
                arg(&args, "--chunks", 10_000_000u64)?,
                arg(&args, "--backups", 100u64)?,
            )
            .await
        }
        Some("fleet") => bench::fleet::discovery(arg(&args, "--shoots", 1000usize)?).await,
        Some("renewal") => {
            bench::fleet::renewal(
                arg(&args, "--shoots", 10_000usize)?,
                arg(&args, "--lifetime", 120u64)?,
                arg(&args, "--jitter", 0.1f64)?,
                arg(&args, "--observe", 150u64)?,
            )
            .await
        }
        Some("api") => {
            bench::api::run(
                arg(&args, "--backups", 1_000_000usize)?,
                arg(&args, "--clusters", 2_000usize)?,
                arg(&args, "--rounds", 200usize)?,
                match arg(&args, "--catalog", "sqlite".to_owned())?.as_str() {
                    "sqlite" => false,
                    "postgres" => true,
                    other => anyhow::bail!("--catalog {other}: sqlite or postgres"),
                },
            )
            .await
        }
        Some("metrics") => {
            bench::metrics::run(
                arg(&args, "--backups", 1_000_000usize)?,
                arg(&args, "--max-series", 10_000usize)?,
                arg(&args, "--rounds", 50usize)?,
            )
            .await
        }
        Some("failover") => {
            bench::failover::run(
                arg(&args, "--rounds", 5usize)?,
                arg(&args, "--lease-secs", 15u64)?,
            )
            .await
        }
        Some("server") => {
            bench::server::fleet_pass(bench::server::ServerBench {
                shoots: arg(&args, "--shoots", 10_000usize)?,
                blackhole_every: arg(&args, "--blackhole-every", 10usize)?,
                concurrency: arg(&args, "--concurrency", 256usize)?,
                call_timeout_ms: arg(&args, "--call-timeout-ms", 5000u64)?,
                postgres: match arg(&args, "--catalog", "sqlite".to_owned())?.as_str() {
                    "sqlite" => false,
                    "postgres" => true,
                    other => anyhow::bail!("--catalog {other}: sqlite or postgres"),
                },
                replicas: arg(&args, "--replicas", 0usize)?,
            })
            .await
        }
        _ => bail!(
            "usage: pxb-bench volume|restore|files|sync|gc|fleet|renewal|server|api|metrics|failover [options] (see the source)"
        ),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pxb-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(args)) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pxb-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
