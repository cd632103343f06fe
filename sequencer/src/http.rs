//! The HTTP side (PROTOCOL §1) on hyper 1: the WebSocket upgrade on `/parties/main/{room}` and
//! `/ws/{room}`, the project API with app tokens, `/healthz` and `/metrics`.
//!
//! Every response carries `Access-Control-Allow-Origin: *` (the studio app calls the API from
//! its own origin with a Bearer token, never with cookies), and `OPTIONS` answers preflights.
//!
//! # Limits (PROTOCOL §3.3)
//!
//! - A connection holds one of `max_pending` permits, taken in the accept loop, from before it
//!   is accepted until it ends or becomes a WebSocket.
//! - A request must complete its head within `header_timeout`; the same clock runs from the end
//!   of each response, so an idle keep-alive connection is closed after it (hyper restarts its
//!   header-read timer whenever it waits for a new request head). No response is sent; the
//!   connection is closed.
//! - A request head over [`MAX_HEAD_BYTES`] is answered 431 and the connection closed.
//! - `GET …/ops` pages at `max_reply_bytes` of JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ot_core::protocol::{valid_id, ROOM_ID_MAX};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument};

use crate::auth::{now_secs, sign, verify, Claims};
use crate::conn::{self, SocketQuery};
use crate::room::{ask, RoomMsg};
use crate::store::{Store, StoreError};
use crate::Shared;

/// An HTTP response with its whole body.
pub type Resp = Response<Full<Bytes>>;

/// The most bytes hyper buffers for one connection's reads, so the largest request line plus
/// headers taken (larger: 431 and the connection is closed). hyper's own default is ~400 KB,
/// which lets a few hundred slow connections hold hundreds of MB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves one TCP connection (HTTP/1.1 with upgrades) until it ends, upgrades, or shutdown.
///
/// `pending` is the connection's `max_pending` permit. It is dropped when this function returns:
/// hyper's connection future completes at the moment it hands the socket over to a WebSocket
/// upgrade, so an upgraded socket stops counting here and is counted by `max_connections` in
/// [`conn::serve`] instead.
pub async fn serve_tcp(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, pending: OwnedSemaphorePermit) {
    let _pending = pending;
    let _done = shared.done.clone();
    let mut shutdown = shared.shutdown.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let s = svc_shared.clone();
        async move { Ok::<_, Infallible>(route(s, req).await) }
    });
    let mut builder = http1::Builder::new();
    // Zero turns the timeout off (hyper's own default would otherwise be 30 s).
    let header_timeout = Some(shared.config.header_timeout).filter(|t| !t.is_zero());
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended with an error during shutdown");
            }
        }
    }
}

/// A response with a body, its content type, and CORS open to every origin.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json_resp(status, &json!({ "error": msg }))
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is matched in any
/// case (RFC 7235 §2.1), separated from the token by spaces or tabs.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim_start_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The claims of the Bearer token, or the response to give.
fn bearer(shared: &Shared, req: &Request<Incoming>, project: &str) -> Result<Claims, Box<Resp>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    let claims = verify(&shared.config.secret, token).map_err(|e| error(StatusCode::UNAUTHORIZED, &e.to_string()))?;
    if !claims.may_access(project) {
        return Err(Box::new(error(StatusCode::FORBIDDEN, "project not allowed for this token")));
    }
    Ok(claims)
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if req.method() == Method::OPTIONS {
        let mut r = respond(StatusCode::NO_CONTENT, "text/plain", "");
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        return r;
    }
    match (req.method(), segs.as_slice()) {
        (&Method::GET, ["healthz"]) => respond(StatusCode::OK, "text/plain", "ok"),
        (&Method::GET, ["metrics"]) => respond(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render()),
        (&Method::GET, ["parties", "main", room]) | (&Method::GET, ["ws", room]) => {
            let room = percent_decode(room);
            upgrade(shared, req, room)
        }
        (&Method::POST, ["api", "projects", id, "join"]) => {
            with_project(&shared, &req, id, |claims, id| join(&shared, &req, claims, id))
        }
        (&Method::GET, ["api", "projects", id, what @ ("state" | "ops" | "collaborators")]) => {
            if let Err(r) = validate(&shared, &req, id) {
                return *r;
            }
            let id = id.to_string();
            let span = tracing::info_span!("http", project = %id, what = *what);
            match *what {
                "state" => state(&shared, &id).instrument(span).await,
                "collaborators" => collaborators(&shared, &id).instrument(span).await,
                _ => ops(&shared, &id, req.uri().query()).instrument(span).await,
            }
        }
        (&Method::GET, [name]) => {
            let gzip = req
                .headers()
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
            match crate::web::serve(shared.config.web_dir.as_deref(), name, gzip).await {
                Some(r) => r,
                None => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn validate(shared: &Shared, req: &Request<Incoming>, id: &str) -> Result<Claims, Box<Resp>> {
    if !valid_id(id, ROOM_ID_MAX) {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "project ids are 1-128 chars of [A-Za-z0-9_-]")));
    }
    bearer(shared, req, id)
}

