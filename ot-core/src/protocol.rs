//! The protocol's rules in one place, used by the sequencer and every client alike.
//!
//! - This module: the socket messages of PROTOCOL §3 (and the soft locks of §7: [`Lock`],
//!   [`lock_ttl_ms`], [`MAX_LOCKS_PER_CONNECTION`]) as serde types, their decoding, and the
//!   size [`Limits`] of §3.3. Decoding is strict about what it needs and tolerant of what it
//!   does not know: unknown fields are ignored, and [`decode_client`] tells `bad_json` from
//!   `bad_message` so the server answers with the right [`ErrorCode`].
//! - [`close`]: the close codes the server sends ([`Close`]) and what a client does on each
//!   ([`CloseAction`]).
//! - [`ids`]: the room and connection id rule ([`valid_id`], [`ROOM_ID_MAX`],
//!   [`CONNECTION_ID_MAX`]).
//! - [`token`]: the claims of §2 ([`Claims`], built with [`Claims::user`] and
//!   [`Claims::into_room`] from a given `now`), [`Role`] and what each role may do, and the
//!   token lifetime bound. Signing and verifying the JWT is the server's.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::op::{Op, Update};
use crate::EntityKind;

pub mod close;
pub mod ids;
pub mod token;

pub use close::{Close, CloseAction};
pub use ids::{valid_id, CONNECTION_ID_MAX, ROOM_ID_MAX};
pub use token::{Claims, ClaimsError, Role, UnknownRole, MAX_TOKEN_LIFETIME};

/// A presence object (PROTOCOL §3.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    /// The connection id (`yourId`, `userId` in cursor / user_left / operation).
    pub id: String,
    /// The account id from the token.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Avatar URL, when the token has one.
    #[serde(default)]
    pub avatar: Option<String>,
    /// A CSS color, stable for the connection and distinct within the room while possible.
    pub color: String,
    /// The latest cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<CursorPos>,
    /// Milliseconds since the epoch of the last message from this connection.
    pub last_seen: u64,
}

/// A cursor position with an optional selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CursorPos {
    /// Horizontal position.
    pub x: f64,
    /// Vertical position.
    pub y: f64,
    /// Selected entity ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Vec<String>>,
}

/// A message from a client (PROTOCOL §3.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// An edit: one op or an array of ops, applied atomically.
    #[serde(rename_all = "camelCase")]
    Operation {
        /// One op or an array; decoded with [`Op::batch_from_value`] so that errors are typed.
        operation: Value,
        /// The version the client's copy had when it made the op.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_version: Option<u64>,
        /// Unique per op from this client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op_id: Option<String>,
    },
    /// A live cursor.
    Cursor {
        /// Horizontal position.
        x: f64,
        /// Vertical position.
        y: f64,
        /// Selected entity ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selection: Option<Vec<String>>,
    },
    /// Play / pause / seek.
    Transport {
        /// Whether playback runs.
        playing: bool,
        /// Position in seconds.
        position: f64,
    },
    /// Heartbeat.
    Ping,
    /// Take or refresh a soft lock on an entity (PROTOCOL §7).
    Lock {
        /// `track`, `clip` or `marker`; kept as text so that another word is answered
        /// `invalid_op` (like an entity that does not exist) rather than `bad_message`.
        target: String,
        /// The entity's id.
        id: String,
        /// Milliseconds until it expires; see [`lock_ttl_ms`] for the default and the bounds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<f64>,
    },
    /// Release a soft lock this connection holds (PROTOCOL §7).
    Unlock {
        /// `track`, `clip` or `marker`.
        target: String,
        /// The entity's id.
        id: String,
    },
}

/// A lock's `ttl` when the client gives none, in milliseconds (PROTOCOL §7).
pub const LOCK_TTL_DEFAULT_MS: u64 = 10_000;

/// The longest lock `ttl`, in milliseconds: a larger one is taken as this (PROTOCOL §7).
pub const LOCK_TTL_MAX_MS: u64 = 60_000;

/// Most locks one connection holds at once; past it a `lock` is answered `lock_limit`.
pub const MAX_LOCKS_PER_CONNECTION: usize = 16;

/// A lock `ttl` that is not a positive number of milliseconds: answered `bad_message`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("lock ttl must be a positive number of milliseconds, got {ttl}")]
pub struct LockTtlError {
    /// What was sent.
    pub ttl: f64,
}

