//! The sans-IO sync state machines: the server's document (history window, rebase, exactly-once)
//! and the client's document (optimistic apply, one op in flight, a composed buffer, and its
//! person's undo and redo stacks, see [`ClientDoc::undo`]).
//!
//! Neither does IO, reads a clock or draws a random number: the sequencer, the Rust client and
//! the deterministic simulation in the tests all drive these same types.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::apply::{apply, invert};
use crate::doc::{Document, EntityKind, Id, IdList, ListKey};
use crate::error::OpError;
use crate::op::Op;
use crate::protocol::OperationMsg;
use crate::transform::{compose, insert_after, transform, transform_seq, update_commutes, Side};

mod op_ids;
mod undo;

pub use op_ids::{sent_under, OpIdIndex};
pub use undo::{UndoConfig, UndoOutcome};

/// A sequenced operation: its version, its annotated ops, who sent it and its op id.
pub type Sequenced = Arc<OperationMsg>;

/// What the server should do with an op it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Newly sequenced: store it, then broadcast it to everyone (the sender's ack included).
    Sequenced(Sequenced),
    /// A resend of an op already sequenced: answer the sender alone with this original message.
    Duplicate(Sequenced),
}

/// Why the server did not sequence an op.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// `baseVersion` is ahead of the room.
    #[error("base version {base} is ahead of the room's version {current}")]
    VersionAhead {
        /// The op's base.
        base: u64,
        /// The room's version.
        current: u64,
    },
    /// `baseVersion` is older than the history the server can reach.
    #[error("base version {base} is older than the oldest reachable version {oldest}")]
    VersionTooOld {
        /// The op's base.
        base: u64,
        /// The oldest version a stale op may be based on.
        oldest: u64,
    },
    /// The base is older than the in-memory window: the caller loads [`OlderHistory`] from its
    /// store and calls [`ServerDoc::submit`] again with it.
    #[error("history from version {base} must be loaded")]
    NeedHistory {
        /// The version the history must start at.
        base: u64,
    },
    /// The op does not apply to the state it was based on.
    #[error(transparent)]
    Invalid(#[from] OpError),
}

/// History older than the in-memory window, loaded by the caller from its store.
#[derive(Debug, Clone)]
pub struct OlderHistory {
    /// The version `state` is at.
    pub base: u64,
    /// The state at `base`.
    pub state: Document,
    /// The sequenced ops after `base`, in order, up to at least the window's first version.
    pub ops: Vec<Sequenced>,
    /// The op already stored under the submitted op id, if any.
    pub known: Option<Sequenced>,
}

/// One op submitted to the server.
#[derive(Debug, Clone)]
pub struct Submit {
    /// The sender's connection id.
    pub from: String,
    /// The sender's account (the token's `sub`): op ids are unique per account (PROTOCOL §4),
    /// so a resend is recognised by (account, op id) and never matches another account's op.
    pub account: Option<Arc<str>>,
    /// The version the op was made on; `None` means the current version.
    pub base: Option<u64>,
    /// The sender's op id.
    pub op_id: Option<String>,
    /// The ops, in order, applied atomically.
    pub ops: Vec<Op>,
}

/// The server's side of a room: state, version, and a bounded history window of sequenced
/// ops, so a stale op is validated and annotated on the exact state it was made on and then
/// transformed over the ops after it.
///
/// While stale ops need their base state, the window keeps the state at every
/// [`CHECKPOINT_EVERY`]th version (a checkpoint); the state at any other version is rebuilt from
/// the nearer of the head, by undoing the ops after it, and the checkpoint before it, by
/// replaying the ops in between: fewer than [`CHECKPOINT_EVERY`] applies, and no more than
/// there are versions after it. A kept state shares every node its successors did not change,
/// but each one makes the head's next write to a node copy it, and dropping it later frees
/// those copies: a state kept at every version cost each op a path copy and its release, one
/// at every 16th still 10 % of a room's CPU when every op inserts. Most stale ops never need
/// their base state (updates that commute with what followed, and inserts that nothing after
/// their base could have made valid or invalid, are validated at the head), and the others are
/// mostly a few versions old, where the head is nearer than any checkpoint. So checkpoints are
/// taken only for [`STATES_WANTED_FOR`] versions after a stale op needed its base state; in a
/// room where none did, a state is rebuilt from the head (at most as many applies as there are
/// versions after it), and the first stale op to need one turns checkpoints on again.
///
/// That copy is kept between submits (the *scratch* state): a stale op is validated and
/// annotated on it, then undone in place with its inverse, so the scratch stays at its base and
/// the next stale op, based at most [`SCRATCH_REPLAY`] versions later or earlier, replays or
/// undoes the ops in between on it instead of copying a checkpoint again. Writes to the scratch
/// copy only the nodes it still shares with the window, once; it is copied afresh from a
/// checkpoint every [`SCRATCH_REFRESH`] versions, which bounds what it holds of its own, and
/// dropped once the head is twice that far past it, so an old state does not outlive its use.
#[derive(Debug, Clone)]
pub struct ServerDoc {
    doc: Document,
    version: u64,
    /// The newest checkpoint at or before `window_start`: its version and state, and the ops
    /// from it up to `window_start` (fewer than [`CHECKPOINT_EVERY`]); `None` once it is
    /// further back than that (no checkpoint was taken since), and states before the window's
    /// first checkpoint are rebuilt from the head.
    base_checkpoint: Option<(u64, Document)>,
    before_window: VecDeque<Sequenced>,
    window_start: u64,
    /// Ops `window_start+1 ..= version`, each with the state after it at checkpoints (boxed:
    /// most versions keep none, and a slot should not cost a document's 176 bytes then).
    history: VecDeque<(Sequenced, Option<Box<Document>>)>,
    /// The window does not move past this version (see [`ServerDoc::hold`]).
    hold: u64,
    /// What each version in `history` keeps alive beyond what it shares with its neighbours
    /// (see [`ServerDoc::set_history_bytes`]), with the key of its op id in `op_ids`; and the
    /// sum of the costs.
    history_cost: VecDeque<(usize, Option<u64>)>,
    history_bytes: usize,
    max_history_bytes: usize,
    /// The ops with an id in the window, by (account, op id); the ids stay in `history`.
    op_ids: OpIdIndex,
    window: usize,
    /// How far back a stale op may reach through [`SubmitError::NeedHistory`]; older ones get
    /// `version_too_old`.
    max_rebase: u64,
    /// The state at a version of the window, kept for the next stale op (see above).
    scratch: Option<Scratch>,
    /// Checkpoints are taken up to this version (see above).
    checkpoints_until: u64,
}

