//! Measurements of one simulator run: HDR histograms of ack and remote-delivery latency,
//! counters, and the report as a human table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant figures.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        #[allow(clippy::expect_used)] // constant, valid bounds: this cannot fail
        Latency(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one sample (saturating at the histogram's top).
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail; a failure would only lose samples.
        let _ = self.0.add(&other.0);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1) in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// `{count, p50, p99, p999, max}` in milliseconds.
    pub fn to_json(&self) -> Value {
        json!({"count": self.count(), "p50_ms": self.ms(0.5), "p99_ms": self.ms(0.99),
               "p999_ms": self.ms(0.999), "max_ms": self.0.max() as f64 / 1000.0})
    }
}

/// Counters and histograms of one simulated client (merged into the run's total).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Edit steps generated and applied locally.
    pub steps: u64,
    /// Outgoing op messages sent (first sends).
    pub sent: u64,
    /// Resends of the op in flight after a reconnect.
    pub resent: u64,
    /// Deliberate duplicates sent on an open socket.
    pub duplicates: u64,
    /// Acks received.
    pub acked: u64,
    /// Remote ops received.
    pub remote: u64,
    /// Cursor messages received from others.
    pub cursors_in: u64,
    /// Cursor messages sent.
    pub cursors_out: u64,
    /// Transport messages sent.
    pub transports_out: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Reconnects to a different server than the previous connection's (failover).
    pub failovers: u64,
    /// Disconnects seen (any cause).
    pub disconnects: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Server `error` messages, by code.
    pub errors: BTreeMap<String, u64>,
    /// Soft locks held for a drag (one per drag, however often refreshed).
    pub locks_held: u64,
    /// `lock`s refused because someone else held the entity (`locked` answers).
    pub locked: u64,
    /// Changes of the lock table heard.
    pub lock_tables: u64,
    /// Local ops dropped by a reload.
    pub dropped_ops: u64,
    /// Edits the local document refused (a generator bug if non-zero).
    pub local_rejects: u64,
    /// Events lost to a full event queue.
    pub events_lagged: u64,
    /// Ack latency: first send to ack.
    pub ack: Latency,
    /// Remote delivery: the sender's first send to this client's apply.
    pub delivery: Latency,
    /// Outages: from a live client's disconnect to its next `init` (on whichever server). After
    /// a node is killed, the largest is the failover time of its slowest client.
    pub outage: Latency,
}

impl Stats {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.sent += o.sent;
        self.resent += o.resent;
        self.duplicates += o.duplicates;
        self.acked += o.acked;
        self.remote += o.remote;
        self.cursors_in += o.cursors_in;
        self.cursors_out += o.cursors_out;
        self.transports_out += o.transports_out;
        self.reconnects += o.reconnects;
        self.failovers += o.failovers;
        self.disconnects += o.disconnects;
        for (k, v) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.locks_held += o.locks_held;
        self.locked += o.locked;
        self.lock_tables += o.lock_tables;
        self.dropped_ops += o.dropped_ops;
        self.local_rejects += o.local_rejects;
        self.events_lagged += o.events_lagged;
        self.ack.merge(&o.ack);
        self.delivery.merge(&o.delivery);
        self.outage.merge(&o.outage);
    }
}

/// The verdict of a sequencer run (see [`crate::sim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every client online at the end and equal to the server; no acknowledged op lost.
    Converged,
    /// No divergence and no lost ack, but some clients were still offline at the end.
    Incomplete,
    /// An online client differs from the server, or an acknowledged op is not in the log.
    Diverged,
}

impl Outcome {
    /// `CONVERGED`, `INCOMPLETE` or `DIVERGED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Converged => "CONVERGED",
            Outcome::Incomplete => "INCOMPLETE",
            Outcome::Diverged => "DIVERGED",
        }
    }

    /// The simulator's exit code: 0, 3 and 1.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Converged => 0,
            Outcome::Incomplete => 3,
            Outcome::Diverged => 1,
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// `sequencer` or `relay`.
    pub mode: &'static str,
    /// The seed.
    pub seed: u64,
    /// Rooms × clients per room.
    pub rooms: usize,
    /// Clients per room.
    pub clients: usize,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// Merged stats.
    pub stats: Stats,
    /// Rooms compared and found equal (sequencer mode).
    pub rooms_converged: usize,
    /// Divergences: (room, first difference of an online client).
    pub divergences: Vec<(String, String)>,
    /// Clients still offline at the end of quiescence (not compared; not divergences).
    pub offline_at_end: Vec<String>,
    /// Acknowledged ops missing from the server's log (restart checks).
    pub lost_acks: Vec<String>,
    /// Server CPU time during the run, when the server ran in this process (seconds).
    pub process_cpu: Option<f64>,
}

