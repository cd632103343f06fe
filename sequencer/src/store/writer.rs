//! The group-commit writer: the one place rooms hand their sequenced ops to a store, whatever
//! the store (memory, SQLite or PostgreSQL), so every room runs the same path: sequenced →
//! pending → durable → acknowledged.
//!
//! A room sends a [`WriteReq`] (its new entries and its [`Durable`] watch) on the
//! [`Persister`]'s bounded queue; one writer thread takes every request waiting, appends them in
//! one call (one transaction), and publishes each room's durable version on its watch. A store
//! that does not block (the in-memory one) is written the same way from the room's own task
//! instead ([`Persister::write_now`]): no thread hop, the same feedback. A room acknowledges an
//! op only once its watch says so. A failed group is retried room by room, so one room's
//! conflict or failure never holds back another's ops.
//!
//! The queue holds [`QUEUE`] requests; when it is full a room's send waits (the room stops
//! reading its inbox meanwhile), so a slow store slows the rooms down and never loses an op.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{RoomAppend, Store, StoreError};
use crate::metrics::Metrics;

/// How far a room's log is durable, published by the writer (latest wins, never blocks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Durable {
    /// Every version up to this one is stored.
    pub version: u64,
    /// Set when a write failed: the room must stop and reload.
    pub failed: Option<String>,
    /// Set when another node stored this version first: nothing queued on this channel is
    /// stored any more (it was sequenced on a stale head); the room resyncs from the store and
    /// resubmits on a fresh channel.
    pub conflict: Option<u64>,
}

/// One room's request to the writer.
pub struct WriteReq {
    /// What to store.
    pub group: RoomAppend,
    /// Where to publish the durable version.
    pub durable: Arc<watch::Sender<Durable>>,
}

/// The group-commit writer: one thread that takes every waiting request, stores them in one
/// transaction and publishes each room's durable version.
pub struct Persister {
    /// The store (reads go to it directly through `spawn_blocking`).
    pub store: Arc<dyn Store>,
    tx: Mutex<Option<mpsc::Sender<WriteReq>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How many requests one group commit takes at most.
const GROUP_MAX: usize = 1024;

/// Requests queued for the writer before a room's send waits.
pub const QUEUE: usize = 4096;

impl Persister {
    /// Starts the writer thread. Every store gets one; a store whose calls do not block (the
    /// in-memory one) is also written straight from the room's task by
    /// [`Persister::write_now`], with the same durability feedback as a database's: pending
    /// ops, the [`Durable`] watch, conflicts and failures.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Result<Arc<Persister>, StoreError> {
        let (tx, rx) = mpsc::channel::<WriteReq>(QUEUE);
        let st = store.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(st, rx, metrics))
            .map_err(|source| StoreError::Io { path: PathBuf::from("<writer thread>"), source })?;
        Ok(Arc::new(Persister { store, tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(handle)) }))
    }

    /// The writer's queue: always `Some` until [`Persister::finish`] starts, `None` after.
    pub fn sender(&self) -> Option<mpsc::Sender<WriteReq>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stores one request in the caller's thread, as the writer thread would: for a store
    /// that does not block ([`Store::blocking`] is false), where handing each group to another
    /// thread would cost two context switches per op and gain nothing.
    pub fn write_now(&self, req: WriteReq, metrics: &Metrics) {
        if req.durable.borrow().conflict.is_some() {
            return;
        }
        commit(&*self.store, std::slice::from_ref(&req.group), std::slice::from_ref(&req.durable), metrics);
    }

    /// Lets the writer finish what is queued, then joins it. Rooms must have stopped first
    /// (each holds a sender; the writer ends once every sender is gone and the queue is empty).
    pub fn finish(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

fn writer_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<WriteReq>, metrics: Arc<Metrics>) {
    let mut batch: Vec<WriteReq> = Vec::new();
    // The batch taken apart, so that the store gets the groups without a copy of them (a
    // group may carry a snapshot of the whole document).
    let mut groups: Vec<RoomAppend> = Vec::new();
    let mut durables: Vec<Arc<watch::Sender<Durable>>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // A request queued behind a conflict of its room was sequenced on a stale head.
        batch.retain(|r| r.durable.borrow().conflict.is_none());
        if batch.is_empty() {
            continue;
        }
        for r in batch.drain(..) {
            groups.push(r.group);
            durables.push(r.durable);
        }
        commit(&*store, &groups, &durables, &metrics);
        groups.clear();
        durables.clear();
    }
}

/// Stores `groups` in one call and publishes each room's durable version on its watch; a
/// failed group is retried room by room, so one room's conflict or failure never holds back
/// another's ops.
fn commit(store: &dyn Store, groups: &[RoomAppend], durables: &[Arc<watch::Sender<Durable>>], metrics: &Metrics) {
    let started = Instant::now();
    let result = store.append(groups);
    metrics.storage_append(started.elapsed(), groups.len());
    match result {
        Ok(()) => groups.iter().zip(durables).for_each(|(g, d)| publish_ok(g, d)),
        Err(e) => {
            tracing::warn!(error = %e, groups = groups.len(), "group commit failed; retrying one by one");
            for (g, d) in groups.iter().zip(durables) {
                if d.borrow().conflict.is_some() {
                    continue;
                }
                match store.append(std::slice::from_ref(g)) {
                    Ok(()) => publish_ok(g, d),
                    Err(StoreError::Conflict { version, .. }) => {
                        tracing::info!(room = %g.room, version, "version taken by another node");
                        d.send_modify(|d| d.conflict = Some(version));
                    }
                    Err(e) => {
                        tracing::error!(room = %g.room, error = %e, "append failed");
                        d.send_modify(|d| d.failed = Some(e.to_string()));
                    }
                }
            }
        }
    }
}