/// The scratch state of a [`ServerDoc`]: the state at `version`, copied from the window at
/// version `copied_at` and moved since by replaying sequenced ops onto it or undoing them.
#[derive(Debug, Clone)]
struct Scratch {
    version: u64,
    copied_at: u64,
    doc: Document,
}

impl ServerDoc {
    /// A room at `version` with state `doc`, keeping `window` versions of history in memory and
    /// rebasing ops at most `max_rebase` versions old (loading what is beyond the window).
    pub fn new(doc: Document, version: u64, window: usize, max_rebase: u64) -> Self {
        ServerDoc {
            base_checkpoint: Some((version, doc.clone())),
            before_window: VecDeque::new(),
            doc,
            version,
            window_start: version,
            hold: u64::MAX,
            history: VecDeque::new(),
            history_cost: VecDeque::new(),
            history_bytes: 0,
            max_history_bytes: usize::MAX,
            op_ids: OpIdIndex::new(),
            window: window.max(1),
            max_rebase,
            scratch: None,
            checkpoints_until: 0,
        }
    }

    /// Bounds the memory the history window keeps alive, in bytes. Each version is charged an
    /// estimate of what it keeps: its message, the entities and list chunks its op copied,
    /// and the top-level values its updates wrote *into* (writing `blob.n` copies `blob`, and
    /// the previous version keeps the old copy). Past the bound the oldest versions leave
    /// memory early; ops based on them are rebased from the store
    /// ([`SubmitError::NeedHistory`]). Unbounded by default.
    pub fn set_history_bytes(&mut self, max: usize) {
        self.max_history_bytes = max;
        self.trim();
    }

    /// The memory the history window keeps alive, as [`ServerDoc::set_history_bytes`] estimates
    /// and bounds it.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Replays sequenced ops (from a store's log) onto the room. Each must be the next version.
    pub fn replay(&mut self, msg: Sequenced) -> Result<(), OpError> {
        if msg.version != self.version + 1 {
            return Err(OpError::Malformed {
                reason: format!("replayed version {} after {}", msg.version, self.version),
            });
        }
        apply(&mut self.doc, &msg.operation)?;
        self.push(msg);
        Ok(())
    }

    /// The current state.
    pub fn doc(&self) -> &Document {
        &self.doc
    }

