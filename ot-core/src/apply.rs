//! `apply` (validate, apply atomically, annotate) and `invert`.

use serde_json::Value;

use crate::doc::{Document, Entity, EntityKind, Id, IdList, ListKey, PropMap, Props, PROJECT_STRUCTURAL_KEYS};
use crate::error::OpError;
use crate::op::{list_key, Delete, Insert, Loc, Move, Op, Prev, Target, Update};

/// Applies `ops` in order, all or nothing, and returns them annotated with what the state held
/// (see [`crate::op`]): the form the server sequences and broadcasts, and the input
/// [`invert`] and [`crate::transform()`] need.
///
/// Law: on error the document is exactly as before; on success
/// `apply(doc, invert(&annotated))` restores it exactly.
///
/// Cost: one hash lookup per entity named, plus a scan of the one list an op inserts into,
/// removes from or moves within (never the whole document).
pub fn apply(doc: &mut Document, ops: &[Op]) -> Result<Vec<Op>, OpError> {
    let mut done: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        match apply_one(doc, op) {
            Ok(annotated) => done.push(annotated),
            Err(e) => {
                for undo in invert(&done) {
                    // The inverse of ops just applied always applies; the result is ignored
                    // because there is nothing better to do than carry on rolling back.
                    let _ = apply_one(doc, &undo);
                }
                return Err(e);
            }
        }
    }
    #[cfg(debug_assertions)]
    if let Err(e) = doc.check_invariants() {
        panic!("invariant broken after apply: {e}");
    }
    Ok(done)
}

/// The ops that undo `annotated` (as returned by [`apply`] or kept exact by transform), in
/// reverse order.
///
/// Law: `apply(apply(doc, a), invert(a))` equals `doc`, and `invert(invert(a))` equals `a` up
/// to annotations.
pub fn invert(annotated: &[Op]) -> Vec<Op> {
    annotated.iter().rev().filter_map(invert_one).collect()
}

fn invert_one(op: &Op) -> Option<Op> {
    Some(match op {
        Op::Insert(o) => Op::Delete(Delete {
            kind: o.kind,
            id: o.id.clone(),
            from: Some(Loc { parent: o.parent.clone(), index: o.index }),
            value: Some(o.value.clone()),
            extra: Default::default(),
        }),
        Op::Delete(o) => {
            let from = o.from.as_ref()?;
            Op::Insert(Insert {
                kind: o.kind,
                id: o.id.clone(),
                parent: from.parent.clone(),
                index: from.index,
                value: o.value.clone()?,
                extra: Default::default(),
            })
        }
        Op::Move(o) => {
            let from = o.from.as_ref()?;
            Op::Move(Move {
                kind: o.kind,
                id: o.id.clone(),
                parent: from.parent.clone(),
                index: from.index,
                from: Some(Loc { parent: o.parent.clone(), index: o.index }),
                value: o.value.clone(),
                restore: false,
                extra: Default::default(),
            })
        }
        Op::Update(o) => {
            let prev = o.prev.as_ref()?;
            let after = if o.remove { Prev::Absent } else { Prev::Value(o.value.clone()) };
            let (value, remove) = match prev {
                Prev::Absent => (Value::Null, true),
                Prev::Value(v) => (v.clone(), false),
            };
            Op::Update(Update {
                target: o.target,
                id: o.id.clone(),
                path: o.path.clone(),
                value,
                remove,
                prev: Some(after),
                extra: Default::default(),
            })
        }
    })
}

/// Applies one op, returning it annotated.
pub(crate) fn apply_one(doc: &mut Document, op: &Op) -> Result<Op, OpError> {
    match op {
        Op::Insert(o) => apply_insert(doc, o).map(|()| {
            // Annotated in the subtree form a delete carries: no `id`, a track's `clips` present,
            // and the values as stored (without empty objects).
            let mut o = o.clone();
            o.value = doc.entity_value(&o.id).unwrap_or_default();
            Op::Insert(o)
        }),
        Op::Delete(o) => apply_delete(doc, o),
        Op::Move(o) => apply_move(doc, o),
        Op::Update(o) => apply_update(doc, o),
    }
}

