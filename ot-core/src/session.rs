//! The sans-IO client session: everything a client does with server messages, without a
//! socket, a clock, randomness or a task, so that it runs anywhere, a browser's wasm32
//! included. The Rust client library (`client_sim::Client`) drives it from a tokio socket;
//! tests drive it directly.
//!
//! A session wraps the [`ClientDoc`] of [`crate::sync`] (optimistic apply, one op in flight, a
//! composed buffer) and adds what the connection lifecycle of PROTOCOL §3–4 needs: which `since`
//! to reconnect with, resending the op in flight with its original `opId` after `init`,
//! reloading (reconnect without `since`) after `version_too_old`, a rejected op, a version gap
//! or a divergence, whether to come back at all after the server closed the socket
//! ([`Session::on_server_close`], by [`CloseAction`]), presence, the transport, the room's soft
//! locks (PROTOCOL §7: [`Session::locks`], [`Session::lock`], [`Event::Locks`],
//! [`Event::Locked`]), and a server clock estimate from `pong`. [`backoff`] spaces the
//! reconnects.
//!
//! Time comes in as a [`Now`] of plain milliseconds; the caller reads its own clocks.
//!
//! ```
//! use ot_core::protocol::{decode_server, CloseAction};
//! use ot_core::session::{Effect, Event, Now, Session};
//!
//! let mut s = Session::new("tab-1");
//! let now = Now { mono_ms: 0, epoch_ms: 1_700_000_000_000 };
//! s.on_open();
//! let init = decode_server(r#"{"type":"init","users":[],"yourId":"tab-1","version":0,
//!     "serverTime":1700000000000,"state":{"tracks":[],"markers":[]}}"#).unwrap();
//! let effects = s.handle(init, now).unwrap();
//! assert!(matches!(&effects[0], Effect::Event(Event::Ready { version: 0, .. })));
//! // Another tab took over the connection id: do not come back.
//! let closed = s.on_server_close(4009, "Replaced");
//! assert_eq!(closed.action, CloseAction::Stop);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{
    ClientMsg, Close, CloseAction, CursorPos, ErrorCode, Lock, OperationMsg, Presence, ServerMsg, TransportState,
};
use crate::sync::{ClientDoc, ClientError, Outgoing, Received, UndoConfig, UndoOutcome};
use crate::{Document, EntityKind, Op, OpError};

pub mod backoff;

pub use backoff::{Backoff, BackoffConfig};

/// "Now" as the session sees it, injected by the caller: a monotonic clock for latencies and
/// round trips, and the wall clock for the server clock estimate, both in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds since any fixed start the caller chooses (its own start, a
    /// browser's `performance.now()`): only differences are used.
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub epoch_ms: u64,
}

/// Something that happened, for the application.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `init` arrived: the session is live at `version`. `reloaded` when the document was
    /// replaced by a full state, `caught_up` is the number of ops received in it.
    Ready {
        /// The room's version.
        version: u64,
        /// This connection's id.
        your_id: String,
        /// Whether a full state replaced the document.
        reloaded: bool,
        /// How many missed ops `init` carried.
        caught_up: usize,
    },
    /// A local op was sent (first time or as a resend).
    Sent {
        /// Its op id.
        op_id: String,
        /// Whether it is a resend of the op in flight.
        resend: bool,
    },
    /// The op in flight was acknowledged.
    Acked {
        /// Its op id.
        op_id: String,
        /// The version it got.
        version: u64,
        /// From the first send to the ack, in whole milliseconds of [`Now::mono_ms`].
        latency: Duration,
    },
    /// Someone else's op was applied locally.
    Remote {
        /// The sender's connection id.
        user_id: String,
        /// The sender's op id.
        op_id: Option<String>,
        /// The version it produced.
        version: u64,
        /// The ops as applied locally (after transforming over pending local ops).
        ops: Vec<Op>,
    },
    /// Local ops were dropped: a reload replaced the document (PROTOCOL §3.3). The ops were
    /// not confirmed by the server; any of them may or may not be in the new state.
    Dropped {
        /// Why.
        reason: ReloadReason,
        /// The dropped ops (the one in flight first, then the buffer).
        ops: Vec<Op>,
    },
    /// The server answered with an `error`.
    ServerError {
        /// Its code.
        code: ErrorCode,
        /// Its text.
        message: String,
        /// The op it is about.
        op_id: Option<String>,
    },
    /// Someone joined.
    UserJoined(Presence),
    /// Someone left.
    UserLeft {
        /// Their connection id.
        user_id: String,
    },
    /// Someone's cursor moved.
    Cursor {
        /// Their connection id.
        user_id: String,
        /// Horizontal position.
        x: f64,
        /// Vertical position.
        y: f64,
    },
    /// Someone changed the transport.
    Transport(TransportState),
    /// The room's lock table changed (a `locks` message, or `init` with a different table):
    /// the whole new table, as [`Session::locks`] now returns it.
    Locks(Vec<Lock>),
    /// A `lock` was refused because another connection holds it (error code `locked`); the
    /// [`Event::ServerError`] for the same message comes just before this one.
    Locked {
        /// The server's text (it names the holder and the entity).
        message: String,
        /// The holder's presence.
        locked_by: Presence,
    },
    /// A new clock sample: `offset_ms` is server minus local, `rtt` the ping's round trip.
    Clock {
        /// The best estimate of server time minus local time, in milliseconds.
        offset_ms: i64,
        /// The round trip of this sample.
        rtt: Duration,
    },
    /// The socket closed or failed; the client reconnects unless `fatal`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// Whether the client gave up and will not reconnect: the server closed with a code
        /// whose [`CloseAction`] is [`CloseAction::Stop`] (an auth failure, a bad room or
        /// connection id, or [`Close::Replaced`]: a newer connection with the same connection
        /// id took over).
        fatal: bool,
        /// The server's close code, when the server closed the socket with one the protocol
        /// names (`None`: the socket failed, the client closed it, or an unknown code; the
        /// reason has the number then).
        close: Option<Close>,
    },
}

