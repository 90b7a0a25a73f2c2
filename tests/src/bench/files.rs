//! Many files: a tree of millions of tiny files backed up, then backed up again incrementally
//! after 0.1% of the files changed, then (with `--restore`) the incremental backup verified and
//! restored into a new folder, with the peak resident memory of each phase. The tree is
//! generated once and kept (a marker records its size), so a second run measures the same data
//! without writing millions of files again.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use pxb_core::LocalFileSystem;
use pxb_core::backup::Repository;
use pxb_core::backup::verify::verify;
use pxb_core::backup::volume::{VolumeBackupOptions, VolumeRestoreOptions, backup_volume, restore_volume};
use serde_json::json;

use super::{current_rss, peak_rss, reset_peak_rss};

/// Files per directory, and directories per top-level directory.
const PER_DIR: u64 = 1000;

fn file(data: &Path, i: u64) -> PathBuf {
    data.join(format!("t{:03}", i / (PER_DIR * PER_DIR)))
        .join(format!("d{:06}", i / PER_DIR))
        .join(format!("f{i:09}"))
}

/// Writes `n` files of a few bytes each (their number), unless the tree is already there.
fn generate(data: &Path, n: u64) -> anyhow::Result<bool> {
    let marker = data.with_extension("files");
    if fs::read_to_string(&marker).ok().as_deref() == Some(n.to_string().as_str()) {
        return Ok(false);
    }
    let _ = fs::remove_dir_all(data);
    let _ = fs::remove_file(&marker);
    for i in 0..n {
        let p = file(data, i);
        if i % PER_DIR == 0 {
            fs::create_dir_all(p.parent().context("parent")?)?;
        }
        fs::write(&p, format!("{i}\n"))?;
    }
    fs::write(&marker, n.to_string())?;
    Ok(true)
}

/// Runs the benchmark in `work` with `n` files; `restore` adds the verify and restore phases.
pub async fn run(work: &Path, n: u64, restore: bool) -> anyhow::Result<serde_json::Value> {
    let data = work.join("data");
    fs::create_dir_all(work)?;
    let t = Instant::now();
    let generated = generate(&data, n)?;
    let generate_secs = t.elapsed().as_secs_f64();
    let loc = work.join("pxb-location");
    let _ = fs::remove_dir_all(&loc);
    let repo = Repository::new(Arc::new(LocalFileSystem::new(&loc)?));
    let _ = std::process::Command::new("sync").status();

    let before = current_rss();
    reset_peak_rss();
    let t = Instant::now();
    let first = backup_volume(&repo, VolumeBackupOptions::new(&data)).await?;
    let first_secs = t.elapsed().as_secs_f64();
    let first_peak = peak_rss();

    // Change 0.1% of the files (every 1000th, one more byte each), then back up incrementally.
    let mut changed = 0u64;
    for i in (0..n).step_by(1000) {
        fs::write(file(&data, i), format!("{i}+\n"))?;
        changed += 1;
    }
    let mut opts = VolumeBackupOptions::new(&data);
    opts.parent = Some(first.id.clone());
    let _ = std::process::Command::new("sync").status();
    let before_incr = current_rss();
    reset_peak_rss();
    let t = Instant::now();
    let second = backup_volume(&repo, opts).await?;
    let incr_secs = t.elapsed().as_secs_f64();
    let incr_peak = peak_rss();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let restored = if restore {
        // Verify (every object the backup references exists), then restore into a new folder.
        let before = current_rss();
        reset_peak_rss();
        let t = Instant::now();
        let reports = verify(&repo, Some(vec![second.id.clone()]), false, 16).await?;
        let verify_secs = t.elapsed().as_secs_f64();
        let verify_peak = peak_rss();
        anyhow::ensure!(
            reports
                .iter()
                .all(|r| r.status == pxb_core::backup::verify::VerifyStatus::Ok),
            "verify failed: {reports:?}"
        );
        let out = work.join("restore");
        let _ = fs::remove_dir_all(&out);
        let _ = std::process::Command::new("sync").status();
        let before_restore = current_rss();
        reset_peak_rss();
        let t = Instant::now();
        let stats = restore_volume(&repo, &second.id, VolumeRestoreOptions::new(&out)).await?;
        let restore_secs = t.elapsed().as_secs_f64();
        let restore_peak = peak_rss();
        anyhow::ensure!(stats.files == n, "restored {} files of {n}", stats.files);
        fs::remove_dir_all(&out)?;
        json!({
            "verify": {
                "secs": verify_secs, "rss_before_mib": mib(before), "peak_rss_mib": mib(verify_peak),
            },
            "restore": {
                "secs": restore_secs, "files_per_s": n as f64 / restore_secs,
                "rss_before_mib": mib(before_restore), "peak_rss_mib": mib(restore_peak),
                "stats": stats,
            },
        })
    } else {
        serde_json::Value::Null
    };
    // Put the changed files back, so the kept tree is the one the marker describes.
    for i in (0..n).step_by(1000) {
        fs::write(file(&data, i), format!("{i}\n"))?;
    }
    fs::remove_dir_all(&loc)?;
    Ok(json!({
        "restored": restored,
        "files": n, "generated": generated, "generate_secs": generate_secs,
        "first": {
            "secs": first_secs, "files_per_s": n as f64 / first_secs,
            "rss_before_mib": mib(before), "peak_rss_mib": mib(first_peak),
            "stats": first.stats,
        },
        "incremental": {
            "changed_files": changed, "secs": incr_secs,
            "rss_before_mib": mib(before_incr), "peak_rss_mib": mib(incr_peak),
            "stats": second.stats,
        },
    }))
}
