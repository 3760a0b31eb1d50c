//! The answers of `conditions`, case by case.

/// An empty body, for `Bytes`-typed tests.
type Body = http_body_util::Full<bytes::Bytes>;

use super::validators::EntityTag;
use super::*;
use bytes::Bytes;
use http_body_util::BodyExt;

const LM: &str = "Tue, 01 Dec 2026 10:00:00 GMT";
const BEFORE: &str = "Tue, 01 Dec 2026 09:00:00 GMT";
const AFTER: &str = "Tue, 01 Dec 2026 11:00:00 GMT";

fn entry(status: u16, headers: &[(&str, &str)], body: &'static str) -> Entry {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Entry::new(
        StatusCode::from_u16(status).unwrap(),
        http::Version::HTTP_11,
        map,
        Bytes::from_static(body.as_bytes()),
        None,
    )
}

fn page() -> Entry {
    entry(
        200,
        &[
            ("etag", "\"v1\""),
            ("last-modified", LM),
            ("date", AFTER),
            ("content-type", "text/plain"),
            ("cache-control", "max-age=60"),
            ("x-other", "1"),
        ],
        "0123456789",
    )
}

fn asked(method: &str, headers: &[(&str, &str)]) -> Asked {
    let mut req = Request::builder().method(method).uri("/");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Asked::of(&req.body(()).unwrap())
}

