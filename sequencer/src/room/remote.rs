//! Room-wide presence: what one node tells the others about the connections it serves, and
//! the people of other nodes as this node sees them.
//!
//! Each node publishes [`NodeEvent`]s on the bus (`{prefix}presence:{room}`): a connection's
//! whole state ([`MemberState`]: presence, session start and soft locks) when it joins, takes
//! over, or its locks change; its cursor at each tick; its leave; and transport changes. The
//! same [`MemberState`] is kept in Redis under a key per connection with a TTL, refreshed by
//! the room's heartbeat, so a node that loads a room reads who is there, and a node that dies
//! (SIGKILL: no leave is ever sent) drops out of everyone's view when its keys' `expires_at`
//! passes.
//!
//! [`Remote`] is pure data on the room's clock; [`super::core::RoomCore`] decides what a change
//! means for its own members (a `user_joined`, a `user_left`, a takeover, a new lock table).
//!
//! - A connection id (`_pk`) is one presence room-wide. When a client moves to another node
//!   with the same `_pk`, the new node's [`MemberState`] replaces the old one in place: nobody
//!   sees a leave and a join. Of two nodes that both claim a connection, the later session
//!   (`session_at`, then node id) wins, so both settle on the same one.
//! - A leave is conditional: it removes the connection only where it is still known on the
//!   node that sent it (a late leave of the old node never removes the new session).

use std::collections::HashMap;
use std::sync::Arc;

use ot_core::protocol::{CursorPos, Presence, TransportState};
use ot_core::EntityKind;
use serde::{Deserialize, Serialize};

/// One soft lock held by a connection of another node (the holder is the member it is in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldLock {
    /// What is locked.
    pub target: EntityKind,
    /// Its id.
    pub id: String,
    /// When it expires, ms since the epoch.
    pub expires_at: u64,
    /// When its holder first took it, ms since the epoch: of two connections that took the
    /// same entity on two nodes at once, the earlier keeps it.
    pub since: u64,
}

/// A connection's state as its node publishes it and keeps it in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberState {
    /// The node serving it. First, so a stored value can be matched by prefix.
    pub node: String,
    /// What the others see (`id` is the connection id).
    pub presence: Presence,
    /// When the connection first joined the room, ms since the epoch (`joinedAt`).
    pub joined_at: u64,
    /// When this socket joined, ms since the epoch: the later of two claims wins.
    pub session_at: u64,
    /// Until when this state holds unless refreshed, ms since the epoch.
    pub expires_at: u64,
    /// Its soft locks.
    #[serde(default)]
    pub locks: Vec<HeldLock>,
}

impl MemberState {
    /// Whether this claim on the connection id beats `other`'s (the later session wins).
    pub fn beats(&self, other_session_at: u64, other_node: &str) -> bool {
        (self.session_at, self.node.as_str()) > (other_session_at, other_node)
    }
}

/// What a node tells the other nodes of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A connection is here, with this state (a join, a takeover, a change of its locks).
    Member(MemberState),
    /// A connection of `node` left.
    Left {
        /// The node it was on.
        node: String,
        /// Its connection id.
        conn: String,
    },
    /// Cursors of `node`'s connections moved (one tick's worth).
    Cursors {
        /// The node.
        node: String,
        /// Connection id and cursor, for each that moved.
        moved: Vec<(String, CursorPos)>,
    },
    /// The transport changed on `node`.
    Transport {
        /// The node.
        node: String,
        /// The new transport.
        transport: TransportState,
    },
}

impl NodeEvent {
    /// The node that sent it.
    pub fn node(&self) -> &str {
        match self {
            NodeEvent::Member(m) => &m.node,
            NodeEvent::Left { node, .. } | NodeEvent::Cursors { node, .. } | NodeEvent::Transport { node, .. } => node,
        }
    }
}

/// A person on another node.
#[derive(Debug, Clone)]
pub struct RemoteMember {
    /// The state last heard.
    pub state: MemberState,
    /// When it expires on the room's monotonic clock.
    pub expires_mono: u64,
    /// When it was last heard of (monotonic): a Redis snapshot requested before that does not
    /// remove it.
    pub seen_mono: u64,
}

/// The people of other nodes, by connection id.
#[derive(Debug, Default)]
pub struct Remote {
    members: HashMap<Arc<str>, RemoteMember>,
}

/// What [`Remote::upsert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Upserted {
    /// Someone new.
    New,
    /// Known already: updated in place.
    Updated,
    /// An older claim than the one known: ignored.
    Stale,
}

