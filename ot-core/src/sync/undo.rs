//! Collaborative undo and redo for one client: each person undoes their own edits, never
//! anyone else's (PROTOCOL §4: an undo is an ordinary operation).
//!
//! Each entry of the undo stack is the inverse of a local edit (or of a group of them). The
//! stacks are relative to the local document: the top entry applies to it as it is now, the one
//! below applies to the state after the top one is undone, and so on. The person's own later
//! edits therefore need no transform (they are undone first); a remote op, as it is applied
//! locally, is transformed into every entry from the top down, and carried down the stack past
//! each entry (see [`History::transform_over_remote`]).
//!
//! Conflicts between an entry and a remote op are decided for the remote op: an entry stands for
//! an edit that was sequenced before it. So an entry whose value someone else overwrote since,
//! or whose entity someone else deleted, or whose entity someone else moved since, loses that
//! part; an entry that loses everything is *empty*, and undo skips it. A write of an object
//! that someone else wrote a key into since keeps their key (the entry's value takes it in),
//! and the delete of a track (undoing its insert) takes in the clips someone else moved into
//! it since, as it takes those they inserted there, rather than cancelling their move.

use std::collections::VecDeque;

use crate::apply::invert;
use crate::op::Op;
use crate::transform::{compose, independent, transform_entry};

/// How local edits become undo steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndoConfig {
    /// Consecutive local edits made less than this many milliseconds apart merge into one
    /// step (a drag's burst of updates); `0` merges nothing by time. Default 500.
    pub capture_ms: u64,
    /// The most steps each stack keeps; the oldest go first. Default 100.
    pub max_steps: usize,
}

impl Default for UndoConfig {
    fn default() -> Self {
        UndoConfig { capture_ms: 500, max_steps: 100 }
    }
}

/// What an [`crate::sync::ClientDoc::undo`] or [`crate::sync::ClientDoc::redo`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UndoOutcome {
    /// The ops applied as a local edit (annotated), or `None` when no step was left.
    pub applied: Option<Vec<Op>>,
    /// How many empty steps were passed over and dropped first: steps whose edits no longer
    /// mean anything (their entity was deleted, their value overwritten by a later write).
    pub skipped_empty: usize,
}

impl UndoOutcome {
    /// Whether a step was applied.
    pub fn did_apply(&self) -> bool {
        self.applied.is_some()
    }
}

#[derive(Clone, Debug)]
struct Entry {
    ops: Vec<Op>,
    /// The time of the last local edit merged into it, for the capture window.
    last_ms: Option<u64>,
}

/// The two stacks of one client document, with their grouping state.
#[derive(Clone, Debug, Default)]
pub(crate) struct History {
    /// The back is the top.
    undo: VecDeque<Entry>,
    /// The back is the top.
    redo: VecDeque<Entry>,
    config: UndoConfig,
    /// Open explicit groups (nested begin/end pairs count once).
    group_depth: usize,
    /// Whether the open group already has its entry on top of the undo stack.
    group_started: bool,
    /// Whether the next local edit may merge into the top entry by time: false after an
    /// undo, a redo, or the end of a group.
    open: bool,
}

impl History {
    pub(crate) fn config(&self) -> UndoConfig {
        self.config
    }

    pub(crate) fn set_config(&mut self, config: UndoConfig) {
        self.config = config;
        bound(&mut self.undo, config.max_steps);
        bound(&mut self.redo, config.max_steps);
    }

    pub(crate) fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub(crate) fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    pub(crate) fn undo_len(&self) -> usize {
        self.undo.len()
    }

    pub(crate) fn redo_len(&self) -> usize {
        self.redo.len()
    }

    pub(crate) fn begin_group(&mut self) {
        if self.group_depth == 0 {
            self.group_started = false;
        }
        self.group_depth += 1;
    }

    pub(crate) fn end_group(&mut self) {
        if self.group_depth == 0 {
            return;
        }
        self.group_depth -= 1;
        if self.group_depth == 0 {
            self.group_started = false;
            self.open = false;
        }
    }

    pub(crate) fn in_group(&self) -> bool {
        self.group_depth > 0
    }