    /// Mutable state, for the transport fields (not versioned).
    pub fn doc_mut(&mut self) -> &mut Document {
        &mut self.doc
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The oldest version whose successors are all in memory.
    pub fn window_start(&self) -> u64 {
        self.window_start
    }

    /// The sequenced ops after `since`, if all are in memory.
    pub fn ops_since(&self, since: u64) -> Option<Vec<Sequenced>> {
        if since < self.window_start || since > self.version {
            return None;
        }
        let skip = (since - self.window_start) as usize;
        Some(self.history.iter().skip(skip).map(|(m, _)| m.clone()).collect())
    }

    /// The state at version `v`, if `v` is in the window: the head's, a checkpoint's, or one
    /// rebuilt from the nearer of the head and the checkpoint before it (fewer than
    /// [`CHECKPOINT_EVERY`] applies while checkpoints are taken, and never more than there are
    /// versions after `v`).
    pub fn state_at(&self, v: u64) -> Option<Document> {
        if v == self.version {
            return Some(self.doc.clone());
        }
        if v < self.window_start || v > self.version {
            return None;
        }
        let upto = (v - self.window_start) as usize;
        // Back from `v` to the newest checkpoint at or before it, while that is nearer than the
        // head: the ops to replay from it are fewer than the ops after `v` to undo.
        let undos = self.version - v;
        let mut from = upto;
        let checkpoint = loop {
            let replays = (upto - from) as u64;
            if undos <= replays {
                break None;
            }
            if from == 0 {
                let base = self.base_checkpoint.as_ref();
                break base.filter(|_| undos > replays + self.before_window.len() as u64).map(|(_, d)| {
                    let mut d = d.clone();
                    for m in &self.before_window {
                        replay_onto(&mut d, m);
                    }
                    d
                });
            }
            if let Some((_, Some(d))) = self.history.get(from - 1) {
                break Some(Document::clone(d));
            }
            from -= 1;
        };
        if let Some(mut doc) = checkpoint {
            for (m, _) in self.history.range(from..upto) {
                replay_onto(&mut doc, m);
            }
            return Some(doc);
        }
        // The head's state with the ops after `v` undone, newest first (a sequenced op is
        // annotated, so its inverse restores the state before it exactly).
        let mut doc = self.doc.clone();
        for (m, _) in self.history.range(upto..).rev() {
            let undone = apply(&mut doc, &invert(&m.operation));
            debug_assert!(undone.is_ok(), "version {} is undone on the state after it", m.version);
            undone.ok()?;
        }
        Some(doc)
    }

    /// Keeps the state at `version` and every later one reachable: the window does not move
    /// past it, however many versions follow (the sequencer holds its durable version, whose
    /// state it serves, while later ops wait for the store). `u64::MAX` releases it.
    pub fn hold(&mut self, version: u64) {
        self.hold = version;
        self.trim();
    }

    /// Rebases `submit` onto the head and applies it.
    ///
    /// Steps: an op id seen before answers [`Outcome::Duplicate`] with the original message; a
    /// base ahead is refused; the op is applied to the state at its base (validated there, and
    /// annotated), transformed over every op after its base, applied to the head and given the
    /// next version. Updates that commute with every op after their base
    /// ([`crate::update_commutes`]) skip the base and the transform: they find the same at the
    /// head, where they are applied directly, with the same result; a lone insert that nothing
    /// after its base could have made valid or invalid ([`crate::transform::insert_after`])
    /// skips the base only: it is transformed, then validated at the head. Bases older than the
    /// window need `older` (see [`SubmitError::NeedHistory`]). Nothing changes on error.
    pub fn submit(&mut self, submit: Submit, older: Option<&OlderHistory>) -> Result<Outcome, SubmitError> {
        self.submit_ref(&submit, older)
    }

    /// [`ServerDoc::submit`] without taking the submit: for a caller that keeps it (to submit
    /// it again after loading older history, say), so its ops are not cloned for every call.
    pub fn submit_ref(&mut self, submit: &Submit, older: Option<&OlderHistory>) -> Result<Outcome, SubmitError> {
        if let Some(id) = &submit.op_id {
            if let Some(m) = self.op_ids.find(submit.account.as_deref(), id, |v| self.sequenced_at(v)) {
                return Ok(Outcome::Duplicate(m.clone()));
            }
        }
        let base = submit.base.unwrap_or(self.version);
        if base > self.version {
            return Err(SubmitError::VersionAhead { base, current: self.version });
        }
        let oldest = self.version.saturating_sub(self.max_rebase).min(self.window_start);
        if base < oldest {
            return Err(SubmitError::VersionTooOld { base, oldest });
        }
        if base == self.version {
            // Made on the head: validated, annotated and applied in one step.
            let annotated = apply(&mut self.doc, &submit.ops)?;
            return Ok(self.sequence(annotated, submit));
        }
        if base >= self.window_start && self.commutes_with_history(&submit.ops, base) {
            // Updates of values nothing after their base touched, on entities that existed then
            // and still do: they find at the head what they found at their base, and the
            // transform over the ops after it would give them back unchanged. So they are
            // validated, annotated and applied at the head, without rebuilding their base.
            let annotated = apply(&mut self.doc, &submit.ops)?;
            return Ok(self.sequence(annotated, submit));
        }
        let mut ops;
        if base >= self.window_start && self.insert_checks_at_head(&submit.ops, base) {
            // A lone insert that nothing after its base could have made valid or invalid but
            // for its list's length, which it fits even at its shortest: valid at its base
            // exactly when it is at the head, where it is validated after its transform.
            ops = submit.ops.clone();
        } else if base < self.window_start {
            let older = match older {
                Some(o) if o.base == base => o,
                _ => return Err(SubmitError::NeedHistory { base }),
            };
            if let Some(known) = older.known.as_ref().filter(|k| k.account == submit.account) {
                return Ok(Outcome::Duplicate(known.clone()));
            }
            let mut at_base = older.state.clone();
            ops = apply(&mut at_base, &submit.ops)?;
            for m in older.ops.iter().filter(|m| m.version <= self.window_start) {
                ops = transform(ops, &m.operation, Side::Later);
            }
            if older.ops.last().map_or(base, |m| m.version) < self.window_start {
                return Err(SubmitError::NeedHistory { base });
            }
        } else {
            self.checkpoints_until = self.version + STATES_WANTED_FOR;
            let Some(at_base) = self.scratch_at(base) else {
                return Err(SubmitError::VersionTooOld { base, oldest: self.window_start });
            };
            // Validated and annotated at the base (on error `apply` leaves the state as it
            // was), then undone in place, so the scratch state stays at the base.
            ops = apply(at_base, &submit.ops)?;
            let undone = apply(at_base, &invert(&ops));
            // The inverse of ops just applied always applies (a law of `apply`); were it ever
            // not to, the scratch state is dropped rather than trusted.
            debug_assert!(undone.is_ok(), "the inverse of a stale op undoes it on the scratch state");
            if undone.is_err() {
                self.scratch = None;
            }
        }
        ops = transform_seq(ops, self.ops_after(base.max(self.window_start)), Side::Later);
        let annotated = apply(&mut self.doc, &ops)?;
        Ok(self.sequence(annotated, submit))
    }

    /// The state at `base` (in the window, before the head) for a stale op to be validated on:
    /// the scratch state moved to `base` when it is at most [`SCRATCH_REPLAY`] versions away and
    /// was copied fewer than [`SCRATCH_REFRESH`] versions ago, else a new scratch state rebuilt
    /// from the checkpoint before `base` ([`ServerDoc::state_at`]). The scratch state moves
    /// forward by replaying the ops after it, and back by undoing them in place, newest first:
    /// a sequenced op is annotated, so its inverse restores the state before it exactly.
    fn scratch_at(&mut self, base: u64) -> Option<&mut Document> {
        let start = self.window_start;
        let moved = match self.scratch.as_mut() {
            Some(s)
                if s.version >= start
                    && s.version.abs_diff(base) <= SCRATCH_REPLAY
                    && base.abs_diff(s.copied_at) < SCRATCH_REFRESH =>
            {
                let (from, upto) = (s.version.min(base) - start, s.version.max(base) - start);
                let between = self.history.range(from as usize..upto as usize);
                if s.version <= base {
                    between.for_each(|(m, _)| replay_onto(&mut s.doc, m));
                    true
                } else {
                    let undone = between.rev().all(|(m, _)| apply(&mut s.doc, &invert(&m.operation)).is_ok());
                    debug_assert!(undone, "the inverse of a sequenced op undoes it on the scratch state");
                    undone
                }
            }
            _ => false,
        };
        if !moved {
            let doc = self.state_at(base)?;
            // Kept as a checkpoint too where there was none: a state rebuilt from afar (before
            // checkpoints were taken again) is then not rebuilt for the next stale op near it.
            if let Some(i) = (base - start).checked_sub(1) {
                if let Some((_, slot @ None)) = self.history.get_mut(i as usize) {
                    *slot = Some(Box::new(doc.clone()));
                }
            }
            self.scratch = Some(Scratch { version: base, copied_at: base, doc });
        }
        let scratch = self.scratch.as_mut()?;
        scratch.version = base;
        Some(&mut scratch.doc)
    }

    /// Whether `ops` are updates that commute with every op sequenced after `base` (see
    /// [`update_commutes`]). O(ops × versions since `base`), as the transform it spares.
    fn commutes_with_history(&self, ops: &[Op], base: u64) -> bool {
        if !ops.iter().all(|op| matches!(op, Op::Update(u) if !u.path.is_empty())) {
            return false;
        }
        self.ops_after(base).all(|h| ops.iter().all(|op| update_commutes(op, h)))
    }

    /// The ops sequenced after `base`, which is in the window, in order.
    fn ops_after(&self, base: u64) -> impl Iterator<Item = &Op> {
        self.history.range((base - self.window_start) as usize..).flat_map(|(m, _)| m.operation.iter())
    }

    /// Whether `ops` is a lone insert that can be validated at the head rather than on its base
    /// state: no op sequenced after `base` names its ids or inserts or deletes its track (see
    /// [`insert_after`]), so each of its ids is taken at its base exactly when it is now, and
    /// its track is a track now as it was then; and its list then was at least as long as now
    /// less the entities those ops may have added, which leaves room for its index. What is left
    /// of its validity (its value) does not depend on the state, and its transform over those
    /// ops only moves its index, so it is valid at its base exactly when its transform is at the
    /// head, and refused with the same error otherwise. O(versions since `base`), as the
    /// transform it comes with.
    fn insert_checks_at_head(&self, ops: &[Op], base: u64) -> bool {
        let [Op::Insert(x)] = ops else { return false };
        let mut added = 0;
        for h in self.ops_after(base) {
            match insert_after(x, h) {
                None => return false,
                Some(adds) => added += usize::from(adds),
            }
        }
        let list = ListKey::of(x.kind, x.parent.as_ref()).and_then(|k| self.doc.list(&k));
        list.is_some_and(|l| x.index + added <= l.len())
    }

    /// Gives applied ops the next version and records them in the history.
    fn sequence(&mut self, annotated: Vec<Op>, submit: &Submit) -> Outcome {
        let version = self.version + 1;
        let msg = Arc::new(OperationMsg {
            operation: annotated,
            version,
            user_id: submit.from.clone(),
            op_id: submit.op_id.clone(),
            account: submit.account.clone(),
        });
        self.push(msg.clone());
        Outcome::Sequenced(msg)
    }

    /// The message of version `v`, if it is in the window.
    fn sequenced_at(&self, v: u64) -> Option<&Sequenced> {
        message_at(&self.history, self.window_start, v)
    }

    fn push(&mut self, msg: Sequenced) {
        self.version = msg.version;
        let cost = version_cost(&self.doc, &msg.operation);
        let checkpoint = msg.version % CHECKPOINT_EVERY == 0 && msg.version <= self.checkpoints_until;
        let state = checkpoint.then(|| Box::new(self.doc.clone()));
        if self.scratch.as_ref().is_some_and(|s| msg.version.saturating_sub(s.copied_at) >= 2 * SCRATCH_REFRESH) {
            // Too old for the next stale op near the head, which would copy a new one: dropped,
            // so that it does not keep an old state alive.
            self.scratch = None;
        }
        let (history, start) = (&self.history, self.window_start);
        let id_key = self.op_ids.record(&msg, |v| message_at(history, start, v));
        self.history.push_back((msg, state));
        self.history_cost.push_back((cost, id_key));
        self.history_bytes += cost;
        self.trim();
    }

    fn trim(&mut self) {
        while (self.history.len() > self.window
            || (self.history_bytes > self.max_history_bytes && self.history.len() > 1))
            // The oldest version in the window, without reading its (likely cold) message.
            && !self.history.is_empty()
            && self.window_start < self.hold
        {
            let id_key = self.history_cost.pop_front().and_then(|(cost, key)| {
                self.history_bytes -= cost;
                key
            });
            if let Some((old, state)) = self.history.pop_front() {
                if let Some(key) = id_key {
                    self.op_ids.forget_key(key, old.version);
                }
                self.window_start = old.version;
                match state {
                    Some(state) => {
                        self.base_checkpoint = Some((old.version, *state));
                        self.before_window.clear();
                    }
                    None if self.base_checkpoint.is_some()
                        && self.before_window.len() + 1 < CHECKPOINT_EVERY as usize =>
                    {
                        self.before_window.push_back(old)
                    }
                    // No checkpoint for a while: the state at the window's start is rebuilt
                    // from the head, and an old state is not kept alive for it.
                    None => {
                        self.base_checkpoint = None;
                        self.before_window.clear();
                    }
                }
            }
        }
    }
}

/// The message of version `v` in `history`, whose first entry is version `start + 1`.
fn message_at(history: &VecDeque<(Sequenced, Option<Box<Document>>)>, start: u64, v: u64) -> Option<&Sequenced> {
    history.get(v.checked_sub(start + 1)? as usize).map(|(m, _)| m)
}

/// Versions between two states kept in the history window (see [`ServerDoc`]): the rebuild of
/// a state between them, from the nearer of the head and the checkpoint before it, applies
/// fewer ops than this.
pub const CHECKPOINT_EVERY: u64 = 16;

/// For how many versions after a stale op needed its base state a [`ServerDoc`] takes
/// checkpoints (see [`ServerDoc`]): long enough to serve the other stale ops of the same burst
/// of edits, and the scratch state's refreshes, from them.
pub const STATES_WANTED_FOR: u64 = 4 * SCRATCH_REFRESH;

/// How many versions the scratch state of a [`ServerDoc`] moves, at most, for a stale op
/// (forward by replaying ops, back by undoing them); one based further from it gets a new
/// scratch state ([`ServerDoc::state_at`]: at most as many applies, but on a copy that shares
/// every node with the window, so each write copies its path).
pub const SCRATCH_REPLAY: u64 = 8;

/// How many versions a [`ServerDoc`]'s scratch state serves before it is copied afresh from a
/// checkpoint. Each write to it copies the nodes it still shares with the window, once; the
/// refresh bounds those copies to what the ops of this many versions wrote: 0.1–0.2 MB for
/// moves or inserts on a 1,000-clip project (`STALE=4` in `examples/room_memory.rs`).
pub const SCRATCH_REFRESH: u64 = 64;

/// Applies a sequenced op to a state rebuilt from a checkpoint. It applied to that same state
/// when it was sequenced, so it applies again; if it did not, the rebuilt state would be wrong,
/// which the invariant checks of debug builds catch.
fn replay_onto(doc: &mut Document, m: &Sequenced) {
    let replayed = apply(doc, &m.operation);
    debug_assert!(replayed.is_ok(), "version {} replays onto the state before it", m.version);
}

/// What a version of the history keeps alive whatever its op: its message and op-id entry, its
/// slot in the window, and the document root and top-level map node that the next version's
/// writes copy (measured with `examples/room_memory.rs`, as every constant here).
const VERSION_COST: usize = 1_280;

/// What each entity an op writes keeps alive in the version before it: the entity's old copy
/// ([`ENTITY_COST`]), and the map nodes on its path, per level of the map
/// ([`ENTITY_LEVEL_COST`]: the nodes are 32 slots of 24 bytes, the root shared by every write
/// of the version, the deepest often partly filled).
const ENTITY_COST: usize = 128;
/// See [`ENTITY_COST`].
const ENTITY_LEVEL_COST: usize = 480;

/// An estimate of the memory that keeping the state before `ops` alive costs, once the head has
/// moved past it: what the ops replaced (the entities and list chunks they copied, the values
/// they wrote into) and the sequenced message itself ([`op_bytes`]). It bounds a room's window
/// ([`ServerDoc::set_history_bytes`]) whatever its ops are: a move between tracks copies three
/// entities and two lists, a gain update one entity.
fn version_cost(doc: &Document, ops: &[Op]) -> usize {
    // Levels of the entity map: a 32-way trie of hashes, filled unevenly, so a path reaches
    // about this deep.
    let mut levels = 1;
    let mut reach = 32;
    while reach < doc.entity_count() {
        levels += 1;
        reach *= 32;
    }
    let entity = ENTITY_COST + ENTITY_LEVEL_COST * levels;
    let list = |kind, parent: Option<&Id>| {
        let len = ListKey::of(kind, parent).and_then(|k| doc.list(&k)).map_or(0, IdList::len);
        // The chunk the op edited and the list's outer vector of chunks.
        16 * len.min(128) + 8 * (len / 64) + 64
    };
    let structural = |op: &Op| match op {
        Op::Update(u) => {
            let nested = if u.path.len() > 1 {
                let props = match &u.id {
                    None => Some(doc.props()),
                    Some(id) => doc.get(id).map(|e| &e.props),
                };
                // An object in memory: a tree of entries, several times its JSON.
                props.and_then(|p| p.get(&u.path[0])).map_or(0, |v| 512 + 4 * crate::protocol::json_len(v))
            } else {
                0
            };
            entity + nested
        }
        Op::Insert(i) => entity * (1 + usize::from(i.parent.is_some())) + list(i.kind, i.parent.as_ref()),
        Op::Delete(d) => {
            let parent = d.from.as_ref().and_then(|l| l.parent.as_ref());
            entity * (1 + usize::from(parent.is_some())) + list(d.kind, parent)
        }
        Op::Move(m) => {
            let (to, from) = (m.parent.as_ref(), m.from.as_ref().and_then(|l| l.parent.as_ref()));
            let lists = list(m.kind, to) + if from != to { list(m.kind, from) } else { 0 };
            // A clip is written (its parent), and so is each track whose clips changed.
            let clip = usize::from(m.kind == EntityKind::Clip);
            entity * (clip + usize::from(to.is_some()) + usize::from(from.is_some() && from != to)) + lists
        }
    };
    VERSION_COST + ops.iter().map(|op| structural(op) + op_bytes(op)).sum::<usize>()
}

/// The memory an annotated op takes: the values it carries (an insert's, a deleted or moved
/// entity's, an update's new and old values) as `serde_json` holds them, plus its own slot.
fn op_bytes(op: &Op) -> usize {
    let carried = match op {
        Op::Insert(i) => props_bytes(&i.value),
        Op::Delete(d) => d.value.as_ref().map_or(0, props_bytes),
        Op::Move(m) => m.value.as_ref().map_or(0, props_bytes),
        Op::Update(u) => {
            let prev = match &u.prev {
                Some(crate::op::Prev::Value(v)) => value_bytes(v),
                _ => 0,
            };
            value_bytes(&u.value) + prev + u.path.iter().map(|k| 24 + k.len()).sum::<usize>()
        }
    };
    std::mem::size_of::<Op>() + carried
}

/// What a JSON value takes in memory, roughly: 32 bytes a value, plus its text, plus what its
/// items or entries take.
fn value_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    32 + match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(value_bytes).sum(),
        Value::Object(m) => props_bytes(m),
        _ => 0,
    }
}

