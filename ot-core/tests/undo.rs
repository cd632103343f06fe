//! Property tests of collaborative undo and redo ([`ClientDoc::undo`], [`ClientDoc::redo`]):
//! clients of one server make random edits, undo and redo them while others edit, over random
//! deliveries, and the undo laws hold.
//!
//! Case counts are CI-sized; set `OT_PROPTEST_CASES` for longer runs. Every failure names its
//! seed; `OT_UNDO_SEED=n` replays one of `undo_never_changes_what_others_wrote`.

mod common;

use std::collections::VecDeque;

use common::{gen_batch, gen_doc};
use ot_core::protocol::OperationMsg;
use ot_core::sync::{ClientDoc, Outcome, ServerDoc, Submit, UndoConfig};
use ot_core::{Document, Op, Target};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("OT_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// One server and `n` clients with FIFO links, no disconnects.
struct Room {
    seed: u64,
    rng: StdRng,
    server: ServerDoc,
    clients: Vec<ClientDoc>,
    up: Vec<VecDeque<Submit>>,
    down: Vec<VecDeque<OperationMsg>>,
    /// Every sequenced op, in order.
    log: Vec<OperationMsg>,
}

impl Room {
    fn new(seed: u64, n: usize) -> Room {
        let mut rng = StdRng::seed_from_u64(seed);
        let doc = gen_doc(&mut rng);
        let clients = (0..n).map(|i| ClientDoc::new(doc.clone(), 0, format!("c{i}"))).collect();
        Room {
            seed,
            rng,
            server: ServerDoc::new(doc, 0, 10_000, u64::MAX),
            clients,
            up: vec![VecDeque::new(); n],
            down: vec![VecDeque::new(); n],
            log: Vec::new(),
        }
    }

    fn send(&mut self, i: usize) {
        if let Some(out) = self.clients[i].take_outgoing() {
            self.up[i].push_back(Submit {
                account: None,
                from: format!("c{i}"),
                base: Some(out.base_version),
                op_id: Some(out.op_id),
                ops: out.ops,
            });
        }
    }

    fn edit(&mut self, i: usize) {
        let ops = gen_batch(&mut self.rng, self.clients[i].doc(), 3);
        self.clients[i].local(&ops).unwrap_or_else(|e| panic!("seed {}: local edit: {e}", self.seed));
        self.send(i);
    }

    fn undo(&mut self, i: usize) -> bool {
        let out = self.clients[i].undo().unwrap_or_else(|e| panic!("seed {}: undo: {e}", self.seed));
        self.send(i);
        out.did_apply()
    }

    fn redo(&mut self, i: usize) -> bool {
        let out = self.clients[i].redo().unwrap_or_else(|e| panic!("seed {}: redo: {e}", self.seed));
        self.send(i);
        out.did_apply()
    }

    fn deliver_up(&mut self, i: usize) {
        let Some(sub) = self.up[i].pop_front() else { return };
        match self.server.submit(sub, None) {
            Ok(Outcome::Sequenced(m)) => {
                self.log.push((*m).clone());
                for d in &mut self.down {
                    d.push_back((*m).clone());
                }
            }
            other => panic!("seed {}: server answered {other:?}", self.seed),
        }
    }

    fn deliver_down(&mut self, i: usize) {
        let Some(m) = self.down[i].pop_front() else { return };
        self.clients[i].receive(&m).unwrap_or_else(|e| panic!("seed {}: receive: {e}", self.seed));
        self.send(i);
    }

    /// One random step: an edit, undo or redo by one of `actors`, or a delivery to anyone.
    fn step(&mut self, actors: &[usize]) {
        let n = self.clients.len();
        match self.rng.gen_range(0..10) {
            0..=2 => {
                let i = actors[self.rng.gen_range(0..actors.len())];
                match self.rng.gen_range(0..6) {
                    0 => {
                        self.undo(i);
                    }
                    1 => {
                        self.redo(i);
                    }
                    _ => self.edit(i),
                }
            }
            3..=6 => {
                let i = self.rng.gen_range(0..n);
                self.deliver_up(i)
            }
            _ => {
                let i = self.rng.gen_range(0..n);
                self.deliver_down(i)
            }
        }
    }

    fn drain(&mut self) {
        loop {
            let busy: Vec<usize> =
                (0..self.clients.len()).filter(|&i| !self.up[i].is_empty() || !self.down[i].is_empty()).collect();
            if busy.is_empty() {
                break;
            }
            let i = busy[self.rng.gen_range(0..busy.len())];
            if self.rng.gen_bool(0.5) {
                self.deliver_up(i);
            } else {
                self.deliver_down(i);
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            assert!(c.doc() == self.server.doc(), "seed {}: client {i} diverged", self.seed);
        }
    }
}

fn value_at<'a>(doc: &'a Document, target: Target, id: Option<&str>, path: &[String]) -> Option<Option<&'a Value>> {
    let props = match (target, id) {
        (Target::Project, _) => doc.props(),
        (_, Some(id)) => &doc.get(id)?.props,
        _ => return None,
    };
    let (first, rest) = path.split_first()?;
    Some(rest.iter().fold(props.get(first), |v, k| v.and_then(|v| v.as_object()?.get(k))))
}

