//! Rooms: one task per room, a short async shell around [`core::RoomCore`] — the room's
//! decisions as a synchronous machine — and the [`Registry`] that finds or starts rooms.
//!
//! The shell owns what the core must not: the connections' outboxes, the store writer's
//! durability channel, store reads (on blocking threads), the bus subscription and the clock.
//! It feeds the core one [`core::Input`] at a time and carries out the [`core::Output`]s in
//! order. A room loads from the store on first use (inside its own task, so the registry lock is
//! only held to insert an inbox) and unloads when the core says it is idle.
//!
//! # Layout
//!
//! - [`core`]: [`core::RoomCore`], its inputs and outputs; sequencing, durability bookkeeping,
//!   catch-up, cursors, transport.
//! - [`presence`]: members, colors, the `_pk` takeover rule and per-account slots.
//! - [`locks`]: the soft lock table (PROTOCOL §7), presence-like and never stored.
//! - [`cluster`]: a shared store's lost races and other nodes' ops.
//! - [`remote`]: room-wide presence — what nodes tell each other about their connections.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ot_core::protocol::{OperationMsg, TransportState};
use ot_core::sync::{Sequenced, ServerDoc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{error, info, warn, Instrument};

use crate::bus::Subscription;
use crate::error::{Close, Rejection};
use crate::outbox::Outbox;
use crate::store::{older_history, restore, Durable, Store, StoreError, WriteReq};
use crate::Shared;

pub mod cluster;
pub mod core;
pub mod locks;
pub mod presence;
pub mod remote;

pub use self::core::{ClientIn, Collaborator};
use self::core::{ConnKey, CoreConfig, Input, Now, Output, ReadReq, ReadResult, RoomCore, Stat};

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A connection asking to join: what the core decides on, and where its frames and answer go.
pub struct Join {
    /// Who asks, for the core.
    pub req: core::JoinReq,
    /// Where the room sends this connection's frames.
    pub outbox: Arc<Outbox>,
    /// Answered once `init` is queued, or with the close reason.
    pub reply: oneshot::Sender<Result<(), Close>>,
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

/// The room's task: loads the room, then runs the shell until the core lets it go.
async fn room_task(shared: Arc<Shared>, id: Arc<str>, gen: u64, mut rx: mpsc::Receiver<RoomMsg>) {
    let _done = shared.done.clone();
    let store = shared.persister.store.clone();
    let cfg = &shared.config;
    let (window, max_rebase, bytes) = (cfg.history_window, cfg.max_rebase, cfg.max_history_bytes);
    let room_id = id.clone();
    let load = move || {
        let loaded = store.load(&room_id)?;
        let transport = loaded.transport.clone();
        let snapshot_version = loaded.snapshot.as_ref().map_or(0, |(v, _)| *v);
        restore(&room_id, loaded, window, max_rebase, bytes).map(|doc| (doc, transport, snapshot_version))
    };
    let loaded = if shared.persister.store.blocking() {
        tokio::task::spawn_blocking(load).await.unwrap_or_else(|e| Err(join_error(&id, e)))
    } else {
        load()
    };
    let (doc, transport, snapshot_version) = match loaded {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "room failed to load");
            shared.rooms.remove(&id, gen);
            return;
        }
    };
    let Some(writer) = shared.persister.sender() else {
        // The writer has stopped: the server is shutting down.
        shared.rooms.remove(&id, gen);
        return;
    };
    info!(version = doc.version(), "room loaded");
    shared.metrics.room(true);
    let shared_store = shared.persister.store.shared();
    let started = Instant::now();
    let bus = shared.bus.as_ref().filter(|_| shared_store);
    let node = bus.map(|b| b.node().clone());
    let mut core = RoomCore::new(doc, CoreConfig::new(&shared.config, id.clone(), shared_store, node), clock(started));
    core.restore_snapshot_version(snapshot_version);
    if let Some(t) = transport {
        core.restore_transport(t);
    }
    let (durable_tx, durable_rx) = watch::channel(Durable { version: core.durable_version(), ..Default::default() });
    let (reads_tx, reads_rx) = mpsc::channel(64);
    let subscription = bus.map(|b| b.subscribe(id.clone()));
    let mut inputs = VecDeque::new();
    if let Some(b) = bus {
        // Who is in the room on other nodes, before anyone joins here (bounded: without Redis
        // the room starts alone and learns of the others from the bus and its heartbeat).
        let requested_mono = clock(started).mono_ms;
        let ttl = shared.config.presence_ttl.as_millis() as u64;
        let read = tokio::time::timeout(PRESENCE_READ_TIMEOUT, b.sync_presence(&id, Vec::new(), ttl)).await;
        if let Ok(Some(members)) = read {
            inputs.push_back(Input::PresenceSnapshot { requested_mono, members });
        }
    }
    let (later_tx, later_rx) = mpsc::channel(16);
    let mut shell = Shell {
        core,
        members: HashMap::new(),
        joining: HashMap::new(),
        epoch: 0,
        durable_tx: Arc::new(durable_tx),
        durable_rx,
        writer,
        reads_tx,
        later_tx,
        bus: subscription,
        inputs,
        draining: false,
        started,
        id,
        gen,
        shared: shared.clone(),
    };
    shell.run(&mut rx, reads_rx, later_rx).await;
    shared.metrics.room(false);
    info!("room unloaded");
}

