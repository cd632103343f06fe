//! The client's reconnect / resend / reload logic against a scripted server: a bare
//! tokio-tungstenite listener on 127.0.0.1 whose every step the test writes by hand.

mod common;

use std::time::Duration;

use client_sim::{Client, ClientConfig, Event, Events, ReloadReason};
use common::{accept, recv_json, scripted_config, send, track, Ws, T};
use futures_util::StreamExt;
use ot_core::protocol::Close;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;

fn init_state(version: u64, tracks: Value) -> Value {
    json!({"type":"init","users":[],"yourId":"pk1","version":version,"serverTime":1_700_000_000_000u64,
           "state":{"version":version,"playhead":0.0,"isPlaying":false,"tracks":tracks,"markers":[]}})
}

fn config(addr: std::net::SocketAddr) -> ClientConfig {
    scripted_config(vec![format!("ws://{addr}")], 7)
}

/// A connection dies with an op in flight; the client rejoins with `since`, then resends the
/// op with its original op id and base version; the ack settles it.
#[tokio::test]
async fn resends_inflight_with_original_op_id_after_reconnect() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, _events) = Client::connect(config(l.local_addr().unwrap())).unwrap();
    let (mut ws, uri) = accept(&l).await;
    assert!(uri.starts_with("/parties/main/room1?token=tok&_pk=pk1"), "{uri}");
    assert!(!uri.contains("since"), "first connect has no since: {uri}");
    send(&mut ws, init_state(3, json!([]))).await;
    client.ready(T).await.unwrap();
    client.submit(track("t1")).await.unwrap();
    let op = recv_json(&mut ws).await;
    assert_eq!(op["type"], "operation");
    assert_eq!(op["opId"], "pk1:1");
    assert_eq!(op["baseVersion"], 3);
    // A second edit waits behind the one in flight.
    client.submit(track("t2")).await.unwrap();
    drop(ws); // the server dies without acking

    let (mut ws, uri) = accept(&l).await;
    assert!(uri.ends_with("&since=3"), "rejoin with since: {uri}");
    send(&mut ws, json!({"type":"init","users":[],"yourId":"pk1","version":3,"serverTime":0,"ops":[]})).await;
    let again = recv_json(&mut ws).await;
    assert_eq!(again["opId"], "pk1:1", "same op id");
    assert_eq!(again["baseVersion"], 3, "original base");
    assert_eq!(again["operation"], op["operation"]);
    let mut ack = op.clone();
    ack["type"] = json!("operation");
    send(&mut ws, json!({"type":"operation","operation":op["operation"],"version":4,"userId":"pk1","opId":"pk1:1"}))
        .await;
    let next = recv_json(&mut ws).await;
    assert_eq!(next["opId"], "pk1:2");
    assert_eq!(next["baseVersion"], 4);
    send(&mut ws, json!({"type":"operation","operation":next["operation"],"version":5,"userId":"pk1","opId":"pk1:2"}))
        .await;
    client.settled(T).await.unwrap();
    let s = client.snapshot();
    assert_eq!(s.version, Some(5));
    assert_eq!(s.doc.unwrap().tracks().len(), 2);
    assert_eq!(s.reconnects, 1);
    client.close().await;
}

/// The ack was lost, but the op was sequenced: the rejoin's `ops` carry it, the client takes
/// it as the ack and does not resend.
#[tokio::test]
async fn lost_ack_arrives_in_init_ops_and_is_not_resent() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, _events) = Client::connect(config(l.local_addr().unwrap())).unwrap();
    let (mut ws, _) = accept(&l).await;
    send(&mut ws, init_state(0, json!([]))).await;
    client.ready(T).await.unwrap();
    client.submit(track("t1")).await.unwrap();
    let op = recv_json(&mut ws).await;
    drop(ws);
    let (mut ws, uri) = accept(&l).await;
    assert!(uri.ends_with("&since=0"), "{uri}");
    let remote = json!([{"type":"insert","target":"track","id":"x","index":0,"value":{"name":"x","clips":[]}}]);
    send(
        &mut ws,
        json!({"type":"init","users":[],"yourId":"pk1","version":2,"serverTime":0,"ops":[
        {"operation":op["operation"],"version":1,"userId":"pk1","opId":"pk1:1"},
        {"operation":remote,"version":2,"userId":"other"}]}),
    )
    .await;
    client.settled(T).await.unwrap();
    // Nothing was resent: the next frame the server sees is the next edit.
    client.submit(track("t3")).await.unwrap();
    let next = recv_json(&mut ws).await;
    assert_eq!(next["opId"], "pk1:2");
    assert_eq!(next["baseVersion"], 2);
    let doc = client.document().unwrap();
    let ids: Vec<String> = doc.tracks().iter().map(|t| t.to_string()).collect();
    assert_eq!(ids, ["t3", "x", "t1"]);
    client.close().await;
}

/// `version_too_old` for the op in flight: the client reports what it dropped and reloads by
/// reconnecting without `since`; the new state replaces the document.
#[tokio::test]
async fn version_too_old_reloads_and_reports_dropped_ops() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, mut events) = Client::connect(config(l.local_addr().unwrap())).unwrap();
    let (mut ws, _) = accept(&l).await;
    send(&mut ws, init_state(10, json!([]))).await;
    client.ready(T).await.unwrap();
    client.submit(track("mine")).await.unwrap();
    let op = recv_json(&mut ws).await;
    send(&mut ws, json!({"type":"error","code":"version_too_old","message":"too old","opId":op["opId"]})).await;
    let (mut ws, uri) = accept(&l).await;
    assert!(!uri.contains("since"), "a reload connects without since: {uri}");
    send(&mut ws, init_state(50, json!([{"id":"srv","name":"S","clips":[]}]))).await;
    client.settled(T).await.unwrap();
    let doc = client.document().unwrap();
    assert_eq!(doc.tracks().iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["srv"]);
    assert_eq!(client.snapshot().version, Some(50));
    let mut dropped = None;
    while let Some(e) = events.try_recv() {
        if let Event::Dropped { reason, ops } = e.event {
            dropped = Some((reason, ops));
        }
    }
    let (reason, ops) = dropped.expect("a Dropped event");
    assert_eq!(reason, ReloadReason::VersionTooOld);
    assert_eq!(ops.len(), 1);
    client.close().await;
}

