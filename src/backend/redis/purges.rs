//! Purges through Redis: the namespace's purge log and its channel, and
//! keeping this process's [`PurgeLog`] in step with them — the records
//! missed while disconnected read back, and the near cache trusted only
//! while the channel is known to be heard.

use super::channels::Channels;
use super::conn::Conn;
use super::names::PurgeNames;
use super::scripts::CATCH_UP;
use crate::purge::{PurgeLog, Target};
use crate::{BackendError, PurgePosition};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the connection is checked while nothing else shows it alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a key's or resource's purge mark is kept: longer than any fill
/// that could still complete (fills are bounded by `wait_timeout`).
pub(super) const MARK_MS: u64 = 3_600_000;

/// The epoch to start if Redis's purge order is found lost: later than
/// `mine` (the latest this process saw) and than any before it, as far as
/// clocks allow — milliseconds since 1970, or one past `mine`.
pub(super) fn next_epoch(mine: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now.max(mine.saturating_add(1))
}

/// One process's view of the namespace's purges.
#[derive(Debug)]
pub(super) struct Purges {
    pub(super) log: Arc<PurgeLog>,
    pub(super) names: PurgeNames,
    pub(super) max_records: usize,
    /// Raised each time purges may have been missed (at start, and when
    /// the connection drops or is found replaced).
    generation: AtomicU64,
    /// The generation the last catch-up that completed began in: while it
    /// is behind `generation`, purges may be missing from the log — also
    /// while a catch-up is reading them back.
    caught_up: AtomicU64,
    /// Wakes lookups waiting for a catch-up to complete.
    caught: Notify,
    /// When the connection was last known alive, in ms since `epoch`.
    alive_at: AtomicU64,
    epoch: Instant,
    /// How long after that the near cache is still trusted.
    grace: Duration,
    /// Wakes the task that reads missed purges.
    wake: Arc<Notify>,
    /// The `CLIENT ID` of the connection the last catch-up was read on: a
    /// connection with another id may have missed purges since.
    connection: AtomicU64,
    /// Whether the server's eviction policy was looked at.
    policy_checked: AtomicBool,
}

impl Purges {
    pub(super) fn new(namespace: &str, max_records: usize, grace: Duration) -> Self {
        Self {
            log: Arc::new(PurgeLog::new(max_records)),
            names: PurgeNames::new(namespace),
            max_records,
            generation: AtomicU64::new(1),
            caught_up: AtomicU64::new(0),
            caught: Notify::new(),
            alive_at: AtomicU64::new(0),
            epoch: Instant::now(),
            grace,
            wake: Arc::new(Notify::new()),
            connection: AtomicU64::new(0),
            policy_checked: AtomicBool::new(false),
        }
    }

