//! Byte-driven generators: a small document, and op JSON for a given document.
//!
//! Ids and indices are picked among what exists (modulo the lists' lengths), so most generated
//! ops are valid; a few choices (taken on rare byte values) name an unknown id, the wrong kind,
//! an index past the end, a structural key or a duplicate id, and with `corrupt` the JSON itself
//! is damaged (a field removed, retyped or added), so that every error path of decoding and
//! `apply` is reached too.

use ot_core::{apply, Document, Id, Op};
use serde_json::{json, Map, Value};

use crate::source::Source;

/// Property keys used for entity and project properties and update paths. Few, so that
/// concurrent updates often hit the same path or a prefix of it.
const KEYS: [&str; 6] = ["gain", "fx", "name", "start", "a", "b"];

/// Keys that updates may not start with (on some target): picked rarely to reach
/// `StructuralPath` errors.
const STRUCTURAL: [&str; 7] = ["id", "clips", "tracks", "markers", "version", "playhead", "isPlaying"];

const STRINGS: [&str; 5] = ["", "Drums", "Bass", "ü→🎵", "\"quoted\""];

/// A small arbitrary JSON value, nested at most `depth` levels.
pub fn value(src: &mut Source<'_>, depth: u8) -> Value {
    match src.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::from(i64::from(src.byte()) - 64),
        1 => Value::from(f64::from(src.byte()) / 8.0),
        2 => Value::String((*src.pick(&STRINGS)).to_owned()),
        3 => Value::Bool(src.coin()),
        4 => Value::Null,
        5 => Value::from(u64::MAX - u64::from(src.byte())),
        6 => Value::Array((0..src.below(3)).map(|_| value(src, depth - 1)).collect()),
        _ => Value::Object(object(src, depth - 1, 3)),
    }
}

/// An object of up to `max` properties with keys from the small key pool.
fn object(src: &mut Source<'_>, depth: u8, max: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for _ in 0..src.below(max + 1) {
        let k = (*src.pick(&KEYS)).to_owned();
        let v = value(src, depth);
        m.insert(k, v);
    }
    m
}

/// A document of up to 4 tracks of up to 4 clips each, up to 3 markers and a few project
/// properties. Ids are `t*`, `c*`, `m*`, unique by construction.
pub fn document(src: &mut Source<'_>) -> Document {
    let mut clip_no = 0;
    let tracks: Vec<Value> = (0..src.below(5))
        .map(|t| {
            let mut track = object(src, 1, 2);
            track.insert("id".into(), json!(format!("t{t}")));
            let clips: Vec<Value> = (0..src.below(5))
                .map(|_| {
                    let mut clip = object(src, 1, 2);
                    clip.insert("id".into(), json!(format!("c{clip_no}")));
                    clip_no += 1;
                    Value::Object(clip)
                })
                .collect();
            track.insert("clips".into(), Value::Array(clips));
            Value::Object(track)
        })
        .collect();
    let markers: Vec<Value> = (0..src.below(4))
        .map(|m| {
            let mut marker = object(src, 1, 2);
            marker.insert("id".into(), json!(format!("m{m}")));
            Value::Object(marker)
        })
        .collect();
    let mut state = object(src, 1, 2);
    state.insert("version".into(), json!(0));
    state.insert("tracks".into(), Value::Array(tracks));
    state.insert("markers".into(), Value::Array(markers));
    // The generated state is always well formed; an empty document is the normalized fallback.
    Document::from_state_value(&Value::Object(state)).map(|(d, _)| d).unwrap_or_default()
}

/// Where new ids come from: mostly fresh (`n100`, `n101`, …), rarely one of `n0`..`n2` so that
/// two inserts (in one batch, or concurrent) collide.
#[derive(Debug, Clone)]
pub struct Fresh(u32);

impl Default for Fresh {
    fn default() -> Self {
        Fresh(100)
    }
}

impl Fresh {
    /// The next id to insert.
    pub fn next(&mut self, src: &mut Source<'_>) -> String {
        if src.rare(8) {
            return format!("n{}", src.below(3));
        }
        self.0 += 1;
        format!("n{}", self.0)
    }
}

/// Every entity of `doc` by kind: tracks, clips, markers.
fn entities(doc: &Document) -> (Vec<Id>, Vec<Id>, Vec<Id>) {
    let tracks: Vec<Id> = doc.tracks().iter().cloned().collect();
    let clips = tracks.iter().filter_map(|t| doc.get(t)).flat_map(|t| t.clips.iter().cloned()).collect();
    let markers = doc.markers().iter().cloned().collect();
    (tracks, clips, markers)
}

/// An id among `ids`; rarely (or when there is none) one that does not exist or is of another
/// kind.
fn pick_id(src: &mut Source<'_>, ids: &[Id], others: &[Id]) -> String {
    if ids.is_empty() || src.rare(16) {
        if !others.is_empty() && src.coin() {
            return src.pick(others).to_string();
        }
        return "ghost".into();
    }
    src.pick(ids).to_string()
}

/// An index in `0..=len`; rarely one past the end.
fn index(src: &mut Source<'_>, len: usize) -> usize {
    if src.rare(16) {
        return len + 1 + src.below(3);
    }
    src.below(len + 1)
}

fn clip_len(doc: &Document, track: &str) -> usize {
    doc.get(track).map_or(0, |t| t.clips.len())
}

