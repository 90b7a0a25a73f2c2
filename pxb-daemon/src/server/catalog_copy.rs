//! Copying a catalog from one store to another (`pxb-server catalog migrate`), e.g. from the
//! SQLite file to PostgreSQL, with a verification of every record afterwards.
//!
//! The copy is idempotent: records the destination already holds as the source holds them are
//! passed over, so a copy cut off halfway is finished by running it again. A destination record
//! that differs from the source's is never overwritten: the copy stops and says which. The
//! server must not write to the source meanwhile (stop it first); revisions start again at 1 in
//! the destination, which only the running server's compare-and-set uses.

use std::collections::BTreeMap;

use pxb_core::catalog::{CatalogStore, Entry, Kind, MAX_PAGE, Put, Query};
use pxb_core::{Error, Result};

/// What a copy did, per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Records written to the destination.
    pub copied: BTreeMap<Kind, u64>,
    /// Records the destination already held, equal.
    pub present: BTreeMap<Kind, u64>,
    /// Records compared in the verification (every record of the source).
    pub verified: u64,
}

/// Progress of a copy: the kind, records done of it, and its total.
pub type Progress<'a> = &'a mut (dyn FnMut(Kind, u64, u64) + Send);

fn every(after: Option<String>) -> Query {
    Query {
        limit: MAX_PAGE,
        after,
        ..Query::default()
    }
}

/// Whether two records hold the same thing (their revisions aside).
fn same(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind && a.org == b.org && a.id == b.id && a.index == b.index && a.doc == b.doc
}

