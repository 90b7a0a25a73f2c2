//! Volume data: first backup, incremental backup and restore of a generated dataset, pxb against
//! restic and borg, same data, same run, each to a local repository on the same disk; and the
//! physical limit of this machine for the same data (reading it from the page cache, hashing it,
//! compressing it).

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pxb_core::LocalFileSystem;
use pxb_core::backup::Repository;
use pxb_core::backup::chunk::{self, ChunkId};
use pxb_core::backup::volume::{VolumeBackupOptions, VolumeRestoreOptions, backup_volume, restore_volume};
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

/// Which dataset a volume benchmark generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSet {
    /// 30% of the bytes in small files (1–64 KiB), 70% in large files (8–200 MiB).
    Large,
    /// 80% of the bytes in small files (1–64 KiB, tens of thousands per GiB), 20% in large files.
    Small,
}

impl DataSet {
    /// The share of the bytes in small files, in percent.
    fn small_percent(self) -> u64 {
        match self {
            DataSet::Large => 30,
            DataSet::Small => 80,
        }
    }

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            DataSet::Large => "large",
            DataSet::Small => "small",
        }
    }
}

impl std::str::FromStr for DataSet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "large" => Ok(DataSet::Large),
            "small" => Ok(DataSet::Small),
            _ => bail!("unknown data set {s:?} (large or small)"),
        }
    }
}

