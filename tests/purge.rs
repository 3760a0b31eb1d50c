//! Purges in one process (the memory backend): by key, by URL, by tag, by an
//! unsafe request; fenced against fills under way; bad input refused.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{body, get, until, Origin, Svc};
use tower::{Layer, ServiceExt};
use tower_coalesce::{BoxError, CoalesceConfig, CoalesceLayer, Outcome, PurgeErrorKind, MAX_TAGS};

/// An origin answering `<path> <n>` (`n` its call count), tagged by the
/// `tags` query parameter (`?tags=a+b`) in `surrogate-key`.
fn tagged(origin: &Origin) -> impl Fn(Request<Full<Bytes>>) -> TaggedAnswer + Clone {
    let calls = origin.calls.clone();
    move |req: Request<Full<Bytes>>| {
        let n = calls.load(Ordering::SeqCst);
        let tags = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("tags="))
            .map(|t| percent_decoded(&t.replace('+', " ")));
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let mut res = Response::new(Full::new(Bytes::from(format!("{path} {n}"))));
            if let Some(tags) = tags {
                res.headers_mut().insert(
                    "surrogate-key",
                    http::HeaderValue::from_bytes(&tags).unwrap(),
                );
            }
            Ok(res)
        })
    }
}

/// `%XX` escapes decoded to their bytes (which need not be UTF-8).
fn percent_decoded(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: Vec<u8> = bytes.by_ref().take(2).collect();
            let hex = std::str::from_utf8(&hex).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
        } else {
            out.push(b);
        }
    }
    out
}

type TaggedAnswer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>,
>;

fn config() -> CoalesceConfig {
    CoalesceConfig::new()
        .ttl(Duration::from_secs(60))
        .tag_header(http::HeaderName::from_static("surrogate-key"))
}

fn layered(origin: &Origin, config: CoalesceConfig) -> (CoalesceLayer, Svc) {
    let layer = CoalesceLayer::new(config);
    let svc = Svc::new(layer.layer(origin.serve(tagged(origin))));
    (layer, svc)
}

async fn answer(svc: &Svc, uri: &str) -> (Outcome, String) {
    run(svc.clone(), uri.to_owned()).await
}