/// Undo right after a local edit, with nothing in between, restores the document exactly,
/// whatever happened before (remote edits received, earlier undos and redos).
fn check_undo_restores(seed: u64) {
    let mut room = Room::new(seed, 2);
    for _ in 0..room.rng.gen_range(0..40) {
        room.step(&[0, 1]);
    }
    let before = room.clients[0].doc().clone();
    room.edit(0);
    let out = room.clients[0].undo().unwrap_or_else(|e| panic!("seed {seed}: undo: {e}"));
    assert!(out.did_apply() && out.skipped_empty == 0, "seed {seed}: the edit's step was not undone: {out:?}");
    assert!(room.clients[0].doc() == &before, "seed {seed}: undo did not restore the document");
    room.send(0);
    room.drain();
}

/// Undo n times then redo n times, with no edit in between, leaves the document unchanged
/// (remote edits may have arrived before the undos).
fn check_undo_redo_round_trip(seed: u64) {
    let mut room = Room::new(seed, 3);
    for _ in 0..room.rng.gen_range(1..60) {
        room.step(&[0, 1, 2]);
    }
    let before = room.clients[0].doc().clone();
    let n = room.rng.gen_range(1..=6);
    // Steps that turn out empty are skipped, so n undos may apply fewer; each one applied is
    // redone (the redo stack may hold older steps below them).
    let undone = (0..n).filter(|_| room.undo(0)).count();
    let redone = (0..undone).filter(|_| room.redo(0)).count();
    assert_eq!(undone, redone, "seed {seed}: every applied undo has its redo");
    assert!(
        room.clients[0].doc() == &before,
        "seed {seed}: undo×{n} then redo×{n} changed the document\nbefore={}\nafter={}",
        before.to_state_value(0),
        room.clients[0].doc().to_state_value(0)
    );
    room.drain();
}