/// What a JSON object's entries take in memory, roughly: each key, its value, and the map's
/// overhead per entry.
fn props_bytes(m: &crate::doc::Props) -> usize {
    m.iter().map(|(k, v)| 40 + k.len() + value_bytes(v)).sum()
}

/// An op the client should send: `{"type":"operation", operation, baseVersion, opId}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The op id (stable across resends).
    pub op_id: String,
    /// The version the ops are based on.
    pub base_version: u64,
    /// The ops (annotated; the server ignores annotations it does not need).
    pub ops: Vec<Op>,
}

/// What receiving a server `operation` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// It acknowledged the op in flight.
    Ack,
    /// A remote op, transformed over local pending ops and applied; these are the ops as
    /// applied to the local document.
    Remote(Vec<Op>),
    /// Already seen (a version at or below the client's).
    Stale,
}

/// Why the client document could not take a server message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// A version gap: the client must resync (reconnect with `since`).
    #[error("expected version {expected}, got {got}")]
    Gap {
        /// The next version the client expected.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// A server op did not apply locally: the replica is out of step and must reload.
    #[error("server op does not apply locally: {0}")]
    Diverged(OpError),
}

#[derive(Debug, Clone)]
struct InFlight {
    op_id: String,
    base: u64,
    ops: Vec<Op>,
    /// How many local edits ([`ClientDoc::local`] calls) it carries, composed.
    edits: usize,
    /// The connection ids it was sent under: its ack carries one of them as `userId`. Another
    /// account may send an op with the same id (ids are scoped per account), and that is never
    /// mistaken for this op's ack.
    sent_as: Vec<String>,
}