async fn run(svc: Svc, uri: String) -> (Outcome, String) {
    let res = svc.oneshot(get(&uri)).await.unwrap();
    let outcome = *res.extensions().get::<Outcome>().unwrap();
    assert!(
        !res.headers().contains_key("surrogate-key"),
        "the tag header never reaches a client"
    );
    (
        outcome,
        String::from_utf8(body(res).await.unwrap().to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn a_tag_purge_drops_every_answer_carrying_it_and_only_those() {
    let origin = Origin::open();
    let (layer, svc) = layered(&origin, config());
    for uri in ["/a?tags=shop+p1", "/b?tags=p1", "/c?tags=p2", "/d"] {
        assert_eq!(answer(&svc, uri).await.0, Outcome::Leader);
        assert_eq!(answer(&svc, uri).await.0, Outcome::Hit);
    }
    let purged = layer.purger().purge_tag("p1").await.unwrap();
    assert_eq!((purged.position, purged.shared), (1, false));
    assert_eq!(answer(&svc, "/a?tags=shop+p1").await.0, Outcome::Leader);
    assert_eq!(answer(&svc, "/b?tags=p1").await.0, Outcome::Leader);
    assert_eq!(answer(&svc, "/c?tags=p2").await.0, Outcome::Hit);
    assert_eq!(answer(&svc, "/d").await.0, Outcome::Hit);
    // What was fetched after the purge is stored again.
    assert_eq!(answer(&svc, "/a?tags=shop+p1").await.0, Outcome::Hit);
    assert_eq!(origin.calls(), 6);
    assert_eq!(layer.stats().purges, 1);
}

#[tokio::test]
async fn a_url_purge_drops_every_variant_and_a_key_purge_one() {
    let origin = Origin::open();
    let (layer, svc) = layered(&origin, config());
    // The default key includes Accept: two variants of one URL.
    let with_accept = |accept: &'static str| {
        let svc = svc.clone();
        async move {
            let mut req = get("/p/1");
            req.headers_mut().insert("accept", accept.parse().unwrap());
            let res = svc.oneshot(req).await.unwrap();
            *res.extensions().get::<Outcome>().unwrap()
        }
    };
    assert_eq!(with_accept("text/html").await, Outcome::Leader);
    assert_eq!(with_accept("application/json").await, Outcome::Leader);
    assert_eq!(answer(&svc, "/p/2").await.0, Outcome::Leader);

    layer.purger().purge_url("/p/1").await.unwrap();
    assert_eq!(with_accept("text/html").await, Outcome::Leader);
    assert_eq!(with_accept("application/json").await, Outcome::Leader);
    assert_eq!(answer(&svc, "/p/2").await.0, Outcome::Hit);

    // A key purge: the key the extractor gives that request.
    let key = tower_coalesce::KeyExtractor::extract(&tower_coalesce::HttpKey::new(), &get("/p/2"))
        .unwrap();
    layer.purger().purge_key(&key).await.unwrap();
    assert_eq!(answer(&svc, "/p/2").await.0, Outcome::Leader);
    assert_eq!(with_accept("text/html").await, Outcome::Hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_keeps_its_answer_from_being_stored() {
    let origin = Origin::gated();
    let (layer, svc) = layered(&origin, config());
    // The first flight's origin call is held; the purge lands meanwhile.
    let first = tokio::spawn(run(svc.clone(), "/a?tags=t".into()));
    until(&layer, "the first flight's origin call", |s| {
        s.origin_calls == 1
    })
    .await;
    layer.purger().purge_tag("t").await.unwrap();
    // A request after the purge joins the flight (its tags are not known
    // yet) and must not get its answer: it flies again when it lands.
    let second = tokio::spawn(run(svc.clone(), "/a?tags=t".into()));
    until(&layer, "the second request to follow", |s| s.followers == 1).await;
    origin.open_gate();
    // The first caller was waiting before the purge: it gets the answer.
    assert_eq!(first.await.unwrap(), (Outcome::Leader, "/a 1".into()));
    let (_, late) = second.await.unwrap();
    assert_eq!(late, "/a 2", "the answer made after the purge");
    let stats = layer.stats();
    assert_eq!((stats.purge_fenced, stats.purge_reruns), (1, 1));
    // The stored answer is the second one.
    assert_eq!(
        answer(&svc, "/a?tags=t").await,
        (Outcome::Hit, "/a 2".into())
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_purge_new_requests_start_a_new_flight() {
    let origin = Origin::gated();
    let (layer, svc) = layered(&origin, config());
    let first = tokio::spawn(run(svc.clone(), "/k".into()));
    until(&layer, "the first flight's origin call", |s| {
        s.origin_calls == 1
    })
    .await;
    layer.purger().purge_url("/k").await.unwrap();
    let second = tokio::spawn(run(svc.clone(), "/k".into()));
    // Not a follower of the purged flight: a flight of its own.
    until(&layer, "a second flight", |s| s.origin_calls == 2).await;
    assert_eq!(layer.stats().followers, 0);
    origin.open_gate();
    assert_eq!(first.await.unwrap().0, Outcome::Leader);
    assert_eq!(second.await.unwrap().0, Outcome::Leader);
    // The purged flight's answer was not stored; the new one was.
    assert_eq!(layer.stats().purge_fenced, 1);
    assert_eq!(answer(&svc, "/k").await.0, Outcome::Hit);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn a_successful_unsafe_request_purges_its_url() {
    let origin = Origin::open();
    let status = Arc::new(AtomicUsize::new(200));
    let layer = CoalesceLayer::new(config());
    let answers = {
        let status = status.clone();
        let calls = origin.calls.clone();
        move |req: Request<Full<Bytes>>| {
            let status = status.load(Ordering::SeqCst) as u16;
            let n = calls.load(Ordering::SeqCst);
            async move {
                let mut res =
                    Response::new(Full::new(Bytes::from(format!("{} {n}", req.method()))));
                if req.method() != http::Method::GET {
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                }
                Ok::<_, BoxError>(res)
            }
        }
    };
    let svc = Svc::new(layer.layer(origin.serve(answers)));
    let send = |method: http::Method| {
        let svc = svc.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri("/item")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            (*res.extensions().get::<Outcome>().unwrap(), res.status())
        }
    };
    assert_eq!(send(http::Method::GET).await.0, Outcome::Leader);
    assert_eq!(send(http::Method::GET).await.0, Outcome::Hit);
    assert_eq!(
        send(http::Method::PUT).await,
        (Outcome::Bypass, StatusCode::OK)
    );
    assert_eq!(send(http::Method::GET).await.0, Outcome::Leader);
    // A failed write changes nothing: the stored answer stays.
    status.store(500, Ordering::SeqCst);
    send(http::Method::DELETE).await;
    assert_eq!(send(http::Method::GET).await.0, Outcome::Hit);
    // An unknown method is unsafe too.
    status.store(204, Ordering::SeqCst);
    send(http::Method::from_bytes(b"REINDEX").unwrap()).await;
    assert_eq!(send(http::Method::GET).await.0, Outcome::Leader);
    assert_eq!(layer.stats().purges, 2);
}

#[tokio::test]
async fn unsafe_requests_can_be_left_to_purge_nothing() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(config().invalidate_on_unsafe(false));
    let svc = Svc::new(layer.layer(origin.serve(support::echo_path)));
    svc.clone().oneshot(get("/x")).await.unwrap();
    let post = Request::post("/x").body(Full::new(Bytes::new())).unwrap();
    svc.clone().oneshot(post).await.unwrap();
    let res = svc.clone().oneshot(get("/x")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
}

#[tokio::test]
async fn tags_from_a_function_and_bad_tags_ignored() {
    let origin = Origin::open();
    let config = config().tags(|req, _res| {
        vec![
            req.uri.path().trim_start_matches('/').to_owned(),
            "not a tag".to_owned(),
            String::new(),
        ]
    });
    let (layer, svc) = layered(&origin, config);
    // A header with far too many tags, some of them not tags at all.
    let many: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    let uri = format!(
        "/many?tags=caf%C3%A9+bad%FF+{}+{}",
        "x".repeat(300),
        many.join("+")
    );
    assert_eq!(answer(&svc, &uri).await.0, Outcome::Leader);
    assert_eq!(answer(&svc, &uri).await.0, Outcome::Hit);
    // Past the 64th, tags are ignored; the function's tags come after the
    // header's, so the cap ignores them here.
    layer
        .purger()
        .purge_tag(&format!("t{}", MAX_TAGS))
        .await
        .unwrap();
    assert_eq!(answer(&svc, &uri).await.0, Outcome::Hit);
    layer.purger().purge_tag("t3").await.unwrap();
    assert_eq!(answer(&svc, &uri).await.0, Outcome::Leader);

    assert_eq!(answer(&svc, "/fn").await.0, Outcome::Leader);
    layer.purger().purge_tag("fn").await.unwrap();
    assert_eq!(answer(&svc, "/fn").await.0, Outcome::Leader);

    for bad in ["", "two words", "a,b", "\u{e9}"] {
        let error = layer.purger().purge_tag(bad).await.unwrap_err();
        assert_eq!(error.kind(), PurgeErrorKind::BadTag, "{bad:?}");
    }
    let error = layer
        .purger()
        .purge_url("not a url at all")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), PurgeErrorKind::NotKeyed);
}

#[tokio::test]
async fn the_tag_header_can_be_kept() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(config().keep_tag_header(true));
    let svc = Svc::new(layer.layer(origin.serve(tagged(&origin))));
    let res = svc.clone().oneshot(get("/a?tags=x")).await.unwrap();
    assert_eq!(res.headers()["surrogate-key"], "x");
    let res = svc.clone().oneshot(get("/a?tags=x")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Hit));
    assert_eq!(res.headers()["surrogate-key"], "x");
}

/// A request with `method`, `uri` and `host`, and this body.
fn request(
    method: http::Method,
    uri: &str,
    host: &str,
    body: &'static str,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// An origin that answers `GET`s `<path> <n>`, and unsafe requests `201`
/// with the `Location` and `Content-Location` given in their headers
/// `x-location` and `x-content-location`.
fn writable(origin: &Origin) -> impl Fn(Request<Full<Bytes>>) -> TaggedAnswer + Clone {
    let calls = origin.calls.clone();
    move |req: Request<Full<Bytes>>| {
        let n = calls.load(Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        let named = |name: &str| req.headers().get(name).cloned();
        let (location, content_location) = (named("x-location"), named("x-content-location"));
        let write = req.method() != http::Method::GET;
        Box::pin(async move {
            let mut res = Response::new(Full::new(Bytes::from(format!("{path} {n}"))));
            if write {
                *res.status_mut() = StatusCode::CREATED;
                for (name, value) in [
                    (http::header::LOCATION, location),
                    (http::header::CONTENT_LOCATION, content_location),
                ] {
                    if let Some(value) = value {
                        res.headers_mut().insert(name, value);
                    }
                }
            }
            Ok(res)
        })
    }
}

async fn outcome(svc: &Svc, req: Request<Full<Bytes>>) -> Outcome {
    let res = svc.clone().oneshot(req).await.unwrap();
    *res.extensions().get::<Outcome>().unwrap()
}

#[tokio::test]
async fn an_unsafe_request_with_a_body_purges_its_url() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(origin.serve(writable(&origin))));
    let get = || request(http::Method::GET, "/item", "shop.example", "");
    assert_eq!(outcome(&svc, get()).await, Outcome::Leader);
    assert_eq!(outcome(&svc, get()).await, Outcome::Hit);
    let put = request(http::Method::PUT, "/item", "shop.example", "the new name");
    assert_eq!(outcome(&svc, put).await, Outcome::Bypass);
    assert_eq!(outcome(&svc, get()).await, Outcome::Leader);
    assert_eq!(layer.stats().purges, 1);
}

#[tokio::test]
async fn an_unsafe_request_purges_a_same_origin_location_and_content_location() {
    let origin = Origin::open();
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(origin.serve(writable(&origin))));
    let get = |uri: &str, host: &str| request(http::Method::GET, uri, host, "");
    let stored = [
        ("/items/7", "shop.example"),
        ("/items/7/summary?full=1", "shop.example"),
        ("/lists/new", "shop.example"),
        ("/items/7", "other.example"),
        ("/elsewhere", "shop.example"),
    ];
    for (uri, host) in stored {
        assert_eq!(outcome(&svc, get(uri, host)).await, Outcome::Leader);
        assert_eq!(outcome(&svc, get(uri, host)).await, Outcome::Hit);
    }
    let post = |location: &str, content_location: &str| {
        let mut req = request(http::Method::POST, "/lists/new", "shop.example", "{}");
        let headers = req.headers_mut();
        headers.insert("x-location", location.parse().unwrap());
        headers.insert("x-content-location", content_location.parse().unwrap());
        req
    };
    // An absolute path and an absolute URL of the same origin (the scheme
    // is not the layer's to know): both purged, with the target.
    let created = post(
        "/items/7",
        "https://SHOP.example/items/7/summary?full=1#top",
    );
    assert_eq!(outcome(&svc, created).await, Outcome::Bypass);
    assert_eq!(
        outcome(&svc, get("/items/7", "shop.example")).await,
        Outcome::Leader
    );
    assert_eq!(
        outcome(&svc, get("/items/7/summary?full=1", "shop.example")).await,
        Outcome::Leader
    );
    assert_eq!(
        outcome(&svc, get("/lists/new", "shop.example")).await,
        Outcome::Leader
    );
    // Another origin's answers are not a response's to purge; a relative
    // reference resolves against the request's URL.
    let elsewhere = post("http://other.example/items/7", "../elsewhere");
    assert_eq!(outcome(&svc, elsewhere).await, Outcome::Bypass);
    assert_eq!(
        outcome(&svc, get("/items/7", "other.example")).await,
        Outcome::Hit
    );
    assert_eq!(
        outcome(&svc, get("/elsewhere", "shop.example")).await,
        Outcome::Leader
    );
    // Unreadable values purge nothing more, and break nothing.
    let odd = post("http://[::1", "http://shop.example:99999/x");
    assert_eq!(outcome(&svc, odd).await, Outcome::Bypass);
    assert_eq!(
        outcome(&svc, get("/items/7", "shop.example")).await,
        Outcome::Hit
    );
}

#[tokio::test]
async fn the_tag_header_is_taken_off_bypassed_and_passed_answers_too() {
    let origin = Origin::open();
    let (_, svc) = layered(&origin, config());
    // Credentialed: bypassed, untouched but for the tag header.
    let credentialed = Request::builder()
        .uri("/a?tags=x")
        .header(http::header::AUTHORIZATION, "Bearer 1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Unsafe: bypassed, and purging.
    let unsafe_request = request(http::Method::POST, "/a?tags=x", "shop.example", "");
    for req in [credentialed, unsafe_request] {
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::Bypass));
        assert!(!res.headers().contains_key("surrogate-key"));
    }
    // Private: passed to its own caller, and the key then passes.
    let personal = origin.serve(|_req: Request<Full<Bytes>>| async {
        let res = Response::builder()
            .header("set-cookie", "sid=1")
            .header("surrogate-key", "x")
            .body(Full::new(Bytes::from_static(b"mine")))
            .unwrap();
        Ok(res)
    });
    let layer = CoalesceLayer::new(config());
    let svc = Svc::new(layer.layer(personal));
    for expected in [Outcome::Leader, Outcome::Pass] {
        let res = svc.clone().oneshot(get("/p")).await.unwrap();
        assert_eq!(res.extensions().get::<Outcome>(), Some(&expected));
        assert!(!res.headers().contains_key("surrogate-key"), "{expected:?}");
    }
}

