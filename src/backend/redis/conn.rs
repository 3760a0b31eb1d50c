//! One connection to Redis, whichever its deployment: a single server
//! (`redis`'s `ConnectionManager`) or a cluster (its cluster client, which
//! routes each command to the master of its key's slot). Everything the
//! backend sends goes through here, so the protocol — scripts, names,
//! messages — has one code path; what differs is said here: a cluster's
//! messages travel on the shard of their channel (`SPUBLISH`,
//! `SSUBSCRIBE`), a single server's on plain pub/sub.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to a single Redis server or to a cluster; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// The command that publishes a message on a channel, as scripts call
    /// it: on a cluster, on the channel's own shard (the slot of its hash
    /// tag, which is the slot of the script's keys).
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Conn::Server(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }

    /// Subscribes to `channel` (sharded on a cluster: on its slot's master).
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Server(conn) => conn.subscribe(channel).await,
            Conn::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from `channel`.
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Server(conn) => conn.unsubscribe(channel).await,
            Conn::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }

    /// `CLIENT ID` of the connection that carries `channel`'s messages: on
    /// a cluster, the one to the master of the channel's slot.
    pub(super) async fn client_id(&mut self, channel: &str) -> RedisResult<u64> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("ID");
        self.on_channel_master(cmd, channel).await
    }

    /// `INFO memory` of the server that holds `channel`'s slot.
    pub(super) async fn memory_info(&mut self, channel: &str) -> RedisResult<String> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("memory");
        self.on_channel_master(cmd, channel).await
    }

    /// Runs `cmd` on the connection that carries `channel`'s messages.
    async fn on_channel_master<T: redis::FromRedisValue>(
        &mut self,
        cmd: redis::Cmd,
        channel: &str,
    ) -> RedisResult<T> {
        match self {
            Conn::Server(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let route = Route::new(slot(channel.as_bytes()), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The cluster slot of `name`, as `redis`'s cluster client computes it:
/// CRC16 (XMODEM) of its hash tag — the part
/// between its first `{` and the next `}`, if not empty — or of the whole
/// name, modulo 16,384 (the Redis Cluster specification).
pub(super) fn slot(name: &[u8]) -> u16 {
    let tagged = name
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &name[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(name);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16_384
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slots_are_the_cluster_specifications() {
        // Names whose slots Redis gives (`CLUSTER KEYSLOT`).
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"ns:2:{purge}:seq"), slot(b"purge"));
    }
}
