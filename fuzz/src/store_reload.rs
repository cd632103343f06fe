//! Body (d): deep and wide edits through the server's whole decode → limits → sequence → store
//! → reload path.
//!
//! Each step builds a client frame from bytes — update paths of up to 70 keys, values nested up
//! to 70 deep and up to 8 wide, clips and markers carrying them, sometimes damaged — and runs it
//! through what the sequencer does with a frame: [`decode_client`] at the frame depth of
//! [`Limits`], [`Limits::check_client`], [`Op::batch_from_value`], [`Limits::check_ops`], then
//! [`ServerDoc::submit`]. Whatever is sequenced is encoded as the stores encode it (the
//! `operation` JSON of each log record, the state JSON of a snapshot) and the room is rebuilt
//! from that text as a store load does (snapshot, then [`ServerDoc::replay`]). It checks:
//! nothing panics; every acknowledged op decodes again — as a store record and as a client
//! receives it; every property value the document holds nests at most `max_depth`; and the
//! reloaded room equals the live one.

use std::sync::Arc;

use ot_core::protocol::{
    decode_client, decode_server, encode, value_depth, ClientMsg, Limits, OperationMsg, ServerMsg,
};
use ot_core::sync::{Outcome, ServerDoc, Submit};
use ot_core::{Document, Op};
use serde_json::{json, Map, Value};

use crate::source::Source;

/// A value nested exactly `depth` deep (0: a scalar), up to `width` keys or items per level.
fn deep(src: &mut Source<'_>, depth: usize, width: usize) -> Value {
    if depth == 0 {
        return match src.below(3) {
            0 => json!(src.byte()),
            1 => json!("v"),
            _ => Value::Null,
        };
    }
    let n = 1 + src.below(width.max(1));
    if src.coin() {
        let mut items: Vec<Value> = (1..n).map(|_| json!(src.byte())).collect();
        items.push(deep(src, depth - 1, width));
        Value::Array(items)
    } else {
        let mut m = Map::new();
        for i in 1..n {
            m.insert(format!("w{i}"), json!(src.byte()));
        }
        m.insert("d".into(), deep(src, depth - 1, width));
        Value::Object(m)
    }
}

/// One client frame for a room holding `doc`.
fn frame(src: &mut Source<'_>, doc: &Document, n: usize) -> String {
    let depth = src.below(71);
    let width = src.below(9);
    let op = match src.below(4) {
        0 => {
            let path: Vec<String> = (0..1 + src.below(70)).map(|i| format!("p{}", i % (1 + src.below(4)))).collect();
            json!({"type":"update","target":"project","path":path,"value":deep(src, depth, width)})
        }
        1 => json!({"type":"insert","target":"track","id":format!("t{n}"),"index":0,
            "value":{"name":"T","clips":[{"id":format!("c{n}"),"v":deep(src, depth, width)}]}}),
        2 => json!({"type":"insert","target":"marker","id":format!("m{n}"),"index":0,
            "value":{"v":deep(src, depth, width)}}),
        _ => match doc.tracks().iter().next() {
            Some(t) => {
                let path: Vec<String> = (0..1 + src.below(40)).map(|i| format!("q{i}")).collect();
                json!({"type":"update","target":"track","id":&**t,"path":path,"value":deep(src, depth, width)})
            }
            None => json!([]),
        },
    };
    let mut text = json!({"type":"operation","operation":op,"opId":format!("o{n}")}).to_string();
    if src.rare(8) {
        // Damage it: cut it short, or wrap it in brackets past any limit.
        let cut = src.below(text.len() + 1);
        text.truncate(cut);
    } else if src.rare(16) {
        text = format!("{}{}{}", "[".repeat(200), text, "]".repeat(200));
    }
    text
}

