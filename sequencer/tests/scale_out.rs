//! Several sequencer nodes on one PostgreSQL database (and a Redis bus): clients of one room
//! spread over the nodes converge; a SIGKILLed node's clients fail over and lose no acked op;
//! a Redis restart is survived by reading the store.
//!
//! Each test uses its own database and bus prefix. Without PostgreSQL (or Redis, for the tests
//! that need it) a test fails in CI (`CI` set) and elsewhere prints why and returns.

mod cluster;
mod pg;
mod services;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use cluster::{free_port, spawn_node, Proc, Redis};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "scale-out-secret";
const WAIT: Duration = Duration::from_secs(10);
const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn token(room: &str, sub: &str) -> String {
    sequencer::auth::room_token(SECRET, room, sub, sub, sequencer::auth::Role::Editor, 600).unwrap()
}

fn prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}

async fn node(db: &pg::TestDb, bus: Option<(&str, &str)>) -> sequencer::ServerHandle {
    let mut config = sequencer::Config::memory(SECRET);
    config.storage = sequencer::Storage::Postgres(db.url.clone());
    config.rate_limit = 0;
    config.cluster_poll = Duration::from_millis(100);
    config.bus = bus.map(|(url, prefix)| sequencer::bus::BusConfig { url: url.into(), prefix: prefix.into() });
    sequencer::start(config).await.unwrap()
}

/// A client that keeps one op in flight, checks that it sees every version exactly once and in
/// order, and fails over to the next address when its node goes away.
struct Tester {
    pk: String,
    room: String,
    addrs: Vec<SocketAddr>,
    at: usize,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    version: u64,
    acked: Vec<(String, u64)>,
    failovers: usize,
}

