//! Entries: ages, the wire form, and what decoding refuses.

use super::*;
use bytes::{BufMut, BytesMut};
use http::header::CONTENT_TYPE;

fn sample() -> Entry {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
    headers.append("x-multi", "a".parse().unwrap());
    headers.append("x-multi", HeaderValue::from_bytes(b"\xffb").unwrap());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    Entry::new(
        StatusCode::NOT_FOUND,
        Version::HTTP_2,
        headers,
        Bytes::from_static(b"{\"id\":7}"),
        Some(trailers),
    )
}

#[test]
fn the_origins_age_is_read_as_rfc_9111_says() {
    let age = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::AGE, v.parse().unwrap());
        initial_age(&h).as_secs()
    };
    assert_eq!(age("5"), 5);
    assert_eq!(age("5, 7"), 5, "the first member of a list");
    assert_eq!(age("-3"), 0, "invalid: ignored");
    assert_eq!(age("abc"), 0);
    assert_eq!(age("99999999999999999999999"), 1 << 31, "overflow is 2^31");
    assert_eq!(age("9999999999"), 1 << 31);
    assert_eq!(initial_age(&HeaderMap::new()).as_secs(), 0);
}

#[test]
fn encode_then_decode_gives_the_same_entry() {
    let e = sample();
    let d = Entry::decode(e.encode()).unwrap();
    assert_eq!(d.status(), StatusCode::NOT_FOUND);
    assert_eq!(d.version(), Version::HTTP_2);
    assert_eq!(d.headers(), e.headers());
    assert_eq!(d.body(), e.body());
    assert_eq!(d.trailers(), e.trailers());
    let empty = Entry::new(
        StatusCode::OK,
        Version::HTTP_11,
        HeaderMap::new(),
        Bytes::new(),
        None,
    );
    let d = Entry::decode(empty.encode()).unwrap();
    assert!(d.body().is_empty() && d.trailers().is_none() && d.headers().is_empty());
}

#[test]
fn the_stored_time_survives_encoding_to_the_millisecond() {
    let never = Entry::decode(sample().encode()).unwrap();
    assert_eq!(never.stored_at(), None);
    let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let stored = sample().stored(at);
    let ms = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    assert_eq!(stored.stored_at(), Some(ms));
    assert_eq!(
        Entry::decode(stored.encode()).unwrap().stored_at(),
        Some(ms)
    );
}

#[test]
fn the_lifetime_survives_encoding_and_older_versions_are_read_without_one() {
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let life = Life {
        fresh: Duration::from_millis(2_500),
        stale: Duration::from_secs(10),
        if_error: Duration::from_secs(30),
        took: Duration::from_millis(120),
        retain: Duration::from_secs(600),
    };
    let kept = sample().kept(at, None, life);
    let v3 = kept.encode();
    let decoded = Entry::decode(v3.clone()).unwrap();
    assert_eq!(decoded.fresh_for(at), Some(Duration::from_millis(2_500)));
    assert_eq!(
        decoded.fresh_for(at + Duration::from_secs(2)),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        decoded.fresh_for(at + Duration::from_secs(3)),
        Some(Duration::ZERO)
    );
    assert_eq!(decoded.encode(), v3, "encodes back to itself");
    assert_eq!(decoded.life(), Some(life));
    // Kept for revalidation only: no freshness, a retention.
    let revalidate_only = Life {
        fresh: Duration::ZERO,
        stale: Duration::ZERO,
        if_error: Duration::ZERO,
        took: Duration::from_millis(120),
        retain: Duration::from_secs(600),
    };
    let kept_only = Entry::decode(sample().kept(at, None, revalidate_only).encode()).unwrap();
    assert_eq!(kept_only.life(), Some(revalidate_only));
    // The stored time sits where the Redis scripts read it.
    assert_eq!(&v3[7..15], &1_700_000_000_000u64.to_be_bytes());
    // Version 2: the same without the lifetime.
    let mut v2 = BytesMut::new();
    v2.put_slice(MAGIC_V2);
    v2.put_slice(&v3[4..15]);
    // Past the lifetime and retention, the fill's position and epoch and
    // no tags (17 bytes).
    v2.put_slice(&v3[72..v3.len() - 4]);
    let crc = crc32fast::hash(&v2);
    v2.put_u32(crc);
    let old = Entry::decode(v2.freeze()).unwrap();
    assert_eq!(old.stored_at(), Some(at));
    assert_eq!(old.fresh_for(at), None);
    assert_eq!(old.body(), kept.body());
    // A lifetime without a stored time is no entry.
    let mut bad = BytesMut::from(&v3[..v3.len() - 4]);
    bad[7..15].copy_from_slice(&[0; 8]);
    let crc = crc32fast::hash(&bad);
    bad.put_u32(crc);
    assert!(Entry::decode(bad.freeze()).is_err());
}

