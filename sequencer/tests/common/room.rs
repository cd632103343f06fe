//! A synchronous harness around [`RoomCore`]: what the async shell does, with a store in memory,
//! a clock the test moves, and every frame a connection would receive kept as JSON. Appends and
//! reads complete when the test says so (or at once with `auto`).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ot_core::sync::{Sequenced, ServerDoc};
use sequencer::auth::Role;
use sequencer::error::Close;
use sequencer::room::core::{ClientIn, ConnKey, CoreConfig, Input, JoinReq, Now, Output, ReadReq, RoomCore};
use sequencer::store::{restore, Durable, MemoryStore, RoomAppend, Store, StoreError};
use serde_json::Value;

/// One room core and what it did.
pub struct Harness {
    pub room: String,
    pub core: RoomCore,
    pub store: Arc<MemoryStore>,
    pub now: Now,
    /// Frames received per connection key (members and joining connections).
    pub inbox: HashMap<ConnKey, Vec<Value>>,
    pub members: Vec<ConnKey>,
    pub closed: Vec<(ConnKey, Close)>,
    pub replies: Vec<(ConnKey, Result<(), Close>)>,
    pub appends: VecDeque<(u64, RoomAppend)>,
    pub reads: VecDeque<(u64, ReadReq)>,
    pub published: Vec<Sequenced>,
    /// Presence events for other nodes, and heartbeat syncs asked for.
    pub events: Vec<sequencer::room::remote::NodeEvent>,
    pub syncs: Vec<Vec<sequencer::room::remote::MemberState>>,
    /// Transports the shell was told to store.
    pub saved_transports: Vec<ot_core::protocol::TransportState>,
    pub unloads: usize,
    pub failed: Option<String>,
    /// Complete appends and reads as soon as they are asked for.
    pub auto: bool,
}

pub fn config(room: &str) -> CoreConfig {
    let mut c = CoreConfig::new(&sequencer::Config::memory("s"), Arc::from(room), false, None);
    c.cursor_tick_ms = 20;
    c
}

pub fn load(store: &dyn Store, room: &str, window: usize) -> ServerDoc {
    restore(room, store.load(room).unwrap(), window, 100_000, usize::MAX).unwrap()
}

impl Harness {
    pub fn new(cfg: CoreConfig) -> Harness {
        Self::on(Arc::new(MemoryStore::new()), cfg, 1000)
    }

    /// A core loaded from `store` (two harnesses on one store are two nodes).
    pub fn on(store: Arc<MemoryStore>, cfg: CoreConfig, window: usize) -> Harness {
        let now = Now { mono_ms: 0, epoch_ms: 1_700_000_000_000 };
        let doc = load(&*store, &cfg.room, window);
        Harness {
            room: cfg.room.to_string(),
            core: RoomCore::new(doc, cfg, now),
            store,
            now,
            inbox: HashMap::new(),
            members: Vec::new(),
            closed: Vec::new(),
            replies: Vec::new(),
            appends: VecDeque::new(),
            reads: VecDeque::new(),
            published: Vec::new(),
            events: Vec::new(),
            syncs: Vec::new(),
            saved_transports: Vec::new(),
            unloads: 0,
            failed: None,
            auto: true,
        }
    }

    pub fn feed(&mut self, input: Input) {
        let outs = self.core.handle(input, self.now);
        for o in outs {
            self.carry(o);
        }
        if self.auto {
            self.settle();
        }
    }

