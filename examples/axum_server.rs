//! A product API in front of a slow SQLite query, with the coalescing layer
//! in front of the query and Prometheus metrics beside it.
//!
//! `GET /products/{id}` reads one product from an embedded SQLite database
//! (seeded at start-up) and answers JSON, or `404` for an unknown id. Every
//! query takes `--query-ms` longer than it needs to, to stand for a slow query.
//! The product route is wrapped in a [`CoalesceLayer`], so a burst of identical
//! requests costs one query: the first request leads, the others follow it,
//! and for `--ttl-ms` afterwards the answer is served from the cache. With
//! `--redis` (or `REDIS_URL`) the answers and leases live in Redis, and
//! instances that share it also share flights: a burst spread over several
//! instances still costs one query. `GET /metrics` serves Prometheus text: the
//! database query count and the layer's counters.
//!
//! # Run one instance
//! ```text
//! cargo run --example axum_server -- [--listen 127.0.0.1:3000] [--ttl-ms 1000]
//!     [--query-ms 100] [--products 500] [--redis redis://127.0.0.1:6379/]
//!
//! # a burst of 50 identical requests, then the counters
//! seq 50 | xargs -P 50 -I{} curl -s -o /dev/null -w '%{http_code} ' \
//!     http://127.0.0.1:3000/products/7
//! curl -si http://127.0.0.1:3000/products/7 | grep -i x-coalesce    # hit
//! curl -s http://127.0.0.1:3000/metrics | grep -E 'db_queries|coalesce_'
//! ```
//! Expect 50 × `200`, `db_queries_total 1`, `coalesce_requests_total 51`,
//! `coalesce_origin_calls_total 1` and the other 50 requests as followers or
//! hits. The `x-coalesce` header of each response says which it was:
//! `leader`, `follower`, `hit`, `pass` or `bypass`. Once the TTL has passed the
//! next request leads a new query.
//!
//! # Run two instances sharing a Redis
//! ```text
//! redis-server --port 6390 --save '' &
//! cargo run --example axum_server -- --listen 127.0.0.1:3001 --redis redis://127.0.0.1:6390/ &
//! cargo run --example axum_server -- --listen 127.0.0.1:3002 --redis redis://127.0.0.1:6390/ &
//!
//! for i in $(seq 25); do
//!     curl -s -o /dev/null http://127.0.0.1:3001/products/9 &
//!     curl -s -o /dev/null http://127.0.0.1:3002/products/9 &
//! done; wait
//! curl -s http://127.0.0.1:3001/metrics | grep -E 'db_queries|remote_waits'
//! curl -s http://127.0.0.1:3002/metrics | grep -E 'db_queries|remote_waits'
//! ```
//! Expect `db_queries_total 1` on one instance and `0` on the other, which
//! waited on the first one's flight through Redis (`coalesce_remote_waits_total 1`;
//! hits instead, if its first request came after the answer was stored) and
//! answered its requests from it. Cross-instance sharing goes through the
//! stored answer, so it needs a TTL above zero.
//!
//! # Change a product: every instance serves the new name
//! ```text
//! cargo run --example axum_server -- --listen 127.0.0.1:3001 --redis redis://127.0.0.1:6390/ \
//!     --db /tmp/products.db --ttl-ms 60000 &
//! cargo run --example axum_server -- --listen 127.0.0.1:3002 --redis redis://127.0.0.1:6390/ \
//!     --db /tmp/products.db --ttl-ms 60000 &
//! curl -s http://127.0.0.1:3001/products/7; curl -s http://127.0.0.1:3002/products/7
//! curl -s -X PUT --data 'Shiny Lamp' http://127.0.0.1:3001/products/7    # 204
//! curl -s http://127.0.0.1:3002/products/7                               # "Shiny Lamp"
//! ```
//! `PUT /products/{id}` renames the product in SQLite, then purges the tag
//! `product-{id}` that its answers carry: the other instance drops its
//! cached answer when the purge message reaches it, long before the ttl.
//!
//! # Metrics and several apps in one process
//! Each app records into a Prometheus recorder of its own instead of
//! installing a global one, so that two instances can run in one process (the
//! integration test `tests/example_axum_server.rs` does) without adding up
//! their counts. A service with one app per process can install the recorder
//! globally with `PrometheusBuilder::install_recorder` instead.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{counter, describe_counter, Counter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rusqlite::{params, Connection, OptionalExtension};
use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tower_coalesce::{
    CoalesceConfig, CoalesceLayer, HttpKey, Key, Purger, RedisBackend, Stats, Store,
};