/// An update path: one to three keys, rarely starting with a structural key.
fn path(src: &mut Source<'_>) -> Vec<Value> {
    let first = if src.rare(16) { src.pick(&STRUCTURAL) } else { src.pick(&KEYS) };
    let mut p = vec![json!(first)];
    for _ in 0..src.below(3) {
        p.push(json!(src.pick(&KEYS)));
    }
    p
}

/// The JSON of one op for `doc`: mostly valid, sometimes not (see the module docs).
pub fn op_value(src: &mut Source<'_>, doc: &Document, fresh: &mut Fresh, corrupt: bool) -> Value {
    let (tracks, clips, markers) = entities(doc);
    let all: Vec<Id> = tracks.iter().chain(&clips).chain(&markers).cloned().collect();
    let mut op = match src.below(10) {
        0 => {
            let mut value = object(src, 2, 2);
            if src.coin() {
                let cs: Vec<Value> = (0..src.below(3))
                    .map(|_| {
                        let mut c = object(src, 1, 2);
                        c.insert("id".into(), json!(fresh.next(src)));
                        Value::Object(c)
                    })
                    .collect();
                value.insert("clips".into(), Value::Array(cs));
            }
            let id = fresh.next(src);
            if src.rare(16) {
                value.insert("id".into(), json!(if src.coin() { id.clone() } else { "other".into() }));
            }
            json!({"type": "insert", "target": "track", "id": id, "index": index(src, tracks.len()), "value": value})
        }
        1 | 2 => {
            let parent = pick_id(src, &tracks, &all);
            let at = index(src, clip_len(doc, &parent));
            let value = object(src, 2, 3);
            json!({"type": "insert", "target": "clip", "id": fresh.next(src), "parent": parent, "index": at, "value": value})
        }
        3 => {
            let value = object(src, 2, 2);
            json!({"type": "insert", "target": "marker", "id": fresh.next(src), "index": index(src, markers.len()), "value": value})
        }
        4 => {
            let id = pick_id(src, &all, &all);
            let target = match doc.get(&id) {
                Some(e) if !src.rare(16) => e.kind.as_str(),
                _ => *src.pick(&["track", "clip", "marker"]),
            };
            json!({"type": "delete", "target": target, "id": id})
        }
        5 => {
            let id = pick_id(src, &tracks, &all);
            let at = if src.rare(16) { tracks.len() + 1 } else { src.below(tracks.len()) };
            json!({"type": "move", "target": "track", "id": id, "index": at})
        }
        6 => {
            let id = pick_id(src, &markers, &all);
            let at = if src.rare(16) { markers.len() + 1 } else { src.below(markers.len()) };
            json!({"type": "move", "target": "marker", "id": id, "index": at})
        }
        7 => {
            let id = pick_id(src, &clips, &all);
            let parent = pick_id(src, &tracks, &all);
            let from = doc.get(&id).and_then(|e| e.parent.clone());
            let len = clip_len(doc, &parent) - usize::from(from.as_deref() == Some(parent.as_str()));
            let at = index(src, len);
            json!({"type": "move", "target": "clip", "id": id, "parent": parent, "index": at})
        }
        8 => {
            let id = pick_id(src, &all, &all);
            let target = doc.get(&id).map_or("clip", |e| e.kind.as_str());
            let mut op = json!({"type": "update", "target": target, "id": id, "path": path(src)});
            set_value(src, &mut op);
            op
        }
        _ => {
            let mut op = json!({"type": "update", "target": "project", "path": path(src)});
            set_value(src, &mut op);
            op
        }
    };
    if corrupt && src.rare(6) {
        damage(src, &mut op);
    }
    op
}

/// An update's `value`, or (one time in four) `"remove": true`; sometimes an `oldValue` too.
fn set_value(src: &mut Source<'_>, op: &mut Value) {
    let Some(m) = op.as_object_mut() else { return };
    if src.below(4) == 0 {
        m.insert("value".into(), Value::Null);
        m.insert("remove".into(), json!(true));
    } else {
        m.insert("value".into(), value(src, 2));
    }
    if src.rare(8) {
        m.insert("oldValue".into(), value(src, 1));
    }
}

/// Damages the JSON of an op: removes a field, replaces one with an arbitrary value, or adds an
/// unknown one.
fn damage(src: &mut Source<'_>, op: &mut Value) {
    let Some(m) = op.as_object_mut() else { return };
    let keys: Vec<String> = m.keys().cloned().collect();
    let key = src.pick(&keys).clone();
    match src.below(4) {
        0 => {
            m.remove(&key);
        }
        1 => {
            m.insert(key, value(src, 1));
        }
        2 => {
            m.insert(key, json!(src.pick(&["insert", "delete", "move", "update", "project", "track", "clip"])));
        }
        _ => {
            m.insert(format!("x{}", src.byte()), value(src, 1));
        }
    }
}

/// A batch of up to `max` ops that apply, in order, to `doc`: each candidate is generated for
/// the state after the ones before it and kept only if it applies (invalid candidates are
/// normalized away, never rejected). The ops are returned as decoded, not annotated.
pub fn valid_batch(src: &mut Source<'_>, doc: &Document, fresh: &mut Fresh, max: usize) -> Vec<Op> {
    let mut scratch = doc.clone();
    let mut ops = Vec::new();
    for _ in 0..1 + src.below(max) {
        let Ok(op) = Op::from_value(op_value(src, &scratch, fresh, false)) else { continue };
        if apply(&mut scratch, std::slice::from_ref(&op)).is_ok() {
            ops.push(op);
        }
    }
    ops
}
