//! The PostgreSQL store (`--store postgres://…`): one op log shared by several sequencer nodes.
//!
//! The op log's PRIMARY KEY (room, version) decides which node sequenced a version: of two
//! nodes appending version v+1 of a room, exactly one commits, the other gets
//! [`StoreError::Conflict`] and its room resyncs from the log (see `room.rs`). Each op's `opId`
//! is unique per room, so a resend that reached another node after a failover can be found with
//! [`Store::find_op`] and re-acked with its original version.
//!
//! The schema is created or migrated on open, under an advisory lock so that nodes starting
//! together do not race; `schema_version` records the migrations applied.
//!
//! Calls block (the `postgres` crate drives tokio-postgres on its own runtime), so the server
//! calls this store only from its writer thread and `spawn_blocking`, like SQLite. Connections
//! come from a small pool; a connection that failed is dropped, not returned.

use std::sync::{Arc, Mutex};

use ot_core::protocol::{OperationMsg, TransportState};
use ot_core::sync::Sequenced;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use serde_json::Value;

use super::{account_key, account_of, RoomAppend, Store, StoreError};

/// Migrations in order; `schema_version` holds how many were applied.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE ops (
    room TEXT NOT NULL,
    version BIGINT NOT NULL,
    op_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (room, version)
);
CREATE UNIQUE INDEX ops_op_id ON ops (room, op_id) WHERE op_id IS NOT NULL;
CREATE TABLE snapshots (
    room TEXT NOT NULL,
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (room, version)
);
",
    "
ALTER TABLE ops ADD COLUMN account TEXT NOT NULL DEFAULT '';
DROP INDEX ops_op_id;
CREATE UNIQUE INDEX ops_account_op_id ON ops (room, account, op_id) WHERE op_id IS NOT NULL;
",
    "
CREATE TABLE transport (
    room TEXT PRIMARY KEY,
    server_time BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    body TEXT NOT NULL
);
",
];

/// Key of the advisory lock held while migrating (any constant shared by every node).
const MIGRATION_LOCK: i64 = 0x5e9_0e7c_e500;

/// Connections kept idle in the pool.
const POOL_MAX: usize = 8;

struct Conn {
    client: Client,
    insert_op: Statement,
    insert_snapshot: Statement,
    select_ops: Statement,
    select_snapshot: Statement,
    select_op_id: Statement,
    select_transport: Statement,
    upsert_transport: Statement,
}

impl Conn {
    fn connect(config: &postgres::Config) -> Result<Conn, StoreError> {
        let mut client = config.connect(NoTls)?;
        Ok(Conn {
            insert_op: client
                .prepare("INSERT INTO ops (room, version, op_id, body, account) VALUES ($1, $2, $3, $4, $5)")?,
            insert_snapshot: client.prepare(
                "INSERT INTO snapshots (room, version, state) VALUES ($1, $2, $3) \
                 ON CONFLICT (room, version) DO UPDATE SET state = EXCLUDED.state",
            )?,
            select_ops: client.prepare(
                "SELECT version, account, body FROM ops WHERE room = $1 AND version > $2 AND version <= $3 \
                 ORDER BY version LIMIT $4",
            )?,
            select_snapshot: client.prepare(
                "SELECT version, state FROM snapshots WHERE room = $1 AND version <= $2 \
                 ORDER BY version DESC LIMIT 1",
            )?,
            select_op_id: client.prepare(
                "SELECT version, account, body FROM ops WHERE room = $1 AND account = $2 AND op_id = $3 LIMIT 1",
            )?,
            select_transport: client.prepare("SELECT body FROM transport WHERE room = $1")?,
            upsert_transport: client.prepare(super::sqlite::TRANSPORT_UPSERT)?,
            client,
        })
    }
}

/// The op log and snapshots in PostgreSQL, shared by every node of a cluster.
pub struct PgStore {
    config: postgres::Config,
    pool: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn decode(room: &str, version: i64, account: &str, body: &str) -> Result<Sequenced, StoreError> {
    let mut m: OperationMsg = serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        room: room.to_string(),
        version: version as u64,
        reason: e.to_string(),
    })?;
    m.account = account_of(account);
    Ok(Arc::new(m))
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates or migrates the schema.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let config: postgres::Config = url.parse()?;
        let mut client = config.connect(NoTls)?;
        migrate(&mut client)?;
        let store = PgStore { config, pool: Mutex::new(Vec::new()) };
        store.put(Conn::connect(&store.config)?);
        Ok(store)
    }

    fn put(&self, conn: Conn) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX && !conn.client.is_closed() {
            pool.push(conn);
        }
    }

    /// Runs `f` on a pooled connection; the connection goes back only if `f` succeeded or failed
    /// with a database error that leaves the connection usable.
    fn with<R>(&self, f: impl FnOnce(&mut Conn) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) if !c.client.is_closed() => c,
            _ => Conn::connect(&self.config)?,
        };
        let out = f(&mut conn);
        let reusable = match &out {
            Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::Corrupt { .. }) => true,
            Err(StoreError::Postgres(e)) => e.as_db_error().is_some(),
            Err(_) => false,
        };
        if reusable {
            self.put(conn);
        }
        out
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // A `postgres::Client` owns a runtime, which must not be dropped on an async thread;
        // the last handle to the store may go away on one (the end of `run`).
        let conns = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|p| p.into_inner()));
        if !conns.is_empty() {
            std::thread::spawn(move || drop(conns));
        }
    }
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let applied: i32 = match tx.query_opt("SELECT version FROM schema_version", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
            0
        }
    };
    for (i, m) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        tx.batch_execute(m)?;
        tx.execute("UPDATE schema_version SET version = $1", &[&(i as i32 + 1)])?;
        tracing::info!(migration = i + 1, "postgres schema migrated");
    }
    tx.commit()?;
    Ok(())
}