async fn answer(asked: &Asked, entry: &Entry) -> (StatusCode, HeaderMap, Bytes) {
    let res = asked.answer::<Body>(entry);
    let (head, body) = res.into_parts();
    (
        head.status,
        head.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_matching_if_none_match_gets_a_304_with_the_listed_headers() {
    let (status, headers, body) =
        answer(&asked("GET", &[("if-none-match", "W/\"v1\"")]), &page()).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(headers["cache-control"], "max-age=60");
    assert_eq!(headers["last-modified"], LM);
    assert!(!headers.contains_key("content-type"));
    assert!(!headers.contains_key("x-other"));
    // A list, with `*`, and one that misses.
    let list = asked("GET", &[("if-none-match", "\"a\", \"v1\"")]);
    assert_eq!(answer(&list, &page()).await.0, StatusCode::NOT_MODIFIED);
    let any = asked("HEAD", &[("if-none-match", "*")]);
    assert_eq!(answer(&any, &page()).await.0, StatusCode::NOT_MODIFIED);
    let miss = asked("GET", &[("if-none-match", "\"v2\"")]);
    assert_eq!(
        answer(&miss, &page()).await,
        (
            StatusCode::OK,
            page().headers().clone(),
            Bytes::from("0123456789")
        )
    );
}

#[tokio::test]
async fn if_modified_since_is_ignored_beside_if_none_match_or_when_invalid() {
    let ims = |v: &str| asked("GET", &[("if-modified-since", v)]);
    assert_eq!(answer(&ims(LM), &page()).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(
        answer(&ims(AFTER), &page()).await.0,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(answer(&ims(BEFORE), &page()).await.0, StatusCode::OK);
    assert_eq!(answer(&ims("yesterday"), &page()).await.0, StatusCode::OK);
    let both = asked(
        "GET",
        &[("if-none-match", "\"other\""), ("if-modified-since", AFTER)],
    );
    assert_eq!(answer(&both, &page()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn if_match_compares_strongly_and_comes_first() {
    let im = |v: &str| asked("GET", &[("if-match", v)]);
    assert_eq!(answer(&im("\"v1\""), &page()).await.0, StatusCode::OK);
    assert_eq!(answer(&im("*"), &page()).await.0, StatusCode::OK);
    assert_eq!(
        answer(&im("W/\"v1\""), &page()).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        answer(&im("\"v2\""), &page()).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        answer(&im("garbage"), &page()).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    // If-Match wins over If-None-Match's 304.
    let both = asked(
        "GET",
        &[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")],
    );
    assert_eq!(
        answer(&both, &page()).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    // If-Unmodified-Since, only without If-Match.
    let ius = |v: &str| asked("GET", &[("if-unmodified-since", v)]);
    assert_eq!(
        answer(&ius(BEFORE), &page()).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(answer(&ius(LM), &page()).await.0, StatusCode::OK);
    let over = asked(
        "GET",
        &[("if-match", "\"v1\""), ("if-unmodified-since", BEFORE)],
    );
    assert_eq!(answer(&over, &page()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn preconditions_leave_errors_as_they_are() {
    let missing = entry(404, &[("etag", "\"v1\"")], "gone");
    let a = asked(
        "GET",
        &[("if-none-match", "\"v1\""), ("range", "bytes=0-1")],
    );
    assert_eq!(answer(&a, &missing).await.0, StatusCode::NOT_FOUND);
    assert_eq!(answer(&a, &missing).await.2, "gone");
    let failing = entry(503, &[], "down");
    assert_eq!(
        answer(&asked("GET", &[("if-match", "\"x\"")]), &failing)
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_single_range_gets_its_bytes() {
    let r = |v: &str| asked("GET", &[("range", v)]);
    let (status, headers, body) = answer(&r("bytes=2-4"), &page()).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"234"[..])
    );
    assert_eq!(headers["content-range"], "bytes 2-4/10");
    assert_eq!(headers["content-length"], "3");
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(answer(&r("bytes=7-"), &page()).await.2, "789");
    assert_eq!(answer(&r("bytes=-3"), &page()).await.2, "789");
    assert_eq!(answer(&r("bytes=-30"), &page()).await.2, "0123456789");
    assert_eq!(
        answer(&r("bytes=8-99999999999999999999999"), &page())
            .await
            .2,
        "89"
    );
    assert_eq!(answer(&r("Bytes = 0-0"), &page()).await.2, "0");
}

#[tokio::test]
async fn an_unsatisfiable_range_gets_a_416_with_the_length() {
    for v in ["bytes=999-", "bytes=10-12", "bytes=-0"] {
        let (status, headers, body) = answer(&asked("GET", &[("range", v)]), &page()).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{v}");
        assert_eq!(headers["content-range"], "bytes */10");
        assert!(body.is_empty());
    }
}

#[tokio::test]
async fn ranges_this_layer_does_not_serve_get_the_whole_answer() {
    for v in [
        "bytes=0-1,4-5",
        "items=0-1",
        "bytes=5-2",
        "bytes=x-",
        "bytes",
    ] {
        let (status, _, body) = answer(&asked("GET", &[("range", v)]), &page()).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"0123456789"[..]),
            "{v}"
        );
    }
    // Range is for GET only, and for 200 answers only.
    let head = asked("HEAD", &[("range", "bytes=0-1")]);
    assert_eq!(answer(&head, &page()).await.0, StatusCode::OK);
    let created = entry(201, &[], "abc");
    assert_eq!(
        answer(&asked("GET", &[("range", "bytes=0-1")]), &created)
            .await
            .2,
        "abc"
    );
}

#[tokio::test]
async fn if_range_needs_a_strong_match() {
    let ir = |v: &str| asked("GET", &[("range", "bytes=0-1"), ("if-range", v)]);
    assert_eq!(
        answer(&ir("\"v1\""), &page()).await.0,
        StatusCode::PARTIAL_CONTENT
    );
    assert_eq!(answer(&ir("W/\"v1\""), &page()).await.0, StatusCode::OK);
    assert_eq!(answer(&ir("\"v0\""), &page()).await.0, StatusCode::OK);
    assert_eq!(
        answer(&ir(LM), &page()).await.0,
        StatusCode::PARTIAL_CONTENT
    );
    assert_eq!(answer(&ir(BEFORE), &page()).await.0, StatusCode::OK);
    // A Last-Modified as late as the Date is weak: no range by date.
    let weak = entry(200, &[("last-modified", LM), ("date", LM)], "0123456789");
    assert_eq!(answer(&ir(LM), &weak).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_head_gets_the_headers_and_length_but_no_body() {
    let plain = entry(200, &[], "0123456789");
    let (status, headers, body) = answer(&asked("HEAD", &[]), &plain).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(headers["content-length"], "10");
}

#[tokio::test]
async fn a_streamed_answer_gets_the_same_treatment() {
    let head = |len: Option<&str>| {
        let mut b = Response::builder().header("etag", "\"v1\"");
        if let Some(len) = len {
            b = b.header("content-length", len);
        }
        b.body(()).unwrap().into_parts().0
    };
    let body = || CoalesceBody::<Body>::inner(Body::new(Bytes::from_static(b"0123456789")));
    let range = asked("GET", &[("range", "bytes=3-5")]);
    let res = range.answer_streamed(head(Some("10")), body());
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["content-range"], "bytes 3-5/10");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "345");
    // Without a length, the whole body.
    let res = range.answer_streamed(head(None), body());
    assert_eq!(res.status(), StatusCode::OK);
    let inm = asked("GET", &[("if-none-match", "\"v1\"")]);
    assert_eq!(
        inm.answer_streamed(head(Some("10")), body()).status(),
        StatusCode::NOT_MODIFIED
    );
    let res = asked("HEAD", &[]).answer_streamed(head(Some("10")), body());
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
}

#[test]
fn taking_strips_the_conditions_and_asks_get_and_restoring_undoes_it() {
    let mut req = Request::head("/")
        .header("if-none-match", "\"a\"")
        .header("range", "bytes=0-1")
        .header("accept", "x")
        .body(())
        .unwrap();
    let asked = Asked::take(&mut req);
    assert_eq!(req.method(), Method::GET);
    assert!(!req.headers().contains_key("if-none-match"));
    assert!(!req.headers().contains_key("range"));
    assert_eq!(req.headers()["accept"], "x");
    asked.restore(&mut req);
    assert_eq!(req.method(), Method::HEAD);
    assert_eq!(req.headers()["if-none-match"], "\"a\"");
    assert_eq!(req.headers()["range"], "bytes=0-1");
}

#[test]
fn entity_tags_parse_as_the_grammar_says() {
    assert_eq!(
        EntityTag::parse(b"\"a,b\""),
        Some(EntityTag {
            weak: false,
            opaque: b"a,b"
        })
    );
    assert_eq!(
        EntityTag::parse(b"W/\"\""),
        Some(EntityTag {
            weak: true,
            opaque: b""
        })
    );
    assert_eq!(EntityTag::parse(b"a"), None);
    assert_eq!(EntityTag::parse(b"\"a\" x"), None);
    assert_eq!(EntityTag::parse(b"\"a"), None);
}

mod arbitrary_input {
    //! Whatever a client sends, the layer answers: no panic, and a range
    //! it serves lies within the representation.
    use super::super::range::{parse_range, Ranged};
    use super::*;
    use proptest::prelude::*;

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        // Visible ASCII, spaces, and obs-text: what a header value may hold.
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40)
            .prop_map(|bytes| HeaderValue::from_bytes(&bytes).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_range_is_within_the_representation_or_not_served(
            value in proptest::collection::vec(any::<u8>(), 0..40),
            len in 0u64..1000,
        ) {
            if let Ranged::Part { start, end } = parse_range(&value, len) {
                prop_assert!(start <= end && end < len);
            }
        }

        #[test]
        fn any_conditional_headers_get_an_answer(
            values in proptest::collection::vec(header_value(), 6),
            head in any::<bool>(),
        ) {
            let mut req = Request::builder().method(if head { "HEAD" } else { "GET" }).uri("/");
            for (name, value) in CONDITIONAL.iter().zip(values) {
                req = req.header(name, value);
            }
            let asked = Asked::of(&req.body(()).unwrap());
            let res = asked.answer::<Body>(&page());
            prop_assert!(matches!(res.status().as_u16(), 200 | 206 | 304 | 412 | 416));
        }
    }
}