fn publish_ok(group: &RoomAppend, durable: &watch::Sender<Durable>) {
    if let Some(last) = group.entries.last() {
        let v = last.msg.version;
        durable.send_modify(|d| d.version = d.version.max(v));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::msg;
    use crate::store::{Entry, MemoryStore};

    fn req(room: &Arc<str>, version: u64, durable: &Arc<watch::Sender<Durable>>) -> WriteReq {
        let entries = vec![Entry { msg: msg(version, &format!("o{version}")), snapshot: None, by_id: true }];
        WriteReq { group: RoomAppend { room: room.clone(), entries }, durable: durable.clone() }
    }

    /// The writer thread's path, here with the in-memory store: the durable version is
    /// published on the room's watch, and a version already stored comes back as a conflict on
    /// the watch, not as a silent success.
    #[tokio::test]
    async fn memory_store_goes_through_the_writer_and_publishes_durability() {
        let store = Arc::new(MemoryStore::new());
        let persister = Persister::start(store.clone(), Arc::new(Metrics::default())).unwrap();
        let tx = persister.sender().expect("every store has a writer, the memory store too");
        let room: Arc<str> = Arc::from("r");
        let (durable, mut watch) = watch::channel(Durable::default());
        let durable = Arc::new(durable);
        for v in 1..=3 {
            tx.send(req(&room, v, &durable)).await.unwrap();
        }
        let seen = tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|d| d.version == 3))
            .await
            .expect("the writer publishes version 3")
            .unwrap()
            .clone();
        assert_eq!(seen, Durable { version: 3, failed: None, conflict: None });
        assert_eq!(store.ops("r", 0, 10, 10).unwrap().len(), 3);

        // Version 2 again, as a node that lost a race would send it: the watch says conflict.
        let (stale, mut stale_watch) = watch::channel(Durable { version: 1, failed: None, conflict: None });
        tx.send(req(&room, 2, &Arc::new(stale))).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), stale_watch.wait_for(|d| d.conflict.is_some()))
            .await
            .expect("the writer reports the conflict")
            .unwrap()
            .clone();
        assert_eq!(seen, Durable { version: 1, failed: None, conflict: Some(2) });
        assert_eq!(store.ops("r", 0, 10, 10).unwrap().len(), 3, "nothing of the stale request is stored");

        drop(tx);
        persister.finish();
        assert!(persister.sender().is_none(), "no writer after finish");
    }

    /// `write_now`, what rooms of the in-memory store use, gives the same feedback in the
    /// caller's thread: the durable version on the watch, a conflict for a version already
    /// stored, and nothing at all for a request whose channel already saw a conflict.
    #[test]
    fn write_now_publishes_durability_and_conflicts_like_the_writer() {
        let store = Arc::new(MemoryStore::new());
        let metrics = Metrics::default();
        let persister = Persister::start(store.clone(), Arc::new(Metrics::default())).unwrap();
        let room: Arc<str> = Arc::from("r");
        let (durable, watch) = watch::channel(Durable::default());
        let durable = Arc::new(durable);
        for v in 1..=3 {
            persister.write_now(req(&room, v, &durable), &metrics);
            assert_eq!(*watch.borrow(), Durable { version: v, failed: None, conflict: None });
        }
        assert_eq!(store.ops("r", 0, 10, 10).unwrap().len(), 3);

        let (stale, stale_watch) = watch::channel(Durable { version: 1, failed: None, conflict: None });
        let stale = Arc::new(stale);
        persister.write_now(req(&room, 2, &stale), &metrics);
        assert_eq!(*stale_watch.borrow(), Durable { version: 1, failed: None, conflict: Some(2) });
        // Queued behind the conflict on the same channel: dropped, as the writer thread drops it.
        persister.write_now(req(&room, 4, &stale), &metrics);
        assert_eq!(stale_watch.borrow().conflict, Some(2));
        assert_eq!(store.ops("r", 0, 10, 10).unwrap().len(), 3, "nothing of the stale channel is stored");
        persister.finish();
    }

    /// Shutdown: what rooms queued before they stopped is stored and published by `finish`.
    #[test]
    fn finish_stores_and_publishes_everything_queued() {
        let store = Arc::new(MemoryStore::new());
        let persister = Persister::start(store.clone(), Arc::new(Metrics::default())).unwrap();
        let tx = persister.sender().unwrap();
        let room: Arc<str> = Arc::from("r");
        let (durable, watch) = watch::channel(Durable::default());
        let durable = Arc::new(durable);
        for v in 1..=100 {
            tx.blocking_send(req(&room, v, &durable)).unwrap();
        }
        drop(tx);
        persister.finish();
        assert_eq!(watch.borrow().version, 100);
        assert_eq!(store.ops("r", 0, 1000, 1000).unwrap().len(), 100);
    }
}
