//! The project document of PROTOCOL §5.1: tracks with their clips, markers, project properties,
//! and the transport fields `playhead` / `isPlaying`.
//!
//! Entities are held in a persistent hash map keyed by id (one pointer per entry, see
//! `entities.rs`), and each list (`tracks`, `markers`, the clips of one track) is a persistent,
//! chunked list of ids ([`IdList`]). Finding an entity is one hash lookup; cloning a whole
//! document is O(1), which is what lets the server keep states across its history window and
//! annotate a stale op at the version it was made on.

use std::fmt;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::StateError;

mod entities;
mod list;

use entities::EntityMap;

pub use list::{IdList, IdListIter};

/// An entity id (track, clip or marker). Cheap to clone.
pub type Id = Arc<str>;

/// A JSON object: the properties of an entity or of the project.
pub type Props = Map<String, Value>;

/// Properties as the document holds them (an entity's, or the project's): a small sorted vector
/// of keys with each value behind its own `Arc`, itself behind an `Arc`. Cloning it is O(1)
/// (an entity copied for writing shares its properties until they are written), and a write
/// copies only the key list and the one top-level value it writes into, never the other
/// values: the state kept at each version of the server's history window costs what its ops
/// changed. Entities hold a handful of properties, so a sorted vector beats a tree here in
/// both time and memory (a persistent tree allocates a whole node per write).
/// Iterates in key order, as the JSON form does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PropMap(Arc<Vec<(String, Arc<Value>)>>);

impl PropMap {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys and values in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, &**v))
    }

    /// A plain JSON object with the same keys and values.
    pub fn to_props(&self) -> Props {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub(crate) fn insert(&mut self, key: String, value: Value) {
        match self.find(&key) {
            Ok(i) => Arc::make_mut(&mut self.0)[i].1 = Arc::new(value),
            Err(i) => Arc::make_mut(&mut self.0).insert(i, (key, Arc::new(value))),
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Arc<Value>> {
        let i = self.find(key).ok()?;
        Some(Arc::make_mut(&mut self.0).remove(i).1)
    }

    /// The value of `key`, made unique (copied if another version shares it) for writing.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let i = self.find(key).ok()?;
        Some(Arc::make_mut(&mut Arc::make_mut(&mut self.0)[i].1))
    }
}

impl From<Props> for PropMap {
    fn from(props: Props) -> Self {
        let mut v: Vec<(String, Arc<Value>)> = props.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        // A JSON object's keys are unique; sorted, they can be binary-searched.
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        PropMap(Arc::new(v))
    }
}

/// Keys at the top of the state that only structural operations (or the transport) change.
pub const PROJECT_STRUCTURAL_KEYS: [&str; 5] = ["version", "playhead", "isPlaying", "tracks", "markers"];

/// What kind of entity an id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    /// A track: lives in `tracks`, holds clips.
    Track,
    /// A clip: lives in the `clips` of one track.
    Clip,
    /// A marker: lives in `markers`.
    Marker,
}

impl EntityKind {
    /// The wire name (`track`, `clip`, `marker`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Track => "track",
            EntityKind::Clip => "clip",
            EntityKind::Marker => "marker",
        }
    }

    /// The kind with this wire name, if any (`project` is an op target, not an entity).
    pub fn from_name(name: &str) -> Option<EntityKind> {
        match name {
            "track" => Some(EntityKind::Track),
            "clip" => Some(EntityKind::Clip),
            "marker" => Some(EntityKind::Marker),
            _ => None,
        }
    }

    /// Whether `key` is a structural key of this kind of entity (`id`, and `clips` on tracks).
    pub fn is_structural(self, key: &str) -> bool {
        key == "id" || (self == EntityKind::Track && key == "clips")
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one ordered list of the document.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListKey {
    /// The project's `tracks`.
    Tracks,
    /// The project's `markers`.
    Markers,
    /// The `clips` of the track with this id.
    Clips(Id),
}

impl ListKey {
    /// The list that entities of `kind` under `parent` live in (`parent` matters for clips only).
    pub fn of(kind: EntityKind, parent: Option<&Id>) -> Option<ListKey> {
        match kind {
            EntityKind::Track => Some(ListKey::Tracks),
            EntityKind::Marker => Some(ListKey::Markers),
            EntityKind::Clip => parent.map(|p| ListKey::Clips(p.clone())),
        }
    }
}

/// One entity: its kind, where it lives, its properties, and (for tracks) its clips.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// Track, clip or marker.
    pub kind: EntityKind,
    /// The track a clip lives in; `None` for tracks and markers.
    pub parent: Option<Id>,
    /// Every property but `id` (and `clips` for tracks).
    pub props: PropMap,
    /// The clip ids of a track, in order; empty for other kinds.
    pub clips: IdList,
}

