//! `loadgen`: a light load generator that measures a server, not its clients.
//!
//! Its clients keep only what an ack needs: they send an `operation` with an `opId` and a
//! `baseVersion` (the last version they saw), then read frames until their own op comes back,
//! telling it apart by skimming each frame's top-level `type`, `opId` and `version`
//! ([`skim`]) without decoding the ops. Remote ops are counted, never applied. One op is in
//! flight per client (closed loop), as with the Rust client. The same workload runs against
//! the sequencer and against the bare relay (`client-sim --serve-relay`), which echoes every
//! frame to the whole room, the sender's own frame being its "ack".
//!
//! The generator runs on one thread (pin it with `taskset` to a core apart from the server).
//! With `--pid` it reads the server's CPU time (`utime + stime` of `/proc/PID/stat`) over the
//! measured window and its peak resident memory (`VmHWM` of `/proc/PID/status`), and prints
//! one JSON line. `scripts/server-bench.sh` drives it; BENCHMARKS.md has the figures.
//!
//! ```text
//! loadgen ops --url ws://127.0.0.1:1999 --rooms 20 --clients 5 --workload update --pid PID
//! loadgen idle --url ws://127.0.0.1:1999 --count 19900 --pid PID
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use sequencer::auth::{room_token, Role};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Load generator for the server benchmark (`scripts/server-bench.sh`).
#[derive(Parser, Debug)]
#[command(name = "loadgen", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Closed-loop edits: acked ops/s, ack latency, server CPU per acked op, peak RSS.
    Ops(OpsArgs),
    /// Open idle sockets and report the server's resident memory.
    Idle(IdleArgs),
}

#[derive(clap::Args, Debug)]
struct OpsArgs {
    /// Server socket base URL (`ws://host:port`); `/parties/main/{room}` is appended.
    #[arg(long)]
    url: String,
    /// Token secret of the sequencer (the relay ignores tokens).
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Rooms.
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// What every client sends.
    #[arg(long, value_enum, default_value_t = Workload::Update)]
    workload: Workload,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds run before the measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Server process to read CPU and memory of from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// A label copied into the output line.
    #[arg(long, default_value = "")]
    label: String,
    /// The server is the bare relay: no `init`, and a client's own frame echoed is its ack.
    #[arg(long)]
    relay: bool,
}

#[derive(clap::Args, Debug)]
struct IdleArgs {
    /// Server socket base URL (`ws://host:port`).
    #[arg(long)]
    url: String,
    /// Token secret of the sequencer.
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Idle sockets to open.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Sockets per room.
    #[arg(long, default_value_t = 50)]
    per_room: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to wait, sockets open, before reading the server's memory.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Server process to read memory of.
    #[arg(long)]
    pid: Option<u32>,
}

/// What the clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Every client updates the gain of its own clip (one track of one clip per client).
    Update,
    /// Every client inserts a new clip at index 0 of the room's one track: every op that
    /// meets a concurrent one is rebased over it.
    Insert,
}

/// The top-level fields of a server frame that a load-generating client needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct Skim<'a> {
    /// `type`.
    ty: Option<&'a str>,
    /// `opId`.
    op_id: Option<&'a str>,
    /// `version`.
    version: Option<u64>,
}

/// Reads the top-level `type`, `opId` and `version` of a JSON object without decoding the
/// rest: one pass over the bytes that tracks nesting and strings. String values are returned
/// raw (escapes not undone), which is enough to compare the ids this generator makes.
fn skim(frame: &str) -> Skim<'_> {
    let b = frame.as_bytes();
    let mut out = Skim::default();
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let end = string_end(b, start);
                if depth == 1 && expect_key {
                    expect_key = false;
                    let key = &b[start..end];
                    let mut j = end + 1;
                    while j < b.len() && (b[j] == b':' || b[j].is_ascii_whitespace()) {
                        j += 1;
                    }
                    match key {
                        b"type" | b"opId" if b.get(j) == Some(&b'"') => {
                            let vend = string_end(b, j + 1);
                            let v = frame.get(j + 1..vend);
                            if key == b"type" {
                                out.ty = v;
                            } else {
                                out.op_id = v;
                            }
                            i = vend + 1;
                            continue;
                        }
                        b"version" => {
                            let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
                            out.version = frame.get(j..j + digits).and_then(|d| d.parse().ok());
                            i = j + digits;
                            continue;
                        }
                        _ => {}
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    out
}

/// The index of the quote that closes the string whose content starts at `start` (or the
/// length of `b` when it is unterminated).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut j = start;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return j,
            _ => j += 1,
        }
    }
    b.len()
}

