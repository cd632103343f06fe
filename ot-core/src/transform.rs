//! `transform` and `compose`: the conflict rules of PROTOCOL §5.3.
//!
//! Both arguments of a transform are annotated ops made on the same state (see [`crate::op`]);
//! the result is annotated exactly for the state after the other op, so it can be transformed
//! again, inverted, or broadcast.

use serde_json::Value;

use crate::apply::write_into_prev;
use crate::doc::{EntityKind, Id, Props};
use crate::op::{Delete, Insert, Loc, Move, Op, Prev, Target, Update};

/// Which of two concurrent ops the server sequences later. The later op wins ties of position,
/// move destination and same-path updates; the earlier wins an insert-id collision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The op being transformed is sequenced after the other (the server rebasing an incoming
    /// op over history; a client transforming its pending op over a server op).
    Later,
    /// The op being transformed was sequenced first (a client transforming a server op over its
    /// own pending ops).
    Earlier,
}

impl Side {
    /// The other side.
    pub fn flip(self) -> Side {
        match self {
            Side::Later => Side::Earlier,
            Side::Earlier => Side::Later,
        }
    }
}

/// Transforms `a` so that it applies after `b`, where both were made on the same state.
///
/// Law (TP1): for a state `S` on which both apply,
/// `S · b · transform(a, b, s)` equals `S · a · transform(b, a, s.flip())`.
/// It is total: every pair has an answer, and the result applies cleanly after `b`. A result
/// may hold several ops (a cancelled move becomes a move back, say) or none.
pub fn transform(a: Vec<Op>, b: &[Op], side: Side) -> Vec<Op> {
    transform_rule(a, b, Rule::from(side))
}

/// Who wins a conflict. `Later` and `Earlier` are [`Side`]'s; `Entry` and `Carry` are the pair
/// that keeps an undo entry applicable after a remote op (see [`transform_entry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Later,
    Earlier,
    /// An undo entry over a remote op: the remote op wins every conflict, as if the entry was
    /// sequenced first (and it loses an insert-id collision too), except that an entry's write of an
    /// object takes in what the remote op wrote inside it (so undoing it keeps that), or is
    /// dropped where it cannot.
    Entry,
    /// A remote op over an undo entry: the counterpart of `Entry`.
    Carry,
}

impl From<Side> for Rule {
    fn from(side: Side) -> Rule {
        match side {
            Side::Later => Rule::Later,
            Side::Earlier => Rule::Earlier,
        }
    }
}

impl Rule {
    fn flip(self) -> Rule {
        match self {
            Rule::Later => Rule::Earlier,
            Rule::Earlier => Rule::Later,
            Rule::Entry => Rule::Carry,
            Rule::Carry => Rule::Entry,
        }
    }

    fn later(self) -> bool {
        matches!(self, Rule::Later | Rule::Carry)
    }

    /// Whether an insert loses an id collision: the later-sequenced one does, and an undo
    /// entry does (it never takes out someone else's entity).
    fn loses_id_collision(self) -> bool {
        matches!(self, Rule::Later | Rule::Entry)
    }
}

/// Transforms an undo entry over a remote op made on the same state (the local document as the
/// entry applies to it), returning the entry after the remote op and the remote op after the
/// entry: `S · remote · entry'` equals `S · entry · remote'`, both annotated exactly.
///
/// The remote op wins every conflict, as if the entry had been sequenced first: a value the
/// remote op wrote at or above the entry's path, an entity it deleted or moved, drop that part
/// of the entry. One rule differs: an entry that writes an object (or removes it) that the
/// remote op wrote a key into keeps that key as the remote op left it, so undoing an outer
/// write never reverts someone else's inner write (and where the entry's value has a scalar
/// in that key's way, the entry's write is dropped instead).
pub fn transform_entry(entry: Vec<Op>, remote: &[Op]) -> (Vec<Op>, Vec<Op>) {
    let carried = transform_rule(remote.to_vec(), &entry, Rule::Carry);
    (transform_rule(entry, remote, Rule::Entry), carried)
}

fn transform_rule(a: Vec<Op>, b: &[Op], rule: Rule) -> Vec<Op> {
    transform_iter(a, b.iter(), rule)
}

/// [`transform`] of `a` over a sequence of ops given one by one: over several sequenced
/// batches in turn (the server's rebase over its history) without collecting them.
pub(crate) fn transform_seq<'a>(a: Vec<Op>, b: impl Iterator<Item = &'a Op>, side: Side) -> Vec<Op> {
    transform_iter(a, b, Rule::from(side))
}

