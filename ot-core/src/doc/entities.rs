//! The document's entity map: a persistent hash map from id to entity whose entries are one
//! pointer each.
//!
//! A persistent map keyed by the id itself holds two pointers per entry (the id's and the
//! entity's), and every write copies the nodes on its path from the root: each of a copied
//! node's 32 entries then costs two reference-count updates, and so does each entry of a copy
//! when the history window releases it. Here an entry is the id's 64-bit hash (a plain number)
//! and one `Arc` to a slot that holds the id and the entity, which halves both.
//!
//! The hash is keyed at random once per process, so ids chosen by a client cannot be made to
//! collide on purpose. Two ids with the same 64-bit hash still work: they share an entry whose
//! slots form a chain.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use imbl::shared_ptr::DefaultSharedPtr;
use imbl::GenericHashMap;

use super::{Entity, Id};

/// The 64-bit hash of an id: the map's key.
fn key_of(id: &str) -> u64 {
    #[cfg(test)]
    if tests::COLLIDE.with(std::cell::Cell::get) {
        return 7;
    }
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(id)
}

/// Hashes a key (already a hash) to itself.
#[derive(Clone, Copy, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here (`write_u64`); this is for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One entity with its id, and the next slot of the same key (two ids with one hash).
#[derive(Clone)]
struct Slot {
    id: Id,
    entity: Entity,
    next: Option<Arc<Slot>>,
}

impl Slot {
    /// This slot and the ones chained after it.
    fn chain(&self) -> impl Iterator<Item = &Slot> {
        std::iter::successors(Some(self), |s| s.next.as_deref())
    }
}

/// Entities by id; cloning is O(1) and a write copies only the nodes on its path.
#[derive(Clone, Default)]
pub(crate) struct EntityMap {
    map: GenericHashMap<u64, Arc<Slot>, BuildHasherDefault<KeyHasher>, DefaultSharedPtr>,
    len: usize,
}

impl EntityMap {
    /// The number of entities.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entity with this id. One hash of the id and one map lookup.
    pub(crate) fn get(&self, id: &str) -> Option<&Entity> {
        let head = self.map.get(&key_of(id))?;
        head.chain().find(|s| &*s.id == id).map(|s| &s.entity)
    }

    /// Whether an entity has this id.
    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// The entity with this id, for writing: copies the map's path to it and the entity itself
    /// where they are shared. Copies nothing when there is no such entity.
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Entity> {
        let key = key_of(id);
        let depth = self.map.get(&key)?.chain().position(|s| &*s.id == id)?;
        let mut slot = Arc::make_mut(self.map.get_mut(&key)?);
        for _ in 0..depth {
            slot = Arc::make_mut(slot.next.as_mut()?);
        }
        Some(&mut slot.entity)
    }

    /// Adds `entity` under `id`, replacing an entity of that id if there is one.
    pub(crate) fn insert(&mut self, id: Id, entity: Entity) {
        let key = key_of(&id);
        if self.map.get(&key).is_some_and(|head| head.chain().any(|s| s.id == id)) {
            self.remove(&id);
        }
        let next = self.map.get(&key).cloned();
        self.map.insert(key, Arc::new(Slot { id, entity, next }));
        self.len += 1;
    }

    /// Removes the entity with this id; whether there was one.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let key = key_of(id);
        let Some(head) = self.map.get(&key) else { return false };
        if !head.chain().any(|s| &*s.id == id) {
            return false;
        }
        // The chain without `id`, rebuilt from its end (a chain is one slot but for a 64-bit
        // hash collision).
        let rest: Vec<&Slot> = head.chain().filter(|s| &*s.id != id).collect();
        let mut next: Option<Arc<Slot>> = None;
        for s in rest.into_iter().rev() {
            next = Some(Arc::new(Slot { id: s.id.clone(), entity: s.entity.clone(), next }));
        }
        match next {
            Some(chain) => self.map.insert(key, chain),
            None => self.map.remove(&key),
        };
        self.len -= 1;
        true
    }

    /// Every entity with its id, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Id, &Entity)> {
        self.map.values().flat_map(|head| head.chain().map(|s| (&s.id, &s.entity)))
    }
}

impl PartialEq for EntityMap {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(id, e)| other.get(id) == Some(e))
    }
}

impl fmt::Debug for EntityMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::doc::{EntityKind, IdList, PropMap};

    thread_local! {
        /// Makes every id hash alike on this thread, so that every entity shares one chain.
        pub(crate) static COLLIDE: Cell<bool> = const { Cell::new(false) };
    }

    fn clip(gain: i64) -> Entity {
        let props = serde_json::json!({ "gain": gain });
        let props = props.as_object().cloned().unwrap_or_default();
        Entity { kind: EntityKind::Clip, parent: None, props: PropMap::from(props), clips: IdList::new() }
    }

    fn gain(e: Option<&Entity>) -> Option<i64> {
        e.and_then(|e| e.props.get("gain")).and_then(serde_json::Value::as_i64)
    }

    /// Inserts, writes, removes and compares, checking every step against a std map; with
    /// `collide`, every id shares one chain.
    fn exercise(collide: bool) {
        COLLIDE.with(|c| c.set(collide));
        let mut map = EntityMap::default();
        let mut reference = std::collections::HashMap::new();
        let mut kept = Vec::new();
        for step in 0..400i64 {
            let id = Id::from(format!("e{}", (step * 7) % 53));
            match step % 5 {
                0 | 1 => {
                    map.insert(id.clone(), clip(step));
                    reference.insert(id, step);
                }
                2 => {
                    if let Some(e) = map.get_mut(&id) {
                        e.props = clip(step).props;
                        reference.insert(id, step);
                    }
                }
                3 => assert_eq!(map.remove(&id), reference.remove(&id).is_some()),
                _ => kept.push((map.clone(), reference.clone())),
            }
            assert_eq!(map.len(), reference.len());
            assert_eq!(map.iter().count(), reference.len());
            for (id, g) in &reference {
                assert_eq!(gain(map.get(id)), Some(*g), "step {step}: {id}");
            }
            assert!(!map.contains_key("absent"));
            assert!(map.get_mut("absent").is_none());
        }
        // Clones taken along the way never changed.
        for (map, reference) in &kept {
            assert_eq!(map.len(), reference.len());
            for (id, g) in reference {
                assert_eq!(gain(map.get(id)), Some(*g));
            }
        }
        let (a, _) = &kept[kept.len() - 1];
        assert_eq!(a, &a.clone());
        assert_ne!(a, &EntityMap::default());
        COLLIDE.with(|c| c.set(false));
    }

    #[test]
    fn the_map_agrees_with_a_std_map() {
        exercise(false);
    }

    #[test]
    fn ids_with_one_hash_share_a_chain_and_stay_apart() {
        exercise(true);
    }
}
