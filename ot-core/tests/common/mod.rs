//! Generators shared by the property tests and the simulation: random valid documents, and
//! random ops valid on a given document (the document first, then ops for it).

#![allow(dead_code)]

use ot_core::{apply, Document, Op};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

/// A small id space so concurrent edits collide often.
fn fresh_id(rng: &mut StdRng, doc: &Document, prefix: &str) -> String {
    for _ in 0..50 {
        let id = format!("{prefix}{}", rng.gen_range(0..12));
        if doc.get(&id).is_none() {
            return id;
        }
    }
    format!("{prefix}{}", rng.gen::<u32>())
}

fn scalar(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..5) {
        0 => json!(rng.gen_range(0..100)),
        1 => json!(rng.gen_range(0.0..1.0)),
        2 => json!(["a", "b", "c", "d"][rng.gen_range(0..4)]),
        3 => json!({"wet": rng.gen_range(0..10), "dry": rng.gen_range(0..10)}),
        _ => json!(rng.gen_bool(0.5)),
    }
}

const PATHS: [&[&str]; 6] =
    [&["gain"], &["name"], &["fx"], &["fx", "reverb"], &["fx", "reverb", "wet"], &["fx", "delay"]];
const PROJECT_PATHS: [&[&str]; 5] = [&["tempo"], &["name"], &["meta"], &["meta", "key"], &["meta", "sig", "num"]];

/// A random valid document with up to a handful of tracks, clips and markers.
pub fn gen_doc(rng: &mut StdRng) -> Document {
    let mut doc = Document::new();
    let n = rng.gen_range(0..8);
    for _ in 0..n {
        let op = gen_insert(rng, &doc);
        if let Some(op) = op {
            apply(&mut doc, &[op]).expect("generated insert applies");
        }
    }
    if rng.gen_bool(0.5) {
        let op = Op::from_value(json!({"type":"update","target":"project","path":["tempo"],"value":120})).unwrap();
        apply(&mut doc, &[op]).unwrap();
    }
    doc
}

fn gen_insert(rng: &mut StdRng, doc: &Document) -> Option<Op> {
    let v = match rng.gen_range(0..4) {
        0 => {
            let id = fresh_id(rng, doc, "t");
            let mut clips = vec![];
            if rng.gen_bool(0.4) {
                let cid = fresh_id(rng, doc, "c");
                if cid != id {
                    clips.push(json!({"id": cid, "start": rng.gen_range(0..16)}));
                }
            }
            json!({"type":"insert","target":"track","id":id,"index":rng.gen_range(0..=doc.tracks().len()),
                   "value":{"name":"T","volume":0.8,"clips":clips}})
        }
        1 => {
            let id = fresh_id(rng, doc, "m");
            json!({"type":"insert","target":"marker","id":id,"index":rng.gen_range(0..=doc.markers().len()),
                   "value":{"time":rng.gen_range(0..64),"label":"M"}})
        }
        _ => {
            if doc.tracks().is_empty() {
                return None;
            }
            let t = doc.tracks()[rng.gen_range(0..doc.tracks().len())].clone();
            let len = doc.get(&t)?.clips.len();
            let id = fresh_id(rng, doc, "c");
            json!({"type":"insert","target":"clip","id":id,"parent":&*t,"index":rng.gen_range(0..=len),
                   "value":{"start":rng.gen_range(0..16),"duration":4,"gain":1.0}})
        }
    };
    Some(Op::from_value(v).expect("generated op decodes"))
}

fn all_ids(doc: &Document) -> Vec<(String, &'static str)> {
    let mut out = vec![];
    for t in doc.tracks() {
        out.push((t.to_string(), "track"));
        for c in &doc.get(t).unwrap().clips {
            out.push((c.to_string(), "clip"));
        }
    }
    for m in doc.markers() {
        out.push((m.to_string(), "marker"));
    }
    out
}

/// One random op valid on `doc`.
pub fn gen_op(rng: &mut StdRng, doc: &Document) -> Op {
    loop {
        if let Some(op) = try_gen_op(rng, doc) {
            return op;
        }
    }
}

