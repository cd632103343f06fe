//! A seeded generator of realistic studio edits, each valid against the document it is given:
//! tracks, clips and markers added, deleted and moved, clips dragged between tracks, marker
//! edits, property drags as bursts of updates to one value, tempo and name changes; and now and
//! then an undo or a redo of the user's own edits ([`Workload::next_step`]).
//!
//! Pure: the caller passes the document (the client's exact local state) and gets ops back.

use ot_core::{Document, EntityKind, Id, Op};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Caps that keep documents at a realistic size in long runs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tracks at most.
    pub tracks: usize,
    /// Clips per track at most.
    pub clips_per_track: usize,
    /// Markers at most.
    pub markers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { tracks: 8, clips_per_track: 12, markers: 8 }
    }
}

#[derive(Clone, Debug)]
struct Drag {
    target: &'static str,
    id: Option<Id>,
    key: &'static str,
    value: f64,
    step: f64,
    remaining: u32,
}

/// The generator of one simulated user.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: StdRng,
    tag: String,
    next_id: u64,
    drag: Option<Drag>,
    limits: Limits,
}

/// What kind of edit a step made (for the report's mix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A track inserted.
    AddTrack,
    /// A track deleted.
    DeleteTrack,
    /// A track moved.
    MoveTrack,
    /// A clip inserted.
    AddClip,
    /// A clip deleted.
    DeleteClip,
    /// A clip moved within its track.
    MoveClip,
    /// A clip dragged to another track.
    DragClipToTrack,
    /// A marker inserted.
    AddMarker,
    /// A marker deleted.
    DeleteMarker,
    /// A marker moved in the list.
    MoveMarker,
    /// A marker's label or time changed.
    EditMarker,
    /// One update of a property drag.
    PropertyDrag,
    /// The tempo changed.
    Tempo,
    /// The project name changed.
    Rename,
}

/// What a user does next: an edit (made by [`Workload::next`] from the exact local document),
/// or an undo or redo of their own edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Edit: call [`Workload::next`] with the local document.
    Edit,
    /// Undo the last undo step.
    Undo,
    /// Redo the last undone step.
    Redo,
}

fn ops(v: Value) -> Vec<Op> {
    // The generator builds only well-formed ops; a failure here is a bug in this module and
    // shows up as a local rejection counted by the simulator.
    Op::batch_from_value(v).unwrap_or_default()
}