/// How long a room that loads waits for Redis's view of who is in it.
const PRESENCE_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The clock reading the core takes.
fn clock(started: Instant) -> Now {
    Now { mono_ms: started.elapsed().as_millis() as u64, epoch_ms: now_ms() }
}

/// Where a join's answer goes.
type JoinAnswer = oneshot::Sender<Result<(), Close>>;

/// The async side of one room. See the module docs.
struct Shell {
    core: RoomCore,
    /// Members' outboxes: they get broadcasts.
    members: HashMap<ConnKey, Arc<Outbox>>,
    /// Connections waiting for their join's answer (a catch-up read may be under way).
    joining: HashMap<ConnKey, (Arc<Outbox>, JoinAnswer)>,
    /// The durability epoch of `durable_tx` (a new one after a lost race).
    epoch: u64,
    durable_tx: Arc<watch::Sender<Durable>>,
    durable_rx: watch::Receiver<Durable>,
    writer: mpsc::Sender<WriteReq>,
    reads_tx: mpsc::Sender<(u64, ReadResult)>,
    /// Inputs that tasks of the shell's deliver later (presence read from Redis).
    later_tx: mpsc::Sender<Input>,
    bus: Option<Subscription>,
    /// Inputs produced while carrying out outputs (a store that answers at once).
    inputs: VecDeque<Input>,
    draining: bool,
    started: Instant,
    id: Arc<str>,
    gen: u64,
    shared: Arc<Shared>,
}

/// How many queued inbox messages the shell takes in a row before it looks at its other
/// sources again.
const INBOX_BURST: usize = 32;

/// Whether the shell goes on.
enum Flow {
    Continue,
    Stop,
}

