//! With `--trace`: where the wake-up time goes, from the per-command
//! timestamps of a `MONITOR` log, and its tables.

use super::{Sample, Series};
use crate::fleet::key;
use crate::measure::{nanos_between, Percentiles};
use crate::monitor::Logged;
use coalesce_bench::report::ms;
use std::collections::BTreeMap;
use std::time::Duration;
use tower_coalesce::RedisBackend;

/// Where the wake-up time went, from the Redis side: `MONITOR` stamps each
/// command when Redis runs it, on the wall clock the instances also read.
pub(super) struct Steps {
    /// A's origin returned → Redis ran A's completion script (its `PUBLISH`).
    to_publish: Vec<Duration>,
    /// The done message published → a waiting instance's caller had its
    /// response.
    to_answer: Vec<Duration>,
    /// For waiting instances that looked the answer up after the message
    /// (rather than taking it from the message): message → Redis ran the
    /// lookup, and lookup → answered.
    to_lookup: Vec<Duration>,
    lookup_to_answer: Vec<Duration>,
    /// The slowest samples: total, then the steps of its slowest waiter.
    slowest: Vec<Slow>,
    /// Samples whose completion was not found in the log.
    unmatched: usize,
}

#[derive(Clone, Copy)]
struct Slow {
    total: Duration,
    to_publish: Duration,
    to_answer: Duration,
    lookup: Option<(Duration, Duration)>,
}

impl Steps {
    pub(super) fn of(samples: &[Sample], log: &[Logged], namer: &RedisBackend) -> Self {
        let mut steps = Steps {
            to_publish: Vec::new(),
            to_answer: Vec::new(),
            to_lookup: Vec::new(),
            lookup_to_answer: Vec::new(),
            slowest: Vec::new(),
            unmatched: 0,
        };
        let mut per_sample = Vec::new();
        for sample in samples {
            let key = key(&sample.path);
            let (channel, value_key) = (namer.done_channel(&key), namer.value_key(&key));
            let Some(published) = log.iter().position(|l| {
                l.in_script() && l.name() == "PUBLISH" && l.args.get(1) == Some(&channel)
            }) else {
                steps.unmatched += 1;
                continue;
            };
            // The completion is the command whose script published the done
            // message: the last one an instance sent before that `PUBLISH`.
            let Some(leader) = log[..published].iter().rev().find(|l| !l.in_script()) else {
                steps.unmatched += 1;
                continue;
            };
            let published_ns = log[published].at_us * 1_000;
            // Each waiting instance's first command on the answer's key after
            // the message, if any: its lookup.
            let mut first_by_source: BTreeMap<&str, u128> = BTreeMap::new();
            for l in &log[published..] {
                if !l.in_script() && l.source != leader.source && l.args.contains(&value_key) {
                    first_by_source.entry(&l.source).or_insert(l.at_us * 1_000);
                }
            }
            let mut lookups: Vec<u128> = first_by_source.into_values().collect();
            lookups.sort_unstable();
            let mut answers = sample.waiters_ns.clone();
            answers.sort_unstable();
            let to_publish = nanos_between(sample.returned_ns, published_ns);
            steps.to_publish.push(to_publish);
            let mut worst: Option<Slow> = None;
            for (i, answer) in answers.iter().enumerate() {
                let to_answer = nanos_between(published_ns, *answer);
                steps.to_answer.push(to_answer);
                // With as many lookups as waiters, the n-th lookup is paired
                // with the n-th answer.
                let lookup = (lookups.len() == answers.len()).then(|| {
                    (
                        nanos_between(published_ns, lookups[i]),
                        nanos_between(lookups[i], *answer),
                    )
                });
                if let Some((a, b)) = lookup {
                    steps.to_lookup.push(a);
                    steps.lookup_to_answer.push(b);
                }
                let total = nanos_between(sample.returned_ns, *answer);
                if worst.is_none_or(|w| total > w.total) {
                    worst = Some(Slow {
                        total,
                        to_publish,
                        to_answer,
                        lookup,
                    });
                }
            }
            per_sample.extend(worst);
        }
        per_sample.sort_unstable_by_key(|s| std::cmp::Reverse(s.total));
        per_sample.truncate(5);
        steps.slowest = per_sample;
        steps
    }
}

pub(super) fn print_steps(series: &[&Series]) {
    println!("### Where the wake-up time goes (`--trace`)\n");
    println!(
        "Separate runs with a `MONITOR` connection open (it adds a little work to Redis for \
         every command, so these totals are not the figures above). Redis stamps each command \
         when it runs it, in wall-clock microseconds, which the instances' timestamps can be \
         compared with. A waiting instance's lookup is its first command on the answer's key \
         after the done message (none if it took the answer from the message). With several \
         waiting instances, lookups and answers are paired in time order.\n"
    );
    println!("| setup | waiting instances | step | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for s in series {
        let Some(steps) = &s.steps else { continue };
        let rows = [
            (
                "1. A's origin returns → Redis runs A's completion script (`PUBLISH` of the done message)",
                &steps.to_publish,
            ),
            (
                "2. done message published → the waiting instance's caller has its response",
                &steps.to_answer,
            ),
            (
                "2a. of which: message → Redis runs the waiting instance's lookup (delivered, woken, sent)",
                &steps.to_lookup,
            ),
            (
                "2b. of which: lookup → the waiting instance's caller has its response",
                &steps.lookup_to_answer,
            ),
        ];
        for (step, values) in rows {
            if values.is_empty() {
                continue;
            }
            let p = Percentiles::of(values.clone());
            println!(
                "| {} | {} | {step} | {} | {} |",
                s.setup,
                s.waiters,
                p.n,
                p.cells()
            );
        }
        let total = Percentiles::of(s.samples.iter().flat_map(|x| x.waiters.clone()).collect());
        println!(
            "| {} | {} | total: origin return → answered (CPU busy / steal {}) | {} | {} |",
            s.setup,
            s.waiters,
            s.cpu,
            total.n,
            total.cells()
        );
        if steps.unmatched > 0 {
            println!(
                "| {} | {} | samples not found in the log | {} | | | | |",
                s.setup, s.waiters, steps.unmatched
            );
        }
    }
    println!();
    println!(
        "The five slowest samples of each traced series (total = origin return → the slowest \
         waiting instance answered; the steps are that instance's):\n"
    );
    println!(
        "| setup | waiting instances | total | 1. → published | 2. → answered | 2a. → lookup run | 2b. → answered |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in series {
        let Some(steps) = &s.steps else { continue };
        for slow in &steps.slowest {
            let (a, b) = match slow.lookup {
                Some((a, b)) => (ms(a), ms(b)),
                None => ("—".to_owned(), "—".to_owned()),
            };
            println!(
                "| {} | {} | {} | {} | {} | {a} | {b} |",
                s.setup,
                s.waiters,
                ms(slow.total),
                ms(slow.to_publish),
                ms(slow.to_answer),
            );
        }
    }
    println!();
}