fn try_gen_op(rng: &mut StdRng, doc: &Document) -> Option<Op> {
    let ids = all_ids(doc);
    let pick = |rng: &mut StdRng| -> Option<(String, &'static str)> {
        (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())].clone())
    };
    let v = match rng.gen_range(0..10) {
        0 | 1 => return gen_insert(rng, doc),
        2 => {
            let (id, kind) = pick(rng)?;
            json!({"type":"delete","target":kind,"id":id})
        }
        3..=5 => {
            let (id, kind) = pick(rng)?;
            match kind {
                "track" => json!({"type":"move","target":"track","id":id,"index":rng.gen_range(0..doc.tracks().len())}),
                "marker" => {
                    json!({"type":"move","target":"marker","id":id,"index":rng.gen_range(0..doc.markers().len())})
                }
                _ => {
                    let t = doc.tracks()[rng.gen_range(0..doc.tracks().len())].clone();
                    let mut len = doc.get(&t).unwrap().clips.len();
                    if doc.get(&id).unwrap().parent.as_deref() == Some(&*t) {
                        len -= 1;
                    }
                    json!({"type":"move","target":"clip","id":id,"parent":&*t,"index":rng.gen_range(0..=len)})
                }
            }
        }
        6..=8 => {
            let (id, kind) = pick(rng)?;
            let path = PATHS[rng.gen_range(0..PATHS.len())];
            if rng.gen_bool(0.15) {
                json!({"type":"update","target":kind,"id":id,"path":path,"value":null,"remove":true})
            } else {
                json!({"type":"update","target":kind,"id":id,"path":path,"value":scalar(rng)})
            }
        }
        _ => {
            let path = PROJECT_PATHS[rng.gen_range(0..PROJECT_PATHS.len())];
            if rng.gen_bool(0.15) {
                json!({"type":"update","target":"project","path":path,"value":null,"remove":true})
            } else {
                json!({"type":"update","target":"project","path":path,"value":scalar(rng)})
            }
        }
    };
    Some(Op::from_value(v).expect("generated op decodes"))
}

/// A batch of 1..=max ops, each valid after the ones before it.
pub fn gen_batch(rng: &mut StdRng, doc: &Document, max: usize) -> Vec<Op> {
    let mut scratch = doc.clone();
    let n = rng.gen_range(1..=max);
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = gen_op(rng, &scratch);
        apply(&mut scratch, std::slice::from_ref(&op)).expect("generated op applies");
        ops.push(op);
    }
    ops
}

/// One insert, mostly near the edge of valid on `doc`: an id from the small pool that may be
/// taken (or have been taken before), an index up to one past the end of its list, a clip's track
/// from the pool whether or not it is a track, now and then a track whose clips collide.
pub fn gen_edge_insert(rng: &mut StdRng, doc: &Document) -> Op {
    let mut v = gen_insert(rng, doc).map_or_else(
        || json!({"type":"insert","target":"marker","id":"m0","index":0,"value":{"time":1}}),
        |op| serde_json::to_value(&op).expect("an op serializes"),
    );
    let kind = v["target"].as_str().unwrap_or("marker").to_string();
    let prefix = &kind[..1];
    if rng.gen_bool(0.3) {
        v["id"] = json!(format!("{prefix}{}", rng.gen_range(0..12)));
    }
    if kind == "clip" && rng.gen_bool(0.3) {
        v["parent"] = json!(format!("t{}", rng.gen_range(0..12)));
    }
    if rng.gen_bool(0.4) {
        let len = match kind.as_str() {
            "track" => doc.tracks().len(),
            "marker" => doc.markers().len(),
            _ => v["parent"].as_str().and_then(|t| doc.get(t)).map_or(0, |t| t.clips.len()),
        };
        v["index"] = json!(len + rng.gen_range(0..2));
    }
    if kind == "track" && rng.gen_bool(0.2) {
        v["value"]["clips"] =
            json!([{"id": format!("c{}", rng.gen_range(0..12))}, {"id": format!("c{}", rng.gen_range(0..12))}]);
    }
    Op::from_value(v).expect("generated op decodes")
}

/// Arbitrary, often nonsensical ops: unknown ids, wrong kinds, indices out of range.
pub fn gen_junk_op(rng: &mut StdRng) -> Value {
    let kinds = ["track", "clip", "marker", "project", "bogus"];
    let types = ["insert", "delete", "move", "update", "nope"];
    let ids = ["t0", "t1", "c0", "c1", "m0", "x", ""];
    let mut m = serde_json::Map::new();
    m.insert("type".into(), json!(types[rng.gen_range(0..types.len())]));
    m.insert("target".into(), json!(kinds[rng.gen_range(0..kinds.len())]));
    if rng.gen_bool(0.8) {
        m.insert("id".into(), json!(ids[rng.gen_range(0..ids.len())]));
    }
    if rng.gen_bool(0.5) {
        m.insert("parent".into(), json!(ids[rng.gen_range(0..ids.len())]));
    }
    if rng.gen_bool(0.7) {
        m.insert("index".into(), json!(rng.gen_range(0..6)));
    }
    if rng.gen_bool(0.6) {
        let v = match rng.gen_range(0..4) {
            0 => json!({"clips":[{"id":"c0"},{"id":"c0"}]}),
            1 => json!({"clips":"no"}),
            2 => json!(5),
            _ => json!({"name":"x"}),
        };
        m.insert("value".into(), v);
    }
    if rng.gen_bool(0.5) {
        let p = match rng.gen_range(0..5) {
            0 => json!([]),
            1 => json!(["id"]),
            2 => json!(["clips"]),
            3 => json!(["tracks"]),
            _ => json!(["gain", "x"]),
        };
        m.insert("path".into(), p);
    }
    Value::Object(m)
}
