//! A real `redis-server` for the tests and benchmarks of tower-coalesce:
//! started on a free loopback port, stopped when dropped. A machine without
//! `redis-server` fails the test with a message that says how to install it;
//! it never skips.

mod relay;
pub mod tls;

pub use relay::Relay;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not start, with a message that
    /// says how to install it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with these extra arguments (the plain port stays open
    /// on loopback for readiness checks).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start_with(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server with these extra arguments, or says why it could not.
    pub fn try_start_with(extra: &[&str]) -> Result<Self, String> {
        let mut last_error = String::new();
        // A free port can be taken between finding it and binding it: retry.
        for _ in 0..5 {
            match Self::try_start_on(free_port(), extra) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start: {last_error}"))
    }

    /// Starts a server on this port (which must be free).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port, &[]).unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
    }

    /// Starts a server on this port with these extra arguments, or says why
    /// it could not.
    pub fn try_start_on(port: u16, extra: &[&str]) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}). Install it: `apt-get install -y redis-server` \
                     (bash scripts/test.sh does this)"
                )
            })?;
        let mut server = RedisServer { child, port };
        server.wait_ready().map(|()| server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} (port {} taken?)", self.port));
            }
            if let Ok(mut conn) = client.get_connection() {
                match redis::cmd("PING").query::<String>(&mut conn) {
                    Ok(_) => return Ok(()),
                    // A server that asks for a password is up.
                    Err(e) if e.code() == Some("NOAUTH") => return Ok(()),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                return Err("no PONG within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and starts a new one on the same port, with the
    /// same arguments as [`start`](Self::start): everything it held is
    /// gone, as after a restart without persistence. Clients reconnect to
    /// the same URL.
    ///
    /// # Panics
    /// If the new server does not start.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        // The port was this server's a moment ago; retry briefly while the
        // kernel lets it go.
        let mut last_error = String::new();
        for _ in 0..50 {
            match Self::try_start_on(port, &[]) {
                Ok(mut server) => {
                    // The old child, already reaped, goes with `server`.
                    std::mem::swap(self, &mut server);
                    return;
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not restart on port {port}: {last_error}");
    }

    /// The server's process id, for tests that signal it (pause, resume).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Resets the server's statistics (`CONFIG RESETSTAT`).
    ///
    /// # Panics
    /// If the server does not answer.
    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.conn())
            .expect("CONFIG RESETSTAT");
    }

    /// How many times the server ran commands since its statistics were
    /// reset (`INFO commandstats`), less those named in `except`; 0 if it
    /// does not answer.
    pub fn commands(&self, except: &[&str]) -> u64 {
        let info: String = self
            .try_conn()
            .and_then(|mut conn| redis::cmd("INFO").arg("commandstats").query(&mut conn).ok())
            .unwrap_or_default();
        command_calls(&info, except)
    }

    /// A plain synchronous connection, or `None` if the server does not
    /// take one (stopped, killed).
    pub fn try_conn(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }

    /// A plain synchronous connection, for the test's own inspection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Redis Cluster on loopback: `masters` masters with `replicas`
/// replicas each, every one a `redis-server --cluster-enabled yes` child
/// process on free ports, joined by `redis-cli --cluster create`. Stopped
/// (and its node files removed) when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Three masters with a replica each, and a node timeout of 5 s: short
    /// enough for a failover within seconds, long enough that a loaded
    /// two-core machine does not fail nodes over by itself.
    ///
    /// # Panics
    /// If `redis-server` or `redis-cli` is missing, or the cluster does not
    /// come up, with a message that says why.
    pub fn start() -> Self {
        Self::start_with(3, 1, Duration::from_secs(5))
    }

    /// `masters` masters with `replicas` replicas each, failed over after
    /// `node_timeout` without an answer.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with(masters: usize, replicas: usize, node_timeout: Duration) -> Self {
        Self::start_custom(masters, replicas, node_timeout, &|_| Vec::new())
    }

    /// As [`start_with`](Self::start_with), each node `i` (0-based) also
    /// given the arguments `node_args(i)` (a TLS port, say; the plain port
    /// stays open on loopback for the set-up and the test's inspection).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_custom(
        masters: usize,
        replicas: usize,
        node_timeout: Duration,
        node_args: &dyn Fn(usize) -> Vec<String>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "coalesce-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cannot make the cluster's directory");
        let timeout = node_timeout.as_millis().to_string();
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let port = free_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let custom = node_args(i);
            let mut args: Vec<&str> = custom.iter().map(String::as_str).collect();
            let bus = free_port().to_string();
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                &timeout,
                // Replicas sync at once, not after Redis's 5 s wait
                // for more replicas to share the transfer.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                node_dir.to_str().unwrap(),
            ]);
            let node = RedisServer::try_start_on(port, &args)
                .unwrap_or_else(|e| panic!("a cluster node did not start: {e}"));
            nodes.push(node);
        }
        let cluster = RedisCluster { nodes, dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-cli ({e}). Install it: `apt-get install -y redis-server` \
                     (bash scripts/test.sh does this)"
                )
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ready(masters);
        cluster
    }

    /// Waits until every node sees every slot served, every node known and
    /// the masters' replicas in place.
    fn wait_ready(&self, masters: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.nodes.iter().all(|node| {
                let Ok(info) = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut node.conn())
                else {
                    return false;
                };
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .map(str::trim)
                        .unwrap_or_default()
                        .to_owned()
                };
                // A replica that never synced with its master cannot take
                // over from it.
                let replica_synced = || {
                    let Ok(replication) = redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut node.conn())
                    else {
                        return false;
                    };
                    !replication.contains("role:slave")
                        || replication.contains("master_link_status:up")
                };
                field("cluster_state") == "ok"
                    && field("cluster_slots_ok") == "16384"
                    && field("cluster_known_nodes") == self.nodes.len().to_string()
                    && replica_synced()
            }) && self.masters().len() == masters;
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster was not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://127.0.0.1:<port>/` of every node, masters and replicas.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes that are masters now (as the first node that answers
    /// sees it), each with the slot ranges it serves.
    pub fn masters(&self) -> Vec<(&RedisServer, Vec<(u16, u16)>)> {
        let Some(view) = self.nodes.iter().find_map(|node| {
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query::<String>(&mut node.try_conn()?)
                .ok()
        }) else {
            return Vec::new();
        };
        let mut masters = Vec::new();
        for line in view.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(port) = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let slots = fields[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect::<Vec<_>>();
            if slots.is_empty() {
                continue;
            }
            if let Some(node) = self.nodes.iter().find(|n| n.port == port) {
                masters.push((node, slots));
            }
        }
        masters
    }

    /// The master serving `slot` now.
    pub fn master_of(&self, slot: u16) -> Option<&RedisServer> {
        self.masters()
            .into_iter()
            .find(|(_, slots)| slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(node, _)| node)
    }

    /// The slot of `name`, as the cluster computes it (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, name: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(name)
            .query(&mut self.nodes[0].conn())
            .expect("CLUSTER KEYSLOT failed")
    }

    /// How many times the masters ran commands, summed over `INFO
    /// commandstats` (replicas replay writes and are not counted).
    /// Commands whose name is in `except` are left out.
    pub fn master_commands(&self, except: &[&str]) -> u64 {
        self.masters()
            .iter()
            .map(|(node, _)| node.commands(except))
            .sum()
    }

    /// Resets every node's statistics (`CONFIG RESETSTAT`).
    pub fn reset_stats(&self) {
        for node in &self.nodes {
            node.reset_stats();
        }
    }
}

/// The cluster slot of `name`: CRC16 (XMODEM) of its hash tag (or of the
/// whole name, without one) modulo 16,384, as Redis Cluster computes it —
/// without asking a node, for tests that look through many names.
pub fn slot(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let tag = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(bytes)) % 16_384
}

/// Calls in an `INFO commandstats` answer, without the commands in `except`
/// (lowercase names, as `cmdstat_<name>` gives them).
pub fn command_calls(info: &str, except: &[&str]) -> u64 {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, stats) = l.split_once(':')?;
            if except.contains(&name) {
                return None;
            }
            stats
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