impl Workload {
    /// A generator for the user `tag` (unique in the room: new ids are `{tag}-{n}`).
    pub fn new(tag: impl Into<String>, seed: u64, limits: Limits) -> Self {
        Workload { rng: StdRng::seed_from_u64(seed), tag: tag.into(), next_id: 0, drag: None, limits }
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}-{}", self.tag, self.next_id)
    }

    fn clips(doc: &Document) -> Vec<(Id, Id, usize)> {
        let mut out = Vec::new();
        for t in doc.tracks() {
            if let Some(e) = doc.get(t) {
                for (i, c) in e.clips.iter().enumerate() {
                    out.push((t.clone(), c.clone(), i));
                }
            }
        }
        out
    }

    /// Whether a property drag is under way (its next steps are updates of one value).
    pub fn dragging(&self) -> bool {
        self.drag.is_some()
    }

    /// Whether the next step is an edit, an undo (about one step in twenty) or a redo (one in
    /// forty). A property drag under way always goes on with an edit.
    pub fn next_step(&mut self) -> Step {
        if self.drag.is_some() {
            return Step::Edit;
        }
        match self.rng.gen_range(0..40u32) {
            0 | 1 => Step::Undo,
            2 => Step::Redo,
            _ => Step::Edit,
        }
    }

    /// The entity a property drag under way is changing (none for a project property): what
    /// a client locks for the drag's duration.
    pub fn drag_entity(&self) -> Option<(EntityKind, Id)> {
        let d = self.drag.as_ref()?;
        Some((EntityKind::from_name(d.target)?, d.id.clone()?))
    }

    /// The next edit, valid against `doc`, and what kind it is.
    pub fn next(&mut self, doc: &Document) -> (Kind, Vec<Op>) {
        if let Some(out) = self.continue_drag(doc) {
            return (Kind::PropertyDrag, out);
        }
        for _ in 0..8 {
            let roll = self.rng.gen_range(0..100u32);
            if let Some(r) = self.try_kind(roll, doc) {
                return r;
            }
        }
        (Kind::Tempo, self.tempo())
    }

    fn tempo(&mut self) -> Vec<Op> {
        let bpm = self.rng.gen_range(60..=180);
        ops(json!({"type":"update","target":"project","path":["tempo"],"value":bpm}))
    }

    fn continue_drag(&mut self, doc: &Document) -> Option<Vec<Op>> {
        let d = self.drag.as_mut()?;
        let alive = match &d.id {
            Some(id) => doc.get(id).is_some_and(|e| e.kind.as_str() == d.target),
            None => true,
        };
        if !alive || d.remaining == 0 {
            self.drag = None;
            return None;
        }
        d.remaining -= 1;
        d.value = ((d.value + d.step) * 1000.0).round() / 1000.0;
        let v = match &d.id {
            Some(id) => json!({"type":"update","target":d.target,"id":&**id,"path":[d.key],"value":d.value}),
            None => json!({"type":"update","target":"project","path":[d.key],"value":d.value}),
        };
        if d.remaining == 0 {
            self.drag = None;
        }
        Some(ops(v))
    }

    fn try_kind(&mut self, roll: u32, doc: &Document) -> Option<(Kind, Vec<Op>)> {
        let tracks: Vec<Id> = doc.tracks().iter().cloned().collect();
        let markers: Vec<Id> = doc.markers().iter().cloned().collect();
        let rng = &mut self.rng;
        Some(match roll {
            0..=7 => {
                if tracks.len() >= self.limits.tracks {
                    return None;
                }
                let index = rng.gen_range(0..=tracks.len());
                let vol = rng.gen_range(0..=100) as f64 / 100.0;
                let with_clip = rng.gen_bool(0.3);
                let id = self.fresh_id("t");
                let clips = if with_clip {
                    let cid = self.fresh_id("c");
                    json!([{"id":cid,"start":0.0,"duration":4.0,"gain":1.0}])
                } else {
                    json!([])
                };
                let v = json!({"type":"insert","target":"track","id":id,"index":index,
                    "value":{"name":format!("Track {}", self.next_id),"volume":vol,"muted":false,"clips":clips}});
                (Kind::AddTrack, ops(v))
            }
            8..=9 => {
                if tracks.len() <= 3 {
                    return None;
                }
                let t = tracks.choose(rng)?;
                (Kind::DeleteTrack, ops(json!({"type":"delete","target":"track","id":&**t})))
            }
            10..=13 => {
                if tracks.len() < 2 {
                    return None;
                }
                let t = tracks.choose(rng)?;
                let index = rng.gen_range(0..tracks.len());
                (Kind::MoveTrack, ops(json!({"type":"move","target":"track","id":&**t,"index":index})))
            }
            14..=33 => {
                let t = tracks.choose(rng)?.clone();
                let n = doc.get(&t)?.clips.len();
                if n >= self.limits.clips_per_track {
                    return None;
                }
                let index = rng.gen_range(0..=n);
                let start = rng.gen_range(0..64) as f64 * 0.5;
                let dur = rng.gen_range(1..16) as f64 * 0.25;
                let id = self.fresh_id("c");
                let v = json!({"type":"insert","target":"clip","id":id,"parent":&*t,"index":index,
                    "value":{"start":start,"duration":dur,"gain":1.0}});
                (Kind::AddClip, ops(v))
            }
            34..=41 => {
                let clips = Self::clips(doc);
                let (_, c, _) = clips.choose(rng)?;
                (Kind::DeleteClip, ops(json!({"type":"delete","target":"clip","id":&**c})))
            }
            42..=49 => {
                let clips = Self::clips(doc);
                let (t, c, _) = clips.choose(rng)?;
                let n = doc.get(t)?.clips.len();
                let index = rng.gen_range(0..n);
                (Kind::MoveClip, ops(json!({"type":"move","target":"clip","id":&**c,"parent":&**t,"index":index})))
            }
            50..=57 => {
                let clips = Self::clips(doc);
                let (from, c, _) = clips.choose(rng)?;
                let to = tracks.choose(rng)?;
                if to == from {
                    return None;
                }
                let n = doc.get(to)?.clips.len();
                if n >= self.limits.clips_per_track {
                    return None;
                }
                let index = rng.gen_range(0..=n);
                let start = rng.gen_range(0..64) as f64 * 0.5;
                // A drag to another lane: move plus the new start, atomically.
                let v = json!([
                    {"type":"move","target":"clip","id":&**c,"parent":&**to,"index":index},
                    {"type":"update","target":"clip","id":&**c,"path":["start"],"value":start}
                ]);
                (Kind::DragClipToTrack, ops(v))
            }
            58..=62 => {
                if markers.len() >= self.limits.markers {
                    return None;
                }
                let index = rng.gen_range(0..=markers.len());
                let time = rng.gen_range(0..128) as f64;
                let id = self.fresh_id("m");
                let v = json!({"type":"insert","target":"marker","id":id,"index":index,
                    "value":{"time":time,"label":format!("M{}", self.next_id)}});
                (Kind::AddMarker, ops(v))
            }
            63..=65 => {
                let m = markers.choose(rng)?;
                (Kind::DeleteMarker, ops(json!({"type":"delete","target":"marker","id":&**m})))
            }
            66..=67 => {
                let m = markers.choose(rng)?;
                let index = rng.gen_range(0..markers.len());
                (Kind::MoveMarker, ops(json!({"type":"move","target":"marker","id":&**m,"index":index})))
            }
            68..=73 => {
                let m = markers.choose(rng)?;
                let v = if rng.gen_bool(0.5) {
                    json!({"type":"update","target":"marker","id":&**m,"path":["label"],"value":format!("L{}", rng.gen_range(0..1000))})
                } else {
                    json!({"type":"update","target":"marker","id":&**m,"path":["time"],"value":rng.gen_range(0..128) as f64})
                };
                (Kind::EditMarker, ops(v))
            }
            74..=93 => {
                // Start a property drag: a burst of updates to one value.
                let pick = rng.gen_range(0..4);
                let burst = rng.gen_range(5..=20);
                let drag = match pick {
                    0 => {
                        let t = tracks.choose(rng)?;
                        Drag {
                            target: "track",
                            id: Some(t.clone()),
                            key: "volume",
                            value: 0.5,
                            step: 0.01,
                            remaining: burst,
                        }
                    }
                    1 => {
                        let m = markers.choose(rng)?;
                        Drag {
                            target: "marker",
                            id: Some(m.clone()),
                            key: "time",
                            value: 8.0,
                            step: 0.25,
                            remaining: burst,
                        }
                    }
                    2 => {
                        let (_, c, _) = Self::clips(doc).choose(rng)?.clone();
                        Drag { target: "clip", id: Some(c), key: "gain", value: 1.0, step: -0.02, remaining: burst }
                    }
                    _ => {
                        let (_, c, _) = Self::clips(doc).choose(rng)?.clone();
                        Drag { target: "clip", id: Some(c), key: "start", value: 0.0, step: 0.125, remaining: burst }
                    }
                };
                self.drag = Some(drag);
                return self.continue_drag(doc).map(|o| (Kind::PropertyDrag, o));
            }
            94..=98 => (Kind::Tempo, self.tempo()),
            _ => {
                let name = format!("Song {}", rng.gen_range(0..100));
                (Kind::Rename, ops(json!({"type":"update","target":"project","path":["name"],"value":name})))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated edit applies to the document it was made for, over a long run, and
    /// the invariants hold throughout. Seeds are printed on failure.
    #[test]
    fn generated_ops_always_apply() {
        for seed in 0..20u64 {
            let mut w = Workload::new("u1", seed, Limits::default());
            let mut doc = Document::new();
            let mut kinds = std::collections::BTreeSet::new();
            for step in 0..2000 {
                let (kind, batch) = w.next(&doc);
                assert!(!batch.is_empty(), "seed {seed} step {step}: empty batch for {kind:?}");
                if let Err(e) = ot_core::apply(&mut doc, &batch) {
                    panic!("seed {seed} step {step}: {kind:?} does not apply: {e}");
                }
                doc.check_invariants().unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                kinds.insert(kind);
            }
            assert!(kinds.len() >= 12, "seed {seed}: only {kinds:?}");
        }
    }

    #[test]
    fn same_seed_same_edits() {
        let run = |seed| {
            let mut w = Workload::new("u", seed, Limits::default());
            let mut doc = Document::new();
            let mut out = Vec::new();
            for _ in 0..300 {
                let (_, b) = w.next(&doc);
                ot_core::apply(&mut doc, &b).unwrap();
                out.push(serde_json::to_string(&b).unwrap());
            }
            out
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
