//! Test helpers: a raw WebSocket client and a tiny HTTP/1.1 client, both on real sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod room;

pub const SECRET: &str = "test-secret";
pub const WAIT: Duration = Duration::from_secs(5);

pub fn token(room: &str, sub: &str) -> String {
    sequencer::auth::room_token(SECRET, room, sub, sub, sequencer::auth::Role::Editor, 600).unwrap()
}

pub fn viewer_token(room: &str, sub: &str) -> String {
    sequencer::auth::room_token(SECRET, room, sub, sub, sequencer::auth::Role::Viewer, 600).unwrap()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

pub fn url(addr: SocketAddr, room: &str, token: Option<&str>, pk: Option<&str>, since: Option<u64>) -> String {
    let mut q = Vec::new();
    if let Some(t) = token {
        q.push(format!("token={t}"));
    }
    if let Some(p) = pk {
        q.push(format!("_pk={p}"));
    }
    if let Some(s) = since {
        q.push(format!("since={s}"));
    }
    format!("ws://{addr}/parties/main/{room}?{}", q.join("&"))
}

impl Client {
    pub async fn raw(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
        Client { ws }
    }

    /// Connects with connection id (and account id) `pk` and returns the client with its `init`.
    pub async fn join(addr: SocketAddr, room: &str, pk: &str) -> (Client, Value) {
        Self::join_with(addr, room, &token(room, pk), pk, None).await
    }

    pub async fn join_with(addr: SocketAddr, room: &str, tok: &str, pk: &str, since: Option<u64>) -> (Client, Value) {
        let mut c = Client::raw(&url(addr, room, Some(tok), Some(pk), since)).await;
        let init = c.recv().await;
        assert_eq!(init["type"], "init", "{init}");
        (c, init)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: String) {
        self.ws.send(Message::Text(t.into())).await.unwrap();
    }

    /// The next JSON message (pings are answered by the library while reading).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out waiting for a message");
            match m {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next message of type `ty`, skipping presence, cursors, transport and pongs.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == ty {
                return m;
            }
            let skippable = ["cursor", "user_joined", "user_left", "transport", "pong", "operation"];
            assert!(skippable.contains(&m["type"].as_str().unwrap_or("")), "expected {ty}, got {m}");
        }
    }

    /// Every text message that arrives within `d`.
    pub async fn drain_for(&mut self, d: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(d, async {
            while let Some(Ok(m)) = self.ws.next().await {
                if let Message::Text(t) = m {
                    got.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
                }
            }
        })
        .await;
        got
    }

    /// Waits for the close frame, returning its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out waiting for close") {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    pub async fn op(&mut self, op: Value, base: Option<u64>, op_id: &str) {
        let mut m = json!({"type": "operation", "operation": op, "opId": op_id});
        if let Some(b) = base {
            m["baseVersion"] = json!(b);
        }
        self.send(m).await;
    }

    /// Sends an op and waits for its ack (the `operation` with its opId), returning it.
    pub async fn op_acked(&mut self, op: Value, base: Option<u64>, op_id: &str) -> Value {
        self.op(op, base, op_id).await;
        loop {
            let ack = self.recv_type("operation").await;
            if ack["opId"] == op_id {
                return ack;
            }
        }
    }

    pub async fn error(&mut self) -> Value {
        self.recv_type("error").await
    }
}

pub fn track(id: &str, index: usize) -> Value {
    json!({"type":"insert","target":"track","id":id,"index":index,"value":{"name":id,"clips":[]}})
}

/// A minimal HTTP/1.1 request; returns status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub async fn http_json(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> Value {
    let (status, body) = http(addr, method, path, bearer).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub fn app(sub: &str) -> String {
    sequencer::auth::app_token(SECRET, sub, sub, None, sequencer::auth::Role::Editor, 600).unwrap()
}

pub fn memory() -> sequencer::Config {
    sequencer::Config::memory(SECRET)
}