impl Shell {
    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<RoomMsg>,
        mut reads_rx: mpsc::Receiver<(u64, ReadResult)>,
        mut later_rx: mpsc::Receiver<Input>,
    ) {
        let mut shutdown = self.shared.shutdown.clone();
        let mut inbox_closed = false;
        loop {
            let deadline = self.core.next_deadline().map(|ms| self.started + Duration::from_millis(ms));
            let input = tokio::select! {
                msg = rx.recv(), if !self.core.is_blocked() && !inbox_closed => match msg {
                    Some(m) => match self.on_msg(m) {
                        Some(input) => input,
                        None => continue,
                    },
                    None => {
                        inbox_closed = true;
                        Input::Shutdown
                    }
                },
                Some((id, result)) = reads_rx.recv() => Input::ReadDone { id, result },
                Some(input) = later_rx.recv() => input,
                changed = self.durable_rx.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let durable = self.durable_rx.borrow_and_update().clone();
                    Input::Durable { epoch: self.epoch, durable }
                }
                m = recv_bus(&mut self.bus), if self.bus.is_some() => match m {
                    Some(input) => input,
                    None => {
                        self.bus = None;
                        continue;
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => Input::Tick,
                _ = shutdown.changed(), if !self.draining => Input::Shutdown,
            };
            // Let the tasks that are ready run once before taking more from the inbox: the
            // connections' readers queue what they have read, and the loop below takes it in
            // one go, so a member's writer finds several frames for one `sendto` and replies
            // leave in bursts rather than one by one. A message that came alone yields before
            // it is handled, so that its replies join the burst; one with others behind it is
            // handled first, so that the writers send its replies while the readers fill the
            // inbox. When nothing else is ready the room goes on at once. Under load this
            // raised throughput and cut p99 (BENCHMARKS.md, seventh pass).
            self.inputs.push_back(input);
            let alone = rx.is_empty();
            if alone {
                tokio::task::yield_now().await;
            }
            if let Flow::Stop = self.handle_inputs(rx).await {
                return;
            }
            if !alone {
                tokio::task::yield_now().await;
            }
            // Messages already queued are taken without going through the `select!` again,
            // which sets up every source (and a timer) each time: a burst costs one. Bounded,
            // so the other sources wait at most `INBOX_BURST` messages.
            for _ in 0..INBOX_BURST {
                if self.core.is_blocked() || inbox_closed {
                    break;
                }
                let Ok(m) = rx.try_recv() else { break };
                let Some(input) = self.on_msg(m) else { continue };
                self.inputs.push_back(input);
                if let Flow::Stop = self.handle_inputs(rx).await {
                    return;
                }
            }
        }
    }

    /// Hands the queued inputs to the core and carries out what it answers.
    async fn handle_inputs(&mut self, rx: &mpsc::Receiver<RoomMsg>) -> Flow {
        while let Some(input) = self.inputs.pop_front() {
            if matches!(input, Input::Shutdown) {
                self.draining = true;
            }
            let outputs = self.core.handle(input, clock(self.started));
            for out in outputs {
                if let Flow::Stop = self.carry_out(out, rx).await {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    /// Turns an inbox message into an input, answering the HTTP queries at once.
    fn on_msg(&mut self, msg: RoomMsg) -> Option<Input> {
        match msg {
            RoomMsg::Join(j) => {
                let key = (j.req.conn.clone(), j.req.session);
                self.joining.insert(key, (j.outbox, j.reply));
                Some(Input::Join(j.req))
            }
            RoomMsg::Leave { conn, session } => {
                self.members.remove(&(conn.clone(), session));
                Some(Input::Leave { conn, session })
            }
            RoomMsg::Client { conn, session, msg } => Some(Input::Client { conn, session, msg }),
            // The HTTP caller may have gone away; nothing to do then.
            RoomMsg::State(reply) => {
                let _ = reply.send(self.core.state_value());
                None
            }
            RoomMsg::Collaborators(reply) => {
                let _ = reply.send(self.core.collaborators());
                None
            }
            RoomMsg::Head(reply) => {
                let _ = reply.send(self.core.durable_version());
                None
            }
        }
    }

    fn outbox(&self, key: &ConnKey) -> Option<&Arc<Outbox>> {
        self.members.get(key).or_else(|| self.joining.get(key).map(|(o, _)| o))
    }

    async fn carry_out(&mut self, out: Output, rx: &mpsc::Receiver<RoomMsg>) -> Flow {
        match out {
            Output::Send { to, frame } => {
                if let Some(o) = self.outbox(&to) {
                    o.push(Utf8Bytes::from(frame));
                }
            }
            Output::Broadcast { frame, except } => {
                let f = Utf8Bytes::from(frame);
                for ((conn, _), o) in &self.members {
                    if except.as_ref() != Some(conn) {
                        o.push(f.clone());
                    }
                }
            }
            Output::Cursor { from, frame } => {
                let f = Utf8Bytes::from(frame);
                for ((conn, _), o) in &self.members {
                    if *conn != from {
                        o.push_cursor(&from, f.clone());
                    }
                }
            }
            Output::Close { to, code } => {
                let o = self.members.remove(&to).or_else(|| self.joining.remove(&to).map(|(o, _)| o));
                if let Some(o) = o {
                    o.close(code);
                }
            }
            Output::JoinReply { to, result } => {
                if let Some((outbox, reply)) = self.joining.remove(&to) {
                    let ok = result.is_ok();
                    if ok {
                        self.members.insert(to.clone(), outbox);
                    }
                    if reply.send(result).is_err() && ok {
                        // The connection went away while it waited: it will send no Leave.
                        self.members.remove(&to);
                        self.inputs.push_back(Input::Leave { conn: to.0, session: to.1 });
                    }
                }
            }
            Output::Append { epoch, group } => self.append(epoch, group).await,
            Output::Read { id, req } => self.read(id, req),
            Output::Publish(m) => {
                if let Some(bus) = &self.shared.bus {
                    bus.publish(&self.id, &m);
                }
            }
            Output::Node(event) => {
                if let Some(bus) = &self.shared.bus {
                    bus.presence_event(&self.id, event, self.presence_ttl_ms());
                }
            }
            Output::PresenceSync(members) => self.sync_presence(members),
            Output::SaveTransport(t) => self.save_transport(t),
            Output::Stat(Stat::Sequenced { depth }) => self.shared.metrics.sequenced(depth),
            Output::Stat(Stat::LimitRefused) => self.shared.metrics.limit_refused(),
            Output::Stat(Stat::LocksHeld { delta }) => self.shared.metrics.locks_held(delta),
            Output::Stat(Stat::LocksExpired { count }) => self.shared.metrics.locks_expired(count),
            Output::Stat(Stat::LockRefused(code)) => self.shared.metrics.lock_refused(code),
            Output::Unload => {
                if self.draining {
                    if rx.is_empty() {
                        self.shared.rooms.remove(&self.id, self.gen);
                        return Flow::Stop;
                    }
                } else if self.shared.rooms.remove_if_idle(&self.id, self.gen, rx) {
                    return Flow::Stop;
                }
            }
            Output::Failed(reason) => {
                error!(reason, "room failed; its connections were closed");
                self.shared.rooms.remove(&self.id, self.gen);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn append(&mut self, epoch: u64, group: crate::store::RoomAppend) {
        if epoch != self.epoch {
            // A lost race started a new epoch: what the old channel still says is ignored.
            let (tx, rx) =
                watch::channel(Durable { version: self.core.durable_version(), failed: None, conflict: None });
            self.durable_tx = Arc::new(tx);
            self.durable_rx = rx;
            self.epoch = epoch;
        }
        let req = WriteReq { group, durable: self.durable_tx.clone() };
        if !self.shared.persister.store.blocking() {
            // The in-memory store: stored here, with the same feedback (see `write_now`).
            self.shared.persister.write_now(req, &self.shared.metrics);
            return;
        }
        if self.writer.send(req).await.is_err() {
            let durable = Durable { failed: Some("store writer stopped".into()), ..Default::default() };
            self.inputs.push_back(Input::Durable { epoch, durable });
        }
    }

    fn presence_ttl_ms(&self) -> u64 {
        self.shared.config.presence_ttl.as_millis() as u64
    }

    /// Refreshes this node's presence keys and reads everyone's; the answer comes back as
    /// [`Input::PresenceSnapshot`]. Without an answer (Redis away) nothing happens: the next
    /// heartbeat tries again.
    fn sync_presence(&self, members: Vec<remote::MemberState>) {
        let Some(bus) = self.shared.bus.clone() else { return };
        let (room, ttl, tx) = (self.id.clone(), self.presence_ttl_ms(), self.later_tx.clone());
        let requested_mono = clock(self.started).mono_ms;
        tokio::spawn(async move {
            if let Some(members) = bus.sync_presence(&room, members, ttl).await {
                // The room may have stopped meanwhile.
                let _ = tx.send(Input::PresenceSnapshot { requested_mono, members }).await;
            }
        });
    }

    /// Stores the room's transport off the room's task; a failure is logged (the transport
    /// stays right in memory and on the wire, and the next change stores it again).
    fn save_transport(&self, t: TransportState) {
        let store = self.shared.persister.store.clone();
        let room = self.id.clone();
        let work = move || {
            if let Err(e) = store.save_transport(&room, &t) {
                warn!(error = %e, room = %room, "storing the transport failed");
            }
        };
        if self.shared.persister.store.blocking() {
            tokio::task::spawn_blocking(work);
        } else {
            work();
        }
    }

    /// Starts a store read; its result comes back as [`Input::ReadDone`].
    fn read(&mut self, id: u64, req: ReadReq) {
        let store = self.shared.persister.store.clone();
        let room = self.id.clone();
        let cfg = &self.shared.config;
        let history = (cfg.history_window, cfg.max_rebase, cfg.max_history_bytes);
        let what = req.clone();
        let work = move || perform(&*store, &room, req, history);
        if !self.shared.persister.store.blocking() {
            self.inputs.push_back(Input::ReadDone { id, result: work() });
            return;
        }
        let tx = self.reads_tx.clone();
        let room = self.id.clone();
        tokio::spawn(async move {
            let result = match tokio::task::spawn_blocking(work).await {
                Ok(r) => r,
                Err(e) => ReadResult::failed(&what, join_error(&room, e)),
            };
            // The room may have stopped (shutdown, failure); its clients resync on reconnect.
            let _ = tx.send((id, result)).await;
        });
    }
}

/// Carries out one read of the core's on `store` (the shell runs it on a blocking thread when
/// the store blocks; tests and the simulation call it directly). `history` is the window,
/// `max_rebase` and history byte bound a rebuilt room gets.
pub fn perform(store: &dyn Store, room: &str, req: ReadReq, history: (usize, u64, usize)) -> ReadResult {
    match req {
        ReadReq::Older { base, until, account, op_id, max_bytes } => {
            ReadResult::Older(older_history(store, room, base, until, account.as_deref(), op_id.as_deref(), max_bytes))
        }
        ReadReq::FindOp { account, op_id } => ReadResult::Found(store.find_op(room, account.as_deref(), &op_id)),
        ReadReq::Catchup { since, upto } => ReadResult::Ops(store.ops(room, since, upto, usize::MAX)),
        ReadReq::Fetch { from, limit } => ReadResult::Fetched(
            store.ops(room, from, u64::MAX >> 1, limit).and_then(|ops| Ok((ops, store.transport(room)?))),
        ),
        ReadReq::Rebuild { from, durable } => {
            let (window, max_rebase, bytes) = history;
            ReadResult::Rebuild(rebuild(store, room, from, durable, window, max_rebase, bytes).map(Box::new))
        }
    }
}

/// Reads the state at or before `from` and every op after it: a [`ServerDoc`] at the store's
/// head whose window reaches back to `from`, and the ops after `durable`.
fn rebuild(
    store: &dyn Store,
    room: &str,
    from: u64,
    durable: u64,
    window: usize,
    max_rebase: u64,
    history_bytes: usize,
) -> Result<(ServerDoc, Vec<Sequenced>), StoreError> {
    let snapshot = store.snapshot_at_or_before(room, from)?;
    let snap_v = snapshot.as_ref().map_or(0, |(v, _)| *v);
    let ops = store.ops(room, snap_v, u64::MAX >> 1, usize::MAX)?;
    let missed = ops.iter().filter(|m| m.version > durable).cloned().collect();
    let sd = restore(room, crate::store::Loaded { snapshot, ops, transport: None }, window, max_rebase, history_bytes)?;
    Ok((sd, missed))
}

/// The next op or presence event of other nodes; `None` once the bus dropped the room.
async fn recv_bus(bus: &mut Option<Subscription>) -> Option<Input> {
    let Some(sub) = bus else { return std::future::pending().await };
    tokio::select! {
        op = sub.rx.recv() => op.map(Input::Foreign),
        e = sub.events.recv() => e.map(Input::Node),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn join_error(room: &str, e: tokio::task::JoinError) -> StoreError {
    StoreError::Corrupt { room: room.to_string(), version: 0, reason: format!("store task failed: {e}") }
}

/// Encodes a sequenced op as its `operation` message, without cloning it.
pub fn op_frame(msg: &OperationMsg) -> Utf8Bytes {
    Utf8Bytes::from(core::op_text(msg))
}

/// Encodes a refusal as an `error` message, through [`Rejection::code`].
pub fn error_frame(r: &Rejection, op_id: Option<String>) -> Utf8Bytes {
    Utf8Bytes::from(core::error_text(r, op_id))
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
    use ot_core::protocol::ServerMsg;

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
