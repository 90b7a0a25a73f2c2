//! The object store conformance suite: `pub async fn` checks that every [`ObjectStore`] runs.
//!
//! Each check panics with a description of what broke, like an assertion in a test. Each uses its
//! own name prefix under `conformance/`, so the suite needs a store that is empty there. Call
//! [`run_all`] from a backend's tests; the individual checks are public for targeted runs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, ReadBuf};

use super::{Metadata, ObjectPath, ObjectStore, PutOptions, list_all};
use crate::Error;

/// The size of the object [`large_object`] writes in [`run_all`]: 100 MiB.
pub const LARGE_OBJECT_SIZE: u64 = 100 << 20;

fn p(s: &str) -> ObjectPath {
    ObjectPath::parse(s).expect("conformance names are valid")
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs every check, in order.
pub async fn run_all(store: &dyn ObjectStore) {
    put_get_head_roundtrip(store).await;
    overwrite_replaces_data_and_metadata(store).await;
    empty_object(store).await;
    awkward_names(store).await;
    list_paging_and_prefixes(store).await;
    list_returns_metadata(store).await;
    ranges(store).await;
    missing_objects(store).await;
    create_only_never_overwrites(store).await;
    concurrent_create_has_one_winner(store).await;
    invalid_metadata_is_rejected(store).await;
    large_object(store, LARGE_OBJECT_SIZE).await;
}

/// put, then get, head and list see the same bytes, size and metadata.
pub async fn put_get_head_roundtrip(store: &dyn ObjectStore) {
    let path = p("conformance/roundtrip/object");
    let data = Bytes::from_static(b"hello, pxb");
    let md = meta(&[("pxb_kind", "test"), ("n", "1")]);
    let put = store
        .put(
            &path,
            data.clone(),
            PutOptions::default().with_metadata(md.clone()),
        )
        .await
        .expect("put");
    assert_eq!(put.size, data.len() as u64, "{store}: put size");
    let got = store.get(&path).await.expect("get");
    assert_eq!(got.meta.size, data.len() as u64, "{store}: get size");
    assert_eq!(got.meta.metadata, md, "{store}: get metadata");
    assert_eq!(got.bytes().await.expect("get body"), data, "{store}: get body");
    let head = store.head(&path).await.expect("head");
    assert_eq!(head.path, path);
    assert_eq!(head.size, data.len() as u64, "{store}: head size");
    assert_eq!(head.metadata, md, "{store}: head metadata");
    if put.e_tag.is_some() {
        assert_eq!(head.e_tag, put.e_tag, "{store}: head e_tag equals put e_tag");
    }
}

/// An overwrite replaces bytes and metadata atomically and changes the e_tag.
pub async fn overwrite_replaces_data_and_metadata(store: &dyn ObjectStore) {
    let path = p("conformance/overwrite/object");
    let first = store
        .put(
            &path,
            Bytes::from_static(b"first version"),
            PutOptions::default().with_metadata(meta(&[("v", "1")])),
        )
        .await
        .expect("put 1");
    let second = store
        .put(
            &path,
            Bytes::from_static(b"2nd"),
            PutOptions::default().with_metadata(meta(&[("v", "2")])),
        )
        .await
        .expect("put 2");
    if first.e_tag.is_some() {
        assert_ne!(
            first.e_tag, second.e_tag,
            "{store}: e_tag must change on overwrite"
        );
    }
    let got = store.get(&path).await.expect("get");
    assert_eq!(
        got.meta.metadata,
        meta(&[("v", "2")]),
        "{store}: metadata replaced"
    );
    assert_eq!(
        got.bytes().await.expect("body"),
        Bytes::from_static(b"2nd"),
        "{store}: data replaced"
    );
}

/// Empty objects are objects: they are stored, read and listed with size 0.
pub async fn empty_object(store: &dyn ObjectStore) {
    let path = p("conformance/empty/object");
    store
        .put(&path, Bytes::new(), PutOptions::default())
        .await
        .expect("put empty");
    assert_eq!(
        store.head(&path).await.expect("head").size,
        0,
        "{store}: empty head"
    );
    assert!(
        store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
            .is_empty()
    );
    let streamed = store
        .put_stream(
            &p("conformance/empty/streamed"),
            Box::new(tokio::io::empty()),
            PutOptions::default(),
        )
        .await
        .expect("put_stream empty");
    assert_eq!(streamed.size, 0, "{store}: empty put_stream size");
    let page = store.list("conformance/empty/", None, 10).await.expect("list");
    let sizes: Vec<u64> = page.objects.iter().map(|o| o.size).collect();
    assert_eq!(sizes, vec![0, 0], "{store}: empty objects listed");
    assert!(
        matches!(store.get_range(&path, 0..1).await, Err(Error::Invalid { .. })),
        "{store}: any range of an empty object is past its end: {:?}",
        store.get_range(&path, 0..1).await.map_err(|e| e.to_string())
    );
}

/// Names with `/`, spaces, unicode and deep prefixes round-trip through put, get and list.
pub async fn awkward_names(store: &dyn ObjectStore) {
    let deep = (0..30).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
    let names = [
        "conformance/names/with space/and more spaces.txt".to_string(),
        "conformance/names/unicode/Grüße/日本語/emoji-🦀".to_string(),
        "conformance/names/punct/a+b=c&d%20e;f,g@h#i!j'k(l)m".to_string(),
        format!("conformance/names/deep/{deep}/leaf"),
    ];
    for name in &names {
        let path = p(name);
        store
            .put(
                &path,
                Bytes::from(name.clone().into_bytes()),
                PutOptions::default(),
            )
            .await
            .expect(name);
        let body = store.get(&path).await.expect(name).bytes().await.expect(name);
        assert_eq!(body, name.as_bytes(), "{store}: body of {name:?}");
    }
    let mut listed: Vec<String> = list_all(store, "conformance/names/")
        .map(|o| o.expect("list").path.to_string())
        .collect()
        .await;
    let mut expected = names.to_vec();
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected, "{store}: awkward names listed back exactly");
}

