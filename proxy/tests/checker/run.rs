//! Runs one history: starts Redis, the origin and the proxy processes,
//! carries out the schedule while recording every operation, lifts the
//! faults, lets the propagation bound pass, reads every resource from every
//! instance once more, and stops everything.

use crate::deployment::Deployment;
use crate::history::{Answer, Get, History, Purge, Window, PROPAGATION_IN_FAULT};
use crate::origin::{Origin, RESOURCES, TAGS};
use crate::schedule::{self, Fault, Shape, Step};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The schedule's size: three instances, 30 steps.
const SHAPE: Shape = Shape {
    instances: 3,
    steps: 30,
};

/// No request may take longer: one that does is recorded as hung.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

const TOKEN: &str = "checker-purge-token-0123456789";

/// What many histories came to.
#[derive(Debug, Default)]
pub struct Summary {
    pub histories: usize,
    pub operations: usize,
    pub faults: usize,
    /// (seed, violation).
    pub violations: Vec<(u64, String)>,
}

/// Runs the histories of `seeds`, `parallel` at a time, on one Redis
/// server or (`cluster`) a cluster.
pub async fn many(bin: &str, seeds: &[u64], parallel: usize, cluster: bool) -> Summary {
    let summary = Arc::new(Mutex::new(Summary::default()));
    // Popped from the end: reversed, so the seeds run in order.
    let queue: Vec<u64> = seeds.iter().rev().copied().collect();
    let queue = Arc::new(Mutex::new(queue));
    let workers = (0..parallel).map(|_| {
        let (summary, queue, bin) = (summary.clone(), queue.clone(), bin.to_owned());
        tokio::spawn(async move {
            loop {
                let Some(seed) = queue.lock().unwrap().pop() else {
                    return;
                };
                let history = one(&bin, seed, cluster).await;
                let violations = history.violations();
                if violations.is_empty() {
                    // Kept only where there is something to read: a long
                    // run logs every history.
                    forget_logs(seed, cluster);
                } else {
                    show_logs(seed, cluster);
                }
                let mut summary = summary.lock().unwrap();
                summary.histories += 1;
                summary.operations += history.gets.len() + history.purges.len();
                summary.faults += history.windows.len();
                summary
                    .violations
                    .extend(violations.into_iter().map(|v| (seed, v)));
            }
        })
    });
    for worker in futures_util::future::join_all(workers).await {
        worker.expect("a history panicked");
    }
    Arc::try_unwrap(summary).unwrap().into_inner().unwrap()
}

