//! Soft locks (PROTOCOL §7) end to end, over real sockets on port 0: one test per rule — take,
//! refresh, conflict, expiry, unlock, the ends at leave, eviction and deletion, the limit, the
//! refusals, advisory edits, `init` for a late joiner — and the lock metrics.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sequencer::{start, Config};
use serde_json::{json, Value};

fn clip(id: &str, parent: &str) -> Value {
    json!({"type":"insert","target":"clip","id":id,"parent":parent,"index":0,"value":{"start":0,"duration":1}})
}

fn lock(target: &str, id: &str, ttl: Option<u64>) -> Value {
    let mut m = json!({"type":"lock","target":target,"id":id});
    if let Some(t) = ttl {
        m["ttl"] = json!(t);
    }
    m
}

/// The `(target, id, userId)` of every entry of a `locks` message (or `init`).
fn entries(m: &Value) -> Vec<(String, String, String)> {
    m["locks"]
        .as_array()
        .unwrap_or_else(|| panic!("no locks array in {m}"))
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_else(|| panic!("{k} in {l}")).to_string();
            (s("target"), s("id"), s("userId"))
        })
        .collect()
}

fn entry(target: &str, id: &str, who: &str) -> (String, String, String) {
    (target.into(), id.into(), who.into())
}

/// A room with editors `a` and `b`, and track `t1` holding clip `c1`.
async fn room_with_clip(addr: std::net::SocketAddr, room: &str) -> (Client, Client) {
    let (mut a, _) = Client::join(addr, room, "a").await;
    let (mut b, _) = Client::join(addr, room, "b").await;
    a.recv_type("user_joined").await;
    a.op_acked(track("t1", 0), None, "a:1").await;
    a.op_acked(clip("c1", "t1"), None, "a:2").await;
    b.recv_type("operation").await;
    b.recv_type("operation").await;
    (a, b)
}

/// Nothing but cursors, presence or pongs arrive within `d` (no `locks`, no `error`).
async fn quiet(c: &mut Client, d: Duration) {
    let got = c.drain_for(d).await;
    assert!(got.iter().all(|m| m["type"] != "locks" && m["type"] != "error"), "expected nothing, got {got:?}");
}

