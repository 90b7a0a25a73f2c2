//! `pxb volume`, `pxb backup` and `pxb location sync|verify|gc|upgrade` as a user runs them, on a local
//! location (the same engine runs on Azure Blob in the engine tests).

use std::path::Path;
use std::process::{Command, Output};

fn pxb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pxb"))
        .args(args)
        .env_remove("PXB_LOCATION")
        .output()
        .expect("run pxb")
}

fn ok(args: &[&str]) -> String {
    let out = pxb(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(&a)).expect("one JSON document")
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}

#[test]
fn backup_restore_list_verify_delete_gc() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    for i in 0..30 {
        write(
            &src,
            &format!("docs/{i}.txt"),
            format!("document {i}\n").repeat(i + 1).as_bytes(),
        );
    }
    write(
        &src,
        "data/blob.bin",
        &(0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect::<Vec<_>>(),
    );
    let loc = format!("file://{}", dir.path().join("loc").display());
    let src_s = src.to_str().expect("utf8");

    let first = json(&["volume", "backup", "--location", &loc, "--path", src_s]);
    assert!(first["parent"].is_null(), "no parent the first time");
    write(&src, "docs/0.txt", b"changed");
    let second = json(&["volume", "backup", "--location", &loc, "--path", src_s]);
    assert_eq!(
        second["parent"], first["id"],
        "the newest backup of the same path is the parent"
    );
    assert_eq!(
        second["stats"]["bytes_read"], 7,
        "only the changed file was read: {second}"
    );
    let tagged = json(&[
        "volume",
        "backup",
        "--location",
        &loc,
        "--path",
        src_s,
        "--tag",
        "nightly",
    ]);
    assert!(tagged["parent"].is_null(), "a new tag starts a new chain");

    let list = json(&["backup", "list", "--location", &loc]);
    assert_eq!(list.as_array().map(Vec::len), Some(3));
    let text = ok(&["backup", "list", "--location", &loc]);
    assert!(text.contains("3 backup(s)") && text.contains("nightly"), "{text}");

    let out = dir.path().join("out");
    let restored = json(&[
        "volume",
        "restore",
        "--location",
        &loc,
        "--backup",
        "latest",
        "--tag",
        "nightly",
        "--target",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(restored["backup"], tagged["id"]);
    assert_eq!(std::fs::read(out.join("docs/0.txt")).expect("read"), b"changed");
    assert_eq!(
        std::fs::read(out.join("data/blob.bin")).expect("read"),
        std::fs::read(src.join("data/blob.bin")).expect("read")
    );

    let v = json(&["location", "verify", "--location", &loc, "--deep"]);
    assert!(
        v.as_array().expect("reports").iter().all(|r| r["status"] == "ok"),
        "{v}"
    );
    let synced = json(&["location", "sync", "--location", &loc]);
    assert_eq!(synced["backups"].as_array().map(Vec::len), Some(3));

    let id = first["id"].as_str().expect("id");
    json(&["backup", "delete", "--location", &loc, id]);
    let again = pxb(&["backup", "delete", "--location", &loc, id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not found"),
        "deleting twice says why"
    );
    let gc = json(&["location", "gc", "--location", &loc, "--grace-secs", "0"]);
    assert_eq!(gc["backups"], 2, "{gc}");
    let v = json(&["location", "verify", "--location", &loc]);
    assert!(
        v.as_array().expect("reports").iter().all(|r| r["status"] == "ok"),
        "GC kept what live backups need: {v}"
    );
}

#[test]
fn verify_fails_on_damage_and_names_the_object() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    write(&src, "a.txt", b"some data that will be lost");
    let loc_dir = dir.path().join("loc");
    let loc = format!("file://{}", loc_dir.display());
    json(&[
        "volume",
        "backup",
        "--location",
        &loc,
        "--path",
        src.to_str().expect("utf8"),
    ]);
    let chunks = loc_dir.join("pxb/chunks");
    let sub = std::fs::read_dir(&chunks)
        .expect("chunks")
        .next()
        .expect("a chunk dir")
        .expect("entry")
        .path();
    let chunk = std::fs::read_dir(&sub)
        .expect("dir")
        .next()
        .expect("a chunk")
        .expect("entry")
        .path();
    std::fs::remove_file(&chunk).expect("delete a chunk");
    let out = pxb(&["location", "verify", "--location", &loc]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let name = chunk.file_name().expect("name").to_str().expect("utf8");
    assert!(text.contains("Missing") && text.contains(name), "{text}");
}

#[test]
fn clear_errors_for_bad_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let loc = format!("file://{}", dir.path().join("loc").display());
    let out = pxb(&[
        "volume",
        "restore",
        "--location",
        &loc,
        "--backup",
        "../../etc",
        "--target",
        "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a backup id"));
    let out = pxb(&[
        "volume",
        "backup",
        "--location",
        &loc,
        "--path",
        "/nonexistent/dir",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/nonexistent/dir"),
        "{doc}"
    );
    let out = pxb(&["backup", "list", "--location", &loc]);
    assert_eq!(out.status.code(), Some(0), "an empty location lists nothing");
    // A location written by a newer pxb is refused with the reason.
    std::fs::create_dir_all(dir.path().join("future/pxb")).expect("mkdir");
    std::fs::write(dir.path().join("future/pxb/config"), br#"{"format": 9}"#).expect("write");
    let src = dir.path().join("src");
    write(&src, "a", b"a");
    let future = format!("file://{}", dir.path().join("future").display());
    let out = pxb(&[
        "volume",
        "backup",
        "--location",
        &future,
        "--path",
        src.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("format 9; this pxb reads formats 1 to 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pxb volume restore` into a directory holding symlinks to elsewhere (at a file's path and at a
/// directory's path) replaces the links and writes nothing outside the target.
#[test]
fn restore_does_not_follow_symlinks_in_the_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    write(&src, "file.txt", b"restored");
    write(&src, "sub/inner.txt", b"restored inner");
    let outside = dir.path().join("outside");
    write(&outside, "victim", b"original");
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::os::unix::fs::symlink(outside.join("victim"), target.join("file.txt")).expect("symlink");
    std::os::unix::fs::symlink(&outside, target.join("sub")).expect("symlink");
    let loc = format!("file://{}", dir.path().join("loc").display());
    let src_s = src.to_str().expect("utf8");
    let b = json(&["volume", "backup", "--location", &loc, "--path", src_s]);
    let id = b["id"].as_str().expect("id");
    let target_s = target.to_str().expect("utf8");
    json(&[
        "volume",
        "restore",
        "--location",
        &loc,
        "--backup",
        id,
        "--target",
        target_s,
    ]);
    assert_eq!(std::fs::read(outside.join("victim")).expect("read"), b"original");
    assert!(!outside.join("inner.txt").exists(), "wrote through the link");
    assert_eq!(std::fs::read(target.join("file.txt")).expect("read"), b"restored");
    assert_eq!(
        std::fs::read(target.join("sub/inner.txt")).expect("read"),
        b"restored inner"
    );
}

/// `pxb volume backup` of `src` into `loc`, its JSON report.
fn backup(loc: &str, src: &Path) -> serde_json::Value {
    json(&[
        "volume",
        "backup",
        "--location",
        loc,
        "--path",
        src.to_str().expect("utf8"),
    ])
}

/// A location of format 1 (written here as an earlier pxb left it) is upgraded once; a second
/// upgrade changes nothing; backups before and after it are listed and restore.
#[test]
fn upgrade_moves_a_format_1_location_to_format_2_once() {
    use pxb_core::store::{ObjectStore, PutOptions};
    let dir = tempfile::tempdir().expect("tmp");
    let loc_dir = dir.path().join("loc");
    let loc = format!("file://{}", loc_dir.display());
    let store = pxb_core::LocalFileSystem::new(&loc_dir).expect("store");
    let config = pxb_core::backup::RepoConfig {
        format: 1,
        ..Default::default()
    };
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(store.put(
            &pxb_core::ObjectPath::parse("pxb/config").expect("path"),
            serde_json::to_vec(&config).expect("config").into(),
            PutOptions::create(),
        ))
        .expect("config of format 1");
    let src = dir.path().join("src");
    write(&src, "a.txt", b"before the upgrade");
    let first = backup(&loc, &src);

    let text = ok(&["location", "upgrade", "--location", &loc]);
    assert!(text.contains("from format 1 to format 2"), "{text}");
    let again = json(&["location", "upgrade", "--location", &loc]);
    assert_eq!(again, serde_json::json!({"from": 2, "to": 2}));
    let text = ok(&["location", "upgrade", "--location", &loc]);
    assert!(text.contains("format 2 already"), "{text}");

    write(&src, "a.txt", b"after the upgrade");
    let second = backup(&loc, &src);
    let synced = json(&["location", "sync", "--location", &loc]);
    // Ids order by their second, then by their random part: two backups of one second either way.
    let mut ids: Vec<String> = synced["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    let mut want = vec![
        first["id"].as_str().expect("id").to_owned(),
        second["id"].as_str().expect("id").to_owned(),
    ];
    want.sort();
    assert_eq!(ids, want, "{synced}");
    let out = dir.path().join("out");
    json(&[
        "volume",
        "restore",
        "--location",
        &loc,
        "--backup",
        first["id"].as_str().expect("id"),
        "--target",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(
        std::fs::read(out.join("a.txt")).expect("read"),
        b"before the upgrade"
    );

    let missing = format!("file://{}", dir.path().join("empty").display());
    let r = pxb(&["location", "upgrade", "--location", &missing]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no pxb backups"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
