//! The four operations of PROTOCOL §5.2 and their exact wire form.
//!
//! An op as a client sends it names what to do; an op as [`crate::apply()`] returns it is
//! *annotated* with what the state held: a move's and a delete's `from`, a delete's `value`
//! (the whole subtree it removed), an update's `prev` (the old value at the path it wrote). Transform needs these annotations and keeps them exact; the server
//! broadcasts them, and clients keep them as they are. Unknown extra fields are kept.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::doc::{EntityKind, Id, ListKey, Props};
use crate::error::OpError;

/// What an op acts on: an entity kind, or the project's own properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A track.
    Track,
    /// A clip.
    Clip,
    /// A marker.
    Marker,
    /// The project properties (updates only).
    Project,
}

impl Target {
    /// The entity kind, or `None` for the project.
    pub fn kind(self) -> Option<EntityKind> {
        match self {
            Target::Track => Some(EntityKind::Track),
            Target::Clip => Some(EntityKind::Clip),
            Target::Marker => Some(EntityKind::Marker),
            Target::Project => None,
        }
    }

    fn of(kind: EntityKind) -> Target {
        match kind {
            EntityKind::Track => Target::Track,
            EntityKind::Clip => Target::Clip,
            EntityKind::Marker => Target::Marker,
        }
    }
}

/// A position in a list: the parent track (clips only) and the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loc {
    /// The track a clip was in; absent for tracks and markers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// The index in that list.
    pub index: usize,
}

/// The value at an update's path before it: absent, or a JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Prev {
    /// The key did not exist.
    Absent,
    /// The key held this value.
    Value(Value),
}

/// Insert a new entity (a track may come with clips) at `index` of its list.
#[derive(Clone, Debug, PartialEq)]
pub struct Insert {
    /// Kind of the new entity.
    pub kind: EntityKind,
    /// Its id, unique in the project.
    pub id: Id,
    /// The track a clip goes into; `None` for tracks and markers.
    pub parent: Option<Id>,
    /// Position in the destination list, 0 ≤ index ≤ len.
    pub index: usize,
    /// The entity without its `id` (a track's `clips` as full clip objects).
    pub value: Props,
    /// Unknown fields, kept as they came.
    pub extra: Map<String, Value>,
}

/// Delete an entity (a track with all its clips).
#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    /// Kind of the deleted entity.
    pub kind: EntityKind,
    /// Its id.
    pub id: Id,
    /// Annotation: where it was.
    pub from: Option<Loc>,
    /// Annotation: the whole subtree it removed, in insert-value form.
    pub value: Option<Props>,
    /// Unknown fields, kept as they came.
    pub extra: Map<String, Value>,
}

/// Move an entity to `index` of a list (a clip may change track).
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    /// Kind of the moved entity.
    pub kind: EntityKind,
    /// Its id.
    pub id: Id,
    /// Destination track for a clip; `None` for tracks and markers.
    pub parent: Option<Id>,
    /// Position in the destination list, counted after the entity is taken out.
    pub index: usize,
    /// Annotation: where it came from.
    pub from: Option<Loc>,
    /// Annotation (clips only): the clip's properties, so that a move that ends up in a
    /// deleted track can be turned into a delete that carries it.
    pub value: Option<Props>,
    /// Set on the move that puts a clip back where it was when its move into a deleted track is
    /// cancelled. Such a move is not cancelled again: if its own destination is deleted too,
    /// the clip is deleted with it (it has no home left).
    pub restore: bool,
    /// Unknown fields, kept as they came.
    pub extra: Map<String, Value>,
}

/// Set (or remove) the value at `path` inside an entity or the project.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// What is updated.
    pub target: Target,
    /// The entity's id; `None` for the project.
    pub id: Option<Id>,
    /// Non-empty list of object keys; the first may not be structural.
    pub path: Vec<String>,
    /// The new value (`null` when `remove`).
    pub value: Value,
    /// Delete the key instead of setting it.
    pub remove: bool,
    /// Annotation: what `path` held before.
    pub prev: Option<Prev>,
    /// Unknown fields, kept as they came.
    pub extra: Map<String, Value>,
}

/// One primitive operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// See [`Insert`].
    Insert(Insert),
    /// See [`Delete`].
    Delete(Delete),
    /// See [`Move`].
    Move(Move),
    /// See [`Update`].
    Update(Update),
}

