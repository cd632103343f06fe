//! Socket and HTTP addresses of PROTOCOL §1, built from a base URL, a room and the query
//! parameters. Pure string work: no IO. The id rule itself is ot-core's
//! [`ot_core::protocol::valid_id`].

use std::fmt::Write as _;

use ot_core::protocol::valid_id;

/// Which of the two socket paths of PROTOCOL §1 a client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UrlForm {
    /// `/parties/main/{room}`: the path PartySocket builds.
    #[default]
    Parties,
    /// `/ws/{room}`: the short path.
    Ws,
}

/// Why a base URL or a room id cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EndpointError {
    /// No server URL was given (an empty list).
    #[error("no server URL given")]
    NoUrl,
    /// The base URL has no `ws://`, `wss://`, `http://` or `https://` scheme.
    #[error("base URL `{url}` must start with ws://, wss://, http:// or https://")]
    BadScheme {
        /// The URL given.
        url: String,
    },
    /// The base URL has no host.
    #[error("base URL `{url}` has no host")]
    NoHost {
        /// The URL given.
        url: String,
    },
    /// A room id outside `[A-Za-z0-9_-]{1,128}`, or a connection id (`_pk`) outside
    /// `[A-Za-z0-9_-]{1,64}`.
    #[error("id `{id}` must be 1-{max} characters of [A-Za-z0-9_-]")]
    BadId {
        /// The id given.
        id: String,
        /// Its longest allowed length ([`ot_core::protocol::ROOM_ID_MAX`] or
        /// [`ot_core::protocol::CONNECTION_ID_MAX`]).
        max: usize,
    },
}

/// A server address: scheme security, `host:port`, and an optional path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    secure: bool,
    host: String,
    prefix: String,
}

impl BaseUrl {
    /// Parses `ws://host:port`, `http://host:port/prefix` and the like. The scheme only says
    /// whether TLS is used; sockets use `ws(s)`, HTTP uses `http(s)`.
    pub fn parse(url: &str) -> Result<BaseUrl, EndpointError> {
        let (secure, rest) = if let Some(r) = url.strip_prefix("ws://").or_else(|| url.strip_prefix("http://")) {
            (false, r)
        } else if let Some(r) = url.strip_prefix("wss://").or_else(|| url.strip_prefix("https://")) {
            (true, r)
        } else {
            return Err(EndpointError::BadScheme { url: url.to_string() });
        };
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(EndpointError::NoHost { url: url.to_string() });
        }
        Ok(BaseUrl { secure, host: host.to_string(), prefix: prefix.to_string() })
    }

    /// `host:port` as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the scheme asks for TLS.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The socket URL of `room` with `token`, `_pk` and, when given, `since`.
    pub fn socket(&self, form: UrlForm, room: &str, token: &str, pk: &str, since: Option<u64>) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        let path = match form {
            UrlForm::Parties => "/parties/main/",
            UrlForm::Ws => "/ws/",
        };
        let mut url = format!("{scheme}://{}{}{path}{room}?token={}&_pk={pk}", self.host, self.prefix, encode(token));
        if let Some(v) = since {
            let _ = write!(url, "&since={v}"); // writing to a String cannot fail
        }
        url
    }

    /// The HTTP path (with prefix) for `path`, e.g. `/api/projects/r1/state`.
    pub fn http_path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
}

/// Checks a room id or connection id against `[A-Za-z0-9_-]{1,max}` ([`valid_id`]), as a
/// typed error.
pub fn check_id(id: &str, max: usize) -> Result<(), EndpointError> {
    if valid_id(id, max) {
        Ok(())
    } else {
        Err(EndpointError::BadId { id: id.to_string(), max })
    }
}

/// Percent-encodes a query value (JWTs are URL-safe already; this guards anything else).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}"); // writing to a String cannot fail
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_since() {
        let b = BaseUrl::parse("ws://127.0.0.1:1999").unwrap();
        assert_eq!(
            b.socket(UrlForm::Parties, "r1", "a.b", "pk", None),
            "ws://127.0.0.1:1999/parties/main/r1?token=a.b&_pk=pk"
        );
        assert_eq!(b.socket(UrlForm::Ws, "r1", "t", "pk", Some(7)), "ws://127.0.0.1:1999/ws/r1?token=t&_pk=pk&since=7");
        let h = BaseUrl::parse("https://example.test/x/").unwrap();
        assert!(h.secure());
        assert_eq!(h.http_path("/healthz"), "/x/healthz");
        assert_eq!(h.socket(UrlForm::Ws, "r", "a b", "p", None), "wss://example.test/x/ws/r?token=a%20b&_pk=p");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(BaseUrl::parse("127.0.0.1:1"), Err(EndpointError::BadScheme { .. })));
        assert!(matches!(BaseUrl::parse("ws:///x"), Err(EndpointError::NoHost { .. })));
        use ot_core::protocol::{CONNECTION_ID_MAX, ROOM_ID_MAX};
        assert!(check_id("room_1-a", ROOM_ID_MAX).is_ok());
        assert!(check_id("", ROOM_ID_MAX).is_err());
        assert!(check_id("a/b", ROOM_ID_MAX).is_err());
        assert_eq!(
            check_id(&"a".repeat(65), CONNECTION_ID_MAX),
            Err(EndpointError::BadId { id: "a".repeat(65), max: 64 })
        );
    }
}
