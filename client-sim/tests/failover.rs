//! Failover of the Rust client between servers of one room: a dead first URL is skipped, and a
//! client whose server dies moves to the next URL, rejoins with `since` and resends its op in
//! flight with its original op id and base version, acknowledged exactly once. Scripted
//! servers (bare listeners on 127.0.0.1 written by hand) for the exact frames; then the real
//! server and the simulator with a dead URL in the list.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use client_sim::sim::SimConfig;
use client_sim::stats::Outcome;
use client_sim::{BackoffConfig, Client, ClientConfig, Event};
use common::{accept, memory_config, recv_json, scripted_config, send, track, Tok, T};
use sequencer::auth::{room_token, Role};
use serde_json::{json, Value};
use tokio::net::TcpListener;
const SECRET: &str = "client-sim-failover-secret";

/// An address nothing listens on (bound, then closed): connects are refused.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn init(version: u64) -> Value {
    json!({"type":"init","users":[],"yourId":"pk1","version":version,"serverTime":1_700_000_000_000u64,
           "state":{"version":version,"playhead":0.0,"isPlaying":false,"tracks":[],"markers":[]}})
}

fn config(urls: Vec<String>) -> ClientConfig {
    scripted_config(urls, 11)
}

/// Given [dead URL, live URL], the client connects to the live one.
#[tokio::test]
async fn a_dead_first_url_is_skipped() {
    let dead = format!("ws://{}", dead_addr().await);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = format!("ws://{}", l.local_addr().unwrap());
    let (client, _events) = Client::connect(config(vec![dead, live.clone()])).unwrap();
    let (mut ws, uri) = accept(&l).await;
    assert!(uri.starts_with("/parties/main/room1?token=tok&_pk=pk1"), "{uri}");
    send(&mut ws, init(0)).await;
    client.ready(T).await.unwrap();
    let s = client.snapshot();
    assert_eq!(s.url, live);
    // The first connect is not a failover, nor a reconnect.
    assert_eq!((s.reconnects, s.failovers), (0, 0));
    client.close().await;
}

/// The client's server dies (socket reset, listener gone) with an op in flight: the client
/// moves to the next URL, rejoins with `since`, resends the op with its original op id and
/// base version, and the new server's ack settles it: one `Acked`, no second send.
#[tokio::test]
async fn a_killed_nodes_client_moves_on_and_its_pending_op_is_acked_once() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (url_a, url_b) = (format!("ws://{}", a.local_addr().unwrap()), format!("ws://{}", b.local_addr().unwrap()));
    let (client, mut events) = Client::connect(config(vec![url_a.clone(), url_b.clone()])).unwrap();
    let (mut ws, _) = accept(&a).await;
    send(&mut ws, init(3)).await;
    client.ready(T).await.unwrap();
    assert_eq!(client.snapshot().url, url_a);
    client.submit(track("t1")).await.unwrap();
    let op = recv_json(&mut ws).await;
    assert_eq!((op["opId"].as_str(), op["baseVersion"].as_u64()), (Some("pk1:1"), Some(3)));
    // Node A dies: its socket and its listener go away without a close frame.
    // Reset rather than FIN, as the kernel does for a killed process's sockets with unread data.
    let _ = ws.get_ref().set_zero_linger();
    drop(ws);
    drop(a);
    let (mut ws, uri) = accept(&b).await;
    assert!(uri.ends_with("&since=3"), "rejoins with since: {uri}");
    send(&mut ws, json!({"type":"init","users":[],"yourId":"pk1","version":3,"serverTime":0,"ops":[]})).await;
    let resent = recv_json(&mut ws).await;
    assert_eq!(resent["type"], "operation");
    assert_eq!(resent["opId"], "pk1:1", "original op id");
    assert_eq!(resent["baseVersion"], 3, "original base version");
    assert_eq!(resent["operation"], op["operation"]);
    // The ack is the op's own broadcast, with its version (PROTOCOL §4).
    send(&mut ws, json!({"type":"operation","operation":op["operation"],"version":4,"userId":"pk1","opId":"pk1:1"}))
        .await;
    client.settled(T).await.unwrap();
    let s = client.snapshot();
    assert_eq!((s.version, s.url.as_str(), s.failovers, s.reconnects), (Some(4), url_b.as_str(), 1, 1));
    // Nothing else is sent for that op: the next frame B sees is the next edit.
    client.submit(track("t2")).await.unwrap();
    let next = recv_json(&mut ws).await;
    assert_eq!((next["opId"].as_str(), next["baseVersion"].as_u64()), (Some("pk1:2"), Some(4)));
    let mut acks = Vec::new();
    let mut sends = Vec::new();
    while let Some(e) = events.try_recv() {
        match e.event {
            Event::Acked { op_id, version, .. } => acks.push((op_id, version)),
            Event::Sent { op_id, resend } => sends.push((op_id, resend)),
            _ => {}
        }
    }
    assert_eq!(acks, [("pk1:1".to_string(), 4)], "acked exactly once");
    assert_eq!(sends[..2], [("pk1:1".to_string(), false), ("pk1:1".to_string(), true)], "{sends:?}");
    client.close().await;
}