#[tokio::test]
async fn take_sends_the_table_to_everyone() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "take").await;
    let before = sequencer::room::now_ms();
    a.send(lock("clip", "c1", None)).await;
    for c in [&mut a, &mut b] {
        let m = c.recv_type("locks").await;
        assert_eq!(entries(&m), [entry("clip", "c1", "a")]);
        let l = &m["locks"][0];
        assert_eq!(l["name"], "a");
        assert!(l["color"].as_str().is_some_and(|c| c.starts_with('#')), "{l}");
        let expires = l["expiresAt"].as_u64().unwrap();
        assert!(expires >= before + 10_000 && expires <= sequencer::room::now_ms() + 10_000, "default ttl: {l}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn refreshing_ones_own_lock_extends_it_and_large_ttls_are_clamped() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "refresh").await;
    a.send(lock("clip", "c1", Some(1_000))).await;
    let first = b.recv_type("locks").await["locks"][0]["expiresAt"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.send(lock("clip", "c1", Some(3_600_000))).await;
    let m = b.recv_type("locks").await;
    assert_eq!(entries(&m), [entry("clip", "c1", "a")]);
    let second = m["locks"][0]["expiresAt"].as_u64().unwrap();
    assert!(second > first + 50_000, "refreshed to at most 60 s: {first} -> {second}");
    assert!(second <= sequencer::room::now_ms() + 60_000, "clamped to 60 s: {second}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_held_lock_is_refused_with_the_holders_presence_and_the_table_unchanged() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "conflict").await;
    a.send(lock("clip", "c1", None)).await;
    b.recv_type("locks").await;
    a.recv_type("locks").await;
    b.send(lock("clip", "c1", None)).await;
    let e = b.error().await;
    assert_eq!(e["code"], "locked", "{e}");
    assert_eq!(e["lockedBy"]["id"], "a", "{e}");
    assert_eq!(e["lockedBy"]["userId"], "a", "{e}");
    assert!(e["lockedBy"]["color"].is_string() && e["lockedBy"]["lastSeen"].is_u64(), "a presence object: {e}");
    let text = e["message"].as_str().unwrap();
    assert!(text.contains("locked by a") && text.contains("c1"), "{text}");
    // Nobody hears of a change, and a newcomer sees `a` still holding it.
    quiet(&mut a, Duration::from_millis(200)).await;
    let (_c, init) = Client::join(server.addr, "conflict", "c").await;
    assert_eq!(entries(&init), [entry("clip", "c1", "a")]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lock_expires_on_the_servers_clock() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "expiry").await;
    let started = Instant::now();
    a.send(lock("clip", "c1", Some(300))).await;
    assert_eq!(entries(&b.recv_type("locks").await).len(), 1);
    // Bounded: `recv` gives up after 5 s.
    let m = b.recv_type("locks").await;
    let took = started.elapsed();
    assert!(entries(&m).is_empty(), "{m}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "expired after {took:?}");
    assert!(entries(&a.recv_type("locks").await).len() == 1 && entries(&a.recv_type("locks").await).is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unlock_releases_and_an_unlock_of_what_one_does_not_hold_is_ignored() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "unlock").await;
    a.send(lock("clip", "c1", None)).await;
    b.recv_type("locks").await;
    a.recv_type("locks").await;
    // Someone else's lock, a free one, an unknown target: no answer, no change.
    b.send(json!({"type":"unlock","target":"clip","id":"c1"})).await;
    b.send(json!({"type":"unlock","target":"track","id":"t1"})).await;
    b.send(json!({"type":"unlock","target":"project","id":"x"})).await;
    quiet(&mut b, Duration::from_millis(200)).await;
    a.send(json!({"type":"unlock","target":"clip","id":"c1"})).await;
    for c in [&mut a, &mut b] {
        assert!(entries(&c.recv_type("locks").await).is_empty());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn leaving_releases_before_user_left() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "leave").await;
    a.send(lock("clip", "c1", None)).await;
    a.send(lock("track", "t1", None)).await;
    b.recv_type("locks").await;
    assert_eq!(entries(&b.recv_type("locks").await).len(), 2);
    drop(a);
    let m = b.recv_type("locks").await;
    assert!(entries(&m).is_empty(), "{m}");
    assert_eq!(b.recv_type("user_left").await["userId"], "a");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeat_eviction_releases() {
    let config = Config { heartbeat_timeout: Duration::from_millis(600), ..memory() };
    let server = start(config).await.unwrap();
    let (mut silent, mut b) = room_with_clip(server.addr, "evict").await;
    silent.send(lock("clip", "c1", Some(60_000))).await;
    assert_eq!(entries(&b.recv_type("locks").await).len(), 1);
    // `silent` neither reads nor writes from here on; `b` keeps reading, so answers pings.
    let started = Instant::now();
    let m = b.recv_type("locks").await;
    assert!(entries(&m).is_empty(), "{m}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(b.recv_type("user_left").await["userId"], "a");
    drop(silent);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleting_the_entity_releases_its_lock() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "delete").await;
    a.send(lock("clip", "c1", None)).await;
    a.recv_type("locks").await;
    b.recv_type("locks").await;
    // Deleted by someone else: the op first, then the table without it.
    b.op(json!({"type":"delete","target":"clip","id":"c1"}), None, "b:1").await;
    let op = a.recv().await;
    assert_eq!(op["type"], "operation", "{op}");
    let m = a.recv().await;
    assert_eq!(m["type"], "locks", "{m}");
    assert!(entries(&m).is_empty(), "{m}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleting_a_track_releases_its_clips_locks() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "delete-track").await;
    a.op_acked(track("t2", 1), None, "a:3").await;
    b.recv_type("operation").await;
    a.send(lock("clip", "c1", None)).await;
    a.send(lock("track", "t2", None)).await;
    b.recv_type("locks").await;
    assert_eq!(entries(&b.recv_type("locks").await).len(), 2);
    a.recv_type("locks").await;
    a.recv_type("locks").await;
    b.op_acked(json!({"type":"delete","target":"track","id":"t1"}), None, "b:1").await;
    let m = b.recv_type("locks").await;
    assert_eq!(entries(&m), [entry("track", "t2", "a")], "c1 went with its track; t2 stays");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_holds_at_most_sixteen_locks() {
    let config = Config { rate_limit: 0, ..memory() };
    let server = start(config).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "limit", "a").await;
    let markers: Vec<Value> = (0..17)
        .map(|i| json!({"type":"insert","target":"marker","id":format!("m{i}"),"index":0,"value":{"time":i}}))
        .collect();
    a.op_acked(Value::Array(markers), None, "a:1").await;
    for i in 0..16 {
        a.send(lock("marker", &format!("m{i}"), None)).await;
        assert_eq!(entries(&a.recv_type("locks").await).len(), i + 1);
    }
    a.send(lock("marker", "m16", None)).await;
    let e = a.error().await;
    assert_eq!(e["code"], "lock_limit", "{e}");
    // Refreshing one held already is no new lock; releasing one makes room.
    a.send(lock("marker", "m0", None)).await;
    assert_eq!(entries(&a.recv_type("locks").await).len(), 16);
    a.send(json!({"type":"unlock","target":"marker","id":"m0"})).await;
    a.recv_type("locks").await;
    a.send(lock("marker", "m16", None)).await;
    assert!(entries(&a.recv_type("locks").await).contains(&entry("marker", "m16", "a")));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_viewer_may_not_lock() {
    let server = start(memory()).await.unwrap();
    let (mut a, _) = room_with_clip(server.addr, "viewer").await;
    let (mut v, _) = Client::join_with(server.addr, "viewer", &viewer_token("viewer", "v"), "v", None).await;
    v.send(lock("clip", "c1", None)).await;
    let e = v.error().await;
    assert_eq!(e["code"], "forbidden", "{e}");
    a.recv_type("user_joined").await;
    quiet(&mut a, Duration::from_millis(200)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_entities_bad_targets_and_bad_ttls_are_refused() {
    let server = start(memory()).await.unwrap();
    let (mut a, _) = room_with_clip(server.addr, "refuse").await;
    for (m, code) in [
        (lock("clip", "nope", None), "invalid_op"),
        (lock("track", "c1", None), "invalid_op"),
        (lock("project", "t1", None), "invalid_op"),
        (json!({"type":"lock","target":"clip","id":"c1","ttl":0}), "bad_message"),
        (json!({"type":"lock","target":"clip","id":"c1","ttl":-5}), "bad_message"),
        (json!({"type":"lock","target":"clip","id":"c1","ttl":"soon"}), "bad_message"),
        (json!({"type":"lock","target":"clip"}), "bad_message"),
    ] {
        a.send(m.clone()).await;
        let e = a.error().await;
        assert_eq!(e["code"], code, "{m} -> {e}");
    }
    quiet(&mut a, Duration::from_millis(100)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn locks_are_advisory_an_edit_of_a_locked_entity_is_applied() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "advisory").await;
    a.send(lock("clip", "c1", None)).await;
    b.recv_type("locks").await;
    let ack =
        b.op_acked(json!({"type":"update","target":"clip","id":"c1","path":["gain"],"value":0.5}), None, "b:1").await;
    assert_eq!(ack["version"], 3);
    let state = http_json(server.addr, "GET", "/api/projects/advisory/state", Some(&app("x"))).await;
    assert_eq!(state["tracks"][0]["clips"][0]["gain"], 0.5);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn init_carries_the_table_to_a_late_joiner() {
    let server = start(memory()).await.unwrap();
    let (_x, init) = Client::join(server.addr, "late", "x").await;
    assert_eq!(init["locks"], json!([]), "present and empty: {init}");
    let (mut a, _) = room_with_clip(server.addr, "late").await;
    a.send(lock("clip", "c1", None)).await;
    a.send(lock("track", "t1", None)).await;
    a.recv_type("locks").await;
    a.recv_type("locks").await;
    let (_c, init) = Client::join(server.addr, "late", "c").await;
    assert_eq!(entries(&init), [entry("track", "t1", "a"), entry("clip", "c1", "a")]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_takeover_with_the_same_pk_keeps_the_locks() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "takeover").await;
    a.send(lock("clip", "c1", None)).await;
    b.recv_type("locks").await;
    let (_a2, init) = Client::join(server.addr, "takeover", "a").await;
    assert_eq!(a.closed().await.0, 4009);
    assert_eq!(entries(&init), [entry("clip", "c1", "a")]);
    quiet(&mut b, Duration::from_millis(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_count_held_locks_and_refusals() {
    let server = start(memory()).await.unwrap();
    let (mut a, mut b) = room_with_clip(server.addr, "metrics").await;
    a.send(lock("clip", "c1", None)).await;
    a.recv_type("locks").await;
    b.recv_type("locks").await;
    b.send(lock("clip", "c1", None)).await;
    b.error().await;
    b.send(lock("clip", "gone", None)).await;
    b.error().await;
    let (_, text) = http(server.addr, "GET", "/metrics", None).await;
    for line in [
        "sequencer_locks_held 1",
        "sequencer_lock_refusals_total{code=\"locked\"} 1",
        "sequencer_lock_refusals_total{code=\"invalid_op\"} 1",
        "sequencer_lock_refusals_total{code=\"lock_limit\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    a.send(json!({"type":"unlock","target":"clip","id":"c1"})).await;
    b.recv_type("locks").await;
    let (_, text) = http(server.addr, "GET", "/metrics", None).await;
    assert!(text.lines().any(|l| l == "sequencer_locks_held 0"), "{text}");
    server.shutdown().await.unwrap();
}
