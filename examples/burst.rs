//! A cold burst of identical requests against a slow origin, in one process.
//!
//! ```text
//! cargo run --release --example burst -- [REQUESTS] [ORIGIN_MS]
//! ```
//!
//! Defaults: 100,000 requests, a 500 ms origin. Prints how many origin calls
//! the burst cost and how long the answer took to reach every request.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let requests: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("REQUESTS is a number"));
    let origin_ms: u64 = args
        .next()
        .map_or(500, |a| a.parse().expect("ORIGIN_MS is a number"));

    let calls = Arc::new(AtomicUsize::new(0));
    let returned_at = Arc::new(Mutex::new(None::<Instant>));
    let (c, r) = (calls.clone(), returned_at.clone());
    let origin = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let (c, r) = (c.clone(), r.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(origin_ms)).await;
            *r.lock().unwrap() = Some(Instant::now());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                b"{\"product\":7}",
            ))))
        }
    });

    let layer = CoalesceLayer::new(CoalesceConfig::new());
    let svc = layer.layer(origin);

    println!(
        "sending {requests} concurrent requests for /products/7 (origin takes {origin_ms} ms)"
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let req = Request::get("/products/7").body(Empty::new()).unwrap();
                let res = svc.oneshot(req).await.unwrap();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (body.len(), Instant::now())
            })
        })
        .collect();
    let mut last = start;
    let mut bytes = 0;
    for task in tasks {
        let (len, done) = task.await.unwrap();
        bytes += len;
        last = last.max(done);
    }
    let wall = start.elapsed();
    let returned = returned_at.lock().unwrap().expect("the origin answered");
    let stats = layer.stats();

    println!();
    println!("requests          {requests}");
    println!("origin calls      {}", calls.load(Ordering::SeqCst));
    println!("followers         {}", stats.followers);
    println!("bytes answered    {bytes}");
    println!("wall time         {:.1} ms", wall.as_secs_f64() * 1e3);
    println!(
        "fan-out           {:.1} ms (origin return -> last answer)",
        last.duration_since(returned).as_secs_f64() * 1e3
    );
    println!("flights left      {}", layer.flights_in_progress());
}
