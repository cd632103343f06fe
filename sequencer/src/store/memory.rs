//! The in-process store (`--memory`): every room's log and snapshots in a map behind one mutex.
//!
//! Nothing reaches a disk and nothing is shared with another process: the log lives as long as
//! the process (PROTOCOL §4). Calls never block on IO ([`Store::blocking`] is false), so rooms
//! read it inline; writes still go through the [`Persister`](super::Persister)'s writer like
//! every other store's, so a room on this store runs the same pending → durable path as one on
//! SQLite or PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use ot_core::protocol::TransportState;
use ot_core::sync::{OpIdIndex, Sequenced};
use ot_core::Document;
use serde_json::Value;

use super::{transport_newer, Loaded, RoomAppend, Store, StoreError};

#[derive(Default)]
struct MemRoom {
    /// Version `v` at index `v - 1`.
    ops: Vec<Sequenced>,
    /// Copies of the room's persistent document: they share its unchanged parts, and are
    /// turned into state JSON only when read (a room's load, or a stale op older than its window).
    snapshots: BTreeMap<u64, Document>,
    /// The ops with an op id, by (account, op id); the ids stay in `ops`.
    op_ids: OpIdIndex,
    transport: Option<TransportState>,
}

/// Version `v` of a room's `ops`.
fn op_at(ops: &[Sequenced], v: u64) -> Option<&Sequenced> {
    ops.get((v as usize).checked_sub(1)?)
}

/// Everything in process memory (`--memory`): the full log lives as long as the process.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, MemRoom>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, MemRoom>) -> R) -> R {
        // A poisoned lock means a panic mid-update elsewhere; the maps stay consistent because
        // every update below checks before it mutates, so keep serving.
        let mut g = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl Store for MemoryStore {
    fn blocking(&self) -> bool {
        false
    }

    fn shared(&self) -> bool {
        false
    }

    fn load(&self, room: &str) -> Result<Loaded, StoreError> {
        Ok(self.with(|rooms| match rooms.get(room) {
            None => Loaded::default(),
            Some(r) => {
                let snapshot = r.snapshots.iter().next_back().map(|(v, s)| (*v, s.to_state_value(*v)));
                let from = snapshot.as_ref().map_or(0, |(v, _)| *v) as usize;
                let ops = r.ops[from.min(r.ops.len())..].to_vec();
                Loaded { snapshot, ops, transport: r.transport.clone() }
            }
        }))
    }

    fn append(&self, groups: &[RoomAppend]) -> Result<(), StoreError> {
        self.with(|rooms| {
            for g in groups {
                let first = rooms.get(&*g.room).map_or(0, |r| r.ops.len() as u64) + 1;
                for (next, e) in (first..).zip(&g.entries) {
                    if e.msg.version != next {
                        return Err(StoreError::Conflict { room: g.room.to_string(), version: e.msg.version });
                    }
                }
            }
            for g in groups {
                if !rooms.contains_key(&*g.room) {
                    rooms.insert(g.room.to_string(), MemRoom::default());
                }
                let Some(r) = rooms.get_mut(&*g.room) else { continue };
                for e in &g.entries {
                    if let Some(s) = &e.snapshot {
                        r.snapshots.insert(e.msg.version, s.clone());
                    }
                    // An id stored again (by another node's lost race) stands for its newest op.
                    let ops = &r.ops;
                    r.op_ids.record(&e.msg, |v| op_at(ops, v));
                    r.ops.push(e.msg.clone());
                }
            }
            Ok(())
        })
    }

    fn ops(&self, room: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Sequenced>, StoreError> {
        Ok(self.with(|rooms| {
            let Some(r) = rooms.get(room) else { return Vec::new() };
            let to = (to as usize).min(r.ops.len());
            let from = (from as usize).min(to);
            r.ops[from..to].iter().take(limit).cloned().collect()
        }))
    }

    fn snapshot_at_or_before(&self, room: &str, version: u64) -> Result<Option<(u64, Value)>, StoreError> {
        Ok(self.with(|rooms| {
            let r = rooms.get(room)?;
            r.snapshots.range(..=version).next_back().map(|(v, s)| (*v, s.to_state_value(*v)))
        }))
    }

    fn find_op(&self, room: &str, account: Option<&str>, op_id: &str) -> Result<Option<Sequenced>, StoreError> {
        Ok(self.with(|rooms| {
            let r = rooms.get(room)?;
            r.op_ids.find(account, op_id, |v| op_at(&r.ops, v)).cloned()
        }))
    }

    fn transport(&self, room: &str) -> Result<Option<TransportState>, StoreError> {
        Ok(self.with(|rooms| rooms.get(room).and_then(|r| r.transport.clone())))
    }

    fn save_transport(&self, room: &str, transport: &TransportState) -> Result<(), StoreError> {
        self.with(|rooms| {
            let r = rooms.entry(room.to_string()).or_default();
            if r.transport.as_ref().map_or(true, |old| transport_newer(transport, old)) {
                r.transport = Some(transport.clone());
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::tests::msg;
    use crate::store::Entry;

    /// Version `v` with op id `id` under `account`.
    fn op(v: u64, id: &str, account: Option<&str>) -> Entry {
        let mut m = (*msg(v, id)).clone();
        m.account = account.map(Arc::from);
        Entry { msg: Arc::new(m), snapshot: None, by_id: true }
    }

    #[test]
    fn every_op_id_is_found_under_its_own_account_through_the_index_growth() {
        let store = MemoryStore::new();
        let room: Arc<str> = Arc::from("r");
        let accounts = [Some("a"), Some("b"), None];
        for v in 1..=3000u64 {
            let entry = op(v, &format!("o{}", v / 3), accounts[(v % 3) as usize]);
            store.append(&[RoomAppend { room: room.clone(), entries: vec![entry] }]).unwrap();
        }
        for v in 1..=3000u64 {
            let (id, account) = (format!("o{}", v / 3), accounts[(v % 3) as usize]);
            let found = store.find_op("r", account, &id).unwrap().map(|m| m.version);
            assert_eq!(found, Some(v), "{account:?} {id}");
        }
        assert!(store.find_op("r", Some("c"), "o1").unwrap().is_none());
        assert!(store.find_op("r", Some("a"), "o9999").unwrap().is_none());
        assert!(store.find_op("other", Some("a"), "o1").unwrap().is_none());
        // An id stored again maps to its newest op.
        store.append(&[RoomAppend { room, entries: vec![op(3001, "o1", Some("b"))] }]).unwrap();
        assert_eq!(store.find_op("r", Some("b"), "o1").unwrap().map(|m| m.version), Some(3001));
        assert_eq!(store.find_op("r", Some("a"), "o1").unwrap().map(|m| m.version), Some(3));
    }
}