/// Undo never changes what others wrote: every path another client wrote concurrently with or
/// after my edit keeps its value, unless my edit, sequenced after their write, had overwritten
/// it (the value there was mine), or my undo deleted the entity (undoing my insert of it).
/// Returns how many paths it checked.
fn check_undo_spares_others(seed: u64) -> usize {
    let mut room = Room::new(seed, 3);
    for _ in 0..room.rng.gen_range(0..30) {
        room.step(&[0, 1, 2]);
    }
    room.drain();
    let from = room.log.len();
    room.edit(0);
    for _ in 0..room.rng.gen_range(1..60) {
        room.step(&[1, 2]);
    }
    room.drain();
    let d1 = room.server.doc().clone();
    // My edit as sequenced: the values it wrote are mine, even where someone else wrote the
    // path concurrently (and was sequenced before it).
    let my_edit: Vec<Op> =
        room.log[from..].iter().filter(|m| m.user_id == "c0").flat_map(|m| m.operation.iter().cloned()).collect();
    let overwritten_by_me = |target: Target, id: Option<&str>, path: &[String]| {
        my_edit.iter().any(|op| match op {
            Op::Update(u) => {
                u.target == target
                    && u.id.as_deref() == id
                    && path.len() >= u.path.len()
                    && path[..u.path.len()] == u.path[..]
            }
            _ => false,
        })
    };
    let mine_at = room.log[from..].iter().find(|m| m.user_id == "c0").map_or(u64::MAX, |m| m.version);
    let theirs: Vec<(Target, Option<String>, Vec<String>)> = room.log[from..]
        .iter()
        .filter(|m| m.user_id != "c0")
        .flat_map(|m| m.operation.iter().map(move |op| (m.version, op)))
        .filter_map(|(v, op)| match op {
            Op::Update(u) if !(v < mine_at && overwritten_by_me(u.target, u.id.as_deref(), &u.path)) => {
                Some((u.target, u.id.as_deref().map(str::to_string), u.path.clone()))
            }
            _ => None,
        })
        .collect();
    room.undo(0);
    room.drain();
    let d2 = room.server.doc().clone();
    if std::env::var("OT_UNDO_SEED").is_ok() {
        for m in &room.log[from..] {
            eprintln!("v{} {}: {}", m.version, m.user_id, serde_json::to_string(&m.operation).unwrap());
        }
    }
    // Undoing my insert of an entity deletes it, with whatever others wrote inside it since
    // (and with the clips in it, when it is a track). The step undone may be an older one of
    // mine, when the newer ones turned out empty.
    let created_by_me: Vec<String> = room
        .log
        .iter()
        .filter(|m| m.user_id == "c0")
        .flat_map(|m| m.operation.iter())
        .filter_map(|op| match op {
            Op::Insert(i) => Some(i),
            _ => None,
        })
        .flat_map(|i| {
            let clips = i.value.get("clips").and_then(Value::as_array).into_iter().flatten();
            std::iter::once(i.id.to_string()).chain(clips.filter_map(|c| c.get("id")?.as_str().map(str::to_string)))
        })
        .collect();
    let deleted_by_undo = |id: Option<&str>| {
        let parent = id.and_then(|id| d1.get(id)).and_then(|e| e.parent.as_deref());
        [id, parent].into_iter().flatten().any(|x| created_by_me.iter().any(|c| c == x))
    };
    let mut checked = 0;
    for (target, id, path) in theirs {
        let id = id.as_deref();
        let Some(v1) = value_at(&d1, target, id, &path) else { continue };
        if deleted_by_undo(id) {
            continue;
        }
        let v2 = value_at(&d2, target, id, &path);
        assert_eq!(Some(v1), v2, "seed {seed}: my undo changed {target:?} {id:?} {path:?}");
        checked += 1;
    }
    checked
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn undo_right_after_an_edit_restores_the_document(seed in any::<u64>()) {
        check_undo_restores(seed);
    }

    #[test]
    fn undo_n_then_redo_n_leaves_the_document_unchanged(seed in any::<u64>()) {
        check_undo_redo_round_trip(seed);
    }

    #[test]
    fn undo_never_changes_what_others_wrote(seed in any::<u64>()) {
        check_undo_spares_others(seed);
    }
}

#[test]
fn undo_sparing_others_checks_many_paths() {
    // The property above is only worth something if it meets paths to check.
    let checked: usize = (0..200).map(check_undo_spares_others).sum();
    assert!(checked > 500, "only {checked} paths checked over 200 seeds");
}

fn doc_with(state: Value) -> Document {
    Document::from_state_value(&state).unwrap().0
}

fn ops(v: Value) -> Vec<Op> {
    Op::batch_from_value(v).unwrap()
}

fn msg(version: u64, user: &str, operation: Vec<Op>) -> OperationMsg {
    OperationMsg { operation, version, user_id: user.into(), op_id: None, account: None }
}

/// Sends and acknowledges everything `me` has pending; returns the version reached.
fn ack_all(me: &mut ClientDoc) -> u64 {
    while let Some(out) = me.take_outgoing() {
        let v = me.version() + 1;
        let m = OperationMsg {
            operation: out.ops,
            version: v,
            user_id: "me".into(),
            op_id: Some(out.op_id),
            account: None,
        };
        assert_eq!(me.receive(&m).unwrap(), ot_core::sync::Received::Ack);
    }
    me.version()
}

