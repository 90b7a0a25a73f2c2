//! Runs every fuzz target (`pxb_core::backup::fuzz`) on its seed corpus, on seeds made here by the
//! real writers, and on deterministic mutations of all of them (every truncation point up to a
//! bound, bit flips across the input, appended garbage). Any panic fails the test. The same targets
//! run under libFuzzer from `fuzz/` (see `fuzz/README.md`).
//!
//! `PXB_WRITE_FUZZ_SEEDS=1` also writes the seeds made here into `fuzz/seeds/<target>/`.

use std::path::PathBuf;

use pxb_core::backup::chunk::{ChunkId, encode};
use pxb_core::backup::fuzz;
use pxb_core::backup::spool::SpoolWriter;
use pxb_core::backup::volume::{EntryKind, FileEntry, Slice};
use pxb_core::backup::{
    BackupId, BackupKind, BackupStats, BackupStatus, Manifest, ManifestObject, Summary, VolumeRef,
};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 9] = [
    ("chunk", fuzz::chunk),
    ("files_index", fuzz::files_index),
    ("manifest", fuzz::manifest),
    ("manifest_volumes", fuzz::manifest_volumes),
    ("config", fuzz::config),
    ("summary", fuzz::summary),
    ("local_header", fuzz::local_header),
    ("resources_archive", fuzz::resources_archive),
    ("archive_lines", fuzz::archive_lines),
];

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn manifest() -> Manifest {
    let id = BackupId::parse("20261122T000000Z-0badc0de").expect("id");
    Manifest {
        format: 1,
        id,
        kind: BackupKind::Volume,
        created: 1,
        completed: 2,
        status: BackupStatus::Completed,
        cluster: Some("shoot-a".into()),
        namespaces: vec!["ns-1".into()],
        tag: Some("nightly".into()),
        source: Some("/data".into()),
        parent: None,
        objects: vec![ManifestObject {
            name: "files".into(),
            size: 10,
            blake3: "00".repeat(32),
        }],
        stats: BackupStats {
            files: 3,
            bytes: 100,
            ..BackupStats::default()
        },
        warnings: vec!["w".into()],
        volumes: vec![],
    }
}

/// Valid inputs for each target, made by the real writers.
fn made_seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "chunk" => vec![
            encode(&b"compressible ".repeat(500), 3),
            encode(&(0..=255u8).collect::<Vec<_>>(), 3),
            encode(b"", 3),
        ],
        "files_index" => {
            let mut w = SpoolWriter::new("files", 1).expect("spool");
            let id = ChunkId::of(b"x");
            for (i, kind) in [EntryKind::Dir, EntryKind::File, EntryKind::Symlink]
                .into_iter()
                .enumerate()
            {
                w.push(&FileEntry {
                    path: if i == 0 { String::new() } else { format!("p{i}") },
                    kind,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 1,
                    mtime_ns: 2,
                    size: if kind == EntryKind::File { 1 } else { 0 },
                    ino: 3,
                    target: (kind == EntryKind::Symlink).then(|| "t".into()),
                    slices: if kind == EntryKind::File {
                        vec![Slice(id, 0, 1)]
                    } else {
                        vec![]
                    },
                })
                .expect("push");
            }
            let spooled = w.finish().expect("finish");
            let mut file = spooled_file(spooled);
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes).expect("read");
            vec![bytes]
        }
        "manifest" => vec![serde_json::to_vec(&manifest()).expect("json")],
        "config" => {
            vec![br#"{"format":1,"chunk_min":524288,"chunk_avg":1048576,"chunk_max":8388608}"#.to_vec()]
        }
        "summary" => {
            let s = Summary::of(&manifest());
            vec![format!("{}\n{}", s.id, serde_json::to_string(&s).expect("json")).into_bytes()]
        }
        "local_header" => {
            let mut h = b"PXBL\x01".to_vec();
            let md = br#"{"pxb_summary":"{}"}"#;
            h.extend_from_slice(&(md.len() as u32).to_le_bytes());
            h.extend_from_slice(md);
            h.extend_from_slice(b"object data");
            vec![h]
        }
        "manifest_volumes" => {
            let refs = [VolumeRef {
                namespace: "shop".into(),
                claim: "data".into(),
                backup: BackupId::parse("20261122T000000Z-1a2b3c4d").expect("id"),
                spec: Some(serde_json::json!({"resources": {"requests": {"storage": "1Gi"}}})),
            }];
            vec![serde_json::to_vec(&refs).expect("json")]
        }
        "resources_archive" => vec![resource_archive()],
        "archive_lines" => vec![zstd::decode_all(&resource_archive()[..]).expect("plain archive")],
        other => panic!("no seeds for {other}"),
    }
}

