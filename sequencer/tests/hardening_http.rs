//! The HTTP side's hardening (PROTOCOL §1, §2, §3.3): each test reproduces one attack, bounded
//! in count and time, against an in-process server on 127.0.0.1 port 0, and checks that the
//! server stays up and answers as documented.
//!
//! - slowloris: partial request lines and headers, silent and dripping sockets, idle keep-alives
//!   are closed after `header_timeout`; unauthenticated connections are capped by `max_pending`;
//!   oversized request heads are refused at once;
//! - `GET …/ops` pages at `max_reply_bytes`, and `from` past the head is empty;
//! - tokens: `join` never outlives its token, `nbf` is honoured, an absurd `exp` is refused;
//! - `join` never echoes a forged `Host`; the Bearer scheme is case-insensitive.

mod common;

use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use common::*;
use sequencer::auth::{self, Claims, Role};
use sequencer::{start, Config};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The header timeout of the slowloris tests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// What a loaded test machine may add to a deadline.
const SLACK: Duration = Duration::from_secs(3);

fn config(header_timeout: Duration) -> Config {
    Config { header_timeout, ..memory() }
}

/// Reads until the server closes the connection (EOF or reset) or `limit` passes; returns the
/// bytes read and whether it closed.
async fn read_until_closed(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Sends `request` as is on a new connection; returns the status and body of the response, or
/// `None` when none came within `limit`.
async fn raw_http(addr: SocketAddr, request: &str, limit: Duration) -> Option<(u16, String)> {
    let work = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(limit, work).await.ok().flatten()
}

/// `GET /healthz` within `limit`.
async fn healthz(addr: SocketAddr, limit: Duration) -> bool {
    let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    raw_http(addr, req, limit).await == Some((200, "ok".to_string()))
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics per thread (then reports them as usual). A `current_thread` test runs the
/// server's tasks on its own thread, so its count covers every task of its server.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

/// Warnings and errors logged on this thread while the guard lives.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_after_the_header_timeout() {
    let server = start(config(HEADER_TIMEOUT)).await.unwrap();
    let addr = server.addr;
    let deadline = HEADER_TIMEOUT + SLACK;
    let mut attackers = JoinSet::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let partial: &[u8] = match i % 3 {
            0 => b"",
            1 => b"GET /heal",
            _ => b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a",
        };
        s.write_all(partial).await.unwrap();
        attackers.spawn(async move {
            let (_, closed) = read_until_closed(&mut s, deadline + SLACK).await;
            (closed, started.elapsed())
        });
    }
    // A socket that drips its headers one byte every 100 ms: the timeout covers the whole head,
    // not each read.
    let mut drip = TcpStream::connect(addr).await.unwrap();
    let drip_started = Instant::now();
    let dripping = tokio::spawn(async move {
        for b in
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
        {
            if drip.write_all(&[*b]).await.is_err() {
                return drip_started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read_until_closed(&mut drip, deadline).await;
        drip_started.elapsed()
    });
    // An idle keep-alive connection after one answered request.
    let mut keep = TcpStream::connect(addr).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(SLACK, keep.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let idle_from = Instant::now();

    // Meanwhile /healthz keeps answering.
    let mut answered = 0;
    while !attackers.is_empty() && idle_from.elapsed() < deadline + SLACK {
        assert!(healthz(addr, SLACK).await, "/healthz stopped answering under slowloris");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Some(r) = attackers.try_join_next() {
            let (closed, after) = r.unwrap();
            assert!(closed && after <= deadline, "a slow socket stayed open {after:?} (closed: {closed})");
        }
    }
    assert!(attackers.is_empty(), "{} slow sockets still open", attackers.len());
    assert!(answered >= 5, "{answered}");
    let (rest, closed) = read_until_closed(&mut keep, deadline).await;
    assert!(closed, "the idle keep-alive connection stayed open");
    assert!(idle_from.elapsed() <= deadline, "{:?}", idle_from.elapsed());
    assert!(rest.ends_with(b"ok"), "{}", String::from_utf8_lossy(&rest));
    let dripped = tokio::time::timeout(deadline + SLACK, dripping).await.unwrap().unwrap();
    assert!(dripped <= deadline, "the dripping socket lasted {dripped:?}");
    assert!(healthz(addr, SLACK).await);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn pending_connections_are_capped_and_freed_by_the_header_timeout() {
    count_panics();
    let logs = Logs::default();
    let _capture = logs.capture();
    let server = start(Config { max_pending: 20, ..config(HEADER_TIMEOUT) }).await.unwrap();
    let addr = server.addr;
    // 40 idle connections: 20 take every permit, 20 wait in the backlog.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let asked = Instant::now();
    assert!(healthz(addr, 2 * HEADER_TIMEOUT + 2 * SLACK).await, "/healthz never answered");
    let waited = asked.elapsed();
    // It had to wait for the header timeout to free permits: the cap is real...
    assert!(waited >= HEADER_TIMEOUT / 2, "answered after {waited:?}: max_pending did not hold");
    // ...and bounded: two rounds of idle connections, then it.
    assert!(waited <= 2 * HEADER_TIMEOUT + SLACK, "{waited:?}");
    // Every idle connection was closed by the server.
    for mut s in idle {
        assert!(read_until_closed(&mut s, HEADER_TIMEOUT + SLACK).await.1);
    }
    assert!(healthz(addr, SLACK).await);
    server.shutdown().await.unwrap();
    assert_eq!(PANICS.with(Cell::get), 0, "the server panicked");
    assert_eq!(logs.text(), "", "the server logged warnings or errors");
}

#[tokio::test]
async fn upgraded_sockets_release_their_pending_permit() {
    // A header timeout far beyond the test: only the upgrade can free the permits.
    let server = start(Config { max_pending: 5, ..config(Duration::from_secs(60)) }).await.unwrap();
    let addr = server.addr;
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(Client::join(addr, "r", &format!("u{i}")).await.0);
    }
    let asked = Instant::now();
    assert!(healthz(addr, SLACK).await, "upgraded sockets kept their pending permits");
    assert!(asked.elapsed() < SLACK);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_promptly() {
    // With hyper's default ~400 KB read buffer these would wait for the header timeout.
    let server = start(config(Duration::from_secs(60))).await.unwrap();
    let addr = server.addr;
    let started = Instant::now();
    let mut conns = JoinSet::new();
    for _ in 0..50 {
        let s = TcpStream::connect(addr).await.unwrap();
        conns.spawn(async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
                head.resize(400 * 1024, b'a');
                // The server stops reading and closes; the write then fails, as it should.
                let _ = w.write_all(&head).await;
                w
            });
            let (got, closed) = read_until_closed(&mut r, SLACK).await;
            writer.abort();
            (got, closed)
        });
    }
    let mut refused_431 = 0;
    while let Some(r) = conns.join_next().await {
        let (got, closed) = r.unwrap();
        assert!(closed, "an oversized head was still being read after {SLACK:?}");
        // The 431 is lost when the close resets the connection before the client reads it.
        if !got.is_empty() {
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 431"), "{text}");
            refused_431 += 1;
        }
    }
    assert!(started.elapsed() < 2 * SLACK, "{:?}", started.elapsed());
    eprintln!("{refused_431} of 50 saw the 431 before the close");
    assert!(healthz(addr, SLACK).await);
    server.shutdown().await.unwrap();
}

/// Pages through `GET …/ops` from 0; returns every op's version and the number of pages.
async fn page_all(addr: SocketAddr, project: &str, tok: &str, max_bytes: usize, head: u64) -> (Vec<u64>, usize) {
    let (mut from, mut seen, mut pages) = (0u64, Vec::new(), 0);
    loop {
        let (status, body) = http(addr, "GET", &format!("/api/projects/{project}/ops?from={from}"), Some(tok)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.len() <= max_bytes, "a page of {} bytes", body.len());
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["version"], head);
        let ops = page["ops"].as_array().unwrap();
        assert!(!ops.is_empty(), "an empty page before the head");
        seen.extend(ops.iter().map(|o| o["version"].as_u64().unwrap()));
        from = *seen.last().unwrap();
        pages += 1;
        assert!(pages <= head as usize, "paging does not progress");
        if page["more"] != true {
            return (seen, pages);
        }
    }
}

