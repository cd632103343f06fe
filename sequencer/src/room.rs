//! Rooms: one task per room owning its [`ServerDoc`], presence, cursors and transport, and the
//! [`Registry`] that finds or starts them.
//!
//! A room loads from the store on first use (inside its own task, so the registry lock is only
//! held to insert an inbox) and unloads after `room_idle` without connections. An op is
//! sequenced by ot-core, handed to the store, and broadcast — to everyone, the sender's ack
//! included — only once the store reports it durable; `init` is built from the durable state
//! in the same room turn that registers the connection, so no version falls between them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ot_core::protocol::{encode, json_len, CursorPos, OperationMsg, Presence, ServerMsg, TransportState};
use ot_core::sync::{OlderHistory, Outcome, Sequenced, ServerDoc, Submit, SubmitError};
use ot_core::{Document, Op, Prev};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, error, info, warn, Instrument};

use crate::auth::Role;
use crate::error::{Close, Rejection};
use crate::outbox::Outbox;
use crate::store::{older_history, restore, Durable, Entry, RoomAppend, StoreError, WriteReq};
use crate::Shared;

mod cluster;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Distinct presence colors, handed out lowest-free-first.
const PALETTE: [&str; 12] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990",
    "#9a6324", "#800000",
];

/// A connection asking to join.
pub struct Join {
    /// The connection id (`_pk`).
    pub conn: Arc<str>,
    /// Tells this connection from an earlier one with the same `_pk`.
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
    /// Where the room sends this connection's frames.
    pub outbox: Arc<Outbox>,
    /// Answered once `init` is queued, or with the close reason.
    pub reply: oneshot::Sender<Result<(), Close>>,
}

/// A decoded client message the room acts on.
#[derive(Debug)]
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

/// What a room's inbox takes.
pub enum RoomMsg {
    /// Register a connection and send it `init`.
    Join(Join),
    /// A connection ended.
    Leave {
        /// Connection id.
        conn: Arc<str>,
        /// Its session.
        session: u64,
    },
    /// A message from a joined connection.
    Client {
        /// Connection id.
        conn: Arc<str>,
        /// Its session.
        session: u64,
        /// The message.
        msg: ClientIn,
    },
    /// The durable state (`GET …/state`).
    State(oneshot::Sender<Value>),
    /// Who is connected (`GET …/collaborators`).
    Collaborators(oneshot::Sender<Vec<Collaborator>>),
    /// The durable version.
    Head(oneshot::Sender<u64>),
}

/// Results of store reads the room started, delivered back to its task.
enum Loaded {
    Older { conn: Arc<str>, session: u64, submit: Submit, result: Result<OlderHistory, StoreError> },
    Catchup { join: Join, since: u64, upto: u64, result: Result<Vec<Sequenced>, StoreError> },
    Cluster(cluster::Fetched),
}

#[derive(Default)]
struct RegInner {
    rooms: HashMap<Arc<str>, (u64, mpsc::Sender<RoomMsg>)>,
    next_gen: u64,
    closed: bool,
}

/// Room id → inbox. The lock is held only to look up, insert or remove an entry.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<RegInner>,
}

/// A `since` catch-up up to this size is sent as ops even when the state is smaller.
const CATCHUP_FLOOR: usize = 256 * 1024;

/// How long a room that nobody joined stays loaded after an HTTP read.
const HTTP_ONLY_IDLE: Duration = Duration::from_secs(2);

