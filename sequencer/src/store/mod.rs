//! Storage behind a trait: the op log keyed by (room, version) with each op's `opId` and
//! account, and snapshots every N ops.
//!
//! This module holds what every backend shares: the [`Store`] trait, [`StoreError`], the
//! records ([`Entry`], [`RoomAppend`], [`Loaded`]), rebuilding a room from what is stored
//! ([`restore`], [`older_history`]) and how an op's account is kept ([`account_key`],
//! [`account_of`]). The backends and the writer each have a file:
//!
//! - [`memory`]: [`MemoryStore`], the log in process memory (`--memory`).
//! - [`sqlite`]: [`SqliteStore`], the embedded default (`--data-dir`), and its schema.
//! - [`postgres`]: [`PgStore`](postgres::PgStore), one log shared by several nodes
//!   (`--store postgres://…`).
//! - [`writer`]: [`Persister`], the group-commit writer thread rooms hand their ops to, and the
//!   [`Durable`] watch it answers on.
//!
//! [`Store`] is synchronous and may block. Every store is written only through the
//! [`Persister`], so every room gets the same durability feedback: a blocking store
//! ([`Store::blocking`]) by the writer thread, and read only from `spawn_blocking`; the
//! in-memory one from the room's own task ([`Persister::write_now`]).
//!
//! The trait is shaped for a shared database with several server nodes too:
//! [`Store::append`] writes a whole group in one transaction and fails with
//! [`StoreError::Conflict`] when a (room, version) is already taken, i.e. another node
//! sequenced that version first; the room then reloads from the store.

pub mod memory;
pub mod postgres;
pub mod sqlite;
pub mod writer;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;
pub use writer::{Durable, Persister, WriteReq};

use std::path::PathBuf;
use std::sync::Arc;

use ot_core::protocol::TransportState;
use ot_core::sync::{sent_under, OlderHistory, Sequenced};
use ot_core::{apply, Document};
use serde_json::Value;

/// A storage failure, typed so callers can act.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer already stored this version of this room.
    #[error("version {version} of room `{room}` is already stored")]
    Conflict {
        /// The room.
        room: String,
        /// The version taken.
        version: u64,
    },
    /// The database failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL server or the connection to it failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// A stored record does not decode.
    #[error("corrupt record in room `{room}` at version {version}: {reason}")]
    Corrupt {
        /// The room.
        room: String,
        /// The version.
        version: u64,
        /// What was wrong.
        reason: String,
    },
    /// The data directory could not be prepared.
    #[error("data dir {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stale op's rebase would read more history than a room reads at once.
    #[error("rebasing from version {base} would read over {limit} bytes of history")]
    HistoryTooLarge {
        /// The op's base.
        base: u64,
        /// The byte bound.
        limit: usize,
    },
    /// The writer thread is gone (shutdown or a panic).
    #[error("the store writer has stopped")]
    WriterGone,
}

/// One sequenced op to store, with the state after it when a snapshot is due.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The op as broadcast.
    pub msg: Sequenced,
    /// The document at `msg.version`, when a snapshot is taken here: a copy of the room's
    /// persistent document (taking it costs the room's task nothing), serialized to the state
    /// JSON of PROTOCOL §5.1 by the store, on its writer's thread.
    pub snapshot: Option<Document>,
    /// Whether [`Store::find_op`] must find this op by its id alone: it was submitted without
    /// a `baseVersion`, so its resend comes without one too (PROTOCOL §4: a client resends its
    /// ops with their original `baseVersion`). A resend with a base is recognised among the ops
    /// after that base instead ([`older_history`]), where any stored op can be found.
    pub by_id: bool,
}

/// What a room appends in one go.
#[derive(Debug, Clone)]
pub struct RoomAppend {
    /// The room.
    pub room: Arc<str>,
    /// Consecutive versions, in order.
    pub entries: Vec<Entry>,
}

/// What a room loads on first use: its latest snapshot and every op after it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The latest snapshot: its version and state.
    pub snapshot: Option<(u64, Value)>,
    /// The ops after the snapshot, in order.
    pub ops: Vec<Sequenced>,
    /// The room's transport as last stored (PROTOCOL §4: it is room state).
    pub transport: Option<TransportState>,
}