/// A real archive of a few objects, written by `backup_resources`.
fn resource_archive() -> Vec<u8> {
    use pxb_core::resources::{InMemoryCluster, ResourceSelector, backup_resources};
    use pxb_core::{InMemory, ObjectPath, ObjectStore};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cluster = InMemoryCluster::new();
        cluster.seed(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}})).expect("seed");
        cluster
            .seed(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "app", "uid": "u1"}, "data": {"k": "v"}}))
            .expect("seed");
        cluster
            .seed(serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "app"}, "spec": {"replicas": 1}}))
            .expect("seed");
        let store = InMemory::new();
        let path = ObjectPath::parse("r").expect("path");
        let selector = ResourceSelector { namespaces: vec!["app".into()], ..ResourceSelector::default() };
        backup_resources(&cluster, &selector, &store, &path).await.expect("backup");
        store.get(&path).await.expect("get").bytes().await.expect("bytes").to_vec()
    })
}

fn spooled_file(s: pxb_core::backup::spool::Spooled) -> std::fs::File {
    s.into_file()
}

fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let step = (seed.len() / 200).max(1);
    for cut in (0..seed.len()).step_by(step) {
        out.push(seed[..cut].to_vec());
    }
    let flips = (seed.len() * 8 / 300).max(1);
    for bit in (0..seed.len() * 8).step_by(flips) {
        let mut m = seed.to_vec();
        m[bit / 8] ^= 1 << (bit % 8);
        out.push(m);
    }
    let mut long = seed.to_vec();
    long.extend_from_slice(&[0xff; 64]);
    out.push(long);
    out.push(seed.iter().rev().copied().collect());
    out
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let write = std::env::var_os("PXB_WRITE_FUZZ_SEEDS").is_some();
    for (name, target) in TARGETS {
        let made = made_seeds(name);
        if write {
            std::fs::create_dir_all(seeds_dir(name)).expect("mkdir");
            for (i, s) in made.iter().enumerate() {
                std::fs::write(seeds_dir(name).join(format!("made-{i}")), s).expect("write seed");
            }
        }
        let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(seeds_dir(name))
            .unwrap_or_else(|e| {
                panic!(
                    "seed corpus of {name} missing at {}: {e}",
                    seeds_dir(name).display()
                )
            })
            .map(|e| std::fs::read(e.expect("entry").path()).expect("read seed"))
            .collect();
        assert!(!corpus.is_empty(), "the seed corpus of {name} is empty");
        corpus.extend(made);
        let mut runs = 0;
        for seed in &corpus {
            target(seed);
            for m in mutations(seed) {
                target(&m);
                runs += 1;
            }
        }
        assert!(runs > 100, "{name}: only {runs} mutated inputs");
    }
}

#[test]
fn valid_seeds_parse() {
    for s in made_seeds("chunk") {
        pxb_core::backup::chunk::decode("seed", &s, None).expect("valid chunk");
    }
    let index =
        pxb_core::backup::volume::parse_index("seed", &made_seeds("files_index")[0]).expect("valid index");
    assert_eq!(index.len(), 3);
    let m = pxb_core::backup::parse_manifest("seed", &made_seeds("manifest")[0]).expect("valid manifest");
    assert_eq!(m, manifest());
    pxb_core::backup::parse_config(&made_seeds("config")[0]).expect("valid config");
    let mut with_volumes = serde_json::to_value(manifest()).expect("json");
    with_volumes["volumes"] = serde_json::from_slice(&made_seeds("manifest_volumes")[0]).expect("volumes");
    let m = pxb_core::backup::parse_manifest("seed", &serde_json::to_vec(&with_volumes).expect("json"))
        .expect("valid manifest with volumes");
    assert_eq!(m.volumes.len(), 1);
    let (len, md) = pxb_core::store::decode_local_header(&made_seeds("local_header")[0]);
    assert!(len > 0 && md.contains_key("pxb_summary"));
}
