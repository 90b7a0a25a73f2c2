//! Volume data: first and incremental backup of a generated dataset, pxb against restic, same data,
//! same run, both to a local repository on the same disk.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use pxb_core::LocalFileSystem;
use pxb_core::backup::Repository;
use pxb_core::backup::volume::{VolumeBackupOptions, backup_volume};
use serde_json::json;

use super::{Rng, du};

const WORDS: &[&str] = &[
    "backup",
    "cluster",
    "namespace",
    "volume",
    "restore",
    "tenant",
    "shoot",
    "garden",
    "agent",
    "server",
    "chunk",
    "manifest",
    "location",
    "identity",
    "token",
    "azure",
    "blob",
    "container",
    "lease",
    "status",
];

/// Fills `buf` with text-like (compressible) or random (incompressible) bytes.
fn fill(buf: &mut [u8], rng: &mut Rng, compressible: bool) {
    if compressible {
        let mut i = 0;
        while i < buf.len() {
            let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes();
            let n = w.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&w[..n]);
            i += n;
            if i < buf.len() {
                buf[i] = if rng.next_u64().is_multiple_of(12) {
                    b'\n'
                } else {
                    b' '
                };
                i += 1;
            }
        }
    } else {
        for c in buf.chunks_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
}

/// Generates the dataset: about 30% of the bytes in small files (1–64 KiB, many directories),
/// 70% in large files (8–200 MiB); half the files compressible text, half random bytes.
/// Returns the files written.
pub fn generate(root: &Path, total: u64, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    let mut rng = Rng(seed);
    let mut files = Vec::new();
    let small_budget = total * 3 / 10;
    let mut written = 0u64;
    let mut i = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while written < small_budget {
        let size = rng.range(1024, 64 * 1024) as usize;
        let p = root.join(format!("small/d{:03}/f{i:06}.dat", i / 200));
        fs::create_dir_all(p.parent().context("parent")?)?;
        fill(&mut buf[..size], &mut rng, i.is_multiple_of(2));
        fs::write(&p, &buf[..size])?;
        files.push(p);
        written += size as u64;
        i += 1;
    }
    let sizes = [8u64 << 20, 32 << 20, 64 << 20, 128 << 20, 200 << 20];
    let mut j = 0usize;
    while written < total {
        let size = sizes[j % sizes.len()].min(total - written).max(1 << 20);
        let p = root.join(format!("large/file{j:03}.bin"));
        fs::create_dir_all(p.parent().context("parent")?)?;
        let mut f = fs::File::create(&p)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill(&mut buf[..n], &mut rng, j.is_multiple_of(2));
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        files.push(p);
        written += size;
        j += 1;
    }
    Ok(files)
}

/// Changes `percent`% of the files (every n-th): small files are rewritten, large files get 256 KiB
/// overwritten in the middle.
pub fn change(files: &[PathBuf], percent: u64, seed: u64) -> anyhow::Result<usize> {
    let mut rng = Rng(seed);
    let step = (100 / percent.max(1)) as usize;
    let mut changed = 0;
    let mut buf = vec![0u8; 256 << 10];
    for p in files.iter().step_by(step) {
        let len = fs::metadata(p)?.len();
        if len <= 64 * 1024 {
            let mut data = vec![0u8; len as usize];
            fill(&mut data, &mut rng, false);
            fs::write(p, &data)?;
        } else {
            let mut f = fs::OpenOptions::new().write(true).open(p)?;
            f.seek(SeekFrom::Start(len / 2))?;
            fill(&mut buf, &mut rng, false);
            f.write_all(&buf)?;
        }
        changed += 1;
    }
    Ok(changed)
}

fn restic(repo: &Path, cache: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("restic")
        .arg("-r")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RESTIC_PASSWORD", "pxb-benchmark")
        .output()
        .context("running restic (install the Debian package `restic`)")?;
    if !out.status.success() {
        bail!("restic {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Flushes all dirty pages to disk, so that no timed phase pays for an earlier phase's writes.
fn flush_disks() {
    let _ = Command::new("sync").status();
}

/// Runs the volume benchmark in `work` with a dataset of `total` bytes.
pub async fn run(work: &Path, total: u64) -> anyhow::Result<serde_json::Value> {
    let data = work.join("data");
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(&data)?;
    let t = Instant::now();
    let files = generate(&data, total, 42)?;
    let gen_secs = t.elapsed().as_secs_f64();
    let dataset = du(&data);
    let restic_version = Command::new("restic")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?;

    let pxb_loc = work.join("pxb-location");
    let repo = Repository::new(Arc::new(LocalFileSystem::new(&pxb_loc)?));
    let (restic_repo, cache) = (work.join("restic-repo"), work.join("restic-cache"));
    restic(&restic_repo, &cache, &["init"])?;

    flush_disks();
    let t = Instant::now();
    let first = backup_volume(&repo, VolumeBackupOptions::new(&data)).await?;
    let pxb_first = t.elapsed().as_secs_f64();
    flush_disks();
    let t = Instant::now();
    restic(
        &restic_repo,
        &cache,
        &["backup", "--quiet", data.to_str().context("utf8")?],
    )?;
    let restic_first = t.elapsed().as_secs_f64();
    let (pxb_stored_1, restic_stored_1) = (du(&pxb_loc), du(&restic_repo));

    let changed = change(&files, 5, 7)?;
    flush_disks();
    let mut opts = VolumeBackupOptions::new(&data);
    opts.parent = Some(first.id.clone());
    let t = Instant::now();
    let second = backup_volume(&repo, opts).await?;
    let pxb_incr = t.elapsed().as_secs_f64();
    flush_disks();
    let t = Instant::now();
    restic(
        &restic_repo,
        &cache,
        &["backup", "--quiet", data.to_str().context("utf8")?],
    )?;
    let restic_incr = t.elapsed().as_secs_f64();
    let (pxb_stored_2, restic_stored_2) = (du(&pxb_loc), du(&restic_repo));
    let mib = dataset as f64 / (1 << 20) as f64;
    Ok(json!({
        "dataset": {"bytes": dataset, "files": files.len(), "changed_files": changed, "generate_secs": gen_secs},
        "restic": restic_version,
        "first": {
            "pxb_secs": pxb_first, "restic_secs": restic_first,
            "pxb_mib_per_s": mib / pxb_first, "restic_mib_per_s": mib / restic_first,
            "speedup": restic_first / pxb_first,
            "pxb_stored": pxb_stored_1, "restic_stored": restic_stored_1,
            "pxb_stats": first.stats,
        },
        "incremental": {
            "pxb_secs": pxb_incr, "restic_secs": restic_incr, "speedup": restic_incr / pxb_incr,
            "pxb_stored_total": pxb_stored_2, "restic_stored_total": restic_stored_2,
            "pxb_stats": second.stats,
        },
    }))
}
