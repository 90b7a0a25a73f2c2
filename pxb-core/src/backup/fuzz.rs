//! Entry points for fuzzing every parser of on-location data (used by `fuzz/` and by the corpus
//! test). Each must return without panicking on any input; errors are expected.

use super::chunk::{self, ChunkId};
use super::{BackupId, parse_config, parse_manifest, parse_summary, volume};
use crate::Metadata;

/// Chunk decoding, with and without an expected hash.
pub fn chunk(data: &[u8]) {
    let _ = chunk::decode("fuzz", data, None);
    let _ = chunk::decode("fuzz", data, Some(&ChunkId::of(data)));
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = chunk::decode_bytes("fuzz", bytes.clone(), None);
    let _ = chunk::decode_bytes("fuzz", bytes, Some(&ChunkId::of(data)));
}

/// File index (spool) parsing.
pub fn files_index(data: &[u8]) {
    let _ = volume::parse_index("fuzz", data);
}

/// Manifest parsing.
pub fn manifest(data: &[u8]) {
    let _ = parse_manifest("fuzz", data);
}

/// A manifest's volume references: the input (JSON) becomes the `volumes` of an otherwise valid
/// manifest, which is parsed; the references found are used as readers use them (the named
/// backups' manifest and file index paths).
pub fn manifest_volumes(data: &[u8]) {
    let Ok(volumes) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(id) = BackupId::parse("20261122T000000Z-0badc0de") else {
        return;
    };
    let Ok(mut doc) = serde_json::to_value(super::Manifest::placeholder(&id)) else {
        return;
    };
    doc["volumes"] = volumes;
    let Ok(bytes) = serde_json::to_vec(&doc) else {
        return;
    };
    if let Ok(m) = parse_manifest("fuzz", &bytes) {
        for v in &m.volumes {
            let _ = v.backup.manifest_path();
            let _ = v.backup.object_path(volume::FILES_OBJECT);
        }
    }
}

/// Location config parsing.
pub fn config(data: &[u8]) {
    let _ = parse_config(data);
}

/// Summary parsing from listing metadata.
pub fn summary(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, rest) = text
        .split_once('\n')
        .unwrap_or(("20260101T000000Z-00000000", text));
    let Ok(id) = BackupId::parse(id) else { return };
    let md: Metadata = [
        ("pxb_format".to_string(), "1".to_string()),
        ("pxb_summary".to_string(), rest.to_string()),
    ]
    .into();
    let _ = parse_summary(&id, &md);
}

/// The local store's object header.
pub fn local_header(data: &[u8]) {
    let (len, _) = crate::store::decode_local_header(data);
    assert!(len <= data.len() as u64, "header longer than the object");
}

/// Resource archive lines: the input is an archive's plain text, compressed here and restored, so
/// mutations reach the line framing and the object parser rather than the zstd decoder.
pub fn archive_lines(data: &[u8]) {
    if let Ok(stored) = zstd::bulk::compress(data, 1) {
        resources_archive(&stored);
    }
}

/// Resource archive parsing, through a restore into the in-memory cluster.
pub fn resources_archive(data: &[u8]) {
    use crate::resources::{InMemoryCluster, RestoreOptions, restore_resources};
    use crate::{InMemory, ObjectPath, ObjectStore, PutOptions};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    rt.block_on(async {
        let store = InMemory::new();
        let Ok(path) = ObjectPath::parse("fuzz/resources") else {
            return;
        };
        if store
            .put(&path, bytes::Bytes::copy_from_slice(data), PutOptions::default())
            .await
            .is_err()
        {
            return;
        }
        let _ = restore_resources(&store, &path, &InMemoryCluster::new(), &RestoreOptions::default()).await;
    });
}