/// Capacity of a room's inbox.
const INBOX: usize = 1024;

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegInner> {
        // No critical section below can panic; a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inbox of `room`, starting its task if it is not loaded: refused once shutdown began,
    /// and for a room that is not loaded while `max_rooms` are (a room someone is in is never
    /// evicted to make space).
    pub fn get_or_spawn(&self, shared: &Arc<Shared>, room: &str) -> Result<mpsc::Sender<RoomMsg>, Close> {
        let mut g = self.lock();
        if g.closed {
            return Err(Close::GoingAway);
        }
        if let Some((_, tx)) = g.rooms.get(room) {
            return Ok(tx.clone());
        }
        if g.rooms.len() >= shared.config.max_rooms {
            shared.metrics.room_refused();
            return Err(Close::Full);
        }
        let (tx, rx) = mpsc::channel(INBOX);
        g.next_gen += 1;
        let gen = g.next_gen;
        let id: Arc<str> = Arc::from(room);
        g.rooms.insert(id.clone(), (gen, tx.clone()));
        drop(g);
        let span = tracing::info_span!("room", room = %id);
        tokio::spawn(room_task(shared.clone(), id, gen, rx).instrument(span));
        Ok(tx)
    }

    /// Removes `room` if it is still generation `gen` and `rx` is empty (so no message can be
    /// lost: later senders find no entry and start a fresh room).
    fn remove_if_idle(&self, room: &str, gen: u64, rx: &mpsc::Receiver<RoomMsg>) -> bool {
        let mut g = self.lock();
        if !rx.is_empty() {
            return false;
        }
        if g.rooms.get(room).is_some_and(|(x, _)| *x == gen) {
            g.rooms.remove(room);
        }
        true
    }

    fn remove(&self, room: &str, gen: u64) {
        let mut g = self.lock();
        if g.rooms.get(room).is_some_and(|(x, _)| *x == gen) {
            g.rooms.remove(room);
        }
    }

    /// Stops starting rooms and drops the registry's inboxes (shutdown).
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.rooms.clear();
    }

    /// Rooms loaded now.
    pub fn len(&self) -> usize {
        self.lock().rooms.len()
    }

    /// Whether no room is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends `make(reply)` to `room` and awaits the answer, retrying once if the room was unloading.
pub async fn ask<T>(shared: &Arc<Shared>, room: &str, make: impl Fn(oneshot::Sender<T>) -> RoomMsg) -> Option<T> {
    for _ in 0..5 {
        let tx = shared.rooms.get_or_spawn(shared, room).ok()?;
        let (reply, answer) = oneshot::channel();
        if tx.send(make(reply)).await.is_err() {
            continue;
        }
        match answer.await {
            Ok(v) => return Some(v),
            Err(_) => continue,
        }
    }
    None
}

struct Member {
    conn: Arc<str>,
    session: u64,
    presence: Presence,
    role: Role,
    outbox: Arc<Outbox>,
    joined_at: u64,
    cursor_dirty: bool,
}

struct Room {
    id: Arc<str>,
    gen: u64,
    shared: Arc<Shared>,
    doc: ServerDoc,
    durable_version: u64,
    durable_doc: Document,
    /// Sequenced but not yet durable, with the state after each.
    pending: VecDeque<(Sequenced, Document)>,
    /// Duplicate answers waiting for their op to be durable.
    dup_waiting: Vec<(Arc<str>, u64, Sequenced)>,
    members: Vec<Member>,
    transport: TransportState,
    cursor_deadline: Option<Instant>,
    durable_tx: Arc<watch::Sender<Durable>>,
    durable_rx: watch::Receiver<Durable>,
    writer: Option<mpsc::Sender<WriteReq>>,
    loads_tx: mpsc::Sender<Loaded>,
    /// A submit waits for older history; the inbox is not read meanwhile (keeps order).
    blocked: bool,
    outstanding: usize,
    idle_since: Option<Instant>,
    /// Whether anyone ever joined: a room loaded only for an HTTP read unloads sooner.
    ever_joined: bool,
    /// The document's JSON size, kept up to date from each op's annotations (an estimate
    /// within a few bytes per op; recomputed exactly at every load).
    doc_bytes: usize,
    draining: bool,
    failed: bool,
    /// Several nodes on one store: lost races, other nodes' ops (`room/cluster.rs`).
    cluster: cluster::Cluster,
}

