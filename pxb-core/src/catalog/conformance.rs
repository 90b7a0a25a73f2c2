//! The catalog conformance suite: `pub async fn` checks that every [`CatalogStore`] runs. Each
//! panics with a message naming what broke. They use org names starting with `conf-` and assume
//! the store holds no other records of those orgs.

use std::collections::BTreeSet;

use super::{CatalogStore, Cursor, Guard, Index, Kind, Put, Query, Record};
use crate::Error;

/// Runs every check.
pub async fn run_all(store: &dyn CatalogStore) {
    put_get_and_revisions(store).await;
    expectations_and_atomic_batches(store).await;
    delete_semantics(store).await;
    orgs_and_kinds_are_isolated(store).await;
    paging_is_ordered_and_complete(store).await;
    filters(store).await;
    raw_documents_are_kept_as_written(store).await;
    time_ranges_as_sort_ranges(store).await;
    tags(store).await;
    concurrent_writers_lose_no_update(store).await;
    guarded_writes_are_fenced(store).await;
}

/// The ids of the first page of `kind` that `query` lists (panics when the list fails).
pub async fn page_ids(store: &dyn CatalogStore, kind: Kind, query: &Query) -> Vec<String> {
    store
        .list(kind, query)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn put(kind: Kind, org: &str, id: &str, sort: &str, doc: &str) -> Put {
    Put {
        kind,
        org: org.into(),
        id: id.into(),
        index: Index {
            sort: sort.into(),
            ..Index::default()
        },
        doc: doc.as_bytes().to_vec(),
        expect: None,
    }
}

/// A record reads back as written; each write bumps the revision by one.
pub async fn put_get_and_revisions(store: &dyn CatalogStore) {
    let org = "conf-a";
    let revs = store
        .put(vec![put(Kind::Location, org, "l1", "l1", r#"{"v":1}"#)])
        .await
        .expect("put");
    assert_eq!(revs, vec![1], "first revision is 1");
    let e = store.get(Kind::Location, org, "l1").await.expect("get");
    assert_eq!(
        (e.kind, e.org.as_str(), e.id.as_str(), e.revision),
        (Kind::Location, org, "l1", 1)
    );
    assert_eq!(e.doc, br#"{"v":1}"#);
    assert_eq!(e.index.sort, "l1");
    let revs = store
        .put(vec![put(Kind::Location, org, "l1", "l1", r#"{"v":2}"#)])
        .await
        .expect("overwrite");
    assert_eq!(revs, vec![2]);
    let e = store.get(Kind::Location, org, "l1").await.expect("get");
    assert_eq!((e.revision, e.doc.as_slice()), (2, br#"{"v":2}"#.as_slice()));
    let missing = store.get(Kind::Location, org, "nope").await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "missing record: {missing:?}"
    );
}

/// `expect` guards writes; a batch with one failed expectation writes nothing.
pub async fn expectations_and_atomic_batches(store: &dyn CatalogStore) {
    let org = "conf-b";
    let mut create = put(Kind::Cluster, org, "c1", "c1", "{}");
    create.expect = Some(0);
    assert_eq!(store.put(vec![create.clone()]).await.expect("create"), vec![1]);
    let again = store.put(vec![create]).await;
    assert!(
        matches!(again, Err(Error::Precondition { .. })),
        "create twice: {again:?}"
    );

    let mut stale = put(Kind::Cluster, org, "c1", "c1", r#"{"stale":true}"#);
    stale.expect = Some(7);
    assert!(matches!(
        store.put(vec![stale]).await,
        Err(Error::Precondition { .. })
    ));
    let mut fresh = put(Kind::Cluster, org, "c1", "c1", r#"{"fresh":true}"#);
    fresh.expect = Some(1);
    assert_eq!(store.put(vec![fresh]).await.expect("update at rev 1"), vec![2]);

    let ok = put(Kind::Cluster, org, "c2", "c2", "{}");
    let mut bad = put(Kind::Cluster, org, "c1", "c1", "{}");
    bad.expect = Some(1);
    let batch = store.put(vec![ok, bad]).await;
    assert!(
        matches!(batch, Err(Error::Precondition { .. })),
        "batch: {batch:?}"
    );
    let c2 = store.get(Kind::Cluster, org, "c2").await;
    assert!(
        matches!(c2, Err(Error::NotFound { .. })),
        "a failed batch wrote a record: {c2:?}"
    );

    let two = vec![
        put(Kind::Cluster, org, "c3", "c3", "{}"),
        put(Kind::Cluster, org, "c4", "c4", "{}"),
    ];
    assert_eq!(store.put(two).await.expect("batch"), vec![1, 1]);
    assert_eq!(store.put(vec![]).await.expect("empty batch"), Vec::<u64>::new());
}

/// Writers racing on one record with read-modify-write and `expect` (as replicas sharing a
/// store do) lose no update: every write that succeeded is counted in the final document, and
/// creating one record from many writers at once succeeds exactly once.
pub async fn concurrent_writers_lose_no_update(store: &dyn CatalogStore) {
    let org = "conf-race";
    let writers = 8;
    let rounds = 10;
    let mut create = put(Kind::Schedule, org, "counter", "counter", "0");
    create.expect = Some(0);
    let created = futures::future::join_all((0..writers).map(|_| store.put(vec![create.clone()]))).await;
    let won = created.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "creating at once: {created:?}");
    for r in &created {
        assert!(
            matches!(r, Ok(_) | Err(Error::Precondition { .. })),
            "a losing create is a precondition failure: {r:?}"
        );
    }
    let increment = || async {
        let mut done = 0u64;
        let mut tries = 0;
        while done < rounds {
            tries += 1;
            assert!(tries < 10_000, "no progress");
            let e = store.get(Kind::Schedule, org, "counter").await.expect("get");
            let n: u64 = std::str::from_utf8(&e.doc)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("counter document");
            let mut p = put(Kind::Schedule, org, "counter", "counter", &(n + 1).to_string());
            p.expect = Some(e.revision);
            match store.put(vec![p]).await {
                Ok(_) => done += 1,
                Err(Error::Precondition { .. }) => {}
                Err(e) => panic!("racing write: {e}"),
            }
        }
    };
    futures::future::join_all((0..writers).map(|_| increment())).await;
    let e = store.get(Kind::Schedule, org, "counter").await.expect("get");
    let total = writers * rounds;
    assert_eq!(e.doc, total.to_string().into_bytes(), "updates were lost");
    assert_eq!(e.revision, 1 + total, "one revision per successful write");
}

/// Writes guarded by a record land only while it is at the guard's revision; the guard record
/// is not written; once it moves (another holder), guarded puts and deletes change nothing.
pub async fn guarded_writes_are_fenced(store: &dyn CatalogStore) {
    let org = "conf-guard";
    let rev = store
        .put(vec![put(Kind::Lease, org, "lease", "lease", r#"{"holder":"a"}"#)])
        .await
        .expect("lease")[0];
    let guard = Guard {
        kind: Kind::Lease,
        org: org.into(),
        id: "lease".into(),
        revision: rev,
    };
    let revs = store
        .put_guarded(
            &guard,
            vec![
                put(Kind::Cluster, org, "a", "a", "{}"),
                put(Kind::Cluster, org, "c", "c", "{}"),
            ],
        )
        .await
        .expect("guarded put while held");
    assert_eq!(revs, vec![1, 1]);
    assert!(
        store
            .delete_guarded(&guard, Kind::Cluster, org, "a", None)
            .await
            .expect("guarded delete while held")
    );
    assert_eq!(
        store
            .get(Kind::Lease, org, "lease")
            .await
            .expect("lease")
            .revision,
        rev,
        "the guard is not written"
    );
    // Another holder takes the lease.
    store
        .put(vec![put(Kind::Lease, org, "lease", "lease", r#"{"holder":"b"}"#)])
        .await
        .expect("takeover");
    let fenced = store
        .put_guarded(&guard, vec![put(Kind::Cluster, org, "b", "b", "{}")])
        .await;
    assert!(
        matches!(fenced, Err(Error::Precondition { .. })),
        "a fenced put: {fenced:?}"
    );
    assert!(
        matches!(
            store.get(Kind::Cluster, org, "b").await,
            Err(Error::NotFound { .. })
        ),
        "a fenced put wrote"
    );
    let fenced = store.delete_guarded(&guard, Kind::Cluster, org, "c", None).await;
    assert!(
        matches!(fenced, Err(Error::Precondition { .. })),
        "a fenced delete: {fenced:?}"
    );
    store
        .get(Kind::Cluster, org, "c")
        .await
        .expect("a fenced delete deleted");
    let missing = Guard {
        id: "no-such-lease".into(),
        ..guard
    };
    assert!(matches!(
        store
            .put_guarded(&missing, vec![put(Kind::Cluster, org, "d", "d", "{}")])
            .await,
        Err(Error::Precondition { .. })
    ));
}

/// Deleting reports whether the record existed and honours `expect`.
pub async fn delete_semantics(store: &dyn CatalogStore) {
    let org = "conf-c";
    store
        .put(vec![put(Kind::Backup, org, "b1", "b1", "{}")])
        .await
        .expect("put");
    let stale = store.delete(Kind::Backup, org, "b1", Some(5)).await;
    assert!(
        matches!(stale, Err(Error::Precondition { .. })),
        "stale delete: {stale:?}"
    );
    assert!(
        store
            .delete(Kind::Backup, org, "b1", Some(1))
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete(Kind::Backup, org, "b1", None)
            .await
            .expect("delete again")
    );
    assert!(matches!(
        store.get(Kind::Backup, org, "b1").await,
        Err(Error::NotFound { .. })
    ));
    // A record created again after deletion starts over.
    let revs = store
        .put(vec![put(Kind::Backup, org, "b1", "b1", "{}")])
        .await
        .expect("recreate");
    assert_eq!(revs, vec![1]);
}

/// The same id in two orgs or two kinds is two records; lists of one org never show another's.
pub async fn orgs_and_kinds_are_isolated(store: &dyn CatalogStore) {
    store
        .put(vec![
            put(Kind::Schedule, "conf-d1", "x", "x", r#""d1""#),
            put(Kind::Schedule, "conf-d2", "x", "x", r#""d2""#),
            put(Kind::Restore, "conf-d1", "x", "x", r#""restore""#),
        ])
        .await
        .expect("put");
    let d1 = store.get(Kind::Schedule, "conf-d1", "x").await.expect("get d1");
    assert_eq!(d1.doc, br#""d1""#);
    let d2 = store.get(Kind::Schedule, "conf-d2", "x").await.expect("get d2");
    assert_eq!(d2.doc, br#""d2""#);
    let page = store
        .list(Kind::Schedule, &Query::org("conf-d1"))
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1, "org filter: {:?}", page.items);
    assert_eq!(page.items[0].org, "conf-d1");
    assert_eq!(
        store
            .count(Kind::Restore, &Query::org("conf-d2"))
            .await
            .expect("count"),
        0
    );
    store
        .delete(Kind::Schedule, "conf-d1", "x", None)
        .await
        .expect("delete");
    assert!(
        store.get(Kind::Schedule, "conf-d2", "x").await.is_ok(),
        "deleting in one org touched another"
    );
}

/// Pages follow `(org, sort, id)` order, cover every record once, and a foreign cursor is refused.
pub async fn paging_is_ordered_and_complete(store: &dyn CatalogStore) {
    let org = "conf-e";
    let mut puts = Vec::new();
    for i in 0..53u32 {
        // Sort keys collide in pairs so the id breaks ties.
        puts.push(put(
            Kind::Backup,
            org,
            &format!("id-{i:03}"),
            &format!("s{:03}", 60 - i / 2),
            "{}",
        ));
    }
    store.put(puts).await.expect("put");
    let mut q = Query::org(org);
    q.limit = 10;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list(Kind::Backup, &q).await.expect("list");
        assert!(page.items.len() <= 10, "page larger than the limit");
        seen.extend(page.items.iter().map(Cursor::after));
        pages += 1;
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 53, "every record once");
    assert!(pages >= 6, "53 records in pages of 10 take 6 pages, took {pages}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages are in (org, sort, id) order");
    assert_eq!(seen.iter().map(|c| &c.id).collect::<BTreeSet<_>>().len(), 53);
    assert_eq!(
        store.count(Kind::Backup, &Query::org(org)).await.expect("count"),
        53
    );

    let mut huge = Query::org(org);
    huge.limit = usize::MAX;
    let page = store
        .list(Kind::Backup, &huge)
        .await
        .expect("huge limit is clamped");
    assert_eq!(page.items.len(), 53);
    let mut zero = Query::org(org);
    zero.limit = 0;
    assert_eq!(
        store
            .list(Kind::Backup, &zero)
            .await
            .expect("zero limit")
            .items
            .len(),
        1
    );

    let mut bogus = Query::org(org);
    bogus.after = Some("not-a-cursor!".into());
    let r = store.list(Kind::Backup, &bogus).await;
    assert!(matches!(r, Err(Error::Invalid { .. })), "bogus cursor: {r:?}");
}

/// Cluster, location, status and time filters combine.
pub async fn filters(store: &dyn CatalogStore) {
    let org = "conf-f";
    let mut puts = Vec::new();
    for i in 0..20i64 {
        let mut p = put(Kind::Backup, org, &format!("b{i:02}"), &format!("{i:02}"), "{}");
        p.index.cluster = Some(format!("c{}", i % 2));
        p.index.location = Some(format!("l{}", i % 4));
        p.index.status = Some(if i % 5 == 0 { "Failed" } else { "Completed" }.into());
        p.index.time_ms = Some(1_000 * i);
        puts.push(p);
    }
    puts.push(put(Kind::Backup, org, "no-index", "zz", "{}"));
    store.put(puts).await.expect("put");
    let ids = |q: Query| async move { page_ids(store, Kind::Backup, &q).await };
    let mut q = Query::org(org);
    q.cluster = Some("c1".into());
    q.location = Some("l1".into());
    assert_eq!(ids(q).await, vec!["b01", "b05", "b09", "b13", "b17"]);
    let mut q = Query::org(org);
    q.status = Some("Failed".into());
    assert_eq!(ids(q).await, vec!["b00", "b05", "b10", "b15"]);
    let mut q = Query::org(org);
    q.time_from_ms = Some(5_000);
    q.time_to_ms = Some(8_000);
    assert_eq!(ids(q.clone()).await, vec!["b05", "b06", "b07"]);
    assert_eq!(store.count(Kind::Backup, &q).await.expect("count"), 3);
    let mut q = Query::org(org);
    q.cluster = Some("nowhere".into());
    assert!(ids(q).await.is_empty());
    let mut q = Query::org(org);
    q.sort_min = Some("03".into());
    q.sort_max = Some("05".into());
    assert_eq!(
        ids(q).await,
        vec!["b03", "b04", "b05"],
        "sort-key bounds are inclusive"
    );
}

/// A time range given as sort-key bounds (records listed newest first, [`Record::sort_range`])
/// selects exactly the records in the range, in order.
pub async fn time_ranges_as_sort_ranges(store: &dyn CatalogStore) {
    use super::records::BackupRecord;
    let org = "conf-h";
    let backups: Vec<BackupRecord> = (0..30i64)
        .map(|i| BackupRecord {
            org: org.into(),
            id: format!("t{i:02}"),
            cluster: "c".into(),
            location: "l".into(),
            phase: super::records::BackupPhase::Success,
            created_ms: 1_000 * i,
            ..BackupRecord::default()
        })
        .collect();
    let puts = backups
        .iter()
        .map(|b| super::Catalog::put_of(b, None))
        .collect::<crate::Result<Vec<_>>>()
        .expect("encode");
    store.put(puts).await.expect("put");
    for (from, to) in [
        (Some(5_000), Some(9_000)),
        (None, Some(2_000)),
        (Some(27_500), None),
        (Some(4_000), Some(4_000)),
    ] {
        let (sort_min, sort_max) = BackupRecord::sort_range(from, to);
        let q = Query {
            sort_min,
            sort_max,
            ..Query::org(org)
        };
        let got: Vec<String> = store
            .list(Kind::Backup, &q)
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|e| e.id)
            .collect();
        let want: Vec<String> = backups
            .iter()
            .rev()
            .filter(|b| from.is_none_or(|f| b.created_ms >= f) && to.is_none_or(|t| b.created_ms < t))
            .map(|b| b.id.clone())
            .collect();
        assert_eq!(got, want, "range {from:?}..{to:?}, newest first");
    }
}
/// The store keeps documents byte for byte, even ones that are not JSON: decoding is the typed
/// layer's job, so one damaged record cannot make a whole list unreadable at the store level.
pub async fn raw_documents_are_kept_as_written(store: &dyn CatalogStore) {
    let org = "conf-g";
    let mut p = put(Kind::Org, org, org, org, "");
    p.doc = b"{not json \xff\x00".to_vec();
    store.put(vec![p]).await.expect("put raw");
    let e = store.get(Kind::Org, org, org).await.expect("get");
    assert_eq!(e.doc, b"{not json \xff\x00");
    let all = store
        .list(
            Kind::Org,
            &Query {
                limit: 1000,
                ..Query::default()
            },
        )
        .await
        .expect("list orgs");
    assert!(all.items.iter().any(|e| e.org == org), "org listed across orgs");
    let decoded = super::Catalog::decode::<super::records::Org>(&e);
    assert!(
        matches!(decoded, Err(Error::Corrupt { .. })),
        "damaged doc decodes: {decoded:?}"
    );
}

/// Tags read back sorted and deduplicated; a list requiring tags returns exactly the records
/// carrying all of them, in order and paged, across orgs too; rewriting or deleting a record
/// updates what its tags select; a bad tag is refused and writes nothing.
pub async fn tags(store: &dyn CatalogStore) {
    let org = "conf-t";
    let tagged = |i: u32, tags: &[&str]| {
        let mut p = put(
            Kind::Backup,
            org,
            &format!("t{i:02}"),
            &format!("{:02}", 50 - i),
            "{}",
        );
        p.index.cluster = Some(format!("c{}", i % 2));
        p.index.tags = tags.iter().map(|t| t.to_string()).collect();
        p
    };
    let mut puts = Vec::new();
    for i in 0..30u32 {
        let mut tags = vec!["view=namespaces"];
        if i % 3 == 0 {
            tags = vec!["view=vms"];
        }
        if i % 2 == 0 {
            tags.push("ns=a");
        }
        if i % 5 == 0 {
            tags.extend(["ns=b", "ns=b"]);
        }
        puts.push(tagged(i, &tags));
    }
    // The same tags in another org and another kind must not leak in.
    let mut other = put(Kind::Backup, "conf-t2", "x", "00", "{}");
    other.index.tags = vec!["ns=a".into()];
    let mut restore = put(Kind::Restore, org, "r", "00", "{}");
    restore.index.tags = vec!["ns=a".into()];
    puts.extend([other, restore]);
    store.put(puts).await.expect("put");

    let got = store.get(Kind::Backup, org, "t00").await.expect("get");
    assert_eq!(
        got.index.tags,
        vec!["ns=a", "ns=b", "view=vms"],
        "tags sorted, deduplicated"
    );

    let all_pages = |q: Query| async move {
        let mut q = q;
        q.limit = 4;
        let mut ids = Vec::new();
        loop {
            let page = store.list(Kind::Backup, &q).await.expect("list");
            assert!(page.items.len() <= 4, "page larger than the limit");
            ids.extend(page.items.into_iter().map(|e| e.id));
            match page.next {
                Some(n) => q.after = Some(n),
                None => return ids,
            }
        }
    };
    // Newest first: sort key 50 - i, so higher i comes first.
    let want = |f: &dyn Fn(u32) -> bool| {
        (0..30u32)
            .rev()
            .filter(|i| f(*i))
            .map(|i| format!("t{i:02}"))
            .collect::<Vec<_>>()
    };
    let q = |tags: &[&str]| Query {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Query::org(org)
    };
    assert_eq!(
        all_pages(q(&["view=vms"])).await,
        want(&|i| i % 3 == 0),
        "one tag"
    );
    assert_eq!(
        all_pages(q(&["ns=a", "view=namespaces"])).await,
        want(&|i| i % 2 == 0 && i % 3 != 0),
        "two tags"
    );
    let mut with_cluster = q(&["ns=b"]);
    with_cluster.cluster = Some("c1".into());
    assert_eq!(
        all_pages(with_cluster.clone()).await,
        want(&|i| i % 5 == 0 && i % 2 == 1),
        "a tag and a column"
    );
    assert_eq!(store.count(Kind::Backup, &with_cluster).await.expect("count"), 3);
    assert!(
        all_pages(q(&["ns=nowhere"])).await.is_empty(),
        "a tag nothing has"
    );
    assert_eq!(
        store
            .count(Kind::Backup, &q(&["ns=a", "ns=b"]))
            .await
            .expect("count"),
        3,
        "both namespaces: 0, 10, 20"
    );
    let everywhere = Query {
        tags: vec!["ns=a".into()],
        limit: super::MAX_PAGE,
        ..Query::default()
    };
    let orgs: BTreeSet<String> = store
        .list(Kind::Backup, &everywhere)
        .await
        .expect("list every org")
        .items
        .into_iter()
        .filter(|e| e.org.starts_with("conf-t"))
        .map(|e| e.org)
        .collect();
    assert_eq!(orgs.into_iter().collect::<Vec<_>>(), vec!["conf-t", "conf-t2"]);

    // Rewriting a record moves it between tags; deleting it drops it.
    store
        .put(vec![tagged(0, &["view=namespaces"])])
        .await
        .expect("rewrite");
    assert!(!all_pages(q(&["view=vms"])).await.contains(&"t00".to_string()));
    assert!(
        all_pages(q(&["view=namespaces"]))
            .await
            .contains(&"t00".to_string())
    );
    assert_eq!(
        store.get(Kind::Backup, org, "t00").await.expect("get").index.tags,
        vec!["view=namespaces"]
    );
    assert!(
        store
            .delete(Kind::Backup, org, "t03", None)
            .await
            .expect("delete")
    );
    assert!(!all_pages(q(&["view=vms"])).await.contains(&"t03".to_string()));

    // A tag and a status together; a change of the status alone moves a record between
    // statuses; a deleted one is gone from both.
    let org2 = "conf-ts";
    let rec = |i: u32, view: &str, status: &str| {
        let mut p = put(Kind::Backup, org2, &format!("s{i:02}"), &format!("{i:02}"), "{}");
        p.index.tags = vec![view.to_string()];
        p.index.status = Some(status.into());
        p
    };
    let mut puts = Vec::new();
    for i in 0..12u32 {
        let view = if i % 2 == 0 { "view=vms" } else { "view=namespaces" };
        puts.push(rec(i, view, if i % 3 == 0 { "Failed" } else { "Success" }));
    }
    store.put(puts).await.expect("put");
    let sq = |tag: &str, status: &str| Query {
        tags: vec![tag.into()],
        status: Some(status.into()),
        ..Query::org(org2)
    };
    assert_eq!(
        page_ids(store, Kind::Backup, &sq("view=vms", "Failed")).await,
        vec!["s00", "s06"],
        "a tag and a status"
    );
    assert_eq!(
        store
            .count(Kind::Backup, &sq("view=vms", "Failed"))
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        page_ids(store, Kind::Backup, &sq("view=vms", "Success")).await,
        vec!["s02", "s04", "s08", "s10"]
    );
    assert!(
        page_ids(store, Kind::Backup, &sq("view=vms", "Deleting"))
            .await
            .is_empty(),
        "a status nothing has"
    );
    store
        .put(vec![rec(6, "view=vms", "Success")])
        .await
        .expect("a new status");
    assert_eq!(
        page_ids(store, Kind::Backup, &sq("view=vms", "Failed")).await,
        vec!["s00"],
        "the status changed, the tags did not"
    );
    assert_eq!(
        page_ids(store, Kind::Backup, &sq("view=vms", "Success")).await,
        vec!["s02", "s04", "s06", "s08", "s10"]
    );
    assert!(
        store
            .delete(Kind::Backup, org2, "s00", None)
            .await
            .expect("delete")
    );
    assert!(
        page_ids(store, Kind::Backup, &sq("view=vms", "Failed"))
            .await
            .is_empty()
    );

    // A bad tag is refused, and the batch it came in writes nothing.
    for bad in ["", "a\nb", &"x".repeat(super::MAX_TAG_LEN + 1)] {
        let r = store.put(vec![tagged(40, &["ns=ok"]), tagged(41, &[bad])]).await;
        assert!(matches!(r, Err(Error::Invalid { .. })), "bad tag {bad:?}: {r:?}");
        assert!(
            matches!(
                store.get(Kind::Backup, org, "t40").await,
                Err(Error::NotFound { .. })
            ),
            "a refused batch wrote nothing"
        );
    }
}