#[tokio::test]
async fn ops_replies_page_at_the_byte_limit_and_from_past_the_head_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 64 * 1024;
    for cfg in [memory(), Config::sqlite(SECRET, dir.path().to_path_buf())] {
        let server = start(Config { max_reply_bytes: max_bytes, ..cfg }).await.unwrap();
        let addr = server.addr;
        let (mut a, _) = Client::join(addr, "p", "a").await;
        let name = "n".repeat(8 * 1024);
        for v in 0..40u64 {
            let op = json!({"type":"insert","target":"track","id":format!("t{v}"),"index":0,
                            "value":{"name":name,"clips":[]}});
            a.op_acked(op, Some(v), &format!("a:{v}")).await;
        }
        let tok = app("reader");
        let (seen, pages) = page_all(addr, "p", &tok, max_bytes, 40).await;
        assert_eq!(seen, (1..=40).collect::<Vec<_>>());
        assert!(pages >= 5, "{pages} pages for ~320 KB at 64 KiB each");
        // `limit` still bounds the count, and a page cut by it says `more`.
        let two = http_json(addr, "GET", "/api/projects/p/ops?from=0&limit=2", Some(&tok)).await;
        assert_eq!((two["ops"].as_array().unwrap().len(), &two["more"]), (2, &json!(true)));
        // `from` past the head, including past i64::MAX (the SQLite store's integers).
        for from in [u64::MAX, 1 << 63, 41] {
            let page = http_json(addr, "GET", &format!("/api/projects/p/ops?from={from}"), Some(&tok)).await;
            assert_eq!(page, json!({"ops": [], "version": 40, "more": false}), "from={from}");
        }
        drop(a);
        server.shutdown().await.unwrap();
    }
}