/// A remote op made on `me`'s current (fully acknowledged) document, sequenced next.
fn remote(me: &mut ClientDoc, op: Value) {
    let mut state = me.doc().clone();
    let applied = ot_core::apply(&mut state, &ops(op)).unwrap();
    let v = me.version() + 1;
    me.receive(&msg(v, "bob", applied)).unwrap();
}

#[test]
fn a_step_overwritten_by_a_later_write_is_skipped_and_reported() {
    use serde_json::json;
    let doc = doc_with(json!({"tempo": 120, "tracks": [], "markers": []}));
    let mut me = ClientDoc::new(doc, 0, "me");
    me.local(&ops(json!({"type":"update","target":"project","path":["name"],"value":"A"}))).unwrap();
    me.local(&ops(json!({"type":"update","target":"project","path":["tempo"],"value":128}))).unwrap();
    ack_all(&mut me);
    remote(&mut me, json!({"type":"update","target":"project","path":["tempo"],"value":90}));
    let out = me.undo().unwrap();
    assert_eq!(out.skipped_empty, 1, "the tempo step is empty: Bob wrote tempo later");
    assert_eq!(me.doc().props().get("tempo"), Some(&json!(90)), "Bob's tempo stays");
    assert!(me.doc().props().get("name").is_none(), "the name step was undone");
    assert!(!me.can_undo());
}

#[test]
fn a_step_of_an_entity_deleted_by_someone_else_is_skipped() {
    use serde_json::json;
    let doc = doc_with(json!({"tracks": [{"id":"t1","name":"Drums","clips":[]}], "markers": []}));
    let mut me = ClientDoc::new(doc, 0, "me");
    me.local(&ops(json!({"type":"update","target":"track","id":"t1","path":["name"],"value":"Beats"}))).unwrap();
    ack_all(&mut me);
    remote(&mut me, json!({"type":"delete","target":"track","id":"t1"}));
    let out = me.undo().unwrap();
    assert_eq!((out.did_apply(), out.skipped_empty), (false, 1));
    assert!(me.doc().get("t1").is_none());
}

#[test]
fn undoing_an_outer_write_keeps_a_key_someone_else_wrote_inside_it() {
    use serde_json::json;
    let doc = doc_with(json!({"tracks": [{"id":"t1","fx":{"reverb":0.5},"clips":[]}], "markers": []}));
    let mut me = ClientDoc::new(doc, 0, "me");
    me.local(&ops(json!({"type":"update","target":"track","id":"t1","path":["fx"],"value":{"reverb":0.9}}))).unwrap();
    ack_all(&mut me);
    remote(&mut me, json!({"type":"update","target":"track","id":"t1","path":["fx","delay"],"value":0.3}));
    me.undo().unwrap();
    assert_eq!(me.doc().get("t1").unwrap().props.get("fx"), Some(&json!({"reverb":0.5,"delay":0.3})));
    me.redo().unwrap();
    assert_eq!(me.doc().get("t1").unwrap().props.get("fx"), Some(&json!({"reverb":0.9,"delay":0.3})));
}

/// A document of `tracks` where I insert track `t9` (last), acknowledged; then Bob moves his
/// clip `c1` into it and deletes the track `t1` it came from.
fn my_track_with_bobs_clip_moved_in(tracks: Value) -> ClientDoc {
    use serde_json::json;
    let at = tracks.as_array().map_or(0, Vec::len);
    let mut me = ClientDoc::new(doc_with(json!({"tracks": tracks, "markers": []})), 0, "me");
    me.local(&ops(json!({"type":"insert","target":"track","id":"t9","index":at,"value":{"name":"Mine","clips":[]}})))
        .unwrap();
    ack_all(&mut me);
    remote(
        &mut me,
        json!([{"type":"move","target":"clip","id":"c1","parent":"t9","index":0},
               {"type":"delete","target":"track","id":"t1"}]),
    );
    me
}