/// An error from start-up or from a query.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The command-line help.
pub const USAGE: &str = "\
usage: axum_server [--listen ADDR] [--redis URL | --redis-cluster URL[,URL...]] [--ttl-ms N]
                   [--query-ms N] [--products N] [--db PATH]

  --listen ADDR   address to serve on (default 127.0.0.1:3000)
  --redis URL     share flights and answers through this Redis (default: $REDIS_URL,
                  or none: coalesce within this process only)
  --redis-cluster URL[,URL...]
                  share them through this Redis Cluster instead (some of its nodes)
  --ttl-ms N      how long an answer is kept, in ms (default 1000)
  --query-ms N    extra latency of every database query, in ms (default 100)
  --products N    how many products to seed (default 500)
  --db PATH       keep the products in this SQLite file, shared by the instances
                  that name it (default: in memory, this instance's own)";

/// What the server is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The address to serve on.
    pub listen: SocketAddr,
    /// The Redis to share flights through; `None` keeps them in this process.
    pub redis: Option<String>,
    /// Or the Redis Cluster to share them through: some of its nodes.
    pub redis_cluster: Vec<String>,
    /// How long an answer is kept for later requests.
    pub ttl: Duration,
    /// The artificial latency added to every database query.
    pub query_latency: Duration,
    /// How many products the database is seeded with (ids `1..=products`).
    pub products: u32,
    /// The SQLite file, shared by the instances that name it; `None` for a
    /// database in memory, this instance's own.
    pub db: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            redis: None,
            redis_cluster: Vec::new(),
            ttl: Duration::from_millis(1000),
            query_latency: Duration::from_millis(100),
            products: 500,
            db: None,
        }
    }
}

impl Settings {
    /// Reads the flags (`--flag value` or `--flag=value`); `redis_env` is the
    /// value of `REDIS_URL`, which `--redis` overrides. `Ok(None)` means help
    /// was asked for; `Err` says what is wrong with the arguments.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        redis_env: Option<String>,
    ) -> Result<Option<Self>, String> {
        let mut settings = Settings {
            redis: redis_env.filter(|url| !url.is_empty()),
            ..Settings::default()
        };
        let mut redis_flag = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--listen" => {
                    let v = value()?;
                    settings.listen = v
                        .parse()
                        .map_err(|e| format!("--listen {v}: {e} (expected IP:PORT)"))?;
                }
                "--redis" => {
                    settings.redis = Some(value()?);
                    redis_flag = true;
                }
                "--redis-cluster" => {
                    settings.redis_cluster = value()?.split(',').map(str::to_owned).collect();
                }
                "--ttl-ms" => settings.ttl = Duration::from_millis(number(&flag, &value()?)?),
                "--query-ms" => {
                    settings.query_latency = Duration::from_millis(number(&flag, &value()?)?);
                }
                "--products" => settings.products = number(&flag, &value()?)?,
                "--db" => settings.db = Some(value()?.into()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if !settings.redis_cluster.is_empty() {
            // `--redis-cluster` replaces `REDIS_URL`, not `--redis`.
            if settings.redis.is_some() && redis_flag {
                return Err("--redis and --redis-cluster: give one".into());
            }
            settings.redis = None;
        }
        Ok(Some(settings))
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value}: expected a whole number"))
}

/// The product table behind one SQLite connection, counting its queries.
///
/// The connection is synchronous, so every query runs on Tokio's blocking
/// pool (`spawn_blocking`), never on a worker thread, where it would stall
/// every other request that worker serves. One connection behind a mutex
/// keeps the example small; queries queue on it the way they queue for a
/// saturated connection pool, which is what a stampede does to a real
/// database. A service with concurrent distinct queries would use a pool of
/// connections (r2d2 or deadpool) the same way.
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
    latency: Duration,
    queries: Arc<AtomicU64>,
    metrics: Metrics,
}