/// Listing is by string prefix, in ascending byte order, and pages cover everything exactly once.
pub async fn list_paging_and_prefixes(store: &dyn ObjectStore) {
    let mut expected = Vec::new();
    for i in 0..23 {
        let name = format!(
            "conformance/list/{}/item-{i:03}",
            if i % 2 == 0 { "even" } else { "odd" }
        );
        store
            .put(&p(&name), Bytes::from(vec![b'x'; i]), PutOptions::default())
            .await
            .expect("put");
        expected.push(name);
    }
    // A neighbour sharing the string prefix but not the "directory".
    store
        .put(
            &p("conformance/list-neighbour"),
            Bytes::new(),
            PutOptions::default(),
        )
        .await
        .expect("put");
    expected.sort();

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list("conformance/list/", token.as_deref(), 5)
            .await
            .expect("list page");
        pages += 1;
        assert!(page.objects.len() <= 5, "{store}: page larger than asked");
        seen.extend(page.objects.iter().map(|o| o.path.to_string()));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(pages < 50, "{store}: listing does not end");
    }
    assert!(pages >= 5, "{store}: 23 objects in pages of 5 took {pages} pages");
    assert_eq!(
        seen, expected,
        "{store}: paged listing is complete, ordered and without duplicates"
    );

    let odd = store
        .list("conformance/list/odd/item-01", None, 100)
        .await
        .expect("list");
    let names: Vec<_> = odd.objects.iter().map(|o| o.path.to_string()).collect();
    assert_eq!(
        names,
        [
            "conformance/list/odd/item-011",
            "conformance/list/odd/item-013",
            "conformance/list/odd/item-015",
            "conformance/list/odd/item-017",
            "conformance/list/odd/item-019"
        ],
        "{store}: a prefix that ends inside a name"
    );
    let all = store.list("conformance/list", None, 100).await.expect("list");
    assert_eq!(
        all.objects.len(),
        24,
        "{store}: the string prefix includes the neighbour"
    );
    assert!(all.next.is_none());
    let none = store
        .list("conformance/nothing-here/", None, 10)
        .await
        .expect("list");
    assert!(
        none.objects.is_empty() && none.next.is_none(),
        "{store}: empty listing"
    );
}