#[test]
fn undoing_my_insert_of_a_track_spares_a_clip_moved_through_it() {
    use serde_json::json;
    // Bob moves his clip into my new track, deleting the track it came from, then out again to
    // another track. Undoing my insert deletes my track, not his clip: the clip has a home,
    // where he last put it (the step once sent it back to its old, deleted, track, and then
    // deleted it there and wherever it went next).
    let mut me = my_track_with_bobs_clip_moved_in(json!([
        {"id":"t1","clips":[{"id":"c1","start":0,"duration":4}]},
        {"id":"t2","clips":[]}
    ]));
    remote(&mut me, json!({"type":"move","target":"clip","id":"c1","parent":"t2","index":0}));
    remote(&mut me, json!({"type":"update","target":"clip","id":"c1","path":["gain"],"value":0.5}));
    assert!(me.undo().unwrap().did_apply());
    assert!(me.doc().get("t9").is_none(), "my track is gone");
    let c1 = me.doc().get("c1").expect("Bob's clip survives");
    assert_eq!(c1.parent.as_deref(), Some("t2"));
    assert_eq!(c1.props.get("gain"), Some(&json!(0.5)));

    // Left in my track, his clip goes with it, as a clip inserted there would; redo brings
    // both back.
    let mut me = my_track_with_bobs_clip_moved_in(json!([{"id":"t1","clips":[{"id":"c1","start":0,"duration":4}]}]));
    me.undo().unwrap();
    assert!(me.doc().get("t9").is_none() && me.doc().get("c1").is_none());
    me.redo().unwrap();
    assert_eq!(me.doc().get("c1").and_then(|c| c.parent.as_deref()), Some("t9"));
}

#[test]
fn a_gesture_is_one_step_by_group_and_by_capture_window() {
    use serde_json::json;
    let doc = doc_with(json!({"tracks": [{"id":"t1","volume":0.5,"clips":[]}], "markers": []}));
    let vol = |v: f64| ops(json!({"type":"update","target":"track","id":"t1","path":["volume"],"value":v}));
    // Capture window: twenty updates 16 ms apart are one step; a pause of 500 ms starts another.
    let mut me = ClientDoc::new(doc.clone(), 0, "me");
    for i in 0..20 {
        me.local_at(&vol(0.5 + i as f64 / 100.0), 1_000 + i * 16).unwrap();
    }
    me.local_at(&vol(0.1), 1_000 + 19 * 16 + 500).unwrap();
    assert_eq!(me.undo_depth(), (2, 0));
    me.undo().unwrap();
    assert_eq!(me.doc().get("t1").unwrap().props.get("volume"), Some(&json!(0.69)));
    me.undo().unwrap();
    assert!(me.doc() == &doc);
    // Explicit group, whatever the times.
    let mut me = ClientDoc::new(doc.clone(), 0, "me");
    me.set_undo_config(UndoConfig { capture_ms: 0, max_steps: 100 });
    me.begin_group();
    for i in 0..5 {
        me.local_at(&vol(i as f64), i * 10_000).unwrap();
    }
    me.end_group();
    me.local_at(&vol(9.0), 100_000).unwrap();
    assert_eq!(me.undo_depth(), (2, 0));
    me.undo().unwrap();
    me.undo().unwrap();
    assert!(me.doc() == &doc);
    // A new edit clears the redo stack; stacks are bounded.
    me.redo().unwrap();
    assert!(me.can_redo());
    me.local(&vol(0.2)).unwrap();
    assert!(!me.can_redo());
    me.set_undo_config(UndoConfig { capture_ms: 0, max_steps: 3 });
    for i in 0..10 {
        me.local(&vol(i as f64)).unwrap();
    }
    assert_eq!(me.undo_depth(), (3, 0));
}

/// `OT_UNDO_SEED=n` replays one seed of the property above, printing the ops sequenced.
#[test]
fn replay_one_seed_from_env() {
    if let Ok(s) = std::env::var("OT_UNDO_SEED") {
        check_undo_spares_others(s.parse().unwrap());
    }
}
