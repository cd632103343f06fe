//! One test per row of the PROTOCOL §5.3 table, asserting the outcome the row states. Each
//! case checks both replicas (server order and the other order) reach the same state.

use ot_core::sync::{ClientDoc, Outcome, ServerDoc, Submit};
use ot_core::{apply, invert, transform, Document, Op, Side};
use serde_json::{json, Value};

fn base() -> Document {
    let state = json!({
        "version": 0, "tempo": 120,
        "tracks": [
            {"id": "t1", "name": "Drums", "fx": {"reverb": 0.5}, "clips": [{"id": "c1", "gain": 1.0}, {"id": "c2", "gain": 1.0}]},
            {"id": "t2", "name": "Bass", "clips": [{"id": "c3", "gain": 1.0}]},
            {"id": "t3", "name": "Keys", "clips": []}
        ],
        "markers": [{"id": "m1", "time": 0}, {"id": "m2", "time": 8}]
    });
    Document::from_state_value(&state).unwrap().0
}

fn ops(v: Value) -> Vec<Op> {
    Op::batch_from_value(v).unwrap()
}

/// `first` is sequenced first, `second` after it; both were made on `base()`. Returns the
/// final state (checked equal on both replicas) and the annotated ops as the server sequenced
/// them.
fn concurrent(first: Value, second: Value) -> (Document, Vec<Op>, Vec<Op>) {
    let s = base();
    let (mut s1, mut s2) = (s.clone(), s.clone());
    let f = apply(&mut s1, &ops(first)).unwrap();
    let g = apply(&mut s2, &ops(second)).unwrap();
    let g2 = apply(&mut s1, &transform(g.clone(), &f, Side::Later)).unwrap();
    apply(&mut s2, &transform(f.clone(), &g, Side::Earlier)).unwrap();
    assert!(s1 == s2, "replicas differ:\n{}\n{}", s1.to_state_value(0), s2.to_state_value(0));
    s1.check_invariants().unwrap();
    (s1, f, g2)
}

fn ids(doc: &Document, list: &[ot_core::Id]) -> Vec<String> {
    let _ = doc;
    list.iter().map(|i| i.to_string()).collect()
}

fn clips(doc: &Document, track: &str) -> Vec<String> {
    ids(doc, &doc.get(track).unwrap().clips.iter().cloned().collect::<Vec<_>>())
}

fn tracks(doc: &Document) -> Vec<String> {
    doc.tracks().iter().map(|i| i.to_string()).collect()
}

#[test]
fn row_same_index_later_insert_goes_first() {
    let a = json!({"type":"insert","target":"marker","id":"mA","index":1,"value":{"time":1}});
    let b = json!({"type":"insert","target":"marker","id":"mB","index":1,"value":{"time":2}});
    let (d, _, _) = concurrent(b, a);
    let m: Vec<String> = d.markers().iter().map(|i| i.to_string()).collect();
    assert_eq!(m, ["m1", "mA", "mB", "m2"]);
}

#[test]
fn row_same_index_later_move_goes_first() {
    let a = json!({"type":"move","target":"clip","id":"c1","parent":"t3","index":0});
    let b = json!({"type":"move","target":"clip","id":"c3","parent":"t3","index":0});
    let (d, _, _) = concurrent(b, a);
    assert_eq!(clips(&d, "t3"), ["c1", "c3"]);
}

#[test]
fn row_same_index_own_pending_insert_keeps_its_index() {
    let s = base();
    let mut server = ServerDoc::new(s.clone(), 0, 64, 0);
    let mut client = ClientDoc::new(s, 0, "me");
    client.local(&ops(json!({"type":"insert","target":"track","id":"mine","index":0,"value":{}}))).unwrap();
    let mine = client.take_outgoing().unwrap();
    let other = Submit {
        account: None,
        from: "other".into(),
        base: Some(0),
        op_id: Some("o:1".into()),
        ops: ops(json!({"type":"insert","target":"track","id":"theirs","index":0,"value":{}})),
    };
    let Outcome::Sequenced(m1) = server.submit(other, None).unwrap() else { panic!() };
    client.receive(&m1).unwrap();
    assert_eq!(&*client.doc().tracks()[0], "mine", "own pending insert keeps index 0");
    let sub = Submit {
        account: None,
        from: "me".into(),
        base: Some(mine.base_version),
        op_id: Some(mine.op_id),
        ops: mine.ops,
    };
    let Outcome::Sequenced(m2) = server.submit(sub, None).unwrap() else { panic!() };
    client.receive(&m2).unwrap();
    assert!(client.doc() == server.doc());
    assert_eq!(tracks(server.doc())[..2], ["mine", "theirs"]);
}