async fn room_task(shared: Arc<Shared>, id: Arc<str>, gen: u64, mut rx: mpsc::Receiver<RoomMsg>) {
    let _done = shared.done.clone();
    let store = shared.persister.store.clone();
    let cfg = &shared.config;
    let (window, max_rebase, bytes) = (cfg.history_window, cfg.max_rebase, cfg.max_history_bytes);
    let room_id = id.clone();
    let loaded = if store.blocking() {
        tokio::task::spawn_blocking(move || {
            store.load(&room_id).and_then(|l| restore(&room_id, l, window, max_rebase, bytes))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Corrupt { room: id.to_string(), version: 0, reason: e.to_string() }))
    } else {
        store.load(&room_id).and_then(|l| restore(&room_id, l, window, max_rebase, bytes))
    };
    let doc = match loaded {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "room failed to load");
            shared.rooms.remove(&id, gen);
            return;
        }
    };
    let doc_bytes = json_len(&doc.doc().state(doc.version()));
    info!(version = doc.version(), bytes = doc_bytes, "room loaded");
    shared.metrics.room(true);
    let (durable_tx, durable_rx) = watch::channel(Durable { version: doc.version(), failed: None, conflict: None });
    let (loads_tx, mut loads_rx) = mpsc::channel(64);
    let cluster = cluster::Cluster::new(&shared, &id);
    let mut room = Room {
        cluster,
        id,
        gen,
        durable_version: doc.version(),
        durable_doc: doc.doc().clone(),
        transport: TransportState {
            playing: doc.doc().is_playing(),
            position: doc.doc().playhead(),
            server_time: now_ms(),
        },
        doc,
        pending: VecDeque::new(),
        dup_waiting: Vec::new(),
        members: Vec::new(),
        cursor_deadline: None,
        durable_tx: Arc::new(durable_tx),
        durable_rx,
        writer: shared.persister.sender(),
        loads_tx,
        blocked: false,
        outstanding: 0,
        idle_since: Some(Instant::now()),
        ever_joined: false,
        doc_bytes,
        draining: false,
        failed: false,
        shared: shared.clone(),
    };
    room.run(&mut rx, &mut loads_rx).await;
    shared.metrics.room(false);
    info!("room unloaded");
}

impl Room {
    async fn run(&mut self, rx: &mut mpsc::Receiver<RoomMsg>, loads_rx: &mut mpsc::Receiver<Loaded>) {
        let mut shutdown = self.shared.shutdown.clone();
        let room_idle = self.shared.config.room_idle;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let mut inbox_closed = false;
        loop {
            let cursor_at = self.cursor_deadline.unwrap_or(far);
            // A room nobody joined (loaded for an HTTP read) unloads within a few seconds, so
            // reads of many room ids cannot keep many rooms loaded.
            let idle = if self.ever_joined { room_idle } else { room_idle.min(HTTP_ONLY_IDLE) };
            let idle_at = self.idle_since.map_or(far, |t| t + idle);
            let has_writer = self.writer.is_some();
            tokio::select! {
                msg = rx.recv(), if !self.blocked && !inbox_closed => match msg {
                    Some(m) => self.handle(m).await,
                    None => {
                        inbox_closed = true;
                        self.draining = true;
                    }
                },
                Some(l) = loads_rx.recv() => self.loaded(l).await,
                ev = self.cluster.next(), if self.cluster.active() => self.on_cluster(ev).await,
                changed = self.durable_rx.changed(), if has_writer => {
                    if changed.is_ok() { self.on_durable() }
                }
                _ = tokio::time::sleep_until(cursor_at), if self.cursor_deadline.is_some() => self.flush_cursors(),
                _ = tokio::time::sleep_until(idle_at), if self.idle_since.is_some() && !self.draining => {
                    if self.members.is_empty() && self.quiet() && self.shared.rooms.remove_if_idle(&self.id, self.gen, rx) {
                        return;
                    }
                    self.idle_since = Some(Instant::now());
                }
                _ = shutdown.changed(), if !self.draining => self.draining = true,
            }
            if self.failed {
                self.shared.rooms.remove(&self.id, self.gen);
                return;
            }
            if self.draining && self.quiet() && rx.is_empty() {
                for m in &self.members {
                    m.outbox.close(Close::GoingAway);
                }
                self.shared.rooms.remove(&self.id, self.gen);
                return;
            }
            if self.members.is_empty() && self.idle_since.is_none() {
                self.idle_since = Some(Instant::now());
            }
        }
    }

