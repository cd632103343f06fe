//! Storage behind a trait: the op log keyed by (room, version) with each op's `opId`, and
//! snapshots every N ops.
//!
//! [`Store`] is synchronous and may block: the SQLite store is only called from a dedicated
//! writer thread ([`Persister`], group commit) and from `spawn_blocking` (reads). The in-memory
//! store answers at once, so rooms call it inline ([`Store::blocking`] is false).
//!
//! The trait is shaped for a shared database with several server nodes too (a PostgreSQL store):
//! [`Store::append`] writes a whole group in one transaction and fails with
//! [`StoreError::Conflict`] when a (room, version) is already taken, i.e. another node
//! sequenced that version first; the room then reloads from the store.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ot_core::protocol::OperationMsg;
use ot_core::sync::{OlderHistory, Sequenced};
use ot_core::{apply, Document};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

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
    Postgres(#[from] postgres::Error),
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
    /// The state (PROTOCOL §5.1 JSON) at `msg.version`, when a snapshot is taken here.
    pub snapshot: Option<Value>,
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
}

/// The op log and snapshots of every room.
pub trait Store: Send + Sync + 'static {
    /// Whether calls may block on IO (then they run on the writer thread or `spawn_blocking`).
    fn blocking(&self) -> bool;
    /// The latest snapshot of `room` and the ops after it.
    fn load(&self, room: &str) -> Result<Loaded, StoreError> {
        let snapshot = self.snapshot_at_or_before(room, u64::MAX >> 1)?;
        let from = snapshot.as_ref().map_or(0, |(v, _)| *v);
        let ops = self.ops(room, from, u64::MAX >> 1, usize::MAX)?;
        Ok(Loaded { snapshot, ops })
    }
    /// Stores every group atomically, in one transaction. A version already stored is a
    /// [`StoreError::Conflict`] and nothing of the call is stored.
    fn append(&self, groups: &[RoomAppend]) -> Result<(), StoreError>;
    /// Ops with `from < version <= to`, at most `limit`, in order.
    fn ops(&self, room: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Sequenced>, StoreError>;
    /// The latest snapshot at or before `version`.
    fn snapshot_at_or_before(&self, room: &str, version: u64) -> Result<Option<(u64, Value)>, StoreError>;
    /// The op `account` stored under `op_id`, for exactly-once across restarts (op ids are
    /// scoped per account, PROTOCOL §4). Stores keep each op's account beside it, and every op
    /// they return carries it in [`OperationMsg::account`].
    fn find_op(&self, room: &str, account: Option<&str>, op_id: &str) -> Result<Option<Sequenced>, StoreError>;
}

fn corrupt(room: &str, version: u64, reason: impl ToString) -> StoreError {
    StoreError::Corrupt { room: room.to_string(), version, reason: reason.to_string() }
}

/// Builds the [`OlderHistory`] for a stale op based on `base`: the state at `base` (the snapshot
/// at or before it plus replay), the ops `base+1 ..= until`, and the op already stored under
/// `op_id` by `account`. The ops are read in chunks and the read stops with
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
    let known = match op_id {
        Some(id) => store.find_op(room, account, id)?,
        None => None,
    };
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
    let mut ops = Vec::new();
    let (mut bytes, mut from) = (0usize, base);
    while from < until {
        let chunk = store.ops(room, from, until, HISTORY_CHUNK)?;
        let Some(last) = chunk.last() else { break };
        from = last.version;
        for m in chunk {
            bytes += ot_core::protocol::json_len(&*m);
            if bytes > max_bytes {
                return Err(StoreError::HistoryTooLarge { base, limit: max_bytes });
            }
            ops.push(m);
        }
    }
    Ok(OlderHistory { base, state, ops, known })
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

#[derive(Default)]
struct MemRoom {
    ops: Vec<Sequenced>,
    snapshots: BTreeMap<u64, Value>,
    /// (account, op id) → version.
    op_ids: HashMap<(String, String), u64>,
}

/// How a store keeps an op's account: the account, or the empty string for none.
pub fn account_key(account: Option<&str>) -> &str {
    account.unwrap_or("")
}

