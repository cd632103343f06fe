//! Who is in a room: presence objects with distinct colors, roles, cursors waiting for the next
//! tick, and the `_pk` takeover rule. Pure data; [`super::core::RoomCore`] owns it.
//!
//! These are the connections this node serves. With several nodes serving one room, the others'
//! are in [`super::remote`], and [`super::core::RoomCore`] shows both as one room.

use std::sync::Arc;

use ot_core::protocol::{CursorPos, Presence};

use super::core::ConnKey;
use crate::auth::Role;

/// Distinct presence colors, handed out lowest-free-first.
pub const PALETTE: [&str; 12] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990",
    "#9a6324", "#800000",
];

/// One connection in the room.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection id (`_pk`).
    pub conn: Arc<str>,
    /// Tells this socket from an earlier one with the same `_pk`.
    pub session: u64,
    /// What the others see.
    pub presence: Presence,
    /// Editor or viewer.
    pub role: Role,
    /// When the connection id first joined, milliseconds since the epoch.
    pub joined_at: u64,
    /// When this socket joined (a takeover starts a new one), milliseconds since the epoch.
    pub session_at: u64,
    /// A cursor arrived since the last tick.
    pub cursor_dirty: bool,
    /// The version of the first op sequenced from this socket: whatever it sends from then on
    /// is new, not a resend from an earlier socket (a client keeps one op in flight), and an op
    /// of its connection id at or after this version came from this very socket.
    pub first_sequenced: Option<u64>,
    /// The version this socket's `init` reported: every version after it reaches the socket as
    /// a broadcast.
    pub init_version: u64,
}

impl Member {
    /// The connection and session this member is.
    pub fn key(&self) -> ConnKey {
        (self.conn.clone(), self.session)
    }
}

/// The room's members, in join order.
#[derive(Debug, Default)]
pub struct Members {
    list: Vec<Member>,
}

/// Why a join cannot take a place in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another account holds this connection id.
    PkTaken,
    /// The room, or this account's share of it, is full.
    Full,
}

