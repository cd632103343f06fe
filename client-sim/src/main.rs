//! `client-sim`: drive many simulated users against a sequencer (a running one with `--url`,
//! or one started in this process with `--embedded`), inject faults, then check that every
//! replica equals the server and report throughput and latency. `--relay` runs the same
//! workload over a bare broadcast relay afterwards, for the baseline ratio.
//!
//! The README's "see it work": `cargo run --release -p client-sim -- --embedded`.
//!
//! Exit status: 0 `CONVERGED`, 1 `DIVERGED` (or the run failed), 3 `INCOMPLETE` (no divergence
//! and no lost ack, but some clients were still offline at the end; see `client_sim::sim`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use client_sim::sim::{Faults, SimConfig, Tokens};
use client_sim::stats::Report;
use client_sim::UrlForm;
use sequencer::auth::{app_token, room_token, Role};

/// Stress-test the studio collaboration server and prove convergence.
///
/// Verdict and exit status: CONVERGED (0): every client online at the end and equal to the
/// server, no acknowledged op lost. DIVERGED (1): an online client differs from the server, or
/// an acknowledged op is missing from the log. INCOMPLETE (3): neither, but some clients were
/// still offline at the end (their server never answered again; they are listed, not compared).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Base URL(s) of a running sequencer, comma-separated (nodes of one cluster, or a load
    /// balancer). Client i starts at the i-th (round robin) and fails over to the next ones in
    /// turn when its server stops answering (refused, handshake timeout, socket died).
    #[arg(long, value_delimiter = ',', conflicts_with = "embedded")]
    url: Vec<String>,
    /// With several --url: give each client only its own URL (no failover; a client of a dead
    /// node stays offline and the run ends INCOMPLETE).
    #[arg(long)]
    no_failover: bool,
    /// Start a sequencer in this process (on 127.0.0.1, a free port).
    #[arg(long)]
    embedded: bool,
    /// Embedded server: keep everything in memory (the default unless --data-dir is given).
    #[arg(long, conflicts_with = "data_dir")]
    memory: bool,
    /// Embedded server: the SQLite store's directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's token secret.
    #[arg(long, env = "SEQUENCER_SECRET", default_value = "client-sim-dev-secret")]
    secret: String,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Edit steps per client.
    #[arg(long, default_value_t = 200)]
    ops: u64,
    /// Edit steps per second per client; 0 = closed loop (next edit as soon as the last is acked).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Upper bound of the workload phase, in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Cursor messages per second per client.
    #[arg(long, default_value_t = 5.0)]
    cursor_hz: f64,
    /// The ttl, in milliseconds, of the soft lock each client holds on what it drags (refreshed
    /// every half of it while the drag lasts); 0: no locks.
    #[arg(long, default_value_t = 2000)]
    drag_lock_ms: u64,
    /// Seed of everything random (default: from the clock; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Socket path: `parties` (/parties/main/{room}) or `ws` (/ws/{room}).
    #[arg(long, default_value = "parties")]
    path: String,
    /// Fault: clean disconnects per client per second.
    #[arg(long, default_value_t = 0.0)]
    disconnects: f64,
    /// Fault: abrupt kills (reset, no close frame) per client per second.
    #[arg(long, default_value_t = 0.0)]
    kills: f64,
    /// Fault: added one-way latency per frame, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fault: clients that stop reading their socket once, for --stall-ms.
    #[arg(long, default_value_t = 0)]
    stall_clients: usize,
    /// Fault: how long a stalled client stops reading, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    stall_ms: u64,
    /// Fault: duplicate sends of the op in flight per client per second.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Shorthand for a moderate fault mix (disconnects, kills, a stalled reader, duplicates).
    #[arg(long)]
    faults: bool,
    /// Also run the same workload over a bare broadcast relay and print the ratios.
    #[arg(long)]
    relay: bool,
    /// With --relay: use the relay already running at this URL instead of one in this process.
    #[arg(long)]
    relay_url: Option<String>,
    /// Only serve a bare broadcast relay on this address (e.g. 127.0.0.1:0) until Ctrl-C, for
    /// measuring it as its own process.
    #[arg(long)]
    serve_relay: Option<std::net::SocketAddr>,
    /// Embedded server: messages per second per connection (0 = off).
    #[arg(long, default_value_t = 0)]
    server_rate_limit: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

struct SeqTokens {
    secret: String,
}