/// A tag purge that drops a stale answer while its refresh runs: callers
/// after it may have neither the stale answer nor the refresh's (filled
/// from data before the purge), so they start a new flight — rather than
/// rejoin the refresh, be handed the purged stale answer, and go again, in
/// a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_after_a_tag_purge_during_a_refresh_start_a_new_flight() {
    use support::tap;
    use tower_coalesce::{Freshness, OriginFreshness};
    let headers = [
        (
            "cache-control",
            "max-age=1, stale-while-revalidate=60".to_owned(),
        ),
        ("content-length", "2".to_owned()),
        ("surrogate-key", "t".to_owned()),
    ];
    let mut origin = tap::Origin::new(&headers);
    let layer = CoalesceLayer::new(
        config()
            .freshness(Freshness::Origin(OriginFreshness::new()))
            .outcome_header("x-coalesce"),
    );
    let addr = tap::serve(&origin, &layer).await;
    let client = tap::client();

    let first = tap::request(&client, addr, &[]).await;
    origin.tap().await.send(b"v1").await;
    assert_eq!(tap::rest(first).await.unwrap(), "v1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Stale: answered at once, and a refresh goes to the origin.
    let stale = tap::request(&client, addr, &[]).await;
    assert_eq!(stale.headers()["x-coalesce"], "stale");
    let refresh = origin.tap().await;
    layer.purger().purge_tag("t").await.unwrap();

    let later = tokio::spawn({
        let client = client.clone();
        async move { tap::request(&client, addr, &[]).await }
    });
    let again = tokio::time::timeout(Duration::from_secs(10), origin.tap())
        .await
        .expect("the request after the purge calls the origin itself");
    again.send(b"v3").await;
    drop(again);
    let later = tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(later.headers()["x-coalesce"], "leader");
    assert_eq!(tap::rest(later).await.unwrap(), "v3");
    refresh.send(b"v2").await;
}