/// The op log and snapshots of every room.
pub trait Store: Send + Sync + 'static {
    /// Whether calls may block on IO (then they run on the writer thread or `spawn_blocking`).
    fn blocking(&self) -> bool;
    /// Whether other processes (other server nodes) write this store too. When true, the
    /// server runs its multi-node logic: a [`StoreError::Conflict`] is a race lost to another
    /// node, rooms read other nodes' ops from the store, and the bus (if configured) is started.
    /// No default: a store that answers wrongly loses ops (false) or does needless work (true).
    fn shared(&self) -> bool;
    /// The latest snapshot of `room` and the ops after it.
    fn load(&self, room: &str) -> Result<Loaded, StoreError> {
        let snapshot = self.snapshot_at_or_before(room, u64::MAX >> 1)?;
        let from = snapshot.as_ref().map_or(0, |(v, _)| *v);
        let ops = self.ops(room, from, u64::MAX >> 1, usize::MAX)?;
        let transport = self.transport(room)?;
        Ok(Loaded { snapshot, ops, transport })
    }
    /// Stores every group atomically, in one transaction. A version already stored is a
    /// [`StoreError::Conflict`] and nothing of the call is stored.
    fn append(&self, groups: &[RoomAppend]) -> Result<(), StoreError>;
    /// Ops with `from < version <= to`, at most `limit`, in order.
    fn ops(&self, room: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Sequenced>, StoreError>;
    /// The latest snapshot at or before `version`.
    fn snapshot_at_or_before(&self, room: &str, version: u64) -> Result<Option<(u64, Value)>, StoreError>;
    /// The op `account` stored under `op_id`, for exactly-once across restarts (op ids are
    /// scoped per account, PROTOCOL §4): at least every op stored with [`Entry::by_id`] set
    /// (a store may find the others too; SQLite indexes only those, so that an op with a base,
    /// the common case, does not dirty an index page of its own). Stores keep each op's account
    /// beside it, and every op they return carries it in
    /// [`OperationMsg::account`](ot_core::protocol::OperationMsg::account).
    fn find_op(&self, room: &str, account: Option<&str>, op_id: &str) -> Result<Option<Sequenced>, StoreError>;
    /// The room's transport as last stored, if it was ever set.
    fn transport(&self, room: &str) -> Result<Option<TransportState>, StoreError>;
    /// Stores the room's transport unless a newer one (a later `server_time`) is stored: saves
    /// may arrive out of order, from several threads or nodes, and the latest change wins.
    fn save_transport(&self, room: &str, transport: &TransportState) -> Result<(), StoreError>;
}

/// Whether `new` replaces `old` as a room's transport: the later change wins, and of two at the
/// same millisecond the larger connection id, so every node and store picks the same one.
pub fn transport_newer(new: &TransportState, old: &TransportState) -> bool {
    (new.server_time, new.user_id.as_deref()) > (old.server_time, old.user_id.as_deref())
}

/// The state JSON (PROTOCOL §5.1) of a snapshot taken at `version` of `room`.
pub(crate) fn snapshot_json(room: &str, version: u64, doc: &Document) -> Result<String, StoreError> {
    serde_json::to_string(&doc.state(version)).map_err(|err| corrupt(room, version, err))
}

pub(crate) fn corrupt(room: &str, version: u64, reason: impl ToString) -> StoreError {
    StoreError::Corrupt { room: room.to_string(), version, reason: reason.to_string() }
}

