//! `pxb location …`

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use pxb_core::CheckReport;
use pxb_core::backup::gc::{self, GcOptions};
use pxb_core::backup::verify::{self, VerifyStatus};
use pxb_core::backup::{BackupId, SyncState};

use super::output;
use super::volume::repo;

use crate::location::LocationArgs;

/// Location commands.
#[derive(Debug, Subcommand)]
pub enum LocationCommand {
    /// Check that a location can be listed, written, read back and deleted from.
    ///
    /// Prints one line per step and exits 0 only when every step passed.
    Check(CheckArgs),
    /// List every backup in the location from listing metadata (no download per backup).
    Sync(SyncArgs),
    /// Check that every object the backups reference exists (and, with --deep, is intact).
    Verify(VerifyArgs),
    /// Delete chunks no backup references any more (mark and sweep, with a grace period).
    Gc(GcArgs),
    /// Move a location made by an earlier pxb to the current location format.
    ///
    /// Only the location's config changes; the next compaction folds old commit markers into
    /// packs (faster syncs). Run it once no earlier pxb uses the location: an earlier pxb
    /// refuses an upgraded location. Running it again changes nothing.
    Upgrade(UpgradeArgs),
}

/// Arguments of `pxb location upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pxb location sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pxb location verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Download everything and check hashes (default: existence and sizes only).
    #[arg(long)]
    deep: bool,
    /// Only these backups (default: all).
    #[arg(long = "backup")]
    backups: Vec<String>,
    /// Downloads in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pxb location gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Keep unreferenced chunks younger than this many seconds.
    #[arg(long, default_value_t = 3600)]
    grace_secs: u64,
    /// Report what would be deleted without deleting.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pxb location check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    json: bool,
    /// The longest one step may take, in seconds.
    #[arg(long, default_value_t = 8)]
    step_timeout: u64,
}

pub(crate) async fn run(cmd: LocationCommand) -> ExitCode {
    match cmd {
        LocationCommand::Check(args) => check(args).await,
        LocationCommand::Sync(a) => sync(a).await,
        LocationCommand::Verify(a) => verify(a).await,
        LocationCommand::Gc(a) => gc(a).await,
        LocationCommand::Upgrade(a) => upgrade(a).await,
    }
}

async fn upgrade(a: UpgradeArgs) -> ExitCode {
    let r = async { repo(&a.location)?.upgrade().await }.await;
    let to = pxb_core::backup::LOCATION_FORMAT;
    match r {
        Err(e) => output::error(a.json, &e),
        Ok(from) if a.json => output::json(&serde_json::json!({"from": from, "to": to.max(from)})),
        Ok(from) if from >= to => {
            println!("the location is of format {from} already: nothing to do");
            ExitCode::SUCCESS
        }
        Ok(from) => {
            println!("upgraded the location from format {from} to format {to}");
            ExitCode::SUCCESS
        }
    }
}

async fn sync(a: SyncArgs) -> ExitCode {
    let r = async {
        let repo = repo(&a.location)?;
        let mut state = SyncState::default();
        let delta = repo.sync(&mut state).await?;
        Ok::<_, pxb_core::Error>((state, delta))
    }
    .await;
    match r {
        Err(e) => output::error(a.json, &e),
        Ok((state, delta)) => {
            let unreadable: Vec<_> = delta
                .unreadable
                .iter()
                .map(|(p, why)| serde_json::json!({"object": p, "error": why}))
                .collect();
            if a.json {
                return output::json(&serde_json::json!({
                    "backups": state.backups.values().collect::<Vec<_>>(),
                    "unreadable": unreadable,
                }));
            }
            println!("{} backup(s) in {}", state.backups.len(), a.location.location);
            for (p, why) in &delta.unreadable {
                println!("  unreadable: {p}: {why}");
            }
            ExitCode::SUCCESS
        }
    }
}

async fn verify(a: VerifyArgs) -> ExitCode {
    let r = async {
        let repo = repo(&a.location)?;
        let ids = if a.backups.is_empty() {
            None
        } else {
            Some(
                a.backups
                    .iter()
                    .map(|b| BackupId::parse(b))
                    .collect::<pxb_core::Result<Vec<_>>>()?,
            )
        };
        verify::verify(&repo, ids, a.deep, a.concurrency).await
    }
    .await;
    match r {
        Err(e) => output::error(a.json, &e),
        Ok(reports) => {
            let bad = reports.iter().filter(|r| r.status != VerifyStatus::Ok).count();
            if a.json {
                output::json(&reports);
            } else {
                for r in &reports {
                    println!(
                        "{:<28} {:?} ({} objects checked)",
                        r.id.as_str(),
                        r.status,
                        r.checked
                    );
                    for m in &r.missing {
                        println!("  missing: {m}");
                    }
                    for c in &r.corrupt {
                        println!("  corrupt: {c}");
                    }
                }
                println!(
                    "{} backup(s) checked ({}), {bad} with problems",
                    reports.len(),
                    if a.deep { "deep" } else { "quick" }
                );
            }
            if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn gc(a: GcArgs) -> ExitCode {
    let r = async {
        let repo = repo(&a.location)?;
        let opts = GcOptions {
            grace: Duration::from_secs(a.grace_secs),
            dry_run: a.dry_run,
            ..GcOptions::default()
        };
        gc::gc(&repo, &opts).await
    }
    .await;
    match r {
        Err(e) => output::error(a.json, &e),
        Ok(r) if a.json => output::json(&r),
        Ok(r) => {
            if let Some(c) = &r.compaction
                && c.days + c.tombstones_removed + c.markers_removed > 0
            {
                println!(
                    "compacted: {} markers folded into the packs of {} days, {} deleted backups left out, {} tombstones removed",
                    c.folded, c.days, c.dropped, c.tombstones_removed
                );
            }
            if let Some(why) = &r.compaction_error {
                println!("not compacted: {why}");
            }
            if let Some(why) = &r.deferred {
                println!("sweep deferred: {why}");
                return ExitCode::SUCCESS;
            }
            let verb = if a.dry_run { "would delete" } else { "deleted" };
            println!(
                "{} backups marked, {} chunks referenced of {} found; {verb} {} chunks ({}) and {} orphaned objects; {} kept in the grace period",
                r.backups,
                r.referenced_chunks,
                r.chunks_seen,
                r.deleted_chunks,
                output::bytes(r.deleted_bytes),
                r.deleted_orphans,
                r.kept_in_grace
            );
            ExitCode::SUCCESS
        }
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let report = match args.location.open() {
        Err(e) => CheckReport::configuration_failed(&args.location.location, &e),
        Ok(opened) => opened.check(Duration::from_secs(args.step_timeout.max(1))).await,
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        writeln!(out, "{report}")
    };
    if written.is_err() {
        return ExitCode::from(3);
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
