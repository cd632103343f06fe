//! What a hostile or careless client cannot do to ot-core: oversized paths and values are
//! refused before anything is built, op ids are scoped to their account, an update's annotation
//! is as small as what it replaced, and a document version shares every property it did not
//! change.

use std::sync::Arc;

use ot_core::protocol::{decode_client, value_depth, ClientMsg, LimitError, Limits, OperationMsg};
use ot_core::sync::{ClientDoc, Outcome, Received, ServerDoc, Submit};
use ot_core::{apply, invert, Document, Op, OpError, Prev};
use serde_json::{json, Value};

fn ops(v: Value) -> Vec<Op> {
    Op::batch_from_value(v).expect("test ops decode")
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!({ "k": v }))
}

#[test]
fn paths_over_the_limit_are_refused_before_anything_is_built() {
    let limits = Limits::default();
    let path: Vec<String> = (0..33).map(|i| format!("k{i}")).collect();
    let long = ops(json!({"type":"update","target":"project","path":path,"value":1}));
    assert_eq!(limits.check_ops(&long), Err(LimitError::PathTooLong { len: 33, limit: 32 }));
    let ok: Vec<String> = (0..32).map(|i| format!("k{i}")).collect();
    let at_limit = ops(json!({"type":"update","target":"project","path":ok,"value":1}));
    assert_eq!(limits.check_ops(&at_limit), Ok(()));
    // Far past any server's ceiling, decoding alone refuses it: the 8,000-key path never
    // becomes an 8,000-deep value.
    let huge: Vec<String> = (0..8000).map(|i| format!("k{i}")).collect();
    let err = Op::batch_from_value(json!({"type":"update","target":"project","path":huge,"value":1}));
    assert!(matches!(err, Err(OpError::PathTooLong { len: 8000, .. })), "{err:?}");
}

#[test]
fn value_depth_counts_the_objects_a_path_creates() {
    let limits = Limits::default();
    // A path of 2 keys with a value of depth 31 stores depth 32 at the top-level key: taken.
    let fits = ops(json!({"type":"update","target":"project","path":["a","b"],"value":nested(31)}));
    assert_eq!(limits.check_ops(&fits), Ok(()));
    let over = ops(json!({"type":"update","target":"project","path":["a","b"],"value":nested(32)}));
    assert_eq!(limits.check_ops(&over), Err(LimitError::TooDeep { depth: 33, limit: 32 }));
    let clip = json!({"type":"insert","target":"track","id":"t","index":0,
        "value":{"clips":[{"id":"c","deep":nested(33)}]}});
    assert!(matches!(limits.check_ops(&ops(clip)), Err(LimitError::TooDeep { .. })));
    assert_eq!(value_depth(&nested(40)), 40);
    assert_eq!(value_depth(&json!(3)), 0);
    assert_eq!(value_depth(&json!([[], {}])), 2);
}

#[test]
fn frames_nested_past_the_envelope_are_not_parsed() {
    let limits = Limits::default();
    let frame =
        json!({"type":"operation","operation":{"type":"update","target":"project","path":["a"],"value":nested(200)}});
    let err = decode_client(&frame.to_string(), limits.frame_depth());
    assert!(matches!(err, Err(ot_core::protocol::DecodeError::TooDeep { .. })), "{err:?}");
}

#[test]
fn op_id_and_selection_lengths_are_bounded() {
    let limits = Limits::default();
    let long_id = ClientMsg::Operation { operation: json!([]), base_version: None, op_id: Some("x".repeat(129)) };
    assert!(matches!(limits.check_client(&long_id), Err(LimitError::OpIdTooLong { len: 129, .. })));
    let sel = ClientMsg::Cursor { x: 0.0, y: 0.0, selection: Some(vec!["c".into(); 257]) };
    assert!(matches!(limits.check_client(&sel), Err(LimitError::SelectionTooLong { len: 257, .. })));
    let fine = ClientMsg::Cursor { x: 0.0, y: 0.0, selection: Some(vec!["c".into(); 256]) };
    assert_eq!(limits.check_client(&fine), Ok(()));
}

fn submit(account: &str, conn: &str, op_id: &str, base: u64, v: Value) -> Submit {
    Submit {
        from: conn.into(),
        account: Some(Arc::from(account)),
        base: Some(base),
        op_id: Some(op_id.into()),
        ops: ops(v),
    }
}

fn marker(id: &str) -> Value {
    json!({"type":"insert","target":"marker","id":id,"index":0,"value":{"time":1.0}})
}

#[test]
fn op_ids_are_scoped_to_their_account() {
    let mut sd = ServerDoc::new(Document::new(), 0, 100, 1000);
    // Two honest clients that both use "1", and an attacker reusing the victim's next id.
    let a = sd.submit(submit("ana", "pa", "1", 0, marker("m1")), None).unwrap();
    let b = sd.submit(submit("ben", "pb", "1", 0, marker("m2")), None).unwrap();
    assert!(matches!((&a, &b), (Outcome::Sequenced(x), Outcome::Sequenced(y)) if x.version == 1 && y.version == 2));
    let attack = sd.submit(submit("eve", "pe", "pa:2", 2, json!([])), None).unwrap();
    let real = sd.submit(submit("ana", "pa", "pa:2", 2, marker("m3")), None).unwrap();
    assert!(matches!(&attack, Outcome::Sequenced(m) if m.version == 3));
    match &real {
        Outcome::Sequenced(m) => assert_eq!((m.version, m.operation.len()), (4, 1)),
        other => panic!("the victim's edit was suppressed: {other:?}"),
    }
    assert_eq!(sd.doc().markers().len(), 3);
    // A real resend by the same account is still answered with its original version.
    match sd.submit(submit("ana", "pa", "1", 0, marker("m1")), None).unwrap() {
        Outcome::Duplicate(m) => assert_eq!(m.version, 1),
        other => panic!("resend not recognised: {other:?}"),
    }
}