/// Listing returns each object's size and user metadata (summaries live there).
pub async fn list_returns_metadata(store: &dyn ObjectStore) {
    for i in 0..3 {
        let md = meta(&[("index", &i.to_string()), ("pxb_summary", "{\"a\":1}")]);
        store
            .put(
                &p(&format!("conformance/listmeta/{i}")),
                Bytes::from(vec![0u8; i * 10]),
                PutOptions::default().with_metadata(md),
            )
            .await
            .expect("put");
    }
    let page = store.list("conformance/listmeta/", None, 10).await.expect("list");
    assert_eq!(page.objects.len(), 3);
    for (i, o) in page.objects.iter().enumerate() {
        assert_eq!(o.size, (i * 10) as u64, "{store}: listed size");
        assert_eq!(
            o.metadata.get("index").map(String::as_str),
            Some(i.to_string().as_str()),
            "{store}: listed metadata"
        );
        assert_eq!(
            o.metadata.get("pxb_summary").map(String::as_str),
            Some("{\"a\":1}")
        );
    }
}

/// Ranges: inside, clamped at the end, and past the end.
pub async fn ranges(store: &dyn ObjectStore) {
    let path = p("conformance/range/object");
    let data: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    store
        .put(&path, data.clone(), PutOptions::default())
        .await
        .expect("put");
    assert_eq!(
        store.get_range(&path, 10..20).await.expect("range"),
        data.slice(10..20)
    );
    assert_eq!(
        store.get_range(&path, 0..1).await.expect("first byte"),
        data.slice(0..1)
    );
    assert_eq!(
        store.get_range(&path, 250..1000).await.expect("clamped"),
        data.slice(250..256),
        "{store}: end clamped"
    );
    let past = store.get_range(&path, 256..300).await;
    assert!(
        matches!(past, Err(Error::Invalid { .. })),
        "{store}: range past the end: {past:?}"
    );
    let past = store.get_range(&path, 1000..2000).await;
    assert!(
        matches!(past, Err(Error::Invalid { .. })),
        "{store}: range far past the end: {past:?}"
    );
}

/// Missing objects: NotFound for reads, success for delete (idempotent).
pub async fn missing_objects(store: &dyn ObjectStore) {
    let path = p("conformance/missing/never-written");
    assert!(
        matches!(store.get(&path).await, Err(Error::NotFound { .. })),
        "{store}: get missing"
    );
    assert!(
        matches!(store.head(&path).await, Err(Error::NotFound { .. })),
        "{store}: head missing"
    );
    assert!(
        matches!(store.get_range(&path, 0..1).await, Err(Error::NotFound { .. })),
        "{store}: range missing"
    );
    store
        .delete(&path)
        .await
        .expect("delete of a missing object succeeds");

    let path = p("conformance/missing/deleted");
    store
        .put(&path, Bytes::from_static(b"x"), PutOptions::default())
        .await
        .expect("put");
    store.delete(&path).await.expect("delete");
    assert!(
        matches!(store.head(&path).await, Err(Error::NotFound { .. })),
        "{store}: head after delete"
    );
    store.delete(&path).await.expect("second delete succeeds");
    let page = store.list("conformance/missing/", None, 10).await.expect("list");
    assert!(page.objects.is_empty(), "{store}: deleted object still listed");
}

/// Put-if-absent refuses to replace, for whole and streamed puts, and leaves the object intact.
pub async fn create_only_never_overwrites(store: &dyn ObjectStore) {
    let path = p("conformance/create/object");
    store
        .put(&path, Bytes::from_static(b"original"), PutOptions::create())
        .await
        .expect("first create");
    let again = store
        .put(&path, Bytes::from_static(b"other"), PutOptions::create())
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{store}: second create: {again:?}"
    );
    let streamed = store
        .put_stream(
            &path,
            Box::new(PatternReader::new(1, 3 << 20)),
            PutOptions::create(),
        )
        .await;
    assert!(
        matches!(streamed, Err(Error::AlreadyExists { .. })),
        "{store}: streamed create: {streamed:?}"
    );
    let body = store.get(&path).await.expect("get").bytes().await.expect("body");
    assert_eq!(
        body,
        Bytes::from_static(b"original"),
        "{store}: create-only left the object intact"
    );
}