impl Database {
    /// A database with products `1..=products` (those not there yet are
    /// added): in the file `path`, or in memory. Each query is counted in
    /// `queries` (which several databases may share) and in the
    /// `db_queries_total` metric of `metrics`.
    pub fn seeded(
        path: Option<&std::path::Path>,
        products: u32,
        latency: Duration,
        queries: Arc<AtomicU64>,
        metrics: Metrics,
    ) -> rusqlite::Result<Self> {
        const ADJECTIVES: [&str; 6] = ["Blue", "Heavy", "Quiet", "Round", "Spare", "Tiny"];
        const NOUNS: [&str; 5] = ["Anvil", "Kettle", "Lamp", "Spanner", "Teapot"];
        let mut conn = match path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        // Instances sharing the file may start together.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS products (
                 id          INTEGER PRIMARY KEY,
                 name        TEXT    NOT NULL,
                 price_cents INTEGER NOT NULL
             );",
        )?;
        // One transaction: a commit per row would make start-up slow.
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO products (id, name, price_cents) VALUES (?1, ?2, ?3)",
            )?;
            for id in 1..=products {
                let name = format!(
                    "{} {}",
                    ADJECTIVES[id as usize % ADJECTIVES.len()],
                    NOUNS[id as usize % NOUNS.len()]
                );
                insert.execute(params![id, name, 199 + (i64::from(id) * 37) % 9_800])?;
            }
        }
        tx.commit()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            latency,
            queries,
            metrics,
        })
    }

    /// The product as a JSON object, or `None` if there is no such id.
    pub async fn product_json(&self, id: i64) -> Result<Option<String>, BoxError> {
        let db = self.clone();
        Ok(tokio::task::spawn_blocking(move || db.query_product(id)).await??)
    }

    /// Renames the product; `false` if there is no such id.
    pub async fn rename(&self, id: i64, name: String) -> Result<bool, BoxError> {
        let db = self.clone();
        let changed = tokio::task::spawn_blocking(move || {
            let conn = db.conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.execute(
                "UPDATE products SET name = ?1 WHERE id = ?2",
                params![name, id],
            )
        })
        .await??;
        Ok(changed == 1)
    }

    fn query_product(&self, id: i64) -> rusqlite::Result<Option<String>> {
        // A panic elsewhere cannot leave a rusqlite connection half-changed
        // (statements are reset when dropped), so a poisoned lock is still usable.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.metrics.db_queries.increment(1);
        // The latency is spent here, on the blocking thread and holding the
        // connection, because that is where a slow query spends it: an async
        // sleep before the query would model the wait but not the connection
        // and thread that a stampede of slow queries ties up.
        std::thread::sleep(self.latency);
        // SQLite writes the JSON itself, escaping included.
        let mut query = conn.prepare_cached(
            "SELECT json_object('id', id, 'name', name, 'price_cents', price_cents)
             FROM products WHERE id = ?1",
        )?;
        query.query_row([id], |row| row.get(0)).optional()
    }
}

/// The key of a product request: its method, path and query.
///
/// The default [`HttpKey`] also keys on the authority (the `Host` header), so
/// instances reached under different addresses — `127.0.0.1:3001` and
/// `127.0.0.1:3002` — would never share a flight. A product's answer does not
/// depend on the name the server was reached by, nor on `Accept*` (it is
/// always JSON), so both are left out. The decision to bypass (methods other
/// than `GET`/`HEAD`, a request body, credentials) stays [`HttpKey`]'s.
pub fn product_key() -> HttpKey {
    HttpKey::new().without_authority().vary_only([])
}

/// The app's metrics: a Prometheus recorder of its own, and the handles of
/// the counters it updates.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    db_queries: Counter,
    /// In the order of [`Stats::counters`].
    layer: Arc<[Counter]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every counter registered at zero, so that a
    /// scrape shows them all before the first request.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Registered once through the `metrics` macros against this recorder;
        // the handles then update it from any thread, with no global recorder.
        metrics::with_local_recorder(&recorder, || {
            describe_counter!("db_queries_total", "Queries sent to the database.");
            Self {
                handle,
                db_queries: counter!("db_queries_total"),
                layer: Stats::default()
                    .counters()
                    .into_iter()
                    .map(|(name, _)| counter!(name))
                    .collect(),
            }
        })
    }

    /// The Prometheus text, with the layer's counters brought up to `stats`.
    pub fn render(&self, stats: &Stats) -> String {
        for (counter, (_, value)) in self.layer.iter().zip(stats.counters()) {
            counter.absolute(value);
        }
        self.handle.render()
    }
}

/// Each of the layer's counters as a metric: its name, and its value in `s`
/// (see [`Stats`] for what each one counts).
/// The layer's settings in this example: keep answers for `ttl`, say in
/// `x-coalesce` how each response was produced, and tag each answer with
/// the `Surrogate-Key` it carries (`product-7`), which the layer strips.
/// The `PUT` handler purges by that tag itself — it knows what it changed
/// (a product may also appear in lists tagged with it) — so the layer's
/// own purge of an unsafe request's URL is turned off.
pub fn coalesce_config(ttl: Duration) -> CoalesceConfig {
    CoalesceConfig::new()
        .ttl(ttl)
        .outcome_header("x-coalesce")
        .tag_header(header::HeaderName::from_static("surrogate-key"))
        .invalidate_on_unsafe(false)
}

/// The tag of every answer that shows product `id`.
fn product_tag(id: i64) -> String {
    format!("product-{id}")
}

#[derive(Clone)]
struct AppState {
    db: Database,
    metrics: Metrics,
    layer: CoalesceLayer<HttpKey>,
    purger: Purger<HttpKey>,
}

