//! What the benchmark measures with and reports beside its figures: its own
//! Redis connection, the machine, CPU use, percentiles, and time helpers.

use coalesce_bench::report::ms;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Commands the benchmark itself sends while a burst is counted (the names
/// `INFO commandstats` gives them).
const OWN_COMMANDS: [&str; 4] = ["config|resetstat", "pubsub|numsub", "info", "echo"];

/// The benchmark's own connection: opened once, before any counting, so that
/// its set-up is never counted.
pub(crate) struct Probe {
    conn: MultiplexedConnection,
}

impl Probe {
    pub(crate) async fn connect(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        Ok(Self { conn })
    }

    pub(crate) async fn reset_stats(&mut self) -> Result<(), String> {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| format!("CONFIG RESETSTAT: {e}"))
    }

    /// Calls per command since the last reset, less the benchmark's own.
    pub(crate) async fn command_counts(&mut self) -> Result<BTreeMap<String, u64>, String> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("INFO commandstats: {e}"))?;
        Ok(coalesce_bench::report::command_calls(&info)
            .filter(|(name, _)| !OWN_COMMANDS.contains(name))
            .map(|(name, calls)| (name.to_owned(), calls))
            .collect())
    }

    async fn subscribers(&mut self, channel: &str) -> Result<usize, String> {
        let (_, n): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("PUBSUB NUMSUB: {e}"))?;
        Ok(n)
    }

    /// Waits (bounded, 10 s) until `channel` has `n` subscribers.
    pub(crate) async fn until_subscribers(
        &mut self,
        channel: &str,
        n: usize,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.subscribers(channel).await?;
            if now == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{channel}: {now} subscribers, expected {n}"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub(crate) async fn echo(&mut self, text: &str) -> Result<(), String> {
        redis::cmd("ECHO")
            .arg(text)
            .query_async::<String>(&mut self.conn)
            .await
            .map(drop)
            .map_err(|e| format!("ECHO: {e}"))
    }

    async fn server_version(&mut self) -> Result<String, String> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("INFO server: {e}"))?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned())
    }
}
pub(crate) struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    redis: String,
    pub(crate) date: String,
}

impl Machine {
    pub(crate) async fn describe(probe: &mut Probe) -> Result<Self, String> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Ok(Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".to_owned(), |k| k.trim().to_owned()),
            redis: probe.server_version().await?,
            date: today(),
        })
    }

    pub(crate) fn print(&self) {
        println!("- machine: {} CPUs (nproc), {}", self.cpus, self.cpu_model);
        println!("- kernel: Linux {}", self.kernel);
        println!("- redis-server: {} (loopback)", self.redis);
        println!("- date: {} (UTC)", self.date);
    }

    pub(crate) fn short(&self) -> String {
        format!(
            "{}-core {}, Linux {}, Redis {}",
            self.cpus, self.cpu_model, self.kernel, self.redis
        )
    }
}
/// How busy the machine's CPUs were over a stretch of time, and how much
/// time the hypervisor gave to other guests (steal), from `/proc/stat`.
pub(crate) struct CpuUse {
    start: Option<Vec<u64>>,
}

impl CpuUse {
    pub(crate) fn now() -> Self {
        Self {
            start: Self::read(),
        }
    }

    fn read() -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        line.split_whitespace()
            .take(8)
            .map(|f| f.parse().ok())
            .collect()
    }

    /// `busy % / steal %` since `now`.
    pub(crate) fn since(&self) -> String {
        let (Some(start), Some(end)) = (&self.start, Self::read()) else {
            return "unknown".to_owned();
        };
        let d: Vec<u64> = end.iter().zip(start).map(|(e, s)| e - s).collect();
        let total: u64 = d.iter().sum();
        if total == 0 || d.len() < 8 {
            return "unknown".to_owned();
        }
        // user nice system idle iowait irq softirq steal
        let busy = total - d[3] - d[4];
        format!(
            "{:.0} % / {:.1} %",
            100.0 * busy as f64 / total as f64,
            100.0 * d[7] as f64 / total as f64
        )
    }
}
pub(crate) struct Percentiles {
    pub(crate) n: usize,
    p50: Duration,
    p90: Duration,
    pub(crate) p99: Duration,
    max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    pub(crate) fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
            v.get(i - 1).copied().unwrap_or_default()
        };
        Self {
            n: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }

    pub(crate) fn cells(&self) -> String {
        format!(
            "{} | {} | {} | {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub(crate) fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
/// `to - from` in wall-clock nanoseconds, zero if negative (clock resolution).
pub(crate) fn nanos_between(from: u128, to: u128) -> Duration {
    Duration::from_nanos(u64::try_from(to.saturating_sub(from)).unwrap_or(u64::MAX))
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the days since 1970-01-01.
fn today() -> String {
    let days = (unix_nanos() / 86_400_000_000_000) as i64;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
