//! `pxb volume …` and `pxb backup …`: moving file trees and managing backups.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pxb_core::Result;
use pxb_core::backup::volume::{
    VolumeBackupOptions, VolumeRestoreOptions, backup_volume, canonical_source, default_parent,
    find_volume_backup, restore_volume,
};
use pxb_core::backup::{BackupId, Repository};
use tracing::Instrument as _;

use super::output::{self, Bar};
use crate::location::LocationArgs;

/// Volume commands.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Back up a directory tree (incremental to the newest backup of the same tag, or path).
    Backup(BackupArgs),
    /// Restore a volume backup into a directory.
    Restore(RestoreArgs),
}

/// Arguments of `pxb volume backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// The directory to back up.
    #[arg(long)]
    path: PathBuf,
    /// The backup to be incremental to (default: the newest with the same tag, or without a tag
    /// the same path).
    #[arg(long)]
    parent: Option<String>,
    /// Back up everything again, reading every file (still deduplicated).
    #[arg(long, conflicts_with = "parent")]
    no_parent: bool,
    /// A tag for this backup.
    #[arg(long)]
    tag: Option<String>,
    /// The cluster the data belongs to.
    #[arg(long)]
    cluster: Option<String>,
    /// Files and uploads in flight.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Print one JSON document (the manifest) instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pxb volume restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// The backup to restore, or `latest`.
    #[arg(long)]
    backup: String,
    /// With `--backup latest`: the newest backup with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// The directory to restore into (created if missing).
    #[arg(long)]
    target: PathBuf,
    /// Files restored at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Restore setuid and setgid bits too (dropped by default: the location, not you, says
    /// which files get them).
    #[arg(long)]
    keep_setid: bool,
    /// Print one JSON document instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Backup management commands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List the backups in a location (from listing metadata; no download per backup).
    List(ListArgs),
    /// Delete a backup (its chunks are reclaimed by `pxb location gc`).
    Delete(DeleteArgs),
}

/// Arguments of `pxb backup list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pxb backup delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// The backup to delete.
    id: String,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

pub(crate) fn repo(location: &LocationArgs) -> Result<Repository> {
    Ok(Repository::new(location.open()?.store))
}

pub(crate) async fn run_volume(cmd: VolumeCommand) -> ExitCode {
    match cmd {
        VolumeCommand::Backup(a) => {
            let json = a.json;
            match backup(a).await {
                Ok(code) => code,
                Err(e) => output::error(json, &e),
            }
        }
        VolumeCommand::Restore(a) => {
            let json = a.json;
            match restore(a).await {
                Ok(code) => code,
                Err(e) => output::error(json, &e),
            }
        }
    }
}

/// `value` (a path or name the user gave) as a span field: itself when it is a plain path (at
/// most 1024 letters, digits, `/`, `.`, `-`, `_` or `:`), else `"(invalid)"`, as the agent's
/// spans take only plain names: a file name cannot forge or break a log line.
fn span_field(value: &str) -> &str {
    let plain = !value.is_empty()
        && value.len() <= 1024
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_' | b':'));
    if plain { value } else { "(invalid)" }
}

/// `pxb volume backup`, in its span (`volume_backup`, with the `source` directory and the
/// `tag`), which says how it ended.
async fn backup(a: BackupArgs) -> Result<ExitCode> {
    let repo = repo(&a.location)?;
    let source = canonical_source(&a.path)?;
    let span = tracing::info_span!(
        "volume_backup",
        source = %span_field(&source.to_string_lossy()),
        tag = tracing::field::Empty,
    );
    if let Some(tag) = &a.tag {
        span.record("tag", span_field(tag));
    }
    let r = backup_in_span(a, repo, source).instrument(span.clone()).await;
    // At `info`: the command prints the error itself, and `warn` (its default filter) would say
    // it twice.
    if let Err(e) = &r {
        span.in_scope(|| tracing::info!(error = %e, "volume backup failed"));
    }
    r
}

