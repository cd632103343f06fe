//! [`RoomCore`]: every decision a room makes, as a synchronous machine — `handle(input, now)`
//! returns what to do, [`RoomCore::next_deadline`] says when to call it again. No tokio, no
//! sockets, no store, no clock: the async task in `room.rs` carries out the outputs, and tests
//! and the simulation drive the core directly.
//!
//! The parts: membership and presence ([`super::presence`]), soft locks ([`super::locks`]:
//! taken and refused here, released at `unlock`, expiry, leave and the deletion of their
//! entity), the document and its durability bookkeeping (here), cursors on a tick, the
//! transport, `since` catch-ups, and a shared store's lost races and other nodes' ops
//! ([`super::cluster`]).
//!
//! Every op that reaches the room's state — sequenced here once durable, or sequenced by
//! another node — passes through one method, `applied`, which broadcasts it: the one place
//! where anything that follows the document (locks, presence) hooks in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ot_core::protocol::{
    encode, json_len, CursorPos, ErrorCode, Lock, OperationMsg, Presence, ServerMsg, TransportState,
};
use ot_core::sync::{OlderHistory, Outcome, Sequenced, ServerDoc, Submit, SubmitError};
use ot_core::{Document, EntityKind, Op, Prev};
use serde::Serialize;
use serde_json::Value;

use super::cluster::{Cluster, MAX_RESYNCS};
use super::locks::{LockTable, Refused};
use super::presence::{Joined, Member, Members, Refusal};
use super::remote::{HeldLock, MemberState, NodeEvent, Remote, Upserted};
use crate::auth::Role;
use crate::error::{clip_text, Close, Rejection};
use crate::store::{transport_newer, Durable, Entry, RoomAppend, StoreError};

/// A connection: its id (`_pk`) and the session that tells it from an earlier socket with the
/// same id.
pub type ConnKey = (Arc<str>, u64);

/// A room's clock reading: monotonic milliseconds for deadlines, and milliseconds since the epoch
/// for what the protocol shows (`serverTime`, `lastSeen`, `joinedAt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (any origin).
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub epoch_ms: u64,
}

/// What the core needs of the server's configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The room's id.
    pub room: Arc<str>,
    /// Connections per room.
    pub max_room_connections: usize,
    /// Connections per account per room.
    pub max_account_connections: usize,
    /// Most ops in a `since` catch-up.
    pub max_catchup: u64,
    /// Largest reply built at once (catch-ups, history reads).
    pub max_reply_bytes: usize,
    /// The document's size cap.
    pub max_doc_bytes: usize,
    /// A snapshot at least this many versions after the last one; more when the document is
    /// large (see [`SNAPSHOT_BYTES_PER_VERSION`]).
    pub snapshot_every: u64,
    /// Cursor fan-out period (0: at once).
    pub cursor_tick_ms: u64,
    /// A room without members unloads after this long.
    pub room_idle_ms: u64,
    /// Whether other nodes write the same store (lost races, other nodes' ops).
    pub shared_store: bool,
    /// With a shared store, how often a room with members reads other nodes' ops.
    pub cluster_poll_ms: u64,
    /// This node's id on the bus, when presence is room-wide (a bus between nodes).
    pub node: Option<Arc<str>>,
    /// How long a connection's published presence lives unless its node refreshes it.
    pub presence_ttl_ms: u64,
}

impl CoreConfig {
    /// The core's part of the server's configuration, for `room`; `node` is this node's bus id
    /// when presence is room-wide.
    pub fn new(config: &crate::Config, room: Arc<str>, shared_store: bool, node: Option<Arc<str>>) -> CoreConfig {
        CoreConfig {
            room,
            max_room_connections: config.max_room_connections,
            max_account_connections: config.max_account_connections,
            max_catchup: config.max_catchup,
            max_reply_bytes: config.max_reply_bytes,
            max_doc_bytes: config.max_doc_bytes,
            snapshot_every: config.snapshot_every.max(1),
            cursor_tick_ms: config.cursor_tick.as_millis() as u64,
            room_idle_ms: config.room_idle.as_millis() as u64,
            shared_store,
            cluster_poll_ms: (config.cluster_poll.as_millis() as u64).max(1),
            node,
            presence_ttl_ms: (config.presence_ttl.as_millis() as u64).max(3),
        }
    }
}

/// A connection asking to join.
#[derive(Debug, Clone)]
pub struct JoinReq {
    /// The connection id (`_pk`).
    pub conn: Arc<str>,
    /// Its session.
    pub session: u64,
    /// Account id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    pub avatar: Option<String>,
    /// Editor or viewer.
    pub role: Role,
    /// The version the client holds, for a catch-up.
    pub since: Option<u64>,
}

/// A decoded client message the room acts on.
#[derive(Debug, Clone)]
pub enum ClientIn {
    /// An edit (`from` is the connection id).
    Submit(Submit),
    /// A cursor.
    Cursor(CursorPos),
    /// Play / pause / seek.
    Transport {
        /// Whether playback runs.
        playing: bool,
        /// Seconds.
        position: f64,
    },
    /// Heartbeat.
    Ping,
    /// Take or refresh a soft lock (the `ttl` already checked and clamped by
    /// [`ot_core::protocol::lock_ttl_ms`]).
    Lock {
        /// As sent: `track`, `clip` or `marker` (anything else is `invalid_op`).
        target: String,
        /// The entity's id.
        id: String,
        /// Milliseconds until it expires.
        ttl_ms: u64,
    },
    /// Release a soft lock.
    Unlock {
        /// As sent.
        target: String,
        /// The entity's id.
        id: String,
    },
}

/// A store read the core asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadReq {
    /// History for a stale op: the state at `base` and the ops up to `until`, and the op this
    /// account stored under `op_id` (see [`crate::store::older_history`]).
    Older {
        /// The op's base.
        base: u64,
        /// The oldest version in memory.
        until: u64,
        /// The op's account.
        account: Option<Arc<str>>,
        /// The op's id.
        op_id: Option<String>,
        /// Bound of the read.
        max_bytes: usize,
    },
    /// The ops `since+1 ..= upto` for a joining connection.
    Catchup {
        /// The client's version.
        since: u64,
        /// The durable version.
        upto: u64,
    },
    /// Other nodes' ops after `from`, and the stored transport (shared store).
    Fetch {
        /// The durable version.
        from: u64,
        /// Most ops.
        limit: usize,
    },
    /// The op `account` stored under `op_id`, if any (an op without `baseVersion` may be a
    /// resend from beyond the memory window, or from another node).
    FindOp {
        /// The op's account.
        account: Option<Arc<str>>,
        /// The op's id.
        op_id: String,
    },
    /// Rebuild the room from the store after a lost race: a [`ServerDoc`] whose window reaches
    /// back to `from`, and the ops after `durable`.
    Rebuild {
        /// The oldest base to keep in the window.
        from: u64,
        /// The durable version before the race.
        durable: u64,
    },
}

/// The answer to a [`ReadReq`].
#[derive(Debug)]
pub enum ReadResult {
    /// For [`ReadReq::Older`].
    Older(Result<OlderHistory, StoreError>),
    /// For [`ReadReq::Catchup`].
    Ops(Result<Vec<Sequenced>, StoreError>),
    /// For [`ReadReq::Rebuild`].
    Rebuild(Result<Box<(ServerDoc, Vec<Sequenced>)>, StoreError>),
    /// For [`ReadReq::FindOp`].
    Found(Result<Option<Sequenced>, StoreError>),
    /// For [`ReadReq::Fetch`]: other nodes' ops and the stored transport.
    Fetched(Result<(Vec<Sequenced>, Option<TransportState>), StoreError>),
}