impl Tester {
    async fn connect(
        addr: SocketAddr,
        room: &str,
        pk: &str,
        since: Option<u64>,
    ) -> anyhow::Result<(WebSocketStream<MaybeTlsStream<TcpStream>>, Value)> {
        let mut url = format!("ws://{addr}/parties/main/{room}?token={}&_pk={pk}", token(room, pk));
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await??;
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await? {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    anyhow::ensure!(v["type"] == "init", "expected init, got {v}");
                    return Ok((ws, v));
                }
                Some(Ok(_)) => continue,
                other => anyhow::bail!("no init: {other:?}"),
            }
        }
    }

    async fn new(addrs: Vec<SocketAddr>, at: usize, room: &str, pk: &str) -> Tester {
        let (ws, init) = Self::connect(addrs[at], room, pk, None).await.unwrap();
        let version = init["version"].as_u64().unwrap();
        Tester { pk: pk.into(), room: room.into(), addrs, at, ws, version, acked: Vec::new(), failovers: 0 }
    }

    /// Takes one `operation` message: the next version, or a duplicate ack of ours.
    fn take(&mut self, m: &Value, op_id: &str) -> bool {
        let v = m["version"].as_u64().unwrap();
        if v == self.version + 1 {
            self.version = v;
        } else {
            assert!(
                v <= self.version && m["opId"] == op_id,
                "{}: gap or repeat: at {}, got {m}",
                self.pk,
                self.version
            );
        }
        if m["opId"] == op_id {
            self.acked.push((op_id.to_string(), v));
            return true;
        }
        false
    }

    /// Reconnects to the next node with `since` and returns after its `init`.
    async fn failover(&mut self) {
        for _ in 0..50 {
            self.at = (self.at + 1) % self.addrs.len();
            if let Ok((ws, init)) = Self::connect(self.addrs[self.at], &self.room, &self.pk, Some(self.version)).await {
                self.ws = ws;
                self.failovers += 1;
                if let Some(ops) = init["ops"].as_array() {
                    for m in ops {
                        let v = m["version"].as_u64().unwrap();
                        assert_eq!(v, self.version + 1, "{}: catch-up gap", self.pk);
                        self.version = v;
                    }
                } else {
                    // Too far behind for a catch-up: the full state; versions restart from it.
                    self.version = init["version"].as_u64().unwrap();
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{}: no node to fail over to", self.pk);
    }

    /// Sends an op (a new track) and waits for its ack, failing over and resending with the
    /// same opId and base as often as needed.
    async fn insert(&mut self, seq: usize) {
        let op_id = format!("{}:{seq}", self.pk);
        let base = self.version;
        let msg = json!({"type": "operation", "opId": op_id, "baseVersion": base,
            "operation": {"type":"insert","target":"track","id":format!("t-{op_id}"),"index":0,"value":{"name":op_id}}});
        'send: loop {
            if self.ws.send(Message::Text(msg.to_string().into())).await.is_err() {
                self.failover().await;
                continue;
            }
            loop {
                match tokio::time::timeout(WAIT, self.ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let m: Value = serde_json::from_str(t.as_str()).unwrap();
                        match m["type"].as_str() {
                            Some("operation") if self.take(&m, &op_id) => return,
                            Some("error") => panic!("{}: {m}", self.pk),
                            _ => {}
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => {
                        self.failover().await;
                        continue 'send;
                    }
                    Err(_) => panic!("{}: no ack for {op_id} within {WAIT:?}", self.pk),
                }
            }
        }
    }

    /// Reads until the room's version reaches `until`.
    async fn settle(&mut self, until: u64) {
        while self.version < until {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: Value = serde_json::from_str(t.as_str()).unwrap();
                    if m["type"] == "operation" {
                        self.take(&m, "");
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => self.failover().await,
                Err(_) => panic!("{}: stuck at {} waiting for {until}", self.pk, self.version),
            }
        }
    }
}

async fn state(addr: SocketAddr, room: &str) -> Value {
    let tok = token(room, "reader");
    let mut s = TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /api/projects/{room}/state HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("state: {e}: {text}"))
}

fn track_ids(state: &Value) -> Vec<String> {
    state["tracks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
}

/// `clients` testers, spread round-robin over `addrs`, each inserting `ops` tracks concurrently.
async fn spread(addrs: &[SocketAddr], room: &str, clients: usize, ops: usize) -> Vec<Tester> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addrs = addrs.to_vec();
        let room = room.to_string();
        tasks.push(tokio::spawn(async move {
            let mut t = Tester::new(addrs, c % 3, &room, &format!("c{c}")).await;
            for i in 0..ops {
                t.insert(i).await;
            }
            t
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn converged(addrs: &[SocketAddr], room: &str, testers: &mut [Tester], total: u64) {
    for t in testers.iter_mut() {
        t.settle(total).await;
        assert_eq!(t.version, total, "{}", t.pk);
    }
    let mut ids = None;
    for a in addrs {
        let deadline = tokio::time::Instant::now() + WAIT;
        let s = loop {
            let s = state(*a, room).await;
            if s["version"].as_u64() == Some(total) || tokio::time::Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(s["version"].as_u64(), Some(total), "node {a}: {s}");
        let got = track_ids(&s);
        match &ids {
            None => ids = Some(got),
            Some(first) => assert_eq!(first, &got, "node {a} differs"),
        }
    }
    let ids: HashSet<String> = ids.unwrap().into_iter().collect();
    assert_eq!(ids.len() as u64, total, "every op is one track");
    let mut versions = BTreeMap::new();
    for t in testers.iter() {
        for (op_id, v) in &t.acked {
            assert!(ids.contains(&format!("t-{op_id}")), "acked {op_id} lost");
            assert!(versions.insert(*v, op_id.clone()).is_none(), "version {v} acked twice");
        }
    }
}

async fn spread_converges(bus: Option<(&str, &str)>) {
    let Some(db) = pg::TestDb::create("spread") else { return };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&db, bus).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let (clients, ops) = (6, 25);
    let mut testers = spread(&addrs, "room1", clients, ops).await;
    converged(&addrs, "room1", &mut testers, (clients * ops) as u64).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_three_nodes_converge_with_the_bus() {
    if !services::redis_up(SHARED_REDIS) {
        return;
    }
    let p = prefix();
    spread_converges(Some((SHARED_REDIS, &p))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_three_nodes_converge_by_polling_the_store() {
    spread_converges(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_clients_fail_over_and_no_acked_op_is_lost() {
    if !services::redis_up(SHARED_REDIS) {
        return;
    }
    let Some(db) = pg::TestDb::create("failover") else { return };
    let p = prefix();
    let mut procs: Vec<Proc> = (0..3).map(|_| spawn_node(&db, SHARED_REDIS, &p, SECRET, &[])).collect();
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.1).collect();
    let (clients, ops) = (6, 60);
    let run = {
        let addrs = addrs.clone();
        tokio::spawn(async move { spread(&addrs, "room2", clients, ops).await })
    };
    // Mid-run: once a tenth of the ops are in (however fast the machine), not after a fixed time.
    let deadline = tokio::time::Instant::now() + WAIT;
    while state(addrs[1], "room2").await["version"].as_u64().unwrap_or(0) < (clients * ops / 10) as u64 {
        assert!(tokio::time::Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = &mut procs[0];
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    let mut testers = run.await.unwrap();
    assert!(testers.iter().map(|t| t.failovers).sum::<usize>() >= 1, "the killed node's clients failed over");
    let live = &addrs[1..];
    converged(live, "room2", &mut testers, (clients * ops) as u64).await;
    // The killed node restarts (on a new port) and catches up from the store.
    procs[0] = spawn_node(&db, SHARED_REDIS, &p, SECRET, &[]);
    let s = state(procs[0].1, "room2").await;
    assert_eq!(s["version"].as_u64(), Some((clients * ops) as u64));
    assert_eq!(track_ids(&s), track_ids(&state(addrs[1], "room2").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_is_filled_from_the_store() {
    let Some(db) = pg::TestDb::create("redis") else { return };
    let port = free_port();
    let Some(redis) = Redis::start(port) else { return };
    let url = format!("redis://127.0.0.1:{port}");
    let p = prefix();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&db, Some((&url, &p))).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let (clients, ops) = (6, 30);
    let run = {
        let addrs = addrs.clone();
        tokio::spawn(async move { spread(&addrs, "room3", clients, ops).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let restarted = Redis::start(port).expect("redis restarts on its port");
    let mut testers = run.await.unwrap();
    converged(&addrs, "room3", &mut testers, (clients * ops) as u64).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    drop(restarted);
}