/// A `lock` message's `ttl` in whole milliseconds: [`LOCK_TTL_DEFAULT_MS`] when absent, at most
/// [`LOCK_TTL_MAX_MS`] (larger values are clamped), fractions rounded up; zero or negative is an
/// error. The one rule, used by the server and by clients that refresh their locks.
///
/// ```
/// use ot_core::protocol::lock_ttl_ms;
/// assert_eq!(lock_ttl_ms(None), Ok(10_000));
/// assert_eq!(lock_ttl_ms(Some(300.0)), Ok(300));
/// assert_eq!(lock_ttl_ms(Some(0.5)), Ok(1));
/// assert_eq!(lock_ttl_ms(Some(1e12)), Ok(60_000));
/// assert!(lock_ttl_ms(Some(0.0)).is_err() && lock_ttl_ms(Some(-5.0)).is_err());
/// ```
pub fn lock_ttl_ms(ttl: Option<f64>) -> Result<u64, LockTtlError> {
    match ttl {
        None => Ok(LOCK_TTL_DEFAULT_MS),
        Some(t) if t.is_finite() && t > 0.0 => Ok(t.ceil().min(LOCK_TTL_MAX_MS as f64) as u64),
        Some(t) => Err(LockTtlError { ttl: t }),
    }
}

/// One entry of the room's lock table (`locks` and `init.locks`, PROTOCOL §7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    /// What kind of entity is locked.
    pub target: EntityKind,
    /// The entity's id.
    pub id: String,
    /// The holder's connection id (its presence `id`).
    pub user_id: String,
    /// The holder's display name.
    pub name: String,
    /// The holder's presence color.
    pub color: String,
    /// When it expires unless refreshed: milliseconds since the epoch, server clock.
    pub expires_at: u64,
}

/// One sequenced operation as broadcast (and as listed in `init.ops` and `GET …/ops`).
///
/// `account` is the sender's account (the token's `sub`), which scopes its `opId` (PROTOCOL §4):
/// the server keeps it with the op in memory and in its stores, and it is never on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationMsg {
    /// The sequenced form: always an array, possibly empty.
    pub operation: Vec<Op>,
    /// The version it produced.
    pub version: u64,
    /// The sender's connection id.
    pub user_id: String,
    /// The sender's op id, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    /// The sender's account (server side only; not serialized).
    #[serde(skip)]
    pub account: Option<Arc<str>>,
}

/// The transport as the server last stamped it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportState {
    /// Whether playback runs.
    pub playing: bool,
    /// Where the playhead was at `server_time`, in seconds.
    pub position: f64,
    /// Milliseconds since the epoch.
    pub server_time: u64,
    /// The connection that last changed it (absent until someone does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl TransportState {
    /// Where the playhead is at `server_ms` (server clock, milliseconds since the epoch): it
    /// runs on from `position` while `playing`, and stays put while paused. A `server_ms`
    /// before `server_time` (a clock estimate that moved back) never moves it backwards.
    ///
    /// ```
    /// use ot_core::protocol::TransportState;
    /// let t = TransportState { playing: true, position: 2.0, server_time: 1_000, user_id: None };
    /// assert_eq!(t.position_at(3_500), 4.5);
    /// assert_eq!(t.position_at(500), 2.0);
    /// let paused = TransportState { playing: false, ..t };
    /// assert_eq!(paused.position_at(3_500), 2.0);
    /// ```
    pub fn position_at(&self, server_ms: u64) -> f64 {
        if !self.playing {
            return self.position;
        }
        self.position + server_ms.saturating_sub(self.server_time) as f64 / 1000.0
    }
}