fn transform_iter<'a>(mut a: Vec<Op>, mut b: impl Iterator<Item = &'a Op>, rule: Rule) -> Vec<Op> {
    loop {
        if a.len() == 1 {
            // One op (the common case): carried by value from step to step while it stays
            // one, so a rebase over many ops allocates nothing per step.
            let Some(mut op) = a.pop() else { return a };
            loop {
                let Some(bop) = b.next() else {
                    a.push(op);
                    return a;
                };
                if independent(&op, bop) {
                    continue;
                }
                match transform_prim(op, bop, rule) {
                    Out::One(x) => op = x,
                    Out::None => return a,
                    Out::Two(x, y) => {
                        a.push(x);
                        a.push(y);
                        break;
                    }
                }
            }
        }
        if a.is_empty() {
            return a;
        }
        match b.next() {
            Some(bop) => a = transform_over_one(a, bop, rule),
            None => return a,
        }
    }
}

/// Transforms each of `ops` (a sequence) over the single op `b`, carrying `b` along the
/// sequence: `b` is borrowed until an op of `a` actually changes it, and not carried at all
/// past the last op that needs it, so a batch rebased over a long history clones nothing in
/// the common case.
fn transform_over_one(mut a: Vec<Op>, b: &Op, rule: Rule) -> Vec<Op> {
    // The common case when rebasing: nothing in `a` touches what `b` touches.
    let Some(first) = a.iter().position(|x| !independent(x, b)) else { return a };
    // The ops before `first` pass `b` unchanged, and `b` them.
    let rest = a.split_off(first);
    let mut out = a;
    out.reserve(rest.len());
    let mut carried: Option<Vec<Op>> = None;
    let mut rest = rest.into_iter();
    while let Some(aop) = rest.next() {
        let bs: &[Op] = carried.as_deref().unwrap_or(std::slice::from_ref(b));
        if bs.iter().all(|x| independent(&aop, x)) {
            out.push(aop);
            continue;
        }
        // `b` carried past `aop` is needed only if a later op may touch it. Where `aop` names
        // none of `b`'s entities (as an id, or as the parent of the other's clip), carrying
        // changes only `b`'s indices, annotations and values, never what it touches, so an op
        // independent of `b` now stays independent of it.
        let later_touch = rest.as_slice().iter().any(|x| !bs.iter().all(|y| independent(x, y)));
        let next = (later_touch || bs.len() > 1 || related(&bs[0], &aop))
            .then(|| transform_iter(bs.to_vec(), std::iter::once(&aop), rule.flip()));
        match bs {
            [one] => match transform_prim(aop, one, rule) {
                Out::None => {}
                Out::One(x) => out.push(x),
                Out::Two(x, y) => out.extend([x, y]),
            },
            _ => out.extend(transform_iter(vec![aop], bs.iter(), rule)),
        }
        match next {
            Some(next) if next.is_empty() => {
                // `b` was cancelled by `aop`: the rest of `a` passes unchanged.
                out.extend(rest);
                break;
            }
            Some(next) => carried = Some(next),
            None => {
                out.extend(rest);
                break;
            }
        }
    }
    out
}

/// The tracks whose clip lists `op` reads or changes.
fn parents(op: &Op) -> [Option<&str>; 3] {
    lists(op).map(|l| match l {
        Some(ListRef::Clips(p)) => Some(p),
        _ => None,
    })
}

/// Whether one of `x` and `y` names an entity of the other: a shared id, or one's id as the
/// parent track of the other's clip. Only then can transforming one over the other make it
/// touch something it did not (a delete's source taken from a move of the same entity, a move
/// cancelled back out of a deleted track); otherwise it keeps what it touches and only its
/// indices, annotations and values change.
fn related(x: &Op, y: &Op) -> bool {
    if matches!(x, Op::Update(_)) || matches!(y, Op::Update(_)) {
        return false;
    }
    let (px, py) = (parents(x), parents(y));
    ids(x).any(|i| ids(y).any(|j| i == j) || py.contains(&Some(i))) || ids(y).any(|j| px.contains(&Some(j)))
}

/// A list named by reference, for comparing lists without touching reference counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListRef<'a> {
    Tracks,
    Markers,
    Clips(&'a str),
}

