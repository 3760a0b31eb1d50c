//! The child-process variant of the wake-up series: this program re-executed
//! with [`CHILD_FLAG`] as a waiting instance, and the parent that drives the
//! children over their stdin and stdout.

use super::{Baseline, Sample, SETTLE, WARM_UP};
use crate::fleet::{ask, instance, key, wait_for, Origin};
use crate::measure::{nanos_between, Probe};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tower::Layer;
use tower_coalesce::Outcome;

/// The flag with which this example runs as a waiting instance in a child
/// process.
pub(crate) const CHILD_FLAG: &str = "--serve-waiting-instance";

/// A waiting instance in a process of its own. On stdin: `wait <path>` lines.
/// On stdout: `ready` once, `waiting <path>` when the request waits on another
/// instance through Redis, and `answered <path> <unix-ns> <outcome> <ok>` when
/// its caller has the response.
pub(crate) async fn serve_waiting_instance(url: String, namespace: String) {
    let (layer, _) = match instance(&url, &namespace).await {
        Ok(instance) => instance,
        Err(e) => {
            eprintln!("waiting instance: {e}");
            std::process::exit(1)
        }
    };
    // This instance should never lead; if it does, its own origin answers
    // and the parent sees the outcome `leader`.
    let origin = Origin::gated();
    origin.open();
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(path) = line.strip_prefix("wait ") else {
            continue;
        };
        let path = path.to_owned();
        let before = layer.stats().remote_waits;
        let svc = layer.layer(origin.service());
        let p = path.clone();
        tokio::spawn(async move {
            let answer = ask(svc, p.clone()).await;
            println!(
                "answered {p} {} {} {}",
                answer.wall_ns,
                answer.outcome.map_or("none", Outcome::as_str),
                answer.ok
            );
        });
        if wait_for(|| layer.stats().remote_waits > before, "a remote wait")
            .await
            .is_ok()
        {
            println!("waiting {path}");
        }
    }
}

pub(super) async fn wakeup_across_processes(
    url: &str,
    probe: &mut Probe,
    baseline: &mut Baseline,
    namespace: &str,
    waiters: usize,
    samples: usize,
) -> Result<Vec<Sample>, String> {
    let (leader, namer) = instance(url, namespace).await?;
    let exe = std::env::current_exe().map_err(|e| format!("this example's path: {e}"))?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<(usize, String)>();
    let mut children = Vec::new();
    for id in 0..waiters {
        let mut child = tokio::process::Command::new(&exe)
            .args([CHILD_FLAG, url, namespace])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting a waiting instance: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((id, line)).is_err() {
                    break;
                }
            }
        });
        children.push((child, stdin));
    }
    drop(events_tx);
    for _ in 0..waiters {
        let (_, line) = next(&mut events, "ready").await?;
        if line != "ready" {
            return Err(format!("a waiting instance said {line:?}"));
        }
    }

    let mut out = Vec::new();
    for i in 0..WARM_UP + samples {
        let path = format!("/wake-proc/{waiters}/{i}");
        let origin = Origin::gated();
        let lead = tokio::spawn(ask(leader.layer(origin.service()), path.clone()));
        wait_for(|| origin.calls() == 1, "the leader's origin call").await?;
        for (_, stdin) in &mut children {
            stdin
                .write_all(format!("wait {path}\n").as_bytes())
                .await
                .map_err(|e| format!("writing to a waiting instance: {e}"))?;
            stdin.flush().await.map_err(|e| e.to_string())?;
        }
        let mut answered = vec![None; waiters];
        let mut ready = 0;
        while ready < waiters {
            let (id, line) = next(&mut events, "waiting").await?;
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["waiting", p] if p == path => ready += 1,
                ["answered", p, ..] if p == path => answered[id] = Some(line.clone()),
                _ => return Err(format!("unexpected line from a waiting instance: {line:?}")),
            }
        }
        probe
            .until_subscribers(&namer.done_channel(&key(&path)), waiters)
            .await?;
        tokio::time::sleep(SETTLE).await;
        origin.open();

        let lead = lead.await.map_err(|e| e.to_string())?;
        let (returned, returned_ns) = origin.returned().ok_or("the origin never returned")?;
        while answered.iter().any(Option::is_none) {
            let (id, line) = next(&mut events, "answered").await?;
            answered[id] = Some(line);
        }
        let mut sample = Sample {
            path: path.clone(),
            returned_ns,
            leader: lead.at.saturating_duration_since(returned),
            waiters: Vec::new(),
            waiters_ns: Vec::new(),
        };
        for line in answered.into_iter().flatten() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["answered", p, ns, "follower", "true"] if p == path => {
                    let ns: u128 = ns.parse().map_err(|e| format!("{line:?}: {e}"))?;
                    sample.waiters.push(nanos_between(returned_ns, ns));
                    sample.waiters_ns.push(ns);
                }
                _ => return Err(format!("a waiting instance answered {line:?}")),
            }
        }
        if origin.calls() != 1 {
            return Err(format!("{path}: {} origin calls", origin.calls()));
        }
        tokio::time::sleep(SETTLE).await;
        baseline.take(i < WARM_UP).await?;
        if i >= WARM_UP {
            out.push(sample);
        }
    }
    for (mut child, stdin) in children {
        // End of input ends the child; it is killed if it does not.
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    Ok(out)
}

/// The next line from any waiting instance, as `(instance, line)`.
async fn next(
    events: &mut mpsc::UnboundedReceiver<(usize, String)>,
    what: &str,
) -> Result<(usize, String), String> {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(format!("the waiting instances exited before {what}")),
        Err(_) => Err(format!("no {what} from a waiting instance within 10 s")),
    }
}
