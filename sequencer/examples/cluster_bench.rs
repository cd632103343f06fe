//! What room-wide presence and the bus cost, for BENCHMARKS.md ("scale-out"): cursor latency
//! from a move on one node to its arrival on another (against two clients of one node, in the
//! same run), and the bus's added server CPU and ack latency per op.
//!
//! ```text
//! cargo build --release -p sequencer --bins --examples
//! target/release/examples/cluster_bench [--moves 2000] [--ops 2000] \
//!     [--pg postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379]
//! ```
//!
//! It starts `sequencer serve` processes (the binary next to this example's directory) on a
//! fresh PostgreSQL database and a fresh Redis key prefix, both removed at the end:
//!
//! - **cursors**: nodes A and B with `--bus`; Ana and Cy on A, Ben on B, one room. Ana moves her
//!   cursor, waits until both Cy (same node) and Ben (other node) got that move, and moves
//!   again: `--moves` times. Latency is from sending the move to its arrival; the default
//!   cursor tick (20 ms) batches moves on Ana's node, so both figures include it.
//! - **bus cost per op**: one client, one op in flight, `--ops` ops against a node with `--bus`
//!   and then against a node without (same store), each node alone on its database; server CPU
//!   per acked op from `/proc/<pid>/stat`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "cluster-bench";
const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Args {
    moves: usize,
    ops: usize,
    pg: String,
    redis: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        moves: 2000,
        ops: 2000,
        pg: "postgres://postgres@127.0.0.1:5432".into(),
        redis: "redis://127.0.0.1:6379".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--moves" => a.moves = value()?.parse()?,
            "--ops" => a.ops = value()?.parse()?,
            "--pg" => a.pg = value()?,
            "--redis" => a.redis = value()?,
            "-h" | "--help" => {
                println!("usage: cluster_bench [--moves N] [--ops N] [--pg URL] [--redis URL]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other} (see --help)"),
        }
    }
    Ok(a)
}

/// A database made for the run, dropped at the end.
struct Db {
    admin: String,
    name: String,
}

impl Db {
    fn create(pg: &str) -> anyhow::Result<Db> {
        let name = format!("cluster_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("{pg}/postgres");
        let (a, n) = (admin.clone(), name.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            postgres::Client::connect(&a, postgres::NoTls)?.batch_execute(&format!("CREATE DATABASE {n}"))?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("create database panicked"))??;
        Ok(Db { admin, name })
    }

    fn url(&self, pg: &str) -> String {
        format!("{pg}/{}", self.name)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (a, n) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), postgres::Error> {
            postgres::Client::connect(&a, postgres::NoTls)?
                .batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop database {}", self.name);
        }
    }
}

/// A node process, killed at the end.
struct Node {
    child: Child,
    addr: String,
}

