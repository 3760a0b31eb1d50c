//! Tracing with `MONITOR`: which command ran when, on which connection.

use crate::fleet::wait_for;
use crate::measure::{unix_nanos, Probe};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};

/// Every command Redis runs while it is on, from a `MONITOR` connection.
pub(crate) struct CommandLog {
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CommandLog {
    pub(crate) async fn start(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let monitor = client
            .get_async_monitor()
            .await
            .map_err(|e| format!("MONITOR: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let task = tokio::spawn(async move {
            // As raw values: a line that failed to convert would end the stream.
            let mut stream = monitor.into_on_message::<redis::Value>();
            while let Some(value) = stream.next().await {
                let line = match value {
                    redis::Value::SimpleString(s) => s,
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    _ => continue,
                };
                lock(&sink).push(line);
            }
        });
        Ok(Self { lines, task })
    }

    /// The commands logged so far, less the benchmark's own, and stops. A
    /// marker sent last tells when every earlier command has been logged.
    pub(crate) async fn finish(
        self,
        probe: &mut Probe,
        namespace: &str,
    ) -> Result<Vec<Logged>, String> {
        let marker = format!("end-of-log-{}", unix_nanos());
        probe.echo(&marker).await?;
        let logged = |lines: &Arc<Mutex<Vec<String>>>| {
            lock(lines)
                .iter()
                .rev()
                .take(64)
                .any(|l| l.contains(&marker))
        };
        let result = wait_for(|| logged(&self.lines), "the end of the MONITOR log").await;
        self.task.abort();
        result?;
        let lines = std::mem::take(&mut *lock(&self.lines));
        Ok(lines
            .iter()
            .take_while(|l| !l.contains(&marker))
            .filter_map(|l| Logged::parse(l, namespace))
            .filter(|l| !l.is_own())
            .collect())
    }
}

/// One line of `MONITOR`: `<unix s.µs> [<db> <client address | lua>] "CMD" "arg"…`.
pub(crate) struct Logged {
    pub(crate) at_us: u128,
    pub(crate) source: String,
    pub(crate) args: Vec<String>,
    namespace: String,
}

impl Logged {
    fn parse(line: &str, namespace: &str) -> Option<Self> {
        let (time, rest) = line.split_once(' ')?;
        let (secs, frac) = time.split_once('.')?;
        let micros = format!("{frac:0<6}");
        let at_us = secs.parse::<u128>().ok()? * 1_000_000 + micros[..6].parse::<u128>().ok()?;
        let (client, command) = rest.strip_prefix('[')?.split_once("] ")?;
        let source = client.split_once(' ')?.1.to_owned();
        Some(Self {
            at_us,
            source,
            args: quoted(command),
            namespace: namespace.to_owned(),
        })
    }

    pub(crate) fn name(&self) -> String {
        self.args
            .first()
            .map_or(String::new(), |n| n.to_uppercase())
    }

    pub(crate) fn in_script(&self) -> bool {
        self.source == "lua"
    }

    /// Sent by the benchmark itself, not by an instance.
    fn is_own(&self) -> bool {
        matches!(
            self.name().as_str(),
            "PUBSUB" | "ECHO" | "CONFIG" | "INFO" | "MONITOR"
        )
    }

    /// The command with its keys shortened to their suffix and long values cut.
    pub(crate) fn short(&self) -> String {
        let mut out = self.name();
        for arg in self.args.iter().skip(1) {
            out.push(' ');
            match arg.strip_prefix(&self.namespace) {
                Some(rest) => {
                    out.push_str("ns:{…}");
                    out.push_str(rest.rsplit_once('}').map_or(rest, |(_, s)| s));
                }
                None if arg.chars().count() > 16 => {
                    out.extend(arg.chars().take(8));
                    out.push('…');
                }
                None => out.push_str(arg),
            }
        }
        out
    }
}

/// The double-quoted arguments of a `MONITOR` line, escapes kept as they are.
fn quoted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut escaped = false;
    for c in s.chars() {
        match current.take() {
            None => {
                if c == '"' {
                    current = Some(String::new());
                }
            }
            Some(mut arg) => {
                if escaped {
                    arg.push(c);
                    escaped = false;
                    current = Some(arg);
                } else if c == '\\' {
                    arg.push(c);
                    escaped = true;
                    current = Some(arg);
                } else if c == '"' {
                    out.push(arg);
                } else {
                    arg.push(c);
                    current = Some(arg);
                }
            }
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