/// A message from the server (PROTOCOL §3.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message after a successful connect.
    #[serde(rename_all = "camelCase")]
    Init {
        /// Everyone connected, this connection included.
        users: Vec<Presence>,
        /// The full state (absent when `ops` is sent instead).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<Value>,
        /// The ops after the client's `since`, when it was honoured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ops: Option<Vec<OperationMsg>>,
        /// This connection's id.
        your_id: String,
        /// The room's version.
        version: u64,
        /// Milliseconds since the epoch.
        server_time: u64,
        /// The transport with the time it was stamped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transport: Option<TransportState>,
        /// The room's lock table (PROTOCOL §7): always sent, possibly empty; absent from an
        /// older server, and then read as empty.
        #[serde(default)]
        locks: Vec<Lock>,
    },
    /// The room's whole lock table, after every change (PROTOCOL §7).
    Locks {
        /// Every lock held now.
        locks: Vec<Lock>,
    },
    /// Someone joined.
    UserJoined {
        /// Their presence.
        user: Presence,
    },
    /// Someone left.
    #[serde(rename_all = "camelCase")]
    UserLeft {
        /// The connection id that left.
        user_id: String,
    },
    /// Someone's cursor.
    #[serde(rename_all = "camelCase")]
    Cursor {
        /// Their connection id.
        user_id: String,
        /// Horizontal position.
        x: f64,
        /// Vertical position.
        y: f64,
        /// Selected entity ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selection: Option<Vec<String>>,
    },
    /// A sequenced op; for its sender, the ack.
    Operation(OperationMsg),
    /// Someone changed the transport.
    #[serde(rename_all = "camelCase")]
    Transport {
        /// Whether playback runs.
        playing: bool,
        /// Position at `server_time`.
        position: f64,
        /// Who changed it.
        user_id: String,
        /// Milliseconds since the epoch.
        server_time: u64,
    },
    /// Answer to `ping`.
    #[serde(rename_all = "camelCase")]
    Pong {
        /// Milliseconds since the epoch.
        server_time: u64,
    },
    /// Something the client sent could not be taken.
    #[serde(rename_all = "camelCase")]
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human text.
        message: String,
        /// The op it is about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op_id: Option<String>,
        /// With `locked`: the presence of the connection holding the lock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked_by: Option<Presence>,
    },
}

/// The stable error codes of PROTOCOL §3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON (or not UTF-8 text).
    BadJson,
    /// Valid JSON but not a message: unknown type, missing or mistyped fields.
    BadMessage,
    /// Over the frame, batch or depth limit.
    TooLarge,
    /// An op that does not apply to the state it was made on.
    InvalidOp,
    /// `baseVersion` is ahead of the room.
    VersionAhead,
    /// `baseVersion` is older than any history the server can still reach.
    VersionTooOld,
    /// A viewer tried to edit or drive the transport.
    Forbidden,
    /// Too many messages per second.
    RateLimited,
    /// The server failed to store the op; it was not applied.
    Internal,
    /// The entity is locked by another connection (PROTOCOL §7); `lockedBy` says who.
    Locked,
    /// The connection holds [`MAX_LOCKS_PER_CONNECTION`] locks already.
    LockLimit,
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidOp => "invalid_op",
            ErrorCode::VersionAhead => "version_ahead",
            ErrorCode::VersionTooOld => "version_too_old",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Locked => "locked",
            ErrorCode::LockLimit => "lock_limit",
        }
    }
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// JSON, but not a message of PROTOCOL §3.1.
    #[error("not a valid message: {0}")]
    BadMessage(String),
    /// Nested deeper than the limit.
    #[error("JSON nested deeper than {limit}")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
}

impl DecodeError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BadJson(_) => ErrorCode::BadJson,
            DecodeError::BadMessage(_) => ErrorCode::BadMessage,
            DecodeError::TooDeep { .. } => ErrorCode::TooLarge,
        }
    }
}

/// The maximum nesting depth of JSON text (arrays and objects), scanning bytes only; strings
/// are skipped so brackets inside them do not count. O(len), no allocation.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in text.as_bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decodes one client frame, checking nesting depth first. Never panics.
pub fn decode_client(text: &str, max_depth: usize) -> Result<ClientMsg, DecodeError> {
    if json_depth(text) > max_depth {
        return Err(DecodeError::TooDeep { limit: max_depth });
    }
    serde_json::from_str::<ClientMsg>(text).map_err(|e| {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            DecodeError::BadJson(e.to_string())
        } else {
            DecodeError::BadMessage(e.to_string())
        }
    })
}

/// The common client frame, an `operation` whose ops carry only the fields of PROTOCOL §5.2,
/// decoded in one pass from the text (no intermediate `Value`): what [`decode_client`] then
/// [`Op::batch_from_value`] give for it, in a fraction of the time. `None` for any other frame,
/// and for any frame that is not valid: the caller then takes the general path, which says
/// exactly what is wrong, so errors are the same whichever path a frame takes.
pub fn decode_operation(text: &str, max_depth: usize) -> Option<FastOperation> {
    #[derive(Deserialize)]
    enum OnlyOperation {
        #[serde(rename = "operation")]
        Operation,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Frame {
        #[serde(rename = "type")]
        #[allow(dead_code)]
        ty: OnlyOperation,
        operation: crate::op::StrictBatch,
        #[serde(default)]
        base_version: Option<u64>,
        #[serde(default)]
        op_id: Option<String>,
    }
    if json_depth(text) > max_depth {
        return None;
    }
    let f: Frame = serde_json::from_str(text).ok()?;
    Some(FastOperation { ops: f.operation.into_ops()?, base_version: f.base_version, op_id: f.op_id })
}

/// An `operation` frame decoded by [`decode_operation`].
#[derive(Debug, Clone, PartialEq)]
pub struct FastOperation {
    /// The ops, in order (unannotated as the client sent them).
    pub ops: Vec<Op>,
    /// `baseVersion`.
    pub base_version: Option<u64>,
    /// `opId`.
    pub op_id: Option<String>,
}

/// Decodes one server frame (for clients). Never panics.
pub fn decode_server(text: &str) -> Result<ServerMsg, DecodeError> {
    serde_json::from_str::<ServerMsg>(text).map_err(|e| {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            DecodeError::BadJson(e.to_string())
        } else {
            DecodeError::BadMessage(e.to_string())
        }
    })
}

