//! The conformance suite of the location seam: what every [`LocationOpener`] does, checked the
//! same way for [`AzureFileOpener`](super::AzureFileOpener) and the [`MemoryLocations`](super::MemoryLocations)
//! twin. [`run_all`] runs every check; each is also a `pub async fn` of its own.
//!
//! Each check takes a spec the opener can open; it writes only objects (and prefixes) of fresh
//! names under it and deletes the objects again, so the checks can share one location.

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::FutureExt as _;
use pxb_core::{Error, ObjectPath, PutOptions};

use super::{LocationOpener, OpenedLocation};
use crate::crd::BackupLocationSpec;

/// Runs every check against `opener` with `spec`, a location it can open.
pub async fn run_all(opener: &dyn LocationOpener, spec: &BackupLocationSpec) {
    the_same_spec_opens_the_same_store(opener, spec).await;
    a_prefix_is_a_location_of_its_own(opener, spec).await;
    a_spec_it_cannot_open_is_an_error(opener, spec).await;
}

/// A fresh name for this run's objects.
fn fresh(what: &str) -> String {
    format!("pxb-conformance-{what}-{:016x}", rand::random::<u64>())
}

async fn open(opener: &dyn LocationOpener, spec: &BackupLocationSpec) -> OpenedLocation {
    opener
        .open(spec)
        .await
        .unwrap_or_else(|e| panic!("conformance: {spec:?} does not open: {e}"))
}

fn path(s: &str) -> ObjectPath {
    ObjectPath::parse(s).expect("a valid object path")
}

/// Opening a spec twice gives the same store: what is written through one is read, listed and
/// deleted through the other. The location names itself for messages.
pub async fn the_same_spec_opens_the_same_store(opener: &dyn LocationOpener, spec: &BackupLocationSpec) {
    let first = open(opener, spec).await;
    assert!(
        !first.display.trim().is_empty(),
        "conformance: the opened location has no name for messages"
    );
    let dir = fresh("same");
    let object = path(&format!("{dir}/object"));
    first
        .store
        .put(&object, Bytes::from_static(b"conformance"), PutOptions::default())
        .await
        .expect("conformance: put through the first opening");
    let second = open(opener, spec).await;
    let got = second
        .store
        .get(&object)
        .await
        .expect("conformance: the object written through the first opening is not in the second")
        .bytes()
        .await
        .expect("conformance: read");
    assert_eq!(
        got.as_ref(),
        b"conformance",
        "conformance: another object's bytes"
    );
    let page = second
        .store
        .list(&format!("{dir}/"), None, 100)
        .await
        .expect("conformance: list");
    assert_eq!(
        page.objects.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        [object.as_str()],
        "conformance: the second opening lists something else"
    );
    second
        .store
        .delete(&object)
        .await
        .expect("conformance: delete through the second opening");
    match first.store.head(&object).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("conformance: deleted through one opening, the other still sees it: {other:?}"),
    }
}

/// Two prefixes in one container are two locations: an object written under one is not under
/// the other, and is found again by opening the same prefix.
pub async fn a_prefix_is_a_location_of_its_own(opener: &dyn LocationOpener, spec: &BackupLocationSpec) {
    let under = |name: String| BackupLocationSpec {
        prefix: Some(match spec.prefix.as_deref().map(|p| p.trim_matches('/')) {
            Some(p) if !p.is_empty() => format!("{p}/{name}"),
            _ => name,
        }),
        ..spec.clone()
    };
    let (a, b) = (under(fresh("a")), under(fresh("b")));
    let object = path("object");
    open(opener, &a)
        .await
        .store
        .put(&object, Bytes::from_static(b"in a"), PutOptions::default())
        .await
        .expect("conformance: put under a prefix");
    match open(opener, &b).await.store.head(&object).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("conformance: an object under one prefix is found under another: {other:?}"),
    }
    let again = open(opener, &a).await;
    again
        .store
        .head(&object)
        .await
        .expect("conformance: the object is not found under its prefix again");
    again.store.delete(&object).await.expect("conformance: delete");
}

/// A spec the opener cannot open (an empty container, an unknown provider) is an error with a
/// reason, never a panic or a store.
pub async fn a_spec_it_cannot_open_is_an_error(opener: &dyn LocationOpener, spec: &BackupLocationSpec) {
    let cases = [
        BackupLocationSpec {
            container: String::new(),
            ..spec.clone()
        },
        BackupLocationSpec {
            container: " \t".into(),
            ..spec.clone()
        },
        BackupLocationSpec {
            provider: "no-such-provider".into(),
            ..spec.clone()
        },
    ];
    for bad in cases {
        match AssertUnwindSafe(opener.open(&bad)).catch_unwind().await {
            Err(_) => panic!("conformance: opening {bad:?} panicked"),
            Ok(Ok(opened)) => panic!("conformance: {bad:?} opened as {}", opened.display),
            Ok(Err(reason)) => assert!(
                !reason.trim().is_empty(),
                "conformance: {bad:?} is refused without a reason"
            ),
        }
    }
}