impl<'a> ListRef<'a> {
    /// As [`crate::op::list_key`]: a clip without a parent names the list of the track with the
    /// empty id.
    fn of(kind: EntityKind, parent: Option<&'a Id>) -> ListRef<'a> {
        match kind {
            EntityKind::Track => ListRef::Tracks,
            EntityKind::Marker => ListRef::Markers,
            EntityKind::Clip => ListRef::Clips(parent.map_or("", |p| &**p)),
        }
    }
}

/// The list an entity of `kind` goes into under `parent`, by reference.
fn list_of(kind: EntityKind, parent: &Option<Id>) -> ListRef<'_> {
    ListRef::of(kind, parent.as_ref())
}

/// The list a delete or move annotation says the entity was in, by reference.
fn source_of(kind: EntityKind, from: &Option<Loc>) -> Option<ListRef<'_>> {
    from.as_ref().map(|l| ListRef::of(kind, l.parent.as_ref()))
}

/// The lists an insert, delete or move reads or changes (`None` where unannotated), with the
/// clip list of a deleted track.
fn lists(op: &Op) -> [Option<ListRef<'_>>; 3] {
    match op {
        Op::Insert(o) => [Some(ListRef::of(o.kind, o.parent.as_ref())), None, None],
        Op::Delete(o) => {
            let own = (o.kind == EntityKind::Track).then_some(ListRef::Clips(&o.id));
            [o.from.as_ref().map(|l| ListRef::of(o.kind, l.parent.as_ref())), own, None]
        }
        Op::Move(o) => [
            o.from.as_ref().map(|l| ListRef::of(o.kind, l.parent.as_ref())),
            Some(ListRef::of(o.kind, o.parent.as_ref())),
            None,
        ],
        Op::Update(_) => [None, None, None],
    }
}

/// The entity ids a structural op names (an insert's with its clips'), without collecting them.
fn ids(op: &Op) -> impl Iterator<Item = &str> {
    let (id, clips) = match op {
        Op::Insert(o) => (Some(&*o.id), o.value.get("clips").and_then(Value::as_array)),
        Op::Delete(o) => (Some(&*o.id), None),
        Op::Move(o) => (Some(&*o.id), None),
        Op::Update(_) => (None, None),
    };
    id.into_iter().chain(clips.into_iter().flatten().filter_map(|c| c.get("id").and_then(Value::as_str)))
}

/// Whether `a` and `b` touch nothing in common, so that `transform(a, b)` is `a` and
/// `transform(b, a)` is `b` on either side. Conservative: `false` whenever unsure.
pub fn independent(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Update(x), Op::Update(y)) => x.target != y.target || x.id != y.id || x.path[0] != y.path[0],
        (Op::Update(_), Op::Insert(_)) | (Op::Insert(_), Op::Update(_)) => true,
        (Op::Update(u), Op::Move(m)) | (Op::Move(m), Op::Update(u)) => u.id.as_ref() != Some(&m.id),
        (Op::Update(u), Op::Delete(d)) | (Op::Delete(d), Op::Update(u)) => {
            u.id.as_ref() != Some(&d.id) && !(d.kind == EntityKind::Track && u.target == Target::Clip)
        }
        _ => {
            let (la, lb) = (lists(a), lists(b));
            let annotated = |l: &[Option<ListRef<'_>>; 3], op: &Op| match op {
                Op::Delete(d) => d.from.is_some() && l[0].is_some(),
                Op::Move(m) => m.from.is_some(),
                _ => true,
            };
            if !annotated(&la, a) || !annotated(&lb, b) {
                return false;
            }
            if la.iter().flatten().any(|x| lb.iter().flatten().any(|y| x == y)) {
                return false;
            }
            !ids(a).any(|x| ids(b).any(|y| x == y))
        }
    }
}

/// Whether the update `u`, made on the state before `h`, finds on the state after `h` exactly
/// what it found before, and `transform(u, h)` is `u`: `h` writes no value `u` reads or writes,
/// and the entity `u` names exists after `h` if and only if it existed before (`h` neither
/// deletes it, nor its track, nor inserts it). Then `u` can be validated, annotated and
/// applied after `h` as if it had been made there. `false` for anything but an update with a
/// path, and whenever unsure.
pub fn update_commutes(u: &Op, h: &Op) -> bool {
    let Op::Update(x) = u else { return false };
    if x.path.is_empty() || !independent(u, h) {
        return false;
    }
    match (h, &x.id) {
        // Only a track's insert carries other entities (its clips).
        (Op::Insert(i), Some(id)) => i.id != *id && (i.kind != EntityKind::Track || !ids(h).any(|c| c == &**id)),
        _ => true,
    }
}