/// A proxy process, killed when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    /// Starts one; with `log`, its debug log goes to that file.
    fn start(
        bin: &str,
        origin: SocketAddr,
        redis: &[String],
        token_file: &str,
        log: Option<std::path::PathBuf>,
    ) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], coalesce_test_redis::free_port()));
        let stderr = match &log {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display())),
            ),
            None => Stdio::null(),
        };
        let child = Command::new(bin)
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://{origin}")])
            .args(redis)
            .args(["--public-host", "shop.example"])
            .args(["--lease-ms", "1000"])
            .args(["--purge-token-file", token_file])
            .env(
                "RUST_LOG",
                std::env::var("CHECKER_RUST_LOG")
                    .unwrap_or_else(|_| "tower_coalesce=debug,coalesce_proxy=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let mut instance = Instance { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = instance.child.try_wait() {
                panic!("{bin} exited with {status} before listening");
            }
            assert!(Instant::now() < deadline, "{bin} never listened on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        instance
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        signal(self.pid(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the `n`th instance of `seed`'s history logs: a file in the
/// directory `CHECKER_LOGS` names, if it names one (the cluster's histories
/// apart from the server's, which run at once with the same seeds).
fn log(seed: u64, cluster: bool, n: usize) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CHECKER_LOGS")?;
    std::fs::create_dir_all(&dir).ok()?;
    let on = if cluster { "cluster-" } else { "" };
    Some(std::path::Path::new(&dir).join(format!("{on}{seed}-instance-{n}.log")))
}

/// The logs kept of `seed`'s instances, in order: `(instance, path)`.
fn kept_logs(seed: u64, cluster: bool) -> impl Iterator<Item = (usize, std::path::PathBuf)> {
    (0..).map_while(move |n| Some((n, log(seed, cluster, n).filter(|path| path.exists())?)))
}

/// Prints what the logs of `seed`'s instances say, if they were kept: the
/// warnings and errors, and the last lines. On a machine that cannot be
/// reached afterwards (CI), the test's output is all there is to read.
fn show_logs(seed: u64, cluster: bool) {
    const TAIL: usize = 60;
    for (n, path) in kept_logs(seed, cluster) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.len().saturating_sub(TAIL);
        println!("--- seed {seed}, instance {n}: {}", path.display());
        let warned = lines[..tail]
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "));
        for line in warned.take(40) {
            println!("  {line}");
        }
        println!("  ... its last {} lines:", lines.len() - tail);
        for line in &lines[tail..] {
            println!("  {line}");
        }
    }
}

/// Removes the logs of `seed`'s instances, if any were kept.
fn forget_logs(seed: u64, cluster: bool) {
    for (_, path) in kept_logs(seed, cluster) {
        let _ = std::fs::remove_file(path);
    }
}

/// Sends the signal `name` to `pid`.
pub(crate) fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Everything one history runs against.
struct Fleet {
    seed: u64,
    /// On a cluster, rather than one server.
    cluster: bool,
    /// Instances started so far.
    started: usize,
    base: Instant,
    origin: Origin,
    redis: Deployment,
    instances: Vec<Instance>,
    bin: String,
    token_path: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    history: Arc<Mutex<History>>,
    /// Faults being lifted in the background.
    lifting: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs the history of `seed`, on one Redis server or (`cluster`) a
/// cluster.
pub async fn one(bin: &str, seed: u64, cluster: bool) -> History {
    let redis = Deployment::start(cluster).await;
    let base = Instant::now();
    let origin = Origin::start(base).await;
    // Named by the deployment too: the server and cluster checks run at
    // once in one process, and draw the same seeds when they start within
    // one second; one history removing the other's token file made its
    // next instance exit before listening.
    let token_file = std::env::temp_dir().join(format!(
        "coalesce-checker-token-{}-{}-{seed}",
        std::process::id(),
        if cluster { "cluster" } else { "server" },
    ));
    std::fs::write(&token_file, TOKEN).unwrap();
    let token_path = token_file.to_str().unwrap().to_owned();
    let instances = (0..SHAPE.instances)
        .map(|i| {
            Instance::start(
                bin,
                origin.addr,
                &redis.args(),
                &token_path,
                log(seed, cluster, i),
            )
        })
        .collect();
    let mut fleet = Fleet {
        seed,
        cluster,
        started: SHAPE.instances,
        base,
        origin,
        redis,
        instances,
        bin: bin.to_owned(),
        token_path,
        client: Client::builder(TokioExecutor::new()).build_http(),
        history: Arc::default(),
        lifting: Vec::new(),
    };
    let verbose = std::env::var_os("CHECKER_VERBOSE").is_some();
    if verbose {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        println!("seed {seed}: time 0 is {since:?} since 1970");
    }
    for step in schedule::draw(seed, SHAPE) {
        if verbose {
            println!("{:>8.3?} {step:?}", fleet.now());
        }
        fleet.step(step).await;
    }
    for lifting in std::mem::take(&mut fleet.lifting) {
        lifting.await.unwrap();
    }
    // Every fault lifted: past the bound, every purge has reached every
    // instance, and every stale window counts as it should.
    tokio::time::sleep(PROPAGATION_IN_FAULT + Duration::from_millis(500)).await;
    let sweep = (0..SHAPE.instances)
        .flat_map(|i| (0..RESOURCES.len()).map(move |r| (i, r)))
        .collect();
    fleet.step(Step::Gets(sweep)).await;
    let _ = std::fs::remove_file(&token_file);
    let mut history = std::mem::take(&mut *fleet.history.lock().unwrap());
    history.calls = fleet.origin.calls();
    history
}

impl Fleet {
    fn now(&self) -> Duration {
        self.base.elapsed()
    }

    async fn step(&mut self, step: Step) {
        match step {
            Step::Gets(gets) => {
                let gets = gets.into_iter().map(|(i, r)| self.get(i, r));
                let gets = futures_util::future::join_all(gets).await;
                self.history.lock().unwrap().gets.extend(gets);
            }
            Step::Write { instance, resource } => {
                let start = self.now();
                let status = self.send(instance, Method::PUT, resource, None).await;
                let promised = self.origin.version(resource);
                self.record_purge(
                    format!("PUT r{resource}"),
                    instance,
                    vec![(resource, promised)],
                    start,
                    status,
                );
            }
            Step::PurgeUrl { instance, resource } => {
                let promised = self.origin.bump(resource);
                let start = self.now();
                let purge = Method::from_bytes(b"PURGE").unwrap();
                let status = self.send(instance, purge, resource, None).await;
                self.record_purge(
                    format!("PURGE r{resource}"),
                    instance,
                    vec![(resource, promised)],
                    start,
                    status,
                );
            }
            Step::PurgeTag { instance, tag } => {
                let tag = TAGS[tag];
                let promises: Vec<(usize, u64)> = RESOURCES
                    .iter()
                    .enumerate()
                    .filter(|(_, spec)| spec.tag == tag)
                    .map(|(r, _)| (r, self.origin.bump(r)))
                    .collect();
                let start = self.now();
                let purge = Method::from_bytes(b"PURGE").unwrap();
                let status = self.send(instance, purge, 0, Some(tag)).await;
                self.record_purge(
                    format!("PURGE tag {tag}"),
                    instance,
                    promises,
                    start,
                    status,
                );
            }
            Step::Sleep(pause) => tokio::time::sleep(pause).await,
            Step::Fault(fault) => self.fault(fault).await,
        }
    }

    fn record_purge(
        &self,
        what: String,
        instance: usize,
        promises: Vec<(usize, u64)>,
        start: Duration,
        status: Option<u16>,
    ) {
        let purge = Purge {
            what,
            instance,
            promises,
            start,
            end: self.now(),
            ok: status.is_some_and(|s| (200..300).contains(&s)),
        };
        self.history.lock().unwrap().purges.push(purge);
    }

    async fn get(&self, instance: usize, resource: usize) -> Get {
        let start = self.now();
        let uri = format!("http://{}/r/{resource}", self.instances[instance].addr);
        let req = Request::get(uri)
            .header("host", "shop.example")
            .body(Empty::new())
            .unwrap();
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            let outcome = res
                .headers()
                .get("x-coalesce")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Answer::parse(status, outcome, &body))
        };
        let result = tokio::time::timeout(REQUEST_LIMIT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_LIMIT:?}")));
        Get {
            instance,
            resource,
            start,
            end: self.now(),
            result,
        }
    }

    /// Sends a write or purge; its status, `None` if none came.
    async fn send(
        &self,
        instance: usize,
        method: Method,
        resource: usize,
        tag: Option<&str>,
    ) -> Option<u16> {
        let uri = format!("http://{}/r/{resource}", self.instances[instance].addr);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "shop.example")
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(tag) = tag {
            req = req.header("x-purge-tag", tag);
        }
        let req = req.body(Empty::new()).unwrap();
        let res = tokio::time::timeout(REQUEST_LIMIT, self.client.request(req)).await;
        let res = res.ok()?.ok()?;
        let status = res.status().as_u16();
        // A write whose purge failed says so: it promises nothing.
        let purged = !res.headers().contains_key("coalesce-purge");
        let body = res.into_body().collect().await.ok()?.to_bytes();
        if std::env::var_os("CHECKER_VERBOSE").is_some() {
            println!(
                "{:>8.3?}   -> {status} purged={purged} {}",
                self.now(),
                String::from_utf8_lossy(&body).trim()
            );
        }
        purged.then_some(status)
    }

    async fn fault(&mut self, fault: Fault) {
        let start = self.now();
        let window = |lifted| Window {
            fault,
            start,
            lifted,
        };
        match fault {
            Fault::RestartRedis => {
                self.redis.restart().await;
                let lifted = self.now();
                self.history.lock().unwrap().windows.push(window(lifted));
            }
            Fault::FlushAll => {
                self.redis.flush_all().await;
                let lifted = self.now();
                self.history.lock().unwrap().windows.push(window(lifted));
            }
            Fault::PauseRedis(pause) => {
                if let Some(pid) = self.redis.pausable() {
                    self.pause(pid, pause, window(start + pause));
                }
            }
            Fault::PauseInstance(instance, pause) => {
                let pid = self.instances[instance].pid();
                self.pause(pid, pause, window(start + pause));
            }
            Fault::CutRedisConnections => {
                self.redis.cut().await;
                let lifted = self.now();
                self.history.lock().unwrap().windows.push(window(lifted));
            }
            Fault::KillInstance(instance) => {
                // Replaced by a new process on a new port; the old one's
                // leases run out by themselves.
                let started = Instance::start(
                    &self.bin,
                    self.origin.addr,
                    &self.redis.args(),
                    &self.token_path,
                    log(self.seed, self.cluster, self.started),
                );
                self.started += 1;
                drop(std::mem::replace(&mut self.instances[instance], started));
                let lifted = self.now();
                self.history.lock().unwrap().windows.push(window(lifted));
            }
            Fault::FailOrigin(pause) => {
                self.origin.fail_for(pause);
                self.history
                    .lock()
                    .unwrap()
                    .windows
                    .push(window(start + pause));
            }
        }
    }

    /// Stops `pid` now and resumes it after `pause`, in the background.
    fn pause(&mut self, pid: u32, pause: Duration, window: Window) {
        signal(pid, "STOP");
        self.history.lock().unwrap().windows.push(window);
        self.lifting.push(tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            signal(pid, "CONT");
        }));
    }
}
