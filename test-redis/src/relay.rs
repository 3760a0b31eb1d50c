//! A TCP relay in front of a server, under the test's control: it can hold
//! back what the server sends (a slow Redis, replies still flowing in
//! order), and cut every connection through it (a dropped connection) —
//! faults a real server cannot be asked for.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A relay on a free loopback port to a server's port; stopped (and every
/// connection through it cut) when dropped.
#[derive(Debug)]
pub struct Relay {
    /// The loopback port it listens on.
    pub port: u16,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// How long the server's bytes are held back, in µs.
    delay_us: AtomicU64,
    /// Both ends of every connection made, to cut them.
    open: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

impl Relay {
    /// A relay to `127.0.0.1:target`.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("no loopback port for the relay");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                relay(&accepting, client, server);
            }
        });
        Relay { port, state }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// From now on, the server's bytes reach the client `delay` after they
    /// were sent (in order: a slow server, not a stalled one).
    pub fn delay_replies(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.delay_us.store(us, Ordering::Release);
    }

    /// Cuts every connection through the relay; new ones are accepted.
    pub fn cut(&self) {
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        // Wakes the accepting thread, which then sees it is stopped.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.cut();
    }
}

/// Copies both ways between `client` and `server`, the server's side
/// through the delay line.
fn relay(state: &Arc<State>, client: TcpStream, server: TcpStream) {
    let clones = (client.try_clone(), server.try_clone());
    let (Ok(client_out), Ok(server_in)) = clones else {
        return;
    };
    {
        let mut open = state.open.lock().unwrap();
        for stream in [&client, &server] {
            if let Ok(clone) = stream.try_clone() {
                open.push(clone);
            }
        }
    }
    // Client to server, as it comes.
    let (mut from_client, mut to_server) = (client, server);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    // Server to client, each chunk held until its time.
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut from_server = server_in;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_server.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let delays = state.clone();
    let mut to_client = client_out;
    std::thread::spawn(move || {
        for (read_at, bytes) in rx {
            let delay = Duration::from_micros(delays.delay_us.load(Ordering::Acquire));
            let due = read_at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to_client.write_all(&bytes).is_err() {
                return;
            }
        }
        let _ = to_client.shutdown(Shutdown::Write);
    });
}
