//! The glue on the host: the JSON that the TypeScript client reads, for each kind of effect.

use ot_core::session::Now;
use ot_wasm::{text, StudioSession};
use serde_json::{json, Value};

fn at(ms: u64) -> Now {
    Now { mono_ms: ms, epoch_ms: 1_700_000_000_000 + ms }
}

fn effects(text: &str) -> Vec<Value> {
    match serde_json::from_str(text).expect("effects are JSON") {
        Value::Array(a) => a,
        other => panic!("not an array: {other}"),
    }
}

fn init(version: u64) -> String {
    json!({"type":"init","users":[{"id":"me","userId":"ana","name":"Ana","color":"#e6194b","lastSeen":1}],
           "yourId":"me","version":version,"serverTime":1_700_000_000_000u64,
           "transport":{"playing":true,"position":2.0,"serverTime":1_700_000_000_000u64},
           "state":{"version":version,"tempo":120,"tracks":[],"markers":[]}})
    .to_string()
}

#[test]
fn init_edit_ack_and_remote_round_trip_as_json() {
    let mut s = StudioSession::new("me");
    s.on_open();
    let e = effects(&s.receive_text(&init(3), at(0)));
    assert_eq!(e[0]["event"]["type"], "ready");
    assert_eq!(e[0]["event"]["version"], 3);
    assert!(s.live());
    assert_eq!(s.playhead(1_500.0, 1_700_000_001_500.0), 3.5, "the playhead runs on from init's transport");
    let state: Value = serde_json::from_str(&s.state_json().unwrap()).unwrap();
    assert_eq!(
        (state["isPlaying"].as_bool(), state["playhead"].as_f64()),
        (Some(true), Some(2.0)),
        "as in the server's state"
    );
    let pause =
        json!({"type":"transport","playing":false,"position":7.5,"userId":"ben","serverTime":1_700_000_000_900u64});
    s.receive_text(&pause.to_string(), at(5));
    let state: Value = serde_json::from_str(&s.state_json().unwrap()).unwrap();
    assert_eq!((state["isPlaying"].as_bool(), state["playhead"].as_f64()), (Some(false), Some(7.5)));
    assert_eq!(s.playhead(9_000.0, 1_700_000_009_000.0), 7.5, "paused: the playhead stays");

    let e = effects(
        &s.edit_text(r#"{"type":"insert","target":"track","id":"t1","index":0,"value":{"name":"Drums"}}"#, at(10))
            .unwrap(),
    );
    let frame = e.iter().find_map(|e| e["send"].as_str()).expect("the edit is sent");
    let sent: Value = serde_json::from_str(frame).unwrap();
    assert_eq!(sent["type"], "operation");
    assert_eq!(sent["opId"], "me:1");
    assert_eq!(sent["baseVersion"], 3);
    assert_eq!(s.pending_edits(), 1);
    let state: Value = serde_json::from_str(&s.state_json().unwrap()).unwrap();
    assert_eq!(state["tracks"][0]["name"], "Drums", "applied optimistically");

    // Someone else's edit arrives first; then the ack, rebased by the server.
    let remote = json!({"type":"operation","version":4,"userId":"ben","opId":"ben:1",
        "operation":[{"type":"update","target":"project","path":["tempo"],"value":128}]});
    let e = effects(&s.receive_text(&remote.to_string(), at(20)));
    assert_eq!(e[0]["event"]["type"], "remote");
    assert_eq!(e[0]["event"]["ops"][0]["value"], 128);
    let ack = json!({"type":"operation","version":5,"userId":"me","opId":"me:1","operation":sent["operation"]});
    let e = effects(&s.receive_text(&ack.to_string(), at(52)));
    assert_eq!(e[0]["event"]["type"], "acked");
    assert_eq!(e[0]["event"]["latencyMs"], 42);
    assert_eq!(s.pending_edits(), 0);
    assert_eq!(s.version(), Some(5.0));
    assert_eq!(s.since(), Some(5.0));
}

#[test]
fn bad_frames_and_bad_edits_change_nothing() {
    let mut s = StudioSession::new("me");
    s.on_open();
    let e = effects(&s.receive_text("{not json", at(0)));
    assert_eq!(e[0]["event"]["type"], "protocolError");
    let e = effects(&s.receive_text(r#"{"type":"pong","serverTime":1}"#, at(0)));
    assert_eq!(e[0]["event"]["type"], "protocolError", "nothing but init first");
    assert!(s.edit_text(r#"{"type":"delete","target":"track","id":"t1"}"#, at(0)).is_err(), "no document yet");

    s.receive_text(&init(0), at(0));
    let before = s.state_json();
    let err = s.edit_text(r#"{"type":"delete","target":"track","id":"nope"}"#, at(0)).unwrap_err();
    assert!(err.contains("nope"), "{err}");
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let op = format!(r#"{{"type":"update","target":"project","path":["x"],"value":{deep}}}"#);
    assert!(s.edit_text(&op, at(0)).is_err(), "over the depth limit");
    assert_eq!(s.state_json(), before);
    assert_eq!(s.pending_edits(), 0);
    assert!(s.cursor_text(f64::NAN, 0.0, "").is_err());
    assert_eq!(
        serde_json::from_str::<Value>(&s.cursor_text(1.0, 2.0, r#"["c1"]"#).unwrap()).unwrap(),
        json!({"type":"cursor","x":1.0,"y":2.0,"selection":["c1"]})
    );
}

#[test]
fn a_rejected_edit_is_reported_and_reloads() {
    let mut s = StudioSession::new("me");
    s.on_open();
    s.receive_text(&init(0), at(0));
    s.edit_text(r#"{"type":"update","target":"project","path":["tempo"],"value":90}"#, at(1)).unwrap();
    let err = json!({"type":"error","code":"forbidden","message":"viewers cannot edit","opId":"me:1"});
    let e = effects(&s.receive_text(&err.to_string(), at(2)));
    let kinds: Vec<_> = e.iter().map(|e| e["event"]["type"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds[..2], ["serverError", "dropped"], "{e:?}");
    assert_eq!(e[1]["event"]["reason"], "forbidden");
    assert_eq!(e.last().unwrap()["reconnect"]["reload"], true);
    assert_eq!(s.since(), None, "the next connect loads the state");
}

#[test]
fn free_functions_keep_the_laws() {
    let state =
        r#"{"version":0,"playhead":0.0,"isPlaying":false,"tracks":[{"id":"t1","name":"A","clips":[]}],"markers":[]}"#;
    let out: Value =
        serde_json::from_str(&text::apply(state, r#"{"type":"delete","target":"track","id":"t1"}"#).unwrap()).unwrap();
    assert_eq!(out["state"]["tracks"], json!([]));
    let inverse = text::invert(&out["applied"].to_string()).unwrap();
    let back: Value = serde_json::from_str(&text::apply(&out["state"].to_string(), &inverse).unwrap()).unwrap();
    assert_eq!(back["state"], serde_json::from_str::<Value>(state).unwrap());

    let a = r#"[{"type":"update","target":"track","id":"t1","path":["name"],"value":"B"}]"#;
    let b = r#"[{"type":"delete","target":"track","id":"t1"}]"#;
    assert_eq!(text::transform(a, b, "later").unwrap(), "[]", "an update of a deleted track is dropped");
    assert!(text::transform(a, b, "sideways").is_err());
    assert!(text::compose(a, "{").is_err());
}

#[test]
fn undo_and_redo_are_local_edits_that_never_revert_others() {
    let mut s = StudioSession::new("me");
    s.on_open();
    s.receive_text(&init(0), at(0));
    assert!(!s.can_undo());
    s.edit_text(r#"{"type":"update","target":"project","path":["tempo"],"value":90}"#, at(0)).unwrap();
    // 1 s later: a second step (past the 500 ms capture window).
    s.edit_text(r#"{"type":"update","target":"project","path":["name"],"value":"Mine"}"#, at(1_000)).unwrap();
    assert!(s.can_undo());
    // Both are acknowledged (the second goes once the first is), then someone else renames the
    // project after me: my rename's step becomes empty.
    for (v, op) in [
        (1, r#"{"type":"update","target":"project","path":["tempo"],"value":90}"#),
        (2, r#"{"type":"update","target":"project","path":["name"],"value":"Mine"}"#),
    ] {
        let ack = json!({"type":"operation","version":v,"userId":"me","opId":format!("me:{v}"),
            "operation":[serde_json::from_str::<Value>(op).unwrap()]});
        let e = effects(&s.receive_text(&ack.to_string(), at(1_000 + v)));
        assert_eq!(e[0]["event"]["type"], "acked", "{e:?}");
    }
    let theirs = json!({"type":"operation","version":3,"userId":"ben","opId":"ben:1",
        "operation":[{"type":"update","target":"project","path":["name"],"value":"Theirs","prev":{"value":"Mine"}}]});
    s.receive_text(&theirs.to_string(), at(1_100));
    let out: Value = serde_json::from_str(&s.undo_text(false, at(1_200)).unwrap()).unwrap();
    assert_eq!((out["applied"].as_bool(), out["skipped"].as_u64()), (Some(true), Some(1)), "{out}");
    let state: Value = serde_json::from_str(&s.state_json().unwrap()).unwrap();
    assert_eq!(state["name"], "Theirs", "their later write stays");
    assert_eq!(state["tempo"], 120, "my tempo change is taken back");
    assert!(s.can_redo());
    let out: Value = serde_json::from_str(&s.undo_text(true, at(1_300)).unwrap()).unwrap();
    assert_eq!(out["applied"], true);
    let state: Value = serde_json::from_str(&s.state_json().unwrap()).unwrap();
    assert_eq!(state["tempo"], 90);
}

#[test]
fn locks_cross_as_frames_a_table_and_events() {
    let mut s = StudioSession::new("me");
    s.on_open();
    s.receive_text(&init(0), at(0));
    let frame: Value = serde_json::from_str(&s.lock_text("clip", "c1", Some(2_000.0), false).unwrap()).unwrap();
    assert_eq!(frame, json!({"type":"lock","target":"clip","id":"c1","ttl":2000.0}));
    let frame: Value = serde_json::from_str(&s.lock_text("track", "t1", None, true).unwrap()).unwrap();
    assert_eq!(frame, json!({"type":"unlock","target":"track","id":"t1"}));
    assert!(s.lock_text("project", "x", None, false).is_err());
    assert!(s.lock_text("clip", "c1", Some(-1.0), false).is_err());
    let table = json!({"type":"locks","locks":[{"target":"clip","id":"c1","userId":"ben","name":"Ben",
        "color":"#3cb44b","expiresAt":1_700_000_010_000u64}]});
    let e = effects(&s.receive_text(&table.to_string(), at(1)));
    assert_eq!(e[0]["event"]["type"], "locks");
    assert_eq!(e[0]["event"]["locks"][0]["name"], "Ben");
    let locks: Value = serde_json::from_str(&s.locks_json()).unwrap();
    assert_eq!(locks[0]["userId"], "ben");
    let refused = json!({"type":"error","code":"locked","message":"clip c1 is locked by Ben",
        "lockedBy":{"id":"ben","userId":"ben","name":"Ben","color":"#3cb44b","lastSeen":1}});
    let e = effects(&s.receive_text(&refused.to_string(), at(2)));
    let kinds: Vec<_> = e.iter().map(|e| e["event"]["type"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["serverError", "locked"]);
    assert_eq!(e[1]["event"]["lockedBy"]["name"], "Ben");
}