/// A token with `claims` as given (any JSON), signed with the test secret.
fn signed(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn join_never_mints_a_token_that_outlives_the_given_one() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let now = auth::now_secs();
    let short =
        auth::sign(SECRET, &Claims::user("u", "U", Role::Editor, now, 30).unwrap().into_room("p", now, 30)).unwrap();
    let given = auth::verify(SECRET, &short).unwrap().exp;
    let joined = http_json(addr, "POST", "/api/projects/p/join", Some(&short)).await;
    let minted = auth::verify(SECRET, joined["token"].as_str().unwrap()).unwrap();
    assert!(minted.exp <= given, "minted exp {} > given exp {given}", minted.exp);
    assert_eq!(minted.room.as_deref(), Some("p"));
    // A long-lived app token gets the configured room-token lifetime.
    let long = auth::app_token(SECRET, "u", "U", None, Role::Editor, 30 * 24 * 3600).unwrap();
    let joined = http_json(addr, "POST", "/api/projects/p/join", Some(&long)).await;
    let minted = auth::verify(SECRET, joined["token"].as_str().unwrap()).unwrap();
    let ttl = memory().room_token_ttl;
    assert!(minted.exp <= auth::now_secs() + ttl && minted.exp + 5 >= now + ttl, "{}", minted.exp);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn future_nbf_and_absurd_exp_are_refused() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let now = auth::now_secs();
    let base = json!({"sub": "u", "name": "U", "exp": now + 600, "room": "r"});
    let with = |extra: Value| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        signed(c)
    };
    // The same claims without the offending one are fine.
    assert_eq!(http(addr, "POST", "/api/projects/r/join", Some(&with(json!({"nbf": now})))).await.0, 200);
    let (mut ok, _) = Client::join_with(addr, "r", &with(json!({})), "ok", None).await;
    for bad in [
        with(json!({"nbf": now + 60})),
        with(json!({"nbf": "tomorrow"})),
        with(json!({"exp": 1u64 << 62})),
        with(json!({"exp": now + 11 * 365 * 24 * 3600})),
    ] {
        let (status, body) = http(addr, "POST", "/api/projects/r/join", Some(&bad)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(http(addr, "GET", "/api/projects/r/state", Some(&bad)).await.0, 401);
        let mut c = Client::raw(&url(addr, "r", Some(&bad), Some("x"), None)).await;
        assert_eq!(c.closed().await, (4001, "Unauthorized".to_string()));
    }
    ok.send(json!({"type": "ping"})).await;
    assert_eq!(ok.recv_type("pong").await["type"], "pong");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn join_never_echoes_a_forged_host() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let tok = app("u");
    let auth = format!("Bearer {tok}");
    let join_host = |host: &str| {
        let req = request("POST", "/api/projects/p/join", &[("Host", host), ("Authorization", &auth)]);
        async move {
            let (status, body) = raw_http(addr, &req, SLACK).await.expect("no answer");
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["host"], v["partykitHost"]);
            v["host"].as_str().unwrap().to_string()
        }
    };
    for forged in ["evil.example/<script>", "evil.example/x", "a b", "evil.example:99999", "x\"y"] {
        assert_eq!(join_host(forged).await, addr.to_string(), "forged Host {forged:?}");
    }
    // A valid Host is the client's own view of the server (port mappings, proxies).
    assert_eq!(join_host("studio.example.com:8443").await, "studio.example.com:8443");
    assert_eq!(join_host("[::1]:1999").await, "[::1]:1999");
    server.shutdown().await.unwrap();

    let public = "collab.example.com";
    let server = start(Config { public_host: Some(public.into()), ..memory() }).await.unwrap();
    let req = request("POST", "/api/projects/p/join", &[("Host", "evil.example"), ("Authorization", &auth)]);
    let (status, body) = raw_http(server.addr, &req, SLACK).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["host"].as_str(), v["partykitHost"].as_str()), (Some(public), Some(public)));
    server.shutdown().await.unwrap();

    // An invalid public host is a configuration error, not something to hand to clients.
    assert!(start(Config { public_host: Some("a/b".into()), ..memory() }).await.unwrap().shutdown().await.is_err());
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let server = start(memory()).await.unwrap();
    let addr = server.addr;
    let tok = app("u");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {tok}");
        let req = request("GET", "/api/projects/p/state", &[("Host", "x"), ("Authorization", &value)]);
        assert_eq!(raw_http(addr, &req, SLACK).await.map(|r| r.0), Some(200), "{scheme}");
    }
    for value in [format!("Basic {tok}"), format!("Bearer{tok}"), "Bearer ".to_string()] {
        let req = request("GET", "/api/projects/p/state", &[("Host", "x"), ("Authorization", &value)]);
        assert_eq!(raw_http(addr, &req, SLACK).await.map(|r| r.0), Some(401), "{value}");
    }
    server.shutdown().await.unwrap();
}