/// The client's side: the local document with pending ops applied optimistically, the version
/// the server last confirmed, one op in flight and a composed buffer behind it.
#[derive(Debug, Clone)]
pub struct ClientDoc {
    doc: Document,
    version: u64,
    inflight: Option<InFlight>,
    buffer: Vec<Op>,
    /// How many local edits the buffer carries, composed.
    buffer_edits: usize,
    id_prefix: String,
    next_seq: u64,
    /// This client's current connection id (`yourId`), when known.
    connection: Option<String>,
    /// The undo and redo stacks of this client's person.
    history: undo::History,
}

impl ClientDoc {
    /// A client document loaded from a server state at `version`. Op ids are
    /// `"{id_prefix}:{seq}"`; use the connection id (`_pk`).
    pub fn new(doc: Document, version: u64, id_prefix: impl Into<String>) -> Self {
        ClientDoc {
            doc,
            version,
            inflight: None,
            buffer: Vec::new(),
            buffer_edits: 0,
            id_prefix: id_prefix.into(),
            next_seq: 0,
            connection: None,
            history: undo::History::default(),
        }
    }

    /// Sets this client's connection id (`init.yourId`). Acks are then recognised by the op id
    /// *and* a `userId` the op was sent under, so an op of another account that reuses the
    /// same op id is taken as a remote op, not as this client's ack.
    pub fn set_connection(&mut self, id: impl Into<String>) {
        let id = id.into();
        if let Some(f) = &mut self.inflight {
            if !f.sent_as.contains(&id) {
                f.sent_as.push(id.clone());
            }
        }
        self.connection = Some(id);
    }