#[test]
fn version_one_entries_are_read_as_never_stored() {
    // A version 1 entry is a current one without the stored time, the
    // lifetime, the retention and the fill.
    let v3 = sample().encode();
    let mut v1 = BytesMut::new();
    v1.put_slice(MAGIC_V1);
    v1.put_slice(&v3[4..7]);
    v1.put_slice(&v3[72..v3.len() - 4]);
    let crc = crc32fast::hash(&v1);
    v1.put_u32(crc);
    let d = Entry::decode(v1.freeze()).unwrap();
    assert_eq!(d.stored_at(), None);
    assert_eq!(d.status(), StatusCode::NOT_FOUND);
    assert_eq!(d.headers(), sample().headers());
    assert_eq!(d.trailers(), sample().trailers());
}

#[test]
fn age_counts_the_origins_age_and_the_time_stored() {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AGE, "10".parse().unwrap());
    let entry = Entry::new(
        StatusCode::OK,
        Version::HTTP_11,
        headers,
        Bytes::new(),
        None,
    );
    // Straight from the origin: its `Age` passes as it came.
    assert_eq!(entry.age(SystemTime::now()), None);
    assert_eq!(entry.to_response::<()>().headers()["age"], "10");

    let at = SystemTime::now() - Duration::from_secs(5);
    let stored = entry.stored(at);
    let age = stored.age(at + Duration::from_millis(5_900)).unwrap();
    assert_eq!(age.as_secs(), 15);
    // A clock that went backwards adds nothing.
    assert_eq!(
        stored.age(at - Duration::from_secs(60)),
        Some(Duration::from_secs(10))
    );
    let res = stored.to_response::<()>();
    let sent: u64 = res.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!((15..20).contains(&sent), "age {sent}");
    assert_eq!(res.headers().get_all("age").iter().count(), 1);

    let fresh = sample().stored(SystemTime::now());
    assert_eq!(fresh.to_response::<()>().headers()["age"], "0");
}

#[test]
fn age_values_are_whole_seconds_in_and_past_the_table() {
    for (secs, text) in [
        (0, "0"),
        (1, "1"),
        (599, "599"),
        (600, "600"),
        (86_400, "86400"),
    ] {
        let value = age_value(Duration::from_millis(secs * 1000 + 999));
        assert_eq!(value, text);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        assert!(
            Entry::decode(bytes.slice(..len)).is_err(),
            "length {len} decoded"
        );
    }
}

#[test]
fn every_flipped_bit_is_an_error() {
    let bytes = sample().encode();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.to_vec();
            damaged[i] ^= 1 << bit;
            assert!(
                Entry::decode(damaged.into()).is_err(),
                "byte {i} bit {bit} decoded"
            );
        }
    }
}

#[test]
fn foreign_values_are_errors() {
    for foreign in [
        &b""[..],
        b"hello",
        b"TCE\x03\x00\x00\x00\x00",
        b"{\"json\": true}",
    ] {
        assert!(Entry::decode(Bytes::from_static(foreign)).is_err());
    }
}

