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
//!
//! **Room-wide presence** rides the same bus on a second channel per room,
//! `{prefix}presence:{room}`, carrying [`NodeEvent`]s (joins, leaves, cursors, soft locks, the
//! transport). Each connection's [`MemberState`] is also kept under the key
//! `{prefix}presence:{room}:{conn}` with a TTL, listed in the set `{prefix}presence:{room}`; the
//! room's heartbeat refreshes its own keys and reads everyone's ([`Bus::sync_presence`]). A
//! SIGKILLed node's keys expire, so its people leave everyone's view; after a Redis restart the
//! next heartbeat writes every key again. One task per node writes presence in order (a leave
//! never overtakes its join), batching what is queued into one pipeline.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ot_core::protocol::OperationMsg;
use ot_core::sync::Sequenced;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use crate::room::remote::{MemberState, NodeEvent};

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

/// Presence events queued for one room before the bus drops them (the heartbeat resyncs).
const EVENT_QUEUE: usize = 1024;

/// Presence writes queued for the writer task before new ones are dropped.
const PRESENCE_QUEUE: usize = 16 * 1024;

/// Presence writes sent to Redis in one pipeline at most.
const PRESENCE_BATCH: usize = 256;

/// A room's queues on this node.
struct RoomSub {
    id: u64,
    ops: mpsc::Sender<Sequenced>,
    events: mpsc::Sender<NodeEvent>,
}

type Subscribers = HashMap<Arc<str>, Vec<RoomSub>>;