impl ReadResult {
    /// The answer to `req` when the read could not run at all.
    pub fn failed(req: &ReadReq, e: StoreError) -> ReadResult {
        match req {
            ReadReq::Older { .. } => ReadResult::Older(Err(e)),
            ReadReq::Catchup { .. } => ReadResult::Ops(Err(e)),
            ReadReq::Fetch { .. } => ReadResult::Fetched(Err(e)),
            ReadReq::FindOp { .. } => ReadResult::Found(Err(e)),
            ReadReq::Rebuild { .. } => ReadResult::Rebuild(Err(e)),
        }
    }
}

/// What the room is told.
#[derive(Debug)]
pub enum Input {
    /// A connection asks to join.
    Join(JoinReq),
    /// A connection ended.
    Leave {
        /// Connection id.
        conn: Arc<str>,
        /// Its session.
        session: u64,
    },
    /// A message from a member.
    Client {
        /// Connection id.
        conn: Arc<str>,
        /// Its session.
        session: u64,
        /// The message.
        msg: ClientIn,
    },
    /// The store's progress on the appends of durability epoch `epoch`.
    Durable {
        /// The epoch of the [`Output::Append`]s this is about.
        epoch: u64,
        /// How far they are stored.
        durable: Durable,
    },
    /// A read the core asked for finished.
    ReadDone {
        /// The id of the [`Output::Read`].
        id: u64,
        /// What it read.
        result: ReadResult,
    },
    /// An op another node stored, from the bus.
    Foreign(Sequenced),
    /// Presence news from another node of the room, from the bus.
    Node(NodeEvent),
    /// Every connection's presence of the room as Redis holds it, read after `requested_mono`
    /// (the answer to [`Output::PresenceSync`], or the first read of a room that loads).
    PresenceSnapshot {
        /// When the read was asked for (monotonic ms): whoever was heard of since stays.
        requested_mono: u64,
        /// What Redis holds (this node's own connections included).
        members: Vec<MemberState>,
    },
    /// A deadline passed (cursor tick, idle unload, cluster poll).
    Tick,
    /// The server is shutting down: finish what is outstanding, then close everyone.
    Shutdown,
}

/// A server-side counter the shell records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// An op was sequenced this many versions behind the head.
    Sequenced {
        /// Versions it was transformed over.
        depth: u64,
    },
    /// A join or an op was refused for a limit.
    LimitRefused,
    /// The number of locks held in this room changed by `delta`.
    LocksHeld {
        /// Locks taken minus locks released.
        delta: i64,
    },
    /// This many locks expired.
    LocksExpired {
        /// How many.
        count: u64,
    },
    /// A `lock` was refused with this code (`locked`, `lock_limit`, `invalid_op`, `forbidden`).
    LockRefused(ErrorCode),
}

/// What the room does.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send a frame to one connection (member or joining).
    Send {
        /// To whom.
        to: ConnKey,
        /// The JSON text.
        frame: String,
    },
    /// Send a frame to every member, or every member but one connection id.
    Broadcast {
        /// The JSON text.
        frame: String,
        /// Left out.
        except: Option<Arc<str>>,
    },
    /// A cursor frame from `from` to every other member; a slow reader keeps only the latest.
    Cursor {
        /// Whose cursor.
        from: Arc<str>,
        /// The JSON text.
        frame: String,
    },
    /// Close one connection (it stops being a member).
    Close {
        /// Which.
        to: ConnKey,
        /// Why.
        code: Close,
    },
    /// The answer to a join: from `Ok` on, the connection is a member and gets broadcasts.
    JoinReply {
        /// Who asked.
        to: ConnKey,
        /// Whether it joined.
        result: Result<(), Close>,
    },
    /// Store these ops; report progress as [`Input::Durable`] with this epoch.
    Append {
        /// The durability epoch (a new one starts after a lost race).
        epoch: u64,
        /// What to store.
        group: RoomAppend,
    },
    /// Read from the store; answer with [`Input::ReadDone`] and this id.
    Read {
        /// The id to answer with.
        id: u64,
        /// What to read.
        req: ReadReq,
    },
    /// Tell other nodes about this durable op (shared store).
    Publish(Sequenced),
    /// Tell the other nodes of the room about presence (and keep or delete the key of a
    /// [`NodeEvent::Member`] or [`NodeEvent::Left`]).
    Node(NodeEvent),
    /// The heartbeat: refresh these connections' keys, then read everyone's and answer with
    /// [`Input::PresenceSnapshot`].
    PresenceSync(Vec<MemberState>),
    /// Store the room's transport (it changed here).
    SaveTransport(TransportState),
    /// Count something.
    Stat(Stat),
    /// Nothing is left to do and nobody is here: the room may unload. If the shell keeps it
    /// (a message arrived meanwhile), it just goes on.
    Unload,
    /// The store failed: everyone was closed (1011); the room must be dropped and reloaded.
    Failed(String),
}

/// What a read in flight is for. A `Fetch` (of other nodes' ops) carries its number among the
/// room's fetches (see [`RoomCore::join_ahead`]).
#[derive(Debug)]
enum Reading {
    Older { key: ConnKey, submit: Submit },
    FindOp { key: ConnKey, submit: Submit },
    Catchup { join: JoinReq, since: u64, upto: u64 },
    Fetch { from: u64, seq: u64 },
    Rebuild,
}

/// See the module docs.
pub struct RoomCore {
    cfg: CoreConfig,
    doc: ServerDoc,
    /// Every version up to this one is stored; the state served to joiners is the one at it,
    /// which `doc` keeps reachable ([`ServerDoc::hold`]).
    durable_version: u64,
    /// Sequenced but not yet durable.
    pending: VecDeque<Sequenced>,
    /// Versions that resends are waiting for: not durable here yet, so the op's broadcast, which
    /// reaches the resender too, will be the answer (see [`RoomCore::duplicate`]).
    dup_waiting: Vec<u64>,
    members: Members,
    /// The people of other nodes (room-wide presence).
    remote: Remote,
    /// Local connections whose published state may be stale (locks changed, just joined).
    dirty: Vec<Arc<str>>,
    /// The locks each local connection was last published with.
    published_locks: HashMap<Arc<str>, Vec<HeldLock>>,
    /// When to refresh and read presence in Redis next (monotonic ms).
    presence_deadline: Option<u64>,
    /// The lock table changed in this turn (local locks may need publishing).
    locks_touched: bool,
    /// When a `transport` message last went out (monotonic ms).
    transport_sent_mono: Option<u64>,
    locks: LockTable,
    /// The lock count last reported as [`Stat::LocksHeld`].
    locks_reported: usize,
    transport: TransportState,
    cursor_deadline: Option<u64>,
    idle_since: Option<u64>,
    ever_joined: bool,
    doc_bytes: usize,
    /// The version of the newest snapshot stored or loaded.
    last_snapshot: u64,
    epoch: u64,
    /// A submit waits for its older history: later submits wait in `deferred`.
    awaiting_history: bool,
    /// A lost race's rebuild is under way: submits wait in `deferred`.
    rebuilding: bool,
    deferred: VecDeque<(ConnKey, Submit)>,
    reads: HashMap<u64, Reading>,
    next_read: u64,
    draining: bool,
    failed: bool,
    cluster: Cluster,
    out: Vec<Output>,
}

/// How long a room that nobody joined stays loaded after an HTTP read, in ms.
const HTTP_ONLY_IDLE_MS: u64 = 2000;

/// A `since` catch-up up to this size is sent as ops even when the state is smaller.
const CATCHUP_FLOOR: usize = 256 * 1024;

/// A transport change within this long after another `transport` went out is also echoed to
/// its sender (the other may still be on its way to it, and would land after its own change).
const TRANSPORT_ECHO_MS: u64 = 2000;

/// Most ops read from the store in one catch-up of other nodes' ops.
const FETCH_MAX: usize = 10_000;

