//! The one way this crate takes a lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning. Every critical section in this crate
/// is a single operation on the guarded value (a map insert or removal, a
/// field write), so a panic while holding a lock cannot leave the value
/// half-changed, and spreading the poison would fail every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
