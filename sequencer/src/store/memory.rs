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
use ot_core::sync::Sequenced;
use serde_json::Value;

use super::{account_key, transport_newer, Loaded, RoomAppend, Store, StoreError};

#[derive(Default)]
struct MemRoom {
    ops: Vec<Sequenced>,
    snapshots: BTreeMap<u64, Value>,
    /// (account, op id) → version.
    op_ids: HashMap<(String, String), u64>,
    transport: Option<TransportState>,
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
                let snapshot = r.snapshots.iter().next_back().map(|(v, s)| (*v, s.clone()));
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
                let r = rooms.entry(g.room.to_string()).or_default();
                for e in &g.entries {
                    if let Some(id) = &e.msg.op_id {
                        let account = account_key(e.msg.account.as_deref()).to_string();
                        r.op_ids.insert((account, id.clone()), e.msg.version);
                    }
                    if let Some(s) = &e.snapshot {
                        r.snapshots.insert(e.msg.version, s.clone());
                    }
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
            rooms.get(room).and_then(|r| r.snapshots.range(..=version).next_back().map(|(v, s)| (*v, s.clone())))
        }))
    }

    fn find_op(&self, room: &str, account: Option<&str>, op_id: &str) -> Result<Option<Sequenced>, StoreError> {
        Ok(self.with(|rooms| {
            let r = rooms.get(room)?;
            let v = *r.op_ids.get(&(account_key(account).to_string(), op_id.to_string()))?;
            r.ops.get((v as usize).checked_sub(1)?).cloned()
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
