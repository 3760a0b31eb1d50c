//! Keys: framing, parts, and the equivalence `HttpKey` defines.

use super::*;
use http::{header, HeaderName, Request};
use http_body_util::Full;

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri)
}

fn key(req: http::request::Builder) -> Option<Key> {
    HttpKey::new().extract(&req.body(Full::new(Bytes::new())).unwrap())
}

#[test]
fn a_fingerprint_is_short_stable_and_hides_the_key() {
    let key = Key::from("GET /me Bearer secret-token");
    let shown = key.fingerprint().to_string();
    assert_eq!(shown.len(), 16);
    assert_eq!(shown, key.fingerprint().to_string());
    assert!(!shown.contains("secret"));
    assert_ne!(shown, Key::from("other").fingerprint().to_string());
}

#[test]
fn same_request_gives_same_key() {
    assert_eq!(key(get("/a?b=1")), key(get("/a?b=1")));
    assert!(key(get("/a")).is_some());
}

#[test]
fn path_query_and_host_are_in_the_key() {
    assert_ne!(key(get("/a?b=1")), key(get("/a?b=2")));
    assert_ne!(key(get("/a")), key(get("/b")));
    assert_ne!(
        key(get("/a").header("host", "x")),
        key(get("/a").header("host", "y"))
    );
}

#[test]
fn without_authority_names_by_any_host_share_a_key() {
    let bare = HttpKey::new().without_authority();
    let k = |req: http::request::Builder| bare.extract(&req.body(Full::new(Bytes::new())).unwrap());
    let by_host = k(get("/a").header("host", "127.0.0.1:3001"));
    assert!(by_host.is_some());
    assert_eq!(by_host, k(get("/a").header("host", "127.0.0.1:3002")));
    assert_eq!(by_host, k(get("http://other.example/a")));
    assert_eq!(by_host, k(get("/a")));
    // The rest of the key stays.
    assert_ne!(by_host, k(get("/b")));
    assert_ne!(
        k(get("/a").header("accept", "text/html")),
        k(get("/a").header("accept", "application/json"))
    );
}

#[test]
fn a_fixed_authority_is_keyed_in_place_of_whatever_the_request_names() {
    let named = |name: &'static str| HttpKey::new().authority(http::HeaderValue::from_static(name));
    let shop = named("shop.example");
    let k = |ext: &HttpKey, req: http::request::Builder| {
        ext.extract(&req.body(Full::new(Bytes::new())).unwrap())
    };
    let by_host = k(&shop, get("/a").header("host", "127.0.0.1:3001"));
    assert!(by_host.is_some());
    assert_eq!(
        by_host,
        k(&shop, get("/a").header("host", "127.0.0.1:3002"))
    );
    assert_eq!(by_host, k(&shop, get("http://other.example/a")));
    assert_eq!(by_host, k(&shop, get("/a")));
    // The name is in the key: another one, or none, is another key.
    assert_ne!(by_host, k(&named("blog.example"), get("/a")));
    let bare = HttpKey::new().without_authority();
    assert_ne!(by_host, k(&bare, get("/a")));
    // The rest of the key stays, and purges find it from any URL.
    assert_ne!(by_host, k(&shop, get("/b")));
    assert_eq!(
        by_host.unwrap().resource(),
        &shop.resource(&"http://anything.example/a".parse().unwrap())[..]
    );
}

#[test]
fn varying_headers_are_in_the_key_and_others_are_not() {
    assert_ne!(
        key(get("/a").header("accept", "text/html")),
        key(get("/a").header("accept", "application/json"))
    );
    assert_eq!(
        key(get("/a").header("x-trace", "1")),
        key(get("/a").header("x-trace", "2"))
    );
}

