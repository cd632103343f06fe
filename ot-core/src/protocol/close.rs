//! The WebSocket close codes the server sends, and what a client does on each.

use std::fmt;

/// Why the server closes a socket: each a WebSocket close code with a fixed reason, and the one
/// place that says what a client does about it ([`Close::action`]).
///
/// | code | reason | when | client ([`CloseAction`]) |
/// |---|---|---|---|
/// | 4001 | Unauthorized | missing, malformed, expired, wrongly signed or wrong-room token (PROTOCOL §2) | stop (the caller may connect again with a fresh token) |
/// | 4400 | Bad Request | room id or `_pk` not `[A-Za-z0-9_-]` (1–128 / 1–64 chars) | stop |
/// | 1001 | Going Away | server shutdown, after acknowledged ops are flushed | retry |
/// | 4000 | Heartbeat Timeout | nothing received for the heartbeat timeout | retry |
/// | 4008 | Slow Consumer | the connection's queue of operations overflowed | retry (with `since`) |
/// | 4009 | Replaced | a newer socket with the same `_pk` took over this presence | stop: two clients sharing a `_pk` must not evict each other forever |
/// | 4029 | Too Many Connections | a connection limit of the account, room or server, or a new room past the cap | retry, with backoff |
/// | 1008 | Rate Limited | kept sending at four times the rate limit for a second | retry |
/// | 1009 | Message Too Big | a frame over the socket layer's hard limit | retry |
/// | 1011 | Internal Error | the room's store failed; reconnect to resync | retry |
///
/// A code not in this table (1000, 1006, a proxy's own) is retried: see [`CloseAction::for_code`].
/// Every retry waits for the client's backoff and rejoins with `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// 4001: missing, malformed, expired, wrongly signed or wrong-room token (PROTOCOL §2).
    Unauthorized,
    /// 4400: the room id or `_pk` is not 1–128 (1–64) chars of `[A-Za-z0-9_-]`.
    BadRequest,
    /// 1001: server shutting down (PROTOCOL §6).
    GoingAway,
    /// 4008: the client's queue of operations overflowed: reconnect with `since`.
    SlowConsumer,
    /// 4000: nothing heard for the heartbeat timeout.
    HeartbeatTimeout,
    /// 4009: a newer connection with the same `_pk` took over.
    Replaced,
    /// 4029: the account, room or server is at its connection limit, or the server at its room cap.
    Full,
    /// 1008: the client kept sending over the rate limit.
    RateLimit,
    /// 1009: a frame over the hard limit the socket layer enforces.
    MessageTooBig,
    /// 1011: the room failed (storage); reconnect and resync.
    Internal,
}

/// What a client does when the server closes its socket (see the table on [`Close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseAction {
    /// Reconnect after the backoff, with `since` (the client keeps its document and pending ops).
    Retry,
    /// Report it and do not reconnect: coming back would fail again, or would take over from
    /// the connection that just took over from this one.
    Stop,
}

impl Close {
    /// Every close code the server sends.
    pub const ALL: [Close; 10] = [
        Close::Unauthorized,
        Close::BadRequest,
        Close::GoingAway,
        Close::SlowConsumer,
        Close::HeartbeatTimeout,
        Close::Replaced,
        Close::Full,
        Close::RateLimit,
        Close::MessageTooBig,
        Close::Internal,
    ];

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

    /// The close reason sent with the code.
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

    /// The close a code stands for, when the server sends that code.
    pub fn from_code(code: u16) -> Option<Close> {
        Close::ALL.into_iter().find(|c| c.code() == code)
    }

    /// What a client does on this close.
    pub fn action(self) -> CloseAction {
        match self {
            Close::Unauthorized | Close::BadRequest | Close::Replaced => CloseAction::Stop,
            Close::GoingAway
            | Close::SlowConsumer
            | Close::HeartbeatTimeout
            | Close::Full
            | Close::RateLimit
            | Close::MessageTooBig
            | Close::Internal => CloseAction::Retry,
        }
    }

    /// What the close means, in words for a person.
    pub fn meaning(self) -> &'static str {
        match self {
            Close::Unauthorized => "the token was missing, invalid, expired or for another room",
            Close::BadRequest => "the room id or connection id is not valid",
            Close::GoingAway => "the server is shutting down",
            Close::SlowConsumer => "the connection fell too far behind",
            Close::HeartbeatTimeout => "the server heard nothing for too long",
            Close::Replaced => "replaced by a newer connection with the same connection id (`_pk`)",
            Close::Full => "too many connections",
            Close::RateLimit => "too many messages per second",
            Close::MessageTooBig => "a message over the server's hard size limit",
            Close::Internal => "the server's storage failed",
        }
    }
}

impl CloseAction {
    /// What a client does when the server closes with `code`: the action of [`Close::from_code`],
    /// and [`CloseAction::Retry`] for a code the protocol does not name.
    pub fn for_code(code: u16) -> CloseAction {
        Close::from_code(code).map_or(CloseAction::Retry, Close::action)
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in Close::ALL {
            assert_eq!(Close::from_code(c.code()), Some(c));
            assert_eq!(Close::ALL.iter().filter(|o| o.reason() == c.reason()).count(), 1);
        }
        assert_eq!(Close::from_code(1000), None);
        assert_eq!(Close::from_code(4403), None, "4403 is not sent");
        assert_eq!(Close::Replaced.to_string(), "4009 Replaced");
    }

    #[test]
    fn what_a_client_does_on_each_code() {
        let stop = [4001, 4400, 4009];
        for c in Close::ALL {
            let want = if stop.contains(&c.code()) { CloseAction::Stop } else { CloseAction::Retry };
            assert_eq!(c.action(), want, "{c}");
            assert_eq!(CloseAction::for_code(c.code()), want, "{c}");
        }
        for unknown in [1000, 1005, 1006, 4403, 4999] {
            assert_eq!(CloseAction::for_code(unknown), CloseAction::Retry, "{unknown}");
        }
    }
}