impl Op {
    /// The wire name of the op type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::Insert(_) => "insert",
            Op::Delete(_) => "delete",
            Op::Move(_) => "move",
            Op::Update(_) => "update",
        }
    }

    /// Decodes one op or an array of ops (PROTOCOL §5.2) with typed errors.
    pub fn batch_from_value(value: Value) -> Result<Vec<Op>, OpError> {
        match value {
            Value::Array(items) => items.into_iter().map(Op::from_value).collect(),
            one => Ok(vec![Op::from_value(one)?]),
        }
    }

    /// Decodes one op with typed errors.
    pub fn from_value(value: Value) -> Result<Op, OpError> {
        let wire: WireOp = serde_json::from_value(value).map_err(|e| OpError::Malformed { reason: e.to_string() })?;
        Op::try_from(wire)
    }

    /// The JSON form of this op.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Insert {
    /// The list this insert goes into.
    pub fn list(&self) -> ListKey {
        list_key(self.kind, self.parent.as_ref())
    }
}

impl Move {
    /// The destination list.
    pub fn list(&self) -> ListKey {
        list_key(self.kind, self.parent.as_ref())
    }

    /// The source list, when annotated.
    pub fn from_list(&self) -> Option<ListKey> {
        self.from.as_ref().map(|l| list_key(self.kind, l.parent.as_ref()))
    }
}

impl Delete {
    /// The list the entity was in, when annotated.
    pub fn from_list(&self) -> Option<ListKey> {
        self.from.as_ref().map(|l| list_key(self.kind, l.parent.as_ref()))
    }
}

/// The list of an entity of `kind` under `parent`. A clip without a parent names the list of a
/// track with the empty id, which never exists; validation rejects such ops before use.
pub(crate) fn list_key(kind: EntityKind, parent: Option<&Id>) -> ListKey {
    ListKey::of(kind, parent).unwrap_or_else(|| ListKey::Clips(Id::from("")))
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum WireType {
    Insert,
    Delete,
    Move,
    Update,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireOp {
    #[serde(rename = "type")]
    kind: WireType,
    target: Target,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    parent: Option<Id>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default)]
    path: Option<Vec<String>>,
    #[serde(default)]
    remove: bool,
    #[serde(default)]
    from: Option<Loc>,
    #[serde(default)]
    restore: bool,
    #[serde(default)]
    prev: Option<Map<String, Value>>,
    /// Accepted for compatibility and dropped: the server works out old values itself.
    #[serde(default, deserialize_with = "present")]
    #[allow(dead_code)]
    old_value: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// [`WireOp`] for the fast path of [`Op::batch_from_json`]: the same fields with no `flatten`
/// (which makes serde buffer the whole op first), so an op with any other field is refused
/// here and takes the general path, which keeps such fields in `extra`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StrictWireOp {
    #[serde(rename = "type")]
    kind: WireType,
    target: Target,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    parent: Option<Id>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default)]
    path: Option<Vec<String>>,
    #[serde(default)]
    remove: bool,
    #[serde(default)]
    from: Option<Loc>,
    #[serde(default)]
    restore: bool,
    #[serde(default)]
    prev: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[allow(dead_code)]
    old_value: Option<Value>,
}

impl From<StrictWireOp> for WireOp {
    fn from(w: StrictWireOp) -> WireOp {
        WireOp {
            kind: w.kind,
            target: w.target,
            id: w.id,
            parent: w.parent,
            index: w.index,
            value: w.value,
            path: w.path,
            remove: w.remove,
            from: w.from,
            restore: w.restore,
            prev: w.prev,
            old_value: w.old_value,
            extra: Map::new(),
        }
    }
}

/// One op or an array of them, read straight from JSON text (see [`Op::batch_from_json`]).
pub(crate) struct StrictBatch(Vec<StrictWireOp>);

impl<'de> Deserialize<'de> for StrictBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictBatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an op or an array of ops")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<StrictBatch, A::Error> {
                let op = StrictWireOp::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(StrictBatch(vec![op]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictBatch, A::Error> {
                let mut ops = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                while let Some(op) = seq.next_element::<StrictWireOp>()? {
                    ops.push(op);
                }
                Ok(StrictBatch(ops))
            }
        }
        d.deserialize_any(V)
    }
}

impl StrictBatch {
    /// The ops, or `None` if one is not valid (the general path then says why).
    pub(crate) fn into_ops(self) -> Option<Vec<Op>> {
        self.0.into_iter().map(|w| Op::try_from(WireOp::from(w)).ok()).collect()
    }
}

