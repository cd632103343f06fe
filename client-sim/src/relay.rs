//! A bare broadcast relay: the baseline. It accepts WebSocket connections on the same paths as
//! the sequencer (`/parties/main/{room}`, `/ws/{room}`), and forwards every text frame it
//! receives to every connection of the room, the sender included, without parsing it. What
//! the sequencer costs beyond this is the price of sequencing, OT, presence and durability.
//!
//! Ownership mirrors the sequencer's: one task per connection reads its socket, one writer
//! task per connection owns the write half, one task per room owns the member list. Queues are
//! bounded; a member whose queue is full is dropped from the room (its socket closes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const MEMBER_QUEUE: usize = 4096;
const ROOM_QUEUE: usize = 4096;

enum RoomMsg {
    Join(u64, mpsc::Sender<Message>),
    Leave(u64),
    Frame(Message),
}

type Rooms = Arc<Mutex<HashMap<String, mpsc::Sender<RoomMsg>>>>;

/// A running relay.
pub struct RelayHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops accepting and waits for the accept loop to end (open sockets close as their
    /// peers go).
    pub async fn shutdown(self) {
        // The loop may have ended on its own; then there is nothing to stop.
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!("relay accept loop failed: {e}");
        }
    }
}

/// Starts a relay on `addr` (use `127.0.0.1:0`).
pub async fn start(addr: SocketAddr) -> std::io::Result<RelayHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = oneshot::channel();
    let rooms: Rooms = Arc::default();
    let task = tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                acc = listener.accept() => match acc {
                    Ok((tcp, _)) => {
                        next_id += 1;
                        tokio::spawn(connection(tcp, next_id, rooms.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("relay accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                },
            }
        }
    });
    Ok(RelayHandle { addr, stop, task })
}

fn room_of(path: &str) -> Option<String> {
    let p = path.split('?').next()?;
    let room = p.strip_prefix("/parties/main/").or_else(|| p.strip_prefix("/ws/"))?;
    ot_core::protocol::valid_id(room, ot_core::protocol::ROOM_ID_MAX).then_some(())?;
    Some(room.to_string())
}

fn room_inbox(rooms: &Rooms, room: &str) -> mpsc::Sender<RoomMsg> {
    // A poisoned lock means a panic elsewhere; the map itself is still usable.
    let mut map = rooms.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = map.get(room).filter(|tx| !tx.is_closed()) {
        return tx.clone();
    }
    let (tx, rx) = mpsc::channel(ROOM_QUEUE);
    map.insert(room.to_string(), tx.clone());
    tokio::spawn(room_task(rx));
    tx
}

async fn room_task(mut rx: mpsc::Receiver<RoomMsg>) {
    let mut members: Vec<(u64, mpsc::Sender<Message>)> = Vec::new();
    while let Some(m) = rx.recv().await {
        match m {
            RoomMsg::Join(id, tx) => members.push((id, tx)),
            RoomMsg::Leave(id) => members.retain(|(m, _)| *m != id),
            RoomMsg::Frame(frame) => {
                // Full queue: the member is too slow and is dropped (its socket closes).
                members.retain(|(_, tx)| tx.try_send(frame.clone()).is_ok());
            }
        }
    }
}

async fn connection(tcp: TcpStream, id: u64, rooms: Rooms) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("set_nodelay: {e}");
    }
    let mut path = String::new();
    #[allow(clippy::result_large_err)] // the callback type is tungstenite's, not ours
    let cb = |req: &Request, resp: Response| {
        path = req.uri().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else { return };
    let Some(room) = room_of(&path) else { return };
    let inbox = room_inbox(&rooms, &room);
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(MEMBER_QUEUE);
    if inbox.send(RoomMsg::Join(id, tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(frame)) = stream.next().await {
        let forward = match &frame {
            Message::Text(_) | Message::Binary(_) => true,
            Message::Close(_) => break,
            _ => false,
        };
        if forward && inbox.send(RoomMsg::Frame(frame)).await.is_err() {
            break;
        }
    }
    // The room may be gone already; then there is nobody to tell.
    let _ = inbox.send(RoomMsg::Leave(id)).await;
    writer.abort();
}
