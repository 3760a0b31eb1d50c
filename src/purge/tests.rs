use super::*;
use crate::Entry;
use bytes::Bytes;

fn entry(filled: u64, tags: &[&str]) -> Entry {
    entry_in(0, filled, tags)
}

fn entry_in(epoch: u64, filled: u64, tags: &[&str]) -> Entry {
    let tags = tags
        .iter()
        .map(|t| Tag::new(*t).unwrap().digest())
        .collect();
    Entry::new(
        http::StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        Bytes::from_static(b"x"),
        None,
    )
    .filled(PurgePosition::new(epoch, filled), tags)
}

/// What the log says of `entry` under `key`, as a position in its epoch.
fn purged(log: &PurgeLog, key: &Key, entry: &Entry) -> Option<u64> {
    log.purged(key, entry).map(|at| at.position)
}

fn tag(name: &str) -> Target {
    Target::tag(Tag::new(name).unwrap().digest())
}

#[test]
fn a_purge_after_the_fill_drops_the_entry_and_one_before_does_not() {
    let log = PurgeLog::new(100);
    let key = Key::from("k");
    let before = entry(0, &["a", "b"]);
    log.record(1, tag("b"));
    assert_eq!(purged(&log, &key, &before), Some(1));
    // Filled once the purge was known: not dropped by it.
    let after = entry(1, &["a", "b"]);
    assert_eq!(purged(&log, &key, &after), None);
    // Untagged, or another tag: untouched.
    assert_eq!(purged(&log, &key, &entry(0, &["c"])), None);
    assert_eq!(log.position().position, 1);
}

#[test]
fn keys_and_resources_are_purged_with_every_variant_of_a_resource() {
    let log = PurgeLog::new(100);
    let gzip = Key::from_parts(["/p/1"]).with_variant(["gzip"]);
    let plain = Key::from_parts(["/p/1"]).with_variant(["identity"]);
    let other = Key::from_parts(["/p/2"]);
    let e = entry(0, &[]);
    log.record(1, Target::key(&gzip));
    assert_eq!(purged(&log, &gzip, &e), Some(1));
    assert_eq!(purged(&log, &plain, &entry(0, &[])), None);
    log.record(2, Target::resource(&plain));
    assert_eq!(purged(&log, &plain, &entry(0, &[])), Some(2));
    assert_eq!(purged(&log, &gzip, &entry(1, &[])), Some(2));
    assert_eq!(purged(&log, &other, &entry(0, &[])), None);
}

#[test]
fn a_record_that_arrives_late_still_drops_entries_judged_meanwhile() {
    let log = PurgeLog::new(100);
    let key = Key::from("k");
    let e = entry(0, &["late"]);
    // Position 2 is heard before position 1.
    log.record(2, tag("other"));
    assert_eq!((log.position().position, log.latest()), (0, 2));
    assert_eq!(purged(&log, &key, &e), None);
    log.record(1, tag("late"));
    assert_eq!(
        log.position().position,
        2,
        "every purge up to 2 is known now"
    );
    assert_eq!(purged(&log, &key, &e), Some(1));
}

#[test]
fn a_judged_entry_costs_no_lookup_until_the_next_purge() {
    let log = PurgeLog::new(100);
    let key = Key::from("k");
    let e = entry(0, &["a"]);
    log.record(1, tag("b"));
    assert_eq!(purged(&log, &key, &e), None);
    assert_eq!(e.checked_at(), 1);
    log.record(2, tag("a"));
    assert_eq!(purged(&log, &key, &e), Some(2));
}

#[test]
fn forgotten_records_raise_the_floor() {
    let log = PurgeLog::new(2);
    let key = Key::from("k");
    log.record(1, tag("a"));
    log.record(2, tag("b"));
    log.record(3, tag("c"));
    // "a" was forgotten: anything filled before it counts as purged.
    assert_eq!(purged(&log, &key, &entry(0, &["z"])), Some(1));
    assert_eq!(purged(&log, &key, &entry(1, &["z"])), None);
    assert_eq!(purged(&log, &key, &entry(1, &["b"])), Some(2));
}

