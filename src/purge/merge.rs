//! Purges of one target asked for together, merged.
//!
//! Every successful write to a URL purges it: a burst of writes to one URL
//! would be a burst of purges, each a Redis script. While a purge of a
//! target is under way, those asked for meanwhile wait for it to end, then
//! share one purge, sent only once each of them was asked for. Sharing the
//! purge under way instead would be wrong: a write that succeeded after it
//! was sent could have been read, before it, by a fill that the purge then
//! lets stand. So a target has at most one purge under way and one waiting,
//! however many writes come.

use super::{PurgeError, Purged, Target};

/// What purges are merged by: the target, and whether the purge is a
/// write's (which records nothing for a resource with nothing stored, so
/// it may not stand in for a purge asked for by name).
pub(crate) type Merged = (Target, bool);
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The targets with purges asked for and not yet done.
#[derive(Default)]
pub(crate) struct Merges {
    targets: Mutex<HashMap<Merged, Arc<Turns>>>,
}

/// One target's purges, in turn.
#[derive(Default)]
struct Turns {
    /// How many purges were asked for.
    asked: AtomicU64,
    /// The last purge done: through which of those asked, with what
    /// outcome. Held by the purge under way (tokio's mutex is fair: those
    /// waiting take it in the order they came).
    done: tokio::sync::Mutex<Option<(u64, Result<Purged, PurgeError>)>>,
}

impl Merges {
    /// Runs `purge` for `target`, or shares one that covers this call: a
    /// purge sent after this call began.
    pub(crate) async fn purge<F>(&self, target: Merged, purge: F) -> Result<Purged, PurgeError>
    where
        F: Future<Output = Result<Purged, PurgeError>>,
    {
        let turn = Turn::join(self, target);
        let ticket = turn.turns().asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = turn.turns().done.lock().await;
        if let Some((through, outcome)) = &*done {
            if *through >= ticket {
                return outcome.clone();
            }
        }
        // Everyone asked so far was asked before this is sent.
        let covers = turn.turns().asked.load(Ordering::SeqCst);
        let outcome = purge.await;
        *done = Some((covers, outcome.clone()));
        outcome
    }

    /// How many targets have purges asked for and not done.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        crate::sync::lock(&self.targets).len()
    }
}

/// A call's place among its target's purges; the target is forgotten when
/// the last call leaves, whether it ended or was dropped.
struct Turn<'a> {
    merges: &'a Merges,
    target: Merged,
    /// Always `Some` but in `drop`, which lets go of it under the lock.
    turns: Option<Arc<Turns>>,
}

impl<'a> Turn<'a> {
    fn join(merges: &'a Merges, target: Merged) -> Self {
        let turns = crate::sync::lock(&merges.targets)
            .entry(target)
            .or_default()
            .clone();
        Self {
            merges,
            target,
            turns: Some(turns),
        }
    }

    fn turns(&self) -> &Turns {
        self.turns.as_deref().expect("present until dropped")
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut targets = crate::sync::lock(&self.merges.targets);
        // Every clone is made and let go of under the lock, so the count is
        // exact: the map's and this call's, and no one else is left.
        if let Some(turns) = self.turns.take() {
            if Arc::strong_count(&turns) == 2 {
                targets.remove(&self.target);
            }
        }
    }
}
