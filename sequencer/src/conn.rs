//! One WebSocket connection: auth, limits, decoding, then a reader loop (this task) and a
//! writer task that drains the connection's [`Outbox`], sends pings and evicts a silent peer.
//!
//! Per-connection policy: frames over `max_frame` get `too_large`; over `rate_limit` messages
//! per second get `rate_limited` (an `operation` always gets its error with its `opId`; other
//! messages at most one error per second) and a client that keeps going at four times the rate
//! for a second is closed with 1008; nothing heard for `heartbeat_timeout` closes with 4000; a
//! peer that does not take our frames for `heartbeat_timeout` is dropped.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ot_core::protocol::{
    decode_client, decode_operation, lock_ttl_ms, ClientMsg, CursorPos, CONNECTION_ID_MAX, ROOM_ID_MAX,
};
use ot_core::sync::Submit;
use ot_core::Op;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, Instrument};

use crate::auth::{verify_room, Claims};
use crate::error::{Close, Rejection};
use crate::outbox::{Next, Outbox};
use crate::room::core::JoinReq;
use crate::room::{error_frame, ClientIn, Join, RoomMsg};
use crate::Shared;

/// The server side of an upgraded socket.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What the socket URL carried.
#[derive(Debug, Clone, Default)]
pub struct SocketQuery {
    /// The room token.
    pub token: Option<String>,
    /// The client's connection id.
    pub pk: Option<String>,
    /// `since`, when it parsed as a version.
    pub since: Option<u64>,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Whether `s` is 1–`max` chars of `[A-Za-z0-9_-]` (room, project and connection ids): the
/// rule is ot-core's, shared with the clients.
pub use ot_core::protocol::valid_id;

fn close_msg(c: Close) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(c.code()), reason: c.reason().into() }))
}

/// Sends a close frame and waits briefly for the peer's answer so the frame is not lost to a
/// TCP reset.
async fn close_now(mut ws: Box<Socket>, c: Close) {
    if ws.send(close_msg(c)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            // Drain until the peer closes; errors just end the wait.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// Serves one upgraded socket for `room` until it closes. The socket comes boxed, and is
/// passed on boxed until it is split: each async fn keeps its arguments for its whole life, so
/// a socket passed by value would be held once per level for as long as the connection lasts.
pub async fn serve(shared: Arc<Shared>, ws: Box<Socket>, room: String, query: SocketQuery) {
    let _done = shared.done.clone();
    if !valid_id(&room, ROOM_ID_MAX) || query.pk.as_deref().is_some_and(|p| !valid_id(p, CONNECTION_ID_MAX)) {
        return Box::pin(close_now(ws, Close::BadRequest)).await;
    }
    let claims = match verify_room(&shared.config.secret, query.token.as_deref(), &room) {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "socket refused");
            return Box::pin(close_now(ws, Close::Unauthorized)).await;
        }
    };
    let Ok(_permit) = shared.connections.clone().try_acquire_owned() else {
        return Box::pin(close_now(ws, Close::Full)).await;
    };
    let conn: Arc<str> = Arc::from(query.pk.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
    let span = tracing::info_span!("conn", %conn, %room, user = %claims.sub);
    shared.metrics.connection(true);
    let account = Arc::from(claims.sub.as_str());
    Connection { shared: shared.clone(), room, conn, claims, account, since: query.since }
        .run(ws)
        .instrument(span)
        .await;
    shared.metrics.connection(false);
}

struct Connection {
    shared: Arc<Shared>,
    room: String,
    conn: Arc<str>,
    claims: Claims,
    /// `claims.sub`, shared by every op this connection submits.
    account: Arc<str>,
    since: Option<u64>,
}

/// A token bucket of `rate` per second with a burst of `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
    over_since: Option<(Instant, u32)>,
    last_error: Option<Instant>,
}