/// The most snapshot bytes written per version on average: a document whose state takes more
/// than [`CoreConfig::snapshot_every`] times this is snapshotted every `size / this` versions
/// instead. Each snapshot serializes the whole document (on the store's writer thread: the
/// room hands over a copy of its persistent document, which costs it nothing), so at a fixed
/// cadence a growing document made every op dearer; this way snapshots cost about as much as
/// the log they shortcut, and a load replays at most as many ops as the snapshot is this many
/// bytes long.
pub const SNAPSHOT_BYTES_PER_VERSION: usize = 128;

fn text(msg: &ServerMsg) -> String {
    encode(msg)
}

/// A sequenced op as its `operation` message, encoded without cloning it.
pub fn op_text(msg: &OperationMsg) -> String {
    let mut body = encode(msg);
    if body.starts_with('{') && body != "{}" {
        // In place: the encoder's buffer has room to spare for the tag, most often.
        body.replace_range(..1, "{\"type\":\"operation\",");
        body
    } else {
        text(&ServerMsg::Operation(msg.clone()))
    }
}

/// The room's transport as a `transport` message.
fn transport_text(t: &TransportState) -> String {
    let user_id = t.user_id.clone().unwrap_or_default();
    text(&ServerMsg::Transport { playing: t.playing, position: t.position, user_id, server_time: t.server_time })
}

/// A refusal as an `error` message, through [`Rejection::code`].
pub fn error_text(r: &Rejection, op_id: Option<String>) -> String {
    text(&ServerMsg::Error { code: r.code(), message: r.to_string(), op_id, locked_by: None })
}

/// One entry of `GET …/collaborators`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collaborator {
    /// Connection id.
    pub id: String,
    /// Account id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    pub avatar: Option<String>,
    /// RFC 3339.
    pub joined_at: String,
}

impl RoomCore {
    /// A room loaded at `doc`'s version, with nobody in it.
    pub fn new(mut doc: ServerDoc, cfg: CoreConfig, now: Now) -> RoomCore {
        doc.hold(doc.version());
        let doc_bytes = json_len(&doc.doc().state(doc.version()));
        let cluster = Cluster::new(now.mono_ms + cfg.cluster_poll_ms);
        RoomCore {
            durable_version: doc.version(),
            transport: TransportState {
                playing: doc.doc().is_playing(),
                position: doc.doc().playhead(),
                server_time: now.epoch_ms,
                user_id: None,
            },
            doc,
            pending: VecDeque::new(),
            dup_waiting: Vec::new(),
            members: Members::default(),
            remote: Remote::default(),
            dirty: Vec::new(),
            published_locks: HashMap::new(),
            presence_deadline: None,
            locks_touched: false,
            transport_sent_mono: None,
            locks: LockTable::default(),
            locks_reported: 0,
            cursor_deadline: None,
            idle_since: Some(now.mono_ms),
            ever_joined: false,
            doc_bytes,
            last_snapshot: 0,
            epoch: 0,
            awaiting_history: false,
            rebuilding: false,
            deferred: VecDeque::new(),
            reads: HashMap::new(),
            next_read: 0,
            draining: false,
            failed: false,
            cluster,
            cfg,
            out: Vec::new(),
        }
    }