/// Why the session reloads the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadReason {
    /// The server answered `version_too_old`.
    VersionTooOld,
    /// The server rejected the op in flight with this code.
    Rejected(ErrorCode),
    /// A server op skipped a version.
    Gap,
    /// A server op did not apply to the local document.
    Diverged,
    /// The server sent a full state on a reconnect with `since` (its history no longer reaches
    /// that far, or it lost its memory).
    StateOnRejoin,
}

/// What the caller must do after the session handled something.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send this message on the socket.
    Send(ClientMsg),
    /// Tell the application.
    Event(Event),
    /// Close the socket and reconnect; `reload` means without `since` (fresh state).
    Reconnect {
        /// Reconnect without `since`.
        reload: bool,
    },
}

/// A server message the session cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    /// `init.state` is not a state of PROTOCOL §5.1.
    #[error("init state is invalid: {0}")]
    BadState(#[from] crate::StateError),
    /// `init` carried neither `state` nor `ops`, or `ops` before any state.
    #[error("init carried no usable state (ops: {has_ops}, local document: {has_doc})")]
    NoState {
        /// Whether `ops` was present.
        has_ops: bool,
        /// Whether a local document existed.
        has_doc: bool,
    },
    /// A message other than `init` arrived first.
    #[error("`{got}` arrived before `init`")]
    BeforeInit {
        /// The message type.
        got: &'static str,
    },
}

/// How the server ended a socket, and what the client does about it: the result of
/// [`Session::on_server_close`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerClose {
    /// The close code as received.
    pub code: u16,
    /// The close reason as received.
    pub reason: String,
    /// The code as one the protocol names.
    pub close: Option<Close>,
    /// Reconnect (after the backoff, with `since`) or stop.
    pub action: CloseAction,
}

impl ServerClose {
    /// The event that reports it.
    pub fn event(&self) -> Event {
        Event::Disconnected { reason: self.to_string(), fatal: self.action == CloseAction::Stop, close: self.close }
    }
}

impl fmt::Display for ServerClose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "closed by the server: {} {}", self.code, self.reason)?;
        if let Some(c) = self.close {
            write!(f, " ({})", c.meaning())?;
        }
        if self.action == CloseAction::Stop {
            f.write_str("; not reconnecting")?;
        }
        Ok(())
    }
}

/// The round trip given to the first, coarse clock sample (`init`'s `serverTime`, whose real
/// round trip is unknown): any `pong` replaces it.
const COARSE_RTT: Duration = Duration::from_secs(3600);

/// The best clock sample so far (the one with the smallest round trip).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockEstimate {
    /// Server time minus local time, in milliseconds.
    pub offset_ms: i64,
    /// The round trip of the sample it comes from.
    pub rtt: Duration,
}

/// The session state. See the module docs.
#[derive(Debug, Clone)]
pub struct Session {
    pk: String,
    /// Op ids are `{op_prefix}:{n}`.
    op_prefix: String,
    doc: Option<ClientDoc>,
    /// How local edits become undo steps (kept here too: the document comes with `init`).
    undo_config: UndoConfig,
    your_id: Option<String>,
    users: Arc<BTreeMap<String, Presence>>,
    locks: Arc<Vec<Lock>>,
    transport: Option<TransportState>,
    clock: Option<ClockEstimate>,
    live: bool,
    reload_next: Option<ReloadReason>,
    /// The op in flight and the monotonic milliseconds of its first send.
    inflight_first_sent: Option<(String, u64)>,
    /// The monotonic and wall-clock milliseconds of the ping awaiting its pong.
    ping_sent: Option<(u64, u64)>,
}

fn msg_name(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::Init { .. } => "init",
        ServerMsg::UserJoined { .. } => "user_joined",
        ServerMsg::UserLeft { .. } => "user_left",
        ServerMsg::Cursor { .. } => "cursor",
        ServerMsg::Operation(_) => "operation",
        ServerMsg::Transport { .. } => "transport",
        ServerMsg::Pong { .. } => "pong",
        ServerMsg::Error { .. } => "error",
        ServerMsg::Locks { .. } => "locks",
    }
}

/// The wire message for an outgoing op.
pub fn operation_msg(out: &Outgoing) -> ClientMsg {
    ClientMsg::Operation {
        operation: serde_json::Value::Array(out.ops.iter().map(Op::to_value).collect()),
        base_version: Some(out.base_version),
        op_id: Some(out.op_id.clone()),
    }
}

impl Session {
    /// A session for connection id `pk` (also the op id prefix, until
    /// [`Session::set_op_id_prefix`]), with no document until the first `init`.
    pub fn new(pk: impl Into<String>) -> Self {
        let pk: String = pk.into();
        Session {
            op_prefix: pk.clone(),
            pk,
            doc: None,
            undo_config: UndoConfig::default(),
            your_id: None,
            users: Arc::new(BTreeMap::new()),
            locks: Arc::new(Vec::new()),
            transport: None,
            clock: None,
            live: false,
            reload_next: None,
            inflight_first_sent: None,
            ping_sent: None,
        }
    }

    /// The connection id sent as `_pk`.
    pub fn pk(&self) -> &str {
        &self.pk
    }