impl Store for PgStore {
    fn blocking(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        true
    }

    fn append(&self, groups: &[RoomAppend]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            for g in groups {
                let room: &str = &g.room;
                for e in &g.entries {
                    let body = serde_json::to_string(&*e.msg).map_err(|err| StoreError::Corrupt {
                        room: room.to_string(),
                        version: e.msg.version,
                        reason: err.to_string(),
                    })?;
                    let version = i64_of(e.msg.version);
                    let account = account_key(e.msg.account.as_deref());
                    if let Err(err) = tx.execute(&c.insert_op, &[&room, &version, &e.msg.op_id, &body, &account]) {
                        // Either key: the version was taken by another node, or the same opId
                        // was sequenced there (a resend after a failover). The room resyncs
                        // from the log in both cases and then finds the op by its id.
                        return Err(if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                            StoreError::Conflict { room: room.to_string(), version: e.msg.version }
                        } else {
                            err.into()
                        });
                    }
                    if let Some(s) = &e.snapshot {
                        let state = super::snapshot_json(room, e.msg.version, s)?;
                        tx.execute(&c.insert_snapshot, &[&room, &version, &state])?;
                    }
                }
            }
            tx.commit().map_err(|err| {
                if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    let (room, version) = groups
                        .first()
                        .and_then(|g| g.entries.first().map(|e| (g.room.to_string(), e.msg.version)))
                        .unwrap_or_default();
                    StoreError::Conflict { room, version }
                } else {
                    err.into()
                }
            })
        })
    }

    fn ops(&self, room: &str, from: u64, to: u64, limit: usize) -> Result<Vec<Sequenced>, StoreError> {
        self.with(|c| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = c.client.query(&c.select_ops, &[&room, &i64_of(from), &i64_of(to), &limit])?;
            rows.iter().map(|r| decode(room, r.get(0), r.get(1), r.get(2))).collect()
        })
    }

    fn snapshot_at_or_before(&self, room: &str, version: u64) -> Result<Option<(u64, Value)>, StoreError> {
        self.with(|c| {
            let Some(row) = c.client.query_opt(&c.select_snapshot, &[&room, &i64_of(version)])? else {
                return Ok(None);
            };
            let v: i64 = row.get(0);
            let text: &str = row.get(1);
            let state = serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
                room: room.to_string(),
                version: v as u64,
                reason: e.to_string(),
            })?;
            Ok(Some((v as u64, state)))
        })
    }

    fn find_op(&self, room: &str, account: Option<&str>, op_id: &str) -> Result<Option<Sequenced>, StoreError> {
        let account = account_key(account);
        self.with(|c| match c.client.query_opt(&c.select_op_id, &[&room, &account, &op_id])? {
            None => Ok(None),
            Some(row) => Ok(Some(decode(room, row.get(0), row.get(1), row.get(2))?)),
        })
    }

    fn transport(&self, room: &str) -> Result<Option<TransportState>, StoreError> {
        self.with(|c| match c.client.query_opt(&c.select_transport, &[&room])? {
            None => Ok(None),
            Some(row) => {
                let body: &str = row.get(0);
                let t = serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
                    room: room.to_string(),
                    version: 0,
                    reason: format!("transport: {e}"),
                })?;
                Ok(Some(t))
            }
        })
    }

    fn save_transport(&self, room: &str, t: &TransportState) -> Result<(), StoreError> {
        let body = serde_json::to_string(t).map_err(|e| StoreError::Corrupt {
            room: room.to_string(),
            version: 0,
            reason: format!("transport: {e}"),
        })?;
        let time = i64_of(t.server_time);
        let user = t.user_id.as_deref().unwrap_or("");
        self.with(|c| {
            c.client.execute(&c.upsert_transport, &[&room, &time, &user, &body])?;
            Ok(())
        })
    }
}
