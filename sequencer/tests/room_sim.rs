//! A seeded deterministic simulation of rooms and clients, without sockets or tasks: two
//! [`RoomCore`]s on one store (so their appends race and one loses), client
//! [`Session`](ot_core::session::Session)s editing at random over FIFO links that delay and
//! drop, a store that completes appends and reads late and in any order between rooms, a bus
//! that delays and loses messages, and a clock that moves. Clients disconnect and reconnect to
//! either node. Once the run stops editing and drains, every client's document, both rooms and
//! the store's reloaded state are equal.
//!
//! Throughout, every socket is checked against the room's promise to it (PROTOCOL §4): each
//! version after the one its `init` reported arrives exactly once and in order, whichever node it
//! is on and however its resends race lost appends, store lookups and other nodes' ops; an older
//! version only as the one answer to a resend of its own op; and a reconnect never reports a
//! version behind the `since` the client came back with.
//!
//! Presence is room-wide as with a Redis bus: the nodes' presence events cross (delayed, and
//! lost now and then) and their heartbeats refresh and read a simulated Redis whose keys
//! expire. Once everything is delivered and one more heartbeat has run on each node, every
//! client sees exactly everyone connected, on either node, and every client's transport is the
//! room's latest.
//!
//! `ROOM_SIM_SEEDS=n` runs more seeds (default 1,000); `ROOM_SIM_SEED=s` runs one. Every failure
//! names its seed.

mod common;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use common::room::{config, load};
use fuzz::gen::Fresh;
use fuzz::source::Source;
use std::collections::{BTreeSet, HashMap};

use ot_core::protocol::{decode_server, ClientMsg, CursorPos};
use ot_core::session::{Effect, Now as ClientNow, Session};
use ot_core::sync::{Sequenced, Submit};
use ot_core::{Document, Op};
use sequencer::auth::Role;
use sequencer::room::core::{ClientIn, ConnKey, Input, JoinReq, Now, Output, ReadReq, RoomCore};
use sequencer::room::remote::{MemberState, NodeEvent};
use sequencer::store::{Durable, MemoryStore, RoomAppend, Store, StoreError};

const ROOM: &str = "sim";

/// A small seeded generator (xorshift64*), so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Link {
    key: ConnKey,
    node: usize,
    up: VecDeque<ClientMsg>,
    down: VecDeque<String>,
    /// The version the client held when it connected (its `since`).
    since: Option<u64>,
    /// What this socket was told: the version its `init` reported and the last version it has
    /// received since (each must be the one after the other, PROTOCOL §4), and the versions at
    /// or below `init` that were re-acked to it (each at most once).
    init: Option<u64>,
    last: u64,
    reacked: HashSet<u64>,
}

