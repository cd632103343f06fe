//! The attacks of the hardening review, each reproduced at its size against a real server on
//! port 0: none crashes the server, bricks a room, starves it, or silences someone else's edits.
//! (HTTP-layer attacks — slowloris, reply sizes, tokens, Host — are in `hardening_http.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use sequencer::{start, Config};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!({ "k": v }))
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// The server still sequences a plain edit from someone else and answers `/healthz`.
async fn still_serving(addr: std::net::SocketAddr, room: &str, who: &str) {
    let (mut c, init) = Client::join(addr, room, who).await;
    let v = init["version"].as_u64().unwrap();
    let ack = c.op_acked(track(&format!("ok-{who}"), 0), Some(v), &format!("{who}:ok")).await;
    assert_eq!(ack["version"].as_u64(), Some(v + 1));
    assert_eq!(http(addr, "GET", "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn item1_an_8000_key_path_is_refused_and_the_server_stays_up() {
    let server = start(memory()).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "deep", "a").await;
    let op = json!({"type":"update","target":"project","path":keys(8000),"value":1});
    a.op(op, Some(0), "a:1").await;
    let e = a.error().await;
    assert_eq!((e["code"].as_str(), e["opId"].as_str()), (Some("too_large"), Some("a:1")), "{e}");
    // Just past the protocol's limits, too: 33 keys, or a value nested 33 deep.
    a.op(json!({"type":"update","target":"project","path":keys(33),"value":1}), Some(0), "a:2").await;
    assert_eq!(a.error().await["code"], "too_large");
    a.op(json!({"type":"update","target":"project","path":["x"],"value":nested(33)}), Some(0), "a:3").await;
    assert_eq!(a.error().await["code"], "too_large");
    let clip =
        json!({"type":"insert","target":"track","id":"t","index":0,"value":{"clips":[{"id":"c","v":nested(33)}]}});
    a.op(clip, Some(0), "a:4").await;
    assert_eq!(a.error().await["code"], "too_large");
    still_serving(server.addr, "deep", "b").await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn item2_the_deepest_accepted_values_reload_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::sqlite(SECRET, dir.path().to_path_buf());
    let server = start(config.clone()).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "keep", "a").await;
    // Every accepted way to nest to the limit: a deep value, a deep path, and a deep clip.
    let ops = [
        json!({"type":"update","target":"project","path":["deep"],"value":nested(32)}),
        json!({"type":"update","target":"project","path":keys(32),"value":{}}),
        json!({"type":"insert","target":"track","id":"t","index":0,"value":{"clips":[{"id":"c","v":nested(32)}]}}),
        json!({"type":"update","target":"clip","id":"c","path":["w","x"],"value":nested(31)}),
    ];
    for (i, op) in ops.iter().enumerate() {
        let ack = a.op_acked(op.clone(), Some(i as u64), &format!("a:{i}")).await;
        assert_eq!(ack["version"].as_u64(), Some(i as u64 + 1), "{ack}");
    }
    let before = http_json(addr, "GET", "/api/projects/keep/state", Some(&app("a"))).await;
    drop(a);
    server.shutdown().await.unwrap();

    let server = start(Config { listen: addr, ..config }).await.unwrap();
    let (_b, init) = Client::join(server.addr, "keep", "b").await;
    assert_eq!(init["version"].as_u64(), Some(4));
    assert_eq!(init["state"]["deep"], nested(32));
    assert_eq!(init["state"]["tracks"][0]["clips"][0]["w"]["x"], nested(31));
    let after = http_json(server.addr, "GET", "/api/projects/keep/state", Some(&app("a"))).await;
    assert_eq!(after["k0"], before["k0"]);
    assert_eq!(after["tracks"], before["tracks"]);
    let ops = http_json(server.addr, "GET", "/api/projects/keep/ops?from=0", Some(&app("a"))).await;
    assert_eq!(ops["ops"].as_array().map(Vec::len), Some(4));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn item3_nobody_can_suppress_someone_elses_edit_by_reusing_its_op_id() {
    let dir = tempfile::tempdir().unwrap();
    // A history window of 2 sends the duplicate check of older bases through the store.
    let config = Config { history_window: 2, ..Config::sqlite(SECRET, dir.path().to_path_buf()) };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut ana, _) = Client::join(addr, "ids", "ana").await;
    let (mut eve, _) = Client::join(addr, "ids", "eve").await;
    // Eve predicts Ana's next id and sends an empty edit with it first.
    let forged = eve.op_acked(json!([]), Some(0), "ana:1").await;
    assert_eq!(forged["version"], 1);
    ana.op(track("mine", 0), Some(0), "ana:1").await;
    let ack = ack_from(&mut ana, "ana:1", "ana").await;
    assert_eq!((ack["version"].as_u64(), ack["userId"].as_str()), (Some(2), Some("ana")), "{ack}");
    assert_eq!(ack["operation"][0]["id"], "mine", "Ana's edit was answered with Eve's op");
    // Two honest clients that both use "1".
    ana.op(track("x", 0), Some(2), "1").await;
    let x = ack_from(&mut ana, "1", "ana").await;
    eve.op(track("y", 0), Some(3), "1").await;
    let y = ack_from(&mut eve, "1", "eve").await;
    assert_eq!((x["version"].as_u64(), y["version"].as_u64()), (Some(3), Some(4)));
    // Ana's real resend (old base, beyond the window: looked up in the store) is re-acked with
    // its version; Eve's op with the same id is not what she gets.
    for i in 0..3 {
        ana.op(json!([]), None, &format!("pad{i}")).await;
        ack_from(&mut ana, &format!("pad{i}"), "ana").await;
    }
    ana.op(track("mine", 0), Some(0), "ana:1").await;
    let again = ack_from(&mut ana, "ana:1", "ana").await;
    assert_eq!((again["version"].as_u64(), again["userId"].as_str()), (Some(2), Some("ana")), "{again}");
    let state = http_json(addr, "GET", "/api/projects/ids/state", Some(&app("ana"))).await;
    let ids: Vec<&str> = state["tracks"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, ["y", "x", "mine"]);
    server.shutdown().await.unwrap();
}