/// Every property value of the document nests at most `max`.
fn assert_depths(doc: &Document, max: usize, context: &dyn Fn() -> String) {
    let check = |v: &Value| {
        let d = value_depth(v);
        assert!(d <= max, "a stored property nests {d} deep, over {max}\n{}", context());
    };
    doc.props().iter().for_each(|(_, v)| check(v));
    for t in doc.tracks().iter().chain(doc.markers().iter()) {
        let Some(e) = doc.get(t) else { continue };
        e.props.iter().for_each(|(_, v)| check(v));
        for c in &e.clips {
            if let Some(clip) = doc.get(c) {
                clip.props.iter().for_each(|(_, v)| check(v));
            }
        }
    }
}

/// See the module docs.
pub fn store_reload(data: &[u8]) {
    let mut src = Source::new(data);
    let limits = Limits::default();
    let mut room = ServerDoc::new(Document::new(), 0, 4, 1000);
    let mut snapshot: Option<(u64, String)> = None;
    let mut log: Vec<String> = Vec::new();
    let mut frames: Vec<String> = Vec::new();
    for n in 0..crate::MAX_STEPS {
        if n > 0 && src.is_empty() {
            break;
        }
        let text = frame(&mut src, room.doc(), n);
        frames.push(text.clone());
        let context = || format!("frames:\n{}", frames.join("\n"));
        let Ok(msg) = decode_client(&text, limits.frame_depth()) else { continue };
        if limits.check_client(&msg).is_err() {
            continue;
        }
        let ClientMsg::Operation { operation, base_version, op_id } = msg else { continue };
        let Ok(ops) = Op::batch_from_value(operation) else { continue };
        if limits.check_ops(&ops).is_err() {
            continue;
        }
        let submit = Submit { from: "c".into(), account: Some(Arc::from("a")), base: base_version, op_id, ops };
        let Ok(Outcome::Sequenced(msg)) = room.submit(submit, None) else { continue };
        // What a store writes, it can read back; what a client receives, it can decode.
        let record =
            serde_json::to_string(&*msg).unwrap_or_else(|e| panic!("encoding an acked op: {e}\n{}", context()));
        let back: OperationMsg = serde_json::from_str(&record)
            .unwrap_or_else(|e| panic!("an acked op does not decode from its record: {e}\n{record}\n{}", context()));
        assert_eq!(back.operation, msg.operation, "record round trip\n{}", context());
        let wire = encode(&ServerMsg::Operation((*msg).clone()));
        assert!(decode_server(&wire).is_ok(), "a client cannot decode an acked op: {wire}\n{}", context());
        assert_depths(room.doc(), limits.max_depth, &context);
        log.push(record);
        if src.rare(4) {
            let state = room.doc().to_state_value(room.version()).to_string();
            snapshot = Some((room.version(), state));
            log.clear();
        }
    }
    let context = || format!("frames:\n{}", frames.join("\n"));
    // Reload as a store does: the latest snapshot, then the log after it.
    let (doc, version) = match &snapshot {
        Some((_, text)) => {
            let value: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("a snapshot does not decode: {e}\n{}", context()));
            Document::from_state_value(&value)
                .unwrap_or_else(|e| panic!("a snapshot does not load: {e}\n{}", context()))
        }
        None => (Document::new(), 0),
    };
    let mut reloaded = ServerDoc::new(doc, version, 4, 1000);
    for record in &log {
        let msg: OperationMsg = serde_json::from_str(record).unwrap_or_else(|e| panic!("{e}\n{}", context()));
        reloaded.replay(Arc::new(msg)).unwrap_or_else(|e| panic!("replaying a stored op: {e}\n{}", context()));
    }
    assert_eq!(reloaded.version(), room.version(), "{}", context());
    assert_eq!(reloaded.doc(), room.doc(), "the reloaded room differs\n{}", context());
    let state = room.doc().to_state_value(room.version()).to_string();
    assert!(serde_json::from_str::<Value>(&state).is_ok(), "the state JSON does not decode\n{}", context());
}
