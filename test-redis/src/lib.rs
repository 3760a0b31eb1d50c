//! A real `redis-server` for the tests and benchmarks of tower-coalesce:
//! started on a free loopback port, stopped when dropped. A machine without
//! `redis-server` fails the test with a message that says how to install it;
//! it never skips.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not start, with a message that
    /// says how to install it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with these extra arguments (the plain port stays open
    /// on loopback for readiness checks).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start_with(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server with these extra arguments, or says why it could not.
    pub fn try_start_with(extra: &[&str]) -> Result<Self, String> {
        let mut last_error = String::new();
        // A free port can be taken between finding it and binding it: retry.
        for _ in 0..5 {
            match Self::try_start_on(free_port(), extra) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start: {last_error}"))
    }

    /// Starts a server on this port (which must be free).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port, &[]).unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
    }

    fn try_start_on(port: u16, extra: &[&str]) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}). Install it: `apt-get install -y redis-server` \
                     (bash scripts/test.sh does this)"
                )
            })?;
        let mut server = RedisServer { child, port };
        server.wait_ready().map(|()| server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} (port {} taken?)", self.port));
            }
            if let Ok(mut conn) = client.get_connection() {
                match redis::cmd("PING").query::<String>(&mut conn) {
                    Ok(_) => return Ok(()),
                    // A server that asks for a password is up.
                    Err(e) if e.code() == Some("NOAUTH") => return Ok(()),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                return Err("no PONG within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id, for tests that signal it (pause, resume).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A plain synchronous connection, for the test's own inspection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
