use super::*;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};

fn entry(body: &'static [u8]) -> Entry {
    Entry::new(
        StatusCode::OK,
        Version::HTTP_11,
        HeaderMap::new(),
        Bytes::from_static(body),
        None,
    )
}

#[tokio::test]
async fn stores_and_finds_until_the_ttl_passes() {
    let b = MemoryBackend::new();
    let k = Key::from("a");
    b.store(&k, entry(b"x"), Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(b.lookup(&k).await.unwrap().unwrap().body(), "x");
    std::thread::sleep(Duration::from_millis(150));
    assert!(b.lookup(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn entry_count_is_bounded() {
    let b = MemoryBackend::builder()
        .max_entries(10)
        .max_bytes(1 << 20)
        .build();
    for i in 0..100 {
        let k = Key::from(format!("k{i}"));
        b.store(&k, entry(b"x"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert!(b.entry_count() <= 10, "held {}", b.entry_count());
}

#[tokio::test]
async fn bytes_are_bounded() {
    static BIG: [u8; 1000] = [7; 1000];
    let b = MemoryBackend::builder()
        .max_entries(1000)
        .max_bytes(10_000)
        .build();
    for i in 0..100 {
        let k = Key::from(format!("k{i}"));
        b.store(&k, entry(&BIG), Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert!(b.entry_count() <= 10, "held {}", b.entry_count());
}

#[tokio::test]
async fn zero_ttl_stores_nothing() {
    let b = MemoryBackend::new();
    let k = Key::from("a");
    b.store(&k, entry(b"x"), Duration::ZERO).await.unwrap();
    assert!(b.get_local(&k).is_none());
}

#[tokio::test]
async fn local_size_counts_what_is_held_as_it_comes_and_goes() {
    let b = MemoryBackend::builder()
        .max_entries(10)
        .max_bytes(1 << 20)
        .build();
    let size = |b: &MemoryBackend| {
        b.cache.run_pending_tasks();
        b.local_size().unwrap()
    };
    let (a, c) = (Key::from("a"), Key::from("c"));
    let ttl = Duration::from_secs(60);
    b.store(&a, entry(b"xyz"), ttl).await.unwrap();
    // Key, method and body: no floor weight, no headers.
    let one = (a.len() + 3) as u64;
    assert_eq!(size(&b), crate::LocalSize::new(1, one));
    // Replaced: counted once, at its new size.
    b.store(&a, entry(b"x"), ttl).await.unwrap();
    assert_eq!(size(&b), crate::LocalSize::new(1, one - 2));
    b.store(&c, entry(b"x"), ttl).await.unwrap();
    assert_eq!(size(&b).entries, 2);
    b.invalidate(&a);
    assert_eq!(size(&b), crate::LocalSize::new(1, one - 2));
    // Evicted past the bound: what goes is taken off.
    for i in 0..100 {
        let k = Key::from(format!("k{i}"));
        b.store(&k, entry(b"x"), ttl).await.unwrap();
    }
    assert_eq!(size(&b).entries, b.entry_count());
    assert!(size(&b).entries <= 10, "{:?}", size(&b));
    // Expired: taken off when the cache's timer wheel (about a second a
    // slot) lets it go.
    let b = MemoryBackend::new();
    b.store(&a, entry(b"x"), Duration::from_millis(20))
        .await
        .unwrap();
    for _ in 0..40 {
        if size(&b).entries == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(size(&b), crate::LocalSize::new(0, 0));
}