/// Copies every record of `from` into `to`, then verifies that `to` holds exactly what `from`
/// holds. Fails with [`Error::Precondition`] when `to` holds a record that differs from the
/// source's, or one the source does not have.
pub async fn copy(
    from: &dyn CatalogStore,
    to: &dyn CatalogStore,
    progress: Progress<'_>,
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    for kind in Kind::ALL {
        let total = from.count(kind, &Query::default()).await?;
        let mut done = 0;
        let mut after = None;
        loop {
            let page = from.list(kind, &every(after.take())).await?;
            let mut puts = Vec::new();
            for e in &page.items {
                match to.get(kind, &e.org, &e.id).await {
                    Ok(have) if same(&have, e) => *report.present.entry(kind).or_default() += 1,
                    Ok(_) => {
                        return Err(Error::precondition(format!(
                            "the destination already holds {kind} {:?} of org {:?}, different from \
                             the source's; the copy does not overwrite (start from an empty \
                             destination)",
                            e.id, e.org
                        )));
                    }
                    Err(Error::NotFound { .. }) => puts.push(Put {
                        kind,
                        org: e.org.clone(),
                        id: e.id.clone(),
                        index: e.index.clone(),
                        doc: e.doc.clone(),
                        expect: Some(0),
                    }),
                    Err(e) => return Err(e),
                }
            }
            let n = puts.len() as u64;
            if n > 0 {
                to.put(puts).await?;
                *report.copied.entry(kind).or_default() += n;
            }
            done += page.items.len() as u64;
            progress(kind, done, total);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    report.verified = verify(from, to).await?;
    Ok(report)
}

/// Checks that `to` holds exactly the records of `from` (documents and indexes; revisions aside),
/// walking both in list order. Returns how many records were compared.
pub async fn verify(from: &dyn CatalogStore, to: &dyn CatalogStore) -> Result<u64> {
    let mut compared = 0;
    for kind in Kind::ALL {
        let (mut a_after, mut b_after) = (None, None);
        let (mut a_items, mut b_items) = (Vec::new().into_iter(), Vec::new().into_iter());
        let (mut a_done, mut b_done) = (false, false);
        loop {
            if a_items.len() == 0 && !a_done {
                let page = from.list(kind, &every(a_after.take())).await?;
                a_done = page.next.is_none();
                a_after = page.next;
                a_items = page.items.into_iter();
            }
            if b_items.len() == 0 && !b_done {
                let page = to.list(kind, &every(b_after.take())).await?;
                b_done = page.next.is_none();
                b_after = page.next;
                b_items = page.items.into_iter();
            }
            match (a_items.next(), b_items.next()) {
                (None, None) if a_done && b_done => break,
                (None, None) => continue,
                (Some(a), Some(b)) if same(&a, &b) => compared += 1,
                (Some(a), Some(b)) => {
                    return Err(Error::precondition(format!(
                        "verification: the source's {kind} {:?} of org {:?} is not in the \
                         destination as it is in the source (the destination has {:?} of org {:?} \
                         there)",
                        a.id, a.org, b.id, b.org
                    )));
                }
                (Some(a), None) => {
                    return Err(Error::precondition(format!(
                        "verification: the destination lacks {kind} {:?} of org {:?}",
                        a.id, a.org
                    )));
                }
                (None, Some(b)) => {
                    return Err(Error::precondition(format!(
                        "verification: the destination holds {kind} {:?} of org {:?}, which the \
                         source does not",
                        b.id, b.org
                    )));
                }
            }
        }
    }
    Ok(compared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pxb_core::catalog::{Index, MemoryCatalog};

    fn put(kind: Kind, org: &str, id: &str, doc: &str) -> Put {
        Put {
            kind,
            org: org.into(),
            id: id.into(),
            index: Index {
                sort: format!("s-{id}"),
                tags: vec!["ns=shop".into()],
                time_ms: Some(7),
                ..Index::default()
            },
            doc: doc.as_bytes().to_vec(),
            expect: None,
        }
    }

    async fn source() -> MemoryCatalog {
        let from = MemoryCatalog::new();
        from.put(vec![
            put(Kind::Org, "a", "a", "{}"),
            put(Kind::Org, "b", "b", "{}"),
        ])
        .await
        .expect("orgs");
        // More than a page, over two orgs; a document that does not decode is copied as it is.
        let backups: Vec<Put> = (0..2_500)
            .map(|i| {
                put(
                    Kind::Backup,
                    if i % 3 == 0 { "a" } else { "b" },
                    &format!("b{i:05}"),
                    "{\"x\":1}",
                )
            })
            .chain([put(Kind::Backup, "a", "broken", "{")])
            .collect();
        for chunk in backups.chunks(700) {
            from.put(chunk.to_vec()).await.expect("backups");
        }
        from
    }

    #[tokio::test]
    async fn a_copy_holds_every_record_and_a_rerun_finishes_a_cut_off_one() {
        let from = source().await;
        let to = MemoryCatalog::new();
        // A copy cut off halfway: some records are there already.
        to.put(vec![put(Kind::Backup, "a", "b00000", "{\"x\":1}")])
            .await
            .expect("partial");
        let mut seen = Vec::new();
        let report = copy(&from, &to, &mut |k, done, total| seen.push((k, done, total)))
            .await
            .expect("copy");
        assert_eq!(report.copied.get(&Kind::Backup), Some(&2_500));
        assert_eq!(report.present.get(&Kind::Backup), Some(&1));
        assert_eq!(report.copied.get(&Kind::Org), Some(&2));
        assert_eq!(report.verified, 2_503);
        assert!(seen.contains(&(Kind::Backup, 2_501, 2_501)), "{seen:?}");
        let broken = to.get(Kind::Backup, "a", "broken").await.expect("broken");
        assert_eq!(broken.doc, b"{");
        // Again: everything is there.
        let again = copy(&from, &to, &mut |_, _, _| {}).await.expect("again");
        assert!(again.copied.is_empty(), "{again:?}");
        assert_eq!(again.verified, 2_503);
    }

    #[tokio::test]
    async fn a_destination_with_other_records_is_not_overwritten() {
        let from = source().await;
        let to = MemoryCatalog::new();
        to.put(vec![put(Kind::Backup, "b", "b00001", "{\"other\":true}")])
            .await
            .expect("other");
        let err = copy(&from, &to, &mut |_, _, _| {}).await.expect_err("differs");
        assert!(matches!(err, Error::Precondition { .. }), "{err:?}");
        assert!(err.to_string().contains("b00001"), "{err}");
        let kept = to.get(Kind::Backup, "b", "b00001").await.expect("kept");
        assert_eq!(kept.doc, b"{\"other\":true}");

        // A record the source lacks fails the verification.
        let to = MemoryCatalog::new();
        to.put(vec![put(Kind::Schedule, "a", "extra", "{}")])
            .await
            .expect("extra");
        let err = copy(&from, &to, &mut |_, _, _| {}).await.expect_err("extra");
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