/// A node's connection to the bus.
pub struct Bus {
    prefix: String,
    node: Arc<str>,
    /// How this node's ops and presence events begin on the bus (`{"node":"<id>"`).
    own_op_prefix: String,
    publisher: ConnectionManager,
    rooms: Mutex<Subscribers>,
    next_id: Mutex<u64>,
    changed: Arc<Notify>,
    presence: mpsc::Sender<PresenceJob>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A room's subscription; dropping it unsubscribes.
pub struct Subscription {
    bus: Arc<Bus>,
    room: Arc<str>,
    id: u64,
    /// Ops other nodes sequenced in this room (and this node's own, which the room ignores).
    pub rx: mpsc::Receiver<Sequenced>,
    /// Presence events of other nodes in this room (and this node's own, which the room ignores).
    pub events: mpsc::Receiver<NodeEvent>,
}

/// One presence write, in the order the rooms asked for them.
enum PresenceJob {
    /// Publish an event, keeping a member's key first (and deleting it for a leave).
    Event { room: Arc<str>, event: Box<NodeEvent>, ttl_ms: u64 },
    /// Refresh these members' keys, then read every member's key of the room.
    Sync { room: Arc<str>, members: Vec<MemberState>, ttl_ms: u64, reply: oneshot::Sender<Vec<MemberState>> },
}

/// Deletes a member's key and index entry only if the key still belongs to the node given.
const LEAVE_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then \
redis.call('DEL', KEYS[1]) redis.call('SREM', KEYS[2], ARGV[2]) end return 0";

/// Every member's key of a room, pruning the index of keys that expired.
const READ_SCRIPT: &str = "local ids = redis.call('SMEMBERS', KEYS[1]) local out = {} \
for _, id in ipairs(ids) do local v = redis.call('GET', ARGV[1] .. id) \
if v then table.insert(out, v) else redis.call('SREM', KEYS[1], id) end end return out";

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut rooms = self.bus.lock_rooms();
        if let Some(list) = rooms.get_mut(&self.room) {
            list.retain(|sub| sub.id != self.id);
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
        let (presence, jobs) = mpsc::channel(PRESENCE_QUEUE);
        let node: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let bus = Arc::new(Bus {
            prefix: config.prefix.clone(),
            own_op_prefix: format!("{{\"node\":{}", serde_json::Value::from(&*node)),
            node: node.clone(),
            publisher: publisher.clone(),
            rooms: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0),
            changed: Arc::new(Notify::new()),
            presence,
            tasks: Mutex::new(Vec::new()),
        });
        let sub = tokio::spawn(subscriber(Arc::downgrade(&bus), bus.changed.clone(), client));
        let writer = tokio::spawn(presence_writer(config.prefix.clone(), publisher, jobs));
        bus.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([sub, writer]);
        info!(url = %config.url, prefix = %config.prefix, node = %node, "bus connected");
        Ok(bus)
    }

    /// This node's id on the bus (a fresh one per process).
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Tells the other nodes of `room` about `event` without waiting, keeping a member's key
    /// (`ttl_ms`) or deleting it for a leave. Dropped, and logged, when the writer is this far
    /// behind: the room's next heartbeat writes its members again.
    pub fn presence_event(&self, room: &Arc<str>, event: NodeEvent, ttl_ms: u64) {
        let job = PresenceJob::Event { room: room.clone(), event: Box::new(event), ttl_ms };
        if self.presence.try_send(job).is_err() {
            debug!(room = %room, "presence event dropped: the bus writer is behind");
        }
    }

    /// Refreshes `members`' keys (`ttl_ms`) and reads every member's key of `room`, after every
    /// event queued before it. `None` when Redis did not answer.
    pub async fn sync_presence(
        &self,
        room: &Arc<str>,
        members: Vec<MemberState>,
        ttl_ms: u64,
    ) -> Option<Vec<MemberState>> {
        let (reply, answer) = oneshot::channel();
        let job = PresenceJob::Sync { room: room.clone(), members, ttl_ms, reply };
        self.presence.try_send(job).ok()?;
        answer.await.ok()
    }

    fn lock_rooms(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // Every critical section below only edits the map; a poisoned one is still consistent.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    fn presence_channel(&self, room: &str) -> String {
        format!("{}presence:{room}", self.prefix)
    }

    /// Subscribes a room.
    pub fn subscribe(self: &Arc<Self>, room: Arc<str>) -> Subscription {
        let (ops, rx) = mpsc::channel(ROOM_QUEUE);
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        self.lock_rooms().entry(room.clone()).or_default().push(RoomSub { id, ops, events });
        self.changed.notify_one();
        Subscription { bus: self.clone(), room, id, rx, events: events_rx }
    }

    /// Publishes a durable op of `room` without waiting. A failure is only logged: the other
    /// nodes find the op in the store on their next poll.
    pub fn publish(&self, room: &str, msg: &OperationMsg) {
        let frame = BusOp {
            node: Some(Cow::Borrowed(&self.node)),
            account: msg.account.as_deref().map(Cow::Borrowed),
            op: Cow::Borrowed(msg),
        };
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

    /// Stops the subscriber and presence tasks.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
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
                        if let Err(e) = sink.subscribe(&[b.channel(room), b.presence_channel(room)]).await {
                            warn!(error = %e, "bus subscribe failed");
                            failed = true;
                            break;
                        }
                    }
                    for room in subscribed.difference(&wanted) {
                        if let Err(e) = sink.unsubscribe(&[b.channel(room), b.presence_channel(room)]).await {
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
    /// The node that sequenced it, first: a node skips its own ops without decoding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<Cow<'a, str>>,
    op: Cow<'a, OperationMsg>,
}

fn dispatch(bus: &Bus, m: &redis::Msg) {
    let channel = m.get_channel_name();
    let Some(name) = channel.strip_prefix(&bus.prefix) else { return };
    let payload: Vec<u8> = match m.get_payload() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, channel, "bus message without a payload");
            return;
        }
    };
    if let Some(room) = name.strip_prefix("presence:") {
        dispatch_event(bus, room, &payload);
        return;
    }
    let Some(room) = name.strip_prefix("room:") else { return };
    if payload.starts_with(bus.own_op_prefix.as_bytes()) {
        // Our own op, back from Redis: the room has it already.
        return;
    }
    let op: OperationMsg = match serde_json::from_slice::<BusOp>(&payload) {
        Ok(BusOp { account, op, .. }) => OperationMsg { account: account.map(|a| Arc::from(&*a)), ..op.into_owned() },
        Err(e) => {
            warn!(error = %e, channel, "bus message does not decode");
            return;
        }
    };
    let op: Sequenced = Arc::new(op);
    let rooms = bus.lock_rooms();
    for sub in rooms.get(room).into_iter().flatten() {
        // A full queue drops the op on purpose: the room detects the gap on the next op it
        // gets and reads the store; a closed one belongs to a room that is unloading.
        if sub.ops.try_send(op.clone()).is_err() {
            debug!(room, version = op.version, "bus op dropped for a busy room");
        }
    }
}