/// The whole project. Cheap to clone (persistent structures).
#[derive(Clone, Debug, Default)]
pub struct Document {
    props: PropMap,
    playhead: f64,
    is_playing: bool,
    tracks: IdList,
    markers: IdList,
    entities: EntityMap,
}

impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        self.props == other.props
            && self.playhead == other.playhead
            && self.is_playing == other.is_playing
            && self.tracks == other.tracks
            && self.markers == other.markers
            && self.entities == other.entities
    }
}

impl Document {
    /// An empty project: no tracks, no markers, no properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// The project properties (tempo, name, …): every top-level key that is not structural.
    pub fn props(&self) -> &PropMap {
        &self.props
    }

    /// Mutable project properties.
    pub(crate) fn props_mut(&mut self) -> &mut PropMap {
        &mut self.props
    }

    /// The transport position stored in the state, in seconds.
    pub fn playhead(&self) -> f64 {
        self.playhead
    }

    /// Whether the transport is playing.
    pub fn is_playing(&self) -> bool {
        self.is_playing
    }

    /// Sets the transport fields (`playhead`, `isPlaying`); they are not versioned operations.
    pub fn set_transport(&mut self, playing: bool, position: f64) {
        self.is_playing = playing;
        self.playhead = position;
    }

    /// Track ids in order.
    pub fn tracks(&self) -> &IdList {
        &self.tracks
    }

    /// Marker ids in order.
    pub fn markers(&self) -> &IdList {
        &self.markers
    }

    /// The entity with this id, if any. One hash lookup.
    pub fn get(&self, id: &str) -> Option<&Entity> {
        self.entities.get(id)
    }

    /// Number of entities (tracks + clips + markers).
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    pub(crate) fn entity_mut(&mut self, id: &str) -> Option<&mut Entity> {
        self.entities.get_mut(id)
    }

    pub(crate) fn insert_entity(&mut self, id: Id, entity: Entity) {
        self.entities.insert(id, entity);
    }

    pub(crate) fn remove_entity(&mut self, id: &str) -> bool {
        self.entities.remove(id)
    }

    /// The list named by `key`, if it exists (a clip list exists while its track does).
    pub fn list(&self, key: &ListKey) -> Option<&IdList> {
        match key {
            ListKey::Tracks => Some(&self.tracks),
            ListKey::Markers => Some(&self.markers),
            ListKey::Clips(t) => match self.get(t) {
                Some(e) if e.kind == EntityKind::Track => Some(&e.clips),
                _ => None,
            },
        }
    }

    pub(crate) fn list_mut(&mut self, key: &ListKey) -> Option<&mut IdList> {
        match key {
            ListKey::Tracks => Some(&mut self.tracks),
            ListKey::Markers => Some(&mut self.markers),
            ListKey::Clips(t) => match self.entity_mut(t) {
                Some(e) if e.kind == EntityKind::Track => Some(&mut e.clips),
                _ => None,
            },
        }
    }

    /// Where the entity `id` lives: its list and its index there.
    pub fn locate(&self, id: &str) -> Option<(ListKey, usize)> {
        let e = self.get(id)?;
        let key = ListKey::of(e.kind, e.parent.as_ref())?;
        let index = self.list(&key)?.index_of(id)?;
        Some((key, index))
    }

