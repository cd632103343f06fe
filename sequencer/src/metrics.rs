//! Prometheus text metrics (`GET /metrics`): lock-free counters and fixed-bucket histograms.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ot_core::protocol::ErrorCode;

/// A histogram with fixed upper bounds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in micro-units (µs for seconds, or 1e-6 steps for counts).
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_micro.fetch_add((v * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micro.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The codes a `lock` is refused with, as labels of `sequencer_lock_refusals_total`.
pub const LOCK_REFUSAL_CODES: [ErrorCode; 4] =
    [ErrorCode::Locked, ErrorCode::LockLimit, ErrorCode::InvalidOp, ErrorCode::Forbidden];

/// The server's metrics.
pub struct Metrics {
    connections: AtomicU64,
    rooms: AtomicU64,
    ops_sequenced: AtomicU64,
    cursor_drops: AtomicU64,
    slow_closes: AtomicU64,
    rooms_refused: AtomicU64,
    limit_refusals: AtomicU64,
    locks_held: AtomicI64,
    locks_expired: AtomicU64,
    /// By code, in the order of [`LOCK_REFUSAL_CODES`].
    lock_refusals: [AtomicU64; 4],
    rebase_depth: Histogram,
    storage_latency: Histogram,
    group_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: AtomicU64::new(0),
            rooms: AtomicU64::new(0),
            ops_sequenced: AtomicU64::new(0),
            cursor_drops: AtomicU64::new(0),
            slow_closes: AtomicU64::new(0),
            rooms_refused: AtomicU64::new(0),
            limit_refusals: AtomicU64::new(0),
            locks_held: AtomicI64::new(0),
            locks_expired: AtomicU64::new(0),
            lock_refusals: Default::default(),
            rebase_depth: Histogram::new(&[0.0, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0]),
            storage_latency: Histogram::new(&[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]),
            group_size: Histogram::new(&[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0]),
        }
    }
}

impl Metrics {
    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, open: bool) {
        if open {
            self.connections.fetch_add(1, Relaxed);
        } else {
            self.connections.fetch_sub(1, Relaxed);
        }
    }

    /// A room loaded (`true`) or unloaded.
    pub fn room(&self, loaded: bool) {
        if loaded {
            self.rooms.fetch_add(1, Relaxed);
        } else {
            self.rooms.fetch_sub(1, Relaxed);
        }
    }

    /// An op was sequenced `depth` versions behind the head.
    pub fn sequenced(&self, depth: u64) {
        self.ops_sequenced.fetch_add(1, Relaxed);
        self.rebase_depth.observe(depth as f64);
    }

    /// A queued cursor update was replaced by a newer one for a slow reader.
    pub fn cursor_dropped(&self) {
        self.cursor_drops.fetch_add(1, Relaxed);
    }

    /// A connection was closed because its operation queue overflowed.
    pub fn slow_close(&self) {
        self.slow_closes.fetch_add(1, Relaxed);
    }

    /// A new room was refused because `max_rooms` were loaded.
    pub fn room_refused(&self) {
        self.rooms_refused.fetch_add(1, Relaxed);
    }

    /// A connection was refused, or a message answered, for a limit (account slots, sizes).
    pub fn limit_refused(&self) {
        self.limit_refusals.fetch_add(1, Relaxed);
    }

    /// The soft locks held changed by `delta` (taken minus released, over all rooms).
    pub fn locks_held(&self, delta: i64) {
        self.locks_held.fetch_add(delta, Relaxed);
    }

    /// `count` soft locks expired.
    pub fn locks_expired(&self, count: u64) {
        self.locks_expired.fetch_add(count, Relaxed);
    }

    /// A `lock` was refused with `code` (a code not in [`LOCK_REFUSAL_CODES`] is not counted).
    pub fn lock_refused(&self, code: ErrorCode) {
        if let Some(i) = LOCK_REFUSAL_CODES.iter().position(|c| *c == code) {
            self.lock_refusals[i].fetch_add(1, Relaxed);
        }
    }

    /// Soft locks held now, over all rooms.
    pub fn locks(&self) -> i64 {
        self.locks_held.load(Relaxed)
    }

    /// One group commit took `d` for `groups` room requests.
    pub fn storage_append(&self, d: Duration, groups: usize) {
        self.storage_latency.observe(d.as_secs_f64());
        self.group_size.observe(groups as f64);
    }

    /// Open connections now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(&mut out, "sequencer_connections", "gauge", "Open WebSocket connections.", self.connections.load(Relaxed));
        g(&mut out, "sequencer_rooms", "gauge", "Rooms loaded in memory.", self.rooms.load(Relaxed));
        g(
            &mut out,
            "sequencer_ops_sequenced_total",
            "counter",
            "Operations sequenced.",
            self.ops_sequenced.load(Relaxed),
        );
        g(
            &mut out,
            "sequencer_broadcast_cursor_drops_total",
            "counter",
            "Cursor updates coalesced away for slow readers.",
            self.cursor_drops.load(Relaxed),
        );
        g(
            &mut out,
            "sequencer_broadcast_overflow_closes_total",
            "counter",
            "Connections closed because their operation queue overflowed.",
            self.slow_closes.load(Relaxed),
        );
        g(
            &mut out,
            "sequencer_rooms_refused_total",
            "counter",
            "New rooms refused because the loaded-room cap was reached.",
            self.rooms_refused.load(Relaxed),
        );
        g(
            &mut out,
            "sequencer_limit_refusals_total",
            "counter",
            "Messages answered too_large and connections refused for a per-account or size limit.",
            self.limit_refusals.load(Relaxed),
        );
        let held = self.locks_held.load(Relaxed).max(0) as u64;
        g(&mut out, "sequencer_locks_held", "gauge", "Soft locks held now, over all rooms.", held);
        g(
            &mut out,
            "sequencer_locks_expired_total",
            "counter",
            "Soft locks that expired unrefreshed.",
            self.locks_expired.load(Relaxed),
        );
        let name = "sequencer_lock_refusals_total";
        let _ = writeln!(out, "# HELP {name} Lock requests refused, by error code.\n# TYPE {name} counter");
        for (code, n) in LOCK_REFUSAL_CODES.iter().zip(&self.lock_refusals) {
            let _ = writeln!(out, "{name}{{code=\"{}\"}} {}", code.as_str(), n.load(Relaxed));
        }
        self.rebase_depth.render(&mut out, "sequencer_rebase_depth", "Versions an op was transformed over.");
        self.storage_latency.render(&mut out, "sequencer_storage_append_seconds", "Latency of one group commit.");
        self.group_size.render(&mut out, "sequencer_storage_group_size", "Room requests per group commit.");
        out
    }
}