enum Admit {
    Yes,
    No { tell: bool },
    Abuse,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket { rate: rate as f64, tokens: rate as f64, at: Instant::now(), over_since: None, last_error: None }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        if self.rate <= 0.0 {
            return Admit::Yes;
        }
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Yes;
        }
        let (since, n) = match self.over_since {
            Some((t, n)) if now.duration_since(t) < Duration::from_secs(1) => (t, n + 1),
            _ => (now, 1),
        };
        self.over_since = Some((since, n));
        if f64::from(n) > 4.0 * self.rate + 10.0 {
            return Admit::Abuse;
        }
        let tell = self.last_error.map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1));
        if tell {
            self.last_error = Some(now);
        }
        Admit::No { tell }
    }
}

impl Connection {
    /// Serves the socket until it closes. This future lives as long as the connection, so what
    /// runs only at its start or end (joining, closing) is boxed: the idle state is what every
    /// open connection pays for, and it stays small.
    async fn run(self, ws: Box<Socket>) {
        let cfg = &self.shared.config;
        let outbox = Arc::new(Outbox::new(cfg.outbox_capacity, self.shared.metrics.clone()));
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let room_tx = match Box::pin(self.join(&outbox, session)).await {
            Ok(tx) => tx,
            Err(c) => return Box::pin(close_now(ws, c)).await,
        };
        info!("connected");
        let (sink, mut stream) = (*ws).split();
        let last_rx = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut writer =
            tokio::spawn(write_loop(sink, outbox.clone(), last_rx.clone(), started, cfg.heartbeat_timeout));
        let mut shutdown = self.shared.shutdown.clone();
        let mut bucket = Bucket::new(cfg.rate_limit);
        let mut finished: Option<Option<Sink>> = None;
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let frame = match frame {
                        Some(Ok(f)) => f,
                        Some(Err(WsError::Capacity(e))) => {
                            // Over the hard limit: the socket layer refused to buffer the frame.
                            debug!(error = %e, "frame over the hard limit");
                            outbox.close(Close::MessageTooBig);
                            break;
                        }
                        _ => break,
                    };
                    last_rx.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match self.on_frame(frame, &outbox, &mut bucket) {
                        Step::Continue => {}
                        Step::Send(msg) => {
                            let m = RoomMsg::Client { conn: self.conn.clone(), session, msg };
                            let sent = match room_tx.try_send(m) {
                                Ok(()) => Ok(()),
                                Err(TrySendError::Full(m)) => Box::pin(room_tx.send(m)).await.map_err(drop),
                                Err(TrySendError::Closed(_)) => Err(()),
                            };
                            if sent.is_err() {
                                outbox.close(Close::Internal);
                            }
                        }
                        Step::Close(c) => outbox.close(c),
                        Step::Stop => break,
                    }
                }
                res = &mut writer => { finished = Some(res.ok().flatten()); break }
                _ = shutdown.changed() => {
                    // Stop reading; the room flushes acks, then closes the outbox with 1001.
                    break;
                }
            }
        }
        if finished.is_none() && *self.shared.shutdown.borrow() {
            // Give the room time to flush its acks and close us with 1001; then close regardless.
            if let Ok(res) = Box::pin(tokio::time::timeout(Duration::from_secs(10), &mut writer)).await {
                finished = Some(res.ok().flatten());
            }
        }
        let sink = match finished {
            Some(s) => s,
            None => {
                outbox.close(Close::GoingAway);
                writer.await.ok().flatten()
            }
        };
        // The room may be gone already (shutdown, failure); then there is no one to tell.
        let _ = Box::pin(room_tx.send(RoomMsg::Leave { conn: self.conn.clone(), session })).await;
        // Let the close handshake finish: read until the peer answers or a second passes.
        if sink.is_some() {
            let drain = async { while let Some(Ok(_)) = stream.next().await {} };
            let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), drain)).await;
        }
        info!("disconnected");
    }

    async fn join(&self, outbox: &Arc<Outbox>, session: u64) -> Result<tokio::sync::mpsc::Sender<RoomMsg>, Close> {
        for _ in 0..5 {
            let tx = self.shared.rooms.get_or_spawn(&self.shared, &self.room)?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            let join = Join {
                req: JoinReq {
                    conn: self.conn.clone(),
                    session,
                    user_id: self.claims.sub.clone(),
                    name: self.claims.name.clone(),
                    avatar: self.claims.avatar.clone(),
                    role: self.claims.role,
                    since: self.since,
                },
                outbox: outbox.clone(),
                reply,
            };
            if tx.send(RoomMsg::Join(join)).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(tx),
                Ok(Err(c)) => return Err(c),
                Err(_) => continue,
            }
        }
        Err(Close::Internal)
    }

    fn on_frame(&self, frame: Message, outbox: &Outbox, bucket: &mut Bucket) -> Step {
        let cfg = &self.shared.config;
        let frame = match frame {
            Message::Close(_) => return Step::Stop,
            // Answered by the WebSocket layer, or nothing to answer.
            Message::Pong(_) | Message::Frame(_) => return Step::Continue,
            other => other,
        };
        // Every frame counts, malformed ones and WebSocket pings included, before any of it is
        // parsed: a flood of garbage is closed as fast as a flood of edits.
        let (over, tell) = match bucket.admit(Instant::now()) {
            Admit::Yes => (false, true),
            Admit::No { tell } => (true, tell),
            Admit::Abuse => return Step::Close(Close::RateLimit),
        };
        let say = |r: Rejection, op_id: Option<String>| {
            if tell {
                outbox.push(error_frame(&r, op_id));
            }
            Step::Continue
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => return say(Rejection::Binary, None),
            _ => return Step::Continue,
        };
        if text.len() > cfg.max_frame {
            return say(Rejection::FrameTooLarge { len: text.len(), limit: cfg.max_frame }, None);
        }
        let limits = cfg.limits();
        // The common frame, an edit, in one pass; anything else (or anything wrong) takes the
        // general path, which says what is wrong.
        let (msg, mut fast_ops) = match decode_operation(text.as_str(), limits.frame_depth()) {
            Some(f) => (
                ClientMsg::Operation {
                    operation: serde_json::Value::Null,
                    base_version: f.base_version,
                    op_id: f.op_id,
                },
                Some(f.ops),
            ),
            None => match decode_client(text.as_str(), limits.frame_depth()) {
                Ok(m) => (m, None),
                Err(e) => return say(Rejection::Decode(e), None),
            },
        };
        if over {
            let r = Rejection::RateLimited { limit: cfg.rate_limit };
            return match msg {
                // An edit always learns its fate, so its sender can send it again.
                ClientMsg::Operation { op_id, .. } => {
                    outbox.push(error_frame(&r, op_id));
                    Step::Continue
                }
                _ => say(r, None),
            };
        }
        if let Err(e) = limits.check_client(&msg) {
            let op_id = match &msg {
                // An op id over the limit is not echoed back.
                ClientMsg::Operation { op_id, .. } => op_id.clone().filter(|id| id.len() <= limits.max_op_id),
                _ => None,
            };
            outbox.push(error_frame(&Rejection::Limit(e), op_id));
            return Step::Continue;
        }
        match msg {
            ClientMsg::Ping => Step::Send(ClientIn::Ping),
            // The room decides the rest (role, target, entity, holder, limit): it knows them.
            ClientMsg::Lock { target, id, ttl } => match lock_ttl_ms(ttl) {
                Ok(ttl_ms) => Step::Send(ClientIn::Lock { target, id, ttl_ms }),
                Err(e) => {
                    outbox.push(error_frame(&Rejection::LockTtl(e), None));
                    Step::Continue
                }
            },
            ClientMsg::Unlock { target, id } => Step::Send(ClientIn::Unlock { target, id }),
            ClientMsg::Cursor { x, y, selection } => Step::Send(ClientIn::Cursor(CursorPos { x, y, selection })),
            ClientMsg::Transport { .. } if !self.claims.role.may_drive_transport() => {
                outbox.push(error_frame(&Rejection::Forbidden { what: "transport" }, None));
                Step::Continue
            }
            ClientMsg::Transport { playing, position } => Step::Send(ClientIn::Transport { playing, position }),
            ClientMsg::Operation { op_id, .. } if !self.claims.role.may_edit() => {
                outbox.push(error_frame(&Rejection::Forbidden { what: "operation" }, op_id));
                Step::Continue
            }
            ClientMsg::Operation { operation, base_version, op_id } => {
                let decoded = match fast_ops.take() {
                    Some(ops) => Ok(ops),
                    None => Op::batch_from_value(operation),
                };
                let ops = match decoded {
                    Ok(ops) => ops,
                    Err(e) => {
                        outbox.push(error_frame(&Rejection::BadOp(e), op_id));
                        return Step::Continue;
                    }
                };
                if ops.len() > cfg.max_batch {
                    let r = Rejection::BatchTooLarge { len: ops.len(), limit: cfg.max_batch };
                    outbox.push(error_frame(&r, op_id));
                    return Step::Continue;
                }
                if let Err(e) = limits.check_ops(&ops) {
                    outbox.push(error_frame(&Rejection::Limit(e), op_id));
                    return Step::Continue;
                }
                Step::Send(ClientIn::Submit(Submit {
                    from: self.conn.to_string(),
                    account: Some(self.account.clone()),
                    base: base_version,
                    op_id,
                    ops,
                }))
            }
        }
    }
}