/// What the op `h`, sequenced after the base of the insert `x`, may have changed of whether `x`
/// is valid. `None` when `h` names one of `x`'s ids (its own, or one of its clips', even among
/// the clips of a track that `h` inserts or deletes) or, for a clip, inserts or deletes its
/// track: then only `x`'s base state can tell. Otherwise `Some(adds)`, where `adds` says
/// whether `h` may have lengthened `x`'s list (an insert or a move into it), the one thing `h`
/// may then change of `x`'s validity; and `transform(x, h)` only shifts `x`'s index.
pub fn insert_after(x: &Insert, h: &Op) -> Option<bool> {
    let x_ids = brought_in(x);
    if ids(h).any(|n| x_ids.clone().any(|id| id == n)) {
        return None;
    }
    if let Op::Delete(d) = h {
        if d.kind == EntityKind::Track {
            let clips = d.value.as_ref()?.get("clips").and_then(Value::as_array);
            let mut deleted = clips.into_iter().flatten().filter_map(|c| c.get("id").and_then(Value::as_str));
            if deleted.any(|n| x_ids.clone().any(|id| id == n)) {
                return None;
            }
        }
    }
    if let (EntityKind::Clip, Some(track)) = (x.kind, &x.parent) {
        let names_track = match h {
            Op::Insert(i) => i.id == *track,
            Op::Delete(d) => d.id == *track,
            _ => false,
        };
        if names_track {
            return None;
        }
    }
    let list = ListRef::of(x.kind, x.parent.as_ref());
    Some(match h {
        Op::Insert(i) => ListRef::of(i.kind, i.parent.as_ref()) == list,
        Op::Move(m) => ListRef::of(m.kind, m.parent.as_ref()) == list,
        Op::Delete(_) | Op::Update(_) => false,
    })
}

/// Composes two sequential batches into one: `apply(apply(S, a), b)` equals
/// `apply(S, compose(a, b))`, and transforming over the composition equals transforming over
/// `a` then `b`. Runs of updates of the same path collapse into one (the first `prev`, the last
/// value), which is what keeps a dragged fader's burst of updates to a single op.
pub fn compose(a: Vec<Op>, b: Vec<Op>) -> Vec<Op> {
    let mut out = a;
    out.reserve(b.len());
    for op in b {
        if let (Some(Op::Update(last)), Op::Update(next)) = (out.last_mut(), &op) {
            if last.target == next.target && last.id == next.id && last.path == next.path {
                last.value = next.value.clone();
                last.remove = next.remove;
                continue;
            }
        }
        out.push(op);
    }
    out
}

fn same_family(a: EntityKind, b: EntityKind) -> bool {
    a == b
}

/// Collects the ids an insert creates (the entity and, for a track, its clips).
fn insert_ids(o: &Insert) -> Vec<&str> {
    brought_in(o).collect()
}

/// The ids an insert brings in: its own, and its clips' for a track, without collecting them.
fn brought_in(o: &Insert) -> impl Iterator<Item = &str> + Clone {
    let clips = o.value.get("clips").and_then(Value::as_array);
    std::iter::once(&*o.id).chain(clips.into_iter().flatten().filter_map(|c| c.get("id").and_then(Value::as_str)))
}

fn clip_position(value: &Props, id: &str) -> Option<usize> {
    match value.get("clips") {
        Some(Value::Array(clips)) => clips.iter().position(|c| c.get("id").and_then(Value::as_str) == Some(id)),
        _ => None,
    }
}

fn clips_mut(value: &mut Props) -> &mut Vec<Value> {
    let slot = value.entry("clips").or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(v) => v,
        _ => unreachable!("just made an array"),
    }
}