fn check_parent(doc: &Document, kind: EntityKind, parent: Option<&Id>) -> Result<ListKey, OpError> {
    match (kind, parent) {
        (EntityKind::Clip, Some(p)) => match doc.get(p) {
            Some(e) if e.kind == EntityKind::Track => Ok(ListKey::Clips(p.clone())),
            _ => Err(OpError::ParentNotTrack { parent: p.to_string() }),
        },
        (EntityKind::Clip, None) => Err(OpError::ParentNotTrack { parent: String::new() }),
        (kind, Some(_)) => Err(OpError::UnexpectedParent { kind }),
        (kind, None) => Ok(list_key(kind, None)),
    }
}

fn entity_of_kind<'d>(doc: &'d Document, id: &str, expected: EntityKind) -> Result<&'d Entity, OpError> {
    let e = doc.get(id).ok_or_else(|| OpError::UnknownEntity { id: id.to_string() })?;
    if e.kind != expected {
        return Err(OpError::WrongKind { id: id.to_string(), expected, found: e.kind });
    }
    Ok(e)
}

fn apply_insert(doc: &mut Document, o: &Insert) -> Result<(), OpError> {
    let key = check_parent(doc, o.kind, o.parent.as_ref())?;
    let len = doc.list(&key).map_or(0, IdList::len);
    if o.index > len {
        return Err(OpError::IndexOutOfRange { index: o.index, len });
    }
    if doc.get(&o.id).is_some() {
        return Err(OpError::DuplicateId { id: o.id.to_string() });
    }
    let mut props = o.value.clone();
    props.remove("id");
    let mut clips: Vec<(Id, Props)> = Vec::new();
    if o.kind == EntityKind::Track {
        match props.remove("clips") {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let Value::Object(mut c) = item else {
                        return Err(OpError::InvalidValue { id: o.id.to_string(), reason: "a clip is not an object" });
                    };
                    let Some(Value::String(cid)) = c.remove("id") else {
                        return Err(OpError::InvalidValue { id: o.id.to_string(), reason: "a clip has no string id" });
                    };
                    let cid = Id::from(cid);
                    if doc.get(&cid).is_some() || cid == o.id || clips.iter().any(|(x, _)| *x == cid) {
                        return Err(OpError::DuplicateId { id: cid.to_string() });
                    }
                    clips.push((cid, prune_props(c)));
                }
            }
            Some(_) => return Err(OpError::InvalidValue { id: o.id.to_string(), reason: "`clips` is not an array" }),
        }
    }
    let mut clip_ids = IdList::new();
    for (cid, cprops) in clips {
        clip_ids.push_back(cid.clone());
        doc.insert_entity(
            cid,
            Entity {
                kind: EntityKind::Clip,
                parent: Some(o.id.clone()),
                props: PropMap::from(cprops),
                clips: IdList::new(),
            },
        );
    }
    let props = PropMap::from(prune_props(props));
    doc.insert_entity(o.id.clone(), Entity { kind: o.kind, parent: o.parent.clone(), props, clips: clip_ids });
    if let Some(list) = doc.list_mut(&key) {
        list.insert(o.index, o.id.clone());
    }
    Ok(())
}

fn apply_delete(doc: &mut Document, o: &Delete) -> Result<Op, OpError> {
    let e = entity_of_kind(doc, &o.id, o.kind)?;
    let parent = e.parent.clone();
    let clips = e.clips.clone();
    let value = doc.entity_value(&o.id);
    let key = list_key(o.kind, parent.as_ref());
    let index = remove_from_list(doc, &key, &o.id);
    for c in &clips {
        doc.remove_entity(c);
    }
    doc.remove_entity(&o.id);
    Ok(Op::Delete(Delete {
        kind: o.kind,
        id: o.id.clone(),
        from: Some(Loc { parent, index }),
        value,
        extra: o.extra.clone(),
    }))
}

fn remove_from_list(doc: &mut Document, key: &ListKey, id: &Id) -> usize {
    let Some(list) = doc.list_mut(key) else { return 0 };
    match list.index_of(id) {
        Some(i) => {
            list.remove(i);
            i
        }
        None => 0,
    }
}

