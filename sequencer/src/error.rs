//! Every refusal the server gives, and the ONE place that maps it to a wire code
//! ([`Rejection::code`]) or a close code ([`Close`]).

use ot_core::protocol::{DecodeError, ErrorCode, LimitError};
use ot_core::sync::SubmitError;
use ot_core::OpError;

/// Why a client message was not taken (answered with an `error` message; the socket stays open).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The frame did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A binary frame.
    #[error("binary frames are not accepted; send UTF-8 JSON text")]
    Binary,
    /// A frame over `--max-frame`.
    #[error("frame of {len} bytes is over the limit of {limit}")]
    FrameTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch with too many ops.
    #[error("batch of {len} ops is over the limit of {limit}")]
    BatchTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The `operation` field is not an op or an array of ops.
    #[error("malformed operation: {0}")]
    BadOp(OpError),
    /// Rebase or apply refused it.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A viewer tried to edit or drive the transport.
    #[error("viewers may not send `{what}`")]
    Forbidden {
        /// The message type.
        what: &'static str,
    },
    /// Over `--rate-limit` messages per second.
    #[error("over {limit} messages per second")]
    RateLimited {
        /// The limit.
        limit: u32,
    },
    /// The store failed; nothing was applied.
    #[error("storage failed: {0}")]
    Storage(String),
    /// Over a size limit of PROTOCOL §3.3 (path, depth, op id, selection).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The op would take the room's document past its size cap.
    #[error("the project would grow to {bytes} bytes, over the cap of {limit}")]
    DocTooLarge {
        /// Its size after the op, estimated.
        bytes: usize,
        /// The cap.
        limit: usize,
    },
}

impl Rejection {
    /// The wire code of PROTOCOL §3.2 for this refusal: the only mapping in the crate.
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::Decode(e) => e.code(),
            Rejection::Binary => ErrorCode::BadJson,
            Rejection::FrameTooLarge { .. }
            | Rejection::BatchTooLarge { .. }
            | Rejection::Limit(_)
            | Rejection::DocTooLarge { .. }
            | Rejection::BadOp(OpError::PathTooLong { .. }) => ErrorCode::TooLarge,
            Rejection::BadOp(_) => ErrorCode::BadMessage,
            Rejection::Submit(SubmitError::VersionAhead { .. }) => ErrorCode::VersionAhead,
            Rejection::Submit(SubmitError::VersionTooOld { .. } | SubmitError::NeedHistory { .. }) => {
                ErrorCode::VersionTooOld
            }
            Rejection::Submit(SubmitError::Invalid(_)) => ErrorCode::InvalidOp,
            Rejection::Forbidden { .. } => ErrorCode::Forbidden,
            Rejection::RateLimited { .. } => ErrorCode::RateLimited,
            Rejection::Storage(_) => ErrorCode::Internal,
        }
    }
}

/// Why the server closes a socket: each a typed WebSocket close code with a fixed reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Missing, malformed, expired, wrongly signed or wrong-room token (PROTOCOL §2).
    Unauthorized,
    /// The room id or `_pk` is not 1–128 (1–64) chars of `[A-Za-z0-9_-]`.
    BadRequest,
    /// Server shutting down (PROTOCOL §6).
    GoingAway,
    /// The client's queue of operations overflowed: reconnect with `since`.
    SlowConsumer,
    /// Nothing heard for `--heartbeat-timeout`.
    HeartbeatTimeout,
    /// A newer connection with the same `_pk` took over.
    Replaced,
    /// The room or server is at its connection limit.
    Full,
    /// The client kept sending over the rate limit.
    RateLimit,
    /// A frame over the hard limit the socket layer enforces.
    MessageTooBig,
    /// The room failed (storage); reconnect and resync.
    Internal,
}

impl Close {
    /// The close code.
    pub fn code(self) -> u16 {
        match self {
            Close::Unauthorized => 4001,
            Close::BadRequest => 4400,
            Close::GoingAway => 1001,
            Close::SlowConsumer => 4008,
            Close::HeartbeatTimeout => 4000,
            Close::Replaced => 4009,
            Close::Full => 4029,
            Close::RateLimit => 1008,
            Close::MessageTooBig => 1009,
            Close::Internal => 1011,
        }
    }

    /// The close reason.
    pub fn reason(self) -> &'static str {
        match self {
            Close::Unauthorized => "Unauthorized",
            Close::BadRequest => "Bad Request",
            Close::GoingAway => "Going Away",
            Close::SlowConsumer => "Slow Consumer",
            Close::HeartbeatTimeout => "Heartbeat Timeout",
            Close::Replaced => "Replaced",
            Close::Full => "Too Many Connections",
            Close::RateLimit => "Rate Limited",
            Close::MessageTooBig => "Message Too Big",
            Close::Internal => "Internal Error",
        }
    }
}