impl Report {
    /// Acked ops per second.
    pub fn acked_per_sec(&self) -> f64 {
        self.stats.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether every client was online at the end and equal to the server, and no
    /// acknowledged op was lost ([`Outcome::Converged`]).
    pub fn ok(&self) -> bool {
        self.outcome() == Outcome::Converged
    }

    /// The verdict: a divergence or a lost ack first, then offline clients.
    pub fn outcome(&self) -> Outcome {
        if !self.divergences.is_empty() || !self.lost_acks.is_empty() {
            Outcome::Diverged
        } else if !self.offline_at_end.is_empty() {
            Outcome::Incomplete
        } else {
            Outcome::Converged
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        json!({
            "mode": self.mode, "seed": self.seed, "rooms": self.rooms, "clientsPerRoom": self.clients,
            "elapsedSecs": secs, "steps": s.steps, "sent": s.sent, "resent": s.resent,
            "duplicates": s.duplicates, "acked": s.acked, "ackedPerSec": self.acked_per_sec(),
            "ack": s.ack.to_json(), "delivery": s.delivery.to_json(), "remote": s.remote,
            "cursorsDelivered": s.cursors_in, "cursorsDeliveredPerSec": s.cursors_in as f64 / secs,
            "cursorsSent": s.cursors_out, "reconnects": s.reconnects, "failovers": s.failovers,
            "disconnects": s.disconnects, "outage": s.outage.to_json(),
            "faults": s.faults, "errors": s.errors, "droppedOps": s.dropped_ops,
            "locks": {"held": s.locks_held, "locked": s.locked, "tableChanges": s.lock_tables},
            "localRejects": s.local_rejects, "eventsLagged": s.events_lagged,
            "processCpuSecs": self.process_cpu,
            "cpuMicrosPerAckedOp": self.process_cpu.map(|c| c * 1e6 / (s.acked.max(1) as f64)),
            "roomsConverged": self.rooms_converged,
            "divergences": self.divergences.iter().map(|(r, d)| json!({"room": r, "firstDifference": d})).collect::<Vec<_>>(),
            "divergedRooms": self.divergences.len(), "offlineAtEnd": self.offline_at_end.len(),
            "offlineClients": self.offline_at_end, "lostAcks": self.lost_acks, "verdict": self.outcome().as_str(),
            "ok": self.ok(),
        })
    }

    /// The report as a human table.
    pub fn to_table(&self) -> String {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}"); // writing to a String cannot fail
        };
        row("mode", format!("{} (seed {})", self.mode, self.seed));
        row("clients", format!("{} rooms × {} = {}", self.rooms, self.clients, self.rooms * self.clients));
        row("duration", format!("{secs:.2} s"));
        row("edit steps", s.steps.to_string());
        row("acked ops", format!("{} ({:.0}/s)", s.acked, self.acked_per_sec()));
        row(
            "ack latency ms",
            format!(
                "p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
                s.ack.ms(0.5),
                s.ack.ms(0.99),
                s.ack.ms(0.999),
                s.ack.ms(1.0)
            ),
        );
        row(
            "remote delivery ms",
            format!(
                "p50 {:.2}  p99 {:.2}  p999 {:.2}  ({} deliveries)",
                s.delivery.ms(0.5),
                s.delivery.ms(0.99),
                s.delivery.ms(0.999),
                s.delivery.count()
            ),
        );
        row("cursor msgs delivered", format!("{} ({:.0}/s)", s.cursors_in, s.cursors_in as f64 / secs));
        row("reconnects / failovers", format!("{} / {} (disconnects {})", s.reconnects, s.failovers, s.disconnects));
        if s.outage.count() > 0 {
            row(
                "outages ms",
                format!(
                    "p50 {:.0}  p99 {:.0}  max {:.0}  ({} outages)",
                    s.outage.ms(0.5),
                    s.outage.ms(0.99),
                    s.outage.ms(1.0),
                    s.outage.count()
                ),
            );
        }
        row("resends / duplicates", format!("{} / {}", s.resent, s.duplicates));
        row("faults injected", if s.faults.is_empty() { "none".into() } else { fmt_map(&s.faults) });
        row("server errors by code", if s.errors.is_empty() { "none".into() } else { fmt_map(&s.errors) });
        row("ops dropped by reloads", s.dropped_ops.to_string());
        row("locks held / locked", format!("{} / {} ({} table changes heard)", s.locks_held, s.locked, s.lock_tables));
        if s.local_rejects > 0 || s.events_lagged > 0 {
            row("local rejects / lagged", format!("{} / {}", s.local_rejects, s.events_lagged));
        }
        if let Some(c) = self.process_cpu {
            row("process CPU", format!("{c:.2} s ({:.1} µs per acked op)", c * 1e6 / s.acked.max(1) as f64));
        }
        if self.mode == "sequencer" {
            let verdict = match self.outcome() {
                Outcome::Converged => format!("CONVERGED: {} rooms equal to the server", self.rooms_converged),
                Outcome::Incomplete => format!(
                    "INCOMPLETE: {} clients offline at the end (not compared); every online client equal to the server, no lost ack",
                    self.offline_at_end.len()
                ),
                Outcome::Diverged => format!(
                    "DIVERGED: {} rooms, {} lost acks, {} clients offline at the end",
                    self.divergences.len(),
                    self.lost_acks.len(),
                    self.offline_at_end.len()
                ),
            };
            row("verdict", verdict);
            for o in self.offline_at_end.iter().take(5) {
                row("  offline at the end", o.clone());
            }
            for (r, d) in self.divergences.iter().take(5) {
                row("  divergence", format!("room {r} (seed {}): {d}", self.seed));
            }
            for l in self.lost_acks.iter().take(5) {
                row("  lost ack", l.clone());
            }
        }
        t
    }
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// CPU time (user + system) this process has used so far, in seconds, from `/proc/self/stat`.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_quantiles() {
        let mut a = Stats::default();
        for ms in 1..=100 {
            a.ack.record(Duration::from_millis(ms));
        }
        a.acked = 100;
        *a.errors.entry("invalid_op".into()).or_default() += 1;
        let mut total = Stats::default();
        total.merge(&a);
        total.merge(&a);
        assert_eq!(total.acked, 200);
        assert_eq!(total.ack.count(), 200);
        assert_eq!(total.errors["invalid_op"], 2);
        assert!((total.ack.ms(0.5) - 50.0).abs() < 0.5, "{}", total.ack.ms(0.5));
        assert!(process_cpu_secs().is_some());
    }
}
