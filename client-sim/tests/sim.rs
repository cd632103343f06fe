//! End-to-end runs of the simulator against an embedded sequencer: convergence under faults,
//! and no acknowledged op lost across a server restart on a SQLite store; and the Rust client
//! against the real server where a close code decides (4009). Seeds are printed in every
//! failure message.

mod common;

use std::sync::Arc;
use std::time::Duration;

use client_sim::sim::{Faults, SimConfig};
use common::{memory_config, Tok};
use sequencer::auth::{room_token, Role};

const SECRET: &str = "client-sim-test-secret";

/// 10 rooms × 5 clients × 200 steps with disconnects, kills, duplicates, latency and a stalled
/// reader: every client ends equal to the server, and every ack is in the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_run_converges() {
    let seed = 0x5eed_0001;
    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let cfg = SimConfig {
        urls: vec![format!("ws://{}", server.addr)],
        rooms: 10,
        clients: 5,
        ops: 200,
        rate: 100.0,
        duration: Duration::from_secs(30),
        cursor_hz: 10.0,
        seed,
        faults: Faults {
            disconnects: 0.3,
            kills: 0.3,
            latency: Duration::from_millis(2),
            stalled_clients: 2,
            stall: Duration::from_millis(1500),
            duplicates: 1.0,
        },
        room_prefix: "faulty-".into(),
        ..SimConfig::default()
    };
    let report = client_sim::sim::run(cfg, Arc::new(Tok(SECRET))).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!("{}", report.to_table());
    assert!(report.ok(), "seed {seed}: {:?} {:?}", report.divergences, report.lost_acks);
    assert_eq!(report.rooms_converged, 10, "seed {seed}");
    assert_eq!(report.stats.steps, 10 * 5 * 200, "seed {seed}: every step ran");
    assert_eq!(report.stats.local_rejects, 0, "seed {seed}: generated ops must apply locally");
    assert!(report.stats.reconnects > 0, "seed {seed}: faults must cause reconnects");
    assert!(report.stats.faults.get("stall").copied().unwrap_or(0) >= 1, "seed {seed}: a reader stalled");
    assert!(report.stats.duplicates > 0, "seed {seed}: duplicates were sent");
    assert!(report.stats.locks_held > 0, "seed {seed}: drags hold locks");
    assert!(report.stats.lock_tables > 0, "seed {seed}: lock tables were heard");
    let json = report.to_json();
    assert_eq!(json["locks"]["locked"], report.stats.locked, "seed {seed}: locked answers are in the report");
    assert_eq!(report.stats.errors.get("locked").copied().unwrap_or(0), report.stats.locked, "seed {seed}");
    server.shutdown().await.unwrap();
}

/// The server (SQLite) is stopped mid-run and started again on the same port: clients rejoin
/// with `since`, resend, and end equal to the server with every acknowledged op in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_loses_no_acked_op() {
    let seed = 0x5eed_0002;
    let dir = tempfile::tempdir().unwrap();
    let mut c = sequencer::Config::sqlite(SECRET, dir.path().to_path_buf());
    c.rate_limit = 0;
    let server = sequencer::start(c.clone()).await.unwrap();
    let addr = server.addr;
    let cfg = SimConfig {
        urls: vec![format!("ws://{addr}")],
        rooms: 4,
        clients: 4,
        ops: 150,
        rate: 50.0,
        duration: Duration::from_secs(30),
        cursor_hz: 5.0,
        seed,
        room_prefix: "restart-".into(),
        ..SimConfig::default()
    };
    let run = tokio::spawn(client_sim::sim::run(cfg, Arc::new(Tok(SECRET))));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.listen = addr;
    let mut server = None;
    for _ in 0..50 {
        match sequencer::start(c.clone()).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let server = server.unwrap_or_else(|| panic!("seed {seed}: could not rebind {addr}"));
    let report = run.await.unwrap().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!("{}", report.to_table());
    assert!(report.ok(), "seed {seed}: {:?} {:?}", report.divergences, report.lost_acks);
    assert_eq!(report.rooms_converged, 4, "seed {seed}");
    assert!(report.stats.reconnects >= 16, "seed {seed}: every client reconnected ({})", report.stats.reconnects);
    assert!(report.stats.acked > 0, "seed {seed}");
    server.shutdown().await.unwrap();
}

/// Two clients share a `_pk`. The second one's join replaces the first (4009); the first
/// reports it and stops instead of coming back and replacing the second in turn, so the second
/// stays connected and its edits go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_client_stops_instead_of_evicting_its_replacement() {
    use client_sim::{BackoffConfig, Client, ClientConfig};
    use ot_core::protocol::Close;

    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let mut cfg = ClientConfig::new(
        format!("ws://{}", server.addr),
        "shared-pk",
        room_token(SECRET, "shared-pk", "u", "u", Role::Editor, 3600).unwrap(),
        "same-pk",
    );
    cfg.backoff = BackoffConfig { base: Duration::from_millis(10), max: Duration::from_millis(50) };
    let t = Duration::from_secs(5);
    let (first, _first_events) = Client::connect(cfg.clone()).unwrap();
    first.ready(t).await.unwrap();
    let (second, _second_events) = Client::connect(cfg).unwrap();
    second.ready(t).await.unwrap();
    let mut watch = first.watch();
    tokio::time::timeout(t, watch.wait_for(|s| s.stopped_by.is_some())).await.expect("first stops in time").unwrap();
    let s = first.snapshot();
    assert_eq!(s.stopped_by, Some(Close::Replaced), "{:?}", s.fatal);
    // Many backoffs later, nobody came back to take the presence over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = second.snapshot();
    assert!(s.live && s.reconnects == 0, "the second client kept its connection: {:?}", s.fatal);
    assert_eq!(first.snapshot().reconnects, 0, "the first client never came back");
    let op = ot_core::Op::batch_from_value(serde_json::json!(
        {"type":"insert","target":"track","id":"t1","index":0,"value":{"name":"Drums","clips":[]}}))
    .unwrap();
    second.submit(op).await.unwrap();
    second.settled(t).await.unwrap();
    assert_eq!(second.snapshot().version, Some(1));
    second.close().await;
    first.close().await;
    server.shutdown().await.unwrap();
}

