//! One room served by several nodes is one room: presence (`init.users`, `user_joined` /
//! `user_left`, `GET …/collaborators`), cursors, soft locks and the transport cover every node;
//! a SIGKILLed node's people leave everyone's view within the presence TTL, while a client that
//! moves to another node with the same `_pk` goes on without a leave or a join; a resend
//! without `baseVersion` is re-acked with its original version on any node, from beyond every
//! memory window; the transport is stored, in SQLite as in PostgreSQL.
//!
//! Each test uses its own PostgreSQL database and bus prefix (or its own Redis); without them
//! a test fails in CI and elsewhere prints why and returns.

mod cluster;
mod common;
mod pg;
mod services;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster::{free_port, spawn_node, Redis};
use common::{http_json, track, Client, SECRET};
use serde_json::{json, Value};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}

async fn node(
    db: &pg::TestDb,
    redis: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut sequencer::Config),
) -> sequencer::ServerHandle {
    let mut config = sequencer::Config::memory(SECRET);
    config.storage = sequencer::Storage::Postgres(db.url.clone());
    config.rate_limit = 0;
    config.cluster_poll = Duration::from_millis(100);
    config.cursor_tick = Duration::from_millis(0);
    config.presence_ttl = Duration::from_millis(3000);
    config.bus = Some(sequencer::bus::BusConfig { url: redis.into(), prefix: prefix.into() });
    tweak(&mut config);
    sequencer::start(config).await.unwrap()
}