    /// The local document (server state plus pending ops).
    pub fn doc(&self) -> &Document {
        &self.doc
    }

    /// The last version the server confirmed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the document's transport fields (`isPlaying`, `playhead`) as the server last
    /// stamped them: the transport is not an op, so it travels beside the versions.
    pub fn set_transport(&mut self, playing: bool, position: f64) {
        self.doc.set_transport(playing, position);
    }

    /// Whether any local op is not yet acknowledged.
    pub fn has_pending(&self) -> bool {
        self.inflight.is_some() || !self.buffer.is_empty()
    }

    /// How many local edits are not yet acknowledged (in flight and buffered; an edit counts
    /// once however many ops it has and however it was composed). A no-op edit counts too
    /// until the op that carries it is acknowledged or dropped.
    pub fn pending_edits(&self) -> usize {
        self.inflight.as_ref().map_or(0, |f| f.edits) + self.buffer_edits
    }

    /// The op id in flight, if any.
    pub fn inflight_id(&self) -> Option<&str> {
        self.inflight.as_ref().map(|f| f.op_id.as_str())
    }

    /// Applies a local edit optimistically and queues it. Nothing changes on error.
    ///
    /// The edit becomes an undo step of its own (or joins the open group, see
    /// [`ClientDoc::begin_group`]) and clears the redo stack. [`ClientDoc::local_at`] also
    /// merges edits made within the capture window.
    pub fn local(&mut self, ops: &[Op]) -> Result<(), OpError> {
        let annotated = self.queue(ops)?;
        self.history.record(&annotated, None);
        Ok(())
    }