enum Step {
    Continue,
    Send(ClientIn),
    Close(Close),
    Stop,
}

type Sink = futures_util::stream::SplitSink<Socket, Message>;

/// Most frames written before one flush.
const BURST: usize = 64;

/// Drains the outbox into the socket, pings every third of the heartbeat timeout, and closes a
/// peer silent for the whole timeout. Returns the sink if the close frame went out.
async fn write_loop(
    mut sink: Sink,
    outbox: Arc<Outbox>,
    last_rx: Arc<AtomicU64>,
    started: Instant,
    timeout: Duration,
) -> Option<Sink> {
    let period = (timeout / 3).max(Duration::from_millis(50));
    let mut ping = tokio::time::interval_at(started + period, period);
    loop {
        tokio::select! {
            next = outbox.next() => match next {
                Next::Frame(f) => {
                    // Write what is ready (up to a bound) and flush once: one syscall for a burst.
                    let burst = async {
                        sink.feed(Message::Text(f)).await?;
                        for _ in 0..BURST {
                            let Some(f) = outbox.try_frame() else { break };
                            sink.feed(Message::Text(f)).await?;
                        }
                        sink.flush().await
                    };
                    let mut burst = pin!(burst);
                    // Most often the socket takes the burst at once: then no timer is set and
                    // no watch for an abort.
                    if let Poll::Ready(sent) = futures_util::poll!(burst.as_mut()) {
                        if sent.is_err() {
                            return None;
                        }
                        continue;
                    }
                    tokio::select! {
                        sent = tokio::time::timeout(timeout, burst) => {
                            if !matches!(sent, Ok(Ok(()))) {
                                return None;
                            }
                        }
                        // Closed (slow consumer, replaced, ...) while the peer does not drain:
                        // drop the socket rather than wait for it.
                        _ = outbox.aborted() => return None,
                    }
                }
                Next::Close(c) => {
                    debug!(code = c.code(), reason = c.reason(), "closing");
                    let sent = tokio::time::timeout(Duration::from_secs(2), sink.send(close_msg(c))).await;
                    return matches!(sent, Ok(Ok(()))).then_some(sink);
                }
            },
            _ = ping.tick() => {
                let silent_ms = (started.elapsed().as_millis() as u64).saturating_sub(last_rx.load(Ordering::Relaxed));
                if silent_ms >= timeout.as_millis() as u64 {
                    outbox.close(Close::HeartbeatTimeout);
                } else if !matches!(tokio::time::timeout(timeout, sink.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                    return None;
                }
            }
        }
    }
}