#[test]
fn a_flush_drops_everything_filled_before_it() {
    let log = PurgeLog::new(100);
    let key = Key::from("k");
    log.flush_before(10);
    assert_eq!(log.position().position, 10);
    assert_eq!(purged(&log, &key, &entry(9, &[])), Some(10));
    assert_eq!(purged(&log, &key, &entry(10, &[])), None);
}

#[test]
fn an_entry_of_an_earlier_epoch_is_purged_and_a_new_epoch_starts_the_log_afresh() {
    let log = PurgeLog::new(100);
    let key = Key::from("k");
    log.reset(7);
    log.record(1, tag("a"));
    log.record(2, tag("b"));
    assert_eq!(log.position(), PurgePosition::new(7, 2));
    // Filled before the epoch began (a lost order): purged.
    assert_eq!(
        log.purged(&key, &entry_in(6, 50, &[])),
        Some(PurgePosition::new(7, 0))
    );
    assert_eq!(purged(&log, &key, &entry_in(7, 1, &["b"])), Some(2));
    assert_eq!(purged(&log, &key, &entry_in(7, 2, &["b"])), None);
    // A later epoch than the log knows: nothing it knows applies.
    assert_eq!(purged(&log, &key, &entry_in(8, 0, &["a"])), None);

    log.reset(9);
    assert_eq!(log.position(), PurgePosition::new(9, 0));
    assert_eq!(log.latest(), 0);
    // Even an entry judged unpurged before is judged again.
    let judged = entry_in(7, 2, &["b"]);
    assert!(log.purged(&key, &judged).is_some());
    log.record(1, tag("c"));
    assert_eq!(
        purged(&log, &key, &entry_in(9, 0, &["b"])),
        None,
        "the old records are gone"
    );
    assert_eq!(purged(&log, &key, &entry_in(9, 0, &["c"])), Some(1));
}

#[test]
fn tags_are_checked_and_lists_parsed() {
    for bad in ["", "a b", "a,b", "caf\u{e9}", "tab\there"] {
        assert_eq!(
            Tag::new(bad).unwrap_err().kind(),
            PurgeErrorKind::BadTag,
            "{bad:?}"
        );
    }
    assert!(Tag::new("x".repeat(MAX_TAG_BYTES)).is_ok());
    assert!(Tag::new("x".repeat(MAX_TAG_BYTES + 1)).is_err());
    let listed: Vec<String> = Tag::parse_list(b"  product-1 shop,  cat:\xff 7 ")
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["product-1", "shop", "7"]);
}

#[test]
fn targets_travel_as_17_bytes() {
    let t = tag("a");
    assert_eq!(Target::from_bytes(&t.to_bytes()), Some(t));
    assert_eq!(Target::from_bytes(b""), None);
    assert_eq!(Target::from_bytes(&[b'x'; 17]), None);
    assert_eq!(Target::from_bytes(&t.to_bytes()[..16]), None);
}

#[tokio::test]
async fn purges_of_one_target_asked_together_share_the_next_one_sent() {
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let merges = Merges::default();
    let sent = AtomicU64::new(0);
    let gate = tokio::sync::Semaphore::new(0);
    let purge = || async {
        let position = sent.fetch_add(1, Ordering::SeqCst) + 1;
        gate.acquire().await.unwrap().forget();
        Ok(Purged::new(position, true))
    };
    let calls: Vec<_> = (0..10)
        .map(|_| Box::pin(merges.purge((tag("t"), false), purge())))
        .collect();
    let mut calls = futures_util::future::join_all(calls);
    // The first is sent; the nine after it wait for it.
    assert!((&mut calls).now_or_never().is_none());
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    assert_eq!(merges.len(), 1);
    gate.add_permits(2);
    let positions: Vec<u64> = calls
        .await
        .into_iter()
        .map(|done| done.unwrap().position)
        .collect();
    // The nine share the one sent after the first ended.
    assert_eq!(positions, [1, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
    assert_eq!(sent.load(Ordering::SeqCst), 2);
    assert_eq!(merges.len(), 0, "the target is forgotten");

    // A call dropped while it waits leaves nothing behind either.
    let first = merges.purge((tag("u"), false), purge());
    let second = merges.purge((tag("u"), false), purge());
    let mut both = Box::pin(futures_util::future::join(first, second));
    assert!((&mut both).now_or_never().is_none());
    drop(both);
    assert_eq!(merges.len(), 0);
}