    /// The JSON of one entity without its `id` (a track with its `clips`, each with its `id`):
    /// the form an insert's `value` and a delete's carried subtree take.
    pub fn entity_value(&self, id: &str) -> Option<Props> {
        let e = self.get(id)?;
        let mut out = e.props.to_props();
        if e.kind == EntityKind::Track {
            let clips = e.clips.iter().filter_map(|c| self.entity_json(c).map(Value::Object)).collect();
            out.insert("clips".into(), Value::Array(clips));
        }
        Some(out)
    }

    /// The JSON of one entity with its `id` first.
    pub fn entity_json(&self, id: &str) -> Option<Props> {
        let mut out = Props::new();
        out.insert("id".into(), Value::String(id.to_string()));
        out.extend(self.entity_value(id)?);
        Some(out)
    }

    /// A serializable view of the state with its version, in the JSON form of PROTOCOL §5.1.
    pub fn state(&self, version: u64) -> StateView<'_> {
        StateView { doc: self, version }
    }

    /// The state as a JSON value (see [`Document::state`]).
    pub fn to_state_value(&self, version: u64) -> Value {
        serde_json::to_value(self.state(version)).unwrap_or(Value::Null)
    }

    /// Parses the JSON form of PROTOCOL §5.1 into a document and its version.
    pub fn from_state_value(value: &Value) -> Result<(Document, u64), StateError> {
        let obj = value.as_object().ok_or(StateError::NotAnObject)?;
        let mut doc = Document::new();
        let version = match obj.get("version") {
            None => 0,
            Some(v) => v.as_u64().ok_or(StateError::BadField { field: "version" })?,
        };
        if let Some(v) = obj.get("playhead") {
            doc.playhead = v.as_f64().ok_or(StateError::BadField { field: "playhead" })?;
        }
        if let Some(v) = obj.get("isPlaying") {
            doc.is_playing = v.as_bool().ok_or(StateError::BadField { field: "isPlaying" })?;
        }
        let mut props = Props::new();
        for (k, v) in obj {
            if !PROJECT_STRUCTURAL_KEYS.contains(&k.as_str()) {
                props.insert(k.clone(), v.clone());
            }
        }
        // An object property is never empty (PROTOCOL §5.3): a stored state that holds one
        // (written before that rule) loads without it, on every replica alike.
        doc.props = PropMap::from(crate::apply::prune_props(props));
        for (field, kind) in [("tracks", EntityKind::Track), ("markers", EntityKind::Marker)] {
            let Some(list) = obj.get(field) else { continue };
            let list = list.as_array().ok_or(StateError::BadField { field })?;
            for item in list {
                let mut props = item.as_object().cloned().ok_or(StateError::BadField { field })?;
                let id = take_id(&mut props).ok_or(StateError::BadField { field })?;
                let mut clip_ids = IdList::new();
                if kind == EntityKind::Track {
                    if let Some(clips) = props.remove("clips") {
                        let clips = clips.as_array().ok_or(StateError::BadField { field: "clips" })?;
                        for clip in clips {
                            let mut cprops =
                                clip.as_object().cloned().ok_or(StateError::BadField { field: "clips" })?;
                            let cid = take_id(&mut cprops).ok_or(StateError::BadField { field: "clips" })?;
                            if doc.entities.contains_key(&cid) {
                                return Err(StateError::DuplicateId { id: cid.to_string() });
                            }
                            clip_ids.push_back(cid.clone());
                            doc.insert_entity(
                                cid,
                                Entity {
                                    kind: EntityKind::Clip,
                                    parent: Some(id.clone()),
                                    props: PropMap::from(crate::apply::prune_props(cprops)),
                                    clips: IdList::new(),
                                },
                            );
                        }
                    }
                }
                if doc.entities.contains_key(&id) {
                    return Err(StateError::DuplicateId { id: id.to_string() });
                }
                doc.insert_entity(
                    id.clone(),
                    Entity {
                        kind,
                        parent: None,
                        props: PropMap::from(crate::apply::prune_props(props)),
                        clips: clip_ids,
                    },
                );
                match kind {
                    EntityKind::Track => doc.tracks.push_back(id),
                    _ => doc.markers.push_back(id),
                }
            }
        }
        Ok((doc, version))
    }

    /// Checks the structural invariants: every listed id names an entity of the right kind and
    /// parent, no entity is listed twice or not at all. Cost: O(entities); for tests, fuzzing,
    /// and `debug_assertions`.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let mut check_list = |key: ListKey, ids: &IdList, kind: EntityKind| -> Result<(), String> {
            for id in ids {
                let e = self.entities.get(id).ok_or_else(|| format!("{key:?} lists unknown id {id}"))?;
                if e.kind != kind {
                    return Err(format!("{id} is a {} but listed in {key:?}", e.kind));
                }
                let expected_parent = match &key {
                    ListKey::Clips(t) => Some(t.clone()),
                    _ => None,
                };
                if e.parent != expected_parent {
                    return Err(format!("{id} has parent {:?} but is listed in {key:?}", e.parent));
                }
                if !seen.insert(id.clone()) {
                    return Err(format!("{id} is listed twice"));
                }
            }
            Ok(())
        };
        check_list(ListKey::Tracks, &self.tracks, EntityKind::Track)?;
        check_list(ListKey::Markers, &self.markers, EntityKind::Marker)?;
        for t in &self.tracks {
            let e = self.entities.get(t).ok_or_else(|| format!("track {t} has no entity"))?;
            check_list(ListKey::Clips(t.clone()), &e.clips, EntityKind::Clip)?;
        }
        if seen.len() != self.entities.len() {
            return Err(format!("{} entities but {} listed", self.entities.len(), seen.len()));
        }
        for (id, e) in self.entities.iter() {
            if e.kind != EntityKind::Track && !e.clips.is_empty() {
                return Err(format!("{id} is a {} with clips", e.kind));
            }
            if e.props.contains_key("id") || (e.kind == EntityKind::Track && e.props.contains_key("clips")) {
                return Err(format!("{id} holds a structural key among its properties"));
            }
        }
        let empty = |props: &PropMap| props.iter().any(|(_, v)| crate::apply::has_empty_object(v));
        if empty(&self.props) {
            return Err("a project property holds an empty object".into());
        }
        for (id, e) in self.entities.iter() {
            if empty(&e.props) {
                return Err(format!("a property of {id} holds an empty object"));
            }
        }
        for k in PROJECT_STRUCTURAL_KEYS {
            if self.props.contains_key(k) {
                return Err(format!("project properties hold structural key {k}"));
            }
        }
        Ok(())
    }
}

