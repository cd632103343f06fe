//! The part of [`super::core::RoomCore`] that only a room on a store shared by several nodes
//! (PostgreSQL, optional Redis bus) uses.
//!
//! - **Lost race.** The store refuses an append whose version another node took
//!   ([`crate::store::StoreError::Conflict`]); the writer then stores nothing more queued in
//!   that durability epoch. The core drops its pending (never acknowledged) ops, asks for a
//!   rebuild from the store, broadcasts the ops it missed, and submits the dropped ops'
//!   original submits again, in order, so they rebase over the missed ops; appends go on in a
//!   new epoch. More than [`MAX_RESYNCS`] lost races in a row fail the room (close 1011,
//!   clients reconnect).
//! - **Other nodes' ops.** Each durable op is published. An op from the bus that is exactly the
//!   next version, while nothing of ours is pending, is replayed and broadcast; a gap makes the
//!   room read the ops it lacks from the store. With or without a bus, a room with members
//!   polls the store every `cluster_poll`, so a lost bus message costs latency, never an op.
//! - **A client ahead of this node.** A client that failed over from a node further on joins
//!   with a `since` this room has not reached. Its join waits while the room reads the store up
//!   to it, and then gets the catch-up it asked for: the full state at an older version would
//!   take the client back in time and drop its unacknowledged ops, and their resend (with a
//!   `baseVersion` from the other node) would be refused as `version_ahead`. Only a `since`
//!   the store does not hold either (another history: the store was replaced) gets the state.

use std::collections::HashMap;

use ot_core::sync::Submit;

use super::core::{ConnKey, JoinReq};

/// Lost races in a row before the room gives up.
pub const MAX_RESYNCS: u32 = 16;

/// The room's multi-node bookkeeping.
#[derive(Debug)]
pub struct Cluster {
    /// The submit behind each pending version, to submit again after a lost race.
    pub submits: HashMap<u64, (ConnKey, Submit)>,
    /// Lost races in a row.
    pub resyncs: u32,
    /// A read of other nodes' ops is under way.
    pub fetching: bool,
    /// When to poll the store next (monotonic ms).
    pub next_poll: u64,
    /// Joins whose `since` is ahead of the durable version, waiting for the store's ops, each
    /// with the number of reads of other nodes' ops issued before it came.
    pub ahead: Vec<(JoinReq, u64)>,
    /// Reads of other nodes' ops issued so far.
    pub fetches: u64,
}

impl Cluster {
    /// Nothing pending; the first poll at `next_poll`.
    pub fn new(next_poll: u64) -> Cluster {
        Cluster { submits: HashMap::new(), resyncs: 0, fetching: false, next_poll, ahead: Vec::new(), fetches: 0 }
    }
}
