//! What one process knows of the purge order: the latest position, and the
//! last purge of each key, resource and tag, bounded.

use super::{Kind, Target};
use crate::{Entry, Key, PurgePosition};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// The purges a process knows of, for judging entries against.
///
/// Records may arrive out of order (a process's own purge is recorded when
/// its backend answers, others' when their messages come): the log keeps
/// the latest position recorded, and the position up to which it holds
/// every record. A fill notes the second; an entry judged not purged is
/// marked with it too, so that a record that arrives late gets it judged
/// again.
///
/// Bounded: past `max_records`, the oldest records are forgotten and the
/// floor rises to the latest of them, so that every entry filled before a
/// forgotten purge counts as purged (an origin call more for some, never an
/// answer that was purged).
///
/// Positions are within one epoch of the purge order (see
/// [`PurgePosition`]): an entry filled in an earlier epoch is purged, and a
/// new epoch starts the log afresh.
#[derive(Debug)]
pub(crate) struct PurgeLog {
    /// The epoch the positions below are in.
    epoch: AtomicU64,
    /// The latest position recorded.
    latest: AtomicU64,
    /// Every position up to this one is recorded (or covered by the floor).
    whole: AtomicU64,
    /// Entries whose fill started before this are purged.
    floor: AtomicU64,
    records: RwLock<Records>,
    max_records: usize,
}

#[derive(Debug, Default)]
struct Records {
    /// The last purge of each target.
    last: HashMap<Target, u64>,
    /// The same, by position, to forget the oldest.
    order: BTreeMap<u64, Target>,
    /// Positions recorded above `whole`.
    early: BTreeSet<u64>,
    /// How many records name a key or a resource: while none do, judging
    /// an entry hashes nothing of its key.
    keyed: usize,
}

impl PurgeLog {
    /// The default bound: about 5 MiB of records.
    pub(crate) const MAX_RECORDS: usize = 65_536;

    pub(crate) fn new(max_records: usize) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            latest: AtomicU64::new(0),
            whole: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            records: RwLock::new(Records::default()),
            max_records: max_records.max(1),
        }
    }

    /// The position up to which every purge is known: what a fill notes
    /// before it calls the origin.
    pub(crate) fn position(&self) -> PurgePosition {
        // The epoch first: a reset zeroes the positions before it moves the
        // epoch on, so a new epoch is never paired with an old position (an
        // old epoch with a new position is only more cautious).
        let epoch = self.epoch();
        PurgePosition::new(epoch, self.whole.load(Ordering::Acquire))
    }

    /// The epoch its positions are in.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Starts the log afresh in `epoch`: every entry filled in an earlier
    /// one now counts as purged, and no record of an earlier one is kept.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn reset(&self, epoch: u64) {
        let mut records = crate::sync::write(&self.records);
        *records = Records::default();
        self.latest.store(0, Ordering::Release);
        self.whole.store(0, Ordering::Release);
        self.floor.store(0, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
    }

    /// The latest position recorded.
    pub(crate) fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Records the purge of `target` at `position` (again: no change).
    pub(crate) fn record(&self, position: u64, target: Target) {
        let mut records = crate::sync::write(&self.records);
        let records = &mut *records;
        let whole = self.whole.load(Ordering::Acquire);
        if position <= whole && records.last.get(&target).is_some_and(|&at| at >= position) {
            return;
        }
        let last = records.last.entry(target).or_insert(0);
        if *last < position {
            if *last != 0 {
                records.order.remove(last);
            } else if target.kind != Kind::Tag {
                records.keyed += 1;
            }
            *last = position;
            records.order.insert(position, target);
        }
        while records.order.len() > self.max_records {
            let Some((oldest, forgotten)) = records.order.pop_first() else {
                break;
            };
            records.last.remove(&forgotten);
            if forgotten.kind != Kind::Tag {
                records.keyed -= 1;
            }
            self.floor.fetch_max(oldest, Ordering::AcqRel);
        }
        // The record is in before either position moves: whoever sees a
        // new position finds it.
        if position > whole {
            records.early.insert(position);
            self.advance(records, whole);
        }
        self.latest.fetch_max(position, Ordering::AcqRel);
    }

    /// Moves the complete position on from `whole` over the positions
    /// recorded just above it.
    fn advance(&self, records: &mut Records, mut whole: u64) {
        while records.early.first() == Some(&(whole + 1)) {
            records.early.pop_first();
            whole += 1;
        }
        self.whole.store(whole, Ordering::Release);
    }

    /// Every entry filled before `position` counts as purged, and every
    /// purge up to it as known: for purges that may have been missed (a
    /// lost connection), or forgotten.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn flush_before(&self, position: u64) {
        self.floor.fetch_max(position, Ordering::AcqRel);
        self.known_through(position);
    }

    /// Every purge up to `position` is known (the records read with it are
    /// in): a catch-up after purges may have been missed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn known_through(&self, position: u64) {
        let mut records = crate::sync::write(&self.records);
        let whole = self.whole.load(Ordering::Acquire).max(position);
        records.early.retain(|&at| at > position);
        self.advance(&mut records, whole);
        self.latest.fetch_max(position, Ordering::AcqRel);
    }

    /// The position of the latest purge that drops `entry`, stored under
    /// `key` — one after its fill started — or `None` if none does. An
    /// entry filled in an earlier epoch is dropped by the epoch's start;
    /// one filled in a later epoch than this log's is judged by nothing
    /// this process knows (it is behind, and catching up).
    pub(crate) fn purged(&self, key: &Key, entry: &Entry) -> Option<PurgePosition> {
        let epoch = self.epoch();
        let fill = entry.fill_position();
        // Not made by a flight (stored through the backend directly): it
        // has no place in the order, and is judged as if filled at the
        // start of the current epoch.
        let unfilled = fill == PurgePosition::default();
        if fill.epoch != epoch && !unfilled {
            return (fill.epoch < epoch).then_some(PurgePosition::new(epoch, 0));
        }
        self.purged_in_epoch(key, entry, fill.position)
            .map(|at| PurgePosition::new(epoch, at))
    }

    fn purged_in_epoch(&self, key: &Key, entry: &Entry, filled: u64) -> Option<u64> {
        if entry.checked_at() >= self.latest() {
            return None;
        }
        let floor = self.floor.load(Ordering::Acquire);
        if filled < floor {
            return Some(floor);
        }
        let later = |records: &Records, target: &Target| {
            records.last.get(target).copied().filter(|&at| at > filled)
        };
        let (found, whole) = {
            let records = crate::sync::read(&self.records);
            let tags = entry
                .tags()
                .iter()
                .filter_map(|digest| later(&records, &Target::tag(*digest)))
                .max();
            let keyed = (records.keyed > 0)
                .then(|| {
                    let resource = later(&records, &Target::resource(key));
                    resource.max(later(&records, &Target::key(key)))
                })
                .flatten();
            // Read under the lock: every record up to it was in the map.
            (tags.max(keyed), self.whole.load(Ordering::Acquire))
        };
        if found.is_none() {
            // Judged against every purge up to `whole`: the next look at
            // it is one load, until another purge.
            entry.checked(whole);
        }
        found
    }
}
