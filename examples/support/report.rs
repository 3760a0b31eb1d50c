//! Small formatting and measuring helpers shared by the examples that print
//! figures (`million`, `fanout`, `distributed_bench`).
// Each example uses only some of them.
#![allow(dead_code)]

use std::time::Duration;

/// The nearest-rank `q`-quantile (0 < `q` ≤ 1) of `sorted`, ascending:
/// the smallest value at least `q` of them do not exceed. `None` if empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// The process's peak resident memory so far (Linux's `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// The process's resident memory now (Linux's `VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// A size in `/proc/self/status`, given in KiB after `field`.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The machine in a line: CPUs, their model, the load average now.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_owned(),
                )
            })
        })
        .unwrap_or_default();
    format!(
        "{} CPUs, {cpu}; load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    )
}

/// A duration in milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `1234567` as `1,234,567`.
pub fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Calls per command in the text of Redis's `INFO commandstats`: each
/// `cmdstat_<name>:calls=<n>,...` line as `(name, n)`.
pub fn command_calls(info: &str) -> impl Iterator<Item = (&str, u64)> {
    info.lines().filter_map(|line| {
        let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
        let calls = rest
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))?
            .parse::<u64>()
            .ok()?;
        Some((name, calls))
    })
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_takes_the_smallest_value_covering_the_share() {
        let sorted = [1, 2, 3, 4];
        assert_eq!(nearest_rank(&sorted, 0.25), Some(1));
        assert_eq!(nearest_rank(&sorted, 0.5), Some(2));
        assert_eq!(nearest_rank(&sorted, 0.51), Some(3));
        assert_eq!(nearest_rank(&sorted, 0.99), Some(4));
        assert_eq!(nearest_rank(&sorted, 1.0), Some(4));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }
}