    /// [`ClientDoc::local`] for an edit made at `now_ms` (milliseconds of any monotonic clock):
    /// it joins the top undo step when the previous local edit was less than
    /// [`UndoConfig::capture_ms`] before it (a drag's burst of updates is one step).
    pub fn local_at(&mut self, ops: &[Op], now_ms: u64) -> Result<(), OpError> {
        let annotated = self.queue(ops)?;
        self.history.record(&annotated, Some(now_ms));
        Ok(())
    }

    /// Applies `ops` to the local document and composes them into the buffer; returns them
    /// annotated.
    fn queue(&mut self, ops: &[Op]) -> Result<Vec<Op>, OpError> {
        let annotated = apply(&mut self.doc, ops)?;
        let buffer = std::mem::take(&mut self.buffer);
        self.buffer = compose(buffer, annotated.clone());
        // An empty buffer means the buffered edits cancelled out: nothing waits.
        self.buffer_edits = if self.buffer.is_empty() { 0 } else { self.buffer_edits + 1 };
        Ok(annotated)
    }

    /// Undoes this person's most recent undo step that still means something: its inverse,
    /// kept transformed over everything applied since, becomes an ordinary local edit
    /// (optimistic, sent, acknowledged and rebased like any other), and its own inverse goes
    /// onto the redo stack. Empty steps on top (their entity was deleted by someone else, their
    /// value overwritten by a later write) are dropped and counted in
    /// [`UndoOutcome::skipped_empty`]. Never reverts what someone else wrote: a step loses
    /// every conflict with the ops applied after it (PROTOCOL §4).
    ///
    /// An error means a step no longer applied, which the transforms rule out; the undo stack
    /// is then cleared and the document is unchanged.
    pub fn undo(&mut self) -> Result<UndoOutcome, OpError> {
        let (ops, skipped_empty) = self.history.pop_undo();
        let Some(ops) = ops else { return Ok(UndoOutcome { applied: None, skipped_empty }) };
        match self.queue(&ops) {
            Ok(applied) => {
                self.history.undone(&applied);
                Ok(UndoOutcome { applied: Some(applied), skipped_empty })
            }
            Err(e) => {
                self.history.clear_undo();
                Err(e)
            }
        }
    }

    /// Redoes the most recently undone step (the reverse of [`ClientDoc::undo`], with the same
    /// skipping of empty steps); its inverse goes back onto the undo stack. A new local edit
    /// clears the redo stack.
    pub fn redo(&mut self) -> Result<UndoOutcome, OpError> {
        let (ops, skipped_empty) = self.history.pop_redo();
        let Some(ops) = ops else { return Ok(UndoOutcome { applied: None, skipped_empty }) };
        match self.queue(&ops) {
            Ok(applied) => {
                self.history.redone(&applied);
                Ok(UndoOutcome { applied: Some(applied), skipped_empty })
            }
            Err(e) => {
                self.history.clear_redo();
                Err(e)
            }
        }
    }

    /// Whether the undo stack holds a step (it may turn out empty: see [`ClientDoc::undo`]).
    pub fn can_undo(&self) -> bool {
        self.history.can_undo()
    }

    /// Whether the redo stack holds a step.
    pub fn can_redo(&self) -> bool {
        self.history.can_redo()
    }

    /// How many steps the undo and the redo stack hold.
    pub fn undo_depth(&self) -> (usize, usize) {
        (self.history.undo_len(), self.history.redo_len())
    }

    /// Opens an explicit group: every local edit until the matching
    /// [`ClientDoc::end_group`] is one undo step (a gesture). Groups nest; only the outermost
    /// pair counts.
    pub fn begin_group(&mut self) {
        self.history.begin_group();
    }

    /// Closes the group opened by [`ClientDoc::begin_group`]; the next edit starts a new step.
    /// Without an open group it does nothing.
    pub fn end_group(&mut self) {
        self.history.end_group();
    }

    /// Whether an explicit group is open.
    pub fn in_group(&self) -> bool {
        self.history.in_group()
    }

    /// How edits become undo steps.
    pub fn undo_config(&self) -> UndoConfig {
        self.history.config()
    }

    /// Sets the capture window and the stack bound (stacks past the new bound lose their
    /// oldest steps).
    pub fn set_undo_config(&mut self, config: UndoConfig) {
        self.history.set_config(config);
    }

    /// The op to send now, if none is in flight and the buffer holds something. It stays in
    /// flight until acknowledged; after a reconnect, [`ClientDoc::resend`] gives it again.
    pub fn take_outgoing(&mut self) -> Option<Outgoing> {
        if self.inflight.is_some() || self.buffer.is_empty() {
            return None;
        }
        self.next_seq += 1;
        let f = InFlight {
            op_id: format!("{}:{}", self.id_prefix, self.next_seq),
            base: self.version,
            ops: std::mem::take(&mut self.buffer),
            edits: std::mem::take(&mut self.buffer_edits),
            sent_as: self.connection.iter().cloned().collect(),
        };
        let out = Outgoing { op_id: f.op_id.clone(), base_version: f.base, ops: f.ops.clone() };
        self.inflight = Some(f);
        Some(out)
    }

    /// The op in flight, for resending after a reconnect: same op id, rebased onto every server
    /// op received since it was first sent (equivalent to the original with its original base,
    /// and never older than the client's version).
    pub fn resend(&self) -> Option<Outgoing> {
        self.inflight.as_ref().map(|f| Outgoing { op_id: f.op_id.clone(), base_version: f.base, ops: f.ops.clone() })
    }