/// The length of `v`'s JSON text, counted without building it.
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Serializing our own types to a counter cannot fail; a failure would count what was written.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Encodes a server message as JSON text.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"code\":\"internal\",\"message\":{:?}}}", e.to_string()))
}

/// The ceiling of [`Limits::max_depth`]: with it, every stored record and every state nests
/// well inside serde_json's recursion limit of 128, so whatever the server acknowledged it can
/// always decode again.
pub const HARD_MAX_DEPTH: usize = 64;

/// The ceiling of [`Limits::max_path`].
pub const HARD_MAX_PATH: usize = 64;

/// The longest id in a cursor's `selection`, in bytes.
pub const MAX_SELECTED_ID: usize = 256;

/// How deep a client frame nests around a property value: the message, the batch array, the
/// op, an insert's `value`, a track's `clips`, one clip.
pub const ENVELOPE_DEPTH: usize = 6;

/// The size limits of PROTOCOL §3.3 on what a client sends, checked before anything is built
/// from it. The server takes them from its configuration; [`Limits::default`] is the protocol's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of a JSON value in an op, and of every property value that results from
    /// applying it (an update of `["a","b"]` to `{}` stores `{"b":{}}` at `a`: depth 2).
    pub max_depth: usize,
    /// Most keys in an update's `path`.
    pub max_path: usize,
    /// Longest `opId`, in bytes.
    pub max_op_id: usize,
    /// Most ids in a cursor's `selection`.
    pub max_selection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 32, max_path: 32, max_op_id: 128, max_selection: 256 }
    }
}