/// A presence event on the bus: its node first, so a node skips its own without decoding them.
#[derive(serde::Serialize, serde::Deserialize)]
struct BusEvent<'a> {
    node: Cow<'a, str>,
    event: Cow<'a, NodeEvent>,
}

fn dispatch_event(bus: &Bus, room: &str, payload: &[u8]) {
    if payload.starts_with(bus.own_op_prefix.as_bytes()) {
        return;
    }
    let event = match serde_json::from_slice::<BusEvent>(payload) {
        Ok(e) => e.event.into_owned(),
        Err(e) => {
            warn!(error = %e, room, "presence message does not decode");
            return;
        }
    };
    if event.node() == &*bus.node {
        return;
    }
    let rooms = bus.lock_rooms();
    for sub in rooms.get(room).into_iter().flatten() {
        // A full queue drops the event: the room's heartbeat reads everyone's state again.
        if sub.events.try_send(event.clone()).is_err() {
            debug!(room, "presence event dropped for a busy room");
        }
    }
}

/// Writes presence in order: each batch of queued jobs is one pipeline.
async fn presence_writer(prefix: String, mut conn: ConnectionManager, mut jobs: mpsc::Receiver<PresenceJob>) {
    let mut batch = Vec::with_capacity(PRESENCE_BATCH);
    while jobs.recv_many(&mut batch, PRESENCE_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut replies = Vec::new();
        for job in batch.drain(..) {
            match job {
                PresenceJob::Event { room, event, ttl_ms } => {
                    let index = format!("{prefix}presence:{room}");
                    match &*event {
                        NodeEvent::Member(m) => keep_member(&mut pipe, &index, m, ttl_ms),
                        NodeEvent::Left { node, conn } => {
                            let owner = format!("{{\"node\":{}", serde_json::Value::from(node.as_str()));
                            pipe.cmd("EVAL")
                                .arg(LEAVE_SCRIPT)
                                .arg(2)
                                .arg(format!("{index}:{conn}"))
                                .arg(&index)
                                .arg(owner)
                                .arg(conn)
                                .ignore();
                        }
                        NodeEvent::Cursors { .. } | NodeEvent::Transport { .. } => {}
                    }
                    let frame = BusEvent { node: Cow::Borrowed(event.node()), event: Cow::Borrowed(&*event) };
                    match serde_json::to_string(&frame) {
                        Ok(payload) => {
                            pipe.cmd("PUBLISH").arg(&index).arg(payload).ignore();
                        }
                        Err(e) => warn!(error = %e, "cannot encode a presence event"),
                    }
                }
                PresenceJob::Sync { room, members, ttl_ms, reply } => {
                    let index = format!("{prefix}presence:{room}");
                    for m in &members {
                        keep_member(&mut pipe, &index, m, ttl_ms);
                    }
                    pipe.cmd("EVAL").arg(READ_SCRIPT).arg(1).arg(&index).arg(format!("{index}:"));
                    replies.push(reply);
                }
            }
        }
        match pipe.query_async::<Vec<Vec<Vec<u8>>>>(&mut conn).await {
            Ok(results) => {
                for (reply, values) in replies.into_iter().zip(results) {
                    let members = values.iter().filter_map(|v| serde_json::from_slice(v).ok()).collect();
                    // The room may have stopped meanwhile.
                    let _ = reply.send(members);
                }
            }
            // Dropping the replies tells the rooms; their next heartbeat tries again.
            Err(e) => debug!(error = %e, "presence write failed; rooms resync at their next heartbeat"),
        }
    }
}

/// Queues the commands that keep `m`'s key for `ttl_ms` and list it in the room's index.
fn keep_member(pipe: &mut redis::Pipeline, index: &str, m: &MemberState, ttl_ms: u64) {
    let value = match serde_json::to_string(m) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "cannot encode a presence");
            return;
        }
    };
    pipe.cmd("SET").arg(format!("{index}:{}", m.presence.id)).arg(value).arg("PX").arg(ttl_ms.max(1)).ignore();
    pipe.cmd("SADD").arg(index).arg(&m.presence.id).ignore();
    pipe.cmd("PEXPIRE").arg(index).arg(ttl_ms.max(1).saturating_mul(2)).ignore();
}
