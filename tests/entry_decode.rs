//! `Entry::decode` against arbitrary input: it returns an error or an entry,
//! never panics, and never accepts a value that `encode` did not produce.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use proptest::prelude::*;
use tower_coalesce::Entry;

fn entry_strategy() -> impl Strategy<Value = Entry> {
    let header = (
        "[a-z][a-z0-9-]{0,20}",
        proptest::collection::vec(0x20u8..0x7f, 0..40),
    );
    (
        100u16..1000,
        proptest::collection::vec(header.clone(), 0..8),
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::option::of(proptest::collection::vec(header, 0..3)),
    )
        .prop_map(|(status, headers, body, trailers)| {
            let map = |pairs: Vec<(String, Vec<u8>)>| {
                let mut m = HeaderMap::new();
                for (n, v) in pairs {
                    m.append(
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_bytes(&v).unwrap(),
                    );
                }
                m
            };
            Entry::new(
                StatusCode::from_u16(status).unwrap(),
                Version::HTTP_11,
                map(headers),
                Bytes::from(body),
                trailers.map(map),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Entry::decode(Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_bytes_after_any_tag_never_panic(
        version in 1u8..=3,
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![b'T', b'C', b'E', version];
        bytes.extend(rest);
        let _ = Entry::decode(Bytes::from(bytes));
    }

    #[test]
    fn every_entry_round_trips(entry in entry_strategy(), stored_ms in proptest::option::of(1u64..1u64 << 45)) {
        let entry = match stored_ms {
            Some(ms) => entry.stored(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
            None => entry,
        };
        let back = Entry::decode(entry.encode()).unwrap();
        prop_assert_eq!(back.stored_at(), entry.stored_at());
        prop_assert_eq!(back.status(), entry.status());
        prop_assert_eq!(back.headers(), entry.headers());
        prop_assert_eq!(back.body(), entry.body());
        prop_assert_eq!(back.trailers(), entry.trailers());
    }

    #[test]
    fn a_damaged_entry_is_rejected(entry in entry_strategy(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = entry.encode().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(Entry::decode(Bytes::from(bytes)).is_err());
    }
}

#[test]
fn more_headers_than_a_header_map_holds_is_an_error_not_a_panic() {
    // Found by the fuzz target: a count that fits the input but not a
    // `HeaderMap` (over 24,576 pairs) used to panic in `with_capacity`.
    let count: u32 = 24_577;
    let mut frame = b"TCE\x02".to_vec();
    frame.extend_from_slice(&200u16.to_be_bytes());
    frame.push(2); // HTTP/1.1
    frame.extend_from_slice(&0u64.to_be_bytes()); // never stored
    frame.extend_from_slice(&count.to_be_bytes());
    frame.extend_from_slice(&vec![0u8; count as usize * 8]);
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_be_bytes());
    assert!(tower_coalesce::Entry::decode(frame.into()).is_err());
}
