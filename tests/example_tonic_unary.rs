//! The `tonic_unary` example's service, coalesced, over real TCP: one handler
//! call per burst of identical unary calls, the same reply or status for every
//! caller, distinct messages kept apart, and large requests passed through.

#[path = "../examples/tonic_unary.rs"]
#[allow(dead_code)]
mod tonic_unary;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tonic_unary::{
    coalesce_layer, connect, serve, Catalog, CatalogClient, CatalogServer, GetProductRequest,
    Product, COALESCED_METHODS, GET_PRODUCT, MAX_KEYED_REQUEST_BYTES,
};
use tower::{Layer, ServiceExt};
use tower_coalesce::grpc::{BufferLayer, GrpcKey};
use tower_coalesce::{CoalesceConfig, CoalesceLayer};

/// A catalog that counts its calls and holds each one until the gate opens,
/// so a burst is sure to gather behind its flight. Product 0 does not exist.
#[derive(Debug)]
struct GatedCatalog {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl GatedCatalog {
    fn closed() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        })
    }

    fn open(&self) {
        self.gate.add_permits(1 << 20);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Catalog for GatedCatalog {
    async fn get_product(
        &self,
        request: tonic::Request<GetProductRequest>,
    ) -> Result<tonic::Response<Product>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _permit = self.gate.acquire().await.expect("the gate is never closed");
        let request = request.into_inner();
        if request.id == 0 {
            return Err(Status::not_found("no product 0"));
        }
        let field_bytes: usize = request.fields.iter().map(String::len).sum();
        Ok(tonic::Response::new(Product {
            id: request.id,
            name: format!("product {} ({field_bytes} bytes of fields)", request.id),
            fields_requested: request.fields.len() as u32,
        }))
    }
}

struct Running {
    client: CatalogClient,
    layer: CoalesceLayer<GrpcKey>,
    server: tokio::task::JoinHandle<()>,
}

async fn start(catalog: Arc<GatedCatalog>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = coalesce_layer();
    let server = tokio::spawn({
        let layer = layer.clone();
        async move { serve(listener, catalog, layer).await.unwrap() }
    });
    let client = connect(addr).await.unwrap();
    Running {
        client,
        layer,
        server,
    }
}

/// What one call got: its reply or status, and its `x-coalesce` outcome.
type Answer = (Result<Product, (Code, String)>, String);

fn call(client: &CatalogClient, request: GetProductRequest) -> tokio::task::JoinHandle<Answer> {
    let mut client = client.clone();
    tokio::spawn(async move {
        let outcome = |m: &tonic::metadata::MetadataMap| {
            m.get("x-coalesce")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        };
        match client.get_product(request).await {
            Ok(reply) => {
                let outcome = outcome(reply.metadata());
                (Ok(reply.into_inner()), outcome)
            }
            Err(status) => {
                let outcome = outcome(status.metadata());
                (Err((status.code(), status.message().to_owned())), outcome)
            }
        }
    })
}

fn product(id: u64) -> GetProductRequest {
    GetProductRequest {
        id,
        fields: vec!["name".into()],
    }
}