    fn carry(&mut self, o: Output) {
        let json = |f: &str| serde_json::from_str::<Value>(f).expect("frames are JSON");
        match o {
            Output::Send { to, frame } => self.inbox.entry(to).or_default().push(json(&frame)),
            Output::Broadcast { frame, except } => {
                for m in &self.members {
                    if except.as_ref() != Some(&m.0) {
                        self.inbox.entry(m.clone()).or_default().push(json(&frame));
                    }
                }
            }
            Output::Cursor { from, frame } => {
                for m in &self.members {
                    if m.0 != from {
                        self.inbox.entry(m.clone()).or_default().push(json(&frame));
                    }
                }
            }
            Output::Close { to, code } => {
                self.members.retain(|m| *m != to);
                self.closed.push((to, code));
            }
            Output::JoinReply { to, result } => {
                if result.is_ok() {
                    self.members.push(to.clone());
                }
                self.replies.push((to, result));
            }
            Output::Append { epoch, group } => self.appends.push_back((epoch, group)),
            Output::Read { id, req } => self.reads.push_back((id, req)),
            Output::Publish(m) => self.published.push(m),
            Output::Node(e) => self.events.push(e),
            Output::PresenceSync(m) => self.syncs.push(m),
            Output::SaveTransport(t) => {
                self.store.save_transport(&self.room, &t).unwrap();
                self.saved_transports.push(t);
            }
            Output::Stat(_) => {}
            Output::Unload => self.unloads += 1,
            Output::Failed(r) => self.failed = Some(r),
        }
    }

    /// Stores one waiting append and reports it.
    pub fn store_one(&mut self) -> bool {
        let Some((epoch, group)) = self.appends.pop_front() else { return false };
        let durable = match self.store.append(std::slice::from_ref(&group)) {
            Ok(()) => Durable { version: group.entries.last().map_or(0, |e| e.msg.version), ..Default::default() },
            Err(StoreError::Conflict { version, .. }) => {
                Durable { version: self.core.durable_version(), conflict: Some(version), ..Default::default() }
            }
            Err(e) => {
                Durable { version: self.core.durable_version(), failed: Some(e.to_string()), ..Default::default() }
            }
        };
        self.feed_raw(Input::Durable { epoch, durable });
        true
    }

    /// Answers one waiting read.
    pub fn read_one(&mut self) -> bool {
        let Some((id, req)) = self.reads.pop_front() else { return false };
        let result = sequencer::room::perform(&*self.store, &self.room, req, (1000, 100_000, usize::MAX));
        self.feed_raw(Input::ReadDone { id, result });
        true
    }

    fn feed_raw(&mut self, input: Input) {
        let auto = std::mem::replace(&mut self.auto, false);
        self.feed(input);
        self.auto = auto;
    }

    /// Completes every append and read, including those they lead to.
    pub fn settle(&mut self) {
        while self.store_one() || self.read_one() {}
    }

    pub fn join(&mut self, conn: &str, session: u64, user: &str, role: Role, since: Option<u64>) -> ConnKey {
        let key: ConnKey = (Arc::from(conn), session);
        self.feed(Input::Join(JoinReq {
            conn: key.0.clone(),
            session,
            user_id: user.into(),
            name: user.into(),
            avatar: None,
            role,
            since,
        }));
        key
    }

    pub fn client(&mut self, key: &ConnKey, msg: ClientIn) {
        self.feed(Input::Client { conn: key.0.clone(), session: key.1, msg });
    }

    pub fn leave(&mut self, key: &ConnKey) {
        self.members.retain(|m| m != key);
        self.feed(Input::Leave { conn: key.0.clone(), session: key.1 });
    }

    /// Moves the clock and ticks if a deadline passed.
    pub fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.epoch_ms += ms;
        if self.core.next_deadline().is_some_and(|d| d <= self.now.mono_ms) {
            self.feed(Input::Tick);
        }
    }

    /// Takes what `key` received so far.
    pub fn take(&mut self, key: &ConnKey) -> Vec<Value> {
        self.inbox.remove(key).unwrap_or_default()
    }

    /// Takes what `key` received, keeping only messages of type `ty`.
    pub fn take_type(&mut self, key: &ConnKey, ty: &str) -> Vec<Value> {
        self.take(key).into_iter().filter(|m| m["type"] == ty).collect()
    }
}
