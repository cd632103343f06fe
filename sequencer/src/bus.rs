//! The fan-out bus between nodes (`--bus redis://…`): Redis pub/sub, one channel per room.
//!
//! Every node publishes each op it sequences, once it is durable, on
//! `{prefix}room:{room}`, and subscribes to the channels of the rooms it has loaded. A room
//! applies an op from another node when it is exactly its next version; a gap (or an op it
//! cannot take now) makes it read the store instead.
//!
//! **Correctness never depends on the bus.** Redis pub/sub drops messages when a subscriber
//! is slow or reconnects; the PostgreSQL log is the truth, and every room with connections also
//! polls it (`Config::cluster_poll`). The bus only makes other nodes' ops arrive sooner.
//!
//! One task per node owns the subscribing connection: it reconciles the set of subscribed
//! channels with the rooms registered here (a [`Notify`] says the set changed, so no command
//! queue can overflow), reconnects with backoff when Redis goes away, and hands each message
//! to its room's bounded queue. Publishing goes through a [`ConnectionManager`], which
//! reconnects on its own.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ot_core::protocol::OperationMsg;
use ot_core::sync::Sequenced;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

/// Where the bus is.
#[derive(Clone, Debug, PartialEq)]
pub struct BusConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every channel name (so several clusters, or tests, share one Redis).
    pub prefix: String,
}

/// Ops queued for one room before the bus drops them (the room then reads the store).
const ROOM_QUEUE: usize = 256;

type Subscribers = HashMap<Arc<str>, Vec<(u64, mpsc::Sender<Sequenced>)>>;

/// A node's connection to the bus.
pub struct Bus {
    prefix: String,
    publisher: ConnectionManager,
    rooms: Mutex<Subscribers>,
    next_id: Mutex<u64>,
    changed: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A room's subscription; dropping it unsubscribes.
pub struct Subscription {
    bus: Arc<Bus>,
    room: Arc<str>,
    id: u64,
    /// Ops other nodes sequenced in this room (and this node's own, which the room ignores).
    pub rx: mpsc::Receiver<Sequenced>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut rooms = self.bus.lock_rooms();
        if let Some(list) = rooms.get_mut(&self.room) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                rooms.remove(&self.room);
                drop(rooms);
                self.bus.changed.notify_one();
            }
        }
    }
}

impl Bus {
    /// Connects the publisher (failing fast on a wrong URL or an unreachable Redis) and starts
    /// the subscriber task.
    pub async fn start(config: &BusConfig) -> anyhow::Result<Arc<Bus>> {
        let client = redis::Client::open(config.url.as_str())?;
        let publisher = ConnectionManager::new(client.clone()).await?;
        let bus = Arc::new(Bus {
            prefix: config.prefix.clone(),
            publisher,
            rooms: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0),
            changed: Arc::new(Notify::new()),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(subscriber(Arc::downgrade(&bus), bus.changed.clone(), client));
        *bus.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        info!(url = %config.url, prefix = %config.prefix, "bus connected");
        Ok(bus)
    }

    fn lock_rooms(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // Every critical section below only edits the map; a poisoned one is still consistent.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    /// Subscribes a room.
    pub fn subscribe(self: &Arc<Self>, room: Arc<str>) -> Subscription {
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        self.lock_rooms().entry(room.clone()).or_default().push((id, tx));
        self.changed.notify_one();
        Subscription { bus: self.clone(), room, id, rx }
    }

    /// Publishes a durable op of `room` without waiting. A failure is only logged: the other
    /// nodes find the op in the store on their next poll.
    pub fn publish(&self, room: &str, msg: &OperationMsg) {
        let frame = BusOp { account: msg.account.as_deref().map(Cow::Borrowed), op: Cow::Borrowed(msg) };
        let payload = match serde_json::to_string(&frame) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode op for the bus");
                return;
            }
        };
        let channel = self.channel(room);
        let mut conn = self.publisher.clone();
        tokio::spawn(async move {
            let r: redis::RedisResult<i64> =
                redis::cmd("PUBLISH").arg(&channel).arg(payload).query_async(&mut conn).await;
            if let Err(e) = r {
                debug!(error = %e, channel, "publish failed; other nodes will poll the store");
            }
        });
    }

    /// Stops the subscriber task.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Owns the subscribing connection until the bus is dropped.
async fn subscriber(bus: std::sync::Weak<Bus>, changed: Arc<Notify>, client: redis::Client) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.get_async_pubsub().await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                let (mut sink, mut stream) = pubsub.split();
                let mut subscribed: HashSet<Arc<str>> = HashSet::new();
                loop {
                    let Some(b) = bus.upgrade() else { return };
                    let wanted: HashSet<Arc<str>> = b.lock_rooms().keys().cloned().collect();
                    let mut failed = false;
                    for room in wanted.difference(&subscribed) {
                        if let Err(e) = sink.subscribe(b.channel(room)).await {
                            warn!(error = %e, "bus subscribe failed");
                            failed = true;
                            break;
                        }
                    }
                    for room in subscribed.difference(&wanted) {
                        if let Err(e) = sink.unsubscribe(b.channel(room)).await {
                            warn!(error = %e, "bus unsubscribe failed");
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                    subscribed = wanted;
                    drop(b);
                    tokio::select! {
                        _ = changed.notified() => continue,
                        msg = stream.next() => match msg {
                            None => break,
                            Some(m) => {
                                let Some(b) = bus.upgrade() else { return };
                                dispatch(&b, &m);
                            }
                        },
                    }
                }
                warn!("bus connection lost; reconnecting (rooms poll the store meanwhile)");
            }
            Err(e) => warn!(error = %e, "bus connect failed; retrying (rooms poll the store meanwhile)"),
        }
        if bus.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// An op on the bus: the broadcast form plus the sender's account, which scopes its op id
/// (PROTOCOL §4) and is never sent to clients.
#[derive(serde::Serialize, serde::Deserialize)]
struct BusOp<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<Cow<'a, str>>,
    op: Cow<'a, OperationMsg>,
}

fn dispatch(bus: &Bus, m: &redis::Msg) {
    let channel = m.get_channel_name();
    let Some(room) = channel.strip_prefix(&bus.prefix).and_then(|c| c.strip_prefix("room:")) else { return };
    let payload: Vec<u8> = match m.get_payload() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, channel, "bus message without a payload");
            return;
        }
    };
    let op: OperationMsg = match serde_json::from_slice::<BusOp>(&payload) {
        Ok(BusOp { account, op }) => OperationMsg { account: account.map(|a| Arc::from(&*a)), ..op.into_owned() },
        Err(e) => {
            warn!(error = %e, channel, "bus message does not decode");
            return;
        }
    };
    let op: Sequenced = Arc::new(op);
    let rooms = bus.lock_rooms();
    for (_, tx) in rooms.get(room).into_iter().flatten() {
        // A full queue drops the op on purpose: the room detects the gap on the next op it
        // gets and reads the store; a closed one belongs to a room that is unloading.
        if tx.try_send(op.clone()).is_err() {
            debug!(room, version = op.version, "bus op dropped for a busy room");
        }
    }
}