    /// Op ids are `{prefix}:{n}`, n counting from 1 in this session. The server answers an op
    /// id it already sequenced for the same account with the stored op (PROTOCOL §4), however
    /// old: a session that may reuse a connection id used before — a client restarted with a
    /// saved `_pk` — must make its prefix unique, e.g. the connection id and a random part. The
    /// prefix applies from the next `init` that starts a document.
    pub fn set_op_id_prefix(&mut self, prefix: impl Into<String>) {
        self.op_prefix = prefix.into();
    }

    /// The `since` to connect with: the confirmed version, unless a reload is due.
    pub fn since(&self) -> Option<u64> {
        match (&self.doc, self.reload_next) {
            (Some(d), None) => Some(d.version()),
            _ => None,
        }
    }

    /// The local document (server state plus pending local ops), once loaded.
    pub fn doc(&self) -> Option<&Document> {
        self.doc.as_ref().map(ClientDoc::doc)
    }

    /// The last version the server confirmed.
    pub fn version(&self) -> Option<u64> {
        self.doc.as_ref().map(ClientDoc::version)
    }

    /// Whether local ops wait for an ack.
    pub fn has_pending(&self) -> bool {
        self.doc.as_ref().is_some_and(ClientDoc::has_pending)
    }

    /// How many local edits wait for an ack (see [`ClientDoc::pending_edits`]).
    pub fn pending_edits(&self) -> usize {
        self.doc.as_ref().map_or(0, ClientDoc::pending_edits)
    }

    /// The op id in flight.
    pub fn inflight_id(&self) -> Option<&str> {
        self.doc.as_ref().and_then(ClientDoc::inflight_id)
    }

    /// Whether `init` arrived on the current socket.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// This connection's id as the server named it.
    pub fn your_id(&self) -> Option<&str> {
        self.your_id.as_deref()
    }

    /// Everyone in the room by connection id (this connection included).
    pub fn users(&self) -> &Arc<BTreeMap<String, Presence>> {
        &self.users
    }

    /// The room's soft locks as last heard (from `init` or a `locks` message), ordered by
    /// target and id. Kept while offline (it is stale then) until the next `init` replaces it.
    pub fn locks(&self) -> &Arc<Vec<Lock>> {
        &self.locks
    }

    /// The lock on an entity, if the table has one.
    pub fn lock_on(&self, target: EntityKind, id: &str) -> Option<&Lock> {
        self.locks.iter().find(|l| l.target == target && l.id == id)
    }

    /// The locks this connection holds, by the table (empty before the first `init`).
    pub fn my_locks(&self) -> Vec<&Lock> {
        match &self.your_id {
            Some(me) => self.locks.iter().filter(|l| &l.user_id == me).collect(),
            None => Vec::new(),
        }
    }

    /// A `lock` message: take or refresh the lock on `target` `id` for `ttl_ms` milliseconds
    /// (`None`: the server's default, 10 s; at most 60 s). The table changes when the server's
    /// `locks` message arrives; a refusal comes back as [`Event::ServerError`] (and
    /// [`Event::Locked`] when someone else holds it).
    pub fn lock(&self, target: EntityKind, id: &str, ttl_ms: Option<u64>) -> ClientMsg {
        ClientMsg::Lock { target: target.as_str().to_string(), id: id.to_string(), ttl: ttl_ms.map(|t| t as f64) }
    }

    /// An `unlock` message: release the lock on `target` `id` (the server ignores an unlock of
    /// a lock this connection does not hold).
    pub fn unlock(&self, target: EntityKind, id: &str) -> ClientMsg {
        ClientMsg::Unlock { target: target.as_str().to_string(), id: id.to_string() }
    }

    /// Replaces the lock table; the event when it changed.
    fn note_locks(&mut self, locks: Vec<Lock>) -> Option<Effect> {
        if *self.locks == locks {
            return None;
        }
        self.locks = Arc::new(locks.clone());
        Some(Effect::Event(Event::Locks(locks)))
    }

    /// The transport as last heard or set.
    pub fn transport(&self) -> Option<&TransportState> {
        self.transport.as_ref()
    }

    /// The best server clock estimate.
    pub fn clock(&self) -> Option<ClockEstimate> {
        self.clock
    }

    /// Server time now, by the estimate (local wall clock when there is none).
    pub fn server_time_ms(&self, now: Now) -> u64 {
        let off = self.clock.map_or(0, |c| c.offset_ms);
        (now.epoch_ms as i64).saturating_add(off).max(0) as u64
    }

    /// A new socket opened: wait for its `init`.
    pub fn on_open(&mut self) {
        self.live = false;
    }

    /// The socket closed (for any reason: a failure, the client's own close, or after
    /// [`Session::on_server_close`]).
    pub fn on_close(&mut self) {
        self.live = false;
        self.ping_sent = None;
    }

    /// The server closed the socket with `code` and `reason`: the session goes offline (as in
    /// [`Session::on_close`]) and the returned [`ServerClose`] says whether the client comes
    /// back ([`CloseAction::for_code`]): on [`CloseAction::Retry`] it reconnects after its
    /// backoff with [`Session::since`]; on [`CloseAction::Stop`] it reports
    /// [`ServerClose::event`] and stays away. A connection replaced by a newer one with the
    /// same connection id (4009) stops, so two clients that share a `_pk` do not take the
    /// presence from each other forever.
    pub fn on_server_close(&mut self, code: u16, reason: &str) -> ServerClose {
        self.on_close();
        ServerClose {
            code,
            reason: reason.to_string(),
            close: Close::from_code(code),
            action: CloseAction::for_code(code),
        }
    }

