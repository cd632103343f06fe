//! The room's soft locks (PROTOCOL §7): which connection holds which entity, and until when.
//! Pure data with an injected clock; [`super::core::RoomCore`] owns it, checks who may lock
//! what, and broadcasts the table after every change.
//!
//! - A lock belongs to a **connection id** (`_pk`), not to a socket: a reconnect that takes over
//!   the presence of its connection id (the `_pk` takeover rule) keeps its locks, as it keeps its
//!   presence; a connection that leaves or is evicted loses them.
//! - Expiry runs on the room's monotonic clock (`expires_mono`); `expiresAt` on the wire is the
//!   same instant on the epoch clock. [`LockTable::next_expiry`] feeds the room's deadline.
//! - Locks are presence: nothing here is stored. With several nodes the table is per node, like
//!   presence today (see [`super::presence`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use ot_core::protocol::{Lock, MAX_LOCKS_PER_CONNECTION};
use ot_core::EntityKind;

use super::presence::Members;

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The holder's connection id.
    pub conn: Arc<str>,
    /// When it expires, room's monotonic milliseconds.
    pub expires_mono: u64,
    /// The same instant in milliseconds since the epoch (`expiresAt`).
    pub expires_epoch: u64,
}

/// Why [`LockTable::take`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another connection holds it.
    HeldBy(Arc<str>),
    /// The connection holds [`MAX_LOCKS_PER_CONNECTION`] locks already.
    Limit,
}

/// The lock table, ordered by target and id (so `locks` messages list them in a stable order).
#[derive(Debug, Default)]
pub struct LockTable {
    held: BTreeMap<(EntityKind, Arc<str>), Held>,
}

impl LockTable {
    /// Locks held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is locked.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Locks `conn` holds.
    pub fn count_of(&self, conn: &str) -> usize {
        self.held.values().filter(|h| &*h.conn == conn).count()
    }

    /// The holder of the lock on `kind` `id`, if any.
    pub fn holder(&self, kind: EntityKind, id: &str) -> Option<&Held> {
        self.held.get(&(kind, Arc::from(id)))
    }

    /// Takes the lock on `kind` `id` for `conn`, or refreshes it if `conn` holds it already: it
    /// then expires `ttl_ms` after `now` (`now_mono` and `now_epoch` are the same instant on the
    /// two clocks).
    pub fn take(
        &mut self,
        kind: EntityKind,
        id: &str,
        conn: &Arc<str>,
        ttl_ms: u64,
        now_mono: u64,
        now_epoch: u64,
    ) -> Result<(), Refused> {
        let key = (kind, Arc::from(id));
        match self.held.get(&key) {
            Some(h) if h.conn != *conn => return Err(Refused::HeldBy(h.conn.clone())),
            Some(_) => {}
            None if self.count_of(conn) >= MAX_LOCKS_PER_CONNECTION => return Err(Refused::Limit),
            None => {}
        }
        let held = Held {
            conn: conn.clone(),
            expires_mono: now_mono.saturating_add(ttl_ms),
            expires_epoch: now_epoch.saturating_add(ttl_ms),
        };
        self.held.insert(key, held);
        Ok(())
    }

    /// Releases `kind` `id` if `conn` holds it; returns whether it did.
    pub fn release(&mut self, kind: EntityKind, id: &str, conn: &str) -> bool {
        let key = (kind, Arc::from(id));
        if self.held.get(&key).is_some_and(|h| &*h.conn == conn) {
            self.held.remove(&key);
            return true;
        }
        false
    }

    /// Releases whatever lock there is on `kind` `id` (the entity was deleted).
    pub fn release_entity(&mut self, kind: EntityKind, id: &str) -> bool {
        self.held.remove(&(kind, Arc::from(id))).is_some()
    }

    /// Releases every lock `f` says no to; returns how many.
    pub fn retain(&mut self, mut f: impl FnMut(EntityKind, &str, &Held) -> bool) -> usize {
        let before = self.held.len();
        self.held.retain(|(kind, id), h| f(*kind, id, h));
        before - self.held.len()
    }

    /// Releases every lock of `conn` (it left or was evicted); returns how many.
    pub fn release_conn(&mut self, conn: &str) -> usize {
        self.retain(|_, _, h| &*h.conn != conn)
    }

    /// Releases every lock expired at `now_mono`; returns how many.
    pub fn expire(&mut self, now_mono: u64) -> usize {
        self.retain(|_, _, h| h.expires_mono > now_mono)
    }

    /// When the next lock expires (monotonic ms).
    pub fn next_expiry(&self) -> Option<u64> {
        self.held.values().map(|h| h.expires_mono).min()
    }

    /// Drops every lock.
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// The table as the wire shows it, with each holder's name and color from `members`.
    pub fn table(&self, members: &Members) -> Vec<Lock> {
        self.held
            .iter()
            .map(|((kind, id), h)| {
                let (name, color) = match members.by_conn(&h.conn) {
                    Some(m) => (m.presence.name.clone(), m.presence.color.clone()),
                    // Never the case: a holder that leaves loses its locks in the same turn.
                    None => (h.conn.to_string(), String::new()),
                };
                Lock {
                    target: *kind,
                    id: id.to_string(),
                    user_id: h.conn.to_string(),
                    name,
                    color,
                    expires_at: h.expires_epoch,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_refresh_conflict_limit_expiry() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut t = LockTable::default();
        assert_eq!(t.take(EntityKind::Clip, "c1", &a, 100, 0, 1000), Ok(()));
        assert_eq!(t.take(EntityKind::Clip, "c1", &b, 100, 0, 1000), Err(Refused::HeldBy(a.clone())));
        assert_eq!(t.take(EntityKind::Clip, "c1", &a, 100, 50, 1050), Ok(()), "a refresh");
        assert_eq!(t.holder(EntityKind::Clip, "c1").map(|h| h.expires_epoch), Some(1150));
        assert_eq!(t.next_expiry(), Some(150));
        for i in 1..MAX_LOCKS_PER_CONNECTION {
            assert_eq!(t.take(EntityKind::Marker, &format!("m{i}"), &a, 1000, 0, 0), Ok(()));
        }
        assert_eq!(t.take(EntityKind::Marker, "one-more", &a, 1000, 0, 0), Err(Refused::Limit));
        assert_eq!(t.take(EntityKind::Clip, "c1", &a, 100, 60, 1060), Ok(()), "a refresh past the limit");
        assert!(!t.release(EntityKind::Clip, "c1", "b"), "only the holder releases");
        assert_eq!(t.expire(160), 1);
        assert_eq!(t.release_conn("a"), MAX_LOCKS_PER_CONNECTION - 1);
        assert!(t.is_empty());
    }
}
