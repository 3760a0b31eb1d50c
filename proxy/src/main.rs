//! The `coalesce-proxy` command; see the crate documentation, or
//! `coalesce-proxy --help`.

use coalesce_proxy::{
    build, healthcheck, install_metrics, serve_admin, serve_with, Admin, Args, ListenOptions, Tls,
};
use std::process::ExitCode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where `healthcheck` asks when given no address.
const ADMIN_DEFAULT: &str = "127.0.0.1:9901";

#[tokio::main]
async fn main() -> ExitCode {
    // `coalesce-proxy healthcheck [ADDR]`: exit 0 if the admin listener
    // answers `/healthz` (a container's HEALTHCHECK, with no curl in the
    // image).
    let mut argv = std::env::args().skip(1);
    let first = argv.next();
    // `coalesce-proxy check [--config FILE] [FLAGS]`: the settings as a
    // start would read them, printed, or why they are wrong (status 2).
    if first.as_deref() == Some("check") {
        return match Args::parse(argv) {
            Ok(args) => {
                print!("{}", args.summary());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("coalesce-proxy check: {error}");
                ExitCode::from(2)
            }
        };
    }
    if first.as_deref() == Some("healthcheck") {
        let addr = argv.next().unwrap_or_else(|| ADMIN_DEFAULT.to_owned());
        let Ok(addr) = addr.parse() else {
            eprintln!("usage: coalesce-proxy healthcheck [IP:PORT of --admin-listen, default {ADMIN_DEFAULT}]");
            return ExitCode::from(2);
        };
        return match healthcheck(addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("coalesce-proxy healthcheck: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::from_env();
    logs(&args);
    if args.shares() && args.ttl == Some(std::time::Duration::ZERO) {
        eprintln!(
            "coalesce-proxy: warning: with --ttl-ms 0 instances cannot hand answers to each \
             other through Redis; only requests within one instance coalesce"
        );
    }
    // Before the layer is built: its metrics register with the recorder.
    let metrics = match args.admin_listen.map(|_| install_metrics()) {
        Some(Ok(handle)) => Some(handle),
        Some(Err(error)) => {
            eprintln!("coalesce-proxy: {error}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let built = match build(&args).await {
        Ok(built) => built,
        Err(error) => {
            eprintln!("coalesce-proxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    let layers: Vec<_> = built.layers().cloned().collect();
    let proxy = built.proxy;
    let admin = Admin::new(built.redis, metrics);
    if let Some(addr) = args.admin_listen {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::spawn(serve_admin(listener, admin.clone(), std::future::pending()));
            }
            Err(error) => {
                eprintln!("coalesce-proxy: cannot listen on {addr} (admin): {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("coalesce-proxy: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let tls = match &args.tls {
        Some((cert, key)) => match Tls::from_files(cert, key) {
            Ok(tls) => {
                reload_on_hangup(tls.clone());
                Some(tls)
            }
            Err(error) => {
                eprintln!("coalesce-proxy: {error}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let scheme = if tls.is_some() {
        "https (HTTP/1.1, h2)"
    } else {
        "http (HTTP/1.1, h2c)"
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let listening = ListenOptions {
        tls,
        max_connections: args.max_connections,
        access_log: args.access_log,
        connections: args.connections.clone(),
    };
    let server = tokio::spawn(serve_with(listener, proxy, listening, async {
        let _ = stopped.await;
    }));
    let freshness = match args.ttl {
        Some(ttl) => format!("ttl {} ms", ttl.as_millis()),
        None => format!(
            "freshness from the upstream, at most {} ms",
            args.max_ttl.as_millis()
        ),
    };
    println!(
        "coalesce-proxy: {} {scheme} -> {} ({freshness}, {}{})",
        args.listen,
        args.upstream,
        if args.shares() {
            args.redis_shown()
        } else {
            "in-process".to_owned()
        },
        args.header
            .as_ref()
            .map_or(String::new(), |h| format!(", header {h}")),
    );
    if let Err(error) = termination().await {
        eprintln!("coalesce-proxy: cannot listen for signals: {error}");
        return ExitCode::FAILURE;
    }

    // Not ready from now on, then stop accepting; requests in flight get
    // the grace to finish.
    admin.drain();
    let deadline = Instant::now() + args.shutdown_grace;
    println!(
        "coalesce-proxy: shutting down; requests in flight have {} ms",
        args.shutdown_grace.as_millis()
    );
    let _ = stop.send(());
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        eprintln!("coalesce-proxy: connections still open at the end of the grace; closing them");
    }
    // Then the layers (one per route): flights still under way (their
    // callers gone) end, and the leases they hold are released for other
    // instances.
    let grace = deadline.saturating_duration_since(Instant::now());
    let reports = futures_util::future::join_all(layers.iter().map(|l| l.shutdown(grace))).await;
    let stopped: usize = reports.iter().map(|r| r.stopped_flights).sum();
    if stopped > 0 {
        eprintln!(
            "coalesce-proxy: {stopped} flight(s) stopped unfinished; their leases were released"
        );
    }
    for layer in &layers {
        println!("{:#?}", layer.stats());
    }
    ExitCode::SUCCESS
}

/// Reads the listener's certificate and key again at every `SIGHUP`; a
/// reload that fails keeps the certificate in use and says why.
fn reload_on_hangup(tls: Tls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                eprintln!(
                    "coalesce-proxy: cannot listen for SIGHUP, no certificate reloads: {error}"
                );
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => eprintln!("coalesce-proxy: certificate reloaded"),
                    Err(error) => eprintln!(
                        "coalesce-proxy: certificate not reloaded, the one in use stays: {error}"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// Completes at the first `SIGTERM` or `SIGINT` (Ctrl-C).
async fn termination() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => result,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (default: warnings and
/// errors), so that what the library reports — Redis unreachable, a lease
/// lost, a panicking upstream call — is seen; as text or JSON lines. The
/// access log, when asked for, is on whatever `RUST_LOG` says.
fn logs(args: &Args) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    if args.access_log.is_some() {
        if let Ok(access) = format!("{}=info", coalesce_proxy::ACCESS_TARGET).parse() {
            filter = filter.add_directive(access);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        logs.json().with_current_span(false).init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
