//! A room shared by several nodes (PostgreSQL store, optional Redis bus).
//!
//! - **Lost race.** The store refuses an append whose version another node took
//!   ([`StoreError::Conflict`]); the writer then stores nothing more queued on that room's
//!   durable channel. The room drops its pending (never acknowledged) ops, rebuilds its
//!   [`ServerDoc`] from the store, broadcasts the ops it missed to its own connections, and
//!   submits the dropped ops' original submits again, in order, so they rebase over the missed
//!   ops. A fresh durable channel is used from then on. More than [`MAX_RESYNCS`] lost races in
//!   a row fail the room (close 1011, clients reconnect).
//! - **Other nodes' ops.** Each durable op is published on the bus. An op from the bus that is
//!   exactly the next version, while nothing of ours is pending, is replayed and broadcast; a
//!   gap makes the room read the ops it lacks from the store. With or without a bus, a room with
//!   connections polls the store every `cluster_poll`, so a lost bus message costs latency,
//!   never an op.
//!
//! Nothing here runs for a store that only this process writes (memory, SQLite).

use super::*;
use crate::bus::Subscription;
use crate::store::Store;

/// Lost races in a row before the room gives up.
pub(super) const MAX_RESYNCS: u32 = 16;

/// Most ops read from the store in one catch-up.
const FETCH_MAX: usize = 10_000;

/// The room's multi-node state.
pub(super) struct Cluster {
    /// Whether other processes write this store.
    shared_store: bool,
    /// The submit behind each pending version, to submit again after a lost race.
    submits: HashMap<u64, (Arc<str>, u64, Submit)>,
    /// Submits to sequence again after a resync, in order, before the inbox is read.
    redo: VecDeque<(Arc<str>, u64, Submit)>,
    /// Lost races in a row.
    resyncs: u32,
    /// A catch-up read is under way.
    fetching: bool,
    poll: Duration,
    next_poll: Instant,
    bus: Option<Subscription>,
}

/// What woke the room.
pub(super) enum Event {
    /// An op from the bus.
    Bus(Sequenced),
    /// The bus subscription ended (the bus stopped).
    BusGone,
    /// Time to poll the store.
    Poll,
}

/// A store read the cluster logic started.
pub(super) enum Fetched {
    /// The rebuilt document and the ops after the old durable version.
    Resync(Result<Box<(ServerDoc, Vec<Sequenced>)>, StoreError>),
    /// Ops after `from`.
    Ops { from: u64, result: Result<Vec<Sequenced>, StoreError> },
}

impl Cluster {
    pub(super) fn new(shared: &Arc<Shared>, room: &Arc<str>) -> Cluster {
        let shared_store = matches!(shared.config.storage, crate::Storage::Postgres(_));
        let poll = shared.config.cluster_poll.max(Duration::from_millis(1));
        Cluster {
            shared_store,
            submits: HashMap::new(),
            redo: VecDeque::new(),
            resyncs: 0,
            fetching: false,
            poll,
            next_poll: Instant::now() + poll,
            bus: match (&shared.bus, shared_store) {
                (Some(bus), true) => Some(bus.subscribe(room.clone())),
                _ => None,
            },
        }
    }

    /// Whether [`Cluster::next`] can ever fire.
    pub(super) fn active(&self) -> bool {
        self.shared_store
    }

    /// The next bus op or poll tick.
    pub(super) async fn next(&mut self) -> Event {
        let tick = tokio::time::sleep_until(self.next_poll);
        match &mut self.bus {
            Some(sub) => tokio::select! {
                m = sub.rx.recv() => m.map_or(Event::BusGone, Event::Bus),
                _ = tick => Event::Poll,
            },
            None => {
                tick.await;
                Event::Poll
            }
        }
    }

    /// Remembers what produced a pending version (only while the store is shared).
    pub(super) fn record(&mut self, version: u64, conn: &Arc<str>, session: u64, submit: Submit) {
        if self.shared_store {
            self.submits.insert(version, (conn.clone(), session, submit));
        }
    }
}

/// Reads the state at or before `from` and every op after it: a [`ServerDoc`] at the store's
/// head whose window reaches back to `from`, and the ops after `durable`.
fn rebuild(
    store: &dyn Store,
    room: &str,
    from: u64,
    durable: u64,
    window: usize,
    max_rebase: u64,
    history_bytes: usize,
) -> Result<(ServerDoc, Vec<Sequenced>), StoreError> {
    let snapshot = store.snapshot_at_or_before(room, from)?;
    let snap_v = snapshot.as_ref().map_or(0, |(v, _)| *v);
    let ops = store.ops(room, snap_v, u64::MAX >> 1, usize::MAX)?;
    let missed = ops.iter().filter(|m| m.version > durable).cloned().collect();
    let sd = restore(room, crate::store::Loaded { snapshot, ops }, window, max_rebase, history_bytes)?;
    Ok((sd, missed))
}

impl Room {
    /// Called by `on_durable` for each version the store took.
    pub(super) fn cluster_durable(&mut self, msg: &Sequenced) {
        self.cluster.submits.remove(&msg.version);
        self.cluster.resyncs = 0;
        if let (Some(bus), true) = (&self.shared.bus, self.cluster.shared_store) {
            bus.publish(&self.id, msg);
        }
    }

