//! The embedded default store (`--data-dir`): SQLite in WAL mode with `synchronous=FULL`, one
//! file per server, written by this process only.
//!
//! The schema is created on open, and an older log is brought up to it on open too: its
//! `account` column (op ids scoped per account), its `by_id` column, and the index of the ops
//! found by id alone (those sent without a base) in place of the index of every op id. Calls block on disk IO, so the server calls
//! this store only from the [`Persister`](super::Persister)'s writer thread and from
//! `spawn_blocking` (reads).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ot_core::protocol::{OperationMsg, TransportState};
use ot_core::sync::Sequenced;
use serde_json::Value;

use super::{account_key, account_of, corrupt, RoomAppend, Store, StoreError};

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
    by_id INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (room, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    room TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (room, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transport (
    room TEXT PRIMARY KEY,
    server_time INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    body TEXT NOT NULL
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
        // Logs written before only ops sent without a base were indexed by id: every old op
        // counts as one (`DEFAULT 1`), so every old op id is still found.
        let has_by_id: bool = conn.prepare("SELECT 1 FROM pragma_table_info('ops') WHERE name = 'by_id'")?.exists([])?;
        if !has_by_id {
            conn.execute_batch("ALTER TABLE ops ADD COLUMN by_id INTEGER NOT NULL DEFAULT 1")?;
        }
        // Only ops sent without a base are found by id alone ([`Entry::by_id`]): indexing every
        // op cost each op a B-tree page of its own in every group commit (one client's ids sort
        // together, so no two ops of a commit share a leaf): a quarter of the server's CPU on
        // 20 rooms × 5 clients (BENCHMARKS.md, fifth pass).
        conn.execute_batch(
            "DROP INDEX IF EXISTS ops_by_id;
             DROP INDEX IF EXISTS ops_by_account_id;
             CREATE INDEX IF NOT EXISTS ops_found_by_id ON ops (room, account, op_id)
                 WHERE op_id IS NOT NULL AND by_id = 1;",
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

    fn shared(&self) -> bool {
        false
    }

    fn append(&self, groups: &[RoomAppend]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO ops (room, version, op_id, body, account, by_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut snap =
                tx.prepare_cached("INSERT OR REPLACE INTO snapshots (room, version, state) VALUES (?1, ?2, ?3)")?;
            for g in groups {
                for e in &g.entries {
                    let body = serde_json::to_string(&*e.msg).map_err(|err| corrupt(&g.room, e.msg.version, err))?;
                    let version = e.msg.version as i64;
                    let account = account_key(e.msg.account.as_deref());
                    ins.execute(rusqlite::params![&*g.room, version, e.msg.op_id, body, account, e.by_id]).map_err(
                        |err| {
                            if is_conflict(&err) {
                                StoreError::Conflict { room: g.room.to_string(), version: e.msg.version }
                            } else {
                                err.into()
                            }
                        },
                    )?;
                    if let Some(s) = &e.snapshot {
                        let state = super::snapshot_json(&g.room, e.msg.version, s)?;
                        snap.execute(rusqlite::params![&*g.room, version, state])?;
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
                "SELECT version, account, body FROM ops WHERE room = ?1 AND account = ?2 AND op_id = ?3 AND by_id = 1 \
                 LIMIT 1",
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

    fn transport(&self, room: &str) -> Result<Option<TransportState>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT body FROM transport WHERE room = ?1")?;
            let mut rows = st.query(rusqlite::params![room])?;
            match rows.next()? {
                None => Ok(None),
                Some(r) => {
                    let body: String = r.get(0)?;
                    Ok(Some(serde_json::from_str(&body).map_err(|e| corrupt(room, 0, e))?))
                }
            }
        })
    }

    fn save_transport(&self, room: &str, t: &TransportState) -> Result<(), StoreError> {
        let body = serde_json::to_string(t).map_err(|e| corrupt(room, 0, e))?;
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn.prepare_cached(TRANSPORT_UPSERT)?;
        let time = i64::try_from(t.server_time).unwrap_or(i64::MAX);
        st.execute(rusqlite::params![room, time, t.user_id.as_deref().unwrap_or(""), body])?;
        Ok(())
    }
}

/// Stores a transport unless a later one is stored (see [`super::transport_newer`]); the same
/// statement in SQLite and PostgreSQL.
pub(crate) const TRANSPORT_UPSERT: &str = "INSERT INTO transport (room, server_time, user_id, body) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (room) DO UPDATE \
     SET server_time = excluded.server_time, user_id = excluded.user_id, body = excluded.body \
     WHERE (excluded.server_time, excluded.user_id) > (transport.server_time, transport.user_id)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::msg;
    use crate::store::Entry;

    #[test]
    fn only_ops_sent_without_a_base_are_found_by_id_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let entries = vec![
            Entry { msg: msg(1, "unbased"), snapshot: None, by_id: true },
            Entry { msg: msg(2, "based"), snapshot: None, by_id: false },
        ];
        store.append(&[RoomAppend { room: Arc::from("r"), entries }]).unwrap();
        assert_eq!(store.find_op("r", Some("acct"), "unbased").unwrap().map(|m| m.version), Some(1));
        assert!(store.find_op("r", Some("acct"), "based").unwrap().is_none(), "found after its base instead");
        let indexed: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM ops INDEXED BY ops_found_by_id WHERE room = 'r' AND account = 'acct' AND op_id IS NOT NULL AND by_id = 1", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(indexed, 1);
    }

    #[test]
    fn a_log_from_before_the_by_id_column_keeps_every_op_id_findable() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The schema as it was: no `by_id`, every op id indexed.
            let c = rusqlite::Connection::open(dir.path().join("sequencer.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE ops (room TEXT NOT NULL, version INTEGER NOT NULL, op_id TEXT, body TEXT NOT NULL,
                     account TEXT NOT NULL DEFAULT '', PRIMARY KEY (room, version)) WITHOUT ROWID;
                 CREATE INDEX ops_by_account_id ON ops (room, account, op_id) WHERE op_id IS NOT NULL;",
            )
            .unwrap();
            let body = serde_json::to_string(&*msg(1, "old")).unwrap();
            c.execute(
                "INSERT INTO ops (room, version, op_id, body, account) VALUES ('r', 1, 'old', ?1, 'acct')",
                [body],
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.find_op("r", Some("acct"), "old").unwrap().map(|m| m.version), Some(1));
        let old_index: i64 = store
            .read(|c| {
                Ok(c.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'ops_by_account_id'", [], |r| {
                    r.get(0)
                })?)
            })
            .unwrap();
        assert_eq!(old_index, 0, "the index of every op is gone");
        let based = Entry { msg: msg(2, "new"), snapshot: None, by_id: false };
        store.append(&[RoomAppend { room: Arc::from("r"), entries: vec![based] }]).unwrap();
        assert_eq!(store.ops("r", 0, 10, 10).unwrap().len(), 2);
    }
}