impl Tokens for SeqTokens {
    fn room_token(&self, room: &str, sub: &str) -> String {
        room_token(&self.secret, room, sub, sub, Role::Editor, 24 * 3600).unwrap_or_default()
    }
    fn app_token(&self) -> String {
        app_token(&self.secret, "client-sim", "client-sim", None, Role::Viewer, 24 * 3600).unwrap_or_default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.serve_relay {
        let handle = client_sim::relay::start(addr).await.context("starting the relay")?;
        println!("relay listening on ws://{}", handle.addr);
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        handle.shutdown().await;
        return Ok(());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 & 0xffff_ffff)
    });
    let form = match args.path.as_str() {
        "parties" => UrlForm::Parties,
        "ws" => UrlForm::Ws,
        other => bail!("--path must be `parties` or `ws`, not `{other}`"),
    };
    if args.rooms == 0 || args.clients == 0 {
        bail!("--rooms and --clients must be at least 1");
    }
    let mut faults = Faults {
        disconnects: args.disconnects,
        kills: args.kills,
        latency: Duration::from_millis(args.latency_ms),
        stalled_clients: args.stall_clients,
        stall: Duration::from_millis(args.stall_ms),
        duplicates: args.duplicates,
    };
    if args.faults {
        faults.disconnects = faults.disconnects.max(0.05);
        faults.kills = faults.kills.max(0.05);
        faults.duplicates = faults.duplicates.max(0.2);
        faults.stalled_clients = faults.stalled_clients.max(1);
    }
    let mut server = None;
    let urls = if args.url.is_empty() {
        if !args.embedded {
            eprintln!("no --url given: starting an embedded sequencer (--embedded)");
        }
        let mut config = match &args.data_dir {
            Some(dir) => sequencer::Config::sqlite(args.secret.clone(), dir.clone()),
            None => sequencer::Config::memory(args.secret.clone()),
        };
        config.rate_limit = args.server_rate_limit;
        let handle = sequencer::start(config).await.context("starting the embedded sequencer")?;
        let url = format!("ws://{}", handle.addr);
        eprintln!(
            "embedded sequencer ({}) listening on {url}",
            args.data_dir.as_ref().map_or("memory".to_string(), |d| format!("SQLite in {}", d.display()))
        );
        server = Some(handle);
        vec![url]
    } else {
        args.url.clone()
    };
    let cfg = SimConfig {
        urls,
        failover: !args.no_failover,
        form,
        rooms: args.rooms,
        clients: args.clients,
        ops: args.ops,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        cursor_hz: args.cursor_hz,
        transport_hz: 0.05,
        seed,
        faults,
        room_prefix: format!("sim{seed:x}-"),
        quiesce_timeout: Duration::from_secs(30),
        progress: !args.quiet,
        drag_locks: (args.drag_lock_ms > 0).then(|| Duration::from_millis(args.drag_lock_ms)),
    };
    eprintln!(
        "client-sim seed {seed}: {} rooms × {} clients, {} steps each at {} /s, cursors {} Hz",
        cfg.rooms,
        cfg.clients,
        cfg.ops,
        if cfg.rate > 0.0 { cfg.rate.to_string() } else { "max (closed loop)".into() },
        cfg.cursor_hz
    );
    let tokens = Arc::new(SeqTokens { secret: args.secret.clone() });
    let report =
        client_sim::sim::run(cfg.clone(), tokens).await.with_context(|| format!("run failed (seed {seed})"))?;
    if let Some(s) = server.take() {
        s.shutdown().await.context("stopping the embedded sequencer")?;
    }
    let relay = if args.relay {
        let mut rcfg = cfg.clone();
        rcfg.faults = Faults::default();
        let r = match &args.relay_url {
            Some(url) => {
                rcfg.urls = vec![url.clone()];
                client_sim::sim::run_relay(rcfg).await.context("relay run failed")?
            }
            None => {
                let handle =
                    client_sim::relay::start(([127, 0, 0, 1], 0).into()).await.context("starting the relay")?;
                eprintln!("relay baseline on ws://{}", handle.addr);
                rcfg.urls = vec![format!("ws://{}", handle.addr)];
                let r = client_sim::sim::run_relay(rcfg).await.context("relay run failed")?;
                handle.shutdown().await;
                r
            }
        };
        Some(r)
    } else {
        None
    };
    print_report(&args, &report, relay.as_ref());
    if !report.ok() {
        for (room, diff) in &report.divergences {
            eprintln!("DIVERGENCE in room {room} (seed {seed}): {diff}");
        }
        for l in &report.lost_acks {
            eprintln!("LOST ACK (seed {seed}): {l}");
        }
        for o in &report.offline_at_end {
            eprintln!("OFFLINE AT THE END (seed {seed}): {o}");
        }
        eprintln!("verdict {} (seed {seed})", report.outcome().as_str());
        std::process::exit(report.outcome().exit_code());
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn print_report(args: &Args, seq: &Report, relay: Option<&Report>) {
    let ratios = relay.map(|r| {
        serde_json::json!({
            "ackedOpsPerSec": ratio(seq.acked_per_sec(), r.acked_per_sec()),
            "ackP99": ratio(seq.stats.ack.ms(0.99), r.stats.ack.ms(0.99)),
            "cpuPerOp": match (seq.process_cpu, r.process_cpu) {
                (Some(a), Some(b)) => ratio(a / seq.stats.acked.max(1) as f64, b / r.stats.acked.max(1) as f64),
                _ => None,
            },
        })
    });
    if args.json {
        let v = serde_json::json!({
            "sequencer": seq.to_json(),
            "relay": relay.map(Report::to_json),
            "ratios": ratios,
        });
        println!("{v:#}");
        return;
    }
    println!("{}", seq.to_table());
    if let (Some(r), Some(x)) = (relay, ratios) {
        println!("{}", r.to_table());
        let f = |k: &str| x[k].as_f64().map_or("n/a".into(), |v| format!("{v:.2}"));
        println!(
            "  sequencer / relay:  acked ops/s {}   p99 ack latency {}   process CPU per op {}",
            f("ackedOpsPerSec"),
            f("ackP99"),
            f("cpuPerOp")
        );
    }
}