/// An `invalid_op` for the op in flight also reloads; an auth close (4001) stops the client.
#[tokio::test]
async fn rejected_op_reloads_and_unauthorized_is_fatal() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, _events) = Client::connect(config(l.local_addr().unwrap())).unwrap();
    let (mut ws, _) = accept(&l).await;
    send(&mut ws, init_state(0, json!([]))).await;
    client.ready(T).await.unwrap();
    client.submit(track("t1")).await.unwrap();
    let op = recv_json(&mut ws).await;
    send(&mut ws, json!({"type":"error","code":"invalid_op","message":"no","opId":op["opId"]})).await;
    let (mut ws, uri) = accept(&l).await;
    assert!(!uri.contains("since"), "{uri}");
    ws.close(Some(CloseFrame { code: CloseCode::from(4001), reason: "Unauthorized".into() })).await.unwrap();
    let err = client.ready(T).await.unwrap_err();
    assert!(err.to_string().contains("4001"), "{err}");
    assert!(client.snapshot().fatal.is_some());
}

/// Waits for the first event that `f` picks, skipping the others.
async fn event_where<R>(events: &mut Events, mut f: impl FnMut(Event) -> Option<R>) -> R {
    tokio::time::timeout(T, async {
        loop {
            let e = events.recv().await.expect("the client reports before it stops");
            if let Some(r) = f(e.event) {
                return r;
            }
        }
    })
    .await
    .expect("the event in time")
}

async fn close_with(ws: &mut Ws, code: u16, reason: &str) {
    ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() })).await.unwrap();
}

/// A storage failure (1011) and a slow consumer (4008) are retried: the client comes back with
/// `since` and reports each as a non-fatal disconnect with its close. Then 4009 (a newer
/// connection with the same `_pk` took over): the client reports that it was replaced, stops,
/// and never connects again, so two clients sharing a `_pk` cannot evict each other forever.
#[tokio::test]
async fn replaced_stops_and_reports_while_internal_error_and_slow_consumer_reconnect() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, mut events) = Client::connect(config(l.local_addr().unwrap())).unwrap();
    let (mut ws, _) = accept(&l).await;
    send(&mut ws, init_state(3, json!([]))).await;
    event_where(&mut events, |e| matches!(e, Event::Ready { .. }).then_some(())).await;
    for (code, close) in [(1011, Close::Internal), (4008, Close::SlowConsumer)] {
        close_with(&mut ws, code, close.reason()).await;
        let got = event_where(&mut events, |e| match e {
            Event::Disconnected { fatal, close, .. } => Some((fatal, close)),
            _ => None,
        })
        .await;
        assert_eq!(got, (false, Some(close)), "{code}");
        let (next, uri) = accept(&l).await;
        assert!(uri.ends_with("&since=3"), "{code}: rejoin with since: {uri}");
        ws = next;
        send(&mut ws, json!({"type":"init","users":[],"yourId":"pk1","version":3,"serverTime":0,"ops":[]})).await;
        event_where(&mut events, |e| matches!(e, Event::Ready { .. }).then_some(())).await;
    }
    assert_eq!(client.snapshot().reconnects, 2);

    close_with(&mut ws, 4009, "Replaced").await;
    let reason = event_where(&mut events, |e| match e {
        Event::Disconnected { reason, fatal: true, close: Some(Close::Replaced) } => Some(reason),
        Event::Disconnected { .. } => panic!("{e:?}: 4009 is reported as fatal, with its close"),
        _ => None,
    })
    .await;
    assert!(reason.contains("newer connection with the same connection id"), "{reason}");
    // The backoff is 10–50 ms: a client that came back would have connected by now.
    assert!(tokio::time::timeout(Duration::from_millis(500), l.accept()).await.is_err(), "no reconnect after 4009");
    let s = client.snapshot();
    assert_eq!(s.stopped_by, Some(Close::Replaced));
    assert!(!s.live && s.fatal.as_deref().is_some_and(|f| f.contains("4009")), "{:?}", s.fatal);
    assert!(client.ready(T).await.unwrap_err().to_string().contains("same connection id"));
    assert!(client.submit(track("late")).await.is_err(), "a stopped client takes no edits");
}

/// Pong gives a clock estimate: the server clock here runs 10 s ahead.
#[tokio::test]
async fn clock_offset_from_pong() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(l.local_addr().unwrap());
    cfg.ping_interval = Duration::from_millis(50);
    let (client, _events) = Client::connect(cfg).unwrap();
    let (mut ws, _) = accept(&l).await;
    send(&mut ws, init_state(0, json!([]))).await;
    client.ready(T).await.unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut got = None;
    for _ in 0..100 {
        let m = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "ping" {
                send(&mut ws, json!({"type":"pong","serverTime": now() + 10_000})).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                got = client.snapshot().clock;
                if got.is_some_and(|c| c.rtt < Duration::from_secs(1)) {
                    break;
                }
            }
        }
    }
    let c = got.expect("a clock estimate");
    assert!((c.offset_ms - 10_000).abs() < 200, "offset {} ms", c.offset_ms);
    client.close().await;
}
