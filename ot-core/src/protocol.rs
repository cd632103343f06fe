//! The socket messages of PROTOCOL §3 as serde types, shared by the sequencer and every client.
//!
//! Decoding is strict about what it needs and tolerant of what it does not know: unknown
//! fields are ignored, and [`decode_client`] tells `bad_json` from `bad_message` so the server
//! answers with the right [`ErrorCode`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::op::Op;

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
}

/// One sequenced operation as broadcast (and as listed in `init.ops` and `GET …/ops`).
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

/// Encodes a server message as JSON text.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"code\":\"internal\",\"message\":{:?}}}", e.to_string()))
}
