//! What a history recorded, and the checker that reads it: each promise of
//! the cache is one function that lists the operations breaking it.

use crate::origin::{filler, Call, RESOURCES};
use crate::schedule::Fault;
use std::time::Duration;

/// How long after a purge returns every instance has stopped serving what
/// it purged, when no fault is under way: the purge message's delivery on
/// loopback (docs/protocol.md measures it under a millisecond at p99).
pub const PROPAGATION: Duration = Duration::from_millis(250);

/// The same bound while a fault is under way: an instance cut off from
/// Redis stops trusting its near cache after `near_cache_trust` (3 s) plus
/// a heartbeat (1 s), and reads missed purges back when it reconnects.
pub const PROPAGATION_IN_FAULT: Duration = Duration::from_millis(4500);

/// How long a fault's effects may last after it is lifted: a lease (the
/// instances run 1 s leases), the near cache's trust bound and a heartbeat,
/// and a margin. Requests in a fault window may fail or call the origin
/// again; outside every window they may not.
pub const FAULT_TAIL: Duration = Duration::from_secs(6);

/// How much older than its `max-age` (plus its allowed stale windows) an
/// answer may be when served: `Date` has whole seconds, and an answer's
/// age on arrival is rounded to them.
pub const STALE_SLACK: Duration = Duration::from_millis(1500);

/// What a `GET` got.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// From the body's first line: `r<resource> v<version> m<made, µs>`.
    pub resource: Option<usize>,
    pub version: u64,
    pub made: Duration,
    pub outcome: String,
    /// The body's length.
    pub len: usize,
    /// Whether a `200`'s body is the one its first line names: as long as
    /// that resource's, and, for a streamed one, its filler in place.
    pub whole: bool,
}

impl Answer {
    /// Reads the origin's body.
    pub fn parse(status: u16, outcome: String, body: &[u8]) -> Self {
        let line_len = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
        let line = String::from_utf8_lossy(&body[..line_len]);
        let mut answer = Answer {
            status,
            resource: None,
            version: 0,
            made: Duration::ZERO,
            outcome,
            len: body.len(),
            whole: true,
        };
        for part in line.split_whitespace() {
            let (kind, number) = part.split_at(1);
            match (kind, number.parse::<u64>()) {
                ("r", Ok(n)) => answer.resource = usize::try_from(n).ok(),
                ("v", Ok(n)) => answer.version = n,
                ("m", Ok(n)) => answer.made = Duration::from_micros(n),
                _ => {}
            }
        }
        if status == 200 {
            let size = answer
                .resource
                .and_then(|r| RESOURCES.get(r))
                .map(|spec| spec.size);
            answer.whole = match size {
                Some(0) => line_len == body.len(),
                Some(size) => {
                    body.len() == size
                        && body[line_len + 1..]
                            .iter()
                            .zip(line_len + 1..)
                            .all(|(&b, at)| b == filler(at))
                }
                None => false,
            };
        }
        answer
    }
}

/// One `GET` through an instance.
#[derive(Debug, Clone)]
pub struct Get {
    pub instance: usize,
    pub resource: usize,
    pub start: Duration,
    pub end: Duration,
    /// The answer, or why there was none.
    pub result: Result<Answer, String>,
}

/// A write or purge through an instance, and the versions it promises:
/// once it returns, every `GET` of each resource gets at least that
/// version (after the propagation bound).
#[derive(Debug, Clone)]
pub struct Purge {
    pub what: String,
    pub instance: usize,
    pub promises: Vec<(usize, u64)>,
    pub start: Duration,
    pub end: Duration,
    /// Whether it succeeded (a `2xx`).
    pub ok: bool,
}

/// A fault, from when it began to when it was lifted.
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: Fault,
    pub start: Duration,
    pub lifted: Duration,
}

impl Window {
    /// Whether `[start, end]` meets the fault or its tail.
    fn meets(&self, start: Duration, end: Duration) -> bool {
        start <= self.lifted + FAULT_TAIL && end >= self.start
    }

    fn origin_failing(&self) -> bool {
        matches!(self.fault, Fault::FailOrigin(_))
    }
}

/// Everything one history recorded.
#[derive(Debug, Default)]
pub struct History {
    pub gets: Vec<Get>,
    pub purges: Vec<Purge>,
    pub windows: Vec<Window>,
    pub calls: Vec<Call>,
}

impl History {
    fn in_fault(&self, start: Duration, end: Duration) -> bool {
        self.windows.iter().any(|w| w.meets(start, end))
    }