    /// No write, load or duplicate answer outstanding.
    fn quiet(&self) -> bool {
        self.pending.is_empty() && !self.blocked && self.outstanding == 0 && self.dup_waiting.is_empty()
    }

    async fn handle(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Join(j) => self.join(j),
            RoomMsg::Leave { conn, session } => self.leave(&conn, session),
            RoomMsg::Client { conn, session, msg } => self.client(conn, session, msg).await,
            RoomMsg::State(reply) => {
                // The HTTP caller may have gone away; nothing to do then.
                let _ = reply.send(self.state_value());
            }
            RoomMsg::Collaborators(reply) => {
                let list = self
                    .members
                    .iter()
                    .map(|m| Collaborator {
                        id: m.conn.to_string(),
                        user_id: m.presence.user_id.clone(),
                        name: m.presence.name.clone(),
                        avatar: m.presence.avatar.clone(),
                        joined_at: rfc3339(m.joined_at),
                    })
                    .collect();
                // As above: the caller may be gone.
                let _ = reply.send(list);
            }
            RoomMsg::Head(reply) => {
                // As above.
                let _ = reply.send(self.durable_version);
            }
        }
    }

    fn state_value(&self) -> Value {
        let mut doc = self.durable_doc.clone();
        doc.set_transport(self.transport.playing, self.transport.position);
        doc.to_state_value(self.durable_version)
    }

    fn member(&mut self, conn: &str, session: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &*m.conn == conn && m.session == session)
    }

    fn join(&mut self, j: Join) {
        let replacing = match self.members.iter().find(|m| m.conn == j.conn) {
            // A connection id is visible to the whole room: only the same account may take it
            // over, or any member could kick another by reusing its `_pk`.
            Some(m) if m.presence.user_id != j.user_id => {
                // The connection closes itself with the reason; it may already be gone.
                let _ = j.reply.send(Err(Close::BadRequest));
                return;
            }
            Some(_) => true,
            None => false,
        };
        let cfg = &self.shared.config;
        let same_account = self.members.iter().filter(|m| m.presence.user_id == j.user_id).count();
        if !replacing && (self.members.len() >= cfg.max_room_connections || same_account >= cfg.max_account_connections)
        {
            // The connection closes itself with the reason; it may already be gone.
            let _ = j.reply.send(Err(Close::Full));
            self.shared.metrics.limit_refused();
            return;
        }
        self.idle_since = None;
        self.ever_joined = true;
        let durable = self.durable_version;
        match j.since {
            None => self.finish_join(j, None),
            Some(s) if s > durable || durable - s > self.shared.config.max_catchup => self.finish_join(j, None),
            Some(s) => match self.ops_in_memory(s) {
                Some(ops) => {
                    let ops = self.within_reply_bound(ops);
                    self.finish_join(j, ops)
                }
                None => {
                    let store = self.shared.persister.store.clone();
                    let (room, tx) = (self.id.clone(), self.loads_tx.clone());
                    self.outstanding += 1;
                    tokio::spawn(async move {
                        let r = room.clone();
                        let result = tokio::task::spawn_blocking(move || store.ops(&r, s, durable, usize::MAX))
                            .await
                            .unwrap_or_else(|e| Err(join_error(&room, e)));
                        // The room may have stopped; then the join's reply is dropped and the
                        // connection retries.
                        let _ = tx.send(Loaded::Catchup { join: j, since: s, upto: durable, result }).await;
                    });
                }
            },
        }
    }

    /// The catch-up `ops`, or `None` (send the state instead) when they are larger than
    /// `max_reply_bytes`, or larger than both the state and [`CATCHUP_FLOOR`]: a catch-up never
    /// costs much more than a fresh load. Small ones always go as ops, so a client coming back
    /// with pending edits can rebase them instead of reloading.
    fn within_reply_bound(&self, ops: Vec<Sequenced>) -> Option<Vec<Sequenced>> {
        let cap = self.shared.config.max_reply_bytes;
        let bound = cap.min(self.doc_bytes.max(CATCHUP_FLOOR));
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

    fn finish_join(&mut self, j: Join, ops: Option<Vec<Sequenced>>) {
        let now = now_ms();
        if let Some(m) = self.members.iter_mut().find(|m| m.conn == j.conn) {
            // Same `_pk` again: the new socket takes over the presence, no leave/join flicker.
            m.outbox.close(Close::Replaced);
            m.outbox = j.outbox.clone();
            m.session = j.session;
            m.role = j.role;
            m.presence.name = j.name;
            m.presence.avatar = j.avatar;
            m.presence.last_seen = now;
        } else {
            let used: Vec<&str> = self.members.iter().map(|m| m.presence.color.as_str()).collect();
            let color = PALETTE
                .iter()
                .find(|c| !used.contains(c))
                .copied()
                .unwrap_or(PALETTE[self.members.len() % PALETTE.len()]);
            let presence = Presence {
                id: j.conn.to_string(),
                user_id: j.user_id,
                name: j.name,
                avatar: j.avatar,
                color: color.to_string(),
                cursor: None,
                last_seen: now,
            };
            let frame = frame(&ServerMsg::UserJoined { user: presence.clone() });
            for m in &self.members {
                m.outbox.push(frame.clone());
            }
            self.members.push(Member {
                conn: j.conn.clone(),
                session: j.session,
                presence,
                role: j.role,
                outbox: j.outbox.clone(),
                joined_at: now,
                cursor_dirty: false,
            });
        }
        let (state, ops) = match ops {
            Some(ops) => (None, Some(ops.iter().map(|m| (**m).clone()).collect())),
            None => (Some(self.state_value()), None),
        };
        let init = ServerMsg::Init {
            users: self.members.iter().map(|m| m.presence.clone()).collect(),
            state,
            ops,
            your_id: j.conn.to_string(),
            version: self.durable_version,
            server_time: now,
            transport: Some(self.transport.clone()),
        };
        j.outbox.push(frame(&init));
        debug!(conn = %j.conn, version = self.durable_version, "joined");
        // The connection may have gone while we loaded; its Leave follows.
        let _ = j.reply.send(Ok(()));
    }

    fn leave(&mut self, conn: &str, session: u64) {
        let Some(i) = self.members.iter().position(|m| &*m.conn == conn && m.session == session) else {
            return;
        };
        let m = self.members.remove(i);
        m.outbox.close(Close::GoingAway);
        let frame = frame(&ServerMsg::UserLeft { user_id: m.conn.to_string() });
        for other in &self.members {
            other.outbox.push(frame.clone());
        }
        if self.members.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    async fn client(&mut self, conn: Arc<str>, session: u64, msg: ClientIn) {
        let now = now_ms();
        let tick = self.shared.config.cursor_tick;
        let Some(m) = self.member(&conn, session) else { return };
        m.presence.last_seen = now;
        let role = m.role;
        match msg {
            ClientIn::Ping => {
                m.outbox.push(frame(&ServerMsg::Pong { server_time: now }));
            }
            ClientIn::Cursor(pos) => {
                m.presence.cursor = Some(pos);
                m.cursor_dirty = true;
                if tick.is_zero() {
                    self.flush_cursors();
                } else if self.cursor_deadline.is_none() {
                    self.cursor_deadline = Some(Instant::now() + tick);
                }
            }
            ClientIn::Transport { .. } | ClientIn::Submit(_) if role == Role::Viewer => {
                let (what, op_id) = match &msg {
                    ClientIn::Submit(s) => ("operation", s.op_id.clone()),
                    _ => ("transport", None),
                };
                m.outbox.push(error_frame(&Rejection::Forbidden { what }, op_id));
            }
            ClientIn::Transport { playing, position } => {
                self.transport = TransportState { playing, position, server_time: now };
                self.doc.doc_mut().set_transport(playing, position);
                let f = frame(&ServerMsg::Transport { playing, position, user_id: conn.to_string(), server_time: now });
                for o in self.members.iter().filter(|o| o.conn != conn) {
                    o.outbox.push(f.clone());
                }
            }
            ClientIn::Submit(s) => self.submit(conn, session, s, None).await,
        }
    }

    fn flush_cursors(&mut self) {
        self.cursor_deadline = None;
        for i in 0..self.members.len() {
            if !self.members[i].cursor_dirty {
                continue;
            }
            self.members[i].cursor_dirty = false;
            let m = &self.members[i];
            let Some(c) = &m.presence.cursor else { continue };
            let f = frame(&ServerMsg::Cursor {
                user_id: m.conn.to_string(),
                x: c.x,
                y: c.y,
                selection: c.selection.clone(),
            });
            for o in self.members.iter().filter(|o| o.conn != m.conn) {
                o.outbox.push_cursor(&m.conn, f.clone());
            }
        }
    }

    fn reply_to(&self, conn: &str, session: u64, f: Utf8Bytes) {
        if let Some(m) = self.members.iter().find(|m| &*m.conn == conn && m.session == session) {
            m.outbox.push(f);
        }
    }

    async fn submit(&mut self, conn: Arc<str>, session: u64, s: Submit, older: Option<&OlderHistory>) {
        let base = s.base;
        let op_id = s.op_id.clone();
        let head = self.doc.version();
        let limit = self.shared.config.max_doc_bytes;
        let bytes = self.doc_bytes.saturating_add(growth(&s.ops));
        if bytes > limit {
            self.shared.metrics.limit_refused();
            self.reply_to(&conn, session, error_frame(&Rejection::DocTooLarge { bytes, limit }, op_id));
            return;
        }
        match self.doc.submit(s.clone(), older) {
            Ok(Outcome::Sequenced(msg)) => {
                self.shared.metrics.sequenced(head - base.unwrap_or(head).min(head));
                if self.writer.is_some() {
                    self.cluster.record(msg.version, &conn, session, s);
                }
                self.sequenced(msg).await;
            }
            Ok(Outcome::Duplicate(msg)) => {
                if msg.version <= self.durable_version {
                    self.reply_to(&conn, session, op_frame(&msg));
                } else {
                    self.dup_waiting.push((conn, session, msg));
                }
            }
            Err(SubmitError::NeedHistory { base }) if older.is_none() => {
                let store = self.shared.persister.store.clone();
                let (room, tx) = (self.id.clone(), self.loads_tx.clone());
                let until = self.doc.window_start();
                let max_bytes = self.shared.config.max_reply_bytes;
                self.blocked = true;
                tokio::spawn(async move {
                    let r = room.clone();
                    let (account, id) = (s.account.clone(), s.op_id.clone());
                    let result = tokio::task::spawn_blocking(move || {
                        older_history(&*store, &r, base, until, account.as_deref(), id.as_deref(), max_bytes)
                    })
                    .await
                    .unwrap_or_else(|e| Err(join_error(&room, e)));
                    // The room may have stopped (shutdown); the client resends after reconnecting.
                    let _ = tx.send(Loaded::Older { conn, session, submit: s, result }).await;
                });
            }
            Err(e) => self.reply_to(&conn, session, error_frame(&Rejection::Submit(e), op_id)),
        }
    }

    async fn sequenced(&mut self, msg: Sequenced) {
        self.doc_bytes = resized(self.doc_bytes, &msg.operation);
        let every = self.shared.config.snapshot_every.max(1);
        let snapshot = (msg.version % every == 0).then(|| self.doc.doc().to_state_value(msg.version));
        let group = RoomAppend { room: self.id.clone(), entries: vec![Entry { msg: msg.clone(), snapshot }] };
        match &self.writer {
            None => {
                let started = std::time::Instant::now();
                let r = self.shared.persister.store.append(std::slice::from_ref(&group));
                self.shared.metrics.storage_append(started.elapsed(), 1);
                match r {
                    Ok(()) => {
                        self.durable_version = msg.version;
                        self.durable_doc = self.doc.doc().clone();
                        self.broadcast_op(&msg);
                    }
                    Err(e) => self.fail(&e.to_string()),
                }
            }
            Some(w) => {
                self.pending.push_back((msg, self.doc.doc().clone()));
                let req = WriteReq { group, durable: self.durable_tx.clone() };
                if w.send(req).await.is_err() {
                    self.fail("store writer stopped");
                }
            }
        }
    }

    fn on_durable(&mut self) {
        let d = self.durable_rx.borrow_and_update().clone();
        if let Some(reason) = d.failed {
            self.fail(&reason);
            return;
        }
        while self.pending.front().is_some_and(|(m, _)| m.version <= d.version) {
            if let Some((m, doc)) = self.pending.pop_front() {
                self.durable_version = m.version;
                self.durable_doc = doc;
                self.broadcast_op(&m);
                self.cluster_durable(&m);
            }
        }
        if let Some(version) = d.conflict {
            self.lost_race(version);
            return;
        }
        let durable = self.durable_version;
        let waiting = std::mem::take(&mut self.dup_waiting);
        for (conn, session, m) in waiting {
            if m.version <= durable {
                self.reply_to(&conn, session, op_frame(&m));
            } else {
                self.dup_waiting.push((conn, session, m));
            }
        }
    }

    fn broadcast_op(&self, msg: &Sequenced) {
        let f = op_frame(msg);
        for m in &self.members {
            m.outbox.push(f.clone());
        }
    }

    /// The store failed: what memory holds may be ahead of the store, so drop the room and let
    /// clients reconnect and resync from what is stored.
    fn fail(&mut self, reason: &str) {
        error!(reason, "room failed; closing its connections");
        for m in &self.members {
            m.outbox.close(Close::Internal);
        }
        self.failed = true;
    }

    async fn loaded(&mut self, l: Loaded) {
        match l {
            Loaded::Older { conn, session, submit, result } => {
                self.blocked = false;
                match result {
                    Ok(older) => self.submit(conn, session, submit, Some(&older)).await,
                    Err(StoreError::HistoryTooLarge { base, .. }) => {
                        let e = SubmitError::VersionTooOld { base, oldest: self.doc.window_start() };
                        self.reply_to(&conn, session, error_frame(&Rejection::Submit(e), submit.op_id));
                    }
                    Err(e) => {
                        warn!(error = %e, "loading older history failed");
                        let f = error_frame(&Rejection::Storage(e.to_string()), submit.op_id);
                        self.reply_to(&conn, session, f);
                    }
                }
                self.drain_redo().await;
            }
            Loaded::Catchup { join, since, upto, result } => {
                self.outstanding -= 1;
                let ops = match result {
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
                    Ok(_) => None,
                    Err(e) => {
                        warn!(error = %e, "catch-up read failed; sending the full state");
                        None
                    }
                };
                self.finish_join(join, ops);
            }
            Loaded::Cluster(f) => self.cluster_fetched(f).await,
        }
    }
}

fn join_error(room: &str, e: tokio::task::JoinError) -> StoreError {
    StoreError::Corrupt { room: room.to_string(), version: 0, reason: format!("store task failed: {e}") }
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
pub(crate) fn resized(bytes: usize, ops: &[Op]) -> usize {
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

/// Encodes a server message once, as a shareable text frame.
pub fn frame(msg: &ServerMsg) -> Utf8Bytes {
    Utf8Bytes::from(encode(msg))
}

/// Encodes a sequenced op as its `operation` message, without cloning it.
pub fn op_frame(msg: &OperationMsg) -> Utf8Bytes {
    let body = encode(msg);
    match body.strip_prefix('{') {
        Some(rest) if rest != "}" => Utf8Bytes::from(format!("{{\"type\":\"operation\",{rest}")),
        _ => frame(&ServerMsg::Operation(msg.clone())),
    }
}

/// Encodes a refusal as an `error` message, through [`Rejection::code`].
pub fn error_frame(r: &Rejection, op_id: Option<String>) -> Utf8Bytes {
    frame(&ServerMsg::Error { code: r.code(), message: r.to_string(), op_id })
}

/// RFC 3339 (UTC, milliseconds) for milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn op_frame_has_type_first() {
        let m = OperationMsg { operation: vec![], version: 3, user_id: "u".into(), op_id: None, account: None };
        let f = op_frame(&m);
        let back = ot_core::protocol::decode_server(f.as_str()).unwrap();
        assert_eq!(back, ServerMsg::Operation(m));
    }
}