/// The routes: `GET /products/{id}` behind `layer` and `PUT /products/{id}`
/// (the body is the new name), and `GET /metrics` beside them.
pub fn router(db: Database, metrics: Metrics, layer: CoalesceLayer<HttpKey>) -> Router {
    let purger = layer.purger();
    Router::new()
        .route("/products/{id}", get(product).put(rename))
        // `route_layer` wraps only the routes above it: scrapes are never
        // coalesced, cached or counted as requests, and unmatched paths get
        // the router's own 404 without a flight.
        .route_layer(layer.clone())
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            db,
            metrics,
            layer,
            purger,
        })
}

/// How long start-up waits for the first answer from Redis.
const REDIS_WARM_UP: Duration = Duration::from_secs(2);

/// One instance, wired up but not yet serving.
pub struct App {
    /// The routes, ready for `axum::serve`.
    pub router: Router,
    /// The coalescing layer, for its [`stats`](CoalesceLayer::stats).
    pub layer: CoalesceLayer<HttpKey>,
}

/// Seeds the database, connects to Redis if asked to, and builds the routes.
/// Every query is also counted in `queries`.
pub async fn build(settings: &Settings, queries: Arc<AtomicU64>) -> Result<App, BoxError> {
    let metrics = Metrics::new();
    // A few hundred rows take milliseconds, and nothing is served yet.
    let db = Database::seeded(
        settings.db.as_deref(),
        settings.products,
        settings.query_latency,
        queries,
        metrics.clone(),
    )?;
    let mut config = coalesce_config(settings.ttl);
    let backend = match (&settings.redis, &settings.redis_cluster[..]) {
        (Some(url), _) => Some(RedisBackend::connect(url.clone()).await?),
        (None, []) => None,
        (None, nodes) => Some(RedisBackend::connect_cluster(nodes.to_vec()).await?),
    };
    if let Some(backend) = backend {
        // The connection opens on first use, and the first use would be the
        // first burst's lookups: on a busy machine, connecting can outlast
        // `backend_timeout`, and those flights would go on without Redis and
        // query once per instance. A lookup now opens it. A Redis that is
        // down is still no error: the layer coalesces within this instance
        // and the connection is retried as requests come.
        let warm_up = Key::from("axum_server:warm-up");
        match tokio::time::timeout(REDIS_WARM_UP, backend.lookup(&warm_up)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => eprintln!("Redis is not reachable yet: {error}"),
            Err(_) => eprintln!("Redis did not answer within {REDIS_WARM_UP:?}"),
        }
        config = config.backend(backend);
    }
    let layer = CoalesceLayer::builder(config)
        .extractor(product_key())
        .build()?;
    Ok(App {
        router: router(db, metrics, layer.clone()),
        layer,
    })
}

async fn product(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match state.db.product_json(id).await {
        Ok(Some(product)) => (
            [
                json[0].clone(),
                (
                    header::HeaderName::from_static("surrogate-key"),
                    product_tag(id).as_str(),
                ),
            ],
            product,
        )
            .into_response(),
        // Kept for the TTL like any answer, so a burst of lookups for an id
        // that does not exist costs one query too.
        Ok(None) => (
            StatusCode::NOT_FOUND,
            json,
            r#"{"error":"no such product"}"#,
        )
            .into_response(),
        Err(error) => {
            eprintln!("product {id}: {error}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Renames product `id` to the request's body, then purges every answer
/// tagged with it, in every instance sharing the Redis: the next `GET` on
/// any of them reads the new name. `204` once both are done.
async fn rename(State(state): State<AppState>, Path(id): Path<i64>, name: String) -> Response {
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return (StatusCode::BAD_REQUEST, "a name is 1 to 200 bytes\n").into_response();
    }
    match state.db.rename(id, name).await {
        Ok(true) => {}
        Ok(false) => return (StatusCode::NOT_FOUND, "no such product\n").into_response(),
        Err(error) => {
            eprintln!("rename {id}: {error}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    match state.purger.purge_tag(&product_tag(id)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            // The data changed; other instances may serve the old name
            // until their answers' ttl ends.
            eprintln!("purge of product {id}: {error}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "renamed, but cached answers were not purged everywhere\n",
            )
                .into_response()
        }
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.layer.stats()),
    )
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let settings = match Settings::parse(std::env::args().skip(1), std::env::var("REDIS_URL").ok())
    {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(problem) => {
            eprintln!("{problem}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let app = build(&settings, Arc::new(AtomicU64::new(0))).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "serving {} products on http://{addr} (query {:?}, ttl {:?}, {})",
        settings.products,
        settings.query_latency,
        settings.ttl,
        // Not the URL itself: it may carry a password.
        if settings.redis.is_some() || !settings.redis_cluster.is_empty() {
            "sharing flights through Redis"
        } else {
            "coalescing within this process"
        }
    );
    println!("  curl -i http://{addr}/products/7\n  curl http://{addr}/metrics");
    axum::serve(listener, app.router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