    /// Whether the near cache may answer: every purge announced is known,
    /// and the connection that hears them was alive within the grace.
    pub(super) fn trusted(&self) -> bool {
        if !self.is_caught_up() {
            return false;
        }
        let alive = Duration::from_millis(self.alive_at.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(alive) <= self.grace
    }

    fn alive(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.alive_at.fetch_max(now, Ordering::AcqRel);
    }

    /// Whether every purge announced is in the log, as far as this process
    /// knows: the last catch-up began after the last time purges may have
    /// been missed, and completed.
    pub(super) fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) == self.generation.load(Ordering::Acquire)
    }

    /// Waits until [`is_caught_up`](Self::is_caught_up): what Redis holds is
    /// judged against the purge log, so nothing read from it answers until
    /// the log is whole. The layer bounds the wait.
    pub(super) async fn until_caught_up(&self) {
        loop {
            let caught = self.caught.notified();
            if self.is_caught_up() {
                return;
            }
            caught.await;
        }
    }

    /// The connection dropped: purges announced meanwhile are lost.
    pub(super) fn lost(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// A message on the purge channel: `<epoch>:<position>:<target>`.
    pub(super) fn heard(&self, message: &[u8]) {
        let mut parts = message.splitn(3, |b| *b == b':');
        let mut number = || std::str::from_utf8(parts.next()?).ok()?.parse::<u64>().ok();
        let (Some(epoch), Some(position)) = (number(), number()) else {
            return;
        };
        if let Some(target) = parts.next().and_then(Target::from_bytes) {
            self.recorded(PurgePosition::new(epoch, position), target);
            self.alive();
        }
    }

    /// A purge recorded in Redis at `position`: in this process's epoch, it
    /// goes in the log; in a later one, the purge order was lost and
    /// started again, and the log is read back from the new one (until
    /// then the near cache is not trusted); in an earlier one it is old
    /// news.
    pub(super) fn recorded(&self, position: PurgePosition, target: Target) {
        let epoch = self.log.epoch();
        if position.epoch == epoch {
            self.log.record(position.position, target);
        } else if position.epoch > epoch {
            self.lost();
        }
    }

    /// Reads the purges recorded above what this process knows: after it,
    /// every purge up to the sequence read is known.
    pub(super) async fn catch_up(&self, conn: &mut Conn) -> Result<(), BackendError> {
        // Taken before the read: a loss during it leaves the log behind.
        let generation = self.generation.load(Ordering::Acquire);
        self.read_back(conn).await?;
        self.caught_up.fetch_max(generation, Ordering::AcqRel);
        self.caught.notify_waiters();
        Ok(())
    }

    async fn read_back(&self, conn: &mut Conn) -> Result<(), BackendError> {
        // Purges from now on arrive as messages (a channel already
        // subscribed to stays so); those before are read below. A cluster
        // may have dropped the subscription with its slot's move.
        conn.subscribe(&self.names.channel)
            .await
            .map_err(|e| BackendError::new("Redis SUBSCRIBE to the purge channel failed", e))?;
        let id = conn
            .client_id(&self.names.channel)
            .await
            .map_err(|e| BackendError::new("Redis CLIENT ID failed", e))?;
        self.connection.store(id, Ordering::Release);
        let names = &self.names;
        let mine = self.log.epoch();
        type CaughtUp = (u64, u64, u64, Vec<(Vec<u8>, u64)>);
        let (epoch, sequence, floor, records): CaughtUp = CATCH_UP
            .key(&names.sequence)
            .key(&names.log)
            .key(&names.floor)
            .arg(self.log.position().position)
            .arg(mine)
            .arg(self.log.latest())
            .arg(next_epoch(mine))
            .invoke_async(conn)
            .await
            .map_err(|e| BackendError::new("Redis purge catch-up failed", e))?;
        if epoch != mine {
            // The order was lost and started again (or this process
            // starts): everything filled before counts as purged.
            if mine != 0 {
                tracing::warn!(
                    "Redis lost its purge order (restarted without its data, flushed, or failed \
                     over to a replica that lagged); answers filled before count as purged"
                );
            }
            self.log.reset(epoch);
        }
        if floor > self.log.position().position {
            // Records this process never read were forgotten: whatever
            // was filled before them counts as purged.
            self.log.flush_before(floor);
        }
        for (target, position) in records {
            if let Some(target) = Target::from_bytes(&target) {
                self.log.record(position, target);
            }
        }
        self.log.known_through(sequence);
        self.alive();
        if !self.policy_checked.swap(true, Ordering::AcqRel) {
            self.check_eviction_policy(conn).await;
        }
        Ok(())
    }

    /// Reads the purge order's epoch: when it is gone or another than this
    /// process's (`FLUSHALL`, an eviction, a failover — without a lost
    /// connection to show it), purges may be missing, and so may the
    /// presence marks a write's purge trusts when it finds nothing stored:
    /// the log is read back, which starts it in the new epoch and drops
    /// every answer filled before.
    async fn check_epoch(&self, conn: &mut Conn) {
        let epoch: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
            .arg(&self.names.sequence)
            .arg("e")
            .query_async(conn)
            .await;
        match epoch {
            Ok(epoch) if epoch == Some(self.log.epoch()) => {}
            Ok(_) => {
                tracing::debug!("the purge order's epoch changed; reading it back");
                self.lost();
            }
            Err(error) => tracing::debug!(%error, "reading the purge order's epoch failed"),
        }
    }

    /// Warns when the server holding the purge order may evict it: purge
    /// marks and the sequence must stay, and marks carry a TTL, so every
    /// policy but `noeviction` (the `volatile-*` ones too) can drop them.
    /// Read from `INFO memory`, which managed services allow where they
    /// disable `CONFIG`.
    async fn check_eviction_policy(&self, conn: &mut Conn) {
        let info = match conn.memory_info(&self.names.channel).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "could not read Redis's eviction policy");
                return;
            }
        };
        if let Some(policy) = eviction_policy(&info).filter(|p| *p != "noeviction") {
            tracing::warn!(
                maxmemory_policy = policy,
                "Redis may evict purge records under this maxmemory-policy: an evicted mark lets \
                 an answer filled before its purge be stored, and an evicted sequence starts a \
                 new purge epoch (every stored answer counts as purged); use noeviction"
            );
        }
    }
}

/// The `maxmemory_policy` an `INFO memory` reply names.
fn eviction_policy(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(str::trim)
}

/// Keeps `purges` in step while the backend lives: reads the purges missed
/// at start and after every disconnection (retrying until Redis answers),
/// and every [`HEARTBEAT`] asks the connection's `CLIENT ID`: an answer
/// shows it alive, and a new id shows it was replaced (a reconnection the
/// push handler may not have seen), so purges may have been missed; and
/// reads the purge order's epoch, which a reset of Redis's data changes
/// without a lost connection. Also
/// subscribes again to the done channels a cluster dropped (`dropped`)
/// while they are still watched.
pub(super) async fn keep_in_step(
    purges: Weak<Purges>,
    mut conn: Conn,
    channels: Channels,
    mut dropped: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(p) = purges.upgrade() else { return };
        if !p.is_caught_up() {
            match p.catch_up(&mut conn).await {
                Ok(()) => pause = Duration::from_millis(50),
                Err(error) => {
                    tracing::debug!(%error, "purges not read yet; the near cache is not trusted");
                    drop(p);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(HEARTBEAT);
                    continue;
                }
            }
        }
        // `notify_one` keeps a permit for a wake-up before this waits.
        let wake = p.wake.clone();
        drop(p);
        tokio::select! {
            () = wake.notified() => {}
            Some(name) = dropped.recv() => {
                if channels.watched(&name) {
                    if let Err(error) = conn.subscribe(&name).await {
                        // The waiters still look again once per lease.
                        tracing::debug!(%error, %name, "subscribing again to a moved channel failed");
                    }
                }
            }
            () = tokio::time::sleep(HEARTBEAT) => {
                let Some(p) = purges.upgrade() else { return };
                let id = conn.client_id(&p.names.channel).await;
                match id {
                    Ok(id) if id != p.connection.load(Ordering::Acquire) => {
                        tracing::debug!("reconnected to Redis; reading the purges it may have missed");
                        p.lost();
                    }
                    Ok(_) => {
                        p.alive();
                        p.check_epoch(&mut conn).await;
                    }
                    Err(error) => tracing::debug!(%error, "Redis heartbeat failed"),
                }
            }
        }
    }
}