/// The relay baseline moves the same workload and counts echoes as acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_baseline_runs() {
    let relay = client_sim::relay::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let cfg = SimConfig {
        urls: vec![format!("ws://{}", relay.addr)],
        rooms: 3,
        clients: 3,
        ops: 100,
        rate: 0.0,
        cursor_hz: 10.0,
        seed: 3,
        ..SimConfig::default()
    };
    let r = client_sim::sim::run_relay(cfg).await.unwrap();
    assert_eq!(r.stats.acked, 900, "every frame echoed once");
    assert_eq!(r.stats.remote, 900 * 2, "each frame reaches the two others");
    relay.shutdown().await;
}

/// A short seeded run where every drag holds a lock with a short ttl (so refreshes, expiries,
/// refusals and releases at delete all happen), four clients per room on few entities:
/// every replica converges, and the locks show up in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_drag_locks_converges() {
    let seed = 0x10c5;
    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let cfg = SimConfig {
        urls: vec![format!("ws://{}", server.addr)],
        rooms: 2,
        clients: 4,
        ops: 150,
        rate: 100.0,
        duration: Duration::from_secs(20),
        seed,
        drag_locks: Some(Duration::from_millis(300)),
        room_prefix: "locks-".into(),
        ..SimConfig::default()
    };
    let report = client_sim::sim::run(cfg, Arc::new(Tok(SECRET))).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!("{}", report.to_table());
    assert!(report.ok(), "seed {seed}: {:?} {:?}", report.divergences, report.lost_acks);
    assert_eq!(report.rooms_converged, 2, "seed {seed}");
    assert!(report.stats.locks_held > 0 && report.stats.lock_tables > 0, "seed {seed}: {:?}", report.stats);
    assert!(report.to_table().contains("locks held / locked"), "seed {seed}: the text report counts locks");
    server.shutdown().await.unwrap();
}

/// The Rust client's lock API against the real server: a held lock is refreshed past its ttl,
/// another client's lock is refused with the holder named, and releasing the guard unlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_holds_refreshes_and_releases_a_lock() {
    use client_sim::session::Event;
    use client_sim::{Client, ClientConfig};
    use ot_core::EntityKind;

    let server = sequencer::start(memory_config(SECRET)).await.unwrap();
    let t = Duration::from_secs(5);
    let connect = |pk: &str| {
        let cfg = ClientConfig::new(
            format!("ws://{}", server.addr),
            "client-locks",
            room_token(SECRET, "client-locks", pk, pk, Role::Editor, 3600).unwrap(),
            pk,
        );
        Client::connect(cfg).unwrap()
    };
    let (ana, _ana_events) = connect("ana");
    let (ben, mut ben_events) = connect("ben");
    ana.ready(t).await.unwrap();
    ben.ready(t).await.unwrap();
    let op = ot_core::Op::batch_from_value(serde_json::json!(
        {"type":"insert","target":"track","id":"t1","index":0,"value":{"name":"Drums","clips":[]}}))
    .unwrap();
    ana.submit(op).await.unwrap();
    ana.settled(t).await.unwrap();
    let guard = ana.hold_lock(EntityKind::Track, "t1", Some(Duration::from_millis(300)));
    let mut w = ben.watch();
    tokio::time::timeout(t, w.wait_for(|s| s.locks.iter().any(|l| l.id == "t1" && l.user_id == "ana")))
        .await
        .expect("ben sees ana's lock")
        .unwrap();
    // Three ttls later it is still held: the guard refreshed it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(ben.locks().len(), 1, "refreshed, not expired: {:?}", ben.locks());
    ben.lock(EntityKind::Track, "t1", None).await.unwrap();
    let locked = tokio::time::timeout(t, async {
        loop {
            match ben_events.recv().await.map(|e| e.event) {
                Some(Event::Locked { locked_by, message }) => return (locked_by, message),
                Some(_) => continue,
                None => panic!("ben's events ended"),
            }
        }
    })
    .await
    .expect("ben is refused in time");
    assert_eq!(locked.0.id, "ana", "{locked:?}");
    assert!(locked.1.contains("ana"), "{locked:?}");
    guard.release().await;
    tokio::time::timeout(t, w.wait_for(|s| s.locks.is_empty())).await.expect("the release reaches ben").unwrap();
    ana.close().await;
    ben.close().await;
    server.shutdown().await.unwrap();
}