fn user_ids(users: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        users.as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

async fn collaborators(addr: SocketAddr, room: &str) -> Vec<String> {
    let v = http_json(addr, "GET", &format!("/api/projects/{room}/collaborators"), Some(&common::app("reader"))).await;
    user_ids(&v["collaborators"])
}

/// Reads messages until one satisfies `f`, within `within`; panics with what came instead.
async fn until(c: &mut Client, within: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        for m in c.drain_for(Duration::from_millis(50)).await {
            if f(&m) {
                return m;
            }
            seen.push(m);
        }
    }
    panic!("no {what} within {within:?}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_nodes_see_each_other_join_move_cursors_take_locks_and_share_the_transport() {
    if !services::redis_up(SHARED_REDIS) {
        return;
    }
    let Some(db) = pg::TestDb::create("roomwide") else { return };
    let p = prefix();
    let (n1, n2) = (node(&db, SHARED_REDIS, &p, |_| {}).await, node(&db, SHARED_REDIS, &p, |_| {}).await);
    let room = "band";
    let (mut ana, init) = Client::join(n1.addr, room, "ana").await;
    assert_eq!(user_ids(&init["users"]), ["ana"]);
    let ack = ana.op_acked(track("t1", 0), Some(0), "ana:1").await;
    assert_eq!(ack["version"], 1);

    // Ben joins on the other node: he sees Ana in `init`, she sees him join.
    let (mut ben, init) = Client::join(n2.addr, room, "ben").await;
    assert_eq!(user_ids(&init["users"]), ["ana", "ben"], "{init}");
    let colors: Vec<&str> = init["users"].as_array().unwrap().iter().map(|u| u["color"].as_str().unwrap()).collect();
    assert_ne!(colors[0], colors[1], "distinct colors room-wide");
    let joined = until(&mut ana, Duration::from_secs(3), "user_joined", |m| m["type"] == "user_joined").await;
    assert_eq!(joined["user"]["id"], "ben");
    for addr in [n1.addr, n2.addr] {
        assert_eq!(collaborators(addr, room).await, ["ana", "ben"], "collaborators on {addr}");
    }

    // Cursors cross nodes.
    ana.send(json!({"type":"cursor","x":10.0,"y":20.0})).await;
    let c = until(&mut ben, Duration::from_secs(3), "cursor", |m| m["type"] == "cursor").await;
    assert_eq!((c["userId"].as_str(), c["x"].as_f64()), (Some("ana"), Some(10.0)));

    // A lock taken on one node is in the other's table and refuses the other's lock.
    ana.send(json!({"type":"lock","target":"track","id":"t1"})).await;
    let held = |m: &Value| m["type"] == "locks" && m["locks"].as_array().is_some_and(|l| l.len() == 1);
    let table = until(&mut ben, Duration::from_secs(3), "the lock table", held).await;
    assert_eq!(table["locks"][0]["userId"], "ana");
    assert_eq!(table["locks"][0]["name"], "ana");
    ben.send(json!({"type":"lock","target":"track","id":"t1"})).await;
    let e = until(&mut ben, Duration::from_secs(3), "an error", |m| m["type"] == "error").await;
    assert_eq!(e["code"], "locked", "{e}");
    assert_eq!(e["lockedBy"]["id"], "ana");
    ana.send(json!({"type":"unlock","target":"track","id":"t1"})).await;
    let empty = |m: &Value| m["type"] == "locks" && m["locks"].as_array().is_some_and(|l| l.is_empty());
    until(&mut ben, Duration::from_secs(3), "the empty table", empty).await;

    // The transport is one for the room.
    ana.send(json!({"type":"transport","playing":true,"position":4.0})).await;
    let t = until(&mut ben, Duration::from_secs(3), "transport", |m| m["type"] == "transport").await;
    assert_eq!(
        (t["playing"].as_bool(), t["position"].as_f64(), t["userId"].as_str()),
        (Some(true), Some(4.0), Some("ana"))
    );
    let (_cara, init) = Client::join(n2.addr, room, "cara").await;
    assert_eq!(init["transport"]["playing"], true, "{init}");
    assert_eq!(init["transport"]["userId"], "ana");

    // Ana leaves: Ben sees it at once.
    drop(ana);
    let left = until(&mut ben, Duration::from_secs(3), "user_left", |m| m["type"] == "user_left").await;
    assert_eq!(left["userId"], "ana");
    n1.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_people_leave_within_the_ttl_and_a_moved_client_never_flickers() {
    if !services::redis_up(SHARED_REDIS) {
        return;
    }
    let Some(db) = pg::TestDb::create("presencekill") else { return };
    let p = prefix();
    let ttl = Duration::from_millis(2000);
    let flags = ["--presence-ttl", "2000", "--cursor-tick", "0"];
    let mut doomed = spawn_node(&db, SHARED_REDIS, &p, SECRET, &flags);
    let survivor = spawn_node(&db, SHARED_REDIS, &p, SECRET, &flags);
    let room = "gig";
    let (_ana, _) = Client::join(doomed.1, room, "ana").await;
    let (mut xia, _) = Client::join(doomed.1, room, "xia").await;
    xia.op_acked(track("t1", 0), Some(0), "xia:1").await;
    let (mut ben, init) = Client::join(survivor.1, room, "ben").await;
    assert_eq!(user_ids(&init["users"]), ["ana", "ben", "xia"], "{init}");

    doomed.0.kill().unwrap(); // SIGKILL: no leave is ever sent
    doomed.0.wait().unwrap();
    let killed = Instant::now();
    // Xia's client moves to the surviving node with the same `_pk`.
    let tok = common::token(room, "xia");
    let (_xia2, init) = Client::join_with(survivor.1, room, &tok, "xia", Some(1)).await;
    assert_eq!(user_ids(&init["users"]), ["ana", "ben", "xia"], "Ana is still in view: {init}");

    let deadline = killed + ttl + Duration::from_millis(1500);
    let mut ana_left = None;
    while Instant::now() < deadline {
        for m in ben.drain_for(Duration::from_millis(50)).await {
            let ty = m["type"].as_str().unwrap_or("");
            if ty == "user_left" && m["userId"] == "ana" {
                ana_left.get_or_insert(killed.elapsed());
            }
            let about_xia = m["userId"] == "xia" || m["user"]["id"] == "xia";
            assert!(!(about_xia && (ty == "user_left" || ty == "user_joined")), "Xia flickered: {m}");
        }
        if ana_left.is_some() {
            break;
        }
    }
    let ana_left = ana_left.unwrap_or_else(|| panic!("Ana did not leave within the TTL plus one tick"));
    assert!(ana_left <= ttl + Duration::from_millis(1500), "Ana left after {ana_left:?}");
    assert_eq!(collaborators(survivor.1, room).await, ["ben", "xia"]);
    // Quiet for a while longer: still no flicker of Xia.
    for m in ben.drain_for(Duration::from_millis(500)).await {
        assert!(m["userId"] != "xia" && m["user"]["id"] != "xia", "Xia flickered: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_without_base_after_failover_older_than_any_window_is_reacked_with_its_version() {
    if !services::redis_up(SHARED_REDIS) {
        return;
    }
    let Some(db) = pg::TestDb::create("resend") else { return };
    let p = prefix();
    let small = |c: &mut sequencer::Config| {
        c.history_window = 4;
        c.snapshot_every = 5;
    };
    let (n1, n2) = (node(&db, SHARED_REDIS, &p, small).await, node(&db, SHARED_REDIS, &p, small).await);
    let room = "resend";
    let (mut ana, _) = Client::join(n1.addr, room, "ana").await;
    let first = ana.op_acked(track("a1", 0), None, "ana:1").await;
    assert_eq!(first["version"], 1);
    let (mut ben, _) = Client::join(n1.addr, room, "ben").await;
    for i in 0..20 {
        ben.op_acked(track(&format!("b{i}"), 0), None, &format!("ben:{i}")).await;
    }
    // Ana's ack was lost; she reconnects to the other node and resends without a base.
    drop(ana);
    let (mut ana, init) = Client::join(n2.addr, room, "ana").await;
    assert_eq!(init["version"], 21);
    let again = ana.op_acked(track("a1", 0), None, "ana:1").await;
    assert_eq!(again["version"], 1, "the original version: {again}");
    // Nothing was applied twice, on either node.
    for addr in [n1.addr, n2.addr] {
        let s = http_json(addr, "GET", &format!("/api/projects/{room}/state"), Some(&common::app("r"))).await;
        assert_eq!(s["version"], 21, "{addr}: {s}");
        assert_eq!(s["tracks"].as_array().unwrap().len(), 21);
    }
    // Someone else's op id is not hers: Eve's `ana:1` is a new op.
    let (mut eve, _) = Client::join(n2.addr, room, "eve").await;
    let eves = eve.op_acked(track("e1", 0), None, "ana:1").await;
    assert_eq!(eves["version"], 22);
    n1.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_without_base_is_reacked_from_sqlite_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = sequencer::Config::sqlite(SECRET, dir.path().to_path_buf());
        c.rate_limit = 0;
        c.history_window = 4;
        c
    };
    let server = sequencer::start(config()).await.unwrap();
    let room = "solo";
    let (mut ana, _) = Client::join(server.addr, room, "ana").await;
    assert_eq!(ana.op_acked(track("a1", 0), None, "ana:1").await["version"], 1);
    for i in 0..10 {
        ana.op_acked(track(&format!("a{}", i + 2), 0), Some(i + 1), &format!("ana:{}", i + 2)).await;
    }
    ana.send(json!({"type":"transport","playing":true,"position":12.5})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(ana);
    server.shutdown().await.unwrap();

    let server = sequencer::start(config()).await.unwrap();
    let (mut ana, init) = Client::join(server.addr, room, "ana").await;
    assert_eq!(init["version"], 11);
    // The transport survived the restart, with who set it.
    assert_eq!(init["transport"]["playing"], true, "{init}");
    assert_eq!(init["transport"]["position"], 12.5);
    assert_eq!(init["transport"]["userId"], "ana");
    assert_eq!(init["state"]["isPlaying"], true);
    let again = ana.op_acked(track("a1", 0), None, "ana:1").await;
    assert_eq!(again["version"], 1, "{again}");
    let s = http_json(server.addr, "GET", &format!("/api/projects/{room}/state"), Some(&common::app("r"))).await;
    assert_eq!(s["version"], 11);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_comes_back_after_a_redis_restart() {
    let Some(db) = pg::TestDb::create("presredis") else { return };
    let port = free_port();
    let Some(redis) = Redis::start(port) else { return };
    let url = format!("redis://127.0.0.1:{port}");
    let p = prefix();
    let short = |c: &mut sequencer::Config| c.presence_ttl = Duration::from_millis(1500);
    let (n1, n2) = (node(&db, &url, &p, short).await, node(&db, &url, &p, short).await);
    let room = "restart";
    let (mut ana, _) = Client::join(n1.addr, room, "ana").await;
    let (mut ben, init) = Client::join(n2.addr, room, "ben").await;
    assert_eq!(user_ids(&init["users"]), ["ana", "ben"]);

    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _restarted = Redis::start(port).expect("redis restarts on its port");
    // Edits still converge (the store decides), and once the heartbeats wrote the keys again,
    // presence, cursors and newcomers' views cover both nodes.
    ana.op_acked(track("t1", 0), None, "ana:1").await;
    until(&mut ben, Duration::from_secs(5), "Ana's op", |m| m["type"] == "operation" && m["opId"] == "ana:1").await;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        ana.send(json!({"type":"cursor","x":1.0,"y":2.0})).await;
        let got = ben.drain_for(Duration::from_millis(200)).await;
        if got.iter().any(|m| m["type"] == "cursor" && m["userId"] == "ana") {
            break;
        }
        assert!(Instant::now() < deadline, "no cursor across nodes after the restart: {got:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_cara, init) = Client::join(n2.addr, room, "cara").await;
        if user_ids(&init["users"]).contains(&"ana".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "a newcomer on node 2 never saw Ana: {init}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    n1.shutdown().await.unwrap();
    n2.shutdown().await.unwrap();
}
