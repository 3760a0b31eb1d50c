//! `Entry::decode` on arbitrary bytes: it must never panic, and whatever it
//! accepts must survive `encode` then `decode` unchanged.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tower_coalesce::Entry;

/// Tags of the format versions `Entry::decode` reads (see `src/entry/codec.rs`).
const MAGICS: [&[u8]; 5] = [
    b"TCE\x05",
    b"TCE\x04",
    b"TCE\x03",
    b"TCE\x02",
    b"TCE\x01",
];

fuzz_target!(|data: &[u8]| {
    // The input exactly as a value read back from Redis could be.
    check(Bytes::copy_from_slice(data));

    // The same bytes as the contents of a frame with the right tag and a
    // valid checksum. Raw inputs almost all stop at the CRC-32 check, so
    // without this the parser behind it (status, lengths, header names and
    // values, trailer flag) would be reached only by chance.
    for magic in MAGICS {
        let mut framed = Vec::with_capacity(magic.len() + data.len() + 4);
        framed.extend_from_slice(magic);
        framed.extend_from_slice(data);
        let crc = crc32fast::hash(&framed);
        framed.extend_from_slice(&crc.to_be_bytes());
        check(Bytes::from(framed));
    }
});

/// Decodes `bytes`; if that succeeds, checks that the entry round-trips.
fn check(bytes: Bytes) {
    let Ok(first) = Entry::decode(bytes) else {
        return;
    };
    let encoded = first.encode();
    let second = match Entry::decode(encoded.clone()) {
        Ok(entry) => entry,
        Err(e) => panic!("an accepted entry re-encodes to bytes it rejects: {e}"),
    };
    assert_eq!(second.status(), first.status());
    assert_eq!(second.version(), first.version());
    assert_eq!(second.headers(), first.headers());
    assert_eq!(second.body(), first.body());
    assert_eq!(second.trailers(), first.trailers());
    assert_eq!(second.stored_at(), first.stored_at());
    // The first decode may normalise (header names lowercased, values of one
    // name grouped together), so the input need not equal `encoded`; but
    // from then on the form is fixed, and encoding again must not drift.
    assert_eq!(second.encode(), encoded);
}