    /// Another node stored a version we sequenced: resync and submit our pending ops again.
    pub(super) fn lost_race(&mut self, version: u64) {
        self.cluster.resyncs += 1;
        if self.cluster.resyncs > MAX_RESYNCS {
            self.fail(&format!(
                "another node took version {version} of this room {MAX_RESYNCS} times in a row; giving up"
            ));
            return;
        }
        info!(version, durable = self.durable_version, pending = self.pending.len(), "lost a race; resyncing");
        let durable = self.durable_version;
        let mut redo: VecDeque<_> =
            self.pending.drain(..).filter_map(|(m, _)| self.cluster.submits.remove(&m.version)).collect();
        redo.extend(self.cluster.redo.drain(..));
        self.cluster.redo = redo;
        self.cluster.submits.clear();
        // A duplicate waiting on a dropped version is answered by the broadcast of its resubmit.
        self.dup_waiting.retain(|(_, _, m)| m.version <= durable);
        let (tx, rx) = watch::channel(Durable { version: durable, failed: None, conflict: None });
        self.durable_tx = Arc::new(tx);
        self.durable_rx = rx;
        self.blocked = true;
        let from = self.cluster.redo.iter().filter_map(|(_, _, s)| s.base).fold(durable, u64::min);
        let cfg = &self.shared.config;
        let (window, max_rebase, bytes) = (cfg.history_window, cfg.max_rebase, cfg.max_history_bytes);
        let store = self.shared.persister.store.clone();
        let (room, tx) = (self.id.clone(), self.loads_tx.clone());
        tokio::spawn(async move {
            let r = room.clone();
            let result = tokio::task::spawn_blocking(move || {
                rebuild(&*store, &r, from, durable, window, max_rebase, bytes).map(Box::new)
            })
            .await
            .unwrap_or_else(|e| Err(join_error(&room, e)));
            // The room may have stopped (shutdown); its clients resend after reconnecting.
            let _ = tx.send(Loaded::Cluster(Fetched::Resync(result))).await;
        });
    }

    /// Submits what a resync dropped, in order; stops when one needs older history (the rest
    /// follows once it is loaded).
    pub(super) async fn drain_redo(&mut self) {
        while !self.blocked {
            let Some((conn, session, s)) = self.cluster.redo.pop_front() else { break };
            self.submit(conn, session, s, None).await;
        }
    }

    pub(super) async fn on_cluster(&mut self, ev: Event) {
        match ev {
            Event::BusGone => self.cluster.bus = None,
            Event::Poll => {
                self.cluster.next_poll = Instant::now() + self.cluster.poll;
                if !self.members.is_empty() {
                    self.fetch();
                }
            }
            Event::Bus(m) => {
                if m.version <= self.durable_version || !self.can_catch_up() {
                    return;
                }
                if m.version == self.durable_version + 1 {
                    self.apply_foreign(vec![m]);
                } else {
                    debug!(version = m.version, durable = self.durable_version, "gap on the bus; reading the store");
                    self.fetch();
                }
            }
        }
    }

    /// Nothing of ours is between the durable version and the head.
    fn can_catch_up(&self) -> bool {
        self.pending.is_empty() && !self.blocked && self.doc.version() == self.durable_version
    }

    fn fetch(&mut self) {
        if self.cluster.fetching || !self.can_catch_up() {
            return;
        }
        self.cluster.fetching = true;
        let from = self.durable_version;
        let store = self.shared.persister.store.clone();
        let (room, tx) = (self.id.clone(), self.loads_tx.clone());
        tokio::spawn(async move {
            let r = room.clone();
            let result = tokio::task::spawn_blocking(move || store.ops(&r, from, u64::MAX >> 1, FETCH_MAX))
                .await
                .unwrap_or_else(|e| Err(join_error(&room, e)));
            // The room may have unloaded meanwhile; nothing to catch up then.
            let _ = tx.send(Loaded::Cluster(Fetched::Ops { from, result })).await;
        });
    }

    /// Replays ops other nodes stored (consecutive, from the durable version on) and broadcasts
    /// them to this node's connections.
    fn apply_foreign(&mut self, ops: Vec<Sequenced>) {
        for m in ops {
            if m.version <= self.durable_version {
                continue;
            }
            let v = m.version;
            if let Err(e) = self.doc.replay(m.clone()) {
                self.fail(&format!("replaying version {v} from another node: {e}"));
                return;
            }
            self.durable_version = v;
            self.doc_bytes = super::resized(self.doc_bytes, &m.operation);
            self.broadcast_op(&m);
        }
        self.durable_doc = self.doc.doc().clone();
    }

    pub(super) async fn cluster_fetched(&mut self, f: Fetched) {
        match f {
            Fetched::Ops { from, result } => {
                self.cluster.fetching = false;
                match result {
                    Ok(ops) if from == self.durable_version && self.can_catch_up() => self.apply_foreign(ops),
                    // Something of ours was sequenced meanwhile: its append decides (a conflict
                    // resyncs); the next poll looks again.
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reading other nodes' ops failed; retrying on the next poll"),
                }
            }
            Fetched::Resync(result) => match result {
                Ok(rebuilt) => {
                    let (sd, missed) = *rebuilt;
                    self.doc = sd;
                    self.doc.doc_mut().set_transport(self.transport.playing, self.transport.position);
                    for m in &missed {
                        self.broadcast_op(m);
                    }
                    self.durable_version = self.doc.version();
                    self.durable_doc = self.doc.doc().clone();
                    debug!(missed = missed.len(), redo = self.cluster.redo.len(), "resynced");
                    self.blocked = false;
                    self.drain_redo().await;
                }
                Err(e) => self.fail(&format!("resync after a lost race: {e}")),
            },
        }
    }
}