fn take_id(props: &mut Props) -> Option<Id> {
    match props.remove("id") {
        Some(Value::String(s)) => Some(Id::from(s)),
        _ => None,
    }
}

/// The state with its version, serialized exactly as PROTOCOL §5.1 shows.
pub struct StateView<'a> {
    doc: &'a Document,
    version: u64,
}

struct EntityView<'a> {
    doc: &'a Document,
    id: &'a Id,
}

impl Serialize for EntityView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(e) = self.doc.get(self.id) else {
            return s.serialize_none();
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &**self.id)?;
        for (k, v) in e.props.iter() {
            m.serialize_entry(k, v)?;
        }
        if e.kind == EntityKind::Track {
            m.serialize_entry("clips", &ListView { doc: self.doc, ids: &e.clips })?;
        }
        m.end()
    }
}

struct ListView<'a> {
    doc: &'a Document,
    ids: &'a IdList,
}

impl Serialize for ListView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.ids.len()))?;
        for id in self.ids {
            seq.serialize_element(&EntityView { doc: self.doc, id })?;
        }
        seq.end()
    }
}

impl Serialize for StateView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.doc;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("version", &self.version)?;
        m.serialize_entry("playhead", &d.playhead)?;
        m.serialize_entry("isPlaying", &d.is_playing)?;
        for (k, v) in d.props.iter() {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("tracks", &ListView { doc: d, ids: &d.tracks })?;
        m.serialize_entry("markers", &ListView { doc: d, ids: &d.markers })?;
        m.end()
    }
}