async fn backup_in_span(a: BackupArgs, repo: Repository, source: PathBuf) -> Result<ExitCode> {
    let parent = match (&a.parent, a.no_parent) {
        (Some(p), _) => Some(BackupId::parse(p)?),
        (None, true) => None,
        (None, false) => default_parent(&repo, &source, a.tag.as_deref()).await?,
    };
    let mut opts = VolumeBackupOptions::new(&source);
    opts.parent = parent.clone();
    opts.tag = a.tag.clone();
    opts.cluster = a.cluster.clone();
    if let Some(c) = a.concurrency {
        opts.concurrency = c.max(1);
    }
    let bar = Bar::new(!a.json, "backup");
    opts.progress = bar.callback();
    let m = backup_volume(&repo, opts).await;
    bar.finish();
    let m = m?;
    let s = &m.stats;
    tracing::info!(id = %m.id, files = s.files, bytes = s.bytes, read = s.bytes_read,
                   stored = s.stored_bytes, "volume backed up");
    if a.json {
        return Ok(output::json(&m));
    }
    println!("backup {} committed ({:?})", m.id, m.status);
    println!(
        "  {} files, {} dirs, {} symlinks, {} in total; read {} (parent: {})",
        s.files,
        s.dirs,
        s.symlinks,
        output::bytes(s.bytes),
        output::bytes(s.bytes_read),
        parent.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
    );
    println!(
        "  {} chunks, {} new; uploaded {}",
        s.chunks,
        s.new_chunks,
        output::bytes(s.stored_bytes)
    );
    for w in &m.warnings {
        println!("  warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `pxb volume restore`, in its span (`volume_restore`, with the `backup` asked for and the
/// `target` directory), which says how it ended.
async fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let span = tracing::info_span!(
        "volume_restore",
        backup = %span_field(&a.backup),
        target = %span_field(&a.target.to_string_lossy()),
    );
    let r = restore_in_span(a).instrument(span.clone()).await;
    // At `info`: the command prints the error itself, and `warn` (its default filter) would say
    // it twice.
    if let Err(e) = &r {
        span.in_scope(|| tracing::info!(error = %e, "volume restore failed"));
    }
    r
}

async fn restore_in_span(a: RestoreArgs) -> Result<ExitCode> {
    let repo = repo(&a.location)?;
    let id = find_volume_backup(&repo, &a.backup, a.tag.as_deref()).await?;
    let mut opts = VolumeRestoreOptions::new(&a.target);
    opts.concurrency = a.concurrency.max(1);
    opts.keep_set_id = a.keep_setid;
    let bar = Bar::new(!a.json, "restore");
    opts.progress = bar.callback();
    let r = restore_volume(&repo, &id, opts).await;
    bar.finish();
    let r = r?;
    tracing::info!(id = %id, files = r.files, bytes = r.bytes, "volume restored");
    if a.json {
        return Ok(output::json(
            &serde_json::json!({"backup": id, "target": a.target, "stats": r}),
        ));
    }
    println!(
        "restored backup {id} into {}: {} files, {} dirs, {} symlinks, {} (every chunk verified)",
        a.target.display(),
        r.files,
        r.dirs,
        r.symlinks,
        output::bytes(r.bytes)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_backup(cmd: BackupCommand) -> ExitCode {
    match cmd {
        BackupCommand::List(a) => {
            let r = async {
                let repo = repo(&a.location)?;
                repo.list().await
            }
            .await;
            match r {
                Err(e) => output::error(a.json, &e),
                Ok(list) if a.json => output::json(&list),
                Ok(list) => {
                    println!(
                        "{:<28} {:<9} {:<16} {:>10} {:>10}  TAG/SOURCE",
                        "ID", "KIND", "STATUS", "SIZE", "STORED"
                    );
                    for s in &list {
                        println!(
                            "{:<28} {:<9} {:<16} {:>10} {:>10}  {}",
                            s.id.as_str(),
                            format!("{:?}", s.kind).to_lowercase(),
                            format!("{:?}", s.status),
                            output::bytes(s.bytes),
                            output::bytes(s.stored_bytes),
                            s.tag.clone().or_else(|| s.source.clone()).unwrap_or_default()
                        );
                    }
                    println!("{} backup(s)", list.len());
                    ExitCode::SUCCESS
                }
            }
        }
        BackupCommand::Delete(a) => {
            let r = async {
                let repo = repo(&a.location)?;
                let id = BackupId::parse(&a.id)?;
                repo.delete(&id).await
            }
            .await;
            match r {
                Err(e) => output::error(a.json, &e),
                Ok(deleted) if a.json => output::json(&serde_json::json!({"deleted": deleted})),
                Ok(deleted) => {
                    println!(
                        "deleted backup {} ({} objects); run `pxb location gc` to reclaim its chunks",
                        a.id,
                        deleted.len()
                    );
                    ExitCode::SUCCESS
                }
            }
        }
    }
}