#[test]
fn row_delete_vs_delete_deletes_once() {
    let del = json!({"type":"delete","target":"clip","id":"c1"});
    let (d, _, second) = concurrent(del.clone(), del);
    assert!(d.get("c1").is_none());
    assert!(second.is_empty(), "the second delete of the same entity becomes a no-op");
    let (d, _, second) = concurrent(
        json!({"type":"delete","target":"track","id":"t1"}),
        json!({"type":"delete","target":"clip","id":"c1"}),
    );
    assert!(d.get("t1").is_none() && d.get("c1").is_none());
    assert!(second.is_empty(), "a clip delete after its track's delete is a no-op");
}

#[test]
fn row_delete_vs_move_delete_follows_the_entity() {
    let mv = json!({"type":"move","target":"clip","id":"c1","parent":"t2","index":1});
    let del = json!({"type":"delete","target":"clip","id":"c1"});
    for (first, second) in [(mv.clone(), del.clone()), (del, mv)] {
        let (d, _, _) = concurrent(first, second);
        assert!(d.get("c1").is_none());
        assert_eq!(clips(&d, "t2"), ["c3"]);
        assert_eq!(clips(&d, "t1"), ["c2"]);
    }
}

#[test]
fn row_move_into_deleted_track_is_cancelled() {
    let mv = json!({"type":"move","target":"clip","id":"c1","parent":"t2","index":0});
    let del = json!({"type":"delete","target":"track","id":"t2"});
    for (first, second) in [(mv.clone(), del.clone()), (del, mv)] {
        let (d, _, _) = concurrent(first, second);
        assert!(d.get("t2").is_none() && d.get("c3").is_none());
        assert_eq!(clips(&d, "t1"), ["c1", "c2"], "the clip stays where it was before the move");
    }
}

#[test]
fn row_move_out_of_deleted_track_survives() {
    let mv = json!({"type":"move","target":"clip","id":"c1","parent":"t3","index":0});
    let del = json!({"type":"delete","target":"track","id":"t1"});
    for (first, second) in [(mv.clone(), del.clone()), (del, mv)] {
        let (d, _, _) = concurrent(first, second);
        assert!(d.get("t1").is_none() && d.get("c2").is_none(), "the track goes with its other clips");
        assert_eq!(clips(&d, "t3"), ["c1"], "the clip survives where it was moved");
        assert_eq!(d.get("c1").unwrap().props.get("gain"), Some(&json!(1.0)));
    }
}

#[test]
fn row_insert_into_deleted_track_goes_with_it_and_undo_restores_it() {
    let ins = json!({"type":"insert","target":"clip","id":"cN","parent":"t2","index":1,"value":{"gain":0.5}});
    let del = json!({"type":"delete","target":"track","id":"t2"});
    // Delete first, insert second: the insert is dropped.
    let (d, _, _) = concurrent(del.clone(), ins.clone());
    assert!(d.get("t2").is_none() && d.get("cN").is_none());
    // Insert first, delete second: the delete as sequenced carries the new clip, so its
    // inverse restores the track with that clip.
    let (mut d, _, seq_del) = concurrent(ins, del);
    assert!(d.get("t2").is_none() && d.get("cN").is_none());
    apply(&mut d, &invert(&seq_del)).unwrap();
    assert_eq!(clips(&d, "t2"), ["c3", "cN"]);
    assert_eq!(d.get("cN").unwrap().props.get("gain"), Some(&json!(0.5)));
}