/// The `operation` that acknowledges `op_id` for the connection `me` (an op of another account
/// may carry the same id: ids are per account).
async fn ack_from(c: &mut Client, op_id: &str, me: &str) -> Value {
    loop {
        let m = c.recv_type("operation").await;
        if m["opId"] == op_id && m["userId"] == me {
            return m;
        }
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn items5_and_6_small_edits_next_to_a_large_value_cost_what_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { rate_limit: 0, ..Config::sqlite(SECRET, dir.path().to_path_buf()) };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut a, _) = Client::join(addr, "big", "a").await;
    let (mut watcher, _) = Client::join(addr, "big", "w").await;
    let blob: serde_json::Map<String, Value> = (0..1950).map(|i| (format!("k{i:04}"), json!("x".repeat(90)))).collect();
    a.op_acked(json!({"type":"update","target":"project","path":["blob"],"value":blob}), Some(0), "a:blob").await;
    let db = || {
        ["sequencer.db", "sequencer.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let (rss0, db0) = (rss_bytes(), db());
    let mut v = 1;
    for i in 0..1000 {
        let op = json!({"type":"update","target":"project","path":["tempo"],"value":100 + i % 50});
        v = a.op_acked(op, Some(v), &format!("a:t{i}")).await["version"].as_u64().unwrap();
    }
    let mut largest = 0;
    for i in 0..300 {
        let op = json!({"type":"update","target":"project","path":["blob","n"],"value":i});
        let ack = a.op_acked(op, Some(v), &format!("a:n{i}")).await;
        largest = largest.max(ack.to_string().len());
        v = ack["version"].as_u64().unwrap();
    }
    let grown = rss_bytes().saturating_sub(rss0);
    // Before: the history window deep-copied the 195 KB value per version (≈ 200 MB).
    assert!(grown < 60 * 1024 * 1024, "RSS grew {grown} bytes over 1,300 small edits");
    // Before: each `blob.n` ack carried the whole blob (≈ 240 KB).
    assert!(largest < 1024, "an ack of one small write was {largest} bytes");
    let frames = watcher.drain_for(Duration::from_millis(500)).await;
    let received: usize = frames.iter().map(|f| f.to_string().len()).sum();
    assert!(received < 2 * 1024 * 1024, "a member received {received} bytes for 1,300 small edits");
    let db_grown = db().saturating_sub(db0);
    eprintln!("1,300 small edits next to a 195 KB value: RSS +{grown} B, largest ack {largest} B, member received {received} B, store +{db_grown} B");
    // Snapshots (every 500 versions) hold the blob; the log itself stays small.
    assert!(db_grown < 8 * 1024 * 1024, "the store grew {db_grown} bytes");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn item7_a_catch_up_larger_than_the_state_is_sent_as_the_state() {
    let config = Config { rate_limit: 0, ..memory() };
    let server = start(config).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "cu", "a").await;
    let mut v = 0;
    for i in 0..40 {
        let op = json!({"type":"update","target":"project","path":["pad"],"value":"p".repeat(10_000 + i)});
        v = a.op_acked(op, Some(v), &format!("a:{i}")).await["version"].as_u64().unwrap();
    }
    v = a.op_acked(json!({"type":"update","target":"project","path":["tempo"],"value":99}), Some(v), "a:t").await
        ["version"]
        .as_u64()
        .unwrap();
    let (_b, init) = Client::join_with(server.addr, "cu", &token("cu", "b"), "b", Some(0)).await;
    assert!(init["ops"].is_null() && init["state"]["pad"].is_string(), "a 0.8 MB catch-up instead of a 10 KB state");
    let (_c, init) = Client::join_with(server.addr, "cu", &token("cu", "c"), "c", Some(v - 1)).await;
    assert_eq!(init["ops"].as_array().map(Vec::len), Some(1), "a small catch-up is still ops");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn item9_one_account_cannot_fill_a_room() {
    let config = Config { max_account_connections: 8, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let tok = viewer_token("full", "lurker");
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(Client::join_with(addr, "full", &tok, &format!("l{i}"), None).await.0);
    }
    let mut ninth = Client::raw(&url(addr, "full", Some(&tok), Some("l8"), None)).await;
    assert_eq!(ninth.closed().await.0, 4029);
    // The owner still gets in.
    let (_owner, init) = Client::join(addr, "full", "owner").await;
    assert_eq!(init["users"].as_array().map(Vec::len), Some(9));
    // Reconnecting with a held `_pk` replaces it rather than taking a new slot.
    let (_again, _) = Client::join_with(addr, "full", &tok, "l0", None).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn item10_malformed_frames_count_towards_the_rate_limit() {
    let config = Config { rate_limit: 50, ..memory() };
    let server = start(config).await.unwrap();
    for kind in ["bad_json", "binary", "unknown", "too_deep", "too_large"] {
        let (mut c, _) = Client::join(server.addr, "flood", kind).await;
        let frame = |i: usize| -> Message {
            match kind {
                "bad_json" => Message::Text(format!("{{not json {i}").into()),
                "binary" => Message::Binary(vec![0u8; 64].into()),
                "unknown" => Message::Text(json!({"type":"nope","i":i}).to_string().into()),
                "too_deep" => Message::Text(format!("{}{}", "[".repeat(200), "]".repeat(200)).into()),
                _ => Message::Text("x".repeat(300 * 1024).into()),
            }
        };
        let started = Instant::now();
        let mut sent = 0;
        use futures_util::SinkExt;
        while sent < 3000 && started.elapsed() < Duration::from_secs(10) {
            if c.ws.send(frame(sent)).await.is_err() {
                break;
            }
            sent += 1;
        }
        let mut errors = 0;
        let code = loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws)).await {
                Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(Message::Text(_)))) => errors += 1,
                Ok(Some(Ok(_))) => {}
                _ => break None,
            }
        };
        assert!(matches!(code, Some(1008) | None), "{kind}: closed with {code:?}");
        assert!(errors < 1000, "{kind}: {errors} error replies to a flood");
    }
    still_serving(server.addr, "flood", "ok").await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn item11_loaded_rooms_are_capped_and_reads_do_not_keep_rooms_loaded() {
    let config = Config { max_rooms: 20, ..memory() };
    let server = start(config).await.unwrap();
    let addr = server.addr;
    let (mut kept, _) = Client::join(addr, "kept", "a").await;
    let tok = app("scanner");
    let mut refused = 0;
    for i in 0..40 {
        let (status, _) = http(addr, "GET", &format!("/api/projects/scan{i}/state"), Some(&tok)).await;
        assert!(status == 200 || status == 503, "{status}");
        refused += usize::from(status == 503);
    }
    assert!(refused >= 20, "only {refused} of 40 new rooms refused with a cap of 20");
    let mut late = Client::raw(&url(addr, "new-room", Some(&token("new-room", "b")), Some("b"), None)).await;
    assert_eq!(late.closed().await.0, 4029);
    // The room someone is in keeps working; rooms loaded only by reads unload within seconds.
    kept.op_acked(track("t", 0), Some(0), "a:1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if http(addr, "GET", "/api/projects/later/state", Some(&tok)).await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "read-only rooms never unloaded");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn op_ids_and_selections_are_bounded() {
    let server = start(memory()).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "lim", "a").await;
    a.op(track("t", 0), Some(0), &"x".repeat(129)).await;
    let e = a.error().await;
    assert_eq!(e["code"], "too_large");
    assert!(e["opId"].is_null(), "an over-long op id is not echoed");
    let ids: Vec<String> = (0..257).map(|i| format!("c{i}")).collect();
    a.send(json!({"type":"cursor","x":0,"y":0,"selection":ids})).await;
    assert_eq!(a.error().await["code"], "too_large");
    a.op_acked(track("t", 0), Some(0), &"y".repeat(128)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_document_cannot_grow_past_its_cap() {
    let config = Config { max_doc_bytes: 64 * 1024, rate_limit: 0, ..memory() };
    let server = start(config).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "cap", "a").await;
    let mut v = 0;
    let mut refused = None;
    for i in 0..20 {
        let op =
            json!({"type":"insert","target":"marker","id":format!("m{i}"),"index":0,"value":{"blob":"b".repeat(8000)}});
        a.op(op, Some(v), &format!("a:{i}")).await;
        let m = loop {
            let m = a.recv().await;
            if m["type"] == "operation" || m["type"] == "error" {
                break m;
            }
        };
        if m["type"] == "error" {
            refused = Some((i, m));
            break;
        }
        v = m["version"].as_u64().unwrap();
    }
    let (i, e) = refused.expect("a 160 KB project under a 64 KB cap");
    assert!((7..=8).contains(&i), "refused at insert {i}");
    assert_eq!(e["code"], "too_large");
    // Shrinking still works, and then growing again.
    a.op_acked(json!({"type":"delete","target":"marker","id":"m0"}), Some(v), "a:del").await;
    still_serving(server.addr, "cap", "b").await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    let config = Config { max_frame: 16 * 1024, ..memory() };
    let server = start(config).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "big-frame", "a").await;
    a.send_text("x".repeat(200 * 1024)).await;
    assert_eq!(a.closed().await.0, 1009);
    still_serving(server.addr, "big-frame", "b").await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stale_op_cannot_make_its_room_read_unbounded_history() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        history_window: 2,
        max_reply_bytes: 64 * 1024,
        rate_limit: 0,
        ..Config::sqlite(SECRET, dir.path().to_path_buf())
    };
    let server = start(config).await.unwrap();
    let (mut a, _) = Client::join(server.addr, "stale", "a").await;
    let mut v = 0;
    for i in 0..20 {
        let op = json!({"type":"update","target":"project","path":[format!("k{i}")],"value":"v".repeat(8000)});
        v = a.op_acked(op, Some(v), &format!("a:{i}")).await["version"].as_u64().unwrap();
    }
    // Based 20 versions back: 160 KB of history to read, over the 64 KB bound.
    a.op(track("late", 0), Some(0), "a:late").await;
    let e = a.error().await;
    assert_eq!((e["code"].as_str(), e["opId"].as_str()), (Some("version_too_old"), Some("a:late")), "{e}");
    // Based within the bound: rebased from the store as before.
    let ack = a.op_acked(track("recent", 0), Some(v - 4), "a:recent").await;
    assert_eq!(ack["version"].as_u64(), Some(v + 1));
    server.shutdown().await.unwrap();
}