/// A message over one of the [`Limits`]: answered with `too_large`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// An update's `path` has too many keys.
    #[error("update path of {len} keys is over the limit of {limit}")]
    PathTooLong {
        /// Keys given.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A value nests too deep (counting the objects its path creates).
    #[error("value nested {depth} deep is over the limit of {limit}")]
    TooDeep {
        /// The depth it would have.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// An `opId` is too long.
    #[error("opId of {len} bytes is over the limit of {limit}")]
    OpIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An id in a cursor `selection` is longer than any id worth drawing.
    #[error("selected id of {len} bytes is over the limit of {limit}")]
    SelectedIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A cursor `selection` lists too many ids.
    #[error("selection of {len} ids is over the limit of {limit}")]
    SelectionTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl Limits {
    /// These limits with `max_depth` and `max_path` held to their ceilings.
    pub fn clamped(self) -> Limits {
        Limits { max_depth: self.max_depth.min(HARD_MAX_DEPTH), max_path: self.max_path.min(HARD_MAX_PATH), ..self }
    }

    /// The deepest client frame worth parsing: [`Limits::max_depth`] plus the envelope.
    pub fn frame_depth(&self) -> usize {
        self.max_depth.min(HARD_MAX_DEPTH) + ENVELOPE_DEPTH
    }

    /// Checks every op of a batch: path lengths, and the depth of every property value it
    /// carries or would create.
    pub fn check_ops(&self, ops: &[Op]) -> Result<(), LimitError> {
        let limit = self.max_depth.min(HARD_MAX_DEPTH);
        let deep = |depth: usize| if depth > limit { Err(LimitError::TooDeep { depth, limit }) } else { Ok(()) };
        for op in ops {
            match op {
                Op::Update(Update { path, value, .. }) => {
                    let max_path = self.max_path.min(HARD_MAX_PATH);
                    if path.len() > max_path {
                        return Err(LimitError::PathTooLong { len: path.len(), limit: max_path });
                    }
                    deep(path.len().saturating_sub(1) + value_depth(value))?;
                }
                Op::Insert(o) => {
                    for (k, v) in &o.value {
                        match (k.as_str(), v) {
                            ("clips", Value::Array(clips)) if o.kind == crate::EntityKind::Track => {
                                for clip in clips {
                                    match clip {
                                        Value::Object(props) => {
                                            for v in props.values() {
                                                deep(value_depth(v))?;
                                            }
                                        }
                                        other => deep(value_depth(other))?,
                                    }
                                }
                            }
                            _ => deep(value_depth(v))?,
                        }
                    }
                }
                // Their annotations are recomputed by the server from its own state.
                Op::Delete(_) | Op::Move(_) => {}
            }
        }
        Ok(())
    }

    /// Checks a client message's `opId` and cursor `selection`.
    pub fn check_client(&self, msg: &ClientMsg) -> Result<(), LimitError> {
        match msg {
            ClientMsg::Operation { op_id: Some(id), .. } if id.len() > self.max_op_id => {
                Err(LimitError::OpIdTooLong { len: id.len(), limit: self.max_op_id })
            }
            ClientMsg::Cursor { selection: Some(sel), .. } if sel.len() > self.max_selection => {
                Err(LimitError::SelectionTooLong { len: sel.len(), limit: self.max_selection })
            }
            ClientMsg::Cursor { selection: Some(sel), .. } => match sel.iter().find(|id| id.len() > MAX_SELECTED_ID) {
                Some(id) => Err(LimitError::SelectedIdTooLong { len: id.len(), limit: MAX_SELECTED_ID }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// The nesting depth of a JSON value: 0 for a scalar, 1 for `{}` or `[1]`, and so on. Walks
/// with an explicit stack, so no input can overflow the call stack.
pub fn value_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|x| (x, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    /// What the general path makes of a frame: the ops, base and op id, or `None` if it
    /// refuses it.
    fn general(text: &str) -> Option<FastOperation> {
        match decode_client(text, 32).ok()? {
            ClientMsg::Operation { operation, base_version, op_id } => {
                Some(FastOperation { ops: Op::batch_from_value(operation).ok()?, base_version, op_id })
            }
            _ => None,
        }
    }

    /// Whatever the fast path accepts, the general path decodes to the same thing; what it
    /// leaves (other messages, extra fields, anything invalid) is the general path's to judge.
    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let frames = [
            r#"{"type":"operation","operation":{"type":"update","target":"clip","id":"c1","path":["gain"],"value":0.5},"baseVersion":3,"opId":"a:1"}"#,
            r#"{"operation":[{"type":"move","target":"clip","id":"c1","parent":"t2","index":0},{"type":"update","target":"project","path":["tempo"],"value":128,"oldValue":120}],"type":"operation","timestamp":5}"#,
            r#"{"type":"operation","operation":{"type":"insert","target":"track","id":"t9","index":0,"value":{"name":"B","clips":[{"id":"k","start":1}]}}}"#,
            r#"{"type":"operation","operation":{"type":"update","target":"clip","id":"c1","path":["x"],"value":null,"remove":true},"baseVersion":null}"#,
            r#"{"type":"operation","operation":[]}"#,
            r#"{"type":"operation","operation":{"type":"delete","target":"marker","id":"m1","extra":1}}"#,
            r#"{"type":"operation","operation":{"type":"update","target":"clip","id":"c1","path":[],"value":1}}"#,
            r#"{"type":"operation","operation":{"type":"move","target":"project","id":"x","index":0}}"#,
            r#"{"type":"operation","operation":{"type":"jump","target":"clip","id":"c1"}}"#,
            r#"{"type":"operation","operation":3}"#,
            r#"{"type":"operation","type":"operation","operation":[]}"#,
            r#"{"type":"cursor","x":1,"y":2}"#,
            r#"{"type":"operation","operation":{"type":"delete","target":"clip","id":"c1"},"baseVersion":-1}"#,
            r#"{"type":"operation","operation":{"type":"delete","target":"clip","id":"c1"}"#,
            r#"[{"type":"operation"}]"#,
            "",
        ];
        for f in frames {
            if let Some(fast) = decode_operation(f, 32) {
                assert_eq!(Some(fast), general(f), "{f}");
            }
        }
        assert!(decode_operation(frames[0], 32).is_some(), "the common frame takes the fast path");
        assert!(decode_operation(frames[1], 32).is_some(), "field order and oldValue do not matter");
        assert!(decode_operation(frames[5], 32).is_none(), "extra fields go the general way, which keeps them");
        let deep = format!(
            r#"{{"type":"operation","operation":{{"type":"update","target":"project","path":["a"],"value":{}1{}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(decode_operation(&deep, 32).is_none(), "too deep: the general path refuses it");
    }
}