#[test]
fn row_update_of_deleted_entity_is_dropped_and_undo_restores_latest() {
    let upd = json!({"type":"update","target":"clip","id":"c1","path":["gain"],"value":0.25});
    for del in [json!({"type":"delete","target":"clip","id":"c1"}), json!({"type":"delete","target":"track","id":"t1"})]
    {
        let (d, _, second) = concurrent(del.clone(), upd.clone());
        assert!(d.get("c1").is_none());
        assert!(second.is_empty(), "the update is dropped");
        let (mut d, _, seq_del) = concurrent(upd.clone(), del);
        assert!(d.get("c1").is_none());
        apply(&mut d, &invert(&seq_del)).unwrap();
        assert_eq!(d.get("c1").unwrap().props.get("gain"), Some(&json!(0.25)), "undo restores the latest value");
    }
}

#[test]
fn row_move_vs_move_later_destination_wins() {
    let a = json!({"type":"move","target":"clip","id":"c1","parent":"t2","index":0});
    let b = json!({"type":"move","target":"clip","id":"c1","parent":"t3","index":0});
    let (d, _, _) = concurrent(b.clone(), a.clone());
    assert_eq!(clips(&d, "t2"), ["c1", "c3"]);
    assert!(clips(&d, "t3").is_empty());
    let (d, _, _) = concurrent(a, b);
    assert_eq!(clips(&d, "t3"), ["c1"]);
}

#[test]
fn row_update_vs_update_same_path_later_wins() {
    let a = json!({"type":"update","target":"project","path":["tempo"],"value":128});
    let b = json!({"type":"update","target":"project","path":["tempo"],"value":90});
    let (d, _, _) = concurrent(b.clone(), a.clone());
    assert_eq!(d.props().get("tempo"), Some(&json!(128)));
    let (d, _, _) = concurrent(a, b);
    assert_eq!(d.props().get("tempo"), Some(&json!(90)));
}

#[test]
fn row_update_prefix_outer_write_wins_either_order() {
    let outer = json!({"type":"update","target":"track","id":"t1","path":["fx"],"value":{"reverb":0.1}});
    let inner = json!({"type":"update","target":"track","id":"t1","path":["fx","delay"],"value":0.9});
    for (first, second) in [(outer.clone(), inner.clone()), (inner, outer)] {
        let (d, _, _) = concurrent(first, second);
        assert_eq!(d.get("t1").unwrap().props.get("fx"), Some(&json!({"reverb":0.1})));
    }
}

#[test]
fn row_update_vs_move_both_apply() {
    let upd = json!({"type":"update","target":"clip","id":"c1","path":["gain"],"value":0.3});
    let mv = json!({"type":"move","target":"clip","id":"c1","parent":"t2","index":1});
    for (first, second) in [(upd.clone(), mv.clone()), (mv, upd)] {
        let (d, _, _) = concurrent(first, second);
        assert_eq!(clips(&d, "t2"), ["c3", "c1"]);
        assert_eq!(d.get("c1").unwrap().props.get("gain"), Some(&json!(0.3)));
    }
}

#[test]
fn row_insert_vs_insert_same_id_first_wins() {
    let a = json!({"type":"insert","target":"marker","id":"mX","index":0,"value":{"label":"A"}});
    let b = json!({"type":"insert","target":"marker","id":"mX","index":2,"value":{"label":"B"}});
    let (d, _, second) = concurrent(b, a);
    assert!(second.is_empty());
    let m: Vec<String> = d.markers().iter().map(|i| i.to_string()).collect();
    assert_eq!(m, ["m1", "m2", "mX"]);
    assert_eq!(d.get("mX").unwrap().props.get("label"), Some(&json!("B")));
}

#[test]
fn row_update_prefix_outer_wins_when_outer_object_was_missing_either_order() {
    // `t2` has no `fx`: writing `fx.delay` into it is still an inner write, and loses to a
    // concurrent write of the whole `fx`, whichever is sequenced first.
    let inner = json!({"type":"update","target":"track","id":"t2","path":["fx","delay"],"value":0.9});
    let outer = json!({"type":"update","target":"track","id":"t2","path":["fx"],"value":{"reverb":0.1}});
    for (first, second) in [(outer.clone(), inner.clone()), (inner.clone(), outer.clone())] {
        let (d, _, _) = concurrent(first, second);
        assert_eq!(d.get("t2").unwrap().props.get("fx"), Some(&json!({"reverb":0.1})));
    }
    // The inner write keeps its path: it is not turned into a write of `fx`.
    let (_, _, seq_inner) = concurrent(json!({"type":"update","target":"project","path":["tempo"],"value":1}), inner);
    assert_eq!(seq_inner[0].to_value()["path"], json!(["fx", "delay"]));
}