fn with_project(shared: &Shared, req: &Request<Incoming>, id: &str, f: impl FnOnce(Claims, &str) -> Resp) -> Resp {
    match validate(shared, req, id) {
        Ok(c) => f(c, id),
        Err(r) => *r,
    }
}

fn join(shared: &Shared, req: &Request<Incoming>, claims: Claims, id: &str) -> Resp {
    let room_claims = claims.into_room(id, now_secs(), shared.config.room_token_ttl);
    let token = match sign(&shared.config.secret, &room_claims) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let host = public_host(shared, req.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
    json_resp(StatusCode::OK, &json!({ "token": token, "partykitHost": host, "host": host, "roomId": id }))
}

/// The host clients should connect to: `--public-host` when set, else the request's `Host`
/// header when it is a valid host\[:port\] (it is the client's own view of the server, which
/// works behind a port mapping), else the address the server listens on. A forged `Host` is
/// never echoed.
fn public_host(shared: &Shared, host_header: Option<&str>) -> String {
    match (&shared.config.public_host, host_header) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) if valid_host(h) => h.to_string(),
        (None, _) => shared.addr.to_string(),
    }
}

/// Longest host\[:port\] taken from a `Host` header or `--public-host` (a DNS name is at most
/// 253 characters; a bracketed IPv6 address and a port fit as well).
const MAX_HOST: usize = 261;

/// Whether `s` is a syntactically valid `host[:port]`: a DNS name or IPv4 address
/// (`[A-Za-z0-9.-]`, labels not starting or ending with `-`), or a bracketed IPv6 address
/// (`[` hex digits, `:` and `.` `]`), optionally followed by `:` and a port 0–65535.
pub fn valid_host(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_HOST {
        return false;
    }
    let (host_ok, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        let ipv6 = ip.contains(':') && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (ipv6, port)
    } else {
        match s.split_once(':') {
            Some((name, port)) => (valid_dns_name(name), Some(port)),
            None => (valid_dns_name(s), None),
        }
    };
    host_ok
        && port.map_or(true, |p| {
            (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        })
}

/// Dot-separated labels of 1–63 `[A-Za-z0-9-]`, none starting or ending with `-` (an IPv4
/// address is such a name too).
fn valid_dns_name(s: &str) -> bool {
    s.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

async fn state(shared: &Arc<Shared>, id: &str) -> Resp {
    match ask(shared, id, RoomMsg::State).await {
        Some(v) => json_resp(StatusCode::OK, &v),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "room unavailable"),
    }
}

async fn collaborators(shared: &Arc<Shared>, id: &str) -> Resp {
    match ask(shared, id, RoomMsg::Collaborators).await {
        Some(list) => json_resp(StatusCode::OK, &json!({ "collaborators": list })),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "room unavailable"),
    }
}

/// Most ops one `GET …/ops` returns (the default and the maximum of `limit`).
const OPS_PAGE: usize = 10_000;

/// Ops read from the store at a time while a `GET …/ops` page is built.
const OPS_CHUNK: usize = 256;

