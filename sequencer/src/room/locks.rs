//! The room's soft locks (PROTOCOL §7): which connection holds which entity, and until when.
//! Pure data with an injected clock; [`super::core::RoomCore`] owns it, checks who may lock
//! what, and broadcasts the table after every change.
//!
//! - A lock belongs to a **connection id** (`_pk`), not to a socket: a reconnect that takes over
//!   the presence of its connection id (the `_pk` takeover rule) keeps its locks, as it keeps its
//!   presence; a connection that leaves or is evicted loses them.
//! - Expiry runs on the room's monotonic clock (`expires_mono`); `expiresAt` on the wire is the
//!   same instant on the epoch clock. [`LockTable::next_expiry`] feeds the room's deadline.
//! - Locks are presence: nothing here is stored. With several nodes the table is room-wide: it
//!   also holds the locks of other nodes' connections, as their nodes publish them
//!   ([`LockTable::replace_remote`], [`super::remote`]). Two nodes can grant the same entity in
//!   the same instant, before either hears of the other; when the claims meet, the one taken
//!   first (`since`, then connection id) keeps it on every node, and the other holder sees the
//!   table without its lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use ot_core::protocol::{Lock, MAX_LOCKS_PER_CONNECTION};
use ot_core::EntityKind;

use super::remote::HeldLock;

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The holder's connection id.
    pub conn: Arc<str>,
    /// When it expires, room's monotonic milliseconds.
    pub expires_mono: u64,
    /// The same instant in milliseconds since the epoch (`expiresAt`).
    pub expires_epoch: u64,
    /// When the holder took it (refreshes keep it), ms since the epoch.
    pub since: u64,
}

impl Held {
    /// Whether this claim is older than `other`'s, so keeps the entity when both meet.
    fn first(&self, other: &Held) -> bool {
        (self.since, &self.conn) < (other.since, &other.conn)
    }
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
        let since = match self.held.get(&key) {
            Some(h) if h.conn != *conn => return Err(Refused::HeldBy(h.conn.clone())),
            Some(h) => h.since,
            None if self.count_of(conn) >= MAX_LOCKS_PER_CONNECTION => return Err(Refused::Limit),
            None => now_epoch,
        };
        let held = Held {
            conn: conn.clone(),
            expires_mono: now_mono.saturating_add(ttl_ms),
            expires_epoch: now_epoch.saturating_add(ttl_ms),
            since,
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

    /// The locks `conn` holds, as its node publishes them.
    pub fn held_by(&self, conn: &str) -> Vec<HeldLock> {
        self.held
            .iter()
            .filter(|(_, h)| &*h.conn == conn)
            .map(|((kind, id), h)| HeldLock {
                target: *kind,
                id: id.to_string(),
                expires_at: h.expires_epoch,
                since: h.since,
            })
            .collect()
    }

    /// Makes `locks` the whole set of locks of `conn`, a connection of another node, as its node
    /// last published them (`now_mono` and `now_epoch` are the same instant). Where another
    /// connection holds the same entity, the older claim keeps it. Returns whether the table
    /// changed, and the other holders that lost a lock to it.
    pub fn replace_remote(
        &mut self,
        conn: &Arc<str>,
        locks: &[HeldLock],
        now_mono: u64,
        now_epoch: u64,
    ) -> (bool, Vec<Arc<str>>) {
        let before = self.held_by(conn);
        self.release_conn(conn);
        let mut losers = Vec::new();
        for l in locks.iter().filter(|l| l.expires_at > now_epoch).take(MAX_LOCKS_PER_CONNECTION) {
            let held = Held {
                conn: conn.clone(),
                expires_mono: now_mono.saturating_add(l.expires_at - now_epoch),
                expires_epoch: l.expires_at,
                since: l.since,
            };
            let key = (l.target, Arc::from(l.id.as_str()));
            match self.held.get(&key) {
                Some(other) if !held.first(other) => continue,
                Some(other) => losers.push(other.conn.clone()),
                None => {}
            }
            self.held.insert(key, held);
        }
        let changed = !losers.is_empty() || self.held_by(conn) != before;
        (changed, losers)
    }

    /// The table as the wire shows it, with each holder's name and color from `who`.
    pub fn table<'a>(&self, who: impl Fn(&str) -> Option<(&'a str, &'a str)>) -> Vec<Lock> {
        self.held
            .iter()
            .map(|((kind, id), h)| {
                let (name, color) = match who(&h.conn) {
                    Some((name, color)) => (name.to_string(), color.to_string()),
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

    #[test]
    fn remote_claims_meet_and_the_first_taken_keeps_the_entity_everywhere() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        // `a` took c1 here at epoch 1000; `b`, on another node, took it at 990 and c2 at 1005.
        let mut here = LockTable::default();
        assert_eq!(here.take(EntityKind::Clip, "c1", &a, 10_000, 0, 1000), Ok(()));
        let theirs = [
            HeldLock { target: EntityKind::Clip, id: "c1".into(), expires_at: 11_000, since: 990 },
            HeldLock { target: EntityKind::Clip, id: "c2".into(), expires_at: 11_000, since: 1005 },
        ];
        let (changed, losers) = here.replace_remote(&b, &theirs, 10, 1010);
        assert!(changed);
        assert_eq!(losers, vec![a.clone()], "the later local claim lost c1");
        assert_eq!(here.holder(EntityKind::Clip, "c1").map(|h| h.conn.clone()), Some(b.clone()));
        assert_eq!(here.holder(EntityKind::Clip, "c1").map(|h| h.expires_mono), Some(10 + 11_000 - 1010));
        // Republishing the same set changes nothing; a later claim never displaces an earlier one.
        assert_eq!(here.replace_remote(&b, &theirs, 20, 1020), (false, Vec::new()));
        let late = [HeldLock { target: EntityKind::Clip, id: "c2".into(), expires_at: 11_000, since: 1015 }];
        assert_eq!(here.replace_remote(&a, &late, 30, 1030), (false, Vec::new()));
        assert_eq!(here.holder(EntityKind::Clip, "c2").map(|h| h.conn.clone()), Some(b.clone()));
        // An empty set releases everything of `b`; an expired claim is not taken.
        let expired = [HeldLock { target: EntityKind::Marker, id: "m".into(), expires_at: 1000, since: 0 }];
        assert_eq!(here.replace_remote(&b, &expired, 40, 1040), (true, Vec::new()));
        assert!(here.is_empty());
    }
}
