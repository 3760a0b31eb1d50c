//! Which requests [`BodyKeys`] keys, and which share a key.

use super::*;
use crate::{Key, KeyExtractor};
use http::{header, HeaderMap, Request};
use http_body_util::Full;

pub(super) type Req = Request<Full<Bytes>>;

pub(super) fn post(path: &str, body: &str) -> http::request::Builder {
    let _ = body;
    Request::post(path).header(header::CONTENT_TYPE, "application/json")
}

/// A request as the buffering layer leaves it: its body read.
pub(super) fn read(builder: http::request::Builder, body: &str) -> Req {
    let mut req = builder
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    req.extensions_mut()
        .insert(RequestBody(Bytes::copy_from_slice(body.as_bytes())));
    req
}

fn search() -> BodyKeys {
    BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search"))
}

fn key(keys: &BodyKeys, body: &str) -> Option<Key> {
    keys.extract(&read(post("/search", body), body))
}

#[test]
fn json_bodies_that_mean_the_same_share_a_key_and_others_do_not() {
    let keys = search();
    let a = key(&keys, r#"{"q":"lamp","page":1}"#);
    assert!(a.is_some());
    assert_eq!(a, key(&keys, " {\n \"page\" : 1 , \"q\":\"l\\u0061mp\" } "));
    assert_ne!(a, key(&keys, r#"{"q":"lamp","page":2}"#));
    assert_ne!(a, key(&keys, r#"{"q":"lamp","page":1.0}"#));
}

#[test]
fn invalid_json_is_keyed_by_its_bytes_apart_from_every_canonical_form() {
    let keys = search();
    let bad = key(&keys, r#"{"q":"lamp""#);
    assert!(bad.is_some());
    assert_eq!(bad, key(&keys, r#"{"q":"lamp""#));
    assert_ne!(bad, key(&keys, r#"{"q":"lamp" "#));
    // A duplicate key: the bytes, not a canonical form.
    let dup = key(&keys, r#"{"q":"a","q":"a"}"#);
    assert!(dup.is_some());
    assert_ne!(dup, key(&keys, r#"{"q":"a"}"#));
    // The same payload bytes in the two forms make two keys.
    let route = &keys.routes.0[0];
    let uri: http::Uri = "/search".parse().unwrap();
    let of = |form| keys.key(route, &uri, &HeaderMap::new(), (form, b"", b"{}"));
    assert_ne!(of(super::keys::JSON), of(super::keys::BYTES));
}

#[test]
fn content_type_method_and_target_are_in_the_key() {
    let keys = search();
    let body = r#"{"q":1}"#;
    let plain = keys.extract(&read(post("/search", body), body));
    let charset =
        post("/search", body).header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    let mut charset = read(charset, body);
    charset.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json; charset=utf-8".parse().unwrap(),
    );
    assert_ne!(plain, keys.extract(&charset));
    assert!(keys.extract(&charset).is_some());
    let with_query = keys.extract(&read(post("/search?v=2", body), body));
    assert!(with_query.is_some());
    assert_ne!(plain, with_query);
}

#[test]
fn requests_whose_body_cannot_be_keyed_bypass() {
    let keys = search();
    let body = r#"{"q":1}"#;
    // Not read (too large, trailers): no extension.
    let unread = post("/search", body)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    assert_eq!(keys.extract(&unread), None);
    let gzip = read(
        post("/search", body).header(header::CONTENT_ENCODING, "gzip"),
        body,
    );
    assert_eq!(keys.extract(&gzip), None);
    let text = read(
        Request::post("/search").header(header::CONTENT_TYPE, "text/plain"),
        body,
    );
    assert_eq!(keys.extract(&text), None);
    // Other unsafe requests, routed or not, never get a key.
    let other = read(post("/orders", body), body);
    assert_eq!(keys.extract(&other), None);
    let put = read(
        Request::put("/search").header(header::CONTENT_TYPE, "application/json"),
        body,
    );
    assert_eq!(keys.extract(&put), None);
}

#[test]
fn other_gets_are_keyed_by_the_fallback() {
    let keys = search();
    let req = Request::get("/items/7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(keys.extract(&req), HttpKey::new().extract(&req));
    assert!(keys.extract(&req).is_some());
    assert_eq!(
        keys.methods(),
        vec![Method::GET, Method::HEAD, Method::POST]
    );
}

#[test]
fn a_header_keyed_for_one_route_makes_requests_of_others_bypass() {
    let keys = search().route(Route::json(Method::POST, "/me").vary(header::AUTHORIZATION));
    let ask = |path: &str, token: &str| {
        let body = "{}";
        keys.extract(&read(
            post(path, body).header(header::AUTHORIZATION, token),
            body,
        ))
    };
    assert!(KeyExtractor::<Full<Bytes>>::keys_header(
        &keys,
        &header::AUTHORIZATION
    ));
    assert!(ask("/me", "Bearer a").is_some());
    assert_ne!(ask("/me", "Bearer a"), ask("/me", "Bearer b"));
    assert_eq!(ask("/search", "Bearer a"), None);
    let get = Request::get("/items/7")
        .header(header::AUTHORIZATION, "Bearer a")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(keys.extract(&get), None);
    // Without a route keying it, the layer itself lets it bypass.
    assert!(!KeyExtractor::<Full<Bytes>>::keys_header(
        &search(),
        &header::AUTHORIZATION
    ));
}

#[test]
fn answers_are_flight_only_unless_the_route_is_stored() {
    let body = r#"{"q":1}"#;
    assert!(key(&search(), body).unwrap().is_flight_only());
    let stored = BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search").stored());
    assert!(!key(&stored, body).unwrap().is_flight_only());
}

#[test]
fn the_body_is_in_the_resource_unless_purged_with_the_url() {
    let body = r#"{"q":1}"#;
    let get = Request::get("/search")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let url = HttpKey::new().extract(&get).unwrap();
    let apart = key(&search(), body).unwrap();
    assert_ne!(apart.resource(), url.resource());
    let with_url =
        BodyKeys::new(HttpKey::new()).route(Route::json(Method::POST, "/search").purged_with_url());
    let together = key(&with_url, body).unwrap();
    assert_eq!(together.resource(), url.resource());
    assert_ne!(together.variant(), url.variant());
    assert_ne!(together, key(&with_url, r#"{"q":2}"#).unwrap());
}
