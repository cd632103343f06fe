//! The group-commit writer: the one place rooms hand their sequenced ops to a store.
//!
//! A room sends a [`WriteReq`] (its new entries and its [`Durable`] watch) on the
//! [`Persister`]'s bounded queue; one writer thread takes every request waiting, appends them in
//! one call (one transaction), and publishes each room's durable version on its watch. A room
//! acknowledges an op only once its watch says so. A failed group is retried room by room, so
//! one room's conflict or failure never holds back another's ops.

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

impl Persister {
    /// Starts the writer thread when the store blocks; otherwise writes happen inline.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Result<Arc<Persister>, StoreError> {
        let (tx, thread) = if store.blocking() {
            let (tx, rx) = mpsc::channel::<WriteReq>(4096);
            let st = store.clone();
            let handle = std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(st, rx, metrics))
                .map_err(|source| StoreError::Io { path: PathBuf::from("<writer thread>"), source })?;
            (Some(tx), Some(handle))
        } else {
            (None, None)
        };
        Ok(Arc::new(Persister { store, tx: Mutex::new(tx), thread: Mutex::new(thread) }))
    }

    /// The writer's queue, or `None` when the store is written inline.
    pub fn sender(&self) -> Option<mpsc::Sender<WriteReq>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets the writer finish what is queued, then joins it. Rooms must have stopped first.
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
        let groups: Vec<RoomAppend> = batch.iter().map(|r| r.group.clone()).collect();
        let started = Instant::now();
        let result = store.append(&groups);
        metrics.storage_append(started.elapsed(), batch.len());
        match result {
            Ok(()) => batch.iter().for_each(publish_ok),
            Err(e) => {
                tracing::warn!(error = %e, groups = batch.len(), "group commit failed; retrying one by one");
                for r in &batch {
                    if r.durable.borrow().conflict.is_some() {
                        continue;
                    }
                    match store.append(std::slice::from_ref(&r.group)) {
                        Ok(()) => publish_ok(r),
                        Err(StoreError::Conflict { version, .. }) => {
                            tracing::info!(room = %r.group.room, version, "version taken by another node");
                            r.durable.send_modify(|d| d.conflict = Some(version));
                        }
                        Err(e) => {
                            tracing::error!(room = %r.group.room, error = %e, "append failed");
                            r.durable.send_modify(|d| d.failed = Some(e.to_string()));
                        }
                    }
                }
            }
        }
        batch.clear();
    }
}

fn publish_ok(r: &WriteReq) {
    if let Some(last) = r.group.entries.last() {
        let v = last.msg.version;
        r.durable.send_modify(|d| d.version = d.version.max(v));
    }
}