    /// Takes one server `operation` message in version order.
    pub fn receive(&mut self, msg: &OperationMsg) -> Result<Received, ClientError> {
        if msg.version <= self.version {
            return Ok(Received::Stale);
        }
        if msg.version != self.version + 1 {
            return Err(ClientError::Gap { expected: self.version + 1, got: msg.version });
        }
        if let (Some(f), Some(id)) = (&self.inflight, &msg.op_id) {
            if *id == f.op_id && (f.sent_as.is_empty() || f.sent_as.contains(&msg.user_id)) {
                self.inflight = None;
                self.version = msg.version;
                return Ok(Received::Ack);
            }
        }
        let mut remote = msg.operation.clone();
        if let Some(f) = &mut self.inflight {
            let mine = std::mem::take(&mut f.ops);
            f.ops = transform(mine.clone(), &remote, Side::Later);
            remote = transform(remote, &mine, Side::Earlier);
            f.base = msg.version;
        }
        if !self.buffer.is_empty() {
            let mine = std::mem::take(&mut self.buffer);
            self.buffer = transform(mine.clone(), &remote, Side::Later);
            remote = transform(remote, &mine, Side::Earlier);
            if self.buffer.is_empty() {
                // A concurrent edit made them moot (their entity was deleted, say).
                self.buffer_edits = 0;
            }
        }
        let applied = apply(&mut self.doc, &remote).map_err(ClientError::Diverged)?;
        self.history.transform_over_remote(&applied);
        self.version = msg.version;
        Ok(Received::Remote(applied))
    }

    /// Replaces everything with a fresh server state (after `version_too_old`, a rejected op,
    /// or a gap) and returns the local ops that were dropped. The undo and redo stacks are
    /// cleared: their steps were relative to the document replaced.
    pub fn reload(&mut self, doc: Document, version: u64) -> Vec<Op> {
        self.history.clear();
        let mut dropped = self.inflight.take().map(|f| f.ops).unwrap_or_default();
        dropped.append(&mut self.buffer);
        self.buffer_edits = 0;
        self.doc = doc;
        self.version = version;
        dropped
    }

    /// The server rejected the op in flight (`invalid_op`, `forbidden`): returns its ops. The
    /// local document still holds their effect, so the caller reloads.
    pub fn reject_inflight(&mut self) -> Option<Vec<Op>> {
        self.inflight.take().map(|f| f.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_op_id_table_holds_only_the_ids_of_the_window() {
        let mut server = ServerDoc::new(Document::new(), 0, 8, 64);
        for i in 0..200u64 {
            let op = Op::batch_from_value(serde_json::json!({
                "type": "insert", "target": "marker", "id": format!("m{i}"), "index": 0, "value": {"time": 1}
            }))
            .expect("a marker insert");
            // Ids repeat once they have left the window, and across two accounts.
            let account = (i % 2 == 0).then(|| Arc::from("a"));
            let submit = Submit { from: "c".into(), account, base: None, op_id: Some(format!("x{}", i % 20)), ops: op };
            assert!(matches!(server.submit(submit, None), Ok(Outcome::Sequenced(_))), "op {i}");
            assert!(server.op_ids.len() <= server.history.len(), "op {i}: {} ids", server.op_ids.len());
        }
        assert_eq!(server.op_ids.len(), 8);
    }

    fn marker_insert(i: u64, index: usize) -> Vec<Op> {
        Op::batch_from_value(serde_json::json!({
            "type": "insert", "target": "marker", "id": format!("m{i}"), "index": index, "value": {"time": i}
        }))
        .expect("a marker insert")
    }

    fn checkpoints(server: &ServerDoc) -> usize {
        server.history.iter().filter(|(_, state)| state.is_some()).count()
    }

    #[test]
    fn checkpoints_are_taken_only_while_stale_ops_need_their_base_state() {
        let mut server = ServerDoc::new(Document::new(), 0, 400, 400);
        let mut states = vec![server.doc().clone()];
        let mut submit = |server: &mut ServerDoc, base: Option<u64>, ops: Vec<Op>| {
            let submit = Submit { from: "c".into(), account: None, base, op_id: None, ops };
            assert!(matches!(server.submit(submit, None), Ok(Outcome::Sequenced(_))));
            states.push(server.doc().clone());
        };
        // Ops at the head and stale lone inserts validated at the head: no state is kept, and
        // the window drops the state it started from.
        for i in 0..500 {
            let base = (i % 2 == 1).then(|| server.version() - 1);
            submit(&mut server, base, marker_insert(i, 0));
        }
        assert_eq!(checkpoints(&server), 0);
        assert!(server.base_checkpoint.is_none());
        // A stale op that needs its base state (a move) turns checkpoints on for the versions
        // that follow.
        let v = server.version();
        let moved = serde_json::json!({"type": "move", "target": "marker", "id": "m5", "index": 0});
        submit(&mut server, Some(v - 3), Op::batch_from_value(moved).expect("a marker move"));
        for i in 0..STATES_WANTED_FOR + 2 * CHECKPOINT_EVERY {
            submit(&mut server, None, marker_insert(1000 + i, 0));
        }
        let first = (v + 1).max(server.window_start() + 1);
        let on = (first..=v + STATES_WANTED_FOR).filter(|w| w % CHECKPOINT_EVERY == 0).count();
        // And the move's base state, rebuilt from the head, is kept for the next stale op.
        assert_eq!(checkpoints(&server), on + 1);
        assert!(server.history[(v - 3 - server.window_start() - 1) as usize].1.is_some());
        // The states of the window are rebuilt as they were, from checkpoints or from the head
        // (every 7th: a rebuild from the head costs as many applies as the versions after it).
        for w in (server.window_start()..=server.version()).step_by(7) {
            assert!(server.state_at(w).as_ref() == Some(&states[w as usize]), "version {w}");
        }
    }
}