/// `GET /api/projects/{id}/ops?from=V&limit=N`: `{"ops": [...], "version": head, "more": bool}`,
/// the ops after `V` in order. A page stops before `limit` ops (default and maximum
/// [`OPS_PAGE`]) or before its body would pass `max_reply_bytes`, whichever comes first, but
/// holds at least one op when there is one; `more` is then true and the client pages on with
/// `from` = the last op's `version`. `from` at or past the head gives no ops.
async fn ops(shared: &Arc<Shared>, id: &str, query: Option<&str>) -> Resp {
    let from = match query_param(query, "from").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "`from` must be a version number"),
    };
    let limit = match query_param(query, "limit").map(|v| v.parse::<usize>()) {
        None => OPS_PAGE,
        // At least one, so that paging on with `more` always progresses.
        Some(Ok(v)) => v.clamp(1, OPS_PAGE),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "`limit` must be a number"),
    };
    let Some(head) = ask(shared, id, RoomMsg::Head).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "room unavailable");
    };
    // The stores take versions as SQL integers: never pass them anything past the head.
    let from = from.min(head);
    let store = shared.persister.store.clone();
    let room = id.to_string();
    let max_bytes = shared.config.max_reply_bytes;
    let read = move || ops_page(&*store, &room, from, head, limit, max_bytes);
    let result = if shared.persister.store.blocking() {
        match tokio::task::spawn_blocking(read).await {
            Ok(r) => r,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    } else {
        read()
    };
    match result {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Why a `GET …/ops` page could not be built.
#[derive(Debug, thiserror::Error)]
enum PageError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An op did not serialize.
    #[error("encoding an op: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The JSON body of one `GET …/ops` page: ops `from+1 ..= head` read [`OPS_CHUNK`] at a time,
/// stopping before `limit` ops or before the body would pass `max_bytes` (but never empty when
/// there is an op to send, so paging progresses); `"more": true` when it stopped for a limit.
fn ops_page(
    store: &dyn Store,
    room: &str,
    from: u64,
    head: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<u8>, PageError> {
    // `"more":false` is the longer ending, so the budget holds whichever is written.
    let tail = |more: bool| format!("],\"version\":{head},\"more\":{more}}}");
    let mut body = b"{\"ops\":[".to_vec();
    let budget = max_bytes.saturating_sub(tail(false).len());
    let mut op = Vec::new();
    let (mut count, mut next, mut more) = (0usize, from, false);
    'read: while next < head && count < limit {
        let chunk = store.ops(room, next, head, OPS_CHUNK.min(limit - count))?;
        let Some(last) = chunk.last() else {
            // The store has nothing up to the head: nothing more to page on to.
            break;
        };
        let chunk_end = last.version;
        for m in &chunk {
            op.clear();
            serde_json::to_writer(&mut op, &**m)?;
            let comma = usize::from(count > 0);
            if count > 0 && body.len() + comma + op.len() > budget {
                more = true;
                break 'read;
            }
            if comma == 1 {
                body.push(b',');
            }
            body.extend_from_slice(&op);
            count += 1;
        }
        next = chunk_end;
    }
    if !more && count == limit && next < head {
        more = true;
    }
    body.extend_from_slice(tail(more).as_bytes());
    Ok(body)
}

/// A socket's initial read buffer (see [`upgrade`]).
const READ_BUFFER: usize = 2 * 1024;
/// What a socket buffers before it writes to the kernel within one burst (see [`upgrade`]).
const WRITE_BUFFER: usize = 4 * 1024;

fn upgrade(shared: Arc<Shared>, mut req: Request<Incoming>, room: String) -> Resp {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let (true, Some(accept)) = (is_ws, key) else {
        if !valid_id(&room, ROOM_ID_MAX) {
            return error(StatusCode::BAD_REQUEST, "room ids are 1-128 chars of [A-Za-z0-9_-]");
        }
        return error(StatusCode::UPGRADE_REQUIRED, "this is a WebSocket endpoint");
    };
    let q = req.uri().query();
    let query = SocketQuery {
        token: query_param(q, "token"),
        pk: query_param(q, "_pk"),
        since: query_param(q, "since").and_then(|v| v.parse().ok()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let cfg = &shared.config;
    // Small socket buffers: an idle connection keeps both for its whole life (the read buffer
    // is allocated and zeroed up front; the write buffer keeps the capacity of its largest
    // burst), and edits are a few hundred bytes. Both grow for a larger frame.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(cfg.max_frame.saturating_mul(4).max(64 * 1024)))
        .max_frame_size(Some(cfg.max_frame.saturating_mul(4).max(64 * 1024)));
    let done = shared.done.clone();
    tokio::spawn(async move {
        let _done = done;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(ws_config)).await;
                conn::serve(shared, Box::new(ws), room, query).await;
            }
            Err(e) => debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        let q = Some("token=a%2Eb&_pk=x-1&since=3&flag");
        assert_eq!(query_param(q, "token").as_deref(), Some("a.b"));
        assert_eq!(query_param(q, "since").as_deref(), Some("3"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "none"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn hosts() {
        for ok in ["localhost", "127.0.0.1:1999", "studio.example.com", "a-b.c:80", "[::1]", "[::1]:443", "[fe80::1]:1"]
        {
            assert!(valid_host(ok), "{ok}");
        }
        let long = "a".repeat(300);
        for bad in [
            "",
            "evil.example/<script>",
            "evil.example/",
            "a b",
            "host:",
            "host:99999",
            "host:+80",
            "host:1:2",
            "-a.com",
            "a..b",
            "[::1",
            "[::1]x",
            "[zz]",
            "[]",
            "a@b",
            "a_b",
            long.as_str(),
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("bEaReR \t abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer  "), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    fn stored(n: u64, name_bytes: usize) -> crate::store::MemoryStore {
        use crate::store::{Entry, RoomAppend};
        let store = crate::store::MemoryStore::new();
        let entries = (1..=n)
            .map(|v| Entry {
                msg: Arc::new(ot_core::protocol::OperationMsg {
                    operation: Vec::new(),
                    version: v,
                    user_id: "x".repeat(name_bytes),
                    op_id: None,
                    account: None,
                }),
                snapshot: None,
                by_id: true,
            })
            .collect();
        store.append(&[RoomAppend { room: "r".into(), entries }]).unwrap();
        store
    }

    fn page(store: &dyn Store, from: u64, head: u64, limit: usize, max: usize) -> (Vec<u64>, bool, usize) {
        let body = ops_page(store, "r", from, head, limit, max).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["version"], head);
        let versions = v["ops"].as_array().unwrap().iter().map(|o| o["version"].as_u64().unwrap()).collect();
        (versions, v["more"].as_bool().unwrap(), body.len())
    }

    #[test]
    fn ops_pages_stop_at_the_byte_limit_and_page_on_to_the_head() {
        let store = stored(600, 100);
        let (mut from, mut seen, mut pages) = (0, Vec::new(), 0);
        loop {
            let (versions, more, len) = page(&store, from, 600, OPS_PAGE, 4096);
            assert!(len <= 4096, "{len}");
            assert!(!versions.is_empty());
            from = *versions.last().unwrap();
            seen.extend(versions);
            pages += 1;
            if !more {
                break;
            }
            assert!(pages < 600);
        }
        assert_eq!(seen, (1..=600).collect::<Vec<_>>());
        assert!(pages > 10);
        // One op over the limit still makes a page of one.
        let (versions, more, _) = page(&store, 0, 600, OPS_PAGE, 10);
        assert_eq!((versions, more), (vec![1], true));
        // The count limit, across chunks.
        let (versions, more, _) = page(&store, 0, 600, 300, usize::MAX);
        assert_eq!((versions.len(), more), (300, true));
        let (versions, more, _) = page(&store, 300, 600, 300, usize::MAX);
        assert_eq!((versions.len(), more), (300, false));
        assert_eq!(
            page(&store, 600, 600, OPS_PAGE, 4096),
            (vec![], false, r#"{"ops":[],"version":600,"more":false}"#.len())
        );
    }
}
