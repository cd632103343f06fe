//! A connection's outbound queue: the one place the slow-client policy lives.
//!
//! The room pushes without ever waiting. Frames other than cursors (acks, operations, presence,
//! errors) queue in order up to a bound; when that bound is hit the connection is closed with
//! [`Close::SlowConsumer`] (4008) and the queue is freed — an operation is never dropped while
//! the socket stays open, and the client catches up on reconnect with `since`. Cursor frames
//! are coalesced per sender, latest wins, and sent after the queued frames, so a reader that
//! falls behind loses cursor updates first. Memory per connection is bounded by the queue
//! bound times the frame limit plus one cursor per room member.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::Close;
use crate::metrics::Metrics;

#[derive(Default)]
struct State {
    queue: VecDeque<Utf8Bytes>,
    cursors: VecDeque<(Arc<str>, Utf8Bytes)>,
    closed: Option<Close>,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Send this text frame.
    Frame(Utf8Bytes),
    /// Send a close frame with this code and stop.
    Close(Close),
}

/// See the module docs.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when the outbox is closed for a reason that drops what is queued.
    abort: Notify,
    cap: usize,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// An empty outbox holding at most `cap` non-cursor frames.
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            abort: Notify::new(),
            cap: cap.max(1),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section below is panic-free, so a poisoned lock still holds a
        // consistent queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame; on overflow closes the connection with [`Close::SlowConsumer`]. Returns
    /// false when the outbox is closed.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() {
            return false;
        }
        if s.queue.len() >= self.cap {
            s.queue.clear();
            s.cursors.clear();
            s.closed = Some(Close::SlowConsumer);
            self.metrics.slow_close();
            drop(s);
            self.notify.notify_one();
            self.abort.notify_one();
            return false;
        }
        s.queue.push_back(frame);
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Queues a cursor frame from `from`, replacing one still queued from the same sender.
    pub fn push_cursor(&self, from: &Arc<str>, frame: Utf8Bytes) {
        let mut s = self.lock();
        if s.closed.is_some() {
            return;
        }
        if let Some(slot) = s.cursors.iter_mut().find(|(k, _)| k == from) {
            slot.1 = frame;
            self.metrics.cursor_dropped();
            return;
        }
        s.cursors.push_back((from.clone(), frame));
        drop(s);
        self.notify.notify_one();
    }

    /// Closes the connection. [`Close::GoingAway`] sends what is queued first; other reasons
    /// drop it. The first reason given wins.
    pub fn close(&self, reason: Close) {
        let mut s = self.lock();
        if s.closed.is_some() {
            return;
        }
        if reason != Close::GoingAway {
            s.queue.clear();
        }
        s.cursors.clear();
        s.closed = Some(reason);
        drop(s);
        self.notify.notify_one();
        if reason != Close::GoingAway {
            self.abort.notify_one();
        }
    }

    /// Resolves once the outbox is closed for a reason other than [`Close::GoingAway`]: the
    /// writer stops waiting on a socket that does not drain.
    pub async fn aborted(&self) {
        loop {
            if matches!(self.lock().closed, Some(c) if c != Close::GoingAway) {
                return;
            }
            self.abort.notified().await;
        }
    }

    /// Whether [`Outbox::close`] was called (or the queue overflowed).
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    fn pop(&self) -> Option<Next> {
        let mut s = self.lock();
        if let Some(f) = s.queue.pop_front() {
            return Some(Next::Frame(f));
        }
        if let Some(c) = s.closed {
            return Some(Next::Close(c));
        }
        s.cursors.pop_front().map(|(_, f)| Next::Frame(f))
    }

    /// The next frame if one is ready now (never the close), for batching writes.
    pub fn try_frame(&self) -> Option<Utf8Bytes> {
        let mut s = self.lock();
        if let Some(f) = s.queue.pop_front() {
            return Some(f);
        }
        if s.closed.is_some() {
            return None;
        }
        s.cursors.pop_front().map(|(_, f)| f)
    }

    /// Waits for the next thing to send (one consumer: the connection's writer).
    pub async fn next(&self) -> Next {
        loop {
            if let Some(n) = self.pop() {
                return n;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_and_cursors_coalesce() {
        let o = Outbox::new(2, Arc::new(Metrics::default()));
        let a: Arc<str> = Arc::from("a");
        o.push_cursor(&a, "c1".into());
        o.push_cursor(&a, "c2".into());
        assert!(o.push("x".into()));
        assert!(matches!(o.pop(), Some(Next::Frame(f)) if f.as_str() == "x"));
        assert!(matches!(o.pop(), Some(Next::Frame(f)) if f.as_str() == "c2"));
        assert!(o.pop().is_none());
        assert!(o.push("1".into()) && o.push("2".into()));
        assert!(!o.push("3".into()));
        assert!(matches!(o.pop(), Some(Next::Close(Close::SlowConsumer))));
    }
}
