//! Purges through Redis: the namespace's purge log and its channel, and
//! keeping this process's [`PurgeLog`] in step with them — the records
//! missed while disconnected read back, and the near cache trusted only
//! while the channel is known to be heard.

use super::channels::Channels;
use super::conn::Conn;
use super::names::PurgeNames;
use super::scripts::CATCH_UP;
use crate::purge::{PurgeLog, Target};
use crate::BackendError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the connection is checked while nothing else shows it alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a key's or resource's purge mark is kept: longer than any fill
/// that could still complete (fills are bounded by `wait_timeout`).
pub(super) const MARK_MS: u64 = 3_600_000;

/// One process's view of the namespace's purges.
#[derive(Debug)]
pub(super) struct Purges {
    pub(super) log: Arc<PurgeLog>,
    pub(super) names: PurgeNames,
    pub(super) max_records: usize,
    /// Purges may have been missed: not yet read at start, or the
    /// connection dropped since.
    missed: AtomicBool,
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
}

impl Purges {
    pub(super) fn new(namespace: &str, max_records: usize, grace: Duration) -> Self {
        Self {
            log: Arc::new(PurgeLog::new(max_records)),
            names: PurgeNames::new(namespace),
            max_records,
            missed: AtomicBool::new(true),
            alive_at: AtomicU64::new(0),
            epoch: Instant::now(),
            grace,
            wake: Arc::new(Notify::new()),
            connection: AtomicU64::new(0),
        }
    }

    /// Whether the near cache may answer: every purge announced is known,
    /// and the connection that hears them was alive within the grace.
    pub(super) fn trusted(&self) -> bool {
        if self.missed.load(Ordering::Acquire) {
            return false;
        }
        let alive = Duration::from_millis(self.alive_at.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(alive) <= self.grace
    }

    fn alive(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.alive_at.fetch_max(now, Ordering::AcqRel);
    }

    /// The connection dropped: purges announced meanwhile are lost.
    pub(super) fn lost(&self) {
        self.missed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A message on the purge channel: `<position>:<target>`.
    pub(super) fn heard(&self, message: &[u8]) {
        let Some(colon) = message.iter().position(|b| *b == b':') else {
            return;
        };
        let position = std::str::from_utf8(&message[..colon])
            .ok()
            .and_then(|p| p.parse::<u64>().ok());
        let target = Target::from_bytes(&message[colon + 1..]);
        if let (Some(position), Some(target)) = (position, target) {
            self.log.record(position, target);
            self.alive();
        }
    }

    /// Reads the purges recorded above what this process knows: after it,
    /// every purge up to the sequence read is known.
    pub(super) async fn catch_up(&self, conn: &mut Conn) -> Result<(), BackendError> {
        // Cleared before the read: a disconnection during it sets it again.
        self.missed.store(false, Ordering::Release);
        let read = self.read_back(conn).await;
        if read.is_err() {
            self.missed.store(true, Ordering::Release);
        }
        read
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
        let (sequence, floor, records): (u64, u64, Vec<(Vec<u8>, u64)>) = CATCH_UP
            .key(&names.sequence)
            .key(&names.log)
            .key(&names.floor)
            .arg(self.log.position())
            .invoke_async(conn)
            .await
            .map_err(|e| BackendError::new("Redis purge catch-up failed", e))?;
        if floor > self.log.position() {
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
        Ok(())
    }
}

/// Keeps `purges` in step while the backend lives: reads the purges missed
/// at start and after every disconnection (retrying until Redis answers),
/// and every [`HEARTBEAT`] asks the connection's `CLIENT ID`: an answer
/// shows it alive, and a new id shows it was replaced (a reconnection the
/// push handler may not have seen), so purges may have been missed. Also
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
        if p.missed.load(Ordering::Acquire) {
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
                    Ok(_) => p.alive(),
                    Err(error) => tracing::debug!(%error, "Redis heartbeat failed"),
                }
            }
        }
    }
}