impl Node {
    fn start(store: &str, bus: Option<(&str, &str)>) -> anyhow::Result<Node> {
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("sequencer"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate the sequencer binary"))?;
        anyhow::ensure!(bin.exists(), "{} is missing: cargo build --release -p sequencer --bins", bin.display());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0", "--secret", SECRET, "--store", store]);
        if let Some((url, prefix)) = bus {
            cmd.args(["--bus", url, "--bus-prefix", prefix]);
        }
        let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let out = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
        let addr = loop {
            let line = lines.next().ok_or_else(|| anyhow::anyhow!("node exited before listening"))??;
            if let Some(a) = line.split("listening on ").nth(1) {
                break a.trim().to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Node { child, addr })
    }

    /// utime + stime of the process, in clock ticks (100 per second on Linux).
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // After the command name: state is field 0, utime 11, stime 12.
        Ok(field(11) + field(12))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn join(addr: &str, room: &str, pk: &str) -> anyhow::Result<(Ws, Value)> {
    let token = sequencer::auth::room_token(SECRET, room, pk, pk, sequencer::auth::Role::Editor, 3600)?;
    let url = format!("ws://{addr}/parties/main/{room}?token={token}&_pk={pk}");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await??;
    let init = next(&mut ws).await?;
    anyhow::ensure!(init["type"] == "init", "expected init, got {init}");
    Ok((ws, init))
}

async fn next(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("socket ended: {other:?}"),
        }
    }
}

/// Waits for Ana's cursor at `x`; returns when it arrived.
async fn cursor_at(ws: &mut Ws, x: f64) -> anyhow::Result<Instant> {
    loop {
        let m = next(ws).await?;
        if m["type"] == "cursor" && m["userId"] == "ana" && m["x"].as_f64() == Some(x) {
            return Ok(Instant::now());
        }
    }
}

fn percentiles(mut us: Vec<u64>) -> String {
    us.sort_unstable();
    let at = |p: f64| us.get(((us.len() as f64 * p) as usize).min(us.len().saturating_sub(1))).copied().unwrap_or(0);
    format!("p50 {:.2} ms, p99 {:.2} ms (n = {})", at(0.50) as f64 / 1000.0, at(0.99) as f64 / 1000.0, us.len())
}

async fn cursors(a: &Args) -> anyhow::Result<()> {
    let db = Db::create(&a.pg)?;
    let prefix = format!("cluster-bench-{}:", uuid::Uuid::new_v4().simple());
    let store = db.url(&a.pg);
    let (na, nb) = (Node::start(&store, Some((&a.redis, &prefix)))?, Node::start(&store, Some((&a.redis, &prefix)))?);
    let (mut ana, _) = join(&na.addr, "cursors", "ana").await?;
    let (mut cy, _) = join(&na.addr, "cursors", "cy").await?;
    let (mut ben, init) = join(&nb.addr, "cursors", "ben").await?;
    anyhow::ensure!(init["users"].as_array().is_some_and(|u| u.len() == 3), "Ben does not see everyone: {init}");
    let (mut same, mut cross) = (Vec::with_capacity(a.moves), Vec::with_capacity(a.moves));
    for i in 0..a.moves {
        let x = i as f64;
        let sent = Instant::now();
        ana.send(Message::Text(json!({"type":"cursor","x":x,"y":0.0}).to_string().into())).await?;
        let (to_cy, to_ben) = tokio::join!(cursor_at(&mut cy, x), cursor_at(&mut ben, x));
        same.push(to_cy?.duration_since(sent).as_micros() as u64);
        cross.push(to_ben?.duration_since(sent).as_micros() as u64);
        if (i + 1) % 500 == 0 {
            eprintln!("  {} / {} moves", i + 1, a.moves);
        }
    }
    println!("cursor, same node:   {}", percentiles(same));
    println!("cursor, other node:  {}", percentiles(cross));
    Ok(())
}

/// One client, one op in flight: acked ops, their latencies, and the node's CPU per op.
async fn ops_against(node: &Node, ops: usize) -> anyhow::Result<(Vec<u64>, f64)> {
    let (mut ws, init) = join(&node.addr, "ops", "ana").await?;
    let mut version = init["version"].as_u64().unwrap_or(0);
    let cpu0 = node.cpu_ticks()?;
    let mut lat = Vec::with_capacity(ops);
    for i in 0..ops {
        let op = json!({"type":"update","target":"project","path":["tempo"],"value": 60 + i % 120});
        let id = format!("ana:{i}");
        let msg = json!({"type":"operation","operation":op,"opId":id,"baseVersion":version});
        let sent = Instant::now();
        ws.send(Message::Text(msg.to_string().into())).await?;
        loop {
            let m = next(&mut ws).await?;
            if m["type"] == "error" {
                anyhow::bail!("refused: {m}");
            }
            if m["type"] == "operation" && m["opId"] == id.as_str() {
                version = m["version"].as_u64().unwrap_or(version);
                break;
            }
        }
        lat.push(sent.elapsed().as_micros() as u64);
    }
    let cpu = node.cpu_ticks()? - cpu0;
    Ok((lat, cpu as f64 * 10_000.0 / ops as f64))
}

async fn bus_cost(a: &Args) -> anyhow::Result<()> {
    let prefix = format!("cluster-bench-{}:", uuid::Uuid::new_v4().simple());
    for with_bus in [true, false] {
        let db = Db::create(&a.pg)?;
        let node = Node::start(&db.url(&a.pg), with_bus.then_some((a.redis.as_str(), prefix.as_str())))?;
        let (lat, cpu_us) = ops_against(&node, a.ops).await?;
        let label = if with_bus { "with the bus   " } else { "without the bus" };
        println!("ops {label}: ack {}, server CPU {cpu_us:.0} µs/op", percentiles(lat));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    eprintln!("cursor latency: {} moves", a.moves);
    cursors(&a).await?;
    eprintln!("bus cost: {} ops with and without the bus", a.ops);
    bus_cost(&a).await
}
