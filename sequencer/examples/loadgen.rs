//! Load generator for BENCHMARKS.md: acked ops/s and ack latency for R rooms × C clients, and
//! the server's idle memory per connection.
//!
//! ```text
//! cargo run --release -p sequencer --example loadgen -- ops 1 50 40 memory
//! cargo run --release -p sequencer --example loadgen -- ops 100 5 40 sqlite
//! ulimit -n 50000; cargo run --release -p sequencer --example loadgen -- idle 10000
//! ```
//!
//! `ops ROOMS CLIENTS OPS STORE`: every client keeps one op in flight (as the Rust client does),
//! sends `OPS` ops and reads everything broadcast to it; the server runs in-process with the
//! given store (`memory` or `sqlite` in a temporary directory) and no rate limit.
//! `idle N`: starts the real binary, opens N idle sockets and reports its resident memory
//! growth per connection (from /proc).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ops") => {
            let n = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
            let store = args.get(4).cloned().unwrap_or_else(|| "memory".into());
            ops(n(1, 1), n(2, 50), n(3, 40), &store).await
        }
        Some("idle") => idle(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000)).await,
        _ => anyhow::bail!("usage: loadgen ops ROOMS CLIENTS OPS memory|sqlite | loadgen idle N"),
    }
}

async fn ops(rooms: usize, clients: usize, per_client: usize, store: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = match store {
        "sqlite" => sequencer::Config::sqlite(SECRET, dir.path().to_path_buf()),
        _ => sequencer::Config::memory(SECRET),
    };
    config.rate_limit = 0;
    config.max_room_connections = clients.max(256);
    let server = sequencer::start(config).await?;
    let addr = server.addr;
    let mut conns = Vec::new();
    for r in 0..rooms {
        for c in 0..clients {
            let room = format!("room{r}");
            let token = sequencer::auth::room_token(SECRET, &room, "u", "u", sequencer::auth::Role::Editor, 600)?;
            let url = format!("ws://{addr}/parties/main/{room}?token={token}&_pk=c{c}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            ws.next().await; // init
            conns.push((ws, c));
        }
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut ws, c) in conns {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let id = format!("c{c}:{i}");
                let op = json!({"type":"update","target":"project","path":[format!("k{c}")],"value":i});
                let msg = json!({"type":"operation","operation":op,"opId":id});
                let t = Instant::now();
                ws.send(Message::Text(msg.to_string().into())).await?;
                loop {
                    let Some(m) = ws.next().await else { anyhow::bail!("closed") };
                    if let Message::Text(t) = m? {
                        if t.as_str().contains(&format!("\"opId\":\"{id}\"")) {
                            break;
                        }
                    }
                }
                lat.push(t.elapsed());
            }
            // Keep reading others' ops until everyone is done, so no queue overflows.
            Ok::<_, anyhow::Error>((lat, ws))
        }));
    }
    let mut all = Vec::new();
    let mut sockets = Vec::new();
    for t in tasks {
        let (lat, ws) = t.await??;
        all.extend(lat);
        sockets.push(ws);
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "rooms={rooms} clients/room={clients} store={store}: {} acked ops in {:.2?} = {:.0} ops/s, p50 {:.2?}, p99 {:.2?}",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
    drop(sockets);
    server.shutdown().await
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0))
}

async fn idle(n: usize) -> anyhow::Result<()> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("sequencer"))
        .ok_or_else(|| anyhow::anyhow!("cannot find the sequencer binary next to the example"))?;
    let mut child = std::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--memory", "--secret", SECRET, "--max-connections", "100000"])
        .args(["--max-room-connections", "100000"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().ok_or_else(|| anyhow::anyhow!("server exited"))??;
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    // Warm up one room per 100 connections so room state is part of the figure.
    let before = rss_kib(child.id())?;
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let room = format!("r{}", i / 100);
        let token = sequencer::auth::room_token(SECRET, &room, "u", "u", sequencer::auth::Role::Editor, 600)?;
        let url = format!("ws://{addr}/parties/main/{room}?token={token}&_pk=c{i}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        ws.next().await;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(child.id())?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!("{n} idle connections: server RSS {before} KiB -> {after} KiB = {:.1} KiB per connection", per / 1024.0);
    drop(sockets);
    child.kill()?;
    child.wait()?;
    Ok(())
}
