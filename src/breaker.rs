//! Skipping a backend that keeps failing: after a few failures in a row,
//! flights go without it for a cool-down instead of each waiting on it.

use crate::BackendError;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Failures in a row that start a cool-down.
pub(crate) const FAILURES: u32 = 3;

/// Counts a backend's failures in a row and says when to skip it.
#[derive(Debug)]
pub(crate) struct Breaker {
    cooldown: Duration,
    /// Failures since the last success; past [`FAILURES`], each one starts
    /// another cool-down.
    failures: AtomicU32,
    /// Until when the backend is skipped.
    skip_until: Mutex<Option<Instant>>,
    /// When the backend last answered a call, in ms since `base` (0:
    /// never): a call still waiting past `backend_timeout` waits on while
    /// others are answered (a slow backend), not when none are (a stalled
    /// one).
    answered_ms: AtomicU64,
    /// How long the call answered last took, in ms.
    took_ms: AtomicU64,
    base: Instant,
    /// A probe of the backend is under way (see `backend_call::probe`).
    probing: std::sync::atomic::AtomicBool,
}

impl Breaker {
    pub(crate) fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            failures: AtomicU32::new(0),
            skip_until: Mutex::new(None),
            answered_ms: AtomicU64::new(0),
            took_ms: AtomicU64::new(0),
            base: Instant::now(),
            probing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes the one probe allowed at a time; `false` if one is under way.
    pub(crate) fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// The probe ended.
    pub(crate) fn end_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the backend answered a call within the last `window`, or
    /// within twice as long as that call took: a call that took a second
    /// shows the calls sent within the next two are worth waiting for.
    pub(crate) fn answered_within(&self, window: Duration) -> bool {
        let answered = self.answered_ms.load(Ordering::Acquire);
        let window = u64::try_from(window.as_millis())
            .unwrap_or(u64::MAX)
            .max(self.took_ms.load(Ordering::Acquire).saturating_mul(2));
        answered != 0 && self.now_ms().saturating_sub(answered) <= window
    }

    /// Records how a backend operation that took `took` went.
    pub(crate) fn record_timed<T>(&self, result: &Result<T, BackendError>, took: Duration) {
        if result.is_ok() {
            let took = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            self.took_ms.store(took, Ordering::Release);
        }
        self.record(result);
    }

    fn skip_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        crate::sync::lock(&self.skip_until)
    }

    /// Whether backend operations should be skipped now.
    pub(crate) fn skipping(&self) -> bool {
        // Read without the lock first: most flights find no failure at all.
        if self.failures.load(Ordering::Relaxed) < FAILURES {
            return false;
        }
        self.skip_until()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Records how a backend operation went.
    pub(crate) fn record<T>(&self, result: &Result<T, BackendError>) {
        match result {
            Ok(_) => {
                // Never 0, which means "never".
                let now = self.now_ms().max(1);
                self.answered_ms.fetch_max(now, Ordering::AcqRel);
                if self.failures.swap(0, Ordering::Relaxed) >= FAILURES {
                    *self.skip_until() = None;
                    tracing::info!("the backend answers again; flights use it");
                }
            }
            Err(error) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= FAILURES && !self.cooldown.is_zero() {
                    *self.skip_until() = Some(Instant::now() + self.cooldown);
                    if failures == FAILURES {
                        tracing::warn!(
                            %error,
                            cooldown = ?self.cooldown,
                            "the backend failed {FAILURES} times in a row; flights skip it for a while"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<(), BackendError> {
        Err(BackendError::msg("down"))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_skip_the_backend_for_the_cooldown() {
        let breaker = Breaker::new(Duration::from_secs(1));
        for _ in 1..FAILURES {
            breaker.record(&failed());
            assert!(!breaker.skipping(), "fewer failures than the threshold");
        }
        breaker.record(&Ok(()));
        for _ in 1..FAILURES {
            breaker.record(&failed());
        }
        assert!(
            !breaker.skipping(),
            "a success in between starts the count again"
        );
        breaker.record(&failed());
        assert!(breaker.skipping());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!breaker.skipping(), "tried again after the cool-down");
        // One more failure is enough now.
        breaker.record(&failed());
        assert!(breaker.skipping());
        tokio::time::advance(Duration::from_millis(1001)).await;
        breaker.record(&Ok(()));
        assert!(!breaker.skipping());
        breaker.record(&failed());
        assert!(!breaker.skipping(), "a success ended the skipping");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_vouches_for_two_bounds_or_twice_as_long_as_it_took() {
        let breaker = Breaker::new(Duration::from_secs(1));
        let bounds = Duration::from_millis(500);
        assert!(!breaker.answered_within(bounds), "nothing answered yet");
        breaker.record_timed(&Ok(()), Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(breaker.answered_within(bounds));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(
            !breaker.answered_within(bounds),
            "a quick answer 600 ms ago"
        );
        // An answer that took 700 ms shows that calls sent within 1.4 s
        // after it are worth waiting for.
        breaker.record_timed(&Ok(()), Duration::from_millis(700));
        tokio::time::advance(Duration::from_millis(1300)).await;
        assert!(breaker.answered_within(bounds));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!breaker.answered_within(bounds));
        // A failure vouches for nothing.
        breaker.record_timed(&failed(), Duration::from_millis(5));
        assert!(!breaker.answered_within(bounds));
    }

    #[test]
    fn only_one_probe_at_a_time() {
        let breaker = Breaker::new(Duration::from_secs(1));
        assert!(breaker.start_probe());
        assert!(!breaker.start_probe());
        breaker.end_probe();
        assert!(breaker.start_probe());
    }

    #[test]
    fn a_zero_cooldown_never_skips() {
        let breaker = Breaker::new(Duration::ZERO);
        for _ in 0..10 {
            breaker.record(&failed());
        }
        assert!(!breaker.skipping());
    }
}