    /// Every promise broken, one line each.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        self.purges_hold(&mut found);
        self.staleness_holds(&mut found);
        self.answers_match_requests(&mut found);
        self.bodies_whole(&mut found);
        self.one_call_per_burst(&mut found);
        self.no_failure_outside_faults(&mut found);
        found
    }

    /// After a purge returns, no instance serves a version older than the
    /// one it promised, beyond the propagation bound.
    fn purges_hold(&self, found: &mut Vec<String>) {
        for purge in self.purges.iter().filter(|p| p.ok) {
            for get in &self.gets {
                let Some(&(_, promised)) = purge.promises.iter().find(|(r, _)| *r == get.resource)
                else {
                    continue;
                };
                let bound = if self.in_fault(purge.start, get.end) {
                    PROPAGATION_IN_FAULT
                } else {
                    PROPAGATION
                };
                let Ok(answer) = &get.result else { continue };
                if answer.status == 200
                    && get.start > purge.end + bound
                    && answer.version < promised
                {
                    found.push(format!(
                        "purge order: {} through instance {} returned at {:?}, promising v{promised} of r{}; \
                         instance {} served v{} at {:?} ({})",
                        purge.what, purge.instance, purge.end, get.resource, get.instance,
                        answer.version, get.start, answer.outcome
                    ));
                }
            }
        }
    }

    /// No answer is older than its freshness and the stale windows that
    /// applied when it was served.
    fn staleness_holds(&self, found: &mut Vec<String>) {
        for get in &self.gets {
            let Ok(answer) = &get.result else { continue };
            if answer.status != 200 {
                continue;
            }
            let spec = RESOURCES[get.resource];
            let origin_failing = self
                .windows
                .iter()
                .any(|w| w.origin_failing() && w.meets(get.start, get.end));
            let mut allowed = Duration::from_secs(spec.max_age + spec.swr) + STALE_SLACK;
            if origin_failing {
                allowed += Duration::from_secs(spec.sie);
            }
            let age = get.start.saturating_sub(answer.made);
            if age > allowed {
                found.push(format!(
                    "staleness: instance {} served r{} v{} {:?} old at {:?}, allowed {:?} ({})",
                    get.instance,
                    get.resource,
                    answer.version,
                    age,
                    get.start,
                    allowed,
                    answer.outcome
                ));
            }
        }
    }

    /// No answer reaches a request it was not made for.
    fn answers_match_requests(&self, found: &mut Vec<String>) {
        for get in &self.gets {
            let Ok(answer) = &get.result else { continue };
            if answer.status == 200 && answer.resource != Some(get.resource) {
                found.push(format!(
                    "wrong answer: instance {} answered r{} with {:?} at {:?}",
                    get.instance, get.resource, answer.resource, get.start
                ));
            }
        }
    }

    /// A `200` that arrived whole is the whole answer, faults or not: a body
    /// cut short must fail, never end as if complete.
    fn bodies_whole(&self, found: &mut Vec<String>) {
        for get in &self.gets {
            let Ok(answer) = &get.result else { continue };
            if !answer.whole {
                found.push(format!(
                    "cut body: instance {} answered r{} with {} bytes that ended cleanly, \
                     not r{:?}'s answer ({}) at {:?}",
                    get.instance,
                    get.resource,
                    answer.len,
                    answer.resource,
                    answer.outcome,
                    get.start
                ));
            }
        }
    }

    /// Outside fault windows, a resource costs one origin call per
    /// freshness lifetime or purge: never two at once, and for long-lived
    /// answers never two within one lifetime.
    fn one_call_per_burst(&self, found: &mut Vec<String>) {
        for (resource, spec) in RESOURCES.iter().enumerate() {
            let mut calls: Vec<&Call> = self
                .calls
                .iter()
                .filter(|c| c.resource == resource)
                .collect();
            calls.sort_by_key(|c| c.start);
            for pair in calls.windows(2) {
                let (first, second) = (pair[0], pair[1]);
                if self.in_fault(first.start, second.end) {
                    continue;
                }
                let purged_between = self.purges.iter().any(|p| {
                    p.promises.iter().any(|(r, _)| *r == resource)
                        && p.start <= second.start
                        && p.end + PROPAGATION >= first.start
                });
                if purged_between {
                    continue;
                }
                let overlapping = second.start < first.end;
                let lifetime = Duration::from_secs(spec.max_age);
                let too_soon = spec.max_age >= 10
                    && second.start - first.start + STALE_SLACK + STALE_SLACK < lifetime;
                if overlapping || too_soon {
                    found.push(format!(
                        "origin calls: r{resource} called at {:?} and again at {:?} with no purge or fault between",
                        first.start, second.start
                    ));
                }
            }
        }
    }

    /// Outside fault windows every request succeeds.
    fn no_failure_outside_faults(&self, found: &mut Vec<String>) {
        for get in &self.gets {
            if self.in_fault(get.start, get.end) {
                continue;
            }
            match &get.result {
                Ok(answer) if answer.status == 200 => {}
                Ok(answer) => found.push(format!(
                    "failure: instance {} answered r{} {} at {:?} ({})",
                    get.instance, get.resource, answer.status, get.start, answer.outcome
                )),
                Err(error) => found.push(format!(
                    "failure: instance {} gave no answer for r{} at {:?}: {error}",
                    get.instance, get.resource, get.start
                )),
            }
        }
        for purge in &self.purges {
            if !purge.ok && !self.in_fault(purge.start, purge.end) {
                found.push(format!(
                    "failure: {} through instance {} failed at {:?}",
                    purge.what, purge.instance, purge.start
                ));
            }
        }
    }
}

#[test]
fn a_streamed_body_cut_short_or_changed_is_not_whole() {
    let size = RESOURCES[3].size;
    let first = b"r3 v2 m1234\n";
    let body: Vec<u8> = (0..size)
        .map(|k| first.get(k).copied().unwrap_or_else(|| filler(k)))
        .collect();
    let parse = |status, body: &[u8]| Answer::parse(status, "follower".into(), body);
    let whole = parse(200, &body);
    assert!(whole.whole);
    assert_eq!((whole.resource, whole.version), (Some(3), 2));
    assert!(!parse(200, &body[..size - 1]).whole, "one byte short");
    let mut changed = body.clone();
    changed[size / 2] ^= 1;
    assert!(!parse(200, &changed).whole, "one byte changed");
    assert!(parse(503, &body[..10]).whole, "only a 200 is checked");
    assert!(parse(200, b"r0 v1 m5").whole);
    assert!(!parse(200, b"r0 v1 m5\nmore").whole);
}