    /// Applies a local edit optimistically; returns the message to send now, if one may go.
    /// Nothing changes on error. Before the first `init` there is no document to edit.
    pub fn submit(&mut self, ops: &[Op], now: Now) -> Result<Vec<Effect>, OpError> {
        let Some(doc) = &mut self.doc else {
            return Err(OpError::Malformed { reason: "no document yet: wait for the first init".into() });
        };
        doc.local_at(ops, now.mono_ms)?;
        Ok(self.flush(now))
    }

    /// Undoes this person's last undo step that still means something, as an ordinary local
    /// edit (see [`ClientDoc::undo`]); returns what it did and the same effects as
    /// [`Session::submit`]. Before the first `init` there is nothing to undo.
    pub fn undo(&mut self, now: Now) -> Result<(UndoOutcome, Vec<Effect>), OpError> {
        let Some(doc) = &mut self.doc else { return Ok((UndoOutcome::default(), Vec::new())) };
        let outcome = doc.undo()?;
        Ok((outcome, self.flush(now)))
    }

    /// Redoes the last undone step (see [`ClientDoc::redo`]); like [`Session::undo`].
    pub fn redo(&mut self, now: Now) -> Result<(UndoOutcome, Vec<Effect>), OpError> {
        let Some(doc) = &mut self.doc else { return Ok((UndoOutcome::default(), Vec::new())) };
        let outcome = doc.redo()?;
        Ok((outcome, self.flush(now)))
    }

    /// Whether there is a step to undo.
    pub fn can_undo(&self) -> bool {
        self.doc.as_ref().is_some_and(ClientDoc::can_undo)
    }

    /// Whether there is a step to redo.
    pub fn can_redo(&self) -> bool {
        self.doc.as_ref().is_some_and(ClientDoc::can_redo)
    }

    /// Opens an explicit undo group: every edit until [`Session::end_group`] is one step (see
    /// [`ClientDoc::begin_group`]). Before the first `init` it does nothing.
    pub fn begin_group(&mut self) {
        if let Some(doc) = &mut self.doc {
            doc.begin_group();
        }
    }

    /// Closes the group opened by [`Session::begin_group`].
    pub fn end_group(&mut self) {
        if let Some(doc) = &mut self.doc {
            doc.end_group();
        }
    }

    /// How edits become undo steps: the capture window (edits submitted less than
    /// `capture_ms` apart, by [`Now::mono_ms`], are one step) and the stack bound.
    pub fn undo_config(&self) -> UndoConfig {
        self.undo_config
    }

    /// Sets [`Session::undo_config`].
    pub fn set_undo_config(&mut self, config: UndoConfig) {
        self.undo_config = config;
        if let Some(doc) = &mut self.doc {
            doc.set_undo_config(config);
        }
    }

    /// Runs `make` on the current local document and submits what it returns (for edits that
    /// must be valid against the exact local state). Returns the ops submitted.
    pub fn edit<F>(&mut self, make: F, now: Now) -> Result<(Vec<Op>, Vec<Effect>), OpError>
    where
        F: FnOnce(&Document) -> Vec<Op>,
    {
        let Some(doc) = &self.doc else {
            return Err(OpError::Malformed { reason: "no document yet: wait for the first init".into() });
        };
        let ops = make(doc.doc());
        if ops.is_empty() {
            return Ok((ops, Vec::new()));
        }
        let effects = self.submit(&ops, now)?;
        Ok((ops, effects))
    }

    /// The next op to send, if the session is live and none is in flight.
    fn flush(&mut self, now: Now) -> Vec<Effect> {
        if !self.live {
            return Vec::new();
        }
        let Some(doc) = &mut self.doc else { return Vec::new() };
        match doc.take_outgoing() {
            Some(out) => {
                self.inflight_first_sent = Some((out.op_id.clone(), now.mono_ms));
                vec![
                    Effect::Event(Event::Sent { op_id: out.op_id.clone(), resend: false }),
                    Effect::Send(operation_msg(&out)),
                ]
            }
            None => Vec::new(),
        }
    }

    /// The op in flight again, on the live socket (a deliberate duplicate: the server must
    /// answer it with the original ack and apply it once).
    pub fn duplicate(&self) -> Option<ClientMsg> {
        if !self.live {
            return None;
        }
        self.doc.as_ref()?.resend().map(|o| operation_msg(&o))
    }

    /// A cursor message.
    pub fn cursor(&self, x: f64, y: f64, selection: Option<Vec<String>>) -> ClientMsg {
        ClientMsg::Cursor { x, y, selection }
    }

    /// A transport message; the local transport changes at once.
    ///
    /// The server stamps the change with its clock when the message arrives, and sends it to
    /// the others only; so the local copy is stamped with the estimated arrival (server time
    /// now plus half the best round trip), and the playhead here runs in step with everyone
    /// else's rather than ahead by the one-way delay.
    pub fn set_transport(&mut self, playing: bool, position: f64, now: Now) -> ClientMsg {
        let one_way = match self.clock {
            Some(c) if c.rtt < COARSE_RTT => c.rtt.as_millis() as u64 / 2,
            _ => 0,
        };
        let server_time = self.server_time_ms(now).saturating_add(one_way);
        self.note_transport(TransportState { playing, position, server_time, user_id: None });
        ClientMsg::Transport { playing, position }
    }

    /// Keeps the transport, and mirrors it into the document's `isPlaying` and `playhead` as
    /// the server's state has them.
    fn note_transport(&mut self, t: TransportState) {
        if let Some(doc) = &mut self.doc {
            doc.set_transport(t.playing, t.position);
        }
        self.transport = Some(t);
    }

    /// A ping; its pong gives a clock sample.
    pub fn ping(&mut self, now: Now) -> ClientMsg {
        self.ping_sent = Some((now.mono_ms, now.epoch_ms));
        ClientMsg::Ping
    }