    /// Records a local edit (annotated, as applied) made at `now_ms` (when known): it clears
    /// the redo stack and becomes a step, or joins the top step (same open group, or inside
    /// the capture window).
    pub(crate) fn record(&mut self, applied: &[Op], now_ms: Option<u64>) {
        if applied.is_empty() {
            return;
        }
        self.redo.clear();
        let inverse = invert(applied);
        let merge = if self.group_depth > 0 {
            self.group_started
        } else {
            let within = |top: &Entry| match (top.last_ms, now_ms) {
                (Some(last), Some(now)) => now.saturating_sub(last) < self.config.capture_ms,
                _ => false,
            };
            self.open && self.undo.back().is_some_and(within)
        };
        match self.undo.back_mut() {
            Some(top) if merge => {
                // Undoing the whole gesture: this edit's inverse first, then the earlier ones.
                top.ops = compose(inverse, std::mem::take(&mut top.ops));
                top.last_ms = now_ms.or(top.last_ms);
            }
            _ => {
                self.undo.push_back(Entry { ops: inverse, last_ms: now_ms });
                bound(&mut self.undo, self.config.max_steps);
            }
        }
        if self.group_depth > 0 {
            self.group_started = true;
        }
        self.open = true;
    }

    /// Takes the top undo step to apply, dropping the empty ones above it; returns the ops and
    /// how many empty steps went.
    pub(crate) fn pop_undo(&mut self) -> (Option<Vec<Op>>, usize) {
        pop_nonempty(&mut self.undo)
    }

    /// Same for the redo stack.
    pub(crate) fn pop_redo(&mut self) -> (Option<Vec<Op>>, usize) {
        pop_nonempty(&mut self.redo)
    }

    /// After an undo step applied as `applied`: its inverse is the top of the redo stack.
    pub(crate) fn undone(&mut self, applied: &[Op]) {
        self.redo.push_back(Entry { ops: invert(applied), last_ms: None });
        bound(&mut self.redo, self.config.max_steps);
        self.seal();
    }

    /// After a redo step applied as `applied`: its inverse is the top of the undo stack.
    pub(crate) fn redone(&mut self, applied: &[Op]) {
        self.undo.push_back(Entry { ops: invert(applied), last_ms: None });
        bound(&mut self.undo, self.config.max_steps);
        self.seal();
    }

    fn seal(&mut self) {
        self.open = false;
        self.group_started = false;
    }

    /// Forgets the undo steps (one no longer applied).
    pub(crate) fn clear_undo(&mut self) {
        self.undo.clear();
        self.seal();
    }

    /// Forgets the redo steps (one no longer applied).
    pub(crate) fn clear_redo(&mut self) {
        self.redo.clear();
        self.seal();
    }

    /// Forgets every step (the document was replaced).
    pub(crate) fn clear(&mut self) {
        self.undo.clear();
        self.redo.clear();
        self.seal();
    }

    /// Keeps both stacks applicable after the remote op `remote` (as applied to the local
    /// document): each entry, from the top down, is transformed over `remote` as carried to
    /// that entry's state, and `remote` is carried past it. The remote op wins every conflict
    /// (see the module docs).
    ///
    /// Cost: for an entry that touches nothing `remote` touches (the common case), one
    /// [`independent`] check per pair of ops and no copy.
    pub(crate) fn transform_over_remote(&mut self, remote: &[Op]) {
        if remote.is_empty() {
            return;
        }
        transform_stack(&mut self.undo, remote);
        transform_stack(&mut self.redo, remote);
    }
}

fn transform_stack(stack: &mut VecDeque<Entry>, remote: &[Op]) {
    let mut carried: Option<Vec<Op>> = None;
    for entry in stack.iter_mut().rev() {
        let r = carried.as_deref().unwrap_or(remote);
        if r.is_empty() {
            return;
        }
        if entry.ops.iter().all(|u| r.iter().all(|x| independent(u, x))) {
            continue;
        }
        let (ops, r2) = transform_entry(std::mem::take(&mut entry.ops), r);
        entry.ops = ops;
        carried = Some(r2);
    }
}

fn pop_nonempty(stack: &mut VecDeque<Entry>) -> (Option<Vec<Op>>, usize) {
    let mut skipped = 0;
    while let Some(e) = stack.pop_back() {
        if e.ops.is_empty() {
            skipped += 1;
        } else {
            return (Some(e.ops), skipped);
        }
    }
    (None, skipped)
}

fn bound(stack: &mut VecDeque<Entry>, max: usize) {
    while stack.len() > max {
        stack.pop_front();
    }
}