/// `Some(value)` for any present field, `null` included (serde would make `null` a `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl TryFrom<WireOp> for Op {
    type Error = OpError;

    fn try_from(w: WireOp) -> Result<Op, OpError> {
        let op = match w.kind {
            WireType::Insert => "insert",
            WireType::Delete => "delete",
            WireType::Move => "move",
            WireType::Update => "update",
        };
        let entity_kind = || w.target.kind().ok_or(OpError::ProjectNotAllowed { op });
        let id = || w.id.clone().ok_or(OpError::MissingField { op, field: "id" });
        let index = || w.index.ok_or(OpError::MissingField { op, field: "index" });
        Ok(match w.kind {
            WireType::Insert => {
                let kind = entity_kind()?;
                let id = id()?;
                let mut value = match w.value {
                    Some(Value::Object(m)) => m,
                    Some(_) => {
                        return Err(OpError::InvalidValue { id: id.to_string(), reason: "value must be an object" })
                    }
                    None => return Err(OpError::MissingField { op, field: "value" }),
                };
                match value.remove("id") {
                    None => {}
                    Some(Value::String(s)) if *s == *id => {}
                    Some(_) => {
                        return Err(OpError::InvalidValue { id: id.to_string(), reason: "`id` inside value differs" })
                    }
                }
                Op::Insert(Insert { kind, id, parent: w.parent, index: index()?, value, extra: w.extra })
            }
            WireType::Delete => {
                let value = match w.value {
                    Some(Value::Object(m)) => Some(m),
                    _ => None,
                };
                Op::Delete(Delete { kind: entity_kind()?, id: id()?, from: w.from, value, extra: w.extra })
            }
            WireType::Move => Op::Move(Move {
                kind: entity_kind()?,
                id: id()?,
                parent: w.parent,
                index: index()?,
                from: w.from,
                value: match w.value {
                    Some(Value::Object(m)) => Some(m),
                    _ => None,
                },
                restore: w.restore,
                extra: w.extra,
            }),
            WireType::Update => {
                let id = match w.target {
                    Target::Project => None,
                    _ => Some(id()?),
                };
                let path = w.path.ok_or(OpError::MissingField { op, field: "path" })?;
                if path.is_empty() {
                    return Err(OpError::EmptyPath);
                }
                if path.len() > crate::protocol::HARD_MAX_PATH {
                    return Err(OpError::PathTooLong { len: path.len(), limit: crate::protocol::HARD_MAX_PATH });
                }
                let value = match (w.value, w.remove) {
                    (_, true) => Value::Null,
                    (Some(v), false) => v,
                    (None, false) => return Err(OpError::MissingField { op, field: "value" }),
                };
                let prev = w.prev.map(|mut m| match m.remove("value") {
                    Some(v) => Prev::Value(v),
                    None => Prev::Absent,
                });
                Op::Update(Update { target: w.target, id, path, value, remove: w.remove, prev, extra: w.extra })
            }
        })
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        let wire = WireOp::deserialize(d)?;
        Op::try_from(wire).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let extra = match self {
            Op::Insert(o) => {
                m.serialize_entry("type", "insert")?;
                m.serialize_entry("target", &Target::of(o.kind))?;
                m.serialize_entry("id", &o.id)?;
                if let Some(p) = &o.parent {
                    m.serialize_entry("parent", p)?;
                }
                m.serialize_entry("index", &o.index)?;
                m.serialize_entry("value", &o.value)?;
                &o.extra
            }
            Op::Delete(o) => {
                m.serialize_entry("type", "delete")?;
                m.serialize_entry("target", &Target::of(o.kind))?;
                m.serialize_entry("id", &o.id)?;
                if let Some(f) = &o.from {
                    m.serialize_entry("from", f)?;
                }
                if let Some(v) = &o.value {
                    m.serialize_entry("value", v)?;
                }
                &o.extra
            }
            Op::Move(o) => {
                m.serialize_entry("type", "move")?;
                m.serialize_entry("target", &Target::of(o.kind))?;
                m.serialize_entry("id", &o.id)?;
                if let Some(p) = &o.parent {
                    m.serialize_entry("parent", p)?;
                }
                m.serialize_entry("index", &o.index)?;
                if let Some(f) = &o.from {
                    m.serialize_entry("from", f)?;
                }
                if let Some(v) = &o.value {
                    m.serialize_entry("value", v)?;
                }
                if o.restore {
                    m.serialize_entry("restore", &true)?;
                }
                &o.extra
            }
            Op::Update(o) => {
                m.serialize_entry("type", "update")?;
                m.serialize_entry("target", &o.target)?;
                if let Some(id) = &o.id {
                    m.serialize_entry("id", id)?;
                }
                m.serialize_entry("path", &o.path)?;
                m.serialize_entry("value", &o.value)?;
                if o.remove {
                    m.serialize_entry("remove", &true)?;
                }
                match &o.prev {
                    None => {}
                    Some(Prev::Absent) => m.serialize_entry("prev", &Map::new())?,
                    Some(Prev::Value(v)) => m.serialize_entry("prev", &PrevValue { value: v })?,
                }
                &o.extra
            }
        };
        for (k, v) in extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct PrevValue<'a> {
    value: &'a Value,
}
