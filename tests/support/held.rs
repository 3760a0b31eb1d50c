//! A `RedisBackend` wrapper that holds one lease attempt, for the tests of
//! what happens in Redis between an instance's commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_coalesce::{
    BackendFuture, Completed, Completion, Entry, Found, Invalidation, Key, LeaseToken, Leases,
    Purge, Purged, RedisBackend, Store, StreamEnd, StreamRead, Streams, TryLock, Watch,
};

/// A `RedisBackend` whose `n`-th lease attempt waits for the test before
/// going out, as a reply delayed on the network would: the test decides what
/// happens in Redis between the instance's previous command and this one.
pub struct HeldLeaseAttempt {
    pub inner: RedisBackend,
    pub hold: usize,
    /// Instead of holding the attempt before it goes out, run it, then hold
    /// its reply this long: a reply lost or late on the network.
    pub reply_late: Option<Duration>,
    pub attempts: AtomicUsize,
    pub reached: Arc<Semaphore>,
    pub release: Arc<Semaphore>,
}

impl Store for HeldLeaseAttempt {
    // No near cache: every hit is a flight that looks in Redis.
    fn find_local(&self, _key: &Key) -> Option<Found> {
        None
    }

    fn find<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Found>> {
        self.inner.find(key)
    }

    fn store<'a>(&'a self, key: &'a Key, entry: Entry, ttl: Duration) -> BackendFuture<'a, ()> {
        self.inner.store(key, entry, ttl)
    }
}

impl Leases for HeldLeaseAttempt {
    fn try_lock<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
        refresh: Option<std::time::SystemTime>,
    ) -> BackendFuture<'a, TryLock> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if let (true, Some(late)) = (n == self.hold, self.reply_late) {
                let taken = self.inner.try_lock(key, token, lease, refresh).await;
                self.reached.add_permits(1);
                tokio::time::sleep(late).await;
                return taken;
            }
            if n == self.hold {
                self.reached.add_permits(1);
                self.release.acquire().await.unwrap().forget();
            }
            self.inner.try_lock(key, token, lease, refresh).await
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BackendFuture<'a, bool> {
        self.inner.renew(key, token, lease)
    }

    fn watch<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<Watch>> {
        self.inner.watch(key)
    }

    fn complete<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        completion: Completion,
    ) -> BackendFuture<'a, Completed> {
        self.inner.complete(key, token, completion)
    }
}

impl Invalidation for HeldLeaseAttempt {
    fn purge<'a>(&'a self, purge: &'a Purge) -> BackendFuture<'a, Purged> {
        self.inner.purge(purge)
    }

    fn purge_position(&self) -> tower_coalesce::PurgePosition {
        self.inner.purge_position()
    }

    fn purged(&self, key: &Key, entry: &Entry) -> Option<tower_coalesce::PurgePosition> {
        self.inner.purged(key, entry)
    }
}

impl Streams for HeldLeaseAttempt {
    fn open_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        head: &'a Entry,
        ttl: Duration,
    ) -> BackendFuture<'a, bool> {
        self.inner.open_stream(key, token, head, ttl)
    }

    fn append_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        at: u64,
        bytes: bytes::Bytes,
        bounds: (Duration, usize),
    ) -> BackendFuture<'a, bool> {
        self.inner.append_stream(key, token, at, bytes, bounds)
    }

    fn end_stream<'a>(
        &'a self,
        key: &'a Key,
        token: &'a LeaseToken,
        end: StreamEnd,
        ttl: Duration,
    ) -> BackendFuture<'a, ()> {
        self.inner.end_stream(key, token, end, ttl)
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a Key,
        token: Option<&'a str>,
        from: u64,
        max: usize,
    ) -> BackendFuture<'a, Option<StreamRead>> {
        self.inner.read_stream(key, token, from, max)
    }
}