/// What one client measured.
struct ClientResult {
    acked: u64,
    remote: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// The CPU ticks (`utime + stime`) of a process.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are
    // plain: state is field 3, utime field 14, stime field 15.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

async fn connect(base: &str, secret: &str, room: &str, sub: &str) -> anyhow::Result<Ws> {
    let token = room_token(secret, room, sub, sub, Role::Editor, 3600)?;
    let url = format!("{base}/parties/main/{room}?token={token}&_pk={sub}");
    // A server that has just printed its address may still be settling: a few tries.
    let mut tries = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) if tries >= 5 => return Err(e.into()),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads frames until the `init` (the relay sends none: it is skipped there).
async fn wait_init(ws: &mut Ws, relay: bool) -> anyhow::Result<()> {
    if relay {
        return Ok(());
    }
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m? {
            if skim(t.as_str()).ty == Some("init") {
                return Ok(());
            }
        }
    }
    anyhow::bail!("socket closed before init")
}

/// Sends `frame` and reads until the op `op_id` comes back; returns the version it got
/// (`None` from the relay) and the remote ops seen meanwhile.
async fn round_trip(ws: &mut Ws, frame: String, op_id: &str, last: &mut u64) -> anyhow::Result<(bool, u64)> {
    ws.send(Message::text(frame)).await?;
    let mut remote = 0;
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        let s = skim(t.as_str());
        match s.ty {
            Some("operation") => {
                if let Some(v) = s.version {
                    *last = (*last).max(v);
                }
                if s.op_id == Some(op_id) {
                    return Ok((true, remote));
                }
                remote += 1;
            }
            Some("error") if s.op_id == Some(op_id) => return Ok((false, remote)),
            _ => {}
        }
    }
    anyhow::bail!("socket closed with op {op_id} in flight")
}