impl Remote {
    /// Everyone, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &RemoteMember)> {
        self.members.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is on another node.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The person with this connection id.
    pub fn get(&self, conn: &str) -> Option<&RemoteMember> {
        self.members.get(conn)
    }

    /// Records `state`, heard at `now_mono` / `now_epoch`.
    pub fn upsert(&mut self, state: MemberState, now_mono: u64, now_epoch: u64) -> Upserted {
        let expires_mono = now_mono.saturating_add(state.expires_at.saturating_sub(now_epoch));
        let conn: Arc<str> = Arc::from(state.presence.id.as_str());
        match self.members.get_mut(&conn) {
            Some(m) if m.state.node != state.node && !state.beats(m.state.session_at, &m.state.node) => Upserted::Stale,
            Some(m) => {
                *m = RemoteMember { state, expires_mono, seen_mono: now_mono };
                Upserted::Updated
            }
            None => {
                self.members.insert(conn, RemoteMember { state, expires_mono, seen_mono: now_mono });
                Upserted::New
            }
        }
    }

    /// Removes `conn` if `node` is where it is known to be (`None`: wherever).
    pub fn remove(&mut self, conn: &str, node: Option<&str>) -> Option<RemoteMember> {
        if node.is_some_and(|n| self.members.get(conn).is_some_and(|m| m.state.node != n)) {
            return None;
        }
        self.members.remove(conn)
    }

    /// Records a cursor of `conn` if it is on `node`; returns whether it was.
    pub fn cursor(&mut self, node: &str, conn: &str, pos: CursorPos) -> bool {
        match self.members.get_mut(conn) {
            Some(m) if m.state.node == node => {
                m.state.presence.cursor = Some(pos);
                true
            }
            _ => false,
        }
    }

    /// Removes and returns everyone expired at `now_mono`.
    pub fn expire(&mut self, now_mono: u64) -> Vec<Arc<str>> {
        let gone: Vec<Arc<str>> =
            self.members.iter().filter(|(_, m)| m.expires_mono <= now_mono).map(|(c, _)| c.clone()).collect();
        for c in &gone {
            self.members.remove(c);
        }
        gone
    }

    /// Those not heard of since `requested_mono` and not in `present`: a Redis snapshot taken
    /// after that instant no longer has them.
    pub fn absent_from(&self, present: &[&str], requested_mono: u64) -> Vec<Arc<str>> {
        self.members
            .iter()
            .filter(|(c, m)| m.seen_mono < requested_mono && !present.contains(&&***c))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// When the next person expires (monotonic ms).
    pub fn next_expiry(&self) -> Option<u64> {
        self.members.values().map(|m| m.expires_mono).min()
    }

    /// Removes everyone.
    pub fn clear(&mut self) {
        self.members.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(node: &str, conn: &str, session_at: u64, expires_at: u64) -> MemberState {
        MemberState {
            node: node.into(),
            presence: Presence {
                id: conn.into(),
                user_id: "u".into(),
                name: "n".into(),
                avatar: None,
                color: "#000".into(),
                cursor: None,
                last_seen: 0,
            },
            joined_at: 0,
            session_at,
            expires_at,
            locks: Vec::new(),
        }
    }

    #[test]
    fn a_later_session_takes_over_and_an_earlier_one_is_stale() {
        let mut r = Remote::default();
        assert_eq!(r.upsert(state("a", "p", 10, 15_000), 0, 0), Upserted::New);
        assert_eq!(r.upsert(state("b", "p", 20, 15_000), 1, 1), Upserted::Updated);
        assert_eq!(r.upsert(state("a", "p", 10, 16_000), 2, 2), Upserted::Stale);
        assert_eq!(r.get("p").map(|m| m.state.node.as_str()), Some("b"));
        assert!(r.remove("p", Some("a")).is_none(), "a late leave of the old node");
        assert!(r.remove("p", Some("b")).is_some());
    }

    #[test]
    fn expiry_follows_the_epoch_deadline_and_snapshots_respect_sightings() {
        let mut r = Remote::default();
        r.upsert(state("a", "p", 1, 1_000 + 15_000), 100, 1_000);
        r.upsert(state("a", "q", 1, 1_000 + 5_000), 100, 1_000);
        assert_eq!(r.next_expiry(), Some(5_100));
        assert_eq!(r.absent_from(&["p"], 50), Vec::<Arc<str>>::new(), "heard of after the request");
        assert_eq!(r.absent_from(&["p"], 200), vec![Arc::<str>::from("q")]);
        assert_eq!(r.expire(5_100), vec![Arc::<str>::from("q")]);
        assert_eq!(r.len(), 1);
    }
}