    fn reload(&mut self, reason: ReloadReason, dropped: Vec<Op>) -> Vec<Effect> {
        self.reload_next = Some(reason);
        let mut out = Vec::new();
        if !dropped.is_empty() {
            out.push(Effect::Event(Event::Dropped { reason, ops: dropped }));
        }
        out.push(Effect::Reconnect { reload: true });
        out
    }

    /// Handles one server message.
    pub fn handle(&mut self, msg: ServerMsg, now: Now) -> Result<Vec<Effect>, SessionError> {
        if !self.live && !matches!(msg, ServerMsg::Init { .. } | ServerMsg::Error { .. }) {
            return Err(SessionError::BeforeInit { got: msg_name(&msg) });
        }
        match msg {
            ServerMsg::Init { users, state, ops, your_id, version, server_time, transport, locks } => {
                let mut out = self.handle_init(users, state, ops, your_id, version, server_time, transport, now)?;
                // After `Ready`: the table belongs to the room the application now sees.
                if let Some(e) = self.note_locks(locks) {
                    let at =
                        out.iter().position(|e| matches!(e, Effect::Event(Event::Ready { .. }))).map_or(0, |i| i + 1);
                    out.insert(at, e);
                }
                Ok(out)
            }
            ServerMsg::Locks { locks } => Ok(self.note_locks(locks).into_iter().collect()),
            ServerMsg::Operation(m) => Ok(self.handle_op(&m, now)),
            ServerMsg::Error { code, message, op_id, locked_by } => {
                let mut out =
                    vec![Effect::Event(Event::ServerError { code, message: message.clone(), op_id: op_id.clone() })];
                if let Some(locked_by) = locked_by.filter(|_| code == ErrorCode::Locked) {
                    out.push(Effect::Event(Event::Locked { message, locked_by }));
                }
                let about_inflight = op_id.is_some() && op_id.as_deref() == self.inflight_id();
                let rejected = matches!(
                    code,
                    ErrorCode::InvalidOp
                        | ErrorCode::Forbidden
                        | ErrorCode::VersionAhead
                        | ErrorCode::VersionTooOld
                        | ErrorCode::Internal
                );
                if code == ErrorCode::VersionTooOld && (about_inflight || op_id.is_none()) {
                    let dropped = self.take_all_pending();
                    out.extend(self.reload(ReloadReason::VersionTooOld, dropped));
                } else if about_inflight && rejected {
                    let dropped = self.take_all_pending();
                    out.extend(self.reload(ReloadReason::Rejected(code), dropped));
                } else if about_inflight {
                    // Not applied and not a verdict on the op (rate limited, say): a rejoin with
                    // `since` resends it with its op id.
                    out.push(Effect::Reconnect { reload: false });
                }
                Ok(out)
            }
            ServerMsg::UserJoined { user } => {
                Arc::make_mut(&mut self.users).insert(user.id.clone(), user.clone());
                Ok(vec![Effect::Event(Event::UserJoined(user))])
            }
            ServerMsg::UserLeft { user_id } => {
                Arc::make_mut(&mut self.users).remove(&user_id);
                Ok(vec![Effect::Event(Event::UserLeft { user_id })])
            }
            ServerMsg::Cursor { user_id, x, y, selection } => {
                if let Some(p) = Arc::make_mut(&mut self.users).get_mut(&user_id) {
                    p.cursor = Some(CursorPos { x, y, selection });
                }
                Ok(vec![Effect::Event(Event::Cursor { user_id, x, y })])
            }
            ServerMsg::Transport { playing, position, server_time, user_id } => {
                let t = TransportState { playing, position, server_time, user_id: Some(user_id) };
                self.note_transport(t.clone());
                Ok(vec![Effect::Event(Event::Transport(t))])
            }
            ServerMsg::Pong { server_time } => {
                let Some((sent, sent_ms)) = self.ping_sent.take() else { return Ok(Vec::new()) };
                let rtt_ms = now.mono_ms.saturating_sub(sent);
                let rtt = Duration::from_millis(rtt_ms);
                let mid = (sent_ms as i64).saturating_add(rtt_ms.min(i64::MAX as u64) as i64 / 2);
                let sample = ClockEstimate { offset_ms: server_time as i64 - mid, rtt };
                if self.clock.map_or(true, |c| sample.rtt <= c.rtt) {
                    self.clock = Some(sample);
                }
                let best = self.clock.unwrap_or(sample);
                Ok(vec![Effect::Event(Event::Clock { offset_ms: best.offset_ms, rtt })])
            }
        }
    }

    /// Takes the pending ops (in flight first) out of the document; the caller reloads.
    fn take_all_pending(&mut self) -> Vec<Op> {
        let Some(doc) = &mut self.doc else { return Vec::new() };
        let mut dropped = doc.reject_inflight().unwrap_or_default();
        // The document keeps their effect until the reload replaces it; the buffer goes then.
        let placeholder = doc.doc().clone();
        let v = doc.version();
        dropped.extend(doc.reload(placeholder, v));
        self.inflight_first_sent = None;
        dropped
    }