fn apply_move(doc: &mut Document, o: &Move) -> Result<Op, OpError> {
    let e = entity_of_kind(doc, &o.id, o.kind)?;
    let old_parent = e.parent.clone();
    let dest = check_parent(doc, o.kind, o.parent.as_ref())?;
    let src = list_key(o.kind, old_parent.as_ref());
    let dest_len = doc.list(&dest).map_or(0, IdList::len) - usize::from(src == dest);
    if o.index > dest_len {
        return Err(OpError::IndexOutOfRange { index: o.index, len: dest_len });
    }
    let value = if o.kind == EntityKind::Clip { doc.entity_value(&o.id) } else { None };
    let from_index = remove_from_list(doc, &src, &o.id);
    if let Some(list) = doc.list_mut(&dest) {
        list.insert(o.index, o.id.clone());
    }
    if let Some(e) = doc.entity_mut(&o.id) {
        e.parent = o.parent.clone();
    }
    Ok(Op::Move(Move {
        kind: o.kind,
        id: o.id.clone(),
        parent: o.parent.clone(),
        index: o.index,
        from: Some(Loc { parent: old_parent, index: from_index }),
        value,
        restore: o.restore,
        extra: o.extra.clone(),
    }))
}

fn apply_update(doc: &mut Document, o: &Update) -> Result<Op, OpError> {
    let key = o.path.first().ok_or(OpError::EmptyPath)?;
    let props = match (o.target.kind(), &o.id) {
        (None, _) => {
            if PROJECT_STRUCTURAL_KEYS.contains(&key.as_str()) {
                return Err(OpError::StructuralPath { key: key.clone() });
            }
            doc.props_mut()
        }
        (Some(kind), Some(id)) => {
            entity_of_kind(doc, id, kind)?;
            if kind.is_structural(key) {
                return Err(OpError::StructuralPath { key: key.clone() });
            }
            match doc.entity_mut(id) {
                Some(e) => &mut e.props,
                None => return Err(OpError::UnknownEntity { id: id.to_string() }),
            }
        }
        (Some(_), None) => return Err(OpError::MissingField { op: "update", field: "id" }),
    };
    let mut out = o.clone();
    // An object property is never empty (PROTOCOL §5.3): a value is stored without empty
    // objects inside it, and writing `{}` is removing the key.
    if !out.remove {
        match prune_empty(std::mem::take(&mut out.value)) {
            Some(v) => out.value = v,
            None => out.remove = true,
        }
    }
    if !out.remove {
        // A write through an intermediate that holds a non-object is a write of the outer
        // value (the old scalar is what its inverse must put back). Missing intermediates are
        // created, and the path stays as written: the write is an inner write.
        if let Some(k) = first_non_object_intermediate(props, &out.path) {
            out.value = nest(&out.path[k + 1..], out.value);
            out.path.truncate(k + 1);
        }
    }
    // The old value at the path written, and nothing more: an update's annotation (and so its
    // broadcast and its stored record) is as large as what it replaced, not as the whole
    // top-level property. With the empty-object rule it is also exact: the inverse of a write
    // that created intermediates removes the key, and removing it prunes them again.
    let prev = match get_path(props, &out.path) {
        Some(v) => Prev::Value(v.clone()),
        None => Prev::Absent,
    };
    write_props(props, &out.path, &out.value, out.remove);
    out.prev = Some(prev);
    if o.target == Target::Project {
        out.id = None;
    }
    Ok(Op::Update(out))
}

/// The value at `path` inside `obj`, if every key along it is there.
fn get_path<'a>(obj: &'a PropMap, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(obj.get(first)?, |v, k| v.as_object()?.get(k))
}

/// The index of the first intermediate key of `path` that holds something other than an
/// object; `None` when every intermediate is an object or missing (then created).
fn first_non_object_intermediate(obj: &PropMap, path: &[String]) -> Option<usize> {
    let (_, inner) = path.split_last()?;
    let (first, rest) = inner.split_first()?;
    let mut cur = match obj.get(first) {
        None => return None,
        Some(Value::Object(m)) => m,
        Some(_) => return Some(0),
    };
    for (i, k) in rest.iter().enumerate() {
        match cur.get(k) {
            None => return None,
            Some(Value::Object(m)) => cur = m,
            Some(_) => return Some(i + 1),
        }
    }
    None
}

