//! Routes from the config file, over real TCP: each path (and host) goes to
//! its upstream with its policy, ignored query parameters are dropped before
//! the key and the upstream see the query, requests no route takes go to
//! `--upstream`, and a mistake in a route names its line and field.

mod support;

use axum::extract::{OriginalUri, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// An upstream named `name` answering every path with its name and the
/// target it was asked for; it counts its calls.
async fn upstream(name: &'static str) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .fallback(get(
            |State((name, calls)): State<(&'static str, Arc<AtomicUsize>)>,
             OriginalUri(uri): OriginalUri| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                format!("{name} {uri}")
            },
        ))
        .with_state((name, calls.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

async fn send(addr: SocketAddr, host: &str, target: &str) -> (String, String) {
    send_with(addr, target, ("host", host)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_sends_its_requests_to_its_upstream_with_its_policy() {
    let (fallback, fallback_calls) = upstream("F").await;
    let (a, a_calls) = upstream("A").await;
    let (b, b_calls) = upstream("B").await;
    let (c, _) = upstream("C").await;
    let dir = support::scratch("routes");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "upstream = \"{fallback}\"\n\
             \n\
             [[route]]\n\
             path = \"/api/\"\n\
             upstream = \"{a}\"\n\
             mode = \"coalesce\"\n\
             \n\
             [[route]]\n\
             path = \"/static/\"\n\
             upstream = \"{b}\"\n\
             ttl-ms = 60000\n\
             ignore-query = [\"utm_*\"]\n\
             sort-query = true\n\
             \n\
             [[route]]\n\
             host = \"admin.example\"\n\
             upstream = \"{c}\"\n\
             mode = \"bypass\"\n"
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let (addr, _, _) = support::start(&support::args(&["--config", config])).await;

    // Coalesced, not stored: each request asks the upstream again.
    for _ in 0..2 {
        let (outcome, body) = send(addr, "shop.example", "/api/x").await;
        assert_eq!((outcome.as_str(), body.as_str()), ("leader", "A /api/x"));
    }
    assert_eq!(a_calls.load(Ordering::SeqCst), 2);

    // Kept a minute; the ignored parameters gone before the key and the
    // upstream, the rest sorted.
    let (outcome, body) = send(addr, "shop.example", "/static/y?utm_source=a&v=1&b=2").await;
    assert_eq!(
        (outcome.as_str(), body.as_str()),
        ("leader", "B /static/y?b=2&v=1")
    );
    let (outcome, body) = send(addr, "shop.example", "/static/y?v=1&utm_medium=x&b=2").await;
    assert_eq!(
        (outcome.as_str(), body.as_str()),
        ("hit", "B /static/y?b=2&v=1")
    );
    assert_eq!(b_calls.load(Ordering::SeqCst), 1);

    // By host: nothing coalesced. The first route that takes a request
    // wins: `/static/` on the admin host is the second route's.
    let (outcome, body) = send(addr, "admin.example", "/panel").await;
    assert_eq!((outcome.as_str(), body.as_str()), ("bypass", "C /panel"));
    let (_, body) = send(addr, "admin.example", "/static/y?v=1&b=2").await;
    assert_eq!(body, "B /static/y?b=2&v=1");

    // No route takes it: `--upstream`, with the flags' policy.
    let (outcome, body) = send(addr, "shop.example", "/other?utm_source=a").await;
    assert_eq!(
        (outcome.as_str(), body.as_str()),
        ("leader", "F /other?utm_source=a")
    );
    assert_eq!(fallback_calls.load(Ordering::SeqCst), 1);

    // `check` prints the routes.
    let bin = env!("CARGO_BIN_EXE_coalesce-proxy");
    let checked = std::process::Command::new(bin)
        .args(["check", "--config", config])
        .output()
        .unwrap();
    assert!(checked.status.success());
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(
        text.contains(&format!("route 1 = /api/ -> {a}/ (coalesce only)")),
        "{text}"
    );
    assert!(
        text.contains("route 2 = /static/ -> ")
            && text.contains("(ttl 60000 ms, ignoring utm_*, query sorted)"),
        "{text}"
    );
    assert!(text.contains("route 3 = admin.example/ -> "), "{text}");

    // A mistake in a route names its line and field.
    std::fs::write(
        &file,
        format!("upstream = \"{fallback}\"\n[[route]]\nupstream = \"{a}\"\ncache = true\n"),
    )
    .unwrap();
    let error = coalesce_proxy::Args::parse(["--config", config]).unwrap_err();
    assert!(
        error.contains("line 4") && error.contains("unknown field `cache`"),
        "{error}"
    );
    std::fs::write(
        &file,
        format!("upstream = \"{fallback}\"\n[[route]]\nupstream = \"ftp://x\"\n"),
    )
    .unwrap();
    let args = coalesce_proxy::Args::parse(["--config", config]).unwrap();
    let error = coalesce_proxy::build(&args).await.unwrap_err();
    assert!(
        error.contains("route /: ") && error.contains("ftp"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn send_with(addr: SocketAddr, target: &str, header: (&str, &str)) -> (String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{addr}{target}"))
        .header(header.0, header.1)
        .body(Full::default())
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let outcome = res.headers()["x-coalesce"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (outcome, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_route_takes_whole_paths_and_keys_its_listed_headers() {
    let (fallback, _) = upstream("F").await;
    let (a, a_calls) = upstream("A").await;
    let dir = support::scratch("routes-glob");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "upstream = \"{fallback}\"\n\
             \n\
             [[route]]\n\
             path = \"/users/*/profile\"\n\
             upstream = \"{a}\"\n\
             ttl-ms = 60000\n\
             key-headers = [\"x-tenant\"]\n\
             \n\
             [[route]]\n\
             path = \"/me/**\"\n\
             upstream = \"{a}\"\n\
             ttl-ms = 60000\n\
             key-headers = [\"authorization\"]\n"
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let (addr, _, _) = support::start(&support::args(&["--config", config])).await;

    // Each tenant its own answer; the same tenant the stored one.
    let profile = "/users/7/profile";
    let tenant = |t| send_with(addr, profile, ("x-tenant", t));
    assert_eq!(tenant("a").await, ("leader".into(), format!("A {profile}")));
    assert_eq!(tenant("a").await.0, "hit");
    assert_eq!(tenant("b").await.0, "leader");
    assert_eq!(a_calls.load(Ordering::SeqCst), 2);
    // `*` stays within its segment: a deeper path is not the route's.
    let (outcome, body) = send_with(addr, "/users/7/x/profile", ("x-tenant", "a")).await;
    assert_eq!(
        (outcome.as_str(), body.as_str()),
        ("leader", "F /users/7/x/profile")
    );

    // A credential the route keys no longer bypasses: each credential has
    // answers of its own, never another's.
    let me = |token| send_with(addr, "/me/orders/1", ("authorization", token));
    assert_eq!(me("Bearer one").await.0, "leader");
    assert_eq!(me("Bearer one").await.0, "hit");
    assert_eq!(me("Bearer two").await.0, "leader");
    assert_eq!(a_calls.load(Ordering::SeqCst), 4);
    // Where it is not keyed, a credential still bypasses.
    let (outcome, _) = send_with(addr, profile, ("authorization", "Bearer one")).await;
    assert_eq!(outcome, "bypass");
    let _ = std::fs::remove_dir_all(&dir);
}