    #[allow(clippy::too_many_arguments)] // the fields of `init`, taken apart by the caller's match
    fn handle_init(
        &mut self,
        users: Vec<Presence>,
        state: Option<serde_json::Value>,
        ops: Option<Vec<OperationMsg>>,
        your_id: String,
        version: u64,
        server_time: u64,
        transport: Option<TransportState>,
        now: Now,
    ) -> Result<Vec<Effect>, SessionError> {
        let mut out = Vec::new();
        let mut reloaded = false;
        let mut caught_up = 0;
        match (state, &mut self.doc) {
            (Some(state), _) => {
                let (fresh, v) = Document::from_state_value(&state)?;
                let v = if state.get("version").is_some() { v } else { version };
                match &mut self.doc {
                    Some(doc) => {
                        let dropped = doc.reload(fresh, v);
                        self.inflight_first_sent = None;
                        let reason = self.reload_next.unwrap_or(ReloadReason::StateOnRejoin);
                        if !dropped.is_empty() {
                            out.push(Effect::Event(Event::Dropped { reason, ops: dropped }));
                        }
                        reloaded = true;
                    }
                    None => {
                        let mut doc = ClientDoc::new(fresh, v, self.op_prefix.clone());
                        doc.set_undo_config(self.undo_config);
                        self.doc = Some(doc);
                    }
                }
            }
            (None, Some(_)) if ops.is_some() => {}
            (None, doc) => return Err(SessionError::NoState { has_ops: ops.is_some(), has_doc: doc.is_some() }),
        }
        self.reload_next = None;
        if let Some(doc) = &mut self.doc {
            // Acks are recognised by op id *and* this connection id (op ids are per account).
            doc.set_connection(your_id.clone());
        }
        self.your_id = Some(your_id.clone());
        self.users = Arc::new(users.into_iter().map(|p| (p.id.clone(), p)).collect());
        if let Some(t) = transport {
            // Authoritative after a `since` catch-up too, which carries no state.
            self.note_transport(t);
        }
        if self.clock.is_none() {
            // A first, coarse sample: init's serverTime against the local clock.
            self.clock = Some(ClockEstimate { offset_ms: server_time as i64 - now.epoch_ms as i64, rtt: COARSE_RTT });
        }
        if let Some(ops) = ops {
            for m in &ops {
                caught_up += 1;
                let effects = self.handle_op(m, now);
                let reconnect = effects.iter().any(|e| matches!(e, Effect::Reconnect { .. }));
                out.extend(effects);
                if reconnect {
                    return Ok(out);
                }
            }
        }
        self.live = true;
        let v = self.version().unwrap_or(version);
        out.insert(0, Effect::Event(Event::Ready { version: v, your_id, reloaded, caught_up }));
        // Resend the op in flight with its op id, or send the next one.
        if let Some(out_msg) = self.doc.as_ref().and_then(ClientDoc::resend) {
            out.push(Effect::Event(Event::Sent { op_id: out_msg.op_id.clone(), resend: true }));
            out.push(Effect::Send(operation_msg(&out_msg)));
        } else {
            out.extend(self.flush(now));
        }
        Ok(out)
    }