impl Members {
    /// Every member.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.list.iter()
    }

    /// Every member, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.list.iter_mut()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The member with this connection id, any session.
    pub fn by_conn(&self, conn: &str) -> Option<&Member> {
        self.list.iter().find(|m| &*m.conn == conn)
    }

    /// The member with this connection id and session.
    pub fn get_mut(&mut self, conn: &str, session: u64) -> Option<&mut Member> {
        self.list.iter_mut().find(|m| m.session == session && &*m.conn == conn)
    }

    /// Whether this exact connection is a member.
    pub fn contains(&self, conn: &str, session: u64) -> bool {
        self.list.iter().any(|m| m.session == session && &*m.conn == conn)
    }

    /// Checks whether `user_id` may take connection id `conn`: only the account already holding
    /// a connection id may take it over (anyone sees it: it is the presence id), and a new place
    /// needs room in the room and in the account's share. Returns whether it replaces someone.
    pub fn admit(&self, conn: &str, user_id: &str, max_room: usize, max_account: usize) -> Result<bool, Refusal> {
        match self.by_conn(conn) {
            Some(m) if m.presence.user_id != user_id => Err(Refusal::PkTaken),
            Some(_) => Ok(true),
            None => {
                let same = self.list.iter().filter(|m| m.presence.user_id == user_id).count();
                if self.list.len() >= max_room || same >= max_account {
                    Err(Refusal::Full)
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// A color neither a member nor `taken` uses, while the palette has one.
    pub fn free_color(&self, taken: &[&str]) -> &'static str {
        PALETTE
            .iter()
            .find(|c| !self.list.iter().any(|m| m.presence.color == **c) && !taken.contains(c))
            .copied()
            .unwrap_or(PALETTE[(self.list.len() + taken.len()) % PALETTE.len()])
    }

    /// Adds a new member, or lets a new socket take over the presence of `conn` (same account,
    /// checked by [`Members::admit`]): then returns the replaced session, and no one sees a
    /// leave and a join. A new member takes `came_from`'s color and join time when it moved
    /// here from another node; else the first free color.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        conn: Arc<str>,
        session: u64,
        user_id: String,
        name: String,
        avatar: Option<String>,
        role: Role,
        now_ms: u64,
        came_from: Option<(&str, u64)>,
        taken: &[&str],
    ) -> Joined {
        if let Some(m) = self.list.iter_mut().find(|m| m.conn == conn) {
            let old = m.session;
            m.session = session;
            m.session_at = now_ms;
            m.first_sequenced = None;
            m.init_version = 0;
            m.role = role;
            m.presence.name = name;
            m.presence.avatar = avatar;
            m.presence.last_seen = now_ms;
            return Joined::Replaced { old_session: old };
        }
        let (color, joined_at) = match came_from {
            Some((color, joined_at)) => (color.to_string(), joined_at),
            None => (self.free_color(taken).to_string(), now_ms),
        };
        let presence = Presence { id: conn.to_string(), user_id, name, avatar, color, cursor: None, last_seen: now_ms };
        self.list.push(Member {
            conn,
            session,
            presence: presence.clone(),
            role,
            joined_at,
            session_at: now_ms,
            cursor_dirty: false,
            first_sequenced: None,
            init_version: 0,
        });
        Joined::New(presence)
    }

    /// Removes this exact connection, if it is a member.
    pub fn leave(&mut self, conn: &str, session: u64) -> Option<Member> {
        let i = self.list.iter().position(|m| m.session == session && &*m.conn == conn)?;
        Some(self.list.remove(i))
    }

    /// Records a cursor; returns whether it is the first since the last tick.
    pub fn cursor(&mut self, conn: &str, session: u64, pos: CursorPos) -> bool {
        let Some(m) = self.get_mut(conn, session) else { return false };
        m.presence.cursor = Some(pos);
        let first = !m.cursor_dirty;
        m.cursor_dirty = true;
        first
    }

    /// The members whose cursor moved since the last call, clearing the marks.
    pub fn take_moved_cursors(&mut self) -> Vec<(Arc<str>, CursorPos)> {
        let mut out = Vec::new();
        for m in &mut self.list {
            if std::mem::take(&mut m.cursor_dirty) {
                if let Some(c) = &m.presence.cursor {
                    out.push((m.conn.clone(), c.clone()));
                }
            }
        }
        out
    }

    /// Every presence, for `init`.
    pub fn presences(&self) -> Vec<Presence> {
        self.list.iter().map(|m| m.presence.clone()).collect()
    }

    /// Removes everyone, returning them.
    pub fn drain(&mut self) -> Vec<Member> {
        std::mem::take(&mut self.list)
    }
}

/// What [`Members::join`] did.
#[derive(Debug)]
pub enum Joined {
    /// A new presence, to announce.
    New(Presence),
    /// The same `_pk` again: the new socket took over from this session.
    Replaced {
        /// The session that was replaced.
        old_session: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colors_are_distinct_and_reused_after_a_leave() {
        let mut m = Members::default();
        for i in 0..3 {
            m.join(Arc::from(format!("c{i}")), 1, format!("u{i}"), "n".into(), None, Role::Editor, 0, None, &[]);
        }
        let colors: Vec<String> = m.iter().map(|x| x.presence.color.clone()).collect();
        assert_eq!(colors, [PALETTE[0], PALETTE[1], PALETTE[2]]);
        m.leave("c1", 1);
        m.join(Arc::from("c9"), 1, "u9".into(), "n".into(), None, Role::Editor, 0, None, &[]);
        assert_eq!(m.by_conn("c9").map(|x| x.presence.color.as_str()), Some(PALETTE[1]));
        m.join(Arc::from("c8"), 1, "u8".into(), "n".into(), None, Role::Editor, 0, None, &[PALETTE[3]]);
        assert_eq!(m.by_conn("c8").map(|x| x.presence.color.as_str()), Some(PALETTE[4]), "others' colors are taken");
    }

    #[test]
    fn only_the_same_account_takes_a_connection_id_and_accounts_have_a_share() {
        let mut m = Members::default();
        m.join(Arc::from("p"), 1, "ana".into(), "Ana".into(), None, Role::Editor, 0, None, &[]);
        assert_eq!(m.admit("p", "eve", 10, 10), Err(Refusal::PkTaken));
        assert_eq!(m.admit("p", "ana", 10, 10), Ok(true));
        assert_eq!(m.admit("q", "ana", 10, 1), Err(Refusal::Full));
        assert_eq!(m.admit("q", "ben", 1, 10), Err(Refusal::Full));
        assert_eq!(m.admit("q", "ben", 10, 10), Ok(false));
    }
}