/// Generates the dataset: the set's share of the bytes in small files (1–64 KiB, 200 per
/// directory), the rest in large files (8–200 MiB); half the files compressible text, half random
/// bytes. Returns the files written.
pub fn generate(root: &Path, total: u64, set: DataSet, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    let mut rng = Rng(seed);
    let mut files = Vec::new();
    let small_budget = total * set.small_percent() / 100;
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

/// Runs an anchor tool (`restic` or `borg`) and fails with its error output.
fn tool(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (install Debian's restic and borgbackup)"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn restic(repo: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("restic");
    c.arg("-r")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RESTIC_PASSWORD", "pxb-benchmark");
    c
}

/// borg with its cache, config and security folders under `base` (nothing in the user's home).
fn borg(base: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("borg");
    c.args(args)
        .env("BORG_BASE_DIR", base)
        .env("BORG_PASSPHRASE", "pxb-benchmark")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
    c
}

fn version(cmd: &str) -> String {
    Command::new(cmd)
        .arg(if cmd == "borg" { "--version" } else { "version" })
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("not available: {e}"))
}

/// Flushes all dirty pages to disk, so that no timed phase pays for an earlier phase's writes.
fn flush_disks() {
    let _ = Command::new("sync").status();
}

/// Reads every file of the data set, so the next phase finds it in the page cache whichever tool
/// runs first. This machine's page cache loses part of an idle data set within minutes (an eighth
/// of 2 GiB was gone after the six minutes of [`settle`]), which the first tool to read it would
/// pay for alone.
fn warm(files: &[PathBuf]) -> anyhow::Result<()> {
    on_all_cores(files, |d| d.len() as u64).map(drop)
}

/// Removes what an earlier run left in `work` and returns when that was done, for [`settle`].
fn clear(work: &Path) -> Instant {
    let _ = fs::remove_dir_all(work);
    Instant::now()
}

/// Waits until files deleted before `cleared` (by the previous run, here or in another process)
/// no longer slow down creating new ones. This machine's ext4 has no journal, and such a file
/// system, when it allocates an inode, skips each inode freed in the last minute, or in the last
/// six while the inode's table block is dirty, which it is as soon as a neighbour is created
/// (`recently_deleted` in the kernel), by scanning past it for every file created: for minutes
/// after a tree of tens of thousands of files is removed, creating files costs several times as
/// much, for whichever tool runs first. The disks are flushed, then the rest of the six minutes
/// is waited out (`PXB_BENCH_SETTLE_SECS` sets another wait, `0` none: for profiling).
fn settle(cleared: Instant) {
    flush_disks();
    let wait = std::env::var("PXB_BENCH_SETTLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6 * 60 + 5);
    if let Some(rest) = Duration::from_secs(wait).checked_sub(cleared.elapsed()) {
        eprintln!(
            "waiting {:.0} s for the last run's deleted inodes to age",
            rest.as_secs_f64()
        );
        std::thread::sleep(rest);
    }
}

/// CPU seconds from `/proc/self/stat`: this process's user and system time, and the user and
/// system time of its children that have ended (the anchors' runs); zeros where that cannot be
/// read.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: f64,
    system: f64,
    children_user: f64,
    children_system: f64,
}

impl Cpu {
    fn now() -> Self {
        let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces: the
        // line's fields 14 to 17 (utime, stime, cutime, cstime) are the 12th to 15th of these.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let field = |n: usize| rest.split_whitespace().nth(n).and_then(|v| v.parse::<f64>().ok());
        // In clock ticks, 100 a second on Linux.
        let secs = |n| field(n).unwrap_or(0.0) / 100.0;
        Cpu {
            user: secs(11),
            system: secs(12),
            children_user: secs(13),
            children_system: secs(14),
        }
    }

    /// This process's CPU time since `before`.
    fn own_since(self, before: Cpu) -> serde_json::Value {
        json!({"user": self.user - before.user, "system": self.system - before.system})
    }

    /// The CPU time of the children that ended since `before`.
    fn children_since(self, before: Cpu) -> serde_json::Value {
        json!({
            "user": self.children_user - before.children_user,
            "system": self.children_system - before.children_system,
        })
    }
}

/// Runs `f` after flushing the disks and returns its wall-clock seconds.
async fn timed<F: std::future::Future<Output = anyhow::Result<T>>, T>(f: F) -> anyhow::Result<(f64, T)> {
    flush_disks();
    let t = Instant::now();
    let v = f.await?;
    Ok((t.elapsed().as_secs_f64(), v))
}

fn time_tool(cmd: Command, what: &str) -> anyhow::Result<f64> {
    flush_disks();
    let t = Instant::now();
    tool(cmd, what)?;
    Ok(t.elapsed().as_secs_f64())
}

/// The three tools' figures for one phase, with the anchors' time over pxb's (above 1: pxb is
/// faster).
fn phase(pxb: f64, restic: f64, borg: f64) -> serde_json::Value {
    json!({
        "pxb_secs": pxb, "restic_secs": restic, "borg_secs": borg,
        "speedup_vs_restic": restic / pxb, "speedup_vs_borg": borg / pxb,
    })
}

/// Splits `files` among the machine's cores and runs `work` on each share; returns the seconds the
/// whole took and the sum of what `work` returned.
fn on_all_cores(files: &[PathBuf], work: impl Fn(&[u8]) -> u64 + Sync) -> anyhow::Result<(f64, u64)> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    let total = std::thread::scope(|s| -> anyhow::Result<u64> {
        let handles: Vec<_> = (0..cores)
            .map(|i| {
                let work = &work;
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut sum = 0;
                    for p in files.iter().skip(i).step_by(cores) {
                        sum += work(&fs::read(p)?);
                    }
                    Ok(sum)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?)
            .sum()
    })?;
    Ok((t.elapsed().as_secs_f64(), total))
}

/// The physical limit for this data on this machine: reading every file from the page cache,
/// hashing the bytes (BLAKE3, as chunk ids), and compressing them (zstd at pxb's level), each on
/// all cores, each alone. The files are read before every measurement so they are cached; hashing
/// and compressing include that read, and the read alone is given so it can be subtracted.
fn limit(files: &[PathBuf]) -> anyhow::Result<serde_json::Value> {
    on_all_cores(files, |d| d.len() as u64)?; // warm the page cache
    let (read, bytes) = on_all_cores(files, |d| d.len() as u64)?;
    let (hash, _) = on_all_cores(files, |d| u64::from(ChunkId::of(d).0[0]))?;
    let (compress, compressed) = on_all_cores(files, |d| chunk::encode(d, 3).len() as u64)?;
    let (both, _) = on_all_cores(files, |d| {
        let id = ChunkId::of(d);
        chunk::encode(d, 3).len() as u64 + u64::from(id.0[0])
    })?;
    Ok(json!({
        "bytes": bytes, "files": files.len(),
        "read_secs": read, "read_hash_secs": hash, "read_compress_secs": compress,
        "read_hash_compress_secs": both, "compressed_bytes": compressed,
        "note": "each on all cores; read from the page cache; one zstd frame per file; \
                 write_tree: the files written into a new tree, nothing else",
    }))
}

/// The physical limit of a restore of this data on this machine: every file of the data set (read
/// from the page cache) written into a new tree under `out`, on all cores, nothing else (no
/// decompression, no hash). The directories are made first, outside the time. What writing costs
/// here depends on the memory the page cache grows into (see BENCHMARKS.md, round five), so a
/// restore's figure is shown next to this one measured in the same run.
fn write_limit(files: &[PathBuf], data: &Path, out: &Path) -> anyhow::Result<f64> {
    let mut targets = Vec::with_capacity(files.len());
    for f in files {
        let t = out.join(f.strip_prefix(data)?);
        fs::create_dir_all(t.parent().context("parent")?)?;
        targets.push(t);
    }
    on_all_cores(files, |d| d.len() as u64)?; // the source in the page cache
    flush_disks();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..cores)
            .map(|i| {
                let targets = &targets;
                s.spawn(move || -> anyhow::Result<()> {
                    // Through one buffer, as a restore writes decoded chunks.
                    let mut buf = vec![0u8; 1 << 20];
                    for (src, dst) in files.iter().zip(targets).skip(i).step_by(cores) {
                        let (mut src, mut dst) = (fs::File::open(src)?, fs::File::create(dst)?);
                        loop {
                            let n = std::io::Read::read(&mut src, &mut buf)?;
                            if n == 0 {
                                break;
                            }
                            dst.write_all(&buf[..n])?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?)
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the volume benchmark in `work` with a dataset of `total` bytes of the given set: first
/// backup, 5% incremental, restore of the incremental, for pxb, restic and borg in turn, then the
/// machine's limit for the same data.
pub async fn run(work: &Path, total: u64, set: DataSet) -> anyhow::Result<serde_json::Value> {
    let data = work.join("data");
    let deleted = clear(work);
    fs::create_dir_all(&data)?;
    let t = Instant::now();
    let files = generate(&data, total, set, 42)?;
    let gen_secs = t.elapsed().as_secs_f64();
    settle(deleted);
    let dataset = du(&data);
    let src = data.to_str().context("utf8")?;

    let pxb_loc = work.join("pxb-location");
    let repo = Repository::new(Arc::new(LocalFileSystem::new(&pxb_loc)?));
    let (restic_repo, cache) = (work.join("restic-repo"), work.join("restic-cache"));
    let (borg_repo, borg_base) = (work.join("borg-repo"), work.join("borg-base"));
    let borg_repo_s = borg_repo.to_str().context("utf8")?.to_owned();
    tool(restic(&restic_repo, &cache, &["init"]), "restic init")?;
    // Encrypted like restic's repository; zstd at pxb's level (borg's default is lz4).
    tool(
        borg(&borg_base, &["init", "--encryption=repokey-blake2", &borg_repo_s]),
        "borg init",
    )?;
    let borg_create = |name: &str| {
        let archive = format!("{borg_repo_s}::{name}");
        borg(&borg_base, &["create", "--compression", "zstd,3", &archive, src])
    };

    // Every backup phase reads the data from the page cache (see `warm`).
    warm(&files)?;
    let (pxb_first, first) =
        timed(async { Ok(backup_volume(&repo, VolumeBackupOptions::new(&data)).await?) }).await?;
    warm(&files)?;
    let restic_first = time_tool(
        restic(&restic_repo, &cache, &["backup", "--quiet", src]),
        "restic backup",
    )?;
    warm(&files)?;
    let borg_first = time_tool(borg_create("first"), "borg create")?;
    let stored_1 = (du(&pxb_loc), du(&restic_repo), du(&borg_repo));

    let changed = change(&files, 5, 7)?;
    let mut opts = VolumeBackupOptions::new(&data);
    opts.parent = Some(first.id.clone());
    warm(&files)?;
    let (pxb_incr, second) = timed(async { Ok(backup_volume(&repo, opts).await?) }).await?;
    warm(&files)?;
    let restic_incr = time_tool(
        restic(&restic_repo, &cache, &["backup", "--quiet", src]),
        "restic backup",
    )?;
    warm(&files)?;
    let borg_incr = time_tool(borg_create("second"), "borg create")?;
    let stored_2 = (du(&pxb_loc), du(&restic_repo), du(&borg_repo));

    // Restore the incremental backup into empty folders; each tool's result is checked by size.
    let out = |name: &str| -> anyhow::Result<PathBuf> {
        let d = work.join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d)?;
        Ok(d)
    };
    // What writing the tree alone costs, before the restores and after them (see `write_limit`).
    let write_out = out("write-limit-before")?;
    let cpu_write = Cpu::now();
    let write_before = write_limit(&files, &data, &write_out)?;
    let pxb_out = out("restore-pxb")?;
    let cpu_pxb = Cpu::now();
    let (pxb_restore, restored) =
        timed(async { Ok(restore_volume(&repo, &second.id, VolumeRestoreOptions::new(&pxb_out)).await?) })
            .await?;
    let cpu_restic = Cpu::now();
    let restic_out = out("restore-restic")?;
    let restic_restore = time_tool(
        restic(
            &restic_repo,
            &cache,
            &[
                "restore",
                "latest",
                "--target",
                restic_out.to_str().context("utf8")?,
            ],
        ),
        "restic restore",
    )?;
    let cpu_borg = Cpu::now();
    let borg_out = out("restore-borg")?;
    let mut extract = borg(&borg_base, &["extract", &format!("{borg_repo_s}::second")]);
    extract.current_dir(&borg_out);
    let borg_restore = time_tool(extract, "borg extract")?;
    let cpu_end = Cpu::now();
    let write_after = write_limit(&files, &data, &out("write-limit-after")?)?;
    let cpu_written = Cpu::now();
    let sizes = (du(&pxb_out), du(&restic_out), du(&borg_out));
    if sizes != (dataset, dataset, dataset) {
        bail!("a restore is incomplete: {dataset} bytes backed up, restored (pxb, restic, borg) {sizes:?}");
    }
    for d in [&pxb_out, &restic_out, &borg_out] {
        fs::remove_dir_all(d)?;
    }
    for d in ["write-limit-before", "write-limit-after"] {
        fs::remove_dir_all(work.join(d))?;
    }

    let mut limit = limit(&files)?;
    limit["write_tree_secs_before_restores"] = json!(write_before);
    limit["write_tree_secs_after_restores"] = json!(write_after);
    let mib = dataset as f64 / (1 << 20) as f64;
    Ok(json!({
        "dataset": {
            "set": set.name(), "bytes": dataset, "files": files.len(),
            "changed_files": changed, "generate_secs": gen_secs,
        },
        "restic": version("restic"),
        "borg": version("borg"),
        "first": phase(pxb_first, restic_first, borg_first),
        "first_mib_per_s": {"pxb": mib / pxb_first, "restic": mib / restic_first, "borg": mib / borg_first},
        "stored_after_first": {"pxb": stored_1.0, "restic": stored_1.1, "borg": stored_1.2},
        "incremental": phase(pxb_incr, restic_incr, borg_incr),
        "stored_after_both": {"pxb": stored_2.0, "restic": stored_2.1, "borg": stored_2.2},
        "restore": phase(pxb_restore, restic_restore, borg_restore),
        "pxb_stats": {"first": first.stats, "incremental": second.stats, "restore": restored},
        // Where each restore's time went: its CPU time, user and system.
        "restore_cpu_secs": {
            "pxb": cpu_restic.own_since(cpu_pxb),
            "restic": cpu_borg.children_since(cpu_restic),
            "borg": cpu_end.children_since(cpu_borg),
            "write_tree_before": cpu_pxb.own_since(cpu_write),
            "write_tree_after": cpu_written.own_since(cpu_end),
        },
        "limit": limit,
    }))
}

/// Clears what an earlier run left in `work` and generates the set in `work/data`: the data
/// folder, when the earlier run's files were deleted (for [`settle`]), and the files.
fn fresh_set(work: &Path, total: u64, set: DataSet) -> anyhow::Result<(PathBuf, Instant, Vec<PathBuf>)> {
    let data = work.join("data");
    let deleted = clear(work);
    fs::create_dir_all(&data)?;
    let files = generate(&data, total, set, 42)?;
    Ok((data, deleted, files))
}

/// Restores alone: one pxb backup of the set, then `rounds` restores of it into empty folders,
/// each timed after a flush (for profiling the restore path).
pub async fn restores(
    work: &Path,
    total: u64,
    set: DataSet,
    rounds: u32,
    concurrency: Option<usize>,
) -> anyhow::Result<serde_json::Value> {
    let (data, deleted, files) = fresh_set(work, total, set)?;
    let repo = Repository::new(Arc::new(LocalFileSystem::new(work.join("pxb-location"))?));
    let backup = backup_volume(&repo, VolumeBackupOptions::new(&data)).await?;
    settle(deleted);
    let (mut secs, mut cpu) = (Vec::new(), Vec::new());
    // Each round restores into its own folder, all removed at the end: nothing is deleted
    // between rounds (see `settle`).
    for round in 0..rounds {
        let out = work.join(format!("restore-{round}"));
        let mut opts = VolumeRestoreOptions::new(&out);
        if let Some(c) = concurrency {
            opts.concurrency = c;
        }
        let before = Cpu::now();
        let (s, stats) = timed(async { Ok(restore_volume(&repo, &backup.id, opts).await?) }).await?;
        let after = Cpu::now();
        if stats.bytes != backup.stats.bytes {
            bail!("restored {} bytes of {}", stats.bytes, backup.stats.bytes);
        }
        secs.push(s);
        cpu.push(after.own_since(before));
    }
    let write = write_limit(&files, &data, &work.join("write-limit"))?;
    fs::remove_dir_all(work)?;
    Ok(json!({
        "set": set.name(), "bytes": backup.stats.bytes, "files": backup.stats.files,
        "restore_secs": secs, "restore_cpu_secs": cpu, "write_tree_secs_after": write,
    }))
}

/// First backups of the same data, each into a fresh location: for profiling the backup path
/// alone (`pxb-bench backup`).
pub async fn backups(
    work: &Path,
    total: u64,
    set: DataSet,
    rounds: u32,
) -> anyhow::Result<serde_json::Value> {
    let (data, deleted, files) = fresh_set(work, total, set)?;
    settle(deleted);
    let mut secs = Vec::new();
    let mut stored = 0;
    for round in 0..rounds {
        let location = work.join(format!("pxb-location-{round}"));
        let repo = Repository::new(Arc::new(LocalFileSystem::new(&location)?));
        warm(&files)?;
        let (s, backup) =
            timed(async { Ok(backup_volume(&repo, VolumeBackupOptions::new(&data)).await?) }).await?;
        stored = backup.stats.stored_bytes;
        fs::remove_dir_all(&location)?;
        secs.push(s);
    }
    fs::remove_dir_all(work)?;
    Ok(json!({"set": set.name(), "stored_bytes": stored, "backup_secs": secs}))
}

/// One first backup of the set, then `rounds` incremental backups, each after changing 5 % of the
/// files and each with the one before as its parent: for profiling the incremental path alone
/// (`pxb-bench backup --incremental`).
pub async fn incrementals(
    work: &Path,
    total: u64,
    set: DataSet,
    rounds: u32,
) -> anyhow::Result<serde_json::Value> {
    let (data, deleted, files) = fresh_set(work, total, set)?;
    let repo = Repository::new(Arc::new(LocalFileSystem::new(work.join("pxb-location"))?));
    warm(&files)?;
    let mut parent = backup_volume(&repo, VolumeBackupOptions::new(&data)).await?;
    settle(deleted);
    let mut secs = Vec::new();
    let mut read = Vec::new();
    for round in 0..rounds {
        change(&files, 5, 7 + u64::from(round))?;
        warm(&files)?;
        let mut opts = VolumeBackupOptions::new(&data);
        opts.parent = Some(parent.id.clone());
        let (s, backup) = timed(async { Ok(backup_volume(&repo, opts).await?) }).await?;
        secs.push(s);
        read.push(backup.stats.bytes_read);
        parent = backup;
    }
    fs::remove_dir_all(work)?;
    Ok(json!({"set": set.name(), "incremental_secs": secs, "read_bytes": read}))
}
