//! End-to-end tests over real sockets on port 0: every message type, auth, roles, rebase,
//! exactly-once, catch-up, bad input, limits, presence, slow consumers, restart and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sequencer::auth::{sign, Claims, Role};
use sequencer::{start, Config};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn every_message_type_and_http_endpoint() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let (mut a, init) = Client::join(addr, "r1", "a").await;
    assert_eq!(init["yourId"], "a");
    assert_eq!(init["version"], 0);
    assert!(init["serverTime"].as_u64().unwrap() > 0);
    assert_eq!(init["state"]["tracks"], json!([]));
    assert_eq!(init["transport"]["playing"], false);
    assert!(init["transport"]["serverTime"].as_u64().is_some());
    assert_eq!(init["users"].as_array().unwrap().len(), 1);
    let me = &init["users"][0];
    assert_eq!((me["id"].as_str(), me["userId"].as_str(), me["name"].as_str()), (Some("a"), Some("a"), Some("a")));
    assert!(me["color"].as_str().unwrap().starts_with('#') && me["lastSeen"].as_u64().is_some());

    // The short socket path is the same room.
    let mut b = Client::raw(&format!("ws://{addr}/ws/r1?token={}&_pk=b", token("r1", "b"))).await;
    let init_b = b.recv().await;
    assert_eq!(init_b["users"].as_array().unwrap().len(), 2);
    assert_ne!(init_b["users"][0]["color"], init_b["users"][1]["color"]);
    let joined = a.recv().await;
    assert_eq!((joined["type"].as_str(), joined["user"]["id"].as_str()), (Some("user_joined"), Some("b")));

    let ack = a.op_acked(track("t1", 0), Some(0), "a:1").await;
    assert_eq!((ack["version"].as_u64(), ack["userId"].as_str()), (Some(1), Some("a")));
    assert_eq!(ack["operation"][0]["id"], "t1");
    let seen = b.recv().await;
    assert_eq!((seen["type"].as_str(), seen["version"].as_u64()), (Some("operation"), Some(1)));

    a.send(json!({"type":"cursor","x":1.5,"y":2.0,"selection":["t1"],"timestamp":1})).await;
    let c = b.recv().await;
    assert_eq!(c, json!({"type":"cursor","userId":"a","x":1.5,"y":2.0,"selection":["t1"]}));

    a.send(json!({"type":"transport","playing":true,"position":3.5})).await;
    let t = b.recv().await;
    assert_eq!(
        (t["type"].as_str(), t["playing"].as_bool(), t["position"].as_f64()),
        (Some("transport"), Some(true), Some(3.5))
    );
    assert_eq!(t["userId"], "a");
    assert!(t["serverTime"].as_u64().is_some());

    b.send(json!({"type":"ping"})).await;
    let p = b.recv().await;
    assert_eq!(p["type"], "pong");
    assert!(p["serverTime"].as_u64().unwrap() >= init["serverTime"].as_u64().unwrap());

    // HTTP API.
    assert_eq!(http(addr, "GET", "/healthz", None).await, (200, "ok".into()));
    let tok = app("alice");
    let joined = http_json(addr, "POST", "/api/projects/r1/join", Some(&tok)).await;
    assert_eq!(joined["roomId"], "r1");
    assert_eq!(joined["host"], addr.to_string());
    assert_eq!(joined["partykitHost"], joined["host"]);
    let room_tok = joined["token"].as_str().unwrap();
    let state = http_json(addr, "GET", "/api/projects/r1/state", Some(&tok)).await;
    assert_eq!((state["version"].as_u64(), state["isPlaying"].as_bool()), (Some(1), Some(true)));
    assert_eq!(state["tracks"][0]["id"], "t1");
    let collabs = http_json(addr, "GET", "/api/projects/r1/collaborators", Some(&tok)).await;
    let list = collabs["collaborators"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0]["joinedAt"].as_str().unwrap().ends_with('Z'));
    let ops = http_json(addr, "GET", "/api/projects/r1/ops?from=0", Some(&tok)).await;
    assert_eq!(ops["ops"].as_array().unwrap().len(), 1);
    assert_eq!(ops["ops"][0]["opId"], "a:1");
    let none = http_json(addr, "GET", "/api/projects/r1/ops?from=1", Some(&tok)).await;
    assert_eq!(none["ops"], json!([]));
    let metrics = http(addr, "GET", "/metrics", None).await.1;
    assert!(metrics.contains("sequencer_connections 2"), "{metrics}");
    assert!(metrics.contains("sequencer_ops_sequenced_total 1"));
    assert!(metrics.contains("sequencer_storage_append_seconds_count"));

    // The room token from `join` opens the socket.
    let (mut c, _) = Client::join_with(addr, "r1", room_tok, "c", None).await;
    a.recv_type("user_joined").await;
    c.ws.close(None).await.unwrap();
    let left = a.recv_type("user_left").await;
    assert_eq!(left["userId"], "c");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_auth_failure_closes_4001() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let now = sequencer::auth::now_secs();
    // Issued at `at`, valid 60 s, for `room`.
    let claims = |room: &str, at: u64| Claims::user("u", "U", Role::Editor, at, 60).unwrap().into_room(room, at, 60);
    let expired = sign(SECRET, &claims("r", now - 70)).unwrap();
    let wrong_sig = sign("other-secret", &claims("r", now)).unwrap();
    let wrong_room = sign(SECRET, &claims("other", now)).unwrap();
    let app_token = app("u");
    for tok in [None, Some("not.a.jwt"), Some(expired.as_str()), Some(&wrong_sig), Some(&wrong_room), Some(&app_token)]
    {
        let mut c = Client::raw(&url(addr, "r", tok, Some("x"), None)).await;
        assert_eq!(c.closed().await, (4001, "Unauthorized".to_string()), "token {tok:?}");
    }
    let mut c = Client::raw(&url(addr, "bad.room", Some(&token("bad.room", "u")), None, None)).await;
    assert_eq!(c.closed().await.0, 4400);
    let mut c = Client::raw(&url(addr, "r", Some(&token("r", "u")), Some("bad.pk"), None)).await;
    assert_eq!(c.closed().await.0, 4400);

    // HTTP: 401 without or with a bad token, 403 outside the allow-list, 400 on a bad id.
    assert_eq!(http(addr, "GET", "/api/projects/r/state", None).await.0, 401);
    assert_eq!(http(addr, "GET", "/api/projects/r/state", Some(&wrong_sig)).await.0, 401);
    assert_eq!(http(addr, "POST", "/api/projects/r/join", Some(&expired)).await.0, 401);
    let limited = sequencer::auth::app_token(SECRET, "u", "U", Some(vec!["p1".into()]), Role::Editor, 60).unwrap();
    assert_eq!(http(addr, "POST", "/api/projects/p2/join", Some(&limited)).await.0, 403);
    assert_eq!(http(addr, "POST", "/api/projects/p1/join", Some(&limited)).await.0, 200);
    assert_eq!(http(addr, "GET", "/api/projects/p2/ops", Some(&limited)).await.0, 403);
    assert_eq!(http(addr, "GET", "/api/projects/a.b/state", Some(&app_token)).await.0, 400);
    assert_eq!(http(addr, "GET", "/parties/main/r", None).await.0, 426);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn viewer_gets_forbidden_and_still_receives() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let (mut ed, _) = Client::join(addr, "v", "ed").await;
    let (mut viewer, _) = Client::join_with(addr, "v", &viewer_token("v", "vw"), "vw", None).await;
    viewer.op(track("t1", 0), Some(0), "vw:1").await;
    let e = viewer.error().await;
    assert_eq!((e["code"].as_str(), e["opId"].as_str()), (Some("forbidden"), Some("vw:1")));
    viewer.send(json!({"type":"transport","playing":true,"position":1})).await;
    assert_eq!(viewer.error().await["code"], "forbidden");
    viewer.send(json!({"type":"cursor","x":1,"y":1})).await;
    ed.recv_type("cursor").await;
    ed.op_acked(track("t2", 0), Some(0), "ed:1").await;
    let seen = viewer.recv_type("operation").await;
    assert_eq!((seen["version"].as_u64(), seen["operation"][0]["id"].as_str()), (Some(1), Some("t2")));
    let state = http_json(addr, "GET", "/api/projects/v/state", Some(&app("x"))).await;
    assert_eq!(state["tracks"].as_array().unwrap().len(), 1);
    assert_eq!(state["isPlaying"], false);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn stale_ops_are_rebased() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "rb", "a").await;
    let (mut b, _) = Client::join(addr, "rb", "b").await;
    a.op_acked(track("t1", 0), Some(0), "a:1").await;
    // b, still on version 0, inserts at the same index: the later-sequenced insert goes first.
    b.op(track("t2", 0), Some(0), "b:1").await;
    let ack = b.recv_type("operation").await;
    assert_eq!(ack["version"], 1);
    let ack = b.recv_type("operation").await;
    assert_eq!((ack["version"].as_u64(), ack["opId"].as_str()), (Some(2), Some("b:1")));
    assert_eq!(ack["operation"][0]["index"], 0);
    // a deletes t1 at v3; b updates t1 on v2: the update is dropped, an empty op is sequenced.
    a.recv_type("operation").await;
    a.op_acked(json!({"type":"delete","target":"track","id":"t1"}), Some(2), "a:2").await;
    b.op(json!({"type":"update","target":"track","id":"t1","path":["volume"],"value":0.5}), Some(2), "b:2").await;
    b.recv_type("operation").await;
    let ack = b.recv_type("operation").await;
    assert_eq!((ack["version"].as_u64(), ack["operation"].clone()), (Some(4), json!([])));
    let state = http_json(addr, "GET", "/api/projects/rb/state", Some(&app("x"))).await;
    let ids: Vec<&str> = state["tracks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["t2"]);
    assert_eq!(state["version"], 4);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn resend_is_answered_exactly_once_also_after_reconnect() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "x1", "a").await;
    let (mut b, _) = Client::join(addr, "x1", "b").await;
    a.op_acked(track("t1", 0), Some(0), "a:1").await;
    a.op(track("t1", 0), Some(0), "a:1").await;
    let again = a.recv_type("operation").await;
    assert_eq!((again["version"].as_u64(), again["opId"].as_str()), (Some(1), Some("a:1")));
    // b sees v1 once, then directly v2.
    assert_eq!(b.recv_type("operation").await["version"], 1);
    a.op_acked(track("t2", 1), Some(1), "a:2").await;
    assert_eq!(b.recv_type("operation").await["version"], 2);

    // Reconnect with the same _pk and since=0; resend both ops with their original bases.
    drop(a);
    let (mut a2, init) = Client::join_with(addr, "x1", &token("x1", "a"), "a", Some(0)).await;
    assert_eq!(init["ops"].as_array().unwrap().len(), 2);
    assert!(init.get("state").is_none());
    a2.op(track("t1", 0), Some(0), "a:1").await;
    assert_eq!(a2.recv_type("operation").await["version"], 1);
    a2.op(track("t2", 1), Some(1), "a:2").await;
    assert_eq!(a2.recv_type("operation").await["version"], 2);
    let state = http_json(addr, "GET", "/api/projects/x1/state", Some(&app("x"))).await;
    assert_eq!((state["version"].as_u64(), state["tracks"].as_array().unwrap().len()), (Some(2), 2));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn since_catch_up_from_memory_and_from_the_store() {
    let config = Config { history_window: 2, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "cu", "a").await;
    for i in 0..6 {
        a.op_acked(track(&format!("t{i}"), 0), Some(i), &format!("a:{i}")).await;
    }
    let (_, init) = Client::join_with(addr, "cu", &token("cu", "c"), "c", Some(5)).await;
    let ops = init["ops"].as_array().unwrap();
    assert_eq!((ops.len(), ops[0]["version"].as_u64(), init["version"].as_u64()), (1, Some(6), Some(6)));
    assert_eq!(ops[0]["type"], Value::Null, "ops are listed without a type");
    // Beyond the 2-version window: read from the store.
    let (_, init) = Client::join_with(addr, "cu", &token("cu", "d"), "d", Some(1)).await;
    let versions: Vec<u64> = init["ops"].as_array().unwrap().iter().map(|o| o["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [2, 3, 4, 5, 6]);
    let (_, init) = Client::join_with(addr, "cu", &token("cu", "e"), "e", Some(6)).await;
    assert_eq!(init["ops"], json!([]));
    // Ahead of the room: the full state.
    let (_, init) = Client::join_with(addr, "cu", &token("cu", "f"), "f", Some(60)).await;
    assert_eq!(init["state"]["tracks"].as_array().unwrap().len(), 6);
    // A stale op based before the window is rebased with history loaded from the store.
    let ack = a.op_acked(track("old", 0), Some(1), "a:old").await;
    assert_eq!(ack["version"], 7);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_answered_and_others_keep_being_served() {
    let config = Config { max_frame: 4096, max_batch: 3, max_depth: 16, max_rebase: 3, history_window: 2, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut bad, _) = Client::join(addr, "bi", "bad").await;
    let (mut good, _) = Client::join(addr, "bi", "good").await;
    let mut v = 0;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "bad_json"),
        (Message::Binary(vec![1, 2, 3].into()), "bad_json"),
        (Message::Text(r#"{"type":"dance"}"#.into()), "bad_message"),
        (Message::Text(r#"{"type":"cursor","x":"left"}"#.into()), "bad_message"),
        (Message::Text(r#"{"type":"operation","operation":{"type":"explode"},"opId":"o1"}"#.into()), "bad_message"),
        (Message::Text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000)).into()), "too_large"),
        (Message::Text(format!(r#"{{"type":"ping","pad":{}{}}}"#, "[".repeat(40), "]".repeat(40)).into()), "too_large"),
        (
            Message::Text(
                json!({"type":"operation","operation":[track("a",0),track("b",1),track("c",2),track("d",3)],"opId":"o2"})
                    .to_string()
                    .into(),
            ),
            "too_large",
        ),
        (
            Message::Text(json!({"type":"operation","operation":{"type":"delete","target":"track","id":"nope"},"opId":"o3"}).to_string().into()),
            "invalid_op",
        ),
        (Message::Text(json!({"type":"operation","operation":track("z",0),"baseVersion":99,"opId":"o4"}).to_string().into()), "version_ahead"),
    ];
    for (i, (frame, code)) in cases.into_iter().enumerate() {
        futures_util::SinkExt::send(&mut bad.ws, frame).await.unwrap();
        let e = bad.error().await;
        assert_eq!(e["code"], code, "case {i}: {e}");
        assert!(e["message"].as_str().is_some());
        good_op(&mut good, &mut v).await;
    }
    // Too old: the room is at version 10 now, max_rebase 3.
    bad.op(track("late", 0), Some(0), "o5").await;
    let e = bad.error().await;
    assert_eq!((e["code"].as_str(), e["opId"].as_str()), (Some("version_too_old"), Some("o5")));
    good_op(&mut good, &mut v).await;
    // Nothing bad was applied; the bad client is still connected and can edit.
    bad.recv_type("operation").await;
    let state = http_json(addr, "GET", "/api/projects/bi/state", Some(&app("x"))).await;
    assert_eq!(state["tracks"].as_array().unwrap().len(), 11);
    let ack = bad.op_acked(track("ok", 0), None, "o6").await;
    assert_eq!(ack["version"], 12);
    server.shutdown().await.unwrap();
}

async fn good_op(good: &mut Client, v: &mut u64) {
    *v += 1;
    let id = format!("g{v}");
    let ack = good.op_acked(track(&id, 0), Some(*v - 1), &id).await;
    assert_eq!(ack["version"], *v);
}

#[tokio::test]
async fn rate_limit_answers_rate_limited_and_keeps_serving() {
    let config = Config { rate_limit: 10, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut spam, _) = Client::join(addr, "rl", "spam").await;
    let (mut good, _) = Client::join(addr, "rl", "good").await;
    for i in 0..15 {
        spam.op(track(&format!("s{i}"), 0), None, &format!("s:{i}")).await;
    }
    let got = spam.drain_for(Duration::from_millis(300)).await;
    let limited: Vec<&Value> = got.iter().filter(|m| m["code"] == "rate_limited").collect();
    let acks = got.iter().filter(|m| m["type"] == "operation").count();
    assert!(!limited.is_empty() && (10..15).contains(&acks), "{got:?}");
    assert!(limited.iter().all(|m| m["opId"].as_str().is_some_and(|s| s.starts_with("s:"))));
    let ack = good.op_acked(track("g", 0), None, "g:1").await;
    assert!(ack["version"].as_u64().unwrap() >= 10);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_limits_close_4029() {
    let config = Config { max_room_connections: 2, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (_a, _) = Client::join(addr, "full", "a").await;
    let (_b, _) = Client::join(addr, "full", "b").await;
    let mut c = Client::raw(&url(addr, "full", Some(&token("full", "c")), Some("c"), None)).await;
    assert_eq!(c.closed().await.0, 4029);
    // Another room is fine.
    let (_d, _) = Client::join(addr, "other", "d").await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn reconnect_with_same_pk_replaces_without_flicker() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let (mut obs, _) = Client::join(addr, "pk", "obs").await;
    let (mut a, _) = Client::join(addr, "pk", "a").await;
    assert_eq!(obs.recv().await["type"], "user_joined");
    let (mut a2, init) = Client::join(addr, "pk", "a").await;
    assert_eq!(init["users"].as_array().unwrap().len(), 2);
    assert_eq!(a.closed().await.0, 4009);
    // Another account cannot take over a visible connection id.
    let mut thief = Client::raw(&url(addr, "pk", Some(&token("pk", "mallory")), Some("a"), None)).await;
    assert_eq!(thief.closed().await.0, 4400);
    a2.op_acked(track("t", 0), None, "a:1").await;
    // The observer's next message is the op: no user_left / user_joined in between.
    let next = obs.recv().await;
    assert_eq!((next["type"].as_str(), next["userId"].as_str()), (Some("operation"), Some("a")));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn cursors_are_coalesced_latest_wins() {
    let config = Config { cursor_tick: Duration::from_millis(100), rate_limit: 0, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "cur", "a").await;
    let (mut b, _) = Client::join(addr, "cur", "b").await;
    a.recv_type("user_joined").await;
    for i in 0..200 {
        a.send(json!({"type":"cursor","x":i,"y":0})).await;
    }
    let got = b.drain_for(Duration::from_millis(400)).await;
    let xs: Vec<f64> = got.iter().filter(|m| m["type"] == "cursor").map(|m| m["x"].as_f64().unwrap()).collect();
    assert!(!xs.is_empty() && xs.len() < 20, "{xs:?}");
    assert_eq!(xs.last().copied(), Some(199.0));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_connection_is_evicted_after_heartbeat_timeout() {
    let config = Config { heartbeat_timeout: Duration::from_millis(600), ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "hb", "a").await;
    let (silent, _) = Client::join(addr, "hb", "s").await;
    a.recv_type("user_joined").await;
    let started = Instant::now();
    // `a` keeps reading (so it answers pings); `silent` neither reads nor writes.
    let left = a.recv_type("user_left").await;
    assert_eq!(left["userId"], "s");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
    // `a` answered the pings and is still here.
    let collabs = http_json(addr, "GET", "/api/projects/hb/collaborators", Some(&app("x"))).await;
    assert_eq!(collabs["collaborators"].as_array().unwrap().len(), 1);
    drop(silent);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_consumer_does_not_delay_others_and_is_closed() {
    let config = Config { outbox_capacity: 32, rate_limit: 0, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "slow", "a").await;
    let (mut b, _) = Client::join(addr, "slow", "b").await;
    // `stuck` never reads: its socket buffers fill, then its queue of 32 frames.
    let (stuck, _) = Client::join(addr, "slow", "stuck").await;
    let pad = "p".repeat(100_000);
    let mut worst = Duration::ZERO;
    let mut overflowed = false;
    // Keep editing until the kernel buffers towards `stuck` and then its queue are full
    // (how much that takes depends on the machine's socket buffer sizes).
    for i in 0..600u64 {
        let t = Instant::now();
        let op = json!({"type":"insert","target":"marker","id":format!("m{i}"),"index":0,"value":{"time":1,"pad":pad}});
        a.op_acked(op, None, &format!("a:{i}")).await;
        worst = worst.max(t.elapsed());
        assert_eq!(b.recv_type("operation").await["version"], i + 1);
        if i % 20 == 19 && http(addr, "GET", "/metrics", None).await.1.contains("overflow_closes_total 1") {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the stalled reader was never closed");
    assert!(worst < Duration::from_millis(2000), "worst ack latency {worst:?}");
    // Its presence goes too.
    let mut ids = Vec::new();
    for _ in 0..60 {
        let collabs = http_json(addr, "GET", "/api/projects/slow/collaborators", Some(&app("x"))).await;
        let list = collabs["collaborators"].as_array().unwrap();
        ids = list.iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
        if ids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids, ["a", "b"]);
    drop(stuck);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_state_version_and_op_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { snapshot_every: 3, history_window: 2, ..Config::sqlite(SECRET, dir.path().to_path_buf()) };
    let server = start(config.clone()).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "p", "a").await;
    for i in 0..7 {
        a.op_acked(track(&format!("t{i}"), 0), Some(i), &format!("a:{i}")).await;
    }
    a.send(json!({"type":"transport","playing":true,"position":2})).await;
    drop(a);
    server.shutdown().await.unwrap();

    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, init) = Client::join(addr, "p", "a").await;
    assert_eq!(init["version"], 7);
    assert_eq!(init["state"]["tracks"].as_array().unwrap().len(), 7);
    // Exactly-once across the restart: an old op id gets its original version.
    a.op(track("t1", 0), Some(1), "a:1").await;
    assert_eq!(a.recv_type("operation").await["version"], 2);
    let ack = a.op_acked(track("t7", 0), Some(7), "a:7").await;
    assert_eq!(ack["version"], 8);
    let ops = http_json(addr, "GET", "/api/projects/p/ops?from=0", Some(&app("x"))).await;
    assert_eq!(ops["ops"].as_array().unwrap().len(), 8);
    server.shutdown().await.unwrap();
}

/// The versions of every snapshot `room` has in the store, oldest first.
fn snapshot_versions(store: &dyn sequencer::store::Store, room: &str) -> Vec<u64> {
    let mut versions = Vec::new();
    let mut below = u64::MAX >> 1;
    while let Some((v, _)) = store.snapshot_at_or_before(room, below).unwrap() {
        versions.push(v);
        match v.checked_sub(1) {
            Some(b) => below = b,
            None => break,
        }
    }
    versions.reverse();
    versions
}

#[tokio::test]
async fn a_large_document_is_snapshotted_less_often_and_reloads_from_its_last_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { snapshot_every: 4, ..Config::sqlite(SECRET, dir.path().to_path_buf()) };
    let server = start(config.clone()).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "big", "a").await;
    // A small document: a snapshot every 4 versions.
    for i in 0..8 {
        a.op_acked(track(&format!("t{i}"), 0), None, &format!("a:{i}")).await;
    }
    // Tracks with 2,000-character names: the state grows past 40 KB, so snapshots at every
    // 4th version would write ~10 KB per version; they come every ~300 versions instead.
    let name = "n".repeat(2000);
    for i in 0..20 {
        let op =
            json!({"type":"insert","target":"track","id":format!("big{i}"),"index":0,"value":{"name":name,"clips":[]}});
        a.op_acked(op, None, &format!("a:big{i}")).await;
    }
    for i in 0..40 {
        let op = json!({"type":"update","target":"track","id":"t0","path":["name"],"value":format!("t0-{i}")});
        a.op_acked(op, None, &format!("a:g{i}")).await;
    }
    drop(a);
    server.shutdown().await.unwrap();

    let store = sequencer::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    let versions = snapshot_versions(&store, "big");
    assert_eq!(&versions[..2], [4, 8], "the small document's cadence: {versions:?}");
    let gaps: Vec<u64> = versions.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 4), "never more often than snapshot_every: {versions:?}");
    let last = *versions.last().unwrap();
    assert!(last < 40, "no snapshot while the document is large: {versions:?}");
    assert!(versions.len() < 9, "the 40 KB document was not snapshotted every 4th version: {versions:?}");
    drop(store);

    // The room loads from its last snapshot and the ops after it, and counts the next
    // snapshot from there.
    let server = start(config).await.unwrap();
    let (_, init) = Client::join(server.addr, "big", "b").await;
    assert_eq!(init["version"], 68);
    assert_eq!(init["state"]["tracks"].as_array().unwrap().len(), 28);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_closes_1001_and_keeps_acked_ops() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::sqlite(SECRET, dir.path().to_path_buf());
    let server = start(config.clone()).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "g", "a").await;
    for i in 0..20 {
        a.op(track(&format!("t{i}"), 0), None, &format!("a:{i}")).await;
    }
    let last = a.op_acked(track("last", 0), None, "a:last").await;
    assert_eq!(last["version"], 21);
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(a.closed().await.0, 1001);
    stopping.await.unwrap().unwrap();
    let server = start(config).await.unwrap();
    let state = http_json(server.addr, "GET", "/api/projects/g/state", Some(&app("x"))).await;
    assert_eq!(state["version"], 21);
    assert_eq!(state["tracks"][0]["id"], "last");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_room_unloads_and_reloads_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { room_idle: Duration::from_millis(200), ..Config::sqlite(SECRET, dir.path().to_path_buf()) };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "idle", "a").await;
    a.op_acked(track("t", 0), Some(0), "a:1").await;
    a.ws.close(None).await.unwrap();
    drop(a);
    let mut unloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if http(addr, "GET", "/metrics", None).await.1.contains("sequencer_rooms 0") {
            unloaded = true;
            break;
        }
    }
    assert!(unloaded, "room was not unloaded");
    let (mut a, init) = Client::join(addr, "idle", "a").await;
    assert_eq!((init["version"].as_u64(), init["state"]["tracks"][0]["id"].as_str()), (Some(1), Some("t")));
    a.op(track("t", 0), Some(0), "a:1").await;
    assert_eq!(a.recv_type("operation").await["version"], 1);
    server.shutdown().await.unwrap();
}