#[test]
fn a_client_never_takes_another_accounts_op_as_its_ack() {
    let mut c = ClientDoc::new(Document::new(), 0, "pa");
    c.set_connection("pa");
    c.local(&ops(marker("mine"))).unwrap();
    let out = c.take_outgoing().unwrap();
    // Someone else's op carrying the same op id arrives first: it is a remote op.
    let forged = OperationMsg {
        operation: ops(marker("theirs")),
        version: 1,
        user_id: "pe".into(),
        op_id: Some(out.op_id.clone()),
        account: None,
    };
    assert!(matches!(c.receive(&forged).unwrap(), Received::Remote(_)));
    assert_eq!(c.inflight_id(), Some(out.op_id.as_str()));
    let mut mine = Document::new();
    let applied = apply(&mut mine, &ops(marker("theirs"))).unwrap();
    let ack =
        OperationMsg { operation: applied, version: 2, user_id: "pa".into(), op_id: Some(out.op_id), account: None };
    assert_eq!(c.receive(&ack).unwrap(), Received::Ack);
    assert!(!c.has_pending());
    assert_eq!(c.doc().markers().len(), 2);
}

#[test]
fn an_update_annotates_only_the_path_it_wrote() {
    let mut doc = Document::new();
    let blob: serde_json::Map<String, Value> = (0..200).map(|i| (format!("k{i}"), json!("x".repeat(100)))).collect();
    apply(&mut doc, &ops(json!({"type":"update","target":"project","path":["blob"],"value":blob}))).unwrap();
    let before = doc.clone();
    let done =
        apply(&mut doc, &ops(json!({"type":"update","target":"project","path":["blob","n"],"value":7}))).unwrap();
    let Op::Update(u) = &done[0] else { panic!("an update") };
    assert_eq!(u.prev, Some(Prev::Absent));
    assert!(serde_json::to_string(&done).unwrap().len() < 200, "the annotation carries the blob");
    apply(&mut doc, &invert(&done)).unwrap();
    assert_eq!(doc, before);
    // Overwriting a key annotates its old value, and undoing it restores exactly that.
    let again =
        apply(&mut doc, &ops(json!({"type":"update","target":"project","path":["blob","k3"],"value":1}))).unwrap();
    let Op::Update(u) = &again[0] else { panic!("an update") };
    assert_eq!(u.prev, Some(Prev::Value(json!("x".repeat(100)))));
    apply(&mut doc, &invert(&again)).unwrap();
    assert_eq!(doc, before);
}

#[test]
fn a_version_shares_the_properties_it_did_not_change() {
    let mut doc = Document::new();
    let blob = json!("y".repeat(195 * 1024));
    apply(&mut doc, &ops(json!({"type":"update","target":"project","path":["blob"],"value":blob}))).unwrap();
    let old = doc.clone();
    apply(&mut doc, &ops(json!({"type":"update","target":"project","path":["tempo"],"value":128}))).unwrap();
    let (a, b) = (old.props().get("blob").unwrap(), doc.props().get("blob").unwrap());
    assert!(std::ptr::eq(a, b), "the blob was copied for a tempo change");
    assert_eq!(doc.props().get("tempo"), Some(&json!(128)));
    assert_eq!(old.props().get("tempo"), None);
}

/// A project of `tracks` tracks with `clips` clips each, at version 0.
fn project(tracks: usize, clips: usize) -> Document {
    let tracks: Vec<Value> = (0..tracks)
        .map(|t| {
            let clips: Vec<Value> = (0..clips)
                .map(
                    |c| json!({"id": format!("c{t}_{c}"), "start": c as f64, "gain": 1.0, "name": format!("Clip {c}")}),
                )
                .collect();
            json!({"id": format!("t{t}"), "clips": clips})
        })
        .collect();
    Document::from_state_value(&json!({"tracks": tracks})).unwrap().0
}

#[test]
fn the_window_charges_what_an_op_keeps_alive_and_stays_within_its_bound() {
    // One gain update and one move between tracks, each on a fresh room: the move copies three
    // entities and two lists, so it must be charged several times the update.
    let charge = |v: Value| {
        let mut sd = ServerDoc::new(project(20, 50), 0, 1000, 1000);
        sd.submit(submit("a", "a", "o", 0, v), None).unwrap();
        sd.history_bytes()
    };
    let gain = charge(json!({"type":"update","target":"clip","id":"c3_4","path":["gain"],"value":0.5}));
    let mv = charge(json!({"type":"move","target":"clip","id":"c3_4","parent":"t9","index":0}));
    assert!(mv > 2 * gain, "a move ({mv} B) is charged like an update ({gain} B)");

    // Under a bound, a window of moves keeps fewer versions than the count allows, and never
    // more than the bound.
    const BOUND: usize = 300 * 1024;
    let mut sd = ServerDoc::new(project(20, 50), 0, 1000, 1000);
    sd.set_history_bytes(BOUND);
    for i in 0..1000usize {
        let (t, c) = ((i * 7) % 20, (i * 13) % 50);
        let v = json!({"type":"move","target":"clip","id":format!("c{t}_{c}"),"parent":format!("t{}", (t + 1) % 20),"index":0});
        sd.submit(submit("a", "a", &format!("o{i}"), sd.version(), v), None).unwrap();
        assert!(sd.history_bytes() <= BOUND, "{} B kept after {i} moves", sd.history_bytes());
    }
    let kept = sd.version() - sd.window_start();
    assert!((10..500).contains(&kept), "{kept} versions kept within {BOUND} B");
}