#[test]
fn row_update_different_keys_into_missing_object_both_survive_either_order() {
    let a = json!({"type":"update","target":"track","id":"t2","path":["fx","delay"],"value":0.9});
    let b = json!({"type":"update","target":"track","id":"t2","path":["fx","reverb"],"value":0.1});
    for (first, second) in [(a.clone(), b.clone()), (b, a)] {
        let (mut d, f, g) = concurrent(first, second);
        assert_eq!(d.get("t2").unwrap().props.get("fx"), Some(&json!({"delay":0.9,"reverb":0.1})));
        // Undoing either write takes out its own key and no more.
        let mut only_f = d.clone();
        apply(&mut only_f, &invert(&g)).unwrap();
        assert_eq!(only_f.get("t2").unwrap().props.get("fx").unwrap().as_object().unwrap().len(), 1);
        apply(&mut only_f, &invert(&f)).unwrap();
        assert!(only_f.get("t2").unwrap().props.get("fx").is_none(), "the object created goes with its last key");
        apply(&mut d, &invert(&g)).unwrap();
        assert!(d.get("t2").unwrap().props.get("fx").is_some());
    }
}

#[test]
fn row_object_property_removing_last_key_removes_it_either_order() {
    // `t1.fx` is `{"reverb":0.5}`: removing `fx.reverb` removes `fx`; a concurrent write of
    // `fx.delay` then creates it again with only its own key.
    let rm = json!({"type":"update","target":"track","id":"t1","path":["fx","reverb"],"value":null,"remove":true});
    let add = json!({"type":"update","target":"track","id":"t1","path":["fx","delay"],"value":0.2});
    let (d, _, _) = concurrent(rm.clone(), json!({"type":"update","target":"project","path":["tempo"],"value":1}));
    assert!(d.get("t1").unwrap().props.get("fx").is_none(), "no empty `fx` is left");
    for (first, second) in [(rm.clone(), add.clone()), (add, rm)] {
        let (d, _, _) = concurrent(first, second);
        assert_eq!(d.get("t1").unwrap().props.get("fx"), Some(&json!({"delay":0.2})));
    }
}

#[test]
fn row_object_property_writing_empty_object_removes_it_either_order() {
    let empty = json!({"type":"update","target":"track","id":"t1","path":["fx"],"value":{}});
    let nested_empty = json!({"type":"update","target":"track","id":"t1","path":["fx"],"value":{"a":{}}});
    let inner = json!({"type":"update","target":"track","id":"t1","path":["fx","delay"],"value":0.2});
    for w in [empty, nested_empty] {
        // Alone, the write removes `fx`, and its inverse puts the old value back.
        let mut d = base();
        let done = apply(&mut d, &ops(w.clone())).unwrap();
        assert!(d.get("t1").unwrap().props.get("fx").is_none());
        apply(&mut d, &invert(&done)).unwrap();
        assert!(d == base());
        // Against a concurrent inner write it is the outer write, and wins in either order.
        for (first, second) in [(w.clone(), inner.clone()), (inner.clone(), w.clone())] {
            let (d, _, _) = concurrent(first, second);
            assert!(d.get("t1").unwrap().props.get("fx").is_none());
        }
    }
}

#[test]
fn a_write_through_a_scalar_is_a_write_of_the_outer_value() {
    // `t1.name` is a string: writing `name.x` replaces it with an object, as a write of `name`,
    // so the inverse puts the string back.
    let w = json!({"type":"update","target":"track","id":"t1","path":["name","x"],"value":1});
    let mut d = base();
    let done = apply(&mut d, &ops(w)).unwrap();
    assert_eq!(done[0].to_value()["path"], json!(["name"]));
    assert_eq!(d.get("t1").unwrap().props.get("name"), Some(&json!({"x":1})));
    apply(&mut d, &invert(&done)).unwrap();
    assert!(d == base());
}