/// Waits until `n` calls follow a flight: only then is the burst known to
/// have gathered. Bounded, so a burst that never gathers fails the test.
async fn followers_reach<E>(layer: &CoalesceLayer<E>, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while layer.stats().followers < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never gathered: {:?}",
            layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn answers(calls: Vec<tokio::task::JoinHandle<Answer>>) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

fn count(answers: &[Answer], outcome: &str) -> usize {
    answers.iter().filter(|(_, o)| o == outcome).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_calls_cost_one_handler_call() {
    const N: usize = 1_000;
    let catalog = GatedCatalog::closed();
    let run = start(catalog.clone()).await;

    let calls: Vec<_> = (0..N).map(|_| call(&run.client, product(7))).collect();
    followers_reach(&run.layer, (N - 1) as u64).await;
    catalog.open();
    let answers = answers(calls).await;

    assert_eq!(catalog.calls(), 1);
    let expected = Product {
        id: 7,
        name: "product 7 (4 bytes of fields)".into(),
        fields_requested: 1,
    };
    for (reply, _) in &answers {
        assert_eq!(reply.as_ref(), Ok(&expected));
    }
    // Followers decoded a reply: its `grpc-status: 0` trailer reached them.
    assert_eq!(count(&answers, "leader"), 1);
    assert_eq!(count(&answers, "follower"), N - 1);
    assert_eq!(run.layer.flights_in_progress(), 0);
    run.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_messages_are_not_merged() {
    const PER_ID: usize = 50;
    let catalog = GatedCatalog::closed();
    let run = start(catalog.clone()).await;

    let sevens: Vec<_> = (0..PER_ID).map(|_| call(&run.client, product(7))).collect();
    let eights: Vec<_> = (0..PER_ID).map(|_| call(&run.client, product(8))).collect();
    followers_reach(&run.layer, 2 * (PER_ID as u64 - 1)).await;
    catalog.open();

    for (id, calls) in [(7, sevens), (8, eights)] {
        let answers = answers(calls).await;
        for (reply, _) in &answers {
            assert_eq!(reply.as_ref().map(|p| p.id), Ok(id));
        }
        assert_eq!(count(&answers, "leader"), 1);
    }
    assert_eq!(catalog.calls(), 2, "one handler call per distinct message");
    assert_eq!(run.layer.stats().flights, 2);
    run.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_error_reaches_every_caller_of_its_flight() {
    const N: usize = 500;
    let catalog = GatedCatalog::closed();
    let run = start(catalog.clone()).await;

    let calls: Vec<_> = (0..N).map(|_| call(&run.client, product(0))).collect();
    followers_reach(&run.layer, (N - 1) as u64).await;
    catalog.open();
    let answers = answers(calls).await;

    assert_eq!(catalog.calls(), 1);
    for (reply, _) in &answers {
        assert_eq!(
            reply.as_ref().unwrap_err(),
            &(Code::NotFound, "no product 0".to_owned())
        );
    }
    assert_eq!(count(&answers, "follower"), N - 1);
    assert_eq!(run.layer.flights_in_progress(), 0);
    run.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_bound_bypasses_with_its_body_intact() {
    const CALLS: usize = 3;
    let catalog = GatedCatalog::closed();
    catalog.open();
    let run = start(catalog.clone()).await;

    // Distinct fields, so a lost or reordered chunk would change the sum or
    // fail to decode.
    let fields: Vec<String> = (0..4_000).map(|i| format!("attribute-{i:08}")).collect();
    let field_bytes: usize = fields.iter().map(String::len).sum();
    let request = GetProductRequest { id: 9, fields };
    assert!(request.encoded_len() > MAX_KEYED_REQUEST_BYTES);

    let calls: Vec<_> = (0..CALLS)
        .map(|_| call(&run.client, request.clone()))
        .collect();
    let answers = answers(calls).await;

    for (reply, outcome) in &answers {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply.id, 9);
        assert_eq!(reply.fields_requested, 4_000);
        assert_eq!(
            reply.name,
            format!("product 9 ({field_bytes} bytes of fields)")
        );
        assert_eq!(outcome, "bypass");
    }
    assert_eq!(catalog.calls(), CALLS);
    assert_eq!(run.layer.stats().bypasses, CALLS as u64);
    run.server.abort();
}

/// A `GetProduct` request as it travels: one length-prefixed message.
fn grpc_request(request: &GetProductRequest) -> http::Request<tonic::body::Body> {
    let mut framed = BytesMut::new();
    framed.put_u8(0);
    framed.put_u32(request.encoded_len() as u32);
    request.encode(&mut framed).unwrap();
    http::Request::post(GET_PRODUCT)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(framed.freeze())))
        .unwrap()
}

/// The head of a response, its body and its trailers.
async fn read<B>(res: http::Response<B>) -> (http::response::Parts, Bytes, Option<http::HeaderMap>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (head, body) = res.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (head, collected.to_bytes(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_and_hits_get_the_grpc_status_of_the_answer() {
    const N: usize = 10;
    let layer = CoalesceLayer::builder(
        CoalesceConfig::new()
            .methods([http::Method::POST])
            .ttl(Duration::from_secs(60))
            .outcome_header("x-coalesce"),
    )
    .extractor(GrpcKey::new(COALESCED_METHODS.iter().copied()))
    .build()
    .unwrap();
    let buffer = BufferLayer::new(COALESCED_METHODS.iter().copied()).limit(MAX_KEYED_REQUEST_BYTES);
    let mut served = Vec::new();

    for (round, id) in [7, 0].into_iter().enumerate() {
        let catalog = GatedCatalog::closed();
        let svc = buffer.layer(layer.layer(CatalogServer::from_arc(catalog.clone())));
        let calls: Vec<_> = (0..N)
            .map(|_| tokio::spawn(svc.clone().oneshot(grpc_request(&product(id)))))
            .collect();
        followers_reach(&layer, ((round + 1) * (N - 1)) as u64).await;
        catalog.open();
        let mut bodies = Vec::new();
        for call in calls {
            let (head, body, trailers) = read(call.await.unwrap().unwrap()).await;
            assert_eq!(head.status, 200);
            if id == 0 {
                // Trailers-only: the status is in the head.
                assert_eq!(head.headers["grpc-status"], "5");
                assert_eq!(head.headers["grpc-message"], "no%20product%200");
            } else {
                let trailers = trailers.expect("every caller gets the trailers");
                assert_eq!(trailers["grpc-status"], "0");
            }
            bodies.push(body);
        }
        bodies.dedup();
        assert_eq!(bodies.len(), 1, "every caller got the same bytes");
        assert_eq!(catalog.calls(), 1);
        served.push((svc, catalog));
    }

    // A stored answer keeps its trailers too.
    let (svc, catalog) = &served[0];
    let res = svc
        .clone()
        .oneshot(grpc_request(&product(7)))
        .await
        .unwrap();
    let (head, _, trailers) = read(res).await;
    assert_eq!(head.headers["x-coalesce"], "hit");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(catalog.calls(), 1);
}
