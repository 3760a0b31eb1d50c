//! Random schedules: bursts of `GET`s over the instances, writes, purges by
//! URL and by tag, pauses that let answers age, and faults — all drawn from
//! one seed, so a failing history can be run again.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

use crate::origin::{RESOURCES, TAGS};

/// One step of a history; steps run one after another, the `GET`s of a
/// burst at once.
#[derive(Debug, Clone)]
pub enum Step {
    /// Concurrent `GET`s: (instance, resource) each.
    Gets(Vec<(usize, usize)>),
    /// A `PUT` through an instance: the origin raises the version, the
    /// instance purges the URL.
    Write { instance: usize, resource: usize },
    /// The origin's data changes behind the proxies' back, then a `PURGE`
    /// of its URL through an instance.
    PurgeUrl { instance: usize, resource: usize },
    /// Every resource with the tag changes, then a `PURGE` of the tag.
    PurgeTag { instance: usize, tag: usize },
    /// Time passes.
    Sleep(Duration),
    /// Something breaks.
    Fault(Fault),
}

/// What breaks.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Redis restarted without persistence: every key gone, the purge
    /// sequence with them.
    RestartRedis,
    /// `FLUSHALL`.
    FlushAll,
    /// Redis stopped (`SIGSTOP`) for a while, then resumed.
    PauseRedis(Duration),
    /// One instance stopped (`SIGSTOP`) for a while, then resumed.
    PauseInstance(usize, Duration),
    /// The origin fails its `GET`s for a while.
    FailOrigin(Duration),
    /// Every connection to Redis dropped (through the relay the instances
    /// reach it by); they reconnect.
    CutRedisConnections,
    /// One instance killed (`SIGKILL`) and started again.
    KillInstance(usize),
}

/// How big a history is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub instances: usize,
    pub steps: usize,
}

/// The schedule `seed` draws.
pub fn draw(seed: u64, shape: Shape) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::with_capacity(shape.steps);
    let instance = |rng: &mut StdRng| rng.random_range(0..shape.instances);
    let resource = |rng: &mut StdRng| rng.random_range(0..RESOURCES.len());
    for _ in 0..shape.steps {
        let step = match rng.random_range(0..100) {
            0..=44 => {
                let n = rng.random_range(1..=8);
                Step::Gets(
                    (0..n)
                        .map(|_| (instance(&mut rng), resource(&mut rng)))
                        .collect(),
                )
            }
            45..=54 => Step::Write {
                instance: instance(&mut rng),
                resource: resource(&mut rng),
            },
            55..=64 => Step::PurgeUrl {
                instance: instance(&mut rng),
                resource: resource(&mut rng),
            },
            65..=69 => Step::PurgeTag {
                instance: instance(&mut rng),
                tag: rng.random_range(0..TAGS.len()),
            },
            70..=93 => Step::Sleep(Duration::from_millis(rng.random_range(50..400))),
            _ => Step::Fault(match rng.random_range(0..7) {
                0 => Fault::RestartRedis,
                1 => Fault::FlushAll,
                2 => Fault::PauseRedis(Duration::from_millis(rng.random_range(100..1500))),
                3 => Fault::PauseInstance(
                    instance(&mut rng),
                    Duration::from_millis(rng.random_range(100..1500)),
                ),
                4 => Fault::CutRedisConnections,
                5 => Fault::KillInstance(instance(&mut rng)),
                _ => Fault::FailOrigin(Duration::from_millis(rng.random_range(200..1500))),
            }),
        };
        steps.push(step);
    }
    steps
}
