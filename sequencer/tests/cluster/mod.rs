//! Node processes and a private Redis for the multi-node tests. A test file using it also
//! declares `mod pg;` and `mod services;`.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{pg, services};

/// A node process, killed when dropped.
pub struct Proc(pub Child, pub SocketAddr);

impl Drop for Proc {
    fn drop(&mut self) {
        // Already dead after a SIGKILL; errors are expected then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a `sequencer serve` process on a free port with PostgreSQL `db` and the bus, plus
/// `extra` flags, and waits until it listens.
pub fn spawn_node(db: &pg::TestDb, bus: &str, prefix: &str, secret: &str, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sequencer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0", "--cluster-poll", "100"])
        .args(["--store", &db.url, "--bus", bus, "--bus-prefix", prefix, "--secret", secret])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let addr = loop {
        let line = lines.next().expect("node exited before listening").unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().parse().unwrap();
        }
    };
    // Keep reading stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Proc(child, addr)
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private `redis-server`, killed when dropped.
pub struct Redis(Child);

impl Redis {
    /// Starts one on `port`; `None` (or a panic in CI) when it cannot run.
    pub fn start(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                // Dropped (killed) if it never answers.
                let redis = Redis(c);
                let url = format!("redis://127.0.0.1:{port}");
                for _ in 0..50 {
                    if redis::Client::open(url.as_str()).and_then(|c| c.get_connection()).is_ok() {
                        return Some(redis);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                services::unavailable("redis-server", &format!("it did not come up on port {port}"));
                None
            }
            Err(e) => {
                services::unavailable("redis-server", &format!("it cannot be run ({e})"));
                None
            }
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // It may have been stopped by the test already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
