//! Every refusal the server gives, and the ONE place that maps it to a wire code
//! ([`Rejection::code`]); the close codes ([`Close`]) are ot-core's
//! [`ot_core::protocol::Close`], re-exported.

use ot_core::protocol::{DecodeError, ErrorCode, LimitError, LockTtlError, MAX_LOCKS_PER_CONNECTION};
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
    /// A `lock` whose `ttl` is not a positive number.
    #[error(transparent)]
    LockTtl(#[from] LockTtlError),
    /// A `lock` of something that is not a track, clip or marker.
    #[error("cannot lock a `{target}`: locks are on tracks, clips and markers")]
    LockTarget {
        /// The target sent (at most 64 characters of it).
        target: String,
    },
    /// A `lock` of an entity that does not exist (or is of another kind).
    #[error("no {target} `{id}` to lock")]
    LockMissing {
        /// `track`, `clip` or `marker`.
        target: &'static str,
        /// The id sent (at most 128 characters of it).
        id: String,
    },
    /// A `lock` of an entity another connection holds.
    #[error("{target} `{id}` is locked by {name} (connection {holder}) until {expires_at}")]
    Locked {
        /// `track`, `clip` or `marker`.
        target: &'static str,
        /// The entity.
        id: String,
        /// The holder's display name.
        name: String,
        /// The holder's connection id.
        holder: String,
        /// When the lock expires, ms since the epoch.
        expires_at: u64,
    },
    /// A connection that holds the most locks it may tried to take another.
    #[error("this connection holds {MAX_LOCKS_PER_CONNECTION} locks already; unlock one first")]
    LockLimit,
}

/// `s` cut to at most `max` characters, for echoing a client's text in a message.
pub fn clip_text(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
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
            Rejection::LockTtl(_) => ErrorCode::BadMessage,
            Rejection::LockTarget { .. } | Rejection::LockMissing { .. } => ErrorCode::InvalidOp,
            Rejection::Locked { .. } => ErrorCode::Locked,
            Rejection::LockLimit => ErrorCode::LockLimit,
        }
    }
}

/// Why the server closes a socket: each a typed WebSocket close code with a fixed reason. The
/// codes, their reasons and what a client does on each live in ot-core's protocol, shared with
/// the clients; this is that type.
pub use ot_core::protocol::Close;