impl Link {
    /// Checks one frame against the room's promise to a socket: every version after its init's
    /// exactly once and in order, a reconnect never taken back behind what the client held, and
    /// an older version only as the single answer to a resend of the client's own op.
    fn check(&mut self, msg: &ot_core::protocol::ServerMsg, pk: &str) -> Result<(), String> {
        use ot_core::protocol::ServerMsg;
        match msg {
            ServerMsg::Init { version, ops, .. } => {
                if let Some(s) = self.since.filter(|s| s > version) {
                    return Err(format!("init at version {version} behind the client's {s}"));
                }
                self.init = Some(*version);
                self.last = ops.as_ref().and_then(|o| o.last()).map_or(*version, |m| m.version.max(*version));
            }
            ServerMsg::Operation(m) => {
                let Some(init) = self.init else { return Err("an operation before init".into()) };
                if m.version == self.last + 1 {
                    self.last = m.version;
                } else if m.version > init || m.user_id != pk || !self.reacked.insert(m.version) {
                    return Err(format!("version {} after {} (init {init}): {:?}", m.version, self.last, m.op_id));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

struct Client {
    pk: String,
    user: String,
    session: Session,
    link: Option<Link>,
    sessions: u64,
    fresh: Fresh,
}

struct Node {
    core: RoomCore,
    appends: VecDeque<(u64, RoomAppend)>,
    reads: VecDeque<(u64, ReadReq)>,
    bus_in: VecDeque<Sequenced>,
    /// Presence events from the other node, in order.
    events_in: VecDeque<NodeEvent>,
    /// Heartbeats waiting for Redis: when each was asked for (monotonic ms).
    syncs: VecDeque<u64>,
    members: HashSet<ConnKey>,
}

/// How long a presence key lives in the simulation (its heartbeat is a third of it).
const PRESENCE_TTL_MS: u64 = 600;

struct Sim {
    seed: u64,
    rng: Rng,
    store: Arc<MemoryStore>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    now: Now,
    /// Connections that ended but whose `Leave` has not reached their room yet.
    leaves: VecDeque<(usize, ConnKey)>,
    /// The presence keys as Redis holds them (connection id → state; expired at `expires_at`).
    redis: HashMap<String, MemberState>,
    /// What the run exercised.
    seen: Seen,
}

/// Counts of what a run exercised, so the simulation cannot quietly stop covering them.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    lost_races: u64,
    reconnects: u64,
    /// Reconnects to a node that had not reached the client's version yet.
    joins_ahead: u64,
    history_reads: u64,
    sequenced: u64,
    presence_events: u64,
    heartbeats: u64,
    locks_held_at_end: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let store = Arc::new(MemoryStore::new());
        let now = Now { mono_ms: 0, epoch_ms: 1_700_000_000_000 };
        let nodes = (0..2)
            .map(|n| {
                let mut cfg = config(ROOM);
                cfg.shared_store = true;
                cfg.cluster_poll_ms = 50;
                cfg.cursor_tick_ms = 10;
                cfg.node = Some(Arc::from(format!("node{n}")));
                cfg.presence_ttl_ms = PRESENCE_TTL_MS;
                let window = 2 + rng.below(6) as usize;
                Node {
                    core: RoomCore::new(load(&*store, ROOM, window), cfg, now),
                    appends: VecDeque::new(),
                    reads: VecDeque::new(),
                    bus_in: VecDeque::new(),
                    events_in: VecDeque::new(),
                    syncs: VecDeque::new(),
                    members: HashSet::new(),
                }
            })
            .collect();
        let clients = (0..3 + rng.below(4))
            .map(|i| Client {
                pk: format!("pk{i}"),
                user: format!("user{i}"),
                session: Session::new(format!("pk{i}")),
                link: None,
                sessions: 0,
                fresh: Fresh::default(),
            })
            .collect();
        let redis = HashMap::new();
        Sim { seed, rng, store, nodes, clients, now, leaves: VecDeque::new(), redis, seen: Seen::default() }
    }

    fn client_now(&self) -> ClientNow {
        ClientNow { mono_ms: self.now.mono_ms, epoch_ms: self.now.epoch_ms }
    }

    fn feed(&mut self, n: usize, input: Input) {
        let outs = self.nodes[n].core.handle(input, self.now);
        for o in outs {
            self.route(n, o);
        }
    }

    fn link_of(&mut self, key: &ConnKey) -> Option<&mut Link> {
        self.clients.iter_mut().filter_map(|c| c.link.as_mut()).find(|l| l.key == *key)
    }

    fn route(&mut self, n: usize, o: Output) {
        match o {
            Output::Send { to, frame } => {
                if let Some(l) = self.link_of(&to) {
                    l.down.push_back(frame);
                }
            }
            Output::Broadcast { frame, except } => {
                let members = self.nodes[n].members.clone();
                for c in &mut self.clients {
                    if let Some(l) = c.link.as_mut().filter(|l| l.node == n && members.contains(&l.key)) {
                        if except.as_ref() != Some(&l.key.0) {
                            l.down.push_back(frame.clone());
                        }
                    }
                }
            }
            Output::Cursor { from, frame } => {
                let members = self.nodes[n].members.clone();
                for c in &mut self.clients {
                    if let Some(l) = c.link.as_mut().filter(|l| l.node == n && members.contains(&l.key)) {
                        if l.key.0 != from {
                            l.down.push_back(frame.clone());
                        }
                    }
                }
            }
            Output::Close { to, .. } => {
                self.nodes[n].members.remove(&to);
                if let Some(c) = self.clients.iter_mut().find(|c| c.link.as_ref().is_some_and(|l| l.key == to)) {
                    // The socket closes: what was queued towards the client is lost with it.
                    c.link = None;
                    c.session.on_close();
                }
            }
            Output::JoinReply { to, result } => match result {
                Ok(()) => {
                    self.nodes[n].members.insert(to);
                }
                Err(code) => {
                    panic!("seed {}: join of {to:?} refused with {code:?}", self.seed);
                }
            },
            Output::Append { epoch, group } => self.nodes[n].appends.push_back((epoch, group)),
            Output::Read { id, req } => self.nodes[n].reads.push_back((id, req)),
            Output::Publish(m) => {
                // The bus loses a message now and then: polling must find it.
                if !self.rng.chance(10) {
                    self.nodes[1 - n].bus_in.push_back(m);
                }
            }
            Output::Node(e) => {
                self.seen.presence_events += 1;
                match &e {
                    NodeEvent::Member(m) => {
                        self.redis.insert(m.presence.id.clone(), m.clone());
                    }
                    NodeEvent::Left { node, conn } => {
                        if self.redis.get(conn).is_some_and(|m| m.node == *node) {
                            self.redis.remove(conn);
                        }
                    }
                    NodeEvent::Cursors { .. } | NodeEvent::Transport { .. } => {}
                }
                // Pub/sub loses a message now and then: the heartbeat must repair it.
                if !self.rng.chance(10) {
                    self.nodes[1 - n].events_in.push_back(e);
                }
            }
            Output::PresenceSync(members) => {
                for m in members {
                    self.redis.insert(m.presence.id.clone(), m);
                }
                self.nodes[n].syncs.push_back(self.now.mono_ms);
            }
            Output::SaveTransport(t) => self.store.save_transport(ROOM, &t).unwrap(),
            Output::Stat(_) => {}
            Output::Unload => {}
            Output::Failed(reason) => panic!("seed {}: room {n} failed: {reason}", self.seed),
        }
    }

    fn connect(&mut self, i: usize) {
        let node = self.rng.below(2) as usize;
        self.seen.reconnects += 1;
        let c = &mut self.clients[i];
        c.sessions += 1;
        let key: ConnKey = (Arc::from(c.pk.as_str()), c.sessions);
        c.session.on_open();
        let since = c.session.since();
        if since.is_some_and(|s| s > self.nodes[node].core.durable_version()) {
            self.seen.joins_ahead += 1;
        }
        c.link = Some(Link {
            key: key.clone(),
            node,
            up: VecDeque::new(),
            down: VecDeque::new(),
            since,
            init: None,
            last: 0,
            reacked: HashSet::new(),
        });
        let join = JoinReq {
            conn: key.0.clone(),
            session: key.1,
            user_id: c.user.clone(),
            name: c.user.clone(),
            avatar: None,
            role: Role::Editor,
            since,
        };
        self.feed(node, Input::Join(join));
    }

    fn disconnect(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(l) = c.link.take() {
            c.session.on_close();
            self.leaves.push_back((l.node, l.key));
        }
    }

    fn effects(&mut self, i: usize, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send(m) => {
                    if let Some(l) = self.clients[i].link.as_mut() {
                        l.up.push_back(m);
                    }
                }
                Effect::Reconnect { .. } => self.disconnect(i),
                _ => {}
            }
        }
    }

    fn edit(&mut self, i: usize) {
        let bytes = self.rng.bytes(64);
        let now = self.client_now();
        let c = &mut self.clients[i];
        let Some(doc) = c.session.doc() else { return };
        let mut src = Source::new(&bytes);
        let ops = fuzz::gen::valid_batch(&mut src, doc, &mut c.fresh, 3);
        if ops.is_empty() {
            return;
        }
        match c.session.submit(&ops, now) {
            Ok(effects) => self.effects(i, effects),
            Err(e) => panic!("seed {}: a valid local edit was refused: {e}", self.seed),
        }
    }

    /// Locks or unlocks a track the client sees (both nodes may grant one at once).
    fn lock(&mut self, i: usize) {
        let pick = self.rng.next() as usize;
        let unlock = self.rng.chance(30);
        let c = &mut self.clients[i];
        let Some(doc) = c.session.doc() else { return };
        let tracks = doc.tracks();
        if tracks.is_empty() || c.link.is_none() {
            return;
        }
        let id = tracks[pick % tracks.len()].to_string();
        let msg = if unlock {
            c.session.unlock(ot_core::EntityKind::Track, &id)
        } else {
            c.session.lock(ot_core::EntityKind::Track, &id, None)
        };
        if let Some(l) = c.link.as_mut() {
            l.up.push_back(msg);
        }
    }

    fn deliver_up(&mut self, i: usize) {
        let Some(l) = self.clients[i].link.as_mut() else { return };
        let Some(msg) = l.up.pop_front() else { return };
        let (key, node) = (l.key.clone(), l.node);
        let user = self.clients[i].user.clone();
        let msg = match msg {
            ClientMsg::Operation { operation, base_version, op_id } => {
                let ops = Op::batch_from_value(operation).expect("the session sends valid ops");
                ClientIn::Submit(Submit {
                    from: key.0.to_string(),
                    account: Some(Arc::from(user)),
                    base: base_version,
                    op_id,
                    ops,
                })
            }
            ClientMsg::Cursor { x, y, selection } => ClientIn::Cursor(CursorPos { x, y, selection }),
            ClientMsg::Transport { playing, position } => ClientIn::Transport { playing, position },
            ClientMsg::Ping => ClientIn::Ping,
            ClientMsg::Lock { target, id, ttl } => {
                let ttl_ms = ot_core::protocol::lock_ttl_ms(ttl).expect("the session sends valid ttls");
                ClientIn::Lock { target, id, ttl_ms }
            }
            ClientMsg::Unlock { target, id } => ClientIn::Unlock { target, id },
        };
        self.feed(node, Input::Client { conn: key.0, session: key.1, msg });
    }

    fn deliver_down(&mut self, i: usize) {
        let Some(frame) = self.clients[i].link.as_mut().and_then(|l| l.down.pop_front()) else { return };
        let msg =
            decode_server(&frame).unwrap_or_else(|e| panic!("seed {}: undecodable frame {frame}: {e}", self.seed));
        let pk = self.clients[i].pk.clone();
        if let Some(Err(e)) = self.clients[i].link.as_mut().map(|l| l.check(&msg, &pk)) {
            panic!("seed {}: client {i}: {e}\n{}", self.seed, self.report());
        }
        let now = self.client_now();
        match self.clients[i].session.handle(msg, now) {
            Ok(effects) => self.effects(i, effects),
            Err(e) => panic!("seed {}: client {i} cannot take {frame}: {e}", self.seed),
        }
    }

    fn store_append(&mut self, n: usize) {
        let Some((epoch, group)) = self.nodes[n].appends.pop_front() else { return };
        let durable_now = self.nodes[n].core.durable_version();
        let durable = match self.store.append(std::slice::from_ref(&group)) {
            Ok(()) => Durable { version: group.entries.last().map_or(0, |e| e.msg.version), ..Default::default() },
            Err(StoreError::Conflict { version, .. }) => {
                self.seen.lost_races += 1;
                // The writer stores nothing more of this epoch.
                self.nodes[n].appends.retain(|(e, _)| *e != epoch);
                Durable { version: durable_now, conflict: Some(version), ..Default::default() }
            }
            Err(e) => panic!("seed {}: memory store failed: {e}", self.seed),
        };
        self.feed(n, Input::Durable { epoch, durable });
    }

    fn store_read(&mut self, n: usize) {
        let Some((id, req)) = self.nodes[n].reads.pop_front() else { return };
        if matches!(req, ReadReq::Older { .. }) {
            self.seen.history_reads += 1;
        }
        let result = sequencer::room::perform(&*self.store, ROOM, req, (4, 100_000, usize::MAX));
        self.feed(n, Input::ReadDone { id, result });
    }

    fn bus(&mut self, n: usize) {
        if let Some(m) = self.nodes[n].bus_in.pop_front() {
            self.feed(n, Input::Foreign(m));
        }
    }

    fn presence_event(&mut self, n: usize) {
        if let Some(e) = self.nodes[n].events_in.pop_front() {
            self.feed(n, Input::Node(e));
        }
    }

    /// Redis answers a heartbeat: every key that has not expired.
    fn presence_sync(&mut self, n: usize) {
        let Some(requested_mono) = self.nodes[n].syncs.pop_front() else { return };
        self.seen.heartbeats += 1;
        let epoch = self.now.epoch_ms;
        self.redis.retain(|_, m| m.expires_at > epoch);
        let members = self.redis.values().cloned().collect();
        self.feed(n, Input::PresenceSnapshot { requested_mono, members });
    }

    fn tick(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.epoch_ms += ms;
        for n in 0..2 {
            if self.nodes[n].core.next_deadline().is_some_and(|d| d <= self.now.mono_ms) {
                self.feed(n, Input::Tick);
            }
        }
    }

    fn step(&mut self, editing: bool) {
        let i = self.rng.below(self.clients.len() as u64) as usize;
        let n = self.rng.below(2) as usize;
        match self.rng.below(100) {
            0..=14 if editing => self.edit(i),
            15..=17 if editing && self.clients[i].link.is_some() => self.disconnect(i),
            18 if editing => {
                let pos = CursorPos { x: self.rng.below(100) as f64, y: 0.0, selection: None };
                if let Some(l) = self.clients[i].link.as_mut() {
                    l.up.push_back(ClientMsg::Cursor { x: pos.x, y: pos.y, selection: None });
                }
            }
            19 if editing => {
                let (playing, position) = (self.rng.chance(50), self.rng.below(100) as f64);
                let now = self.client_now();
                if self.clients[i].session.is_live() {
                    let m = self.clients[i].session.set_transport(playing, position, now);
                    if let Some(l) = self.clients[i].link.as_mut() {
                        l.up.push_back(m);
                    }
                }
            }
            20..=24 => {
                if let Some((node, key)) = self.leaves.pop_front() {
                    self.nodes[node].members.remove(&key);
                    self.feed(node, Input::Leave { conn: key.0, session: key.1 });
                }
            }
            25..=29 if self.clients[i].link.is_none() => self.connect(i),
            30..=49 => self.deliver_up(i),
            50..=69 => self.deliver_down(i),
            70..=79 => self.store_append(n),
            80..=86 => self.store_read(n),
            87..=89 => self.bus(n),
            90..=91 => self.presence_event(n),
            92 => self.presence_sync(n),
            93..=94 if editing => self.lock(i),
            _ => {
                let ms = self.rng.below(30);
                self.tick(ms);
            }
        }
    }

    fn busy(&self) -> bool {
        self.clients.iter().any(|c| {
            c.link.is_none()
                || c.session.has_pending()
                || c.link.as_ref().is_some_and(|l| !l.up.is_empty() || !l.down.is_empty())
        }) || self.nodes.iter().any(|n| !n.appends.is_empty() || n.core.is_blocked() || !n.bus_in.is_empty())
            || !self.leaves.is_empty()
            || self.nodes.iter().any(|n| !n.members.is_empty() && n.core.durable_version() != self.head())
            || self.clients.iter().any(|c| c.session.version() != Some(self.head()))
    }

    fn report(&self) -> String {
        let mut out = format!("head {}\n", self.head());
        if let Ok(l) = self.store.load(ROOM) {
            for m in &l.ops {
                out += &format!("  v{} {:?} by {} ({:?})\n", m.version, m.op_id, m.user_id, m.account);
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            out += &format!(
                "client {i}: link {:?} live {} version {:?} pending {} inflight {:?} up {} down {}\n",
                c.link.as_ref().map(|l| (l.key.clone(), l.node)),
                c.session.is_live(),
                c.session.version(),
                c.session.has_pending(),
                c.session.inflight_id(),
                c.link.as_ref().map_or(0, |l| l.up.len()),
                c.link.as_ref().map_or(0, |l| l.down.len()),
            );
        }
        for (n, node) in self.nodes.iter().enumerate() {
            out += &format!(
                "node {n}: durable {} head {} blocked {} members {:?} appends {} reads {} bus {}\n",
                node.core.durable_version(),
                node.core.doc().version(),
                node.core.is_blocked(),
                node.members,
                node.appends.len(),
                node.reads.len(),
                node.bus_in.len()
            );
        }
        out
    }

    fn head(&self) -> u64 {
        self.store
            .load(ROOM)
            .map(|l| l.ops.last().map_or(l.snapshot.as_ref().map_or(0, |s| s.0), |m| m.version))
            .unwrap_or(0)
    }

    fn run(&mut self, steps: usize) -> Seen {
        for _ in 0..steps {
            self.step(true);
        }
        let mut guard = 0;
        while self.busy() {
            guard += 1;
            assert!(guard < 200_000, "seed {}: the run did not settle: {}", self.seed, self.report());
            self.step(false);
        }
        self.settle_presence();
        let server = without_transport(load(&*self.store, ROOM, 4).doc());
        for (n, node) in self.nodes.iter().enumerate().filter(|(_, n)| !n.members.is_empty()) {
            assert_eq!(
                without_transport(node.core.doc().doc()),
                server,
                "seed {}: room {n} differs from the store",
                self.seed
            );
        }
        for (i, c) in self.clients.iter().enumerate() {
            let doc = c.session.doc().map(without_transport);
            assert_eq!(doc.as_ref(), Some(&server), "seed {}: client {i} differs from the store", self.seed);
        }
        self.seen.sequenced = self.head();
        self.check_presence();
        self.seen.locks_held_at_end = self.clients[0].session.locks().len() as u64;
        self.seen
    }

    /// Delivers every presence event and then runs one more heartbeat (and store poll) on each
    /// node, until nothing is in flight.
    fn settle_presence(&mut self) {
        for _ in 0..3 {
            for n in 0..2 {
                while !self.nodes[n].events_in.is_empty() {
                    self.presence_event(n);
                }
            }
            // One heartbeat period on: each node refreshes its keys and reads everyone's.
            let step = PRESENCE_TTL_MS / 3 + 1;
            self.now.mono_ms += step;
            self.now.epoch_ms += step;
            for n in 0..2 {
                self.feed(n, Input::Tick);
                while !self.nodes[n].syncs.is_empty() {
                    self.presence_sync(n);
                }
                // The store poll that ran on the tick: it repairs a transport the bus lost.
                while !self.nodes[n].reads.is_empty() {
                    self.store_read(n);
                }
            }
            self.drain_frames();
        }
    }

    /// Delivers every frame queued towards the clients.
    fn drain_frames(&mut self) {
        for i in 0..self.clients.len() {
            while self.clients[i].link.as_ref().is_some_and(|l| !l.down.is_empty()) {
                self.deliver_down(i);
            }
        }
    }

    /// Everyone sees exactly everyone, the same lock table, and the room's latest transport.
    fn check_presence(&self) {
        let everyone: BTreeSet<String> = self.clients.iter().map(|c| c.pk.clone()).collect();
        let table = |c: &Client| -> Vec<(String, String, String)> {
            let mut t: Vec<_> = c
                .session
                .locks()
                .iter()
                .map(|l| (l.target.as_str().to_string(), l.id.clone(), l.user_id.clone()))
                .collect();
            t.sort();
            t
        };
        let first = table(&self.clients[0]);
        for (i, c) in self.clients.iter().enumerate() {
            assert_eq!(table(c), first, "seed {}: client {i}'s lock table differs from client 0's", self.seed);
        }
        let transport = self.store.transport(ROOM).unwrap();
        for (i, c) in self.clients.iter().enumerate() {
            let seen: BTreeSet<String> = c.session.users().keys().cloned().collect();
            assert_eq!(seen, everyone, "seed {}: client {i} sees the wrong people\n{}", self.seed, self.report());
            if let (Some(t), Some(mine)) = (&transport, c.session.transport()) {
                assert_eq!(
                    (mine.playing, mine.position),
                    (t.playing, t.position),
                    "seed {}: client {i} has another transport",
                    self.seed
                );
            }
        }
    }
}

fn without_transport(d: &Document) -> Document {
    let mut d = d.clone();
    d.set_transport(false, 0.0);
    d
}

#[test]
fn rooms_and_sessions_converge_over_many_seeds() {
    if let Some(seed) = std::env::var("ROOM_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Sim::new(seed).run(400);
        return;
    }
    let seeds: u64 = std::env::var("ROOM_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut total = Seen::default();
    for seed in 0..seeds {
        let s = Sim::new(seed).run(400);
        total.lost_races += s.lost_races;
        total.reconnects += s.reconnects;
        total.joins_ahead += s.joins_ahead;
        total.history_reads += s.history_reads;
        total.sequenced += s.sequenced;
        total.presence_events += s.presence_events;
        total.heartbeats += s.heartbeats;
        total.locks_held_at_end += s.locks_held_at_end;
    }
    eprintln!("{seeds} seeds: {total:?}");
    assert!(total.lost_races > 0 && total.reconnects > 0 && total.history_reads > 0, "{total:?}");
    assert!(total.joins_ahead > 0, "{total:?}");
    assert!(total.presence_events > 0 && total.heartbeats > 0 && total.locks_held_at_end > 0, "{total:?}");
}