fn op_frame(workload: Workload, client: usize, n: u64, base: u64, op_id: &str) -> String {
    let op = match workload {
        Workload::Update => format!(
            r#"{{"type":"update","target":"clip","id":"c{client}","path":["gain"],"value":{}}}"#,
            (n % 1000) as f64 / 1000.0
        ),
        Workload::Insert => format!(
            r#"{{"type":"insert","target":"clip","id":"k{client}_{n}","parent":"t","index":0,"value":{{"start":{n},"duration":1}}}}"#
        ),
    };
    format!(r#"{{"type":"operation","operation":{op},"baseVersion":{base},"opId":"{op_id}"}}"#)
}

/// The first op of a room: its track, and for the update workload one clip per client.
fn setup_frame(workload: Workload, clients: usize) -> String {
    let mut ops =
        vec![r#"{"type":"insert","target":"track","id":"t","index":0,"value":{"name":"t","clips":[]}}"#.to_string()];
    if workload == Workload::Update {
        for c in 0..clients {
            ops.push(format!(
                r#"{{"type":"insert","target":"clip","id":"c{c}","parent":"t","index":{c},"value":{{"start":{c},"duration":1,"gain":1}}}}"#
            ));
        }
    }
    format!(r#"{{"type":"operation","operation":[{}],"baseVersion":0,"opId":"setup"}}"#, ops.join(","))
}

async fn ops(args: OpsArgs) -> anyhow::Result<()> {
    let relay = args.relay;
    let base = args.url.trim_end_matches('/').to_string();
    let mut sockets = Vec::with_capacity(args.rooms * args.clients);
    for r in 0..args.rooms {
        let room = format!("bench{r}");
        for c in 0..args.clients {
            let sub = format!("r{r}c{c}");
            let mut ws = connect(&base, &args.secret, &room, &sub).await.with_context(|| format!("connect {room}"))?;
            wait_init(&mut ws, relay).await?;
            sockets.push((r, c, ws));
        }
        // The room's document: sent by its first client, acked before anyone edits.
        let first = sockets.len() - args.clients;
        let mut last = 0;
        let (ok, _) =
            round_trip(&mut sockets[first].2, setup_frame(args.workload, args.clients), "setup", &mut last).await?;
        anyhow::ensure!(ok, "room {room}: setup op rejected");
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let cpu0 = Rc::new(RefCell::new(None));
    let local = tokio::task::LocalSet::new();
    if let Some(pid) = args.pid {
        let cpu0 = cpu0.clone();
        local.spawn_local(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *cpu0.borrow_mut() = Some((cpu_ticks(pid), cpu_ticks(std::process::id())));
        });
    }
    let mut tasks = Vec::new();
    for (r, c, mut ws) in sockets {
        let workload = args.workload;
        tasks.push(local.spawn_local(async move {
            let mut res = ClientResult { acked: 0, remote: 0, errors: 0, hist: Histogram::new(3)? };
            let mut last = 0u64;
            tokio::time::sleep_until(start.into()).await;
            let mut n = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= stop_at {
                    break;
                }
                let op_id = format!("r{r}c{c}:{n}");
                let frame = op_frame(workload, c, n, last, &op_id);
                let (ok, remote) = round_trip(&mut ws, frame, &op_id, &mut last).await?;
                let done = Instant::now();
                n += 1;
                if sent >= measure_from && done <= stop_at {
                    res.remote += remote;
                    if ok {
                        res.acked += 1;
                        res.hist.record((done - sent).as_micros() as u64)?;
                    } else {
                        res.errors += 1;
                    }
                }
            }
            // The socket closes with the task; the server may see a reset, which it handles.
            let _ = ws.close(None).await;
            anyhow::Ok(res)
        }));
    }
    let results = local
        .run_until(async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await?);
            }
            anyhow::Ok(out)
        })
        .await?;
    let cpu1 = args.pid.map(cpu_ticks);
    let gen1 = cpu_ticks(std::process::id());
    let end = Instant::now().min(stop_at);
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut acked, mut remote, mut errors) = (0, 0, 0);
    for r in results {
        let r = r?;
        acked += r.acked;
        remote += r.remote;
        errors += r.errors;
        hist.add(&r.hist)?;
    }
    let secs = args.duration.min((end - measure_from).as_secs_f64()).max(1e-9);
    let tck = args.clk_tck.max(1) as f64;
    let (cpu_secs, peak_kb, gen_secs) = match (args.pid, cpu0.borrow_mut().take(), cpu1) {
        (Some(pid), Some((Ok(t0), g0)), Some(Ok(t1))) => {
            let gen = match (g0, gen1) {
                (Ok(a), Ok(b)) => Some(b.saturating_sub(a) as f64 / tck),
                _ => None,
            };
            (t1.saturating_sub(t0) as f64 / tck, status_kb(pid, "VmHWM").ok(), gen)
        }
        _ => (f64::NAN, None, None),
    };
    let line = serde_json::json!({
        "label": args.label,
        "rooms": args.rooms,
        "clients": args.clients,
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "seconds": secs,
        "acked": acked,
        "opsPerSec": acked as f64 / secs,
        "remoteOps": remote,
        "errors": errors,
        "ackUs": {"p50": hist.value_at_quantile(0.5), "p99": hist.value_at_quantile(0.99), "p999": hist.value_at_quantile(0.999), "max": hist.max()},
        "serverCpuSecs": cpu_secs,
        "serverCpuUsPerOp": cpu_secs * 1e6 / acked.max(1) as f64,
        "serverPeakRssKb": peak_kb,
        "generatorCpuSecs": gen_secs,
    });
    println!("{line}");
    Ok(())
}

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_string();
    let rss0 = args.pid.and_then(|p| status_kb(p, "VmRSS").ok());
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let opened = Rc::new(RefCell::new(0usize));
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    let mut failures = 0usize;
    local
        .run_until(async {
            let mut handshakes = Vec::new();
            for i in 0..args.count {
                let permit = sem.clone().acquire_owned().await?;
                let (base, secret, counter) = (base.clone(), args.secret.clone(), opened.clone());
                handshakes.push(tokio::task::spawn_local(async move {
                    let room = format!("idle{}", i / args.per_room.max(1));
                    let ws = connect(&base, &secret, &room, &format!("i{i}")).await;
                    drop(permit);
                    let Ok(mut ws) = ws else { return false };
                    *counter.borrow_mut() += 1;
                    // Read (and drop) what the room sends, and ping now and then so the
                    // heartbeat keeps the socket open.
                    let mut tick = tokio::time::interval(Duration::from_secs(10));
                    loop {
                        tokio::select! {
                            m = ws.next() => if !matches!(m, Some(Ok(_))) { return true },
                            _ = tick.tick() => if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() { return true },
                        }
                    }
                }));
                if i % 1000 == 999 {
                    eprintln!("idle: {} sockets open after {:.1}s", opened.borrow(), started.elapsed().as_secs_f64());
                }
            }
            // Wait for the last handshakes, then let the server settle.
            let _all = sem.acquire_many(args.concurrency.max(1) as u32).await?;
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
            failures = args.count - *opened.borrow();
            let rss1 = args.pid.and_then(|p| status_kb(p, "VmRSS").ok());
            let hwm = args.pid.and_then(|p| status_kb(p, "VmHWM").ok());
            let open = *opened.borrow();
            let per = match (rss0, rss1) {
                (Some(a), Some(b)) if open > 0 => Some(b.saturating_sub(a) as f64 * 1024.0 / open as f64),
                _ => None,
            };
            println!(
                "{}",
                serde_json::json!({"open": open, "failed": failures, "secondsToOpen": started.elapsed().as_secs_f64() - args.settle,
                    "serverRssKbBefore": rss0, "serverRssKb": rss1, "serverPeakRssKb": hwm, "bytesPerConnection": per})
            );
            for h in handshakes {
                h.abort();
            }
            anyhow::Ok(())
        })
        .await
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Ops(a) => rt.block_on(ops(a)),
        Command::Idle(a) => rt.block_on(idle(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skims_an_ack_whatever_the_field_order() {
        let f = r#"{"type":"operation","operation":[{"type":"update","target":"clip","id":"c1","path":["gain"],"value":0.5,"opId":"x","version":7}],"version":42,"userId":"u","opId":"r0c1:3"}"#;
        assert_eq!(skim(f), Skim { ty: Some("operation"), op_id: Some("r0c1:3"), version: Some(42) });
        let g = r#"{ "opId" : "a\"b", "version": 9, "type": "error", "code": "invalid_op" }"#;
        assert_eq!(skim(g), Skim { ty: Some("error"), op_id: Some(r#"a\"b"#), version: Some(9) });
    }

    #[test]
    fn nested_fields_are_not_taken_for_top_level_ones() {
        let f = r#"{"type":"init","state":{"version":3,"tracks":[{"id":"t","type":"x"}]},"users":[],"yourId":"y"}"#;
        assert_eq!(skim(f), Skim { ty: Some("init"), op_id: None, version: None });
    }

    #[test]
    fn a_relay_echo_is_an_ack() {
        let f = op_frame(Workload::Insert, 3, 7, 12, "r1c3:7");
        assert_eq!(skim(&f), Skim { ty: Some("operation"), op_id: Some("r1c3:7"), version: None });
        let s = setup_frame(Workload::Update, 2);
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["operation"].as_array().map(Vec::len), Some(3));
        let o: serde_json::Value = serde_json::from_str(&f).expect("valid JSON");
        assert_eq!(o["operation"]["index"], 0);
    }

    #[test]
    fn garbage_does_not_panic() {
        for f in ["", "{", "\"", r#"{"type""#, r#"{"version":}"#, r#"{"opId":"#, "]]]}}}", r#"{"type":"\"#] {
            let _ = skim(f);
        }
    }
}
