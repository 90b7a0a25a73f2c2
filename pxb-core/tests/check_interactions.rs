//! [`check_location`] as a sequence of calls on the store: which calls it makes, in which order,
//! and which it must not make once a step has failed. The in-memory twin answers "does a working
//! store pass?"; these tests answer "what does the check do to a store that fails at step N?",
//! which only a mock that counts and orders the calls can.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use mockall::{Sequence, automock};
use pxb_core::check::PROBE_PREFIX;
use pxb_core::store::PutReader;
use pxb_core::{
    CheckOptions, CheckReport, CheckStep, Error, GetResult, ListPage, ObjectMeta, ObjectPath, ObjectStore,
    PutMode, PutOptions, PutResult, Result, StepOutcome, check_location,
};

/// The store calls the check may make, with owned arguments. `ObjectStore` itself is not mocked
/// directly: mockall cannot mock an `async_trait` method taking `Option<&str>` (`list`'s
/// continuation token; asomers/mockall#571), so [`Scripted`] forwards each call to this mock.
#[automock]
trait Calls: Send + Sync {
    fn list(&self, prefix: String, token: Option<String>, max_results: usize) -> Result<ListPage>;
    fn put(&self, path: ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult>;
    fn put_stream(&self, path: ObjectPath, opts: PutOptions) -> Result<PutResult>;
    fn get(&self, path: ObjectPath) -> Result<GetResult>;
    fn get_range(&self, path: ObjectPath, range: Range<u64>) -> Result<Bytes>;
    fn head(&self, path: ObjectPath) -> Result<ObjectMeta>;
    fn delete(&self, path: ObjectPath) -> Result<()>;
}

/// An [`ObjectStore`] whose every call is an expectation of [`MockCalls`]: a call nobody expected
/// fails the test.
struct Scripted(MockCalls);

impl fmt::Debug for Scripted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scripted")
    }
}

impl fmt::Display for Scripted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock://bucket")
    }
}

#[async_trait]
impl ObjectStore for Scripted {
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.0.put(path.clone(), data, opts)
    }

    async fn put_stream(&self, path: &ObjectPath, _reader: PutReader, opts: PutOptions) -> Result<PutResult> {
        self.0.put_stream(path.clone(), opts)
    }

    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        self.0.get(path.clone())
    }

    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes> {
        self.0.get_range(path.clone(), range)
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        self.0.head(path.clone())
    }

    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        self.0
            .list(prefix.to_owned(), token.map(str::to_owned), max_results)
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.0.delete(path.clone())
    }
}

/// The outcomes of the report's steps, by step.
fn outcomes(report: &CheckReport) -> Vec<(CheckStep, StepOutcome)> {
    report.steps.iter().map(|s| (s.step, s.outcome)).collect()
}

/// A store whose listing works (one call, for the root, at most 10 names).
fn listing_store(seq: &mut Sequence) -> MockCalls {
    let mut store = MockCalls::new();
    store
        .expect_list()
        .withf(|prefix, token, max| prefix.is_empty() && token.is_none() && *max == 10)
        .times(1)
        .in_sequence(seq)
        .returning(|_, _, _| Ok(ListPage::default()));
    store
}

#[tokio::test]
async fn a_failed_write_skips_the_read_and_the_delete() {
    let mut seq = Sequence::new();
    let mut store = listing_store(&mut seq);
    store
        .expect_put()
        .withf(|path, _, opts| path.as_str().starts_with(PROBE_PREFIX) && opts.mode == PutMode::Create)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|path, _, _| {
            Err(Error::permission_denied(format!(
                "writing {path}: the identity lacks Storage Blob Data Contributor"
            )))
        });
    // Nothing was written, so there is nothing to read back or clean up.
    store.expect_get().never();
    store.expect_delete().never();
    store.expect_head().never();

    let report = check_location("mock://bucket", &Scripted(store), None, &CheckOptions::default()).await;

    assert!(!report.passed);
    assert_eq!(
        outcomes(&report),
        [
            (CheckStep::Configure, StepOutcome::Passed),
            (CheckStep::List, StepOutcome::Passed),
            (CheckStep::Write, StepOutcome::Failed),
            (CheckStep::Read, StepOutcome::Skipped),
            (CheckStep::Delete, StepOutcome::Skipped),
        ]
    );
    let failure = report.first_failure().expect("a failed step");
    assert_eq!(failure.step, CheckStep::Write);
    assert_eq!(failure.error_kind, Some("permission_denied"));
    assert!(
        failure.detail.contains("Storage Blob Data Contributor"),
        "the backend's explanation is kept: {}",
        failure.detail
    );
    assert!(
        report
            .to_string()
            .ends_with("location check FAILED at step \"write\""),
        "{report}"
    );
}

#[tokio::test]
async fn a_failed_read_still_deletes_the_probe_it_wrote() {
    let mut seq = Sequence::new();
    let mut store = listing_store(&mut seq);
    // The probe's name is random: remember what was written, to check what gets deleted.
    let written: Arc<Mutex<Option<ObjectPath>>> = Arc::default();
    let w = written.clone();
    store
        .expect_put()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |path, data, _| {
            *w.lock().expect("lock") = Some(path.clone());
            Ok(PutResult {
                size: data.len() as u64,
                e_tag: None,
            })
        });
    store
        .expect_get()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|path| {
            Err(Error::permission_denied(format!(
                "reading {path}: no read permission"
            )))
        });
    let is_probe = {
        let written = written.clone();
        move |path: &ObjectPath| written.lock().expect("lock").as_ref() == Some(path)
    };
    let is_probe_too = is_probe.clone();
    store
        .expect_delete()
        .withf(move |path| is_probe(path))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    store
        .expect_head()
        .withf(move |path| is_probe_too(path))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|path| Err(Error::not_found(format!("{path}"))));

    let report = check_location("mock://bucket", &Scripted(store), None, &CheckOptions::default()).await;

    assert_eq!(
        outcomes(&report),
        [
            (CheckStep::Configure, StepOutcome::Passed),
            (CheckStep::List, StepOutcome::Passed),
            (CheckStep::Write, StepOutcome::Passed),
            (CheckStep::Read, StepOutcome::Failed),
            (CheckStep::Delete, StepOutcome::Passed),
        ]
    );
    assert_eq!(report.first_failure().map(|s| s.step), Some(CheckStep::Read));
    assert!(written.lock().expect("lock").is_some());
}