#[test]
fn a_valid_checksum_over_lying_lengths_is_still_an_error() {
    // Well-formed frame, nonsense inside: a header count of 2^32-1.
    let mut buf = BytesMut::new();
    buf.put_slice(MAGIC);
    buf.put_u16(200);
    buf.put_u8(2);
    buf.put_u64(0);
    buf.put_u64(0);
    buf.put_u64(0);
    buf.put_u64(0);
    buf.put_u64(0);
    buf.put_u32(u32::MAX);
    let crc = crc32fast::hash(&buf);
    buf.put_u32(crc);
    assert_eq!(
        Entry::decode(buf.freeze()).unwrap_err(),
        DecodeError("truncated")
    );
}

#[test]
fn responses_share_the_entry_body() {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
    let entry = Entry::new(
        StatusCode::OK,
        Version::HTTP_11,
        headers,
        Bytes::from_static(b"hello"),
        None,
    );
    let a = entry.to_response::<()>();
    let b = entry.to_response::<()>();
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(a.headers()[CONTENT_TYPE], "text/plain");
    assert_eq!(
        a.body().shared_bytes().unwrap().as_ptr(),
        entry.body().as_ptr()
    );
    assert_eq!(
        b.body().shared_bytes().unwrap().as_ptr(),
        entry.body().as_ptr()
    );
    assert_eq!(
        entry.weight(),
        5 + "content-type".len() + "text/plain".len()
    );
}

#[test]
fn the_ttl_left_is_rounded_down_and_negative_once_stale() {
    let life = Life {
        fresh: Duration::from_secs(2),
        stale: Duration::from_secs(10),
        if_error: Duration::ZERO,
        took: Duration::ZERO,
        retain: Duration::ZERO,
    };
    let ttl = |ago_ms: u64| {
        let at = SystemTime::now() - Duration::from_millis(ago_ms);
        sample().kept(at, None, life).ttl_secs()
    };
    assert_eq!(ttl(200), Some(1));
    assert_eq!(ttl(1500), Some(0));
    // Stale by a fraction of a second, or by 1.2 s: -1, -2.
    assert_eq!(ttl(2300), Some(-1));
    assert_eq!(ttl(3200), Some(-2));
    assert_eq!(sample().ttl_secs(), None);
}

#[test]
fn the_fill_and_its_tags_survive_encoding() {
    let tags = vec![[1u8; 16], [2u8; 16]];
    let entry = sample().filled(
        crate::PurgePosition::new(1_764_000_000_000, 42),
        tags.clone(),
    );
    let decoded = Entry::decode(entry.encode()).unwrap();
    assert_eq!(
        decoded.fill_position(),
        crate::PurgePosition::new(1_764_000_000_000, 42)
    );
    assert_eq!(decoded.tags(), &tags[..]);
    assert_eq!(decoded.encode(), entry.encode());
    // A tag count past the bound is no entry.
    let mut bad = BytesMut::from(&entry.encode()[..]);
    bad.truncate(bad.len() - 4);
    bad[71] = (crate::purge::MAX_TAGS + 1) as u8;
    let crc = crc32fast::hash(&bad);
    bad.put_u32(crc);
    assert!(Entry::decode(bad.freeze()).is_err());
    // Version 4: the same without the retention, which is then 0.
    let v5 = entry.encode();
    let mut v4 = BytesMut::new();
    v4.put_slice(MAGIC_V4);
    v4.put_slice(&v5[4..47]);
    v4.put_slice(&v5[55..v5.len() - 4]);
    let crc = crc32fast::hash(&v4);
    v4.put_u32(crc);
    let old = Entry::decode(v4.freeze()).unwrap();
    assert_eq!(old.fill_position(), entry.fill_position());
    assert_eq!(old.tags(), &tags[..]);
    // Version 3: without the epoch either, which is then 0.
    let mut v3 = BytesMut::new();
    v3.put_slice(MAGIC_V3);
    v3.put_slice(&v5[4..47]);
    v3.put_slice(&v5[55..63]);
    v3.put_slice(&v5[71..v5.len() - 4]);
    let crc = crc32fast::hash(&v3);
    v3.put_u32(crc);
    let old = Entry::decode(v3.freeze()).unwrap();
    assert_eq!(old.fill_position(), crate::PurgePosition::new(0, 42));
    assert_eq!(old.tags(), &tags[..]);
}