/// With every server down, the client keeps trying them in turn with a growing backoff (it
/// does not spin), and connects once one comes back.
#[tokio::test]
async fn all_down_backs_off_then_connects_when_one_returns() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let mut cfg = config(vec![format!("ws://{d1}"), format!("ws://{d2}")]);
    cfg.backoff = BackoffConfig { base: Duration::from_millis(20), max: Duration::from_millis(400) };
    let (client, mut events) = Client::connect(cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut failures = 0;
    while let Some(e) = events.try_recv() {
        if matches!(e.event, Event::Disconnected { .. }) {
            failures += 1;
        }
    }
    // 20, 40, 80, 160, 320, 400… ms ceilings (jitter halves at most): a handful of attempts in
    // a second, not thousands.
    assert!((3..=20).contains(&failures), "{failures} attempts in 1 s");
    assert!(!client.snapshot().live);
    // The second server comes back on its address.
    let l = TcpListener::bind(d2).await.unwrap();
    let (mut ws, _) = accept(&l).await;
    send(&mut ws, init(0)).await;
    client.ready(T).await.unwrap();
    assert_eq!(client.snapshot().url, format!("ws://{d2}"));
    client.close().await;
}

/// The real server behind a dead URL: the client edits through the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_after_a_dead_url() {
    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let dead = format!("ws://{}", dead_addr().await);
    let live = format!("ws://{}", server.addr);
    let mut cfg = ClientConfig::with_urls(
        [dead, live.clone()],
        "fo-real",
        room_token(SECRET, "fo-real", "u1", "u1", Role::Editor, 3600).unwrap(),
        "u1-pk",
    );
    cfg.backoff = BackoffConfig { base: Duration::from_millis(10), max: Duration::from_millis(50) };
    let (client, _events) = Client::connect(cfg).unwrap();
    client.ready(T).await.unwrap();
    client.submit(track("t1")).await.unwrap();
    client.settled(T).await.unwrap();
    let s = client.snapshot();
    assert_eq!((s.version, s.url.as_str()), (Some(1), live.as_str()));
    client.close().await;
    server.shutdown().await.unwrap();
}

/// A client made again with the same saved connection id and account (a restarted process)
/// makes new op ids: its edits are applied, not answered as the earlier client's ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_made_again_with_a_saved_pk_is_not_taken_for_the_earlier_one() {
    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let url = format!("ws://{}", server.addr);
    let token = room_token(SECRET, "fo-again", "u1", "u1", Role::Editor, 3600).unwrap();
    for (round, id) in ["t1", "t2"].into_iter().enumerate() {
        let cfg = ClientConfig::new(url.clone(), "fo-again", token.clone(), "saved-pk");
        let (client, _events) = Client::connect(cfg).unwrap();
        client.ready(T).await.unwrap();
        client.submit(track(id)).await.unwrap();
        client.settled(T).await.unwrap();
        let s = client.snapshot();
        assert_eq!(s.version, Some(round as u64 + 1), "round {round}: the edit was sequenced");
        assert_eq!(s.doc.unwrap().tracks().len(), round + 1);
        client.close().await;
    }
    server.shutdown().await.unwrap();
}

fn sim_config(urls: Vec<String>, failover: bool, seed: u64, prefix: &str) -> SimConfig {
    SimConfig {
        urls,
        failover,
        rooms: 2,
        clients: 2,
        ops: 20,
        rate: 20.0,
        duration: Duration::from_secs(3),
        cursor_hz: 2.0,
        seed,
        room_prefix: prefix.into(),
        quiesce_timeout: Duration::from_secs(3),
        ..SimConfig::default()
    }
}

/// The simulator with [live, dead]: with failover every client ends on the live server and the
/// run converges; without it, the clients given only the dead URL are offline at the end and
/// the verdict is INCOMPLETE (not a divergence), with every online client equal to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_tells_offline_clients_apart_from_divergence() {
    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let urls = vec![format!("ws://{}", server.addr), format!("ws://{}", dead_addr().await)];
    let seed = 0x5eed_00f0;
    let r = client_sim::sim::run(sim_config(urls.clone(), true, seed, "fo-on-"), Arc::new(Tok(SECRET)))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!("{}", r.to_table());
    assert_eq!(r.outcome(), Outcome::Converged, "seed {seed}: {:?} {:?}", r.divergences, r.offline_at_end);
    assert_eq!(r.rooms_converged, 2, "seed {seed}");

    let r = client_sim::sim::run(sim_config(urls, false, seed, "fo-off-"), Arc::new(Tok(SECRET)))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!("{}", r.to_table());
    assert_eq!(r.outcome(), Outcome::Incomplete, "seed {seed}: {:?}", r.divergences);
    assert_eq!(r.offline_at_end.len(), 2, "seed {seed}: the clients of the dead URL: {:?}", r.offline_at_end);
    assert!(r.divergences.is_empty() && r.lost_acks.is_empty(), "seed {seed}");
    let j = r.to_json();
    assert_eq!((j["verdict"].as_str(), j["offlineAtEnd"].as_u64()), (Some("INCOMPLETE"), Some(2)));
    assert_eq!(Outcome::Incomplete.exit_code(), 3);
    server.shutdown().await.unwrap();
}