/// `value` without empty objects, at any depth through objects (arrays are values set whole
/// and are kept as they are); `None` when `value` itself is, or becomes, an empty object.
pub(crate) fn prune_empty(value: Value) -> Option<Value> {
    match value {
        Value::Object(m) => {
            let m: Props = m.into_iter().filter_map(|(k, v)| prune_empty(v).map(|v| (k, v))).collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other),
    }
}

/// Properties without empty objects (see [`prune_empty`]): an object property is never empty.
pub(crate) fn prune_props(props: Props) -> Props {
    props.into_iter().filter_map(|(k, v)| prune_empty(v).map(|v| (k, v))).collect()
}

/// Whether `value` holds an empty object anywhere through objects (see [`prune_empty`]).
pub(crate) fn has_empty_object(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.is_empty() || m.values().any(has_empty_object),
        _ => false,
    }
}

/// [`write_path`] on a document's properties: only the top-level value written into is copied.
fn write_props(obj: &mut PropMap, path: &[String], value: &Value, remove: bool) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        if remove {
            obj.remove(first);
        } else {
            obj.insert(first.clone(), value.clone());
        }
        return;
    }
    match obj.get_mut(first) {
        Some(Value::Object(m)) => {
            write_path(m, rest, value, remove);
            if m.is_empty() {
                obj.remove(first);
            }
        }
        _ if remove => {}
        _ => {
            let mut m = Props::new();
            write_path(&mut m, rest, value, false);
            obj.insert(first.clone(), Value::Object(m));
        }
    }
}

/// `value` wrapped in objects along `path` (`["a","b"]`, 1 → `{"a":{"b":1}}`).
fn nest(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |v, k| {
        let mut m = Props::new();
        m.insert(k.clone(), v);
        Value::Object(m)
    })
}

/// Writes `value` at `path` inside `obj`, creating (or replacing non-object) intermediates;
/// with `remove` (or an empty-object `value`), deletes the key if it is there and prunes the
/// objects that this leaves empty below `obj` (`obj` itself may end up empty: the caller
/// decides what an empty `obj` means). Never fails.
pub(crate) fn write_path(obj: &mut Props, path: &[String], value: &Value, remove: bool) {
    let Some((first, rest)) = path.split_first() else { return };
    let value = if remove { None } else { prune_empty(value.clone()) };
    let Some(value) = value else {
        remove_path(obj, first, rest);
        return;
    };
    if rest.is_empty() {
        obj.insert(first.clone(), value);
        return;
    }
    let slot = obj.entry(first.clone()).or_insert_with(|| Value::Object(Props::new()));
    if !slot.is_object() {
        *slot = Value::Object(Props::new());
    }
    if let Value::Object(next) = slot {
        write_path(next, rest, &value, false);
    }
}

/// Removes `first.rest…` from `obj`, pruning objects left empty below `obj`.
fn remove_path(obj: &mut Props, first: &str, rest: &[String]) {
    match rest.split_first() {
        None => {
            obj.remove(first);
        }
        Some((next, tail)) => {
            if let Some(Value::Object(m)) = obj.get_mut(first) {
                remove_path(m, next, tail);
                if m.is_empty() {
                    obj.remove(first);
                }
            }
        }
    }
}

/// Applies a write at `rel` (the path below the one `prev` annotates) to that old value.
pub(crate) fn write_into_prev(prev: &mut Prev, rel: &[String], value: &Value, remove: bool) {
    if rel.is_empty() {
        *prev = match (remove, prune_empty(value.clone())) {
            (false, Some(v)) => Prev::Value(v),
            _ => Prev::Absent,
        };
        return;
    }
    match prev {
        Prev::Value(Value::Object(m)) => {
            write_path(m, rel, value, remove);
            if m.is_empty() {
                // The object the annotated path held lost its last key: the path is absent.
                *prev = Prev::Absent;
            }
        }
        _ if remove => {}
        _ => {
            let mut m = Props::new();
            write_path(&mut m, rel, value, false);
            *prev = if m.is_empty() { Prev::Absent } else { Prev::Value(Value::Object(m)) };
        }
    }
}