#[test]
fn a_credential_in_the_vary_list_is_keyed_by_value() {
    let ext = HttpKey::new().vary(header::COOKIE);
    let keys = |ext: &HttpKey| KeyExtractor::<Full<Bytes>>::keys_header(ext, &header::COOKIE);
    assert!(keys(&ext));
    assert!(!keys(&HttpKey::new()));
    let k = |v: &str| {
        ext.extract(
            &get("/a")
                .header("cookie", v)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    assert!(k("s=1").is_some());
    assert_ne!(k("s=1"), k("s=2"));
}

#[test]
fn header_values_cannot_shift_between_headers() {
    // Three `Accept` lines spelling another header's name and value are
    // not `Accept` + `Accept-Encoding`.
    let shifted = key(get("/a")
        .header("accept", "text/html")
        .header("accept", "accept-encoding")
        .header("accept", "gzip"));
    let two = key(get("/a")
        .header("accept", "text/html")
        .header("accept-encoding", "gzip"));
    assert_ne!(shifted, two);
    // Nor can a keyed tenant be spelled inside another header.
    let ext = HttpKey::new().vary_only([header::ACCEPT, HeaderName::from_static("x-tenant")]);
    let k = |req: http::request::Builder| ext.extract(&req.body(Full::new(Bytes::new())).unwrap());
    assert_ne!(
        k(get("/a")
            .header("accept", "x")
            .header("accept", "x-tenant")
            .header("accept", "victim")),
        k(get("/a").header("accept", "x").header("x-tenant", "victim"))
    );
}

#[test]
fn resource_and_variant_are_apart() {
    let k = key(get("http://h/a?q").header("accept", "text/html")).unwrap();
    assert_eq!(
        k.resource(),
        &HttpKey::new().resource(&"http://h/a?q".parse().unwrap())[..]
    );
    assert!(!k.variant().is_empty());
    // A plain request of the same target has the same resource.
    assert_eq!(key(get("http://h/a?q")).unwrap().resource(), k.resource());
    assert!(key(get("http://h/a?q")).unwrap().variant().is_empty());
    // Bytes cannot move between the resource and the variant.
    assert_ne!(
        Key::new("ab").with_variant(["c"]),
        Key::new("a").with_variant(["bc"])
    );
    assert_ne!(
        Key::new("a").resource_digest(),
        Key::new("b").resource_digest()
    );
    let v = Key::new("a").with_variant(["x"]);
    assert_eq!(v.resource_digest(), Key::new("a").resource_digest());
    assert_ne!(v.variant_digest(), Key::new("a").variant_digest());
}

#[test]
fn the_method_class_joins_head_with_get_and_parts_others() {
    let base = Key::new("/a");
    assert_eq!(
        base.clone().for_method(&Method::HEAD),
        base.clone().for_method(&Method::GET)
    );
    assert_ne!(
        base.clone().for_method(&Method::POST),
        base.clone().for_method(&Method::GET)
    );
    assert_eq!(base.clone().for_method(&Method::HEAD).method(), Method::GET);
    assert_ne!(
        base.clone().for_method(&Method::POST).variant_digest(),
        base.for_method(&Method::GET).variant_digest()
    );
}

#[test]
fn long_parts_are_framed_without_a_ceiling() {
    let mut buf = BytesMut::new();
    put_len(&mut buf, 300);
    assert_eq!(&buf[..], [0xac, 0x02]);
    let mut buf = BytesMut::new();
    put_len(&mut buf, 0);
    assert_eq!(&buf[..], [0]);
}

#[test]
fn a_request_with_a_body_bypasses() {
    let req = get("/a").body(Full::new(Bytes::from_static(b"x"))).unwrap();
    assert_eq!(HttpKey::new().extract(&req), None);
}

#[test]
fn parts_are_separated() {
    assert_ne!(Key::from_parts(["ab", "c"]), Key::from_parts(["a", "bc"]));
}

#[test]
fn header_bytes_that_are_not_utf8_make_distinct_keys() {
    let v1 = http::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    let v2 = http::HeaderValue::from_bytes(b"\xff\xfd").unwrap();
    assert_ne!(
        key(get("/a").header("accept", v1)),
        key(get("/a").header("accept", v2))
    );
}

mod equivalence {
    //! Two requests get equal keys if and only if their keyed parts are
    //! equal: the target, and for each keyed header the ordered list of
    //! its values.
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 3] = ["accept", "accept-encoding", "x-tenant"];

    #[derive(Debug, Clone, PartialEq)]
    struct Asked {
        path: String,
        // Per keyed header, its values in order.
        values: Vec<Vec<String>>,
    }

    fn asked() -> impl Strategy<Value = Asked> {
        // Small alphabets, names among the values: collisions are likely
        // if the encoding allows them.
        let value = prop_oneof![
            Just("accept".to_owned()),
            Just("x-tenant".to_owned()),
            Just("gzip".to_owned()),
            "[a-c,]{0,3}",
        ];
        (
            prop_oneof![Just("/a".to_owned()), Just("/a?x".to_owned()), "/[ab]{0,2}"],
            proptest::collection::vec(proptest::collection::vec(value, 0..3), 3),
        )
            .prop_map(|(path, values)| Asked { path, values })
    }

    fn key_of(asked: &Asked) -> Key {
        let ext = HttpKey::new().vary_only(NAMES.map(HeaderName::from_static));
        let mut req = Request::get(asked.path.as_str());
        for (name, values) in NAMES.iter().zip(&asked.values) {
            for v in values {
                req = req.header(*name, v.as_str());
            }
        }
        ext.extract(&req.body(Full::new(Bytes::new())).unwrap())
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn equal_keys_iff_equal_keyed_parts(a in asked(), b in asked()) {
            prop_assert_eq!(key_of(&a) == key_of(&b), a == b);
        }

        #[test]
        fn a_request_equals_itself(a in asked()) {
            prop_assert_eq!(key_of(&a), key_of(&a.clone()));
        }
    }
}