    /// Acts on one input and returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Output> {
        if !self.failed {
            match input {
                Input::Join(j) => self.join(j, now),
                Input::Leave { conn, session } => self.leave(&conn, session, now),
                Input::Client { conn, session, msg } => self.client(conn, session, msg, now),
                Input::Durable { epoch, durable } if epoch == self.epoch => self.on_durable(durable),
                Input::Durable { .. } => {}
                Input::ReadDone { id, result } => self.read_done(id, result, now),
                Input::Foreign(m) => self.foreign(m),
                Input::Node(e) => self.node_event(e, now),
                Input::PresenceSnapshot { requested_mono, members } => {
                    self.presence_snapshot(requested_mono, members, now)
                }
                Input::Tick => self.tick(now),
                Input::Shutdown => self.draining = true,
            }
            self.join_ahead(None, now);
            self.settle(now);
            self.publish_dirty(now);
        }
        let held = self.locks.len();
        if held != self.locks_reported {
            // First: a room that stops (unload, failure) stops at the output that says so.
            let delta = held as i64 - self.locks_reported as i64;
            self.out.insert(0, Output::Stat(Stat::LocksHeld { delta }));
            self.locks_reported = held;
        }
        std::mem::take(&mut self.out)
    }

    /// When to send [`Input::Tick`] next (monotonic ms), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        let idle = self.idle_since.filter(|_| !self.draining && self.members.is_empty()).map(|t| t + self.idle_ms());
        let poll = self.polls().then_some(self.cluster.next_poll);
        [self.cursor_deadline, idle, poll, self.locks.next_expiry(), self.presence_deadline, self.remote.next_expiry()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the room polls a shared store for other nodes' ops: while it has members, or
    /// joins waiting for the store to reach their `since`.
    fn polls(&self) -> bool {
        self.cfg.shared_store && !(self.members.is_empty() && self.cluster.ahead.is_empty())
    }

    /// Whether a submit is waiting on a store read: the shell stops reading its inbox meanwhile,
    /// so what waits stays bounded.
    pub fn is_blocked(&self) -> bool {
        self.awaiting_history || self.rebuilding
    }

    /// The durable version.
    pub fn durable_version(&self) -> u64 {
        self.durable_version
    }

    /// The durable state with the transport, as `GET …/state` shows it.
    pub fn state_value(&self) -> Value {
        let mut doc = self.durable_doc();
        doc.set_transport(self.transport.playing, self.transport.position);
        doc.to_state_value(self.durable_version)
    }

    /// The state at the durable version: held in the history window ([`ServerDoc::hold`]).
    fn durable_doc(&self) -> Document {
        self.doc.state_at(self.durable_version).unwrap_or_else(|| {
            tracing::error!(room = %self.cfg.room, version = self.durable_version, "durable state not held");
            self.doc.doc().clone()
        })
    }

    /// Moves the durable version, and the version `doc` holds for it.
    fn set_durable(&mut self, version: u64) {
        self.durable_version = version;
        self.doc.hold(version);
    }

    /// Who is connected (`GET …/collaborators`), on every node of the room.
    pub fn collaborators(&self) -> Vec<Collaborator> {
        let collaborator = |p: &Presence, joined_at: u64| Collaborator {
            id: p.id.clone(),
            user_id: p.user_id.clone(),
            name: p.name.clone(),
            avatar: p.avatar.clone(),
            joined_at: super::rfc3339(joined_at),
        };
        let mut out: Vec<Collaborator> = self.members.iter().map(|m| collaborator(&m.presence, m.joined_at)).collect();
        out.extend(self.remote_in_join_order().map(|r| collaborator(&r.presence, r.joined_at)));
        out
    }

    /// The presence of everyone in the room, this node's connections first.
    pub fn presences(&self) -> Vec<Presence> {
        let mut out = self.members.presences();
        out.extend(self.remote_in_join_order().map(|r| r.presence.clone()));
        out
    }

    /// The people of other nodes, in the order they joined.
    fn remote_in_join_order(&self) -> impl Iterator<Item = &MemberState> {
        let mut remote: Vec<&MemberState> = self.remote.iter().map(|(_, r)| &r.state).collect();
        remote.sort_by(|a, b| (a.joined_at, &a.presence.id).cmp(&(b.joined_at, &b.presence.id)));
        remote.into_iter()
    }

    /// The presence of `conn`, on this node or another.
    fn presence_of(&self, conn: &str) -> Option<&Presence> {
        self.members.by_conn(conn).map(|m| &m.presence).or_else(|| self.remote.get(conn).map(|r| &r.state.presence))
    }

    /// The room's lock table as `locks` messages show it.
    pub fn locks(&self) -> Vec<Lock> {
        self.locks.table(|conn| self.presence_of(conn).map(|p| (p.name.as_str(), p.color.as_str())))
    }

    /// The live document (including ops not yet durable).
    pub fn doc(&self) -> &ServerDoc {
        &self.doc
    }

    fn idle_ms(&self) -> u64 {
        if self.ever_joined {
            self.cfg.room_idle_ms
        } else {
            self.cfg.room_idle_ms.min(HTTP_ONLY_IDLE_MS)
        }
    }

    /// No write, read or duplicate answer outstanding.
    fn quiet(&self) -> bool {
        self.pending.is_empty()
            && !self.is_blocked()
            && self.reads.is_empty()
            && self.dup_waiting.is_empty()
            && self.deferred.is_empty()
            && self.cluster.ahead.is_empty()
    }

    /// After every input: finish a shutdown, note when the room became empty.
    fn settle(&mut self, now: Now) {
        if self.failed {
            return;
        }
        if self.draining && self.quiet() {
            self.locks.clear();
            for m in self.members.drain() {
                self.announce_left(&m.conn);
                self.out.push(Output::Close { to: m.key(), code: Close::GoingAway });
            }
            self.out.push(Output::Unload);
            return;
        }
        if self.members.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(now.mono_ms);
        }
    }

    fn read(&mut self, req: ReadReq, what: Reading) {
        self.next_read += 1;
        self.reads.insert(self.next_read, what);
        self.out.push(Output::Read { id: self.next_read, req });
    }

    fn send(&mut self, to: ConnKey, frame: String) {
        if self.members.contains(&to.0, to.1) {
            self.out.push(Output::Send { to, frame });
        }
    }

    // ---- membership ----

    fn join(&mut self, j: JoinReq, now: Now) {
        let key = (j.conn.clone(), j.session);
        if let Err(r) = self.admit(&j) {
            self.out.push(Output::JoinReply { to: key, result: Err(r) });
            return;
        }
        self.idle_since = None;
        self.ever_joined = true;
        let durable = self.durable_version;
        match j.since {
            None => self.finish_join(j, None, now),
            Some(s) if s > durable && self.cfg.shared_store => {
                // Another node got further: read the store up to `since` first (see `cluster`).
                self.cluster.ahead.push((j, self.cluster.fetches));
                self.fetch();
            }
            Some(s) if s > durable || durable - s > self.cfg.max_catchup => self.finish_join(j, None, now),
            Some(s) => match self.ops_in_memory(s) {
                Some(ops) => {
                    let ops = self.within_reply_bound(ops);
                    self.finish_join(j, ops, now)
                }
                None => self.read(
                    ReadReq::Catchup { since: s, upto: durable },
                    Reading::Catchup { join: j, since: s, upto: durable },
                ),
            },
        }
    }

    fn admit(&mut self, j: &JoinReq) -> Result<(), Close> {
        // A connection id is one presence room-wide: only its account takes it over.
        if self.remote.get(&j.conn).is_some_and(|r| r.state.presence.user_id != j.user_id) {
            return Err(Close::BadRequest);
        }
        let cfg = &self.cfg;
        match self.members.admit(&j.conn, &j.user_id, cfg.max_room_connections, cfg.max_account_connections) {
            Ok(_) => Ok(()),
            Err(Refusal::PkTaken) => Err(Close::BadRequest),
            Err(Refusal::Full) => {
                self.out.push(Output::Stat(Stat::LimitRefused));
                Err(Close::Full)
            }
        }
    }

    /// Registers the connection and sends `init` in the same turn, so no version falls between
    /// them. Admission is checked again: a catch-up read may have taken a while.
    fn finish_join(&mut self, j: JoinReq, ops: Option<Vec<Sequenced>>, now: Now) {
        let key = (j.conn.clone(), j.session);
        if let Err(r) = self.admit(&j) {
            self.out.push(Output::JoinReply { to: key, result: Err(r) });
            return;
        }
        self.idle_since = None;
        let conn = j.conn.clone();
        // Moving here from another node: the same presence goes on, nobody sees a leave or a join.
        let moved = self.remote.remove(&conn, None);
        let came_from = moved.as_ref().map(|r| (r.state.presence.color.as_str(), r.state.joined_at));
        let taken: Vec<&str> = self.remote.iter().map(|(_, r)| r.state.presence.color.as_str()).collect();
        let joined =
            self.members.join(j.conn, j.session, j.user_id, j.name, j.avatar, j.role, now.epoch_ms, came_from, &taken);
        match joined {
            Joined::New(_) if moved.is_some() => {}
            Joined::New(presence) => {
                let frame = text(&ServerMsg::UserJoined { user: presence });
                self.out.push(Output::Broadcast { frame, except: Some(conn.clone()) });
            }
            Joined::Replaced { old_session } => {
                self.out.push(Output::Close { to: (conn.clone(), old_session), code: Close::Replaced });
            }
        }
        if let Some(m) = self.members.get_mut(&key.0, key.1) {
            m.init_version = self.durable_version;
        }
        self.mark_dirty(&conn);
        if self.cfg.node.is_some() && self.presence_deadline.is_none() {
            self.presence_deadline = Some(now.mono_ms + self.heartbeat_ms());
        }
        let (state, ops) = match ops {
            Some(ops) => (None, Some(ops.iter().map(|m| (**m).clone()).collect())),
            None => (Some(self.state_value()), None),
        };
        let init = ServerMsg::Init {
            users: self.presences(),
            state,
            ops,
            your_id: conn.to_string(),
            version: self.durable_version,
            server_time: now.epoch_ms,
            transport: Some(self.transport.clone()),
            locks: self.locks(),
        };
        self.out.push(Output::Send { to: key.clone(), frame: text(&init) });
        self.out.push(Output::JoinReply { to: key, result: Ok(()) });
    }

    fn leave(&mut self, conn: &str, session: u64, now: Now) {
        // A socket that went away while its join waited (for a catch-up read, or for the store to
        // reach its `since`) never joins.
        let waited = |j: &JoinReq| j.session == session && &*j.conn == conn;
        self.cluster.ahead.retain(|(j, _)| !waited(j));
        self.reads.retain(|_, r| !matches!(r, Reading::Catchup { join, .. } if waited(join)));
        let Some(m) = self.members.leave(conn, session) else { return };
        self.out.push(Output::Close { to: m.key(), code: Close::GoingAway });
        self.announce_left(conn);
        // Before `user_left`: no table ever names someone who is gone.
        if self.locks.release_conn(conn) > 0 {
            self.broadcast_locks();
        }
        let frame = text(&ServerMsg::UserLeft { user_id: m.conn.to_string() });
        self.out.push(Output::Broadcast { frame, except: None });
        if self.members.is_empty() {
            self.idle_since = Some(now.mono_ms);
        }
    }

    // ---- messages ----

    fn client(&mut self, conn: Arc<str>, session: u64, msg: ClientIn, now: Now) {
        let Some(m) = self.members.get_mut(&conn, session) else { return };
        m.presence.last_seen = now.epoch_ms;
        let role = m.role;
        let key = (conn.clone(), session);
        match msg {
            ClientIn::Ping => self.send(key, text(&ServerMsg::Pong { server_time: now.epoch_ms })),
            ClientIn::Cursor(pos) => {
                self.members.cursor(&conn, session, pos);
                if self.cfg.cursor_tick_ms == 0 {
                    self.flush_cursors();
                } else if self.cursor_deadline.is_none() {
                    self.cursor_deadline = Some(now.mono_ms + self.cfg.cursor_tick_ms);
                }
            }
            ClientIn::Transport { .. } if !role.may_edit() => {
                self.send(key, error_text(&Rejection::Forbidden { what: "transport" }, None));
            }
            ClientIn::Submit(s) if !role.may_edit() => {
                self.send(key, error_text(&Rejection::Forbidden { what: "operation" }, s.op_id));
            }
            ClientIn::Transport { playing, position } => {
                let t =
                    TransportState { playing, position, server_time: now.epoch_ms, user_id: Some(conn.to_string()) };
                // A change at the same millisecond as a later one from another node loses to it.
                if transport_newer(&t, &self.transport) {
                    self.out.push(Output::SaveTransport(t.clone()));
                    if let Some(node) = self.cfg.node.clone() {
                        let event = NodeEvent::Transport { node: node.to_string(), transport: t.clone() };
                        self.out.push(Output::Node(event));
                    }
                    // A transport sent to the sender shortly before may reach it after it
                    // mirrored its own change: then it gets its change back, last.
                    let crossed = self.transport_sent_mono.is_some_and(|at| now.mono_ms < at + TRANSPORT_ECHO_MS);
                    self.adopt_transport(t, (!crossed).then_some(conn), now);
                } else {
                    // Another node's change at the same instant won: the sender, which mirrored
                    // its own change already, gets the room's.
                    self.send(key, transport_text(&self.transport));
                }
            }
            ClientIn::Submit(s) => self.submit(key, s, None),
            ClientIn::Lock { target, id, ttl_ms } => {
                if let Err(r) = self.lock(&conn, role, &target, &id, ttl_ms, now) {
                    self.out.push(Output::Stat(Stat::LockRefused(r.code())));
                    let locked_by = match &r {
                        Rejection::Locked { holder, .. } => self.presence_of(holder).cloned(),
                        _ => None,
                    };
                    let msg = ServerMsg::Error { code: r.code(), message: r.to_string(), op_id: None, locked_by };
                    self.send(key, text(&msg));
                }
            }
            ClientIn::Unlock { target, id } => {
                // An unlock of a lock this connection does not hold (free, someone else's, an
                // unknown target) changes nothing and is not answered.
                let released = EntityKind::from_name(&target).is_some_and(|k| self.locks.release(k, &id, &conn));
                if released {
                    self.broadcast_locks();
                }
            }
        }
    }

    // ---- room-wide presence ----

    /// Records the version of the snapshot the room was loaded from (0: none), from which the
    /// next snapshot is counted.
    pub fn restore_snapshot_version(&mut self, version: u64) {
        self.last_snapshot = version;
    }

    /// Versions between two snapshots: [`CoreConfig::snapshot_every`], or more for a document
    /// so large that snapshots at that cadence would write more than
    /// [`SNAPSHOT_BYTES_PER_VERSION`] per version on average.
    fn snapshot_interval(&self) -> u64 {
        let by_size = (self.doc_bytes / SNAPSHOT_BYTES_PER_VERSION) as u64;
        self.cfg.snapshot_every.max(by_size)
    }

    /// The transport as the store last had it, for a room that loads.
    pub fn restore_transport(&mut self, t: TransportState) {
        self.doc.doc_mut().set_transport(t.playing, t.position);
        self.transport = t;
    }

    fn heartbeat_ms(&self) -> u64 {
        (self.cfg.presence_ttl_ms / 3).max(1)
    }

    /// `m` as its node publishes it.
    fn member_state(&self, m: &Member, now: Now) -> MemberState {
        MemberState {
            node: self.cfg.node.as_deref().unwrap_or_default().to_string(),
            presence: m.presence.clone(),
            joined_at: m.joined_at,
            session_at: m.session_at,
            expires_at: now.epoch_ms.saturating_add(self.cfg.presence_ttl_ms),
            locks: self.locks.held_by(&m.conn),
        }
    }

    fn mark_dirty(&mut self, conn: &Arc<str>) {
        if self.cfg.node.is_some() && !self.dirty.contains(conn) {
            self.dirty.push(conn.clone());
        }
    }

    /// Publishes the state of every local connection that changed in this turn: those that
    /// joined, and those whose locks are not what was last published.
    fn publish_dirty(&mut self, now: Now) {
        if self.cfg.node.is_none() {
            return;
        }
        if self.locks_touched {
            self.locks_touched = false;
            for m in self.members.iter() {
                let held = self.locks.held_by(&m.conn);
                let last = self.published_locks.get(&m.conn).map_or(&[][..], Vec::as_slice);
                if held != last && !self.dirty.contains(&m.conn) {
                    self.dirty.push(m.conn.clone());
                }
            }
        }
        for conn in std::mem::take(&mut self.dirty) {
            let Some(m) = self.members.by_conn(&conn) else { continue };
            let state = self.member_state(m, now);
            self.published_locks.insert(conn, state.locks.clone());
            self.out.push(Output::Node(NodeEvent::Member(state)));
        }
    }

    /// Tells the other nodes that `conn` left this one.
    fn announce_left(&mut self, conn: &str) {
        self.published_locks.remove(conn);
        if let Some(node) = &self.cfg.node {
            self.out.push(Output::Node(NodeEvent::Left { node: node.to_string(), conn: conn.to_string() }));
        }
    }

    /// A connection of another node is gone (left, expired, or absent from Redis).
    fn remote_left(&mut self, conn: &str) {
        if self.locks.release_conn(conn) > 0 {
            self.broadcast_locks();
        }
        let frame = text(&ServerMsg::UserLeft { user_id: conn.to_string() });
        self.out.push(Output::Broadcast { frame, except: None });
    }

    fn node_event(&mut self, e: NodeEvent, now: Now) {
        if self.cfg.node.as_deref().map_or(true, |n| n == e.node()) {
            return;
        }
        match e {
            NodeEvent::Member(state) => self.remote_member(state, now),
            NodeEvent::Left { node, conn } => {
                if self.remote.remove(&conn, Some(&node)).is_some() {
                    self.remote_left(&conn);
                }
            }
            NodeEvent::Cursors { node, moved } => {
                for (conn, c) in moved {
                    if self.remote.cursor(&node, &conn, c.clone()) {
                        let msg = ServerMsg::Cursor { user_id: conn.clone(), x: c.x, y: c.y, selection: c.selection };
                        self.out.push(Output::Cursor { from: Arc::from(conn), frame: text(&msg) });
                    }
                }
            }
            NodeEvent::Transport { transport, .. } => {
                if transport_newer(&transport, &self.transport) {
                    self.adopt_transport(transport, None, now);
                }
            }
        }
    }

    /// Another node says `state.presence.id` is there.
    fn remote_member(&mut self, state: MemberState, now: Now) {
        let own = self.cfg.node.as_deref().unwrap_or_default();
        if state.node == own || state.expires_at <= now.epoch_ms {
            return;
        }
        let conn: Arc<str> = Arc::from(state.presence.id.as_str());
        let mut was_local = false;
        if let Some(m) = self.members.by_conn(&conn) {
            if !state.beats(m.session_at, own) {
                // Ours is the later session: say so, and the other node lets go of its socket.
                self.mark_dirty(&conn);
                return;
            }
            // The client moved to the other node while its old socket here lingered: that one
            // is replaced, and nobody sees it leave.
            let key = m.key();
            self.members.leave(&key.0, key.1);
            self.published_locks.remove(&conn);
            self.out.push(Output::Close { to: key, code: Close::Replaced });
            was_local = true;
        }
        let locks = state.locks.clone();
        let presence = state.presence.clone();
        match self.remote.upsert(state, now.mono_ms, now.epoch_ms) {
            Upserted::Stale => return,
            Upserted::New if !was_local => {
                let frame = text(&ServerMsg::UserJoined { user: presence });
                self.out.push(Output::Broadcast { frame, except: None });
            }
            Upserted::New | Upserted::Updated => {}
        }
        let (changed, _) = self.locks.replace_remote(&conn, &locks, now.mono_ms, now.epoch_ms);
        if changed {
            self.broadcast_locks();
        }
    }

    /// Redis's view of the room: everyone of another node in it is there, everyone not in it
    /// (and not heard of since the read was asked for) is gone.
    fn presence_snapshot(&mut self, requested_mono: u64, members: Vec<MemberState>, now: Now) {
        if self.cfg.node.is_none() {
            return;
        }
        let own = self.cfg.node.clone().unwrap_or_else(|| Arc::from(""));
        let present: Vec<String> = members.iter().filter(|m| *m.node != *own).map(|m| m.presence.id.clone()).collect();
        for m in members {
            self.remote_member(m, now);
        }
        let present: Vec<&str> = present.iter().map(String::as_str).collect();
        for conn in self.remote.absent_from(&present, requested_mono) {
            self.remote.remove(&conn, None);
            self.remote_left(&conn);
        }
    }

    /// Makes `t` the room's transport and tells the members (all but `except`).
    fn adopt_transport(&mut self, t: TransportState, except: Option<Arc<str>>, now: Now) {
        self.transport_sent_mono = Some(now.mono_ms);
        self.doc.doc_mut().set_transport(t.playing, t.position);
        self.out.push(Output::Broadcast { frame: transport_text(&t), except });
        self.transport = t;
    }

    // ---- soft locks ----

    /// Takes or refreshes a lock for `conn`, broadcasting the table; or says why not.
    fn lock(
        &mut self,
        conn: &Arc<str>,
        role: Role,
        target: &str,
        id: &str,
        ttl_ms: u64,
        now: Now,
    ) -> Result<(), Rejection> {
        if !role.may_lock() {
            return Err(Rejection::Forbidden { what: "lock" });
        }
        let kind =
            EntityKind::from_name(target).ok_or_else(|| Rejection::LockTarget { target: clip_text(target, 64) })?;
        // The live document: an entity whose insert is sequenced but not yet durable can be
        // locked by the client that just made it.
        if self.doc.doc().get(id).map(|e| e.kind) != Some(kind) {
            return Err(Rejection::LockMissing { target: kind.as_str(), id: clip_text(id, 128) });
        }
        match self.locks.take(kind, id, conn, ttl_ms, now.mono_ms, now.epoch_ms) {
            Ok(()) => {
                self.broadcast_locks();
                Ok(())
            }
            Err(Refused::Limit) => Err(Rejection::LockLimit),
            Err(Refused::HeldBy(holder)) => {
                let expires_at = self.locks.holder(kind, id).map_or(0, |h| h.expires_epoch);
                let name = self.presence_of(&holder).map_or_else(|| holder.to_string(), |p| p.name.clone());
                Err(Rejection::Locked {
                    target: kind.as_str(),
                    id: clip_text(id, 128),
                    name,
                    holder: holder.to_string(),
                    expires_at,
                })
            }
        }
    }

    /// The whole table to everyone (PROTOCOL §7: after every change).
    fn broadcast_locks(&mut self) {
        self.locks_touched = true;
        let frame = text(&ServerMsg::Locks { locks: self.locks() });
        self.out.push(Output::Broadcast { frame, except: None });
    }

    /// Releases the locks on what `ops` deleted: each deleted entity, and the clips a deleted
    /// track held (its delete annotation carries the removed subtree). Returns whether any went.
    fn release_deleted(&mut self, ops: &[Op]) -> bool {
        let mut released = false;
        for op in ops {
            let Op::Delete(d) = op else { continue };
            released |= self.locks.release_entity(d.kind, &d.id);
            if d.kind != EntityKind::Track {
                continue;
            }
            let clips = d.value.as_ref().and_then(|v| v.get("clips")).and_then(Value::as_array);
            for clip in clips.into_iter().flatten() {
                if let Some(cid) = clip.get("id").and_then(Value::as_str) {
                    released |= self.locks.release_entity(EntityKind::Clip, cid);
                }
            }
        }
        released
    }

    fn flush_cursors(&mut self) {
        self.cursor_deadline = None;
        let moved = self.members.take_moved_cursors();
        if let (Some(node), false) = (&self.cfg.node, moved.is_empty()) {
            let moved = moved.iter().map(|(conn, c)| (conn.to_string(), c.clone())).collect();
            self.out.push(Output::Node(NodeEvent::Cursors { node: node.to_string(), moved }));
        }
        for (conn, c) in moved {
            let msg = ServerMsg::Cursor { user_id: conn.to_string(), x: c.x, y: c.y, selection: c.selection };
            self.out.push(Output::Cursor { from: conn, frame: text(&msg) });
        }
    }

    fn tick(&mut self, now: Now) {
        if self.cursor_deadline.is_some_and(|t| t <= now.mono_ms) {
            self.flush_cursors();
        }
        let expired = self.locks.expire(now.mono_ms);
        if expired > 0 {
            self.out.push(Output::Stat(Stat::LocksExpired { count: expired as u64 }));
            self.broadcast_locks();
        }
        for conn in self.remote.expire(now.mono_ms) {
            // A node that died: its people's keys expired and no leave was ever sent.
            self.remote_left(&conn);
        }
        if self.presence_deadline.is_some_and(|t| t <= now.mono_ms) {
            self.presence_deadline = None;
            if !self.members.is_empty() {
                let states = self.members.iter().map(|m| self.member_state(m, now)).collect();
                self.out.push(Output::PresenceSync(states));
                self.presence_deadline = Some(now.mono_ms + self.heartbeat_ms());
            }
        }
        if self.cfg.shared_store && self.cluster.next_poll <= now.mono_ms {
            self.cluster.next_poll = now.mono_ms + self.cfg.cluster_poll_ms;
            if self.polls() {
                self.fetch();
            }
        }
        let idle_over = self.idle_since.is_some_and(|t| t + self.idle_ms() <= now.mono_ms);
        if idle_over && self.members.is_empty() && self.quiet() && !self.draining {
            // The shell unloads unless a message is already waiting; then the clock restarts.
            self.idle_since = Some(now.mono_ms);
            self.out.push(Output::Unload);
        }
    }

    // ---- the document ----

    fn submit(&mut self, key: ConnKey, s: Submit, older: Option<&OlderHistory>) {
        if self.is_blocked() {
            self.deferred.push_back((key, s));
            return;
        }
        // Only an op with an id and no base, from a socket that has had none sequenced yet,
        // can be a resend nothing in memory recognises (the member lookup is not per op).
        let lookup = s.base.is_none() && older.is_none() && s.op_id.is_some();
        let lookup =
            lookup && self.members.by_conn(&key.0).is_some_and(|m| m.session == key.1 && m.first_sequenced.is_none());
        if let (true, Some(op_id)) = (lookup, &s.op_id) {
            // Without a base nothing tells a resend from a new op, and the memory window holds
            // only recent op ids: ask the store, which finds every op sent without a base by
            // (room, account, opId) (an op with a base is resent with it, PROTOCOL §4, and found
            // among the ops after its base).
            // Only until this socket has had an op sequenced: a client resends its unacked ops
            // first, in order, so what follows a new op is new too.
            self.awaiting_history = true;
            let req = ReadReq::FindOp { account: s.account.clone(), op_id: op_id.clone() };
            self.read(req, Reading::FindOp { key, submit: s });
            return;
        }
        self.submit_looked_up(key, s, older);
    }

    /// [`Self::submit`] once an op without a base was looked up in the store and not found.
    fn submit_looked_up(&mut self, key: ConnKey, s: Submit, older: Option<&OlderHistory>) {
        let op_id = s.op_id.clone();
        let limit = self.cfg.max_doc_bytes;
        let bytes = self.doc_bytes.saturating_add(growth(&s.ops));
        if bytes > limit {
            self.out.push(Output::Stat(Stat::LimitRefused));
            self.send(key, error_text(&Rejection::DocTooLarge { bytes, limit }, op_id));
            return;
        }
        let head = self.doc.version();
        let base = s.base;
        match self.doc.submit_ref(&s, older) {
            Ok(Outcome::Sequenced(msg)) => {
                self.out.push(Output::Stat(Stat::Sequenced { depth: head - base.unwrap_or(head).min(head) }));
                if let Some(m) = self.members.get_mut(&key.0, key.1) {
                    m.first_sequenced.get_or_insert(msg.version);
                }
                if self.cfg.shared_store {
                    self.cluster.submits.insert(msg.version, (key, s));
                }
                self.sequenced(msg, base.is_none());
            }
            Ok(Outcome::Duplicate(msg)) => self.duplicate(key, msg),
            Err(SubmitError::NeedHistory { base }) if older.is_none() => {
                self.awaiting_history = true;
                let req = ReadReq::Older {
                    base,
                    until: self.doc.window_start(),
                    account: s.account.clone(),
                    op_id: s.op_id.clone(),
                    max_bytes: self.cfg.max_reply_bytes,
                };
                self.read(req, Reading::Older { key, submit: s });
            }
            Err(e) => self.send(key, error_text(&Rejection::Submit(e), op_id)),
        }
    }

    /// Answers a resend with its original message. An op sent on an earlier socket (a resend
    /// after a reconnect) is answered here only if its version is at or below the one the new
    /// socket's `init` reported. A later version reaches the socket as the broadcast of that
    /// very message, which is then the answer: already (it became durable here before the
    /// resend arrived, during a store lookup, or in a lost race's rebuild), or once it is
    /// durable here (ours still being stored, or another node's this node has not caught up
    /// to). Answering it again would hand the socket a version twice, after its init. An op
    /// this very socket sent and sends again is answered again once durable.
    fn duplicate(&mut self, key: ConnKey, msg: Sequenced) {
        let Some(m) = self.members.get_mut(&key.0, key.1) else { return };
        let this_socket = m.first_sequenced.is_some_and(|f| msg.version >= f) && msg.user_id == *m.conn;
        if msg.version <= self.durable_version && (msg.version <= m.init_version || this_socket) {
            self.send(key, op_text(&msg));
        } else if msg.version > self.durable_version {
            self.dup_waiting.push(msg.version);
            if self.cfg.shared_store {
                self.fetch();
            }
        }
    }

    /// A freshly sequenced op: stored, then (once durable) applied for everyone. `by_id`: it
    /// came without a base (see [`Entry::by_id`]).
    fn sequenced(&mut self, msg: Sequenced, by_id: bool) {
        self.doc_bytes = resized(self.doc_bytes, &msg.operation);
        let due = msg.version.saturating_sub(self.last_snapshot) >= self.snapshot_interval();
        let snapshot = due.then(|| self.doc.doc().clone());
        if due {
            self.last_snapshot = msg.version;
        }
        let group =
            RoomAppend { room: self.cfg.room.clone(), entries: vec![Entry { msg: msg.clone(), snapshot, by_id }] };
        self.pending.push_back(msg);
        self.out.push(Output::Append { epoch: self.epoch, group });
    }

    fn on_durable(&mut self, d: Durable) {
        if let Some(reason) = d.failed {
            self.fail(&reason);
            return;
        }
        while self.pending.front().is_some_and(|m| m.version <= d.version) {
            if let Some(m) = self.pending.pop_front() {
                self.set_durable(m.version);
                if self.cfg.shared_store {
                    self.cluster.submits.remove(&m.version);
                    self.cluster.resyncs = 0;
                    self.out.push(Output::Publish(m.clone()));
                }
                self.applied(&m);
            }
        }
        if let Some(version) = d.conflict {
            self.lost_race(version);
        }
    }

    /// Every op that reaches the durable state — ours or another node's — passes here.
    /// Locks on what it deleted are released here, after the op's broadcast.
    fn applied(&mut self, msg: &Sequenced) {
        self.out.push(Output::Broadcast { frame: op_text(msg), except: None });
        // The answer to the resends waiting for this version (see `duplicate`).
        self.dup_waiting.retain(|&v| v != msg.version);
        if !self.locks.is_empty() && self.release_deleted(&msg.operation) {
            self.broadcast_locks();
        }
    }

    /// The store failed: what memory holds may be ahead of it, so drop the room; clients
    /// reconnect and resync from what is stored.
    fn fail(&mut self, reason: &str) {
        self.locks.clear();
        for (j, _) in std::mem::take(&mut self.cluster.ahead) {
            self.out.push(Output::JoinReply { to: (j.conn, j.session), result: Err(Close::Internal) });
        }
        for m in self.members.drain() {
            self.announce_left(&m.conn);
            self.out.push(Output::Close { to: m.key(), code: Close::Internal });
        }
        self.failed = true;
        self.out.push(Output::Failed(reason.to_string()));
    }

    fn drain_deferred(&mut self) {
        while !self.is_blocked() && !self.failed {
            let Some((key, s)) = self.deferred.pop_front() else { break };
            self.submit(key, s, None);
        }
    }

    fn read_done(&mut self, id: u64, result: ReadResult, now: Now) {
        let Some(reading) = self.reads.remove(&id) else { return };
        match (reading, result) {
            (Reading::Older { key, submit }, ReadResult::Older(r)) => {
                self.awaiting_history = false;
                if self.rebuilding {
                    // A lost race since: the history read belongs to a document that is being
                    // replaced; the submit goes first once the rebuild is done.
                    self.deferred.push_front((key, submit));
                    return;
                }
                match r {
                    Ok(older) => self.submit(key, submit, Some(&older)),
                    Err(StoreError::HistoryTooLarge { base, .. }) => {
                        let e = SubmitError::VersionTooOld { base, oldest: self.doc.window_start() };
                        self.send(key, error_text(&Rejection::Submit(e), submit.op_id));
                    }
                    Err(e) => self.send(key, error_text(&Rejection::Storage(e.to_string()), submit.op_id)),
                }
                self.drain_deferred();
            }
            (Reading::FindOp { key, submit }, ReadResult::Found(r)) => {
                self.awaiting_history = false;
                if self.rebuilding {
                    self.deferred.push_front((key, submit));
                    return;
                }
                match r {
                    // The store scopes op ids per account: this is the sender's own op.
                    Ok(Some(msg)) => self.duplicate(key, msg),
                    Ok(None) => self.submit_looked_up(key, submit, None),
                    Err(e) => self.send(key, error_text(&Rejection::Storage(e.to_string()), submit.op_id)),
                }
                self.drain_deferred();
            }
            (Reading::Catchup { join, since, upto }, ReadResult::Ops(r)) => {
                let ops = match r {
                    Ok(mut ops) if ops.len() as u64 == upto - since => {
                        let ops = if upto == self.durable_version {
                            Some(ops)
                        } else {
                            self.ops_in_memory(upto).map(|more| {
                                ops.extend(more);
                                ops
                            })
                        };
                        ops.and_then(|ops| self.within_reply_bound(ops))
                    }
                    // Short or failed: the full state is always right.
                    _ => None,
                };
                self.finish_join(join, ops, now);
            }
            (Reading::Fetch { from, seq }, ReadResult::Fetched(r)) => {
                self.cluster.fetching = false;
                // Something of ours sequenced meanwhile: its append decides (a conflict
                // resyncs); the next poll looks again. A failed read is retried then too.
                let mut exhausted = r.is_err();
                if let Ok((ops, transport)) = r {
                    if from == self.durable_version && self.can_catch_up() {
                        exhausted = ops.len() < FETCH_MAX;
                        self.apply_foreign(ops);
                    }
                    // The stored transport is the truth a lost bus message is repaired from.
                    if let Some(t) = transport.filter(|t| transport_newer(t, &self.transport)) {
                        self.adopt_transport(t, None, now);
                    }
                }
                if exhausted {
                    self.join_ahead(Some(seq), now);
                }
            }
            (Reading::Rebuild, ReadResult::Rebuild(r)) => match r {
                Ok(rebuilt) => {
                    let (sd, missed) = *rebuilt;
                    self.doc = sd;
                    self.doc.doc_mut().set_transport(self.transport.playing, self.transport.position);
                    self.set_durable(self.doc.version());
                    self.doc_bytes = json_len(&self.doc.doc().state(self.durable_version));
                    for m in &missed {
                        self.applied(m);
                    }
                    self.rebuilding = false;
                    self.drain_deferred();
                }
                Err(e) => self.fail(&format!("resync after a lost race: {e}")),
            },
            (reading, _) => {
                // A shell bug: answer a read with the other kind. Refuse loudly in tests.
                debug_assert!(false, "read answered with the wrong kind: {reading:?}");
            }
        }
    }

    /// The catch-up `ops`, or `None` (send the state instead) when they are larger than
    /// `max_reply_bytes`, or larger than both the state and [`CATCHUP_FLOOR`]: a catch-up never
    /// costs much more than a fresh load, and small ones always go as ops, so a client coming
    /// back with pending edits rebases them instead of reloading.
    fn within_reply_bound(&self, ops: Vec<Sequenced>) -> Option<Vec<Sequenced>> {
        let bound = self.cfg.max_reply_bytes.min(self.doc_bytes.max(CATCHUP_FLOOR));
        let mut bytes = 0usize;
        for m in &ops {
            bytes += json_len(&**m);
            if bytes > bound {
                return None;
            }
        }
        Some(ops)
    }

    /// The durable ops after `since`, if the memory window still holds them all.
    fn ops_in_memory(&self, since: u64) -> Option<Vec<Sequenced>> {
        let ops = self.doc.ops_since(since)?;
        Some(ops.into_iter().take_while(|m| m.version <= self.durable_version).collect())
    }

    // ---- a shared store ----

    /// Nothing of ours is between the durable version and the head.
    fn can_catch_up(&self) -> bool {
        self.pending.is_empty() && !self.is_blocked() && self.doc.version() == self.durable_version
    }

    fn fetch(&mut self) {
        if self.cluster.fetching || !self.can_catch_up() {
            return;
        }
        self.cluster.fetching = true;
        let from = self.durable_version;
        self.cluster.fetches += 1;
        let seq = self.cluster.fetches;
        self.read(ReadReq::Fetch { from, limit: FETCH_MAX }, Reading::Fetch { from, seq });
    }

    fn foreign(&mut self, m: Sequenced) {
        if !self.cfg.shared_store || m.version <= self.durable_version || !self.can_catch_up() {
            return;
        }
        if m.version == self.durable_version + 1 {
            self.apply_foreign(vec![m]);
        } else {
            // A gap on the bus: read what is missing.
            self.fetch();
        }
    }

    /// The joins waiting for a `since` ahead of the durable version (see [`super::cluster`]):
    /// those the room has reached join with their catch-up. After read number `exhausted` of
    /// other nodes' ops found nothing more (or failed), those that came before it was issued
    /// get the state: the store does not hold their `since`. The rest wait for the next read.
    fn join_ahead(&mut self, exhausted: Option<u64>, now: Now) {
        if self.cluster.ahead.is_empty() || self.failed {
            return;
        }
        let durable = self.durable_version;
        for (j, queued_after) in std::mem::take(&mut self.cluster.ahead) {
            match j.since {
                Some(s) if s > durable && exhausted.is_some_and(|n| queued_after < n) => self.finish_join(j, None, now),
                Some(s) if s > durable => self.cluster.ahead.push((j, queued_after)),
                _ => self.join(j, now),
            }
        }
        if !self.cluster.ahead.is_empty() {
            self.fetch();
        }
    }

    /// Replays ops other nodes stored (consecutive from the durable version) for our members.
    fn apply_foreign(&mut self, ops: Vec<Sequenced>) {
        for m in ops {
            if m.version <= self.durable_version {
                continue;
            }
            let v = m.version;
            if let Err(e) = self.doc.replay(m.clone()) {
                self.fail(&format!("replaying version {v} from another node: {e}"));
                return;
            }
            self.set_durable(v);
            self.doc_bytes = resized(self.doc_bytes, &m.operation);
            self.applied(&m);
        }
    }

    /// Another node stored a version we sequenced: drop what is pending (never acknowledged),
    /// rebuild from the store, and submit the dropped ops again in order, so they rebase over
    /// what we missed. Appends from then on belong to a new durability epoch.
    fn lost_race(&mut self, version: u64) {
        self.cluster.resyncs += 1;
        if self.cluster.resyncs > MAX_RESYNCS {
            self.fail(&format!("another node took version {version} of this room {MAX_RESYNCS} times in a row"));
            return;
        }
        let durable = self.durable_version;
        let mut redo: VecDeque<_> =
            self.pending.drain(..).filter_map(|m| self.cluster.submits.remove(&m.version)).collect();
        redo.extend(self.deferred.drain(..));
        self.deferred = redo;
        self.cluster.submits.clear();
        // Every waiting version is past the durable one: a dropped version of ours is answered by
        // the broadcast of its resubmit, another node's by the rebuild's.
        self.dup_waiting.clear();
        // The dropped versions were never this node's: a socket whose first op was among them
        // has had nothing sequenced yet (its resubmit is looked up or sequenced afresh).
        for m in self.members.iter_mut().filter(|m| m.first_sequenced.is_some_and(|f| f > durable)) {
            m.first_sequenced = None;
        }
        self.epoch += 1;
        self.rebuilding = true;
        let from = self.deferred.iter().filter_map(|(_, s)| s.base).fold(durable, u64::min);
        self.read(ReadReq::Rebuild { from, durable }, Reading::Rebuild);
    }
}