/// The account as kept by a store, back as [`OperationMsg::account`].
pub fn account_of(stored: &str) -> Option<Arc<str>> {
    (!stored.is_empty()).then(|| Arc::from(stored))
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

    fn load(&self, room: &str) -> Result<Loaded, StoreError> {
        Ok(self.with(|rooms| match rooms.get(room) {
            None => Loaded::default(),
            Some(r) => {
                let snapshot = r.snapshots.iter().next_back().map(|(v, s)| (*v, s.clone()));
                let from = snapshot.as_ref().map_or(0, |(v, _)| *v) as usize;
                Loaded { snapshot, ops: r.ops[from.min(r.ops.len())..].to_vec() }
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
}

/// The embedded default: SQLite in WAL mode under the data dir, `synchronous=FULL`.
///
/// Writes go through one connection (the writer thread's); reads take a connection from a small
/// pool, so readers never wait for a writer (WAL).
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<rusqlite::Connection>,
    readers: Mutex<Vec<rusqlite::Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ops (
    room TEXT NOT NULL,
    version INTEGER NOT NULL,
    op_id TEXT,
    body TEXT NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (room, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    room TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (room, version)
) WITHOUT ROWID;
";

impl SqliteStore {
    /// Opens (creating if missing) `dir/sequencer.db`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        let path = dir.join("sequencer.db");
        let conn = Self::connect(&path)?;
        conn.execute_batch(SCHEMA)?;
        // Logs written before op ids were scoped per account have no `account` column.
        let has_account: bool =
            conn.prepare("SELECT 1 FROM pragma_table_info('ops') WHERE name = 'account'")?.exists([])?;
        if !has_account {
            conn.execute_batch("ALTER TABLE ops ADD COLUMN account TEXT NOT NULL DEFAULT ''")?;
        }
        conn.execute_batch(
            "DROP INDEX IF EXISTS ops_by_id;
             CREATE INDEX IF NOT EXISTS ops_by_account_id ON ops (room, account, op_id) WHERE op_id IS NOT NULL;",
        )?;
        Ok(SqliteStore { path, writer: Mutex::new(conn), readers: Mutex::new(Vec::new()) })
    }

    fn connect(path: &Path) -> Result<rusqlite::Connection, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    fn read<R>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => Self::connect(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }

    fn decode(room: &str, version: u64, account: &str, body: &str) -> Result<Sequenced, StoreError> {
        let mut m: OperationMsg = serde_json::from_str(body).map_err(|e| corrupt(room, version, e))?;
        m.account = account_of(account);
        Ok(Arc::new(m))
    }

    fn decode_state(room: &str, version: u64, text: &str) -> Result<Value, StoreError> {
        serde_json::from_str(text).map_err(|e| corrupt(room, version, e))
    }
}

fn is_conflict(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Store for SqliteStore {
    fn blocking(&self) -> bool {
        true
    }

    fn append(&self, groups: &[RoomAppend]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        {
            let mut ins =
                tx.prepare_cached("INSERT INTO ops (room, version, op_id, body, account) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            let mut snap =
                tx.prepare_cached("INSERT OR REPLACE INTO snapshots (room, version, state) VALUES (?1, ?2, ?3)")?;
            for g in groups {
                for e in &g.entries {
                    let body = serde_json::to_string(&*e.msg).map_err(|err| corrupt(&g.room, e.msg.version, err))?;
                    let version = e.msg.version as i64;
                    let account = account_key(e.msg.account.as_deref());
                    ins.execute(rusqlite::params![&*g.room, version, e.msg.op_id, body, account]).map_err(|err| {
                        if is_conflict(&err) {
                            StoreError::Conflict { room: g.room.to_string(), version: e.msg.version }
                        } else {
                            err.into()
                        }
                    })?;
                    if let Some(s) = &e.snapshot {
                        snap.execute(rusqlite::params![&*g.room, version, s.to_string()])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn ops(&self, room: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Sequenced>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT version, account, body FROM ops WHERE room = ?1 AND version > ?2 AND version <= ?3 \
                 ORDER BY version LIMIT ?4",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let to = i64::try_from(to).unwrap_or(i64::MAX);
            let rows = st.query_map(rusqlite::params![room, from, to, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (v, account, body) = row?;
                out.push(Self::decode(room, v as u64, &account, &body)?);
            }
            Ok(out)
        })
    }

    fn snapshot_at_or_before(&self, room: &str, version: u64) -> Result<Option<(u64, Value)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT version, state FROM snapshots WHERE room = ?1 AND version <= ?2 ORDER BY version DESC LIMIT 1",
            )?;
            let version = i64::try_from(version).unwrap_or(i64::MAX);
            let mut rows = st.query(rusqlite::params![room, version])?;
            match rows.next()? {
                None => Ok(None),
                Some(r) => {
                    let v: i64 = r.get(0)?;
                    let text: String = r.get(1)?;
                    Ok(Some((v as u64, Self::decode_state(room, v as u64, &text)?)))
                }
            }
        })
    }

    fn find_op(&self, room: &str, account: Option<&str>, op_id: &str) -> Result<Option<Sequenced>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT version, account, body FROM ops WHERE room = ?1 AND account = ?2 AND op_id = ?3 LIMIT 1",
            )?;
            let mut rows = st.query(rusqlite::params![room, account_key(account), op_id])?;
            match rows.next()? {
                None => Ok(None),
                Some(r) => {
                    let v: i64 = r.get(0)?;
                    let account: String = r.get(1)?;
                    let body: String = r.get(2)?;
                    Ok(Some(Self::decode(room, v as u64, &account, &body)?))
                }
            }
        })
    }
}

/// How far a room's log is durable, published by the writer (latest wins, never blocks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Durable {
    /// Every version up to this one is stored.
    pub version: u64,
    /// Set when a write failed: the room must stop and reload.
    pub failed: Option<String>,
    /// Set when another node stored this version first: nothing queued on this channel is
    /// stored any more (it was sequenced on a stale head); the room resyncs from the store and
    /// resubmits on a fresh channel.
    pub conflict: Option<u64>,
}

/// One room's request to the writer.
pub struct WriteReq {
    /// What to store.
    pub group: RoomAppend,
    /// Where to publish the durable version.
    pub durable: Arc<watch::Sender<Durable>>,
}

/// The group-commit writer: one thread that takes every waiting request, stores them in one
/// transaction and publishes each room's durable version.
pub struct Persister {
    /// The store (reads go to it directly through `spawn_blocking`).
    pub store: Arc<dyn Store>,
    tx: Mutex<Option<mpsc::Sender<WriteReq>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How many requests one group commit takes at most.
const GROUP_MAX: usize = 1024;

impl Persister {
    /// Starts the writer thread when the store blocks; otherwise writes happen inline.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Result<Arc<Persister>, StoreError> {
        let (tx, thread) = if store.blocking() {
            let (tx, rx) = mpsc::channel::<WriteReq>(4096);
            let st = store.clone();
            let handle = std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(st, rx, metrics))
                .map_err(|source| StoreError::Io { path: PathBuf::from("<writer thread>"), source })?;
            (Some(tx), Some(handle))
        } else {
            (None, None)
        };
        Ok(Arc::new(Persister { store, tx: Mutex::new(tx), thread: Mutex::new(thread) }))
    }

    /// The writer's queue, or `None` when the store is written inline.
    pub fn sender(&self) -> Option<mpsc::Sender<WriteReq>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets the writer finish what is queued, then joins it. Rooms must have stopped first.
    pub fn finish(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

fn writer_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<WriteReq>, metrics: Arc<Metrics>) {
    let mut batch: Vec<WriteReq> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // A request queued behind a conflict of its room was sequenced on a stale head.
        batch.retain(|r| r.durable.borrow().conflict.is_none());
        if batch.is_empty() {
            continue;
        }
        let groups: Vec<RoomAppend> = batch.iter().map(|r| r.group.clone()).collect();
        let started = Instant::now();
        let result = store.append(&groups);
        metrics.storage_append(started.elapsed(), batch.len());
        match result {
            Ok(()) => batch.iter().for_each(publish_ok),
            Err(e) => {
                tracing::warn!(error = %e, groups = batch.len(), "group commit failed; retrying one by one");
                for r in &batch {
                    if r.durable.borrow().conflict.is_some() {
                        continue;
                    }
                    match store.append(std::slice::from_ref(&r.group)) {
                        Ok(()) => publish_ok(r),
                        Err(StoreError::Conflict { version, .. }) => {
                            tracing::info!(room = %r.group.room, version, "version taken by another node");
                            r.durable.send_modify(|d| d.conflict = Some(version));
                        }
                        Err(e) => {
                            tracing::error!(room = %r.group.room, error = %e, "append failed");
                            r.durable.send_modify(|d| d.failed = Some(e.to_string()));
                        }
                    }
                }
            }
        }
        batch.clear();
    }
}

fn publish_ok(r: &WriteReq) {
    if let Some(last) = r.group.entries.last() {
        let v = last.msg.version;
        r.durable.send_modify(|d| d.version = d.version.max(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ot_core::Op;
    use serde_json::json;

    fn msg(v: u64, id: &str) -> Sequenced {
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
        let entries = (1..=5).map(|v| Entry { msg: msg(v, &format!("o{v}")), snapshot: None }).collect();
        store.append(&[RoomAppend { room: room.clone(), entries }]).unwrap();
        let dup = vec![Entry { msg: msg(3, "x"), snapshot: None }];
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
        let snap = Entry { msg: msg(6, "o6"), snapshot: None };
        sd.replay(snap.msg.clone()).unwrap();
        apply(&mut doc, &snap.msg.operation).unwrap();
        let snap = Entry { snapshot: Some(doc.to_state_value(6)), ..snap };
        store.append(&[RoomAppend { room, entries: vec![snap] }]).unwrap();
        let loaded = store.load("r").unwrap();
        assert_eq!(loaded.snapshot.as_ref().map(|s| s.0), Some(6));
        assert!(loaded.ops.is_empty());
        let older = older_history(store, "r", 2, 6, Some("acct"), Some("o5"), usize::MAX).unwrap();
        assert!(matches!(
            older_history(store, "r", 2, 6, Some("acct"), None, 200),
            Err(StoreError::HistoryTooLarge { base: 2, limit: 200 })
        ));
        assert_eq!(older.state.tracks().len(), 2);
        assert_eq!(older.ops.len(), 4);
        assert_eq!(older.known.unwrap().version, 5);
    }

    #[test]
    fn memory_store_contract() {
        exercise(&MemoryStore::new());
    }

    #[test]
    fn sqlite_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&SqliteStore::open(dir.path()).unwrap());
    }
}
