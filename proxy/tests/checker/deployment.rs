//! The Redis a history's instances share — one server, reached through a
//! relay the checker controls, or a cluster of three masters with a
//! replica each — and the faults done to it.

use coalesce_test_redis::{RedisCluster, RedisServer, Relay};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One server or a cluster.
pub enum Deployment {
    Server {
        redis: Arc<Mutex<Option<RedisServer>>>,
        port: u16,
        /// What the instances reach it through.
        relay: Relay,
    },
    Cluster {
        cluster: Arc<RedisCluster>,
        /// The master of the purge order's slot was killed (once a
        /// history: its replica has no replica of its own).
        killed: bool,
    },
}

/// The purge order's name, whose slot's master the cluster's faults hit.
const PURGE_SEQUENCE: &str = "coalesce:3:{purge}:seq";

impl Deployment {
    /// A server, or (`cluster`) a cluster whose nodes fail over after 2 s.
    pub async fn start(cluster: bool) -> Self {
        if cluster {
            let cluster = tokio::task::spawn_blocking(|| {
                RedisCluster::start_with(3, 1, Duration::from_secs(2))
            })
            .await
            .unwrap();
            return Deployment::Cluster {
                cluster: Arc::new(cluster),
                killed: false,
            };
        }
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let port = redis.port;
        Deployment::Server {
            redis: Arc::new(Mutex::new(Some(redis))),
            port,
            relay: Relay::start(port),
        }
    }

    /// The proxy's arguments that name it.
    pub fn args(&self) -> Vec<String> {
        match self {
            Deployment::Server { relay, .. } => vec!["--redis".into(), relay.url()],
            Deployment::Cluster { cluster, .. } => {
                vec!["--redis-cluster".into(), cluster.urls().join(",")]
            }
        }
    }

    /// A server restarted without its data; on a cluster, the master of
    /// the purge order's slot killed and replaced by its replica (which
    /// may lag it), once — after that, as [`flush_all`](Self::flush_all).
    /// Returns once it is over.
    pub async fn restart(&mut self) {
        match self {
            Deployment::Server { redis, .. } => {
                let redis = redis.clone();
                tokio::task::spawn_blocking(move || {
                    redis.lock().unwrap().as_mut().unwrap().restart();
                })
                .await
                .unwrap();
            }
            Deployment::Cluster { killed: true, .. } => self.flush_all().await,
            Deployment::Cluster { cluster, killed } => {
                *killed = true;
                let cluster = cluster.clone();
                tokio::task::spawn_blocking(move || {
                    let slot = cluster.slot_of(PURGE_SEQUENCE);
                    let Some(master) = cluster.master_of(slot).map(|m| (m.port, m.pid())) else {
                        return;
                    };
                    crate::run::signal(master.1, "KILL");
                    // Until its replica serves the slot.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < deadline {
                        if cluster.master_of(slot).is_some_and(|m| m.port != master.0) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .await
                .unwrap();
            }
        }
    }

    /// `FLUSHALL` on the server, or on every master.
    pub async fn flush_all(&self) {
        let nodes = self.masters_ports();
        tokio::task::spawn_blocking(move || {
            for port in nodes {
                if let Ok(mut conn) = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .and_then(|c| c.get_connection())
                {
                    let _: Result<(), _> = redis::cmd("FLUSHALL").query(&mut conn);
                }
            }
        })
        .await
        .unwrap();
    }

    /// Every connection to Redis dropped: through the relay, or `CLIENT
    /// KILL` on every master.
    pub async fn cut(&self) {
        match self {
            Deployment::Server { relay, .. } => relay.cut(),
            Deployment::Cluster { .. } => {
                let nodes = self.masters_ports();
                tokio::task::spawn_blocking(move || {
                    for port in nodes {
                        let Ok(mut conn) =
                            redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                                .and_then(|c| c.get_connection())
                        else {
                            continue;
                        };
                        for kind in ["normal", "pubsub"] {
                            let _: Result<(), _> = redis::cmd("CLIENT")
                                .arg("KILL")
                                .arg("TYPE")
                                .arg(kind)
                                .arg("SKIPME")
                                .arg("yes")
                                .query(&mut conn);
                        }
                    }
                })
                .await
                .unwrap();
            }
        }
    }

    /// The process to pause for a stalled Redis: the server, or the master
    /// of the purge order's slot.
    pub fn pausable(&self) -> Option<u32> {
        match self {
            Deployment::Server { redis, .. } => {
                redis.lock().unwrap().as_ref().map(RedisServer::pid)
            }
            Deployment::Cluster { cluster, .. } => cluster
                .master_of(cluster.slot_of(PURGE_SEQUENCE))
                .map(RedisServer::pid),
        }
    }

    fn masters_ports(&self) -> Vec<u16> {
        match self {
            Deployment::Server { port, .. } => vec![*port],
            Deployment::Cluster { cluster, .. } => cluster
                .masters()
                .into_iter()
                .map(|(node, _)| node.port)
                .collect(),
        }
    }
}