/// Builds the [`OlderHistory`] for a stale op based on `base`: the state at `base` (the snapshot
/// at or before it plus replay), the ops `base+1 ..= until`, and, for a resend, the op among
/// them stored under `op_id` by `account` (then the state is not built and the ops are not
/// kept: the resend is answered with that op). The ops are read in chunks and the read stops with
/// [`StoreError::HistoryTooLarge`] past `max_bytes` of JSON, so a stale op cannot make its room
/// wait on an unbounded read.
pub fn older_history(
    store: &dyn Store,
    room: &str,
    base: u64,
    until: u64,
    account: Option<&str>,
    op_id: Option<&str>,
    max_bytes: usize,
) -> Result<OlderHistory, StoreError> {
    // A resend of an op based on `base` was sequenced after it: it is among the ops read below
    // (or in the room's window, which the room checks first).
    let resent = |m: &Sequenced| op_id.is_some_and(|id| sent_under(m, account, id));
    let mut ops = Vec::new();
    let (mut bytes, mut from) = (0usize, base);
    while from < until {
        let chunk = store.ops(room, from, until, HISTORY_CHUNK)?;
        let Some(last) = chunk.last() else { break };
        from = last.version;
        if let Some(m) = chunk.iter().find(|m| resent(m)) {
            // Answered with the original: no state at the base is built, no ops are kept.
            let known = Some(m.clone());
            return Ok(OlderHistory { base, state: Document::new(), ops: Vec::new(), known });
        }
        for m in chunk {
            bytes += ot_core::protocol::json_len(&*m);
            if bytes > max_bytes {
                return Err(StoreError::HistoryTooLarge { base, limit: max_bytes });
            }
            ops.push(m);
        }
    }
    let (snap_v, mut state) = match store.snapshot_at_or_before(room, base)? {
        Some((v, value)) => {
            let (doc, _) = Document::from_state_value(&value).map_err(|e| corrupt(room, v, e))?;
            (v, doc)
        }
        None => (0, Document::new()),
    };
    for m in store.ops(room, snap_v, base, usize::MAX)? {
        apply(&mut state, &m.operation).map_err(|e| corrupt(room, m.version, e))?;
    }
    Ok(OlderHistory { base, state, ops, known: None })
}

/// How many ops [`older_history`] reads at a time.
const HISTORY_CHUNK: usize = 1024;

/// Replays `loaded` into a fresh [`ot_core::sync::ServerDoc`].
pub fn restore(
    room: &str,
    loaded: Loaded,
    window: usize,
    max_rebase: u64,
    history_bytes: usize,
) -> Result<ot_core::sync::ServerDoc, StoreError> {
    let (doc, version) = match &loaded.snapshot {
        Some((v, value)) => {
            let (doc, _) = Document::from_state_value(value).map_err(|e| corrupt(room, *v, e))?;
            (doc, *v)
        }
        None => (Document::new(), 0),
    };
    let mut sd = ot_core::sync::ServerDoc::new(doc, version, window, max_rebase);
    sd.set_history_bytes(history_bytes);
    for m in loaded.ops {
        let v = m.version;
        sd.replay(m).map_err(|e| corrupt(room, v, e))?;
    }
    Ok(sd)
}

/// How a store keeps an op's account: the account, or the empty string for none.
pub fn account_key(account: Option<&str>) -> &str {
    account.unwrap_or("")
}