fn with_id(id: &Id, value: &Props) -> Value {
    let mut m = Props::new();
    m.insert("id".into(), Value::String(id.to_string()));
    for (k, v) in value {
        if k != "id" {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

fn without_id(v: &Value) -> Props {
    let mut m = v.as_object().cloned().unwrap_or_default();
    m.remove("id");
    m
}

/// The primitive rule for one op over one op, applied in full (no shortcut for independent
/// ops): what [`transform`] builds on. Same law as [`transform`].
pub fn transform_one(a: Op, b: &Op, side: Side) -> Vec<Op> {
    transform_prim(a, b, Rule::from(side)).into_vec()
}

/// What one primitive transform makes of one op: nothing, one op, or two (a cancelled move
/// becomes a move back and a delete, say); never more. Kept off the heap, so the rebase of
/// one op over many allocates nothing per step.
enum Out {
    None,
    One(Op),
    Two(Op, Op),
}

impl Out {
    fn into_vec(self) -> Vec<Op> {
        match self {
            Out::None => Vec::new(),
            Out::One(a) => vec![a],
            Out::Two(a, b) => vec![a, b],
        }
    }
}

/// Primitive transform: one op over one op.
fn transform_prim(a: Op, b: &Op, rule: Rule) -> Out {
    let later = rule.later();
    match a {
        Op::Insert(a) => t_insert(a, b, later, rule.loses_id_collision()),
        Op::Delete(a) => t_delete(a, b, rule == Rule::Entry),
        Op::Move(a) => t_move(a, b, later, rule == Rule::Carry),
        Op::Update(a) => t_update(a, b, rule),
    }
}

fn t_insert(mut a: Insert, b: &Op, later: bool, loses_collision: bool) -> Out {
    let la = list_of(a.kind, &a.parent);
    match b {
        Op::Insert(b) => {
            let a_ids = insert_ids(&a);
            if insert_ids(b).iter().any(|x| a_ids.contains(x)) {
                if loses_collision {
                    return Out::None;
                }
                // `a` was sequenced first and wins: take `b`'s entity out again, then insert.
                let del = Op::Delete(Delete {
                    kind: b.kind,
                    id: b.id.clone(),
                    from: Some(Loc { parent: b.parent.clone(), index: b.index }),
                    value: Some(b.value.clone()),
                    extra: Default::default(),
                });
                return Out::Two(del, Op::Insert(a));
            }
            if list_of(b.kind, &b.parent) == la && (b.index < a.index || (b.index == a.index && !later)) {
                a.index += 1;
            }
        }
        Op::Delete(b) => {
            if a.kind == EntityKind::Clip && a.parent.as_ref() == Some(&b.id) {
                return Out::None;
            }
            if let Some(from) = &b.from {
                if source_of(b.kind, &b.from) == Some(la) && from.index < a.index {
                    a.index -= 1;
                }
            }
        }
        Op::Move(b) => {
            if let Some(from) = &b.from {
                if source_of(b.kind, &b.from) == Some(la) && from.index < a.index {
                    a.index -= 1;
                }
            }
            if list_of(b.kind, &b.parent) == la && (b.index < a.index || (b.index == a.index && !later)) {
                a.index += 1;
            }
        }
        Op::Update(_) => {}
    }
    Out::One(Op::Insert(a))
}

/// The delete `a` transformed over `b`. Where `a` deletes a track that `b` moves a clip into,
/// the move is cancelled (the clip put back, then the track deleted), unless `b` is itself a
/// put-back move, or `takes_moved_in` (an undo entry over a remote op: undoing my insert of a
/// track deletes it with whatever clips others moved into it since, as it does with the clips
/// they inserted into it); then the clip goes with the track.
fn t_delete(mut a: Delete, b: &Op, takes_moved_in: bool) -> Out {
    // Where the entity was, by reference; its index is shifted in `at` and written back last.
    let a_list = source_of(a.kind, &a.from);
    let mut at = a.from.as_ref().map(|f| f.index);
    match b {
        Op::Insert(b) => {
            if a.kind == EntityKind::Track && b.kind == EntityKind::Clip && b.parent.as_ref() == Some(&a.id) {
                if let Some(v) = &mut a.value {
                    let clips = clips_mut(v);
                    let slot = b.index.min(clips.len());
                    clips.insert(slot, with_id(&b.id, &b.value));
                }
            }
            if let Some(at) = &mut at {
                if a_list == Some(list_of(b.kind, &b.parent)) && b.index <= *at {
                    *at += 1;
                }
            }
        }
        Op::Delete(b) => {
            if b.id == a.id {
                return Out::None;
            }
            if a.kind == EntityKind::Clip && b.kind == EntityKind::Track {
                let in_b = match &a.from {
                    Some(f) => f.parent.as_ref() == Some(&b.id),
                    None => b.value.as_ref().is_some_and(|v| clip_position(v, &a.id).is_some()),
                };
                if in_b {
                    return Out::None;
                }
            }
            if a.kind == EntityKind::Track && b.kind == EntityKind::Clip {
                if let (Some(v), Some(bf)) = (&mut a.value, &b.from) {
                    if bf.parent.as_ref() == Some(&a.id) {
                        if let Some(p) = clip_position(v, &b.id) {
                            clips_mut(v).remove(p);
                        }
                    }
                }
            }
            if let (Some(at), Some(bf)) = (&mut at, &b.from) {
                if a_list == source_of(b.kind, &b.from) && bf.index < *at {
                    *at -= 1;
                }
            }
        }
        Op::Move(b) => {
            if b.id == a.id {
                a.from = Some(Loc { parent: b.parent.clone(), index: b.index });
                return Out::One(Op::Delete(a));
            }
            if a.kind == EntityKind::Track && b.kind == EntityKind::Clip {
                let into = b.parent.as_ref() == Some(&a.id);
                let out_of = b.from.as_ref().is_some_and(|f| f.parent.as_ref() == Some(&a.id));
                if into && !out_of && (b.restore || takes_moved_in) {
                    // A clip put back into a track that is deleted too, or moved into the track
                    // an undo entry deletes: it goes with the track.
                    if let (Some(v), Some(clip)) = (&mut a.value, &b.value) {
                        let clips = clips_mut(v);
                        let slot = b.index.min(clips.len());
                        clips.insert(slot, with_id(&b.id, clip));
                    }
                    return Out::One(Op::Delete(a));
                }
                if into && !out_of {
                    // A clip moved into the track being deleted: cancel the move, then delete.
                    if let Some(bf) = &b.from {
                        let back = Op::Move(Move {
                            kind: EntityKind::Clip,
                            id: b.id.clone(),
                            parent: bf.parent.clone(),
                            index: bf.index,
                            from: Some(Loc { parent: b.parent.clone(), index: b.index }),
                            value: b.value.clone(),
                            restore: true,
                            extra: Default::default(),
                        });
                        return Out::Two(back, Op::Delete(a));
                    }
                }
                if let Some(v) = &mut a.value {
                    if out_of {
                        if let Some(p) = clip_position(v, &b.id) {
                            let clip = clips_mut(v).remove(p);
                            if into {
                                let clips = clips_mut(v);
                                let slot = b.index.min(clips.len());
                                clips.insert(slot, clip);
                            }
                        }
                    }
                }
            }
            if same_family(a.kind, b.kind) {
                if let (Some(at), Some(bf)) = (&mut at, &b.from) {
                    if a_list == source_of(b.kind, &b.from) && bf.index < *at {
                        *at -= 1;
                    }
                    if a_list == Some(list_of(b.kind, &b.parent)) && b.index <= *at {
                        *at += 1;
                    }
                }
            }
        }
        Op::Update(b) => {
            if let Some(v) = &mut a.value {
                if b.id.as_ref() == Some(&a.id) && b.target.kind() == Some(a.kind) {
                    crate::apply::write_path(v, &b.path, &b.value, b.remove);
                } else if a.kind == EntityKind::Track && b.target == Target::Clip {
                    if let Some(bid) = &b.id {
                        if let Some(p) = clip_position(v, bid) {
                            if let Some(Value::Object(clip)) = clips_mut(v).get_mut(p) {
                                crate::apply::write_path(clip, &b.path, &b.value, b.remove);
                            }
                        }
                    }
                }
            }
        }
    }
    if let (Some(f), Some(at)) = (a.from.as_mut(), at) {
        f.index = at;
    }
    Out::One(Op::Delete(a))
}

/// The position of an entity of a list, as counted in that list without the entity `moved`
/// which sat at `moved_at` (when `moved` was in the same list).
fn without(pos: usize, moved_at: Option<usize>) -> usize {
    match moved_at {
        Some(m) if m < pos => pos - 1,
        _ => pos,
    }
}

/// The move `a` transformed over `b`. Where `a` moves a clip into a track that `b` deletes, the
/// move is cancelled, unless `a` is a put-back move or `deleted_with_track` (a remote op carried
/// past an undo entry that deletes the track: the entry took the clip with it, see
/// [`t_delete`]); then the clip is deleted.
fn t_move(mut a: Move, b: &Op, later: bool, deleted_with_track: bool) -> Out {
    let Some(a_from) = a.from.as_ref() else {
        // Unannotated moves are annotated by `apply` before any transform; without a source
        // the move can only keep its destination.
        return Out::One(Op::Move(a));
    };
    // The lists by reference; the source index is shifted in `fi` and written back last.
    let la_from = ListRef::of(a.kind, a_from.parent.as_ref());
    let la_to = list_of(a.kind, &a.parent);
    let i = a_from.index;
    let mut fi = i;
    // Where `a`'s entity sat in its destination list, if it was already there.
    let same_list_at = (la_from == la_to).then_some(i);
    match b {
        Op::Insert(b) => {
            let lb = list_of(b.kind, &b.parent);
            if lb == la_from && b.index <= i {
                fi += 1;
            }
            if lb == la_to {
                let j_w = without(b.index, same_list_at);
                if j_w < a.index || (j_w == a.index && !later) {
                    a.index += 1;
                }
            }
        }
        Op::Delete(b) => {
            if b.id == a.id {
                return Out::None;
            }
            if a.kind == EntityKind::Clip && b.kind == EntityKind::Track {
                let to_deleted = a.parent.as_ref() == Some(&b.id);
                let from_deleted = a_from.parent.as_ref() == Some(&b.id);
                if to_deleted && (a.restore || deleted_with_track) && !from_deleted {
                    // A put-back clip whose destination is deleted too: it has no home left.
                    // A clip moved into the track an undo entry deletes: it is deleted with it.
                    return Out::One(Op::Delete(Delete {
                        kind: EntityKind::Clip,
                        id: a.id,
                        from: a.from,
                        value: a.value,
                        extra: Default::default(),
                    }));
                }
                if to_deleted {
                    return Out::None;
                }
                if from_deleted {
                    // Moved out of a track that was deleted: the clip survives where it went.
                    let value = b.value.as_ref().and_then(|v| match v.get("clips") {
                        Some(Value::Array(clips)) => {
                            clips.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(&*a.id)).map(without_id)
                        }
                        _ => None,
                    });
                    return match value {
                        Some(value) => Out::One(Op::Insert(Insert {
                            kind: EntityKind::Clip,
                            id: a.id,
                            parent: a.parent,
                            index: a.index,
                            value,
                            extra: a.extra,
                        })),
                        None => Out::None,
                    };
                }
            }
            if let (true, Some(bf)) = (same_family(a.kind, b.kind), &b.from) {
                let lb = ListRef::of(b.kind, bf.parent.as_ref());
                if lb == la_from && bf.index < i {
                    fi -= 1;
                }
                if lb == la_to && without(bf.index, same_list_at) < a.index {
                    a.index -= 1;
                }
            }
        }
        Op::Move(b) => {
            if b.id == a.id {
                if !later {
                    return Out::None;
                }
                a.from = Some(Loc { parent: b.parent.clone(), index: b.index });
                return Out::One(Op::Move(a));
            }
            if let (true, Some(bf)) = (same_family(a.kind, b.kind), &b.from) {
                let lb_from = ListRef::of(b.kind, bf.parent.as_ref());
                let lb_to = list_of(b.kind, &b.parent);
                // Source position of `a`'s entity after `b`.
                let mut i2 = i;
                if lb_from == la_from && bf.index < i2 {
                    i2 -= 1;
                }
                if lb_to == la_from && b.index <= i2 {
                    i2 += 1;
                }
                // Destination index: take `b`'s entity out, then put it where `b` put it.
                let mut k = a.index;
                if lb_from == la_to && without(bf.index, same_list_at) < k {
                    k -= 1;
                }
                if lb_to == la_to {
                    let m_w = without(b.index, (la_from == la_to).then_some(i2));
                    if m_w < k || (m_w == k && !later) {
                        k += 1;
                    }
                }
                fi = i2;
                a.index = k;
            }
        }
        Op::Update(b) => {
            if let (Some(v), true) = (&mut a.value, b.id.as_ref() == Some(&a.id) && b.target.kind() == Some(a.kind)) {
                crate::apply::write_path(v, &b.path, &b.value, b.remove);
            }
        }
    }
    if let Some(f) = a.from.as_mut() {
        f.index = fi;
    }
    Out::One(Op::Move(a))
}

fn t_update(mut a: Update, b: &Op, rule: Rule) -> Out {
    let later = rule.later();
    match b {
        Op::Insert(_) | Op::Move(_) => {}
        Op::Delete(b) => {
            if let (Some(kind), Some(id)) = (a.target.kind(), &a.id) {
                if kind == b.kind && *id == b.id {
                    return Out::None;
                }
                if kind == EntityKind::Clip
                    && b.kind == EntityKind::Track
                    && b.value.as_ref().is_some_and(|v| clip_position(v, id).is_some())
                {
                    return Out::None;
                }
            }
        }
        Op::Update(b) => {
            if a.target == b.target && a.id == b.id && a.path[0] == b.path[0] {
                let p = &a.path;
                let q = &b.path;
                let b_outer = q.len() <= p.len() && p[..q.len()] == q[..];
                let a_outer = p.len() <= q.len() && q[..p.len()] == p[..];
                if b_outer && a_outer {
                    // Same path: the later write wins.
                    if !later {
                        return Out::None;
                    }
                } else if b_outer {
                    if rule == Rule::Carry && takes_in(b, &p[q.len()..]) {
                        // A remote inner write over an undo entry that writes its outer object:
                        // the entry takes the key in (see `Rule::Entry`), so the write stays,
                        // and finds there what the entry wrote.
                        a.prev = Some(match (b.remove, &b.value) {
                            (false, v) => get_value(v, &p[q.len()..]).map_or(Prev::Absent, |v| Prev::Value(v.clone())),
                            (true, _) => Prev::Absent,
                        });
                        return Out::One(Op::Update(a));
                    }
                    if rule == Rule::Carry {
                        // The entry cannot take the key in (a scalar stands in the way), so it
                        // is dropped (see `Rule::Entry`): after it, this op writes back the
                        // whole object as it stands after this op.
                        if let Some(mut v) = b.prev.clone() {
                            write_into_prev(&mut v, &p[q.len()..], &a.value, a.remove);
                            a.path = q.clone();
                            (a.value, a.remove) = match v {
                                Prev::Value(v) => (v, false),
                                Prev::Absent => (Value::Null, true),
                            };
                            a.prev = Some(if b.remove { Prev::Absent } else { Prev::Value(b.value.clone()) });
                            return Out::One(Op::Update(a));
                        }
                    }
                    // The outer write wins; the inner write is dropped.
                    return Out::None;
                }
                if rule == Rule::Entry && a_outer && !b_outer && !takes_in(&a, &q[p.len()..]) {
                    // An undo entry writing an object someone else wrote a key into since, where
                    // the entry's value has a scalar in the key's way: undoing it would revert
                    // their write, so the entry no longer means anything here.
                    return Out::None;
                }
                if rule == Rule::Entry && a_outer && !b_outer {
                    // An undo entry writing the object a remote op wrote a key into: the key
                    // keeps the remote op's value.
                    let mut m = match (a.remove, std::mem::take(&mut a.value)) {
                        (false, Value::Object(m)) => m,
                        _ => Props::new(),
                    };
                    crate::apply::write_path(&mut m, &q[p.len()..], &b.value, b.remove);
                    if m.is_empty() {
                        a.remove = true;
                        a.value = Value::Null;
                    } else {
                        a.remove = false;
                        a.value = Value::Object(m);
                    }
                }
                // `a` survives: it is the later write of the same path, or the outer one. Its
                // `prev` (the old value at its path) now holds what `b` wrote inside it.
                if let Some(prev) = a.prev.as_mut().filter(|_| a_outer) {
                    write_into_prev(prev, &q[p.len()..], &b.value, b.remove);
                }
            }
        }
    }
    Out::One(Op::Update(a))
}

/// Whether the write `outer` can take in a write at `rel` below its path (see `Rule::Entry`):
/// it removes the object, or writes an object in which every intermediate key of `rel` is an
/// object or missing. Otherwise a scalar stands where the key would go, and the outer write
/// wins whole.
fn takes_in(outer: &Update, rel: &[String]) -> bool {
    if outer.remove {
        return true;
    }
    let Some((_, inner)) = rel.split_last() else { return false };
    let Value::Object(top) = &outer.value else { return false };
    let mut cur = top;
    for k in inner {
        match cur.get(k) {
            None => return true,
            Some(Value::Object(m)) => cur = m,
            Some(_) => return false,
        }
    }
    true
}

/// The value at `path` inside `v`, if every key along it is there.
fn get_value<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}
