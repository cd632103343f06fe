//! Helpers shared by the client's tests: a scripted server's socket (accept, read, send), and
//! tokens and a config for the real server.
#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use client_sim::sim::Tokens;
use client_sim::{BackoffConfig, ClientConfig};
use futures_util::{SinkExt, StreamExt};
use ot_core::Op;
use sequencer::auth::{app_token, room_token, Role};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The server's side of a scripted socket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long a scripted step may take.
pub const T: Duration = Duration::from_secs(5);

/// Accepts one socket; returns it with the request URI.
pub async fn accept(l: &TcpListener) -> (Ws, String) {
    let (tcp, _) = tokio::time::timeout(T, l.accept()).await.expect("client connects in time").expect("accept");
    let mut uri = String::new();
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    let cb = |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, cb).await.expect("handshake");
    (ws, uri)
}

/// The client's next message that is not a ping or a cursor.
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(T, ws.next()).await.expect("frame in time").expect("open").expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).expect("client sends JSON");
            if v["type"] != "ping" && v["type"] != "cursor" {
                return v;
            }
        }
    }
}

/// Sends one JSON frame to the client.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Tokens signed with a test's secret: editors in rooms, a viewer for the verdict's reads.
pub struct Tok(pub &'static str);

impl Tokens for Tok {
    fn room_token(&self, room: &str, sub: &str) -> String {
        room_token(self.0, room, sub, sub, Role::Editor, 3600).unwrap()
    }
    fn app_token(&self) -> String {
        app_token(self.0, "verdict", "verdict", None, Role::Viewer, 3600).unwrap()
    }
}

/// The in-memory server with `secret` and no rate limit.
pub fn memory_config(secret: &str) -> sequencer::Config {
    let mut c = sequencer::Config::memory(secret);
    c.rate_limit = 0;
    c
}

/// A client of room `room1` as `pk1` (token `tok`) on `urls`, with a short backoff, seed `seed`
/// and op ids `pk1:{n}`, so a scripted server can expect exact frames.
pub fn scripted_config(urls: Vec<String>, seed: u64) -> ClientConfig {
    let mut c = ClientConfig::with_urls(urls, "room1", "tok", "pk1");
    c.backoff = BackoffConfig { base: Duration::from_millis(10), max: Duration::from_millis(50) };
    c.seed = seed;
    c.op_id_prefix = Some("pk1".into());
    c
}

/// One new track `id` at the top.
pub fn track(id: &str) -> Vec<Op> {
    Op::batch_from_value(json!({"type":"insert","target":"track","id":id,"index":0,"value":{"name":id,"clips":[]}}))
        .unwrap()
}