/// The account as kept by a store, back as [`OperationMsg::account`](ot_core::protocol::OperationMsg::account).
pub fn account_of(stored: &str) -> Option<Arc<str>> {
    (!stored.is_empty()).then(|| Arc::from(stored))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ot_core::protocol::OperationMsg;
    use ot_core::Op;
    use serde_json::json;

    /// Version `v`: one track inserted, op id `id`, account `acct`.
    pub(crate) fn msg(v: u64, id: &str) -> Sequenced {
        let op = Op::batch_from_value(
            json!({"type":"insert","target":"track","id":format!("t{v}"),"index":0,"value":{"name":"x"}}),
        )
        .unwrap();
        Arc::new(OperationMsg {
            operation: op,
            version: v,
            user_id: "c".into(),
            op_id: Some(id.into()),
            account: Some(Arc::from("acct")),
        })
    }

    fn exercise(store: &dyn Store) {
        let room: Arc<str> = Arc::from("r");
        let entries = (1..=5).map(|v| Entry { msg: msg(v, &format!("o{v}")), snapshot: None, by_id: true }).collect();
        store.append(&[RoomAppend { room: room.clone(), entries }]).unwrap();
        let dup = vec![Entry { msg: msg(3, "x"), snapshot: None, by_id: true }];
        assert!(matches!(
            store.append(&[RoomAppend { room: room.clone(), entries: dup }]),
            Err(StoreError::Conflict { version: 3, .. })
        ));
        assert_eq!(store.ops("r", 1, 3, 10).unwrap().len(), 2);
        assert_eq!(store.find_op("r", Some("acct"), "o4").unwrap().unwrap().version, 4);
        assert_eq!(store.find_op("r", Some("acct"), "o4").unwrap().unwrap().account.as_deref(), Some("acct"));
        assert!(store.find_op("r", Some("other"), "o4").unwrap().is_none(), "op ids are scoped per account");
        assert!(store.find_op("r", Some("acct"), "nope").unwrap().is_none());
        assert_eq!(store.ops("r", 0, 2, 10).unwrap()[0].account.as_deref(), Some("acct"));
        let mut sd = restore("r", store.load("r").unwrap(), 2, 100, usize::MAX).unwrap();
        assert_eq!(sd.version(), 5);
        let mut doc = sd.doc().clone();
        let snap = Entry { msg: msg(6, "o6"), snapshot: None, by_id: true };
        sd.replay(snap.msg.clone()).unwrap();
        apply(&mut doc, &snap.msg.operation).unwrap();
        let snap = Entry { snapshot: Some(doc.clone()), ..snap };
        store.append(&[RoomAppend { room, entries: vec![snap] }]).unwrap();
        let loaded = store.load("r").unwrap();
        assert_eq!(loaded.snapshot.as_ref().map(|s| s.0), Some(6));
        assert!(loaded.ops.is_empty());
        let older = older_history(store, "r", 2, 6, Some("acct"), Some("new"), usize::MAX).unwrap();
        assert!(matches!(
            older_history(store, "r", 2, 6, Some("acct"), None, 200),
            Err(StoreError::HistoryTooLarge { base: 2, limit: 200 })
        ));
        assert_eq!(older.state.tracks().len(), 2);
        assert_eq!(older.ops.len(), 4);
        assert!(older.known.is_none());
        // A resend is found among the ops after its base, for its own account only.
        let resend = older_history(store, "r", 2, 6, Some("acct"), Some("o5"), usize::MAX).unwrap();
        assert_eq!(resend.known.unwrap().version, 5);
        assert!(older_history(store, "r", 2, 6, Some("other"), Some("o5"), usize::MAX).unwrap().known.is_none());
        // An op sent with a base (`by_id: false`) is found that way too, whatever the store
        // indexes, and before the read's size bound.
        let based = Entry { msg: msg(7, "o7"), snapshot: None, by_id: false };
        store.append(&[RoomAppend { room: Arc::from("r"), entries: vec![based] }]).unwrap();
        let resend = older_history(store, "r", 6, 7, Some("acct"), Some("o7"), 1).unwrap();
        assert_eq!(resend.known.unwrap().version, 7);
        transport_is_kept(store);
    }

    /// The transport: absent until saved, then the latest change (by server time) wins, even
    /// when an older save arrives later; it is loaded with the room.
    pub(crate) fn transport_is_kept(store: &dyn Store) {
        let t = |time: u64, user: &str, playing: bool| TransportState {
            playing,
            position: time as f64 / 1000.0,
            server_time: time,
            user_id: Some(user.into()),
        };
        assert_eq!(store.transport("fresh").unwrap(), None);
        store.save_transport("fresh", &t(2000, "ana", true)).unwrap();
        store.save_transport("fresh", &t(1000, "ben", false)).unwrap();
        assert_eq!(store.transport("fresh").unwrap(), Some(t(2000, "ana", true)), "an older save never wins");
        store.save_transport("fresh", &t(2000, "cy", false)).unwrap();
        assert_eq!(store.transport("fresh").unwrap(), Some(t(2000, "cy", false)), "ties go to the larger id");
        store.save_transport("fresh", &t(3000, "ana", false)).unwrap();
        assert_eq!(store.load("fresh").unwrap().transport, Some(t(3000, "ana", false)));
    }

    #[test]
    fn memory_store_contract() {
        let store = MemoryStore::new();
        assert!(!store.shared(), "only this process writes its memory");
        exercise(&store);
    }

    #[test]
    fn sqlite_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(!store.shared(), "only this process writes its file");
        exercise(&store);
    }
}