    fn handle_op(&mut self, m: &OperationMsg, now: Now) -> Vec<Effect> {
        let Some(doc) = &mut self.doc else { return Vec::new() };
        match doc.receive(m) {
            Ok(Received::Ack) => {
                let op_id = m.op_id.clone().unwrap_or_default();
                let latency = match self.inflight_first_sent.take() {
                    Some((id, at)) if id == op_id => Duration::from_millis(now.mono_ms.saturating_sub(at)),
                    _ => Duration::ZERO,
                };
                let mut out = vec![Effect::Event(Event::Acked { op_id, version: m.version, latency })];
                out.extend(self.flush(now));
                out
            }
            Ok(Received::Remote(ops)) => vec![Effect::Event(Event::Remote {
                user_id: m.user_id.clone(),
                op_id: m.op_id.clone(),
                version: m.version,
                ops,
            })],
            Ok(Received::Stale) => Vec::new(),
            Err(ClientError::Gap { .. }) => {
                // Rejoin with `since`: the server sends what we missed.
                vec![Effect::Reconnect { reload: false }]
            }
            Err(ClientError::Diverged(_)) => {
                let dropped = self.take_all_pending();
                self.reload(ReloadReason::Diverged, dropped)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Now {
        Now { mono_ms: 500, epoch_ms: 1_000 }
    }

    fn init(version: u64) -> ServerMsg {
        crate::protocol::decode_server(
            &json!({"type":"init","users":[],"yourId":"me","version":version,"serverTime":1_000,
                    "state":{"version":version,"tracks":[],"markers":[]}})
            .to_string(),
        )
        .unwrap()
    }

    fn remote(version: u64, id: &str) -> ServerMsg {
        ServerMsg::Operation(OperationMsg {
            operation: Op::batch_from_value(
                json!({"type":"insert","target":"marker","id":id,"index":0,"value":{"time":1.0}}),
            )
            .unwrap(),
            version,
            user_id: "other".into(),
            op_id: None,
            account: None,
        })
    }

    fn at(mono_ms: u64) -> Now {
        Now { mono_ms, epoch_ms: 1_000 + mono_ms }
    }

    fn track(id: &str) -> Vec<Op> {
        Op::batch_from_value(json!({"type":"insert","target":"track","id":id,"index":0,"value":{"name":id}})).unwrap()
    }

    #[test]
    fn replaced_stops_while_failures_and_overload_retry() {
        let mut s = Session::new("me");
        s.on_open();
        s.handle(init(3), now()).unwrap();
        s.submit(&track("t1"), now()).unwrap();
        let replaced = s.on_server_close(4009, "Replaced");
        assert_eq!(replaced.action, CloseAction::Stop);
        assert_eq!(replaced.close, Some(Close::Replaced));
        assert!(!s.is_live());
        let Event::Disconnected { reason, fatal: true, close: Some(Close::Replaced) } = replaced.event() else {
            panic!("{replaced:?} is reported as fatal");
        };
        assert!(reason.contains("4009") && reason.contains("newer connection with the same connection id"), "{reason}");
        assert!(s.has_pending(), "the document and its pending ops stay for the application to read");
        for (code, close) in [(4001, Some(Close::Unauthorized)), (4400, Some(Close::BadRequest))] {
            let c = s.on_server_close(code, "");
            assert_eq!((c.action, c.close), (CloseAction::Stop, close), "{code}");
        }

        for (code, close) in [
            (1011, Some(Close::Internal)),
            (4008, Some(Close::SlowConsumer)),
            (4029, Some(Close::Full)),
            (1001, Some(Close::GoingAway)),
            (4000, Some(Close::HeartbeatTimeout)),
            (1008, Some(Close::RateLimit)),
            (1009, Some(Close::MessageTooBig)),
            (1000, None),
            (4403, None),
        ] {
            let mut s = Session::new("me");
            s.on_open();
            s.handle(init(3), now()).unwrap();
            let c = s.on_server_close(code, "bye");
            assert_eq!((c.action, c.close), (CloseAction::Retry, close), "{code}");
            assert!(matches!(c.event(), Event::Disconnected { fatal: false, .. }), "{code}");
            assert_eq!(s.since(), Some(3), "{code}: a retry rejoins with since");
            // The rejoin resends the op in flight.
            s.submit(&track("t1"), now()).unwrap();
            s.on_open();
            let rejoin = ServerMsg::Init {
                users: vec![],
                state: None,
                ops: Some(vec![]),
                your_id: "me".into(),
                version: 3,
                server_time: 1_000,
                transport: None,
                locks: vec![],
            };
            let e = s.handle(rejoin, now()).unwrap();
            assert!(e.iter().any(|e| matches!(e, Effect::Send(ClientMsg::Operation { .. }))), "{code}: {e:?}");
        }
    }

    #[test]
    fn latency_and_clock_use_the_millisecond_clock() {
        let mut s = Session::new("me");
        s.on_open();
        s.handle(init(0), at(0)).unwrap();
        let sent = s.submit(&track("t1"), at(10)).unwrap();
        let Some(Effect::Send(ClientMsg::Operation { operation, .. })) = sent.last().cloned() else {
            panic!("{sent:?}")
        };
        let ack = OperationMsg {
            operation: Op::batch_from_value(operation).unwrap(),
            version: 1,
            user_id: "me".into(),
            op_id: Some("me:1".into()),
            account: None,
        };
        let e = s.handle(ServerMsg::Operation(ack), at(52)).unwrap();
        assert!(e.contains(&Effect::Event(Event::Acked {
            op_id: "me:1".into(),
            version: 1,
            latency: Duration::from_millis(42)
        })));
        // The server clock runs 10 s ahead; the pong comes back 40 ms after the ping.
        s.ping(at(100));
        let e = s.handle(ServerMsg::Pong { server_time: 1_000 + 120 + 10_000 }, at(140)).unwrap();
        assert_eq!(e, vec![Effect::Event(Event::Clock { offset_ms: 10_000, rtt: Duration::from_millis(40) })]);
        assert_eq!(s.server_time_ms(at(200)), 1_000 + 200 + 10_000);
        // A local play is stamped with its estimated arrival at the server (half the round
        // trip later), as the server stamps it for everyone else.
        s.set_transport(true, 0.0, at(200));
        assert_eq!(s.transport().map(|t| t.server_time), Some(1_000 + 200 + 10_000 + 20));
    }

    #[test]
    fn nothing_before_init_and_no_edit_without_a_document() {
        let mut s = Session::new("me");
        assert_eq!(s.handle(remote(1, "m"), now()), Err(SessionError::BeforeInit { got: "operation" }));
        assert!(s.submit(&[], now()).is_err());
        assert_eq!(s.since(), None);
    }

    #[test]
    fn a_gap_resyncs_with_since_and_a_divergence_reloads() {
        let mut s = Session::new("me");
        s.on_open();
        s.handle(init(4), now()).unwrap();
        assert_eq!(s.since(), Some(4));
        assert_eq!(s.handle(remote(6, "m1"), now()).unwrap(), vec![Effect::Reconnect { reload: false }]);
        assert_eq!(s.since(), Some(4), "a gap keeps since");
        s.handle(remote(5, "m1"), now()).unwrap();
        // The same id again does not apply: the replica is out of step and reloads.
        let e = s.handle(remote(6, "m1"), now()).unwrap();
        assert!(e.contains(&Effect::Reconnect { reload: true }), "{e:?}");
        assert_eq!(s.since(), None, "a reload connects without since");
    }

    #[test]
    fn stale_duplicates_are_ignored_and_offline_edits_wait() {
        let mut s = Session::new("me");
        s.on_open();
        s.handle(init(0), now()).unwrap();
        s.on_close();
        let ops =
            Op::batch_from_value(json!({"type":"update","target":"project","path":["tempo"],"value":99})).unwrap();
        assert!(s.submit(&ops, now()).unwrap().is_empty(), "offline: nothing is sent");
        let bump =
            Op::batch_from_value(json!({"type":"update","target":"project","path":["tempo"],"value":100})).unwrap();
        s.submit(&bump, now()).unwrap();
        assert!(s.has_pending());
        assert_eq!(s.pending_edits(), 2, "two edits wait, composed into one op");
        s.on_open();
        let rejoin = ServerMsg::Init {
            users: vec![],
            state: None,
            ops: Some(vec![]),
            your_id: "me".into(),
            version: 0,
            server_time: 1_000,
            transport: None,
            locks: vec![],
        };
        let e = s.handle(rejoin, now()).unwrap();
        let sent: Vec<_> = e.iter().filter(|e| matches!(e, Effect::Send(_))).collect();
        assert_eq!(sent.len(), 1, "sent once on rejoin: {e:?}");
        assert_eq!(s.inflight_id(), Some("me:1"));
        assert_eq!(s.pending_edits(), 2, "both travel in the op in flight");
        let ack = OperationMsg {
            operation: bump.clone(),
            version: 1,
            user_id: "me".into(),
            op_id: Some("me:1".into()),
            account: None,
        };
        s.handle(ServerMsg::Operation(ack.clone()), now()).unwrap();
        assert!(!s.has_pending());
        assert_eq!(s.pending_edits(), 0);
        assert!(s.handle(ServerMsg::Operation(ack), now()).unwrap().is_empty(), "a duplicate ack is stale");
        assert_eq!(s.version(), Some(1));
    }

    #[test]
    fn undo_and_redo_are_ordinary_edits_with_the_effects_of_submit() {
        let mut s = Session::new("me");
        assert!(!s.can_undo());
        assert_eq!(s.undo(now()).unwrap().0, UndoOutcome::default(), "nothing to undo before init");
        s.on_open();
        s.handle(init(0), now()).unwrap();
        // Two edits 100 ms apart are one step (capture window); a third 600 ms later is another.
        s.submit(&track("t1"), at(1_000)).unwrap();
        s.submit(&track("t2"), at(1_100)).unwrap();
        s.submit(&track("t3"), at(1_700)).unwrap();
        let (out, effects) = s.undo(at(1_800)).unwrap();
        assert!(out.did_apply());
        assert_eq!(s.doc().unwrap().tracks().len(), 2);
        assert!(effects.is_empty(), "the first edit is still in flight: the undo waits in the buffer");
        let (_, _) = s.undo(at(1_900)).unwrap();
        assert_eq!(s.doc().unwrap().tracks().len(), 0);
        assert!(!s.can_undo() && s.can_redo());
        // The ack of the first edit lets the buffered edits (and undos) go as one op.
        let ack = OperationMsg {
            operation: track("t1"),
            version: 1,
            user_id: "me".into(),
            op_id: Some("me:1".into()),
            account: None,
        };
        let e = s.handle(ServerMsg::Operation(ack), now()).unwrap();
        assert!(e.iter().any(|e| matches!(e, Effect::Send(_))), "{e:?}");
        // A redo sends like a submit once nothing is in flight; an explicit group is one step.
        s.begin_group();
        s.submit(&track("g1"), at(10_000)).unwrap();
        s.submit(&track("g2"), at(20_000)).unwrap();
        s.end_group();
        assert!(!s.can_redo(), "a new edit clears the redo stack");
        s.undo(at(30_000)).unwrap();
        assert!(s.doc().unwrap().get("g1").is_none() && s.doc().unwrap().get("g2").is_none());
        let (out, _) = s.redo(at(30_100)).unwrap();
        assert!(out.did_apply() && s.doc().unwrap().get("g2").is_some());
    }

    #[test]
    fn the_lock_table_follows_init_and_locks_and_a_refusal_names_the_holder() {
        let lock = |id: &str, who: &str| Lock {
            target: EntityKind::Clip,
            id: id.into(),
            user_id: who.into(),
            name: who.into(),
            color: "#e6194b".into(),
            expires_at: 11_000,
        };
        let mut s = Session::new("me");
        s.on_open();
        let mut first = init(0);
        if let ServerMsg::Init { locks, .. } = &mut first {
            locks.push(lock("c1", "ana"));
        }
        let e = s.handle(first, now()).unwrap();
        assert!(matches!(&e[0], Effect::Event(Event::Ready { .. })), "{e:?}");
        assert_eq!(e[1], Effect::Event(Event::Locks(vec![lock("c1", "ana")])), "the table right after Ready");
        assert_eq!(s.lock_on(EntityKind::Clip, "c1").map(|l| l.user_id.as_str()), Some("ana"));
        assert!(s.my_locks().is_empty());
        // The same table again is no change; a new one is.
        assert!(s.handle(ServerMsg::Locks { locks: vec![lock("c1", "ana")] }, now()).unwrap().is_empty());
        let both = vec![lock("c1", "ana"), lock("c2", "me")];
        let e = s.handle(ServerMsg::Locks { locks: both.clone() }, now()).unwrap();
        assert_eq!(e, vec![Effect::Event(Event::Locks(both))]);
        assert_eq!(s.my_locks().len(), 1);
        // Messages to send.
        let m = s.lock(EntityKind::Clip, "c3", Some(300));
        assert_eq!(serde_json::to_value(&m).unwrap(), json!({"type":"lock","target":"clip","id":"c3","ttl":300.0}));
        let m = s.unlock(EntityKind::Track, "t1");
        assert_eq!(serde_json::to_value(&m).unwrap(), json!({"type":"unlock","target":"track","id":"t1"}));
        // A refusal: the error as ever, then who holds it.
        let refused = crate::protocol::decode_server(
            &json!({"type":"error","code":"locked","message":"clip c1 is locked by ana",
                    "lockedBy":{"id":"ana","userId":"ana","name":"Ana","color":"#e6194b","lastSeen":5}})
            .to_string(),
        )
        .unwrap();
        let e = s.handle(refused, now()).unwrap();
        assert!(matches!(&e[0], Effect::Event(Event::ServerError { code: ErrorCode::Locked, .. })), "{e:?}");
        let Effect::Event(Event::Locked { locked_by, .. }) = &e[1] else { panic!("{e:?}") };
        assert_eq!(locked_by.name, "Ana");
        assert_eq!(e.len(), 2, "a lock refusal reloads nothing: {e:?}");
        // A reconnect's init without locks empties the table.
        s.on_open();
        let e = s.handle(init(0), now()).unwrap();
        assert!(e.contains(&Effect::Event(Event::Locks(vec![]))), "{e:?}");
        assert!(s.locks().is_empty());
    }
}