/// How much `ops` can grow a document at most: what their inserts and writes carry.
fn growth(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Insert(o) => json_len(&o.value) + o.id.len() + 16,
            Op::Update(o) => json_len(&o.value) + o.path.iter().map(|k| k.len() + 4).sum::<usize>(),
            Op::Delete(_) | Op::Move(_) => 0,
        })
        .sum()
}

/// The document size `bytes` after the annotated `ops` applied to it.
fn resized(bytes: usize, ops: &[Op]) -> usize {
    ops.iter().fold(bytes, |b, op| match op {
        Op::Insert(o) => b + json_len(&o.value) + o.id.len() + 16,
        Op::Delete(o) => b.saturating_sub(o.value.as_ref().map_or(0, json_len) + o.id.len() + 16),
        Op::Update(o) => {
            let old = match &o.prev {
                Some(Prev::Value(v)) => json_len(v),
                _ => 0,
            };
            let new = if o.remove { 0 } else { json_len(&o.value) };
            (b + new).saturating_sub(old)
        }
        Op::Move(_) => b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_text_is_the_tagged_operation_message() {
        let op: Op = serde_json::from_str(r#"{"type":"update","target":"project","path":["tempo"],"value":128}"#)
            .expect("an update");
        for op_id in [Some("o1".to_string()), None] {
            let msg =
                OperationMsg { operation: vec![op.clone()], version: 7, user_id: "u1".into(), op_id, account: None };
            let frame = op_text(&msg);
            let decoded: ServerMsg = serde_json::from_str(&frame).expect("a server message");
            assert_eq!(decoded, ServerMsg::Operation(msg));
        }
        let empty = OperationMsg { operation: vec![], version: 3, user_id: String::new(), op_id: None, account: None };
        let decoded: ServerMsg = serde_json::from_str(&op_text(&empty)).expect("a server message");
        assert_eq!(decoded, ServerMsg::Operation(empty));
    }
}