/// Of many concurrent put-if-absent writers of one name, exactly one wins, and its data is stored.
pub async fn concurrent_create_has_one_winner(store: &dyn ObjectStore) {
    let path = p("conformance/race/object");
    let attempts = (0..16u8).map(|i| {
        let path = path.clone();
        async move {
            (
                i,
                store
                    .put(&path, Bytes::from(vec![i; 1024]), PutOptions::create())
                    .await,
            )
        }
    });
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{store}: exactly one winner, got {winners:?}");
    for (i, r) in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, Error::AlreadyExists { .. }),
                "{store}: loser {i} failed with {e}"
            );
        }
    }
    let body = store.get(&path).await.expect("get").bytes().await.expect("body");
    assert_eq!(
        body,
        Bytes::from(vec![winners[0]; 1024]),
        "{store}: the winner's data is stored"
    );
}

/// Metadata outside the portable rules is refused before anything is written.
pub async fn invalid_metadata_is_rejected(store: &dyn ObjectStore) {
    let path = p("conformance/badmeta/object");
    let r = store
        .put(
            &path,
            Bytes::from_static(b"x"),
            PutOptions::default().with_metadata(meta(&[("Bad-Key", "v")])),
        )
        .await;
    assert!(
        matches!(r, Err(Error::Invalid { .. })),
        "{store}: bad metadata key: {r:?}"
    );
    assert!(
        matches!(store.head(&path).await, Err(Error::NotFound { .. })),
        "{store}: nothing written"
    );
}

/// A large object streamed in parts round-trips exactly; a range in its middle reads back exactly.
pub async fn large_object(store: &dyn ObjectStore, size: u64) {
    let path = p("conformance/large/object");
    let put = store
        .put_stream(
            &path,
            Box::new(PatternReader::new(7, size)),
            PutOptions::default().with_metadata(meta(&[("size", &size.to_string())])),
        )
        .await
        .expect("put_stream large");
    assert_eq!(put.size, size, "{store}: large put size");
    let got = store.get(&path).await.expect("get large");
    assert_eq!(got.meta.size, size);
    let mut body = got.body;
    let mut offset = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("large body chunk");
        assert!(
            PatternReader::matches(7, offset, &chunk),
            "{store}: large object differs near byte {offset}"
        );
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, size, "{store}: large object length");
    let mid = size / 2;
    let r = store
        .get_range(&path, mid..mid + 4096)
        .await
        .expect("range of large");
    assert!(
        PatternReader::matches(7, mid, &r),
        "{store}: range of large object"
    );
    store.delete(&path).await.expect("delete large");
}

/// A reproducible, incompressible byte stream of a given length, for tests of large objects.
#[derive(Debug)]
pub struct PatternReader {
    seed: u64,
    offset: u64,
    len: u64,
}

impl PatternReader {
    /// `len` bytes from the pattern named by `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self { seed, offset: 0, len }
    }

    fn byte(seed: u64, offset: u64) -> u8 {
        let mut z = seed.wrapping_add((offset / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z.to_le_bytes()[(offset % 8) as usize]
    }

    /// The pattern's byte at `offset`.
    pub fn matches_byte(seed: u64, offset: u64) -> u8 {
        Self::byte(seed, offset)
    }

    /// Whether `data` equals the pattern `seed` from `offset` on.
    pub fn matches(seed: u64, offset: u64, data: &[u8]) -> bool {
        data.iter()
            .enumerate()
            .all(|(i, b)| *b == Self::byte(seed, offset + i as u64))
    }
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.len - self.offset).min(buf.remaining() as u64) as usize;
        let start = self.offset;
        let seed = self.seed;
        let out = buf.initialize_unfilled_to(n);
        for (i, b) in out.iter_mut().enumerate() {
            *b = Self::byte(seed, start + i as u64);
        }
        buf.advance(n);
        self.offset += n as u64;
        Poll::Ready(Ok(()))
    }
}
